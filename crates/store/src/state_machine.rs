//! The replicated state: keys with versions, leases with fencing tokens, and a bounded change
//! history, kept in `DIR/state.db` (SQLite, WAL mode, `synchronous=NORMAL`).
//!
//! [`StateMachine`] implements openraft's [`RaftStateMachine`]: every batch of committed entries
//! is applied in one SQLite transaction, and each committed transaction's changes are then
//! published on a broadcast channel.
//!
//! Applies are not synced one by one: a power loss may undo the latest applies (never part of
//! one: SQLite commits stay atomic and ordered), and openraft applies those entries again from
//! the log at start-up or once it learns the commit index. That is safe because the state is
//! made durable before the log may lose those entries: a snapshot syncs `state.db` before it is
//! reported to openraft (which purges the log only up to a snapshot), and an installed snapshot
//! and the end of every lease (forced recovery) are synced before they return.
//!
//! A snapshot is a consistent copy of `state.db` made with SQLite's online backup (pages copied
//! as they are, in one read transaction, while applies go on), in rollback-journal mode, whose
//! `meta` table also holds the snapshot's id; the current one is `snapshot.current`, so it
//! survives a restart. It is written once: built or received into a temporary file, synced, and
//! renamed into place; openraft reads and writes it as a [`SnapshotFile`], never in memory.
//! Installing a snapshot swaps the contents of every table inside one transaction, so readers
//! see the switch atomically. [`StateReader`] is the read side the services use: its own
//! connections, which never block the writer (WAL).
//!
//! Time enters only through the `now_ms` that commands carry; applying the same log gives the
//! same state on every replica.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StoredMembership,
};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::broadcast;

use crate::checkpoint::{CheckpointCounts, CheckpointStats};
use crate::db::{self, DbSpec, Durability};
use crate::error::{OpenError, StoreError};
use crate::read_pool::ReadPool;
use crate::snapshot_file::SnapshotFile;
use crate::types::{
    Change, ChangeKind, Command, CommandResult, FenceError, HistoryLimit, KeyValue, Lease, LeaseResult, Op, Replica,
    ReplicaId, Txn, TxnResult, TypeConfig,
};

/// The state database's file name inside the data directory.
pub const STATE_FILE: &str = "state.db";

/// The current snapshot's file name inside the data directory.
pub const SNAPSHOT_FILE: &str = "snapshot.current";

/// How many change batches the broadcast channel buffers before slow subscribers lag.
pub const CHANGE_CHANNEL_CAPACITY: usize = 4096;
/// A batch of committed entries this small (ops, and bytes of keys and values) is applied on
/// the calling task when the writer is free, rather than on the blocking pool: a put is a few
/// tens of microseconds of SQLite work without a sync (`state.db`'s commits are deferred), less
/// than the two thread hand-overs the pool costs.
const INLINE_APPLY_MAX_OPS: usize = 16;
const INLINE_APPLY_MAX_BYTES: usize = 64 * 1024;

/// How long an expired lease is kept (so a stale token is refused as `Expired` or `Superseded`
/// rather than `Unknown`) before a grant sweeps it away.
pub const LEASE_RETENTION_MS: u64 = 60 * 60 * 1000;

/// Revisions kept beyond the revision bound before the oldest are cut (see [`compact_history`]).
const REVISION_SLACK: u64 = 64;

/// How many read connections a [`StateReader`] spreads its reads over.
const READER_CONNECTIONS: usize = 4;

/// First bytes of the current-snapshot file as earlier versions wrote it (the snapshot's meta,
/// then the database): converted at start-up.
const V1_SNAPSHOT_MAGIC: &[u8; 8] = b"TDSNAP01";

/// The tables holding replicated state, with their columns: what a snapshot install replaces.
const STATE_TABLES: [(&str, &str); 4] = [
    ("kv", "key, value, version, create_revision, mod_revision"),
    ("changes", "revision, seq, key, kind, value, version"),
    ("leases", "token, name, holder, ttl_ms, expires_at_ms"),
    ("lease_names", "name, token, holder"),
];

/// Replicated metadata copied from an installed snapshot (last applied and membership come from
/// the snapshot's `SnapshotMeta`; format, cluster and replica id stay this replica's own).
const REPLICATED_META: [&str; 2] = ["revision", "compacted_revision"];

const STATE_SPEC: DbSpec = DbSpec {
    schema: "
        CREATE TABLE kv (
            key TEXT PRIMARY KEY NOT NULL,
            value BLOB NOT NULL,
            version INTEGER NOT NULL,
            create_revision INTEGER NOT NULL,
            mod_revision INTEGER NOT NULL
        );
        CREATE TABLE changes (
            revision INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            key TEXT NOT NULL,
            kind INTEGER NOT NULL,
            value BLOB NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (revision, seq)
        );
        CREATE TABLE leases (
            token INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            holder TEXT NOT NULL,
            ttl_ms INTEGER NOT NULL,
            expires_at_ms INTEGER NOT NULL
        );
        CREATE INDEX leases_by_name ON leases (name);
        CREATE INDEX leases_by_expiry ON leases (expires_at_ms);
        CREATE TABLE lease_names (
            name TEXT PRIMARY KEY NOT NULL,
            token INTEGER NOT NULL,
            holder TEXT NOT NULL
        );",
    tables: &["kv", "changes", "leases", "lease_names"],
    initial_meta: |conn| {
        db::meta_set(conn, "revision", 0)?;
        db::meta_set(conn, "compacted_revision", 0)
    },
    // See the module documentation: durability comes from the log, and from `db::sync_now`
    // before the log may be purged.
    durability: Durability::Deferred,
};

/// The state machine of one replica (the writer side). Open it with [`StateMachine::open`].
pub struct StateMachine {
    /// State shared with the snapshot builders.
    shared: Arc<Shared>,
}

/// Builds snapshots of the state machine; see [`RaftSnapshotBuilder`].
pub struct SnapshotBuilder {
    /// The state machine it snapshots.
    shared: Arc<Shared>,
}

