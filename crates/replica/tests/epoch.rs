//! Forced recovery seen from a client, in-process: the survivor starts a new epoch and no lease
//! of the old epoch survives it — a write fenced with an old token is refused.

mod common;

use common::start_set;
use tandem_client::{Client, ClientOptions, Txn, TxnOutcome};
use tandem_tls::TlsFiles;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_of_the_old_epoch_are_dead_after_a_forced_recovery() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;

    eprintln!("--- a holder takes a named lease and writes with its token");
    let lease = client
        .lease_grant("confserv/master", "master-a", 60_000)
        .await
        .expect("grant");
    assert!(lease.granted);
    let fenced_put = |token: u64, value: &'static str| Txn::new().put("config/x", value).fence(token);
    assert!(matches!(
        client.txn(fenced_put(lease.token, "1")).await.expect("txn"),
        TxnOutcome::Committed { .. }
    ));

    eprintln!("--- the primary and one secondary stop; the other secondary is recovered alone");
    let primary = client.discover().await.expect("primary");
    let survivor = replicas.iter().position(|r| r.addr != primary).expect("a secondary");
    let survivor_addr = replicas[survivor].addr.clone();
    for (i, replica) in replicas.iter_mut().enumerate() {
        if i != survivor {
            replica.stop().await;
        }
    }
    let report = client.recover(&survivor_addr, true).await.expect("recover");
    assert_eq!(report.epoch, report.previous_epoch + 1);
    assert!(report.leases_ended >= 1, "{report:?}");

    eprintln!("--- the old token is refused in the new epoch; a new grant gets a larger token");
    let survivor_client = Client::new(vec![survivor_addr.clone()], ClientOptions::default()).expect("client");
    match survivor_client.txn(fenced_put(lease.token, "2")).await.expect("txn") {
        TxnOutcome::Fenced { reason } => assert!(reason.contains("not a live lease"), "{reason}"),
        other => panic!("a token of the old epoch must be refused, got {other:?}"),
    }
    let fresh = survivor_client
        .lease_grant("confserv/master", "master-b", 60_000)
        .await
        .expect("grant");
    assert!(fresh.granted, "the name is free again in the new epoch");
    assert!(fresh.token > lease.token, "tokens keep growing across epochs");
    assert!(matches!(
        survivor_client.txn(fenced_put(fresh.token, "3")).await.expect("txn"),
        TxnOutcome::Committed { .. }
    ));
    let value = survivor_client.get("config/x").await.expect("get").map(|kv| kv.value);
    assert_eq!(value, Some(b"3".to_vec()), "the refused write changed nothing");

    replicas[survivor].stop().await;
}
