//! The durable Raft log: entries, the vote, the committed log id and the purge point, kept in
//! `DIR/log.db` (SQLite, WAL mode, `synchronous=FULL`), plus the replica's epoch.
//!
//! [`LogStore`] implements openraft's [`RaftLogStorage`] and [`RaftLogReader`]. Every batch of
//! entries openraft hands to [`RaftLogStorage::append`] is written in one transaction, so one
//! fsync covers the whole batch, and openraft is told the entries are durable only after that
//! transaction commits. (Followers receive large batches; a primary under openraft 0.9 appends
//! each proposal on its own, so the replica batches client transactions into one entry before
//! proposing.) All SQLite work runs on tokio's blocking pool.
//!
//! A primary's own new entries can also be handed, before they are written, to a listener
//! ([`LogStore::send_own_appends_to`]): the replica sends them to its followers while this
//! store syncs them (see `tandem_replica::early_replication`). Because followers may then hold
//! entries this replica never wrote, opening the store makes a vote this replica won uncommitted
//! again: after a restart it leads only once elected in a higher term (see
//! `resign_own_leadership`).
//!
//! The committed log id is only a hint (openraft re-applies up to it at start-up, and learns it
//! again from the primary): [`RaftLogStorage::save_committed`] keeps it in memory, and the next
//! append writes it in its own transaction. openraft awaits `save_committed` before it applies a
//! committed entry, so writing it there and then held up every write.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::mpsc;

use crate::checkpoint::CheckpointCounts;
use crate::db::{self, DbSpec, Durability};
use crate::error::{OpenError, StoreError};
use crate::types::{Fence, ReplicaId, TypeConfig};

/// The log database's file name inside the data directory.
pub const LOG_FILE: &str = "log.db";

/// The newest entries kept in memory for openraft's replication reads (see [`Tail`]): at most
/// this many entries, and about this many bytes (encoded).
const TAIL_ENTRIES: usize = 1024;
const TAIL_BYTES: usize = 8 * 1024 * 1024;

/// About the most log (encoded bytes) one AppendEntries carries: openraft gives each one only
/// the heartbeat interval to be sent, written and answered, and its own limit counts entries
/// (300), which for entries of a few hundred KiB would make messages that can never arrive in
/// time. A single larger entry still goes alone.
pub const REPLICATION_BATCH_BYTES: usize = 1024 * 1024;

/// The epoch of a freshly initialised replica.
const INITIAL_EPOCH: u64 = 1;

const LOG_SPEC: DbSpec = DbSpec {
    schema: "CREATE TABLE log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, payload BLOB NOT NULL);",
    tables: &["log"],
    initial_meta: |conn| db::meta_set(conn, "epoch", INITIAL_EPOCH),
    durability: Durability::EveryCommit,
};

/// The Raft log of one replica. Cloning it gives another handle on the same connection (that
/// is how openraft's log readers are made).
#[derive(Clone)]
pub struct LogStore {
    /// State shared by every handle.
    shared: Arc<Shared>,
}

/// What every [`LogStore`] handle shares.
struct Shared {
    /// The connection to `log.db` every read and every durable write goes through, in order
    /// (`synchronous=FULL`).
    conn: db::Writer,
    /// The committed log id openraft saved last, while it is not yet written (the next append
    /// writes it; so does dropping the store). `None`: nothing waiting.
    unsaved_committed: Mutex<Option<Option<LogId<ReplicaId>>>>,
    /// Write transactions of `append` since the store was opened: one log fsync each.
    appends: AtomicU64,
    /// Entries those transactions wrote.
    entries_appended: AtomicU64,
    /// Path of `log.db`, for messages.
    path: PathBuf,
    /// The cluster name recorded in the file.
    cluster: String,
    /// The replica id recorded in the file.
    replica_id: ReplicaId,
    /// Cached copy of the durable epoch.
    epoch: AtomicU64,
    /// Cached copy of the durable fence (set while a newer epoch supersedes this replica).
    fence: Mutex<Option<Fence>>,
    /// Cached copy of the durable vote.
    vote: Mutex<Option<Vote<ReplicaId>>>,
    /// The id of the last entry in the log (or the purge point of an empty log), when known:
    /// `None` after a truncation, until the next append.
    last: Mutex<Option<Option<LogId<ReplicaId>>>>,
    /// Where a primary's own new entries go before they are written, if anywhere.
    own_appends: Mutex<Option<mpsc::Sender<OwnAppend>>>,
    /// The newest entries written, so that replicating them reads no database.
    tail: Mutex<Tail>,
}

