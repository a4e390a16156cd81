//! `tandem dr status`: what every component of the plan says about itself, put together — which
//! site is active, the database primary and epoch, the lease-holding master, each proxy's mode,
//! each replica's lag.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_client::{Client, ClientOptions};
use tandem_confserv::client::{ClientConfig, ConfClient};
use tandem_topology::Role;

use crate::launch::Launcher;
use crate::plan::Plan;
use crate::DrError;

/// How long one status question may take: a silent component is reported as such, quickly.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub topology: String,
    /// The site of the master holding the lease (the site that writes), if any.
    pub active_site: Option<String>,
    /// The database primary (component name), its site, and the newest epoch seen.
    pub db_primary: Option<String>,
    pub db_primary_site: Option<String>,
    pub epoch: u64,
    pub replicas: Vec<ReplicaView>,
    pub masters: Vec<MasterView>,
    pub proxies: Vec<ProxyView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplicaView {
    pub name: String,
    pub site: String,
    pub addr: String,
    pub id: u64,
    pub kind: String,
    /// Whether its process runs on this machine.
    pub running: bool,
    /// primary | secondary | learner | candidate | fenced | … ; `unreachable` when it did not
    /// answer.
    pub role: String,
    pub epoch: u64,
    pub term: u64,
    pub commit_index: u64,
    /// The primary's view of its lag (absent when no primary answered).
    pub lag_entries: Option<u64>,
    pub lag_ms: Option<u64>,
    /// ok | lagging | demoted | unreachable (the primary's view).
    pub health: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MasterView {
    pub name: String,
    pub site: String,
    pub addr: String,
    pub running: bool,
    /// primary | backup | starting; `stopped` (not running here) or `unreachable`.
    pub role: String,
    pub lease_holder: String,
    pub last_seq: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyView {
    pub name: String,
    pub site: String,
    pub addr: String,
    pub running: bool,
    /// normal | limited | starting; `stopped` or `unreachable`.
    pub mode: String,
    pub reason: String,
    pub since_ms: u64,
    /// The master it is attached to.
    pub master: String,
    pub last_seq: u64,
    pub error: Option<String>,
}

impl Status {
    /// The replica view of a component.
    pub fn replica(&self, name: &str) -> Option<&ReplicaView> {
        self.replicas.iter().find(|r| r.name == name)
    }

    /// The lease-holding master, if one answered as primary.
    pub fn primary_master(&self) -> Option<&MasterView> {
        self.masters.iter().find(|m| m.role == "primary")
    }

    /// The table `tandem dr status` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let none = || "none".to_owned();
        let _ = writeln!(
            out,
            "topology {}: active site {}; database primary {} (site {}), epoch {}",
            self.topology,
            self.active_site.clone().unwrap_or_else(none),
            self.db_primary.clone().unwrap_or_else(none),
            self.db_primary_site.clone().unwrap_or_else(none),
            self.epoch
        );
        let _ = writeln!(
            out,
            "\n{:<20} {:<8} {:<22} {:<8} {:<11} {:>5} {:>8} {:>9} {:>8}  HEALTH",
            "DATABASE", "SITE", "ADDRESS", "KIND", "ROLE", "EPOCH", "COMMIT", "LAG", "LAG_MS"
        );
        for r in &self.replicas {
            let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<22} {:<8} {:<11} {:>5} {:>8} {:>9} {:>8}  {}",
                r.name,
                r.site,
                r.addr,
                r.kind,
                r.role,
                r.epoch,
                r.commit_index,
                opt(r.lag_entries),
                opt(r.lag_ms),
                r.health.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(
            out,
            "\n{:<20} {:<8} {:<22} {:<11} {:>8}  LEASE HOLDER",
            "MASTER", "SITE", "ADDRESS", "ROLE", "SEQ"
        );
        for m in &self.masters {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<22} {:<11} {:>8}  {}",
                m.name, m.site, m.addr, m.role, m.last_seq, m.lease_holder
            );
        }
        let _ = writeln!(
            out,
            "\n{:<20} {:<8} {:<22} {:<11} {:>8}  {:<22} REASON",
            "PROXY", "SITE", "ADDRESS", "MODE", "SEQ", "MASTER"
        );
        for p in &self.proxies {
            let _ = writeln!(
                out,
                "{:<20} {:<8} {:<22} {:<11} {:>8}  {:<22} {}",
                p.name, p.site, p.addr, p.mode, p.last_seq, p.master, p.reason
            );
        }
        out
    }
}

