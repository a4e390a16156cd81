//! Shared by the `epoch_*` tests (forced recovery, fencing, rejoin, failback): the binary under
//! test, the seed of random choices, and the checks several of them need — the loss bound of a
//! forced recovery against the history, the fenced refusal of a replica of the old epoch, its
//! quarantine directory after a rejoin.
//!
//! Every random choice comes from [`Seed`], printed at the start of the test; set
//! `TANDEM_TEST_SEED` to replay a failure with the same choices.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_testkit::client::{Client, ClientError, ClientOptions, KeyValue, RecoverResponse, RejoinResponse};
use tandem_testkit::{Cluster, History, Op, Outcome, Violation};
use tracing::info;

/// The `tandem` binary cargo built for these tests.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Deadline of the writers' clients: short, so that a write with no primary to go to fails
/// fast instead of holding the test (the default is 15 s).
pub const WRITER_DEADLINE: Duration = Duration::from_secs(2);

/// How long "nothing happens" is watched for: several election timeouts (400–800 ms by default).
pub const QUIET_WINDOW: Duration = Duration::from_secs(3);

/// Slack between the test's clock (when a write's answer came) and the survivor's (when it last
/// heard the primary): a message's transit and processing, scheduling on a loaded machine. Writes
/// acknowledged that much before the moment the survivor last heard the primary are counted as
/// "acknowledged after", which makes the bound generous, never strict.
pub const CLOCK_SLACK: Duration = Duration::from_millis(100);

/// Pause between two looks during a watched window.
const WATCH_PAUSE: Duration = Duration::from_millis(50);

/// Serialises the tests of one test binary (cargo runs them on parallel threads): two clusters
/// at once on a two-core machine would make every timer in them less predictable. Hold the
/// guard for the whole test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A seeded source of random choices (splitmix64).
pub struct Seed {
    state: u64,
}

