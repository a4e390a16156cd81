//! Planned switchover under write load: the named sync replica becomes primary and no
//! acknowledged write is lost; then a switchover back through the command line.

mod common;

use std::sync::Arc;

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use common::{Seed, TANDEM};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_write_load_loses_no_acknowledged_write() {
    init_tracing();
    let mut seed = Seed::from_env("switchover_under_write_load");

    info!("--- start three sync replicas");
    let cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], ClusterOptions::default()).await;
    let first = cluster.must_wait_primary().await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != first).collect();
    let target = others[(seed.next_u64() % others.len() as u64) as usize];

    info!("--- four clients write unique keys");
    let history = Arc::new(History::new());
    let clients = (0..4).map(|_| cluster.new_client()).collect();
    let writers = Writers::start(clients, history.clone(), "switchover");
    writers
        .must_wait_acknowledged(seed.between(50, 200), EVENT_TIMEOUT)
        .await;

    info!("--- switch over from replica {first} to replica {target} (client library)");
    history.note(format!("switchover {first} -> {target} begins"));
    let done = match cluster.client().switchover(target).await {
        Ok(done) => done,
        Err(e) => panic!("switchover to replica {target} failed: {e}"),
    };
    history.note(format!(
        "switchover done: replica {} primary in term {} after {} ms",
        done.primary, done.term, done.duration_ms
    ));
    assert_eq!(done.primary, target, "the switchover answer names another primary");
    cluster.must_wait_primary_is(target).await;

    info!("--- writes go on at the new primary");
    writers.must_wait_more(100, EVENT_TIMEOUT).await;

    info!("--- switch back to replica {first} with `tandem db switchover`");
    history.note(format!("switchover {target} -> {first} (command line) begins"));
    let printed = cluster.must_cli(&["switchover", "--to", &first.to_string()]).await;
    history.note(format!("switchover done: {}", printed.trim()));
    assert!(
        printed.contains(&format!("replica {first} is primary")),
        "unexpected output: {printed:?}"
    );
    cluster.must_wait_primary_is(first).await;
    writers.must_wait_more(100, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, "writers stopped");

    info!("--- no acknowledged write is lost, none applied twice");
    let state = cluster.must_range("switchover/").await;
    let summary = history.must_check_writes(&state);
    info!(%summary, "history checked");
    cluster.must_wait_primary_is(first).await;
}
