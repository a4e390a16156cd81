//! The client's end of `WatchMany`: the watches of one [`crate::Client`] on one replica share
//! one stream, as an etcd client's watches share one.
//!
//! A change then costs the replica, the connection and this client one message on one stream
//! (with the ids of every watch it is for), not one stream's worth of framing, flow control and
//! wake-ups per watch.
//!
//! Each watch has a channel of its own that the stream's reader fills. A watch that lets its
//! buffer ([`WATCH_BUFFER`] batches by default) fill up is cancelled rather than allowed to hold up the
//! others: once its reader has read what it holds, it ends, marked as having fallen behind, and
//! [`crate::Watch`] opens it again after its last revision (the replica catches it up from the
//! history), so nothing is lost and nothing is seen twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_proto::db as pb;
use tandem_proto::db::kv_client::KvClient;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

/// Batches of events a watch may have waiting before it is cancelled, by default.
pub const WATCH_BUFFER: usize = 4096;

/// What the stream says to one watch.
enum Delivery {
    Created,
    Events(Arc<Vec<pb::Event>>),
    Ended(Status),
}

/// Where the stream's reader puts what is for one watch.
struct Route {
    tx: mpsc::Sender<Delivery>,
    /// Set when the watch was cancelled because its buffer was full.
    fell_behind: Arc<AtomicBool>,
}

/// The watches open on the stream, by id; `None` once the stream broke.
type Routes = Arc<Mutex<Option<HashMap<u64, Route>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn broken() -> Status {
    Status::unavailable("the watch stream broke")
}

/// One `WatchMany` stream to one replica.
pub(crate) struct Mux {
    control: mpsc::UnboundedSender<pb::WatchControl>,
    routes: Routes,
    next_id: AtomicU64,
}

impl Mux {
    /// Opens the stream (waiting at most `timeout` for the replica to accept it) and starts
    /// its reader.
    pub(crate) async fn connect(mut kv: KvClient<Channel>, timeout: Duration) -> Result<Arc<Mux>, Status> {
        let (control, control_rx) = mpsc::unbounded_channel();
        let request = tonic::Request::new(UnboundedReceiverStream::new(control_rx));
        let stream = match tokio::time::timeout(timeout, kv.watch_many(request)).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "the replica did not open the watch stream in time",
                ))
            }
            Ok(answer) => answer?.into_inner(),
        };
        let routes: Routes = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(read(stream, routes.clone(), control.downgrade()));
        Ok(Arc::new(Mux {
            control,
            routes,
            next_id: AtomicU64::new(1),
        }))
    }

    /// Whether new watches may use this stream (it has not broken).
    pub(crate) fn usable(&self) -> bool {
        lock(&self.routes).is_some()
    }

    /// Opens a watch with a buffer of `buffer` batches and waits (at most `timeout`) for the
    /// replica's answer: the watch, or the status `Watch` would have refused with.
    pub(crate) async fn open(
        self: &Arc<Self>,
        request: pb::WatchRequest,
        timeout: Duration,
        buffer: usize,
    ) -> Result<MuxWatch, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let fell_behind = Arc::new(AtomicBool::new(false));
        let route = Route {
            tx,
            fell_behind: fell_behind.clone(),
        };
        match lock(&self.routes).as_mut() {
            Some(routes) => routes.insert(id, route),
            None => return Err(broken()),
        };
        // From here on, dropping `watch` cancels it on the replica.
        let mut watch = MuxWatch {
            mux: self.clone(),
            id,
            rx,
            fell_behind,
        };
        let open = pb::WatchControl {
            id,
            open: Some(request),
        };
        if self.control.send(open).is_err() {
            return Err(broken());
        }
        match tokio::time::timeout(timeout, watch.rx.recv()).await {
            Err(_) => Err(Status::deadline_exceeded(
                "the replica did not answer the watch in time",
            )),
            Ok(None) => Err(broken()),
            Ok(Some(Delivery::Created)) => Ok(watch),
            Ok(Some(Delivery::Ended(status))) => Err(status),
            Ok(Some(Delivery::Events(_))) => Err(Status::internal("the replica sent events before `created`")),
        }
    }
}

/// One watch on a [`Mux`]; cancelled on the replica when dropped.
pub(crate) struct MuxWatch {
    mux: Arc<Mux>,
    id: u64,
    rx: mpsc::Receiver<Delivery>,
    fell_behind: Arc<AtomicBool>,
}

impl MuxWatch {
    /// Whether the watch was cancelled because its reader fell behind (see the module's
    /// documentation); meaningful once [`MuxWatch::next`] returned `None`.
    pub(crate) fn fell_behind(&self) -> bool {
        self.fell_behind.load(Ordering::Acquire)
    }

    /// The next batch of events; `None` when the watch ended without a status (the stream
    /// ended, or this watch fell behind): watch again after the last revision.
    pub(crate) async fn next(&mut self) -> Option<Result<Vec<pb::Event>, Status>> {
        loop {
            return match self.rx.recv().await? {
                Delivery::Events(events) => Some(Ok(Arc::unwrap_or_clone(events))),
                Delivery::Ended(status) => Some(Err(status)),
                Delivery::Created => continue,
            };
        }
    }
}

impl Drop for MuxWatch {
    fn drop(&mut self) {
        let open = lock(&self.mux.routes)
            .as_mut()
            .and_then(|routes| routes.remove(&self.id));
        if open.is_some() {
            let _ = self.mux.control.send(pb::WatchControl {
                id: self.id,
                open: None,
            });
        }
    }
}

/// Hands each message to its watches until the stream ends; then ends every watch still open
/// with the stream's status (none when the replica ended it cleanly, e.g. shutting down).
async fn read(
    mut stream: tonic::Streaming<pb::WatchManyResponse>,
    routes: Routes,
    control: mpsc::WeakUnboundedSender<pb::WatchControl>,
) {
    let end = loop {
        match stream.message().await {
            Ok(Some(message)) => deliver(message, &routes, &control),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let Some(open) = lock(&routes).take() else { return };
    if let Some(status) = end {
        for route in open.values() {
            let _ = route.tx.try_send(Delivery::Ended(status.clone()));
        }
    }
}

fn deliver(message: pb::WatchManyResponse, routes: &Routes, control: &mpsc::WeakUnboundedSender<pb::WatchControl>) {
    use pb::watch_many_response::Event;
    let Some(event) = message.event else { return };
    let (delivery, ends) = match event {
        Event::Created(_) => (Delivery::Created, false),
        Event::Events(response) => (Delivery::Events(Arc::new(response.events)), false),
        Event::Ended(status) => (Delivery::Ended(status.into_status()), true),
    };
    let mut guard = lock(routes);
    let Some(open) = guard.as_mut() else { return };
    for id in &message.ids {
        let Some(route) = open.get(id) else { continue };
        let copy = match &delivery {
            Delivery::Created => Delivery::Created,
            Delivery::Events(events) => Delivery::Events(events.clone()),
            Delivery::Ended(status) => Delivery::Ended(status.clone()),
        };
        match route.tx.try_send(copy) {
            Ok(()) if !ends => {}
            Ok(()) | Err(TrySendError::Closed(_)) => {
                open.remove(id);
            }
            Err(TrySendError::Full(_)) => {
                // Its reader watches again from its last revision once it has read what it holds.
                route.fell_behind.store(true, Ordering::Release);
                open.remove(id);
                if let Some(control) = control.upgrade() {
                    let _ = control.send(pb::WatchControl { id: *id, open: None });
                }
            }
        }
    }
}
