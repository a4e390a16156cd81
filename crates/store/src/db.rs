//! SQLite plumbing shared by the log store and the state machine: creating a database file
//! safely, validating an existing one before anything writes to it, connection settings, the
//! `meta` key/value table, and running blocking work off the async runtime.

use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::{FromSql, ToSql, Value};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{CheckpointPolicy, CheckpointStats, Checkpointer};
use crate::error::{OpenError, StoreError};

/// The on-disk format version this build reads and writes (both `log.db` and `state.db`).
pub(crate) const FORMAT_VERSION: u32 = 1;

/// How long a connection waits for a lock held by another connection before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements each connection keeps (rusqlite's default of 16 is fewer than the
/// statements one apply or append runs, which would then be prepared again on every call).
const STATEMENT_CACHE: usize = 64;

/// How much of a database file a reader connection maps into memory (`PRAGMA mmap_size`):
/// pages it reads are then used in place instead of being copied in by one `pread` call each,
/// which was most of the cost of a large range read. Address space only; the kernel's page
/// cache backs it (SQLite caps it at its compile-time maximum, just under 2 GiB). Pages still in
/// the write-ahead log are read from it as before.
const READER_MMAP_BYTES: i64 = 2 << 30;

/// When a committed SQLite transaction is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// `synchronous=FULL`: every commit syncs the write-ahead log before it returns.
    EveryCommit,
    /// `synchronous=NORMAL`: commits are ordered and atomic but reach the disk at the next sync
    /// (a checkpoint, or a commit on a `FULL` connection); a power loss may undo the latest ones.
    Deferred,
}

impl Durability {
    fn pragma(self) -> &'static str {
        match self {
            Durability::EveryCommit => "FULL",
            Durability::Deferred => "NORMAL",
        }
    }
}

/// The shape of one kind of database file.
pub(crate) struct DbSpec {
    /// The schema, run once in the transaction that creates the file.
    pub schema: &'static str,
    /// The tables a valid file must have (besides `meta`).
    pub tables: &'static [&'static str],
    /// Metadata rows written when the file is created, besides format version, cluster and
    /// replica id.
    pub initial_meta: fn(&Connection) -> rusqlite::Result<()>,
    /// When the writer's commits reach the disk.
    pub durability: Durability,
}

/// Runs blocking (SQLite or file) work on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(StoreError::Closed),
        Err(e) => Err(StoreError::Panicked(e.to_string())),
    }
}

/// How far below the request paths background work runs: a nice increment. Checkpoints and
/// snapshot builds come in bursts (every checkpoint round copies and syncs what the last 25 ms
/// wrote, on every replica at about the same moment); at the default priority such a burst took
/// the CPU from the put under way, so that about one put in 30 waited for it.
pub(crate) const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority by [`BACKGROUND_NICE`], for good: a thread without
/// privileges can lower its own priority but never raise it again, so only threads that do
/// nothing but background work call this. Failing to lower it is logged and otherwise ignored.
pub(crate) fn lower_thread_priority(what: &str) {
    use rustix::process::{getpriority_process, setpriority_process};
    // Linux keeps a nice value per thread: naming this thread's id changes only this thread.
    let this = Some(rustix::thread::gettid());
    let lowered = getpriority_process(this)
        .and_then(|nice| setpriority_process(this, nice.saturating_add(BACKGROUND_NICE).min(19)));
    if let Err(e) = lowered {
        tracing::warn!(thread = what, error = %e, "cannot lower the priority of a background thread");
    }
}

/// Runs background `work` (a snapshot build) on a thread of its own at a lower CPU priority
/// (see [`lower_thread_priority`]); tokio's blocking pool is no place for it, since its threads
/// also write the log and could not be given their priority back.
pub(crate) async fn background<T, F>(name: &str, work: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    let label = name.to_owned();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        lower_thread_priority(&label);
        // The receiver is gone only if the caller stopped waiting: nothing to tell.
        let _ = done.send(work());
    })?;
    match result.await {
        Ok(result) => result,
        // The thread ended without an answer: `work` panicked (the panic hook reported it).
        Err(_) => Err(StoreError::Panicked(format!(
            "the {name} thread ended without an answer"
        ))),
    }
}

/// Locks a mutex, reporting poisoning as an error instead of panicking.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    mutex.lock().map_err(|_| StoreError::Poisoned)
}

