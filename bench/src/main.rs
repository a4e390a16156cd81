//! `tandem-bench`: Tandem's configuration database and etcd side by side on one machine.
//!
//! `tandem-bench run` starts a three-replica Tandem set and a three-member etcd cluster on
//! 127.0.0.1 (default timers, fsync on, data under `--work-dir`), drives both with the same
//! workloads through their Rust clients, one system right after the other for each figure, and
//! prints one markdown table (also written to `--out`). `tandem-bench idle` watches an idle
//! Tandem set for elections. `tandem-bench confserv` benchmarks the master Configuration Server
//! pair on a Tandem database; `tandem-bench proxy` the Configuration Server Proxy beside the pair
//! (and etcd's serializable reads). `bench/run.sh` installs, builds and runs it; see
//! `bench/README.md`.
//!
//! Everything started is killed when the run ends, fails, or is interrupted (SIGINT/SIGTERM).

mod confserv;
mod etcd;
mod figures;
mod proc;
mod proxy;
mod report;
mod stats;
mod tandem;
mod target;
mod tools;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::etcd::EtcdCluster;
use crate::figures::{command_output, date, format_samples, machine, method_notes, mib, rows, Figures};
use crate::proc::Memory;
use crate::stats::{Level, Summary};
use crate::tandem::TandemCluster;
use crate::target::Cluster;
use crate::tools::{cluster, idle, load, ClusterArgs, IdleArgs, LoadArgs};

#[derive(Parser)]
#[command(about = "Tandem vs etcd on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every workload against both systems and print the table.
    Run(RunArgs),
    /// Start an idle Tandem replica set and watch `tandem db status --json` for term changes.
    Idle(IdleArgs),
    /// Start a replica set, print its endpoints and pids, and keep it up (for profiling).
    Cluster(ClusterArgs),
    /// Drive an already running replica set with one workload (for profiling).
    Load(LoadArgs),
    /// Benchmark the master Configuration Server pair on a Tandem database (no etcd).
    Confserv(confserv::ConfservArgs),
    /// Benchmark the Configuration Server Proxy: reads beside the master and etcd, notification
    /// fan-out, return to normal mode.
    Proxy(proxy::ProxyArgs),
}

