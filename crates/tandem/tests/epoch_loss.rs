//! Forced recovery at site 2 after site 1 is lost under write load: what the survivor keeps, and
//! whether its loss report is honest.
//!
//! - An **async** survivor may lack the last writes site 1 acknowledged; the report's
//!   `possibly_missing` bounds how many, as of the last message it heard from the primary. The
//!   history must agree: the survivor kept a prefix of the old epoch, and the acknowledged writes
//!   missing are at most `possibly_missing` plus those acknowledged after it last heard.
//! - A **sync** survivor in `available` mode was in the synchronous set but could have been
//!   demoted: the same bound applies.
//! - A **sync** survivor in `strict` mode holds every acknowledged write: the report says 0 and
//!   nothing is missing.

mod epoch_common;

use std::sync::Arc;
use std::time::Duration;

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use epoch_common::{
    must_be_consistent_report, must_check_loss, must_recover, must_wait_primary_of_epoch, must_wait_silent, serial,
    writer_clients, Seed, TANDEM,
};

/// How long the survivor must have heard no primary before the operator recovers it.
const SILENCE: Duration = Duration::from_millis(300);

/// Replicas 1 and 2 sync (site 1), 3 async (site 2), strict mode. Four clients write; both site-1
/// replicas are killed (`kill -9`) mid-load; recovery on 3; writes resume there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_survivor_loses_at_most_what_its_report_says() {
    let _serial = serial().await;
    init_tracing();
    let seed = Seed::from_env("async_survivor_loses_at_most_what_its_report_says");
    lose_site_1_and_recover_on_3(seed, Kind::Async, "strict").await;
}

/// The same with replica 3 a sync replica in `available` mode (the default): it was in the
/// synchronous set, but the primary may demote it, so the report gives a bound, not a promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_survivor_in_available_mode_loses_at_most_what_its_report_says() {
    let _serial = serial().await;
    init_tracing();
    let seed = Seed::from_env("sync_survivor_in_available_mode_loses_at_most_what_its_report_says");
    lose_site_1_and_recover_on_3(seed, Kind::Sync, "available").await;
}

/// Replicas 1 and 2 sync (site 1) and 3 of `kind` (site 2), in `sync_mode`. Four clients write;
/// both site-1 replicas are killed mid-load; the writers stop; once replica 3 hears no primary,
/// it is recovered; new writers write through it; the history is checked against the report.
async fn lose_site_1_and_recover_on_3(mut seed: Seed, kind: Kind, sync_mode: &str) {
    info!("--- start site 1 (replicas 1, 2: sync) and site 2 (replica 3: {kind:?}), {sync_mode} mode");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, kind],
        ClusterOptions::default().sync_mode(sync_mode),
    )
    .await;
    must_make_site_1_primary(&cluster).await;
    let primary = cluster.must_wait_primary().await;

    info!("--- four clients write unique keys");
    let history = Arc::new(History::new());
    let writers = Writers::start(writer_clients(&cluster, 4), history.clone(), "loss/e1");
    let before_kill = seed.between(150, 400);
    writers.must_wait_acknowledged(before_kill, EVENT_TIMEOUT).await;

    info!("--- kill -9 both site-1 replicas mid-load (primary {primary} last)");
    let other = if primary == 1 { 2 } else { 1 };
    history.note(format!("kill -9 replica {other}, then replica {primary} (the primary)"));
    cluster.must_kill9(other);
    cluster.must_kill9(primary);
    let report = writers.stop().await;
    info!(%report, "epoch-1 writers stopped");
    history.note("writers of epoch 1 stopped");
    must_wait_silent(&cluster, 3, SILENCE).await;

    info!("--- forced recovery on replica 3");
    let recover_called_at = history.elapsed();
    history.note("recover --force on replica 3");
    let recovered = must_recover(&cluster, 3).await;
    history.note(format!(
        "replica 3 recovered into epoch {}: start index {}, possibly missing {}, heard {} ms before",
        recovered.epoch, recovered.start_index, recovered.possibly_missing, recovered.heard_ms_ago
    ));
    must_be_consistent_report(&recovered, 1);
    assert_eq!(
        recovered.strict,
        sync_mode == "strict",
        "the old primary ran in {sync_mode} mode: {recovered:?}"
    );
    assert_eq!(
        recovered.was_in_sync_set,
        kind == Kind::Sync,
        "a {kind:?} replica, never demoted: {recovered:?}"
    );
    assert!(
        recovered.heard_ms_ago >= SILENCE.as_millis() as u64,
        "replica 3 said it heard no primary for {SILENCE:?}: {recovered:?}"
    );
    let start_revision = must_wait_primary_of_epoch(&cluster, 3, 2, recovered.start_index).await;

    info!("--- writes resume at replica 3 through clients of all three replicas");
    let writers = Writers::start(writer_clients(&cluster, 4), history.clone(), "loss/e2");
    writers.must_wait_acknowledged(100, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, "epoch-2 writers stopped");
    cluster.must_wait_primary_is(3).await;

    info!("--- the history agrees with the loss report");
    let state = cluster.must_range("loss/").await;
    let loss = must_check_loss(&history, &state, &recovered, recover_called_at, start_revision);
    eprintln!(
        "{kind:?} survivor ({sync_mode}): {} acknowledged writes kept, {} missing; report: possibly \
         missing {}, heard {} ms before; {} acknowledged after that",
        loss.kept,
        loss.missing.len(),
        recovered.possibly_missing,
        recovered.heard_ms_ago,
        loss.acknowledged_after_heard
    );
    assert!(loss.kept as u64 >= 100, "too few acknowledged writes kept: {loss:?}");
}

