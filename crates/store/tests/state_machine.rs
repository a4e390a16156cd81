//! The state machine's semantics: compare-and-set transactions, versions and revisions,
//! fencing with leases, change history and its retention, the change feed, snapshots, and
//! durability across a reopen.

use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, Vote};
use tandem_store::state_machine::LEASE_RETENTION_MS;
use tandem_store::{
    Change, ChangeKind, Command, CommandResult, Compare, FenceError, HistoryLimit, LeaseResult, LogStore, Op, Replica,
    ReplicaKind, SnapshotFile, StateMachine, StateReader, StoreError, Txn, TxnResult, TypeConfig,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::broadcast::error::TryRecvError;

const CLUSTER: &str = "test-cluster";

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn del(key: &str) -> Op {
    Op::Delete { key: key.to_owned() }
}

fn cmp(key: &str, version: u64) -> Compare {
    Compare {
        key: key.to_owned(),
        version,
    }
}

/// A state machine in a temporary directory, applying one entry at a time with increasing
/// log indexes.
struct Fixture {
    /// The data directory (removed on drop).
    dir: TempDir,
    /// The state machine under test.
    sm: StateMachine,
    /// Its reader.
    reader: StateReader,
    /// The log index the next applied entry gets.
    next_index: u64,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_history(1000)
    }

    fn with_history(history_limit: u64) -> Fixture {
        Fixture::open_in(
            tempfile::tempdir().unwrap(),
            1,
            HistoryLimit::revisions(history_limit),
            1,
        )
    }

    /// Opens the state machine of replica `id` in `dir`; the next entry it applies gets
    /// `next_index`.
    fn open_in(dir: TempDir, id: u64, history: HistoryLimit, next_index: u64) -> Fixture {
        let (sm, reader) = StateMachine::open(dir.path(), CLUSTER, id, history).unwrap();
        Fixture {
            dir,
            sm,
            reader,
            next_index,
        }
    }

    /// Closes the state machine and keeps its directory: `(dir, next_index)`.
    fn close(self) -> (TempDir, u64) {
        let Fixture {
            dir,
            sm,
            reader,
            next_index,
        } = self;
        drop((sm, reader));
        (dir, next_index)
    }

    async fn apply(&mut self, command: Command) -> CommandResult {
        let entry = Entry::<TypeConfig> {
            log_id: log_id(self.next_index),
            payload: EntryPayload::Normal(command),
        };
        self.next_index += 1;
        let mut results = self.sm.apply([entry]).await.unwrap();
        assert_eq!(results.len(), 1);
        results.remove(0)
    }

    async fn txn(&mut self, compares: Vec<Compare>, ops: Vec<Op>, fence: Option<u64>, now_ms: u64) -> TxnResult {
        match self
            .apply(Command::Txn(Txn {
                compares,
                ops,
                fence,
                now_ms,
            }))
            .await
        {
            CommandResult::Txn(result) => result,
            other => panic!("unexpected result {other:?}"),
        }
    }

    async fn ops(&mut self, ops: Vec<Op>) -> TxnResult {
        self.txn(Vec::new(), ops, None, 0).await
    }

    async fn lease(&mut self, command: Command) -> LeaseResult {
        match self.apply(command).await {
            CommandResult::Lease(result) => result,
            other => panic!("unexpected result {other:?}"),
        }
    }

    async fn grant(&mut self, name: &str, holder: &str, ttl_ms: u64, now_ms: u64) -> LeaseResult {
        self.lease(Command::LeaseGrant {
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl_ms,
            now_ms,
        })
        .await
    }

    async fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.reader.get(key).await.unwrap().map(|kv| kv.value)
    }
}

fn committed(revision: u64, versions: Vec<u64>) -> TxnResult {
    TxnResult::Committed { revision, versions }
}

#[tokio::test]
async fn puts_create_keys_and_bump_versions() {
    let mut f = Fixture::new();
    assert_eq!(f.ops(vec![put("a", "1")]).await, committed(1, vec![1]));
    assert_eq!(f.ops(vec![put("a", "2")]).await, committed(2, vec![2]));
    assert_eq!(f.ops(vec![put("b", "x")]).await, committed(3, vec![1]));

    let a = f.reader.get("a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.version, a.create_revision, a.mod_revision),
        (&b"2"[..], 2, 1, 2)
    );
    let b = f.reader.get("b").await.unwrap().unwrap();
    assert_eq!((b.version, b.create_revision, b.mod_revision), (1, 3, 3));
    assert_eq!(f.reader.get("missing").await.unwrap(), None);
    assert_eq!(f.reader.revision().await.unwrap(), 3);
    assert_eq!(f.reader.key_count().await.unwrap(), 2);
    assert_eq!(f.reader.applied().await.unwrap(), Some(log_id(3)));
}

