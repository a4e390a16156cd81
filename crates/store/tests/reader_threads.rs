//! Many concurrent reads take no more blocking threads than the reader has connections.
//!
//! Its own test binary (one process, one test): it counts the threads of the process.

use std::fs;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use tandem_store::{Command, HistoryLimit, Op, StateMachine, Txn, TypeConfig};

/// The reader's connections (`READER_CONNECTIONS` in the state machine).
const READER_CONNECTIONS: usize = 4;
/// Reads under way at once: about what 256 clients put on one replica.
const CONCURRENT_READS: usize = 256;

fn threads() -> usize {
    fs::read_dir("/proc/self/task")
        .expect("cannot list /proc/self/task")
        .count()
}

#[test]
fn concurrent_reads_take_at_most_one_blocking_thread_per_connection() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (mut sm, reader) = StateMachine::open(dir.path(), "test-cluster", 1, HistoryLimit::revisions(100)).unwrap();
        let ops = (0..100)
            .map(|i| Op::Put {
                key: format!("k/{i:03}"),
                value: vec![b'v'; 256],
            })
            .collect();
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), 1),
            payload: EntryPayload::Normal(Command::Txn(Txn {
                compares: Vec::new(),
                ops,
                fence: None,
                now_ms: 0,
            })),
        };
        sm.apply([entry]).await.unwrap();
        // Threads started with the state machine or by its first read are counted here.
        assert!(reader.get("k/000").await.unwrap().is_some());
        let before = threads();

        let reads: Vec<_> = (0..CONCURRENT_READS)
            .map(|i| {
                let reader = reader.clone();
                tokio::spawn(async move { reader.get(&format!("k/{:03}", i % 100)).await })
            })
            .collect();
        for read in reads {
            assert!(read.await.unwrap().unwrap().is_some(), "a written key was not found");
        }

        // Threads started for the reads are still here: tokio keeps an idle blocking thread for
        // 10 s, and the reader's own threads live as long as it does.
        let after = threads();
        assert!(
            after <= before + READER_CONNECTIONS,
            "{CONCURRENT_READS} concurrent reads left {after} threads, {before} before them"
        );
    });
}