/// What the state machine and its snapshot builders share.
struct Shared {
    /// The single writer connection to `state.db`, and the file's background checkpoints.
    writer: db::Writer,
    /// The data directory (snapshot and temporary files go here).
    dir: PathBuf,
    /// Path of `state.db`.
    path: PathBuf,
    /// The cluster name recorded in the file (received snapshots must match it).
    cluster: String,
    /// This replica's id (part of the snapshot ids it makes).
    replica_id: ReplicaId,
    /// How much change history to keep.
    history: HistoryLimit,
    /// Rows in `changes` right now. Only the writer changes it, with the writer lock held and
    /// after its transaction committed; it is the table's true row count, so compaction (which
    /// it drives) depends on the replicated data only.
    retained_changes: AtomicU64,
    /// Where committed changes are published.
    changes_tx: broadcast::Sender<Arc<Vec<Change>>>,
    /// The revision of the last applied change (shared with the readers), set after each
    /// commit that changes it.
    revision: Arc<AtomicU64>,
    /// Serialises replacing the current-snapshot file.
    snapshot_lock: Mutex<()>,
    /// Makes snapshot ids and temporary file names unique.
    snapshot_seq: AtomicU64,
}

/// The read side of the state machine: cheap to clone, safe to share between tasks. Reads use
/// their own connections and never block the writer; each read sees one committed state.
#[derive(Clone)]
pub struct StateReader {
    /// State shared by every clone.
    inner: Arc<ReaderInner>,
}

/// What every [`StateReader`] clone shares.
struct ReaderInner {
    /// Read-only connections to `state.db`, each on its own thread.
    pool: ReadPool,
    /// The counts of `state.db`'s checkpoints.
    checkpoints: CheckpointStats,
    /// The state machine's change channel, for [`StateReader::subscribe`].
    changes_tx: broadcast::Sender<Arc<Vec<Change>>>,
    /// The writer's revision, for [`StateReader::applied_revision`].
    revision: Arc<AtomicU64>,
}

impl StateMachine {
    /// Opens `dir/state.db`: creates it when absent, otherwise checks that it is a healthy state
    /// database of this cluster and replica in the supported format (and that the current
    /// snapshot, if any, is readable). A refused file is left untouched.
    ///
    /// `history` bounds the change history kept for [`StateReader::changes_after`].
    ///
    /// Blocking: call it at start-up, before the runtime is busy, or via `spawn_blocking`.
    pub fn open(
        dir: &Path,
        cluster: &str,
        replica_id: ReplicaId,
        history: HistoryLimit,
    ) -> Result<(StateMachine, StateReader), OpenError> {
        let path = dir.join(STATE_FILE);
        let writer = db::open_writer(&path, &STATE_SPEC, cluster, replica_id)?;
        let (revision, retained_changes) = match read_applied_state(&writer).and_then(|_| {
            let revision = db::meta_require::<u64>(&writer, "revision")?;
            db::meta_require::<u64>(&writer, "compacted_revision")?;
            Ok((revision, count_changes(&writer)?))
        }) {
            Ok(figures) => figures,
            Err(e) => {
                return Err(OpenError::Corrupt {
                    file: path,
                    reason: format!("state metadata: {e}"),
                })
            }
        };

        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let unreadable = |e: StoreError| OpenError::Corrupt {
            file: snapshot_path.clone(),
            reason: format!("unreadable snapshot: {e}"),
        };
        let v1 = read_v1_snapshot_file(&snapshot_path).map_err(unreadable)?;
        let current = match &v1 {
            Some((meta, _)) => Some(meta.clone()),
            None => read_snapshot_meta(&snapshot_path).map_err(unreadable)?,
        };
        // Continue the snapshot sequence after the current snapshot's, when it is one of ours.
        let next_seq = current
            .and_then(|meta| meta.snapshot_id.rsplit('-').next().and_then(|s| s.parse::<u64>().ok()))
            .map_or(1, |seq| seq.saturating_add(1));

        remove_temporary_files(dir)?;
        if let Some((meta, data)) = v1 {
            upgrade_v1_snapshot_file(&snapshot_path, &meta, &data).map_err(|e| OpenError::Corrupt {
                file: snapshot_path.clone(),
                reason: format!("cannot convert the snapshot to this version's format: {e}"),
            })?;
        }

        let writer = db::Writer::start(&path, "state", writer)?;
        let revision = Arc::new(AtomicU64::new(revision));
        let (changes_tx, _) = broadcast::channel(CHANGE_CHANNEL_CAPACITY);
        let mut conns = Vec::with_capacity(READER_CONNECTIONS);
        for _ in 0..READER_CONNECTIONS {
            let conn = db::open_reader(&path).map_err(|source| OpenError::Sqlite {
                file: path.clone(),
                source,
            })?;
            conns.push(conn);
        }
        let pool = ReadPool::start("state", conns).map_err(|source| OpenError::Io {
            file: path.clone(),
            source,
        })?;
        let reader = StateReader {
            inner: Arc::new(ReaderInner {
                pool,
                checkpoints: writer.checkpoint_stats(),
                changes_tx: changes_tx.clone(),
                revision: revision.clone(),
            }),
        };
        let shared = Arc::new(Shared {
            writer,
            dir: dir.to_owned(),
            path,
            cluster: cluster.to_owned(),
            replica_id,
            history,
            retained_changes: AtomicU64::new(retained_changes),
            changes_tx,
            revision,
            snapshot_lock: Mutex::new(()),
            snapshot_seq: AtomicU64::new(next_seq),
        });
        Ok((StateMachine { shared }, reader))
    }

