//! When this replica builds a snapshot: every `snapshot_every` entries, at indexes of its own.
//!
//! openraft's `LogsSinceLast` policy builds a snapshot once that many entries were applied since
//! the last one, so every replica of a set built at the same indexes, at the same moment: three
//! copies of the whole state written at once, on machines that may share a disk, while every
//! write waits for all the sync replicas. Here openraft's own policy is off and each replica
//! asks for a snapshot once it has applied the index `k × every + phase`, with a phase of its
//! own ([`phase`]), so the replicas of a set take turns.
//!
//! Invariant: a replica keeps building snapshots (the log is compacted only up to one): if a
//! request was not followed by a snapshot (openraft ignores one while a build runs), it is made
//! again once the next due index is known or another `every` entries have been applied.

use openraft::Raft;
use tandem_store::{ReplicaId, TypeConfig};

/// Where in each interval of `every` entries replica `id` builds its snapshot: the fractional
/// parts of `id × 0.618…` (the golden ratio's) spread any number of consecutive ids far apart.
pub fn phase(id: ReplicaId, every: u64) -> u64 {
    let every = every.max(1);
    let fraction = (id as f64 * 0.618_033_988_749_895).fract();
    ((fraction * every as f64) as u64).min(every - 1)
}

/// The first index after `snapshot` (the last snapshot's index, 0 for none) at which a snapshot
/// is due: the next `k × every + phase`.
pub fn next_due(snapshot: u64, every: u64, phase: u64) -> u64 {
    let every = every.max(1);
    let due = snapshot - snapshot % every + phase % every;
    if due > snapshot {
        due
    } else {
        due + every
    }
}

/// A request for a snapshot this task made: for which due index, at which applied index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Asked {
    due: u64,
    applied: u64,
}

/// Whether to ask for a snapshot now; `None` when not, else the request to remember.
fn decide(applied: u64, snapshot: u64, every: u64, phase: u64, asked: Option<Asked>) -> Option<Asked> {
    let due = next_due(snapshot, every, phase);
    if applied < due {
        return None;
    }
    match asked {
        // Asked already for this due index: again only if nothing came of it for a while.
        Some(last) if last.due == due && applied < last.applied.saturating_add(every.max(1)) => None,
        _ => Some(Asked { due, applied }),
    }
}

/// Asks openraft for a snapshot whenever one is due (see the module documentation). Returns
/// when openraft stops.
pub async fn run(raft: Raft<TypeConfig>, id: ReplicaId, every: u64) {
    let phase = phase(id, every);
    let mut metrics = raft.metrics();
    let mut asked = None;
    loop {
        let (applied, snapshot) = {
            let metrics = metrics.borrow_and_update();
            let index = |id: Option<openraft::LogId<ReplicaId>>| id.map_or(0, |id| id.index);
            (index(metrics.last_applied), index(metrics.snapshot))
        };
        if let Some(request) = decide(applied, snapshot, every, phase, asked) {
            tracing::debug!(
                applied,
                due = request.due,
                last_snapshot = snapshot,
                "asking for a snapshot"
            );
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::debug!(error = %e, "openraft stopped; no more snapshots");
                return;
            }
            asked = Some(request);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phases_of_a_set_are_far_apart_and_inside_the_interval() {
        for every in [1, 2, 3, 100, 10_000] {
            for id in 1..=64 {
                assert!(phase(id, every) < every, "id {id}, every {every}");
            }
        }
        let mut phases: Vec<u64> = (1..=3).map(|id| phase(id, 10_000)).collect();
        phases.sort();
        // Around the circle of 10,000: no two closer than a fifth of it.
        let gaps = [
            phases[1] - phases[0],
            phases[2] - phases[1],
            10_000 - phases[2] + phases[0],
        ];
        assert!(gaps.iter().all(|gap| *gap >= 2_000), "{phases:?}");
        // And five replicas still spread.
        let mut phases: Vec<u64> = (1..=5).map(|id| phase(id, 10_000)).collect();
        phases.sort();
        phases.dedup();
        assert_eq!(phases.len(), 5);
    }

    #[test]
    fn a_snapshot_is_due_at_the_next_index_of_the_phase() {
        assert_eq!(next_due(0, 100, 61), 61);
        assert_eq!(next_due(60, 100, 61), 61);
        assert_eq!(next_due(61, 100, 61), 161);
        assert_eq!(next_due(75, 100, 61), 161);
        // A snapshot installed from another replica, at another phase.
        assert_eq!(next_due(150, 100, 61), 161);
        assert_eq!(next_due(170, 100, 61), 261);
        assert_eq!(next_due(0, 100, 0), 100);
        assert_eq!(next_due(100, 100, 0), 200);
        assert_eq!(next_due(5, 1, 0), 6);
    }

    #[test]
    fn a_request_is_made_once_per_due_index_and_repeated_only_when_nothing_came_of_it() {
        let (every, phase) = (100, 61);
        assert_eq!(decide(60, 0, every, phase, None), None);
        let first = decide(63, 0, every, phase, None).expect("due at 61");
        assert_eq!(first, Asked { due: 61, applied: 63 });
        // The build runs: no second request.
        assert_eq!(decide(90, 0, every, phase, Some(first)), None);
        // The snapshot at 63 is there: the next is due at 161.
        assert_eq!(decide(150, 63, every, phase, Some(first)), None);
        let second = decide(161, 63, every, phase, Some(first)).expect("due at 161");
        assert_eq!(second.due, 161);
        // openraft ignored the request (a build was running) and nothing came of it: asked again
        // once another interval has been applied.
        assert_eq!(decide(260, 63, every, phase, Some(second)), None);
        assert_eq!(
            decide(261, 63, every, phase, Some(second)),
            Some(Asked { due: 161, applied: 261 })
        );
    }
}
