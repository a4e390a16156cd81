//! Failover: the primary dies (`kill -9`) while four clients write; a new primary takes the
//! writes and no acknowledged write is lost; the survivors find the killed primary gone (its port
//! refuses connections) instead of waiting out the election timers, and do not take a paused one
//! for gone.
//!
//! The replicas run in `available` sync mode: in `strict` mode every write waits for every sync
//! replica, so with the old primary (a sync replica) dead the new primary would take no write
//! until it is back (that case is `cluster_sync`'s).

mod common;

use std::sync::Arc;

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use common::{Seed, TANDEM};

/// What a follower logs when the primary's port refuses connections (`failfast`).
const GONE_MESSAGE: &str = "the primary's port refuses connections: its process is gone";

/// Three sync replicas (`available`, 1 s sync timeout), four writers, `kill -9` of the primary
/// at a random moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_primary_under_write_load_loses_no_acknowledged_write() {
    init_tracing();
    let mut seed = Seed::from_env("kill9_primary_under_write_load");

    info!("--- start three sync replicas (sync mode available, sync timeout 1 s)");
    let options = ClusterOptions::default().sync_mode("available").sync_timeout_ms(1000);
    let mut cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;
    let old_primary = cluster.must_wait_primary().await;

    info!("--- four clients write unique keys");
    let history = Arc::new(History::new());
    let clients = (0..4).map(|_| cluster.new_client()).collect();
    let writers = Writers::start(clients, history.clone(), "failover");
    let before_kill = seed.between(50, 300);
    writers.must_wait_acknowledged(before_kill, EVENT_TIMEOUT).await;

    info!("--- kill -9 the primary (replica {old_primary}) after {before_kill} acknowledged writes");
    history.note(format!("kill -9 replica {old_primary} (the primary)"));
    cluster.must_kill9(old_primary);

    info!("--- a new primary is elected and takes writes");
    let new_primary = cluster.must_wait_primary().await;
    assert_ne!(new_primary, old_primary, "the killed replica cannot be primary");
    history.note(format!("replica {new_primary} is primary"));
    writers.must_wait_more(100, EVENT_TIMEOUT).await;

    info!("--- the new primary found the old one's process gone (its port refused) rather than waiting out the timers");
    let log = cluster.replica(new_primary).log();
    assert!(
        log.contains(GONE_MESSAGE),
        "replica {new_primary} never found the killed primary gone:\n{}",
        cluster.replica(new_primary).log_tail()
    );
    let report = writers.stop().await;
    info!(%report, "writers stopped");

    info!("--- every acknowledged write is read back from the new primary");
    let state = cluster.must_range("failover/").await;
    let summary = history.must_check_writes(&state);
    info!(%summary, "history checked");
    assert!(
        summary.ok as u64 >= before_kill + 100,
        "too few acknowledged writes: {summary}"
    );

    info!("--- the killed replica restarts, catches up and holds the same data");
    cluster.must_restart(old_primary).await;
    cluster.must_wait_caught_up(&[old_primary]).await;
    let on_old = cluster.must_range_on(old_primary, "failover/").await;
    assert_eq!(on_old, state, "the restarted replica differs from the primary");
}

/// The same with 64 writers, so that the primary proposes their transactions many to a log entry
/// (group commit): a kill in the middle of batches loses no acknowledged write and applies none
/// twice, and every answer stays truthful.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_primary_under_batched_writes_loses_no_acknowledged_write() {
    init_tracing();
    let mut seed = Seed::from_env("kill9_primary_under_batched_writes");

    info!("--- start three sync replicas (sync mode available, sync timeout 1 s)");
    let options = ClusterOptions::default().sync_mode("available").sync_timeout_ms(1000);
    let mut cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;
    let old_primary = cluster.must_wait_primary().await;

    info!("--- 64 clients write unique keys");
    let history = Arc::new(History::new());
    let clients = (0..64).map(|_| cluster.new_client()).collect();
    let writers = Writers::start(clients, history.clone(), "batched");
    let before_kill = seed.between(300, 1500);
    writers.must_wait_acknowledged(before_kill, EVENT_TIMEOUT).await;

    info!("--- the primary batches: far fewer log entries than transactions");
    let status = cluster.must_status(old_primary).await;
    info!(
        txns = status.txns_proposed,
        entries = status.txn_entries_proposed,
        "group commit before the kill"
    );
    assert!(
        status.txn_entries_proposed * 2 <= status.txns_proposed,
        "{} transactions took {} entries",
        status.txns_proposed,
        status.txn_entries_proposed
    );

    info!("--- kill -9 the primary (replica {old_primary}) after {before_kill} acknowledged writes");
    history.note(format!("kill -9 replica {old_primary} (the primary)"));
    cluster.must_kill9(old_primary);

    info!("--- a new primary is elected and takes writes");
    let new_primary = cluster.must_wait_primary().await;
    assert_ne!(new_primary, old_primary, "the killed replica cannot be primary");
    history.note(format!("replica {new_primary} is primary"));
    writers.must_wait_more(500, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, "writers stopped");

    info!("--- every acknowledged write is read back from the new primary, none twice");
    let state = cluster.must_range("batched/").await;
    let summary = history.must_check_writes(&state);
    info!(%summary, "history checked");
    assert!(
        summary.ok as u64 >= before_kill + 500,
        "too few acknowledged writes: {summary}"
    );

    info!("--- the killed replica restarts, catches up and holds the same data");
    cluster.must_restart(old_primary).await;
    cluster.must_wait_caught_up(&[old_primary]).await;
    let on_old = cluster.must_range_on(old_primary, "batched/").await;
    assert_eq!(on_old, state, "the restarted replica differs from the primary");
}

/// A paused primary (SIGSTOP) still accepts connections (the kernel completes them), so the
/// followers do not take it for gone: the usual timers elect a new primary, and the old one
/// follows it once resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_is_not_taken_for_gone() {
    init_tracing();
    info!("--- start three sync replicas (sync mode available, sync timeout 1 s)");
    let options = ClusterOptions::default().sync_mode("available").sync_timeout_ms(1000);
    let mut cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;
    let old_primary = cluster.must_wait_primary().await;
    cluster.must_put("paused/before", "1").await;

    info!("--- SIGSTOP the primary (replica {old_primary}): a new primary is elected by the timers");
    cluster.must_pause(old_primary);
    let new_primary = cluster.must_wait_primary().await;
    assert_ne!(new_primary, old_primary, "the paused replica cannot be primary");
    for id in [1, 2, 3].into_iter().filter(|id| *id != old_primary) {
        let log = cluster.replica(id).log();
        assert!(
            !log.contains(GONE_MESSAGE),
            "replica {id} took a paused primary for gone:\n{}",
            cluster.replica(id).log_tail()
        );
    }

    info!("--- SIGCONT: the old primary follows the new one and catches up");
    cluster.must_resume(old_primary);
    cluster.must_wait_primary_is(new_primary).await;
    cluster.must_put("paused/after", "2").await;
    cluster.must_wait_caught_up(&[old_primary]).await;
    let on_old = cluster.must_range_on(old_primary, "paused/").await;
    assert_eq!(on_old, cluster.must_range("paused/").await);
}
