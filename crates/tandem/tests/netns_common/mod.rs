//! Shared by the `netns_*` tests: the two-site example started in network namespaces through the
//! library (`tandem_dr::netns::build`, `tandem_dr::up::start`), acted on from the router (the
//! management network) or from inside a host (a site's own view); a client load run from inside a
//! host — a writer recording every creation in testkit's [`History`], a reader, a subscriber
//! keeping every notification — and the checks afterwards against the audit trail.
//!
//! When a test panics, [`Topology`]'s drop prints the last status it can gather and the end of
//! every component's log before the lab removes the namespaces and every process in them (with
//! `TANDEM_NETNS_LOGS=1`, also when it passes).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tandem_config::{ConfigObject, ObjectType};
use tandem_confserv::client::{ClientConfig, ConfClient, ConfError, SubscribeFilter};
use tandem_confserv::record::What;
use tandem_dr::status::Status;
use tandem_dr::{Component, Launcher};
use tandem_netlab::{Host, Lab};
use tandem_proto::confserv::{self as pb, notification_kind};
use tandem_testkit::client::KeyValue;
use tandem_testkit::{must_eventually, History, Outcome};
use tandem_topology::Role;
use tokio::sync::watch;

/// The `tandem` binary cargo built for these tests.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
/// Deadline of one wait for a system event (limited mode, a fence, a catch-up) on a loaded
/// two-core machine. A wait ends as soon as its condition holds.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The database's sync timeout (the replica's default, which `tandem up` keeps): an unreachable
/// sync replica stalls writes at most this long before it is demoted.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// One topology at a time in this test binary: two on two shared cores would turn every
/// timeout into a coin toss.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The two-site example of the repository.
pub fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-site.toml")
}

/// A running topology in its lab. Dropped: diagnostics first when panicking, then every
/// component stopped, then the lab removed.
pub struct Topology {
    pub launcher: Launcher,
    /// Declared after the launcher: dropped after the components were stopped.
    pub lab: Lab,
    /// The run directory's parent; removed last.
    _temp: tempfile::TempDir,
}

impl Topology {
    /// Builds the lab of the two-site example and starts the topology (site 1 active).
    pub fn up() -> Topology {
        let topology = tandem_topology::Topology::from_file(&example()).expect("read the two-site example");
        let temp = tempfile::tempdir().expect("temp dir");
        let run_dir = temp.path().join("run");
        let (lab, plan) = tandem_dr::netns::build(&topology, &run_dir).expect("build the lab");
        let launcher = Launcher::new(plan, PathBuf::from(TANDEM));
        let topology = Topology {
            launcher,
            lab,
            _temp: temp,
        };
        topology.router(async {
            tandem_dr::up::claim_run_dir(&run_dir, Path::new(TANDEM))
                .await
                .expect("claim the run directory");
            tandem_dr::up::start(&topology.launcher, |step| {
                tracing::info!(at_ms = step.at_ms, "up: {}", step.what)
            })
            .await
            .expect("start the topology");
        });
        topology
    }

