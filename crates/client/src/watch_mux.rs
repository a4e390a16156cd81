//! The client's end of `WatchMany`: the watches of one [`crate::Client`] on one replica share
//! one stream, as an etcd client's watches share one.
//!
//! A change then costs the replica, the connection and this client one message on one stream
//! (with the ids of every watch it is for), not one stream's worth of framing, flow control and
//! wake-ups per watch. The routing is [`crate::stream_mux`]'s: a watch whose reader falls more
//! than its buffer ([`WATCH_BUFFER`] batches by default) behind is cancelled on the stream, and
//! [`crate::Watch`] opens it again after its last revision (the replica catches it up from the
//! history), so nothing is lost and nothing is seen twice.

use std::sync::Arc;
use std::time::Duration;

use tandem_proto::db as pb;
use tandem_proto::db::kv_client::KvClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use crate::stream_mux::{Addressed, Delivery, Feed, Router};

/// Batches of events a watch may have waiting before it is cancelled, by default.
pub const WATCH_BUFFER: usize = 4096;

/// One `WatchMany` stream to one replica.
pub(crate) type Mux = Router<pb::WatchControl, Arc<Vec<pb::Event>>>;
/// One watch on a [`Mux`]; cancelled on the replica when dropped.
pub(crate) type MuxWatch = Feed<pb::WatchControl, Arc<Vec<pb::Event>>>;

/// Opens the stream (waiting at most `timeout` for the replica to accept it) and starts its
/// reader.
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
    Ok(Router::start(control, stream, split, cancel, "watch"))
}

/// Opens a watch with a buffer of `buffer` batches and waits (at most `timeout`) for the
/// replica's answer: the watch, or the status `Watch` would have refused with.
pub(crate) async fn open(
    mux: &Arc<Mux>,
    request: pb::WatchRequest,
    timeout: Duration,
    buffer: usize,
) -> Result<MuxWatch, Status> {
    let open = |id| pb::WatchControl {
        id,
        open: Some(request),
    };
    mux.open(open, timeout, buffer).await
}

fn cancel(id: u64) -> pb::WatchControl {
    pb::WatchControl { id, open: None }
}

fn split(message: pb::WatchManyResponse) -> Option<Addressed<Arc<Vec<pb::Event>>>> {
    use pb::watch_many_response::Event;
    let delivery = match message.event? {
        Event::Created(_) => Delivery::Opened,
        Event::Events(response) => Delivery::Item(Arc::new(response.events)),
        Event::Ended(status) => Delivery::Ended(status.into_status()),
    };
    Some((message.ids, delivery))
}