#[derive(Args)]
struct Common {
    /// The `tandem` binary (release build).
    #[arg(long)]
    tandem_bin: PathBuf,
    /// Directory for data, logs and the pid file (must exist; the caller removes it).
    #[arg(long)]
    work_dir: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// The `etcd` binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Write the table here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measured seconds of each put/get level.
    #[arg(long, default_value_t = 10)]
    level_secs: u64,
    /// Each put/get level is measured in this many stretches, Tandem's and etcd's taking turns
    /// (each system first in every other round), so that the machine growing faster or slower
    /// during the run weighs on both alike.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Unmeasured warm-up seconds before each level.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Puts of the watch phase, one after the other. Each gives one sample per watcher, so the
    /// p99 is decided by the slowest 1 % of the puts: with 200 it was two puts, and it moved
    /// between 0.55× and 1.62× etcd's from one run to the next.
    #[arg(long, default_value_t = 1000)]
    watch_puts: usize,
    #[arg(long, default_value_t = 5)]
    failover_tries: usize,
    /// How long the one failover try in Tandem's sync mode strict waits for a put.
    #[arg(long, default_value_t = 10)]
    strict_failover_secs: u64,
    /// Keys written before the peak-RSS reading (default 100,000; 1,000,000 with --full).
    #[arg(long)]
    keys: Option<u64>,
    /// Seconds of steady put/delete load while RSS is sampled (default 40; 300 with --full).
    #[arg(long)]
    steady_secs: Option<u64>,
    /// Operations of the steady put/delete load run, unmeasured, before RSS is sampled. The
    /// default takes Tandem's change history (100,000 changes kept, cut back from 125,000) to
    /// its bound, so the samples show the load's steady state, not the history filling up.
    #[arg(long, default_value_t = 150_000)]
    steady_warmup_ops: u64,
    /// The long run: 1,000,000 keys and 5 minutes of steady load.
    #[arg(long)]
    full: bool,
    /// Phases to run (comma-separated): puts, gets, watch, failover, memory.
    #[arg(long, value_delimiter = ',', default_value = "puts,gets,watch,failover,memory")]
    phases: Vec<Phase>,
    /// The command line to print in the report (run.sh passes its own).
    #[arg(long, default_value = "")]
    command: String,
    /// Tandem's source revision, for the report.
    #[arg(long, default_value = "unknown")]
    tandem_rev: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Puts,
    Gets,
    Watch,
    Failover,
    Memory,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot watch SIGTERM")?;
    // Dropping the running future drops the clusters, whose processes are killed on drop.
    tokio::select! {
        result = async {
            match cli.command {
                Command::Run(args) => run(args).await,
                Command::Idle(args) => idle(args).await,
                Command::Cluster(args) => cluster(args).await,
                Command::Load(args) => load(args).await,
                Command::Confserv(args) => confserv::run(args).await,
                Command::Proxy(args) => proxy::run(args).await,
            }
        } => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

const PUT_LEVELS: [usize; 3] = [1, 16, 256];
const GET_LEVELS: [(&str, bool, usize); 3] = [
    ("linearizable get, c=16", false, 16),
    ("linearizable get, c=256", false, 256),
    ("stale get, c=256", true, 256),
];

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let keys = args.keys.unwrap_or(if args.full { 1_000_000 } else { 100_000 });
    let steady_secs = args.steady_secs.unwrap_or(if args.full { 300 } else { 40 });
    let warmup = Duration::from_secs(args.warmup_secs);
    let level = Duration::from_secs(args.level_secs);
    let stretch = level / args.rounds;
    let root = &args.common.work_dir;
    let pid_file = root.join("pids");
    let started = Instant::now();
    let machine = machine();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let versions = format!(
        "tandem {} (release), {}",
        args.tandem_rev,
        command_output(&args.etcd_bin, &["--version"])
            .lines()
            .next()
            .unwrap_or("etcd ?")
    );
    let has = |phase: Phase| args.phases.contains(&phase);

    let mut t = Figures::default();
    let mut e = Figures::default();
    let mut notes = Vec::new();
    if has(Phase::Puts) || has(Phase::Gets) || has(Phase::Watch) || has(Phase::Failover) {
        eprintln!("--- starting Tandem (3 replicas) and etcd (3 members) on 127.0.0.1");
        let mut tandem = start_tandem(&args.common.tandem_bin, &root.join("tandem"), &pid_file, &[]).await?;
        let mut etcd = start_etcd(&args.etcd_bin, &root.join("etcd"), &pid_file).await?;
        eprintln!(
            "    Tandem: {} (pids {:?})",
            tandem.endpoints().join(","),
            tandem.pids()
        );
        eprintln!("    etcd:   {}", etcd.endpoints().join(","));
        let (ts, es) = (tandem.store(), etcd.store());
        if has(Phase::Puts) {
            let (ts_ref, es_ref) = (&ts, &es);
            for c in PUT_LEVELS {
                eprintln!("--- puts, concurrency {c}");
                let (tp, ep) = interleaved(
                    args.rounds,
                    |round| {
                        let tag = format!("c{c}r{round}");
                        async move { workload::puts(ts_ref, &tag, c, warmup, stretch).await }
                    },
                    |round| {
                        let tag = format!("c{c}r{round}");
                        async move { workload::puts(es_ref, &tag, c, warmup, stretch).await }
                    },
                )
                .await;
                t.puts.push((c, tp));
                e.puts.push((c, ep));
            }
        }
        if has(Phase::Gets) {
            eprintln!("--- writing {} keys to read", workload::GET_KEYS);
            workload::load_get_keys(&ts)
                .await
                .context("Tandem: cannot write the keys to read")?;
            workload::load_get_keys(&es)
                .await
                .context("etcd: cannot write the keys to read")?;
            for (name, stale, c) in GET_LEVELS {
                eprintln!("--- {name}");
                let (tg, eg) = interleaved(
                    args.rounds,
                    |_| workload::gets(&ts, stale, c, warmup, stretch),
                    |_| workload::gets(&es, stale, c, warmup, stretch),
                )
                .await;
                t.gets.push((name, tg));
                e.gets.push((name, eg));
            }
        }
        if has(Phase::Watch) {
            eprintln!("--- watch: {} watchers, {} puts", args.watchers, args.watch_puts);
            let samples = workload::watch_latency(&ts, args.watchers, args.watch_puts)
                .await
                .context("Tandem watch")?;
            eprintln!(
                "    Tandem: p50 {:?} ms, p99 {:?} ms",
                samples.quantile_ms(0.5),
                samples.quantile_ms(0.99)
            );
            t.watch = Some(samples);
            let samples = workload::watch_latency(&es, args.watchers, args.watch_puts)
                .await
                .context("etcd watch")?;
            eprintln!(
                "    etcd:   p50 {:?} ms, p99 {:?} ms",
                samples.quantile_ms(0.5),
                samples.quantile_ms(0.99)
            );
            e.watch = Some(samples);
        }
        if has(Phase::Failover) {
            eprintln!("--- failover: kill -9 the leader under a put loop");
            let limit = Duration::from_secs(30);
            let strict_limit = Duration::from_secs(args.strict_failover_secs);
            let default_mode = tandem.sync_mode().await.context("cannot read Tandem's sync mode")?;
            t.default_sync_mode = default_mode.clone();
            // Tandem's two sync modes: `available` (demotes a silent sync replica after the sync
            // timeout) measured over every try; `strict` (waits for every sync replica) once,
            // to show that writes stop while a sync replica is down. Whichever is the default
            // runs on the main replica set, the other on a fresh one.
            let other_mode = if default_mode == "strict" {
                "available"
            } else {
                "strict"
            };
            let extra = ["--sync-mode", other_mode];
            let mut other = start_tandem(
                &args.common.tandem_bin,
                &root.join("tandem-other-mode"),
                &pid_file,
                &extra,
            )
            .await?;
            let (available, strict) = if default_mode == "strict" {
                (&mut other, &mut tandem)
            } else {
                (&mut tandem, &mut other)
            };
            eprintln!("  Tandem, sync mode available, {} tries", args.failover_tries);
            let result = workload::failover(available, args.failover_tries, limit).await;
            t.failover = Some(result.context("Tandem failover (sync mode available)")?);
            eprintln!(
                "  Tandem, sync mode strict, 1 try, {} s limit",
                args.strict_failover_secs
            );
            let result = workload::failover(strict, 1, strict_limit).await;
            t.failover_strict = Some(result.context("Tandem failover (sync mode strict)")?);
            other.stop().await;
            eprintln!("  etcd, {} tries", args.failover_tries);
            e.failover = Some(
                workload::failover(&mut etcd, args.failover_tries, limit)
                    .await
                    .context("etcd failover")?,
            );
        }
        tandem.stop().await;
        etcd.stop().await;
    }
    if has(Phase::Memory) {
        eprintln!(
            "--- memory: fresh clusters, {keys} keys of 256 bytes, then {} operations and {steady_secs} s of put/delete",
            args.steady_warmup_ops
        );
        let mut tandem = start_tandem(&args.common.tandem_bin, &root.join("tandem-mem"), &pid_file, &[]).await?;
        let mut etcd = start_etcd(&args.etcd_bin, &root.join("etcd-mem"), &pid_file).await?;
        t.fill = Some(fill(&tandem, keys).await.context("Tandem fill")?);
        e.fill = Some(fill(&etcd, keys).await.context("etcd fill")?);
        let steady = Duration::from_secs(steady_secs);
        let warmup = args.steady_warmup_ops;
        eprintln!("  steady put/delete, Tandem ({warmup} operations first, unmeasured)");
        workload::steady_warmup(&tandem, 16, warmup).await;
        t.steady = Some(workload::steady(&tandem, 16, steady, 10).await);
        eprintln!("  steady put/delete, etcd ({warmup} operations first, unmeasured)");
        workload::steady_warmup(&etcd, 16, warmup).await;
        e.steady = Some(workload::steady(&etcd, 16, steady, 10).await);
        tandem.stop().await;
        etcd.stop().await;
        notes.push(String::new());
        notes.push(format!(
            "RSS samples under the steady put/delete load (MiB, per member; {steady_secs} s, 16 clients):"
        ));
        notes.push(String::new());
        for (name, figures) in [("Tandem", &t), ("etcd", &e)] {
            if let Some((_, samples)) = &figures.steady {
                notes.push(format!("- {name}: {}", format_samples(samples)));
            }
        }
    }

    let rows = rows(&t, &e, keys);
    let mut all_notes = method_notes(&args, keys, steady_secs, &t.default_sync_mode);
    all_notes.extend(notes);
    all_notes.push(String::new());
    all_notes.push(format!(
        "Load average before the run: {} (other work on the machine skews both systems alike, \
         since each figure is measured for Tandem and etcd back to back, in rounds taking turns for puts \
         and gets). Run time: {} s.",
        load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        started.elapsed().as_secs()
    ));
    let context = report::Context {
        date: date(),
        machine,
        command: args.command.clone(),
        versions,
    };
    let table = report::render(&context, &rows, &all_notes);
    println!("{table}");
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(out, &table).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("--- written to {}", out.display());
    }
    Ok(())
}

