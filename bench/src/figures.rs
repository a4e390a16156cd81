//! The figures each system produced, turned into the table's rows, the notes on method, and the
//! description of the machine.

use std::path::Path;
use std::time::Duration;

use crate::proc::Memory;
use crate::report::{Better, Row};
use crate::stats::{self, median, slope, Summary};
use crate::workload::{Failover, MemorySample};
use crate::RunArgs;

/// The figures of one system, as measured.
#[derive(Default)]
pub(crate) struct Figures {
    pub(crate) puts: Vec<(usize, Summary)>,
    pub(crate) gets: Vec<(&'static str, Summary)>,
    pub(crate) watch: Option<stats::Samples>,
    pub(crate) failover: Option<Failover>,
    /// Tandem only: the one try in sync mode strict.
    pub(crate) failover_strict: Option<Failover>,
    /// Tandem only: the sync mode a replica set gets by default ("available" or "strict").
    pub(crate) default_sync_mode: String,
    pub(crate) fill: Option<(Duration, Vec<Option<Memory>>)>,
    pub(crate) steady: Option<(Summary, Vec<MemorySample>)>,
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) fn format_samples(samples: &[MemorySample]) -> String {
    samples
        .iter()
        .map(|s| {
            let members: Vec<String> = s
                .members
                .iter()
                .map(|m| m.map(|m| format!("{:.0}", mib(m.rss_kib))).unwrap_or("?".into()))
                .collect();
            format!("{:.0}s [{}]", s.secs, members.join("/"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// RSS growth of the largest member over all the samples (least squares), in MiB per minute.
/// They are taken after the warm-up (see `--steady-warmup-ops`); before it, only the second
/// half counted, the first being Tandem's change history filling up to its bound.
fn growth_mib_per_min(samples: &[MemorySample]) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| {
            let max = s.members.iter().flatten().map(|m| m.rss_kib).max()?;
            Some((s.secs / 60.0, mib(max)))
        })
        .collect();
    slope(&points)
}

fn errors_note(errors: u64) -> String {
    if errors == 0 {
        String::new()
    } else {
        format!("({errors} errors)")
    }
}

/// Turns both systems' figures into the table's rows.
pub(crate) fn rows(t: &Figures, e: &Figures, keys: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let default_note = |mode: &str| {
        if t.default_sync_mode == mode {
            ", the default"
        } else {
            ""
        }
    };
    let latency_rows = |rows: &mut Vec<Row>, name: &str, ts: &Summary, es: &Summary| {
        let notes = (errors_note(ts.errors), errors_note(es.errors));
        rows.push(
            Row::new(
                format!("{name}: ops/s"),
                Some(ts.ops_per_sec),
                Some(es.ops_per_sec),
                0,
                Better::Higher,
            )
            .notes(notes.0.clone(), notes.1.clone()),
        );
        rows.push(Row::new(
            format!("{name}: p50 ms"),
            ts.p50_ms,
            es.p50_ms,
            2,
            Better::Lower,
        ));
        rows.push(Row::new(
            format!("{name}: p99 ms"),
            ts.p99_ms,
            es.p99_ms,
            2,
            Better::Lower,
        ));
    };
    for ((c, ts), (_, es)) in t.puts.iter().zip(&e.puts) {
        latency_rows(&mut rows, &format!("put 256 B, c={c}"), ts, es);
    }
    for ((name, ts), (_, es)) in t.gets.iter().zip(&e.gets) {
        latency_rows(&mut rows, name, ts, es);
    }
    if let (Some(ts), Some(es)) = (&t.watch, &e.watch) {
        let notes = (errors_note(ts.errors), errors_note(es.errors));
        rows.push(
            Row::new(
                "watch put→event, 100 watchers: p50 ms",
                ts.quantile_ms(0.5),
                es.quantile_ms(0.5),
                2,
                Better::Lower,
            )
            .notes(notes.0, notes.1),
        );
        rows.push(Row::new(
            "watch put→event, 100 watchers: p99 ms",
            ts.quantile_ms(0.99),
            es.quantile_ms(0.99),
            2,
            Better::Lower,
        ));
    }
    if let (Some(tf), Some(ef)) = (&t.failover, &e.failover) {
        let med = |f: &Failover| {
            let done: Vec<Duration> = f.times.iter().flatten().copied().collect();
            median(&done).map(|d| d.as_secs_f64() * 1000.0)
        };
        let each = |f: &Failover| {
            let missed = f.times.iter().filter(|t| t.is_none()).count();
            let times: Vec<String> = f
                .times
                .iter()
                .map(|t| t.map(|d| d.as_millis().to_string()).unwrap_or("none".into()))
                .collect();
            let missed = if missed > 0 {
                format!(", {missed} never recovered")
            } else {
                String::new()
            };
            format!("([{}]{missed})", times.join(", "))
        };
        rows.push(
            Row::new(
                format!(
                    "failover: kill -9 leader → first put, median ms (Tandem: sync mode available{})",
                    default_note("available")
                ),
                med(tf),
                med(ef),
                0,
                Better::Lower,
            )
            .notes(each(tf), each(ef)),
        );
        if let Some(strict) = &t.failover_strict {
            let note = match strict.times.first().copied().flatten() {
                Some(_) => each(strict),
                None => "(no put while the killed replica was down: strict waits for every sync replica)".to_owned(),
            };
            rows.push(
                Row::new(
                    format!(
                        "failover: kill -9 leader → first put, ms (Tandem: sync mode strict{}, 1 try)",
                        default_note("strict")
                    ),
                    med(strict),
                    med(ef),
                    0,
                    Better::Lower,
                )
                .notes(note, String::new()),
            );
        }
        let strict = t.failover_strict.clone().unwrap_or_default();
        rows.push(
            Row::new(
                "failover: acknowledged puts lost",
                Some((tf.lost + strict.lost) as f64),
                Some(ef.lost as f64),
                0,
                Better::Lower,
            )
            .notes(
                format!(
                    "(of {}; {} failed/unknown)",
                    tf.acked + strict.acked,
                    tf.failed + strict.failed
                ),
                format!("(of {}; {} failed)", ef.acked, ef.failed),
            ),
        );
    }
    if let (Some((tt, tm)), Some((et, em))) = (&t.fill, &e.fill) {
        let peak = |m: &Vec<Option<Memory>>| m.iter().flatten().map(|m| mib(m.peak_kib)).reduce(f64::max);
        rows.push(Row::new(
            format!("peak RSS of a member after {keys} keys × 256 B, MiB (max of 3)"),
            peak(tm),
            peak(em),
            1,
            Better::Lower,
        ));
        rows.push(Row::new(
            format!("fill {keys} keys (100 per txn, 16 clients): keys/s"),
            Some(keys as f64 / tt.as_secs_f64()),
            Some(keys as f64 / et.as_secs_f64()),
            0,
            Better::Higher,
        ));
    }
    if let (Some((ts, tsamples)), Some((es, esamples))) = (&t.steady, &e.steady) {
        rows.push(
            Row::new(
                "RSS growth under steady put/delete, MiB/min (after warm-up)",
                growth_mib_per_min(tsamples),
                growth_mib_per_min(esamples),
                1,
                Better::NoGrowth,
            )
            .notes(
                format!("({:.0} ops/s)", ts.ops_per_sec),
                format!("({:.0} ops/s)", es.ops_per_sec),
            ),
        );
    }
    rows
}

pub(crate) fn method_notes(args: &RunArgs, keys: u64, steady_secs: u64, tandem_mode: &str) -> Vec<String> {
    let mode = if tandem_mode.is_empty() {
        "default".to_owned()
    } else {
        format!("{tandem_mode} (its default)")
    };
    vec![
        String::new(),
        "How it was measured:".into(),
        String::new(),
        format!(
            "- Both systems: 3 members as processes on 127.0.0.1, default timers (Tandem: heartbeat 100 ms, \
             election 400–800 ms, 3 `sync` replicas, sync mode {mode}; etcd: heartbeat 100 ms, election \
             1000 ms), fsync on, data in a temp dir on the same disk; each figure measured for Tandem and etcd \
             back to back (puts and gets in {} rounds taking turns, below).",
            args.rounds
        ),
        format!(
            "- Closed loops: c clients share one client object (tandem-client / etcd-client with every member's \
             endpoint); each put/get level measured in {} rounds, Tandem first in odd rounds and etcd first in \
             even ones, each stretch {} s of warm-up then {:.1} s measured ({} s per level and system in all), the \
             rounds of each system summed up; latency per operation, exact percentiles.",
            args.rounds,
            args.warmup_secs,
            args.level_secs as f64 / f64::from(args.rounds),
            args.level_secs
        ),
        "- Puts: 256-byte values to distinct keys. Gets: 1,000 keys. Linearizable: Tandem reads on the primary \
         (openraft ensure_linearizable), etcd ReadIndex on any member. Stale: Tandem `get_stale` spread over all \
         3 replicas, etcd serializable range on the member the client picks."
            .into(),
        format!(
            "- Watch: {} watches on one prefix, all on one stream of one client each side (etcd: one `Watch` \
             stream carrying them all, as etcd's Go client shares one; Tandem: its client's one `WatchMany` \
             stream); {} puts one after the other; latency from just before each put to the event's arrival \
             at each watch.",
            args.watchers, args.watch_puts
        ),
        format!(
            "- Failover: one client puts in a loop (1 s per attempt, 10 ms pause after a failure); the leader is \
             kill -9'd; figure = kill → completion of the first successful put invoked after the kill; the member \
             is restarted and the set waited healthy between tries. Tandem in sync mode available (a sync replica \
             that stops answering is demoted, so writes go on): {} tries; in sync mode strict (every write waits for \
             every sync replica): 1 try with a {} s limit; the mode that is not the default runs on a second \
             replica set. etcd: {} tries. Every acknowledged put is read back (linearizable) at the end.",
            args.failover_tries, args.strict_failover_secs, args.failover_tries
        ),
        format!(
            "- Memory: fresh clusters; {keys} keys written 100 per transaction; peak RSS = VmHWM from \
             /proc/PID/status; then a steady put/delete load (16 clients, 64 keys each): {} operations unmeasured \
             (past Tandem's change-history bound), then {steady_secs} s with RSS (VmRSS) sampled 10 times; the growth \
             row is the least-squares slope of the largest member's RSS over those samples.",
            args.steady_warmup_ops
        ),
    ]
}

/// `nproc`, memory, CPU model and kernel.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "nproc {cores}, {mem_gib:.1} GiB memory, {model}, Linux {}",
        kernel.trim()
    )
}

pub(crate) fn date() -> String {
    command_output(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .trim()
        .to_owned()
}

/// The standard output of a short command, or empty.
pub(crate) fn command_output(program: &Path, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::Memory;

    fn sample(secs: f64, rss_mib: &[u64]) -> MemorySample {
        MemorySample {
            secs,
            members: rss_mib
                .iter()
                .map(|&m| {
                    Some(Memory {
                        peak_kib: m * 1024,
                        rss_kib: m * 1024,
                    })
                })
                .collect(),
        }
    }

    #[test]
    fn growth_is_the_largest_members_slope_over_every_sample() {
        // The largest member grows 1 MiB every 4 s from the first sample on: 15 MiB/min.
        let rising: Vec<_> = (0..=10).map(|i| sample(4.0 * i as f64, &[50, 100 + i, 60])).collect();
        let growth = growth_mib_per_min(&rising).unwrap();
        assert!((growth - 15.0).abs() < 1e-9, "{growth}");
        // Rising, dropping once in the middle (a heap collected), rising again: rising overall.
        let sawtooth: Vec<_> = (0..=10)
            .map(|i| sample(4.0 * i as f64, &[if i < 6 { 170 + 7 * i } else { 170 + 7 * (i - 6) }]))
            .collect();
        assert!(growth_mib_per_min(&sawtooth).unwrap() > 0.0);
        // Flat is zero.
        let flat: Vec<_> = (0..=10).map(|i| sample(4.0 * i as f64, &[73, 59])).collect();
        assert_eq!(growth_mib_per_min(&flat), Some(0.0));
    }
}
