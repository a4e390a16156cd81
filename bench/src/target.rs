//! What the workloads drive: a [`Store`] (the key-value operations, through the system's own
//! Rust client) and a [`Cluster`] (its processes: find the leader, kill -9 it, restart it, wait
//! for health, read memory). Tandem and etcd each implement both, so every workload runs the
//! same code against either.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::proc::Memory;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Linearizable (Tandem: on the primary after a quorum check; etcd: ReadIndex).
    Linearizable,
    /// From one member's applied state, possibly stale (Tandem: `get_stale` on member
    /// `worker % 3`; etcd: a serializable range on whichever member the client picks).
    Stale { worker: usize },
}

/// One key-value client. Cheap to clone; clones share connections.
pub trait Store: Clone + Send + Sync + 'static {
    fn put(&self, key: String, value: Vec<u8>) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Puts every pair in one transaction.
    fn put_batch(&self, pairs: Vec<(String, Vec<u8>)>) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn delete(&self, key: String) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The value of `key`, `None` when absent.
    fn get(&self, key: String, read: Read) -> impl Future<Output = anyhow::Result<Option<Vec<u8>>>> + Send;
    /// Opens `count` watches of every key under `prefix` from now on, all on one stream (as a
    /// client's watches share one: etcd's Go client does so, Tandem's client always does),
    /// sending each event's key and the instant it was received to `events` once per watch;
    /// returns once every watch is established.
    fn watch(
        &self,
        prefix: String,
        count: usize,
        events: mpsc::Sender<(String, Instant)>,
    ) -> impl Future<Output = anyhow::Result<Watcher>> + Send;
}

/// Live watches; dropping them ends them.
pub struct Watcher {
    /// The tasks reading the watches.
    pub tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A running three-member cluster.
#[allow(async_fn_in_trait)]
pub trait Cluster {
    type Store: Store;
    /// "Tandem" or "etcd".
    fn name(&self) -> &'static str;
    /// A client with the default options, shared by the workloads.
    fn store(&self) -> Self::Store;
    /// A new client whose every attempt times out after `attempt` (the failover loop's).
    async fn store_with_timeout(&self, attempt: Duration) -> anyhow::Result<Self::Store>;
    /// Index (0..3) of the member that leads now.
    async fn leader(&self) -> anyhow::Result<usize>;
    /// kill -9 one member and reap it.
    async fn kill(&mut self, member: usize) -> anyhow::Result<()>;
    /// Starts a killed member again with the same identity, data and address.
    async fn restart(&mut self, member: usize) -> anyhow::Result<()>;
    /// Waits until every member is up, one leads, and every follower has caught up.
    async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()>;
    /// Memory of each running member (`None` for a stopped one).
    fn memory(&self) -> Vec<Option<Memory>>;
    /// kill -9 every member.
    async fn stop(&mut self);
}