    /// Runs `future` in the router's namespace (the management network: every host is reachable
    /// from there, whatever the WAN does).
    pub fn router<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        self.lab.block_on_router(future).expect("enter the router's namespace")
    }

    /// Runs `future` inside host `host`'s namespace: it sees what that host sees.
    pub fn on_host<F>(&self, host: &str, future: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        self.host(host).block_on(future).expect("enter a host's namespace")
    }

    pub fn host(&self, name: &str) -> Host {
        self.lab.host(name).expect("a host of the lab")
    }

    /// The component `role` of `host` (e.g. `("s1-db", Role::Db)`).
    pub fn component(&self, host: &str, role: Role) -> Component {
        self.launcher
            .plan()
            .components
            .iter()
            .find(|c| c.host == host && c.role == role)
            .cloned()
            .unwrap_or_else(|| panic!("no {} on {host}", role.as_str()))
    }

    /// The addresses of the components `role` at `site`.
    pub fn addrs(&self, role: Role, site: &str) -> Vec<String> {
        self.launcher
            .plan()
            .with_role(role, Some(site))
            .map(|c| c.addr.clone())
            .collect()
    }

    /// The administrator's password of this run.
    pub fn password(&self) -> String {
        let file = self.launcher.plan().admin_password_file();
        std::fs::read_to_string(&file)
            .expect("read the administrator's password")
            .trim()
            .to_owned()
    }

    /// What every component says, gathered from the router.
    pub fn status(&self) -> Status {
        self.router(tandem_dr::status::gather(&self.launcher))
            .expect("gather the status")
    }

    /// The end of every component's log.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for component in &self.launcher.plan().components {
            let tail = self.launcher.log_tail(component, lines);
            if !tail.is_empty() {
                out.push_str(&format!("\n===== {} (log tail)\n{tail}\n", component.name));
            }
        }
        out
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TANDEM_NETNS_LOGS").is_some() {
            let status = self
                .lab
                .block_on_router(tandem_dr::status::gather(&self.launcher))
                .map(|s| s.map(|s| s.table()));
            match status {
                Ok(Ok(table)) => eprintln!("===== status at the end of the test:\n{table}"),
                other => eprintln!("===== no status at the end of the test: {other:?}"),
            }
            eprintln!("{}", self.logs(60));
        }
        let stopped = self.lab.block_on_router(tandem_dr::up::stop(&self.launcher, false));
        if !matches!(stopped, Ok(Ok(()))) {
            eprintln!("stopping the topology: {stopped:?}");
        }
    }
}

/// A configuration client of `servers` as the administrator (logged in), with deadlines that
/// outlast a sync-timeout stall of the database.
pub async fn login(servers: Vec<String>, password: &str) -> Result<ConfClient, ConfError> {
    let client = conf_client(servers, Duration::from_secs(12));
    client.login("admin", password, "").await?;
    Ok(client)
}

/// A client of `servers` whose operations give up after `deadline`.
pub fn conf_client(servers: Vec<String>, deadline: Duration) -> ConfClient {
    let config = ClientConfig {
        deadline,
        attempt_timeout: deadline.min(Duration::from_secs(8)),
        ..ClientConfig::default()
    };
    ConfClient::new(servers, config).expect("a configuration client")
}

/// Creates skill `name` through `client`, recording the invocation and its outcome in
/// `history`; the revision of an acknowledged creation is its notification number.
pub async fn create_skill(history: &History, client: &ConfClient, process: &str, name: &str) -> Outcome {
    let id = history.invoke(process, name, name.as_bytes());
    let result = client
        .create(&ConfigObject::new(ObjectType::Skill, 0, name, 1), None)
        .await;
    let outcome = match result {
        Ok(w) => Outcome::Ok { revision: w.last_seq },
        Err(e) if e.is_outcome_unknown() => Outcome::Unknown {
            reason: format!("{}: {e}", e.kind),
        },
        Err(e) => Outcome::Fail {
            reason: format!("{}: {e}", e.kind),
        },
    };
    history.complete(id, outcome.clone());
    outcome
}

/// One read of the load, at a time on the history's clock.
#[derive(Clone, Debug)]
pub struct Read {
    pub at: Duration,
    pub error: Option<String>,
}

/// What a subscriber received, in order, and the errors it resubscribed after.
#[derive(Clone, Default)]
pub struct Seen {
    notifications: Arc<Mutex<Vec<pb::Notification>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn push(&self, n: pb::Notification) {
        self.notifications.lock().unwrap_or_else(|p| p.into_inner()).push(n);
    }

