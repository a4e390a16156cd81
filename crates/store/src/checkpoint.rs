//! Moving a database's write-ahead log into the database file in the background.
//!
//! Left to its defaults, SQLite checkpoints inside the commit that takes the write-ahead log
//! past 1,000 pages: that commit, and every write queued behind it, waits while the log is
//! copied into the database file and the file is synced. Under 16 concurrent writers that was
//! a stall of about 45 ms every 200 ms on each database, and it made the whole of the put p99.
//! Tandem's writer connections turn that off (`wal_autocheckpoint=0`, see
//! [`crate::db::Writer`]) and a [`Checkpointer`] thread per database file, with a connection of
//! its own, does the work beside them:
//! - after a write (at most once per [`CheckpointPolicy::interval`]) a `PASSIVE` checkpoint
//!   copies what it can without waiting for, or holding up, any reader or writer;
//! - when the log then still holds more than [`CheckpointPolicy::restart_frames`] frames, a
//!   `RESTART` checkpoint follows at once, with the writer connection's lock held (so the
//!   writer cannot starve it): it copies the few frames written meanwhile and waits for readers
//!   to leave the log, so that the next commit writes the log from its start again. It gives up
//!   after [`CheckpointPolicy::restart_wait`] (a long reader, e.g. a snapshot being copied) and
//!   is tried again later. Without it the log would grow for as long as writes never pause,
//!   since SQLite rewinds the log only when a write finds every frame already copied.
//!
//! Invariants:
//! - Checkpoints never change what a database holds, only where its pages are; durability is
//!   the writers' business (a commit is durable, or not, before any checkpoint sees it).
//! - The thread ends, and its connection closes, before [`Checkpointer`] is dropped: a
//!   connection must never outlive the files it was opened on (closing the last connection of
//!   a database deletes `-wal` by name, which could be a newer database's log by then).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// When a [`Checkpointer`] works.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckpointPolicy {
    /// Least time between two checkpoints (the frames written meanwhile are copied together).
    pub interval: Duration,
    /// A log longer than this many frames (pages) after a passive checkpoint is rewound.
    pub restart_frames: u64,
    /// Longest a rewind waits for readers to leave the log (the writer waits for the rewind).
    pub restart_wait: Duration,
}

impl CheckpointPolicy {
    /// What the replicas use: a log of at most about 16 MiB (4 KiB pages), checkpointed 40
    /// times a second under load. (Measured with three replicas on one disk, 16 writers: a
    /// checkpoint's syncs hold up the log syncs of every commit under way, by about 15 ms for
    /// 100 ms of `state.db`'s unsynced log; every 25 ms keeps each hold-up small, and put p99
    /// fell from 30 ms to 18 ms.)
    pub(crate) const DEFAULT: CheckpointPolicy = CheckpointPolicy {
        interval: Duration::from_millis(25),
        restart_frames: 4096,
        restart_wait: Duration::from_millis(10),
    };

    /// The size a rewound log file is cut back to (`journal_size_limit`), in bytes: four times
    /// the rewind threshold, so a log that grew while a long reader held it shrinks again.
    fn journal_size_limit(&self) -> u64 {
        self.restart_frames.saturating_mul(4 * 4096)
    }
}

/// What a database file's checkpoint thread has done since it started (shown in status and
/// `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointCounts {
    /// Times the thread woke up to checkpoint.
    pub rounds: u64,
    /// Passive checkpoints run.
    pub passive: u64,
    /// Rewinds of the write-ahead log (`RESTART` checkpoints that finished).
    pub restarts: u64,
    /// Rewinds given up because the writer or a reader kept the log past `restart_wait`
    /// (tried again later).
    pub restarts_busy: u64,
    /// Checkpoints that failed (tried again after the next write).
    pub failed: u64,
    /// Frames in the log after the latest checkpoint.
    pub log_frames: u64,
}

/// A handle on a checkpoint thread's counts, cheap to clone; it does not keep the thread alive.
#[derive(Clone)]
pub(crate) struct CheckpointStats {
    shared: Arc<Shared>,
}

impl CheckpointStats {
    /// What the thread has done so far.
    pub(crate) fn counts(&self) -> CheckpointCounts {
        let counts = &self.shared.counts;
        CheckpointCounts {
            rounds: lock(&self.shared.signal).rounds,
            passive: counts.passive.load(Ordering::Relaxed),
            restarts: counts.restarts.load(Ordering::Relaxed),
            restarts_busy: counts.restarts_busy.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
            log_frames: counts.log_frames.load(Ordering::Relaxed),
        }
    }
}

