//! Membership changes at run time: add a replica, change its kind (async learner → sync voter,
//! sync → witness), remove one — with writes going on between every step.

mod common;

use std::time::Duration;

use common::{eventually, start_set, TestReplica};
use tandem_client::{ClientError, Member};
use tandem_tls::TlsFiles;

fn kinds(members: &[Member]) -> Vec<(u64, String)> {
    let mut kinds: Vec<(u64, String)> = members.iter().map(|m| (m.id, m.kind.clone())).collect();
    kinds.sort();
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_added_rekinded_and_removed_while_writes_go_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    client.put("m/0", "before").await.expect("put");

    eprintln!("--- a fourth replica joins as async (a learner) and catches up");
    let fourth = TestReplica::start(4, root.path().join("r4"), TlsFiles::default()).await;
    let members = client
        .add_replica(Member {
            id: 4,
            addr: fourth.addr.clone(),
            kind: "async".into(),
        })
        .await
        .expect("add replica 4");
    assert!(kinds(&members).contains(&(4, "async".into())), "{members:?}");
    client.put("m/1", "after add").await.expect("put");
    eventually("replica 4 holds the data", Duration::from_secs(10), async || {
        client.get_stale(&fourth.addr, "m/1").await.ok().flatten().is_some()
    })
    .await;
    let status = client.status(&fourth.addr).await.expect("status of 4");
    assert_eq!(status.role, "learner");

    eprintln!("--- replica 4 becomes a sync voter");
    let members = client.set_kind(4, "sync").await.expect("set kind");
    assert!(kinds(&members).contains(&(4, "sync".into())), "{members:?}");
    let primary = client.discover().await.expect("primary");
    let view = client.status(&primary).await.expect("primary status");
    assert!(view.replicas.iter().any(|r| r.id == 4 && r.voter), "{view:?}");
    client.put("m/2", "after set-kind").await.expect("put");

    eprintln!("--- a secondary becomes a witness: it serves no client reads any more");
    let secondary = replicas.iter().find(|r| r.addr != primary).expect("a secondary");
    let (witness_id, witness_addr) = (secondary.id, secondary.addr.clone());
    client.set_kind(witness_id, "witness").await.expect("set kind witness");
    match client.get_stale(&witness_addr, "m/2").await {
        Err(ClientError::Unavailable { reason }) => assert!(reason.contains("witness"), "{reason}"),
        other => panic!("a witness must refuse client reads, got {other:?}"),
    }

    eprintln!("--- the primary cannot remove itself; another replica is removed");
    let primary_id = view.id;
    let refused = client.remove_replica(primary_id).await;
    assert!(matches!(refused, Err(ClientError::Refused(_))), "{refused:?}");
    let removed = replicas
        .iter()
        .find(|r| r.addr != primary && r.id != witness_id)
        .map(|r| r.id);
    let removed = removed.unwrap_or(4);
    let members = client.remove_replica(removed).await.expect("remove");
    assert!(!members.iter().any(|m| m.id == removed), "{members:?}");
    client.put("m/3", "after remove").await.expect("put after remove");
    assert_eq!(client.range("m/", None).await.expect("range").len(), 4);

    for replica in &mut replicas {
        replica.stop().await;
    }
    let mut fourth = fourth;
    fourth.stop().await;
}
