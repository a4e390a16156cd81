//! `SubscribeMany`: many subscriptions on one stream, as etcd carries many watches on one.
//!
//! A client with many subscriptions (a contact-centre application follows its DNs, its places,
//! its agents...) would otherwise open one HTTP/2 stream each, and every change would cost the
//! server, the connection and the client one stream's worth of framing, flow control and
//! wake-ups per subscription. Here the subscriptions of one stream are feeds (see
//! `crate::service`) driven by the stream's task — once caught up, handed each record by the
//! stream itself (see [`Subscriptions`]) — and the notifications they make at once are sent
//! once each, with the ids of every subscription they are for.
//!
//! Invariants:
//! - Each subscription behaves exactly as a `Subscribe` stream of the same request would: the
//!   same opening checks, replay, `live` marker, notifications, mode events and end (its
//!   `opened` or `ended` answer stands for `Subscribe`'s answer).
//! - Grouping never reorders: an event joins a group only if it comes after every event already
//!   sent to each of its subscriptions.
//! - A feed is either alone (following with its own receiver) or attached (handed the records by
//!   the stream), never both; it is attached only with an empty outbox and at or past every
//!   record the stream has handed over, and detached at a lag of the stream's receiver or a
//!   change of epoch or link.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use tandem_proto::confserv as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::node::Caller;
use crate::record::LogRecord;
use crate::service::{Feed, FeedStep, Opener};
use crate::state::Link;

/// Subscriptions one stream may hold open.
pub const MAX_SUBSCRIPTIONS_PER_STREAM: usize = 10_000;
/// Events the stream's task sends ahead of the connection.
const EVENTS_BUFFER: usize = 64;
/// Events taken from the subscriptions at once, to be grouped.
const BATCH_MAX: usize = 4096;

/// What one subscription of the stream says.
enum Said {
    Opened,
    Notification(Arc<pb::Notification>),
    Ended(Status),
    /// The subscription's feed, caught up, offered to be handed the records by the stream.
    Offer(Box<Feed>),
}

impl From<FeedStep> for Said {
    fn from(step: FeedStep) -> Said {
        match step {
            FeedStep::Item(Ok(notification)) => Said::Notification(notification),
            FeedStep::Item(Err(status)) => Said::Ended(status),
            FeedStep::Offer(feed) => Said::Offer(feed),
        }
    }
}

/// Serves one `SubscribeMany` stream for `caller`: opens and closes subscriptions as `control`
/// asks, until the client closes its side or goes away.
pub(crate) fn serve(
    opener: Opener,
    caller: Caller,
    control: tonic::Streaming<pb::SubscriptionControl>,
) -> ReceiverStream<Result<pb::SubscriptionEvent, Status>> {
    let (tx, rx) = mpsc::channel(EVENTS_BUFFER);
    tokio::spawn(run(opener, caller, control, tx));
    ReceiverStream::new(rx)
}

/// The subscriptions of one stream.
///
/// A subscription opens *alone*: its feed follows the records with a receiver of its own, as a
/// `Subscribe` stream's does. Once it has caught up it offers itself, and the stream *attaches*
/// it: the feed drops its receiver and the stream hands it each record from the one receiver of
/// the stream, so a record costs the stream one wake-up, not one per subscription. A lag of the
/// stream's receiver, or a change of epoch or link, detaches the attached feeds: they catch up
/// from the history by themselves, exactly as alone ones do, and offer themselves again. A feed
/// is attached only if it is at or past every record the stream has handed over (`pos`), so
/// that none falls between. A record past the next one an attached feed needs (records outside
/// a proxy's tenants are not published) makes it read the history held now, as an alone feed
/// would.
struct Subscriptions {
    /// Alone (or still opening), by id.
    alone: HashMap<u64, AbortHandle>,
    alone_streams: SelectAll<Abortable<BoxStream<'static, (u64, Said)>>>,
    /// Attached, by id.
    attached: HashMap<u64, Feed>,
    /// The last record handed over (every record up to it was handed over, or came before the
    /// stream's receiver).
    pos: u64,
    /// Whether records are handed over: false once the server stops or the channels close.
    handing: bool,
}

impl Subscriptions {
    fn len(&self) -> usize {
        self.alone.len() + self.attached.len()
    }

    fn contains(&self, id: u64) -> bool {
        self.alone.contains_key(&id) || self.attached.contains_key(&id)
    }

