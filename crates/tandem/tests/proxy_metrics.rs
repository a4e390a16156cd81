//! Prometheus metrics of the configuration servers, scraped over HTTP from the processes
//! (`--metrics-listen`, the address read from the ready file's second line): each master
//! exports its role (one primary, one backup) and the proxies following it; a proxy exports
//! its mode — normal while attached, limited once both masters are killed (kill -9) — with its
//! mode changes, its last notification number and its subscribers.

mod confserv_common;
mod proxy_common;

use confserv_common::*;
use proxy_common::*;
use tandem_config::{ConfigObject, ObjectType};
use tandem_testkit::{init_tracing, must_eventually, Kind};
use tracing::info;

const PROXY_ROLE: &str = "tandem_confserv_role{role=\"proxy\"}";
const NORMAL: &str = "tandem_confserv_proxy_mode{mode=\"normal\"}";
const LIMITED: &str = "tandem_confserv_proxy_mode{mode=\"limited\"}";
const STARTING: &str = "tandem_confserv_proxy_mode{mode=\"starting\"}";
const MODE_CHANGES: &str = "tandem_confserv_proxy_mode_changes_total";
const LAST_SEQ: &str = "tandem_confserv_last_seq";
const SUBSCRIBERS: &str = "tandem_confserv_subscribers";
const PRIMARY: &str = "tandem_confserv_role{role=\"primary\"}";
const BACKUP: &str = "tandem_confserv_role{role=\"backup\"}";
const LINKS: &str = "tandem_confserv_replication_links";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_metrics_show_the_masters_roles_and_the_proxy_mode_through_the_loss_of_the_masters() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a database, a master pair and a proxy, each serving /metrics");
    let with_metrics = ["--metrics-listen", "127.0.0.1:0"];
    let mut pair = Pair::start(&[Kind::Sync], 2, &with_metrics).await;
    let proxy = ConfservProcess::start_proxy("p1", &pair.addrs(), &with_metrics);
    must_wait_proxy_mode(proxy.addr(), "normal").await;

    info!("--- the masters: one primary, followed by the proxy, and one backup");
    let roles = must_eventually("one primary and one backup", EVENT_TIMEOUT, || async {
        let mut roles = Vec::new();
        for master in &pair.servers {
            let text = scrape(master.metrics_addr()).await?;
            roles.push((metric(&text, PRIMARY), metric(&text, BACKUP), metric(&text, LINKS)));
        }
        let primaries = roles.iter().filter(|r| *r == &(Some(1), Some(0), Some(1))).count();
        let backups = roles.iter().filter(|r| *r == &(Some(0), Some(1), Some(0))).count();
        if primaries == 1 && backups == 1 {
            Ok(roles)
        } else {
            Err(format!(
                "(primary, backup, replication links) of each master: {roles:?}"
            ))
        }
    })
    .await;
    info!(?roles, "the masters' roles");

    info!("--- the proxy: normal, one mode change, its last number and subscriber as they are");
    let client = client_of(vec![proxy.addr().to_owned()]);
    must_login(&client, ADMIN, ADMIN_PASSWORD).await;
    let written = client
        .create(&ConfigObject::new(ObjectType::Skill, 0, "metered", 1), None)
        .await
        .expect("a create through the proxy");
    let (_seen, _subscriber) = subscribe(&client, written.last_seq);
    let text = must_see_metrics(
        proxy.metrics_addr(),
        "the proxy's metrics: normal, with one subscriber",
        &[
            (PROXY_ROLE, 1),
            (NORMAL, 1),
            (LIMITED, 0),
            (STARTING, 0),
            (MODE_CHANGES, 1),
            (LAST_SEQ, written.last_seq),
            (SUBSCRIBERS, 1),
        ],
    )
    .await;
    assert!(metric(&text, PRIMARY).is_none(), "a proxy has no master role:\n{text}");
    let status = client.status(proxy.addr()).await.expect("status");
    assert_eq!(status.last_seq, written.last_seq, "the metrics agree with the status");

    info!("--- kill -9 both masters: the proxy's metrics say limited");
    for master in &mut pair.servers {
        master.kill9();
    }
    must_see_metrics(
        proxy.metrics_addr(),
        "the proxy's metrics: limited, its data and subscriber kept",
        &[
            (NORMAL, 0),
            (LIMITED, 1),
            (MODE_CHANGES, 2),
            (LAST_SEQ, written.last_seq),
            (SUBSCRIBERS, 1),
        ],
    )
    .await;
    let status = client.status(proxy.addr()).await.expect("status");
    assert_eq!(status.proxy_mode, "limited", "the metrics agree with the status");
}
