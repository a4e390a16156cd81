//! The record of every client write, and the check that the final state holds exactly what the
//! answers promised.
//!
//! A write is recorded when it is invoked and again when its answer comes:
//! - **ok**: the replica set acknowledged it; it must be in the final state, once;
//! - **fail**: the client library says it certainly was not applied (`Unavailable`, `Refused`);
//!   it must be absent;
//! - **unknown**: `OutcomeUnknown`; it may be present or absent, but at most once.
//!
//! Precondition of [`History::check_writes`]: every write puts a key no other write touches
//! (unique keys with unique values), so that the final state of a key tells which write it
//! holds and whether it was applied twice (its version would be above 1).
//!
//! Notes ([`History::note`]) put the test's own actions (kill, pause, switchover…) on the same
//! clock, so that a violation report shows what happened around it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tandem_client::{Client, ClientError, KeyValue};

/// Identifies one recorded write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

/// How a write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Invoked, no answer yet.
    Pending,
    /// Acknowledged at this store revision.
    Ok { revision: u64 },
    /// Certainly not applied.
    Fail { reason: String },
    /// May or may not be applied.
    Unknown { reason: String },
}

impl Outcome {
    /// The outcome a failed client call means for a write.
    pub fn of_error(error: &ClientError) -> Outcome {
        match error {
            ClientError::OutcomeUnknown { .. } => Outcome::Unknown {
                reason: error.to_string(),
            },
            _ => Outcome::Fail {
                reason: error.to_string(),
            },
        }
    }
}

/// One recorded write.
#[derive(Clone, Debug)]
pub struct Op {
    pub id: OpId,
    /// Which client issued it (a writer's name).
    pub process: String,
    pub key: String,
    pub value: Vec<u8>,
    /// When it was invoked, from the start of the history.
    pub invoked: Duration,
    /// When its answer came.
    pub completed: Option<Duration>,
    pub outcome: Outcome,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} put {}={:?} invoked at {}",
            self.process,
            self.key,
            String::from_utf8_lossy(&self.value),
            secs(self.invoked)
        )?;
        let at = self.completed.map(secs).unwrap_or_else(|| "?".into());
        match &self.outcome {
            Outcome::Pending => write!(f, ", no answer"),
            Outcome::Ok { revision } => write!(f, ", ok at {at} (revision {revision})"),
            Outcome::Fail { reason } => write!(f, ", failed at {at}: {reason}"),
            Outcome::Unknown { reason } => write!(f, ", unknown at {at}: {reason}"),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// What went wrong for one key.
#[derive(Clone, Debug)]
pub enum Violation {
    /// Two recorded writes put the same key: the test broke the precondition.
    DuplicateKey { key: String, ops: Vec<Op> },
    /// An acknowledged write is not in the final state.
    LostAcknowledged { op: Op },
    /// The key holds another value than the write put.
    WrongValue { op: Op, found: KeyValue },
    /// The write was applied more than once (the key's version is above 1).
    AppliedTwice { op: Op, found: KeyValue },
    /// The write was acknowledged at another revision than the one it is stored at.
    WrongRevision { op: Op, found: KeyValue },
    /// A write that certainly failed is in the final state.
    FailedButApplied { op: Op, found: KeyValue },
    /// The final state holds a key no recorded write put.
    Phantom { found: KeyValue },
}

fn kv_text(kv: &KeyValue) -> String {
    format!(
        "{}={:?} (version {}, created at revision {}, modified at revision {})",
        kv.key,
        String::from_utf8_lossy(&kv.value),
        kv.version,
        kv.create_revision,
        kv.mod_revision
    )
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DuplicateKey { key, ops } => {
                write!(
                    f,
                    "DUPLICATE KEY {key} (test precondition broken) put by {} writes",
                    ops.len()
                )
            }
            Violation::LostAcknowledged { op } => {
                write!(f, "LOST ACKNOWLEDGED WRITE: {op}; absent from the final state")
            }
            Violation::WrongValue { op, found } => {
                write!(f, "WRONG VALUE: {op}; found {}", kv_text(found))
            }
            Violation::AppliedTwice { op, found } => {
                write!(f, "APPLIED TWICE: {op}; found {}", kv_text(found))
            }
            Violation::WrongRevision { op, found } => {
                write!(f, "ACKNOWLEDGED AT ANOTHER REVISION: {op}; found {}", kv_text(found))
            }
            Violation::FailedButApplied { op, found } => {
                write!(f, "FAILED WRITE APPLIED: {op}; found {}", kv_text(found))
            }
            Violation::Phantom { found } => {
                write!(f, "PHANTOM KEY no write put: {}", kv_text(found))
            }
        }
    }
}

/// Counts of a history check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckSummary {
    pub ok: usize,
    pub failed: usize,
    /// Unknown (or never answered) writes found applied.
    pub unknown_applied: usize,
    /// Unknown (or never answered) writes found absent.
    pub unknown_absent: usize,
}

