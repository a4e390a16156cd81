//! The operator's commands on a running topology: `activate`, `deactivate`, `failback`, and
//! the automatic activation of a dormant site (off by default, as in the seed).
//!
//! Activating a site is two moves, in this order:
//! 1. the database primary goes to one of its data replicas — a planned switchover while the
//!    replica set has a primary; when it has none (the quorum is gone), a forced recovery, only
//!    when the operator said `--force`, with the possible loss printed before and after;
//! 2. its master pair is started, the masters of other sites that still answer are stopped
//!    gracefully (which frees the lease at once), and the command waits until a master of the
//!    site holds the lease. Proxies everywhere find that master by themselves.

use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_proto::db::StatusResponse;
use tandem_topology::Role;

use crate::launch::Launcher;
use crate::plan::Component;
use crate::status::{self, db_client, Status};
use crate::DrError;

/// The file in the run directory naming the active site.
pub const ACTIVE_SITE_FILE: &str = "active-site";
/// How long the replica set may take to elect a primary before the quorum counts as lost.
const ELECTION_WAIT: Duration = Duration::from_secs(4);
/// How long a switchover, a recovery or a master takeover may take.
const MOVE_DEADLINE: Duration = Duration::from_secs(30);
/// How long rejoining replicas may take to catch up.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(100);

/// One thing that happened, at a time since the command began.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub at_ms: u64,
    pub what: String,
}

/// What a command did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub steps: Vec<Step>,
    /// A forced recovery's upper bound on acknowledged changes lost…
    pub possibly_lost: Option<u64>,
    /// …and whether it is a bound at all (not when the old primary may have gone on alone).
    pub loss_bounded: Option<bool>,
    /// Milliseconds from the command to a master of the site holding the lease.
    pub master_serving_ms: Option<u64>,
}

/// Runs commands against the topology of a launcher, reporting each step as it happens.
pub struct Operator<'a> {
    launcher: &'a Launcher,
    started: Instant,
    report: Report,
    progress: Box<dyn Fn(&Step) + Send + Sync + 'a>,
}

