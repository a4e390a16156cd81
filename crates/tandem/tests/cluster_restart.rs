//! Whole-cluster restarts: every replica stopped (SIGTERM) and started again, then every replica
//! killed (`kill -9`) and started again. Committed data survives both, and each time the set
//! leads on only after a new election (a higher term): a primary killed while its followers held
//! entries it had sent early and not yet written must never give those entries' log ids to other
//! entries. The same holds when the primary alone is killed and started again at once. The set is
//! formed and inspected through the command line, so this also covers `tandem db init` and
//! `tandem db status --json`.

mod common;

use std::sync::Arc;

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use common::TANDEM;

const IDS: [u64; 3] = [1, 2, 3];

/// Writes under `prefix` with two clients until `count` writes are acknowledged.
async fn write_some(cluster: &Cluster, history: &Arc<History>, prefix: &str, count: u64) {
    let writers = Writers::start(
        vec![cluster.new_client(), cluster.new_client()],
        history.clone(),
        prefix,
    );
    writers.must_wait_acknowledged(count, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, prefix, "writers stopped");
}

/// The primary's term, once there is a primary.
async fn primary_term(cluster: &Cluster) -> u64 {
    let primary = cluster.must_wait_primary().await;
    cluster.must_status(primary).await.term
}

/// Waits for a primary after a whole-cluster restart; it must have been elected in a term above
/// `before` (no replica resumes as primary in the term it led before it stopped).
async fn must_elect_in_a_new_term(cluster: &Cluster, before: u64) {
    let term = primary_term(cluster).await;
    assert!(
        term > before,
        "the primary after the restart leads in term {term}, not above the term before it ({before})"
    );
    info!(before, term, "a primary was elected in a new term");
}

/// Every replica holds exactly what the history allows, read on each replica after catching up.
async fn must_hold_everything(cluster: &Cluster, history: &History, prefix: &str) {
    let state = cluster.must_range(prefix).await;
    let summary = history.must_check_writes(&state);
    info!(%summary, "history checked on the primary");
    cluster.must_wait_caught_up(&IDS).await;
    for id in IDS {
        let on_replica = cluster.must_range_on(id, prefix).await;
        assert_eq!(
            common::keys(&on_replica),
            common::keys(&state),
            "replica {id} differs from the primary"
        );
        assert_eq!(on_replica, state, "replica {id} differs from the primary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_stopped_or_killed_and_restarted_keep_committed_data() {
    init_tracing();

    info!("--- start three sync replicas and form the set with `tandem db init`");
    let options = ClusterOptions::default().init_with_cli();
    let mut cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;
    cluster.must_wait_primary().await;

    info!("--- the command line reports one primary");
    cluster.must_put("cli/greeting", "hello").await;
    let status = cluster.must_cli(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status --json prints JSON");
    let entries = status.as_array().expect("status --json prints an array");
    assert_eq!(entries.len(), 3, "one entry per endpoint: {status}");
    let primaries = entries.iter().filter(|e| e["status"]["role"] == "primary").count();
    assert_eq!(primaries, 1, "exactly one primary: {status}");

    info!("--- write a first batch");
    let history = Arc::new(History::new());
    write_some(&cluster, &history, "restart/a", 150).await;
    must_hold_everything(&cluster, &history, "restart/").await;

    info!("--- SIGTERM every replica, the secondaries first (while the primary still holds its streams to them); each exits cleanly");
    let term = primary_term(&cluster).await;
    let primary = cluster.must_wait_primary().await;
    history.note("SIGTERM every replica");
    for id in IDS.into_iter().filter(|&id| id != primary).chain([primary]) {
        cluster.must_terminate(id).await;
    }

    info!("--- restart every replica: a primary is elected and all committed data is there");
    history.note("restart every replica");
    for id in IDS {
        cluster.must_restart(id).await;
    }
    must_elect_in_a_new_term(&cluster, term).await;
    must_hold_everything(&cluster, &history, "restart/").await;
    assert_eq!(
        cluster.must_get("cli/greeting").await.map(|kv| kv.value),
        Some(b"hello".to_vec())
    );

    info!("--- write a second batch, and kill -9 every replica while writes are in flight");
    let writers = Writers::start(
        vec![cluster.new_client(), cluster.new_client()],
        history.clone(),
        "restart/b",
    );
    writers.must_wait_acknowledged(150, EVENT_TIMEOUT).await;
    let term = primary_term(&cluster).await;
    history.note("kill -9 every replica");
    for id in IDS {
        cluster.must_kill9(id);
    }

    info!("--- restart every replica: the writers go on, and every acknowledged write is there");
    history.note("restart every replica");
    for id in IDS {
        cluster.must_restart(id).await;
    }
    must_elect_in_a_new_term(&cluster, term).await;
    writers.must_wait_more(50, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, "writers stopped");
    must_hold_everything(&cluster, &history, "restart/").await;
    assert_eq!(
        cluster.must_get("cli/greeting").await.map(|kv| kv.value),
        Some(b"hello".to_vec())
    );

    info!("--- the restarted set takes new writes");
    write_some(&cluster, &history, "restart/c", 50).await;
    must_hold_everything(&cluster, &history, "restart/").await;
}

/// The primary alone is killed under writes and started again at once, before its followers'
/// election timers run out: it must not lead on in its old term (its followers may hold entries
/// it sent them early and never wrote), so the set elects a primary in a new term; the writers go
/// on and every replica ends up holding exactly what the history allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_and_restarted_at_once_leads_only_after_a_new_election() {
    init_tracing();

    info!("--- start three sync replicas; two clients write");
    let mut cluster =
        Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], ClusterOptions::default()).await;
    let primary = cluster.must_wait_primary().await;
    let history = Arc::new(History::new());
    let writers = Writers::start(
        vec![cluster.new_client(), cluster.new_client()],
        history.clone(),
        "restart/p",
    );
    writers.must_wait_acknowledged(100, EVENT_TIMEOUT).await;
    let term = primary_term(&cluster).await;

    info!("--- kill -9 the primary (replica {primary}) and start it again at once");
    history.note(format!("kill -9 replica {primary} (the primary), restart at once"));
    cluster.must_kill9(primary);
    cluster.must_restart(primary).await;
    must_elect_in_a_new_term(&cluster, term).await;

    info!("--- the writers go on; every replica holds the same, as the history allows");
    writers.must_wait_more(50, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, "writers stopped");
    must_hold_everything(&cluster, &history, "restart/").await;
}
