//! A proxy of one tenant (`--tenants t1`), through real processes. It serves t1's objects and
//! the environment's (the administrator logs in there, a person of t1 logs in to t1). For
//! tenant t2 it answers `not-held`, naming what it holds: a get by DBID or by name, a query or
//! a subscription limited to t2, a login to t2, a whole export; a write into t2 sent to it is
//! still forwarded to the master. Its subscribers hear t1's changes only, in order. A
//! subscriber that resumes in the middle of a run of t2's changes, after the proxy's small
//! history has dropped older t1 records, gets what it missed without being told to reload.

mod confserv_common;
mod proxy_common;

use std::collections::BTreeSet;

use confserv_common::*;
use proxy_common::*;
use tandem_config::{ConfigObject, Delta, ObjectType, Query};
use tandem_confserv::client::{ConfClient, SubscribeFilter};
use tandem_proto::confserv::error_kind;
use tandem_testkit::{init_tracing, Kind};
use tracing::info;

const T1_PASSWORD: &str = "alice's password";

async fn must_create(client: &ConfClient, object: ConfigObject, password: Option<&str>) -> (ConfigObject, u64) {
    match client.create(&object, password).await {
        Ok(result) => (result.object.expect("the created object"), result.last_seq),
        Err(e) => panic!("create {} {:?}: {e}", object.object_type, object.name),
    }
}

async fn must_rename(client: &ConfClient, object: &ConfigObject, name: &str) -> u64 {
    let mut delta = Delta::new();
    delta.name = Some(name.to_owned());
    match client.update(object.object_type, object.dbid, &delta, None, 0).await {
        Ok(result) => result.last_seq,
        Err(e) => panic!("rename {} {:?}: {e}", object.object_type, object.name),
    }
}