#[tokio::test]
async fn compare_and_set_succeeds_or_changes_nothing() {
    let mut f = Fixture::new();
    // Version 0 means "absent".
    assert_eq!(
        f.txn(vec![cmp("a", 0)], vec![put("a", "1")], None, 0).await,
        committed(1, vec![1])
    );
    assert_eq!(
        f.txn(vec![cmp("a", 0)], vec![put("a", "2")], None, 0).await,
        TxnResult::CompareFailed {
            key: "a".into(),
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(
        f.txn(vec![cmp("a", 1)], vec![put("a", "2")], None, 0).await,
        committed(2, vec![2])
    );
    assert_eq!(f.value("a").await, Some(b"2".to_vec()));
    assert_eq!(f.reader.revision().await.unwrap(), 2);
}

#[tokio::test]
async fn a_failed_transaction_applies_no_op_and_reports_the_first_failing_compare() {
    let mut f = Fixture::new();
    f.ops(vec![put("a", "1"), put("b", "1")]).await;
    let result = f
        .txn(
            vec![cmp("a", 1), cmp("b", 0), cmp("c", 7)],
            vec![put("a", "changed"), del("b"), put("c", "new")],
            None,
            0,
        )
        .await;
    assert_eq!(
        result,
        TxnResult::CompareFailed {
            key: "b".into(),
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(f.value("a").await, Some(b"1".to_vec()));
    assert_eq!(f.value("b").await, Some(b"1".to_vec()));
    assert_eq!(f.value("c").await, None);
    assert_eq!(f.reader.revision().await.unwrap(), 1);
    assert_eq!(f.reader.changes_after(1, 100).await.unwrap(), vec![]);
}

#[tokio::test]
async fn a_transaction_gets_one_revision_for_all_its_ops() {
    let mut f = Fixture::new();
    f.ops(vec![put("a", "1")]).await;
    let result = f.ops(vec![put("x", "1"), put("y", "1"), put("x", "2"), del("a")]).await;
    assert_eq!(result, committed(2, vec![1, 1, 2, 0]));
    let x = f.reader.get("x").await.unwrap().unwrap();
    assert_eq!((x.version, x.create_revision, x.mod_revision), (2, 2, 2));

    let changes = f.reader.changes_after(1, 100).await.unwrap();
    let summary: Vec<(u64, &str, ChangeKind, u64)> = changes
        .iter()
        .map(|c| (c.revision, c.key.as_str(), c.kind, c.version))
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, "x", ChangeKind::Put, 1),
            (2, "y", ChangeKind::Put, 1),
            (2, "x", ChangeKind::Put, 2),
            (2, "a", ChangeKind::Delete, 0),
        ]
    );
    assert!(changes[3].value.is_empty());
}

#[tokio::test]
async fn deletes_and_empty_transactions() {
    let mut f = Fixture::new();
    f.ops(vec![put("a", "1"), put("a", "2")]).await;
    assert_eq!(f.ops(vec![del("a")]).await, committed(2, vec![0]));
    assert_eq!(f.reader.get("a").await.unwrap(), None);

    // Deleting an absent key is a no-op that still takes a revision, without a change.
    assert_eq!(f.ops(vec![del("a")]).await, committed(3, vec![0]));
    assert_eq!(f.reader.changes_after(2, 100).await.unwrap(), vec![]);

    // A transaction without ops leaves the revision unchanged.
    assert_eq!(f.txn(vec![cmp("a", 0)], vec![], None, 0).await, committed(3, vec![]));
    assert_eq!(f.reader.revision().await.unwrap(), 3);

    // A re-created key starts again at version 1.
    assert_eq!(f.ops(vec![put("a", "new")]).await, committed(4, vec![1]));
    let a = f.reader.get("a").await.unwrap().unwrap();
    assert_eq!((a.version, a.create_revision, a.mod_revision), (1, 4, 4));
}

#[tokio::test]
async fn fencing_refuses_unknown_expired_superseded_and_revoked_tokens() {
    let mut f = Fixture::new();
    let LeaseResult::Granted {
        token: first,
        expires_at_ms,
    } = f.grant("primary", "node-a", 100, 1_000).await
    else {
        panic!("not granted")
    };
    assert_eq!(first, f.next_index - 1, "the token is the entry's log index");
    assert_eq!(expires_at_ms, 1_100);

    // Live and current: accepted (expiry is inclusive).
    assert_eq!(
        f.txn(vec![], vec![put("k", "a")], Some(first), 1_100).await,
        committed(1, vec![1])
    );
    // Expired.
    assert_eq!(
        f.txn(vec![], vec![put("k", "late")], Some(first), 1_101).await,
        TxnResult::Fenced(FenceError::Expired {
            token: first,
            expired_at_ms: 1_100
        })
    );
    // Never granted.
    assert_eq!(
        f.txn(vec![], vec![put("k", "x")], Some(9_999), 1_000).await,
        TxnResult::Fenced(FenceError::Unknown { token: 9_999 })
    );
    // A newer lease of the name supersedes the first, even judged by a clock that is behind.
    let LeaseResult::Granted { token: second, .. } = f.grant("primary", "node-b", 100, 1_200).await else {
        panic!("not granted")
    };
    assert!(second > first);
    assert_eq!(
        f.txn(vec![], vec![put("k", "stale")], Some(first), 1_050).await,
        TxnResult::Fenced(FenceError::Superseded {
            token: first,
            current: second,
            holder: "node-b".into()
        })
    );
    assert_eq!(
        f.txn(vec![], vec![put("k", "b")], Some(second), 1_250).await,
        committed(2, vec![2])
    );
    // Revoked.
    assert_eq!(
        f.lease(Command::LeaseRevoke { token: second }).await,
        LeaseResult::Revoked { token: second }
    );
    assert_eq!(
        f.txn(vec![], vec![put("k", "after revoke")], Some(second), 1_250).await,
        TxnResult::Fenced(FenceError::Unknown { token: second })
    );
    // A fenced transaction checks the fence before its compares, and applies nothing.
    assert_eq!(f.value("k").await, Some(b"b".to_vec()));
    assert_eq!(f.reader.revision().await.unwrap(), 2);
    // Absurd tokens do not break the apply.
    assert_eq!(
        f.txn(vec![], vec![put("k", "x")], Some(u64::MAX), 0).await,
        TxnResult::Fenced(FenceError::Unknown { token: u64::MAX })
    );
}

#[tokio::test]
async fn leases_are_exclusive_and_kept_alive() {
    let mut f = Fixture::new();
    let LeaseResult::Granted { token, .. } = f.grant("primary", "node-a", 100, 0).await else {
        panic!("not granted")
    };
    assert_eq!(
        f.grant("primary", "node-b", 100, 50).await,
        LeaseResult::Held {
            name: "primary".into(),
            holder: "node-a".into(),
            token,
            expires_at_ms: 100
        }
    );
    // Another name is independent.
    assert!(matches!(
        f.grant("other", "node-b", 100, 50).await,
        LeaseResult::Granted { .. }
    ));

    assert_eq!(
        f.lease(Command::LeaseKeepAlive { token, now_ms: 90 }).await,
        LeaseResult::Granted {
            token,
            expires_at_ms: 190
        }
    );
    let lease = f.reader.lease(token).await.unwrap().unwrap();
    assert_eq!(
        (
            lease.name.as_str(),
            lease.holder.as_str(),
            lease.ttl_ms,
            lease.expires_at_ms
        ),
        ("primary", "node-a", 100, 190)
    );
    assert_eq!(f.reader.lease_by_name("primary").await.unwrap(), Some(lease));
    assert_eq!(f.reader.leases().await.unwrap().len(), 2);

    // Too late: the lease expired.
    assert_eq!(
        f.lease(Command::LeaseKeepAlive { token, now_ms: 191 }).await,
        LeaseResult::NotFound { token }
    );
    // The name is free again; the old token cannot be revived.
    let LeaseResult::Granted {
        token: next,
        expires_at_ms,
    } = f.grant("primary", "node-b", 100, 300).await
    else {
        panic!("not granted")
    };
    assert_eq!(expires_at_ms, 400);
    assert_eq!(
        f.lease(Command::LeaseKeepAlive { token, now_ms: 150 }).await,
        LeaseResult::NotFound { token }
    );
    assert_eq!(f.reader.lease_by_name("primary").await.unwrap().unwrap().token, next);

    // Revoking frees the name at once.
    assert_eq!(
        f.lease(Command::LeaseRevoke { token: next }).await,
        LeaseResult::Revoked { token: next }
    );
    assert_eq!(f.reader.lease_by_name("primary").await.unwrap(), None);
    assert!(matches!(
        f.grant("primary", "node-c", 100, 310).await,
        LeaseResult::Granted { .. }
    ));
    assert_eq!(
        f.lease(Command::LeaseKeepAlive {
            token: 12_345,
            now_ms: 0
        })
        .await,
        LeaseResult::NotFound { token: 12_345 }
    );

    // A huge TTL saturates instead of failing the apply.
    assert!(matches!(
        f.grant("forever", "node-a", u64::MAX, 1).await,
        LeaseResult::Granted { expires_at_ms, .. } if expires_at_ms == i64::MAX as u64
    ));
}

#[tokio::test]
async fn long_expired_leases_are_swept_on_grant() {
    let mut f = Fixture::new();
    let LeaseResult::Granted { token: old, .. } = f.grant("a", "node-a", 10, 0).await else {
        panic!("not granted")
    };
    let now_ms = LEASE_RETENTION_MS + 100;
    assert!(matches!(
        f.grant("b", "node-b", 10, now_ms).await,
        LeaseResult::Granted { .. }
    ));
    assert_eq!(f.reader.lease(old).await.unwrap(), None);
    assert_eq!(f.reader.leases().await.unwrap().len(), 1);
    assert_eq!(
        f.txn(vec![], vec![put("k", "v")], Some(old), now_ms).await,
        TxnResult::Fenced(FenceError::Unknown { token: old })
    );
}

#[tokio::test]
async fn history_is_retained_for_the_configured_number_of_revisions() {
    let mut f = Fixture::with_history(3);
    assert_eq!(put_revisions(&mut f, 1, 5).await, 3);
    assert_eq!(f.reader.revision().await.unwrap(), 5);
    let revisions: Vec<u64> = f
        .reader
        .changes_after(2, 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.revision)
        .collect();
    assert_eq!(revisions, vec![3, 4, 5]);
    assert!(matches!(
        f.reader.changes_after(1, 100).await,
        Err(StoreError::Compacted {
            requested: 1,
            oldest: 3
        })
    ));
    assert_eq!(f.reader.changes_after(5, 100).await.unwrap(), vec![]);
}

/// Puts keys `k{first}` to `k{last}`, one revision each, and answers the oldest revision kept.
async fn put_revisions(f: &mut Fixture, first: u64, last: u64) -> u64 {
    for i in first..=last {
        f.ops(vec![put(&format!("k{i}"), "v")]).await;
    }
    f.reader.oldest_revision().await.unwrap()
}

#[tokio::test]
async fn revisions_beyond_the_bound_are_cut_in_batches() {
    // A bound of 8 revisions lets a quarter more (2) accumulate, then cuts back to 8.
    let mut f = Fixture::with_history(8);
    assert_eq!(
        put_revisions(&mut f, 1, 10).await,
        1,
        "10 revisions are within the slack"
    );
    assert_eq!(put_revisions(&mut f, 11, 11).await, 4, "cut back to the newest 8");
    assert_eq!(retained_revisions(&f.reader).await, (4..=11).collect::<Vec<u64>>());
    assert!(matches!(
        f.reader.changes_after(2, 100).await,
        Err(StoreError::Compacted {
            requested: 2,
            oldest: 4
        })
    ));
    // The default bound: 64 more at most, whatever its size.
    let limit = HistoryLimit::revisions(1000);
    let mut f = Fixture::open_in(tempfile::tempdir().unwrap(), 1, limit, 1);
    assert_eq!(
        put_revisions(&mut f, 1, 1064).await,
        1,
        "1,064 revisions are within the slack"
    );
    assert_eq!(
        put_revisions(&mut f, 1065, 1065).await,
        66,
        "cut back to the newest 1,000"
    );
}

/// Puts `n` keys named `{prefix}{i}` in one transaction.
async fn put_many(f: &mut Fixture, prefix: &str, n: usize) {
    let ops = (0..n).map(|i| put(&format!("{prefix}{i}"), "v")).collect();
    f.ops(ops).await;
}

async fn retained_revisions(reader: &StateReader) -> Vec<u64> {
    let oldest = reader.oldest_revision().await.unwrap();
    let mut revisions: Vec<u64> = reader
        .changes_after(oldest - 1, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|c| c.revision)
        .collect();
    revisions.dedup();
    revisions
}

#[tokio::test]
async fn history_is_bounded_by_changes_cutting_whole_revisions() {
    // At most 8 changes once more than 10 (8 plus a quarter) are kept.
    let limit = HistoryLimit {
        revisions: 1000,
        changes: 8,
    };
    let mut f = Fixture::open_in(tempfile::tempdir().unwrap(), 1, limit, 1);
    for r in 1..=3 {
        put_many(&mut f, &format!("r{r}-"), 3).await;
    }
    assert_eq!(
        retained_revisions(&f.reader).await,
        vec![1, 2, 3],
        "9 changes are within the slack"
    );
    put_many(&mut f, "r4-", 3).await;
    // 12 changes: revision 2 holds the 9th newest, so revisions 1 and 2 go.
    assert_eq!(f.reader.oldest_revision().await.unwrap(), 3);
    assert_eq!(retained_revisions(&f.reader).await, vec![3, 4]);
    assert!(matches!(
        f.reader.changes_after(1, 100).await,
        Err(StoreError::Compacted {
            requested: 1,
            oldest: 3
        })
    ));

    // The count survives a reopen (it is the table's row count, not a remembered number).
    let (dir, next_index) = f.close();
    let mut f = Fixture::open_in(dir, 1, limit, next_index);
    // A revision larger than the bound is kept whole while it is the newest...
    put_many(&mut f, "r5-", 12).await;
    assert_eq!(retained_revisions(&f.reader).await, vec![5]);
    assert_eq!(f.reader.changes_after(4, 100).await.unwrap().len(), 12);
    // ...and dropped whole once it is not.
    put_many(&mut f, "r6-", 1).await;
    assert_eq!(retained_revisions(&f.reader).await, vec![6]);
    // Nothing but history was dropped.
    assert_eq!(f.reader.key_count().await.unwrap(), 3 * 4 + 12 + 1);

    // A replica that installs a snapshot of this state and applies the same entries afterwards
    // compacts the same way.
    let mut snapshot = f.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut follower = Fixture::open_in(tempfile::tempdir().unwrap(), 2, limit, f.next_index);
    let mut data = follower.sm.begin_receiving_snapshot().await.unwrap();
    data.write_all(&read_all(&mut snapshot.snapshot).await).await.unwrap();
    follower.sm.install_snapshot(&snapshot.meta, data).await.unwrap();
    for r in 7..=12 {
        put_many(&mut f, &format!("r{r}-"), 2).await;
        put_many(&mut follower, &format!("r{r}-"), 2).await;
        assert_eq!(everything(&follower.reader).await, everything(&f.reader).await);
    }
    // At revision 11 (11 changes) revision 7 went; revision 12 brings 10, within the slack.
    assert_eq!(retained_revisions(&f.reader).await, vec![8, 9, 10, 11, 12]);
}

#[tokio::test]
async fn changes_after_never_splits_a_revision() {
    let mut f = Fixture::new();
    f.ops(vec![put("a", "1"), put("b", "1"), put("c", "1")]).await;
    f.ops(vec![put("d", "1")]).await;
    let changes = f.reader.changes_after(0, 2).await.unwrap();
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| c.revision == 1));
    let changes = f.reader.changes_after(0, 4).await.unwrap();
    assert_eq!(changes.len(), 4);
    let changes = f.reader.changes_after(1, 1).await.unwrap();
    assert_eq!(changes.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), vec!["d"]);
    assert_eq!(f.reader.changes_after(0, 0).await.unwrap(), vec![]);
}