/// Site 1 holds the primary before the disaster: when replica 3 (a sync replica) won the first
/// election, a switchover hands the role to replica 1.
async fn must_make_site_1_primary(cluster: &Cluster) {
    if cluster.must_wait_primary().await == 3 {
        info!("--- replica 3 is primary: switch over to replica 1 (site 1)");
        if let Err(e) = cluster.client().switchover(1).await {
            panic!("switchover to replica 1 failed: {e}");
        }
        cluster.must_wait_primary_is(1).await;
    }
}

/// Replicas 1, 2 and 3 all sync, strict mode. Four clients write; 1 and 2 are killed (`kill -9`)
/// mid-load; recovery on 3 reports nothing missing, and nothing is; the same clients carry on at
/// replica 3 by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_survivor_in_strict_mode_loses_nothing() {
    let _serial = serial().await;
    init_tracing();
    let mut seed = Seed::from_env("sync_survivor_in_strict_mode_loses_nothing");

    info!("--- start three sync replicas (strict mode)");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Sync],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;
    must_make_site_1_primary(&cluster).await;
    let primary = cluster.must_wait_primary().await;

    info!("--- four clients write unique keys");
    let history = Arc::new(History::new());
    let writers = Writers::start(writer_clients(&cluster, 4), history.clone(), "sync");
    writers
        .must_wait_acknowledged(seed.between(150, 400), EVENT_TIMEOUT)
        .await;

    info!("--- kill -9 replicas 1 and 2 mid-load (primary {primary} last)");
    let other = if primary == 1 { 2 } else { 1 };
    history.note(format!("kill -9 replica {other}, then replica {primary} (the primary)"));
    cluster.must_kill9(other);
    cluster.must_kill9(primary);
    let acknowledged_before = writers.acknowledged();
    must_wait_silent(&cluster, 3, SILENCE).await;

    info!("--- forced recovery on replica 3 while the clients keep trying");
    history.note("recover --force on replica 3");
    let recovered = must_recover(&cluster, 3).await;
    history.note(format!(
        "replica 3 recovered into epoch {}: start index {}, possibly missing {}",
        recovered.epoch, recovered.start_index, recovered.possibly_missing
    ));
    must_be_consistent_report(&recovered, 1);
    assert!(
        recovered.was_in_sync_set && recovered.strict,
        "replica 3 was a sync replica in strict mode: {recovered:?}"
    );
    assert_eq!(
        recovered.possibly_missing, 0,
        "a member of the synchronous set (strict) misses nothing: {recovered:?}"
    );
    must_wait_primary_of_epoch(&cluster, 3, 2, recovered.start_index).await;

    info!("--- the same clients find replica 3 and write on");
    writers
        .must_wait_acknowledged(acknowledged_before + 100, EVENT_TIMEOUT)
        .await;
    let report = writers.stop().await;
    info!(%report, "writers stopped");

    info!("--- no acknowledged write is missing, none applied twice");
    let state = cluster.must_range("sync/").await;
    let summary = history.must_check_writes(&state);
    eprintln!("sync survivor: {summary}; report: possibly missing 0");
    assert!(
        summary.ok as u64 >= acknowledged_before + 100,
        "too few acknowledged writes: {summary}"
    );
}
