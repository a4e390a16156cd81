//! The helper commands: `idle` (an idle Tandem replica set watched for elections), and, for
//! profiling, `cluster` (a replica set kept up) and `load` (one workload against it, with the CPU
//! time per operation of given processes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::stats::Summary;
use crate::target::{self, Cluster};
use crate::{etcd, show, start_etcd, start_tandem, tandem, workload, Common};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum System {
    Tandem,
    Etcd,
}

#[derive(Args)]
pub(crate) struct ClusterArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_enum, default_value = "tandem")]
    system: System,
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Keep it up this long (or until Ctrl-C).
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Extra `tandem db serve` flags, e.g. `--sync-mode=available`.
    #[arg(long, allow_hyphen_values = true)]
    serve_flag: Vec<String>,
}

#[derive(Args)]
pub(crate) struct LoadArgs {
    #[arg(long, value_enum, default_value = "tandem")]
    system: System,
    /// Every member's HOST:PORT (etcd: http://HOST:PORT), comma-separated (127.0.0.1 only).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Report the CPU time per operation of these processes.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    #[arg(long, value_enum, default_value = "put")]
    workload: LoadKind,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LoadKind {
    Put,
    Get,
    StaleGet,
}

#[derive(Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Seconds between two `tandem db status --json`.
    #[arg(long, default_value_t = 10)]
    every_secs: u64,
}

/// Starts an idle replica set and polls `tandem db status --json`, reporting every term change.
pub(crate) async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let root = &args.common.work_dir;
    let pid_file = root.join("pids");
    let mut tandem = start_tandem(&args.common.tandem_bin, &root.join("tandem-idle"), &pid_file, &[]).await?;
    let endpoints = tandem.endpoints().join(",");
    eprintln!(
        "--- idle check: {} s, status every {} s ({endpoints})",
        args.secs, args.every_secs
    );
    let started = Instant::now();
    let mut first: Option<Vec<(u64, u64)>> = None;
    let mut changes = Vec::new();
    let mut polls = 0;
    while started.elapsed() < Duration::from_secs(args.secs) {
        let output = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new(&args.common.tandem_bin)
                .args(["db", "status", "--json", "--endpoints", &endpoints])
                .output(),
        )
        .await
        .context("tandem db status timed out")?
        .context("cannot run tandem db status")?;
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("tandem db status --json printed no JSON")?;
        let items = json.as_array().context("tandem db status --json: not an array")?;
        // (term, primary id) of each endpoint.
        let now: Vec<(u64, u64)> = items
            .iter()
            .map(|item| {
                let status = &item["status"];
                (
                    status["term"].as_u64().unwrap_or(0),
                    status["primary_id"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        polls += 1;
        match &first {
            None => {
                eprintln!("    start: (term, primary) per replica {now:?}");
                first = Some(now);
            }
            Some(before) if *before != now => {
                let line = format!(
                    "{:.0} s: (term, primary) per replica {before:?} → {now:?}",
                    started.elapsed().as_secs_f64()
                );
                eprintln!("    CHANGE at {line}");
                changes.push(line);
                first = Some(now);
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(args.every_secs)).await;
    }
    tandem.stop().await;
    if changes.is_empty() {
        println!(
            "idle check: {polls} polls over {} s, no term change: no election",
            args.secs
        );
    } else {
        println!(
            "idle check: {polls} polls over {} s, {} term change(s):",
            args.secs,
            changes.len()
        );
        for change in &changes {
            println!("  {change}");
        }
    }
    Ok(())
}

/// Starts a replica set (Tandem or etcd) and keeps it up for `--secs` (or until Ctrl-C).
pub(crate) async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let root = &args.common.work_dir;
    let pid_file = root.join("pids");
    match args.system {
        System::Tandem => {
            let extra: Vec<&str> = args.serve_flag.iter().map(String::as_str).collect();
            let dir = root.join("tandem-cluster");
            let mut tandem = start_tandem(&args.common.tandem_bin, &dir, &pid_file, &extra).await?;
            print_cluster(&tandem.endpoints(), &tandem.pids(), tandem.leader().await?);
            tokio::time::sleep(Duration::from_secs(args.secs)).await;
            tandem.stop().await;
        }
        System::Etcd => {
            let mut etcd = start_etcd(&args.etcd_bin, &root.join("etcd-cluster"), &pid_file).await?;
            print_cluster(&etcd.endpoints(), &etcd.pids(), etcd.leader().await?);
            tokio::time::sleep(Duration::from_secs(args.secs)).await;
            etcd.stop().await;
        }
    }
    Ok(())
}

fn print_cluster(endpoints: &[String], pids: &[Option<u32>], leader: usize) {
    let pids: Vec<String> = pids.iter().flatten().map(u32::to_string).collect();
    println!("endpoints {}", endpoints.join(","));
    println!("pids {}", pids.join(","));
    println!("leader {}", leader + 1);
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("bad /proc stat line")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc stat line")?
            .parse()
            .context("bad /proc stat field")
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command name.
    Ok(field(11)? + field(12)?)
}

/// One workload against running replicas, printed as one line (with CPU per operation of the
/// processes given by `--pids`).
pub(crate) async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let local = |e: &String| e.trim_start_matches("http://").starts_with("127.0.0.1:");
    if !args.endpoints.iter().all(local) {
        bail!("the load generator only targets 127.0.0.1");
    }
    let duration = Duration::from_secs(args.secs);
    let before: Vec<u64> = args
        .pids
        .iter()
        .map(|&pid| cpu_ticks(pid))
        .collect::<anyhow::Result<_>>()?;
    let summary = match args.system {
        System::Tandem => {
            let store = tandem::TandemStore::new(args.endpoints.clone(), tandem_client::ClientOptions::default())?;
            run_load(&store, args.workload, args.concurrency, duration).await?
        }
        System::Etcd => {
            let store = etcd::EtcdStore::connect(&args.endpoints, None).await?;
            run_load(&store, args.workload, args.concurrency, duration).await?
        }
    };
    let after: Vec<u64> = args
        .pids
        .iter()
        .map(|&pid| cpu_ticks(pid))
        .collect::<anyhow::Result<_>>()?;
    let summary = show(&format!("{:?}", args.system), summary);
    if !args.pids.is_empty() {
        // Clock ticks are 1/100 s on Linux.
        let ops = summary.ops.max(1) as f64;
        let per_op: Vec<String> = before
            .iter()
            .zip(&after)
            .zip(&args.pids)
            .map(|((b, a), pid)| format!("pid {pid}: {:.0} µs", (a - b) as f64 * 10_000.0 / ops))
            .collect();
        println!("CPU per operation: {}", per_op.join(", "));
    }
    Ok(())
}

async fn run_load<S: target::Store>(
    store: &S,
    kind: LoadKind,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Summary> {
    // No warm-up, so that the CPU time read around the run covers exactly the counted operations.
    let warmup = Duration::ZERO;
    Ok(match kind {
        LoadKind::Put => {
            let tag = format!("load{}", std::process::id());
            workload::puts(store, &tag, concurrency, warmup, duration)
                .await
                .summary()
        }
        LoadKind::Get | LoadKind::StaleGet => {
            workload::load_get_keys(store).await?;
            workload::gets(store, kind == LoadKind::StaleGet, concurrency, warmup, duration)
                .await
                .summary()
        }
    })
}
