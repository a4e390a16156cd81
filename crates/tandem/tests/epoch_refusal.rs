//! Forced recovery is refused while it is not a disaster: on any replica while the primary of
//! its epoch is alive and reachable, on the primary itself, and without `--force`. A refusal
//! changes nothing: same epoch everywhere, same primary in the same term, writes go on.

mod epoch_common;

use std::collections::BTreeMap;

use tandem_testkit::client::ClientError;
use tandem_testkit::{init_tracing, Cluster, ClusterOptions, Kind};
use tracing::info;

use epoch_common::{serial, QUIET_WINDOW, TANDEM};

/// Refusals, with a live primary of epoch 1: their gRPC code and the words the message must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_is_refused_while_the_primary_is_reachable() {
    let _serial = serial().await;
    init_tracing();

    info!("--- start replicas 1, 2 (sync) and 3 (async), strict mode");
    let cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Async],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;
    cluster.must_put("refusal/before", "1").await;
    // The async replica is not waited for by the put (strict mode waits for the sync ones):
    // until it has joined, it refuses recovery for that reason instead.
    cluster.must_wait_caught_up(&[1, 2, 3]).await;
    let primary = cluster.must_wait_primary().await;
    let before = cluster.must_status(primary).await;
    let secondary = if primary == 1 { 2 } else { 1 };

    info!("--- recover --force on the async replica 3 and on sync replica {secondary}: refused");
    let client = cluster.client();
    for id in [3, secondary] {
        let refusal = match client.recover(&cluster.addr(id), true).await {
            Err(ClientError::Refused(status)) => status,
            Err(e) => panic!("recovery on replica {id}: unexpected error {e}"),
            Ok(report) => panic!("forced recovery on replica {id} succeeded beside live primary {primary}: {report:?}"),
        };
        assert_eq!(
            format!("{:?}", refusal.code()),
            "FailedPrecondition",
            "replica {id}: {refusal:?}"
        );
        assert!(
            refusal.message().contains("reachable") && refusal.message().contains(&cluster.addr(primary)),
            "replica {id}: the refusal does not name the reachable primary: {refusal:?}"
        );
    }

    info!("--- recover --force on the primary {primary} itself: refused");
    match client.recover(&cluster.addr(primary), true).await {
        Err(ClientError::Refused(status)) => {
            assert_eq!(format!("{:?}", status.code()), "FailedPrecondition", "{status:?}");
            assert!(
                status.message().contains("primary"),
                "the refusal does not say why: {status:?}"
            );
        }
        Err(e) => panic!("recovery on the primary: unexpected error {e}"),
        Ok(report) => panic!("forced recovery on the primary succeeded: {report:?}"),
    }

    info!("--- recover without force: refused, and says --force");
    match client.recover(&cluster.addr(3), false).await {
        Err(ClientError::Refused(status)) => {
            assert_eq!(format!("{:?}", status.code()), "FailedPrecondition", "{status:?}");
            assert!(status.message().contains("--force"), "{status:?}");
        }
        Err(e) => panic!("recovery without force: unexpected error {e}"),
        Ok(report) => panic!("recovery without force succeeded: {report:?}"),
    }

    info!("--- nothing changed, for {QUIET_WINDOW:?}: epoch 1 everywhere, same primary, same term");
    let started = std::time::Instant::now();
    while started.elapsed() < QUIET_WINDOW {
        let all: BTreeMap<u64, _> = cluster.status_all().await;
        for (id, status) in &all {
            let status = match status {
                Ok(status) => status,
                Err(e) => panic!("replica {id} does not answer: {e}"),
            };
            assert!(
                status.epoch == 1 && status.fenced_by_epoch == 0 && status.epoch_start_index == 0,
                "replica {id} left epoch 1: {status:?}"
            );
            assert_eq!(
                status.primary_id,
                Some(primary),
                "replica {id} names another primary: {status:?}"
            );
            assert_eq!(status.term, before.term, "replica {id} is in another term: {status:?}");
            let role = match *id {
                id if id == primary => "primary",
                3 => "learner",
                _ => "secondary",
            };
            assert_eq!(status.role, role, "replica {id}: {status:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    info!("--- writes go on and reach every replica");
    cluster.must_put("refusal/after", "2").await;
    cluster.must_wait_caught_up(&[1, 2, 3]).await;
    let on_primary = cluster.must_range("refusal/").await;
    assert_eq!(on_primary.len(), 2, "{on_primary:?}");
    for id in [1, 2, 3] {
        assert_eq!(
            cluster.must_range_on(id, "refusal/").await,
            on_primary,
            "replica {id} differs from the primary"
        );
    }
}
