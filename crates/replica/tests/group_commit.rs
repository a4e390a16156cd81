//! Group commit on the primary: concurrent transactions share log entries (and so log fsyncs),
//! and each still gets its own revision, its own result and its own change event, exactly as if
//! it had been proposed alone.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::start_set;
use tandem_client::{Client, Txn, TxnOutcome};
use tandem_tls::TlsFiles;
use tracing::info;

/// Concurrent writers, and writes per writer.
const WRITERS: u64 = 64;
const WRITES_EACH: u64 = 16;
/// Each writer's write number `FAILING_WRITE` is a compare-and-set that cannot hold.
const FAILING_WRITE: u64 = 7;

/// What one writer's write gave: the key it put and its revision, or the failed compare.
enum Written {
    Put { key: String, revision: u64 },
    CompareFailed { actual: u64 },
}

/// Writer `w`: puts `gc/w/i` for every `i`, except that write `FAILING_WRITE` asks for its
/// previous key at a version it does not have.
async fn writer(client: Client, w: u64) -> Vec<Written> {
    let mut written = Vec::new();
    for i in 0..WRITES_EACH {
        let key = format!("gc/{w:02}/{i:02}");
        let txn = if i == FAILING_WRITE {
            Txn::new()
                .compare(format!("gc/{w:02}/{:02}", i - 1), 5)
                .put(key.clone(), "never")
        } else {
            Txn::new().put(key.clone(), format!("{w}-{i}"))
        };
        match client.txn(txn).await.expect("a write to a healthy set succeeds") {
            TxnOutcome::Committed { revision, versions } => {
                assert_eq!(versions, vec![1], "{key} is written once");
                written.push(Written::Put { key, revision });
            }
            TxnOutcome::CompareFailed {
                key: compared, actual, ..
            } => {
                assert_eq!(i, FAILING_WRITE, "only the failing write fails ({compared})");
                written.push(Written::CompareFailed { actual });
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_keep_their_own_revisions() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    let primary = client.discover().await.expect("primary");
    let before = client.status(&primary).await.expect("status");
    let mut watch = client.watch("gc/", before.revision).await.expect("watch");

    info!("--- {WRITERS} writers, {WRITES_EACH} transactions each, at once");
    let tasks: Vec<_> = (0..WRITERS).map(|w| tokio::spawn(writer(client.clone(), w))).collect();
    let mut puts = BTreeMap::new();
    let mut compare_failures = 0;
    for task in tasks {
        for written in task.await.expect("writer") {
            match written {
                Written::Put { key, revision } => {
                    assert!(puts.insert(revision, key).is_none(), "revision {revision} given twice");
                }
                Written::CompareFailed { actual } => {
                    assert_eq!(actual, 1, "the compared key exists at version 1");
                    compare_failures += 1;
                }
            }
        }
    }
    let total = WRITERS * WRITES_EACH;
    assert_eq!(compare_failures, WRITERS);
    let committed = total - WRITERS;

    info!("--- one revision per committed transaction, with no gap");
    let revisions: Vec<u64> = puts.keys().copied().collect();
    let expected: Vec<u64> = (before.revision + 1..=before.revision + committed).collect();
    assert_eq!(revisions, expected);

    info!("--- far fewer log entries (and log fsyncs) than transactions");
    let after = client.status(&primary).await.expect("status");
    let txns = after.txns_proposed - before.txns_proposed;
    let entries = after.txn_entries_proposed - before.txn_entries_proposed;
    let log_writes = after.log_writes - before.log_writes;
    info!(txns, entries, log_writes, "group commit");
    assert_eq!(txns, total, "every transaction went through the proposer");
    assert!(
        entries * 4 <= txns,
        "{txns} transactions took {entries} entries: they were not batched"
    );
    assert!(
        log_writes * 4 <= txns,
        "{txns} transactions took {log_writes} log writes on the primary"
    );

    info!("--- the change feed has one event per transaction, in revision order");
    let mut seen = BTreeSet::new();
    let mut last = before.revision;
    while (seen.len() as u64) < committed {
        let events = watch.next().await.expect("the feed is open").expect("events");
        for event in events {
            assert_eq!(event.revision, last + 1, "revisions follow each other");
            assert_eq!(puts.get(&event.revision), Some(&event.key), "the event of that write");
            last = event.revision;
            seen.insert(event.key);
        }
    }
    let failed_suffix = format!("/{FAILING_WRITE:02}");
    let written_anyway: Vec<&String> = seen.iter().filter(|key| key.ends_with(&failed_suffix)).collect();
    assert!(
        written_anyway.is_empty(),
        "written although their compare failed: {written_anyway:?}"
    );

    info!("--- every replica applies the batches to the same keys");
    for replica in &replicas {
        common::eventually("the replica applies every write", Duration::from_secs(10), async || {
            client
                .range("gc/", Some(&replica.addr))
                .await
                .is_ok_and(|kvs| kvs.len() as u64 == committed)
        })
        .await;
    }

    for replica in &mut replicas {
        replica.stop().await;
    }
}

/// Puts more changes than the live channel holds while a watcher does not read, with values
/// large enough that the stream's flow-control window fills long before.
const LAGGING_WRITES_EACH: u64 = 80;
const LAGGING_VALUE_BYTES: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_falls_behind_the_live_feed_catches_up_from_the_history() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    let primary = client.discover().await.expect("primary");
    let before = client.status(&primary).await.expect("status");
    let mut watch = client.watch("lag/", before.revision).await.expect("watch");

    let total = WRITERS * LAGGING_WRITES_EACH;
    assert!(
        total > tandem_store::state_machine::CHANGE_CHANNEL_CAPACITY as u64,
        "more changes than the live channel holds"
    );
    info!("--- {total} puts while the watcher reads nothing");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..LAGGING_WRITES_EACH {
                    let key = format!("lag/{w:02}/{i:02}");
                    let value = vec![b'v'; LAGGING_VALUE_BYTES];
                    match client.txn(Txn::new().put(key.clone(), value)).await.expect("put") {
                        TxnOutcome::Committed { revision, .. } => revisions.push((revision, key)),
                        other => panic!("unexpected outcome {other:?}"),
                    }
                }
                revisions
            })
        })
        .collect();
    let mut puts = BTreeMap::new();
    for task in tasks {
        puts.extend(task.await.expect("writer"));
    }
    assert_eq!(puts.len() as u64, total);

    info!("--- the watcher reads: every change once, in revision order, none missing");
    let mut last = before.revision;
    while last < before.revision + total {
        let events = watch.next().await.expect("the feed is open").expect("events");
        for event in events {
            assert_eq!(event.revision, last + 1, "revisions follow each other");
            assert_eq!(puts.get(&event.revision), Some(&event.key), "the event of that write");
            last = event.revision;
        }
    }

    info!("--- and live changes follow");
    client.txn(Txn::new().put("lag/after", "v")).await.expect("put");
    let events = watch.next().await.expect("the feed is open").expect("events");
    assert_eq!(
        events.iter().map(|e| (e.revision, e.key.as_str())).collect::<Vec<_>>(),
        vec![(last + 1, "lag/after")]
    );

    for replica in &mut replicas {
        replica.stop().await;
    }
}
