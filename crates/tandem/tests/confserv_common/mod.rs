//! Shared by the `confserv_*` and `proxy_*` tests: master Configuration Server processes
//! (`tandem confserv --mode master`) and proxies (`--mode proxy`) with their own logs and
//! signals, a database cluster with a pair of masters, and the waits the tests need. The database replicas come from `tandem-testkit`; this module adds
//! only what the configuration server needs (the harness there runs `tandem db serve` only).

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tandem_confserv::client::{ClientConfig, ConfClient, ConfError};
use tandem_proto::confserv::StatusResponse;
use tandem_testkit::{must_eventually, Cluster, ClusterOptions, Kind};
use tempfile::TempDir;

/// The `tandem` binary cargo built for these tests.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
/// The bootstrap administrator.
pub const ADMIN: &str = "admin";
/// Their password.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// Deadline of waits for server events (a takeover, a catch-up) on a loaded two-core machine.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Lease TTL the tests run with.
pub const LEASE_TTL_MS: u64 = 1_500;

/// Heartbeat interval of the proxies the tests run.
pub const PROXY_HEARTBEAT_INTERVAL_MS: u64 = 250;
/// Heartbeat timeout of the proxies the tests run.
pub const PROXY_HEARTBEAT_TIMEOUT_MS: u64 = 2_000;

/// One `tandem confserv` process (a master or a proxy).
pub struct ConfservProcess {
    pub name: String,
    dir: TempDir,
    addr: String,
    /// Where `/metrics` is served, when started with `--metrics-listen` (the ready file's
    /// second line).
    metrics_addr: Option<String>,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl ConfservProcess {
    /// Starts a master on a free port and waits until it has bound it.
    pub fn start(name: &str, db_endpoints: &[String], extra: &[&str]) -> ConfservProcess {
        Self::start_on(name, db_endpoints, "127.0.0.1:0", extra)
    }

    /// Starts a proxy of `masters` on a free port (logging in as the administrator) and waits
    /// until it has bound it (not until it has loaded: see [`must_wait_proxy_mode`]).
    pub fn start_proxy(name: &str, masters: &[String], extra: &[&str]) -> ConfservProcess {
        let dir = Self::dir(name);
        let mut args: Vec<String> = vec![
            "confserv".into(),
            "--mode".into(),
            "proxy".into(),
            "--masters".into(),
            masters.join(","),
            "--name".into(),
            name.into(),
            "--user".into(),
            ADMIN.into(),
            "--password-file".into(),
            dir.path().join("admin-password").display().to_string(),
            "--heartbeat-interval-ms".into(),
            PROXY_HEARTBEAT_INTERVAL_MS.to_string(),
            "--heartbeat-timeout-ms".into(),
            PROXY_HEARTBEAT_TIMEOUT_MS.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(name, dir, args, "127.0.0.1:0")
    }

    fn dir(name: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tandem-confserv-{name}-"))
            .tempdir()
            .expect("temporary directory");
        std::fs::write(dir.path().join("admin-password"), ADMIN_PASSWORD).expect("write the password file");
        dir
    }

    fn launch(name: &str, dir: TempDir, args: Vec<String>, listen: &str) -> ConfservProcess {
        let mut process = ConfservProcess {
            name: name.to_owned(),
            dir,
            addr: String::new(),
            metrics_addr: None,
            args,
            child: None,
            paused: false,
        };
        process.addr = process.spawn(listen);
        process
    }

    /// Starts a master listening on `listen` (`127.0.0.1:0` for a free port).
    pub fn start_on(name: &str, db_endpoints: &[String], listen: &str, extra: &[&str]) -> ConfservProcess {
        let dir = Self::dir(name);
        let mut args: Vec<String> = vec![
            "confserv".into(),
            "--mode".into(),
            "master".into(),
            "--db-endpoints".into(),
            db_endpoints.join(","),
            "--name".into(),
            name.into(),
            "--bootstrap-admin".into(),
            ADMIN.into(),
            "--bootstrap-password-file".into(),
            dir.path().join("admin-password").display().to_string(),
        ];
        if !extra.contains(&"--lease-ttl-ms") {
            args.extend(["--lease-ttl-ms".to_owned(), LEASE_TTL_MS.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::launch(name, dir, args, listen)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("confserv.log")
    }

    fn spawn(&mut self, listen: &str) -> String {
        let ready = self.dir.path().join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(self.log_path())
                .expect("open the log")
        };
        let mut command = Command::new(TANDEM);
        command
            .args(&self.args)
            .arg("--listen")
            .arg(listen)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(log())
            .stderr(log());
        // SAFETY: prctl is async-signal-safe; the kernel kills the server if the test dies.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        self.note(&format!("start {:?}", self.args));
        self.child = Some(command.spawn().expect("spawn tandem confserv"));
        self.paused = false;
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                if text.ends_with('\n') {
                    let mut lines = text.lines().map(str::to_owned);
                    let addr = lines.next().unwrap_or_default();
                    self.metrics_addr = lines.next();
                    return addr;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("confserv {} exited early ({status}):\n{}", self.name, self.log_tail());
            }
            assert!(
                started.elapsed() < EVENT_TIMEOUT,
                "confserv {} not ready:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Where `/metrics` is served; panics unless started with `--metrics-listen`.
    pub fn metrics_addr(&self) -> &str {
        self.metrics_addr.as_deref().expect("started with --metrics-listen")
    }

    fn note(&self, text: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).create(true).open(self.log_path()) {
            let _ = writeln!(log, "==== test: {text} ====");
        }
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("running");
        kill(Pid::from_raw(child.id() as i32), signal).expect("signal");
    }

    pub fn kill9(&mut self) {
        self.note("kill -9");
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("reap");
        self.paused = false;
    }

    pub fn pause(&mut self) {
        self.note("SIGSTOP");
        self.signal(Signal::SIGSTOP);
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
        self.note("SIGCONT");
    }

    /// SIGTERM and wait for the exit; panics unless it exits cleanly in time.
    pub fn terminate(&mut self) {
        self.note("SIGTERM");
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "confserv {} exited with {status}:\n{}",
                    self.name,
                    self.log_tail()
                );
                return;
            }
            assert!(started.elapsed() < EVENT_TIMEOUT, "confserv {} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again on its address.
    pub fn restart(&mut self) {
        let addr = self.addr.clone();
        let bound = self.spawn(&addr);
        assert_eq!(bound, addr);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(self.log_path()) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(24 * 1024)));
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        text
    }
}

impl Drop for ConfservProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "\n======== confserv {} ({}) log ========\n{}",
                self.name,
                self.addr,
                self.log_tail()
            );
        }
    }
}