/// The background checkpoints of one database file (see the module documentation).
pub(crate) struct Checkpointer {
    /// What the thread and its owner share.
    shared: Arc<Shared>,
    /// The thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

/// What a [`Checkpointer`] and its thread share.
struct Shared {
    /// Whether there is work (`written`) and whether to stop.
    signal: Mutex<Signal>,
    /// Wakes the thread when `signal` changes.
    wake: Condvar,
    /// Notified after each round of checkpoints (for tests that wait for one).
    done: Condvar,
    /// What the thread has done.
    counts: Counts,
}

#[derive(Default)]
struct Signal {
    /// Something was written since the thread last looked.
    written: bool,
    /// The owner is being dropped.
    stop: bool,
    /// A round of checkpoints is under way.
    running: bool,
    /// Rounds of checkpoints completed.
    rounds: u64,
}

#[derive(Default)]
struct Counts {
    passive: AtomicU64,
    restarts: AtomicU64,
    restarts_busy: AtomicU64,
    failed: AtomicU64,
    log_frames: AtomicU64,
}

impl Checkpointer {
    /// Opens a connection of its own to `path` (an existing database in WAL mode) and starts the
    /// thread, named after `name`. `writer` is the file's writer connection, locked for rewinds;
    /// it stays open until the thread has ended.
    pub(crate) fn start(
        path: &Path,
        name: &str,
        policy: CheckpointPolicy,
        writer: Arc<Mutex<Connection>>,
    ) -> Result<Checkpointer, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The busy handler bounds how long a rewind waits (and so holds up writers); passive
        // checkpoints never call it.
        conn.busy_timeout(policy.restart_wait)?;
        conn.pragma_update(None, "journal_size_limit", policy.journal_size_limit())?;
        let shared = Arc::new(Shared {
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
            counts: Counts::default(),
        });
        let thread = {
            let shared = shared.clone();
            let file = path.display().to_string();
            std::thread::Builder::new()
                .name(format!("checkpoint-{name}"))
                .spawn(move || run(conn, &writer, &shared, policy, &file))
                .map_err(|e| {
                    rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                        Some(format!("cannot start the checkpoint thread: {e}")),
                    )
                })?
        };
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// Tells the thread something was written (cheap: a flag and a wake-up).
    pub(crate) fn written(&self) {
        let mut signal = lock(&self.shared.signal);
        if !signal.written {
            signal.written = true;
            self.shared.wake.notify_one();
        }
    }

    /// A handle on the thread's counts.
    pub(crate) fn stats(&self) -> CheckpointStats {
        CheckpointStats {
            shared: self.shared.clone(),
        }
    }

    /// What the thread has done so far.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> CheckpointCounts {
        self.stats().counts()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        lock(&self.shared.signal).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // A panic in the thread has been reported by the panic hook already.
            let _ = thread.join();
        }
    }
}

/// The thread: waits for a write, checkpoints, rests for the interval, and again, until told to
/// stop.
fn run(conn: Connection, writer: &Mutex<Connection>, shared: &Shared, policy: CheckpointPolicy, file: &str) {
    crate::db::lower_thread_priority("checkpoint");
    loop {
        {
            let signal = lock(&shared.signal);
            let mut signal = shared
                .wake
                .wait_while(signal, |s| !s.written && !s.stop)
                .unwrap_or_else(PoisonError::into_inner);
            if signal.stop {
                return;
            }
            signal.written = false;
            signal.running = true;
        }
        checkpoint_once(&conn, writer, shared, policy, file);
        // Rest, unless told to stop: what is written meanwhile waits for the next checkpoint.
        let mut signal = lock(&shared.signal);
        signal.rounds += 1;
        signal.running = false;
        shared.done.notify_all();
        let (signal, _) = shared
            .wake
            .wait_timeout_while(signal, policy.interval, |s| !s.stop)
            .unwrap_or_else(PoisonError::into_inner);
        if signal.stop {
            return;
        }
    }
}

