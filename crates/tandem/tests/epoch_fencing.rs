//! Fencing and rejoin: site-1 replicas of the superseded epoch come back with their data, learn
//! of the newer epoch, refuse everything and never campaign — even while the new primary is
//! unreachable and after another restart — until `rejoin` puts their divergent history aside and
//! brings them back as copies of the new primary.

mod epoch_common;

use std::sync::Arc;
use std::time::Duration;

use tandem_testkit::client::{Client, ClientOptions};
use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind};
use tracing::info;

use epoch_common::{
    keys, must_be_consistent_report, must_check_quarantine, must_hold_exactly, must_recover, must_refuse_read_fenced,
    must_refuse_write_fenced, must_split_loss, must_stay_fenced, must_wait_fenced, must_wait_primary_of_epoch,
    must_wait_settled, serial, QUIET_WINDOW, TANDEM,
};

/// Keys written in epoch 1 while replica 3 was reachable.
const BEFORE: usize = 20;
/// Keys acknowledged by site 1 alone while replica 3 was down: the divergent tail.
const DIVERGENT: usize = 5;
/// Keys written in epoch 2.
const AFTER: usize = 10;

/// Replicas 1, 2 sync (site 1), 3 async (site 2). Replica 3 crashes; site 1 acknowledges a few
/// writes alone, then dies; replica 3 restarts and is recovered (those writes are lost there).
/// Site 1 comes back, is fenced, stays fenced while 3 is frozen (SIGSTOP) and across a restart,
/// then rejoins.
///
/// Replica 3 is killed rather than frozen while site 1 writes alone: a frozen replica would find
/// site 1's last messages in its socket buffers when thawed and might take the divergent writes
/// after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_epoch_replicas_are_fenced_until_they_rejoin() {
    let _serial = serial().await;
    init_tracing();

    info!("--- start site 1 (replicas 1, 2: sync) and site 2 (replica 3: async), strict mode");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Async],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;
    let history = Arc::new(History::new());
    let client = cluster.client();
    for i in 0..BEFORE {
        let key = format!("fence/e1/{i:03}");
        history
            .put(&client, "test", &key, key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }
    cluster.must_wait_caught_up(&[1, 2, 3]).await;

    info!("--- replica 3 crashes (kill -9); site 1 acknowledges {DIVERGENT} writes alone");
    history.note("kill -9 replica 3");
    cluster.must_kill9(3);
    let mut divergent = Vec::new();
    for i in 0..DIVERGENT {
        let key = format!("fence/divergent/{i:03}");
        history
            .put(&client, "test", &key, key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put {key} with replica 3 down: {e}"));
        divergent.push(key);
    }

    info!("--- kill -9 site 1; replica 3 restarts with its data; forced recovery on it");
    history.note("kill -9 replicas 1 and 2");
    cluster.must_kill9(1);
    cluster.must_kill9(2);
    cluster.must_restart(3).await;
    must_wait_settled(&cluster, 3).await;
    history.note("replica 3 restarted");
    let recover_called_at = history.elapsed();
    let recovered = must_recover(&cluster, 3).await;
    history.note(format!("replica 3 recovered into epoch 2: {recovered:?}"));
    must_be_consistent_report(&recovered, 1);
    assert_eq!(
        recovered.heard_ms_ago, 0,
        "replica 3 heard no primary since its restart: {recovered:?}"
    );
    assert!(
        recovered.assessment.starts_with("unknown"),
        "a survivor that never heard a primary cannot bound the loss: {recovered:?}"
    );
    let start_index = recovered.start_index;
    let start_revision = must_wait_primary_of_epoch(&cluster, 3, 2, start_index).await;
    let addr3 = cluster.addr(3);

    info!("--- the writes made while replica 3 was down are lost, and only those");
    let state = cluster.must_range("fence/").await;
    let loss = must_split_loss(&history, &state, recover_called_at, start_revision);
    let missing = loss.missing.iter().map(|op| op.key.clone()).collect::<Vec<_>>();
    assert_eq!(
        missing, divergent,
        "the survivor lacks exactly the writes made while it was down"
    );

    info!("--- epoch 2 takes writes");
    for i in 0..AFTER {
        let key = format!("fence/e2/{i:03}");
        history
            .put(&client, "test", &key, key.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put {key} in epoch 2: {e}"));
    }

    info!("--- site 1 restarts with its data: both replicas are fenced by epoch 2");
    cluster.must_restart(1).await;
    cluster.must_restart(2).await;
    must_wait_fenced(&cluster, 1, 2, &addr3).await;
    must_wait_fenced(&cluster, 2, 2, &addr3).await;

    info!("--- requests sent straight to a fenced replica are refused: `tandem-error: fenced`");
    for id in [1, 2] {
        let key = format!("fence/direct/{id}");
        must_refuse_write_fenced(&cluster, id, &key, 1, 2, &addr3).await;
        must_refuse_read_fenced(&cluster, id, 1, 2, &addr3).await;
    }

    info!("--- a client that knows only a fenced replica follows it to the new primary");
    let only_fenced = Client::new(vec![cluster.addr(1)], ClientOptions::default())
        .unwrap_or_else(|e| panic!("client of replica 1: {e}"));
    let key = "fence/e2/via-fenced";
    history
        .put(&only_fenced, "test", key, key.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("put {key} through a client of fenced replica 1: {e}"));

    info!("--- freeze replica 3: the fenced replicas never campaign, for {QUIET_WINDOW:?}");
    history.note("SIGSTOP replica 3");
    cluster.must_pause(3);
    must_stay_fenced(&cluster, &[1, 2], 2, QUIET_WINDOW).await;

    info!("--- restart replica 1 while replica 3 is frozen: the fence is durable");
    cluster.must_kill9(1);
    cluster.must_restart(1).await;
    must_wait_fenced(&cluster, 1, 2, &addr3).await;
    must_stay_fenced(&cluster, &[1, 2], 2, QUIET_WINDOW).await;

    info!("--- thaw replica 3: still the primary of epoch 2");
    cluster.must_resume(3);
    history.note("SIGCONT replica 3");
    must_wait_primary_of_epoch(&cluster, 3, 2, start_index).await;
    must_stay_fenced(&cluster, &[1, 2], 2, Duration::from_millis(500)).await;

    info!("--- rejoin replicas 1 and 2: divergent history quarantined, both re-added");
    for id in [1, 2] {
        let addr = cluster.addr(id);
        let rejoined = match client.rejoin(&addr, None, None).await {
            Ok(rejoined) => rejoined,
            Err(e) => panic!("rejoin of replica {id} failed: {e}"),
        };
        info!(?rejoined, "replica {id} rejoined");
        history.note(format!("replica {id} rejoined: {rejoined:?}"));
        assert_eq!(rejoined.epoch, 2, "{rejoined:?}");
        assert_eq!(rejoined.primary, addr3, "{rejoined:?}");
        let quarantined = must_check_quarantine(id, &rejoined, start_index, &divergent);
        for key in keys(&state).iter().filter(|k| k.starts_with("fence/e1/")) {
            assert!(
                !quarantined.contains(&format!("\"{key}\"")),
                "replica {id} quarantined {key}, which the new epoch kept"
            );
        }
    }

    info!("--- both catch up and hold exactly replica 3's history");
    cluster.must_wait_caught_up(&[1, 2]).await;
    let primary_state = cluster.must_range("").await;
    for id in [1, 2] {
        let status = cluster.must_status(id).await;
        assert!(
            status.epoch == 2 && status.fenced_by_epoch == 0 && status.role == "secondary",
            "replica {id} is not a secondary of epoch 2 after its rejoin: {status:?}"
        );
        must_hold_exactly(&cluster, id, &primary_state).await;
    }
    for key in &divergent {
        assert!(
            !keys(&primary_state).contains(key),
            "the divergent write {key} is in the new history"
        );
    }
    let loss = must_split_loss(
        &history,
        &cluster.must_range("fence/").await,
        recover_called_at,
        start_revision,
    );
    assert_eq!(loss.missing.len(), DIVERGENT, "{loss:?}");
    info!(kept = loss.kept, "history checked");
    assert!(
        primary_state.iter().all(|kv| !kv.key.starts_with("fence/direct/")),
        "a write refused by a fenced replica was applied"
    );
}