/// The newest entries of the log, in memory: a consecutive run ending at the log's last entry,
/// exactly as written. Appends add to it (after they are durable), truncations and purges cut
/// it as they cut the log, and it forgets its oldest entries beyond [`TAIL_ENTRIES`] or
/// [`TAIL_BYTES`]. A read it covers entirely is answered from it.
#[derive(Default)]
struct Tail {
    /// The entries, each with its encoded size.
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    /// Sum of the encoded sizes.
    bytes: usize,
}

impl Tail {
    /// Adds entries just written; starts over when they do not follow the last one kept.
    fn extend(&mut self, written: impl IntoIterator<Item = (Entry<TypeConfig>, usize)>) {
        for (entry, size) in written {
            let follows = self
                .entries
                .back()
                .is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
            if !follows {
                self.clear();
            }
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.entries.len() > TAIL_ENTRIES || (self.bytes > TAIL_BYTES && self.entries.len() > 1) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Forgets the entries from `index` on (a truncation).
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets the entries up to `index` (a purge).
    fn purge(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= index) {
            self.pop_front();
        }
    }

    /// The entries with indexes in `[start, end)`, if they are all here (an empty range: none),
    /// cut after about `budget` bytes (see [`Budget`]): then only the ones from `start` that fit
    /// need be here.
    fn get(&self, start: u64, end: u64, budget: usize) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        if start < first || start > last || start >= end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let mut budget = Budget::new(budget);
        let mut entries = Vec::new();
        for (entry, size) in self.entries.range(from..) {
            if entry.log_id.index >= end || !budget.take(*size) {
                return Some(entries);
            }
            entries.push(entry.clone());
        }
        // Ran out of entries before `end` and before the budget was spent: not all here.
        (last + 1 >= end).then_some(entries)
    }
}

/// A byte budget for a run of log entries: the first entry always fits, each further one only
/// while the run stays within the budget. The run ends at the first entry that does not fit:
/// nothing after it fits either, however small (a run has no gaps).
struct Budget {
    left: usize,
    first: bool,
    ended: bool,
}

impl Budget {
    fn new(bytes: usize) -> Budget {
        Budget {
            left: bytes,
            first: true,
            ended: false,
        }
    }

    /// Whether the next entry of the run, of `size` bytes, still fits (and if so, spends its
    /// size).
    fn take(&mut self, size: usize) -> bool {
        let fits = !self.ended && (self.first || size <= self.left);
        if fits {
            self.first = false;
            self.left = self.left.saturating_sub(size);
        } else {
            self.ended = true;
        }
        fits
    }
}

/// New entries this replica made as primary, handed over before its own log has them (see
/// [`LogStore::send_own_appends_to`]): together they form the AppendEntries message a follower
/// needs to append them.
#[derive(Debug)]
pub struct OwnAppend {
    /// The primary's vote, under which the entries were made.
    pub vote: Vote<ReplicaId>,
    /// The id of the entry just before the first one (`None`: the log was empty).
    pub prev: Option<LogId<ReplicaId>>,
    /// The entries, in log order.
    pub entries: Vec<Entry<TypeConfig>>,
    /// Their encoded size, in bytes (as the log stores them).
    pub bytes: usize,
}

