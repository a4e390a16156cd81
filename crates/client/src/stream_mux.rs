//! The client's end of a stream that carries many feeds, each opened and closed by an id the
//! client picks: the database's `WatchMany` (see [`crate::watch_mux`]) and the Configuration
//! Server's `SubscribeMany` (its client's `mux`) both work this way.
//!
//! One task reads the stream and hands each message to the feeds it names, through a channel
//! per feed. A feed that lets its channel fill up is closed on the stream rather than allowed to
//! hold up the others: its reader sees it end (`None`) after what it holds, marked as having
//! fallen behind, and opens it again from where it was, so nothing is lost.
//!
//! Invariant: a feed is in the routing table from just before its opening is sent until it
//! ends, is closed by its reader, or falls behind; each of those removes it once, and only a
//! feed still open on the stream is sent a close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::Status;

/// What the stream says to one feed.
pub enum Delivery<T> {
    /// The opening was accepted; items follow.
    Opened,
    Item(T),
    /// The feed is over (or its opening was refused), with the status that says why.
    Ended(Status),
}

impl<T: Clone> Clone for Delivery<T> {
    fn clone(&self) -> Self {
        match self {
            Delivery::Opened => Delivery::Opened,
            Delivery::Item(item) => Delivery::Item(item.clone()),
            Delivery::Ended(status) => Delivery::Ended(status.clone()),
        }
    }
}

/// What one message of the stream says: the feeds it is for, and what it says to them.
pub type Addressed<T> = (Vec<u64>, Delivery<T>);

/// Turns one message of a stream into what it says (`None`: nothing to deliver).
pub type Split<M, T> = fn(M) -> Option<Addressed<T>>;

/// Where the reader puts what is for one feed.
struct Route<T> {
    tx: mpsc::Sender<Delivery<T>>,
    /// Set when the feed was closed because its channel was full.
    fell_behind: Arc<AtomicBool>,
}

/// The feeds open on the stream, by id; `None` once the stream broke.
type Routes<T> = Arc<Mutex<Option<HashMap<u64, Route<T>>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stream of feeds. `C` is the stream's control message, `T` an item (cheap to clone: one
/// message may be for many feeds).
pub struct Router<C, T> {
    control: mpsc::UnboundedSender<C>,
    routes: Routes<T>,
    next_id: AtomicU64,
    /// The control message that closes feed `id`.
    close: fn(u64) -> C,
    /// What a feed is called in error messages ("watch", "subscription").
    noun: &'static str,
}

impl<C: Send + 'static, T: Clone + Send + 'static> Router<C, T> {
    /// Starts the reader of `stream`, whose control messages go to `control`. `split` turns one
    /// message of the stream into the ids it is for and what it says to them (`None`: nothing
    /// to deliver); `close` makes the control message that closes a feed.
    pub fn start<M: Send + 'static>(
        control: mpsc::UnboundedSender<C>,
        stream: tonic::Streaming<M>,
        split: Split<M, T>,
        close: fn(u64) -> C,
        noun: &'static str,
    ) -> Arc<Router<C, T>> {
        let routes: Routes<T> = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = Reader {
            routes: routes.clone(),
            control: control.downgrade(),
            close,
            split,
        };
        tokio::spawn(reader.run(stream));
        Arc::new(Router {
            control,
            routes,
            next_id: AtomicU64::new(1),
            close,
            noun,
        })
    }

    /// Whether new feeds may use this stream (it has not broken).
    pub fn usable(&self) -> bool {
        lock(&self.routes).is_some()
    }

    /// Opens a feed with a channel of `buffer` items: sends `open(id)` and waits (at most
    /// `timeout`) for the answer: the feed, or the status its opening was refused with.
    pub async fn open(
        self: &Arc<Self>,
        open: impl FnOnce(u64) -> C,
        timeout: Duration,
        buffer: usize,
    ) -> Result<Feed<C, T>, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let fell_behind = Arc::new(AtomicBool::new(false));
        let route = Route {
            tx,
            fell_behind: fell_behind.clone(),
        };
        match lock(&self.routes).as_mut() {
            Some(routes) => routes.insert(id, route),
            None => return Err(self.broken()),
        };
        // From here on, dropping `feed` closes it on the stream.
        let mut feed = Feed {
            router: self.clone(),
            id,
            rx,
            fell_behind,
        };
        if self.control.send(open(id)).is_err() {
            return Err(self.broken());
        }
        let noun = self.noun;
        match tokio::time::timeout(timeout, feed.rx.recv()).await {
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the server did not answer the {noun} in time"
            ))),
            Ok(None) => Err(self.broken()),
            Ok(Some(Delivery::Opened)) => Ok(feed),
            Ok(Some(Delivery::Ended(status))) => Err(status),
            Ok(Some(Delivery::Item(_))) => Err(Status::internal(format!(
                "the server sent a {noun} item before answering its opening"
            ))),
        }
    }

    fn broken(&self) -> Status {
        Status::unavailable(format!("the {} stream broke", self.noun))
    }
}

