//! The client's end of `SubscribeMany`: the subscriptions of one client to one server share one
//! stream (see `crate::mux` for the server's end).
//!
//! The routing is `tandem_client::stream_mux`'s: each subscription has a channel of its own
//! that the stream's reader fills, and one that lets its buffer ([`ROUTE_BUFFER`] notifications
//! by default) fill up is dropped from the stream rather than allowed to hold up the others: its
//! reader sees its channel end after what it holds, and resumes from its last number like after
//! any broken stream, so nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use tandem_client::stream_mux::{Addressed, Delivery, Feed, Router};
use tandem_proto::confserv::{self as pb, conf_serv_client::ConfServClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

/// Notifications a subscription may have waiting before it is dropped from the stream, by default.
pub const ROUTE_BUFFER: usize = 4096;

type Notification = Arc<pb::Notification>;

/// One `SubscribeMany` stream to one server.
pub struct Mux {
    router: Arc<Router<pb::SubscriptionControl, Notification>>,
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
        Ok(Arc::new(Mux {
            router: Router::start(control, stream, split, close, "subscription"),
            token,
            buffer: buffer.max(1),
        }))
    }

    /// Whether new subscriptions may use this stream: it has not broken, and was opened with
    /// the client's current session `token`.
    pub fn usable(&self, token: &Option<String>) -> bool {
        self.token == *token && self.router.usable()
    }

    /// Opens a subscription and waits (at most `timeout`) for the server's answer: the
    /// subscription, or the status `Subscribe` would have answered.
    pub async fn open(&self, request: pb::SubscribeRequest, timeout: Duration) -> Result<MuxSubscription, Status> {
        let open = |id| pb::SubscriptionControl {
            id,
            open: Some(request),
        };
        let feed = self.router.open(open, timeout, self.buffer).await?;
        Ok(MuxSubscription { feed })
    }
}

fn close(id: u64) -> pb::SubscriptionControl {
    pb::SubscriptionControl { id, open: None }
}

fn split(event: pb::SubscriptionEvent) -> Option<Addressed<Notification>> {
    use pb::subscription_event::Event;
    // One notification, shared by every subscription it is for.
    let delivery = match event.event? {
        Event::Opened(_) => Delivery::Opened,
        Event::Notification(n) => Delivery::Item(Arc::new(*n)),
        Event::Ended(ended) => Delivery::Ended(crate::mux::status_of(&ended)),
    };
    Some((event.ids, delivery))
}

/// One subscription on a [`Mux`]; closed on the server when dropped.
pub struct MuxSubscription {
    feed: Feed<pb::SubscriptionControl, Notification>,
}

impl MuxSubscription {
    /// The next notification; `Ok(None)` when the subscription's stream ended without a status
    /// (it broke, or this subscription fell behind): resume after the last number.
    pub async fn message(&mut self) -> Result<Option<Notification>, Status> {
        self.feed.next().await.transpose()
    }
}
