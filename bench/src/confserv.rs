//! The Configuration Server benchmark (`tandem-bench confserv`, run by `bench/run.sh --confserv`).
//!
//! It starts a three-replica database (as [`TandemCluster`] does for the database benchmark) and
//! a master pair (`tandem confserv --mode master`, default settings) on 127.0.0.1, drives the
//! pair through `ConfClient` and prints one markdown table with the goals beside the figures:
//!
//! - object writes through the master: DN objects created on one switch, distinct names, closed
//!   loops at concurrency 1, 16 and 256;
//! - reads by name (`Get` by type, tenant and name) of 1,000 DNs at concurrency 16 and 256;
//! - takeover: one client creates DNs in a loop; the primary is killed with SIGKILL; the figure is
//!   kill → completion of the first successful write invoked after the kill (median of the
//!   tries); every acknowledged write is read back at the end (lost must be 0);
//! - start-up: N DN objects are loaded through the pair (imports of generated documents of 400
//!   objects, the server's limit per write), both masters are killed, and a fresh master is
//!   started on the same database: process start → its `Status` answers with the number the
//!   pair had reached; its peak RSS (VmHWM) is read from `/proc`.
//!
//! Every process is spawned through [`crate::proc`], so it is killed when the run ends, fails or
//! is interrupted, and `run.sh` kills what is left from the pid file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures::StreamExt;
use tandem_config::document::{DocObject, DocRef, DocValue, Document, DOCUMENT_FORMAT};
use tandem_config::model::ENVIRONMENT_TENANT_NAME;
use tandem_config::{ConfigObject, ObjectType, State, Value, ENVIRONMENT_TENANT};
use tandem_confserv::client::{ClientConfig, ConfClient, ConfError};

use crate::figures::{command_output, date, machine, mib};
use crate::proc::{self, Memory, Proc, Spec};
use crate::stats::{median, Summary};
use crate::tandem::TandemCluster;
use crate::target::Cluster;
use crate::workload::{closed_loop, mix};
use crate::{show, start_tandem, Common};

/// Every master's `Status` answer, by address.
type StatusAnswers = Vec<(String, Result<tandem_proto::confserv::StatusResponse, ConfError>)>;

/// How long a master may take to bind its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a master may take to load the configuration and answer with the loaded number.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// The bootstrap administrator the benchmark logs in as.
pub(crate) const ADMIN: &str = "admin";
pub(crate) const ADMIN_PASSWORD: &str = "tandem bench administrator";
/// The switch every DN refers to.
const SWITCH: &str = "bench-switch";
/// Objects per import document: the server's limit of changes per write.
const IMPORT_BATCH: u64 = 400;
/// DNs the read levels pick from.
pub(crate) const READ_OBJECTS: u64 = 1_000;
const WRITE_LEVELS: [usize; 3] = [1, 16, 256];
const READ_LEVELS: [usize; 2] = [16, 256];
/// The goals of the Configuration Server issue.
const GOAL_OBJECTS: u64 = 1_000_000;
const GOAL_STARTUP_SECS: f64 = 10.0;
const GOAL_RSS_MIB: f64 = 1536.0;
const GOAL_TAKEOVER_MS: f64 = 1000.0;