/// The writer connection of a database file and the file's background checkpoints. It never
/// checkpoints itself (`wal_autocheckpoint=0`): each time its lock is released, its
/// [`Checkpointer`] is told something may have been written. (The fields drop in order: the
/// checkpointer's thread, which holds the connection too, ends before the connection closes.)
pub(crate) struct Writer {
    /// The connection, one user at a time (the checkpointer holds it while it rewinds the log).
    conn: Arc<Mutex<Connection>>,
    /// The checkpoints of the connection's file.
    checkpointer: Checkpointer,
}

impl Writer {
    /// Opens `path`'s checkpointer (see [`Checkpointer`]) with `conn` as the writer it rewinds
    /// under, and makes the writer.
    pub(crate) fn start(path: &Path, name: &str, conn: Connection) -> Result<Writer, OpenError> {
        let conn = Arc::new(Mutex::new(conn));
        let checkpointer =
            Checkpointer::start(path, name, CheckpointPolicy::DEFAULT, conn.clone()).map_err(|source| {
                OpenError::Sqlite {
                    file: path.to_owned(),
                    source,
                }
            })?;
        Ok(Writer { conn, checkpointer })
    }

    /// Locks the connection if nobody holds it (the checkpointer may, while it rewinds the log).
    pub(crate) fn try_lock(&self) -> Result<Option<WriterGuard<'_>>, StoreError> {
        match self.conn.try_lock() {
            Ok(conn) => Ok(Some(WriterGuard {
                conn,
                checkpointer: &self.checkpointer,
            })),
            Err(std::sync::TryLockError::WouldBlock) => Ok(None),
            Err(std::sync::TryLockError::Poisoned(_)) => Err(StoreError::Poisoned),
        }
    }

    /// A handle on the counts of the file's checkpoints.
    pub(crate) fn checkpoint_stats(&self) -> CheckpointStats {
        self.checkpointer.stats()
    }

    /// Locks the connection, reporting poisoning as an error instead of panicking.
    pub(crate) fn lock(&self) -> Result<WriterGuard<'_>, StoreError> {
        Ok(WriterGuard {
            conn: lock(&self.conn)?,
            checkpointer: &self.checkpointer,
        })
    }
}

/// A locked [`Writer`]; tells the checkpointer when it is released.
pub(crate) struct WriterGuard<'a> {
    conn: MutexGuard<'a, Connection>,
    checkpointer: &'a Checkpointer,
}

impl Deref for WriterGuard<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.checkpointer.written();
    }
}

/// Opens `path`, creating and initialising it if it does not exist, or validating it (format
/// version, cluster, replica id, `quick_check`, tables) if it does. The returned connection is
/// the writer: WAL mode, synchronous as `spec.durability` says, no checkpoints of its own (see
/// [`Writer`]).
pub(crate) fn open_writer(path: &Path, spec: &DbSpec, cluster: &str, replica_id: u64) -> Result<Connection, OpenError> {
    let io_err = |file: &Path, source| OpenError::Io {
        file: file.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    let exists = path.try_exists().map_err(|e| io_err(path, e))?;
    if !exists {
        let wal = sidecar(path, "-wal");
        if wal.try_exists().map_err(|e| io_err(&wal, e))? {
            return Err(OpenError::Corrupt {
                file: path.to_owned(),
                reason: format!(
                    "the database file is missing but its write-ahead log {} exists",
                    wal.display()
                ),
            });
        }
        create(path, spec, cluster, replica_id)?;
    }
    let sqlite_err = |source| OpenError::Sqlite {
        file: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err)?;
    validate(&conn, path, spec.tables, cluster, Some(replica_id))?;
    configure_writer(&conn, spec.durability).map_err(sqlite_err)?;
    Ok(conn)
}

/// Opens a read-only connection to an existing, already validated database.
pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Puts a writer connection in WAL mode with the given synchronous setting; its commits never
/// checkpoint (a [`Checkpointer`] does, beside it).
fn configure_writer(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("could not switch to WAL mode (journal mode is {mode})")),
        ));
    }
    conn.pragma_update(None, "synchronous", durability.pragma())?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Makes every transaction committed so far on `conn`'s database durable, whatever the