impl Seed {
    /// From `TANDEM_TEST_SEED`, or from the clock; prints the replay line.
    pub fn from_env(test: &str) -> Seed {
        let seed = std::env::var("TANDEM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (replay with TANDEM_TEST_SEED={seed})");
        Seed { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// `n` clients of every replica with the short [`WRITER_DEADLINE`].
pub fn writer_clients(cluster: &Cluster, n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| {
            cluster.new_client_with(ClientOptions {
                deadline: WRITER_DEADLINE,
                ..ClientOptions::default()
            })
        })
        .collect()
}

/// Forced recovery on replica `id` through the client library; panics when refused.
pub async fn must_recover(cluster: &Cluster, id: u64) -> RecoverResponse {
    let addr = cluster.addr(id);
    match cluster.client().recover(&addr, true).await {
        Ok(report) => {
            info!(?report, "forced recovery on replica {id}");
            report
        }
        Err(e) => panic!("forced recovery on replica {id} ({addr}) failed: {e}"),
    }
}

/// Checks the fields of a recovery report that do not depend on timing: epochs, and that the
/// log tail applied is exactly what lies between the applied point and the new epoch's start.
pub fn must_be_consistent_report(report: &RecoverResponse, previous_epoch: u64) {
    assert_eq!(report.previous_epoch, previous_epoch, "{report:?}");
    assert_eq!(report.epoch, previous_epoch + 1, "{report:?}");
    assert!(
        report.start_index >= report.applied_before,
        "the new epoch starts before the applied point: {report:?}"
    );
    assert_eq!(
        report.tail_applied,
        report.start_index - report.applied_before,
        "the tail applied is not the entries between the applied point and the start: {report:?}"
    );
    assert!(!report.assessment.is_empty(), "no assessment: {report:?}");
}

/// Waits until replica `survivor` is the primary of `epoch`, starting after `start_index`; returns
/// its store revision then (the revision at the new epoch's start, when nothing was written since).
pub async fn must_wait_primary_of_epoch(cluster: &Cluster, survivor: u64, epoch: u64, start_index: u64) -> u64 {
    let status = cluster
        .must_wait_status(survivor, &format!("primary of epoch {epoch}"), |s| {
            s.role == "primary" && s.epoch == epoch
        })
        .await;
    assert_eq!(
        status.epoch_start_index, start_index,
        "status and recovery report disagree on the epoch's start: {status:?}"
    );
    assert_eq!(status.fenced_by_epoch, 0, "{status:?}");
    status.revision
}

/// What a history check after a forced recovery found (see [`must_split_loss`]).
#[derive(Debug)]
pub struct Loss {
    /// Acknowledged writes of the old epoch absent from the new history.
    pub missing: Vec<Op>,
    /// Writes of the old epoch acknowledged after the survivor last heard the primary (with
    /// [`CLOCK_SLACK`]), which the report does not count (filled by [`must_check_loss`]).
    pub acknowledged_after_heard: usize,
    /// Acknowledged writes found where they were promised.
    pub kept: usize,
}

fn shown(ops: &[Op]) -> String {
    ops.iter().map(|op| format!("  - {op}")).collect::<Vec<_>>().join("\n")
}

/// Checks the new history `final_state` (every key the history's writes could have put) against
/// the history, allowing only what a forced recovery may lose, and returns what is missing:
/// - every write that is not an acknowledged write of the old epoch is as the history says
///   (acknowledged ones present at their revision, failed ones absent, none applied twice, no
///   phantom key);
/// - the survivor kept a prefix of the old epoch: every missing acknowledged write has a revision
///   above `start_revision` (the store revision at the new epoch's start), so every write at or
///   before the start is present.
///
/// `recover_called_at` is when the recovery was asked for (on the history's clock);
/// acknowledgements before it belong to the old epoch.
pub fn must_split_loss(
    history: &History,
    final_state: &[KeyValue],
    recover_called_at: Duration,
    start_revision: u64,
) -> Loss {
    let old_epoch = |op: &Op| op.completed.is_some_and(|at| at < recover_called_at);
    let (kept, missing) = match history.check_writes(final_state) {
        Ok(summary) => (summary.ok, Vec::new()),
        Err(violations) => {
            let mut missing = Vec::new();
            let mut others = Vec::new();
            for v in &violations.violations {
                match v {
                    Violation::LostAcknowledged { op } if old_epoch(op) => missing.push(op.clone()),
                    other => others.push(format!("  - {other}")),
                }
            }
            assert!(
                others.is_empty(),
                "{} violations besides the acknowledged writes of the old epoch the recovery may \
                 lose:\n{}\nthe whole check:\n{violations}",
                others.len(),
                others.join("\n")
            );
            (violations.summary.ok, missing)
        }
    };
    let below_start: Vec<Op> = missing
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok { revision } if revision <= start_revision))
        .cloned()
        .collect();
    assert!(
        below_start.is_empty(),
        "acknowledged writes at or before the new epoch's start (revision {start_revision}) are \
         missing: the survivor did not keep everything it held\n{}",
        shown(&below_start)
    );
    Loss {
        missing,
        acknowledged_after_heard: 0,
        kept,
    }
}

/// [`must_split_loss`], then the bound of the recovery `report`: missing ≤ `possibly_missing` +
/// writes acknowledged after the survivor last heard the primary (`recover_called_at` −
/// `heard_ms_ago` − [`CLOCK_SLACK`], on the history's clock).
pub fn must_check_loss(
    history: &History,
    final_state: &[KeyValue],
    report: &RecoverResponse,
    recover_called_at: Duration,
    start_revision: u64,
) -> Loss {
    assert_eq!(
        report.start_revision, start_revision,
        "the report's start revision is the new primary's revision: {report:?}"
    );
    let mut loss = must_split_loss(history, final_state, recover_called_at, start_revision);
    let heard_at = recover_called_at
        .saturating_sub(Duration::from_millis(report.heard_ms_ago))
        .saturating_sub(CLOCK_SLACK);
    loss.acknowledged_after_heard = history
        .acknowledged()
        .iter()
        .filter(|op| op.completed.is_some_and(|at| at >= heard_at && at < recover_called_at))
        .count();
    let bound = report.possibly_missing + loss.acknowledged_after_heard as u64;
    info!(
        missing = loss.missing.len(),
        possibly_missing = report.possibly_missing,
        acknowledged_after_heard = loss.acknowledged_after_heard,
        heard_ms_ago = report.heard_ms_ago,
        kept = loss.kept,
        "loss against the recovery's report"
    );
    assert!(
        loss.missing.len() as u64 <= bound,
        "{} acknowledged writes are missing, more than the report's bound {} plus the {} \
         acknowledged after the survivor last heard the primary ({} ms before the recovery, at \
         {:.3}s on the history's clock, with {} ms of slack)\nmissing:\n{}\nreport: {report:?}",
        loss.missing.len(),
        report.possibly_missing,
        loss.acknowledged_after_heard,
        report.heard_ms_ago,
        heard_at.as_secs_f64(),
        CLOCK_SLACK.as_millis(),
        shown(&loss.missing)
    );
    loss
}