#[derive(Args)]
pub(crate) struct ConfservArgs {
    #[command(flatten)]
    common: Common,
    /// Write the table here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measured seconds of each write/read level.
    #[arg(long, default_value_t = 10)]
    level_secs: u64,
    /// Unmeasured warm-up seconds before each level.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// DN objects in the database for the start-up figure (default 100,000; 1,000,000 with --full).
    #[arg(long)]
    objects: Option<u64>,
    /// The start-up figure with 1,000,000 objects (the goal's count).
    #[arg(long)]
    full: bool,
    #[arg(long, default_value_t = 5)]
    takeover_tries: usize,
    /// Imports in flight while loading objects for the start-up figure.
    #[arg(long, default_value_t = 4)]
    load_concurrency: usize,
    /// Fresh masters started one after the other on the loaded database (the figure is the median).
    #[arg(long, default_value_t = 3)]
    startup_tries: usize,
    /// Phases to run (comma-separated): writes, reads, takeover, startup.
    #[arg(long, value_delimiter = ',', default_value = "writes,reads,takeover,startup")]
    phases: Vec<CsPhase>,
    /// The command line to print in the report (run.sh passes its own).
    #[arg(long, default_value = "")]
    command: String,
    /// Tandem's source revision, for the report.
    #[arg(long, default_value = "unknown")]
    tandem_rev: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CsPhase {
    Writes,
    Reads,
    Takeover,
    Startup,
}

/// One master process and what it needs to be restarted on the same address.
pub(crate) struct Master {
    name: String,
    pub(crate) addr: String,
    spec: Spec,
    ready: PathBuf,
    proc: Option<Proc>,
}

/// What `tandem confserv --mode master` is started with (default settings otherwise).
pub(crate) struct MasterSetup {
    pub(crate) bin: PathBuf,
    root: PathBuf,
    db_endpoints: String,
    /// The bootstrap administrator's password (proxies log in with it too).
    pub(crate) password_file: PathBuf,
    pub(crate) pid_file: PathBuf,
}

impl MasterSetup {
    /// Masters of `db` with their files under `root/masters`, the bootstrap administrator's
    /// password written there.
    pub(crate) fn new(bin: &Path, root: &Path, db: &TandemCluster, pid_file: &Path) -> anyhow::Result<MasterSetup> {
        let masters_dir = root.join("masters");
        std::fs::create_dir_all(&masters_dir).with_context(|| format!("cannot create {}", masters_dir.display()))?;
        let password_file = masters_dir.join("admin-password");
        std::fs::write(&password_file, ADMIN_PASSWORD)
            .with_context(|| format!("cannot write {}", password_file.display()))?;
        Ok(MasterSetup {
            bin: bin.to_owned(),
            root: masters_dir,
            db_endpoints: db.endpoints().join(","),
            password_file,
            pid_file: pid_file.to_owned(),
        })
    }

    fn spec(&self, name: &str, listen: &str, ready: &Path) -> Spec {
        let args = [
            "confserv",
            "--mode",
            "master",
            "--listen",
            listen,
            "--db-endpoints",
            &self.db_endpoints,
            "--name",
            name,
            "--bootstrap-admin",
            ADMIN,
        ]
        .iter()
        .map(Into::into)
        .chain([
            "--bootstrap-password-file".into(),
            self.password_file.clone().into_os_string(),
            "--ready-file".into(),
            ready.into(),
        ])
        .collect();
        Spec {
            program: self.bin.clone(),
            args,
            log: self.root.join(format!("{name}.log")),
            env: Vec::new(),
        }
    }

    /// Starts a master on a free port and waits until it has bound it.
    async fn start(&self, name: &str) -> anyhow::Result<Master> {
        let ready = self.root.join(format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let spec = self.spec(name, "127.0.0.1:0", &ready);
        let mut proc = proc::spawn(&spec, &self.pid_file)?;
        let addr = proc::wait_for_file(&ready, &mut proc, START_TIMEOUT).await?;
        // Restarts listen on the same address (clients know the pair by it).
        let spec = self.spec(name, &addr, &ready);
        Ok(Master {
            name: name.to_owned(),
            addr,
            spec,
            ready,
            proc: Some(proc),
        })
    }
}

impl Master {
    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.kill9().await?;
        }
        Ok(())
    }

    pub(crate) async fn restart(&mut self, pid_file: &Path) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("master {} is still running", self.name);
        }
        let _ = std::fs::remove_file(&self.ready);
        let mut proc = proc::spawn(&self.spec, pid_file)?;
        proc::wait_for_file(&self.ready, &mut proc, START_TIMEOUT).await?;
        self.proc = Some(proc);
        Ok(())
    }

    fn memory(&self) -> Option<Memory> {
        self.proc.as_ref().and_then(|p| p.memory().ok())
    }

    /// The pid of the running process.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

/// A client of `servers`; `attempt` bounds one call, `deadline` one operation with its retries.
pub(crate) fn client_of(servers: Vec<String>, attempt: Duration, deadline: Duration) -> anyhow::Result<ConfClient> {
    ConfClient::new(
        servers,
        ClientConfig {
            attempt_timeout: attempt,
            deadline,
            ..ClientConfig::default()
        },
    )
    .context("cannot create the configuration client")
}

/// The master pair with an administrator's client.
pub(crate) struct Pair {
    pub(crate) masters: Vec<Master>,
    pub(crate) admin: ConfClient,
}

impl Pair {
    pub(crate) async fn start(setup: &MasterSetup) -> anyhow::Result<Pair> {
        let mut masters = Vec::new();
        for name in ["m1", "m2"] {
            masters.push(setup.start(name).await?);
        }
        let addrs: Vec<String> = masters.iter().map(|m| m.addr.clone()).collect();
        let admin = client_of(addrs, Duration::from_secs(60), Duration::from_secs(120))?;
        let pair = Pair { masters, admin };
        pair.wait_settled(Duration::from_secs(60)).await?;
        pair.admin
            .login(ADMIN, ADMIN_PASSWORD, "")
            .await
            .context("cannot log in as the bootstrap administrator")?;
        Ok(pair)
    }

