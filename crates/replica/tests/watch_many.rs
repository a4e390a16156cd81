//! Many watches on one stream (`WatchMany`): each watch sees exactly the changes of its prefix
//! after its start, once each and in order, as its own `Watch` stream would; watches at the same
//! place get each batch in one message; a cancelled watch gets nothing more; a stream nobody
//! reads catches up from the history; a watch catching up from far behind takes turns with the
//! live changes of the others; and a client watch whose reader falls behind the others of its
//! stream is opened again without losing or repeating a change.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::start_set;
use tandem_client::{Client, ClientOptions, Txn, TxnOutcome};
use tandem_proto::db::kv_client::KvClient;
use tandem_proto::db::watch_many_response::Event;
use tandem_proto::db::{WatchControl, WatchManyResponse, WatchRequest};
use tandem_tls::TlsFiles;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Streaming};
use tracing::info;

/// How long a message the test waits for may take.
const DUE: Duration = Duration::from_secs(10);

/// A raw `WatchMany` stream to `addr`: the control sender and the responses. The stream's
/// flow-control window is HTTP/2's smallest, so that a stream nobody reads stops the replica's
/// sending after a few changes.
async fn open_stream(addr: &str) -> (mpsc::UnboundedSender<WatchControl>, Streaming<WatchManyResponse>) {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut kv = KvClient::new(channel);
    let (control, rx) = mpsc::unbounded_channel();
    let responses = kv
        .watch_many(UnboundedReceiverStream::new(rx))
        .await
        .expect("the stream opens")
        .into_inner();
    (control, responses)
}

fn open(control: &mpsc::UnboundedSender<WatchControl>, id: u64, prefix: &str, after_revision: u64) {
    let open = WatchRequest {
        prefix: prefix.to_owned(),
        after_revision,
    };
    control
        .send(WatchControl { id, open: Some(open) })
        .expect("the stream is open");
}

async fn next(responses: &mut Streaming<WatchManyResponse>) -> (Vec<u64>, Event) {
    let message = tokio::time::timeout(DUE, responses.message())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("a message");
    (message.ids, message.event.expect("an event"))
}

