//! `tandem drill FILE`: the disaster, end to end, in network namespaces on this machine.
//!
//! The topology runs with each host in its own namespace and the sites joined through a router
//! namespace (WAN delay and loss from the file). A client load runs throughout — a writer through
//! each site's proxies, a reader and a subscriber at the dormant site — while the drill:
//! 1. destroys the live site at t0: kill -9 of every process there and every host's link cut;
//! 2. waits for the dormant site's proxies to enter limited mode;
//! 3. activates the dormant site (after an operator delay, or by itself with `auto_activate`);
//! 4. waits for every proxy there to be back in normal mode, attached to a master of the site;
//! 5. brings the destroyed site back and fails back to it.
//!
//! Then it checks the load's history: every acknowledged write present exactly once (RPO), no
//! write present that was never sent, the subscriber's numbers gapless and in order, and the
//! masters' commits never interleaved (one writer at a time). All figures go in a
//! [`DrillReport`].
//!
//! The drill itself acts from the router namespace (the operator's management network): it
//! reaches every site while the WAN is up, and nothing of a destroyed site.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_config::{ConfigObject, ObjectType};
use tandem_confserv::client::{ConfClient, SubscribeFilter};
use tandem_confserv::record::What;
use tandem_proto::confserv as pb;
use tandem_topology::Role;
use tokio::sync::watch;

use crate::launch::Launcher;
use crate::operate::{AutoActivation, Operator, Step};
use crate::status::{self, conf_client};
use crate::DrError;

/// How the drill runs.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// Between the dormant site's proxies entering limited mode and the activation command.
    pub operator_delay: Duration,
    /// Activate with `--force` (forced recovery when the database lost its quorum).
    pub force: bool,
    /// How long the load runs before t0, and after normal mode before failback.
    pub settle: Duration,
    /// Fail back to the destroyed site at the end.
    pub failback: bool,
}

impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            operator_delay: Duration::ZERO,
            force: false,
            settle: Duration::from_secs(2),
            failback: true,
        }
    }
}