impl<'a> Operator<'a> {
    pub fn new(launcher: &'a Launcher, progress: impl Fn(&Step) + Send + Sync + 'a) -> Operator<'a> {
        Operator {
            launcher,
            started: Instant::now(),
            report: Report::default(),
            progress: Box::new(progress),
        }
    }

    pub fn into_report(self) -> Report {
        self.report
    }

    fn note(&mut self, what: impl Into<String>) {
        let step = Step {
            at_ms: self.started.elapsed().as_millis() as u64,
            what: what.into(),
        };
        (self.progress)(&step);
        tracing::debug!(at_ms = step.at_ms, "{}", step.what);
        self.report.steps.push(step);
    }

    fn masters_of(&self, site: &str) -> Result<Vec<Component>, DrError> {
        let plan = self.launcher.plan();
        if plan.site(site).is_none() {
            let known: Vec<&str> = plan.sites.iter().map(|s| s.name.as_str()).collect();
            return Err(DrError::Refused(format!(
                "no site `{site}` in topology {} (sites: {})",
                plan.topology,
                known.join(", ")
            )));
        }
        let masters: Vec<Component> = plan.with_role(Role::Master, Some(site)).cloned().collect();
        if masters.is_empty() {
            return Err(DrError::Refused(format!(
                "site `{site}` has no master pair (no host with the `master` role)"
            )));
        }
        Ok(masters)
    }

    /// Makes `site` the active site (see the module documentation).
    pub async fn activate(&mut self, site: &str, force: bool) -> Result<(), DrError> {
        let masters = self.masters_of(site)?;
        self.note(format!("activating {site}"));
        self.move_db_primary(site, force).await?;
        self.swap_masters(site, &masters).await?;
        let run_dir = &self.launcher.plan().run_dir;
        crate::write_atomically(&run_dir.join(ACTIVE_SITE_FILE), format!("{site}\n").as_bytes())?;
        self.note(format!("{site} is the active site"));
        Ok(())
    }

    /// Stops the master pair of `site` (gracefully: the lease is released at once).
    pub async fn deactivate(&mut self, site: &str) -> Result<(), DrError> {
        let masters = self.masters_of(site)?;
        for master in &masters {
            if self.launcher.stop(master).await? {
                self.note(format!("stopped master {}", master.name));
            }
        }
        self.note(format!("the master pair of {site} is dormant"));
        Ok(())
    }

    /// Brings `site` back as the active site after a disaster: starts its database replicas and
    /// proxies, rejoins every replica of a superseded epoch, waits until the site's replicas
    /// have caught up, then activates it (planned switchover, master pairs swapped).
    pub async fn failback(&mut self, site: &str) -> Result<(), DrError> {
        self.masters_of(site)?;
        let plan = self.launcher.plan().clone();
        let returning: Vec<&Component> = plan
            .components
            .iter()
            .filter(|c| c.site == site && c.role != Role::Master && !self.launcher.is_running(c))
            .collect();
        for component in &returning {
            self.launcher.start(component)?;
        }
        for component in &returning {
            self.launcher.wait_ready(component).await?;
            self.note(format!("started {}", component.name));
        }
        self.rejoin_superseded().await?;
        self.wait_caught_up(site).await?;
        self.activate(site, false).await
    }

    /// Rejoins every replica whose epoch is older than the primary's.
    async fn rejoin_superseded(&mut self) -> Result<(), DrError> {
        let plan = self.launcher.plan().clone();
        let client = db_client(&plan, MOVE_DEADLINE)?;
        let primary = self
            .wait_primary(MOVE_DEADLINE)
            .await?
            .ok_or_else(|| DrError::Refused("the replica set has no primary: activate a site first".to_owned()))?;
        for (addr, answer) in client.status_all().await {
            let Ok(status) = answer else { continue };
            if status.epoch >= primary.epoch {
                continue;
            }
            let name = component_name(&plan, &addr);
            self.note(format!(
                "rejoining {name} (epoch {}) to epoch {} under {}",
                status.epoch, primary.epoch, primary.addr
            ));
            let joined = client
                .rejoin(&addr, Some(&primary.addr), None)
                .await
                .map_err(|e| DrError::Db(format!("rejoin of {name}: {e}")))?;
            let quarantine = if joined.divergent_entries == 0 {
                "no divergent entries".to_owned()
            } else {
                format!(
                    "{} divergent entries ({}..={}) kept in {}",
                    joined.divergent_entries,
                    joined.first_divergent_index,
                    joined.last_divergent_index,
                    joined.quarantine_dir
                )
            };
            self.note(format!("{name} rejoined epoch {}: {quarantine}", joined.epoch));
        }
        Ok(())
    }

    /// Waits until every data replica at `site` is caught up in the primary's view.
    async fn wait_caught_up(&mut self, site: &str) -> Result<(), DrError> {
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        loop {
            let status = status::gather(self.launcher).await?;
            let behind: Vec<String> = status
                .replicas
                .iter()
                .filter(|r| r.site == site && r.kind != "witness" && r.lag_entries != Some(0))
                .map(|r| {
                    format!(
                        "{} ({} entries)",
                        r.name,
                        r.lag_entries.map_or("?".into(), |l| l.to_string())
                    )
                })
                .collect();
            if behind.is_empty() {
                self.note(format!("the replicas of {site} have caught up"));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DrError::Timeout(format!(
                    "replicas of {site} still behind after {CATCH_UP_DEADLINE:?}: {}",
                    behind.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The primary of the newest epoch, waiting up to `wait` for one to be elected.
    async fn wait_primary(&self, wait: Duration) -> Result<Option<StatusResponse>, DrError> {
        let deadline = Instant::now() + wait;
        let client = db_client(self.launcher.plan(), wait)?;
        loop {
            // Discovery does not wait for replicas that cannot be reached once one answers.
            if let Ok(addr) = client.discover().await {
                if let Ok(status) = client.status(&addr).await {
                    if status.role == "primary" {
                        return Ok(Some(status));
                    }
                }
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn move_db_primary(&mut self, site: &str, force: bool) -> Result<(), DrError> {
        let plan = self.launcher.plan().clone();
        let client = db_client(&plan, MOVE_DEADLINE)?;
        let on_site = |addr: &str| plan.with_role(Role::Db, Some(site)).any(|c| c.addr == addr);
        if let Some(primary) = self.wait_primary(ELECTION_WAIT).await? {
            let name = component_name(&plan, &primary.addr);
            if on_site(&primary.addr) {
                self.note(format!("database primary {name} is at {site} already"));
                return Ok(());
            }
            let answers = client.status_all().await;
            let target = answers
                .iter()
                .filter_map(|(addr, a)| a.as_ref().ok().map(|s| (addr, s)))
                .filter(|(addr, s)| on_site(addr) && s.epoch == primary.epoch && s.kind != "witness")
                .max_by_key(|(_, s)| (s.kind == "sync", s.last_log_index))
                .map(|(_, s)| s.clone())
                .ok_or_else(|| {
                    DrError::Refused(format!(
                        "no data replica of {site} answers in epoch {}: cannot move the primary there",
                        primary.epoch
                    ))
                })?;
            let target_name = component_name(&plan, &target.addr);
            if target.kind != "sync" {
                self.note(format!("making {target_name} a sync replica so it can be elected"));
                client
                    .set_kind(target.id, "sync")
                    .await
                    .map_err(|e| DrError::Db(format!("cannot make {target_name} sync: {e}")))?;
            }
            self.note(format!(
                "planned switchover of the database primary: {name} → {target_name}"
            ));
            client
                .switchover(target.id)
                .await
                .map_err(|e| DrError::Db(format!("switchover to {target_name}: {e}")))?;
            return self.wait_primary_is(&client, &target.addr, &target_name).await;
        }

        // No primary: the quorum is gone.
        let answers = client.status_all().await;
        let unreachable: Vec<String> = answers
            .iter()
            .filter(|(_, a)| a.is_err())
            .map(|(addr, _)| component_name(&plan, addr))
            .collect();
        let candidate = answers
            .iter()
            .filter_map(|(addr, a)| a.as_ref().ok().map(|s| (addr, s)))
            .filter(|(addr, s)| on_site(addr) && s.kind != "witness" && s.role != "fenced")
            .max_by_key(|(_, s)| (s.in_sync_set, s.epoch, s.last_log_index))
            .map(|(_, s)| s.clone())
            .ok_or_else(|| {
                DrError::Refused(format!(
                    "the replica set has no primary and no data replica of {site} answers: nothing to recover on"
                ))
            })?;
        let candidate_name = component_name(&plan, &candidate.addr);
        let (estimate, bounded) = loss_estimate(&candidate);
        if !force {
            return Err(DrError::Refused(format!(
                "the database has no primary: its quorum is lost (not answering: {}). \
                 `tandem dr activate {site} --force` would start a new epoch on {candidate_name}; {estimate}",
                if unreachable.is_empty() {
                    "none".to_owned()
                } else {
                    unreachable.join(", ")
                }
            )));
        }
        self.note(format!(
            "forced recovery on {candidate_name} (quorum lost; not answering: {}); {estimate}",
            unreachable.join(", ")
        ));
        let recovered = client
            .recover(&candidate.addr, true)
            .await
            .map_err(|e| DrError::Db(format!("forced recovery on {candidate_name}: {e}")))?;
        self.report.possibly_lost = Some(recovered.possibly_missing);
        self.report.loss_bounded = Some(bounded);
        self.note(format!(
            "epoch {} began after index {} on {candidate_name}: at most {} acknowledged changes lost ({})",
            recovered.epoch, recovered.start_index, recovered.possibly_missing, recovered.assessment
        ));
        self.wait_primary_is(&client, &candidate.addr, &candidate_name).await
    }

    async fn wait_primary_is(&mut self, client: &tandem_client::Client, addr: &str, name: &str) -> Result<(), DrError> {
        let deadline = Instant::now() + MOVE_DEADLINE;
        loop {
            if let Ok(status) = client.status(addr).await {
                if status.role == "primary" {
                    self.note(format!(
                        "database primary is {name} (epoch {}, term {})",
                        status.epoch, status.term
                    ));
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(DrError::Timeout(format!(
                    "{name} did not become primary within {MOVE_DEADLINE:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn swap_masters(&mut self, site: &str, masters: &[Component]) -> Result<(), DrError> {
        let launched = Instant::now();
        let to_start: Vec<&Component> = masters.iter().filter(|m| !self.launcher.is_running(m)).collect();
        for master in &to_start {
            self.launcher.start(master)?;
        }
        for master in &to_start {
            self.launcher.wait_ready(master).await?;
            self.note(format!("started master {}", master.name));
        }
        let plan = self.launcher.plan().clone();
        let others: Vec<&Component> = plan
            .with_role(Role::Master, None)
            .filter(|c| c.site != site && self.launcher.is_running(c))
            .collect();
        let client = status::conf_client(plan.master_endpoints(), status::ASK_TIMEOUT)?;
        for other in others {
            if client.status(&other.addr).await.is_ok() {
                self.launcher.stop(other).await?;
                self.note(format!("stopped master {} (its site is no longer active)", other.name));
            } else {
                self.note(format!(
                    "master {} does not answer: left alone (the lease keeps it from writing)",
                    other.name
                ));
            }
        }
        let deadline = Instant::now() + MOVE_DEADLINE;
        loop {
            for master in masters {
                if let Ok(status) = client.status(&master.addr).await {
                    if status.role == "primary" {
                        let ms = launched.elapsed().as_millis() as u64;
                        self.report.master_serving_ms = Some(ms);
                        self.note(format!("master {} holds the lease and serves writes", master.name));
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(DrError::Timeout(format!(
                    "no master of {site} took the lease within {MOVE_DEADLINE:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What a forced recovery on `candidate` may lose, in words, from what it last heard, and
/// whether that is a bound at all.
fn loss_estimate(candidate: &StatusResponse) -> (String, bool) {
    let silent_ms = candidate.heard_primary_ms_ago;
    if candidate.sync_mode == "available" && (silent_ms == 0 || silent_ms > candidate.sync_timeout_ms) {
        // Past the sync timeout, a primary still running elsewhere (cut off, not destroyed) may
        // have demoted this replica and gone on acknowledging writes it never saw.
        return (
            format!(
                "the loss is NOT bounded: it last heard the primary {} ago, longer than the sync timeout                  ({} ms); if that primary is still running (a partition, not a destroyed site), everything it                  acknowledged since is lost",
                if silent_ms == 0 { "never".to_owned() } else { format!("{silent_ms} ms") },
                candidate.sync_timeout_ms
            ),
            false,
        );
    }
    if candidate.in_sync_set && candidate.kind == "sync" {
        (
            "it was in the primary's sync set when last heard, within the sync timeout, so no acknowledged              change should be missing"
                .to_owned(),
            true,
        )
    } else {
        let behind = candidate
            .heard_primary_last_index
            .saturating_sub(candidate.last_log_index);
        (
            format!(
                "it was outside the sync set; up to {behind} entries the primary had {silent_ms} ms ago may be lost"
            ),
            true,
        )
    }
}

fn component_name(plan: &crate::Plan, addr: &str) -> String {
    plan.components
        .iter()
        .find(|c| c.addr == addr && c.role == Role::Db)
        .map_or(addr.to_owned(), |c| c.name.clone())
}

/// Decides when a dormant site activates by itself: the database primary has moved there
/// (through the witness), and no master has held the lease for `auto_activate_after_ms`.
#[derive(Default)]
pub struct AutoActivation {
    masterless_since: Option<Instant>,
}

impl AutoActivation {
    /// The site to activate now, if any, given the latest status.
    pub fn decide(&mut self, launcher: &Launcher, status: &Status) -> Option<String> {
        let plan = launcher.plan();
        if !plan.disaster.auto_activate || status.primary_master().is_some() {
            self.masterless_since = None;
            return None;
        }
        let since = *self.masterless_since.get_or_insert_with(Instant::now);
        let site = status.db_primary_site.clone()?;
        let has_masters = plan.with_role(Role::Master, Some(&site)).next().is_some();
        let stopped_here = plan
            .with_role(Role::Master, Some(&site))
            .all(|c| !launcher.is_running(c));
        let waited = since.elapsed() >= Duration::from_millis(plan.disaster.auto_activate_after_ms);
        (has_masters && stopped_here && waited).then_some(site)
    }
}
