//! `tandem dr`: the disaster-recovery commands on a running topology (`tandem_dr`): status,
//! activate, deactivate, failback.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tandem_dr::operate::{Operator, Report};
use tandem_dr::{status, Launcher, Plan};

#[derive(Args)]
pub struct DrArgs {
    /// The run directory of the topology (as given to `tandem up`; default: tandem-up-two-site
    /// in the temp directory).
    #[arg(long, env = "TANDEM_RUN_DIR", global = true)]
    run_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: DrCommand,
}

#[derive(Subcommand)]
enum DrCommand {
    /// Which site is active, the database primary and epoch, the lease-holding master, each
    /// proxy's mode, each replica's lag.
    Status {
        /// Print the status as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Make SITE the active site: the database primary moves there (planned switchover; with
    /// --force, forced recovery when the quorum is lost), its master pair starts, the masters
    /// of other sites that answer stop.
    Activate {
        /// The site, as named in the topology file.
        site: String,
        /// Allow a forced recovery when the database has lost its quorum: a new epoch starts,
        /// and acknowledged changes the recovered replica lacks are lost (the bound is printed).
        #[arg(long)]
        force: bool,
        /// Print one JSON object at the end (ok, error, and the report: its steps and
        /// figures) instead of each step as it happens.
        #[arg(long)]
        json: bool,
    },
    /// Stop the master pair of SITE (dormant again).
    Deactivate {
        /// The site, as named in the topology file.
        site: String,
        /// Print one JSON object at the end (ok, error, and the report: its steps and
        /// figures) instead of each step as it happens.
        #[arg(long)]
        json: bool,
    },
    /// Once SITE is back: start its replicas and proxies, rejoin replicas of a superseded
    /// epoch, wait until they catch up, then activate SITE.
    Failback {
        /// The site, as named in the topology file.
        site: String,
        /// Print one JSON object at the end (ok, error, and the report: its steps and
        /// figures) instead of each step as it happens.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: DrArgs) -> anyhow::Result<()> {
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| crate::up::default_run_dir("two-site"));
    let plan = Plan::load(&run_dir)?;
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let launcher = Launcher::new(plan, exe);
    crate::up::in_reach(launcher.plan(), command(&launcher, args.command)).await?
}

async fn command(launcher: &Launcher, command: DrCommand) -> anyhow::Result<()> {
    match command {
        DrCommand::Status { json } => {
            let status = status::gather(launcher).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            Ok(())
        }
        DrCommand::Activate { site, force, json } => operate(launcher, Op::Activate(site, force), json).await,
        DrCommand::Deactivate { site, json } => operate(launcher, Op::Deactivate(site), json).await,
        DrCommand::Failback { site, json } => operate(launcher, Op::Failback(site), json).await,
    }
}

enum Op {
    Activate(String, bool),
    Deactivate(String),
    Failback(String),
}

/// Runs one command, printing each step as it happens (or, with `json`, the whole report at
/// the end, with the error if it failed).
async fn operate(launcher: &Launcher, op: Op, json: bool) -> anyhow::Result<()> {
    let mut operator = Operator::new(launcher, move |step| {
        if !json {
            println!("{:>6} ms  {}", step.at_ms, step.what);
        }
    });
    let result = match &op {
        Op::Activate(site, force) => operator.activate(site, *force).await,
        Op::Deactivate(site) => operator.deactivate(site).await,
        Op::Failback(site) => operator.failback(site).await,
    };
    let report: Report = operator.into_report();
    if json {
        let out = serde_json::json!({
            "ok": result.is_ok(),
            "error": result.as_ref().err().map(|e| e.to_string()),
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(result?)
}