    /// Path of `state.db`.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Ends every lease at once: used when a forced recovery starts a new epoch, so that no
    /// fencing token of the old epoch can ever be used again (a transaction naming one is then
    /// refused as unknown). Returns how many leases ended.
    pub async fn end_all_leases(&mut self) -> Result<u64, StoreError> {
        let shared = self.shared.clone();
        db::blocking(move || {
            let mut conn = shared.writer.lock()?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ended = tx.execute("DELETE FROM leases", [])?;
            tx.execute("DELETE FROM lease_names", [])?;
            tx.commit()?;
            db::sync_now(&conn, STATE_SPEC.durability)?;
            Ok(ended as u64)
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<ReplicaId>>, StoredMembership<ReplicaId, Replica>), StorageError<ReplicaId>> {
        let shared = self.shared.clone();
        db::blocking(move || read_applied_state(&*shared.writer.lock()?))
            .await
            .map_err(StoreError::into_read_sm)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<ReplicaId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        if is_small(&entries) {
            // Unless the checkpointer holds the writer (a rewind waits for readers).
            if let Some(conn) = self.shared.writer.try_lock().map_err(StoreError::into_write_sm)? {
                return self
                    .shared
                    .apply_with(&conn, entries)
                    .map_err(StoreError::into_write_sm);
            }
        }
        let shared = self.shared.clone();
        db::blocking(move || shared.apply(entries))
            .await
            .map_err(StoreError::into_write_sm)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotFile>, StorageError<ReplicaId>> {
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::SeqCst);
        let path = self.shared.dir.join(format!("snapshot.recv-{seq}.tmp"));
        db::blocking(move || {
            remove_db_files(&path)?;
            Ok(Box::new(SnapshotFile::create_temporary(&path)?))
        })
        .await
        .map_err(|e| e.into_write_snapshot(None))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ReplicaId, Replica>,
        mut snapshot: Box<SnapshotFile>,
    ) -> Result<(), StorageError<ReplicaId>> {
        let signature = meta.signature();
        let meta = meta.clone();
        snapshot
            .sync()
            .await
            .map_err(|e| StoreError::from(e).into_write_snapshot(Some(signature.clone())))?;
        let shared = self.shared.clone();
        db::blocking(move || shared.install_snapshot(&meta, *snapshot))
            .await
            .map_err(|e| e.into_write_snapshot(Some(signature)))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<ReplicaId>> {
        let shared = self.shared.clone();
        db::blocking(move || shared.current_snapshot())
            .await
            .map_err(StoreError::into_read_snapshot)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<ReplicaId>> {
        let shared = self.shared.clone();
        db::background("snapshot-build", move || shared.build_snapshot())
            .await
            .map_err(|e| e.into_write_snapshot(None))
    }
}

/// Whether applying `entries` is quick enough for the calling task (see [`INLINE_APPLY_MAX_OPS`]).
fn is_small(entries: &[Entry<TypeConfig>]) -> bool {
    let txn_size = |txn: &Txn| -> (usize, usize) {
        let bytes = txn.ops.iter().map(|op| match op {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
        });
        (txn.ops.len() + txn.compares.len(), bytes.sum())
    };
    let (mut ops, mut bytes) = (0, 0);
    for entry in entries {
        let (o, b) = match &entry.payload {
            EntryPayload::Normal(Command::Txn(txn)) => txn_size(txn),
            EntryPayload::Normal(Command::Batch(txns)) => txns
                .iter()
                .map(txn_size)
                .fold((0, 0), |(o, b), (o2, b2)| (o + o2, b + b2)),
            _ => (1, 0),
        };
        ops += o;
        bytes += b;
        if ops > INLINE_APPLY_MAX_OPS || bytes > INLINE_APPLY_MAX_BYTES {
            return false;
        }
    }
    true
}

impl Shared {
    /// Applies a batch of committed entries in one transaction, then publishes the changes.
    fn apply(&self, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<CommandResult>, StoreError> {
        self.apply_with(&*self.writer.lock()?, entries)
    }

    /// [`Shared::apply`] on the locked writer `conn`.
    fn apply_with(&self, conn: &Connection, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<CommandResult>, StoreError> {
        let mut published = Vec::new();
        let results = db::write_transaction(conn, |tx| {
            let mut revision: u64 = db::meta_require(tx, "revision")?;
            let mut last_applied = None;
            let mut membership = None;
            let mut results = Vec::with_capacity(entries.len());
            for entry in entries {
                let log_id = entry.log_id;
                last_applied = Some(log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(log_id), m));
                        CommandResult::None
                    }
                    EntryPayload::Normal(command) => {
                        apply_command(tx, command, log_id.index, &mut revision, &mut published)?
                    }
                };
                results.push(result);
            }
            db::meta_set_blob(tx, "last_applied", &last_applied)?;
            if let Some(membership) = &membership {
                db::meta_set_blob(tx, "last_membership", membership)?;
            }
            db::meta_set(tx, "revision", revision)?;
            let inserted: usize = published.iter().map(Vec::len).sum();
            let retained = self.retained_changes.load(Ordering::SeqCst) + inserted as u64;
            let retained = compact_history(tx, revision, self.history, retained)?;
            Ok((results, retained, revision))
        })?;
        let (results, retained, revision) = results;
        self.retained_changes.store(retained, Ordering::SeqCst);
        self.revision.store(revision, Ordering::SeqCst);
        // Published while the writer lock is held, so subscribers see commit order.
        for changes in published {
            // An error only means nobody is subscribed.
            let _ = self.changes_tx.send(Arc::new(changes));
        }
        Ok(results)
    }

    /// Makes a consistent copy of `state.db`, records it as the current snapshot and returns it.
    fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let started = Instant::now();
        let seq = self.snapshot_seq.fetch_add(1, Ordering::SeqCst);
        let tmp = self.dir.join(format!("snapshot.build-{seq}.tmp"));
        remove_db_files(&tmp)?;
        let built = (|| -> Result<_, StoreError> {
            let copy = self.copy_state(&tmp)?;
            // Everything the copy holds must be on disk in `state.db` before openraft hears of
            // the snapshot: it then purges the log up to it.
            db::sync_now(&*self.writer.lock()?, STATE_SPEC.durability)?;
            let (last_log_id, last_membership) = read_applied_state(&copy)?;
            let (index, term) = last_log_id.map_or((0, 0), |id| (id.index, id.leader_id.term));
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id: format!("{index}-{term}-{}-{seq}", self.replica_id),
            };
            write_snapshot_meta(&copy, &meta)?;
            drop(copy);
            fs::File::open(&tmp)?.sync_all()?;
            // Opened before it is renamed (or removed, when an installed snapshot is newer):
            // the handle reads this copy either way.
            let data = SnapshotFile::open(&tmp)?;
            Ok((meta, data))
        })();
        let (meta, data) = match built {
            Ok(built) => built,
            Err(e) => {
                remove_db_files(&tmp)?;
                return Err(e);
            }
        };
        let bytes = data_len(&tmp);
        self.store_current_snapshot(&meta, &tmp)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }

    /// Copies the state, as one committed transaction left it, into the new database file `to`
    /// (rollback-journal mode, not synced) and returns a connection to the copy.
    fn copy_state(&self, to: &Path) -> Result<Connection, StoreError> {
        // A connection of its own: the backup reads one consistent state without holding up the
        // writer (WAL). All pages are copied in one step, so in one read transaction.
        let source = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        source.busy_timeout(db::BUSY_TIMEOUT)?;
        let mut copy = Connection::open_with_flags(
            to,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The file is synced once, by the caller, when it is complete.
        copy.pragma_update(None, "synchronous", "OFF")?;
        match Backup::new(&source, &mut copy)?.step(-1)? {
            StepResult::Done => {}
            other => {
                return Err(StoreError::Corrupt(format!(
                    "copying the state for a snapshot did not finish: {other:?}"
                )))
            }
        }
        // The copied header says WAL, like `state.db`'s: a snapshot is a single file.
        copy.pragma_update(None, "journal_mode", "DELETE")?;
        Ok(copy)
    }

    /// Replaces the state with a received snapshot and records it as the current snapshot.
    fn install_snapshot(
        &self,
        meta: &SnapshotMeta<ReplicaId, Replica>,
        mut data: SnapshotFile,
    ) -> Result<(), StoreError> {
        let file = data.path().to_owned();
        let installed = (|| -> Result<(), StoreError> {
            prepare_received_snapshot(&file, meta, &self.cluster)?;
            fs::File::open(&file)?.sync_all()?;
            self.install_from(&file, meta)
        })();
        if let Err(e) = installed {
            // The file itself goes when `data` is dropped.
            remove_sidecars(&file)?;
            return Err(e);
        }
        remove_sidecars(&file)?;
        self.store_current_snapshot(meta, &file)?;
        data.keep();
        Ok(())
    }

    /// The current snapshot, if any: its meta and an open handle on its file.
    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        // Held so that the file opened is the one the meta was read from.
        let _guard = db::lock(&self.snapshot_lock)?;
        let path = self.dir.join(SNAPSHOT_FILE);
        let Some(meta) = read_snapshot_meta(&path)? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::open(&path)?),
        }))
    }

    /// Copies the snapshot database at `file` (validated) into `state.db` in one transaction.
    fn install_from(&self, file: &Path, meta: &SnapshotMeta<ReplicaId, Replica>) -> Result<(), StoreError> {
        let mut conn = self.writer.lock()?;
        let old_revision: u64 = db::meta_require(&conn, "revision")?;
        conn.execute("ATTACH DATABASE ?1 AS snap", [utf8(file)?])?;
        let copied = (|| -> Result<(u64, u64), StoreError> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for (table, columns) in STATE_TABLES {
                tx.execute(&format!("DELETE FROM main.{table}"), [])?;
                tx.execute(
                    &format!("INSERT INTO main.{table} ({columns}) SELECT {columns} FROM snap.{table}"),
                    [],
                )?;
            }
            for key in REPLICATED_META {
                let value: u64 = tx
                    .query_row("SELECT value FROM snap.meta WHERE key = ?1", [key], |row| row.get(0))
                    .optional()?
                    .ok_or_else(|| StoreError::InvalidSnapshot(format!("metadata {key} is missing")))?;
                db::meta_set(&tx, key, value)?;
            }
            db::meta_set_blob(&tx, "last_applied", &meta.last_log_id)?;
            db::meta_set_blob(&tx, "last_membership", &meta.last_membership)?;
            let revision = db::meta_require(&tx, "revision")?;
            let retained = count_changes(&tx)?;
            tx.commit()?;
            Ok((revision, retained))
        })();
        let detached = conn.execute("DETACH DATABASE snap", []);
        let (new_revision, retained) = copied?;
        detached?;
        self.retained_changes.store(retained, Ordering::SeqCst);
        self.revision.store(new_revision, Ordering::SeqCst);
        // openraft purges the log up to an installed snapshot: the state must be on disk first.
        db::sync_now(&conn, STATE_SPEC.durability)?;

        // Publish the retained changes the subscribers have not seen. Changes older than the
        // snapshot's history are gone; see `StateReader::subscribe`.
        if new_revision > old_revision {
            let changes = query_changes(&conn, old_revision, new_revision, None)?;
            for batch in group_by_revision(changes) {
                let _ = self.changes_tx.send(Arc::new(batch));
            }
        }
        Ok(())
    }

    /// Makes the complete, synced snapshot database `file` (holding `meta`) the current snapshot
    /// by renaming it, unless the current one is newer (a build racing an install): then `file`
    /// is removed.
    fn store_current_snapshot(&self, meta: &SnapshotMeta<ReplicaId, Replica>, file: &Path) -> Result<(), StoreError> {
        let _guard = db::lock(&self.snapshot_lock)?;
        let path = self.dir.join(SNAPSHOT_FILE);
        if let Some(current) = read_snapshot_meta(&path)? {
            if current.last_log_id > meta.last_log_id {
                return remove_db_files(file);
            }
        }
        fs::rename(file, &path)?;
        db::sync_dir(&path)?;
        Ok(())
    }
}