    /// The numbered changes (no markers, no mode events).
    pub fn changes(&self) -> Vec<pb::Notification> {
        self.notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|n| n.kind != notification_kind::LIVE && n.kind != notification_kind::PROXY_MODE)
            .cloned()
            .collect()
    }

    /// The proxy modes announced, in order.
    pub fn proxy_modes(&self) -> Vec<String> {
        self.notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|n| n.kind == notification_kind::PROXY_MODE)
            .map(|n| n.proxy_mode.clone())
            .collect()
    }

    /// The last number a change covered.
    pub fn last_change_seq(&self) -> u64 {
        self.changes().iter().map(|n| n.seq).max().unwrap_or(0)
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What one site's client load does.
pub struct LoadSpec {
    /// The host whose namespace the load runs in.
    pub host: Host,
    /// The servers (proxies or masters) its clients use.
    pub servers: Vec<String>,
    pub password: String,
    /// Writer: its name in the history, and the prefix of the skills it creates.
    pub writer: Option<(String, String)>,
    /// Reader: the name of a skill to read again and again.
    pub reader: Option<String>,
    /// Subscriber: every notification after this number.
    pub subscribe_after: Option<u64>,
}

/// A client load running on a thread of its own inside a host's namespace.
pub struct Load {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub reads: Arc<Mutex<Vec<Read>>>,
    pub seen: Seen,
}

impl Load {
    /// Starts the load; returns once its clients have logged in.
    pub fn start(spec: LoadSpec, history: Arc<History>) -> Load {
        let (stop, stopped) = watch::channel(false);
        let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
        let seen = Seen::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = {
            let (reads, seen) = (reads.clone(), seen.clone());
            std::thread::Builder::new()
                .name(format!("load-{}", spec.host.name))
                .spawn(move || {
                    let host = spec.host.clone();
                    let ran = host.block_on(run_load(spec, history, reads, seen, stopped, ready_tx.clone()));
                    if let Err(e) = ran {
                        let _ = ready_tx.send(Err(format!("cannot enter the host's namespace: {e}")));
                    }
                })
                .expect("start a load thread")
        };
        match ready_rx.recv_timeout(EVENT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the client load did not start: {e}"),
            Err(e) => panic!("the client load did not start within {EVENT_TIMEOUT:?}: {e}"),
        }
        Load {
            stop,
            thread: Some(thread),
            reads,
            seen,
        }
    }

    /// Stops the load and waits for its thread.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("a client load thread panicked");
            }
        }
    }

    pub fn reads(&self) -> Vec<Read> {
        self.reads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run_load(
    spec: LoadSpec,
    history: Arc<History>,
    reads: Arc<Mutex<Vec<Read>>>,
    seen: Seen,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let client = match login(spec.servers.clone(), &spec.password).await {
        Ok(client) => client,
        Err(e) => {
            let _ = ready.send(Err(format!("login on {:?}: {e}", spec.servers)));
            return;
        }
    };
    let mut tasks = Vec::new();
    if let Some((process, prefix)) = spec.writer {
        let (client, history, mut stop) = (client.clone(), history.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow() {
                let name = format!("{prefix}{n}");
                n += 1;
                let outcome = tokio::select! {
                    outcome = create_skill(&history, &client, &process, &name) => outcome,
                    // Left pending: counted as unknown.
                    _ = stop.changed() => return,
                };
                // Paced: a steady trickle is enough to see every phase; refusals come at once.
                let pause = if matches!(outcome, Outcome::Ok { .. }) { 20 } else { 100 };
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                }
            }
        }));
    }
    if let Some(name) = spec.reader {
        let (client, history, mut stop) = (client.clone(), history.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !*stop.borrow() {
                let result = tokio::select! {
                    result = client.get_by_name(ObjectType::Skill, 1, &name) => result,
                    _ = stop.changed() => return,
                };
                let read = Read {
                    at: history.elapsed(),
                    error: result.err().map(|e| format!("{}: {e}", e.kind)),
                };
                reads.lock().unwrap_or_else(|p| p.into_inner()).push(read);
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }));
    }
    if let Some(after) = spec.subscribe_after {
        let (client, mut stop) = (client.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut subscription = client.subscribe(SubscribeFilter::default(), Some(after));
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    _ = stop.changed() => return,
                };
                match next {
                    Ok(n) => seen.push(std::sync::Arc::unwrap_or_clone(n)),
                    Err(e) => {
                        seen.errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{}: {e}", e.kind));
                        if e.is(pb::error_kind::RELOAD_REQUIRED) {
                            return;
                        }
                        // No server answered within the client's deadline: resume after the
                        // last number received.
                        let last = seen.changes().last().map_or(after, |n| n.seq);
                        subscription = client.subscribe(SubscribeFilter::default(), Some(last));
                    }
                }
            }
        }));
    }
    let _ = ready.send(Ok(()));
    for task in tasks {
        let _ = task.await;
    }
}

