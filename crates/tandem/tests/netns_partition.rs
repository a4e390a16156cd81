//! WAN partitions of the two-site example in real network namespaces, with real processes and a
//! client load at both sites whose every operation is recorded and checked afterwards.
//!
//! The topology is started through the library (`tandem_dr::netns::build`, `tandem_dr::up`), the
//! tests act as the operator from the router (the management network, which WAN faults do not
//! touch) and, where a site's own view matters, from inside a host of that site.

mod netns_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use netns_common::*;
use tandem_dr::operate::Operator;
use tandem_dr::status::Status;
use tandem_proto::confserv::error_kind;
use tandem_testkit::{init_tracing, must_eventually, History, Outcome};
use tandem_topology::Role;
use tracing::info;

/// The name of the skill every reader reads.
const PROBE: &str = "np-probe";

/// Waits until `check` accepts the status gathered from the router; panics with the last
/// status table otherwise.
async fn wait_status<T>(
    topo: &Topology,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Status) -> Result<T, String>,
) -> T {
    let check = &check;
    must_eventually(what, timeout, || async move {
        match tandem_dr::status::gather(&topo.launcher).await {
            Ok(status) => check(&status).map_err(|why| format!("{why}\n{}", status.table())),
            Err(e) => Err(format!("status: {e}")),
        }
    })
    .await
}

/// The number of acknowledged writes of `process` invoked after `after` on the history's clock.
/// s1-db's term, checking that it is the primary.
fn primary_term(status: &Status) -> u64 {
    let s1 = status.replica("s1-db/db").expect("s1-db in the status");
    assert_eq!(s1.role, "primary", "s1-db is not primary:\n{}", status.table());
    s1.term
}

fn acks_after(history: &History, process: &str, after: Duration) -> usize {
    ops_of(history, process)
        .iter()
        .filter(|op| op.invoked > after && matches!(op.outcome, Outcome::Ok { .. }))
        .count()
}

/// Waits until `process` has at least `n` acknowledged writes invoked after `after`.
async fn wait_acks(history: &History, process: &str, after: Duration, n: usize, what: &str) {
    must_eventually(what, EVENT_TIMEOUT, || async {
        let acks = acks_after(history, process, after);
        if acks >= n {
            Ok(())
        } else {
            Err(format!("{acks} acknowledged so far; counts {:?}", history.counts()))
        }
    })
    .await
}