/// Checks that a received snapshot is a state database of this cluster, and makes it a
/// snapshot file as this replica keeps one: rollback-journal mode, and `meta` (which openraft
/// gives along) recorded in it.
fn prepare_received_snapshot(
    file: &Path,
    meta: &SnapshotMeta<ReplicaId, Replica>,
    cluster: &str,
) -> Result<(), StoreError> {
    let snap = open_plain(file)?;
    db::validate(&snap, file, STATE_SPEC.tables, cluster, None)
        .map_err(|e| StoreError::InvalidSnapshot(e.to_string()))?;
    let (applied, _) = read_applied_state(&snap)?;
    if applied != meta.last_log_id {
        tracing::warn!(
            snapshot_applied = ?applied,
            meta_last_log_id = ?meta.last_log_id,
            "installing a snapshot whose data and meta disagree on the last applied log id; using the meta"
        );
    }
    seal_snapshot_file(&snap, meta)
}

/// Makes the database of `conn` a snapshot file as this replica keeps one: a single file
/// (rollback-journal mode, whatever the header it was copied with says) holding `meta`. Not
/// synced: the caller syncs the file once it is complete.
fn seal_snapshot_file(conn: &Connection, meta: &SnapshotMeta<ReplicaId, Replica>) -> Result<(), StoreError> {
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "journal_mode", "DELETE")?;
    write_snapshot_meta(conn, meta)
}