impl fmt::Display for CheckSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acknowledged, {} failed, {} unknown ({} applied, {} not)",
            self.ok,
            self.failed,
            self.unknown_applied + self.unknown_absent,
            self.unknown_applied,
            self.unknown_absent
        )
    }
}

/// A failed check: the violations, the counts, and the notes timeline; `Display` is the report.
#[derive(Clone, Debug)]
pub struct Violations {
    pub violations: Vec<Violation>,
    pub summary: CheckSummary,
    /// The test's notes, with their times.
    pub notes: Vec<(Duration, String)>,
    /// Unknown writes, for context (the first few).
    pub unknown: Vec<Op>,
}

/// How many violations and unknown writes a report lists.
const REPORT_LINES_MAX: usize = 50;

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history check failed: {} violation(s); writes: {}",
            self.violations.len(),
            self.summary
        )?;
        for v in self.violations.iter().take(REPORT_LINES_MAX) {
            writeln!(f, "  - {v}")?;
        }
        if self.violations.len() > REPORT_LINES_MAX {
            writeln!(f, "  … and {} more", self.violations.len() - REPORT_LINES_MAX)?;
        }
        writeln!(f, "timeline of the test's actions:")?;
        for (at, note) in &self.notes {
            writeln!(f, "  {} {note}", secs(*at))?;
        }
        if !self.unknown.is_empty() {
            writeln!(f, "writes with unknown outcome:")?;
            for op in self.unknown.iter().take(REPORT_LINES_MAX) {
                writeln!(f, "  - {op}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

/// Counts of the outcomes so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub pending: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

/// Every write of a test, shared by its writers (wrap it in an `Arc`).
pub struct History {
    /// Time zero of the history.
    start: Instant,
    /// Every write invoked, indexed by `OpId`.
    ops: Mutex<Vec<Op>>,
    /// The test's own actions, with their times.
    notes: Mutex<Vec<(Duration, String)>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::default(),
            notes: Mutex::default(),
        }
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time since the history began.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records a write as invoked.
    pub fn invoke(&self, process: &str, key: &str, value: &[u8]) -> OpId {
        let invoked = self.elapsed();
        let mut ops = self.ops();
        let id = OpId(ops.len());
        ops.push(Op {
            id,
            process: process.to_owned(),
            key: key.to_owned(),
            value: value.to_vec(),
            invoked,
            completed: None,
            outcome: Outcome::Pending,
        });
        id
    }

    /// Records the answer of a write.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let completed = self.elapsed();
        let mut ops = self.ops();
        if let Some(op) = ops.get_mut(id.0) {
            op.completed = Some(completed);
            op.outcome = outcome;
        }
    }

    /// Puts `key` through `client`, recording invocation and answer.
    pub async fn put(&self, client: &Client, process: &str, key: &str, value: &[u8]) -> Result<u64, ClientError> {
        let id = self.invoke(process, key, value);
        let result = client.put(key, value.to_vec()).await;
        let outcome = match &result {
            Ok(revision) => Outcome::Ok { revision: *revision },
            Err(e) => Outcome::of_error(e),
        };
        self.complete(id, outcome);
        result
    }

    /// Records one of the test's own actions on the history's clock (and logs it).
    pub fn note(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::info!(at = %secs(self.elapsed()), "history note: {text}");
        self.notes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.elapsed(), text));
    }

    /// A copy of every op.
    pub fn snapshot(&self) -> Vec<Op> {
        self.ops().clone()
    }

    /// The acknowledged writes.
    pub fn acknowledged(&self) -> Vec<Op> {
        self.ops()
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Ok { .. }))
            .cloned()
            .collect()
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for op in self.ops().iter() {
            match op.outcome {
                Outcome::Pending => counts.pending += 1,
                Outcome::Ok { .. } => counts.ok += 1,
                Outcome::Fail { .. } => counts.failed += 1,
                Outcome::Unknown { .. } => counts.unknown += 1,
            }
        }
        counts
    }

    /// Checks `final_state` (every key the history's writes could have put, e.g. a range over
    /// their common prefix) against the answers. Writes still pending count as unknown.
    pub fn check_writes(&self, final_state: &[KeyValue]) -> Result<CheckSummary, Violations> {
        let ops = self.snapshot();
        let notes = self.notes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        check(&ops, final_state, notes)
    }

    /// [`check_writes`](Self::check_writes), panicking with the report on a violation.
    pub fn must_check_writes(&self, final_state: &[KeyValue]) -> CheckSummary {
        match self.check_writes(final_state) {
            Ok(summary) => summary,
            Err(violations) => panic!("{violations}"),
        }
    }
}