/// connection's synchronous setting: commits one metadata write (`sync_seq`, a counter, so the
/// write is never empty) with `synchronous=FULL`. The write-ahead log is one file written in
/// order, so syncing it for this commit puts every earlier commit on disk too.
///
/// One fsync: for rare events (snapshots, installs), never per write.
pub(crate) fn sync_now(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    if durability == Durability::EveryCommit {
        return Ok(());
    }
    conn.pragma_update(None, "synchronous", Durability::EveryCommit.pragma())?;
    let written = (|| {
        let seq = meta_get::<u64>(conn, "sync_seq")?.unwrap_or(0);
        meta_set(conn, "sync_seq", seq.wrapping_add(1))
    })();
    let restored = conn.pragma_update(None, "synchronous", durability.pragma());
    written?;
    restored?;
    Ok(())
}

/// Runs `work` in one write transaction on `conn` (`BEGIN IMMEDIATE`: the write lock is taken
/// at once), committing when it succeeds and rolling back when it fails. The statements are
/// cached, so the hot paths (append, apply) prepare nothing per call.
pub(crate) fn write_transaction<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let result = work(conn).and_then(|value| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(value)
    });
    if result.is_err() && !conn.is_autocommit() {
        // The transaction is still open (the work or the commit failed): undo it. A failure here
        // leaves nothing more to undo; the original error is the one that matters.
        let _ = conn.prepare_cached("ROLLBACK").and_then(|mut stmt| stmt.execute([]));
    }
    result
}

/// Creates a new database at `path`: built under a temporary name and renamed into place once
/// complete, so a crash never leaves a half-initialised file under the real name.
fn create(path: &Path, spec: &DbSpec, cluster: &str, replica_id: u64) -> Result<(), OpenError> {
    let tmp = sidecar(path, ".init");
    let io_err = |file: &Path, source| OpenError::Io {
        file: file.to_owned(),
        source,
    };
    let sqlite_err = |source| OpenError::Sqlite {
        file: tmp.clone(),
        source,
    };
    // Leftovers of an initialisation that crashed: never in use, never the real file.
    for leftover in [tmp.clone(), sidecar(&tmp, "-wal"), sidecar(&tmp, "-shm")] {
        match fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&leftover, e)),
        }
    }
    let mut conn = Connection::open(&tmp).map_err(sqlite_err)?;
    configure_writer(&conn, Durability::EveryCommit).map_err(sqlite_err)?;
    let tx = conn.transaction().map_err(sqlite_err)?;
    tx.execute_batch(META_SCHEMA).map_err(sqlite_err)?;
    tx.execute_batch(spec.schema).map_err(sqlite_err)?;
    meta_set(&tx, "format_version", FORMAT_VERSION).map_err(sqlite_err)?;
    meta_set(&tx, "cluster", cluster).map_err(sqlite_err)?;
    meta_set(&tx, "replica_id", replica_id).map_err(sqlite_err)?;
    (spec.initial_meta)(&tx).map_err(sqlite_err)?;
    tx.commit().map_err(sqlite_err)?;
    conn.close().map_err(|(_, e)| sqlite_err(e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    sync_dir(path).map_err(|e| io_err(path, e))?;
    Ok(())
}

/// The `meta` table every Tandem database has.
const META_SCHEMA: &str = "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value BLOB) WITHOUT ROWID;";

/// Checks that `conn` is a healthy Tandem database of this cluster (and of this replica, when
/// `replica_id` is given) in the supported format. Reads only.
pub(crate) fn validate(
    conn: &Connection,
    path: &Path,
    tables: &[&str],
    cluster: &str,
    replica_id: Option<u64>,
) -> Result<(), OpenError> {
    let file = || path.to_owned();
    let corrupt = |reason: String| OpenError::Corrupt { file: file(), reason };
    let sqlite_err = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            corrupt(format!("not a valid SQLite database: {e}"))
        }
        _ => OpenError::Sqlite {
            file: file(),
            source: e,
        },
    };

    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(sqlite_err)?;
    if problems != ["ok"] {
        return Err(corrupt(format!("PRAGMA quick_check failed: {}", problems.join("; "))));
    }

    let present: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(sqlite_err)?;
    if !present.iter().any(|t| t == "meta") {
        return Err(corrupt("missing table meta (not a Tandem database)".to_owned()));
    }

    let found = match meta_value(conn, "format_version").map_err(sqlite_err)? {
        Some(Value::Integer(v)) => {
            u32::try_from(v).map_err(|_| corrupt(format!("metadata format_version {v} is out of range")))?
        }
        other => return Err(corrupt(format!("metadata format_version is unreadable: {other:?}"))),
    };
    if found != FORMAT_VERSION {
        return Err(OpenError::UnknownFormat {
            file: file(),
            found,
            supported: FORMAT_VERSION,
        });
    }

    let missing: Vec<&str> = tables
        .iter()
        .copied()
        .filter(|t| !present.iter().any(|p| p == t))
        .collect();
    if !missing.is_empty() {
        return Err(corrupt(format!("missing tables: {}", missing.join(", "))));
    }

    match meta_value(conn, "cluster").map_err(sqlite_err)? {
        Some(Value::Text(found)) if found == cluster => {}
        Some(Value::Text(found)) => {
            return Err(OpenError::OtherCluster {
                file: file(),
                found,
                expected: cluster.to_owned(),
            })
        }
        other => return Err(corrupt(format!("metadata cluster is unreadable: {other:?}"))),
    }

    if let Some(expected) = replica_id {
        let found = match meta_value(conn, "replica_id").map_err(sqlite_err)? {
            Some(Value::Integer(v)) => {
                u64::try_from(v).map_err(|_| corrupt(format!("metadata replica_id {v} is out of range")))?
            }
            other => return Err(corrupt(format!("metadata replica_id is unreadable: {other:?}"))),
        };
        if found != expected {
            return Err(OpenError::OtherReplica {
                file: file(),
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (`log.db` → `log.db-wal`).
pub(crate) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes a rename or file creation in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => fs::File::open(dir)?.sync_all(),
        _ => fs::File::open(".")?.sync_all(),
    }
}

/// Reads one metadata value as stored.
fn meta_value(conn: &Connection, key: &str) -> rusqlite::Result<Option<Value>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| row.get(0))
        .optional()
}

