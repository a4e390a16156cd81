//! Many subscriptions of one client share one stream (`SubscribeMany`): each still gets exactly
//! what its filter lets through, in order and once; a subscriber that does not keep up is dropped
//! from the stream and resumes without a loss, holding up no other; a subscription its client
//! drops is closed on the server. And the protocol's refusals: a second subscription under an id
//! already open, a stream without a session.

mod confserv_common;
mod proxy_common;

use std::collections::BTreeMap;
use std::time::Duration;

use confserv_common::*;
use proxy_common::must_see_metrics;
use tandem_config::{ConfigObject, ObjectType};
use tandem_confserv::client::{ClientConfig, ConfClient, SubscribeFilter, Subscription};
use tandem_proto::confserv::{self as pb, conf_serv_client::ConfServClient, subscription_event::Event};
use tandem_testkit::{init_tracing, Kind};
use tracing::info;

const SUBSCRIBERS: &str = "tandem_confserv_subscribers";

/// Changes made of each type.
const EACH: usize = 30;

fn host(name: &str) -> ConfigObject {
    ConfigObject::new(ObjectType::Host, 0, name, 1).with_field("ip_address", "10.0.0.1")
}

async fn must_next_change(sub: &mut Subscription) -> pb::Notification {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
            Ok(Ok(n)) if n.kind == "live" => continue,
            Ok(Ok(n)) => return std::sync::Arc::unwrap_or_clone(n),
            Ok(Err(e)) => panic!("subscription failed: {e}"),
            Err(_) => panic!("no notification within 20 s"),
        }
    }
}