/// Site 1 and site 2 lose each other; both still reach the witness at site 3. The database keeps
/// exactly one primary — s1-db, which still has a majority with the witness — and, once the
/// sync timeout demotes the unreachable s2-db, site 1's writes are acknowledged again. Site 2's
/// proxies lose their master and enter limited mode: writes there are refused with
/// `limited-mode`, reads are answered. Nobody activates site 2. When the WAN heals, site 2's
/// proxies return to normal, s2-db catches up and is re-admitted to the sync set, and there is
/// one history: every acknowledged write present exactly once, nothing refused present, every
/// master and proxy serving the same configuration, and site 2's subscriber saw every
/// notification number once, in order, across the partition.
///
/// Site 1 is not untouched either: until s2-db is demoted, every database write — the master's
/// lease renewals too — waits for it, so site 1's master pair may lose its lease and site 1's
/// proxies may refuse writes for a few seconds. What the test bounds is the longest wait between
/// two acknowledgements at site 1: the sync timeout, plus scheduling slack.
#[test]
fn t10_wan_partition_keeps_one_primary_and_one_history() {
    if !tandem_netlab::require_root("netns_partition::t10_wan_partition_keeps_one_primary_and_one_history") {
        return;
    }
    init_tracing();
    let _serial = serial();
    let began = Instant::now();

    info!("--- the two-site example in namespaces, site 1 active");
    let topo = Topology::up();
    let password = topo.password();
    let site1_proxies = topo.addrs(Role::Proxy, "site1");
    let site2_proxies = topo.addrs(Role::Proxy, "site2");
    let site2_masters: Vec<_> = topo
        .launcher
        .plan()
        .with_role(Role::Master, Some("site2"))
        .cloned()
        .collect();
    let start_seq = topo.router(async {
        wait_status(&topo, "every proxy in normal mode", EVENT_TIMEOUT, |s| {
            let all = s.proxies.iter().all(|p| p.mode == "normal");
            if all && s.db_primary.as_deref() == Some("s1-db/db") {
                Ok(())
            } else {
                Err(proxy_modes(s))
            }
        })
        .await;
        let client = login(site2_proxies.clone(), &password).await.expect("login at site 2");
        let probe = tandem_config::ConfigObject::new(tandem_config::ObjectType::Skill, 0, PROBE, 1);
        client
            .create(&probe, None)
            .await
            .expect("create the probe skill")
            .last_seq
    });

    info!("--- client load: a writer at each site (through its proxies), a reader and a subscriber at site 2");
    let history = Arc::new(History::new());
    let mut load1 = Load::start(
        LoadSpec {
            host: topo.host("s1-cs1"),
            servers: site1_proxies.clone(),
            password: password.clone(),
            writer: Some(("site1".into(), "np-s1-".into())),
            reader: None,
            subscribe_after: None,
        },
        history.clone(),
    );
    let mut load2 = Load::start(
        LoadSpec {
            host: topo.host("s2-cs1"),
            servers: site2_proxies.clone(),
            password: password.clone(),
            writer: Some(("site2".into(), "np-s2-".into())),
            reader: Some(PROBE.into()),
            subscribe_after: None,
        },
        history.clone(),
    );
    let mut subscriber = Load::start(
        LoadSpec {
            host: topo.host("s2-cs2"),
            servers: site2_proxies.clone(),
            password: password.clone(),
            writer: None,
            reader: None,
            subscribe_after: Some(start_seq),
        },
        history.clone(),
    );
    topo.router(async {
        wait_acks(&history, "site1", Duration::ZERO, 10, "site 1's writer is acknowledged").await;
        wait_acks(&history, "site2", Duration::ZERO, 10, "site 2's writer is acknowledged").await;
    });

    info!("--- partition site1 | site2 (site 3 still reaches both)");
    let term_before = primary_term(&topo.status());
    history.note(format!("partition site1 | site2 (term {term_before})"));
    let partitioned_at = history.elapsed();
    topo.lab.partition("site1", "site2").expect("partition");

    // Sampled by every status probe of the partition: one primary, at site 1; site 2 dormant.
    let one_primary = |s: &Status| -> Result<(), String> {
        let s1 = s.replica("s1-db/db").map(|r| r.role.clone()).unwrap_or_default();
        let s2 = s.replica("s2-db/db").map(|r| r.role.clone()).unwrap_or_default();
        assert_ne!(
            s2,
            "primary",
            "s2-db became primary during the partition:\n{}",
            s.table()
        );
        assert_eq!(
            s1,
            "primary",
            "s1-db lost its primacy during the partition:\n{}",
            s.table()
        );
        for master in &site2_masters {
            assert!(
                !topo.launcher.is_running(master),
                "{} started: nobody activates site 2 on a WAN partition\n{}",
                master.name,
                s.table()
            );
        }
        Ok(())
    };
    let limited_at = topo.router(async {
        wait_status(&topo, "site 2's proxies in limited mode", EVENT_TIMEOUT, |s| {
            one_primary(s)?;
            let limited = s.proxies.iter().filter(|p| p.site == "site2").all(|p| p.mode == "limited");
            if limited {
                Ok(())
            } else {
                Err(proxy_modes(s))
            }
        })
        .await;
        let limited_at = history.elapsed();
        history.note("site 2's proxies in limited mode");
        wait_status(&topo, "s2-db demoted from the sync set by s1-db", EVENT_TIMEOUT, |s| {
            one_primary(s)?;
            let health = s.replica("s2-db/db").and_then(|r| r.health.clone());
            if health.as_deref() == Some("demoted") {
                Ok(())
            } else {
                Err(format!("s2-db health in the primary's view: {health:?}"))
            }
        })
        .await;
        history.note("s2-db demoted");
        wait_acks(&history, "site1", partitioned_at, 10, "site 1's writes acknowledged during the partition").await;
        must_eventually("site 2's writes refused with limited-mode", EVENT_TIMEOUT, || async {
            let refused = ops_of(&history, "site2")
                .iter()
                .filter(|op| op.invoked > limited_at)
                .filter(|op| matches!(&op.outcome, Outcome::Fail { reason } if reason.starts_with(error_kind::LIMITED_MODE)))
                .count();
            if refused >= 3 {
                Ok(())
            } else {
                Err(format!("{refused} refused with limited-mode; {:?}", ops_of(&history, "site2").last()))
            }
        })
        .await;
        limited_at
    });
    for op in ops_of(&history, "site2").iter().filter(|op| op.invoked > limited_at) {
        match &op.outcome {
            Outcome::Fail { reason } if reason.starts_with(error_kind::LIMITED_MODE) => {}
            Outcome::Pending => {}
            other => panic!("a write at site 2 in limited mode must be refused with limited-mode: {op} ({other:?})"),
        }
    }

    info!("--- as a client at site 2 during the partition: a new login, reads answered");
    topo.on_host("s2-cs2", async {
        let client = login(site2_proxies.clone(), &password)
            .await
            .expect("a login at site 2 during the partition");
        let probe = client
            .get_by_name(tandem_config::ObjectType::Skill, 1, PROBE)
            .await
            .expect("a read at site 2 during the partition");
        assert_eq!(probe.name, PROBE);
        let held = skills_held(&client).await;
        assert!(held.contains_key(PROBE), "a query at site 2 during the partition");
        let refused = client
            .create(
                &tandem_config::ConfigObject::new(tandem_config::ObjectType::Skill, 0, "np-refused", 1),
                None,
            )
            .await
            .expect_err("a write at site 2 during the partition");
        assert!(
            refused.is(error_kind::LIMITED_MODE),
            "refused with limited-mode: {refused}"
        );
    });
    let status = topo.status();
    one_primary(&status).expect("one primary");

    info!("--- heal");
    history.note("heal");
    let healed_at = history.elapsed();
    topo.lab.heal().expect("heal");
    topo.router(async {
        wait_status(&topo, "site 2's proxies back to normal", EVENT_TIMEOUT, |s| {
            let normal = s.proxies.iter().all(|p| p.mode == "normal");
            if normal {
                Ok(())
            } else {
                Err(proxy_modes(s))
            }
        })
        .await;
        history.note("site 2's proxies back to normal");
        wait_status(&topo, "s2-db caught up and back in the sync set", EVENT_TIMEOUT, |s| {
            let s2 = s.replica("s2-db/db").ok_or_else(|| "no s2-db".to_owned())?;
            let caught_up = s2.lag_entries == Some(0) && s2.health.as_deref() == Some("ok");
            if caught_up && s.db_primary.as_deref() == Some("s1-db/db") {
                Ok(())
            } else {
                Err(format!(
                    "s2-db lag {:?} health {:?}; primary {:?}",
                    s2.lag_entries, s2.health, s.db_primary
                ))
            }
        })
        .await;
        wait_acks(
            &history,
            "site2",
            healed_at,
            5,
            "site 2's writes acknowledged after the heal",
        )
        .await;
    });
    history.note("site 2 writes again");
    // s2-db heard no primary for the whole partition, but the witness did: its pre-votes were
    // refused, so it raised no term, and the heal deposed nobody.
    let status = topo.status();
    assert_eq!(
        primary_term(&status),
        term_before,
        "the partition or the heal caused an election:\n{}",
        status.table()
    );
    for master in &site2_masters {
        assert!(!topo.launcher.is_running(master), "{} never runs", master.name);
    }

    info!("--- stop the load; check the history against the audit trail");
    load1.stop();
    load2.stop();
    let site1_masters = topo.addrs(Role::Master, "site1");
    let (final_state, held, final_seq) = topo.router(async {
        let client = login(site1_masters.clone(), &password)
            .await
            .expect("login on the masters");
        let (final_state, _) = created_skills(&client, "np-s").await;
        let held = skills_held(&client).await;
        let final_seq = must_eventually("the primary master's last number", EVENT_TIMEOUT, || async {
            for (_, answer) in client.status_all().await {
                if let Ok(s) = answer {
                    if s.role == "primary" {
                        return Ok(s.last_seq);
                    }
                }
            }
            Err("no primary master".to_owned())
        })
        .await;
        must_eventually("the subscriber at site 2 has every change", EVENT_TIMEOUT, || async {
            let last = subscriber.seen.last_change_seq();
            if last >= final_seq {
                Ok(())
            } else {
                Err(format!("covered up to {last} of {final_seq}"))
            }
        })
        .await;
        (final_state, held, final_seq)
    });
    subscriber.stop();
    info!("outcomes of the writes:\n{}", outcomes(&history));
    let summary = history.must_check_writes(&final_state);
    info!(%summary, "history checked");
    for op in history.acknowledged() {
        assert_eq!(held.get(&op.key), Some(&1), "the configuration holds {op} exactly once");
    }
    let refused_limited = ops_of(&history, "site2")
        .iter()
        .filter(|op| matches!(&op.outcome, Outcome::Fail { reason } if reason.starts_with(error_kind::LIMITED_MODE)))
        .count();
    assert!(
        refused_limited >= 3,
        "site 2's writes were refused during the partition"
    );
    assert!(
        acks_after(&history, "site1", partitioned_at) >= 10,
        "site 1 kept writing during the partition"
    );
    // Site 1's writer stalled at most for the sync timeout (plus scheduling on a loaded machine).
    let mut completions: Vec<Duration> = ops_of(&history, "site1")
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok { .. }))
        .filter_map(|op| op.completed)
        .filter(|at| *at > partitioned_at.saturating_sub(Duration::from_secs(1)) && *at < healed_at)
        .collect();
    completions.sort();
    let stall = completions.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let first_stall = completions
        .iter()
        .find(|at| **at > partitioned_at)
        .map_or(Duration::MAX, |at| *at - partitioned_at);
    info!(
        ?stall,
        ?first_stall,
        "site 1's longest wait for an acknowledgement during the partition"
    );
    assert!(
        stall <= SYNC_TIMEOUT + Duration::from_secs(3) && first_stall <= SYNC_TIMEOUT + Duration::from_secs(3),
        "site 1's writes stalled {stall:?} (first acknowledgement after the partition: {first_stall:?})"
    );

    let reads = load2.reads();
    let during: Vec<_> = reads.iter().filter(|r| r.at > limited_at && r.at < healed_at).collect();
    let failed: Vec<_> = reads.iter().filter(|r| r.error.is_some()).collect();
    assert!(!during.is_empty(), "site 2's reader read during limited mode");
    assert!(failed.is_empty(), "every read at site 2 answered; failed: {failed:?}");

    // A write left in flight when its writer stopped may land after `final_seq` was read: the
    // subscriber must have every number up to the last it saw, and at least up to `final_seq`.
    let changes = subscriber.seen.changes();
    assert_dense(
        &changes,
        start_seq,
        final_seq.max(subscriber.seen.last_change_seq()),
        &format!(
            "errors: {:?}; modes: {:?}",
            subscriber.seen.errors(),
            subscriber.seen.proxy_modes()
        ),
    );
    let mut everyone = site1_masters.clone();
    everyone.extend(site1_proxies.iter().cloned());
    everyone.extend(site2_proxies.iter().cloned());
    topo.router(must_serve_everywhere(&everyone, &password, &held, &in_doubt(&history)));
    info!(
        elapsed_s = began.elapsed().as_secs_f64(),
        notifications = changes.len(),
        modes = ?subscriber.seen.proxy_modes(),
        counts = ?history.counts(),
        "done"
    );
}

