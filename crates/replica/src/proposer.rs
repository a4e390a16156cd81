//! Group commit on the primary: concurrent client transactions share one log entry.
//!
//! openraft 0.9 appends every proposal to the log on its own and waits for that fsync before it
//! replicates the entry, so a primary proposing each transaction alone pays one log fsync (and
//! one trip through the consensus pipeline) per write. The [`Proposer`] queues the transactions
//! [`crate::node::Core::write`] hands it instead; its task takes every transaction waiting (up to
//! [`MAX_BATCH_TXNS`] and about [`MAX_BATCH_BYTES`]) and proposes them as one entry,
//! [`Command::Batch`], which the state machine applies one revision per transaction, in order —
//! exactly as if they had been proposed one after the other. Each caller gets its own
//! transaction's result and the entry's log id (for the sync gate).
//!
//! Batches form only while earlier proposals are in flight: at most [`MAX_IN_FLIGHT`] entries are
//! proposed and not yet answered, and the transactions arriving meanwhile wait and go together in
//! the next entry. A transaction that finds a free slot is proposed at once (alone, as a plain
//! [`Command::Txn`]): nothing ever waits on a timer to fill a batch.
//!
//! Invariants:
//! - An answer about the whole entry is each caller's answer, with the same meaning:
//!   [`ProposeError::NotPrimary`] only when openraft refused the entry (nothing of it was
//!   applied); when it cannot be known whether the entry was applied,
//!   [`ProposeError::OutcomeUnknown`].
//! - A transaction whose caller has already given up (deadline, cancelled request) and that is
//!   still waiting is dropped, never proposed.
//! - Entries are proposed in the order their first transaction arrived.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use openraft::{LogId, Raft};
use tandem_store::{Command, CommandResult, Op, Replica, ReplicaId, Txn, TxnResult, TypeConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

/// Most transactions in one entry.
pub const MAX_BATCH_TXNS: usize = 512;
/// An entry takes no further transaction once its transactions add up to this many bytes (keys
/// and values, roughly); a single transaction larger than this is proposed alone.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most entries proposed and not yet answered. One: the transactions that arrive while an entry
/// is committed gather into the next, so the batch grows with the load by itself. (Measured on
/// two cores with three replicas: two or four entries in flight gave smaller batches, more CPU
/// per write and less throughput at every concurrency.)
pub const MAX_IN_FLIGHT: usize = 1;
/// Transactions waiting to be proposed before callers wait to join the queue.
const QUEUE_CAPACITY: usize = 8192;

/// Why a proposed transaction has no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// openraft refused the entry: this replica is not (or no longer) the primary. Nothing of
    /// the entry was applied.
    #[error("this replica is not the primary")]
    NotPrimary {
        /// The primary's address, when openraft knows it.
        primary_addr: Option<String>,
    },
    /// The entry may or may not have been committed and applied.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The proposer has stopped (the engine is stopping); the transaction was not proposed.
    #[error("this replica is stopping")]
    Stopped,
    /// The state machine answered something that is not a transaction result.
    #[error("{0}")]
    Internal(String),
}

/// A proposed transaction's answer.
#[derive(Debug, Clone)]
pub struct Proposed {
    /// The entry that carried the transaction (shared with the rest of its batch).
    pub log_id: LogId<ReplicaId>,
    /// What applying the transaction gave.
    pub result: TxnResult,
}

/// What the proposer has done since its engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProposeCounts {
    /// Client transactions proposed.
    pub txns: u64,
    /// Log entries that carried them.
    pub entries: u64,
}

/// One transaction waiting to be proposed.
struct Waiting {
    txn: Txn,
    /// Its rough size, for [`MAX_BATCH_BYTES`].
    bytes: usize,
    /// Where its answer goes.
    reply: oneshot::Sender<Result<Proposed, ProposeError>>,
}

/// Counters shared between the proposer handle and its task.
#[derive(Debug, Default)]
struct Counters {
    txns: AtomicU64,
    entries: AtomicU64,
}

/// The queue in front of openraft's `client_write` for client transactions (see the module
/// documentation). One per engine.
pub struct Proposer {
    /// Transactions waiting for the proposer task.
    queue: mpsc::Sender<Waiting>,
    /// What the task has proposed.
    counters: Arc<Counters>,
}