#[tokio::test]
async fn range_lists_a_prefix_in_byte_order_with_paging() {
    let mut f = Fixture::new();
    f.ops(vec![
        put("app/b", "2"),
        put("app/a", "1"),
        put("app/\u{e9}", "3"),
        put("app/Z", "0"),
        put("apq", "no"),
        put("ap", "no"),
        put("other", "no"),
    ])
    .await;
    let keys = |kvs: Vec<tandem_store::KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(f.reader.range("app/", None, 100).await.unwrap()),
        vec!["app/Z", "app/a", "app/b", "app/\u{e9}"]
    );
    assert_eq!(
        keys(f.reader.range("app/", None, 2).await.unwrap()),
        vec!["app/Z", "app/a"]
    );
    assert_eq!(
        keys(f.reader.range("app/", Some("app/a".into()), 2).await.unwrap()),
        vec!["app/b", "app/\u{e9}"]
    );
    assert_eq!(
        keys(f.reader.range("app/", Some("a".into()), 1).await.unwrap()),
        vec!["app/Z"]
    );
    assert_eq!(f.reader.range("", None, 100).await.unwrap().len(), 7);
    assert_eq!(f.reader.range("zzz", None, 100).await.unwrap(), vec![]);
}

#[tokio::test]
async fn committed_changes_are_published_in_order() {
    let mut f = Fixture::new();
    let mut rx = f.reader.subscribe();
    f.ops(vec![put("a", "1")]).await;
    f.txn(vec![cmp("a", 5)], vec![put("a", "no")], None, 0).await; // fails: nothing published
    f.ops(vec![del("missing")]).await; // no change: nothing published
    f.ops(vec![put("a", "2"), del("a")]).await;

    let first: Arc<Vec<Change>> = rx.try_recv().unwrap();
    assert_eq!(
        *first,
        vec![Change {
            revision: 1,
            key: "a".into(),
            kind: ChangeKind::Put,
            value: b"1".to_vec(),
            version: 1
        }]
    );
    let second = rx.try_recv().unwrap();
    assert_eq!(second.len(), 2);
    assert_eq!(second[0].revision, 3);
    assert_eq!(second[1].kind, ChangeKind::Delete);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn one_apply_call_is_one_transaction_with_many_results() {
    let mut f = Fixture::new();
    let membership = Membership::new(
        vec![[1u64, 2].into_iter().collect()],
        [
            (
                1u64,
                Replica {
                    addr: "a:1".into(),
                    kind: ReplicaKind::Sync,
                },
            ),
            (
                2,
                Replica {
                    addr: "b:1".into(),
                    kind: ReplicaKind::Witness,
                },
            ),
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<u64, Replica>>(),
    );
    let entries = vec![
        Entry::<TypeConfig> {
            log_id: log_id(1),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2),
            payload: EntryPayload::Membership(membership.clone()),
        },
        Entry {
            log_id: log_id(3),
            payload: EntryPayload::Normal(Command::Txn(Txn {
                compares: vec![],
                ops: vec![put("a", "1")],
                fence: None,
                now_ms: 0,
            })),
        },
        Entry {
            log_id: log_id(4),
            payload: EntryPayload::Normal(Command::Txn(Txn {
                compares: vec![cmp("a", 1)],
                ops: vec![put("a", "2")],
                fence: None,
                now_ms: 0,
            })),
        },
    ];
    let results = f.sm.apply(entries).await.unwrap();
    assert_eq!(
        results,
        vec![
            CommandResult::None,
            CommandResult::None,
            CommandResult::Txn(committed(1, vec![1])),
            CommandResult::Txn(committed(2, vec![2])),
        ]
    );
    let (applied, stored) = f.sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(4)));
    assert_eq!(stored.log_id(), &Some(log_id(2)));
    assert_eq!(stored.membership(), &membership);
    assert_eq!(f.reader.applied_state().await.unwrap().1, stored);
}