/// One feed on a [`Router`]; closed on the stream when dropped.
pub struct Feed<C, T> {
    router: Arc<Router<C, T>>,
    id: u64,
    rx: mpsc::Receiver<Delivery<T>>,
    fell_behind: Arc<AtomicBool>,
}

impl<C, T> Feed<C, T> {
    /// The next item; `Some(Err)` when the feed ended with a status; `None` when it ended
    /// without one (the stream ended, or the feed fell behind: see [`Feed::fell_behind`]).
    pub async fn next(&mut self) -> Option<Result<T, Status>> {
        loop {
            return match self.rx.recv().await? {
                Delivery::Item(item) => Some(Ok(item)),
                Delivery::Ended(status) => Some(Err(status)),
                Delivery::Opened => continue,
            };
        }
    }

    /// Whether the feed was closed because its reader fell behind; meaningful once
    /// [`Feed::next`] returned `None`.
    pub fn fell_behind(&self) -> bool {
        self.fell_behind.load(Ordering::Acquire)
    }
}

impl<C, T> Drop for Feed<C, T> {
    fn drop(&mut self) {
        let open = lock(&self.router.routes)
            .as_mut()
            .and_then(|routes| routes.remove(&self.id));
        if open.is_some() {
            let _ = self.router.control.send((self.router.close)(self.id));
        }
    }
}

/// The stream's reader.
struct Reader<C, M, T> {
    routes: Routes<T>,
    control: mpsc::WeakUnboundedSender<C>,
    close: fn(u64) -> C,
    split: Split<M, T>,
}

impl<C, M, T: Clone> Reader<C, M, T> {
    /// Hands each message to its feeds until the stream ends; then ends every feed still open
    /// with the stream's status (none when the server ended it cleanly).
    async fn run(self, mut stream: tonic::Streaming<M>) {
        let end = loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    if let Some((ids, delivery)) = (self.split)(message) {
                        self.deliver(&ids, delivery);
                    }
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        let Some(open) = lock(&self.routes).take() else { return };
        if let Some(status) = end {
            for route in open.values() {
                let _ = route.tx.try_send(Delivery::Ended(status.clone()));
            }
        }
    }

    fn deliver(&self, ids: &[u64], delivery: Delivery<T>) {
        let ends = matches!(delivery, Delivery::Ended(_));
        let mut guard = lock(&self.routes);
        let Some(open) = guard.as_mut() else { return };
        for id in ids {
            let Some(route) = open.get(id) else { continue };
            match route.tx.try_send(delivery.clone()) {
                Ok(()) if !ends => {}
                Ok(()) | Err(TrySendError::Closed(_)) => {
                    open.remove(id);
                }
                Err(TrySendError::Full(_)) => {
                    // Its reader opens it again once it has read what it holds.
                    route.fell_behind.store(true, Ordering::Release);
                    open.remove(id);
                    if let Some(control) = self.control.upgrade() {
                        let _ = control.send((self.close)(*id));
                    }
                }
            }
        }
    }
}
