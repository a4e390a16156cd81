//! Sync replicas across two sites with a witness: replica 1 is the sync replica of site 1,
//! replica 2 the sync replica of site 2, replica 3 the witness at a third place.
//!
//! - Losing site 1 (`kill -9` at a random moment under write load) makes replica 2 primary —
//!   through the witness when the witness holds entries replica 2 lacks — and replica 2 holds
//!   every acknowledged write.
//! - In `strict` mode, while the other site's sync replica is stopped, no write is
//!   acknowledged; once it is back, writes are acknowledged again.
//! - In `available` mode, a stopped sync replica is demoted after the sync timeout (status
//!   shows it), writes continue, and it is re-admitted once it is back and caught up.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_client::{ClientError, ClientOptions};
use tandem_testkit::{init_tracing, must_eventually, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use common::{Seed, TANDEM};

const SITE_1: u64 = 1;
const SITE_2: u64 = 2;
const KINDS: [Kind; 3] = [Kind::Sync, Kind::Sync, Kind::Witness];
/// The deadline for a failover through the witness (an event deadline, not a speed goal: the
/// witness waits two election timeouts before it campaigns, then one more before it hands over).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Client options whose writes give up quickly (for writes that are expected to block).
fn short_deadline() -> ClientOptions {
    ClientOptions {
        deadline: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

/// Makes `id` the primary: a switchover when another replica is, tried again (within the
/// deadline) when it fails or leadership moves on.
async fn must_make_primary(cluster: &Cluster, id: u64) {
    let client = cluster.client();
    must_eventually(&format!("replica {id} to be primary"), EVENT_TIMEOUT, || async {
        let primary = cluster.wait_primary(EVENT_TIMEOUT).await.map_err(|e| e.to_string())?;
        if primary == id {
            return Ok(());
        }
        match client.switchover(id).await {
            Ok(_) => Err(format!("switched over from replica {primary}; checking")),
            Err(e) => Err(format!("switchover from replica {primary} failed: {e}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sync_losing_site_1_keeps_every_acknowledged_write() {
    let _serial = common::serial().await;
    init_tracing();
    let mut seed = Seed::from_env("strict_sync_losing_site_1");

    info!("--- start sync replicas at site 1 and site 2 and a witness (strict mode)");
    let mut cluster = Cluster::must_start(TANDEM, &KINDS, ClusterOptions::default().sync_mode("strict")).await;
    must_make_primary(&cluster, SITE_1).await;

    info!("--- four clients write; kill -9 site 1 at a random moment");
    let history = Arc::new(History::new());
    let clients = (0..4).map(|_| cluster.new_client_with(short_deadline())).collect();
    let writers = Writers::start(clients, history.clone(), "sync/strict");
    let before_kill = seed.between(20, 300);
    writers.must_wait_acknowledged(before_kill, EVENT_TIMEOUT).await;
    history.note(format!(
        "kill -9 replica {SITE_1} (site 1, primary) after {before_kill} acknowledged writes"
    ));
    cluster.must_kill9(SITE_1);

    info!("--- site 2 becomes primary (possibly through the witness)");
    let killed_at = Instant::now();
    if let Err(e) = cluster.wait_primary_is(SITE_2, FAILOVER_TIMEOUT).await {
        panic!("{e}");
    }
    let failover = killed_at.elapsed();
    history.note(format!("replica {SITE_2} is primary after {} ms", failover.as_millis()));
    // Strict mode: the new primary waits for site 1 (dead), so the writers' writes from here
    // on end unknown at their deadline.
    let report = writers.stop().await;
    info!(%report, "writers stopped");

    info!("--- site 2 holds every acknowledged write");
    let state = cluster.must_range("sync/strict/").await;
    let summary = history.must_check_writes(&state);
    info!(%summary, "history checked on site 2");
    assert!(
        summary.ok as u64 >= before_kill,
        "acknowledged writes missing from the count: {summary}"
    );

    info!("--- site 1 comes back, catches up, and is primary again after a switchover");
    history.note(format!("restart replica {SITE_1}"));
    cluster.must_restart(SITE_1).await;
    cluster.must_wait_caught_up(&[SITE_1]).await;
    must_make_primary(&cluster, SITE_1).await;
    cluster.must_put("sync/strict-check/before-pause", "acknowledged").await;

    info!("--- with site 2 stopped (SIGSTOP), a write is not acknowledged");
    history.note(format!("SIGSTOP replica {SITE_2} (site 2)"));
    cluster.must_pause(SITE_2);
    let blocked = cluster.new_client_with(short_deadline());
    let attempt = history
        .put(&blocked, "blocked", "sync/strict/blocked/1", b"blocked-1")
        .await;
    match attempt {
        Err(ClientError::OutcomeUnknown { .. }) | Err(ClientError::Unavailable { .. }) => {}
        other => panic!("strict mode acknowledged a write without site 2: {other:?}"),
    }
    let primary = cluster.must_status(SITE_1).await;
    assert_eq!(primary.role, "primary");
    assert_eq!(primary.sync_mode, "strict");
    assert_eq!(primary.demotions, 0, "strict mode demoted a replica: {primary:?}");

    info!("--- site 2 resumes (SIGCONT): writes are acknowledged again");
    history.note(format!("SIGCONT replica {SITE_2}"));
    cluster.must_resume(SITE_2);
    // Its election timer ran out while it was stopped, but the others still hear the primary:
    // its pre-vote is refused, so it does not campaign (the primary keeps its role and its term).
    // New writes until one is acknowledged (the blocked one ended unknown).
    let attempts = AtomicU64::new(0);
    let client = cluster.client();
    must_eventually("a write acknowledged after site 2 resumed", EVENT_TIMEOUT, || async {
        let n = attempts.fetch_add(1, Ordering::Relaxed);
        let key = format!("sync/strict/after/{n}");
        let value = format!("after-{n}");
        history
            .put(&client, "after", &key, value.as_bytes())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    info!(
        attempts = attempts.load(Ordering::Relaxed),
        "a write was acknowledged after site 2 resumed"
    );
    cluster.must_wait_caught_up(&[SITE_2]).await;
    let after = cluster.must_status(SITE_1).await;
    assert_eq!(
        (after.role.as_str(), after.term),
        ("primary", primary.term),
        "site 2, resumed after {} s, deposed the primary or raised the term",
        short_deadline().deadline.as_secs()
    );
    let state = cluster.must_range("sync/strict/").await;
    let summary = history.must_check_writes(&state);
    info!(%summary, "history checked");
    cluster.must_wait_caught_up(&[SITE_2]).await;
    assert_eq!(
        cluster.must_range_on(SITE_2, "sync/strict/").await,
        state,
        "site 2 differs from the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn available_sync_demotes_a_silent_replica_and_readmits_it() {
    let _serial = common::serial().await;
    init_tracing();

    info!("--- start sync replicas at site 1 and site 2 and a witness (available mode, 1 s sync timeout)");
    let options = ClusterOptions::default().sync_mode("available").sync_timeout_ms(1000);
    let mut cluster = Cluster::must_start(TANDEM, &KINDS, options).await;
    must_make_primary(&cluster, SITE_1).await;

    info!("--- two clients write");
    let history = Arc::new(History::new());
    let writers = Writers::start(
        vec![cluster.new_client(), cluster.new_client()],
        history.clone(),
        "sync/available",
    );
    writers.must_wait_acknowledged(50, EVENT_TIMEOUT).await;
    let term = cluster.must_status(SITE_1).await.term;

    info!("--- site 2 stops (SIGSTOP): after the sync timeout it is demoted and writes continue");
    history.note(format!("SIGSTOP replica {SITE_2} (site 2)"));
    cluster.must_pause(SITE_2);
    writers.must_wait_more(100, EVENT_TIMEOUT).await;
    let status = cluster.must_wait_health(SITE_1, SITE_2, "demoted").await;
    assert!(status.demotions >= 1, "demotion not counted: {status:?}");
    assert_eq!(status.sync_mode, "available");
    history.note(format!(
        "primary reports replica {SITE_2} demoted ({} demotions)",
        status.demotions
    ));

    info!("--- site 2 resumes (SIGCONT): it catches up and is re-admitted");
    history.note(format!("SIGCONT replica {SITE_2}"));
    cluster.must_resume(SITE_2);
    // Its election timer ran out while it was stopped, but its pre-vote is refused (the others
    // hear the primary): the primary stays, and counts it as healthy again.
    let primary = must_eventually(&format!("replica {SITE_2} re-admitted"), EVENT_TIMEOUT, || async {
        let primary = cluster.primary_id().await.ok_or("no primary")?;
        if primary == SITE_2 {
            return Ok(primary);
        }
        let status = cluster.status(primary).await.map_err(|e| e.to_string())?;
        match status.replicas.iter().find(|r| r.id == SITE_2) {
            Some(r) if r.health == "ok" => Ok(primary),
            other => Err(format!("primary {primary} sees replica {SITE_2} as {other:?}")),
        }
    })
    .await;
    history.note(format!(
        "replica {primary} is primary and counts replica {SITE_2} as healthy"
    ));
    let status = cluster.must_status(SITE_1).await;
    assert_eq!(
        (primary, status.term),
        (SITE_1, term),
        "the resumed replica caused an election"
    );
    writers.must_wait_more(50, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, "writers stopped");

    info!("--- every acknowledged write is on the primary and, once caught up, on site 2");
    let state = cluster.must_range("sync/available/").await;
    let summary = history.must_check_writes(&state);
    info!(%summary, "history checked");
    cluster.must_wait_caught_up(&[SITE_2]).await;
    assert_eq!(
        cluster.must_range_on(SITE_2, "sync/available/").await,
        state,
        "site 2 differs from the primary"
    );
}