/// The transactions of `a_batch_applies_each_transaction_as_if_proposed_alone`, given the
/// token of a live lease.
fn mixed_txns(token: u64) -> Vec<Txn> {
    let txn = |compares, ops, fence| Txn {
        compares,
        ops,
        fence,
        now_ms: 20,
    };
    vec![
        txn(vec![], vec![put("a", "1")], None),
        // Sees the first transaction of the same batch: "a" is at version 1 by now.
        txn(vec![cmp("a", 5)], vec![put("a", "no")], None),
        txn(vec![cmp("a", 1)], vec![put("a", "2"), put("b", "1")], None),
        txn(vec![], vec![put("c", "no")], Some(token + 1000)),
        txn(vec![], vec![put("c", "1")], Some(token)),
        txn(vec![cmp("c", 1)], vec![], None),
        txn(vec![], vec![del("a")], None),
    ]
}

#[tokio::test]
async fn a_batch_applies_each_transaction_as_if_proposed_alone() {
    // The same transactions: all in one batch entry on one store, one entry each on another.
    let mut batched = Fixture::new();
    let mut alone = Fixture::new();
    let mut token = 0;
    for f in [&mut batched, &mut alone] {
        f.ops(vec![put("k", "0")]).await;
        match f.grant("writer", "node-a", 1_000, 10).await {
            LeaseResult::Granted { token: t, .. } => token = t,
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut feed = batched.reader.subscribe();

    let results = match batched.apply(Command::Batch(mixed_txns(token))).await {
        CommandResult::Batch(results) => results,
        other => panic!("unexpected result {other:?}"),
    };
    let expected = vec![
        committed(2, vec![1]),
        TxnResult::CompareFailed {
            key: "a".into(),
            expected: 5,
            actual: 1,
        },
        committed(3, vec![2, 1]),
        TxnResult::Fenced(FenceError::Unknown { token: token + 1000 }),
        committed(4, vec![1]),
        // No ops: no new revision.
        committed(4, vec![]),
        committed(5, vec![0]),
    ];
    assert_eq!(results, expected);

    let mut one_by_one = Vec::new();
    for txn in mixed_txns(token) {
        match alone.apply(Command::Txn(txn)).await {
            CommandResult::Txn(result) => one_by_one.push(result),
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!(one_by_one, expected);

    // One change message per revision, in order, never a revision split or merged.
    let revisions: Vec<Vec<u64>> = std::iter::from_fn(|| feed.try_recv().ok())
        .map(|changes| changes.iter().map(|c| c.revision).collect())
        .collect();
    assert_eq!(revisions, vec![vec![2], vec![3, 3], vec![4], vec![5]]);

    // Identical state and history (only the applied log index differs: one entry against seven).
    for reader in [&batched.reader, &alone.reader] {
        assert_eq!(reader.revision().await.unwrap(), 5);
    }
    assert_eq!(
        batched.reader.range("", None, 100).await.unwrap(),
        alone.reader.range("", None, 100).await.unwrap()
    );
    assert_eq!(
        batched.reader.changes_after(0, 100).await.unwrap(),
        alone.reader.changes_after(0, 100).await.unwrap()
    );
    assert_eq!(
        batched.reader.leases().await.unwrap(),
        alone.reader.leases().await.unwrap()
    );
    assert_eq!(batched.value("a").await, None);
    assert_eq!(batched.value("b").await, Some(b"1".to_vec()));
    assert_eq!(batched.value("c").await, Some(b"1".to_vec()));
}

#[test]
fn a_log_entry_keeps_its_encoding() {
    // Entries written before `Command::Batch` existed must still decode: the variant index of a
    // command is part of the stored payload.
    let txn = Txn {
        compares: vec![],
        ops: vec![put("k", "v")],
        fence: None,
        now_ms: 7,
    };
    let stored: Vec<u8> = [
        &[0u8, 0, 0, 0][..],             // Command::Txn
        &[0, 0, 0, 0, 0, 0, 0, 0],       // no compares
        &[1, 0, 0, 0, 0, 0, 0, 0],       // one op
        &[0, 0, 0, 0],                   // Op::Put
        &[1, 0, 0, 0, 0, 0, 0, 0, b'k'], // key
        &[1, 0, 0, 0, 0, 0, 0, 0, b'v'], // value
        &[0],                            // no fence
        &[7, 0, 0, 0, 0, 0, 0, 0],       // now_ms
    ]
    .concat();
    assert_eq!(
        bincode::deserialize::<Command>(&stored).unwrap(),
        Command::Txn(txn.clone())
    );
    assert_eq!(bincode::serialize(&Command::Txn(txn.clone())).unwrap(), stored);
    let batch = bincode::serialize(&Command::Batch(vec![txn])).unwrap();
    assert_eq!(
        batch[..4],
        [4, 0, 0, 0],
        "Command::Batch comes after every older variant"
    );
}

/// Everything a reader can see, for comparing two stores.
async fn everything(reader: &StateReader) -> impl PartialEq + std::fmt::Debug {
    (
        reader.range("", None, 10_000).await.unwrap(),
        reader.leases().await.unwrap(),
        reader.revision().await.unwrap(),
        reader.oldest_revision().await.unwrap(),
        reader.applied().await.unwrap(),
        reader
            .changes_after(reader.oldest_revision().await.unwrap() - 1, 10_000)
            .await
            .unwrap(),
        reader.applied_state().await.unwrap().1,
    )
}

async fn fill(f: &mut Fixture) {
    f.ops(vec![put("a", "1"), put("b", "1")]).await;
    f.ops(vec![put("a", "2"), del("b"), put("c", "3")]).await;
    f.grant("primary", "node-a", 1_000, 10).await;
    f.ops(vec![put("d", "4")]).await;
}

#[tokio::test]
async fn a_snapshot_installed_elsewhere_gives_identical_reads() {
    let mut leader = Fixture::with_history(2);
    fill(&mut leader).await;
    let mut snapshot = leader.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, leader.reader.applied().await.unwrap());

    // The follower has diverging state of its own, which the snapshot replaces.
    let mut follower = Fixture::open_in(tempfile::tempdir().unwrap(), 2, HistoryLimit::revisions(1000), 1);
    let mut rx = follower.reader.subscribe();
    follower.ops(vec![put("stale", "x")]).await;
    rx.try_recv().unwrap();

    let mut data = follower.sm.begin_receiving_snapshot().await.unwrap();
    send_in_chunks(&read_all(&mut snapshot.snapshot).await, &mut data).await;
    follower.sm.install_snapshot(&snapshot.meta, data).await.unwrap();

    assert_eq!(everything(&follower.reader).await, everything(&leader.reader).await);
    assert_eq!(follower.reader.get("stale").await.unwrap(), None);
    let mut current = follower.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    // The follower's current snapshot can be sent on in turn: installed on a third replica it
    // gives the same reads again.
    let mut third = Fixture::open_in(tempfile::tempdir().unwrap(), 3, HistoryLimit::revisions(1000), 1);
    let mut data = third.sm.begin_receiving_snapshot().await.unwrap();
    data.write_all(&read_all(&mut current.snapshot).await).await.unwrap();
    third.sm.install_snapshot(&current.meta, data).await.unwrap();
    assert_eq!(everything(&third.reader).await, everything(&leader.reader).await);
    assert_eq!(follower.sm.applied_state().await.unwrap().0, snapshot.meta.last_log_id);
    // The retained changes newer than the follower's old state were published.
    let published: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|batch| batch[0].revision)
        .collect();
    assert_eq!(published, vec![2, 3]);
    let mut names: Vec<String> = std::fs::read_dir(follower.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("state.db"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["snapshot.current"], "no temporary files are left behind");

    // Survives a restart, and the follower's own replica id is kept.
    let (dir, _) = follower.close();
    let (mut reopened, reader) = StateMachine::open(dir.path(), CLUSTER, 2, HistoryLimit::revisions(1000)).unwrap();
    assert_eq!(everything(&reader).await, everything(&leader.reader).await);
    assert_eq!(
        reopened.get_current_snapshot().await.unwrap().unwrap().meta,
        snapshot.meta
    );
}

#[tokio::test]
async fn a_snapshot_of_another_cluster_is_refused() {
    let mut leader = Fixture::new();
    fill(&mut leader).await;
    let mut snapshot = leader.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (mut follower, reader) =
        StateMachine::open(dir.path(), "another-cluster", 2, HistoryLimit::revisions(1000)).unwrap();
    let mut data = follower.begin_receiving_snapshot().await.unwrap();
    data.write_all(&read_all(&mut snapshot.snapshot).await).await.unwrap();
    assert!(follower.install_snapshot(&snapshot.meta, data).await.is_err());
    let mut garbage = follower.begin_receiving_snapshot().await.unwrap();
    garbage.write_all(&b"not a database at all".repeat(100)).await.unwrap();
    assert!(follower.install_snapshot(&snapshot.meta, garbage).await.is_err());
    // A transfer abandoned half-way leaves nothing behind either.
    let mut abandoned = follower.begin_receiving_snapshot().await.unwrap();
    abandoned.write_all(b"half a snap").await.unwrap();
    drop(abandoned);
    assert_eq!(reader.key_count().await.unwrap(), 0);
    assert_eq!(reader.applied().await.unwrap(), None);
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.iter().all(|n| n.starts_with("state.db")), "{names:?}");
}

#[tokio::test]
async fn snapshot_ids_are_unique() {
    let mut f = Fixture::new();
    f.ops(vec![put("a", "1")]).await;
    let first = f.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let second = f.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    assert_eq!(first.meta.last_log_id, second.meta.last_log_id);

    // Also across a restart.
    let (dir, _) = f.close();
    let (mut sm, _reader) = StateMachine::open(dir.path(), CLUSTER, 1, HistoryLimit::revisions(1000)).unwrap();
    let third = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_ne!(third.meta.snapshot_id, first.meta.snapshot_id);
    assert_ne!(third.meta.snapshot_id, second.meta.snapshot_id);
}

#[tokio::test]
async fn reopening_after_drop_keeps_everything() {
    let mut f = Fixture::with_history(2);
    fill(&mut f).await;
    let before = everything(&f.reader).await;
    let applied_before = f.sm.applied_state().await.unwrap();
    let snapshot = f.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let (dir, next_index) = f.close();

    // Temporary files of a crashed snapshot build are cleaned up.
    std::fs::write(dir.path().join("snapshot.build-9.tmp"), b"half a copy").unwrap();
    std::fs::write(dir.path().join("snapshot.current.tmp"), b"half a snapshot").unwrap();
    let mut f = Fixture::open_in(dir, 1, HistoryLimit::revisions(2), next_index);
    check_dir_is_clean(f.dir.path());
    assert_eq!(everything(&f.reader).await, before);
    assert_eq!(f.sm.applied_state().await.unwrap(), applied_before);
    assert_eq!(f.sm.get_current_snapshot().await.unwrap().unwrap().meta, snapshot.meta);
    // And carries on from where it was.
    assert_eq!(f.ops(vec![put("e", "5")]).await, committed(4, vec![1]));
}

/// A snapshot is one plain database file (rollback journal, no WAL sidecars) that names itself,
/// and a current-snapshot file in the format of earlier versions (`TDSNAP01`, the meta's length
/// and bincode, then the database) is converted when the state machine opens.
#[tokio::test]
async fn a_snapshot_is_one_database_file_and_the_earlier_format_is_converted() {
    let mut f = Fixture::with_history(2);
    fill(&mut f).await;
    let snapshot = f.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let current = f.dir.path().join("snapshot.current");
    let header = std::fs::read(&current).unwrap();
    assert_eq!(&header[..16], b"SQLite format 3\0");
    assert_eq!((header[18], header[19]), (1, 1), "rollback-journal mode, not WAL");
    let before = everything(&f.reader).await;
    let (dir, next_index) = f.close();

    // Made into an earlier version's file: the database without the snapshot id, behind a header.
    {
        let conn = rusqlite::Connection::open(&current).unwrap();
        conn.execute("DELETE FROM meta WHERE key = 'snapshot_id'", []).unwrap();
    }
    let meta_bytes = bincode::serialize(&snapshot.meta).unwrap();
    let mut v1 = b"TDSNAP01".to_vec();
    v1.extend_from_slice(&(meta_bytes.len() as u64).to_le_bytes());
    v1.extend_from_slice(&meta_bytes);
    v1.extend_from_slice(&std::fs::read(&current).unwrap());
    std::fs::write(&current, v1).unwrap();

    let mut f = Fixture::open_in(dir, 1, HistoryLimit::revisions(2), next_index);
    check_dir_is_clean(f.dir.path());
    assert_eq!(&std::fs::read(&current).unwrap()[..16], b"SQLite format 3\0");
    let mut converted = f.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(converted.meta, snapshot.meta);
    // Its data still installs elsewhere and gives the same reads.
    let mut other = Fixture::open_in(tempfile::tempdir().unwrap(), 2, HistoryLimit::revisions(2), 1);
    let mut data = other.sm.begin_receiving_snapshot().await.unwrap();
    data.write_all(&read_all(&mut converted.snapshot).await).await.unwrap();
    other.sm.install_snapshot(&converted.meta, data).await.unwrap();
    assert_eq!(everything(&other.reader).await, before);
    // And the sequence of snapshot ids carries on after the converted one's.
    let next = f.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_ne!(next.meta.snapshot_id, snapshot.meta.snapshot_id);
}

/// The committed log id as `log.db` holds it on disk (read through a connection of its own).
fn committed_on_disk(dir: &Path) -> Option<LogId<u64>> {
    let conn = rusqlite::Connection::open(dir.join(tandem_store::log_store::LOG_FILE)).unwrap();
    let blob: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'committed'", [], |row| row.get(0))
        .ok();
    blob.and_then(|blob| bincode::deserialize::<Option<LogId<u64>>>(&blob).unwrap())
}

/// Blank entries `indexes` with the ids [`log_id`] gives.
fn blanks(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    blanks_of(1, 0, indexes)
}

#[tokio::test]
async fn the_committed_hint_costs_no_write_and_is_written_by_the_next_append_or_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    log.blocking_append(blanks(1..=3)).await.unwrap();
    log.save_committed(Some(log_id(2))).await.unwrap();
    // Answered at once, though not yet on disk.
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2)));
    assert_eq!(committed_on_disk(dir.path()), None);
    // The next append carries it.
    log.blocking_append(blanks(4..=4)).await.unwrap();
    assert_eq!(committed_on_disk(dir.path()), Some(log_id(2)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2)));
    // Closing the store writes the latest one.
    log.save_committed(Some(log_id(4))).await.unwrap();
    assert_eq!(committed_on_disk(dir.path()), Some(log_id(2)));
    drop(log);
    assert_eq!(committed_on_disk(dir.path()), Some(log_id(4)));
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(4)));
}

