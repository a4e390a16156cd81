//! `tandem drill FILE`: the disaster of a topology, end to end, in network namespaces on this
//! machine (`tandem_dr::drill`), with its timeline and figures beside the goals.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tandem_dr::drill::{DrillOptions, DrillReport, TimedStep};
use tandem_dr::{drill, netns, up, Launcher};
use tandem_topology::Topology;

#[derive(Args)]
pub struct DrillArgs {
    /// The topology file (TOML), e.g. examples/two-site.toml.
    file: PathBuf,
    /// Print the report as JSON (the timeline is not printed as it happens).
    #[arg(long)]
    json: bool,
    /// Wait this long after the surviving site's proxies enter limited mode before activating
    /// it (an operator's reaction time). Ignored with `auto_activate` in the file.
    #[arg(long, default_value_t = 0)]
    operator_delay_ms: u64,
    /// Activate with --force: forced recovery when the database has lost its quorum (needed
    /// when the surviving site's replica cannot be elected, e.g. without a witness).
    #[arg(long)]
    force: bool,
    /// How long the client load runs before the disaster and after each recovery.
    #[arg(long, default_value_t = 2_000)]
    settle_ms: u64,
    /// Stop after the activation instead of failing back to the destroyed site.
    #[arg(long)]
    no_failback: bool,
    /// Directory for the run (default: tandem-drill-NAME in the temp directory); removed at the
    /// end unless --keep.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Keep the run directory (the components' logs and data) after the drill.
    #[arg(long)]
    keep: bool,
}

pub async fn run(args: DrillArgs) -> anyhow::Result<()> {
    let topology = Topology::from_file(&args.file)?;
    let run_dir = args
        .run_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tandem-drill-{}", topology.name)));
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    up::claim_run_dir(&run_dir, &exe).await?;
    let (lab, plan) = netns::build(&topology, &run_dir)?;
    let launcher = Launcher::new(plan, exe);
    let options = DrillOptions {
        operator_delay: Duration::from_millis(args.operator_delay_ms),
        force: args.force,
        settle: Duration::from_millis(args.settle_ms),
        failback: !args.no_failback,
    };
    let json = args.json;
    let print = move |step: &TimedStep| {
        if !json {
            println!("{:>8} ms  {}", step.at_ms, step.what);
        }
    };
    if !json {
        println!("--- drill of {} (run directory {})", topology.name, run_dir.display());
    }
    let outcome = crate::up::in_reach(launcher.plan(), async {
        let started = up::start(&launcher, |step| {
            print(&TimedStep {
                at_ms: -1,
                what: format!("setup: {}", step.what),
            })
        })
        .await;
        let report = match started {
            Ok(()) => drill::run(&launcher, &netns::LabNetwork(&lab), &options, &print).await,
            Err(e) => Err(e),
        };
        let stopped = up::stop(&launcher, args.keep || report.is_err()).await;
        (report, stopped)
    })
    .await?;
    drop(lab);
    let (report, stopped) = outcome;
    let report = report.with_context(|| format!("the drill failed (logs kept in {})", run_dir.display()))?;
    stopped?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", figures(&report, topology.disaster.auto_activate));
    }
    Ok(())
}

/// The figures beside the goals.
fn figures(r: &DrillReport, auto: bool) -> String {
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{:.2} s", v as f64 / 1000.0));
    let w = &r.writes;
    let reads = if r.reads.tried == 0 {
        "-".to_owned()
    } else {
        format!(
            "{}/{} ({:.2} %)",
            r.reads.answered,
            r.reads.tried,
            100.0 * r.reads.answered as f64 / r.reads.tried as f64
        )
    };
    let rows = [
        ("limited mode after t0", ms(r.limited_mode_ms), "≤ 3 s".to_owned()),
        (
            "normal mode after activation",
            ms(r.normal_after_activation_ms),
            "≤ 5 s".to_owned(),
        ),
        (
            "normal mode after t0 (RTO)",
            ms(r.normal_mode_ms),
            if auto { "≤ 10 s (auto_activate)" } else { "-" }.to_owned(),
        ),
        (
            "acknowledged writes lost (RPO)",
            format!("{} of {}", w.lost, w.acknowledged),
            "0 with a sync replica".to_owned(),
        ),
        (
            "possible loss printed by --force",
            match (r.possibly_lost, r.loss_bounded) {
                (Some(v), Some(false)) => format!("{v} (not a bound: see the timeline)"),
                (Some(v), _) => v.to_string(),
                (None, _) => "-".to_owned(),
            },
            "≥ lost".to_owned(),
        ),
        (
            "writes refused / unknown",
            format!("{} / {}", w.refused, w.unknown),
            "-".to_owned(),
        ),
        (
            "writes duplicated / phantom",
            format!("{} / {}", w.duplicated, w.phantom),
            "0 / 0".to_owned(),
        ),
        (
            &*format!("reads answered at {}", r.activated_site),
            reads,
            "100 %".to_owned(),
        ),
        (
            "notifications: received / gaps / out of order",
            format!(
                "{} / {} / {}",
                r.notifications.received, r.notifications.gaps, r.notifications.out_of_order
            ),
            "- / 0 / 0".to_owned(),
        ),
        (
            "two masters writing at once",
            if r.two_writers { "YES" } else { "never" }.to_owned(),
            "never".to_owned(),
        ),
        (
            "failback",
            if r.failback_done { "done" } else { "not done" }.to_owned(),
            "-".to_owned(),
        ),
    ]
    .map(|(a, b, c)| (a.to_owned(), b, c));
    let mut out = format!(
        "\n{} destroyed, {} activated\n\n| figure | measured | goal |\n|---|---|---|\n",
        r.destroyed_site, r.activated_site
    );
    for (name, value, goal) in rows {
        out.push_str(&format!("| {name} | {value} | {goal} |\n"));
    }
    out.push_str(&format!("\nwriters (in commit order): {}\n", r.writers_seen.join(", ")));
    for example in &w.phantom_examples {
        out.push_str(&format!("phantom write: {example}\n"));
    }
    out
}
