//! The Configuration Server Proxy benchmark (`tandem-bench proxy`, run by `bench/run.sh --proxy`).
//!
//! It starts a three-replica database, a master pair (as the Configuration Server benchmark does,
//! see [`crate::confserv`]) and two proxies (`tandem confserv --mode proxy`, default heartbeat
//! settings) on 127.0.0.1, and prints one markdown table with the goals of the proxy issue beside
//! the figures:
//!
//! - reads by name at concurrency 256 through one proxy, straight from the primary master, and
//!   etcd's serializable gets (a three-member etcd cluster started for this phase only, driven by
//!   the database benchmark's stale-get workload); the goal is proxy ≥ 2 × etcd;
//! - notification fan-out: 10,000 subscriptions spread over both proxies, then changes committed
//!   one after another through the master pair; for each, write sent → notification received at
//!   every subscriber (goal p99 ≤ 50 ms, none missing);
//! - recovery: both masters killed with SIGKILL, the proxies wait in limited mode, one master is
//!   started again on its address: its process start (and its first `Status` as primary) → each
//!   proxy reports normal mode again (median of the tries);
//! - attach: the configuration grown to 100,000 objects (`--full`: 1,000,000), a third proxy is
//!   started: its process start → normal mode, the parts its snapshot came in, its peak RSS, and
//!   the writes made through the master meanwhile (one client, one after another).
//!
//! Every process is spawned through [`crate::proc`], so it is killed when the run ends, fails or
//! is interrupted, and `run.sh` kills what is left from the pid file.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use tandem_config::{ConfigObject, Delta, ObjectType, ENVIRONMENT_TENANT};
use tandem_confserv::client::{ClientConfig, ConfClient, SubscribeFilter};
use tandem_proto::confserv::{self as pb, notification_kind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::confserv::{
    cell_text, client_of, create_switch, latency_rows, load_dns, load_note, loadavg, publish, read_name, reads_by_name,
    render, row, yes_no, Header, MasterSetup, Pair, Row, ADMIN, ADMIN_PASSWORD, READ_OBJECTS,
};
use crate::figures::command_output;
use crate::proc::{self, Proc, Spec};
use crate::stats::{median, Samples, Summary};
use crate::tandem::TandemCluster;
use crate::target::Cluster;
use crate::tools::cpu_ticks;
use crate::{show, start_etcd, start_tandem, workload, Common};

/// How long a proxy may take to bind its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the proxies may take to reach a mode (attach at start, limited after a kill).
const MODE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a server's `Status` is asked while waiting for a change of role or mode.
const POLL: Duration = Duration::from_millis(10);
/// How long the subscriptions may take to be established, all of them.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(180);
/// A notification not received this long after its write was sent counts as missing.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the open subscriptions' CPU cost is read while nothing changes.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// Concurrency of the read figures.
const READ_CONCURRENCY: usize = 256;
/// File descriptors the benchmark needs besides one per subscribers' connection.
const FD_MARGIN: u64 = 256;
/// How long a proxy may take to attach to a master holding the attach phase's objects.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(600);
/// Objects of the attach phase: the default run's, and `--full`'s (the Configuration Server's
/// goal).
const ATTACH_OBJECTS: u64 = 100_000;
const ATTACH_OBJECTS_FULL: u64 = 1_000_000;
/// The goals of the proxy issue.
const GOAL_PROXY_OVER_ETCD: f64 = 2.0;
const GOAL_FANOUT_P99_MS: f64 = 50.0;

#[derive(Args)]
pub(crate) struct ProxyArgs {
    #[command(flatten)]
    common: Common,
    /// The `etcd` binary (for the serializable-get figure).
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Write the table here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measured seconds of each read figure.
    #[arg(long, default_value_t = 10)]
    level_secs: u64,
    /// Unmeasured warm-up seconds before each read figure.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Subscriptions of the fan-out figure, half on each proxy.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Subscriptions sharing one client, hence one HTTP/2 connection to its proxy.
    #[arg(long, default_value_t = 100)]
    subscriptions_per_connection: usize,
    /// Changes committed one after another while the subscriptions listen.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Times both masters are killed and one started again.
    #[arg(long, default_value_t = 3)]
    recovery_tries: usize,
    /// Phases to run (comma-separated): reads, fanout, recovery, attach.
    #[arg(long, value_delimiter = ',', default_value = "reads,fanout,recovery,attach")]
    phases: Vec<ProxyPhase>,
    /// The long run: the attach phase with 1,000,000 objects (else 100,000).
    #[arg(long)]
    full: bool,
    /// The command line to print in the report (run.sh passes its own).
    #[arg(long, default_value = "")]
    command: String,
    /// Tandem's source revision, for the report.
    #[arg(long, default_value = "unknown")]
    tandem_rev: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProxyPhase {
    Reads,
    Fanout,
    Recovery,
    Attach,
}

/// One proxy process (never restarted).
struct ProxyServer {
    name: String,
    addr: String,
    proc: Proc,
}

/// Starts `tandem confserv --mode proxy` of `masters` on a free port, logging in as the bootstrap
/// administrator, and waits until it has bound its port.
async fn start_proxy(setup: &MasterSetup, dir: &Path, masters: &[String], name: &str) -> anyhow::Result<ProxyServer> {
    let ready = dir.join(format!("{name}.ready"));
    let args = [
        "confserv",
        "--mode",
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--masters",
        &masters.join(","),
        "--user",
        ADMIN,
        "--name",
        name,
    ]
    .iter()
    .map(Into::into)
    .chain([
        "--password-file".into(),
        setup.password_file.clone().into_os_string(),
        "--ready-file".into(),
        ready.clone().into_os_string(),
    ])
    .collect();
    let spec = Spec {
        program: setup.bin.clone(),
        args,
        log: dir.join(format!("{name}.log")),
        env: Vec::new(),
    };
    let mut proc = proc::spawn(&spec, &setup.pid_file)?;
    let addr = proc::wait_for_file(&ready, &mut proc, START_TIMEOUT).await?;
    Ok(ProxyServer {
        name: name.to_owned(),
        addr,
        proc,
    })
}

/// Everything running: the database, the master pair, the proxies, and a client for `Status`.
struct Setup {
    db: TandemCluster,
    pair: Pair,
    /// How the masters are (re)started.
    launch: MasterSetup,
    proxies: Vec<ProxyServer>,
    status: ConfClient,
}

impl Setup {
    async fn stop(&mut self) {
        for proxy in &mut self.proxies {
            if let Err(e) = proxy.proc.kill9().await {
                eprintln!("warning: proxy {}: {e:#}", proxy.name);
            }
        }
        self.pair.stop().await;
        self.db.stop().await;
    }
}

/// Asks `addr`'s `Status` every [`POLL`] until `done` holds; returns when it was first seen to.
async fn poll_status(
    status: &ConfClient,
    addr: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&pb::StatusResponse) -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match status.status(addr).await {
            Ok(s) if done(&s) => return Ok(Instant::now()),
            Ok(s) => format!(
                "role {}, proxy mode {:?} ({}), number {}",
                s.role, s.proxy_mode, s.proxy_mode_reason, s.last_seq
            ),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("{addr} was not {what} within {limit:?} (last: {last})");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every proxy reports `mode` (`normal`, `limited`); returns when each did.
async fn wait_mode(status: &ConfClient, proxies: &[ProxyServer], mode: &str) -> anyhow::Result<Vec<Instant>> {
    let what = format!("in {mode} mode");
    let waits = proxies
        .iter()
        .map(|p| poll_status(status, &p.addr, &what, MODE_TIMEOUT, |s| s.proxy_mode == mode));
    futures::future::try_join_all(waits).await
}

/// Waits until every proxy has applied the primary master's last number.
async fn wait_caught_up(setup: &Setup) -> anyhow::Result<()> {
    let (_, seq) = setup.pair.wait_settled(Duration::from_secs(60)).await?;
    let what = format!("at number {seq}");
    let waits = setup
        .proxies
        .iter()
        .map(|p| poll_status(&setup.status, &p.addr, &what, MODE_TIMEOUT, |s| s.last_seq >= seq));
    futures::future::try_join_all(waits).await?;
    Ok(())
}

/// A client of `servers` alone, logged in as the bootstrap administrator.
async fn logged_in(servers: Vec<String>) -> anyhow::Result<ConfClient> {
    let client = client_of(servers.clone(), Duration::from_secs(10), Duration::from_secs(30))?;
    client
        .login(ADMIN, ADMIN_PASSWORD, "")
        .await
        .with_context(|| format!("cannot log in at {}", servers.join(",")))?;
    Ok(client)
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let root = &args.common.work_dir;
    let pid_file = root.join("pids");
    let started = Instant::now();
    let load_before = loadavg();
    let has = |phase: ProxyPhase| args.phases.contains(&phase);

    eprintln!("--- starting the database (3 replicas), the master pair and two proxies on 127.0.0.1");
    let db = start_tandem(&args.common.tandem_bin, &root.join("db"), &pid_file, &[]).await?;
    let launch = MasterSetup::new(&args.common.tandem_bin, root, &db, &pid_file)?;
    let pair = Pair::start(&launch).await?;
    let proxy_dir = root.join("proxies");
    std::fs::create_dir_all(&proxy_dir).with_context(|| format!("cannot create {}", proxy_dir.display()))?;
    let mut proxies = Vec::new();
    for name in ["p1", "p2"] {
        proxies.push(start_proxy(&launch, &proxy_dir, &pair.addrs(), name).await?);
    }
    let status = client_of(pair.addrs(), Duration::from_secs(1), Duration::from_secs(1))?;
    let mut setup = Setup {
        db,
        pair,
        launch,
        proxies,
        status,
    };
    wait_mode(&setup.status, &setup.proxies, "normal").await?;
    eprintln!(
        "    database: {}; masters: {}; proxies: {}",
        setup.db.endpoints().join(","),
        setup.pair.addrs().join(","),
        setup
            .proxies
            .iter()
            .map(|p| p.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let switch = create_switch(&setup.pair.admin).await?;
    eprintln!("--- writing {READ_OBJECTS} DNs (on switch {switch})");
    load_dns(&setup.pair.admin, "r-", READ_OBJECTS, 1).await?;
    wait_caught_up(&setup).await?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut etcd_version = None;
    if has(ProxyPhase::Reads) {
        etcd_version = Some(
            command_output(&args.etcd_bin, &["--version"])
                .lines()
                .next()
                .unwrap_or("etcd ?")
                .to_owned(),
        );
        match reads(&args, &setup).await {
            Ok(r) => {
                notes.extend(r.notes());
                rows.extend(r.rows());
            }
            Err(e) => failed(&mut rows, "reads by name, c=256", "proxy ≥ 2 × etcd", &e),
        }
    }
    if has(ProxyPhase::Fanout) {
        eprintln!(
            "--- fan-out: {} subscriptions over 2 proxies, {} per connection; {} changes",
            args.subscribers, args.subscriptions_per_connection, args.changes
        );
        match fan_out(
            &setup,
            args.subscribers,
            args.subscriptions_per_connection,
            args.changes,
        )
        .await
        {
            Ok(f) => {
                notes.extend(f.notes());
                rows.extend(f.rows());
            }
            Err(e) => failed(&mut rows, "fan-out", "p99 ≤ 50 ms, 0 missing", &e),
        }
    }
    if has(ProxyPhase::Recovery) {
        eprintln!("--- recovery: kill -9 both masters, then start one again");
        match recovery(&mut setup, args.recovery_tries).await {
            Ok(r) => {
                notes.extend(r.notes());
                rows.extend(r.rows());
            }
            Err(e) => failed(&mut rows, "master back → proxies in normal mode", "—", &e),
        }
    }
    if has(ProxyPhase::Attach) {
        let objects = args.attach_objects();
        eprintln!("--- attach: {objects} objects, then a third proxy");
        match attach(&setup, &proxy_dir, objects).await {
            Ok(a) => {
                notes.extend(a.notes());
                rows.extend(a.rows());
            }
            Err(e) => failed(&mut rows, "a proxy attaching to a large configuration", "—", &e),
        }
    }
    setup.stop().await;
    report(&args, rows, notes, &load_before, started, etcd_version)
}

/// A phase that could not be measured, as one row.
fn failed(rows: &mut Vec<Row>, figure: &str, goal: &str, e: &anyhow::Error) {
    eprintln!("    {figure} failed: {e:#}");
    rows.push(row(figure, format!("failed: {}", cell_text(e)), goal, "**no**"));
}

/// One read figure, with the CPU time (user + system) spent per read by the server's processes
/// and by this load generator, over the warm-up and the measured seconds.
struct Measured {
    summary: Summary,
    server_us: Option<f64>,
    client_us: Option<f64>,
}

/// Runs `reads` (`secs` long in all), reading the CPU time of `server_pids` and of this process
/// around it.
async fn with_cpu(server_pids: &[u32], secs: f64, reads: impl Future<Output = Summary>) -> Measured {
    let me = std::process::id();
    let ticks = |pids: &[u32]| pids.iter().map(|&pid| cpu_ticks(pid).ok()).sum::<Option<u64>>();
    let before = (ticks(server_pids), ticks(&[me]));
    let summary = reads.await;
    let after = (ticks(server_pids), ticks(&[me]));
    // Clock ticks are 1/100 s on Linux; the warm-up's reads are estimated at the measured rate.
    let reads_done = (summary.ops_per_sec * secs).max(1.0);
    let per_read = |b: Option<u64>, a: Option<u64>| Some(a?.saturating_sub(b?) as f64 * 10_000.0 / reads_done);
    Measured {
        server_us: per_read(before.0, after.0),
        client_us: per_read(before.1, after.1),
        summary,
    }
}

/// The three read figures.
struct Reads {
    proxy: Measured,
    master: Measured,
    etcd: Measured,
}

/// Reads by name at c=256 through one proxy, then from the primary master; then etcd's
/// serializable gets on a cluster started for this and stopped after it.
async fn reads(args: &ProxyArgs, setup: &Setup) -> anyhow::Result<Reads> {
    let warmup = Duration::from_secs(args.warmup_secs);
    let level = Duration::from_secs(args.level_secs);
    let secs = (warmup + level).as_secs_f64();
    let c = READ_CONCURRENCY;

    let proxy = &setup.proxies[0];
    eprintln!("--- reads (get DN by name) through proxy {}, c={c}", proxy.name);
    let client = logged_in(vec![proxy.addr.clone()]).await?;
    let proxy = with_cpu(&[proxy.proc.pid()], secs, async {
        show("proxy", reads_by_name(&client, c, warmup, level).await)
    })
    .await;

    let (primary, _) = setup.pair.wait_settled(Duration::from_secs(60)).await?;
    let primary = &setup.pair.masters[primary];
    eprintln!(
        "--- reads (get DN by name) from the primary master {}, c={c}",
        primary.addr
    );
    let client = logged_in(vec![primary.addr.clone()]).await?;
    let pids: Vec<u32> = primary.pid().into_iter().collect();
    let master = with_cpu(&pids, secs, async {
        show("master", reads_by_name(&client, c, warmup, level).await)
    })
    .await;

    eprintln!(
        "--- etcd (3 members): {} keys, serializable gets, c={c}",
        workload::GET_KEYS
    );
    let root = &args.common.work_dir;
    let mut etcd = start_etcd(&args.etcd_bin, &root.join("etcd"), &setup.launch.pid_file).await?;
    let measured = async {
        let store = etcd.store();
        workload::load_get_keys(&store)
            .await
            .context("etcd: cannot write the keys to read")?;
        // Serializable reads are served by any member: let every one apply the keys first.
        etcd.wait_healthy(Duration::from_secs(60)).await?;
        let pids: Vec<u32> = etcd.pids().into_iter().flatten().collect();
        let gets = async { show("etcd", workload::gets(&store, true, c, warmup, level).await.summary()) };
        anyhow::Ok(with_cpu(&pids, secs, gets).await)
    }
    .await;
    etcd.stop().await;
    Ok(Reads {
        proxy,
        master,
        etcd: measured?,
    })
}

impl Reads {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let c = READ_CONCURRENCY;
        let figures = [
            (format!("get DN by name through one proxy, c={c}"), &self.proxy),
            (format!("get DN by name from the primary master, c={c}"), &self.master),
            (format!("etcd serializable get (256 B values), c={c}"), &self.etcd),
        ];
        for (name, measured) in figures {
            latency_rows(&mut rows, &name, &measured.summary);
        }
        let proxy = &self.proxy.summary;
        let ratio =
            |other: &Measured| (other.summary.ops_per_sec > 0.0).then(|| proxy.ops_per_sec / other.summary.ops_per_sec);
        let shown = |r: Option<f64>| r.map(|r| format!("{r:.2}")).unwrap_or("n/a".into());
        let over_etcd = ratio(&self.etcd);
        rows.push(row(
            "proxy / etcd serializable, ops/s",
            shown(over_etcd),
            "≥ 2",
            yes_no(over_etcd.is_some_and(|r| r >= GOAL_PROXY_OVER_ETCD)),
        ));
        rows.push(row("proxy / master, ops/s", shown(ratio(&self.master)), "—", "—"));
        rows
    }

    fn notes(&self) -> Vec<String> {
        let us = |v: Option<f64>| v.map(|v| format!("{v:.0} µs")).unwrap_or("?".into());
        let each: Vec<String> = [
            ("proxy p1", &self.proxy),
            ("the primary master", &self.master),
            ("the 3 etcd members together", &self.etcd),
        ]
        .iter()
        .map(|(name, m)| format!("{name} {}, load generator {}", us(m.server_us), us(m.client_us)))
        .collect();
        vec![format!(
            "- CPU time (user + system) per read, over the warm-up and the measured seconds: {}. With 2 cores, \
             the server and the load generator share at most 2,000,000 µs of CPU per second.",
            each.join("; ")
        )]
    }
}

/// What a subscriber's task reports.
enum Event {
    /// Subscriber `id` is established (its first `live` marker).
    Live(usize),
    /// A change numbered `seq` arrived at one subscriber at `at`.
    Change { seq: u64, at: Instant },
    /// A subscription ended with this error.
    Ended(String),
}

/// The subscribers' tasks, aborted (closing their streams) when dropped.
struct Subscribers(Vec<JoinHandle<()>>);

impl Drop for Subscribers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Subscribes to everything from now on and reports what arrives.
async fn subscriber(id: usize, client: ConfClient, events: mpsc::UnboundedSender<Event>) {
    let mut subscription = client.subscribe(SubscribeFilter::default(), None);
    loop {
        let next = subscription.next().await;
        let at = Instant::now();
        let event = match next {
            Ok(n) if n.kind == notification_kind::LIVE => Event::Live(id),
            Ok(n) if n.kind == notification_kind::PROXY_MODE => continue,
            Ok(n) => Event::Change { seq: n.seq, at },
            Err(e) => {
                let _ = events.send(Event::Ended(format!("{}: {e}", e.kind)));
                return;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// What the subscribers reported so far.
struct Tally {
    live: Vec<bool>,
    established: usize,
    ended: usize,
    first_error: Option<String>,
    /// Arrival instants of each change, by number.
    arrivals: HashMap<u64, Vec<Instant>>,
}

impl Tally {
    fn new(subscribers: usize) -> Tally {
        Tally {
            live: vec![false; subscribers],
            established: 0,
            ended: 0,
            first_error: None,
            arrivals: HashMap::new(),
        }
    }

    fn take(&mut self, event: Event) {
        match event {
            Event::Live(id) => {
                if !std::mem::replace(&mut self.live[id], true) {
                    self.established += 1;
                }
            }
            Event::Change { seq, at } => self.arrivals.entry(seq).or_default().push(at),
            Event::Ended(e) => {
                self.ended += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Takes events until `done` holds, `deadline` passes, or every subscriber is gone.
    async fn until(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        deadline: Instant,
        done: impl Fn(&Tally) -> bool,
    ) {
        while !done(self) {
            match tokio::time::timeout_at(deadline.into(), events.recv()).await {
                Ok(Some(event)) => self.take(event),
                Ok(None) | Err(_) => return,
            }
        }
    }
}

/// The soft limit on open files of this process (children inherit it).
fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").context("cannot read /proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("/proc/self/limits has no open-files line")?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .context("bad open-files line")?;
    Ok(if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse().with_context(|| format!("bad open-files line: {line:?}"))?
    })
}

/// What the fan-out measured.
struct FanOut {
    subscribers: usize,
    connections: usize,
    per_proxy: Vec<usize>,
    established: usize,
    establish_took: Duration,
    ended: usize,
    first_error: Option<String>,
    changes: usize,
    /// Write sent → notification received, over every subscriber and change; `errors` = missing.
    deliveries: Samples,
    /// Write sent → acknowledged, per change.
    writes: Samples,
    /// CPU time of each proxy, then of this process (the subscribers), in ms per change while the
    /// changes were delivered, and in % of a core while the subscriptions were open and idle.
    cpu_ms_per_change: Vec<Option<f64>>,
    cpu_idle_percent: Vec<Option<f64>>,
}

/// CPU ticks (user + system) of each process so far.
fn cpu_of(pids: &[u32]) -> Vec<Option<u64>> {
    pids.iter().map(|&pid| cpu_ticks(pid).ok()).collect()
}

/// CPU time each process used between two readings of [`cpu_of`], in ms.
fn cpu_ms_between(before: &[Option<u64>], after: &[Option<u64>]) -> Vec<Option<f64>> {
    // Clock ticks are 1/100 s on Linux.
    before
        .iter()
        .zip(after)
        .map(|(b, a)| Some(a.as_ref()?.saturating_sub(b.as_ref().copied()?) as f64 * 10.0))
        .collect()
}

/// `subscribers` subscriptions, `per_connection` per client, the clients alternating between
/// the proxies; once every one is established, `changes` updates of one DN through the master
/// pair, each after the previous one reached every subscriber (or [`DELIVERY_TIMEOUT`] passed).
async fn fan_out(setup: &Setup, subscribers: usize, per_connection: usize, changes: usize) -> anyhow::Result<FanOut> {
    let per_connection = per_connection.max(1);
    let connections = subscribers.div_ceil(per_connection);
    let limit = open_files_limit()?;
    if limit < connections as u64 + FD_MARGIN {
        bail!(
            "{connections} connections need more open files than the limit of {limit} \
             (raise it with `ulimit -n`, or put more subscriptions on each connection)"
        );
    }
    // A token from each proxy (sessions are valid on both, but each proxy's clients log in there).
    let mut tokens = Vec::new();
    for proxy in &setup.proxies {
        let client = logged_in(vec![proxy.addr.clone()]).await?;
        tokens.push(client.token().context("logged in without a token")?);
    }
    let (tx, mut events) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(subscribers);
    let mut per_proxy = vec![0; setup.proxies.len()];
    let begun = Instant::now();
    for connection in 0..connections {
        let p = connection % setup.proxies.len();
        // Each client has channels of its own; with `connections: 1`, one HTTP/2 connection.
        let config = ClientConfig {
            attempt_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
            connections: 1,
            ..ClientConfig::default()
        };
        let client = ConfClient::new(vec![setup.proxies[p].addr.clone()], config)
            .context("cannot create a subscribers' client")?;
        client.set_token(&tokens[p]);
        let first = connection * per_connection;
        for id in first..(first + per_connection).min(subscribers) {
            tasks.push(tokio::spawn(subscriber(id, client.clone(), tx.clone())));
            per_proxy[p] += 1;
        }
    }
    drop(tx);
    let _subscribers = Subscribers(tasks);
    let mut tally = Tally::new(subscribers);
    tally
        .until(&mut events, begun + ESTABLISH_TIMEOUT, |t| {
            t.established + t.ended >= subscribers
        })
        .await;
    let establish_took = begun.elapsed();
    eprintln!(
        "    {} of {subscribers} subscriptions live after {:.1} s ({} ended{})",
        tally.established,
        establish_took.as_secs_f64(),
        tally.ended,
        tally
            .first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default()
    );
    if tally.established == 0 {
        bail!("no subscription was established");
    }
    // Let the proxies and this process settle after the burst of subscriptions, then read what
    // the open subscriptions cost while nothing changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pids: Vec<u32> = setup.proxies.iter().map(|p| p.proc.pid()).collect();
    pids.push(std::process::id());
    let idle_before = cpu_of(&pids);
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_ms = IDLE_WINDOW.as_secs_f64() * 1000.0;
    let cpu_idle_percent = cpu_ms_between(&idle_before, &cpu_of(&pids))
        .into_iter()
        .map(|ms| ms.map(|ms| ms * 100.0 / idle_ms))
        .collect();

    let admin = &setup.pair.admin;
    let target = admin
        .get_by_name(ObjectType::Dn, ENVIRONMENT_TENANT, &read_name(0))
        .await
        .context("cannot read the DN to change")?;
    let mut deliveries = Samples::default();
    let mut writes = Samples::default();
    let cpu_before = cpu_of(&pids);
    for i in 0..changes {
        let delta = Delta::new().set_field("number", format!("fan-out {i}"));
        let sent = Instant::now();
        let written = admin
            .update(ObjectType::Dn, target.dbid, &delta, None, 0)
            .await
            .with_context(|| format!("change {} of {changes} failed", i + 1))?;
        let acknowledged = sent.elapsed();
        writes.record(acknowledged);
        let seq = written.last_seq;
        tally
            .until(&mut events, sent + DELIVERY_TIMEOUT, |t| {
                t.arrivals.get(&seq).map_or(0, Vec::len) >= subscribers
            })
            .await;
        let arrived = tally.arrivals.remove(&seq).unwrap_or_default();
        let mut change = Samples::default();
        for at in &arrived {
            let latency = at.saturating_duration_since(sent);
            change.record(latency);
            deliveries.record(latency);
        }
        let missing = subscribers.saturating_sub(arrived.len());
        deliveries.errors += missing as u64;
        eprintln!(
            "    change {} (number {seq}): acknowledged after {:.1} ms; {} deliveries, p50 {:.1} ms, max {:.1} ms{}",
            i + 1,
            acknowledged.as_secs_f64() * 1000.0,
            arrived.len(),
            change.quantile_ms(0.5).unwrap_or(f64::NAN),
            change.quantile_ms(1.0).unwrap_or(f64::NAN),
            if missing > 0 {
                format!(", {missing} missing")
            } else {
                String::new()
            }
        );
    }
    let cpu_ms_per_change = cpu_ms_between(&cpu_before, &cpu_of(&pids))
        .into_iter()
        .map(|ms| ms.map(|ms| ms / changes.max(1) as f64))
        .collect();
    Ok(FanOut {
        cpu_ms_per_change,
        cpu_idle_percent,
        subscribers,
        connections,
        per_proxy,
        established: tally.established,
        establish_took,
        ended: tally.ended,
        first_error: tally.first_error,
        changes,
        deliveries,
        writes,
    })
}

impl FanOut {
    fn rows(&self) -> Vec<Row> {
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or("n/a".into());
        let d = &self.deliveries;
        let p99 = d.quantile_ms(0.99);
        let expected = (self.subscribers * self.changes) as u64;
        vec![
            row(
                format!(
                    "fan-out: subscriptions live ({} over {} proxies, {} connections)",
                    self.subscribers,
                    self.per_proxy.len(),
                    self.connections
                ),
                format!("{} in {:.1} s", self.established, self.establish_took.as_secs_f64()),
                &self.subscribers.to_string(),
                yes_no(self.established == self.subscribers && self.ended == 0),
            ),
            row(
                format!(
                    "fan-out: write sent → notification received, p50 ms ({} changes)",
                    self.changes
                ),
                ms(d.quantile_ms(0.5)),
                "—",
                "—",
            ),
            row(
                "fan-out: write sent → notification received, p99 ms",
                ms(p99),
                "≤ 50",
                yes_no(p99.is_some_and(|p| p <= GOAL_FANOUT_P99_MS)),
            ),
            row(
                "fan-out: write sent → notification received, max ms",
                ms(d.quantile_ms(1.0)),
                "—",
                "—",
            ),
            row(
                "fan-out: deliveries missing",
                format!("{} (of {expected})", d.errors),
                "0",
                yes_no(d.errors == 0),
            ),
            row(
                "fan-out: the write itself (sent → acknowledged by the master), p50 ms",
                ms(self.writes.quantile_ms(0.5)),
                "—",
                "—",
            ),
        ]
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "- Fan-out: {} subscriptions on the proxies ({}), {} per connection; {} ended during the run{}.",
            self.subscribers,
            self.per_proxy
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n} on p{}", i + 1))
                .collect::<Vec<_>>()
                .join(", "),
            self.subscribers.div_ceil(self.connections.max(1)),
            self.ended,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {})", e.replace('|', "/")))
                .unwrap_or_default()
        )];
        let per_process = |values: &[Option<f64>], unit: &str| {
            let shown: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let v = v.map(|v| format!("{v:.0}{unit}")).unwrap_or("?".into());
                    match i {
                        i if i < self.per_proxy.len() => format!("proxy p{} {v}", i + 1),
                        _ => format!("the subscribers' process {v}"),
                    }
                })
                .collect();
            shown.join(", ")
        };
        notes.push(format!(
            "- CPU time (user + system) per change while the changes were delivered: {}; while the subscriptions \
             were open and nothing changed ({} s): {} of a core (2 cores: at most 2,000 ms of CPU per second in \
             all).",
            per_process(&self.cpu_ms_per_change, " ms"),
            IDLE_WINDOW.as_secs(),
            per_process(&self.cpu_idle_percent, " %")
        ));
        if self.established < self.subscribers {
            notes.push(format!(
                "- Only {} of {} subscriptions were established within {ESTABLISH_TIMEOUT:?}; the others' \
                 deliveries count as missing.",
                self.established, self.subscribers
            ));
        }
        notes
    }
}

/// One recovery try.
struct Try {
    /// Both masters killed → the last proxy reports limited mode.
    limited: Duration,
    /// The master's process start → its `Status` says primary.
    primary: Duration,
    /// The master's process start → each proxy reports normal mode.
    normal: Vec<Duration>,
}

impl Try {
    /// Process start → both proxies normal.
    fn both_normal(&self) -> Duration {
        self.normal.iter().copied().max().unwrap_or_default()
    }
}

/// What the recovery tries measured.
struct Recovery {
    tries: Vec<Try>,
    proxies: Vec<String>,
}

/// `tries` times: kill -9 both masters, wait until both proxies are limited, start one master
/// again (alternately each) on its address and time its primary role and both proxies' return to
/// normal mode.
async fn recovery(setup: &mut Setup, tries: usize) -> anyhow::Result<Recovery> {
    let mut result = Recovery {
        tries: Vec::new(),
        proxies: setup.proxies.iter().map(|p| p.name.clone()).collect(),
    };
    for attempt in 0..tries {
        wait_mode(&setup.status, &setup.proxies, "normal").await?;
        let killed = Instant::now();
        setup.pair.stop().await;
        let limited = wait_mode(&setup.status, &setup.proxies, "limited").await?;
        let limited = limited
            .iter()
            .max()
            .map_or(Duration::ZERO, |at| at.duration_since(killed));

        let master = &mut setup.pair.masters[attempt % 2];
        let started = Instant::now();
        master.restart(&setup.launch.pid_file).await?;
        let addr = master.addr.clone();
        let limit = MODE_TIMEOUT;
        let (primary, normal) = tokio::join!(
            poll_status(&setup.status, &addr, "primary", limit, |s| s.role == "primary"),
            futures::future::try_join_all(setup.proxies.iter().map(|p| {
                poll_status(&setup.status, &p.addr, "in normal mode", limit, |s| {
                    s.proxy_mode == "normal"
                })
            }))
        );
        let one = Try {
            limited,
            primary: primary?.duration_since(started),
            normal: normal?.iter().map(|at| at.duration_since(started)).collect(),
        };
        eprintln!(
            "    try {}: both limited {} ms after the kill; master started → primary {} ms, → proxies normal {} ms",
            attempt + 1,
            one.limited.as_millis(),
            one.primary.as_millis(),
            one.normal
                .iter()
                .map(|d| d.as_millis().to_string())
                .collect::<Vec<_>>()
                .join(" / ")
        );
        result.tries.push(one);
    }
    Ok(result)
}

impl Recovery {
    fn median_ms(&self, of: impl Fn(&Try) -> Duration) -> String {
        let values: Vec<Duration> = self.tries.iter().map(&of).collect();
        let each: Vec<String> = values.iter().map(|d| d.as_millis().to_string()).collect();
        format!(
            "{} ([{}])",
            median(&values)
                .map(|d| d.as_millis().to_string())
                .unwrap_or("n/a".into()),
            each.join(", ")
        )
    }

    fn rows(&self) -> Vec<Row> {
        vec![
            row(
                "both masters killed → both proxies in limited mode, median ms",
                self.median_ms(|t| t.limited),
                "— (heartbeat timeout 2500)",
                "—",
            ),
            row(
                "master process start → both proxies in normal mode, median ms",
                self.median_ms(Try::both_normal),
                "—",
                "—",
            ),
            row(
                "master primary (first `Status`) → both proxies in normal mode, median ms",
                self.median_ms(|t| t.both_normal().saturating_sub(t.primary)),
                "—",
                "—",
            ),
            row(
                "master process start → master primary, median ms",
                self.median_ms(|t| t.primary),
                "—",
                "—",
            ),
        ]
    }

    fn notes(&self) -> Vec<String> {
        let each: Vec<String> = self
            .tries
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let proxies: Vec<String> = self
                    .proxies
                    .iter()
                    .zip(&t.normal)
                    .map(|(name, d)| format!("{name} {} ms", d.as_millis()))
                    .collect();
                format!("try {}: {}", i + 1, proxies.join(", "))
            })
            .collect();
        vec![format!(
            "- Recovery, process start → each proxy in normal mode: {}.",
            each.join("; ")
        )]
    }
}

impl ProxyArgs {
    fn attach_objects(&self) -> u64 {
        if self.full {
            ATTACH_OBJECTS_FULL
        } else {
            ATTACH_OBJECTS
        }
    }
}

/// A fresh proxy attaching to a primary master that holds many objects.
struct Attach {
    /// Objects the primary held when the proxy started.
    objects: u64,
    /// Process start → normal mode.
    to_normal: Duration,
    /// The parts the snapshot came in (from the proxy's log).
    parts: Option<usize>,
    /// The proxy's peak RSS once attached.
    peak_rss_mib: f64,
    /// Writes through the master in the second before the proxy started.
    writes_before: Samples,
    /// Writes through the master under way at some time while the proxy attached.
    writes_during: Samples,
}

/// One write of the attach phase's write loop: when it was sent, how long it took, whether it
/// succeeded.
type Timed = (Instant, Duration, bool);

/// Grows the configuration to `objects` DNs, then starts proxy `p3` with writes going on through
/// the master, and measures its attachment (see [`Attach`]).
async fn attach(setup: &Setup, dir: &Path, objects: u64) -> anyhow::Result<Attach> {
    let primary = |status: &pb::StatusResponse| status.role == "primary";
    let find_primary = || async {
        let waits = setup.pair.addrs().into_iter().map(|addr| async move {
            poll_status(&setup.status, &addr, "primary", MODE_TIMEOUT, primary)
                .await
                .map(|_| addr)
        });
        futures::future::select_ok(waits.map(Box::pin))
            .await
            .map(|(addr, _)| addr)
    };
    let master = find_primary().await?;
    let held = setup.status.status(&master).await?.objects;
    if held < objects {
        eprintln!("    importing {} DNs (the master holds {held} objects)", objects - held);
        load_dns(&setup.pair.admin, "a-", objects - held, 4).await?;
    }
    let master = find_primary().await?;
    let objects = setup.status.status(&master).await?.objects;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin = setup.pair.admin.clone();
    let writer: JoinHandle<Vec<Timed>> = tokio::spawn(async move {
        let mut timed = Vec::new();
        for i in 0u64.. {
            if *stop_rx.borrow() {
                break;
            }
            let skill = ConfigObject::new(ObjectType::Skill, 0, format!("attach-{i:06}"), ENVIRONMENT_TENANT);
            let sent = Instant::now();
            let ok = admin.create(&skill, None).await.is_ok();
            timed.push((sent, sent.elapsed(), ok));
        }
        timed
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let attached = async {
        let mut proxy = start_proxy(&setup.launch, dir, &setup.pair.addrs(), "p3").await?;
        let normal = poll_status(&setup.status, &proxy.addr, "in normal mode", ATTACH_TIMEOUT, |s| {
            s.proxy_mode == "normal"
        })
        .await;
        let measured = normal.and_then(|normal| {
            let peak_rss_mib = proxy.proc.memory()?.peak_kib as f64 / 1024.0;
            let log = std::fs::read_to_string(dir.join("p3.log")).unwrap_or_default();
            Ok((normal, peak_rss_mib, parts_of(&log)))
        });
        if let Err(e) = proxy.proc.kill9().await {
            eprintln!("warning: proxy p3: {e:#}");
        }
        measured
    }
    .await;
    let _ = stop_tx.send(true);
    let timed = writer.await.context("the write loop panicked")?;
    let (normal, peak_rss_mib, parts) = attached?;
    let one_second_before = started - Duration::from_secs(1);
    let mut writes_before = Samples::default();
    let mut writes_during = Samples::default();
    for &(sent, took, ok) in &timed {
        let ended = sent + took;
        let samples = if sent >= one_second_before && ended <= started {
            &mut writes_before
        } else if ended > started && sent < normal {
            &mut writes_during
        } else {
            continue;
        };
        if ok {
            samples.record(took);
        } else {
            samples.errors += 1;
        }
    }
    let result = Attach {
        objects,
        to_normal: normal.duration_since(started),
        parts,
        peak_rss_mib,
        writes_before,
        writes_during,
    };
    eprintln!(
        "    {objects} objects: start → normal {} ms in {} part(s), peak RSS {:.0} MiB; writes meanwhile: {}",
        result.to_normal.as_millis(),
        result.parts.map_or("?".into(), |n| n.to_string()),
        result.peak_rss_mib,
        describe(&result.writes_during)
    );
    Ok(result)
}

/// The part count of the first attachment a proxy logged (`parts=N`).
fn parts_of(log: &str) -> Option<usize> {
    log.lines()
        .find(|line| line.contains("attached to the primary master"))?
        .split_whitespace()
        .find_map(|field| field.strip_prefix("parts="))?
        .parse()
        .ok()
}

/// `n writes, p50 x ms, max y ms` (and the failures).
fn describe(samples: &Samples) -> String {
    let ms = |q| samples.quantile_ms(q).map_or("n/a".into(), |v| format!("{v:.1}"));
    let failed = if samples.errors > 0 {
        format!(", {} failed", samples.errors)
    } else {
        String::new()
    };
    format!(
        "{} writes, p50 {} ms, max {} ms{failed}",
        samples.len(),
        ms(0.5),
        ms(1.0)
    )
}

impl Attach {
    fn rows(&self) -> Vec<Row> {
        let n = self.objects;
        vec![
            row(
                format!("a third proxy, primary master holding {n} objects: process start → normal mode, s"),
                format!("{:.2}", self.to_normal.as_secs_f64()),
                "—",
                "—",
            ),
            row(
                "its snapshot: parts (about 4 MiB of objects each)",
                self.parts.map_or("n/a".into(), |p| p.to_string()),
                "—",
                "—",
            ),
            row(
                format!("its peak RSS (VmHWM), {n} objects: MiB"),
                format!("{:.0}", self.peak_rss_mib),
                "—",
                "—",
            ),
            row(
                "writes through the master meanwhile (one client)",
                describe(&self.writes_during),
                "—",
                "—",
            ),
            row(
                "writes through the master in the second before",
                describe(&self.writes_before),
                "—",
                "—",
            ),
        ]
    }

    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// How each phase that ran was measured.
fn method_notes(args: &ProxyArgs) -> Vec<String> {
    let has = |phase: ProxyPhase| args.phases.contains(&phase);
    let mut notes = vec![
        "- A 3-replica database (default settings, fsync on), a master pair (`tandem confserv --mode master`, \
         default settings) and two proxies (`tandem confserv --mode proxy --masters <both>`, default heartbeat: \
         every 1000 ms, timeout 2500 ms) as processes on 127.0.0.1, data in a temp dir; 1,000 DNs on one \
         switch; the proxies waited in normal mode and at the master's number."
            .to_owned(),
    ];
    if has(ProxyPhase::Reads) {
        notes.push(format!(
            "- Reads: `Get` by type, tenant and name of {READ_OBJECTS} DNs, {READ_CONCURRENCY} closed loops sharing \
             one `ConfClient` (default settings: {} HTTP/2 connections per server, taken in turn) given only that \
             server's address and logged in: proxy p1, then the primary master; {} s warm-up then {} s measured; \
             exact percentiles. etcd: a 3-member cluster (default settings) started only for its figure and \
             stopped after it; the database benchmark's stale-get workload: {} keys of 256 B, serializable \
             range, {READ_CONCURRENCY} loops sharing one `etcd-client` given the 3 members' endpoints.",
            ClientConfig::default().connections,
            args.warmup_secs,
            args.level_secs,
            workload::GET_KEYS
        ));
    }
    if has(ProxyPhase::Fanout) {
        notes.push(format!(
            "- Fan-out: {} subscriptions (everything, from now on) opened at once, alternate clients on each \
             proxy, {} subscriptions per client: each `ConfClient` has channels of its own (a `ChannelCache` \
             per client), made with `connections: 1`, so each client is one HTTP/2 connection, and a client's \
             subscriptions share one `SubscribeMany` stream on it (as etcd clients share one watch stream); \
             each subscription is its own `Subscription` with its own task; established = its `live` marker \
             received. Then \
             {} updates of one DN's field through the master pair, one after another, each once every \
             subscriber received the previous one (or 10 s passed); figure = just before the update is sent → \
             the notification of its number returned by `Subscription::next` in the subscriber's task; missing \
             = not received within 10 s. The subscribers run in this process, on the same 2 cores as the \
             database, the masters and both proxies.",
            args.subscribers, args.subscriptions_per_connection, args.changes
        ));
    }
    if has(ProxyPhase::Recovery) {
        notes.push(format!(
            "- Recovery ({} tries): both masters killed with SIGKILL; proxies' `Status` polled every 10 ms until \
             both say limited; then one master (alternately m1, m2) started again on its address; figures from \
             just before its process is spawned (and from when its `Status` first says primary) to each proxy's \
             `Status` saying normal; the figure is the later of the two proxies, median of the tries.",
            args.recovery_tries
        ));
    }
    if has(ProxyPhase::Attach) {
        notes.push(format!(
            "- Attach (last): DNs imported through the master pair (400 per document, 4 in flight) until the \
             primary held {} objects; one client creating skills through the master pair, one after another, \
             from a second before a third proxy p3 (default settings, the whole configuration) is started; \
             figures from just before its process is spawned to its `Status` saying normal mode (polled every \
             10 ms); parts from its log; peak RSS = VmHWM once normal; the writes counted are those under way \
             at some moment of that span.",
            args.attach_objects()
        ));
    }
    notes
}

/// Prints the table (also to `--out`) with the notes on method.
fn report(
    args: &ProxyArgs,
    rows: Vec<Row>,
    notes: Vec<String>,
    load_before: &str,
    started: Instant,
    etcd_version: Option<String>,
) -> anyhow::Result<()> {
    let mut all_notes = vec![String::new(), "How it was measured:".to_owned(), String::new()];
    all_notes.extend(method_notes(args));
    all_notes.extend(notes);
    all_notes.push(String::new());
    all_notes.push(load_note(load_before, started));
    let header = Header {
        title: "Tandem Configuration Server Proxy",
        tandem_bin: &args.common.tandem_bin,
        tandem_rev: &args.tandem_rev,
        command: &args.command,
        versions: etcd_version.into_iter().collect(),
    };
    publish(&render(&header, &rows, &all_notes), args.out.as_deref())
}