/// Records `meta` in a snapshot database's `meta` table.
fn write_snapshot_meta(conn: &Connection, meta: &SnapshotMeta<ReplicaId, Replica>) -> Result<(), StoreError> {
    db::meta_set_blob(conn, "last_applied", &meta.last_log_id)?;
    db::meta_set_blob(conn, "last_membership", &meta.last_membership)?;
    db::meta_set_blob(conn, "snapshot_id", &meta.snapshot_id)
}

/// The meta of the snapshot database at `path`; `None` when there is no such file.
fn read_snapshot_meta(path: &Path) -> Result<Option<SnapshotMeta<ReplicaId, Replica>>, StoreError> {
    match fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    let (last_log_id, last_membership) = read_applied_state(&conn)?;
    let snapshot_id = db::meta_get_blob::<String>(&conn, "snapshot_id")?
        .ok_or_else(|| StoreError::Corrupt(format!("{} names no snapshot id", path.display())))?;
    Ok(Some(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    }))
}

/// Reads a current-snapshot file in the format of earlier versions (its meta, then the
/// database); `None` when there is none, or it is in this version's format.
#[allow(clippy::type_complexity)]
fn read_v1_snapshot_file(path: &Path) -> Result<Option<(SnapshotMeta<ReplicaId, Replica>, Vec<u8>)>, StoreError> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut magic = [0u8; 8];
    let mut len = [0u8; 8];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == V1_SNAPSHOT_MAGIC => {}
        // Shorter than the magic, or something else: not this format.
        _ => return Ok(None),
    }
    file.read_exact(&mut len)?;
    let len = usize::try_from(u64::from_le_bytes(len))
        .map_err(|_| StoreError::Corrupt("snapshot meta length out of range".to_owned()))?;
    let mut meta_bytes = Vec::new();
    (&mut file).take(len as u64).read_to_end(&mut meta_bytes)?;
    if meta_bytes.len() != len {
        return Err(StoreError::Corrupt(format!("{} is truncated", path.display())));
    }
    let meta = bincode::deserialize(&meta_bytes)?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(Some((meta, data)))
}

/// Rewrites an earlier version's current-snapshot file at `path` in this version's format:
/// written next to it, synced, renamed over it.
fn upgrade_v1_snapshot_file(
    path: &Path,
    meta: &SnapshotMeta<ReplicaId, Replica>,
    data: &[u8],
) -> Result<(), StoreError> {
    let tmp = db::sidecar(path, ".upgrade.tmp");
    let upgraded = (|| -> Result<(), StoreError> {
        remove_db_files(&tmp)?;
        fs::write(&tmp, data)?;
        seal_snapshot_file(&open_plain(&tmp)?, meta)?;
        remove_sidecars(&tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, path)?;
        db::sync_dir(path)?;
        Ok(())
    })();
    if upgraded.is_err() {
        remove_db_files(&tmp)?;
    } else {
        tracing::info!(file = %path.display(), snapshot = %meta.snapshot_id, "converted the current snapshot to this version's file format");
    }
    upgraded
}

/// The size of a file in bytes, for logs (0 when unknown).
fn data_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Removes the temporary snapshot files a crash may have left in `dir` (all named
/// `snapshot.*.tmp*`).
fn remove_temporary_files(dir: &Path) -> Result<(), OpenError> {
    let io_err = |file: &Path, source| OpenError::Io {
        file: file.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let is_temporary = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("snapshot.") && name.contains(".tmp"));
        if is_temporary {
            tracing::info!(file = %path.display(), "removing a temporary snapshot file left by a crash");
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
        }
    }
    Ok(())
}

/// Opens a database file for this module's own use (snapshot copies), without WAL settings.
fn open_plain(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    Ok(conn)
}

/// Removes a temporary database file and its sidecars, if present.
fn remove_db_files(path: &Path) -> Result<(), StoreError> {
    remove_if_present(path)?;
    remove_sidecars(path)
}

/// Removes a database file's journal and WAL sidecars, if present.
fn remove_sidecars(path: &Path) -> Result<(), StoreError> {
    for suffix in ["-journal", "-wal", "-shm"] {
        remove_if_present(&db::sidecar(path, suffix))?;
    }
    Ok(())
}

/// Removes a file; a file already gone is fine.
fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A path as UTF-8, for SQL statements that take a file name.
fn utf8(path: &Path) -> Result<&str, StoreError> {
    path.to_str().ok_or_else(|| {
        StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("path {} is not valid UTF-8", path.display()),
        ))
    })
}

/// The last applied log id and the last membership recorded in a state database.
#[allow(clippy::type_complexity)]
fn read_applied_state(
    conn: &Connection,
) -> Result<(Option<LogId<ReplicaId>>, StoredMembership<ReplicaId, Replica>), StoreError> {
    let applied = db::meta_get_blob::<Option<LogId<ReplicaId>>>(conn, "last_applied")?.flatten();
    let membership = db::meta_get_blob(conn, "last_membership")?.unwrap_or_default();
    Ok((applied, membership))
}

/// Converts a number to SQLite's integer, saturating at `i64::MAX`. Every number that comes
/// from a command goes through this, so no command can make an apply fail.
fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Clamps a number to what SQLite stores (`i64::MAX`).
fn clamp(value: u64) -> u64 {
    value.min(i64::MAX as u64)
}

/// Applies one command inside the batch's transaction.
fn apply_command(
    tx: &Connection,
    command: Command,
    index: u64,
    revision: &mut u64,
    published: &mut Vec<Vec<Change>>,
) -> Result<CommandResult, StoreError> {
    Ok(match command {
        Command::Txn(txn) => CommandResult::Txn(apply_txn(tx, txn, revision, published)?),
        Command::Batch(txns) => CommandResult::Batch(
            txns.into_iter()
                .map(|txn| apply_txn(tx, txn, revision, published))
                .collect::<Result<_, _>>()?,
        ),
        Command::LeaseGrant {
            name,
            holder,
            ttl_ms,
            now_ms,
        } => CommandResult::Lease(lease_grant(tx, index, name, holder, ttl_ms, now_ms)?),
        Command::LeaseKeepAlive { token, now_ms } => CommandResult::Lease(lease_keep_alive(tx, token, now_ms)?),
        Command::LeaseRevoke { token } => CommandResult::Lease(lease_revoke(tx, token)?),
    })
}

