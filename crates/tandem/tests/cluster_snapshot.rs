//! Snapshots and log compaction: with `--snapshot-every 100`, a thousand writes leave every
//! replica with a snapshot and a purged log prefix; a replica added afterwards (through
//! `tandem db add-replica`) can only catch up from a snapshot, and does, with all the data; a
//! restart of every replica keeps everything.

mod common;

use std::sync::Arc;

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use common::TANDEM;

const SNAPSHOT_EVERY: u64 = 100;
const WRITES: u64 = 1000;
const PREFIX: &str = "snap/";

/// Every replica in `ids` holds exactly `expected` under [`PREFIX`] (read on each replica).
async fn must_all_hold(cluster: &Cluster, ids: &[u64], expected: &[tandem_client::KeyValue]) {
    cluster.must_wait_caught_up(ids).await;
    for &id in ids {
        let on_replica = cluster.must_range_on(id, PREFIX).await;
        assert_eq!(
            on_replica.len(),
            expected.len(),
            "replica {id} holds another number of keys"
        );
        assert_eq!(on_replica, expected, "replica {id} differs from the primary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_replica_catches_up_from_a_snapshot_and_restart_keeps_everything() {
    init_tracing();

    info!("--- start three sync replicas that snapshot every {SNAPSHOT_EVERY} entries");
    let options = ClusterOptions::default().snapshot_every(SNAPSHOT_EVERY);
    let mut cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;

    info!("--- {WRITES} writes from four clients");
    let history = Arc::new(History::new());
    let clients = (0..4).map(|_| cluster.new_client()).collect();
    let writers = Writers::start(clients, history.clone(), "snap");
    writers.must_wait_acknowledged(WRITES, EVENT_TIMEOUT * 2).await;

    info!("--- the primary has a snapshot and has purged a log prefix");
    let primary = cluster.must_wait_primary().await;
    let after_writes = cluster
        .must_wait_status(primary, "a snapshot", |s| s.snapshot_index > 0)
        .await;
    // The log behind a snapshot is kept for at most one --snapshot-every interval, so 1000
    // writes with --snapshot-every 100 must have compacted a prefix.
    assert!(after_writes.snapshot_index > 0, "{after_writes:?}");
    let status = cluster
        .must_wait_status(primary, "a purged log prefix", |s| s.purged_index > 0)
        .await;
    let report = writers.stop().await;
    info!(
        %report,
        snapshot_index = status.snapshot_index,
        purged_index = status.purged_index,
        last_log_index = status.last_log_index,
        "primary compacted its log"
    );
    let state = cluster.must_range(PREFIX).await;
    history.must_check_writes(&state);
    // Each replica asks for its own snapshots (at indexes of its own): the followers too.
    for id in cluster.ids() {
        cluster
            .must_wait_status(id, "a snapshot and a purged log prefix", |s| {
                s.snapshot_index > 0 && s.purged_index > 0
            })
            .await;
    }

    info!("--- a new replica is added with `tandem db add-replica` and catches up from a snapshot");
    let new_id = match cluster.start_replica(Kind::Async).await {
        Ok(id) => id,
        Err(e) => panic!("start a new replica: {e}"),
    };
    let addr = cluster.addr(new_id);
    let printed = cluster
        .must_cli(&[
            "add-replica",
            "--id",
            &new_id.to_string(),
            "--addr",
            &addr,
            "--kind",
            "async",
        ])
        .await;
    assert!(
        printed.contains(&addr),
        "add-replica output lacks the new member: {printed:?}"
    );
    let ids: Vec<u64> = cluster.ids();
    must_all_hold(&cluster, &ids, &state).await;
    let added = cluster.must_status(new_id).await;
    assert_eq!(added.role, "learner", "an async replica is a learner: {added:?}");
    assert!(
        added.snapshot_index >= status.purged_index,
        "replica {new_id} has no snapshot covering the purged prefix (snapshot {}, purged on the primary {})",
        added.snapshot_index,
        status.purged_index
    );

    info!("--- `tandem db snapshot` builds a snapshot on the new replica");
    let printed = cluster.must_cli(&["snapshot", "--on", &addr]).await;
    assert!(
        printed.starts_with("snapshot at index"),
        "unexpected output: {printed:?}"
    );

    info!("--- stop and restart every replica: everything is kept");
    for &id in &ids {
        cluster.must_terminate(id).await;
    }
    for &id in &ids {
        cluster.must_restart(id).await;
    }
    cluster.must_wait_primary().await;
    let after = cluster.must_range(PREFIX).await;
    assert_eq!(after, state, "the primary lost or changed data over the restart");
    history.must_check_writes(&after);
    must_all_hold(&cluster, &ids, &state).await;
}
