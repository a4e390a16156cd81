//! The read connections of a database file, each on a thread of its own.
//!
//! A read is queued, as a closure, for whichever connection's thread takes it first; the caller
//! awaits its answer. Reads used to go through tokio's blocking pool, each taking a thread and
//! then waiting for one of the connections: 256 concurrent gets kept about 200 threads per
//! replica, which tokio keeps alive while any blocking work comes along, and writes on such a
//! replica were held up by 5–10 ms every 25 ms or so for up to a second after the reads had
//! stopped (a put → watch-event p99 of 6–9 ms against 3 ms).
//!
//! Invariants:
//! - exactly one thread per connection, and no other thread ever touches a connection;
//! - reads are taken in the order they were queued, and a read whose caller stopped waiting
//!   before it was taken is dropped unrun;
//! - dropping the pool ends its threads and closes the connections before it returns (a
//!   connection must not outlive the files it was opened on, see [`crate::checkpoint`]).

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::StoreError;

/// A read, with where its answer goes.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Read connections, each served by its own thread.
pub(crate) struct ReadPool {
    /// Where reads are queued; `None` once the pool is closing.
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl ReadPool {
    /// Starts one thread per connection; `name` names the threads (`{name}-reader-{i}`).
    pub(crate) fn start(name: &str, connections: Vec<Connection>) -> std::io::Result<ReadPool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut pool = ReadPool {
            jobs: Some(jobs),
            threads: Vec::with_capacity(connections.len()),
        };
        for (i, conn) in connections.into_iter().enumerate() {
            let queue = queue.clone();
            // On error, dropping `pool` ends the threads already started.
            let thread = std::thread::Builder::new()
                .name(format!("{name}-reader-{i}"))
                .spawn(move || serve(conn, &queue))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Runs `read` on the first connection free, and answers what it returned.
    pub(crate) async fn run<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // A caller that stopped waiting (its request was cancelled or timed out) is not
            // answered, and under a backlog its read is not worth a connection's time.
            if answer.is_closed() {
                return;
            }
            // The caller may still stop waiting meanwhile.
            let _ = answer.send(read(conn));
        });
        let jobs = self.jobs.as_ref().ok_or(StoreError::Closed)?;
        jobs.send(job).map_err(|_| StoreError::Closed)?;
        // The sender is dropped unanswered only by a read that panicked.
        answered
            .await
            .map_err(|_| StoreError::Panicked("a read panicked".to_owned()))?
    }
}

impl Drop for ReadPool {
    fn drop(&mut self) {
        // Without a sender, each thread ends once the queue is empty.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One connection's thread: takes reads from the queue until it is closed.
fn serve(mut conn: Connection, queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // Held only while waiting for the next read, not while running it. (A poisoned lock is
        // still a lock: nothing panics while holding it.)
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else { return };
        // A panicking read loses its answer (the caller is told), not the connection's thread;
        // SQLite resets the read's statements as they are dropped.
        if panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
            tracing::error!("a read of the state database panicked; its caller gets an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(connections: usize) -> ReadPool {
        let conns = (0..connections)
            .map(|_| Connection::open_in_memory().unwrap())
            .collect();
        ReadPool::start("test", conns).unwrap()
    }

    fn answer(conn: &mut Connection) -> Result<i64, StoreError> {
        Ok(conn.query_row("SELECT 6 * 7", [], |row| row.get(0))?)
    }

    #[tokio::test]
    async fn a_panicking_read_is_an_error_and_the_connection_serves_on() {
        let pool = pool(1);
        let panicked = pool
            .run(|_: &mut Connection| -> Result<(), StoreError> { panic!("read failed on purpose") })
            .await;
        assert!(matches!(panicked, Err(StoreError::Panicked(_))), "{panicked:?}");
        assert_eq!(pool.run(answer).await.unwrap(), 42);
    }

    #[tokio::test]
    async fn dropping_the_pool_closes_its_connections_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let first = Connection::open(&path).unwrap();
        first.pragma_update(None, "journal_mode", "WAL").unwrap();
        let mut conns = vec![first];
        conns.extend((0..2).map(|_| Connection::open(&path).unwrap()));
        let pool = ReadPool::start("test", conns).unwrap();
        for _ in 0..3 {
            assert_eq!(pool.run(answer).await.unwrap(), 42);
        }
        // Files this process holds open in the database's directory (the file, its log, its
        // shared memory): only the pool's connections open them.
        let open_files = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter(|target| target.starts_with(dir.path()))
                .count()
        };
        assert!(open_files() > 0, "the connections hold the database open");
        drop(pool);
        assert_eq!(
            open_files(),
            0,
            "a connection was still open after the pool was dropped"
        );
    }

    #[tokio::test]
    async fn a_read_whose_caller_stopped_waiting_is_not_run() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let pool = Arc::new(pool(1));
        // Holds the one connection until told to let go.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (holding, held) = oneshot::channel::<()>();
        let first = {
            let pool = pool.clone();
            async move {
                pool.run(move |_: &mut Connection| {
                    let _ = holding.send(());
                    let _ = released.recv();
                    Ok(())
                })
                .await
            }
        };
        let ran = Arc::new(AtomicBool::new(false));
        let second = {
            let ran = ran.clone();
            pool.run(move |_: &mut Connection| {
                ran.store(true, Ordering::SeqCst);
                Ok(())
            })
        };
        let first = tokio::spawn(first);
        held.await.unwrap();
        // Polled once, so queued behind the first read; then abandoned.
        let mut second = Box::pin(second);
        assert!(poll_once(second.as_mut()).await.is_none());
        drop(second);
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        // Reads are taken in order: once this one is answered, the abandoned one was taken.
        assert_eq!(pool.run(answer).await.unwrap(), 42);
        assert!(!ran.load(Ordering::SeqCst), "the abandoned read ran");
    }

    /// Polls `future` once: its output if it is ready, `None` if not.
    async fn poll_once<F: std::future::Future + Unpin>(mut future: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut future).poll(cx) {
                std::task::Poll::Ready(output) => Some(output),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
