//! A site's Configuration Server Proxy pair when the master pair is lost and comes back
//! elsewhere: both proxies enter limited mode within the heartbeat timeout; during the outage
//! every read is answered, every write is refused with `limited-mode`, and a client can still
//! log in; a new master pair started at two other addresses (on the same database) is found by
//! the proxies by themselves, which catch up and return to normal mode; a subscriber of the
//! proxies sees every change exactly once, in order, and both mode changes.

mod confserv_common;
mod proxy_common;

use confserv_common::*;
use proxy_common::*;
use tandem_config::ObjectType;
use tandem_proto::confserv::error_kind;
use tandem_testkit::{init_tracing, must_eventually, History, Kind};
use tracing::info;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_master_pair_lost_limited_mode_then_masters_back_at_other_addresses() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a database, a master pair, and a proxy pair given four master addresses");
    let mut pair = Pair::start(&[Kind::Sync, Kind::Sync, Kind::Sync], 2, &[]).await;
    let later = [free_addr(), free_addr()];
    let mut masters = pair.addrs();
    masters.extend(later.iter().cloned());
    let proxies = [
        ConfservProcess::start_proxy("p1", &masters, &[]),
        ConfservProcess::start_proxy("p2", &masters, &[]),
    ];
    let proxy_addrs: Vec<String> = proxies.iter().map(|p| p.addr().to_owned()).collect();
    for addr in &proxy_addrs {
        must_wait_proxy_mode(addr, "normal").await;
    }
    let client = client_of(proxy_addrs.clone());
    must_login(&client, ADMIN, ADMIN_PASSWORD).await;
    let start_seq = client.status(&proxy_addrs[0]).await.expect("status").last_seq;
    let (seen, _subscriber) = subscribe(&client, start_seq);
    let history = History::new();
    for i in 0..20 {
        create_skill(&history, &client, "before", &format!("before-{i}"))
            .await
            .expect("a create through a proxy");
    }

    info!("--- kill -9 both masters");
    history.note("kill -9 both masters");
    let killed_ms = now_ms();
    for master in &mut pair.servers {
        master.kill9();
    }
    for addr in &proxy_addrs {
        let status = must_wait_proxy_mode(addr, "limited").await;
        let detected_after_ms = status.proxy_mode_since_ms.saturating_sub(killed_ms);
        info!(
            proxy = addr,
            detected_after_ms,
            reason = status.proxy_mode_reason,
            "limited mode"
        );
        // The proxy's own record of when it decided: the timeout, plus at most one round of
        // looking for a master (capped at 1 s), plus scheduling on a loaded machine.
        assert!(
            detected_after_ms <= PROXY_HEARTBEAT_TIMEOUT_MS + 2_500,
            "limited mode only {detected_after_ms} ms after the masters died: {status:?}"
        );
    }
    must_eventually("the subscriber hears of limited mode", EVENT_TIMEOUT, || async {
        let modes = seen.proxy_modes();
        if modes.iter().any(|m| m == "limited") {
            Ok(())
        } else {
            Err(format!("{modes:?}"))
        }
    })
    .await;

    info!("--- during the outage: a new login, every read answered, every write refused");
    let newcomer = client_of(vec![proxy_addrs[1].clone()]);
    must_login(&newcomer, ADMIN, ADMIN_PASSWORD).await;
    let skill = newcomer
        .get_by_name(ObjectType::Skill, 1, "before-0")
        .await
        .expect("a read by a client that logged in during the outage");
    for round in 0..20 {
        let on = client_of(vec![proxy_addrs[round % 2].clone()]);
        on.set_token(&client.token().expect("token"));
        assert_eq!(
            on.get(ObjectType::Skill, skill.dbid).await.expect("a get").name,
            "before-0"
        );
        let held = skills_held(&on).await;
        assert_eq!(held.len(), 20, "a query during the outage");
    }
    for i in 0..10 {
        let refused = create_skill(&history, &client, "outage", &format!("outage-{i}")).await;
        assert_refused(refused, error_kind::LIMITED_MODE, None);
    }
    let e = assert_refused(
        newcomer.set_mode(tandem_confserv::record::Mode::ReadOnly).await,
        error_kind::LIMITED_MODE,
        None,
    );
    assert!(e.message.contains("since"), "the refusal says since when: {e}");

    info!("--- a new master pair at the two other addresses, on the same database");
    history.note("new master pair started elsewhere");
    let endpoints = pair.cluster.endpoints();
    let _new_masters = [
        ConfservProcess::start_on("m3", &endpoints, &later[0], &[]),
        ConfservProcess::start_on("m4", &endpoints, &later[1], &[]),
    ];
    for addr in &proxy_addrs {
        let status = must_wait_proxy_mode(addr, "normal").await;
        assert!(later.contains(&status.master), "attached to a new master: {status:?}");
    }
    let mut final_seq = 0;
    for i in 0..20 {
        let written = create_skill(&history, &client, "after", &format!("after-{i}"))
            .await
            .expect("a create through a proxy after the masters came back");
        final_seq = written.last_seq;
    }
    must_see(&seen, final_seq, "the subscriber has every change").await;

    info!("--- every change seen once, in order; acknowledged writes present, refused ones absent");
    let changes = seen.changes();
    assert_dense(&changes, start_seq, final_seq);
    let summary = history.must_check_writes(&skills_notified(&changes));
    info!(%summary, "history checked");
    assert_eq!(summary.ok, 40);
    assert_eq!(summary.failed, 10);
    for addr in &proxy_addrs {
        let on = client_of(vec![addr.clone()]);
        on.set_token(&client.token().expect("token"));
        assert_held(&history, &skills_held(&on).await, addr);
    }
    let modes = seen.proxy_modes();
    assert_eq!(modes.first().map(String::as_str), Some("limited"), "{modes:?}");
    assert_eq!(modes.last().map(String::as_str), Some("normal"), "{modes:?}");
}