async fn start_tandem(bin: &Path, dir: &Path, pid_file: &Path, extra: &[&str]) -> anyhow::Result<TandemCluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    TandemCluster::start(bin, dir, pid_file, extra)
        .await
        .context("cannot start Tandem")
}

async fn start_etcd(bin: &Path, dir: &Path, pid_file: &Path) -> anyhow::Result<EtcdCluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    EtcdCluster::start(bin, dir, pid_file)
        .await
        .context("cannot start etcd")
}

/// One put or get level of both systems, measured in `rounds` stretches taking turns (Tandem
/// first in the first, third, … round, etcd first in the second, fourth, …), each system's
/// stretches summed up as one.
async fn interleaved<T, E, TF, EF>(rounds: u32, mut tandem: T, mut etcd: E) -> (Summary, Summary)
where
    T: FnMut(u32) -> TF,
    E: FnMut(u32) -> EF,
    TF: std::future::Future<Output = Level>,
    EF: std::future::Future<Output = Level>,
{
    let (mut t, mut e) = (Level::default(), Level::default());
    for round in 0..rounds {
        if round % 2 == 0 {
            t.merge(tandem(round).await);
            e.merge(etcd(round).await);
        } else {
            e.merge(etcd(round).await);
            t.merge(tandem(round).await);
        }
    }
    (show("Tandem", t.summary()), show("etcd", e.summary()))
}

fn show(name: &str, summary: Summary) -> Summary {
    eprintln!(
        "    {name:<7} {:>9.0} ops/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ({} ops, {} errors)",
        summary.ops_per_sec,
        summary.p50_ms.unwrap_or(f64::NAN),
        summary.p99_ms.unwrap_or(f64::NAN),
        summary.ops,
        summary.errors
    );
    summary
}

/// Writes `keys` keys, then reads every member's peak RSS.
async fn fill<C: Cluster>(cluster: &C, keys: u64) -> anyhow::Result<(Duration, Vec<Option<Memory>>)> {
    let took = workload::fill(&cluster.store(), "m/", keys, 100, 16).await?;
    // Let the followers finish applying before reading their peaks.
    cluster.wait_healthy(Duration::from_secs(120)).await?;
    let memory = cluster.memory();
    eprintln!(
        "    {}: {keys} keys in {:.1} s; peak RSS per member (MiB): {}",
        cluster.name(),
        took.as_secs_f64(),
        memory
            .iter()
            .map(|m| m.map(|m| format!("{:.1}", mib(m.peak_kib))).unwrap_or("?".into()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((took, memory))
}
