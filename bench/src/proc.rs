//! The processes the benchmark starts (Tandem replicas, etcd members): spawning with a log file,
//! recording every pid for `run.sh`'s clean-up trap, `kill -9`, and reading memory figures from
//! `/proc/PID/status`.
//!
//! Every child is spawned with `kill_on_drop`, so an error or Ctrl-C that drops a cluster kills
//! its processes; `run.sh` also kills every pid listed in the pid file, in case this process
//! itself is killed.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// How long a killed process may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run and where its output goes.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// stdout and stderr are appended here (restarts append to the same file).
    pub log: PathBuf,
    pub env: Vec<(String, String)>,
}

/// A started process.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pid: u32,
    spec: Spec,
}

/// Starts `spec`, appending its pid to `pid_file`.
pub fn spawn(spec: &Spec, pid_file: &Path) -> anyhow::Result<Proc> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("cannot open the log {}", spec.log.display()))?;
    let log_err = log
        .try_clone()
        .with_context(|| format!("cannot reopen the log {}", spec.log.display()))?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true);
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", spec.program.display()))?;
    let pid = child.id().context("a process just started has no pid")?;
    let mut pids = OpenOptions::new()
        .create(true)
        .append(true)
        .open(pid_file)
        .with_context(|| format!("cannot open the pid file {}", pid_file.display()))?;
    writeln!(pids, "{pid}").with_context(|| format!("cannot write the pid file {}", pid_file.display()))?;
    Ok(Proc {
        child,
        pid,
        spec: spec.clone(),
    })
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait().context("cannot poll a child process")
    }

    /// Sends SIGKILL (kill -9) and waits until the process is reaped.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        // start_kill sends SIGKILL; it fails only when the process was already reaped.
        let _ = self.child.start_kill();
        match tokio::time::timeout(REAP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e).context("cannot reap a killed process"),
            Err(_) => bail!("process {} did not die within {REAP_TIMEOUT:?} of SIGKILL", self.pid),
        }
    }

    /// Memory figures of the running process.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid)
    }
}

/// Peak and current resident set size, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmHWM: the peak RSS since the process started.
    pub peak_kib: u64,
    /// VmRSS: the RSS now.
    pub rss_kib: u64,
}

/// Reads VmHWM and VmRSS from `/proc/PID/status`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path} has no {name} line"))?;
        let number = line[name.len()..].trim().trim_end_matches("kB").trim();
        number
            .parse()
            .with_context(|| format!("bad {name} line in {path}: {line:?}"))
    };
    Ok(Memory {
        peak_kib: field("VmHWM:")?,
        rss_kib: field("VmRSS:")?,
    })
}

/// `n` distinct free TCP ports on 127.0.0.1 (held open together while chosen, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a port on 127.0.0.1"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("cannot read a bound port")?.port()))
        .collect()
}

/// Waits for `file` to exist and hold a line, failing early when `proc` exits.
pub async fn wait_for_file(file: &Path, proc: &mut Proc, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(line) = text.lines().next().filter(|l| !l.trim().is_empty()) {
                return Ok(line.trim().to_owned());
            }
        }
        if let Some(status) = proc.exited()? {
            bail!(
                "{} exited ({status}) before it was ready; see {}",
                proc.spec.program.display(),
                proc.spec.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready within {timeout:?}; see {}",
                proc.spec.program.display(),
                proc.spec.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