/// Blank entries `indexes` made by leader `node` in `term`.
fn blanks_of(term: u64, node: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    indexes
        .map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, node), i),
            payload: EntryPayload::Blank,
        })
        .collect()
}

#[tokio::test]
async fn a_primarys_own_entries_are_handed_over_before_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    let (tx, mut own) = tokio::sync::mpsc::channel(16);
    log.send_own_appends_to(tx);
    let indexes = |append: &tandem_store::OwnAppend| append.entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>();

    // A follower (vote for replica 3) appends replica 3's entries: nothing is handed over.
    log.save_vote(&Vote::new_committed(2, 3)).await.unwrap();
    log.blocking_append(blanks_of(2, 3, 1..=2)).await.unwrap();
    assert!(
        own.try_recv().is_err(),
        "another primary's entries are not ours to send"
    );

    // Elected (term 3): its own entries are handed over, each batch with the entry before it.
    log.save_vote(&Vote::new_committed(3, 7)).await.unwrap();
    log.blocking_append(blanks_of(3, 7, 3..=4)).await.unwrap();
    let append = own.try_recv().expect("own entries handed over");
    assert_eq!(append.vote, Vote::new_committed(3, 7));
    assert_eq!(append.prev, Some(LogId::new(CommittedLeaderId::new(2, 3), 2)));
    assert_eq!(indexes(&append), vec![3, 4]);
    log.blocking_append(blanks_of(3, 7, 5..=5)).await.unwrap();
    let append = own.try_recv().expect("the next batch");
    assert_eq!(append.prev, Some(LogId::new(CommittedLeaderId::new(3, 7), 4)));
    assert_eq!(indexes(&append), vec![5]);

    // A candidate's vote (not committed) or an older term's entries: not handed over.
    log.save_vote(&Vote::new(4, 7)).await.unwrap();
    log.blocking_append(blanks_of(3, 7, 6..=6)).await.unwrap();
    assert!(own.try_recv().is_err(), "not a primary's committed vote");

    // After a truncation the entry before the next batch is unknown: that batch is not handed
    // over, the following one is.
    log.save_vote(&Vote::new_committed(5, 7)).await.unwrap();
    log.truncate(LogId::new(CommittedLeaderId::new(3, 7), 6)).await.unwrap();
    log.blocking_append(blanks_of(5, 7, 6..=6)).await.unwrap();
    assert!(
        own.try_recv().is_err(),
        "the entry before it is unknown after a truncation"
    );
    log.blocking_append(blanks_of(5, 7, 7..=7)).await.unwrap();
    assert_eq!(
        own.try_recv().expect("handed over again").prev,
        Some(LogId::new(CommittedLeaderId::new(5, 7), 6))
    );

    // Every entry was written, handed over or not.
    let stored = log.try_get_log_entries(1..=7).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_primary_reopened_is_only_a_candidate_of_its_old_term_so_it_must_be_elected_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        // Replica 7 led term 3; its followers may hold entries of term 3 it never wrote.
        let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
        log.save_vote(&Vote::new_committed(3, 7)).await.unwrap();
        log.blocking_append(blanks_of(3, 7, 1..=2)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new(3, 7)),
        "the same term and candidate, but not committed: openraft starts it as a follower"
    );
    // Not a primary's vote any more: nothing it appends is handed over early.
    let (tx, mut own) = tokio::sync::mpsc::channel(16);
    log.send_own_appends_to(tx);
    log.blocking_append(blanks_of(3, 7, 3..=3)).await.unwrap();
    assert!(own.try_recv().is_err(), "not a primary after a restart");
    drop(log);
    // Written, not only cached: a second restart reads the same.
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    drop(log);

    // A follower's committed vote (for replica 3) is kept as it is.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
        log.save_vote(&Vote::new_committed(4, 3)).await.unwrap();
    }
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new_committed(4, 3)));
}

