//! The workloads, written once against [`Store`] / [`Cluster`] and run against both systems:
//! closed-loop puts and gets at a given concurrency, watch delivery latency, failover under a
//! put loop (with the read-back of every acknowledged put), bulk fill, and a steady put/delete
//! load with memory samples.
//!
//! Every loop is bounded in time and every operation by [`OP_TIMEOUT`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::proc::Memory;
use crate::stats::{Level, Samples, Summary};
use crate::target::{Cluster, Read, Store};

/// Size of every value written.
pub const VALUE_BYTES: usize = 256;
/// Longest any single operation may take before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Keys read by the get workloads.
pub const GET_KEYS: u64 = 1_000;

/// The 256-byte value of `key`: the key repeated, so that a read-back can check it.
pub fn value_for(key: &str) -> Vec<u8> {
    let pattern = format!("{key}|");
    pattern.bytes().cycle().take(VALUE_BYTES).collect()
}

/// Runs `op(worker, seq)` in `concurrency` closed loops for `warmup + duration`; only the
/// operations started after the warm-up are measured. The first error is printed.
pub async fn closed_loop<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, op: F) -> Summary
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    closed_loop_level(concurrency, warmup, duration, op).await.summary()
}

/// [`closed_loop`], keeping the latencies (to be merged with further rounds of the same level).
pub async fn closed_loop_level<F, Fut>(concurrency: usize, warmup: Duration, duration: Duration, op: F) -> Level
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let op = op.clone();
            let reported = reported.clone();
            tokio::spawn(async move {
                let mut samples = Samples::default();
                let mut seq = 0u64;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let result = match tokio::time::timeout(OP_TIMEOUT, op(worker, seq)).await {
                        Ok(result) => result,
                        Err(_) => Err(anyhow::anyhow!("operation timed out after {OP_TIMEOUT:?}")),
                    };
                    seq += 1;
                    match result {
                        Ok(()) if began >= measure_from => samples.record(began.elapsed()),
                        Ok(()) => {}
                        Err(e) => {
                            if began >= measure_from {
                                samples.errors += 1;
                            }
                            if !reported.swap(true, Ordering::Relaxed) {
                                eprintln!("    first error: {e:#}");
                            }
                            // An error may be instantaneous (connection refused): do not spin.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                samples
            })
        })
        .collect();
    let mut all = Samples::default();
    for worker in workers {
        match worker.await {
            Ok(samples) => all.merge(samples),
            Err(e) => {
                eprintln!("    a worker failed: {e}");
                all.errors += 1;
            }
        }
    }
    Level::new(all, Instant::now().saturating_duration_since(measure_from))
}

/// Puts of 256-byte values to distinct keys.
pub async fn puts<S: Store>(store: &S, tag: &str, concurrency: usize, warmup: Duration, duration: Duration) -> Level {
    let store = store.clone();
    let tag = tag.to_owned();
    closed_loop_level(concurrency, warmup, duration, move |worker, seq| {
        let store = store.clone();
        let key = format!("p/{tag}/{worker}/{seq}");
        async move {
            let value = value_for(&key);
            store.put(key, value).await
        }
    })
    .await
}

/// Writes the keys the get workloads read.
pub async fn load_get_keys<S: Store>(store: &S) -> anyhow::Result<()> {
    fill(store, "g/", GET_KEYS, 100, 4).await.map(|_| ())
}

/// Gets of random keys among [`GET_KEYS`] (every one must be found).
pub async fn gets<S: Store>(store: &S, stale: bool, concurrency: usize, warmup: Duration, duration: Duration) -> Level {
    let store = store.clone();
    closed_loop_level(concurrency, warmup, duration, move |worker, seq| {
        let store = store.clone();
        let key = fill_key("g/", mix(worker as u64, seq) % GET_KEYS);
        let read = if stale {
            Read::Stale { worker }
        } else {
            Read::Linearizable
        };
        async move {
            match store.get(key.clone(), read).await? {
                Some(_) => Ok(()),
                None => bail!("key {key} not found"),
            }
        }
    })
    .await
}