/// Asks every component of the plan, all at once.
pub async fn gather(launcher: &Launcher) -> Result<Status, DrError> {
    let plan = launcher.plan();
    let (replicas, (masters, proxies)) = tokio::join!(
        replicas(launcher),
        futures::future::join(servers(launcher, Role::Master), servers(launcher, Role::Proxy))
    );
    let mut replicas = replicas?;
    let primary = replicas
        .iter()
        .filter(|r| r.role == "primary")
        .max_by_key(|r| (r.epoch, r.term))
        .map(|r| (r.name.clone(), r.site.clone()));
    let epoch = replicas.iter().map(|r| r.epoch).max().unwrap_or(0);
    if primary.is_none() {
        for r in &mut replicas {
            r.lag_entries = None;
            r.lag_ms = None;
        }
    }
    let masters: Vec<MasterView> = masters?
        .into_iter()
        .map(|(c, running, answer)| match answer {
            Ok(s) => MasterView {
                name: c.name.clone(),
                site: c.site.clone(),
                addr: c.addr.clone(),
                running,
                role: s.role,
                lease_holder: s.lease_holder,
                last_seq: s.last_seq,
                error: None,
            },
            Err(e) => MasterView {
                name: c.name.clone(),
                site: c.site.clone(),
                addr: c.addr.clone(),
                running,
                role: if running { "unreachable" } else { "stopped" }.to_owned(),
                lease_holder: String::new(),
                last_seq: 0,
                error: Some(e),
            },
        })
        .collect();
    let proxies = proxies?
        .into_iter()
        .map(|(c, running, answer)| match answer {
            Ok(s) => ProxyView {
                name: c.name.clone(),
                site: c.site.clone(),
                addr: c.addr.clone(),
                running,
                mode: s.proxy_mode,
                reason: s.proxy_mode_reason,
                since_ms: s.proxy_mode_since_ms,
                master: s.master,
                last_seq: s.last_seq,
                error: None,
            },
            Err(e) => ProxyView {
                name: c.name.clone(),
                site: c.site.clone(),
                addr: c.addr.clone(),
                running,
                mode: if running { "unreachable" } else { "stopped" }.to_owned(),
                reason: String::new(),
                since_ms: 0,
                master: String::new(),
                last_seq: 0,
                error: Some(e),
            },
        })
        .collect();
    let active_site = masters.iter().find(|m| m.role == "primary").map(|m| m.site.clone());
    Ok(Status {
        topology: plan.topology.clone(),
        active_site,
        db_primary: primary.as_ref().map(|(name, _)| name.clone()),
        db_primary_site: primary.map(|(_, site)| site),
        epoch,
        replicas,
        masters,
        proxies,
    })
}

/// A database client for the plan's replicas, with `deadline` per operation.
pub fn db_client(plan: &Plan, deadline: Duration) -> Result<Client, DrError> {
    let options = ClientOptions {
        deadline,
        attempt_timeout: ASK_TIMEOUT.min(deadline),
        ..ClientOptions::default()
    };
    Client::new(plan.db_endpoints(), options).map_err(|e| DrError::Db(e.to_string()))
}