fn check(ops: &[Op], final_state: &[KeyValue], notes: Vec<(Duration, String)>) -> Result<CheckSummary, Violations> {
    let mut violations = Vec::new();
    let mut summary = CheckSummary::default();

    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let found: HashMap<&str, &KeyValue> = final_state.iter().map(|kv| (kv.key.as_str(), kv)).collect();

    for (key, writes) in &by_key {
        if writes.len() > 1 {
            violations.push(Violation::DuplicateKey {
                key: (*key).to_owned(),
                ops: writes.iter().map(|op| (*op).clone()).collect(),
            });
            continue;
        }
        let op = writes[0];
        let kv = found.get(key).copied();
        let matches = kv.filter(|kv| kv.value == op.value);
        if let Some(kv) = kv {
            if kv.value != op.value {
                violations.push(Violation::WrongValue {
                    op: op.clone(),
                    found: kv.clone(),
                });
                continue;
            }
            if kv.version != 1 {
                violations.push(Violation::AppliedTwice {
                    op: op.clone(),
                    found: kv.clone(),
                });
                continue;
            }
        }
        match (&op.outcome, matches) {
            (Outcome::Ok { .. }, None) => violations.push(Violation::LostAcknowledged { op: op.clone() }),
            (Outcome::Ok { revision }, Some(kv)) => {
                if kv.mod_revision != *revision {
                    violations.push(Violation::WrongRevision {
                        op: op.clone(),
                        found: kv.clone(),
                    });
                } else {
                    summary.ok += 1;
                }
            }
            (Outcome::Fail { .. }, Some(kv)) => violations.push(Violation::FailedButApplied {
                op: op.clone(),
                found: kv.clone(),
            }),
            (Outcome::Fail { .. }, None) => summary.failed += 1,
            (Outcome::Unknown { .. } | Outcome::Pending, Some(_)) => summary.unknown_applied += 1,
            (Outcome::Unknown { .. } | Outcome::Pending, None) => summary.unknown_absent += 1,
        }
    }
    for kv in final_state {
        if !by_key.contains_key(kv.key.as_str()) {
            violations.push(Violation::Phantom { found: kv.clone() });
        }
    }

    if violations.is_empty() {
        return Ok(summary);
    }
    let unknown = ops
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Unknown { .. } | Outcome::Pending))
        .cloned()
        .collect();
    Err(Violations {
        violations,
        summary,
        notes,
        unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, version: u64, revision: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            version,
            create_revision: revision,
            mod_revision: revision,
        }
    }

    #[test]
    fn a_consistent_history_passes() {
        let history = History::new();
        let a = history.invoke("w0", "k/a", b"1");
        history.complete(a, Outcome::Ok { revision: 3 });
        let b = history.invoke("w1", "k/b", b"2");
        history.complete(
            b,
            Outcome::Fail {
                reason: "unavailable".into(),
            },
        );
        let c = history.invoke("w1", "k/c", b"3");
        history.complete(
            c,
            Outcome::Unknown {
                reason: "primary died".into(),
            },
        );
        let _pending = history.invoke("w2", "k/d", b"4");

        let summary = history.must_check_writes(&[kv("k/a", "1", 1, 3), kv("k/c", "3", 1, 4)]);
        assert_eq!(
            summary,
            CheckSummary {
                ok: 1,
                failed: 1,
                unknown_applied: 1,
                unknown_absent: 1
            }
        );
    }

    #[test]
    fn every_kind_of_violation_is_reported() {
        let history = History::new();
        for (key, value, outcome) in [
            ("k/lost", "1", Outcome::Ok { revision: 1 }),
            ("k/twice", "2", Outcome::Unknown { reason: "?".into() }),
            (
                "k/failed",
                "3",
                Outcome::Fail {
                    reason: "refused".into(),
                },
            ),
            ("k/wrong", "4", Outcome::Ok { revision: 4 }),
            ("k/revision", "5", Outcome::Ok { revision: 5 }),
        ] {
            let id = history.invoke("w0", key, value.as_bytes());
            history.complete(id, outcome);
        }
        history.note("killed replica 1");
        let state = [
            kv("k/twice", "2", 2, 7),
            kv("k/failed", "3", 1, 3),
            kv("k/wrong", "other", 1, 4),
            kv("k/revision", "5", 1, 6),
            kv("k/phantom", "9", 1, 9),
        ];
        let report = history.check_writes(&state).expect_err("violations");
        let text = report.to_string();
        for expected in [
            "LOST ACKNOWLEDGED WRITE",
            "APPLIED TWICE",
            "FAILED WRITE APPLIED",
            "WRONG VALUE",
            "ACKNOWLEDGED AT ANOTHER REVISION",
            "PHANTOM KEY",
            "killed replica 1",
        ] {
            assert!(text.contains(expected), "report lacks {expected:?}:\n{text}");
        }
        assert_eq!(report.violations.len(), 6, "{text}");
    }

    #[test]
    fn a_reused_key_breaks_the_precondition() {
        let history = History::new();
        for _ in 0..2 {
            let id = history.invoke("w0", "k/same", b"1");
            history.complete(id, Outcome::Ok { revision: 1 });
        }
        let report = history.check_writes(&[kv("k/same", "1", 1, 1)]).expect_err("duplicate");
        assert!(
            matches!(report.violations[0], Violation::DuplicateKey { .. }),
            "{report}"
        );
    }
}