impl Drop for Shared {
    /// Writes the committed log id openraft saved last, if no append has written it yet.
    fn drop(&mut self) {
        let unsaved = match self.unsaved_committed.get_mut() {
            Ok(unsaved) => unsaved.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(committed) = unsaved else { return };
        let written = self
            .conn
            .lock()
            .and_then(|conn| db::meta_set_blob(&conn, "committed", &committed));
        if let Err(e) = written {
            // A hint: the next start re-applies less, and the primary tells it the rest.
            tracing::warn!(file = %self.path.display(), error = %e, "could not write the committed log id on close");
        }
    }
}

impl LogStore {
    /// Opens `dir/log.db`: creates it when absent, otherwise checks that it is a healthy log of
    /// this cluster and replica in the supported format. A refused file is left untouched.
    ///
    /// Blocking: call it at start-up, before the runtime is busy, or via `spawn_blocking`.
    pub fn open(dir: &Path, cluster: &str, replica_id: ReplicaId) -> Result<LogStore, OpenError> {
        let path = dir.join(LOG_FILE);
        let conn = db::open_writer(&path, &LOG_SPEC, cluster, replica_id)?;
        let epoch = match db::meta_get::<u64>(&conn, "epoch") {
            Ok(Some(epoch)) => epoch,
            Ok(None) => INITIAL_EPOCH,
            Err(e) => {
                return Err(OpenError::Corrupt {
                    file: path,
                    reason: format!("metadata epoch is unreadable: {e}"),
                })
            }
        };
        // Check that the stored blobs decode, so a damaged log is refused now rather than
        // stopping the Raft node later.
        let (vote, last) = match read_vote(&conn).and_then(|vote| {
            read_committed(&conn)?;
            let purged = read_last_purged(&conn)?;
            Ok((vote, last_entry_log_id(&conn)?.or(purged)))
        }) {
            Ok(read) => read,
            Err(e) => {
                return Err(OpenError::Corrupt {
                    file: path,
                    reason: format!("log metadata: {e}"),
                })
            }
        };
        let vote = match resign_own_leadership(&conn, vote, replica_id) {
            Ok(vote) => vote,
            Err(source) => return Err(OpenError::Sqlite { file: path, source }),
        };
        let fence = match db::meta_get_blob::<Fence>(&conn, "fence") {
            Ok(fence) => fence,
            Err(e) => {
                return Err(OpenError::Corrupt {
                    file: path,
                    reason: format!("metadata fence is unreadable: {e}"),
                })
            }
        };
        let conn = db::Writer::start(&path, "log", conn)?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                conn,
                unsaved_committed: Mutex::new(None),
                appends: AtomicU64::new(0),
                entries_appended: AtomicU64::new(0),
                path,
                cluster: cluster.to_owned(),
                replica_id,
                epoch: AtomicU64::new(epoch),
                fence: Mutex::new(fence),
                vote: Mutex::new(vote),
                last: Mutex::new(Some(last)),
                own_appends: Mutex::new(None),
                tail: Mutex::new(Tail::default()),
            }),
        })
    }

    /// From now on, hands every batch of entries this replica appends as primary (made under its
    /// own current vote) to `listener`, before writing it. A batch the listener has no room for
    /// is not handed over (the listener is an optimisation; openraft replicates every entry
    /// regardless).
    pub fn send_own_appends_to(&self, listener: mpsc::Sender<OwnAppend>) {
        *self.shared.own_appends.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    /// Hands `entries` to the listener of own appends, if there is one and they are this
    /// primary's own new entries (made under its current vote, right after the last entry).
    fn hand_over_if_own(&self, entries: &[Entry<TypeConfig>], bytes: usize) -> Result<(), StoreError> {
        let Some(listener) = db::lock(&self.shared.own_appends)?.clone() else {
            return Ok(());
        };
        let Some(first) = entries.first() else { return Ok(()) };
        let leader = first.log_id.leader_id;
        let Some(vote) = *db::lock(&self.shared.vote)? else {
            return Ok(());
        };
        let own = vote.is_committed() && vote.leader_id() == &leader && leader.node_id == self.shared.replica_id;
        if !own {
            return Ok(());
        }
        let Some(prev) = *db::lock(&self.shared.last)? else {
            return Ok(());
        };
        if prev.map_or(0, |p| p.index + 1) != first.log_id.index {
            return Ok(());
        }
        let entries = entries.to_vec();
        if let Err(e) = listener.try_send(OwnAppend {
            vote,
            prev,
            entries,
            bytes,
        }) {
            tracing::debug!(error = %e, "own entries not handed over early");
        }
        Ok(())
    }

    /// The replica's epoch: raised by a forced recovery, so that messages of an older epoch are
    /// refused. 1 for a new replica.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }

    /// Durably records a new epoch.
    ///
    /// Blocking (one fsync): call it from a blocking context, or via `spawn_blocking`.
    pub fn set_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        let conn = self.shared.conn.lock()?;
        db::meta_set(&conn, "epoch", epoch)?;
        self.shared.epoch.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    /// The fence in force, if a newer epoch supersedes this replica.
    pub fn fence(&self) -> Option<Fence> {
        db::lock(&self.shared.fence).ok().and_then(|fence| fence.clone())
    }

    /// Durably records (or clears) the fence.
    ///
    /// Blocking (one fsync): call it from a blocking context, or via `spawn_blocking`.
    pub fn set_fence(&self, fence: Option<Fence>) -> Result<(), StoreError> {
        let conn = self.shared.conn.lock()?;
        match &fence {
            Some(fence) => db::meta_set_blob(&conn, "fence", fence)?,
            None => {
                conn.execute("DELETE FROM meta WHERE key = 'fence'", [])?;
            }
        }
        *db::lock(&self.shared.fence)? = fence;
        Ok(())
    }

    /// Where the current epoch began: the last log id carried over from the previous epoch by
    /// a forced recovery (`None` for the first epoch).
    pub fn epoch_start(&self) -> Result<Option<LogId<ReplicaId>>, StoreError> {
        let conn = self.shared.conn.lock()?;
        db::meta_get_blob(&conn, "epoch_start")
    }

    /// Every entry after `index` still in the log, in order.
    ///
    /// Blocking: call it from a blocking context, or via `spawn_blocking`.
    pub fn entries_after(&self, index: u64) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let conn = self.shared.conn.lock()?;
        let mut stmt = conn.prepare("SELECT payload FROM log WHERE idx > ?1 ORDER BY idx")?;
        let mut rows = stmt.query([sql_index(index)])?;
        let mut entries = Vec::new();
        while let Some(row) = rows.next()? {
            let payload: Vec<u8> = row.get(0)?;
            entries.push(decode_entry(&payload)?);
        }
        Ok(entries)
    }

    /// Starts a new epoch on this log, atomically (one transaction): every entry is dropped and
    /// the log is marked purged up to `start` (the state machine must already hold everything up
    /// to `start`), the vote becomes `vote`, `first` (the new epoch's membership entry, at
    /// `start.index + 1`) is appended, the epoch becomes `epoch`, and any fence is cleared.
    ///
    /// Blocking (one fsync): call it from a blocking context, or via `spawn_blocking`.
    pub fn begin_epoch(
        &self,
        epoch: u64,
        start: LogId<ReplicaId>,
        vote: Vote<ReplicaId>,
        first: &Entry<TypeConfig>,
    ) -> Result<(), StoreError> {
        assert_eq!(
            first.log_id.index,
            start.index + 1,
            "the epoch's first entry follows its start"
        );
        assert!(epoch > self.epoch(), "epochs only grow");
        let payload = bincode::serialize(first)?;
        let mut conn = self.shared.conn.lock()?;
        // The old epoch's committed id means nothing in the new one.
        *db::lock(&self.shared.unsaved_committed)? = None;
        db::lock(&self.shared.tail)?.clear();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM log", [])?;
        db::meta_set_blob(&tx, "last_purged", &Some(start))?;
        db::meta_set_blob(&tx, "committed", &None::<LogId<ReplicaId>>)?;
        db::meta_set_blob(&tx, "vote", &vote)?;
        db::meta_set_blob(&tx, "epoch_start", &start)?;
        tx.execute("DELETE FROM meta WHERE key = 'fence'", [])?;
        db::meta_set(&tx, "epoch", epoch)?;
        tx.execute(
            "INSERT INTO log (idx, term, payload) VALUES (?1, ?2, ?3)",
            params![sql_index(first.log_id.index), first.log_id.leader_id.term, payload],
        )?;
        tx.commit()?;
        self.shared.epoch.store(epoch, Ordering::SeqCst);
        *db::lock(&self.shared.fence)? = None;
        *db::lock(&self.shared.vote)? = Some(vote);
        *db::lock(&self.shared.last)? = Some(Some(first.log_id));
        Ok(())
    }

    /// Since the store was opened: how many write transactions `append` committed (each one log
    /// fsync) and how many entries they held.
    pub fn append_counts(&self) -> AppendCounts {
        AppendCounts {
            appends: self.shared.appends.load(Ordering::Relaxed),
            entries: self.shared.entries_appended.load(Ordering::Relaxed),
        }
    }

    /// What the checkpoints of `log.db` have done since it was opened.
    pub fn checkpoint_counts(&self) -> CheckpointCounts {
        self.shared.conn.checkpoint_stats().counts()
    }

    /// The cluster name the log belongs to.
    pub fn cluster(&self) -> &str {
        &self.shared.cluster
    }

    /// The replica id the log belongs to.
    pub fn replica_id(&self) -> ReplicaId {
        self.shared.replica_id
    }

    /// Path of `log.db`.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `work` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        db::blocking(move || {
            let mut conn = shared.conn.lock()?;
            work(&mut conn)
        })
        .await
    }
}

