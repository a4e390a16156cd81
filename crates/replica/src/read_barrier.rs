//! Linearizable reads on the primary, many to one leadership check.
//!
//! openraft 0.9's `ensure_linearizable` confirms the leadership with a round of messages to a
//! quorum for every call, then waits until the state has applied the read point. At 256 reads
//! in flight that is 256 rounds to every follower. A read only needs *some* confirmation that
//! began after the read itself arrived: the read point a round takes is the commit index at its
//! start, which covers every write acknowledged before then. So the [`ReadBarrier`] runs at most
//! one round at a time, and every read that arrives while a round is running waits for the next
//! one, which starts as soon as the running one ends and serves all of them.
//!
//! Invariant: a read is released only by a round that started after it arrived (its generation
//! is at least the one that was next when it arrived), and only if that round, or a later one,
//! succeeded. A failed round fails the reads it serves, as a failed check would have.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::Raft;
use tandem_store::TypeConfig;
use tokio::sync::watch;

/// Why a round did not confirm the reads it served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// This replica is not the primary (the primary's address when known).
    #[error("this replica is not the primary")]
    NotPrimary { primary_addr: Option<String> },
    /// No quorum confirmed this primary.
    #[error("no quorum confirms this primary: {0}")]
    NoQuorum(String),
    /// The replica is stopping.
    #[error("replica is stopping: {0}")]
    Stopping(String),
    /// The round did not end within the read timeout.
    #[error("no quorum confirmed this primary in time")]
    Timeout,
}

/// Where the rounds are.
#[derive(Debug, Default)]
struct Rounds {
    /// The generation of the last round started.
    started: u64,
    /// Whether a round is running.
    running: bool,
    /// Whether a read is waiting for a round after the running one.
    wanted: bool,
}

/// The last round that ended: its generation and its outcome.
type Ended = (u64, Result<(), ReadError>);

/// Reads released and the rounds that confirmed them, since the barrier was made.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadCounts {
    /// Reads released (confirmed).
    pub reads: u64,
    /// Rounds run (leadership checks), successful or not.
    pub checks: u64,
}

/// Shares leadership checks between concurrent linearizable reads (see the module
/// documentation). Cheap to share behind an `Arc`.
pub struct ReadBarrier {
    raft: Raft<TypeConfig>,
    timeout: Duration,
    rounds: Mutex<Rounds>,
    ended: watch::Sender<Ended>,
    reads: AtomicU64,
    checks: AtomicU64,
}

impl ReadBarrier {
    /// A barrier for reads on `raft`; a round that takes longer than `timeout` fails.
    pub fn new(raft: Raft<TypeConfig>, timeout: Duration) -> Arc<Self> {
        Arc::new(ReadBarrier {
            raft,
            timeout,
            rounds: Mutex::default(),
            ended: watch::channel((0, Ok(()))).0,
            reads: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        })
    }

    /// Reads released and rounds run so far.
    pub fn counts(&self) -> ReadCounts {
        ReadCounts {
            reads: self.reads.load(Ordering::Relaxed),
            checks: self.checks.load(Ordering::Relaxed),
        }
    }

    /// Waits until a read that begins now would be linearizable here: this replica is the
    /// primary, a quorum confirmed it after this call began, and the state has applied
    /// everything committed before that.
    pub async fn wait(self: &Arc<Self>) -> Result<(), ReadError> {
        let mut ended = self.ended.subscribe();
        let needed = {
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            if rounds.running {
                rounds.wanted = true;
                rounds.started + 1
            } else {
                rounds.running = true;
                rounds.started += 1;
                let generation = rounds.started;
                tokio::spawn(self.clone().run_rounds(generation));
                generation
            }
        };
        let outcome = ended
            .wait_for(|(generation, _)| *generation >= needed)
            .await
            .map(|ended| ended.1.clone());
        match outcome {
            Ok(Ok(())) => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            // The sender lives as long as `self`, which this call holds.
            Err(_) => Err(ReadError::Stopping("the read barrier ended".into())),
        }
    }

    /// Runs round `generation`, and the next ones while reads keep wanting them.
    async fn run_rounds(self: Arc<Self>, mut generation: u64) {
        loop {
            let result = self.round().await;
            self.checks.fetch_add(1, Ordering::Relaxed);
            // The previous round's outcome is superseded.
            let _previous = self.ended.send_replace((generation, result));
            let mut rounds = self.rounds.lock().unwrap_or_else(|p| p.into_inner());
            if !rounds.wanted {
                rounds.running = false;
                return;
            }
            rounds.wanted = false;
            rounds.started += 1;
            generation = rounds.started;
        }
    }

    /// One leadership check, with the state caught up to its read point.
    async fn round(&self) -> Result<(), ReadError> {
        match tokio::time::timeout(self.timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => Err(ReadError::NotPrimary {
                primary_addr: forward.leader_node.map(|n| n.addr),
            }),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(ReadError::NoQuorum(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(fatal))) => Err(ReadError::Stopping(fatal.to_string())),
            Err(_) => Err(ReadError::Timeout),
        }
    }
}
