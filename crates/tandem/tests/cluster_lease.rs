//! Lease fencing: a transaction fenced with a lease's token commits only while that lease is
//! live and current for its name. An expired, superseded or revoked token is refused with
//! `TxnOutcome::Fenced`, and nothing it would have written is applied. A live lease survives a
//! failover.

mod common;

use tandem_client::{Client, LeaseGrant, Txn, TxnOutcome};
use tandem_testkit::{init_tracing, must_eventually, Cluster, ClusterOptions, Kind, EVENT_TIMEOUT};
use tracing::info;

use common::{now_ms, TANDEM};

/// A short TTL, so that expiry comes quickly, but long enough for a few commits on a loaded
/// machine.
const SHORT_TTL_MS: u64 = 5_000;
/// A TTL no phase of the test outlives.
const LONG_TTL_MS: u64 = 120_000;

async fn must_grant(client: &Client, name: &str, holder: &str, ttl_ms: u64) -> LeaseGrant {
    match client.lease_grant(name, holder, ttl_ms).await {
        Ok(grant) => grant,
        Err(e) => panic!("lease grant {name} for {holder}: {e}"),
    }
}

/// Puts `key` fenced with `token`; returns the outcome.
async fn fenced_put(client: &Client, token: u64, key: &str) -> TxnOutcome {
    match client.txn(Txn::new().put(key, "fenced").fence(token)).await {
        Ok(outcome) => outcome,
        Err(e) => panic!("fenced put of {key} with token {token}: {e}"),
    }
}

fn assert_committed(outcome: &TxnOutcome, what: &str) {
    assert!(
        matches!(outcome, TxnOutcome::Committed { .. }),
        "{what}: expected a commit, got {outcome:?}"
    );
}

fn assert_fenced(outcome: &TxnOutcome, what: &str) {
    assert!(
        matches!(outcome, TxnOutcome::Fenced { .. }),
        "{what}: expected Fenced, got {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_are_refused_once_expired_superseded_or_revoked() {
    init_tracing();

    info!("--- start three sync replicas (available mode, so that the failover phase can write)");
    let options = ClusterOptions::default().sync_mode("available").sync_timeout_ms(1000);
    let mut cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;
    let client = cluster.new_client();

    info!("--- holder a is granted the lease with a {SHORT_TTL_MS} ms TTL; a fenced write commits");
    let a = must_grant(&client, "leader", "a", SHORT_TTL_MS).await;
    assert!(a.granted, "first grant refused: {a:?}");
    assert_committed(
        &fenced_put(&client, a.token, "lease/a-1").await,
        "token of a while live",
    );

    info!("--- holder b is refused while a's lease is live, and told who holds it");
    let refused = must_grant(&client, "leader", "b", SHORT_TTL_MS).await;
    assert!(!refused.granted, "a second grant while the lease is live: {refused:?}");
    assert_eq!(refused.holder, "a");
    assert_eq!(refused.token, a.token);

    info!("--- after a's lease expires, a's token is refused");
    must_eventually("a's lease to expire by the wall clock", EVENT_TIMEOUT, || async {
        let now = now_ms();
        if now > a.expires_at_ms {
            Ok(())
        } else {
            Err(format!("{} ms left", a.expires_at_ms - now))
        }
    })
    .await;
    assert_fenced(
        &fenced_put(&client, a.token, "lease/a-expired").await,
        "token of a after expiry",
    );
    assert_eq!(
        client.lease_keep_alive(a.token).await.expect("keep-alive answer"),
        None,
        "an expired lease kept alive"
    );

    info!("--- b is granted the name: a newer token; b's writes commit, a's stay refused");
    let b = must_grant(&client, "leader", "b", LONG_TTL_MS).await;
    assert!(b.granted, "grant after expiry refused: {b:?}");
    assert!(
        b.token > a.token,
        "the newer token {} is not above {}",
        b.token,
        a.token
    );
    assert_committed(&fenced_put(&client, b.token, "lease/b-1").await, "token of b");
    assert_fenced(
        &fenced_put(&client, a.token, "lease/a-superseded").await,
        "superseded token of a",
    );
    let extended = client.lease_keep_alive(b.token).await.expect("keep-alive answer");
    assert!(
        extended.is_some_and(|e| e >= b.expires_at_ms),
        "b's keep-alive: {extended:?}"
    );

    info!("--- b's lease survives a failover");
    let primary = cluster.must_wait_primary().await;
    cluster.must_kill9(primary);
    let new_primary = cluster.must_wait_primary().await;
    info!(primary, new_primary, "failed over");
    assert_committed(
        &fenced_put(&client, b.token, "lease/b-after-failover").await,
        "token of b after failover",
    );
    assert_fenced(
        &fenced_put(&client, a.token, "lease/a-after-failover").await,
        "token of a after failover",
    );
    cluster.must_restart(primary).await;

    info!("--- b revokes its lease: its token is refused, and a new grant succeeds at once");
    if let Err(e) = client.lease_revoke(b.token).await {
        panic!("revoke b's lease: {e}");
    }
    assert_fenced(
        &fenced_put(&client, b.token, "lease/b-revoked").await,
        "revoked token of b",
    );
    let c = must_grant(&client, "leader", "c", LONG_TTL_MS).await;
    assert!(c.granted, "grant after revoke refused: {c:?}");
    assert!(c.token > b.token);
    assert_committed(&fenced_put(&client, c.token, "lease/c-1").await, "token of c");

    info!("--- exactly the writes fenced with a current token were applied");
    let keys = common::keys(&cluster.must_range("lease/").await);
    assert_eq!(
        keys,
        vec!["lease/a-1", "lease/b-1", "lease/b-after-failover", "lease/c-1"]
    );
}
