//! `tandem up`: a whole topology started on this machine, in order — database replicas, the
//! replica set formed with its primary at the live site, the live master pair, every proxy —
//! then watched (and, when the topology asks for it, a dormant site activated by itself) until
//! the caller stops it; then everything it started is stopped and its run directory removed.
//!
//! The run directory holds `plan.json`, `up.pid` (the `tandem up` that owns it), the
//! administrator's password, `active-site`, and one directory per host and role.

use std::path::{Path, PathBuf};

use rand::distributions::{Alphanumeric, DistString};
use tandem_topology::Role;

use crate::launch::Launcher;
use crate::operate::{Operator, Step, ACTIVE_SITE_FILE};
use crate::plan::Plan;
use crate::DrError;

/// The file in the run directory holding the pid of the `tandem up` that owns it.
pub const OWNER_FILE: &str = "up.pid";
/// The file in the run directory that appears once the topology is up.
pub const READY_FILE: &str = "ready";

/// Prepares `run_dir` for a new run: refuses if a live `tandem up` owns it; otherwise stops
/// whatever an earlier run left behind there and empties it.
pub async fn claim_run_dir(run_dir: &Path, exe: &Path) -> Result<(), DrError> {
    if let Ok(text) = std::fs::read_to_string(run_dir.join(OWNER_FILE)) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
                return Err(DrError::Refused(format!(
                    "{} is in use by `tandem up` (pid {pid}): stop it first, or choose another --run-dir",
                    run_dir.display()
                )));
            }
        }
    }
    if let Ok(old) = Plan::load(run_dir) {
        tracing::warn!(run_dir = %run_dir.display(), "stopping what an earlier run left behind");
        Launcher::new(old, exe.to_owned()).stop_all().await?;
    }
    match std::fs::remove_dir_all(run_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DrError::io(run_dir, e)),
    }
    std::fs::create_dir_all(run_dir).map_err(|e| DrError::io(run_dir, e))?;
    crate::write_atomically(
        &run_dir.join(OWNER_FILE),
        format!("{}\n", std::process::id()).as_bytes(),
    )
}

/// Starts every component of `plan` that runs at start (dormant master pairs stay stopped),
/// forms the replica set and waits until the live site's master serves and every proxy
/// answers. `progress` sees each step.
pub async fn start(launcher: &Launcher, progress: impl Fn(&Step) + Send + Sync) -> Result<(), DrError> {
    let plan = launcher.plan();
    write_admin_password(&plan.admin_password_file())?;
    plan.save()?;
    let live_site = plan
        .first_live_site()
        .ok_or_else(|| DrError::Plan("the plan has no live site".to_owned()))?
        .to_owned();
    let mut operator = Operator::new(launcher, progress);

    let replicas: Vec<_> = plan.with_role(Role::Db, None).collect();
    for replica in &replicas {
        launcher.start(replica)?;
    }
    for replica in &replicas {
        launcher.wait_ready(replica).await?;
    }
    let members: Vec<tandem_proto::db::Member> = replicas
        .iter()
        .filter_map(|c| {
            c.db.map(|m| tandem_proto::db::Member {
                id: m.id,
                addr: c.addr.clone(),
                kind: m.kind.as_str().to_owned(),
            })
        })
        .collect();
    let via = replicas
        .iter()
        .find(|c| c.site == live_site && c.db.is_some_and(|m| m.kind.holds_data()))
        .ok_or_else(|| DrError::Plan(format!("no data replica at the live site {live_site}")))?;
    let client = crate::status::db_client(plan, std::time::Duration::from_secs(30))?;
    client
        .initialize(&via.addr, members)
        .await
        .map_err(|e| DrError::Db(format!("cannot form the replica set via {}: {e}", via.name)))?;

    // The primary to the live site, and its master pair started.
    operator.activate(&live_site, false).await?;

    let proxies: Vec<_> = plan.with_role(Role::Proxy, None).collect();
    for proxy in &proxies {
        launcher.start(proxy)?;
    }
    for proxy in &proxies {
        launcher.wait_ready(proxy).await?;
    }
    let addrs: Vec<String> = proxies.iter().map(|c| c.addr.clone()).collect();
    if !addrs.is_empty() {
        crate::status::wait_proxies(&addrs, "normal", None, std::time::Duration::from_secs(60)).await?;
    }
    crate::write_atomically(
        &plan.run_dir.join(ACTIVE_SITE_FILE),
        format!("{live_site}\n").as_bytes(),
    )?;
    crate::write_atomically(&plan.run_dir.join(READY_FILE), b"up\n")
}

/// Stops everything of the plan; removes the run directory unless `keep`.
pub async fn stop(launcher: &Launcher, keep: bool) -> Result<(), DrError> {
    launcher.stop_all().await?;
    let run_dir: PathBuf = launcher.plan().run_dir.clone();
    if keep {
        let _ = std::fs::remove_file(run_dir.join(OWNER_FILE));
        return Ok(());
    }
    std::fs::remove_dir_all(&run_dir).map_err(|e| DrError::io(&run_dir, e))
}

/// A fresh random password for the administrator, in a file only its owner can read.
fn write_admin_password(path: &Path) -> Result<(), DrError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DrError::io(path, e))?;
    file.write_all(format!("{password}\n").as_bytes())
        .map_err(|e| DrError::io(path, e))
}
