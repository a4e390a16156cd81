//! Early replication: the primary sends its new entries to its followers while it syncs them to
//! its own log. Followers accept them and write each entry once (openraft's own AppendEntries of
//! the same entries is answered from their early answers, not sent again), and every replica
//! ends with the same data.

mod common;

use std::time::Duration;

use common::{start_set, start_set_with};
use tandem_client::{Client, Txn, TxnOutcome};
use tandem_replica::Timers;
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

/// [`WRITERS`] writers at once, each putting [`PUTS_EACH`] keys under `prefix/`, one after the
/// other; returns when every put is acknowledged.
async fn write_at_once(client: &Client, prefix: &str) {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                for i in 0..PUTS_EACH {
                    put(&client, format!("{prefix}/w{w:02}/{i:03}")).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
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
    write_at_once(&client, "early").await;
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

/// With openraft's periodic heartbeat 2 s apart, a follower that learns the commit index of a
/// burst's last write within a second learned it from what is sent at once: an early message, openraft's heartbeat
/// after the commit (or the early message answering it), or openraft's AppendEntries carrying
/// it. None of them may be swallowed: an AppendEntries answered from early answers must not be
/// the one that would have told the follower the last commit. (Were one swallowed, each check
/// would still pass if the periodic heartbeat happened to come within its second: six checks
/// all passing so is a 1-in-64 chance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_learn_the_last_commit_of_a_burst_without_a_periodic_heartbeat() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set_with(
        3,
        root.path(),
        |_| TlsFiles::default(),
        |config| {
            config.timers = Timers {
                heartbeat_ms: 2_000,
                election_min_ms: 4_000,
                election_max_ms: 6_000,
            }
        },
    )
    .await;
    let primary = client.discover().await.expect("primary");

    for round in 0..3 {
        info!(round, "--- {WRITERS} writers at once, then nothing");
        write_at_once(&client, &format!("burst/{round}")).await;
        let committed = client.status(&primary).await.expect("status").commit_index;
        for replica in replicas.iter().filter(|r| r.addr != primary) {
            // Well within the heartbeat interval: what is sent at once arrives in milliseconds.
            common::eventually(
                "the follower learns the primary's commit index",
                Duration::from_secs(1),
                async || {
                    client
                        .status(&replica.addr)
                        .await
                        .is_ok_and(|status| status.commit_index >= committed)
                },
            )
            .await;
        }
    }

    for replica in &mut replicas {
        replica.stop().await;
    }
}
