//! The vocabulary of the replicated store: what a replica is, what a log entry asks the state
//! machine to do, and what the state machine answers.
//!
//! Everything here is plain data (serde), shared by the storage layer, the replica's network and
//! services, and the client library. Nothing here does I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A replica's identity inside one replica set. Never reused for a different machine.
pub type ReplicaId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for Tandem's configuration database.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = ReplicaId,
        Node = Replica,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot_file::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

/// What a replica is for, with the meanings of the seed's availability-group replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicaKind {
    /// A voter holding full data; a write is acknowledged only once every healthy sync replica
    /// has it on disk.
    #[default]
    Sync,
    /// A learner holding full data, outside the acknowledgement set; reports its lag.
    Async,
    /// A voter at a third place that breaks ties; holds the log and state but serves no client
    /// reads and hands leadership to a data replica as soon as one has caught up.
    Witness,
}

impl ReplicaKind {
    /// Whether replicas of this kind vote (are members of the Raft voter set).
    pub fn is_voter(self) -> bool {
        matches!(self, ReplicaKind::Sync | ReplicaKind::Witness)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaKind::Sync => "sync",
            ReplicaKind::Async => "async",
            ReplicaKind::Witness => "witness",
        }
    }
}

impl fmt::Display for ReplicaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ReplicaKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sync" => Ok(ReplicaKind::Sync),
            "async" => Ok(ReplicaKind::Async),
            "witness" => Ok(ReplicaKind::Witness),
            other => Err(format!(
                "unknown replica kind {other:?} (expected sync, async or witness)"
            )),
        }
    }
}

/// A member of the replica set as recorded in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// `host:port` of the replica's gRPC endpoint (client and peer traffic).
    pub addr: String,
    /// The replica's kind; voters are `Sync` and `Witness`, learners are `Async`.
    pub kind: ReplicaKind,
}

impl fmt::Display for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.kind)
    }
}

/// A log entry's payload: one state-machine command.
///
/// Commands that depend on time carry the proposing primary's wall clock (`now_ms`, Unix
/// milliseconds) so that every replica applies them identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A multi-key transaction: all conditions hold and every op is applied, or nothing is.
    Txn(Txn),
    /// Grant a lease. A named lease is exclusive: the grant fails while another live lease
    /// holds the name.
    LeaseGrant {
        name: String,
        holder: String,
        ttl_ms: u64,
        now_ms: u64,
    },
    /// Extend a live lease by its TTL from `now_ms`.
    LeaseKeepAlive { token: u64, now_ms: u64 },
    /// End a lease at once (a graceful stop of its holder).
    LeaseRevoke { token: u64 },
    /// Client transactions proposed together (group commit on the primary): applied in order,
    /// each exactly as if it were an entry of its own — its own revision, its own compares and
    /// fence, its own result ([`CommandResult::Batch`], in the same order). A failed compare or
    /// fence of one transaction does not affect the others.
    ///
    /// Added after the other variants: the log stores a command's variant index, so existing
    /// entries keep their meaning.
    Batch(Vec<Txn>),
}

/// A multi-key transaction with compare-and-set conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Every condition must hold for the ops to be applied.
    pub compares: Vec<Compare>,
    /// Applied in order, all or nothing.
    pub ops: Vec<Op>,
    /// When set, the transaction is refused unless this lease is live and still the current
    /// holder of its name.
    pub fence: Option<u64>,
    /// The proposing primary's clock, Unix milliseconds (lease expiry is judged against it).
    pub now_ms: u64,
}