/// Reads `count` changes; asserts their numbers rise, and returns (number, type, name) of each.
async fn must_read(sub: &mut Subscription, count: usize) -> Vec<(u64, String, String)> {
    let mut seen: Vec<(u64, String, String)> = Vec::new();
    while seen.len() < count {
        let n = must_next_change(sub).await;
        if let Some((last, _, _)) = seen.last() {
            assert!(n.seq > *last, "number {} after {last}: out of order or twice", n.seq);
        }
        seen.push((n.seq, n.object_type, n.name));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_subscriptions_sharing_a_stream_each_get_exactly_their_own() {
    init_tracing();
    let _serial = serial().await;
    let pair = Pair::start(&[Kind::Sync], 1, &["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = pair.servers[0].metrics_addr().to_owned();
    let admin = pair.admin().await;
    // A client whose subscriptions each hold at most 8 notifications before they are dropped
    // from the stream.
    let client = ConfClient::new(
        pair.addrs(),
        ClientConfig {
            deadline: Duration::from_secs(20),
            subscription_buffer: 8,
            ..ClientConfig::default()
        },
    )
    .expect("client");
    client.set_token(&admin.token().expect("token"));

    info!("--- four subscriptions on one client: everything, hosts, folders, and everything read late");
    let only = |t: ObjectType| SubscribeFilter {
        object_types: vec![t],
        ..SubscribeFilter::default()
    };
    let mut everything = client.subscribe(SubscribeFilter::default(), None);
    let mut hosts = client.subscribe(only(ObjectType::Host), None);
    let mut folders = client.subscribe(only(ObjectType::Folder), None);
    let mut late = client.subscribe(SubscribeFilter::default(), None);
    for sub in [&mut everything, &mut hosts, &mut folders, &mut late] {
        let live = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a live marker within 20 s")
            .expect("subscribed");
        assert_eq!(live.kind, "live");
    }
    assert_eq!(
        everything.server(),
        hosts.server(),
        "a client's subscriptions use the same server"
    );
    must_see_metrics(&metrics, "four subscriptions open", &[(SUBSCRIBERS, 4)]).await;

    info!("--- {EACH} hosts and {EACH} folders created, alternately, while three subscribers read and one does not");
    let reader = |mut sub: Subscription, count: usize| {
        tokio::spawn(async move {
            let seen = must_read(&mut sub, count).await;
            (sub, seen)
        })
    };
    let everything = reader(everything, 2 * EACH);
    let hosts = reader(hosts, EACH);
    let folders = reader(folders, EACH);
    let mut written: Vec<(u64, String, String)> = Vec::new();
    for i in 0..EACH {
        for (t, name) in [
            (ObjectType::Host, format!("h{i}")),
            (ObjectType::Folder, format!("f{i}")),
        ] {
            let object = match t {
                ObjectType::Host => host(&name),
                _ => ConfigObject::new(t, 0, &name, 1),
            };
            let done = match admin.create(&object, None).await {
                Ok(done) => done,
                Err(e) => panic!("create {t} {name}: {e}"),
            };
            written.push((done.last_seq, t.name().to_owned(), name));
        }
    }

    info!("--- each reading subscription got exactly its own, in order, while `late` held up nothing");
    let of = |t: ObjectType| -> Vec<(u64, String, String)> {
        written.iter().filter(|(_, ty, _)| ty == t.name()).cloned().collect()
    };
    let (mut everything, seen) = everything.await.expect("reader");
    assert_eq!(seen, written);
    let (hosts, seen) = hosts.await.expect("reader");
    assert_eq!(seen, of(ObjectType::Host));
    let (folders, seen) = folders.await.expect("reader");
    assert_eq!(seen, of(ObjectType::Folder));

    info!("--- the late subscriber filled its 8 and was dropped from the stream (closed on the server)");
    must_see_metrics(&metrics, "the late subscription closed", &[(SUBSCRIBERS, 3)]).await;
    info!("--- it reads what it holds, resumes from its last number: nothing lost, nothing twice");
    assert_eq!(must_read(&mut late, 2 * EACH).await, written);
    // Catching up from the history it may have filled its 8 again and been dropped once more,
    // to open again only when read further: one more change, read through its stream, leaves it
    // open (one change never fills it).
    let resumed = admin.create(&host("resumed"), None).await.expect("create resumed");
    for sub in [&mut everything, &mut late] {
        let n = must_next_change(sub).await;
        assert_eq!((n.seq, n.name.as_str()), (resumed.last_seq, "resumed"));
    }
    must_see_metrics(&metrics, "the late subscription open again", &[(SUBSCRIBERS, 4)]).await;

    info!("--- subscriptions dropped by the client are closed on the server");
    drop(hosts);
    drop(folders);
    must_see_metrics(&metrics, "two subscriptions left open", &[(SUBSCRIBERS, 2)]).await;
    // The stream still serves the others.
    let done = admin.create(&host("after"), None).await.expect("create after");
    for sub in [&mut everything, &mut late] {
        let n = must_next_change(sub).await;
        assert_eq!((n.seq, n.name.as_str()), (done.last_seq, "after"));
    }
}

/// The next event of a raw `SubscribeMany` stream.
async fn must_next_event(events: &mut tonic::Streaming<pb::SubscriptionEvent>) -> pb::SubscriptionEvent {
    match tokio::time::timeout(Duration::from_secs(20), events.message()).await {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => panic!("the stream ended"),
        Ok(Err(status)) => panic!("the stream failed: {status:?}"),
        Err(_) => panic!("no event within 20 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_the_stream_refuses_a_duplicate_id_and_a_missing_session() {
    init_tracing();
    let _serial = serial().await;
    let pair = Pair::start(&[Kind::Sync], 1, &[]).await;
    let admin = pair.admin().await;
    let token = admin.token().expect("token");
    let addr = format!("http://{}", pair.addrs()[0]);
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut stub = ConfServClient::new(channel);

    info!("--- without a session token: refused as unauthenticated");
    let (_tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::SubscriptionControl>();
    let refused = stub
        .subscribe_many(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .expect_err("a stream without a session");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    info!("--- id 7 opened twice: the second is refused, the first keeps its notifications");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::SubscriptionControl>();
    let mut request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    request.metadata_mut().insert(
        pb::AUTHORIZATION_KEY,
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let mut events = stub.subscribe_many(request).await.expect("stream").into_inner();
    let open = |id| pb::SubscriptionControl {
        id,
        open: Some(pb::SubscribeRequest::default()),
    };
    tx.send(open(7)).expect("send");
    tx.send(open(7)).expect("send");
    let mut said: BTreeMap<&str, Vec<Vec<u64>>> = BTreeMap::new();
    let mut refusal = None;
    while refusal.is_none() || !said.contains_key("live") {
        let event = must_next_event(&mut events).await;
        match event.event {
            Some(Event::Opened(_)) => said.entry("opened").or_default().push(event.ids),
            Some(Event::Notification(n)) if n.kind == "live" => said.entry("live").or_default().push(event.ids),
            Some(Event::Ended(end)) => refusal = Some((event.ids, end)),
            other => panic!("unexpected event {other:?}"),
        }
    }
    let (ids, end) = refusal.expect("a refusal");
    assert_eq!(ids, vec![7]);
    assert_eq!(end.code, tonic::Code::InvalidArgument as i32, "{end:?}");
    assert!(end.message.contains("already open"), "{end:?}");
    assert_eq!(said.get("opened"), Some(&vec![vec![7]]), "{said:?}");

    let created = admin.create(&host("h"), None).await.expect("create");
    let event = must_next_event(&mut events).await;
    match event.event {
        Some(Event::Notification(n)) => {
            assert_eq!(event.ids, vec![7]);
            assert_eq!((n.seq, n.name.as_str()), (created.last_seq, "h"));
        }
        other => panic!("expected the notification of the host, got {other:?}"),
    }

    info!("--- closing id 7 ends nothing else: the stream stays open and quiet");
    tx.send(pb::SubscriptionControl { id: 7, open: None }).expect("send");
    admin.create(&host("h2"), None).await.expect("create");
    tx.send(open(8)).expect("send");
    let event = must_next_event(&mut events).await;
    assert!(
        matches!(event.event, Some(Event::Opened(_))) && event.ids == vec![8],
        "after closing 7, the next event is 8 opening (nothing more for 7): {event:?}"
    );
}