/// Applies a transaction: fence, compares, then every op under one new revision.
fn apply_txn(
    tx: &Connection,
    txn: Txn,
    revision: &mut u64,
    published: &mut Vec<Vec<Change>>,
) -> Result<TxnResult, StoreError> {
    if let Some(token) = txn.fence {
        if let Err(refused) = check_fence(tx, token, txn.now_ms)? {
            return Ok(TxnResult::Fenced(refused));
        }
    }
    for compare in &txn.compares {
        let actual = key_version(tx, &compare.key)?;
        if actual != compare.version {
            return Ok(TxnResult::CompareFailed {
                key: compare.key.clone(),
                expected: compare.version,
                actual,
            });
        }
    }
    if txn.ops.is_empty() {
        return Ok(TxnResult::Committed {
            revision: *revision,
            versions: Vec::new(),
        });
    }

    let new_revision = *revision + 1;
    let mut versions = Vec::with_capacity(txn.ops.len());
    let mut changes = Vec::new();
    for op in txn.ops {
        match op {
            Op::Put { key, value } => {
                let existing: Option<(u64, u64)> = tx
                    .prepare_cached("SELECT version, create_revision FROM kv WHERE key = ?1")?
                    .query_row([&key], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                let (version, create_revision) = match existing {
                    Some((version, create_revision)) => (version + 1, create_revision),
                    None => (1, new_revision),
                };
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO kv (key, value, version, create_revision, mod_revision) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![key, value, version, create_revision, new_revision])?;
                versions.push(version);
                changes.push(Change {
                    revision: new_revision,
                    key,
                    kind: ChangeKind::Put,
                    value,
                    version,
                });
            }
            Op::Delete { key } => {
                let deleted = tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?.execute([&key])?;
                versions.push(0);
                if deleted > 0 {
                    changes.push(Change {
                        revision: new_revision,
                        key,
                        kind: ChangeKind::Delete,
                        value: Vec::new(),
                        version: 0,
                    });
                }
            }
        }
    }
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO changes (revision, seq, key, kind, value, version) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (seq, change) in changes.iter().enumerate() {
            insert.execute(params![
                change.revision,
                seq as u64,
                change.key,
                kind_code(change.kind),
                change.value,
                change.version
            ])?;
        }
    }
    *revision = new_revision;
    if !changes.is_empty() {
        published.push(changes);
    }
    Ok(TxnResult::Committed {
        revision: new_revision,
        versions,
    })
}

/// A key's version, 0 when it does not exist.
fn key_version(conn: &Connection, key: &str) -> Result<u64, StoreError> {
    let version: Option<u64> = conn
        .prepare_cached("SELECT version FROM kv WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    Ok(version.unwrap_or(0))
}

/// Whether `token` may fence a transaction at `now_ms`: the lease exists, is still the newest
/// of its name, and has not expired.
fn check_fence(conn: &Connection, token: u64, now_ms: u64) -> Result<Result<(), FenceError>, StoreError> {
    let Some(lease) = lease_by_token(conn, token)? else {
        return Ok(Err(FenceError::Unknown { token }));
    };
    // Checked before expiry: a superseded lease is always expired too, and naming the current
    // holder is the more useful answer.
    match name_owner(conn, &lease.name)? {
        Some((current, _)) if current == token => {}
        Some((current, holder)) => {
            return Ok(Err(FenceError::Superseded { token, current, holder }));
        }
        None => return Ok(Err(FenceError::Unknown { token })),
    }
    if lease.expires_at_ms < now_ms {
        return Ok(Err(FenceError::Expired {
            token,
            expired_at_ms: lease.expires_at_ms,
        }));
    }
    Ok(Ok(()))
}

/// Grants the lease `name` with fencing token `token` (the entry's log index) unless a live
/// lease holds the name.
fn lease_grant(
    tx: &Connection,
    token: u64,
    name: String,
    holder: String,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<LeaseResult, StoreError> {
    sweep_leases(tx, now_ms)?;
    if let Some(current) = current_lease(tx, &name)? {
        if current.expires_at_ms >= now_ms {
            return Ok(LeaseResult::Held {
                name,
                holder: current.holder,
                token: current.token,
                expires_at_ms: current.expires_at_ms,
            });
        }
    }
    let ttl_ms = clamp(ttl_ms);
    let expires_at_ms = clamp(now_ms.saturating_add(ttl_ms));
    tx.prepare_cached(
        "INSERT OR REPLACE INTO leases (token, name, holder, ttl_ms, expires_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![sql_int(token), name, holder, ttl_ms, expires_at_ms])?;
    tx.prepare_cached(
        "INSERT INTO lease_names (name, token, holder) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET token = excluded.token, holder = excluded.holder",
    )?
    .execute(params![name, sql_int(token), holder])?;
    Ok(LeaseResult::Granted { token, expires_at_ms })
}

/// Extends a live, current lease by its TTL from `now_ms`.
fn lease_keep_alive(tx: &Connection, token: u64, now_ms: u64) -> Result<LeaseResult, StoreError> {
    let Some(lease) = lease_by_token(tx, token)? else {
        return Ok(LeaseResult::NotFound { token });
    };
    let current = matches!(name_owner(tx, &lease.name)?, Some((owner, _)) if owner == token);
    if !current || lease.expires_at_ms < now_ms {
        return Ok(LeaseResult::NotFound { token });
    }
    let expires_at_ms = clamp(now_ms.saturating_add(lease.ttl_ms));
    tx.prepare_cached("UPDATE leases SET expires_at_ms = ?1 WHERE token = ?2")?
        .execute(params![expires_at_ms, sql_int(token)])?;
    Ok(LeaseResult::Granted { token, expires_at_ms })
}

/// Ends a lease at once, freeing its name.
fn lease_revoke(tx: &Connection, token: u64) -> Result<LeaseResult, StoreError> {
    if let Some(lease) = lease_by_token(tx, token)? {
        tx.prepare_cached("DELETE FROM leases WHERE token = ?1")?
            .execute([sql_int(token)])?;
        // Forget the name once no lease of it remains (older, superseded ones are kept until
        // swept so that their tokens are still refused as superseded).
        tx.prepare_cached(
            "DELETE FROM lease_names WHERE name = ?1 \
             AND NOT EXISTS (SELECT 1 FROM leases WHERE name = ?1)",
        )?
        .execute([&lease.name])?;
    }
    Ok(LeaseResult::Revoked { token })
}

/// Deletes leases expired for longer than [`LEASE_RETENTION_MS`], and the names no lease
/// refers to any more.
fn sweep_leases(tx: &Connection, now_ms: u64) -> Result<(), StoreError> {
    let Some(cutoff) = now_ms.checked_sub(LEASE_RETENTION_MS) else {
        return Ok(());
    };
    let swept = tx
        .prepare_cached("DELETE FROM leases WHERE expires_at_ms < ?1")?
        .execute([sql_int(cutoff)])?;
    if swept > 0 {
        tx.execute(
            "DELETE FROM lease_names WHERE name NOT IN (SELECT name FROM leases)",
            [],
        )?;
    }
    Ok(())
}

/// How many revisions beyond `revisions` are kept before the oldest are cut: 64, or a quarter
/// of a smaller bound (none below 4).
fn revision_slack(revisions: u64) -> u64 {
    (revisions / 4).min(REVISION_SLACK)
}

/// Rows in the `changes` table.
fn count_changes(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM changes", [], |row| row.get(0))?)
}

/// Drops the oldest change history, whole revisions at a time: once more than
/// `history.revisions` revisions plus [`revision_slack`] are kept, down to `history.revisions`;
/// once more than `history.changes` changes plus a quarter are kept, down to at most
/// `history.changes` changes (the newest revision is always kept, however many changes it has).
/// `retained` is the row count of `changes`, returned updated.
///
/// The slacks make both bounds cheap. Cutting one revision on every apply dirtied the first
/// pages of `changes` and of its index in every transaction (about two more 4-KiB pages written
/// per put once the bound was reached); cut every 64 revisions, they are dirtied once per 64.
/// Finding where to cut for the change bound walks `history.changes` index entries, so it runs
/// once every `history.changes / 4` changes rather than on every apply.
fn compact_history(tx: &Connection, revision: u64, history: HistoryLimit, retained: u64) -> Result<u64, StoreError> {
    let compacted: u64 = db::meta_require(tx, "compacted_revision")?;
    let mut target = revision.saturating_sub(history.revisions);
    if target.saturating_sub(compacted) <= revision_slack(history.revisions) {
        target = compacted;
    }
    let mut retained = retained;
    let slack = history.changes / 4;
    if retained > history.changes.saturating_add(slack) {
        // The revision of the newest change past the bound: it and everything older must go.
        let beyond: Option<u64> = tx
            .prepare_cached("SELECT revision FROM changes ORDER BY revision DESC, seq DESC LIMIT 1 OFFSET ?1")?
            .query_row([history.changes], |row| row.get(0))
            .optional()?;
        if let Some(beyond) = beyond {
            target = target.max(beyond.min(revision.saturating_sub(1)));
        }
    }
    if target > compacted {
        let deleted = tx
            .prepare_cached("DELETE FROM changes WHERE revision <= ?1")?
            .execute([target])?;
        retained = retained.saturating_sub(deleted as u64);
        db::meta_set(tx, "compacted_revision", target)?;
    }
    Ok(retained)
}

const LEASE_COLUMNS: &str = "leases.token, leases.name, leases.holder, leases.ttl_ms, leases.expires_at_ms";

fn lease_from_row(row: &Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        token: row.get(0)?,
        name: row.get(1)?,
        holder: row.get(2)?,
        ttl_ms: row.get(3)?,
        expires_at_ms: row.get(4)?,
    })
}

/// The stored lease with this token (possibly expired or superseded).
fn lease_by_token(conn: &Connection, token: u64) -> Result<Option<Lease>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE token = ?1"))?
        .query_row([sql_int(token)], lease_from_row)
        .optional()?)
}