#[tokio::test]
async fn the_log_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
        assert_eq!(log.epoch(), 1);
        assert_eq!(log.cluster(), CLUSTER);
        let entries: Vec<Entry<TypeConfig>> = (1..=5)
            .map(|i| Entry {
                log_id: log_id(i),
                payload: EntryPayload::Blank,
            })
            .collect();
        log.blocking_append(entries).await.unwrap();
        log.save_vote(&Vote::new(3, 7)).await.unwrap();
        log.save_committed(Some(log_id(4))).await.unwrap();
        log.purge(log_id(2)).await.unwrap();
        log.set_epoch(5).unwrap();
        assert_eq!(log.epoch(), 5);
    }
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    assert_eq!(log.epoch(), 5);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 7)));
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2)));
    assert_eq!(state.last_log_id, Some(log_id(5)));
    let mut reader = log.get_log_reader().await;
    let indexes: Vec<u64> = reader
        .try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, vec![3, 4, 5]);
}

#[test]
fn the_reader_is_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<StateReader>();
    shareable::<LogStore>();
}

/// Snapshots built and reads made while entries are being applied see consistent states and
/// never fail on locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_reads_run_alongside_applies() {
    let mut f = Fixture::new();
    let reader = f.reader.clone();
    let mut builder = f.sm.get_snapshot_builder().await;
    let reads = tokio::spawn(async move {
        let mut last = 0;
        for _ in 0..50 {
            let revision = reader.revision().await.unwrap();
            assert!(revision >= last, "revisions never go back");
            last = revision;
            reader.range("k", None, 1000).await.unwrap();
        }
    });
    let snapshots = tokio::spawn(async move {
        let mut last = None;
        for _ in 0..5 {
            let snapshot = builder.build_snapshot().await.unwrap();
            assert!(snapshot.meta.last_log_id >= last);
            last = snapshot.meta.last_log_id;
        }
    });
    for i in 0..200 {
        f.ops(vec![put(&format!("k{i}"), "v")]).await;
    }
    reads.await.unwrap();
    snapshots.await.unwrap();
    let snapshot = f.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(200)));
    let current = f.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    check_dir_is_clean(f.dir.path());
}