/// Waits until replica `id` has heard no primary for `quiet` (as it reports), and its applied
/// index no longer moves: what an operator sees before a forced recovery.
pub async fn must_wait_silent(cluster: &Cluster, id: u64, quiet: Duration) {
    let what = format!("no primary heard for {} ms, applied index settled", quiet.as_millis());
    must_wait_settled_where(cluster, id, &what, |s| {
        s.heard_primary_ms_ago >= quiet.as_millis() as u64
    })
    .await;
}

/// Waits until replica `id`'s applied index no longer moves (two looks in a row agree), e.g.
/// after a restart, while it applies what it knows committed.
pub async fn must_wait_settled(cluster: &Cluster, id: u64) {
    must_wait_settled_where(cluster, id, "applied index settled", |_| true).await;
}

async fn must_wait_settled_where(
    cluster: &Cluster,
    id: u64,
    what: &str,
    condition: impl Fn(&tandem_testkit::client::StatusResponse) -> bool,
) {
    let last_applied = std::cell::Cell::new(None);
    let status = cluster
        .must_wait_status(id, what, |s| {
            let settled = last_applied.replace(Some(s.applied_index)) == Some(s.applied_index);
            settled && condition(s)
        })
        .await;
    info!(
        applied = status.applied_index,
        last_log = status.last_log_index,
        heard_ms_ago = status.heard_primary_ms_ago,
        "replica {id}: {what}"
    );
}

/// Waits until every replica of `ids` (restarted replicas of the superseded epoch) says it is
/// fenced by `new_epoch`; panics at once if one of them says it is primary on the way (a primary
/// of the old epoch beside the new one: split brain).
pub async fn must_wait_fenced_never_primary(cluster: &Cluster, ids: &[u64], new_epoch: u64, primary_addr: &str) {
    let started = Instant::now();
    let mut last: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        let mut fenced = 0;
        for &id in ids {
            match cluster.status(id).await {
                Ok(status) => {
                    assert_ne!(
                        status.role,
                        "primary",
                        "replica {id} of the superseded epoch became primary beside the new epoch's primary at \
                         {primary_addr} (split brain), after {} ms: {status:?}",
                        started.elapsed().as_millis()
                    );
                    if status.role == "fenced" && status.fenced_by_epoch == new_epoch {
                        fenced += 1;
                    }
                    last.insert(id, format!("{status:?}"));
                }
                Err(e) => {
                    last.insert(id, e.to_string());
                }
            }
        }
        if fenced == ids.len() {
            break;
        }
        assert!(
            started.elapsed() < tandem_testkit::EVENT_TIMEOUT,
            "replicas {ids:?} not all fenced by epoch {new_epoch} after {} ms; last seen: {last:#?}",
            started.elapsed().as_millis()
        );
        tokio::time::sleep(WATCH_PAUSE).await;
    }
    for &id in ids {
        must_wait_fenced(cluster, id, new_epoch, primary_addr).await;
    }
}

/// Waits until replica `id` says it is fenced by `new_epoch` and names `primary_addr`.
pub async fn must_wait_fenced(cluster: &Cluster, id: u64, new_epoch: u64, primary_addr: &str) {
    let status = cluster
        .must_wait_status(id, &format!("fenced by epoch {new_epoch}"), |s| {
            s.role == "fenced" && s.fenced_by_epoch == new_epoch
        })
        .await;
    assert_eq!(
        status.epoch,
        new_epoch - 1,
        "a fenced replica keeps its own epoch: {status:?}"
    );
    assert_eq!(
        status.primary_addr, primary_addr,
        "the fence names another primary: {status:?}"
    );
    assert_eq!(
        status.primary_id, None,
        "a fenced replica names no primary id: {status:?}"
    );
}