async fn put(client: &Client, pairs: &[&str]) -> u64 {
    let txn = pairs.iter().fold(Txn::new(), |txn, key| txn.put(*key, "v"));
    match client.txn(txn).await.expect("put") {
        TxnOutcome::Committed { revision, .. } => revision,
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// `(revision, key)` of each event, in order.
fn events(event: Event) -> Vec<(u64, String)> {
    match event {
        Event::Events(response) => response.events.into_iter().map(|e| (e.revision, e.key)).collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_on_one_stream_each_get_their_changes_once_in_order() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    let primary = client.discover().await.expect("primary");
    let start = client.status(&primary).await.expect("status").revision;
    let (control, mut responses) = open_stream(&primary).await;

    info!("--- watches 1 and 2 on a/, 3 on b/, all from revision {start}");
    for (id, prefix) in [(1, "a/"), (2, "a/"), (3, "b/")] {
        open(&control, id, prefix, start);
        assert!(matches!(next(&mut responses).await, (ids, Event::Created(_)) if ids == vec![id]));
    }

    info!("--- a/1, b/1, then a/2 and b/2 in one transaction");
    let r1 = put(&client, &["a/1"]).await;
    let r2 = put(&client, &["b/1"]).await;
    let r3 = put(&client, &["a/2", "b/2"]).await;
    let mut want_a = vec![(r1, "a/1".to_owned()), (r3, "a/2".to_owned())];
    let mut want_b = vec![(r2, "b/1".to_owned()), (r3, "b/2".to_owned())];
    let mut seen: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    while seen.get(&3).map_or(0, Vec::len) < 2 || seen.get(&1).map_or(0, Vec::len) < 2 {
        let (ids, event) = next(&mut responses).await;
        // Watches at the same place get each batch in one message, with both ids.
        assert!(ids == vec![1, 2] || ids == vec![3], "grouped by place: {ids:?}");
        let batch = events(event);
        for id in ids {
            seen.entry(id).or_default().extend(batch.iter().cloned());
        }
    }
    assert_eq!(seen[&1], want_a, "watch 1: its prefix only, once each, in order");
    assert_eq!(seen[&2], want_a, "watch 2 as watch 1");
    assert_eq!(seen[&3], want_b, "watch 3: the b/ half of the shared transaction too");

    info!("--- a watch opened later from {start} reads the history, then joins the others");
    open(&control, 4, "a/", start);
    assert!(matches!(next(&mut responses).await, (ids, Event::Created(_)) if ids == vec![4]));
    let (ids, event) = next(&mut responses).await;
    assert_eq!(ids, vec![4]);
    assert_eq!(events(event), want_a, "watch 4's history");

    info!("--- an id already open is refused; the watch it names goes on");
    open(&control, 3, "c/", start);
    match next(&mut responses).await {
        (ids, Event::Ended(status)) => {
            assert_eq!(ids, vec![3]);
            assert_eq!(status.into_status().code(), Code::InvalidArgument);
        }
        other => panic!("expected the duplicate id to be refused, got {other:?}"),
    }

    info!("--- watch 3 cancelled: b/3 is not sent, a/3 goes to 1, 2 and 4 at once");
    control.send(WatchControl { id: 3, open: None }).expect("cancel");
    let r4 = put(&client, &["b/3"]).await;
    let r5 = put(&client, &["a/3"]).await;
    assert!(r5 > r4);
    let (ids, event) = next(&mut responses).await;
    assert_eq!(ids, vec![1, 2, 4], "the next message is a/3, for every a/ watch");
    want_a.push((r5, "a/3".into()));
    assert_eq!(events(event), vec![(r5, "a/3".to_owned())]);
    want_b.push((r4, "b/3".into()));

    info!("--- watch 3 opened again after b/1 gets b/2 and b/3 from the history");
    open(&control, 3, "b/", r2);
    assert!(matches!(next(&mut responses).await, (ids, Event::Created(_)) if ids == vec![3]));
    let (ids, event) = next(&mut responses).await;
    assert_eq!(ids, vec![3]);
    assert_eq!(events(event), want_b[1..].to_vec());
}

/// More changes than the live channel holds (one writer, so one batch each), with values large
/// enough that the stream's flow-control window fills long before, while nobody reads the stream:
/// its live receiver lags, and its watches read the history.
const UNREAD_WRITES: u64 = tandem_store::state_machine::CHANGE_CHANNEL_CAPACITY as u64 + 100;
const UNREAD_VALUE_BYTES: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_catches_its_watches_up_from_the_history() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    let primary = client.discover().await.expect("primary");
    let start = client.status(&primary).await.expect("status").revision;
    let (control, mut responses) = open_stream(&primary).await;
    for (id, prefix) in [(1, "lag/"), (2, "lag/0")] {
        open(&control, id, prefix, start);
        assert!(matches!(next(&mut responses).await, (_, Event::Created(_))));
    }
    info!("--- {UNREAD_WRITES} puts of {UNREAD_VALUE_BYTES} bytes while the stream is not read");
    let mut puts = BTreeMap::new();
    for i in 0..UNREAD_WRITES {
        let key = format!("lag/{:x}/{i:04}", i % 16);
        let txn = Txn::new().put(key.clone(), vec![b'v'; UNREAD_VALUE_BYTES]);
        match client.txn(txn).await.expect("put") {
            TxnOutcome::Committed { revision, .. } => puts.insert(revision, key),
            other => panic!("unexpected outcome {other:?}"),
        };
    }

    info!("--- the stream is read: each watch gets its changes once, in order, none missing");
    let want_1: Vec<(u64, String)> = puts.iter().map(|(r, k)| (*r, k.clone())).collect();
    let want_2: Vec<(u64, String)> = want_1.iter().filter(|(_, k)| k.starts_with("lag/0")).cloned().collect();
    let mut seen: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    while seen.get(&1).map_or(0, Vec::len) < want_1.len() || seen.get(&2).map_or(0, Vec::len) < want_2.len() {
        let (ids, event) = next(&mut responses).await;
        let batch = events(event);
        for id in ids {
            seen.entry(id).or_default().extend(batch.iter().cloned());
        }
    }
    assert_eq!(seen[&1], want_1);
    assert_eq!(seen[&2], want_2);
}

/// Changes written before a watch opens far behind them: many pages of history.
const BACKLOG_TXNS: u64 = 40;
const BACKLOG_PER_TXN: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_catching_up_from_far_behind_does_not_hold_up_the_others() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    let primary = client.discover().await.expect("primary");
    let start = client.status(&primary).await.expect("status").revision;
    let total = BACKLOG_TXNS * BACKLOG_PER_TXN;
    info!("--- {total} changes under far/, before any watch");
    let mut backlog = Vec::new();
    for t in 0..BACKLOG_TXNS {
        let keys: Vec<String> = (0..BACKLOG_PER_TXN).map(|i| format!("far/{t:03}/{i:04}")).collect();
        let revision = put(&client, &keys.iter().map(String::as_str).collect::<Vec<_>>()).await;
        backlog.extend(keys.into_iter().map(|key| (revision, key)));
    }
    let now = client.status(&primary).await.expect("status").revision;

    info!("--- one stream: watch 2 on live/ from now, watch 1 on far/ from the start");
    let (control, mut responses) = open_stream(&primary).await;
    open(&control, 2, "live/", now);
    assert!(matches!(next(&mut responses).await, (_, Event::Created(_))));
    open(&control, 1, "far/", start);
    assert!(matches!(next(&mut responses).await, (_, Event::Created(_))));
    let (ids, event) = next(&mut responses).await;
    assert_eq!(ids, vec![1], "watch 1's first page of history");
    let mut far = events(event);

    info!("--- a change under live/ while watch 1 catches up: it reaches watch 2 before watch 1 is done");
    let live = put(&client, &["live/x"]).await;
    loop {
        let (ids, event) = next(&mut responses).await;
        let batch = events(event);
        if ids == vec![2] {
            assert_eq!(batch, vec![(live, "live/x".to_owned())]);
            break;
        }
        assert_eq!(ids, vec![1], "only watches 1 and 2 are open");
        far.extend(batch);
    }
    let before = far.len();
    assert!(
        (before as u64) < total,
        "watch 2's change waited until watch 1 had caught up on all {total} changes"
    );
    while (far.len() as u64) < total {
        let (ids, event) = next(&mut responses).await;
        assert_eq!(ids, vec![1], "nothing else changed");
        far.extend(events(event));
    }
    assert_eq!(far, backlog, "watch 1 gets every change once, in order");
    info!(
        before,
        total, "watch 2's change arrived after {before} of watch 1's {total} changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_watch_that_falls_behind_its_stream_is_opened_again_without_loss() {
    const PUTS: u64 = 40;
    const BUFFER: usize = 4;
    let root = tempfile::tempdir().expect("tempdir");
    let (replicas, setup) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    let options = ClientOptions {
        watch_buffer: BUFFER,
        ..ClientOptions::default()
    };
    let client = Client::new(replicas.iter().map(|r| r.addr.clone()).collect(), options).expect("client");
    let primary = client.discover().await.expect("primary");
    let start = client.status(&primary).await.expect("status").revision;
    let mut reader = client.watch("fb/", start).await.expect("watch");
    let mut sleeper = client.watch("fb/", start).await.expect("watch");

    info!("--- {PUTS} puts one after the other: one watch reads each, the other none (buffer {BUFFER})");
    let mut want = Vec::new();
    for i in 0..PUTS {
        let key = format!("fb/{i:02}");
        want.push((put(&setup, &[&key]).await, key));
        let got = tokio::time::timeout(DUE, reader.next())
            .await
            .expect("the reading watch gets each put in time")
            .expect("the reading watch goes on")
            .expect("events");
        assert_eq!(
            got.iter().map(|e| (e.revision, e.key.clone())).collect::<Vec<_>>(),
            vec![want[i as usize].clone()]
        );
    }

    info!("--- the other reads now: every put once, in order");
    let mut got = Vec::new();
    while got.len() < want.len() {
        let events = tokio::time::timeout(DUE, sleeper.next())
            .await
            .expect("events in time")
            .expect("the watch that fell behind goes on")
            .expect("events");
        got.extend(events.into_iter().map(|e| (e.revision, e.key)));
    }
    assert_eq!(got, want);
    assert_eq!(sleeper.last_revision(), want[want.len() - 1].0);
}
