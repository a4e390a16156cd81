//! A replica set of real processes: start them, form the set, wait for a primary, act on
//! replicas, and read and write through the client library or the command line.
//!
//! Replica ids are 1, 2, 3… in the order of the kinds given to [`Cluster::start`]. Every wait
//! polls status against a deadline ([`crate::EVENT_TIMEOUT`] unless given) and skips paused
//! replicas (a SIGSTOPped process accepts connections but answers nothing). Methods named
//! `must_*` panic with what they saw; the others return [`TestkitError`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tandem_client::{Client, ClientOptions, KeyValue, Member, StatusResponse};
use tandem_tls::TlsFiles;

use crate::process::ReplicaProcess;
use crate::wait::eventually;
use crate::{TestkitError, EVENT_TIMEOUT};

/// Longest a command-line invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What a replica is for (`--kind` of the membership).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Voter with data; writes wait for it.
    Sync,
    /// Learner with data; writes do not wait for it.
    Async,
    /// Voter without client data; started with `--witness`.
    Witness,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Async => "async",
            Kind::Witness => "witness",
        }
    }

    pub fn is_voter(self) -> bool {
        matches!(self, Kind::Sync | Kind::Witness)
    }
}

/// TLS files every replica and client of the cluster uses.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// How the replicas are started. Unset options are left to the binary's defaults.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `--cluster`.
    pub name: Option<String>,
    /// `--sync-mode`: `strict` or `available`.
    pub sync_mode: Option<String>,
    /// `--sync-timeout-ms`.
    pub sync_timeout_ms: Option<u64>,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: Option<u64>,
    /// `--election-min-ms`.
    pub election_min_ms: Option<u64>,
    /// `--election-max-ms`.
    pub election_max_ms: Option<u64>,
    /// `--history-limit`.
    pub history_limit: Option<u64>,
    /// `--snapshot-every`.
    pub snapshot_every: Option<u64>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca` for replicas, clients and the command line.
    pub tls: Option<TlsPaths>,
    /// Further `tandem db serve` flags.
    pub extra_args: Vec<String>,
    /// Form the set with `tandem db init` instead of the client library.
    pub init_with_cli: bool,
    /// Per-operation deadline of the cluster's clients.
    pub client_deadline: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            name: None,
            sync_mode: None,
            sync_timeout_ms: None,
            heartbeat_ms: None,
            election_min_ms: None,
            election_max_ms: None,
            history_limit: None,
            snapshot_every: None,
            tls: None,
            extra_args: Vec::new(),
            init_with_cli: false,
            client_deadline: tandem_client::DEFAULT_DEADLINE,
        }
    }
}

impl ClusterOptions {
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }
    pub fn sync_mode(mut self, mode: &str) -> Self {
        self.sync_mode = Some(mode.to_owned());
        self
    }
    pub fn sync_timeout_ms(mut self, ms: u64) -> Self {
        self.sync_timeout_ms = Some(ms);
        self
    }
    /// Heartbeat and election timeouts together.
    pub fn timers_ms(mut self, heartbeat: u64, election_min: u64, election_max: u64) -> Self {
        self.heartbeat_ms = Some(heartbeat);
        self.election_min_ms = Some(election_min);
        self.election_max_ms = Some(election_max);
        self
    }
    pub fn history_limit(mut self, revisions: u64) -> Self {
        self.history_limit = Some(revisions);
        self
    }
    pub fn snapshot_every(mut self, entries: u64) -> Self {
        self.snapshot_every = Some(entries);
        self
    }
    pub fn tls(mut self, tls: TlsPaths) -> Self {
        self.tls = Some(tls);
        self
    }
    pub fn init_with_cli(mut self) -> Self {
        self.init_with_cli = true;
        self
    }
    pub fn client_deadline(mut self, deadline: Duration) -> Self {
        self.client_deadline = deadline;
        self
    }

    /// The `tandem db serve` flags for a replica of `kind` (besides identity and place).
    fn serve_args(&self, kind: Kind) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: String| {
            args.push(name.into());
            args.push(value.into());
        };
        if let Some(v) = &self.name {
            flag("--cluster", v.clone());
        }
        if let Some(v) = &self.sync_mode {
            flag("--sync-mode", v.clone());
        }
        if let Some(v) = self.sync_timeout_ms {
            flag("--sync-timeout-ms", v.to_string());
        }
        if let Some(v) = self.heartbeat_ms {
            flag("--heartbeat-ms", v.to_string());
        }
        if let Some(v) = self.election_min_ms {
            flag("--election-min-ms", v.to_string());
        }
        if let Some(v) = self.election_max_ms {
            flag("--election-max-ms", v.to_string());
        }
        if let Some(v) = self.history_limit {
            flag("--history-limit", v.to_string());
        }
        if let Some(v) = self.snapshot_every {
            flag("--snapshot-every", v.to_string());
        }
        args.extend(self.tls_args());
        if kind == Kind::Witness {
            args.push("--witness".into());
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }

    /// The TLS flags every `tandem` command takes.
    fn tls_args(&self) -> Vec<OsString> {
        match &self.tls {
            None => Vec::new(),
            Some(tls) => vec![
                "--tls-cert".into(),
                tls.cert.clone().into(),
                "--tls-key".into(),
                tls.key.clone().into(),
                "--tls-ca".into(),
                tls.ca.clone().into(),
            ],
        }
    }

    /// Client options with this cluster's TLS files and deadline.
    pub fn client_options(&self) -> ClientOptions {
        let tls = match &self.tls {
            None => TlsFiles::default(),
            Some(t) => TlsFiles {
                cert: Some(t.cert.clone()),
                key: Some(t.key.clone()),
                ca: Some(t.ca.clone()),
            },
        };
        ClientOptions {
            tls,
            deadline: self.client_deadline,
            ..ClientOptions::default()
        }
    }
}

/// One replica of the cluster.
struct Slot {
    process: ReplicaProcess,
    kind: Kind,
}

/// A replica set of `tandem db serve` processes. Dropping it kills every process.
pub struct Cluster {
    /// The `tandem` binary.
    binary: PathBuf,
    options: ClusterOptions,
    /// Every replica started, by id (members, and pristine ones not added yet).
    slots: BTreeMap<u64, Slot>,
    /// A client of every replica started, for status, waits and `must_*` helpers.
    client: Client,
}

impl Cluster {
    /// Starts one replica per kind (ids 1, 2, …), forms the set through the first voter, and
    /// waits until a data replica is primary and every replica has applied what it had committed
    /// then (has joined).
    pub async fn start(
        binary: impl AsRef<Path>,
        kinds: &[Kind],
        options: ClusterOptions,
    ) -> Result<Cluster, TestkitError> {
        let cluster = Cluster::start_pristine(binary, kinds, options).await?;
        cluster.initialize().await?;
        let primary = cluster.wait_primary(EVENT_TIMEOUT).await?;
        // Every replica has joined: an async replica, which no write waits for, could otherwise
        // still be joining when a test first uses it (and refuse, e.g., a recovery for that).
        let target = cluster.status(primary).await?.commit_index;
        for id in cluster.ids() {
            let what = format!("joined: applied index at least {target}");
            cluster
                .wait_status(id, &what, EVENT_TIMEOUT, |s| s.applied_index >= target)
                .await?;
        }
        Ok(cluster)
    }

    /// [`start`](Self::start), panicking with the error.
    pub async fn must_start(binary: impl AsRef<Path>, kinds: &[Kind], options: ClusterOptions) -> Cluster {
        match Cluster::start(binary, kinds, options).await {
            Ok(cluster) => cluster,
            Err(e) => panic!("cannot start the cluster: {e}"),
        }
    }

    /// Starts the replicas without forming the set.
    pub async fn start_pristine(
        binary: impl AsRef<Path>,
        kinds: &[Kind],
        options: ClusterOptions,
    ) -> Result<Cluster, TestkitError> {
        let binary = binary.as_ref().to_owned();
        let mut slots = BTreeMap::new();
        for (i, kind) in kinds.iter().enumerate() {
            let id = i as u64 + 1;
            let process = ReplicaProcess::start(&binary, id, options.serve_args(*kind)).await?;
            tracing::info!(id, kind = kind.as_str(), addr = process.addr(), "replica started");
            slots.insert(id, Slot { process, kind: *kind });
        }
        let client = new_client(&slots, &options)?;
        Ok(Cluster {
            binary,
            options,
            slots,
            client,
        })
    }

    /// Forms the replica set from every replica started so far, through the first voter.
    pub async fn initialize(&self) -> Result<(), TestkitError> {
        let members = self.members();
        let via = self
            .slots
            .values()
            .find(|s| s.kind.is_voter())
            .map(|s| s.process.addr().to_owned())
            .ok_or(TestkitError::NoSuchReplica { id: 0 })?;
        if self.options.init_with_cli {
            let mut args = vec!["init".to_owned(), "--via".to_owned(), via];
            for m in &members {
                args.push("--member".to_owned());
                args.push(format!("{}={}:{}", m.id, m.addr, m.kind));
            }
            self.cli_raw(&args).await?;
        } else {
            self.client.initialize(&via, members).await?;
        }
        Ok(())
    }

    /// Every replica started, as membership entries.
    pub fn members(&self) -> Vec<Member> {
        self.slots
            .iter()
            .map(|(id, s)| Member {
                id: *id,
                addr: s.process.addr().to_owned(),
                kind: s.kind.as_str().to_owned(),
            })
            .collect()
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Ids of every replica started.
    pub fn ids(&self) -> Vec<u64> {
        self.slots.keys().copied().collect()
    }

    fn slot(&self, id: u64) -> Result<&Slot, TestkitError> {
        self.slots.get(&id).ok_or(TestkitError::NoSuchReplica { id })
    }

    fn slot_mut(&mut self, id: u64) -> Result<&mut Slot, TestkitError> {
        self.slots.get_mut(&id).ok_or(TestkitError::NoSuchReplica { id })
    }

    /// The replica process with this id.
    pub fn replica(&self, id: u64) -> &ReplicaProcess {
        match self.slot(id) {
            Ok(slot) => &slot.process,
            Err(e) => panic!("{e}"),
        }
    }

    /// The replica process with this id, to signal it.
    pub fn replica_mut(&mut self, id: u64) -> &mut ReplicaProcess {
        match self.slot_mut(id) {
            Ok(slot) => &mut slot.process,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn kind(&self, id: u64) -> Kind {
        match self.slot(id) {
            Ok(slot) => slot.kind,
            Err(e) => panic!("{e}"),
        }
    }

    /// `host:port` of replica `id`.
    pub fn addr(&self, id: u64) -> String {
        self.replica(id).addr().to_owned()
    }

    /// The id of the replica at `addr`.
    pub fn id_of(&self, addr: &str) -> Option<u64> {
        self.slots
            .iter()
            .find(|(_, s)| s.process.addr() == addr)
            .map(|(id, _)| *id)
    }

    /// Every replica's address, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.slots.values().map(|s| s.process.addr().to_owned()).collect()
    }

    /// The cluster's own client (shared; knows every replica).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A fresh client of every replica, with its own connections.
    pub fn new_client(&self) -> Client {
        self.new_client_with(self.options.client_options())
    }

    /// A fresh client with other options (a short deadline, say). The cluster's TLS files are
    /// filled in when `options` has none.
    pub fn new_client_with(&self, mut options: ClientOptions) -> Client {
        if !options.tls.enabled() {
            options.tls = self.options.client_options().tls;
        }
        match Client::new(self.endpoints(), options) {
            Ok(client) => client,
            Err(e) => panic!("cannot build a client: {e}"),
        }
    }

    /// Status of every answering replica (running and not paused), asked in parallel, by id.
    pub async fn status_all(&self) -> BTreeMap<u64, Result<StatusResponse, String>> {
        sweep(&self.client, &self.answering_now()).await
    }

    /// Status of replica `id`.
    pub async fn status(&self, id: u64) -> Result<StatusResponse, TestkitError> {
        let addr = self.slot(id)?.process.addr().to_owned();
        Ok(self.client.status(&addr).await?)
    }

    /// Status of replica `id`, panicking when it does not answer.
    pub async fn must_status(&self, id: u64) -> StatusResponse {
        match self.status(id).await {
            Ok(status) => status,
            Err(e) => panic!("status of replica {id}: {e}"),
        }
    }

    /// The current data primary in one sweep of status, if any replica says it is one.
    pub async fn primary_id(&self) -> Option<u64> {
        find_primary(&self.status_all().await).ok()
    }

    /// Waits until a data replica (not a witness) says it is primary; returns its id.
    pub async fn wait_primary(&self, timeout: Duration) -> Result<u64, TestkitError> {
        let client = self.client.clone();
        let answering = self.answering_now();
        eventually("a data replica to be primary", timeout, || {
            let client = client.clone();
            let answering = answering.clone();
            async move { find_primary(&sweep(&client, &answering).await) }
        })
        .await
    }

    /// [`wait_primary`](Self::wait_primary) with the default deadline, panicking on timeout.
    pub async fn must_wait_primary(&self) -> u64 {
        match self.wait_primary(EVENT_TIMEOUT).await {
            Ok(id) => id,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until replica `id` is primary.
    pub async fn wait_primary_is(&self, id: u64, timeout: Duration) -> Result<(), TestkitError> {
        let client = self.client.clone();
        let answering = self.answering_now();
        eventually(&format!("replica {id} to be primary"), timeout, || {
            let client = client.clone();
            let answering = answering.clone();
            async move {
                match find_primary(&sweep(&client, &answering).await) {
                    Ok(primary) if primary == id => Ok(()),
                    Ok(primary) => Err(format!("replica {primary} is primary")),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// [`wait_primary_is`](Self::wait_primary_is) with the default deadline, panicking on
    /// timeout.
    pub async fn must_wait_primary_is(&self, id: u64) {
        if let Err(e) = self.wait_primary_is(id, EVENT_TIMEOUT).await {
            panic!("{e}");
        }
    }

    /// Running, unpaused replicas as of now. Waits work on this list (a borrow of `self` cannot
    /// live across the probes).
    fn answering_now(&self) -> Vec<(u64, String)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.process.pid().is_some() && !s.process.is_paused())
            .map(|(id, s)| (*id, s.process.addr().to_owned()))
            .collect()
    }

    /// Waits until replica `id`'s status satisfies `condition`; `what` names it for the report.
    pub async fn wait_status(
        &self,
        id: u64,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&StatusResponse) -> bool,
    ) -> Result<StatusResponse, TestkitError> {
        let addr = self.slot(id)?.process.addr().to_owned();
        let client = self.client.clone();
        let condition = &condition;
        eventually(&format!("replica {id}: {what}"), timeout, || {
            let client = client.clone();
            let addr = addr.clone();
            async move {
                match client.status(&addr).await {
                    Ok(status) if condition(&status) => Ok(status),
                    Ok(status) => Err(format!("{status:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }

    /// [`wait_status`](Self::wait_status) with the default deadline, panicking on timeout.
    pub async fn must_wait_status(
        &self,
        id: u64,
        what: &str,
        condition: impl Fn(&StatusResponse) -> bool,
    ) -> StatusResponse {
        match self.wait_status(id, what, EVENT_TIMEOUT, condition).await {
            Ok(status) => status,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until the primary `primary` reports replica `replica` with `health`.
    pub async fn must_wait_health(&self, primary: u64, replica: u64, health: &str) -> StatusResponse {
        let what = format!("primary's view of replica {replica}: health {health}");
        self.must_wait_status(primary, &what, |s| {
            s.role == "primary" && s.replicas.iter().any(|r| r.id == replica && r.health == health)
        })
        .await
    }

    /// Waits until every replica in `ids` has applied everything the primary had committed when
    /// the wait began.
    pub async fn must_wait_caught_up(&self, ids: &[u64]) {
        let primary = self.must_wait_primary().await;
        let target = self.must_status(primary).await.commit_index;
        for &id in ids {
            self.must_wait_status(id, &format!("applied index at least {target}"), |s| {
                s.applied_index >= target
            })
            .await;
        }
    }

    // --- processes ---------------------------------------------------------------------------

    /// `kill -9` replica `id`.
    pub fn must_kill9(&mut self, id: u64) {
        tracing::info!(id, "kill -9");
        if let Err(e) = self.replica_mut(id).kill9() {
            panic!("kill -9 replica {id}: {e}");
        }
    }

    /// SIGTERM replica `id` and wait until it exits; panics if it exits with a failure.
    pub async fn must_terminate(&mut self, id: u64) {
        tracing::info!(id, "SIGTERM");
        match self.replica_mut(id).terminate().await {
            Ok(status) if status.success() => {}
            Ok(status) => panic!("replica {id} exited with {status} after SIGTERM"),
            Err(e) => panic!("terminate replica {id}: {e}"),
        }
    }

    /// SIGSTOP replica `id`.
    pub fn must_pause(&mut self, id: u64) {
        tracing::info!(id, "SIGSTOP");
        if let Err(e) = self.replica_mut(id).pause() {
            panic!("pause replica {id}: {e}");
        }
    }

    /// SIGCONT replica `id`.
    pub fn must_resume(&mut self, id: u64) {
        tracing::info!(id, "SIGCONT");
        if let Err(e) = self.replica_mut(id).resume() {
            panic!("resume replica {id}: {e}");
        }
    }

    /// Starts replica `id` again on its address.
    pub async fn must_restart(&mut self, id: u64) {
        tracing::info!(id, "restart");
        if let Err(e) = self.replica_mut(id).restart().await {
            panic!("restart replica {id}: {e}");
        }
    }

    /// Starts a new pristine replica of `kind` (the next id) that is not a member yet; returns
    /// its id. Add it with `add-replica` (command line or client).
    pub async fn start_replica(&mut self, kind: Kind) -> Result<u64, TestkitError> {
        let id = self.slots.keys().next_back().copied().unwrap_or(0) + 1;
        let process = ReplicaProcess::start(&self.binary, id, self.options.serve_args(kind)).await?;
        tracing::info!(id, kind = kind.as_str(), addr = process.addr(), "replica started");
        self.slots.insert(id, Slot { process, kind });
        self.client = new_client(&self.slots, &self.options)?;
        Ok(id)
    }

    // --- data --------------------------------------------------------------------------------

    pub async fn must_put(&self, key: &str, value: &str) -> u64 {
        match self.client.put(key, value.as_bytes().to_vec()).await {
            Ok(revision) => revision,
            Err(e) => panic!("put {key}={value:?}: {e}"),
        }
    }

    pub async fn must_get(&self, key: &str) -> Option<KeyValue> {
        match self.client.get(key).await {
            Ok(kv) => kv,
            Err(e) => panic!("get {key}: {e}"),
        }
    }

    /// Every key under `prefix`, read linearizably from the primary.
    pub async fn must_range(&self, prefix: &str) -> Vec<KeyValue> {
        match self.client.range(prefix, None).await {
            Ok(kvs) => kvs,
            Err(e) => panic!("range {prefix}: {e}"),
        }
    }

    /// Every key under `prefix` as replica `id` has applied it (a stale read there).
    pub async fn must_range_on(&self, id: u64, prefix: &str) -> Vec<KeyValue> {
        let addr = self.addr(id);
        match self.client.range(prefix, Some(&addr)).await {
            Ok(kvs) => kvs,
            Err(e) => panic!("range {prefix} on replica {id}: {e}"),
        }
    }

    // --- command line ------------------------------------------------------------------------

    /// Runs `tandem db ARGS --endpoints ALL` (with the cluster's TLS flags) and returns its
    /// stdout; fails when it exits non-zero.
    pub async fn cli(&self, args: &[&str]) -> Result<String, TestkitError> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.push("--endpoints".to_owned());
        all.push(self.endpoints().join(","));
        let output = self.cli_raw(&all).await?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// [`cli`](Self::cli), panicking with the command's output when it fails.
    pub async fn must_cli(&self, args: &[&str]) -> String {
        match self.cli(args).await {
            Ok(stdout) => stdout,
            Err(e) => panic!("{e}"),
        }
    }

    /// Runs `tandem db ARGS` as given (plus TLS flags).
    pub async fn cli_raw(&self, args: &[String]) -> Result<Output, TestkitError> {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .arg("db")
            .args(args)
            .args(self.options.tls_args())
            .kill_on_drop(true);
        let shown = format!("db {}", args.join(" "));
        tracing::info!("running tandem {shown}");
        let output = match tokio::time::timeout(CLI_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => {
                return Err(TestkitError::Io {
                    action: format!("run tandem {shown}"),
                    source,
                })
            }
            Err(_) => {
                return Err(TestkitError::Timeout {
                    what: format!("tandem {shown}"),
                    waited_ms: CLI_TIMEOUT.as_millis() as u64,
                    last: "still running; killed".into(),
                })
            }
        };
        if !output.status.success() {
            return Err(TestkitError::Cli {
                args: shown,
                status: output.status.to_string(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(output)
    }
}

fn new_client(slots: &BTreeMap<u64, Slot>, options: &ClusterOptions) -> Result<Client, TestkitError> {
    let endpoints = slots.values().map(|s| s.process.addr().to_owned()).collect();
    Ok(Client::new(endpoints, options.client_options())?)
}

/// Status of each of `replicas`, asked in parallel.
async fn sweep(client: &Client, replicas: &[(u64, String)]) -> BTreeMap<u64, Result<StatusResponse, String>> {
    let asks = replicas.iter().map(|(id, addr)| {
        let client = client.clone();
        let (id, addr) = (*id, addr.clone());
        async move { (id, client.status(&addr).await.map_err(|e| e.to_string())) }
    });
    futures::future::join_all(asks).await.into_iter().collect()
}

/// The data replica that says it is primary in the highest term, or what everyone said.
fn find_primary(answers: &BTreeMap<u64, Result<StatusResponse, String>>) -> Result<u64, String> {
    let best = answers
        .iter()
        .filter_map(|(id, a)| a.as_ref().ok().map(|s| (*id, s)))
        .filter(|(_, s)| s.role == "primary" && s.kind != "witness")
        .max_by_key(|(_, s)| s.term);
    match best {
        Some((id, _)) => Ok(id),
        None => Err(describe(answers)),
    }
}

/// One line per replica: role, kind, term, primary, indexes.
pub fn describe(answers: &BTreeMap<u64, Result<StatusResponse, String>>) -> String {
    answers
        .iter()
        .map(|(id, a)| match a {
            Ok(s) => format!(
                "[{id}: {} {} term {} primary {:?} commit {} applied {}]",
                s.role, s.kind, s.term, s.primary_id, s.commit_index, s.applied_index
            ),
            Err(e) => format!("[{id}: {e}]"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
