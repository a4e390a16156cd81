//! `tandem up FILE`: the whole topology of a topology file on this machine
//! (`tandem_dr::up`), its endpoints and a live status table, until Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tandem_dr::operate::{AutoActivation, Operator};
use tandem_dr::{status, up, Launcher};
use tandem_topology::Topology;

#[derive(Args)]
pub struct UpArgs {
    /// The topology file (TOML), e.g. examples/two-site.toml.
    file: PathBuf,
    /// Directory for the run: plan, data, logs (default: tandem-up-NAME in the temp directory).
    /// Removed at the end unless --keep.
    #[arg(long, env = "TANDEM_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// Keep the run directory (data and logs) after stopping.
    #[arg(long)]
    keep: bool,
    /// Start, print the endpoints and the status once, then stop and clean up.
    #[arg(long)]
    once: bool,
    /// How often the live status table is refreshed (printed again when something changed).
    #[arg(long, default_value_t = 1_000)]
    status_every_ms: u64,
    /// Each host in its own network namespace (needs root), the sites joined through a router
    /// namespace with the WAN delay and loss of the file. Default: each host on its own
    /// loopback address.
    #[arg(long)]
    netns: bool,
}

/// The default run directory of a topology.
pub fn default_run_dir(topology: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tandem-up-{topology}"))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let topology = Topology::from_file(&args.file)?;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| default_run_dir(&topology.name));
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    up::claim_run_dir(&run_dir, &exe).await?;
    println!(
        "--- starting {} from {} (run directory {}{})",
        topology.name,
        args.file.display(),
        run_dir.display(),
        if args.netns {
            ", a network namespace per host"
        } else {
            ""
        }
    );
    if args.netns {
        let (lab, plan) = tandem_dr::netns::build(&topology, &run_dir)?;
        let launcher = Launcher::new(plan, exe);
        let result = in_reach(launcher.plan(), session(&launcher, &args)).await;
        drop(lab);
        result?
    } else {
        let launcher = Launcher::new(tandem_dr::Plan::loopback(&topology, &run_dir)?, exe);
        session(&launcher, &args).await
    }
}

/// Runs `future` where the plan's components can be reached: from the lab's router namespace
/// for a topology in namespaces, here otherwise.
pub async fn in_reach<F>(plan: &tandem_dr::Plan, future: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    match &plan.router_netns {
        Some(router) => {
            let router = router.clone();
            Ok(tokio::task::block_in_place(|| {
                tandem_netlab::block_on_in(&router, future)
            })?)
        }
        None => Ok(future.await),
    }
}

/// Start, endpoints, the live status until Ctrl-C, stop.
async fn session(launcher: &Launcher, args: &UpArgs) -> anyhow::Result<()> {
    let run_dir = launcher.plan().run_dir.clone();
    let started = tokio::select! {
        started = up::start(launcher, |step| println!("    {:>6} ms  {}", step.at_ms, step.what)) => started,
        _ = crate::db::shutdown_signal() => Err(tandem_dr::DrError::Refused("interrupted while starting".into())),
    };
    if let Err(e) = started {
        eprintln!("error: {e}; stopping what was started");
        up::stop(launcher, true).await.ok();
        return Err(e).context(format!("cannot start (logs kept in {})", run_dir.display()));
    }
    print_endpoints(launcher);
    let result = watch(launcher, args).await;
    println!("--- stopping");
    up::stop(launcher, args.keep).await?;
    result
}

fn print_endpoints(launcher: &Launcher) {
    let plan = launcher.plan();
    println!("\n{:<20} {:<8} {:<8} ADDRESS", "COMPONENT", "SITE", "STATE");
    for c in &plan.components {
        let state = if launcher.is_running(c) { "running" } else { "dormant" };
        println!("{:<20} {:<8} {:<8} {}", c.name, c.site, state, c.addr);
    }
    println!(
        "\nadministrator: {} (password in {})",
        plan.admin_user,
        plan.admin_password_file().display()
    );
    println!(
        "database:  tandem db status --endpoints {}",
        plan.db_endpoints().join(",")
    );
    println!("disaster:  tandem dr --run-dir {} status", plan.run_dir.display());
}

/// The live status table, and automatic activation when the topology asks for it.
async fn watch(launcher: &Launcher, args: &UpArgs) -> anyhow::Result<()> {
    let mut auto = AutoActivation::default();
    let mut last_summary = String::new();
    let shutdown = crate::db::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let status = status::gather(launcher).await?;
        let summary = summary(&status);
        if summary != last_summary {
            println!("\n{}", status.table());
            last_summary = summary;
        }
        if args.once {
            return Ok(());
        }
        if let Some(site) = auto.decide(launcher, &status) {
            println!(
                "--- automatic activation of {site}: the database primary is there and no master has held the lease"
            );
            let mut operator = Operator::new(launcher, |step| println!("    {:>6} ms  {}", step.at_ms, step.what));
            if let Err(e) = operator.activate(&site, false).await {
                eprintln!("automatic activation of {site} failed: {e}");
            }
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(args.status_every_ms.max(100))) => {}
        }
    }
}

/// What the table shows that matters for reprinting it: roles and modes, not counters.
fn summary(status: &tandem_dr::Status) -> String {
    let mut out = format!("{:?} {:?} {}", status.active_site, status.db_primary, status.epoch);
    for r in &status.replicas {
        out.push_str(&format!(" {}={}/{:?}", r.name, r.role, r.health));
    }
    for m in &status.masters {
        out.push_str(&format!(" {}={}", m.name, m.role));
    }
    for p in &status.proxies {
        out.push_str(&format!(" {}={}", p.name, p.mode));
    }
    out
}