/// The names of the changes a subscriber heard.
fn names(seen: &Seen) -> Vec<String> {
    seen.changes().into_iter().map(|n| n.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_proxy_of_one_tenant_serves_it_refuses_the_others_typed_and_notifies_only_its_changes() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a database, a master, tenants t1 and t2 with a skill and a person each");
    let pair = Pair::start(&[Kind::Sync], 1, &[]).await;
    let admin = pair.admin().await;
    let (t1, _) = must_create(&admin, ConfigObject::new(ObjectType::Tenant, 0, "t1", 0), None).await;
    let (t2, _) = must_create(&admin, ConfigObject::new(ObjectType::Tenant, 0, "t2", 0), None).await;
    let skill = |name: &str, tenant: &ConfigObject| ConfigObject::new(ObjectType::Skill, 0, name, tenant.dbid);
    let person = |name: &str, tenant: &ConfigObject| {
        ConfigObject::new(ObjectType::Person, 0, name, tenant.dbid).with_field("user_name", name)
    };
    let (t1_a, _) = must_create(&admin, skill("t1-a", &t1), None).await;
    let (t2_a, _) = must_create(&admin, skill("t2-a", &t2), None).await;
    must_create(&admin, person("alice", &t1), Some(T1_PASSWORD)).await;
    must_create(&admin, person("bob", &t2), Some("bob's password")).await;

    info!("--- a proxy of t1 only, keeping two records of history");
    let proxy = ConfservProcess::start_proxy("p1", &pair.addrs(), &["--tenants", "t1", "--history-max-records", "2"]);
    must_wait_proxy_mode(proxy.addr(), "normal").await;
    let on = client_of(vec![proxy.addr().to_owned()]);
    must_login(&on, ADMIN, ADMIN_PASSWORD).await;

    info!("--- what it holds: t1's objects and the environment; a person of t1 logs in to t1");
    assert_eq!(on.get(ObjectType::Skill, t1_a.dbid).await.expect("get by DBID"), t1_a);
    assert_eq!(
        on.get_by_name(ObjectType::Skill, t1.dbid, "t1-a")
            .await
            .expect("get by name"),
        t1_a
    );
    assert_eq!(on.get_by_name(ObjectType::Tenant, 0, "t1").await.expect("tenant"), t1);
    assert_eq!(skills_held(&on).await, BTreeSet::from(["t1-a".to_owned()]));
    let tenants = on.query(&Query::new(ObjectType::Tenant)).await.expect("query tenants");
    assert_eq!(tenants.len(), 2, "the environment and t1: {tenants:?}");
    let alice = client_of(vec![proxy.addr().to_owned()]);
    alice.login("alice", T1_PASSWORD, "t1").await.expect("a login to t1");

    info!("--- what it does not hold: refused with not-held, naming what it holds");
    let e = assert_refused(on.get(ObjectType::Skill, t2_a.dbid).await, error_kind::NOT_HELD, None);
    assert!(e.message.contains("\"t1\""), "the refusal names the tenants held: {e}");
    assert_refused(
        on.get_by_name(ObjectType::Skill, t2.dbid, "t2-a").await,
        error_kind::NOT_HELD,
        None,
    );
    assert_refused(
        on.get_by_name(ObjectType::Tenant, 0, "t2").await,
        error_kind::NOT_HELD,
        None,
    );
    assert_refused(
        on.query(&Query::new(ObjectType::Skill).tenant(t2.dbid)).await,
        error_kind::NOT_HELD,
        None,
    );
    let bob = client_of(vec![proxy.addr().to_owned()]);
    assert_refused(
        bob.login("bob", "bob's password", "t2").await,
        error_kind::NOT_HELD,
        None,
    );
    assert_refused(on.export(None).await, error_kind::NOT_HELD, None);
    let filter = SubscribeFilter {
        tenant: Some(t2.dbid),
        ..SubscribeFilter::default()
    };
    let mut of_t2 = on.subscribe(filter, None);
    let refused = tokio::time::timeout(EVENT_TIMEOUT, of_t2.next())
        .await
        .expect("an answer to a subscription of t2");
    assert_refused(refused, error_kind::NOT_HELD, None);
    assert_eq!(
        admin
            .get(ObjectType::Skill, t2_a.dbid)
            .await
            .expect("the master has it"),
        t2_a
    );

    info!("--- changes to both tenants; one into t2 sent through the proxy");
    let start_seq = on.status(proxy.addr()).await.expect("status").last_seq;
    let (on_proxy, _s1) = subscribe(&on, start_seq);
    let (on_master, _s2) = subscribe(&admin, start_seq);
    must_create(&admin, skill("t1-b", &t1), None).await;
    must_create(&admin, skill("t2-b", &t2), None).await;
    must_create(&admin, skill("t1-c", &t1), None).await;
    let t2_run_started = must_rename(&admin, &t2_a, "t2-a2").await;
    let forwarded = on
        .create(&skill("t2-via-proxy", &t2), None)
        .await
        .expect("a write into t2 sent to the proxy is forwarded");
    let created = forwarded.object.expect("the created object");
    assert_refused(
        on.get(ObjectType::Skill, created.dbid).await,
        error_kind::NOT_HELD,
        None,
    );
    must_rename(&admin, &t1_a, "t1-a2").await;
    let (_, final_seq) = must_create(&admin, skill("t1-d", &t1), None).await;
    must_see(&on_master, final_seq, "the master's subscriber has every change").await;
    must_see(&on_proxy, final_seq, "the proxy's subscriber has t1's last change").await;

    info!("--- the proxy's subscriber heard t1's changes only, in order; the master's, all");
    assert_eq!(names(&on_proxy), ["t1-b", "t1-c", "t1-a2", "t1-d"]);
    assert_eq!(
        names(&on_master),
        ["t1-b", "t2-b", "t1-c", "t2-a2", "t2-via-proxy", "t1-a2", "t1-d"]
    );
    assert_dense(&on_master.changes(), start_seq, final_seq);

    info!("--- a subscriber resuming inside t2's run, past the proxy's two records of history");
    // The proxy's history holds t1-a2 and t1-d; t1-c, before t2's run, was dropped.
    let (resumed, _s3) = subscribe(&on, t2_run_started);
    must_see(&resumed, final_seq, "the resumed subscriber catches up").await;
    assert_eq!(names(&resumed), ["t1-a2", "t1-d"]);
}