/// Watches replicas `ids` for `window`: each must answer, stay fenced by `new_epoch`, never say
/// it is primary and never change its term (a fenced replica does not campaign).
pub async fn must_stay_fenced(cluster: &Cluster, ids: &[u64], new_epoch: u64, window: Duration) {
    let started = Instant::now();
    let mut terms: BTreeMap<u64, u64> = BTreeMap::new();
    let mut looks = 0u32;
    while started.elapsed() < window {
        for &id in ids {
            let status = cluster.must_status(id).await;
            let at = started.elapsed().as_millis();
            assert!(
                status.role == "fenced" && status.fenced_by_epoch == new_epoch,
                "replica {id} is no longer fenced by epoch {new_epoch} after {at} ms: {status:?}"
            );
            let term = *terms.entry(id).or_insert(status.term);
            assert_eq!(
                status.term, term,
                "fenced replica {id} changed its term after {at} ms (it campaigned): {status:?}"
            );
        }
        looks += 1;
        tokio::time::sleep(WATCH_PAUSE).await;
    }
    info!(?ids, looks, window_ms = window.as_millis() as u64, "stayed fenced");
}

/// The refusal text of a fenced replica.
pub fn fenced_message(own_epoch: u64, new_epoch: u64, primary_addr: &str) -> String {
    format!("fenced: epoch {own_epoch} superseded by {new_epoch}; the primary is at {primary_addr}")
}

/// A stale read sent straight to the fenced replica `id` (no redirect: the client library hands
/// back the replica's own gRPC status) is refused with `Unavailable`, `tandem-error: fenced`,
/// the new primary and the replica's epoch in metadata.
pub async fn must_refuse_read_fenced(cluster: &Cluster, id: u64, own_epoch: u64, new_epoch: u64, primary_addr: &str) {
    let addr = cluster.addr(id);
    let status = match cluster.client().range("", Some(&addr)).await {
        Err(ClientError::Refused(status)) => status,
        Err(other) => panic!("read on fenced replica {id}: unexpected error {other}"),
        Ok(kvs) => panic!("fenced replica {id} served a read of {} keys", kvs.len()),
    };
    let meta = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let shown = format!("{status:?}");
    assert_eq!(format!("{:?}", status.code()), "Unavailable", "{shown}");
    assert_eq!(meta("tandem-error").as_deref(), Some("fenced"), "{shown}");
    assert_eq!(meta("tandem-primary").as_deref(), Some(primary_addr), "{shown}");
    // A fenced refusal carries the newest epoch it knows, so that an old-epoch peer learns it too.
    assert_eq!(meta("tandem-epoch"), Some(new_epoch.to_string()), "{shown}");
    assert_eq!(
        status.message(),
        fenced_message(own_epoch, new_epoch, primary_addr),
        "{shown}"
    );
}

/// A gRPC answer's status code, message and metadata.
#[derive(Debug)]
pub struct GrpcAnswer {
    pub code: tonic::Code,
    pub message: String,
    pub metadata: tonic::metadata::MetadataMap,
}

impl GrpcAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.metadata.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `Kv/Txn` with one put straight to the replica at `addr` and returns its refusal, with no
/// client library in between (so no redirect to another replica). Panics if the write succeeds.
pub async fn grpc_put_direct(addr: &str, key: &str, value: &[u8]) -> GrpcAnswer {
    use tandem_proto::db as pb;
    let mut kv = match pb::kv_client::KvClient::connect(format!("http://{addr}")).await {
        Ok(kv) => kv,
        Err(e) => panic!("cannot connect to {addr}: {e}"),
    };
    let put = pb::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    };
    let request = pb::TxnRequest {
        ops: vec![pb::Op {
            op: Some(pb::op::Op::Put(put)),
        }],
        ..Default::default()
    };
    match kv.txn(request).await {
        Ok(answer) => panic!("a write straight to {addr} was accepted: {answer:?}"),
        Err(status) => GrpcAnswer {
            code: status.code(),
            message: status.message().to_owned(),
            metadata: status.metadata().clone(),
        },
    }
}