/// A database cluster with a pair of master servers.
pub struct Pair {
    pub cluster: Cluster,
    pub servers: Vec<ConfservProcess>,
}

impl Pair {
    /// A database of `kinds` and `count` servers started with `extra` flags.
    pub async fn start(kinds: &[Kind], count: usize, extra: &[&str]) -> Pair {
        let cluster = Cluster::must_start(TANDEM, kinds, ClusterOptions::default()).await;
        let endpoints = cluster.endpoints();
        let servers = (1..=count)
            .map(|i| ConfservProcess::start(&format!("m{i}"), &endpoints, extra))
            .collect();
        let pair = Pair { cluster, servers };
        pair.must_wait_primary().await;
        pair
    }

    pub fn addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr().to_owned()).collect()
    }

    /// A client of every server, not logged in.
    pub fn client(&self) -> ConfClient {
        client_of(self.addrs())
    }

    /// A client logged in as the administrator.
    pub async fn admin(&self) -> ConfClient {
        let client = self.client();
        must_login(&client, ADMIN, ADMIN_PASSWORD).await;
        client
    }

    /// Waits until one server says it is primary and the session key is known (a login works);
    /// returns its index.
    pub async fn must_wait_primary(&self) -> usize {
        let client = self.client();
        let addrs = self.addrs();
        must_eventually("a primary configuration server", EVENT_TIMEOUT, || {
            let client = client.clone();
            let addrs = addrs.clone();
            async move {
                let answers = client.status_all().await;
                let primary = answers
                    .iter()
                    .position(|(_, a)| a.as_ref().is_ok_and(|s| s.role == "primary" && s.last_seq >= 3));
                match primary {
                    Some(i) => Ok(addrs.iter().position(|a| *a == answers[i].0).unwrap_or(i)),
                    None => Err(format!("{answers:?}")),
                }
            }
        })
        .await
    }

    /// Waits until server `index` reports `condition`.
    pub async fn must_wait_status(
        &self,
        index: usize,
        what: &str,
        condition: impl Fn(&StatusResponse) -> bool,
    ) -> StatusResponse {
        let client = self.client();
        let addr = self.servers[index].addr().to_owned();
        let condition = &condition;
        must_eventually(&format!("server {index}: {what}"), EVENT_TIMEOUT, || {
            let client = client.clone();
            let addr = addr.clone();
            async move {
                match client.status(&addr).await {
                    Ok(s) if condition(&s) => Ok(s),
                    Ok(s) => Err(format!("{s:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    }
}

pub fn client_of(servers: Vec<String>) -> ConfClient {
    ConfClient::new(
        servers,
        ClientConfig {
            deadline: Duration::from_secs(20),
            ..ClientConfig::default()
        },
    )
    .expect("client")
}

pub async fn must_login(client: &ConfClient, user: &str, password: &str) {
    if let Err(e) = client.login(user, password, "").await {
        panic!("login as {user}: {e}");
    }
}

/// Asserts a refusal of `kind` (and model `code`, when given).
pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, ConfError>, kind: &str, code: Option<&str>) -> ConfError {
    match result {
        Ok(value) => panic!("expected a {kind} refusal, got {value:?}"),
        Err(e) => {
            assert_eq!(e.kind, kind, "wrong kind of refusal: {e:?}");
            if let Some(code) = code {
                assert_eq!(e.code.as_deref(), Some(code), "wrong code: {e:?}");
            }
            e
        }
    }
}

/// Serialises the tests of one binary (two clusters at once on two cores make timers flaky).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// Path helper for CLI tests.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A loopback address no one listens on now (for a server started later).
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").to_string()
}

/// Waits until the server at `addr` is a proxy in `mode` (`normal`, `limited`); returns its
/// status.
pub async fn must_wait_proxy_mode(addr: &str, mode: &str) -> StatusResponse {
    let client = client_of(vec![addr.to_owned()]);
    must_eventually(&format!("proxy {addr} in {mode} mode"), EVENT_TIMEOUT, || {
        let client = client.clone();
        async move {
            match client.status(addr).await {
                Ok(s) if s.role == "proxy" && s.proxy_mode == mode => Ok(s),
                Ok(s) => Err(format!("{s:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// The wall clock in ms since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