/// Every skill creation of the audit trail whose name starts with `prefix`, as the history
/// checker's final state: one key per name, its version the number of creations, its revision
/// the creation's notification number. Also returns the last number of the trail.
pub async fn created_skills(client: &ConfClient, prefix: &str) -> (Vec<KeyValue>, u64) {
    let mut found: BTreeMap<String, KeyValue> = BTreeMap::new();
    let mut after = 0;
    let mut last = 0;
    loop {
        let request = pb::AuditRequest {
            after_seq: after,
            limit: 1000,
            object_type: ObjectType::Skill.name().to_owned(),
            ..pb::AuditRequest::default()
        };
        let (records, next) = client.audit(request).await.expect("read the audit trail");
        for record in &records {
            last = last.max(record.seq);
            if let What::Created { object } = &record.what {
                if object.name.starts_with(prefix) {
                    let kv = found.entry(object.name.clone()).or_insert_with(|| KeyValue {
                        key: object.name.clone(),
                        value: object.name.clone().into_bytes(),
                        version: 0,
                        create_revision: record.seq,
                        mod_revision: record.seq,
                    });
                    kv.version += 1;
                }
            }
        }
        if next == 0 || records.is_empty() {
            return (found.into_values().collect(), last);
        }
        after = next;
    }
}

/// Every skill name the configuration holds now, with how many objects carry it.
pub async fn skills_held(client: &ConfClient) -> BTreeMap<String, usize> {
    let mut all = BTreeMap::new();
    let mut query = tandem_config::Query::new(ObjectType::Skill);
    loop {
        let page = client.query(&query).await.expect("query skills");
        if let tandem_config::PageItems::Full(objects) = page.items {
            for object in objects {
                *all.entry(object.name).or_insert(0) += 1;
            }
        }
        match page.next_after_dbid {
            Some(next) => query = query.after(next),
            None => return all,
        }
    }
}

/// Every skill name `client` serves, or why it could not tell.
pub async fn try_skills_held(client: &ConfClient) -> Result<BTreeMap<String, usize>, String> {
    let mut all = BTreeMap::new();
    let mut query = tandem_config::Query::new(ObjectType::Skill);
    loop {
        let page = client.query(&query).await.map_err(|e| format!("{}: {e}", e.kind))?;
        if let tandem_config::PageItems::Full(objects) = page.items {
            for object in objects {
                *all.entry(object.name).or_insert(0) += 1;
            }
        }
        match page.next_after_dbid {
            Some(next) => query = query.after(next),
            None => return Ok(all),
        }
    }
}

/// The skills whose creation may or may not have landed: left in flight when the load stopped
/// (a proxy or master may still commit it afterwards), or answered with an unknown outcome.
pub fn in_doubt(history: &History) -> BTreeSet<String> {
    history
        .snapshot()
        .into_iter()
        .filter(|op| matches!(op.outcome, Outcome::Pending | Outcome::Unknown { .. }))
        .map(|op| op.key)
        .collect()
}

/// Waits until every server in `servers` (masters and proxies) serves the same skills: exactly
/// those of `expected`, plus any of `in_doubt` that landed after `expected` was read, once each;
/// panics naming each server that does not, with what it has too much or too little.
pub async fn must_serve_everywhere(
    servers: &[String],
    password: &str,
    expected: &BTreeMap<String, usize>,
    in_doubt: &BTreeSet<String>,
) {
    let what = format!(
        "every server serves the final configuration ({} skills, {} in doubt)",
        expected.len(),
        in_doubt.len()
    );
    must_eventually(&what, EVENT_TIMEOUT, || async {
        let views = servers
            .iter()
            .map(|addr| async move { (addr, served(addr, password).await) });
        let mut wrong = Vec::new();
        let mut first: Option<BTreeMap<String, usize>> = None;
        for (addr, view) in futures::future::join_all(views).await {
            match view {
                Ok((held, seq)) => {
                    let extra: Vec<&String> = held
                        .iter()
                        .filter(|(k, n)| {
                            let doubtful_once = in_doubt.contains(*k) && **n == 1;
                            !expected.contains_key(*k) && !doubtful_once
                        })
                        .map(|(k, _)| k)
                        .collect();
                    let missing: Vec<&String> = expected.iter().filter(|(k, n)| held.get(*k) != Some(n)).map(|(k, _)| k).collect();
                    let differs = first.as_ref().is_some_and(|f| *f != held);
                    if !extra.is_empty() || !missing.is_empty() || differs {
                        wrong.push(format!(
                            "{addr} (at number {seq}) serves {} skills: {} not in the final configuration (e.g. {:?}), {} \
                             missing or repeated (e.g. {:?}){}",
                            held.len(),
                            extra.len(),
                            &extra[..extra.len().min(5)],
                            missing.len(),
                            &missing[..missing.len().min(5)],
                            if differs { "; not what the first server serves" } else { "" }
                        ));
                    }
                    first.get_or_insert(held);
                }
                Err(e) => wrong.push(format!("{addr}: {e}")),
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("\n"))
        }
    })
    .await
}