/// Every byte of a snapshot's data, from the start.
async fn read_all(data: &mut SnapshotFile) -> Vec<u8> {
    data.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// Writes `bytes` into received snapshot data the way openraft's transfer does: chunk by chunk
/// at their offsets, here with the first chunks sent twice (a retried transfer seeks back).
async fn send_in_chunks(bytes: &[u8], data: &mut SnapshotFile) {
    const CHUNK: usize = 1024;
    let mut offset = 0;
    let mut resent = false;
    while offset < bytes.len() {
        let end = (offset + CHUNK).min(bytes.len());
        data.write_all(&bytes[offset..end]).await.unwrap();
        offset = end;
        if offset >= 3 * CHUNK && !resent {
            resent = true;
            offset = CHUNK;
            data.seek(std::io::SeekFrom::Start(offset as u64)).await.unwrap();
        }
    }
    assert!(resent, "the snapshot is larger than three chunks");
}

fn check_dir_is_clean(dir: &Path) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("state.db") && n != "snapshot.current")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// Entries `indexes` each carrying a put of a `bytes`-byte value.
fn big_entries(indexes: std::ops::RangeInclusive<u64>, bytes: usize) -> Vec<Entry<TypeConfig>> {
    indexes
        .map(|i| Entry {
            log_id: log_id(i),
            payload: EntryPayload::Normal(Command::Txn(Txn {
                compares: Vec::new(),
                ops: vec![Op::Put {
                    key: format!("k{i}"),
                    value: vec![b'v'; bytes],
                }],
                fence: None,
                now_ms: 0,
            })),
        })
        .collect()
}