/// One passive checkpoint, and a rewind when the log is still long.
fn checkpoint_once(
    conn: &Connection,
    writer: &Mutex<Connection>,
    shared: &Shared,
    policy: CheckpointPolicy,
    file: &str,
) {
    let counts = &shared.counts;
    let passive = match wal_checkpoint(conn, "PASSIVE") {
        Ok(outcome) => outcome,
        Err(e) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file, error = %e, "passive checkpoint failed; will try again after the next write");
            return;
        }
    };
    counts.passive.fetch_add(1, Ordering::Relaxed);
    counts.log_frames.store(passive.log_frames, Ordering::Relaxed);
    if passive.log_frames <= policy.restart_frames {
        return;
    }
    let rewind = {
        // Held only for the rewind: the frames written since the passive checkpoint, one sync,
        // and at most `restart_wait` for readers. (A poisoned lock is still a lock: the
        // connection is only read here, by SQLite's checkpoint, through another connection.)
        let _writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
        wal_checkpoint(conn, "RESTART")
    };
    match rewind {
        Ok(restart) if !restart.busy => {
            counts.restarts.fetch_add(1, Ordering::Relaxed);
            counts.log_frames.store(restart.log_frames, Ordering::Relaxed);
            tracing::debug!(file, frames = passive.log_frames, "write-ahead log rewound");
        }
        Ok(_) => {
            counts.restarts_busy.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                file,
                frames = passive.log_frames,
                "write-ahead log not rewound: a reader or the writer kept it; will try again"
            );
        }
        Err(e) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(file, error = %e, "checkpoint to rewind the write-ahead log failed; will try again");
        }
    }
}

/// What `PRAGMA wal_checkpoint` answered.
struct Outcome {
    /// The checkpoint could not finish (a `RESTART` gave up waiting).
    busy: bool,
    /// Frames in the log.
    log_frames: u64,
}

fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<Outcome> {
    let (busy, log_frames) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
    })?;
    Ok(Outcome {
        busy: busy != 0,
        // -1 when the database is not in WAL mode: nothing to checkpoint.
        log_frames: u64::try_from(log_frames).unwrap_or(0),
    })
}

/// Locks the signal; a panic while it was held cannot leave it inconsistent (two flags).
fn lock(signal: &Mutex<Signal>) -> MutexGuard<'_, Signal> {
    signal.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
impl Checkpointer {
    /// Waits until the thread has checkpointed everything written so far (a round has completed
    /// since the call, and no write is waiting for another), and answers the counts. Call it
    /// after a write: with nothing to do, no round comes.
    fn wait_idle(&self) -> CheckpointCounts {
        let signal = lock(&self.shared.signal);
        let after = signal.rounds;
        let (signal, timeout) = self
            .shared
            .done
            .wait_timeout_while(signal, Duration::from_secs(30), |s| {
                s.rounds == after || s.running || s.written
            })
            .unwrap_or_else(PoisonError::into_inner);
        assert!(!timeout.timed_out(), "the checkpointer did not go idle within 30 s");
        drop(signal);
        self.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames (pages) a rewind is triggered past, in these tests.
    const RESTART_FRAMES: u64 = 16;
    const PAGE_BYTES: u64 = 4096;
    /// One-page transactions in a burst: three times the rewind threshold.
    const BURST: usize = 3 * RESTART_FRAMES as usize;

    /// A database in WAL mode whose writer never checkpoints (as `db::open_writer` makes
    /// them), and its checkpointer.
    fn open(path: &Path) -> (Arc<Mutex<Connection>>, Checkpointer) {
        let conn = Connection::open(path).expect("open");
        conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .expect("WAL mode");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no autocheckpoint");
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)", [])
            .expect("table");
        let writer = Arc::new(Mutex::new(conn));
        let policy = CheckpointPolicy {
            interval: Duration::from_millis(1),
            restart_frames: RESTART_FRAMES,
            restart_wait: Duration::from_millis(10),
        };
        let checkpointer = Checkpointer::start(path, "test", policy, writer.clone()).expect("start");
        (writer, checkpointer)
    }

    /// Writes `count` transactions of about one page each, telling the checkpointer after each.
    fn write(writer: &Mutex<Connection>, checkpointer: &Checkpointer, count: usize) {
        for _ in 0..count {
            let conn = writer.lock().expect("writer");
            conn.execute("INSERT INTO t (blob) VALUES (zeroblob(3000))", [])
                .expect("insert");
            drop(conn);
            checkpointer.written();
        }
    }

    fn wal_bytes(path: &Path) -> u64 {
        std::fs::metadata(crate::db::sidecar(path, "-wal")).map_or(0, |m| m.len())
    }

