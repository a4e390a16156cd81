//! The client's end of `SubscribeMany`: the subscriptions of one client to one server share one
//! stream (see `crate::mux` for the server's end).
//!
//! Each subscription has a channel of its own that the stream's reader fills. A subscription
//! that lets its buffer ([`ROUTE_BUFFER`] notifications by default) fill up is dropped from the stream rather than
//! allowed to hold up the others: its reader sees its channel end after what it holds, and
//! resumes from its last number like after any broken stream, so nothing is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_proto::confserv::{self as pb, conf_serv_client::ConfServClient};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

/// Notifications a subscription may have waiting before it is dropped from the stream, by default.
pub const ROUTE_BUFFER: usize = 4096;

/// What the stream says to one subscription.
enum Delivery {
    Opened,
    Notification(Arc<pb::Notification>),
    Ended(Status),
}

/// The subscriptions open on the stream, by id; `None` once the stream broke.
type Routes = Arc<Mutex<Option<HashMap<u64, mpsc::Sender<Delivery>>>>>;

/// One `SubscribeMany` stream to one server.
pub struct Mux {
    control: mpsc::UnboundedSender<pb::SubscriptionControl>,
    routes: Routes,
    next_id: std::sync::atomic::AtomicU64,
    /// The session token the stream was opened with.
    token: Option<String>,
    /// Each subscription's buffer.
    buffer: usize,
}

impl Mux {
    /// Opens the stream with `request` (which carries the session `token`) and starts its
    /// reader; `open_timeout` bounds the wait for the server's answer, `buffer` is each
    /// subscription's.
    pub async fn connect(
        mut stub: ConfServClient<Channel>,
        build: impl FnOnce(
            UnboundedReceiverStream<pb::SubscriptionControl>,
        ) -> tonic::Request<UnboundedReceiverStream<pb::SubscriptionControl>>,
        token: Option<String>,
        open_timeout: Duration,
        buffer: usize,
    ) -> Result<Arc<Mux>, Status> {
        let (control, control_rx) = mpsc::unbounded_channel();
        let request = build(UnboundedReceiverStream::new(control_rx));
        let stream = match tokio::time::timeout(open_timeout, stub.subscribe_many(request)).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "the server did not open the subscription stream in time",
                ))
            }
            Ok(answer) => answer?.into_inner(),
        };
        let routes: Routes = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(read(stream, routes.clone(), control.downgrade()));
        Ok(Arc::new(Mux {
            control,
            routes,
            next_id: std::sync::atomic::AtomicU64::new(1),
            token,
            buffer: buffer.max(1),
        }))
    }

    /// Whether new subscriptions may use this stream: it has not broken, and was opened with
    /// the client's current session `token`.
    pub fn usable(&self, token: &Option<String>) -> bool {
        self.token == *token && lock(&self.routes).is_some()
    }

    /// Opens a subscription and waits (at most `timeout`) for the server's answer: the
    /// subscription, or the status `Subscribe` would have answered.
    pub async fn open(
        self: &Arc<Self>,
        request: pb::SubscribeRequest,
        timeout: Duration,
    ) -> Result<MuxSubscription, Status> {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.buffer);
        match lock(&self.routes).as_mut() {
            Some(routes) => routes.insert(id, tx),
            None => return Err(broken()),
        };
        let mut subscription = MuxSubscription {
            mux: self.clone(),
            id,
            rx,
        };
        let open = pb::SubscriptionControl {
            id,
            open: Some(request),
        };
        if self.control.send(open).is_err() {
            return Err(broken());
        }
        match tokio::time::timeout(timeout, subscription.rx.recv()).await {
            Err(_) => Err(Status::deadline_exceeded(
                "the server did not answer the subscription in time",
            )),
            Ok(None) => Err(broken()),
            Ok(Some(Delivery::Opened)) => Ok(subscription),
            Ok(Some(Delivery::Ended(status))) => Err(status),
            Ok(Some(Delivery::Notification(_))) => {
                Err(Status::internal("the server sent a notification before `opened`"))
            }
        }
    }
}

fn broken() -> Status {
    Status::unavailable("the subscription stream broke")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One subscription on a [`Mux`]; closed on the server when dropped.
pub struct MuxSubscription {
    mux: Arc<Mux>,
    id: u64,
    rx: mpsc::Receiver<Delivery>,
}

impl MuxSubscription {
    /// The next notification; `Ok(None)` when the subscription's stream ended without a status
    /// (it broke, or this subscription fell behind): resume after the last number.
    pub async fn message(&mut self) -> Result<Option<Arc<pb::Notification>>, Status> {
        loop {
            return match self.rx.recv().await {
                None => Ok(None),
                Some(Delivery::Notification(n)) => Ok(Some(n)),
                Some(Delivery::Ended(status)) => Err(status),
                Some(Delivery::Opened) => continue,
            };
        }
    }
}

impl Drop for MuxSubscription {
    fn drop(&mut self) {
        if let Some(routes) = lock(&self.mux.routes).as_mut() {
            routes.remove(&self.id);
        }
        let _ = self.mux.control.send(pb::SubscriptionControl {
            id: self.id,
            open: None,
        });
    }
}

/// Hands each event to its subscriptions until the stream ends; then ends every subscription
/// still open with the stream's status.
async fn read(
    mut stream: tonic::Streaming<pb::SubscriptionEvent>,
    routes: Routes,
    control: mpsc::WeakUnboundedSender<pb::SubscriptionControl>,
) {
    let end = loop {
        match stream.message().await {
            Ok(Some(event)) => deliver(event, &routes, &control),
            Ok(None) => break Status::unavailable("the server ended the subscription stream"),
            Err(status) => break status,
        }
    };
    let Some(open) = lock(&routes).take() else { return };
    for tx in open.values() {
        let _ = tx.try_send(Delivery::Ended(end.clone()));
    }
}

fn deliver(
    event: pb::SubscriptionEvent,
    routes: &Routes,
    control: &mpsc::WeakUnboundedSender<pb::SubscriptionControl>,
) {
    use pb::subscription_event::Event;
    let Some(kind) = event.event else { return };
    // One notification, shared by every subscription it is for.
    let kind = match kind {
        Event::Opened(_) => Delivery::Opened,
        Event::Notification(n) => Delivery::Notification(Arc::new(*n)),
        Event::Ended(ended) => Delivery::Ended(crate::mux::status_of(&ended)),
    };
    let ends = matches!(kind, Delivery::Ended(_));
    let mut guard = lock(routes);
    let Some(open) = guard.as_mut() else { return };
    for id in &event.ids {
        let Some(tx) = open.get(id) else { continue };
        let delivery = match &kind {
            Delivery::Opened => Delivery::Opened,
            Delivery::Notification(n) => Delivery::Notification(n.clone()),
            Delivery::Ended(status) => Delivery::Ended(status.clone()),
        };
        match tx.try_send(delivery) {
            Ok(()) if !ends => {}
            Ok(()) | Err(TrySendError::Closed(_)) => {
                open.remove(id);
            }
            Err(TrySendError::Full(_)) => {
                // Its reader resumes from its last number once it has read what it holds.
                tracing::debug!(
                    subscription = id,
                    "a subscriber fell behind: dropped from the stream, it resumes"
                );
                open.remove(id);
                if let Some(control) = control.upgrade() {
                    let _ = control.send(pb::SubscriptionControl { id: *id, open: None });
                }
            }
        }
    }
}
