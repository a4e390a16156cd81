//! Regressions: two ways a replica of the superseded epoch could escape its fence when it comes
//! back (both fixed; see each test's comment).

mod epoch_common;

use std::time::{Duration, Instant};

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, Kind};
use tracing::info;

use epoch_common::{
    must_recover, must_wait_fenced, must_wait_fenced_never_primary, must_wait_primary_of_epoch, must_wait_silent,
    serial, TANDEM,
};

/// How long a returning replica has to learn its fence from a peer: many election rounds.
const LEARN_TIMEOUT: Duration = Duration::from_secs(10);

/// Site 1 is lost: the primary (1) is killed, its partner (2) hangs (SIGSTOP). Recovery on 3.
/// The old primary restarts with its data while 2 still hangs: it must not act as primary of the
/// superseded epoch, not even until its start probe is answered.
///
/// Regression: openraft 0.9 restores a node whose stored vote is its own committed leadership as
/// leader at once on startup, whatever `enable_elect` says. An engine therefore serves nothing,
/// sends nothing and accepts no Raft traffic (and status says `starting`) until its start probe,
/// which reads the membership from storage, has found no newer epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_old_primary_never_acts_as_primary() {
    let _serial = serial().await;
    init_tracing();

    info!("--- start replicas 1 (sync), 2 (sync) and 3 (async), strict mode; replica 1 primary");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Async],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;
    if cluster.must_wait_primary().await != 1 {
        if let Err(e) = cluster.client().switchover(1).await {
            panic!("switchover to replica 1 failed: {e}");
        }
        cluster.must_wait_primary_is(1).await;
    }
    cluster.must_put("gaps/e1", "1").await;
    cluster.must_wait_caught_up(&[2, 3]).await;

    info!("--- site 1 is lost: kill -9 the primary 1, freeze 2; forced recovery on replica 3");
    cluster.must_kill9(1);
    cluster.must_pause(2);
    must_wait_silent(&cluster, 3, Duration::from_millis(300)).await;
    let recovered = must_recover(&cluster, 3).await;
    must_wait_primary_of_epoch(&cluster, 3, 2, recovered.start_index).await;
    let addr3 = cluster.addr(3);

    info!("--- the old primary restarts with its data: fenced, never primary on the way");
    let restarted = Instant::now();
    cluster.must_restart(1).await;
    info!(ready_ms = restarted.elapsed().as_millis() as u64, "replica 1 is ready");
    must_wait_fenced_never_primary(&cluster, &[1], 2, &addr3).await;
}

/// Site 1 is lost; recovery on 3; replica 1 comes back and is fenced. With 3 and 1 frozen,
/// replica 2 comes back: its start probe reaches no one, so it tries to campaign (its pre-votes
/// reach no one either). Replica 1 is thawed: its refusals must tell replica 2 of the newer
/// epoch, which then stops trying, fenced.
///
/// Regression: a fenced replica's refusal now carries the newer epoch (`tandem-epoch`), so an
/// old-epoch peer that reaches it learns it is superseded and stops campaigning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_peer_refusal_fences_a_returning_replica() {
    let _serial = serial().await;
    init_tracing();

    info!("--- start replicas 1 (sync), 2 (sync) and 3 (async), strict mode");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Async],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;
    cluster.must_put("gaps/e1", "1").await;
    cluster.must_wait_caught_up(&[3]).await;

    info!("--- kill -9 site 1; forced recovery on replica 3");
    cluster.must_kill9(1);
    cluster.must_kill9(2);
    must_wait_silent(&cluster, 3, Duration::from_millis(300)).await;
    let recovered = must_recover(&cluster, 3).await;
    must_wait_primary_of_epoch(&cluster, 3, 2, recovered.start_index).await;
    let addr3 = cluster.addr(3);

    info!("--- replica 1 comes back and is fenced by epoch 2");
    cluster.must_restart(1).await;
    must_wait_fenced(&cluster, 1, 2, &addr3).await;

    info!("--- freeze replicas 3 and 1; replica 2 comes back, reaches no one, and tries to campaign");
    cluster.must_pause(3);
    cluster.must_pause(1);
    cluster.must_restart(2).await;
    let status = cluster
        .must_wait_status(2, "trying to campaign (its probe and pre-votes reached no peer)", |s| {
            s.pre_votes_refused >= 1 && s.epoch == 1
        })
        .await;
    info!(
        term = status.term,
        role = status.role,
        "replica 2 tries to campaign in epoch 1"
    );

    info!("--- thaw replica 1: its refusals must tell replica 2 of epoch 2");
    cluster.must_resume(1);
    let learned = cluster
        .wait_status(2, "fenced by epoch 2", LEARN_TIMEOUT, |s| {
            assert_ne!(s.role, "primary", "replica 2 of epoch 1 became primary: {s:?}");
            s.role == "fenced" && s.fenced_by_epoch == 2
        })
        .await;
    cluster.must_resume(3);
    if let Err(e) = learned {
        panic!("replica 2 never learned of epoch 2 from its fenced peer, replica 1: {e}");
    }
}
