//! One replica as an operating-system process (`tandem db serve`), and the signals a test sends
//! it.
//!
//! Each replica owns a temporary directory:
//! - `data/`: its data directory (`--data-dir`);
//! - `ready`: the ready file (`--ready-file`), where the replica writes the address it bound;
//! - `replica.log`: its stdout and stderr, appended across restarts with a marker line per start.
//!
//! The first start listens on `127.0.0.1:0`; the address the replica reports is kept, and every
//! restart listens on it again, so that the membership (which records addresses) stays valid.
//!
//! When a test fails (the process is dropped while the thread panics), the end of the log is
//! printed to the test's output. Set `TANDEM_TESTKIT_KEEP=1` to keep the directories of a run,
//! and `TANDEM_TESTKIT_LOG_BYTES` to print more (or less) of each log. Replicas inherit the
//! environment, so `TANDEM_LOG=debug` raises their log level.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::TestkitError;

/// Longest wait for a started replica to report its address.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a replica to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between two looks at the ready file or the child.
const POLL_PAUSE: Duration = Duration::from_millis(10);
/// How much of a log is printed when a test fails, unless `TANDEM_TESTKIT_LOG_BYTES` says.
const LOG_TAIL_BYTES_DEFAULT: u64 = 32 * 1024;

/// One `tandem db serve` process and its files.
pub struct ReplicaProcess {
    /// The `tandem` binary (`env!("CARGO_BIN_EXE_tandem")` in the test).
    binary: PathBuf,
    /// The replica id (`--id`).
    id: u64,
    /// Flags given to every start besides identity, place and readiness (kind, timers, TLS…).
    args: Vec<OsString>,
    /// Holds `data/`, `ready` and `replica.log`. `None` only once kept on drop.
    dir: Option<TempDir>,
    /// The root of `dir`, kept separately so it stays known after `dir` is kept.
    root: PathBuf,
    /// The address the replica bound on its first start; every restart binds it again.
    addr: String,
    /// The running process; `None` after it was killed or stopped.
    child: Option<Child>,
    /// Whether the process is stopped by SIGSTOP (and not resumed since).
    paused: bool,
    /// Starts so far (numbers the marker lines in the log).
    starts: u32,
}

