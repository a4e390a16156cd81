//! Starting and stopping the components of a plan as processes of this machine.
//!
//! Each component runs `tandem` (this executable) with its role's arguments, in its own process
//! group, from its directory `RUN/HOST/ROLE` (data, `log`, `pid`, `ready`), inside its network
//! namespace with `--netns`. The pid file is the record of what runs: `tandem dr` started by an
//! operator finds and stops what `tandem up` started, and the other way round. A pid counts only
//! while that process is alive and its command line names the run directory, so a reused pid is
//! never taken for a component.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tandem_topology::Role;

use crate::plan::{Component, Plan};
use crate::DrError;

/// How long a component may take to start listening.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a graceful stop may take before the process is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Launcher {
    plan: Plan,
    exe: PathBuf,
    /// Processes this launcher started, kept to reap them.
    children: Mutex<HashMap<String, Child>>,
}

impl Launcher {
    /// `exe` is the `tandem` executable to run components with.
    pub fn new(plan: Plan, exe: PathBuf) -> Launcher {
        Launcher {
            plan,
            exe,
            children: Mutex::new(HashMap::new()),
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The command line of a component (without the namespace prefix).
    fn arguments(&self, component: &Component) -> Result<Vec<String>, DrError> {
        let plan = &self.plan;
        let dir = plan.dir_of(component);
        let ready = dir.join("ready");
        let path = |p: &Path| p.display().to_string();
        let mut args: Vec<String> = Vec::new();
        match component.role {
            Role::Db => {
                let member = component
                    .db
                    .ok_or_else(|| DrError::Plan(format!("{} has no replica id", component.name)))?;
                args.extend(["db", "serve", "--id"].map(String::from));
                args.push(member.id.to_string());
                args.extend(["--listen".into(), component.addr.clone()]);
                args.extend(["--data-dir".into(), path(&dir.join("data"))]);
                args.extend(["--cluster".into(), plan.topology.clone()]);
                if member.kind == tandem_topology::DbKind::Witness {
                    args.push("--witness".into());
                }
            }
            Role::Master => {
                args.extend(["confserv", "--mode", "master", "--listen"].map(String::from));
                args.push(component.addr.clone());
                args.extend(["--name".into(), component.host.clone()]);
                args.extend(["--db-endpoints".into(), plan.db_endpoints().join(",")]);
                args.extend(["--bootstrap-admin".into(), plan.admin_user.clone()]);
                args.extend(["--bootstrap-password-file".into(), path(&plan.admin_password_file())]);
            }
            Role::Proxy => {
                args.extend(["confserv", "--mode", "proxy", "--listen"].map(String::from));
                args.push(component.addr.clone());
                args.extend(["--name".into(), component.host.clone()]);
                args.extend(["--masters".into(), plan.master_endpoints().join(",")]);
                args.extend(["--user".into(), plan.admin_user.clone()]);
                args.extend(["--password-file".into(), path(&plan.admin_password_file())]);
            }
        }
        args.extend(["--ready-file".into(), path(&ready)]);
        Ok(args)
    }

    /// Starts a component unless it runs already; returns its pid.
    pub fn start(&self, component: &Component) -> Result<u32, DrError> {
        if let Some(pid) = self.pid(component) {
            return Ok(pid);
        }
        let dir = self.plan.dir_of(component);
        std::fs::create_dir_all(&dir).map_err(|e| DrError::io(&dir, e))?;
        let ready = dir.join("ready");
        match std::fs::remove_file(&ready) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DrError::io(&ready, e)),
        }
        let log_path = dir.join("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| DrError::io(&log_path, e))?;
        let mut command = match &component.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.exe);
                command
            }
            None => Command::new(&self.exe),
        };
        command
            .args(self.arguments(component)?)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Its own process group: a Ctrl-C meant for `tandem up` or `tandem dr` does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .map_err(|e| DrError::Start(component.name.clone(), e.to_string()))?;
        let pid = child.id();
        crate::write_atomically(&dir.join("pid"), format!("{pid}\n").as_bytes())?;
        self.lock_children().insert(component.name.clone(), child);
        tracing::debug!(component = %component.name, pid, addr = %component.addr, "started");
        Ok(pid)
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        // A panic while holding the lock leaves the map usable: it only caches handles.
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pid of the component's process while it is alive.
    pub fn pid(&self, component: &Component) -> Option<u32> {
        {
            let mut children = self.lock_children();
            if let Some(child) = children.get_mut(&component.name) {
                match child.try_wait() {
                    Ok(None) => return Some(child.id()),
                    _ => {
                        children.remove(&component.name);
                        return None;
                    }
                }
            }
        }
        let text = std::fs::read_to_string(self.plan.dir_of(component).join("pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        process_alive_in(pid, &self.plan.run_dir).then_some(pid)
    }

    pub fn is_running(&self, component: &Component) -> bool {
        self.pid(component).is_some()
    }

    /// Waits until the component listens (its ready file appears); fails at once when its
    /// process ends, quoting the end of its log.
    pub async fn wait_ready(&self, component: &Component) -> Result<(), DrError> {
        let ready = self.plan.dir_of(component).join("ready");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if ready.exists() {
                return Ok(());
            }
            if !self.is_running(component) {
                return Err(DrError::Start(
                    component.name.clone(),
                    format!("it exited; its log ends with:\n{}", self.log_tail(component, 12)),
                ));
            }
            if Instant::now() > deadline {
                return Err(DrError::Start(
                    component.name.clone(),
                    format!("not listening after {START_DEADLINE:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, component: &Component, lines: usize) -> String {
        let text = std::fs::read_to_string(self.plan.dir_of(component).join("log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops a component gracefully (SIGTERM: a master releases its lease), killing it after
    /// [`STOP_GRACE`]. Returns whether it was running.
    pub async fn stop(&self, component: &Component) -> Result<bool, DrError> {
        self.end(component, Signal::SIGTERM).await
    }

    /// Kills a component at once (SIGKILL), as a crash would.
    pub async fn kill(&self, component: &Component) -> Result<bool, DrError> {
        self.end(component, Signal::SIGKILL).await
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) a component.
    pub fn signal(&self, component: &Component, signal: Signal) -> Result<bool, DrError> {
        let Some(pid) = self.pid(component) else {
            return Ok(false);
        };
        send(pid, signal)?;
        Ok(true)
    }

    async fn end(&self, component: &Component, signal: Signal) -> Result<bool, DrError> {
        let Some(pid) = self.pid(component) else {
            return Ok(false);
        };
        send(pid, signal)?;
        if signal == Signal::SIGTERM {
            // A paused process acts on SIGTERM only once resumed.
            send(pid, Signal::SIGCONT)?;
        }
        let deadline = Instant::now() + STOP_GRACE;
        while self.is_running(component) {
            if Instant::now() > deadline {
                tracing::warn!(component = %component.name, "did not stop within {STOP_GRACE:?}: killing it");
                send(pid, Signal::SIGKILL)?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::debug!(component = %component.name, ?signal, "stopped");
        Ok(true)
    }

    /// Stops every component of the plan (all at once) and waits for each.
    pub async fn stop_all(&self) -> Result<(), DrError> {
        let stops = self.plan.components.iter().map(|c| self.stop(c));
        for result in futures::future::join_all(stops).await {
            result?;
        }
        Ok(())
    }
}

fn send(pid: u32, signal: Signal) -> Result<(), DrError> {
    let pid = i32::try_from(pid).map_err(|_| DrError::Plan(format!("pid {pid} out of range")))?;
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(DrError::Signal(pid, e.to_string())),
    }
}

/// Whether `pid` is a live (not zombie) process whose command line names `run_dir`.
fn process_alive_in(pid: u32, run_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = run_dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len().max(1)).any(|w| w == needle)
}
