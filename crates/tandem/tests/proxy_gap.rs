//! A proxy cut off (SIGSTOP) while the masters restart and more changes are made than their
//! history keeps: on waking up it reloads from a snapshot while serving its old data, then swaps
//! the new copy in at once (a reader sees the old or the new configuration, never a mix); its
//! own subscriber is told `reload-required` (or gets every change — never a silent gap), and
//! the other proxy's subscriber gets every change, in order. And a configuration larger than
//! one part of a snapshot reaches a proxy whole, in parts.

mod confserv_common;
mod proxy_common;

use confserv_common::*;
use futures::StreamExt;
use proxy_common::*;
use tandem_config::document::{DocObject, Document, DOCUMENT_FORMAT};
use tandem_config::model::{Sections, ENVIRONMENT_TENANT_NAME};
use tandem_config::{ObjectType, State};
use tandem_proto::confserv::error_kind;
use tandem_testkit::{init_tracing, must_eventually, History, Kind};
use tracing::info;

const HISTORY: usize = 20;
const GAP_WRITES: usize = 3 * HISTORY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_gap_beyond_the_history_reloads_while_serving_and_never_hides_a_change() {
    init_tracing();
    let _serial = serial().await;
    info!("--- masters keeping {HISTORY} records of history, two proxies");
    let history_flag = HISTORY.to_string();
    let mut pair = Pair::start(
        &[Kind::Sync, Kind::Sync, Kind::Sync],
        2,
        &["--history-max-records", &history_flag],
    )
    .await;
    let masters = pair.addrs();
    let mut p1 = ConfservProcess::start_proxy("p1", &masters, &[]);
    let p2 = ConfservProcess::start_proxy("p2", &masters, &[]);
    let (a1, a2) = (p1.addr().to_owned(), p2.addr().to_owned());
    must_wait_proxy_mode(&a1, "normal").await;
    must_wait_proxy_mode(&a2, "normal").await;
    let on_p1 = client_of(vec![a1.clone()]);
    must_login(&on_p1, ADMIN, ADMIN_PASSWORD).await;
    let on_p2 = client_of(vec![a2.clone()]);
    on_p2.set_token(&on_p1.token().expect("token"));
    let start_seq = on_p2.status(&a2).await.expect("status").last_seq;
    let (seen1, _s1) = subscribe(&on_p1, start_seq);
    let (seen2, _s2) = subscribe(&on_p2, start_seq);
    let history = History::new();
    let mut before_seq = start_seq;
    for i in 0..5 {
        let written = create_skill(&history, &on_p2, "before", &format!("before-{i}"))
            .await
            .expect("create");
        before_seq = written.last_seq;
    }
    must_see(&seen1, before_seq, "p1 has every change so far").await;

    info!("--- SIGSTOP p1; kill -9 and restart both masters; {GAP_WRITES} changes through p2");
    history.note("SIGSTOP p1");
    p1.pause();
    for master in &mut pair.servers {
        master.kill9();
    }
    for master in &mut pair.servers {
        master.restart();
    }
    pair.must_wait_primary().await;
    must_wait_proxy_mode(&a2, "normal").await;
    let mut final_seq = 0;
    for i in 0..GAP_WRITES {
        let written = create_skill(&history, &on_p2, "gap", &format!("gap-{i}"))
            .await
            .expect("create through p2");
        final_seq = written.last_seq;
    }

    info!("--- SIGCONT p1: it reloads while serving its old data, then swaps");
    history.note("SIGCONT p1");
    p1.resume();
    let (old, new) = (5, 5 + GAP_WRITES);
    let mut reads = 0;
    must_eventually("p1 serves the new configuration", EVENT_TIMEOUT, || {
        reads += 1;
        let on_p1 = on_p1.clone();
        async move {
            let held = skills_held(&on_p1).await;
            assert!(
                held.len() == old || held.len() == new,
                "p1 served a mix of old and new: {} skills",
                held.len()
            );
            if held.len() == new {
                Ok(())
            } else {
                Err(format!("{} skills", held.len()))
            }
        }
    })
    .await;
    info!(reads, "every read on p1 was answered, old or new, never a mix");
    let snapshots = p1.log().matches("loaded the configuration from a snapshot").count();
    assert!(
        snapshots >= 2,
        "p1 loaded only {snapshots} snapshot(s): it did not reload"
    );
    must_wait_proxy_mode(&a1, "normal").await;

    info!("--- p1's subscriber: reload-required, or every change; p2's: every change, in order");
    must_see(&seen2, final_seq, "p2's subscriber has every change").await;
    assert_dense(&seen2.changes(), start_seq, final_seq);
    history.must_check_writes(&skills_notified(&seen2.changes()));
    must_eventually("p1's subscriber is told", EVENT_TIMEOUT, || async {
        match seen1.ended() {
            Some(e) => Ok(Some(e)),
            None if seen1.last_seq() >= final_seq => Ok(None),
            None => Err(format!("covered up to {}", seen1.last_seq())),
        }
    })
    .await
    .map_or_else(
        || {
            info!("p1's subscriber got every change");
            assert_dense(&seen1.changes(), start_seq, final_seq)
        },
        |e| {
            info!(error = %e, "p1's subscriber was told to reload");
            assert!(e.is(error_kind::RELOAD_REQUIRED), "{e:?}");
            let changes = seen1.changes();
            assert_dense(&changes, start_seq, changes.last().map_or(start_seq, |n| n.seq));
        },
    );
    assert_held(&history, &skills_held(&on_p1).await, "p1");
    assert_held(&history, &skills_held(&on_p2).await, "p2");

    info!("--- a subscriber of p1 that reloaded resumes after the number it was given");
    let (seen3, _s3) = subscribe(&on_p1, final_seq);
    let written = create_skill(&history, &on_p1, "last", "last").await.expect("create");
    must_see(&seen3, written.last_seq, "the resumed subscriber").await;
    assert_dense(&seen3.changes(), final_seq, written.last_seq);
}