/// A cheap deterministic hash (splitmix64) picking the key to read.
pub fn mix(worker: u64, seq: u64) -> u64 {
    let mut z = worker.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.wrapping_add(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Watch delivery: `watchers` watches on one prefix (one stream), then `puts` puts one after the
/// other; for each, the time from just before the put is sent to the event's arrival at each
/// watcher.
pub async fn watch_latency<S: Store>(store: &S, watchers: usize, puts: usize) -> anyhow::Result<Samples> {
    const PREFIX: &str = "w/";
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
    let (tx, mut events) = mpsc::channel(watchers * 4);
    let watches = tokio::time::timeout(OP_TIMEOUT, store.watch(PREFIX.to_owned(), watchers, tx))
        .await
        .context("opening the watches timed out")?
        .context("cannot open the watches")?;
    let mut samples = Samples::default();
    for i in 0..puts {
        let key = format!("{PREFIX}{i:06}");
        let sent = Instant::now();
        tokio::time::timeout(OP_TIMEOUT, store.put(key.clone(), value_for(&key)))
            .await
            .context("a watched put timed out")?
            .context("a watched put failed")?;
        let mut delivered = 0;
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        while delivered < watchers {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some((event_key, at))) if event_key == key => {
                    samples.record(at.saturating_duration_since(sent));
                    delivered += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("every watch stream ended"),
                Err(_) => {
                    samples.errors += (watchers - delivered) as u64;
                    break;
                }
            }
        }
    }
    drop(watches);
    Ok(samples)
}

/// What the failover tries measured.
#[derive(Debug, Default, Clone)]
pub struct Failover {
    /// Kill → first successful put, per try (`None`: no success within the limit).
    pub times: Vec<Option<Duration>>,
    /// Puts acknowledged during all tries.
    pub acked: u64,
    /// Acknowledged puts missing (or with another value) at the end.
    pub lost: u64,
    /// Puts that failed or whose outcome is unknown (never acknowledged).
    pub failed: u64,
}

/// `tries` times: under a one-client put loop, kill -9 the leader, time the first successful put
/// invoked after the kill (giving up after `limit`), restart the member and wait for health.
/// Then reads back every acknowledged put.
pub async fn failover<C: Cluster>(cluster: &mut C, tries: usize, limit: Duration) -> anyhow::Result<Failover> {
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
    let store = cluster.store_with_timeout(ATTEMPT_TIMEOUT).await?;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let mut result = Failover::default();
    for attempt in 0..tries {
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        // (invoked, completed) of every successful put of this try.
        let successes = Arc::new(Mutex::new(Vec::<(Instant, Instant)>::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn({
            let (store, acked, failed, successes) = (store.clone(), acked.clone(), failed.clone(), successes.clone());
            async move {
                let loop_end = Instant::now() + limit + Duration::from_secs(10);
                let mut seq = 0u64;
                while !*stop_rx.borrow_and_update() && Instant::now() < loop_end {
                    let key = format!("f/{attempt}/{seq}");
                    seq += 1;
                    let invoked = Instant::now();
                    let put = tokio::time::timeout(ATTEMPT_TIMEOUT * 5, store.put(key.clone(), value_for(&key)));
                    match put.await {
                        Ok(Ok(())) => {
                            lock(&acked).push(key);
                            lock(&successes).push((invoked, Instant::now()));
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                                _ = stop_rx.changed() => {}
                            }
                        }
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = cluster.leader().await?;
        let killed_at = Instant::now();
        cluster.kill(leader).await?;
        let recovery = loop {
            let first = lock(&successes)
                .iter()
                .find(|(invoked, _)| *invoked >= killed_at)
                .map(|(_, done)| *done);
            if let Some(done) = first {
                break Some(done.saturating_duration_since(killed_at));
            }
            if killed_at.elapsed() > limit {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        eprintln!(
            "    try {}: killed member {} → first put after {}",
            attempt + 1,
            leader + 1,
            recovery
                .map(|d| format!("{} ms", d.as_millis()))
                .unwrap_or_else(|| "none".into())
        );
        result.times.push(recovery);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop_tx.send(true);
        if tokio::time::timeout(OP_TIMEOUT, task).await.is_err() {
            bail!("the put loop did not stop");
        }
        cluster.restart(leader).await?;
    }
    cluster.wait_healthy(Duration::from_secs(60)).await?;
    let keys = std::mem::take(&mut *lock(&acked));
    result.acked = keys.len() as u64;
    result.failed = failed.load(Ordering::Relaxed);
    result.lost = read_back(&cluster.store(), keys).await?;
    Ok(result)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads every key back (linearizable); returns how many are missing or hold another value.
pub async fn read_back<S: Store>(store: &S, keys: Vec<String>) -> anyhow::Result<u64> {
    let checks = futures::stream::iter(keys)
        .map(|key| {
            let store = store.clone();
            async move {
                let mut last_error = None;
                for _ in 0..3 {
                    match tokio::time::timeout(OP_TIMEOUT, store.get(key.clone(), Read::Linearizable)).await {
                        Ok(Ok(found)) => return Ok(found.as_deref() != Some(value_for(&key).as_slice())),
                        Ok(Err(e)) => last_error = Some(e),
                        Err(_) => last_error = Some(anyhow::anyhow!("read-back timed out")),
                    }
                }
                Err(last_error
                    .unwrap_or_else(|| anyhow::anyhow!("read-back failed"))
                    .context(key))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<anyhow::Result<bool>>>()
        .await;
    let mut lost = 0;
    for check in checks {
        if check.context("cannot read an acknowledged key back")? {
            lost += 1;
        }
    }
    Ok(lost)
}

fn fill_key(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:08}")
}

/// Writes `n` keys `{prefix}00000000…` of 256 bytes, `batch` per transaction, `concurrency`
/// transactions at a time. Returns how long it took.
pub async fn fill<S: Store>(
    store: &S,
    prefix: &str,
    n: u64,
    batch: u64,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (store, next, prefix) = (store.clone(), next.clone(), prefix.to_owned());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= n {
                        return Ok(());
                    }
                    let pairs: Vec<(String, Vec<u8>)> = (first..(first + batch).min(n))
                        .map(|i| {
                            let key = fill_key(&prefix, i);
                            let value = value_for(&key);
                            (key, value)
                        })
                        .collect();
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        match tokio::time::timeout(OP_TIMEOUT, store.put_batch(pairs.clone())).await {
                            Ok(Ok(())) => break,
                            Ok(Err(e)) if tries >= 3 => return Err(e.context("fill failed")),
                            Err(_) if tries >= 3 => bail!("fill timed out"),
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.context("a fill worker panicked")??;
    }
    Ok(started.elapsed())
}

/// Memory of every member at one moment, `secs` after the steady load began.
#[derive(Debug, Clone)]
pub struct MemorySample {
    pub secs: f64,
    pub members: Vec<Option<Memory>>,
}

/// One operation of the steady load: client `worker` cycles over 64 keys of its own, putting a
/// key and then deleting it.
async fn steady_op<S: Store>(store: S, worker: usize, seq: u64) -> anyhow::Result<()> {
    let key = format!("s/{worker}/{}", (seq / 2) % 64);
    if seq.is_multiple_of(2) {
        let value = value_for(&key);
        store.put(key, value).await
    } else {
        store.delete(key).await
    }
}

/// The steady put/delete load, unmeasured, until `ops` operations have completed (the clients
/// take them in turn; a failed one counts too, and the first failure is printed).
pub async fn steady_warmup<C: Cluster>(cluster: &C, concurrency: usize, ops: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let store = cluster.store();
            let next = next.clone();
            let reported = reported.clone();
            tokio::spawn(async move {
                let mut seq = 0;
                while next.fetch_add(1, Ordering::Relaxed) < ops {
                    let done = tokio::time::timeout(OP_TIMEOUT, steady_op(store.clone(), worker, seq)).await;
                    let failed = match done {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(format!("{e:#}")),
                        Err(_) => Some("timed out".to_owned()),
                    };
                    if let Some(e) = failed {
                        if !reported.swap(true, Ordering::Relaxed) {
                            eprintln!("    a warm-up operation failed: {e}");
                        }
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(e) = worker.await {
            eprintln!("    a warm-up client panicked: {e}");
        }
    }
}

/// A steady put/delete load (`concurrency` clients, each cycling over 64 keys of its own) for
/// `duration`, sampling every member's memory `samples` times.
pub async fn steady<C: Cluster>(
    cluster: &C,
    concurrency: usize,
    duration: Duration,
    samples: usize,
) -> (Summary, Vec<MemorySample>) {
    let store = cluster.store();
    let load = tokio::spawn(closed_loop(
        concurrency,
        Duration::ZERO,
        duration,
        move |worker, seq| steady_op(store.clone(), worker, seq),
    ));
    let started = Instant::now();
    let every = duration / samples.max(1) as u32;
    let mut taken = vec![MemorySample {
        secs: 0.0,
        members: cluster.memory(),
    }];
    for i in 1..=samples {
        tokio::time::sleep_until((started + every * i as u32).into()).await;
        taken.push(MemorySample {
            secs: started.elapsed().as_secs_f64(),
            members: cluster.memory(),
        });
    }
    let summary = match load.await {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("    the steady load failed: {e}");
            Summary::default()
        }
    };
    (summary, taken)
}