/// The drill's figures. Times are milliseconds after t0 unless said otherwise.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DrillReport {
    pub destroyed_site: String,
    pub activated_site: String,
    /// Every step, at milliseconds after t0 (negative: before).
    pub timeline: Vec<TimedStep>,
    /// t0 → the last proxy of the activated site in limited mode.
    pub limited_mode_ms: Option<u64>,
    /// t0 → the activation command (or the automatic activation) began.
    pub activation_ms: Option<u64>,
    /// t0 → every proxy of the activated site in normal mode on a master there (RTO from t0).
    pub normal_mode_ms: Option<u64>,
    /// Activation → normal mode (RTO from activation).
    pub normal_after_activation_ms: Option<u64>,
    /// The bound a forced recovery printed, if one happened, and whether it is a bound.
    pub possibly_lost: Option<u64>,
    pub loss_bounded: Option<bool>,
    pub writes: WriteFigures,
    pub reads: ReadFigures,
    pub notifications: NotificationFigures,
    /// Whether two masters' commits interleaved (must be never).
    pub two_writers: bool,
    /// What the writer check saw, in words.
    pub writers_seen: Vec<String>,
    pub failback_done: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TimedStep {
    pub at_ms: i64,
    pub what: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct WriteFigures {
    pub invoked: u64,
    pub acknowledged: u64,
    pub refused: u64,
    pub unknown: u64,
    /// Acknowledged writes missing at the end (the RPO, in writes).
    pub lost: u64,
    /// Writes present more than once, or present but never sent.
    pub duplicated: u64,
    pub phantom: u64,
    /// The first few phantom writes: name and the refusal the client got.
    pub phantom_examples: Vec<String>,
    /// Refusals with `limited-mode`.
    pub refused_limited: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadFigures {
    pub tried: u64,
    pub answered: u64,
    /// The first few failures, in words.
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NotificationFigures {
    pub received: u64,
    pub gaps: u64,
    pub out_of_order: u64,
    pub reload_required: u64,
    pub mode_events: u64,
}

/// What the client load saw.
#[derive(Default)]
struct History {
    /// name → outcomes of the writes of that name: ok, refused (kind), unknown.
    writes: BTreeMap<String, Outcome>,
    reads: ReadFigures,
    notifications: NotificationFigures,
    last_seq: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Invoked,
    Ok,
    /// Refused, with the kind and message.
    Refused(String),
    Unknown,
}

type Shared = Arc<Mutex<History>>;

fn lock(history: &Shared) -> std::sync::MutexGuard<'_, History> {
    history.lock().unwrap_or_else(|p| p.into_inner())
}

/// The drill's clock: milliseconds relative to t0 once t0 is set.
struct Clock {
    started: Instant,
    t0: Option<Instant>,
}

impl Clock {
    fn at(&self) -> i64 {
        match self.t0 {
            Some(t0) => {
                let now = Instant::now();
                if now >= t0 {
                    now.duration_since(t0).as_millis() as i64
                } else {
                    -(t0.duration_since(now).as_millis() as i64)
                }
            }
            None => -(self.started.elapsed().as_millis() as i64),
        }
    }

    fn since_t0_ms(&self) -> u64 {
        self.t0.map_or(0, |t0| t0.elapsed().as_millis() as u64)
    }
}

/// What the drill acts on: the running topology, and a way to cut a host's link and restore it.
pub trait Network: Send + Sync {
    fn cut_host(&self, host: &str) -> Result<(), DrError>;
    fn restore_host(&self, host: &str) -> Result<(), DrError>;
}

/// Runs the drill on a topology already started by [`crate::up::start`]. `print` sees each
/// timeline step as it happens.
pub async fn run(
    launcher: &Launcher,
    network: &dyn Network,
    options: &DrillOptions,
    print: &(dyn Fn(&TimedStep) + Send + Sync),
) -> Result<DrillReport, DrError> {
    let plan = launcher.plan().clone();
    let destroyed = plan
        .first_live_site()
        .ok_or_else(|| DrError::Plan("no live site".into()))?
        .to_owned();
    let activated = plan
        .sites
        .iter()
        .find(|s| s.name != destroyed && plan.with_role(Role::Master, Some(&s.name)).next().is_some())
        .map(|s| s.name.clone())
        .ok_or_else(|| DrError::Refused("the topology has no dormant site with a master pair to activate".into()))?;
    let proxies_of = |site: &str| -> Vec<String> {
        plan.with_role(Role::Proxy, Some(site))
            .map(|c| c.addr.clone())
            .collect()
    };
    let (here, there) = (proxies_of(&destroyed), proxies_of(&activated));
    if there.is_empty() {
        return Err(DrError::Refused(format!(
            "site {activated} has no proxy: nothing to observe there"
        )));
    }
    let masters_there: Vec<String> = plan
        .with_role(Role::Master, Some(&activated))
        .map(|c| c.addr.clone())
        .collect();

    let clock = Arc::new(Mutex::new(Clock {
        started: Instant::now(),
        t0: None,
    }));
    let mut report = DrillReport {
        destroyed_site: destroyed.clone(),
        activated_site: activated.clone(),
        ..DrillReport::default()
    };
    let timeline: Arc<Mutex<Vec<TimedStep>>> = Arc::default();
    let note = {
        let clock = clock.clone();
        let timeline = timeline.clone();
        move |what: String| {
            let step = TimedStep {
                at_ms: clock.lock().unwrap_or_else(|p| p.into_inner()).at(),
                what,
            };
            print(&step);
            timeline.lock().unwrap_or_else(|p| p.into_inner()).push(step);
        }
    };

    // Everyone in normal mode, then the load.
    let all_proxies: Vec<String> = plan.with_role(Role::Proxy, None).map(|c| c.addr.clone()).collect();
    status::wait_proxies(&all_proxies, "normal", None, Duration::from_secs(60)).await?;
    let password =
        std::fs::read_to_string(plan.admin_password_file()).map_err(|e| DrError::io(&plan.admin_password_file(), e))?;
    let password = password.trim().to_owned();
    let login = |servers: Vec<String>| {
        let user = plan.admin_user.clone();
        let password = password.clone();
        async move {
            let client = conf_client(servers, Duration::from_secs(10))?;
            client
                .login(&user, &password, "")
                .await
                .map_err(|e| DrError::Conf(format!("login: {e}")))?;
            Ok::<ConfClient, DrError>(client)
        }
    };
    let client_there = login(there.clone()).await?;
    let probe = ConfigObject::new(ObjectType::Skill, 0, "drill-probe", 1);
    client_there
        .create(&probe, None)
        .await
        .map_err(|e| DrError::Conf(format!("cannot create the probe object: {e}")))?;
    let start_seq = client_there
        .status(&there[0])
        .await
        .map_err(|e| DrError::Conf(e.to_string()))?
        .last_seq;

    let history: Shared = Arc::default();
    let (stop_tx, stop) = watch::channel(false);
    let mut load = Vec::new();
    if !here.is_empty() {
        let client = login(here.clone()).await?;
        load.push(tokio::spawn(writer(
            client,
            format!("drill-{destroyed}-"),
            history.clone(),
            stop.clone(),
        )));
    }
    load.push(tokio::spawn(writer(
        client_there.clone(),
        format!("drill-{activated}-"),
        history.clone(),
        stop.clone(),
    )));
    load.push(tokio::spawn(reader(
        login(there.clone()).await?,
        history.clone(),
        stop.clone(),
    )));
    load.push(tokio::spawn(subscriber(
        login(there.clone()).await?,
        start_seq,
        history.clone(),
        stop.clone(),
    )));
    note(format!("client load running: writers through the proxies of {destroyed} and {activated}, a reader and a subscriber at {activated}"));
    tokio::time::sleep(options.settle).await;

    // t0: the site is destroyed.
    clock.lock().unwrap_or_else(|p| p.into_inner()).t0 = Some(Instant::now());
    let t0_wall_ms = wall_ms();
    let doomed: Vec<_> = plan.components.iter().filter(|c| c.site == destroyed).collect();
    for component in &doomed {
        launcher.kill(component).await?;
    }
    let hosts: BTreeSet<&str> = doomed.iter().map(|c| c.host.as_str()).collect();
    for host in &hosts {
        network.cut_host(host)?;
    }
    note(format!(
        "t0: {destroyed} destroyed (kill -9 of {} processes, links of {} hosts cut)",
        doomed.len(),
        hosts.len()
    ));

    // Limited mode at the surviving site.
    match status::wait_proxies(&there, "limited", None, Duration::from_secs(30)).await {
        Ok(since_ms) => {
            report.limited_mode_ms = Some(since_ms.saturating_sub(t0_wall_ms));
            note(format!("every proxy of {activated} in limited mode"));
        }
        Err(e) => note(format!("proxies of {activated} did not all enter limited mode: {e}")),
    }

    // Activation: by the operator, or by itself.
    let activation_wall_ms;
    if plan.disaster.auto_activate {
        note(format!("waiting for the automatic activation of {activated}"));
        let mut auto = AutoActivation::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = status::gather(launcher).await?;
            if let Some(site) = auto.decide(launcher, &status) {
                activation_wall_ms = wall_ms();
                report.activation_ms = Some(clock.lock().unwrap_or_else(|p| p.into_inner()).since_t0_ms());
                note(format!("automatic activation of {site}"));
                activate(launcher, &site, false, &note, &mut report).await?;
                break;
            }
            if Instant::now() > deadline {
                return Err(DrError::Timeout("no automatic activation within 60 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        tokio::time::sleep(options.operator_delay).await;
        activation_wall_ms = wall_ms();
        report.activation_ms = Some(clock.lock().unwrap_or_else(|p| p.into_inner()).since_t0_ms());
        note(format!(
            "operator: tandem dr activate {activated}{}",
            if options.force { " --force" } else { "" }
        ));
        activate(launcher, &activated, options.force, &note, &mut report).await?;
    }
    let normal_since = status::wait_proxies(&there, "normal", Some(&masters_there), Duration::from_secs(60)).await?;
    report.normal_mode_ms = Some(normal_since.saturating_sub(t0_wall_ms));
    report.normal_after_activation_ms = Some(normal_since.saturating_sub(activation_wall_ms));
    note(format!(
        "every proxy of {activated} in normal mode on a master of {activated}"
    ));
    tokio::time::sleep(options.settle).await;

    // Failback.
    if options.failback {
        for host in &hosts {
            network.restore_host(host)?;
        }
        note(format!("{destroyed} is back (links restored): failing back"));
        let mut operator = Operator::new(launcher, |step: &Step| note(format!("failback: {}", step.what)));
        operator.failback(&destroyed).await?;
        let all: Vec<String> = plan.with_role(Role::Proxy, None).map(|c| c.addr.clone()).collect();
        let masters_back: Vec<String> = plan
            .with_role(Role::Master, Some(&destroyed))
            .map(|c| c.addr.clone())
            .collect();
        status::wait_proxies(&all, "normal", Some(&masters_back), Duration::from_secs(60)).await?;
        report.failback_done = true;
        note(format!(
            "failback done: every proxy in normal mode on a master of {destroyed}"
        ));
        tokio::time::sleep(options.settle).await;
    }

    // Stop the load and check its history.
    let _ = stop_tx.send(true);
    for task in load {
        let _ = task.await;
    }
    note("client load stopped; checking its history".to_owned());
    let checker = login(plan.with_role(Role::Proxy, None).map(|c| c.addr.clone()).collect()).await?;
    check_history(&checker, &history, &mut report).await?;
    report.timeline = timeline.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(report)
}

async fn activate(
    launcher: &Launcher,
    site: &str,
    force: bool,
    note: &(dyn Fn(String) + Send + Sync),
    report: &mut DrillReport,
) -> Result<(), DrError> {
    let mut operator = Operator::new(launcher, |step: &Step| note(format!("activate: {}", step.what)));
    let result = operator.activate(site, force).await;
    let done = operator.into_report();
    report.possibly_lost = done.possibly_lost;
    report.loss_bounded = done.loss_bounded;
    result
}

/// Creates objects `PREFIX0`, `PREFIX1`, … one after the other, recording each outcome.
async fn writer(client: ConfClient, prefix: String, history: Shared, mut stop: watch::Receiver<bool>) {
    let mut n = 0u64;
    while !*stop.borrow() {
        let name = format!("{prefix}{n}");
        n += 1;
        lock(&history).writes.insert(name.clone(), Outcome::Invoked);
        let object = ConfigObject::new(ObjectType::Skill, 0, &name, 1);
        let outcome = match client.create(&object, None).await {
            Ok(_) => Outcome::Ok,
            Err(e) if e.is_outcome_unknown() => Outcome::Unknown,
            Err(e) => Outcome::Refused(format!("{}: {e}", e.kind)),
        };
        let refused = matches!(outcome, Outcome::Refused(_));
        lock(&history).writes.insert(name, outcome);
        // Refusals come at once (limited mode): pace the retries.
        let pause = if refused { 50 } else { 5 };
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
}

/// Reads the probe object by name, again and again.
async fn reader(client: ConfClient, history: Shared, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let result = client.get_by_name(ObjectType::Skill, 1, "drill-probe").await;
        {
            let mut h = lock(&history);
            h.reads.tried += 1;
            match result {
                Ok(_) => h.reads.answered += 1,
                Err(e) => {
                    if h.reads.failures.len() < 5 {
                        h.reads.failures.push(e.to_string());
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
}

/// Follows every notification after `after`, checking the numbers.
async fn subscriber(client: ConfClient, after: u64, history: Shared, mut stop: watch::Receiver<bool>) {
    let mut subscription = client.subscribe(SubscribeFilter::default(), Some(after));
    let mut expected = after + 1;
    loop {
        let next = tokio::select! {
            _ = stop.changed() => return,
            next = subscription.next() => next,
        };
        let mut h = lock(&history);
        match next {
            Ok(n) if n.kind == pb::notification_kind::PROXY_MODE => h.notifications.mode_events += 1,
            Ok(n) if n.kind == pb::notification_kind::LIVE => {}
            Ok(n) => {
                h.notifications.received += 1;
                if n.seq > expected {
                    h.notifications.gaps += 1;
                } else if n.seq < expected {
                    h.notifications.out_of_order += 1;
                }
                expected = n.seq + 1;
                h.last_seq = Some(n.seq);
            }
            Err(e) if e.is(pb::error_kind::RELOAD_REQUIRED) => {
                h.notifications.reload_required += 1;
                return;
            }
            Err(_) => {
                // No server answered within the client's deadline: keep trying.
                drop(h);
                subscription = client.subscribe(SubscribeFilter::default(), Some(expected - 1));
            }
        }
    }
}

/// Compares the load's history with the audit trail: every acknowledged write present once,
/// nothing present that was never sent, one writer at a time.
async fn check_history(client: &ConfClient, history: &Shared, report: &mut DrillReport) -> Result<(), DrError> {
    let mut created: BTreeMap<String, u64> = BTreeMap::new();
    let mut writers: Vec<(u64, u64, String)> = Vec::new(); // (seq, when, writer)
    let mut after = 0;
    loop {
        let request = pb::AuditRequest {
            after_seq: after,
            limit: 1000,
            object_type: "skill".to_owned(),
            ..pb::AuditRequest::default()
        };
        let (records, next) = client
            .audit(request)
            .await
            .map_err(|e| DrError::Conf(format!("cannot read the audit trail: {e}")))?;
        for record in &records {
            if let What::Created { object } = &record.what {
                if object.name.starts_with("drill-") && object.name != "drill-probe" {
                    *created.entry(object.name.clone()).or_default() += 1;
                }
            }
            writers.push((record.seq, record.when_ms, record.writer.clone()));
        }
        if next == 0 || records.is_empty() {
            break;
        }
        after = next;
    }
    let h = lock(history);
    let w = &mut report.writes;
    for (name, outcome) in &h.writes {
        w.invoked += 1;
        let present = created.get(name).copied().unwrap_or(0);
        match outcome {
            Outcome::Ok => {
                w.acknowledged += 1;
                if present == 0 {
                    w.lost += 1;
                }
            }
            Outcome::Refused(kind) => {
                w.refused += 1;
                if kind.starts_with(&format!("{}:", pb::error_kind::LIMITED_MODE)) {
                    w.refused_limited += 1;
                }
                if present > 0 {
                    // A refusal is definite: the write must not have happened.
                    w.phantom += 1;
                    if w.phantom_examples.len() < 5 {
                        w.phantom_examples.push(format!("{name}: refused with {kind}"));
                    }
                }
            }
            Outcome::Unknown | Outcome::Invoked => w.unknown += 1,
        }
        if present > 1 {
            w.duplicated += 1;
        }
    }
    w.phantom += created.keys().filter(|name| !h.writes.contains_key(*name)).count() as u64;
    report.reads = h.reads.clone();
    report.notifications = h.notifications.clone();
    drop(h);

    // One writer at a time: in number order, the writers' runs never come back to an earlier
    // writer, and no run starts before the previous writer's last commit.
    writers.sort();
    let mut runs: Vec<(String, u64, u64)> = Vec::new(); // (writer, first when, last when)
    for (_, when, writer) in writers {
        match runs.last_mut() {
            Some((last, _, end)) if *last == writer => *end = when,
            _ => runs.push((writer, when, when)),
        }
    }
    let mut finished = BTreeSet::new();
    for (i, (writer, start, _)) in runs.iter().enumerate() {
        let came_back = !finished.insert(writer.clone());
        let overlaps = i > 0 && *start < runs[i - 1].2;
        if came_back || overlaps {
            report.two_writers = true;
        }
    }
    report.writers_seen = runs
        .iter()
        .map(|(writer, first, last)| format!("{writer}: {first}..={last}"))
        .collect();
    Ok(())
}

/// Milliseconds since the Unix epoch (the proxies' clock for `since`: the same machine).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