/// Skills `t11` imports, each with an option of [`OPTION_BYTES`]: a snapshot of them is larger
/// than one part (4 MiB of JSON).
const LARGE: usize = 6_000;
const OPTION_BYTES: usize = 1_000;
/// Skills per imported document (one write may make at most 400 changes).
const IMPORT_BATCH: usize = 400;

/// A document of skills `skill-{first}` … below `end`, in the environment tenant.
fn skills_document(first: usize, end: usize) -> String {
    let padding = "x".repeat(OPTION_BYTES);
    let options: Sections = [("bulk".to_owned(), [("padding".to_owned(), padding)].into())].into();
    let objects = (first..end)
        .map(|i| DocObject {
            object_type: ObjectType::Skill,
            name: format!("skill-{i:06}"),
            tenant: Some(ENVIRONMENT_TENANT_NAME.to_owned()),
            folder: None,
            state: State::Enabled,
            fields: Default::default(),
            options: options.clone(),
            annex: Default::default(),
        })
        .collect();
    Document {
        format: DOCUMENT_FORMAT,
        objects,
    }
    .to_json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_a_configuration_larger_than_one_part_of_a_snapshot_reaches_a_proxy_whole() {
    init_tracing();
    let _serial = serial().await;
    let pair = Pair::start(&[Kind::Sync, Kind::Sync, Kind::Sync], 2, &[]).await;
    let on_masters = pair.admin().await;
    info!("--- import {LARGE} skills through the masters");
    let imports = (0..LARGE).step_by(IMPORT_BATCH).map(|first| {
        let on_masters = on_masters.clone();
        async move {
            let document = skills_document(first, (first + IMPORT_BATCH).min(LARGE));
            on_masters.import(&document, false).await.expect("import");
        }
    });
    futures::stream::iter(imports)
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    let primary = pair.addrs()[pair.must_wait_primary().await].clone();
    let on_primary = on_masters.status(&primary).await.expect("status of the primary");

    info!("--- a proxy attaches: the snapshot comes in parts and is swapped in whole");
    let p1 = ConfservProcess::start_proxy("p1", &pair.addrs(), &[]);
    let status = must_wait_proxy_mode(p1.addr(), "normal").await;
    assert_eq!(
        (status.objects, status.last_seq),
        (on_primary.objects, on_primary.last_seq),
        "the proxy holds what the primary held"
    );
    let log = p1.log();
    let attached = log
        .lines()
        .find(|l| l.contains("attached to the primary master"))
        .expect("the proxy logs its attachment");
    let parts: usize = attached
        .split_whitespace()
        .find_map(|field| field.strip_prefix("parts="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no part count in {attached:?}"));
    assert!(parts >= 2, "{LARGE} skills came in {parts} part(s): {attached}");
    let on_p1 = client_of(vec![p1.addr().to_owned()]);
    on_p1.set_token(&on_masters.token().expect("token"));
    let held = skills_held(&on_p1).await;
    assert_eq!(held.len(), LARGE, "every skill readable through the proxy");
    assert!(held.contains("skill-000000") && held.contains(&format!("skill-{:06}", LARGE - 1)));
}