    pub(crate) fn addrs(&self) -> Vec<String> {
        self.masters.iter().map(|m| m.addr.clone()).collect()
    }

    /// Checks once that exactly one master answers as primary, with the bootstrap's records;
    /// returns `(primary index, its last number)` and every master's answer, or why not.
    async fn primary(&self) -> anyhow::Result<((usize, u64), StatusAnswers)> {
        let answers = self.admin.status_all().await;
        let mut primary = None;
        for (index, (addr, answer)) in answers.iter().enumerate() {
            let status = answer.as_ref().map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
            if status.role == "primary" {
                if primary.is_some() {
                    bail!("two primaries");
                }
                // The bootstrap writes the first records; a primary below them is still starting.
                if status.last_seq == 0 {
                    bail!("{addr} is primary of an empty configuration");
                }
                primary = Some((index, status.last_seq));
            }
        }
        Ok((primary.context("no primary")?, answers))
    }

    /// Checks once that one master is primary and every other is a backup at the same number;
    /// returns `(primary index, its last number)`, or why not.
    async fn settled(&self) -> anyhow::Result<(usize, u64)> {
        let ((index, seq), answers) = self.primary().await?;
        for (addr, answer) in &answers {
            if let Ok(status) = answer {
                if status.role != "primary" && (status.role != "backup" || status.last_seq != seq) {
                    bail!("{addr} is {} at {} (primary at {seq})", status.role, status.last_seq);
                }
            }
        }
        Ok((index, seq))
    }