#[tokio::test]
async fn replication_reads_are_cut_to_about_a_megabyte_but_plain_reads_are_not() {
    use tandem_store::log_store::REPLICATION_BATCH_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let mut log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    // Each entry a little over 0.3 of the budget: three fit, the fourth does not.
    let size = REPLICATION_BATCH_BYTES * 3 / 10;
    log.blocking_append(big_entries(1..=8, size)).await.unwrap();
    log.blocking_append(big_entries(9..=9, REPLICATION_BATCH_BYTES * 2))
        .await
        .unwrap();
    let indexes = |entries: Vec<Entry<TypeConfig>>| entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>();

    // From the in-memory tail (just appended), then from the database (reopened: no tail).
    for source in ["tail", "database"] {
        let mut reader = log.get_log_reader().await;
        assert_eq!(
            indexes(reader.limited_get_log_entries(1, 10).await.unwrap()),
            vec![1, 2, 3],
            "{source}"
        );
        assert_eq!(
            indexes(reader.limited_get_log_entries(7, 10).await.unwrap()),
            vec![7, 8],
            "{source}"
        );
        assert_eq!(
            indexes(reader.limited_get_log_entries(2, 4).await.unwrap()),
            vec![2, 3],
            "{source}"
        );
        assert_eq!(
            indexes(reader.limited_get_log_entries(9, 10).await.unwrap()),
            vec![9],
            "{source}: an entry larger than the budget goes alone"
        );
        assert_eq!(
            indexes(reader.try_get_log_entries(1..10).await.unwrap()),
            (1..=9).collect::<Vec<_>>(),
            "{source}: the whole range when not replicating"
        );
        drop(reader);
        drop(log);
        log = LogStore::open(dir.path(), CLUSTER, 7).unwrap();
    }
}