impl ReplicaProcess {
    /// Starts a replica on a free port in a fresh temporary directory and waits until it has
    /// reported its address.
    pub async fn start(binary: &Path, id: u64, args: Vec<OsString>) -> Result<ReplicaProcess, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("tandem-replica-{id}-"))
            .tempdir()
            .map_err(|source| TestkitError::Io {
                action: "create a temporary directory".into(),
                source,
            })?;
        let root = dir.path().to_owned();
        let mut replica = ReplicaProcess {
            binary: binary.to_owned(),
            id,
            args,
            dir: Some(dir),
            root,
            addr: String::new(),
            child: None,
            paused: false,
            starts: 0,
        };
        replica.addr = replica.spawn_and_wait("127.0.0.1:0").await?;
        Ok(replica)
    }

    /// The replica id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `host:port` the replica serves on (stable across restarts).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The data directory (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The file the replica's stdout and stderr go to.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("replica.log")
    }

    fn ready_path(&self) -> PathBuf {
        self.root.join("ready")
    }

    /// Whether the process is alive (possibly paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                self.paused = false;
                false
            }
            None => false,
        }
    }

    /// Whether the process is stopped by SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process again on its address, after [`kill9`](Self::kill9) or
    /// [`terminate`](Self::terminate), and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Err(TestkitError::WrongState {
                id: self.id,
                state: "running",
                action: "restart",
            });
        }
        let addr = self.addr.clone();
        let bound = self.spawn_and_wait(&addr).await?;
        if bound != addr {
            return Err(TestkitError::Io {
                action: format!("restart replica {} on {addr}", self.id),
                source: std::io::Error::other(format!("it reported {bound} instead")),
            });
        }
        Ok(())
    }

    /// Kills the process with SIGKILL (works on a paused process too) and reaps it.
    pub fn kill9(&mut self) -> Result<(), TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Err(TestkitError::WrongState {
                id: self.id,
                state: "not running",
                action: "kill -9",
            });
        };
        self.paused = false;
        self.note(&format!("testkit: kill -9 (pid {})", child.id()));
        child.kill().map_err(|source| TestkitError::Io {
            action: format!("kill replica {}", self.id),
            source,
        })?;
        child.wait().map_err(|source| TestkitError::Io {
            action: format!("reap replica {}", self.id),
            source,
        })?;
        Ok(())
    }

    /// Asks the process to stop (SIGTERM, after SIGCONT when paused) and waits until it exits.
    /// A process still alive after [`STOP_TIMEOUT`] is killed and the timeout reported.
    pub async fn terminate(&mut self) -> Result<ExitStatus, TestkitError> {
        if !self.is_running() {
            return Err(TestkitError::WrongState {
                id: self.id,
                state: "not running",
                action: "terminate",
            });
        }
        if self.paused {
            self.resume()?;
        }
        self.note("testkit: SIGTERM");
        self.signal(Signal::SIGTERM, "SIGTERM")?;
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().ok_or(TestkitError::WrongState {
                id: self.id,
                state: "not running",
                action: "wait for exit",
            })?;
            let waited = child.try_wait().map_err(|source| TestkitError::Io {
                action: format!("wait for replica {}", self.id),
                source,
            })?;
            if let Some(status) = waited {
                self.child = None;
                return Ok(status);
            }
            if started.elapsed() >= STOP_TIMEOUT {
                let _ = self.kill9();
                return Err(TestkitError::Timeout {
                    what: format!("replica {} to exit after SIGTERM", self.id),
                    waited_ms: started.elapsed().as_millis() as u64,
                    last: format!("still running; killed it. Log ends with:\n{}", self.log_tail()),
                });
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }

    /// Freezes the process (SIGSTOP): its sockets stay open but it answers nothing, like a
    /// replica on a dead link.
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        if self.paused {
            return Err(TestkitError::WrongState {
                id: self.id,
                state: "paused",
                action: "pause",
            });
        }
        self.signal(Signal::SIGSTOP, "SIGSTOP")?;
        self.paused = true;
        self.note("testkit: SIGSTOP");
        Ok(())
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        if !self.paused {
            return Err(TestkitError::WrongState {
                id: self.id,
                state: "not paused",
                action: "resume",
            });
        }
        self.signal(Signal::SIGCONT, "SIGCONT")?;
        self.paused = false;
        self.note("testkit: SIGCONT");
        Ok(())
    }

    /// The last bytes of the log (as much as `TANDEM_TESTKIT_LOG_BYTES`, 32 KiB by default).
    pub fn log_tail(&self) -> String {
        let max = std::env::var("TANDEM_TESTKIT_LOG_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(LOG_TAIL_BYTES_DEFAULT);
        read_tail(&self.log_path(), max).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log_path().display()))
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(cannot read the log: {e})"))
    }

    fn signal(&self, signal: Signal, name: &'static str) -> Result<(), TestkitError> {
        let child = self.child.as_ref().ok_or(TestkitError::WrongState {
            id: self.id,
            state: "not running",
            action: name,
        })?;
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, signal).map_err(|source| TestkitError::Signal {
            id: self.id,
            signal: name,
            source,
        })
    }

    /// Appends a marker line to the log, so that the log shows what the harness did when.
    fn note(&self, text: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).create(true).open(self.log_path()) {
            let _ = writeln!(log, "==== {text} ====");
        }
    }

    /// Spawns `tandem db serve` listening on `listen` and waits for the address in the ready
    /// file. Fails when the process exits first or is not ready in time (then it is killed).
    async fn spawn_and_wait(&mut self, listen: &str) -> Result<String, TestkitError> {
        let ready = self.ready_path();
        match std::fs::remove_file(&ready) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TestkitError::Io {
                    action: format!("remove {}", ready.display()),
                    source,
                })
            }
        }
        let mut command = Command::new(&self.binary);
        command
            .arg("db")
            .arg("serve")
            .arg("--id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(listen)
            .arg("--ready-file")
            .arg(&ready)
            .args(&self.args)
            .stdin(Stdio::null());
        self.starts += 1;
        self.note(&format!(
            "testkit: start #{} of replica {}: {:?}",
            self.starts, self.id, command
        ));
        let log_path = self.log_path();
        let open_log = || -> Result<File, TestkitError> {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log_path)
                .map_err(|source| TestkitError::Io {
                    action: format!("open {}", log_path.display()),
                    source,
                })
        };
        command.stdout(open_log()?).stderr(open_log()?);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. The kernel
        // then kills the replica if the thread that spawned it dies (a test killed by its
        // runner), so that no replica outlives its test even without our Drop running.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| TestkitError::Io {
            action: format!("spawn {}", self.binary.display()),
            source,
        })?;
        self.child = Some(child);
        self.paused = false;

        let started = Instant::now();
        let mut unterminated: Option<String> = None;
        loop {
            let child = self.child.as_mut().ok_or(TestkitError::WrongState {
                id: self.id,
                state: "not running",
                action: "wait until ready",
            })?;
            let exited = child.try_wait().map_err(|source| TestkitError::Io {
                action: format!("wait for replica {}", self.id),
                source,
            })?;
            if let Some(status) = exited {
                self.child = None;
                return Err(TestkitError::ExitedEarly {
                    id: self.id,
                    status: status.to_string(),
                    log: self.log_tail(),
                });
            }
            match read_ready(&ready) {
                Ready::Complete(addr) => return Ok(addr),
                Ready::Unterminated(addr) if unterminated.as_ref() == Some(&addr) => return Ok(addr),
                Ready::Unterminated(addr) => unterminated = Some(addr),
                Ready::No => unterminated = None,
            }
            if started.elapsed() >= READY_TIMEOUT {
                let _ = self.kill9();
                return Err(TestkitError::NotReady {
                    id: self.id,
                    waited_ms: started.elapsed().as_millis() as u64,
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
}

/// What a look at the ready file found.
#[derive(Debug, PartialEq, Eq)]
enum Ready {
    /// No file, or nothing that can be an address yet.
    No,
    /// A finished line (it ends with a newline).
    Complete(String),
    /// An address without a newline: complete only if the next look finds the same (a partly
    /// written `127.0.0.1:4567` can read as the valid `127.0.0.1:45`).
    Unterminated(String),
}

/// Looks at the ready file.
fn read_ready(path: &Path) -> Ready {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ready::No;
    };
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.parse::<SocketAddr>().is_err() {
        return Ready::No;
    }
    if text.contains('\n') {
        Ready::Complete(line)
    } else {
        Ready::Unterminated(line)
    }
}

/// The last `max` bytes of a file, from a line start.
fn read_tail(path: &Path, max: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if start == 0 {
        return Ok(text);
    }
    let from = text.find('\n').map(|i| i + 1).unwrap_or(0);
    Ok(format!("[… {start} earlier bytes not shown …]\n{}", &text[from..]))
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "\n======== replica {} ({}) log: {} ========\n{}\n======== end of replica {} log ========",
                self.id,
                self.addr,
                self.log_path().display(),
                self.log_tail(),
                self.id
            );
        }
        if std::env::var_os("TANDEM_TESTKIT_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("replica {}: kept {}", self.id, dir.keep().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_file_is_read_only_when_complete() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("ready");
        assert_eq!(read_ready(&path), Ready::No, "missing file");
        std::fs::write(&path, "").expect("write");
        assert_eq!(read_ready(&path), Ready::No, "empty file");
        std::fs::write(&path, "127.0.0.").expect("write");
        assert_eq!(read_ready(&path), Ready::No, "partial address");
        std::fs::write(&path, "127.0.0.1:45").expect("write");
        assert_eq!(
            read_ready(&path),
            Ready::Unterminated("127.0.0.1:45".into()),
            "maybe partial"
        );
        std::fs::write(&path, "127.0.0.1:4567\n").expect("write");
        assert_eq!(read_ready(&path), Ready::Complete("127.0.0.1:4567".into()));
    }

    #[test]
    fn log_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").expect("write");
        assert_eq!(
            read_tail(&path, 1000).expect("read"),
            "first line\nsecond line\nthird\n"
        );
        let tail = read_tail(&path, 15).expect("read");
        assert!(tail.ends_with("third\n"), "{tail}");
        assert!(!tail.contains("second"), "{tail}");
    }
}