    fn push_alone(&mut self, id: u64, stream: BoxStream<'static, (u64, Said)>) {
        let (handle, registration) = AbortHandle::new_pair();
        self.alone.insert(id, handle);
        self.alone_streams.push(Abortable::new(stream, registration));
    }

    fn close(&mut self, id: u64) {
        if let Some(handle) = self.alone.remove(&id) {
            handle.abort();
        }
        self.attached.remove(&id);
    }

    /// Hands `record` to every attached feed.
    fn hand(&mut self, record: &LogRecord, out: &mut Vec<(u64, Said)>) {
        self.pos = self.pos.max(record.seq);
        let mut ended = Vec::new();
        for (&id, feed) in self.attached.iter_mut() {
            feed.hand(record);
            out.extend(feed.take_outbox().map(|item| (id, Said::from(FeedStep::Item(item)))));
            if feed.is_ended() {
                ended.push(id);
            }
        }
        for id in ended {
            self.attached.remove(&id);
        }
    }

    fn detach(&mut self, id: u64) {
        if let Some(feed) = self.attached.remove(&id) {
            self.push_alone(id, alone(id, feed.detach()));
        }
    }

    fn detach_all(&mut self) {
        let ids: Vec<u64> = self.attached.keys().copied().collect();
        for id in ids {
            self.detach(id);
        }
    }

    /// Ends every attached feed: the server stops (`stop`), or the records can no longer be
    /// followed (their subscribers resume).
    fn end_attached(&mut self, stop: bool, out: &mut Vec<(u64, Said)>) {
        for (id, mut feed) in self.attached.drain() {
            if stop {
                feed.stop_now();
                out.extend(feed.take_outbox().map(|item| (id, Said::from(FeedStep::Item(item)))));
            } else {
                out.push((
                    id,
                    Said::Ended(Status::unavailable("the subscription ended: resume it")),
                ));
            }
        }
    }

    /// A feed offered itself: attached if nothing can fall between, else alone again.
    fn offered(&mut self, id: u64, mut feed: Box<Feed>) {
        self.alone.remove(&id);
        if self.handing && feed.last() >= self.pos && feed.attachable() {
            feed.attach();
            self.attached.insert(id, *feed);
        } else {
            self.push_alone(id, alone(id, feed.follow_alone(false, false)));
        }
    }
}

/// What woke the stream's watch of the server's channels.
enum Control {
    /// The epoch or the link changed: the attached feeds must act on it by themselves.
    Changed,
    /// The server stops.
    Stop,
    /// A channel closed.
    Closed,
}

type Controls = (watch::Receiver<u64>, watch::Receiver<Link>, watch::Receiver<bool>);

fn watch_controls(controls: Controls) -> BoxFuture<'static, (Control, Controls)> {
    Box::pin(async move {
        let (mut epochs, mut link, mut stop) = controls;
        let control = tokio::select! {
            changed = epochs.changed() => if changed.is_ok() { Control::Changed } else { Control::Closed },
            changed = link.changed() => if changed.is_ok() { Control::Changed } else { Control::Closed },
            stopped = stop.wait_for(|s| *s) => if stopped.is_ok() { Control::Stop } else { Control::Closed },
        };
        (control, (epochs, link, stop))
    })
}