/// How much the log store has written (see [`LogStore::append_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendCounts {
    /// Write transactions committed by `append`: one log fsync each.
    pub appends: u64,
    /// Entries they wrote.
    pub entries: u64,
}

/// Converts a log index to SQLite's integer, saturating (no real log reaches `i64::MAX`).
fn sql_index(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// Decodes one stored entry.
fn decode_entry(payload: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    Ok(bincode::deserialize(payload)?)
}

fn read_vote(conn: &Connection) -> Result<Option<Vote<ReplicaId>>, StoreError> {
    db::meta_get_blob(conn, "vote")
}

/// Makes a vote this replica won as primary uncommitted again (durably), so that after a restart
/// it must win a new election, in a higher term, before it leads again; any other vote is kept.
///
/// openraft 0.9 restarts a replica whose stored vote is its own committed one as primary at
/// once, in the same term, appending after the last entry of its own log. But a primary's
/// followers may hold entries it handed to early replication and never wrote itself (it was
/// killed while syncing them): resuming in the same term it would give those log ids
/// (term, primary, index) to other entries, followers holding the old ones would take them for
/// the same entries, and the replicas' states would diverge. In a higher term every new entry
/// has a log id no follower has seen, and Raft's usual conflict check replaces the stale ones.
fn resign_own_leadership(
    conn: &Connection,
    vote: Option<Vote<ReplicaId>>,
    replica_id: ReplicaId,
) -> rusqlite::Result<Option<Vote<ReplicaId>>> {
    let Some(won) = vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(replica_id)) else {
        return Ok(vote);
    };
    let resigned = Vote::new(won.leader_id().term, replica_id);
    let blob = bincode::serialize(&resigned).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e))?;
    db::meta_set(conn, "vote", blob)?;
    tracing::info!(vote = %won, now = %resigned, "this replica led before it stopped: it must win a new election before it leads again");
    Ok(Some(resigned))
}

