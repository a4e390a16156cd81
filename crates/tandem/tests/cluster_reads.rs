//! Linearizable reads under concurrent writes: many readers share the primary's leadership checks
//! (far fewer checks than reads), and every read still sees every write acknowledged before it
//! began.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_client::{Client, ClientError};
use tandem_testkit::{init_tracing, Cluster, ClusterOptions, Kind};
use tracing::info;

use common::TANDEM;

const WRITERS: usize = 4;
const READERS: usize = 32;
const RUN: Duration = Duration::from_secs(4);

/// One read, as recorded: the key, the newest value acknowledged for it before the read was
/// invoked, and what the read returned.
#[derive(Debug)]
struct Read {
    key: String,
    acknowledged_before: u64,
    outcome: Result<u64, String>,
}

fn key(writer: usize) -> String {
    format!("reads/w{writer}")
}

fn parse(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a counter: {value:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_checks_and_see_every_acknowledged_write() {
    init_tracing();
    info!("--- start three sync replicas");
    let cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], ClusterOptions::default()).await;
    let primary = cluster.must_wait_primary().await;
    let before = cluster.must_status(primary).await;

    // The newest value acknowledged per key; writers count up, one key each.
    let acknowledged: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    // Every write: (key, value, acknowledged or not).
    let writes = Arc::new(Mutex::new(Vec::<(String, u64, Result<(), String>)>::new()));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    info!("--- {WRITERS} writers and {READERS} readers for {RUN:?}");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, acknowledged, writes, stop) =
            (cluster.new_client(), acknowledged.clone(), writes.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let outcome = client.put(&key(w), n.to_string()).await;
                if outcome.is_ok() {
                    acknowledged[w].store(n, Ordering::SeqCst);
                }
                let outcome = outcome.map(|_| ()).map_err(|e| e.to_string());
                writes.lock().unwrap().push((key(w), n, outcome));
            }
        }));
    }
    let reader_client: Client = cluster.new_client();
    for r in 0..READERS {
        let (client, acknowledged, reads, stop) =
            (reader_client.clone(), acknowledged.clone(), reads.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::SeqCst) {
                let w = i % WRITERS;
                i += 1;
                let acknowledged_before = acknowledged[w].load(Ordering::SeqCst);
                let outcome: Result<Option<_>, ClientError> = client.get(&key(w)).await;
                let outcome = outcome
                    .map(|kv| kv.map_or(0, |kv| parse(&kv.value)))
                    .map_err(|e| e.to_string());
                reads.lock().unwrap().push(Read {
                    key: key(w),
                    acknowledged_before,
                    outcome,
                });
            }
        }));
    }
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("a client task panicked");
    }

    info!("--- every read saw every write acknowledged before it began");
    let reads = std::mem::take(&mut *reads.lock().unwrap());
    let ok: Vec<&Read> = reads.iter().filter(|r| r.outcome.is_ok()).collect();
    let failed = reads.len() - ok.len();
    info!(reads = reads.len(), ok = ok.len(), failed, "reads recorded");
    assert!(
        ok.len() >= READERS * 10,
        "too few reads succeeded: {} of {}",
        ok.len(),
        reads.len()
    );
    assert_eq!(
        failed,
        0,
        "reads failed without a fault: {:?}",
        reads.iter().find(|r| r.outcome.is_err())
    );
    for read in &ok {
        let seen = *read.outcome.as_ref().unwrap();
        assert!(
            seen >= read.acknowledged_before,
            "stale read of {}: saw {seen}, but {} was acknowledged before the read began",
            read.key,
            read.acknowledged_before
        );
    }

    info!("--- every acknowledged write is there, none twice");
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    for (key, n, outcome) in &writes {
        assert!(outcome.is_ok(), "write {key}={n} failed without a fault: {outcome:?}");
        newest.insert(key.clone(), *n);
    }
    for kv in cluster.must_range("reads/").await {
        assert_eq!(Some(&parse(&kv.value)), newest.get(&kv.key), "{}", kv.key);
    }

    info!("--- the readers shared leadership checks");
    let after = cluster.must_status(primary).await;
    let served = after.linearizable_reads - before.linearizable_reads;
    let checks = after.read_checks - before.read_checks;
    info!(
        served,
        checks, "linearizable reads and leadership checks on the primary"
    );
    assert!(served >= ok.len() as u64, "{served} reads counted for {} ok", ok.len());
    assert!(
        checks * 2 <= served,
        "{READERS} concurrent readers took {checks} checks for {served} reads"
    );
}
