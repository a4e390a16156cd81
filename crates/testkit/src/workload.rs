//! Concurrent writers: each a client of its own, writing unique keys in a loop and recording
//! every write in a shared [`History`], until told to stop.
//!
//! Writer `wN` puts `PREFIX/wN/SEQ` = `wN-SEQ` (SEQ zero-padded), so every key is written once
//! and a range over `PREFIX/` reads back everything the writers could have put. A writer never
//! abandons a write half-way: stopping waits for the writes in flight to be answered, so the
//! history has no pending writes.

use std::sync::Arc;
use std::time::Duration;

use tandem_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::history::History;
use crate::TestkitError;

/// Most writes one writer makes, whatever happens (a bound on every loop).
pub const WRITES_PER_WRITER_MAX: u64 = 100_000;
/// Pause after a failed write before the next, so that a writer does not spin while no
/// primary is reachable.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What one writer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// What all writers did.
#[derive(Clone, Debug, Default)]
pub struct WritersReport {
    pub writers: Vec<WriterStats>,
}

impl WritersReport {
    pub fn ok(&self) -> u64 {
        self.writers.iter().map(|w| w.ok).sum()
    }
    pub fn failed(&self) -> u64 {
        self.writers.iter().map(|w| w.failed).sum()
    }
    pub fn unknown(&self) -> u64 {
        self.writers.iter().map(|w| w.unknown).sum()
    }
}

impl std::fmt::Display for WritersReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ok, {} failed, {} unknown (",
            self.ok(),
            self.failed(),
            self.unknown()
        )?;
        for (i, w) in self.writers.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}: {}/{}/{}", w.name, w.ok, w.failed, w.unknown)?;
        }
        write!(f, ")")
    }
}

/// Running writers.
pub struct Writers {
    /// Set to true to stop every writer after its write in flight.
    stop: watch::Sender<bool>,
    /// Acknowledged writes so far, over all writers.
    acknowledged: watch::Receiver<u64>,
    /// One task per writer.
    tasks: Vec<JoinHandle<WriterStats>>,
}

impl Writers {
    /// Starts one writer per client, writing under `prefix`.
    pub fn start(clients: Vec<Client>, history: Arc<History>, prefix: &str) -> Writers {
        let (stop, stop_rx) = watch::channel(false);
        let (acked_tx, acknowledged) = watch::channel(0u64);
        let acked_tx = Arc::new(acked_tx);
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let writer = Writer {
                    name: format!("w{i}"),
                    prefix: prefix.to_owned(),
                    client,
                    history: history.clone(),
                    stop: stop_rx.clone(),
                    acknowledged: acked_tx.clone(),
                };
                tokio::spawn(writer.run())
            })
            .collect();
        Writers {
            stop,
            acknowledged,
            tasks,
        }
    }

    /// Acknowledged writes so far.
    pub fn acknowledged(&self) -> u64 {
        *self.acknowledged.borrow()
    }

    /// Waits until at least `count` writes have been acknowledged in all.
    pub async fn wait_acknowledged(&self, count: u64, timeout: Duration) -> Result<u64, TestkitError> {
        let mut rx = self.acknowledged.clone();
        let reached = match tokio::time::timeout(timeout, rx.wait_for(|n| *n >= count)).await {
            Ok(Ok(n)) => Some(*n),
            _ => None,
        };
        match reached {
            Some(n) => Ok(n),
            None => Err(TestkitError::Timeout {
                what: format!("{count} acknowledged writes"),
                waited_ms: timeout.as_millis() as u64,
                last: format!("{} acknowledged", self.acknowledged()),
            }),
        }
    }

    /// [`wait_acknowledged`](Self::wait_acknowledged), panicking on timeout.
    pub async fn must_wait_acknowledged(&self, count: u64, timeout: Duration) -> u64 {
        match self.wait_acknowledged(count, timeout).await {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until `more` writes beyond those acknowledged now have been acknowledged.
    pub async fn must_wait_more(&self, more: u64, timeout: Duration) -> u64 {
        let target = self.acknowledged() + more;
        self.must_wait_acknowledged(target, timeout).await
    }

    /// Stops every writer once its write in flight is answered, and reports.
    pub async fn stop(self) -> WritersReport {
        let _ = self.stop.send(true);
        let mut report = WritersReport::default();
        for task in self.tasks {
            match task.await {
                Ok(stats) => report.writers.push(stats),
                Err(e) => panic!("a writer task failed: {e}"),
            }
        }
        report
    }
}

/// One writer's loop.
struct Writer {
    name: String,
    prefix: String,
    client: Client,
    history: Arc<History>,
    stop: watch::Receiver<bool>,
    acknowledged: Arc<watch::Sender<u64>>,
}

impl Writer {
    async fn run(mut self) -> WriterStats {
        let mut stats = WriterStats {
            name: self.name.clone(),
            ..WriterStats::default()
        };
        for seq in 0..WRITES_PER_WRITER_MAX {
            if *self.stop.borrow() {
                break;
            }
            let key = format!("{}/{}/{seq:06}", self.prefix, self.name);
            let value = format!("{}-{seq}", self.name);
            match self.history.put(&self.client, &self.name, &key, value.as_bytes()).await {
                Ok(_) => {
                    stats.ok += 1;
                    self.acknowledged.send_modify(|n| *n += 1);
                }
                Err(e) => {
                    if e.is_outcome_unknown() {
                        stats.unknown += 1;
                    } else {
                        stats.failed += 1;
                    }
                    tracing::debug!(writer = %self.name, key, error = %e, "write did not succeed");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                        _ = self.stop.changed() => {}
                    }
                }
            }
        }
        stats
    }
}