    pub(crate) async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<(usize, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.settled().await {
                Ok(settled) => return Ok(settled),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(why.context(format!("the master pair did not settle within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn stop(&mut self) {
        for master in &mut self.masters {
            if let Err(e) = master.kill().await {
                eprintln!("warning: master {}: {e:#}", master.name);
            }
        }
    }
}

/// Creates the switch every DN refers to; returns its DBID.
pub(crate) async fn create_switch(client: &ConfClient) -> anyhow::Result<u64> {
    let switch = ConfigObject::new(ObjectType::Switch, 0, SWITCH, ENVIRONMENT_TENANT);
    Ok(client
        .create(&switch, None)
        .await
        .context("cannot create the switch")?
        .object
        .context("the create answered no object")?
        .dbid)
}

/// The name of the `i`-th DN the reads pick from (loaded with `load_dns(client, "r-", …)`).
pub(crate) fn read_name(i: u64) -> String {
    format!("r-{i:08}")
}

/// Gets by type, tenant and name of random DNs among the [`READ_OBJECTS`] loaded with prefix
/// `r-`, `concurrency` closed loops sharing `client`.
pub(crate) async fn reads_by_name(
    client: &ConfClient,
    concurrency: usize,
    warmup: Duration,
    level: Duration,
) -> Summary {
    let client = client.clone();
    closed_loop(concurrency, warmup, level, move |worker, seq| {
        let client = client.clone();
        let name = read_name(mix(worker as u64, seq) % READ_OBJECTS);
        async move {
            client.get_by_name(ObjectType::Dn, ENVIRONMENT_TENANT, &name).await?;
            Ok(())
        }
    })
    .await
}

/// A DN on the benchmark's switch.
fn dn(name: String, switch: u64, number: u64) -> ConfigObject {
    ConfigObject::new(ObjectType::Dn, 0, name, ENVIRONMENT_TENANT)
        .with_field("switch", Value::Ref(switch))
        .with_field("number", number.to_string())
}

/// An import document of the DNs `{prefix}{first:08}` … below `end`.
fn dn_document(prefix: &str, first: u64, end: u64) -> String {
    let tenant = Some(ENVIRONMENT_TENANT_NAME.to_owned());
    let switch = DocValue::Ref(DocRef {
        object_type: ObjectType::Switch,
        tenant: tenant.clone(),
        name: SWITCH.to_owned(),
    });
    let objects = (first..end)
        .map(|i| DocObject {
            object_type: ObjectType::Dn,
            name: format!("{prefix}{i:08}"),
            tenant: tenant.clone(),
            folder: None,
            state: State::Enabled,
            fields: [
                ("switch".to_owned(), switch.clone()),
                ("number".to_owned(), DocValue::Str(i.to_string())),
            ]
            .into(),
            options: Default::default(),
            annex: Default::default(),
        })
        .collect();
    Document {
        format: DOCUMENT_FORMAT,
        objects,
    }
    .to_json()
}

/// How a load of DNs through imports went.
pub(crate) struct Load {
    took: Duration,
    /// `(objects in the set before the import, latency)` of each import.
    imports: Vec<(u64, Duration)>,
}

/// Imports the DNs `{prefix}00000000` … below `n`, [`IMPORT_BATCH`] per document,
/// `concurrency` documents in flight, printing progress.
pub(crate) async fn load_dns(client: &ConfClient, prefix: &str, n: u64, concurrency: usize) -> anyhow::Result<Load> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let imports = Arc::new(Mutex::new(Vec::new()));
    let step = (n / 10).max(IMPORT_BATCH);
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, next, done, imports, prefix) = (
                client.clone(),
                next.clone(),
                done.clone(),
                imports.clone(),
                prefix.to_owned(),
            );
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(IMPORT_BATCH, Ordering::Relaxed);
                    if first >= n {
                        return anyhow::Ok(());
                    }
                    let end = (first + IMPORT_BATCH).min(n);
                    let json = dn_document(&prefix, first, end);
                    let before = done.load(Ordering::Relaxed);
                    let began = Instant::now();
                    client
                        .import(&json, false)
                        .await
                        .with_context(|| format!("import of {prefix}{first:08}…"))?;
                    lock(&imports).push((before, began.elapsed()));
                    let total = done.fetch_add(end - first, Ordering::Relaxed) + (end - first);
                    if total / step != (total - (end - first)) / step {
                        eprintln!("    {total} of {n} objects in {:.0} s", started.elapsed().as_secs_f64());
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.context("a load worker panicked")??;
    }
    let imports = std::mem::take(&mut *lock(&imports));
    Ok(Load {
        took: started.elapsed(),
        imports,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the takeover tries measured.
#[derive(Default)]
struct Takeover {
    /// Kill → first successful write invoked after the kill, per try (`None`: none within 30 s).
    times: Vec<Option<Duration>>,
    acked: u64,
    lost: u64,
    /// Writes that failed or whose outcome stayed unknown (never acknowledged).
    failed: u64,
}

/// `tries` times: under a one-client create loop, kill -9 the primary, time the first successful
/// write invoked after the kill, restart the killed master, wait until the pair has settled.
/// Then reads every acknowledged object back by name.
async fn takeover(pair: &mut Pair, setup: &MasterSetup, switch: u64, tries: usize) -> anyhow::Result<Takeover> {
    const LIMIT: Duration = Duration::from_secs(30);
    let token = pair.admin.token().context("not logged in")?;
    let writer = client_of(pair.addrs(), Duration::from_secs(1), Duration::from_secs(5))?;
    writer.set_token(&token);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let mut result = Takeover::default();
    for attempt in 0..tries {
        pair.wait_settled(Duration::from_secs(60)).await?;
        let successes = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let (writer, acked, failed, successes) = (writer.clone(), acked.clone(), failed.clone(), successes.clone());
            async move {
                let loop_end = Instant::now() + LIMIT + Duration::from_secs(10);
                let mut seq = 0u64;
                while !*stop_rx.borrow_and_update() && Instant::now() < loop_end {
                    let name = format!("t{attempt}-{seq:06}");
                    seq += 1;
                    let invoked = Instant::now();
                    let object = dn(name.clone(), switch, seq);
                    match tokio::time::timeout(Duration::from_secs(10), writer.create(&object, None)).await {
                        Ok(Ok(_)) => {
                            lock(&acked).push(name);
                            lock(&successes).push((invoked, Instant::now()));
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                                _ = stop_rx.changed() => {}
                            }
                        }
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Writes are under way: the backup may be a change or two behind the primary here.
        let ((primary, _), _) = pair.primary().await.context("before the kill")?;
        let killed_at = Instant::now();
        pair.masters[primary].kill().await?;
        let recovery = loop {
            let first = lock(&successes)
                .iter()
                .find(|(invoked, _)| *invoked >= killed_at)
                .map(|(_, done)| *done);
            if let Some(done) = first {
                break Some(done.saturating_duration_since(killed_at));
            }
            if killed_at.elapsed() > LIMIT {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        eprintln!(
            "    try {}: killed {} → first write after {}",
            attempt + 1,
            pair.masters[primary].name,
            recovery
                .map(|d| format!("{} ms", d.as_millis()))
                .unwrap_or_else(|| "none".into())
        );
        result.times.push(recovery);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
            bail!("the write loop did not stop");
        }
        pair.masters[primary].restart(&setup.pid_file).await?;
    }
    pair.wait_settled(Duration::from_secs(60)).await?;
    let names = std::mem::take(&mut *lock(&acked));
    result.acked = names.len() as u64;
    result.failed = failed.load(Ordering::Relaxed);
    result.lost = read_back(&pair.admin, names).await?;
    Ok(result)
}

/// Reads every DN back by name; returns how many are missing.
async fn read_back(client: &ConfClient, names: Vec<String>) -> anyhow::Result<u64> {
    let checks = futures::stream::iter(names)
        .map(|name| {
            let client = client.clone();
            async move {
                match client.get_by_name(ObjectType::Dn, ENVIRONMENT_TENANT, &name).await {
                    Ok(_) => Ok(false),
                    Err(e) if e.is(tandem_proto::confserv::error_kind::NOT_FOUND) => Ok(true),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read DN {name} back"))),
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<anyhow::Result<bool>>>()
        .await;
    let mut lost = 0;
    for check in checks {
        if check? {
            lost += 1;
        }
    }
    Ok(lost)
}

/// What the start-up phase measured.
struct Startup {
    /// Objects the fresh master reported once ready.
    objects: u64,
    /// The number the pair had reached.
    seq: u64,
    load: Load,
    /// Each fresh master's start, in the order tried.
    tries: Vec<FreshStart>,
    /// Peak RSS of the pair's primary after the load (its set built write by write).
    pair_primary_memory: Option<Memory>,
}

impl Startup {
    /// The median time to ready over the tries.
    fn ready(&self) -> Duration {
        let times: Vec<Duration> = self.tries.iter().map(|t| t.ready).collect();
        median(&times).unwrap_or_default()
    }

    /// The highest peak RSS over the tries.
    fn peak_kib(&self) -> Option<u64> {
        self.tries.iter().filter_map(|t| t.memory.map(|m| m.peak_kib)).max()
    }
}

/// One fresh master's start on the loaded database.
struct FreshStart {
    /// Process start → `Status` answers with the pair's number.
    ready: Duration,
    /// Process start → primary (after the killed pair's lease expired, for the first try).
    primary: Option<Duration>,
    /// Objects it reported once ready.
    objects: u64,
    /// Its memory once primary.
    memory: Option<Memory>,
}

/// Loads `n` DNs through the pair, kills the pair, and times `tries` fresh masters' starts,
/// one after the other (each killed before the next starts).
async fn startup(
    pair: &mut Pair,
    setup: &MasterSetup,
    n: u64,
    concurrency: usize,
    tries: usize,
) -> anyhow::Result<Startup> {
    eprintln!("    loading {n} DN objects (imports of {IMPORT_BATCH}, {concurrency} in flight)");
    let load = load_dns(&pair.admin, "s-", n, concurrency).await?;
    eprintln!(
        "    loaded in {:.1} s ({:.0} objects/s)",
        load.took.as_secs_f64(),
        n as f64 / load.took.as_secs_f64().max(1e-9)
    );
    let (primary, seq) = pair.wait_settled(Duration::from_secs(120)).await?;
    let pair_primary_memory = pair.masters[primary].memory();
    pair.stop().await;

    let mut starts = Vec::new();
    for i in 0..tries.max(1) {
        eprintln!(
            "    starting a fresh master on the database (number {seq}), try {}",
            i + 1
        );
        let start = fresh_start(setup, &format!("m{}", 3 + i), seq).await?;
        eprintln!(
            "    ready after {:.2} s, primary after {}",
            start.ready.as_secs_f64(),
            start
                .primary
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or("never (within the limit)".into())
        );
        starts.push(start);
    }
    Ok(Startup {
        objects: starts.first().map_or(0, |s| s.objects),
        seq,
        load,
        tries: starts,
        pair_primary_memory,
    })
}

/// Starts a fresh master named `name`, waits until it answers with `seq` and is primary, and
/// kills it.
async fn fresh_start(setup: &MasterSetup, name: &str, seq: u64) -> anyhow::Result<FreshStart> {
    let started = Instant::now();
    let mut fresh = setup.start(name).await?;
    let client = client_of(vec![fresh.addr.clone()], Duration::from_secs(5), Duration::from_secs(5))?;
    let mut ready = None;
    let mut primary_at = None;
    let mut objects = 0;
    let mut last_seen = String::new();
    while started.elapsed() < LOAD_TIMEOUT {
        if let Some(proc) = fresh.proc.as_mut() {
            if let Some(status) = proc.exited()? {
                bail!("the fresh master exited ({status}); see {}", fresh.spec.log.display());
            }
        }
        match client.status(&fresh.addr).await {
            Ok(status) => {
                if ready.is_none() && status.last_seq >= seq {
                    ready = Some(started.elapsed());
                    objects = status.objects;
                }
                if status.role == "primary" && status.last_seq >= seq {
                    primary_at = Some(started.elapsed());
                    break;
                }
                last_seen = format!("{} at {}", status.role, status.last_seq);
            }
            Err(e) => last_seen = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(ready) = ready else {
        bail!("the fresh master did not reach number {seq} within {LOAD_TIMEOUT:?} (last: {last_seen})");
    };
    let memory = fresh.memory();
    if let Err(e) = fresh.kill().await {
        eprintln!("warning: master {}: {e:#}", fresh.name);
    }
    Ok(FreshStart {
        ready,
        primary: primary_at,
        objects,
        memory,
    })
}

/// One row of the table.
pub(crate) struct Row {
    figure: String,
    measured: String,
    goal: String,
    met: String,
}

pub(crate) fn row(figure: impl Into<String>, measured: impl Into<String>, goal: &str, met: &str) -> Row {
    Row {
        figure: figure.into(),
        measured: measured.into(),
        goal: goal.to_owned(),
        met: met.to_owned(),
    }
}

pub(crate) fn yes_no(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

pub(crate) fn latency_rows(rows: &mut Vec<Row>, name: &str, s: &Summary) {
    let errors = if s.errors > 0 {
        format!(" ({} errors)", s.errors)
    } else {
        String::new()
    };
    let ms = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or("n/a".into());
    rows.push(row(
        format!("{name}: ops/s"),
        format!("{:.0}{errors}", s.ops_per_sec),
        "—",
        "—",
    ));
    rows.push(row(format!("{name}: p50 ms"), ms(s.p50_ms), "—", "—"));
    rows.push(row(format!("{name}: p99 ms"), ms(s.p99_ms), "—", "—"));
}

/// The report's last line: the load on the machine around the run, and how long it took.
pub(crate) fn load_note(load_before: &str, started: Instant) -> String {
    format!(
        "Load average before the run: {load_before}; after: {} (2 cores shared with other work: figures \
         measured while the machine was busy are lower and noisier). Run time: {} s.",
        loadavg(),
        started.elapsed().as_secs()
    )
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Mean latency of the imports made while the set held less than a tenth / more than nine
/// tenths of `n` objects, in ms.
fn import_trend(load: &Load, n: u64) -> (Option<f64>, Option<f64>) {
    let mean = |keep: &dyn Fn(u64) -> bool| {
        let picked: Vec<f64> = load
            .imports
            .iter()
            .filter(|(before, _)| keep(*before))
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        (!picked.is_empty()).then(|| picked.iter().sum::<f64>() / picked.len() as f64)
    };
    (mean(&|b| b < n / 10), mean(&|b| b >= n - n / 10))
}

pub(crate) async fn run(args: ConfservArgs) -> anyhow::Result<()> {
    let objects = args.objects.unwrap_or(if args.full { GOAL_OBJECTS } else { 100_000 });
    let warmup = Duration::from_secs(args.warmup_secs);
    let level = Duration::from_secs(args.level_secs);
    let root = &args.common.work_dir;
    let pid_file = root.join("pids");
    let started = Instant::now();
    let load_before = loadavg();
    let has = |phase: CsPhase| args.phases.contains(&phase);

    eprintln!("--- starting the database (3 replicas) and the master pair on 127.0.0.1");
    let db = start_tandem(&args.common.tandem_bin, &root.join("db"), &pid_file, &[]).await?;
    let setup = MasterSetup::new(&args.common.tandem_bin, root, &db, &pid_file)?;
    let mut pair = Pair::start(&setup).await?;
    eprintln!(
        "    database: {}; masters: {}",
        db.endpoints().join(","),
        pair.addrs().join(",")
    );
    let switch = create_switch(&pair.admin).await?;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if has(CsPhase::Writes) {
        for c in WRITE_LEVELS {
            eprintln!("--- writes (create DN), concurrency {c}");
            let client = pair.admin.clone();
            let summary = closed_loop(c, warmup, level, move |worker, seq| {
                let client = client.clone();
                async move {
                    let object = dn(format!("w{c}-{worker}-{seq:08}"), switch, seq);
                    client.create(&object, None).await?;
                    Ok(())
                }
            })
            .await;
            latency_rows(&mut rows, &format!("create DN, c={c}"), &show("master", summary));
        }
    }
    if has(CsPhase::Reads) {
        eprintln!("--- writing {READ_OBJECTS} DNs to read");
        load_dns(&pair.admin, "r-", READ_OBJECTS, 1).await?;
        for c in READ_LEVELS {
            eprintln!("--- reads (get DN by name), concurrency {c}");
            let summary = reads_by_name(&pair.admin, c, warmup, level).await;
            latency_rows(&mut rows, &format!("get DN by name, c={c}"), &show("master", summary));
        }
    }
    if has(CsPhase::Takeover) {
        eprintln!("--- takeover: kill -9 the primary under a one-client write loop");
        let result = match takeover(&mut pair, &setup, switch, args.takeover_tries).await {
            Ok(result) => result,
            Err(e) => {
                eprintln!("    takeover failed: {e:#}");
                rows.push(row(
                    "takeover: kill -9 primary → first successful write, median ms",
                    format!("failed: {}", cell_text(&e)),
                    "≤ 1000",
                    "**no**",
                ));
                return report(&args, rows, notes, &load_before, started, (pair, db)).await;
            }
        };
        let done: Vec<Duration> = result.times.iter().flatten().copied().collect();
        let med = median(&done).map(|d| d.as_secs_f64() * 1000.0);
        let each: Vec<String> = result
            .times
            .iter()
            .map(|t| t.map(|d| d.as_millis().to_string()).unwrap_or("none".into()))
            .collect();
        let never = result.times.iter().filter(|t| t.is_none()).count();
        rows.push(row(
            "takeover: kill -9 primary → first successful write, median ms",
            format!(
                "{} ([{}])",
                med.map(|m| format!("{m:.0}")).unwrap_or("n/a".into()),
                each.join(", ")
            ),
            "≤ 1000",
            yes_no(never == 0 && med.is_some_and(|m| m <= GOAL_TAKEOVER_MS)),
        ));
        rows.push(row(
            "takeover: acknowledged writes lost",
            format!(
                "{} (of {}; {} failed/unknown)",
                result.lost, result.acked, result.failed
            ),
            "0",
            yes_no(result.lost == 0),
        ));
    }
    if has(CsPhase::Startup) {
        eprintln!("--- start-up: {objects} DN objects in the database, then a fresh master");
        let s = match startup(&mut pair, &setup, objects, args.load_concurrency, args.startup_tries).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("    start-up failed: {e:#}");
                rows.push(row(
                    format!("start-up of a master, {objects} objects in the database: s"),
                    format!("failed: {}", cell_text(&e)),
                    "≤ 10 (1,000,000 objects)",
                    "**no**",
                ));
                return report(&args, rows, notes, &load_before, started, (pair, db)).await;
            }
        };
        let at_goal = s.objects >= GOAL_OBJECTS;
        let met = |ok: bool| {
            if at_goal {
                yes_no(ok).to_owned()
            } else {
                format!("{} at this count (the goal is for 1,000,000: `--full`)", yes_no(ok))
            }
        };
        let peak = s.peak_kib().map(mib);
        let each: Vec<String> = s
            .tries
            .iter()
            .map(|t| format!("{:.2}", t.ready.as_secs_f64()))
            .collect();
        rows.push(row(
            format!("start-up of a master, {} objects in the database: median s", s.objects),
            format!("{:.2} ([{}])", s.ready().as_secs_f64(), each.join(", ")),
            "≤ 10 (1,000,000 objects)",
            &met(s.ready().as_secs_f64() <= GOAL_STARTUP_SECS),
        ));
        rows.push(row(
            format!("peak RSS (VmHWM) of that master, {} objects: MiB", s.objects),
            peak.map(|p| format!("{p:.0}")).unwrap_or("n/a".into()),
            "≤ 1536 (1.5 GiB, 1,000,000 objects)",
            &met(peak.is_some_and(|p| p <= GOAL_RSS_MIB)),
        ));
        let (early, late) = import_trend(&s.load, objects);
        let ms = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or("n/a".into());
        notes.push(format!(
            "- Start-up load: {objects} DNs imported through the pair in {:.0} s ({:.0} objects/s; an import \
             of {IMPORT_BATCH} took {} ms on average in the first tenth, {} ms in the last tenth); the pair \
             then reached number {}; the first fresh master answered with it after {:.2} s and was primary after \
             {} (once the killed pair's lease had expired); its RSS then {} MiB. The pair's primary, which built \
             its set write by write, peaked at {} MiB.",
            s.load.took.as_secs_f64(),
            objects as f64 / s.load.took.as_secs_f64().max(1e-9),
            ms(early),
            ms(late),
            s.seq,
            s.tries[0].ready.as_secs_f64(),
            s.tries[0]
                .primary
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or("never (within the limit)".into()),
            s.tries[0]
                .memory
                .map(|m| format!("{:.0}", mib(m.rss_kib)))
                .unwrap_or("?".into()),
            s.pair_primary_memory
                .map(|m| format!("{:.0}", mib(m.peak_kib)))
                .unwrap_or("?".into()),
        ));
    }
    report(&args, rows, notes, &load_before, started, (pair, db)).await
}

/// An error as one table cell.
pub(crate) fn cell_text(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('|', "/").replace('\n', " ")
}

/// Stops everything, then prints the table (also to `--out`) with the notes on method.
async fn report(
    args: &ConfservArgs,
    rows: Vec<Row>,
    notes: Vec<String>,
    load_before: &str,
    started: Instant,
    (mut pair, mut db): (Pair, TandemCluster),
) -> anyhow::Result<()> {
    pair.stop().await;
    db.stop().await;

    let mut all_notes = vec![
        String::new(),
        "How it was measured:".to_owned(),
        String::new(),
        "- A 3-replica database (3 `sync` replicas, default settings, fsync on) and a master pair \
         (`tandem confserv --mode master`, default settings: lease TTL 1 s) as processes on 127.0.0.1, data \
         in a temp dir; one `ConfClient` (both masters' addresses) logged in as the bootstrap administrator."
            .to_owned(),
        format!(
            "- Writes: closed loops creating DN objects on one switch, distinct names; reads: `Get` by type, \
             tenant and name of {READ_OBJECTS} DNs; c clients share one client; {} s warm-up then {} s measured \
             per level; exact percentiles.",
            args.warmup_secs, args.level_secs
        ),
        format!(
            "- Takeover: one client creates DNs in a loop (1 s per attempt, 5 s per write with the client's \
             retries); the primary is killed with SIGKILL; figure = kill → completion of the first successful \
             write invoked after the kill; the master is restarted and the pair waited settled between tries \
             ({} tries). Every acknowledged write is read back by name at the end.",
            args.takeover_tries
        ),
        format!(
            "- Start-up: DNs loaded through the pair as import documents of 400 objects (the server's limit per \
             write); both masters killed; fresh masters started on the same database one after the other, each \
             killed before the next ({} tries); figure = median of process start → `Status` answers with the \
             number the pair had reached; peak RSS = the highest VmHWM from /proc/PID/status once primary.",
            args.startup_tries
        ),
    ];
    all_notes.extend(notes);
    all_notes.push(String::new());
    all_notes.push(load_note(load_before, started));
    let header = Header {
        title: "Tandem Configuration Server",
        tandem_bin: &args.common.tandem_bin,
        tandem_rev: &args.tandem_rev,
        command: &args.command,
        versions: Vec::new(),
    };
    publish(&render(&header, &rows, &all_notes), args.out.as_deref())
}

/// What the report says above its table.
pub(crate) struct Header<'a> {
    pub(crate) title: &'a str,
    pub(crate) tandem_bin: &'a Path,
    pub(crate) tandem_rev: &'a str,
    pub(crate) command: &'a str,
    /// Other software measured beside Tandem (`etcd --version`'s first line…).
    pub(crate) versions: Vec<String>,
}

/// Prints the report and writes it to `out`.
pub(crate) fn publish(table: &str, out: Option<&Path>) -> anyhow::Result<()> {
    println!("{table}");
    if let Some(out) = out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(out, table).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("--- written to {}", out.display());
    }
    Ok(())
}

/// The report: header, one table of figures against goals, then the notes.
pub(crate) fn render(header: &Header, rows: &[Row], notes: &[String]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", header.title);
    let _ = writeln!(out, "- Date: {}", date());
    let _ = writeln!(out, "- Machine: {}", machine());
    let mut versions = vec![format!(
        "tandem {} (release), {}",
        header.tandem_rev,
        command_output(header.tandem_bin, &["--version"]).trim()
    )];
    versions.extend(header.versions.iter().cloned());
    let _ = writeln!(out, "- Versions: {}", versions.join(", "));
    let _ = writeln!(out, "- Command: `{}`\n", header.command);
    let _ = writeln!(out, "| Figure | Measured | Goal | Met |");
    let _ = writeln!(out, "|---|---:|---|---|");
    for r in rows {
        let _ = writeln!(out, "| {} | {} | {} | {} |", r.figure, r.measured, r.goal, r.met);
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    out
}