/// A condition on one key's version. Version 0 means "the key does not exist".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key whose version is checked.
    pub key: String,
    /// The version the key must have (0: the key must not exist).
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: String,
        /// Encoded as one byte string rather than a sequence of bytes: the same bincode (and
        /// JSON) as before, written and read with one copy instead of a call per byte.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// What applying one log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    Txn(TxnResult),
    Lease(LeaseResult),
    /// The result of each transaction of a [`Command::Batch`], in order.
    Batch(Vec<TxnResult>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    /// Applied. `revision` is the store revision the transaction created (unchanged when it had
    /// no ops); `versions` is each op's key version after it (0 for a delete).
    Committed { revision: u64, versions: Vec<u64> },
    /// Not applied: the first condition that did not hold.
    CompareFailed { key: String, expected: u64, actual: u64 },
    /// Not applied: the fencing token is no longer current.
    Fenced(FenceError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FenceError {
    /// No lease with this token exists (never granted, revoked, or swept after expiry).
    Unknown { token: u64 },
    /// The lease's TTL ran out before this command.
    Expired { token: u64, expired_at_ms: u64 },
    /// A newer lease holds the same name.
    Superseded { token: u64, current: u64, holder: String },
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceError::Unknown { token } => write!(f, "fencing token {token} is not a live lease"),
            FenceError::Expired { token, expired_at_ms } => {
                write!(f, "fencing token {token} expired at {expired_at_ms} ms")
            }
            FenceError::Superseded { token, current, holder } => {
                write!(
                    f,
                    "fencing token {token} superseded by token {current} held by {holder:?}"
                )
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseResult {
    /// The lease is live until `expires_at_ms`. `token` is its fencing token: unique and
    /// strictly greater than every token granted before it.
    Granted {
        token: u64,
        expires_at_ms: u64,
    },
    /// A grant was refused: a live lease holds the name.
    Held {
        name: String,
        holder: String,
        token: u64,
        expires_at_ms: u64,
    },
    /// Keep-alive of a lease that is gone or expired.
    NotFound {
        token: u64,
    },
    Revoked {
        token: u64,
    },
}

/// A key as stored: its value and version bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The current value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// 1 when created, +1 on every put; a delete and re-create starts again at 1.
    pub version: u64,
    /// Revision of the transaction that created the key.
    pub create_revision: u64,
    /// Revision of the transaction that last changed the key.
    pub mod_revision: u64,
}

/// How much change history a replica keeps for watchers that resume (`changes_after`): whole
/// revisions are dropped, oldest first, beyond either bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimit {
    /// Revisions kept. Compaction lets up to 64 more (a quarter more, of a bound below 256)
    /// accumulate before it cuts back to this.
    pub revisions: u64,
    /// Changes kept (one revision may hold many: a transaction of 400 puts is one revision).
    /// Compaction lets up to a quarter more accumulate before it cuts back to this.
    pub changes: u64,
}

impl HistoryLimit {
    /// The default bounds: 100,000 revisions and 100,000 changes.
    pub const DEFAULT: HistoryLimit = HistoryLimit {
        revisions: 100_000,
        changes: 100_000,
    };

    /// At most `revisions` revisions, and the default change bound.
    pub fn revisions(revisions: u64) -> HistoryLimit {
        HistoryLimit {
            revisions,
            ..HistoryLimit::DEFAULT
        }
    }
}

impl Default for HistoryLimit {
    fn default() -> Self {
        HistoryLimit::DEFAULT
    }
}

/// One change in the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Revision of the transaction; all changes of one transaction share it.
    pub revision: u64,
    /// The changed key.
    pub key: String,
    pub kind: ChangeKind,
    /// The new value (empty for a delete).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The key's version after the change (0 for a delete).
    pub version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The fencing token: the log index of the grant.
    pub token: u64,
    /// The name the lease holds exclusively.
    pub name: String,
    /// Who holds it (free text chosen by the holder).
    pub holder: String,
    /// How long a grant or keep-alive extends it.
    pub ttl_ms: u64,
    /// Live while a command's `now_ms` is at most this; expired after.
    pub expires_at_ms: u64,
}

/// Why a replica refuses to act: a forced recovery started a newer epoch elsewhere. Stored
/// durably, so a fenced replica stays fenced across restarts until it rejoins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The newer epoch that superseded this replica's.
    pub epoch: u64,
    /// The primary of that epoch, when known (`host:port`).
    pub primary_addr: String,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "superseded by epoch {}", self.epoch)?;
        if !self.primary_addr.is_empty() {
            write!(f, " (primary at {})", self.primary_addr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Op` as it was encoded before its value became a byte string (`serde_bytes`): logs and
    /// peer messages written then must read the same now, and the other way round.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OpAsBefore {
        Put { key: String, value: Vec<u8> },
        Delete { key: String },
    }

    #[test]
    fn a_value_encodes_as_before_it_became_a_byte_string() {
        let value: Vec<u8> = (0..=255).chain(0..44).collect();
        let now = Op::Put {
            key: "k".into(),
            value: value.clone(),
        };
        let before = OpAsBefore::Put { key: "k".into(), value };
        let bytes = bincode::serialize(&now).expect("encode");
        assert_eq!(bytes, bincode::serialize(&before).expect("encode"));
        assert_eq!(bincode::deserialize::<OpAsBefore>(&bytes).expect("decode"), before);
        assert_eq!(bincode::deserialize::<Op>(&bytes).expect("decode"), now);
        let json = serde_json::to_string(&now).expect("json");
        assert_eq!(json, serde_json::to_string(&before).expect("json"));
        assert_eq!(serde_json::from_str::<Op>(&json).expect("json"), now);
        let delete = Op::Delete { key: "k".into() };
        assert_eq!(
            bincode::serialize(&delete).expect("encode"),
            bincode::serialize(&OpAsBefore::Delete { key: "k".into() }).expect("encode")
        );
    }
}