impl Proposer {
    /// Starts the proposer task on `raft`. The task ends when the proposer is dropped or the
    /// returned handle is aborted (waiting callers are then told the outcome is unknown).
    ///
    /// `answer_wait_max` bounds how long an entry holds its in-flight slot without an answer
    /// (its callers are then told the outcome is unknown): the write deadline, after which
    /// nobody waits for it any more.
    pub fn start(raft: Raft<TypeConfig>, answer_wait_max: Duration) -> (Proposer, JoinHandle<()>) {
        let (queue, waiting) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(raft, waiting, counters.clone(), answer_wait_max));
        (Proposer { queue, counters }, task)
    }

    /// Proposes `txn` (possibly together with others) and waits until its entry is committed
    /// and applied on this replica. The sync gate is the caller's.
    pub async fn propose(&self, txn: Txn) -> Result<Proposed, ProposeError> {
        let (reply, answer) = oneshot::channel();
        let bytes = txn_bytes(&txn);
        self.queue
            .send(Waiting { txn, bytes, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        answer.await.unwrap_or_else(|_| {
            Err(ProposeError::OutcomeUnknown(
                "the replica stopped before the write was answered".to_owned(),
            ))
        })
    }

    /// What has been proposed so far.
    pub fn counts(&self) -> ProposeCounts {
        ProposeCounts {
            txns: self.counters.txns.load(Ordering::Relaxed),
            entries: self.counters.entries.load(Ordering::Relaxed),
        }
    }
}

/// A transaction's rough size in an entry.
fn txn_bytes(txn: &Txn) -> usize {
    let compares: usize = txn.compares.iter().map(|c| c.key.len() + 16).sum();
    let ops: usize = txn
        .ops
        .iter()
        .map(|op| match op {
            Op::Put { key, value } => key.len() + value.len() + 16,
            Op::Delete { key } => key.len() + 8,
        })
        .sum();
    32 + compares + ops
}

/// The proposer task: waits for a free slot, then for a transaction, takes every other one
/// waiting, proposes them as one entry, and hands the answer out when it comes.
async fn run(
    raft: Raft<TypeConfig>,
    mut queue: mpsc::Receiver<Waiting>,
    counters: Arc<Counters>,
    answer_wait_max: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A transaction that did not fit into the previous entry; it opens the next one.
    let mut carried: Option<Waiting> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(waiting) => waiting,
            None => match queue.recv().await {
                Some(waiting) => waiting,
                None => return,
            },
        };
        if first.reply.is_closed() {
            // Its caller gave up before it was proposed.
            continue;
        }
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_TXNS {
            match queue.try_recv() {
                Ok(waiting) if waiting.reply.is_closed() => {}
                Ok(waiting) if bytes + waiting.bytes > MAX_BATCH_BYTES => {
                    carried = Some(waiting);
                    break;
                }
                Ok(waiting) => {
                    bytes += waiting.bytes;
                    batch.push(waiting);
                }
                Err(_) => break,
            }
        }

        let (mut txns, replies): (Vec<Txn>, Vec<_>) = batch.into_iter().map(|w| (w.txn, w.reply)).unzip();
        let command = match txns.len() {
            1 => Command::Txn(txns.remove(0)),
            _ => Command::Batch(txns),
        };
        match raft.client_write_ff(command).await {
            Err(fatal) => answer_all(replies, Err(ProposeError::OutcomeUnknown(fatal.to_string()))),
            Ok(answer) => {
                counters.txns.fetch_add(replies.len() as u64, Ordering::Relaxed);
                counters.entries.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let outcome = match tokio::time::timeout(answer_wait_max, answer).await {
                        Ok(Ok(result)) => outcome_of(result, replies.len()),
                        Ok(Err(_)) => Err(ProposeError::OutcomeUnknown(
                            "raft stopped before the entry was answered".to_owned(),
                        )),
                        Err(_) => Err(ProposeError::OutcomeUnknown(
                            "no commit before the write deadline".to_owned(),
                        )),
                    };
                    answer_all(replies, outcome);
                    drop(slot);
                });
            }
        }
    }
}

/// Each transaction's answer from openraft's answer for the entry of `count` transactions.
fn outcome_of(
    result: Result<ClientWriteResponse<TypeConfig>, ClientWriteError<ReplicaId, Replica>>,
    count: usize,
) -> Result<(LogId<ReplicaId>, Vec<TxnResult>), ProposeError> {
    match result {
        Ok(response) => {
            let results = match response.data {
                CommandResult::Txn(result) => vec![result],
                CommandResult::Batch(results) => results,
                other => {
                    return Err(ProposeError::Internal(format!(
                        "unexpected state-machine answer {other:?}"
                    )))
                }
            };
            if results.len() != count {
                return Err(ProposeError::Internal(format!(
                    "the state machine answered {} results for {count} transactions",
                    results.len()
                )));
            }
            Ok((response.log_id, results))
        }
        // openraft answers this only for entries it never proposed or has truncated: nothing of
        // the entry was applied.
        Err(ClientWriteError::ForwardToLeader(forward)) => Err(ProposeError::NotPrimary {
            primary_addr: forward.leader_node.map(|n| n.addr),
        }),
        Err(ClientWriteError::ChangeMembershipError(e)) => Err(ProposeError::Internal(e.to_string())),
    }
}

/// Sends each caller its answer. A caller that has gone is skipped.
fn answer_all(
    replies: Vec<oneshot::Sender<Result<Proposed, ProposeError>>>,
    outcome: Result<(LogId<ReplicaId>, Vec<TxnResult>), ProposeError>,
) {
    match outcome {
        Ok((log_id, results)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(Proposed { log_id, result }));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