/// A write sent straight to the fenced replica `id` (see [`grpc_put_direct`]) is refused with
/// gRPC `Unavailable` (14), `tandem-error: fenced`, and the message naming both epochs and the
/// new primary.
pub async fn must_refuse_write_fenced(
    cluster: &Cluster,
    id: u64,
    key: &str,
    own_epoch: u64,
    new_epoch: u64,
    primary_addr: &str,
) {
    let answer = grpc_put_direct(&cluster.addr(id), key, b"must-not-be-applied").await;
    assert_eq!(
        answer.code,
        tonic::Code::Unavailable,
        "a write straight to fenced replica {id} was not refused with Unavailable: {answer:?}"
    );
    assert_eq!(
        answer.header("tandem-error"),
        Some("fenced"),
        "replica {id}: {answer:?}"
    );
    assert_eq!(
        answer.header("tandem-primary"),
        Some(primary_addr),
        "replica {id}: {answer:?}"
    );
    assert_eq!(
        answer.message,
        fenced_message(own_epoch, new_epoch, primary_addr),
        "replica {id}: {answer:?}"
    );
}

/// Checks what a rejoin put aside: `divergent.jsonl` has one JSON log entry per divergent entry,
/// consecutive from just after the new epoch's start (`start_index`), and names every key of
/// `divergent_keys`; copies of both databases are there. Returns the file's text.
pub fn must_check_quarantine(
    id: u64,
    rejoined: &RejoinResponse,
    start_index: u64,
    divergent_keys: &[String],
) -> String {
    let dir = Path::new(&rejoined.quarantine_dir);
    assert!(
        dir.is_dir(),
        "replica {id}: no quarantine directory {}: {rejoined:?}",
        dir.display()
    );
    for file in ["log.db", "state.db"] {
        assert!(
            dir.join(file).is_file(),
            "replica {id}: no copy of {file} in {}",
            dir.display()
        );
    }
    let path = dir.join("divergent.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => panic!("replica {id}: cannot read {}: {e}", path.display()),
    };
    let indexes: Vec<u64> = text
        .lines()
        .map(|line| match serde_json::from_str::<serde_json::Value>(line) {
            Ok(entry) => match entry["log_id"]["index"].as_u64() {
                Some(index) => index,
                None => panic!("replica {id}: an entry without log_id.index: {line}"),
            },
            Err(e) => panic!("replica {id}: a line of divergent.jsonl is not JSON ({e}): {line}"),
        })
        .collect();
    assert_eq!(
        indexes.len() as u64,
        rejoined.divergent_entries,
        "replica {id}: divergent.jsonl has another count of entries than the answer: {rejoined:?}"
    );
    if !divergent_keys.is_empty() {
        assert!(
            rejoined.divergent_entries >= divergent_keys.len() as u64,
            "replica {id}: fewer divergent entries than divergent writes: {rejoined:?}"
        );
        assert_eq!(
            rejoined.first_divergent_index,
            start_index + 1,
            "replica {id}: the divergent tail does not start right after the new epoch's start: \
             {rejoined:?}"
        );
        assert_eq!(
            rejoined.last_divergent_index,
            rejoined.first_divergent_index + rejoined.divergent_entries - 1,
            "replica {id}: {rejoined:?}"
        );
    }
    let expected: Vec<u64> = (0..rejoined.divergent_entries)
        .map(|i| rejoined.first_divergent_index + i)
        .collect();
    assert_eq!(
        indexes, expected,
        "replica {id}: divergent.jsonl is not the consecutive tail the answer names"
    );
    for key in divergent_keys {
        assert!(
            text.contains(&format!("\"{key}\"")),
            "replica {id}: divergent.jsonl lacks the divergent write of {key}:\n{text}"
        );
    }
    text
}

/// Keys of `kvs`, for short assertion messages.
pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| kv.key.clone()).collect()
}

/// Replica `id`'s applied state (stale read of everything) equals `expected`, once it has caught
/// up with the primary.
pub async fn must_hold_exactly(cluster: &Cluster, id: u64, expected: &[KeyValue]) {
    let held = cluster.must_range_on(id, "").await;
    if held != expected {
        let held_keys = keys(&held);
        let expected_keys = keys(expected);
        let extra: Vec<&String> = held_keys.iter().filter(|k| !expected_keys.contains(k)).collect();
        let lacking: Vec<&String> = expected_keys.iter().filter(|k| !held_keys.contains(k)).collect();
        panic!(
            "replica {id} does not hold exactly the primary's history: {} keys vs {}; extra \
             {extra:?}; lacking {lacking:?}; first difference: {:?}",
            held.len(),
            expected.len(),
            held.iter().zip(expected).find(|(a, b)| a != b)
        );
    }
}
