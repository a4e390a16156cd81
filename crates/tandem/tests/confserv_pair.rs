//! The primary/backup pair of master Configuration Servers on a three-replica database: takeover
//! after kill -9 of the primary under a write load from several clients (no acknowledged write
//! lost or doubled, a subscriber sees every change once and in order), a paused primary that
//! resumes after its lease expired (refused, nothing written, it steps down and says so), and a
//! graceful stop that hands the lease over at once.

mod confserv_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confserv_common::*;
use tandem_config::{ConfigObject, ObjectType, Query};
use tandem_confserv::client::{ConfClient, SubscribeFilter};
use tandem_confserv::record::What;
use tandem_proto::confserv::{self as pb, error_kind};
use tandem_testkit::{init_tracing, must_eventually, Kind};
use tracing::info;

const WRITERS: usize = 4;

/// How one create ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed(String),
    Unknown(String),
}

/// Every skill name whose creation was attempted, with its outcome.
type Ledger = Arc<Mutex<BTreeMap<String, Outcome>>>;

async fn writer(client: ConfClient, id: usize, ledger: Ledger, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("w{id}-{n}");
        n += 1;
        let object = ConfigObject::new(ObjectType::Skill, 0, &name, 1);
        let outcome = match client.create(&object, None).await {
            Ok(_) => {
                acked.fetch_add(1, Ordering::Relaxed);
                Outcome::Ok
            }
            Err(e) if e.is_outcome_unknown() => Outcome::Unknown(e.to_string()),
            Err(e) => Outcome::Failed(format!("{}: {e}", e.kind)),
        };
        ledger.lock().expect("ledger").insert(name, outcome);
    }
}

async fn wait_count(counter: &AtomicU64, at_least: u64, what: &str) {
    must_eventually(what, EVENT_TIMEOUT, || async {
        let now = counter.load(Ordering::Relaxed);
        if now >= at_least {
            Ok(())
        } else {
            Err(format!("{now} so far"))
        }
    })
    .await;
}

/// Every skill, read page by page.
async fn all_skills(client: &ConfClient) -> Vec<ConfigObject> {
    let mut all = Vec::new();
    let mut query = Query::new(ObjectType::Skill);
    loop {
        let page = client.query(&query).await.expect("query skills");
        if let tandem_config::PageItems::Full(objects) = page.items {
            all.extend(objects);
        }
        match page.next_after_dbid {
            Some(next) => query = query.after(next),
            None => return all,
        }
    }
}