    fn rows(conn: &Connection) -> u64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count")
    }

    #[test]
    fn the_log_is_copied_into_the_database_and_rewound_so_it_stays_small() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let (writer, checkpointer) = open(&path);
        // 20 bursts, each followed by the checkpoints: about 1,000 frames in all.
        let mut counts = checkpointer.counts();
        for _ in 0..20 {
            write(&writer, &checkpointer, BURST);
            counts = checkpointer.wait_idle();
        }
        assert_eq!(counts.failed, 0, "{counts:?}");
        assert!(counts.passive >= 20, "{counts:?}");
        // Nothing else used the log: every rewind tried could complete, and each burst
        // outgrew the threshold.
        assert_eq!(counts.restarts_busy, 0, "{counts:?}");
        assert!(counts.restarts >= 20, "a rewind after each burst at least: {counts:?}");
        // The log file holds at most a few bursts (each rewound file is cut to the size
        // limit, far below what was written); without rewinds it would hold everything.
        let wal = wal_bytes(&path);
        let all = 20 * BURST as u64 * PAGE_BYTES;
        assert!(
            wal < all / 4,
            "write-ahead log of {wal} bytes after {all} bytes written"
        );
        assert_eq!(rows(&writer.lock().expect("writer")), 20 * BURST as u64);
        // Everything is in the database file once the connections are gone.
        drop(checkpointer);
        drop(writer);
        let reopened = Connection::open(&path).expect("reopen");
        assert_eq!(rows(&reopened), 20 * BURST as u64);
    }

    #[test]
    fn a_reader_in_the_log_defers_the_rewind_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let (writer, checkpointer) = open(&path);
        write(&writer, &checkpointer, BURST);
        checkpointer.wait_idle();

        // A reader holds a snapshot: the frames written after it cannot be copied while it
        // lasts, so the log cannot be rewound.
        let reader = Connection::open(&path).expect("reader");
        reader.execute_batch("BEGIN").expect("begin");
        let seen = rows(&reader);
        write(&writer, &checkpointer, BURST);
        let under_reader = checkpointer.wait_idle();
        assert!(
            under_reader.restarts_busy >= 1,
            "the rewind was tried: {under_reader:?}"
        );
        // The writer is not held up for good: two more bursts, each checkpointed as far as it can
        // be, and still no rewind.
        for _ in 0..2 {
            write(&writer, &checkpointer, BURST);
            let counts = checkpointer.wait_idle();
            assert_eq!(counts.restarts, under_reader.restarts, "{counts:?}");
        }
        let counts = checkpointer.counts();
        assert!(
            counts.log_frames >= 3 * BURST as u64,
            "the log keeps what the reader holds: {counts:?}"
        );
        assert_eq!(rows(&writer.lock().expect("writer")), 4 * BURST as u64);
        assert_eq!(rows(&reader), seen, "the reader still sees its snapshot");

        // Once the reader is gone, the next round rewinds.
        reader.execute_batch("COMMIT").expect("end read");
        write(&writer, &checkpointer, 1);
        let counts = checkpointer.wait_idle();
        assert!(counts.restarts > under_reader.restarts, "{counts:?}");
        assert_eq!(counts.failed, 0, "{counts:?}");
    }

    #[test]
    fn dropping_it_stops_the_thread_and_another_can_take_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let (writer, checkpointer) = open(&path);
        write(&writer, &checkpointer, 1);
        checkpointer.wait_idle();
        // Joins the thread: returns only once it has ended.
        drop(checkpointer);
        let policy = CheckpointPolicy::DEFAULT;
        let checkpointer = Checkpointer::start(&path, "test", policy, writer.clone()).expect("restart");
        write(&writer, &checkpointer, 1);
        let counts = checkpointer.wait_idle();
        assert_eq!((counts.passive, counts.failed), (1, 0), "{counts:?}");
    }

    #[test]
    fn the_thread_runs_below_the_priority_of_its_owner() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let (writer, _) = open(&path);
        let checkpointer =
            Checkpointer::start(&path, "prio", CheckpointPolicy::DEFAULT, writer.clone()).expect("start");
        // A round done: the thread has lowered its priority (its first step).
        write(&writer, &checkpointer, 1);
        checkpointer.wait_idle();
        let owner = crate::db::tests::own_nice();
        assert_eq!(
            crate::db::tests::nice_of_threads("checkpoint-prio"),
            vec![(owner + crate::db::BACKGROUND_NICE).min(19)]
        );
    }
}
