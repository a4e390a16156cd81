//! Forced recovery on an async survivor that was lagging when site 1 was lost: it was frozen
//! (SIGSTOP: a stalled replica or link) for a moment under write load and thawed just before
//! site 1 went away, so it finds the primary's last messages queued in its sockets and is still
//! working through them when the operator (or a script) recovers it.
//!
//! The loss report must still be an honest bound (acknowledged writes missing ≤
//! `possibly_missing` + writes acknowledged after the survivor last heard the primary), and its
//! numbers must add up (`applied_before` + `tail_applied` = `start_index`).
//!
//! Regressions: the recovery reads `applied_before` and the commit index from the stopped store
//! (a running node goes on applying), and dates what it last heard by the older of the primary's
//! send time and the arrival time (a message that waited in a socket is not fresh).

mod epoch_common;

use std::sync::Arc;
use std::time::Duration;

use tandem_testkit::client::ClientOptions;
use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use epoch_common::{
    must_be_consistent_report, must_check_loss, must_recover, must_wait_primary_of_epoch, must_wait_silent, serial,
    writer_clients, Seed, TANDEM, WRITER_DEADLINE,
};

/// How long the survivor must have heard no primary before the operator recovers it.
const SILENCE: Duration = Duration::from_millis(300);

/// Replicas 1, 2 sync, 3 async (strict). Four clients write; replica 3 is frozen while a random
/// number of writes is acknowledged, thawed, and site 1 is killed at once; recovery on 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_async_survivor_loses_at_most_what_its_report_says() {
    let _serial = serial().await;
    init_tracing();
    let mut seed = Seed::from_env("lagging_async_survivor_loses_at_most_what_its_report_says");

    info!("--- start site 1 (replicas 1, 2: sync) and site 2 (replica 3: async), strict mode");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Async],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;
    let primary = cluster.must_wait_primary().await;
    let other = if primary == 1 { 2 } else { 1 };

    info!("--- four clients write unique keys");
    let history = Arc::new(History::new());
    let writers = Writers::start(writer_clients(&cluster, 4), history.clone(), "lag/e1");
    writers
        .must_wait_acknowledged(seed.between(50, 150), EVENT_TIMEOUT)
        .await;

    let frozen_for = seed.between(30, 200);
    info!("--- freeze replica 3 while {frozen_for} writes are acknowledged; thaw; kill -9 site 1");
    history.note("SIGSTOP replica 3");
    cluster.must_pause(3);
    writers.must_wait_more(frozen_for, EVENT_TIMEOUT).await;
    cluster.must_resume(3);
    cluster.must_kill9(other);
    cluster.must_kill9(primary);
    history.note(format!(
        "SIGCONT replica 3, kill -9 replica {other} and replica {primary} (the primary)"
    ));
    let report = writers.stop().await;
    info!(%report, "writers stopped");
    must_wait_silent(&cluster, 3, SILENCE).await;

    info!("--- forced recovery on replica 3");
    let recover_called_at = history.elapsed();
    let recovered = must_recover(&cluster, 3).await;
    history.note(format!("replica 3 recovered into epoch 2: {recovered:?}"));
    assert_eq!(recovered.epoch, 2, "{recovered:?}");
    let start_revision = must_wait_primary_of_epoch(&cluster, 3, 2, recovered.start_index).await;

    info!("--- the history agrees with the loss report");
    let state = cluster.must_range("lag/").await;
    let loss = must_check_loss(&history, &state, &recovered, recover_called_at, start_revision);
    eprintln!(
        "lagging survivor: {} kept, {} missing; report: possibly missing {}, heard {} ms before; \
         {} acknowledged after that",
        loss.kept,
        loss.missing.len(),
        recovered.possibly_missing,
        recovered.heard_ms_ago,
        loss.acknowledged_after_heard
    );
}

/// Replicas 1, 2 sync, 3 async (strict). Four clients write; replica 3 is frozen while some
/// writes are acknowledged; then site 1 is cut off under load (both replicas frozen: they neither
/// answer nor die), the writers stop, and replica 3 is thawed and recovered at once, while it
/// still works through what site 1 sent it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_report_adds_up_while_the_survivor_catches_up() {
    let _serial = serial().await;
    init_tracing();
    let mut seed = Seed::from_env("recovery_report_adds_up_while_the_survivor_catches_up");

    info!("--- start site 1 (replicas 1, 2: sync) and site 2 (replica 3: async), strict mode");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Async],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;

    info!("--- four clients write unique keys (1 s per attempt: site 1 will freeze under them)");
    let history = Arc::new(History::new());
    let clients = (0..4)
        .map(|_| {
            cluster.new_client_with(ClientOptions {
                deadline: WRITER_DEADLINE,
                attempt_timeout: Duration::from_secs(1),
                ..ClientOptions::default()
            })
        })
        .collect();
    let writers = Writers::start(clients, history.clone(), "lag/e1");
    writers
        .must_wait_acknowledged(seed.between(50, 150), EVENT_TIMEOUT)
        .await;

    let frozen_for = seed.between(20, 60);
    info!("--- freeze replica 3 while {frozen_for} writes are acknowledged; cut site 1 off; thaw 3");
    history.note("SIGSTOP replica 3");
    cluster.must_pause(3);
    writers.must_wait_more(frozen_for, EVENT_TIMEOUT).await;
    cluster.must_pause(1);
    cluster.must_pause(2);
    history.note("SIGSTOP replicas 1 and 2");
    let report = writers.stop().await;
    info!(%report, "writers stopped (the writes in flight to frozen site 1 end unknown)");
    cluster.must_resume(3);
    history.note("SIGCONT replica 3");

    info!("--- forced recovery on replica 3 at once");
    let recover_called_at = history.elapsed();
    let recovered = must_recover(&cluster, 3).await;
    history.note(format!("replica 3 recovered into epoch 2: {recovered:?}"));
    cluster.must_kill9(1);
    cluster.must_kill9(2);
    history.note("kill -9 replicas 1 and 2");
    let start_revision = must_wait_primary_of_epoch(&cluster, 3, 2, recovered.start_index).await;

    info!("--- the history agrees with the loss report, and the report adds up");
    let state = cluster.must_range("lag/").await;
    must_check_loss(&history, &state, &recovered, recover_called_at, start_revision);
    must_be_consistent_report(&recovered, 1);
}