/// The newest lease granted for `name`, if it still exists (possibly expired).
fn current_lease(conn: &Connection, name: &str) -> Result<Option<Lease>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {LEASE_COLUMNS} FROM lease_names JOIN leases ON leases.token = lease_names.token \
             WHERE lease_names.name = ?1"
        ))?
        .query_row([name], lease_from_row)
        .optional()?)
}

/// The newest token granted for `name` and its holder (the lease may since have been revoked).
fn name_owner(conn: &Connection, name: &str) -> Result<Option<(u64, String)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT token, holder FROM lease_names WHERE name = ?1")?
        .query_row([name], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?)
}

fn kind_code(kind: ChangeKind) -> i64 {
    match kind {
        ChangeKind::Put => 0,
        ChangeKind::Delete => 1,
    }
}

fn kind_from_code(code: i64) -> Result<ChangeKind, StoreError> {
    match code {
        0 => Ok(ChangeKind::Put),
        1 => Ok(ChangeKind::Delete),
        other => Err(StoreError::Corrupt(format!("unknown change kind {other}"))),
    }
}

/// Changes with `after < revision <= up_to` in (revision, seq) order, at most `limit` rows
/// when given.
fn query_changes(conn: &Connection, after: u64, up_to: u64, limit: Option<usize>) -> Result<Vec<Change>, StoreError> {
    let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let mut stmt = conn.prepare_cached(
        "SELECT revision, key, kind, value, version FROM changes \
         WHERE revision > ?1 AND revision <= ?2 ORDER BY revision, seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![sql_int(after), sql_int(up_to), limit], |row| {
        Ok((
            row.get::<_, u64>(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        ))
    })?;
    let mut changes = Vec::new();
    for row in rows {
        let (revision, key, kind, value, version) = row?;
        changes.push(Change {
            revision,
            key,
            kind: kind_from_code(kind)?,
            value,
            version,
        });
    }
    Ok(changes)
}

/// Splits changes ordered by revision into one batch per revision.
fn group_by_revision(changes: Vec<Change>) -> Vec<Vec<Change>> {
    let mut batches: Vec<Vec<Change>> = Vec::new();
    for change in changes {
        match batches.last_mut() {
            Some(batch) if batch[0].revision == change.revision => batch.push(change),
            _ => batches.push(vec![change]),
        }
    }
    batches
}

/// The smallest string greater than every string starting with `prefix`; `None` when there is
/// none (the empty prefix, or one made only of `char::MAX`).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn key_value_from_row(row: &Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        version: row.get(2)?,
        create_revision: row.get(3)?,
        mod_revision: row.get(4)?,
    })
}