/// The skills server `addr` serves, and its last notification number.
async fn served(addr: &str, password: &str) -> Result<(BTreeMap<String, usize>, u64), String> {
    let client = conf_client(vec![addr.to_owned()], Duration::from_secs(3));
    client
        .login("admin", password, "")
        .await
        .map_err(|e| format!("cannot log in: {e}"))?;
    let held = try_skills_held(&client).await?;
    let seq = client.status(addr).await.map_err(|e| format!("status: {e}"))?.last_seq;
    Ok((held, seq))
}

/// Asserts the changes are numbered `from + 1 ..= to`, each once, in order.
pub fn assert_dense(changes: &[pb::Notification], from: u64, to: u64, context: &str) {
    let seqs: Vec<u64> = changes.iter().map(|n| n.seq).collect();
    let expected: Vec<u64> = (from + 1..=to).collect();
    if seqs != expected {
        let missing: Vec<u64> = expected.iter().filter(|s| !seqs.contains(s)).copied().collect();
        let mut repeated = seqs.clone();
        repeated.dedup();
        panic!(
            "notifications are not {}..={to} once each, in order: got {} numbers ({} repeated or out of order), \
             missing {missing:?}; first {:?}, last {:?}\n{context}",
            from + 1,
            seqs.len(),
            seqs.len() - repeated.len(),
            seqs.first(),
            seqs.last()
        );
    }
}

/// The ops of `history` by `process`.
pub fn ops_of(history: &History, process: &str) -> Vec<tandem_testkit::Op> {
    history
        .snapshot()
        .into_iter()
        .filter(|op| op.process == process)
        .collect()
}

/// How the writes of `history` ended, grouped by outcome and the start of the reason, with the
/// time of the first and last of each group: the story of a load in a few lines.
pub fn outcomes(history: &History) -> String {
    let mut groups: BTreeMap<(String, String), (usize, Duration, Duration)> = BTreeMap::new();
    for op in history.snapshot() {
        let (kind, reason) = match &op.outcome {
            Outcome::Pending => ("pending", String::new()),
            Outcome::Ok { .. } => ("ok", String::new()),
            Outcome::Fail { reason } => ("failed", reason.chars().take(90).collect()),
            Outcome::Unknown { reason } => ("unknown", reason.chars().take(90).collect()),
        };
        let group = groups
            .entry((format!("{} {kind}", op.process), reason))
            .or_insert((0, op.invoked, op.invoked));
        group.0 += 1;
        group.1 = group.1.min(op.invoked);
        group.2 = group.2.max(op.invoked);
    }
    groups
        .into_iter()
        .map(|((kind, reason), (n, first, last))| {
            format!(
                "  {kind:<16} {n:>5}  invoked {:.1}s..{:.1}s  {reason}",
                first.as_secs_f64(),
                last.as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A one-line view of the proxies' modes, for messages.
pub fn proxy_modes(status: &Status) -> String {
    status
        .proxies
        .iter()
        .map(|p| format!("{}={} ({}) on {}", p.name, p.mode, p.reason, p.master))
        .collect::<Vec<_>>()
        .join("; ")
}