fn read_committed(conn: &Connection) -> Result<Option<LogId<ReplicaId>>, StoreError> {
    Ok(db::meta_get_blob::<Option<LogId<ReplicaId>>>(conn, "committed")?.flatten())
}

fn read_last_purged(conn: &Connection) -> Result<Option<LogId<ReplicaId>>, StoreError> {
    Ok(db::meta_get_blob::<Option<LogId<ReplicaId>>>(conn, "last_purged")?.flatten())
}

/// The log id of the last entry present, if any.
fn last_entry_log_id(conn: &Connection) -> Result<Option<LogId<ReplicaId>>, StoreError> {
    let payload: Option<Vec<u8>> = conn
        .query_row("SELECT payload FROM log ORDER BY idx DESC LIMIT 1", [], |row| {
            row.get(0)
        })
        .optional()?;
    match payload {
        Some(payload) => Ok(Some(decode_entry(&payload)?.log_id)),
        None => Ok(None),
    }
}

impl LogStore {
    /// The entries with indexes in `range`, in order, cut after about `budget` encoded bytes
    /// (see [`Budget`]): from the in-memory tail when it has them, else from the database.
    async fn read_entries<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<ReplicaId>> {
        // [start, end) in SQLite integers; an empty range when start >= end.
        let start = match range.start_bound() {
            Bound::Included(&i) => sql_index(i),
            Bound::Excluded(&i) => sql_index(i).saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => sql_index(i).saturating_add(1),
            Bound::Excluded(&i) => sql_index(i),
            Bound::Unbounded => i64::MAX,
        };
        if let (Ok(from), Ok(to)) = (u64::try_from(start), u64::try_from(end)) {
            let cached = db::lock(&self.shared.tail)
                .map_err(StoreError::into_read_logs)?
                .get(from, to, budget);
            if let Some(entries) = cached {
                return Ok(entries);
            }
        }
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT payload FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx")?;
            let mut rows = stmt.query(params![start, end])?;
            let mut budget = Budget::new(budget);
            let mut entries = Vec::new();
            while let Some(row) = rows.next()? {
                let payload = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
                if !budget.take(payload.len()) {
                    break;
                }
                entries.push(decode_entry(payload)?);
            }
            Ok(entries)
        })
        .await
        .map_err(StoreError::into_read_logs)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<ReplicaId>> {
        self.read_entries(range, usize::MAX).await
    }

    /// What replication sends in one AppendEntries: at most about
    /// [`REPLICATION_BATCH_BYTES`] of the range (never nothing when it is not empty).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<ReplicaId>> {
        self.read_entries(start..end, REPLICATION_BATCH_BYTES).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<ReplicaId>> {
        self.with_conn(|conn| {
            let last_purged_log_id = read_last_purged(conn)?;
            let last_log_id = last_entry_log_id(conn)?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
        .map_err(StoreError::into_read_logs)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> Result<(), StorageError<ReplicaId>> {
        let vote = *vote;
        let shared = self.shared.clone();
        self.with_conn(move |conn| {
            db::meta_set_blob(conn, "vote", &vote)?;
            *db::lock(&shared.vote)? = Some(vote);
            Ok(())
        })
        .await
        .map_err(StoreError::into_write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<ReplicaId>>, StorageError<ReplicaId>> {
        self.with_conn(|conn| read_vote(conn))
            .await
            .map_err(StoreError::into_read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<ReplicaId>>) -> Result<(), StorageError<ReplicaId>> {
        // A hint: losing the latest value (a crash before the next append) only makes openraft
        // re-apply less at start-up, before the primary tells it the rest. No I/O here.
        *db::lock(&self.shared.unsaved_committed).map_err(StoreError::into_write_logs)? = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<ReplicaId>>, StorageError<ReplicaId>> {
        if let Some(committed) = *db::lock(&self.shared.unsaved_committed).map_err(StoreError::into_read_logs)? {
            return Ok(committed);
        }
        self.with_conn(|conn| read_committed(conn))
            .await
            .map_err(StoreError::into_read_logs)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<ReplicaId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encode on the async side (cheap, no I/O); write the whole batch in one transaction.
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|entry| entry.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let rows = entries
            .iter()
            .map(|entry| {
                let payload = bincode::serialize(entry)?;
                Ok((sql_index(entry.log_id.index), entry.log_id.leader_id.term, payload))
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map_err(StoreError::into_write_logs)?;
        // A primary's own entries go to its followers while they are written here.
        let bytes = rows.iter().map(|(_, _, payload)| payload.len()).sum();
        self.hand_over_if_own(&entries, bytes)
            .map_err(StoreError::into_write_logs)?;
        let count = rows.len() as u64;
        let shared = self.shared.clone();
        let written = self
            .with_conn(move |conn| {
                // Taken before the transaction: a value saved meanwhile waits for the next one.
                let committed = db::lock(&shared.unsaved_committed)?.take();
                db::write_transaction(conn, |tx| {
                    let mut stmt =
                        tx.prepare_cached("INSERT OR REPLACE INTO log (idx, term, payload) VALUES (?1, ?2, ?3)")?;
                    for (idx, term, payload) in &rows {
                        stmt.execute(params![idx, term, payload])?;
                    }
                    if let Some(committed) = &committed {
                        db::meta_set_blob(tx, "committed", committed)?;
                    }
                    Ok(())
                })?;
                shared.appends.fetch_add(1, Ordering::Relaxed);
                shared.entries_appended.fetch_add(count, Ordering::Relaxed);
                *db::lock(&shared.last)? = Some(Some(last));
                let sizes = rows.iter().map(|(_, _, payload)| payload.len());
                db::lock(&shared.tail)?.extend(entries.into_iter().zip(sizes));
                Ok(())
            })
            .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e.into_write_logs())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StorageError<ReplicaId>> {
        let since = sql_index(log_id.index);
        let shared = self.shared.clone();
        self.with_conn(move |conn| {
            // Unknown until the next append (which a truncation always precedes).
            *db::lock(&shared.last)? = None;
            db::lock(&shared.tail)?.truncate(log_id.index);
            conn.execute("DELETE FROM log WHERE idx >= ?1", [since])?;
            Ok(())
        })
        .await
        .map_err(StoreError::into_write_logs)
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StorageError<ReplicaId>> {
        let shared = self.shared.clone();
        self.with_conn(move |conn| {
            db::lock(&shared.tail)?.purge(log_id.index);
            let tx = conn.transaction()?;
            db::meta_set_blob(&tx, "last_purged", &Some(log_id))?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", [sql_index(log_id.index)])?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(StoreError::into_write_logs)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> (Entry<TypeConfig>, usize) {
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        };
        (entry, 100)
    }

    /// No byte budget.
    const ALL: usize = usize::MAX;

    fn indexes(entries: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn the_tail_answers_only_reads_it_covers_entirely() {
        let mut tail = Tail::default();
        assert_eq!(indexes(tail.get(1, 2, ALL)), None, "empty");
        tail.extend((5..=9).map(entry));
        assert_eq!(indexes(tail.get(5, 10, ALL)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(tail.get(7, 8, ALL)), Some(vec![7]));
        assert_eq!(indexes(tail.get(4, 6, ALL)), None, "starts before the tail");
        assert_eq!(indexes(tail.get(9, 11, ALL)), None, "ends after it");
        assert_eq!(
            indexes(tail.get(7, 7, ALL)),
            None,
            "an empty range is left to the database"
        );
    }

    #[test]
    fn the_tail_follows_appends_truncations_and_purges() {
        let mut tail = Tail::default();
        tail.extend((1..=6).map(entry));
        tail.truncate(5);
        assert_eq!(indexes(tail.get(1, 5, ALL)), Some(vec![1, 2, 3, 4]));
        assert_eq!(indexes(tail.get(4, 6, ALL)), None, "5 was truncated");
        tail.extend((5..=7).map(entry));
        tail.purge(2);
        assert_eq!(indexes(tail.get(3, 8, ALL)), Some(vec![3, 4, 5, 6, 7]));
        assert_eq!(indexes(tail.get(2, 4, ALL)), None, "2 was purged");
        assert_eq!(tail.bytes, 5 * 100);
        // Entries that do not follow the last one kept replace the tail.
        tail.extend((20..=21).map(entry));
        assert_eq!(indexes(tail.get(20, 22, ALL)), Some(vec![20, 21]));
        assert_eq!(indexes(tail.get(7, 8, ALL)), None);
        assert_eq!(tail.bytes, 2 * 100);
    }

    #[test]
    fn the_tail_forgets_its_oldest_entries_beyond_its_bounds() {
        let mut tail = Tail::default();
        tail.extend((1..=TAIL_ENTRIES as u64 + 10).map(entry));
        assert_eq!(tail.entries.len(), TAIL_ENTRIES);
        assert_eq!(indexes(tail.get(11, 12, ALL)), Some(vec![11]));
        assert_eq!(indexes(tail.get(10, 12, ALL)), None);
        // One entry larger than the byte bound is still kept alone (the newest is always kept).
        tail.extend([(entry(TAIL_ENTRIES as u64 + 11).0, TAIL_BYTES + 1)]);
        assert_eq!(tail.entries.len(), 1);
        assert_eq!(tail.bytes, TAIL_BYTES + 1);
    }

    #[test]
    fn a_budget_cuts_a_run_after_the_entries_that_fit_but_never_before_the_first() {
        let mut budget = Budget::new(250);
        assert!(budget.take(100));
        assert!(budget.take(100));
        assert!(!budget.take(100), "300 > 250");
        assert!(!budget.take(50), "the run ended: a smaller one does not follow a gap");
        let mut budget = Budget::new(10);
        assert!(budget.take(100), "the first entry always goes");
        assert!(!budget.take(1));
    }

    #[test]
    fn the_tail_answers_a_limited_read_it_covers_up_to_the_budget() {
        let mut tail = Tail::default();
        tail.extend((5..=9).map(entry));
        assert_eq!(indexes(tail.get(5, 100, 250)), Some(vec![5, 6]), "cut by the budget");
        assert_eq!(indexes(tail.get(6, 8, 1000)), Some(vec![6, 7]), "cut by the range");
        assert_eq!(indexes(tail.get(8, 100, 1)), Some(vec![8]), "one entry at least");
        assert_eq!(
            indexes(tail.get(8, 100, 1000)),
            None,
            "the budget is not spent when the tail ends: the rest is in the database"
        );
        assert_eq!(indexes(tail.get(4, 100, 250)), None, "starts before the tail");
    }
}
