//! `SubscribeMany`: many subscriptions on one stream, as etcd carries many watches on one.
//!
//! A client with many subscriptions (a contact-centre application follows its DNs, its places,
//! its agents...) would otherwise open one HTTP/2 stream each, and every change would cost the
//! server, the connection and the client one stream's worth of framing, flow control and
//! wake-ups per subscription. Here the subscriptions of one stream are feeds (see
//! `crate::service`) polled together by the stream's task, and the notifications they make at once are sent once each,
//! with the ids of every subscription they are for.
//!
//! Invariants:
//! - Each subscription behaves exactly as a `Subscribe` stream of the same request would: the
//!   same opening checks, replay, `live` marker, notifications, mode events and end (its
//!   `opened` or `ended` answer stands for `Subscribe`'s answer).
//! - Grouping never reorders: an event joins a group only if it comes after every event already
//!   sent to each of its subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use tandem_proto::confserv as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::debug;

use crate::node::Caller;
use crate::service::Opener;

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

async fn run(
    opener: Opener,
    caller: Caller,
    mut control: tonic::Streaming<pb::SubscriptionControl>,
    tx: mpsc::Sender<Result<pb::SubscriptionEvent, Status>>,
) {
    let mut subscriptions: SelectAll<Abortable<BoxStream<'static, (u64, Said)>>> = SelectAll::new();
    let mut open: HashMap<u64, AbortHandle> = HashMap::new();
    loop {
        tokio::select! {
            message = control.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    // The client closed its side, or went away.
                    Ok(None) | Err(_) => return,
                };
                let id = message.id;
                let Some(request) = message.open else {
                    if let Some(handle) = open.remove(&id) {
                        handle.abort();
                    }
                    continue;
                };
                let refusal = if open.contains_key(&id) {
                    Some(Status::invalid_argument(format!("subscription id {id} is already open on this stream")))
                } else if open.len() >= MAX_SUBSCRIPTIONS_PER_STREAM {
                    Some(Status::resource_exhausted(format!(
                        "a stream holds at most {MAX_SUBSCRIPTIONS_PER_STREAM} subscriptions: open another stream"
                    )))
                } else {
                    None
                };
                if let Some(status) = refusal {
                    if tx.send(Ok(event(vec![id], Said::Ended(status)))).await.is_err() {
                        return;
                    }
                    continue;
                }
                let (handle, registration) = AbortHandle::new_pair();
                open.insert(id, handle);
                subscriptions.push(Abortable::new(subscription(opener.clone(), caller.clone(), id, request), registration));
            }
            Some(first) = subscriptions.next(), if !subscriptions.is_empty() => {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match subscriptions.next().now_or_never() {
                        Some(Some(said)) => batch.push(said),
                        _ => break,
                    }
                }
                // A subscription that ended is no longer open; what it says after (the end of
                // its stream) is dropped, as is what a closed one said.
                batch.retain(|(id, said)| {
                    if !open.contains_key(id) {
                        return false;
                    }
                    if matches!(said, Said::Ended(_)) {
                        open.remove(id);
                    }
                    true
                });
                for grouped in group(batch) {
                    if tx.send(Ok(grouped)).await.is_err() {
                        return;
                    }
                }
            }
            _ = tx.closed() => return,
        }
    }
}

/// Subscription `id`: opened (or refused), then its notifications, then its end.
fn subscription(
    opener: Opener,
    caller: Caller,
    id: u64,
    request: pb::SubscribeRequest,
) -> BoxStream<'static, (u64, Said)> {
    futures::stream::once(async move { opener.open(caller, request).await })
        .flat_map(move |opened| match opened {
            Ok(feed) => futures::stream::once(async { Said::Opened })
                .chain(feed.map(|item| match item {
                    Ok(notification) => Said::Notification(notification),
                    Err(status) => Said::Ended(status),
                }))
                // A feed that ends without an error ends as `Subscribe`'s stream would: the client
                // resumes after the last number it has.
                .chain(futures::stream::once(async {
                    Said::Ended(Status::unavailable("the subscription ended: resume it"))
                }))
                .boxed(),
            Err(status) => futures::stream::once(async { Said::Ended(status) }).boxed(),
        })
        .map(move |said| (id, said))
        .boxed()
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
            Said::Ended(_) => None,
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
    debug!(groups = groups.len(), "subscription events grouped");
    groups.into_iter().map(|(ids, said)| event(ids, said)).collect()
}

fn event(ids: Vec<u64>, said: Said) -> pb::SubscriptionEvent {
    use pb::subscription_event::Event;
    let event = match said {
        Said::Opened => Event::Opened(pb::SubscriptionOpened {}),
        Said::Notification(n) => Event::Notification(Box::new(Arc::unwrap_or_clone(n))),
        Said::Ended(status) => Event::Ended(ended(&status)),
    };
    pb::SubscriptionEvent {
        ids,
        event: Some(event),
    }
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