async fn replicas(launcher: &Launcher) -> Result<Vec<ReplicaView>, DrError> {
    let plan = launcher.plan();
    let client = db_client(plan, ASK_TIMEOUT)?;
    let answers = client.status_all().await;
    // The primary of the newest epoch gives the lag of everyone.
    let primary_view = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .filter(|s| s.role == "primary")
        .max_by_key(|s| (s.epoch, s.term))
        .cloned();
    let mut views = Vec::new();
    for component in plan.with_role(Role::Db, None) {
        let member = component.db;
        let answer = answers.iter().find(|(addr, _)| *addr == component.addr).map(|(_, a)| a);
        let running = launcher.is_running(component);
        let seen = primary_view
            .as_ref()
            .and_then(|p| p.replicas.iter().find(|r| r.addr == component.addr));
        let (lag_entries, lag_ms, health) = match seen {
            Some(r) => (Some(r.lag_entries), Some(r.lag_ms), Some(r.health.clone())),
            None => (None, None, None),
        };
        let view = match answer {
            Some(Ok(s)) => ReplicaView {
                name: component.name.clone(),
                site: component.site.clone(),
                addr: component.addr.clone(),
                id: s.id,
                kind: if s.kind.is_empty() {
                    member.map_or("-", |m| m.kind.as_str()).to_owned()
                } else {
                    s.kind.clone()
                },
                running,
                role: s.role.clone(),
                epoch: s.epoch,
                term: s.term,
                commit_index: s.commit_index,
                lag_entries,
                lag_ms,
                health,
                error: None,
            },
            other => ReplicaView {
                name: component.name.clone(),
                site: component.site.clone(),
                addr: component.addr.clone(),
                id: member.map_or(0, |m| m.id),
                kind: member.map_or("-", |m| m.kind.as_str()).to_owned(),
                running,
                role: if running { "unreachable" } else { "stopped" }.to_owned(),
                epoch: 0,
                term: 0,
                commit_index: 0,
                lag_entries,
                lag_ms,
                health,
                error: other.and_then(|a| a.as_ref().err()).map(|e| e.to_string()),
            },
        };
        views.push(view);
    }
    Ok(views)
}

type ServerAnswer<'a> = (
    &'a crate::plan::Component,
    bool,
    Result<tandem_proto::confserv::StatusResponse, String>,
);

async fn servers(launcher: &Launcher, role: Role) -> Result<Vec<ServerAnswer<'_>>, DrError> {
    let plan = launcher.plan();
    let components: Vec<_> = plan.with_role(role, None).collect();
    if components.is_empty() {
        return Ok(Vec::new());
    }
    let client = conf_client(components.iter().map(|c| c.addr.clone()).collect(), ASK_TIMEOUT)?;
    let asks = components.into_iter().map(|c| {
        let client = &client;
        async move {
            let running = launcher.is_running(c);
            if !running {
                // Nothing to ask: save the connection attempt.
                return (c, false, Err("not running".to_owned()));
            }
            let answer = client.status(&c.addr).await.map_err(|e| e.to_string());
            (c, running, answer)
        }
    });
    Ok(futures::future::join_all(asks).await)
}

/// A configuration client for `servers`, with `deadline` per operation.
pub fn conf_client(servers: Vec<String>, deadline: Duration) -> Result<ConfClient, DrError> {
    let config = ClientConfig {
        deadline,
        attempt_timeout: ASK_TIMEOUT.min(deadline),
        ..ClientConfig::default()
    };
    ConfClient::new(servers, config).map_err(|e| DrError::Conf(e.to_string()))
}

/// Waits until every proxy in `proxies` reports `mode` (and, when given, is attached to one of
/// `masters`); returns the latest time one of them says it entered that mode (ms since the
/// Unix epoch, by the proxy's own clock).
pub async fn wait_proxies(
    proxies: &[String],
    mode: &str,
    masters: Option<&[String]>,
    timeout: Duration,
) -> Result<u64, DrError> {
    let client = conf_client(proxies.to_vec(), ASK_TIMEOUT)?;
    let deadline = Instant::now() + timeout;
    loop {
        let answers = client.status_all().await;
        let pending: Vec<String> = answers
            .iter()
            .filter(|(_, a)| match a {
                Ok(s) => s.proxy_mode != mode || masters.is_some_and(|m| !m.contains(&s.master)),
                Err(_) => true,
            })
            .map(|(addr, a)| match a {
                Ok(s) => format!("{addr}: {} on {}", s.proxy_mode, s.master),
                Err(e) => format!("{addr}: {e}"),
            })
            .collect();
        if pending.is_empty() {
            let latest = answers
                .iter()
                .filter_map(|(_, a)| a.as_ref().ok())
                .map(|s| s.proxy_mode_since_ms)
                .max()
                .unwrap_or(0);
            return Ok(latest);
        }
        if Instant::now() > deadline {
            return Err(DrError::Timeout(format!(
                "proxies not in {mode} mode after {timeout:?}: {}",
                pending.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
