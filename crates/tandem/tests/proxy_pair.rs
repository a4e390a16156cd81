//! A site's proxy pair in normal operation: a client reads its own writes through a proxy;
//! when the proxy its subscription streams from is killed, the subscription resumes on the
//! other proxy without losing or repeating an event, and writes continue; bad input gets typed
//! refusals and the proxy keeps serving.

mod confserv_common;
mod proxy_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use confserv_common::*;
use proxy_common::*;
use tandem_config::{ConfigObject, Delta, ObjectType};
use tandem_confserv::client::ConfError;
use tandem_proto::confserv::{self as pb, conf_serv_client::ConfServClient, error_kind};
use tandem_testkit::{init_tracing, History, Kind};
use tracing::info;

async fn start() -> (Pair, Vec<ConfservProcess>, Vec<String>) {
    let pair = Pair::start(&[Kind::Sync, Kind::Sync, Kind::Sync], 2, &[]).await;
    let masters = pair.addrs();
    let proxies = vec![
        ConfservProcess::start_proxy("p1", &masters, &["--request-bytes-max", "65536"]),
        ConfservProcess::start_proxy("p2", &masters, &["--request-bytes-max", "65536"]),
    ];
    let addrs: Vec<String> = proxies.iter().map(|p| p.addr().to_owned()).collect();
    for addr in &addrs {
        must_wait_proxy_mode(addr, "normal").await;
    }
    (pair, proxies, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_client_reads_its_own_writes_through_a_proxy() {
    init_tracing();
    let _serial = serial().await;
    let (_pair, _proxies, addrs) = start().await;
    for addr in &addrs {
        info!("--- write then read at once on proxy {addr}, many times");
        let client = client_of(vec![addr.clone()]);
        must_login(&client, ADMIN, ADMIN_PASSWORD).await;
        for i in 0..30 {
            let name = format!("ryw-{addr}-{i}");
            let created = client
                .create(&ConfigObject::new(ObjectType::Skill, 0, &name, 1), None)
                .await
                .expect("create");
            let dbid = created.object.expect("the object").dbid;
            let read = client
                .get(ObjectType::Skill, dbid)
                .await
                .expect("read right after the write");
            assert_eq!(read.name, name);
            let delta = Delta::new().name(format!("{name}-renamed"));
            let updated = client
                .update(ObjectType::Skill, dbid, &delta, None, 0)
                .await
                .expect("update");
            let read = client
                .get(ObjectType::Skill, dbid)
                .await
                .expect("read right after the update");
            assert_eq!(read.version, updated.object.expect("the object").version, "{read:?}");
            assert_eq!(read.name, format!("{name}-renamed"));
            let status = client.status(addr).await.expect("status");
            assert!(status.last_seq >= updated.last_seq, "{status:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_a_killed_proxy_s_clients_continue_on_the_other_without_losing_an_event() {
    init_tracing();
    let _serial = serial().await;
    let (_pair, mut proxies, addrs) = start().await;
    let client = client_of(addrs.clone());
    must_login(&client, ADMIN, ADMIN_PASSWORD).await;
    let start_seq = client.status(&addrs[0]).await.expect("status").last_seq;
    let (seen, _subscriber) = subscribe(&client, start_seq);
    must_see(&seen, start_seq, "the subscriber is live").await;

    info!("--- two writers through the proxy pair");
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let writer = client_of(addrs.clone());
        writer.set_token(&client.token().expect("token"));
        let (history, stop) = (history.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = create_skill(&history, &writer, &format!("w{w}"), &format!("w{w}-{n}")).await;
                n += 1;
            }
        }));
    }
    wait_ok(&history, 20).await;

    info!("--- kill -9 the proxy the subscription streams from");
    let streaming = seen.server().expect("the subscription's server");
    let victim = addrs.iter().position(|a| *a == streaming).expect("a proxy of the pair");
    history.note(format!("kill -9 proxy {}", addrs[victim]));
    proxies[victim].kill9();
    let before = history.counts().ok;
    wait_ok(&history, before + 20).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let final_seq = client.status(&addrs[1 - victim]).await.expect("status").last_seq;
    must_see(&seen, final_seq, "the subscriber has every change").await;
    let changes = seen.changes();
    assert_dense(&changes, start_seq, final_seq);
    let summary = history.must_check_writes(&skills_notified(&changes));
    info!(%summary, "history checked");
    assert_held(&history, &skills_held(&client).await, "the surviving proxy");
}

async fn wait_ok(history: &History, at_least: usize) {
    tandem_testkit::must_eventually("acknowledged writes", EVENT_TIMEOUT, || async {
        let counts = history.counts();
        if counts.ok >= at_least {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_bad_input_to_a_proxy_gets_typed_refusals_and_the_proxy_keeps_serving() {
    init_tracing();
    let _serial = serial().await;
    let (_pair, _proxies, addrs) = start().await;
    let addr = addrs[0].clone();
    let client = client_of(vec![addr.clone()]);

    info!("--- a forged token, no token, a bad password");
    client.set_token("1.99999999999999.00ff");
    assert_refused(
        client.get(ObjectType::Skill, 1).await,
        error_kind::UNAUTHENTICATED,
        None,
    );
    let skill = ConfigObject::new(ObjectType::Skill, 0, "forged", 1);
    assert_refused(client.create(&skill, None).await, error_kind::UNAUTHENTICATED, None);
    let anonymous = client_of(vec![addr.clone()]);
    assert_refused(
        anonymous.get(ObjectType::Skill, 1).await,
        error_kind::UNAUTHENTICATED,
        None,
    );
    assert_refused(
        anonymous.login(ADMIN, "wrong password", "").await,
        error_kind::UNAUTHENTICATED,
        None,
    );

    info!("--- an oversized request, invalid objects, malformed JSON");
    must_login(&client, ADMIN, ADMIN_PASSWORD).await;
    let big = ConfigObject::new(ObjectType::Skill, 0, "x".repeat(100_000), 1);
    assert_refused(client.create(&big, None).await, error_kind::TOO_LARGE, None);
    let dn = ConfigObject::new(ObjectType::Dn, 0, "1001", 1);
    assert_refused(client.create(&dn, None).await, error_kind::VALIDATION, None);
    let token = client.token().expect("token");
    let e = raw_refusal(&addr, &token, |mut stub, request| async move {
        stub.query(request.map(|()| pb::QueryRequest {
            query_json: "{not json".into(),
        }))
        .await
        .map(|_| ())
    })
    .await;
    assert!(e.is(error_kind::BAD_REQUEST), "{e:?}");
    let e = raw_refusal(&addr, &token, |mut stub, request| async move {
        stub.create(request.map(|()| pb::CreateRequest {
            object_json: "{\"object_type\": \"no_such_type\"".into(),
            ..Default::default()
        }))
        .await
        .map(|_| ())
    })
    .await;
    assert!(e.is(error_kind::BAD_REQUEST), "{e:?}");
    assert_refused(
        client.get(ObjectType::Skill, 999_999).await,
        error_kind::NOT_FOUND,
        None,
    );

    info!("--- the proxy keeps serving, and wrote nothing of the refused requests");
    let created = client.create(&skill, None).await.expect("a valid create");
    assert_eq!(
        client
            .get(ObjectType::Skill, created.object.expect("object").dbid)
            .await
            .expect("get")
            .name,
        "forged"
    );
    let held = skills_held(&client).await;
    assert_eq!(held.len(), 1, "{held:?}");
    let status = client.status(&addr).await.expect("status");
    assert_eq!(status.proxy_mode, "normal", "{status:?}");
}

/// The refusal of a hand-made request (one the client library would not send) with `token`.
async fn raw_refusal<F, Fut>(addr: &str, token: &str, call: F) -> ConfError
where
    F: FnOnce(ConfServClient<tonic::transport::Channel>, tonic::Request<()>) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let stub = ConfServClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert(
        pb::AUTHORIZATION_KEY,
        format!("Bearer {token}").parse().expect("metadata"),
    );
    match call(stub, request).await {
        Ok(()) => panic!("a malformed request was accepted"),
        Err(status) => ConfError::from_status(&status),
    }
}
