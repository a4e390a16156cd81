//! The change feed: `Watch` (one watch per stream) and `WatchMany` (many on one stream).
//!
//! A watch delivers the changes under its prefix after its start revision: history first, then
//! live changes as they are applied, in revision order, whole transactions per batch.
//!
//! Invariants:
//! - Never a gap and never a repeat: the live receiver is subscribed before the history is
//!   read, each watch remembers the last revision it passed (`Feed::last`), and a live batch
//!   that starts past `last + 1` (something was published before the receiver existed, or the
//!   receiver lagged) sends the watch back to the history.
//! - A `WatchMany` watch behaves exactly as a `Watch` stream of the same request: the same
//!   refusal when its start is compacted (as its `ended` answer), the same events, the same end.
//! - On a `WatchMany` stream a batch of events is sent once, with the ids of every watch it is
//!   for: watches with the same prefix at the same revision get the same events, so a change
//!   costs the stream one message, not one per watch.
//! - The streams are the response bodies themselves (no task of their own): the connection
//!   polls them, and a watcher that reads slowly holds back only its own stream (it falls behind
//!   the live channel and catches up from the history).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;

use futures::Stream;
use tandem_proto::db as pb;
use tandem_store::{Change, ChangeKind, StateReader, StoreError};
use tokio::sync::{broadcast, watch};
use tonic::{Status, Streaming};

use crate::refusal;

/// Changes read from the history per page while a watcher catches up.
pub(crate) const WATCH_PAGE: usize = 1000;
/// Watches one `WatchMany` stream may hold open.
pub const MAX_WATCHES_PER_STREAM: usize = 10_000;

pub(crate) fn store_error(e: StoreError) -> Status {
    match e {
        StoreError::Compacted { requested, oldest } => refusal::compacted(requested, oldest),
        other => Status::internal(format!("store: {other}")),
    }
}

fn event(change: &Change) -> pb::Event {
    pb::Event {
        revision: change.revision,
        key: change.key.clone(),
        kind: match change.kind {
            ChangeKind::Put => pb::EventKind::Put as i32,
            ChangeKind::Delete => pb::EventKind::Delete as i32,
        },
        value: change.value.clone(),
        version: change.version,
    }
}

/// Why a watch ends before its watcher leaves.
pub(crate) enum Stop {
    /// The replica is shutting down.
    Shutdown,
    /// The engine stopped (an epoch change).
    Engine,
}

/// Resolves when the replica shuts down or the engine stops.
pub(crate) async fn stop_reason(mut stopped: watch::Receiver<bool>, mut engine_stopped: watch::Receiver<bool>) -> Stop {
    tokio::select! {
        _ = stopped.wait_for(|s| *s) => Stop::Shutdown,
        _ = engine_stopped.wait_for(|s| *s) => Stop::Engine,
    }
}

fn epoch_changed() -> Status {
    Status::unavailable("this replica changed epoch; watch again from your last revision")
}

/// One watcher's position in the change feed.
pub(crate) struct Feed {
    reader: StateReader,
    prefix: String,
    /// The last revision delivered (or skipped as not matching the prefix).
    last: u64,
}

impl Feed {
    pub(crate) fn new(reader: StateReader, request: pb::WatchRequest) -> Feed {
        Feed {
            reader,
            prefix: request.prefix,
            last: request.after_revision,
        }
    }

    /// The changes after `self.last` in `changes` that match the prefix, as one response (none
    /// when nothing matches); moves `self.last` past them all.
    fn response(&mut self, changes: &[Change]) -> Option<pb::WatchResponse> {
        let events: Vec<pb::Event> = changes
            .iter()
            .filter(|c| c.revision > self.last && c.key.starts_with(&self.prefix))
            .map(event)
            .collect();
        self.pass(changes);
        (!events.is_empty()).then_some(pb::WatchResponse { events })
    }

    /// Moves `self.last` past `changes` (as [`Feed::response`] does).
    fn pass(&mut self, changes: &[Change]) {
        if let Some(last) = changes.last() {
            self.last = self.last.max(last.revision);
        }
    }

    /// Whether `changes` (a live batch) starts past the next revision this feed needs.
    fn misses(&self, changes: &[Change]) -> bool {
        changes.first().is_some_and(|first| first.revision > self.last + 1)
    }