impl StateReader {
    /// What the checkpoints of `state.db` have done since it was opened.
    pub fn checkpoint_counts(&self) -> CheckpointCounts {
        self.inner.checkpoints.counts()
    }

    /// Runs `read` on the first read connection free.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.inner.pool.run(read).await
    }

    /// The key's current value and versions, `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT key, value, version, create_revision, mod_revision FROM kv WHERE key = ?1")?
                .query_row([key], key_value_from_row)
                .optional()?)
        })
        .await
    }

    /// Up to `limit` keys starting with `prefix`, in byte order, after `start_after` when given
    /// (for paging: pass the last key of the previous page).
    pub async fn range(
        &self,
        prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let (lower_op, lower) = match start_after {
            Some(after) if after.as_str() >= prefix => (">", after),
            _ => (">=", prefix.to_owned()),
        };
        let upper = prefix_end(prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let sql = format!(
                "SELECT key, value, version, create_revision, mod_revision FROM kv \
                 WHERE key {lower_op} ?1 AND (?2 IS NULL OR key < ?2) ORDER BY key LIMIT ?3"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![lower, upper, limit], key_value_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Changes with a revision greater than `revision`, in (revision, seq) order.
    ///
    /// About `limit` changes are returned, but a revision is never split: the last revision in
    /// the result is always complete, so the result may exceed `limit` by the rest of it, and
    /// the caller can resume from the last revision it got. Fails with
    /// [`StoreError::Compacted`] when some changes after `revision` are no longer retained.
    pub async fn changes_after(&self, revision: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let compacted: u64 = db::meta_require(&tx, "compacted_revision")?;
            if revision < compacted {
                return Err(StoreError::Compacted {
                    requested: revision,
                    oldest: compacted + 1,
                });
            }
            if limit == 0 {
                return Ok(Vec::new());
            }
            let mut changes = query_changes(&tx, revision, u64::MAX, Some(limit))?;
            if changes.len() == limit {
                if let Some(last) = changes.last().map(|c| c.revision) {
                    changes.retain(|c| c.revision != last);
                    changes.extend(query_changes(&tx, last - 1, last, None)?);
                }
            }
            Ok(changes)
        })
        .await
    }

    /// The store revision: the number of committed transactions that had ops.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        self.read(|conn| db::meta_require(conn, "revision")).await
    }

    /// The revision of the last change applied, from memory (no read): what
    /// [`StateReader::revision`] answers once the apply that set it has committed.
    pub fn applied_revision(&self) -> u64 {
        self.inner.revision.load(Ordering::SeqCst)
    }

    /// The oldest revision whose changes are retained: the changes of it and of every later
    /// revision are available, so `changes_after(oldest_revision() - 1, ..)` never fails with
    /// [`StoreError::Compacted`].
    pub async fn oldest_revision(&self) -> Result<u64, StoreError> {
        self.read(|conn| Ok(db::meta_require::<u64>(conn, "compacted_revision")? + 1))
            .await
    }

    /// The log id of the last applied entry.
    pub async fn applied(&self) -> Result<Option<LogId<ReplicaId>>, StoreError> {
        self.read(|conn| Ok(read_applied_state(conn)?.0)).await
    }

    /// The log id of the last applied entry and the membership as of it, read together.
    pub async fn applied_state(
        &self,
    ) -> Result<(Option<LogId<ReplicaId>>, StoredMembership<ReplicaId, Replica>), StoreError> {
        self.read(|conn| read_applied_state(conn)).await
    }

    /// The stored lease with this token. It may be expired (judge `expires_at_ms` against a
    /// clock) or superseded by a newer lease of its name (see [`StateReader::lease_by_name`]).
    pub async fn lease(&self, token: u64) -> Result<Option<Lease>, StoreError> {
        self.read(move |conn| lease_by_token(conn, token)).await
    }

    /// The current lease of every name, by token. A lease may be expired.
    pub async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM lease_names JOIN leases ON leases.token = lease_names.token \
                 ORDER BY leases.token"
            ))?;
            let rows = stmt.query_map([], lease_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// The current (newest, not revoked) lease of `name`. It may be expired.
    pub async fn lease_by_name(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| current_lease(conn, &name)).await
    }

    /// Subscribes to committed changes: one message per committed transaction that changed at
    /// least one key, in commit order, sent after the commit.
    ///
    /// A slow subscriber gets `RecvError::Lagged` and must catch up with
    /// [`StateReader::changes_after`]. After a snapshot install the retained changes newer than
    /// the previous state are sent; changes the snapshot no longer retains are not, so a
    /// subscriber that must see every change should check that each message's revision follows
    /// the last one it saw and otherwise resynchronise with `changes_after`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Change>>> {
        self.inner.changes_tx.subscribe()
    }

    /// How many keys exist.
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM kv", [], |row| row.get(0))?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn_entry(index: u64, ops: usize, value_bytes: usize) -> Entry<TypeConfig> {
        let ops = (0..ops)
            .map(|i| Op::Put {
                key: format!("k{i}"),
                value: vec![b'v'; value_bytes],
            })
            .collect();
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Batch(vec![Txn {
                compares: vec![],
                ops,
                fence: None,
                now_ms: 0,
            }])),
        }
    }

    #[test]
    fn only_small_batches_are_applied_on_the_calling_task() {
        assert!(is_small(&[txn_entry(1, 1, 256)]), "one put");
        assert!(is_small(&[txn_entry(1, 8, 256), txn_entry(2, 8, 256)]), "16 ops in all");
        assert!(!is_small(&[txn_entry(1, 8, 256), txn_entry(2, 9, 256)]), "17 ops");
        assert!(
            !is_small(&[txn_entry(1, 1, INLINE_APPLY_MAX_BYTES)]),
            "a value past the bytes bound"
        );
        let blanks: Vec<Entry<TypeConfig>> = (1..=17)
            .map(|i| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Blank,
            })
            .collect();
        assert!(!is_small(&blanks), "each entry counts");
    }

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }

    #[test]
    fn group_by_revision_splits_batches() {
        let change = |revision| Change {
            revision,
            key: String::new(),
            kind: ChangeKind::Put,
            value: Vec::new(),
            version: 1,
        };
        let batches = group_by_revision(vec![change(1), change(1), change(3)]);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].len(), 2);
        assert_eq!(batches[1][0].revision, 3);
    }
}