/// Every audit record, page by page.
async fn all_records(client: &ConfClient) -> Vec<tandem_confserv::record::LogRecord> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (records, next) = client
            .audit(pb::AuditRequest {
                after_seq: after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .expect("audit");
        all.extend(records);
        if next == 0 {
            return all;
        }
        after = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_takeover_after_kill9_under_write_load_loses_and_repeats_nothing() {
    init_tracing();
    let _serial = serial().await;
    info!("--- three sync database replicas, two master servers");
    let mut pair = Pair::start(&[Kind::Sync, Kind::Sync, Kind::Sync], 2, &[]).await;
    let admin = pair.admin().await;
    let primary = pair.must_wait_primary().await;
    let backup = 1 - primary;
    let start_seq = admin
        .status(pair.servers[primary].addr())
        .await
        .expect("status")
        .last_seq;

    info!("--- a subscriber from notification {start_seq}, and {WRITERS} writers creating skills");
    let seen: Arc<Mutex<Vec<pb::Notification>>> = Arc::default();
    let subscriber = {
        let mut sub = admin.subscribe(SubscribeFilter::default(), Some(start_seq));
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match sub.next().await {
                    Ok(n) if n.kind == "live" => {}
                    Ok(n) => seen.lock().expect("seen").push(std::sync::Arc::unwrap_or_clone(n)),
                    Err(e) => panic!("the subscription failed: {e}"),
                }
            }
        })
    };
    let ledger: Ledger = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for id in 0..WRITERS {
        let client = client_of(pair.addrs());
        must_login(&client, ADMIN, ADMIN_PASSWORD).await;
        writers.push(tokio::spawn(writer(
            client,
            id,
            ledger.clone(),
            stop.clone(),
            acked.clone(),
        )));
    }
    wait_count(&acked, 40, "40 acknowledged writes before the crash").await;

    info!("--- kill -9 the primary (server {primary}) under load");
    let killed_at = Instant::now();
    pair.servers[primary].kill9();
    pair.must_wait_status(backup, "primary", |s| s.role == "primary").await;
    let takeover = killed_at.elapsed();
    info!(takeover_ms = takeover.as_millis() as u64, "the backup took over");
    let before = acked.load(Ordering::Relaxed);
    wait_count(&acked, before + 40, "40 acknowledged writes after the takeover").await;

    info!("--- the killed server restarts under the load: it loads, follows, and is the backup");
    pair.servers[primary].restart();
    pair.must_wait_status(primary, "backup", |s| s.role == "backup").await;
    let before = acked.load(Ordering::Relaxed);
    wait_count(&acked, before + 20, "20 more acknowledged writes").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    info!("--- every acknowledged write is present exactly once; failed ones are absent");
    let final_seq = admin
        .status(pair.servers[backup].addr())
        .await
        .expect("status")
        .last_seq;
    let skills = all_skills(&admin).await;
    let present: BTreeMap<String, u64> = skills.iter().map(|s| (s.name.clone(), s.dbid)).collect();
    assert_eq!(present.len(), skills.len(), "a name twice");
    let records = all_records(&admin).await;
    let mut created_records: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        if let What::Created { object } = &r.what {
            if object.object_type == ObjectType::Skill {
                *created_records.entry(object.name.clone()).or_default() += 1;
            }
        }
    }
    let ledger = ledger.lock().expect("ledger").clone();
    let (mut ok, mut failed, mut unknown) = (0, 0, 0);
    for (name, outcome) in &ledger {
        let count = created_records.get(name).copied().unwrap_or(0);
        match outcome {
            Outcome::Ok => {
                ok += 1;
                assert!(present.contains_key(name), "acknowledged {name} is missing");
                assert_eq!(count, 1, "acknowledged {name} was created {count} times");
            }
            Outcome::Failed(reason) => {
                failed += 1;
                assert!(!present.contains_key(name), "{name} failed ({reason}) but is present");
            }
            Outcome::Unknown(reason) => {
                info!(name, reason, "outcome unknown");
                unknown += 1;
                assert!(count <= 1, "{name} created {count} times");
            }
        }
    }
    for name in present.keys() {
        assert!(ledger.contains_key(name), "phantom skill {name}");
    }
    let stored = pair.cluster.must_range("cfg/obj/skill/").await;
    assert_eq!(stored.len(), present.len(), "the database holds what the server serves");
    info!(ok, failed, unknown, final_seq, "write outcomes");

    info!("--- the subscriber saw every change once, in order, across the takeover");
    must_eventually("the subscriber to reach the last notification", EVENT_TIMEOUT, || {
        let seen = seen.clone();
        async move {
            let last = seen.lock().expect("seen").last().map_or(0, |n| n.seq);
            if last >= final_seq {
                Ok(())
            } else {
                Err(format!("at {last} of {final_seq}"))
            }
        }
    })
    .await;
    subscriber.abort();
    let seen = seen.lock().expect("seen").clone();
    let seqs: Vec<u64> = seen.iter().map(|n| n.seq).collect();
    let expected: Vec<u64> = (start_seq + 1..=final_seq).collect();
    assert_eq!(seqs, expected, "notifications are dense, ordered, without repeats");
    let notified: BTreeSet<String> = seen
        .iter()
        .filter(|n| n.kind == "created")
        .map(|n| n.name.clone())
        .collect();
    for name in present.keys() {
        assert!(notified.contains(name), "no notification for {name}");
    }

    info!("--- the restarted backup, loaded under load, holds exactly the primary's configuration");
    pair.must_wait_status(primary, "backup, caught up", |s| {
        s.role == "backup" && s.last_seq == final_seq
    })
    .await;
    let on_backup = client_of(vec![pair.servers[primary].addr().to_owned()]);
    on_backup.set_token(&admin.token().expect("token"));
    assert_eq!(all_skills(&on_backup).await, skills, "the backup's copy differs");
    eprintln!(
        "takeover after kill -9: {} ms; writes ok {ok}, failed {failed}, unknown {unknown}",
        takeover.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_paused_primary_cannot_write_after_its_lease_expired_and_steps_down() {
    init_tracing();
    let _serial = serial().await;
    let mut pair = Pair::start(&[Kind::Sync, Kind::Sync, Kind::Sync], 2, &[]).await;
    let admin = pair.admin().await;
    let primary = pair.must_wait_primary().await;
    let backup = 1 - primary;
    let token = admin.token().expect("token");
    admin
        .create(&ConfigObject::new(ObjectType::Skill, 0, "before", 1), None)
        .await
        .expect("create");

    info!("--- SIGSTOP the primary; a write is sent to it while it is frozen");
    pair.servers[primary].pause();
    let stale_addr = pair.servers[primary].addr().to_owned();
    let stale_write = tokio::spawn(async move {
        let mut stub = pb::conf_serv_client::ConfServClient::connect(format!("http://{stale_addr}"))
            .await
            .expect("connect");
        let object = ConfigObject::new(ObjectType::Skill, 0, "stale-write", 1);
        let mut request = tonic::Request::new(pb::CreateRequest {
            object_json: serde_json::to_string(&object).expect("json"),
            password: String::new(),
            request_id: String::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
        request.set_timeout(Duration::from_secs(60));
        stub.create(request).await
    });

    info!("--- the backup takes over once the lease expired, and writes");
    pair.must_wait_status(backup, "primary", |s| s.role == "primary").await;
    // A client that last wrote to the frozen server would wait on it and end in "outcome
    // unknown": this one starts at the new primary.
    let fresh = client_of(vec![
        pair.servers[backup].addr().to_owned(),
        pair.servers[primary].addr().to_owned(),
    ]);
    fresh.set_token(&admin.token().expect("token"));
    let admin = fresh;
    let after = admin
        .create(&ConfigObject::new(ObjectType::Skill, 0, "after-takeover", 1), None)
        .await
        .expect("write on the new primary");

    info!("--- SIGCONT: the old primary's pending write is refused, and it steps down");
    pair.servers[primary].resume();
    let answer = tokio::time::timeout(EVENT_TIMEOUT, stale_write)
        .await
        .expect("an answer")
        .expect("task");
    let status = answer.expect_err("the stale primary must not accept a write");
    let kind = status
        .metadata()
        .get(pb::ERROR_KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(kind, error_kind::NOT_PRIMARY, "{status:?}");
    let old = pair
        .must_wait_status(primary, "backup, caught up", |s| {
            s.role == "backup" && s.last_seq >= after.last_seq
        })
        .await;
    assert!(!old.last_step_down.is_empty(), "it says why it stepped down: {old:?}");
    let log = pair.servers[primary].log();
    assert!(log.contains("stepping down"), "no step-down in the log");
    info!(reason = old.last_step_down, "the old primary stepped down");

    info!("--- nothing it was asked to write reached the database");
    assert_refused(
        admin.get_by_name(ObjectType::Skill, 1, "stale-write").await,
        error_kind::BAD_REQUEST,
        None,
    );
    let stored = pair.cluster.must_range("cfg/").await;
    assert!(
        stored
            .iter()
            .all(|kv| !String::from_utf8_lossy(&kv.value).contains("stale-write")),
        "the stale write is in the database"
    );
    let names: Vec<String> = all_skills(&admin).await.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["before", "after-takeover"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_graceful_stop_hands_the_lease_over_at_once() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a pair with a 60 s lease: a takeover within the 30 s wait proves the lease was released");
    let mut pair = Pair::start(&[Kind::Sync], 2, &["--lease-ttl-ms", "60000"]).await;
    let admin = pair.admin().await;
    let primary = pair.must_wait_primary().await;
    let backup = 1 - primary;
    info!("--- the backup refuses a write, naming the primary");
    let mut stub = pb::conf_serv_client::ConfServClient::connect(format!("http://{}", pair.servers[backup].addr()))
        .await
        .expect("connect");
    let mut request = tonic::Request::new(pb::CreateRequest {
        object_json: serde_json::to_string(&ConfigObject::new(ObjectType::Skill, 0, "on-backup", 1)).expect("json"),
        password: String::new(),
        request_id: String::new(),
    });
    let token = admin.token().expect("token");
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    let status = stub.create(request).await.expect_err("the backup must refuse writes");
    let meta = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(meta(pb::ERROR_KIND_KEY), error_kind::NOT_PRIMARY, "{status:?}");
    assert_eq!(meta(pb::PRIMARY_ADDR_KEY), pair.servers[primary].addr(), "{status:?}");

    info!("--- SIGTERM the primary: it releases the lease, the backup takes over at once");
    let stopped_at = Instant::now();
    pair.servers[primary].terminate();
    assert!(pair.servers[primary].log().contains("released the master lease"));
    pair.must_wait_status(backup, "primary", |s| s.role == "primary").await;
    let takeover = stopped_at.elapsed();
    admin
        .create(&ConfigObject::new(ObjectType::Skill, 0, "after-stop", 1), None)
        .await
        .expect("write after the hand-over");
    eprintln!("takeover after a graceful stop: {} ms", takeover.as_millis());
}