    /// The next page of the history after `self.last`.
    pub(crate) async fn history(&self) -> Result<Vec<Change>, Status> {
        self.reader
            .changes_after(self.last, WATCH_PAGE)
            .await
            .map_err(store_error)
    }

    /// The feed as a `Watch` stream: `first` (a page of history), the rest of the history, then
    /// `live`, until `stop` resolves (or the watcher drops the stream).
    pub(crate) fn stream(
        mut self,
        first: Vec<Change>,
        mut live: broadcast::Receiver<Arc<Vec<Change>>>,
        stop: impl Future<Output = Stop> + Send + 'static,
    ) -> impl Stream<Item = Result<pb::WatchResponse, Status>> + Send {
        async_stream::try_stream! {
            // Kept across changes: one wait on the stop signals for the whole feed.
            tokio::pin!(stop);
            let mut page = first;
            loop {
                // Catch up from the history until it is exhausted.
                while !page.is_empty() {
                    if let Some(response) = self.response(&page) {
                        yield response;
                    }
                    page = self.history().await?;
                }
                let received = tokio::select! {
                    received = live.recv() => Ok(received),
                    reason = &mut stop => Err(reason),
                };
                let received = match received {
                    Ok(received) => received,
                    Err(Stop::Shutdown) => return,
                    Err(Stop::Engine) => Err(epoch_changed())?,
                };
                match received {
                    Ok(changes) => {
                        if changes.is_empty() {
                            continue;
                        }
                        if self.misses(&changes) {
                            // Something was published before we subscribed or skipped: read it
                            // from the history (which covers these changes too).
                            page = self.history().await?;
                            continue;
                        }
                        if let Some(response) = self.response(&changes) {
                            yield response;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::debug!(skipped, last = self.last, "a watcher fell behind the live feed; catching up from the history");
                        page = self.history().await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

fn many_response(ids: Vec<u64>, event: pb::watch_many_response::Event) -> pb::WatchManyResponse {
    pb::WatchManyResponse {
        ids,
        event: Some(event),
    }
}

fn ended(id: u64, status: &Status) -> pb::WatchManyResponse {
    let message = pb::StatusMessage::from_status(status);
    many_response(vec![id], pb::watch_many_response::Event::Ended(message))
}

/// What woke a `WatchMany` stream.
enum Woke {
    Control(Result<Option<pb::WatchControl>, Status>),
    Live(Result<Arc<Vec<Change>>, broadcast::error::RecvError>),
    Stop(Stop),
    /// A watch behind the live feed is due its next page of history.
    CatchUp,
}

/// The watches of a `WatchMany` stream that read the history, in turn, one page each.
#[derive(Default)]
struct Behind {
    turns: VecDeque<u64>,
    queued: BTreeSet<u64>,
    /// The first page of a watch just opened (read to check its start, not yet sent).
    first: HashMap<u64, Vec<Change>>,
}

impl Behind {
    fn push(&mut self, id: u64) {
        if self.queued.insert(id) {
            self.turns.push_back(id);
        }
    }

    fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    fn next(&mut self) -> Option<(u64, Option<Vec<Change>>)> {
        let id = self.turns.pop_front()?;
        self.queued.remove(&id);
        Some((id, self.first.remove(&id)))
    }

    fn forget(&mut self, id: u64) {
        self.first.remove(&id);
    }
}

/// A `WatchMany` stream: opens and cancels watches as `control` asks, until the client closes
/// its side or goes away, or `stop` resolves.
///
/// A watch behind the live feed (opened at an old revision, or one that missed live changes)
/// catches up from the history one page at a time, taking turns with the other such watches and
/// with the live changes of the rest: a watch that opens far behind does not hold up the others
/// of its stream until it has caught up. Nothing is lost meanwhile: the live receiver keeps what
/// comes, or lags and every watch reads the history.
pub(crate) fn many(
    reader: StateReader,
    mut control: Streaming<pb::WatchControl>,
    stop: impl Future<Output = Stop> + Send + 'static,
) -> impl Stream<Item = Result<pb::WatchManyResponse, Status>> + Send {
    use pb::watch_many_response::Event;
    async_stream::try_stream! {
        tokio::pin!(stop);
        // Subscribed before any watch reads its history, so that nothing falls between.
        let mut live = reader.subscribe();
        // By id, so that a batch's groups come out in a stable order.
        let mut watches: BTreeMap<u64, Feed> = BTreeMap::new();
        let mut behind = Behind::default();
        loop {
            // Not biased: live changes and pages of history take turns.
            let woke = tokio::select! {
                message = control.message() => Woke::Control(message),
                received = live.recv() => Woke::Live(received),
                reason = &mut stop => Woke::Stop(reason),
                () = std::future::ready(()), if !behind.is_empty() => Woke::CatchUp,
            };
            match woke {
                // The client closed its side, or went away.
                Woke::Control(Ok(None) | Err(_)) => return,
                Woke::Control(Ok(Some(message))) => {
                    let id = message.id;
                    let Some(request) = message.open else {
                        watches.remove(&id);
                        behind.forget(id);
                        continue;
                    };
                    if watches.contains_key(&id) {
                        yield ended(id, &refusal::invalid(format!("watch id {id} is already open on this stream")));
                        continue;
                    }
                    if watches.len() >= MAX_WATCHES_PER_STREAM {
                        yield ended(id, &Status::resource_exhausted(format!(
                            "a stream holds at most {MAX_WATCHES_PER_STREAM} watches: open another stream"
                        )));
                        continue;
                    }
                    let feed = Feed::new(reader.clone(), request);
                    // Refused (as `Watch` would refuse) when the start is already compacted.
                    match feed.history().await {
                        Err(status) => yield ended(id, &status),
                        Ok(first) => {
                            yield many_response(vec![id], Event::Created(pb::WatchCreated {}));
                            watches.insert(id, feed);
                            if !first.is_empty() {
                                behind.first.insert(id, first);
                                behind.push(id);
                            }
                        }
                    }
                }
                Woke::Live(Ok(changes)) => {
                    // Watches with the same prefix at the same revision get the same events:
                    // computed once, sent once with all their ids.
                    let mut groups: HashMap<(String, u64), (Vec<u64>, Option<pb::WatchResponse>)> = HashMap::new();
                    for (&id, feed) in watches.iter_mut() {
                        if feed.misses(&changes) {
                            behind.push(id);
                            continue;
                        }
                        let key = (feed.prefix.clone(), feed.last);
                        match groups.get_mut(&key) {
                            Some((ids, _)) => {
                                ids.push(id);
                                feed.pass(&changes);
                            }
                            None => {
                                let response = feed.response(&changes);
                                groups.insert(key, (vec![id], response));
                            }
                        }
                    }
                    let mut groups: Vec<(Vec<u64>, pb::WatchResponse)> = groups
                        .into_values()
                        .filter_map(|(ids, response)| Some((ids, response?)))
                        .collect();
                    groups.sort_by_key(|(ids, _)| ids[0]);
                    for (ids, response) in groups {
                        yield many_response(ids, Event::Events(response));
                    }
                }
                Woke::Live(Err(broadcast::error::RecvError::Lagged(skipped))) => {
                    tracing::debug!(skipped, watches = watches.len(), "a watch stream fell behind the live feed; its watches catch up from the history");
                    for &id in watches.keys() {
                        behind.push(id);
                    }
                }
                Woke::Live(Err(broadcast::error::RecvError::Closed)) | Woke::Stop(Stop::Shutdown) => return,
                Woke::Stop(Stop::Engine) => Err(epoch_changed())?,
                Woke::CatchUp => {
                    // One page for the watch whose turn it is; it queues again until a page
                    // comes back empty (caught up).
                    let Some((id, read)) = behind.next() else { continue };
                    let Some(feed) = watches.get_mut(&id) else { continue };
                    let page = match read {
                        Some(page) => Ok(page),
                        None => feed.history().await,
                    };
                    match page {
                        Ok(page) if page.is_empty() => {}
                        Ok(page) => {
                            if let Some(response) = feed.response(&page) {
                                yield many_response(vec![id], Event::Events(response));
                            }
                            behind.push(id);
                        }
                        Err(status) => {
                            watches.remove(&id);
                            yield ended(id, &status);
                        }
                    }
                }
            }
        }
    }
}
