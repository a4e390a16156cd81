//! Early replication: the primary sends its new entries to its followers while it syncs them to
//! its own log. Followers accept them and write each entry once (openraft's own AppendEntries of
//! the same entries is answered from their early answers, not sent again), and every replica
//! ends with the same data.

mod common;

use std::time::Duration;

use common::start_set;
use tandem_client::{Client, Txn, TxnOutcome};
use tandem_tls::TlsFiles;
use tracing::info;

/// Puts made one after the other, then by concurrent writers.
const SERIAL_PUTS: u64 = 100;
const WRITERS: u64 = 16;
const PUTS_EACH: u64 = 20;

async fn put(client: &Client, key: String) {
    let outcome = client
        .txn(Txn::new().put(key.clone(), "v"))
        .await
        .expect("a put succeeds");
    assert!(matches!(outcome, TxnOutcome::Committed { .. }), "{key}: {outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_accept_early_entries_and_write_each_entry_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    let primary = client.discover().await.expect("primary");
    let before = client.status(&primary).await.expect("status");

    info!("--- {SERIAL_PUTS} puts one after the other");
    for i in 0..SERIAL_PUTS {
        put(&client, format!("early/serial/{i:03}")).await;
    }
    let after_serial = client.status(&primary).await.expect("status");
    let sent = after_serial.early_appends_sent - before.early_appends_sent;
    let accepted = after_serial.early_appends_accepted - before.early_appends_accepted;
    let answered = after_serial.early_appends_answered - before.early_appends_answered;
    info!(sent, accepted, answered, "early appends after the serial puts");
    // Two followers; each put is at least one entry. Nothing else writes, so each follower holds
    // the previous entry when the next is made and gets nearly every one early.
    assert!(
        accepted >= SERIAL_PUTS,
        "followers accepted {accepted} of {sent} early messages for {SERIAL_PUTS} puts to 2 followers"
    );
    // openraft's own AppendEntries of those entries need not go: the early answers answer them.
    assert!(
        answered >= SERIAL_PUTS,
        "{answered} of openraft's AppendEntries answered from early answers, for {SERIAL_PUTS} puts to 2 followers"
    );

    info!("--- {WRITERS} writers at once");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..PUTS_EACH {
                    put(&client, format!("early/w{w:02}/{i:03}")).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let total = SERIAL_PUTS + WRITERS * PUTS_EACH;

    info!("--- every replica has every key");
    for replica in &replicas {
        common::eventually("the replica applies every put", Duration::from_secs(10), async || {
            client
                .range("early/", Some(&replica.addr))
                .await
                .is_ok_and(|kvs| kvs.len() as u64 == total)
        })
        .await;
    }

    info!("--- followers wrote each entry once: the early copy, not again from openraft");
    let primary_status = client.status(&primary).await.expect("status");
    for replica in replicas.iter().filter(|r| r.addr != primary) {
        let status = client.status(&replica.addr).await.expect("status");
        info!(
            replica = replica.id,
            entries = status.log_entries_written,
            primary_entries = primary_status.log_entries_written,
            "log entries written"
        );
        // The follower joined before any of these writes, so it wrote what the primary wrote
        // (plus the membership entries of the start, which the primary wrote first as well).
        assert!(
            status.log_entries_written <= primary_status.log_entries_written,
            "follower {} wrote {} entries, the primary {}: entries were written twice",
            replica.id,
            status.log_entries_written,
            primary_status.log_entries_written
        );
    }

    for replica in &mut replicas {
        replica.stop().await;
    }
}