/// Site 2 is cut off from site 1 *and* from the witness, and an operator at site 2 — who sees
/// nothing of site 1 from there — activates site 2 with `--force`: a forced recovery makes s2-db
/// the only voter of a new epoch and site 2's master pair starts on it.
///
/// Why site 2 alone, and not site 1 | site 2 with the witness still reaching both: then the
/// witness would go on telling site 2 that the primary is s1-db (its status names it), so an
/// operator at site 2 would see evidence that site 1 lives, and site 2's replica could even be
/// re-fenced or out-voted through the witness. Site 2 alone is the case where everything an
/// operator at site 2 can see says "site 1 is gone" — the case in which `--force` is tempting —
/// while site 1 in fact keeps its quorum with the witness.
///
/// The outcome, which this test documents: for the duration of the partition there are two
/// writers, each in its own epoch — site 1's masters keep committing on s1-db (epoch N, with the
/// witness, once s2-db is demoted from the sync set), site 2's masters on s2-db (epoch N+1). The
/// split brain ends at the heal: s1-db meets s2-db, learns of epoch N+1 and is fenced, and from
/// then on site 1's masters cannot write. Rejoining s1-db quarantines its post-partition entries,
/// never merging them: every write site 1 acknowledged during the partition is absent from the
/// final configuration (the price of `--force`), and every write site 2 acknowledged after the
/// activation is present exactly once. The bound the forced recovery prints ("at most N
/// acknowledged changes lost") counts only what s2-db lacked of what it last heard from s1-db; it
/// cannot count what the living old primary acknowledges after demoting s2-db, which here is every
/// write site 1 acknowledged during the partition.
///
/// Last, every master and proxy of both sites must serve exactly that final configuration: a
/// server that followed the superseded epoch must not go on serving the quarantined writes.
#[test]
fn t20_forced_activation_of_an_isolated_site2_while_site1_lives_is_fenced_at_the_heal() {
    if !tandem_netlab::require_root(
        "netns_partition::t20_forced_activation_of_an_isolated_site2_while_site1_lives_is_fenced_at_the_heal",
    ) {
        return;
    }
    init_tracing();
    let _serial = serial();
    let began = Instant::now();

    info!("--- the two-site example in namespaces, site 1 active");
    let topo = Topology::up();
    let password = topo.password();
    let site1_masters = topo.addrs(Role::Master, "site1");
    let site2_masters = topo.addrs(Role::Master, "site2");
    let site2_proxies = topo.addrs(Role::Proxy, "site2");
    let s1_db = topo.component("s1-db", Role::Db);
    let s2_db = topo.component("s2-db", Role::Db);
    let witness = topo.component("witness", Role::Db);
    let start_seq = topo.router(async {
        wait_status(&topo, "every proxy in normal mode", EVENT_TIMEOUT, |s| {
            let all = s.proxies.iter().all(|p| p.mode == "normal");
            if all && s.db_primary.as_deref() == Some("s1-db/db") {
                Ok(())
            } else {
                Err(proxy_modes(s))
            }
        })
        .await;
        let client = login(site2_proxies.clone(), &password).await.expect("login at site 2");
        let probe = tandem_config::ConfigObject::new(tandem_config::ObjectType::Skill, 0, PROBE, 1);
        client
            .create(&probe, None)
            .await
            .expect("create the probe skill")
            .last_seq
    });
    let old_epoch = topo.status().epoch;

    info!("--- client load: site 1 writes through its masters, site 2 through its proxies; a subscriber at site 2");
    // Site 1's writer talks to site 1's masters directly, so every acknowledgement it gets is
    // the old epoch's writer's.
    let site1 = Arc::new(History::new());
    let site2 = Arc::new(History::new());
    let mut load1 = Load::start(
        LoadSpec {
            host: topo.host("s1-cs1"),
            servers: site1_masters.clone(),
            password: password.clone(),
            writer: Some(("site1".into(), "nf-s1-".into())),
            reader: None,
            subscribe_after: None,
        },
        site1.clone(),
    );
    let mut load2 = Load::start(
        LoadSpec {
            host: topo.host("s2-cs1"),
            servers: site2_proxies.clone(),
            password: password.clone(),
            writer: Some(("site2".into(), "nf-s2-".into())),
            reader: Some(PROBE.into()),
            subscribe_after: None,
        },
        site2.clone(),
    );
    let mut subscriber = Load::start(
        LoadSpec {
            host: topo.host("s2-cs2"),
            servers: site2_proxies.clone(),
            password: password.clone(),
            writer: None,
            reader: None,
            subscribe_after: Some(start_seq),
        },
        site2.clone(),
    );
    topo.router(async {
        wait_acks(&site1, "site1", Duration::ZERO, 10, "site 1's writer is acknowledged").await;
        wait_acks(&site2, "site2", Duration::ZERO, 10, "site 2's writer is acknowledged").await;
    });

    info!("--- partition: site 2 alone (site1 | site2, site2 | site3)");
    // Each history has its own clock: keep the time of every event on both.
    let partitioned = (site1.elapsed(), site2.elapsed());
    site1.note("partition: site 2 alone");
    site2.note("partition: site 2 alone");
    topo.lab.partition("site1", "site2").expect("partition site1 | site2");
    topo.lab.partition("site2", "site3").expect("partition site2 | site3");
    // The cut is in effect only from here (on site 1's clock): a write invoked between
    // `partitioned` and `cut` may have reached site 2 (the rules take milliseconds to apply).
    let cut = site1.elapsed();
    topo.router(async {
        wait_status(&topo, "site 2's proxies in limited mode", EVENT_TIMEOUT, |s| {
            let limited = s
                .proxies
                .iter()
                .filter(|p| p.site == "site2")
                .all(|p| p.mode == "limited");
            if limited {
                Ok(())
            } else {
                Err(proxy_modes(s))
            }
        })
        .await
    });

    info!("--- the operator at site 2: tandem dr activate site2 --force, run from s2-cs1");
    let steps = std::sync::Mutex::new(Vec::new());
    let (activated, report) = topo.on_host("s2-cs1", async {
        let mut operator = Operator::new(&topo.launcher, |step| {
            info!(at_ms = step.at_ms, "activate: {}", step.what);
            steps.lock().unwrap_or_else(|p| p.into_inner()).push(step.what.clone());
        });
        let activated = operator.activate("site2", true).await;
        (activated, operator.into_report())
    });
    let steps = steps.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = activated {
        panic!(
            "the forced activation of site 2 failed: {e}\nsteps: {steps:#?}\n{}",
            topo.status().table()
        );
    }
    assert!(
        report.possibly_lost.is_some(),
        "a forced recovery happened and said what it may lose: {steps:#?}"
    );
    let activated = (site1.elapsed(), site2.elapsed());
    site1.note("site 2 activated with --force");
    site2.note("site 2 activated with --force");

    info!("--- the split brain: two primaries, two writers, each in its own epoch");
    let new_epoch = topo.router(async {
        let status = wait_status(&topo, "two primaries in two epochs", EVENT_TIMEOUT, |s| {
            let s1 = s.replica("s1-db/db").ok_or_else(|| "no s1-db".to_owned())?;
            let s2 = s.replica("s2-db/db").ok_or_else(|| "no s2-db".to_owned())?;
            let split = s1.role == "primary" && s1.epoch == old_epoch && s2.role == "primary" && s2.epoch > old_epoch;
            let site2_normal = s
                .proxies
                .iter()
                .filter(|p| p.site == "site2")
                .all(|p| p.mode == "normal" && site2_masters.contains(&p.master));
            if split && site2_normal {
                Ok(s.clone())
            } else {
                Err(format!(
                    "s1-db {} epoch {}; s2-db {} epoch {}; {}",
                    s1.role,
                    s1.epoch,
                    s2.role,
                    s2.epoch,
                    proxy_modes(s)
                ))
            }
        })
        .await;
        wait_acks(
            &site1,
            "site1",
            activated.0,
            5,
            "site 1 (epoch N) writes after the activation",
        )
        .await;
        wait_acks(
            &site2,
            "site2",
            activated.1,
            5,
            "site 2 (epoch N+1) writes after the activation",
        )
        .await;
        status.epoch
    });
    info!(old_epoch, new_epoch, "two writers");

    info!("--- heal: s1-db meets epoch {new_epoch} and is fenced; site 1's masters can no longer write");
    site1.note("heal");
    site2.note("heal");
    topo.lab.heal().expect("heal");
    topo.router(async {
        wait_status(&topo, "s1-db fenced by the newer epoch", EVENT_TIMEOUT, |s| {
            let s1 = s.replica("s1-db/db").ok_or_else(|| "no s1-db".to_owned())?;
            if s1.role == "fenced" {
                Ok(())
            } else {
                Err(format!("s1-db is {} in epoch {}", s1.role, s1.epoch))
            }
        })
        .await
    });
    let fenced = site1.elapsed();
    site1.note("s1-db fenced");
    // From the management network: site 1's masters refuse every write from now on.
    let late = History::new();
    topo.router(async {
        let client = conf_client(site1_masters.clone(), Duration::from_secs(4));
        let token = login(site1_masters.clone(), &password)
            .await
            .ok()
            .and_then(|c| c.token());
        if let Some(token) = token {
            client.set_token(&token);
        }
        let names: Vec<String> = (0..3).map(|i| format!("nf-late-{i}")).collect();
        let writes = names
            .iter()
            .map(|name| create_skill(&late, &client, "site1-late", name));
        for outcome in futures::future::join_all(writes).await {
            assert!(
                !matches!(outcome, Outcome::Ok { .. }),
                "a write through site 1's masters after s1-db was fenced was acknowledged: {outcome:?}"
            );
        }
    });
    info!("writes through site 1's masters after the fence:\n{}", outcomes(&late));

    info!("--- rejoin s1-db and the witness to epoch {new_epoch}: the old epoch's tail is quarantined");
    let rejoined = topo.router(async {
        let client = tandem_dr::status::db_client(topo.launcher.plan(), Duration::from_secs(60)).expect("db client");
        let s1 = client
            .rejoin(&s1_db.addr, Some(&s2_db.addr), None)
            .await
            .expect("rejoin s1-db");
        let w = client
            .rejoin(&witness.addr, Some(&s2_db.addr), None)
            .await
            .expect("rejoin the witness");
        info!(?s1, ?w, "rejoined");
        wait_status(&topo, "s1-db caught up in the new epoch", EVENT_TIMEOUT, |s| {
            let r = s.replica("s1-db/db").ok_or_else(|| "no s1-db".to_owned())?;
            let back = r.role == "secondary" && r.epoch == new_epoch && r.lag_entries == Some(0);
            if back && s.db_primary.as_deref() == Some("s2-db/db") {
                Ok(())
            } else {
                Err(format!("s1-db {} epoch {} lag {:?}", r.role, r.epoch, r.lag_entries))
            }
        })
        .await;
        s1
    });
    assert_eq!(rejoined.epoch, new_epoch);
    assert!(
        rejoined.divergent_entries > 0,
        "s1-db's entries of the partition are quarantined: {rejoined:?}"
    );
    let quarantined = std::fs::read_dir(&rejoined.quarantine_dir)
        .unwrap_or_else(|e| panic!("the quarantine directory {}: {e}", rejoined.quarantine_dir))
        .count();
    assert!(
        quarantined > 0,
        "the quarantine directory {} is empty",
        rejoined.quarantine_dir
    );
    topo.router(wait_acks(
        &site2,
        "site2",
        activated.1,
        10,
        "site 2 writes on after the rejoin",
    ));

    info!("--- stop the load; check both histories against the final configuration (site 2's masters)");
    load1.stop();
    load2.stop();
    let (final_state, held, final_seq) = topo.router(async {
        let client = login(site2_masters.clone(), &password)
            .await
            .expect("login on site 2's masters");
        let (final_state, _) = created_skills(&client, "nf-").await;
        let held = skills_held(&client).await;
        let final_seq = must_eventually("site 2's primary master's last number", EVENT_TIMEOUT, || async {
            for (_, answer) in client.status_all().await {
                if let Ok(s) = answer {
                    if s.role == "primary" {
                        return Ok(s.last_seq);
                    }
                }
            }
            Err("no primary master at site 2".to_owned())
        })
        .await;
        must_eventually("the subscriber at site 2 has every change", EVENT_TIMEOUT, || async {
            let last = subscriber.seen.last_change_seq();
            if last >= final_seq {
                Ok(())
            } else {
                Err(format!("covered up to {last} of {final_seq}"))
            }
        })
        .await;
        (final_state, held, final_seq)
    });
    subscriber.stop();

    // Site 2: one history across the partition, the activation and the heal.
    let site2_state: Vec<_> = final_state
        .iter()
        .filter(|kv| kv.key.starts_with("nf-s2-"))
        .cloned()
        .collect();
    info!("outcomes of site 1's writes:\n{}", outcomes(&site1));
    info!("outcomes of site 2's writes:\n{}", outcomes(&site2));
    let summary = site2.must_check_writes(&site2_state);
    info!(%summary, "site 2's history checked");
    assert!(
        acks_after(&site2, "site2", activated.1) >= 10,
        "site 2 wrote after the activation"
    );
    for op in site2.acknowledged() {
        assert_eq!(held.get(&op.key), Some(&1), "the configuration holds {op} exactly once");
    }

    // Site 1: what it acknowledged before the partition survives; what it acknowledged in the
    // old epoch during the partition is gone; nothing refused is there.
    let site1_ops = ops_of(&site1, "site1");
    let present = |name: &str| final_state.iter().find(|kv| kv.key == name).map(|kv| kv.version);
    let mut lost_by_force = 0;
    for op in &site1_ops {
        let found = present(&op.key);
        assert!(found.unwrap_or(0) <= 1, "{op} present {found:?} times");
        let acknowledged = matches!(op.outcome, Outcome::Ok { .. });
        let before = op.completed.is_some_and(|at| at < partitioned.0);
        if acknowledged && before {
            assert_eq!(found, Some(1), "acknowledged before the partition, must survive: {op}");
            assert_eq!(held.get(&op.key), Some(&1), "held once: {op}");
        } else if acknowledged && op.invoked > cut {
            assert_eq!(
                found, None,
                "acknowledged by the old epoch during the partition, must be absent: {op}"
            );
            assert_eq!(held.get(&op.key), None, "not held: {op}");
            lost_by_force += 1;
        } else if matches!(op.outcome, Outcome::Fail { .. }) {
            assert_eq!(found, None, "refused, must be absent: {op}");
        }
        if op.invoked > fenced {
            assert!(
                !acknowledged,
                "acknowledged by site 1's masters after s1-db was fenced: {op}"
            );
        }
    }
    for kv in final_state.iter().filter(|kv| kv.key.starts_with("nf-s1-")) {
        let op = site1_ops.iter().find(|op| op.key == kv.key);
        assert!(
            op.is_some_and(|op| op.invoked < cut),
            "site 1's {} is in the final configuration but was not sent before the partition: {op:?}",
            kv.key
        );
    }
    assert!(
        lost_by_force > 0,
        "site 1 acknowledged writes in the old epoch during the partition (the split brain of --force)"
    );
    for op in late.snapshot() {
        assert_eq!(present(&op.key), None, "refused after the fence, must be absent: {op}");
    }

    let reads = load2.reads();
    let failed: Vec<_> = reads.iter().filter(|r| r.error.is_some()).collect();
    assert!(failed.is_empty(), "every read at site 2 answered; failed: {failed:?}");
    // A write left in flight when its writer stopped may land after `final_seq` was read: the
    // subscriber must have every number up to the last it saw, and at least up to `final_seq`.
    let changes = subscriber.seen.changes();
    assert_dense(
        &changes,
        start_seq,
        final_seq.max(subscriber.seen.last_change_seq()),
        &format!(
            "errors: {:?}; modes: {:?}",
            subscriber.seen.errors(),
            subscriber.seen.proxy_modes()
        ),
    );
    info!("--- every master and proxy, at both sites, serves that final configuration");
    // Last: a server that followed the superseded epoch must not go on serving its writes.
    let mut everyone = topo.addrs(Role::Master, "site1");
    everyone.extend(site2_masters.iter().cloned());
    everyone.extend(topo.addrs(Role::Proxy, "site1"));
    everyone.extend(site2_proxies.iter().cloned());
    let mut doubtful = in_doubt(&site1);
    doubtful.extend(in_doubt(&site2));
    topo.router(must_serve_everywhere(&everyone, &password, &held, &doubtful));
    info!(
        elapsed_s = began.elapsed().as_secs_f64(),
        lost_by_force,
        site1 = ?site1.counts(),
        site2 = ?site2.counts(),
        possibly_lost = ?report.possibly_lost,
        "done"
    );
}