/// Writes one metadata value.
pub(crate) fn meta_set(conn: &Connection, key: &str, value: impl ToSql) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// Reads one metadata value, `None` when absent.
pub(crate) fn meta_get<T: FromSql>(conn: &Connection, key: &str) -> rusqlite::Result<Option<T>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()
}

/// Reads one metadata value that must be present.
pub(crate) fn meta_require<T: FromSql>(conn: &Connection, key: &str) -> Result<T, StoreError> {
    meta_get(conn, key)?.ok_or_else(|| StoreError::Corrupt(format!("metadata {key} is missing")))
}

/// Writes one metadata value as a bincode blob.
pub(crate) fn meta_set_blob<T: Serialize>(conn: &Connection, key: &str, value: &T) -> Result<(), StoreError> {
    meta_set(conn, key, bincode::serialize(value)?)?;
    Ok(())
}

/// Reads one metadata value stored as a bincode blob, `None` when absent.
pub(crate) fn meta_get_blob<T: DeserializeOwned>(conn: &Connection, key: &str) -> Result<Option<T>, StoreError> {
    match meta_get::<Vec<u8>>(conn, key)? {
        Some(bytes) => Ok(Some(bincode::deserialize(&bytes)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The nice value of the calling thread.
    pub(crate) fn own_nice() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).expect("own priority")
    }

    /// The nice values of this process's threads named `name` (from `/proc/self/task`).
    pub(crate) fn nice_of_threads(name: &str) -> Vec<i32> {
        let mut found = Vec::new();
        for task in fs::read_dir("/proc/self/task").expect("tasks").flatten() {
            let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended meanwhile
            };
            // "tid (comm) state ppid …": the comm may hold spaces, the fields after it do not;
            // nice is the 19th field, the 17th after the comm.
            let Some((head, fields)) = stat.rsplit_once(')') else {
                continue;
            };
            if head.split_once('(').map(|(_, comm)| comm) != Some(name) {
                continue;
            }
            let nice = fields.split_whitespace().nth(16).expect("nice field");
            found.push(nice.parse().expect("nice value"));
        }
        found
    }

    #[tokio::test]
    async fn background_work_runs_on_a_thread_of_its_own_at_a_lower_priority() {
        let caller = own_nice();
        let (nice, name) = background("bg-test", || {
            Ok((own_nice(), std::thread::current().name().map(str::to_owned)))
        })
        .await
        .expect("background work");
        assert_eq!(nice, (caller + BACKGROUND_NICE).min(19));
        assert_eq!(name.as_deref(), Some("bg-test"));
        // The caller's own priority is untouched.
        assert_eq!(own_nice(), caller);
    }

    #[tokio::test]
    async fn background_work_that_panics_is_an_error() {
        let result: Result<(), _> = background("bg-panic-test", || panic!("on purpose")).await;
        assert!(matches!(result, Err(StoreError::Panicked(_))), "{result:?}");
    }
}
