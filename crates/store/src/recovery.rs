//! The storage side of the disaster: starting a new epoch on a survivor (forced recovery), and
//! putting a fenced replica's divergent history aside before it rejoins.
//!
//! Both operate on a store that no Raft node is running on: the replica stops its node, calls
//! these, and starts a new node on the result.
//!
//! Invariants:
//! - No lease survives into a new epoch: a fencing token of the old epoch is refused forever.
//! - A forced recovery keeps every entry the survivor holds, committed or not (an entry it holds
//!   may have been acknowledged by the lost primary): the whole log tail is applied before the new
//!   epoch starts, and the new epoch begins right after it.
//! - Nothing is deleted by a rejoin before a copy of it is in the quarantine directory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, Vote};

use crate::error::StoreError;
use crate::log_store::{LogStore, LOG_FILE};
use crate::state_machine::{StateMachine, SNAPSHOT_FILE, STATE_FILE};
use crate::types::{Replica, ReplicaId, TypeConfig};

/// What a forced recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStarted {
    pub previous_epoch: u64,
    pub epoch: u64,
    /// The last entry the state machine had applied before the recovery (known committed).
    pub applied_before: Option<LogId<ReplicaId>>,
    /// Entries of the log tail applied by the recovery (held here, never known committed).
    pub tail_applied: u64,
    /// The last entry of the old epoch kept: the new epoch starts right after it.
    pub start: LogId<ReplicaId>,
    /// Leases of the old epoch ended (their fencing tokens are dead).
    pub leases_ended: u64,
}

/// Starts epoch `previous + 1` on a survivor with itself as the only voter.
///
/// Applies the whole log tail (entries past the applied point, committed or not) to the state
/// machine, builds a snapshot of the result, then atomically replaces the log with the new
/// epoch's first entry: a membership of `me` alone, in a term above every term seen. A Raft node
/// started on the result elects itself at once.
pub async fn start_new_epoch(
    log: &LogStore,
    state: &mut StateMachine,
    me: ReplicaId,
    node: Replica,
) -> Result<EpochStarted, StoreError> {
    let previous_epoch = log.epoch();
    let (applied_before, _) = state
        .applied_state()
        .await
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let tail = {
        let log = log.clone();
        let after = applied_before.map(|id| id.index).unwrap_or(0);
        crate::db::blocking(move || log.entries_after(after)).await?
    };
    if let (Some(first), Some(applied)) = (tail.first(), applied_before) {
        if first.log_id.index != applied.index + 1 {
            return Err(StoreError::Corrupt(format!(
                "the log resumes at index {} but the state machine applied up to {}: a gap",
                first.log_id.index, applied.index
            )));
        }
    }
    let tail_applied = tail.len() as u64;
    state
        .apply(tail)
        .await
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let leases_ended = state.end_all_leases().await?;
    let (start, _) = state
        .applied_state()
        .await
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let start = start.ok_or_else(|| StoreError::Corrupt("this replica holds no entries to recover from".into()))?;
    state
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .map_err(|e| StoreError::Corrupt(format!("snapshot of the recovered state: {e}")))?;

    let mut reader = log.clone();
    let vote = reader
        .read_vote()
        .await
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .unwrap_or_default();
    let term = vote.leader_id().term.max(start.leader_id.term) + 1;
    let membership = Membership::new(vec![BTreeSet::from([me])], BTreeMap::from([(me, node)]));
    let first = Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(term, me), start.index + 1),
        payload: EntryPayload::Membership(membership),
    };
    let epoch = previous_epoch + 1;
    {
        let log = log.clone();
        crate::db::blocking(move || log.begin_epoch(epoch, start, Vote::new(term, me), &first)).await?;
    }
    Ok(EpochStarted {
        previous_epoch,
        epoch,
        applied_before,
        tail_applied,
        start,
        leases_ended,
    })
}

/// What a rejoin put aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the copies are.
    pub dir: PathBuf,
    /// Log entries past the new epoch's start that this replica held (its divergent tail).
    pub divergent_entries: u64,
    /// Their index range, when any.
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
}

/// Copies a fenced replica's history into `dest` before it is discarded: consistent copies of
/// both databases, and the log entries after `after_index` (the new epoch's start) as JSON lines
/// in `divergent.jsonl`, one entry per line, for an operator to inspect.
pub async fn quarantine(
    data_dir: &Path,
    log: &LogStore,
    after_index: u64,
    dest: &Path,
) -> Result<Quarantined, StoreError> {
    let data_dir = data_dir.to_owned();
    let dest = dest.to_owned();
    let log = log.clone();
    crate::db::blocking(move || {
        std::fs::create_dir_all(&dest)?;
        let entries = log.entries_after(after_index)?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(dest.join("divergent.jsonl"))?);
        for entry in &entries {
            let line = serde_json::to_string(entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            writeln!(out, "{line}")?;
        }
        out.into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?
            .sync_all()?;
        for file in [LOG_FILE, STATE_FILE] {
            let source = data_dir.join(file);
            if source.exists() {
                let conn = rusqlite::Connection::open_with_flags(&source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                let target = dest.join(file);
                conn.execute("VACUUM INTO ?1", [target.to_string_lossy().as_ref()])?;
            }
        }
        crate::db::sync_dir(&dest.join("divergent.jsonl"))?;
        Ok(Quarantined {
            dir: dest,
            divergent_entries: entries.len() as u64,
            first_index: entries.first().map(|e| e.log_id.index),
            last_index: entries.last().map(|e| e.log_id.index),
        })
    })
    .await
}

/// Removes a replica's databases and snapshot so that it can start pristine. Call it only after
/// [`quarantine`], with no store handle open on `data_dir`.
pub fn wipe(data_dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(LOG_FILE)
            || name.starts_with(STATE_FILE)
            || name.starts_with(SNAPSHOT_FILE)
            || name.starts_with("snapshot.");
        if ours && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    crate::db::sync_dir(&data_dir.join(LOG_FILE))
}