async fn run(
    opener: Opener,
    caller: Caller,
    mut control: tonic::Streaming<pb::SubscriptionControl>,
    tx: mpsc::Sender<Result<pb::SubscriptionEvent, Status>>,
) {
    // The stream's receiver and watch exist before any subscription opens.
    let mut records = opener.records();
    let mut controls = watch_controls(opener.controls());
    let mut subs = Subscriptions {
        alone: HashMap::new(),
        alone_streams: SelectAll::new(),
        attached: HashMap::new(),
        pos: 0,
        handing: true,
    };
    loop {
        let mut out: Vec<(u64, Said)> = Vec::new();
        tokio::select! {
            message = control.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    // The client closed its side, or went away.
                    Ok(None) | Err(_) => return,
                };
                let id = message.id;
                let Some(request) = message.open else {
                    subs.close(id);
                    continue;
                };
                if subs.contains(id) {
                    let refused = Status::invalid_argument(format!("subscription id {id} is already open on this stream"));
                    out.push((id, Said::Ended(refused)));
                } else if subs.len() >= MAX_SUBSCRIPTIONS_PER_STREAM {
                    let refused = Status::resource_exhausted(format!(
                        "a stream holds at most {MAX_SUBSCRIPTIONS_PER_STREAM} subscriptions: open another stream"
                    ));
                    out.push((id, Said::Ended(refused)));
                } else {
                    subs.push_alone(id, subscription(opener.clone(), caller.clone(), id, request));
                }
            }
            record = records.recv(), if subs.handing => match record {
                Ok(record) => subs.hand(&record, &mut out),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Records were missed: everything up to now counts as handed over, and the
                    // attached feeds catch up from the history by themselves.
                    subs.pos = subs.pos.max(opener.seq());
                    subs.detach_all();
                }
                Err(broadcast::error::RecvError::Closed) => {
                    subs.handing = false;
                    subs.end_attached(false, &mut out);
                }
            },
            (woke, watched) = &mut controls, if subs.handing => match woke {
                Control::Changed => {
                    subs.detach_all();
                    controls = watch_controls(watched);
                }
                Control::Stop => {
                    subs.handing = false;
                    subs.end_attached(true, &mut out);
                }
                Control::Closed => {
                    subs.handing = false;
                    subs.end_attached(false, &mut out);
                }
            },
            Some(first) = subs.alone_streams.next(), if !subs.alone_streams.is_empty() => {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match subs.alone_streams.next().now_or_never() {
                        Some(Some(said)) => batch.push(said),
                        _ => break,
                    }
                }
                for (id, said) in batch {
                    // What a closed subscription said is dropped.
                    if !subs.alone.contains_key(&id) {
                        continue;
                    }
                    match said {
                        Said::Offer(feed) => subs.offered(id, feed),
                        Said::Ended(status) => {
                            subs.alone.remove(&id);
                            out.push((id, Said::Ended(status)));
                        }
                        said => out.push((id, said)),
                    }
                }
            }
            _ = tx.closed() => return,
        }
        for grouped in group(out) {
            if tx.send(Ok(grouped)).await.is_err() {
                return;
            }
        }
    }
}

/// Subscription `id`: opened (or refused), then what its feed says.
fn subscription(
    opener: Opener,
    caller: Caller,
    id: u64,
    request: pb::SubscribeRequest,
) -> BoxStream<'static, (u64, Said)> {
    futures::stream::once(async move { opener.open_feed(caller, request).await })
        .flat_map(move |opened| match opened {
            Ok(feed) => futures::stream::once(async { Said::Opened })
                .chain(feed.follow_alone(false, true).map(Said::from))
                .boxed(),
            Err(status) => futures::stream::once(async { Said::Ended(status) }).boxed(),
        })
        .map(move |said| (id, said))
        .boxed()
}

