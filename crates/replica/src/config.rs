//! What a replica is started with. Everything has a default that suits two sites a few
//! milliseconds apart; the command line (crate `tandem`) fills this in.

use std::path::PathBuf;
use std::time::Duration;

use tandem_store::{HistoryLimit, ReplicaId};
use tandem_tls::TlsFiles;

/// What the primary does when a sync replica stops confirming writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Keep waiting: writes block until the replica is back (or the operator changes its kind).
    /// Zero loss guaranteed, at the price of availability.
    Strict,
    /// After `sync_timeout`, demote it (loudly: warn log, status, metric) and acknowledge without
    /// it until it has caught up again. The default, as in the seed's product (which does the
    /// same silently).
    #[default]
    Available,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Strict => "strict",
            SyncMode::Available => "available",
        }
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(SyncMode::Strict),
            "available" => Ok(SyncMode::Available),
            other => Err(format!("unknown sync mode {other:?} (expected strict or available)")),
        }
    }
}

/// Raft timers. The heartbeat also bounds one AppendEntries round trip (openraft uses it as the
/// RPC timeout), so it must exceed the WAN round trip plus a follower's fsync.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 800,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's id in the replica set.
    pub id: ReplicaId,
    /// Name of the replica set; stored in the data directory and checked on every peer message.
    pub cluster: String,
    /// Where the log and state live.
    pub data_dir: PathBuf,
    /// `host:port` peers and clients use to reach this replica.
    pub advertise: String,
    /// Act as a witness: never campaign while a primary is known (see [`crate::witness`]).
    pub witness: bool,
    pub timers: Timers,
    pub sync_mode: SyncMode,
    /// How long a sync replica may stop confirming before `Available` mode demotes it.
    pub sync_timeout: Duration,
    /// Longest a write waits for its commit and sync confirmation before the answer becomes
    /// "outcome unknown".
    pub write_timeout: Duration,
    /// Change history kept for watchers that reconnect.
    pub history: HistoryLimit,
    /// Build a snapshot (and compact the log) every this many entries, at indexes of this
    /// replica's own (see [`crate::snapshot_schedule`]).
    pub snapshot_every: u64,
    /// Largest client request accepted, in bytes.
    pub max_request_bytes: usize,
    pub tls: TlsFiles,
}

impl ReplicaConfig {
    /// A configuration with defaults for everything but identity and place.
    pub fn new(id: ReplicaId, cluster: &str, data_dir: PathBuf, advertise: String) -> Self {
        ReplicaConfig {
            id,
            cluster: cluster.to_owned(),
            data_dir,
            advertise,
            witness: false,
            timers: Timers::default(),
            sync_mode: SyncMode::default(),
            sync_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            history: HistoryLimit::DEFAULT,
            snapshot_every: 10_000,
            max_request_bytes: 4 * 1024 * 1024,
            tls: TlsFiles::default(),
        }
    }
}