/// Subscription `id`'s feed, alone again.
fn alone(id: u64, feed: BoxStream<'static, FeedStep>) -> BoxStream<'static, (u64, Said)> {
    feed.map(move |step| (id, Said::from(step))).boxed()
}

/// Groups what the subscriptions said into events: equal notifications become one event for all
/// their subscriptions, without reordering any subscription's events.
fn group(batch: Vec<(u64, Said)>) -> Vec<pb::SubscriptionEvent> {
    let mut groups: Vec<(Vec<u64>, Said)> = Vec::new();
    // The index of the last group each subscription is in: it may join only a later one.
    let mut last_group: HashMap<u64, usize> = HashMap::new();
    for (id, said) in batch {
        let after = last_group.get(&id).map_or(0, |g| g + 1);
        let joined = match &said {
            Said::Notification(n) => groups
                .iter()
                .enumerate()
                .skip(after)
                .find(
                    |(_, (_, g))| matches!(g, Said::Notification(m) if Arc::ptr_eq(m, n) || (m.seq == n.seq && m == n)),
                )
                .map(|(i, _)| i),
            Said::Opened => groups
                .iter()
                .enumerate()
                .skip(after)
                .find(|(_, (_, g))| matches!(g, Said::Opened))
                .map(|(i, _)| i),
            Said::Ended(_) | Said::Offer(_) => None,
        };
        let at = match joined {
            Some(i) => {
                groups[i].0.push(id);
                i
            }
            None => {
                groups.push((vec![id], said));
                groups.len() - 1
            }
        };
        last_group.insert(id, at);
    }
    groups.into_iter().filter_map(|(ids, said)| event(ids, said)).collect()
}

/// The event for `ids`; none for an offer, which is the stream's business, not the client's.
fn event(ids: Vec<u64>, said: Said) -> Option<pb::SubscriptionEvent> {
    use pb::subscription_event::Event;
    let event = match said {
        Said::Opened => Event::Opened(pb::SubscriptionOpened {}),
        Said::Notification(n) => Event::Notification(Box::new(Arc::unwrap_or_clone(n))),
        Said::Ended(status) => Event::Ended(ended(&status)),
        Said::Offer(_) => return None,
    };
    Some(pb::SubscriptionEvent {
        ids,
        event: Some(event),
    })
}

/// A status as a `SubscriptionEnded` (its text metadata included).
pub fn ended(status: &Status) -> pb::SubscriptionEnded {
    let metadata = status
        .metadata()
        .iter()
        .filter_map(|entry| match entry {
            tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
                Some((key.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            }
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    pb::SubscriptionEnded {
        code: status.code() as i32,
        message: status.message().to_owned(),
        metadata,
    }
}

/// The status a `SubscriptionEnded` stands for.
pub fn status_of(ended: &pb::SubscriptionEnded) -> Status {
    let mut status = Status::new(tonic::Code::from_i32(ended.code), ended.message.clone());
    for (key, value) in &ended.metadata {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::AsciiMetadataValue::try_from(value.as_str()),
        ) {
            status.metadata_mut().insert(key, value);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(seq: u64) -> Said {
        Said::Notification(Arc::new(pb::Notification {
            seq,
            kind: "changed".into(),
            ..Default::default()
        }))
    }

    /// (ids, seq or 0 for other events) of each event.
    fn shape(events: &[pb::SubscriptionEvent]) -> Vec<(Vec<u64>, u64)> {
        events
            .iter()
            .map(|e| {
                let seq = match &e.event {
                    Some(pb::subscription_event::Event::Notification(n)) => n.seq,
                    _ => 0,
                };
                (e.ids.clone(), seq)
            })
            .collect()
    }

    #[test]
    fn equal_notifications_are_sent_once_for_all_their_subscriptions() {
        let events = group(vec![
            (1, note(5)),
            (2, note(5)),
            (3, note(5)),
            (1, note(6)),
            (2, note(6)),
        ]);
        assert_eq!(shape(&events), vec![(vec![1, 2, 3], 5), (vec![1, 2], 6)]);
    }

    #[test]
    fn grouping_never_reorders_a_subscription() {
        // Subscription 2 says 6 before 5 (say, a marker then a replayed record): it may not join
        // the group of 5 made before the group of 6.
        let events = group(vec![(1, note(5)), (1, note(6)), (2, note(6)), (2, note(5))]);
        assert_eq!(shape(&events), vec![(vec![1], 5), (vec![1, 2], 6), (vec![2], 5)]);
        let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
        for (ids, seq) in shape(&events) {
            for id in ids {
                seen.entry(id).or_default().push(seq);
            }
        }
        assert_eq!(seen[&1], vec![5, 6]);
        assert_eq!(seen[&2], vec![6, 5]);
    }

    #[test]
    fn different_notifications_of_one_number_are_not_merged() {
        let mut other = pb::Notification {
            seq: 5,
            kind: "changed".into(),
            ..Default::default()
        };
        other.epoch = 2;
        let events = group(vec![
            (1, note(5)),
            (2, Said::Notification(Arc::new(other))),
            (3, note(5)),
        ]);
        assert_eq!(shape(&events), vec![(vec![1, 3], 5), (vec![2], 5)]);
    }

    #[test]
    fn ends_are_never_merged_and_keep_their_status() {
        let refused = Status::failed_precondition("reload required");
        let mut with_kind = refused.clone();
        with_kind.metadata_mut().insert(
            pb::ERROR_KIND_KEY,
            tonic::metadata::MetadataValue::from_static("reload-required"),
        );
        let events = group(vec![
            (1, Said::Ended(with_kind.clone())),
            (2, Said::Ended(with_kind)),
            (3, Said::Opened),
            (4, Said::Opened),
        ]);
        assert_eq!(shape(&events), vec![(vec![1], 0), (vec![2], 0), (vec![3, 4], 0)]);
        let Some(pb::subscription_event::Event::Ended(end)) = &events[0].event else {
            panic!("not an end: {:?}", events[0]);
        };
        let status = status_of(end);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "reload required");
        assert_eq!(
            status.metadata().get(pb::ERROR_KIND_KEY).and_then(|v| v.to_str().ok()),
            Some("reload-required")
        );
    }
}
