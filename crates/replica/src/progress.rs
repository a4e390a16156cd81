//! The primary's view of every replica, and the sync gate.
//!
//! openraft acknowledges a write once a majority of voters has it. Tandem is stricter: a write is
//! acknowledged only when every *healthy sync* replica has it on disk too (the seed's synchronous
//! commit), so that a sync replica at the second site means no acknowledged write is lost with
//! the first site. This module watches openraft's replication metrics (the matched log index of
//! each replica is durable on that replica), hears of the early answers of the primary's
//! followers ([`Progress::early_accepted`], see [`crate::early_replication`]), and:
//!
//! - tracks each replica's lag in entries and in milliseconds (the age of the oldest entry it
//!   lacks, from the time this primary saw that entry appended);
//! - judges health: a replica behind the primary that has confirmed nothing for `sync_timeout` is
//!   unhealthy; in `Available` mode an unhealthy sync replica is demoted (logged at warn level,
//!   counted, shown in status) and re-admitted once it has caught up;
//! - answers [`Progress::wait_synced`], which holds a write's acknowledgement until the gate
//!   opens for its log index.
//!
//! The gate counts a replica as holding an index when openraft reports it matched, or when the
//! replica answered an early message of this primary's term for entries up to it: such an answer
//! is given once the entries are durable on the replica, and under one vote nothing but this
//! primary's own messages, which agree with them, can replace them there; a write waits for the
//! gate only once it is committed, and a committed entry is never replaced. The early answer
//! reaches the waiting writes straight from the task that received it. Through openraft it
//! passed through the replication task, openraft's core, its metrics and this module's task
//! first: measured at concurrency 1, 166 µs from the last follower's answer to the write's
//! acknowledgement. Lag, health and demotion still come from openraft's metrics only.
//!
//! Invariant: demotion only ever makes the gate wait for fewer replicas in `Available` mode; in
//! `Strict` mode nothing is demoted and a write waits until its deadline.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};
use tandem_store::{Replica, ReplicaId, ReplicaKind};
use tokio::sync::watch;

use crate::config::SyncMode;
use crate::network::PrimaryStamp;

/// How many appended-entry timestamps are kept for the lag-in-ms figure.
const APPEND_TIMES_MAX: usize = 65_536;
/// How long a new primary waits for a sync replica's first answer before it stops waiting for
/// that replica (available mode). A live replica answers the first AppendEntries within a round
/// trip and an fsync.
const NEW_PRIMARY_GRACE: Duration = Duration::from_millis(500);
/// How long a replica found gone (see [`Progress::mark_gone`]) is not waited for by a new primary.
const GONE_REMEMBERED: Duration = Duration::from_secs(10);
/// A demoted replica is re-admitted once it is at most this many entries behind.
const READMIT_LAG_ENTRIES: u64 = 64;

pub type Metrics = RaftMetrics<ReplicaId, Replica>;

/// Why a write's acknowledgement could not be given.
#[derive(Debug, thiserror::Error)]
pub enum SyncWaitError {
    #[error("this replica stopped being the primary before sync replicas confirmed the write")]
    LostPrimary,
    #[error("sync replicas {waiting_for:?} did not confirm the write in time (sync mode {mode})")]
    Timeout {
        waiting_for: Vec<ReplicaId>,
        mode: &'static str,
    },
}

/// What the primary knows of one replica.
#[derive(Debug, Clone)]
struct ReplicaView {
    /// Highest log index durable on the replica.
    matched: u64,
    /// When `matched` last advanced or the replica was last caught up.
    last_progress: Instant,
    /// Set while a sync replica is demoted (Available mode only).
    demoted_since: Option<Instant>,
    /// Whether the replica has answered this primary at all (in this term).
    answered: bool,
}

/// One replica's figures for status.
#[derive(Debug, Clone)]
pub struct ReplicaProgress {
    pub id: ReplicaId,
    pub matched: u64,
    pub lag_entries: u64,
    pub lag_ms: u64,
    /// ok | demoted | unreachable
    pub health: &'static str,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// The term of the leadership this view belongs to; a new term starts a fresh view.
    term: Option<u64>,
    /// When this replica became primary (of `term`).
    term_started: Option<Instant>,
    /// The primary's last log index.
    last_index: u64,
    /// (index, when this primary first saw its last log reach that index), ascending.
    append_times: VecDeque<(u64, Instant)>,
    replicas: BTreeMap<ReplicaId, ReplicaView>,
    /// Sync replicas the gate currently waits for (voters of kind sync, not demoted).
    sync_set: BTreeSet<ReplicaId>,
    /// Replicas whose process was found gone, and when (kept across terms).
    gone: BTreeMap<ReplicaId, Instant>,
    /// The highest index each replica answered an early message for, in `term`.
    early: BTreeMap<ReplicaId, u64>,
}

impl ProgressState {
    /// The gate: the lowest index durable on every replica it waits for (`last_index` when it
    /// waits for none).
    fn gate(&self) -> u64 {
        self.sync_set
            .iter()
            .map(|id| self.held(*id))
            .min()
            .unwrap_or(self.last_index)
    }

    /// The highest index `id` is known to hold durably: matched, or answered early.
    fn held(&self, id: ReplicaId) -> u64 {
        let matched = self.replicas.get(&id).map_or(0, |view| view.matched);
        matched.max(self.early.get(&id).copied().unwrap_or(0))
    }
}

pub struct Progress {
    /// This replica.
    id: ReplicaId,
    mode: SyncMode,
    sync_timeout: Duration,
    state: Mutex<ProgressState>,
    /// The gate, published after every observation: while leading, the highest index that every
    /// sync replica the gate waits for has durably (`None` while not leading). Waiters compare
    /// their index with it; nothing else is recomputed per write.
    synced: watch::Sender<Option<u64>>,
    /// Sync replicas demoted since start (a counter for status and metrics).
    demotions: AtomicU64,
}

impl Progress {
    pub fn new(id: ReplicaId, mode: SyncMode, sync_timeout: Duration) -> Self {
        Progress {
            id,
            mode,
            sync_timeout,
            state: Mutex::default(),
            synced: watch::channel(None).0,
            demotions: AtomicU64::new(0),
        }
    }

    pub fn mode(&self) -> SyncMode {
        self.mode
    }

    pub fn sync_timeout(&self) -> Duration {
        self.sync_timeout
    }

    pub fn demotions(&self) -> u64 {
        self.demotions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `id`'s process was found gone (its port refused a connection): should this
    /// replica become primary soon, it does not give `id` the grace a live replica gets to answer
    /// (available mode), since it cannot answer at all.
    pub fn mark_gone(&self, id: ReplicaId) {
        self.lock().gone.insert(id, Instant::now());
    }

    /// Folds one metrics sample into the view. Called on every metrics change and on a timer
    /// (health depends on time passing, not only on metrics changing).
    pub fn observe(&self, metrics: &Metrics) {
        let now = Instant::now();
        {
            let mut state = self.lock();
            let leading = metrics.state == ServerState::Leader;
            let replication = match (&metrics.replication, leading) {
                (Some(replication), true) => replication,
                _ => {
                    if state.term.take().is_some() {
                        state.replicas.clear();
                        state.append_times.clear();
                        state.sync_set.clear();
                        state.early.clear();
                    }
                    drop(state);
                    self.synced.send_replace(None);
                    return;
                }
            };
            if state.term != Some(metrics.current_term) {
                state.term = Some(metrics.current_term);
                state.term_started = Some(now);
                state.replicas.clear();
                state.append_times.clear();
                state.early.clear();
            }
            let last_index = metrics.last_log_index.unwrap_or(0);
            if last_index > state.last_index || state.append_times.is_empty() {
                state.append_times.push_back((last_index, now));
                if state.append_times.len() > APPEND_TIMES_MAX {
                    state.append_times.pop_front();
                }
            }
            state.last_index = last_index;

            let membership = metrics.membership_config.membership();
            let voters: Vec<ReplicaId> = membership.voter_ids().collect();
            state.replicas.retain(|id, _| replication.contains_key(id));
            let in_office = state.term_started.map(|t| now.duration_since(t)).unwrap_or_default();
            state.gone.retain(|_, at| now.duration_since(*at) < GONE_REMEMBERED);
            let gone = state.gone.clone();
            for (&id, matched) in replication {
                let answered = matched.is_some();
                let matched = matched.map(|log_id| log_id.index).unwrap_or(0);
                let view = state.replicas.entry(id).or_insert(ReplicaView {
                    matched,
                    last_progress: now,
                    demoted_since: None,
                    answered,
                });
                view.answered |= answered;
                if matched > view.matched || matched >= last_index {
                    view.last_progress = now;
                }
                view.matched = matched;

                let is_sync = voters.contains(&id)
                    && membership.get_node(&id).map(|n| n.kind) == Some(ReplicaKind::Sync)
                    && id != self.id;
                if !is_sync || self.mode != SyncMode::Available {
                    view.demoted_since = None;
                    continue;
                }
                let behind = last_index.saturating_sub(matched);
                match view.demoted_since {
                    // A replica that has not answered a new primary within the grace (a replica
                    // that died with the old primary, typically) is not waited for the whole sync
                    // timeout: that would stall every write after a failover. One known to be gone
                    // gets no grace.
                    None if behind > 0
                        && (now.duration_since(view.last_progress) > self.sync_timeout
                            || (!view.answered && (in_office > NEW_PRIMARY_GRACE || gone.contains_key(&id)))) =>
                    {
                        view.demoted_since = Some(now);
                        self.demotions.fetch_add(1, Ordering::Relaxed);
                        let addr = membership.get_node(&id).map(|n| n.addr.as_str()).unwrap_or("?");
                        tracing::warn!(
                            replica = id,
                            addr,
                            matched,
                            last_index,
                            silent_ms = now.duration_since(view.last_progress).as_millis() as u64,
                            answered_this_primary = view.answered,
                            found_gone = gone.contains_key(&id),
                            "sync replica demoted to async: it confirmed nothing for longer than the sync \
                             timeout ({} ms), or did not answer this new primary within {} ms or was found \
                             gone; writes are acknowledged without it until it catches up (sync mode \
                             available). Acknowledged writes from now on may be missing on it",
                            self.sync_timeout.as_millis(),
                            NEW_PRIMARY_GRACE.as_millis()
                        );
                    }
                    Some(since)
                        if behind <= READMIT_LAG_ENTRIES
                            && now.duration_since(view.last_progress) < self.sync_timeout =>
                    {
                        view.demoted_since = None;
                        tracing::warn!(
                            replica = id,
                            matched,
                            last_index,
                            demoted_ms = now.duration_since(since).as_millis() as u64,
                            "sync replica caught up and is synchronous again: writes wait for it"
                        );
                    }
                    _ => {}
                }
            }
            let sync_set: BTreeSet<ReplicaId> = voters
                .iter()
                .copied()
                .filter(|id| membership.get_node(id).map(|n| n.kind) == Some(ReplicaKind::Sync))
                .filter(|id| state.replicas.get(id).is_none_or(|v| v.demoted_since.is_none()))
                .collect();
            state.sync_set = sync_set;
            let synced = state.gate();
            drop(state);
            self.publish(synced);
        }
    }

    /// Records that replica `id` answered an early message of this primary in `term`: it holds
    /// every entry up to `index` durably (see the module documentation). Ignored unless this
    /// replica leads in `term`.
    pub fn early_accepted(&self, id: ReplicaId, term: u64, index: u64) {
        let mut state = self.lock();
        if state.term != Some(term) {
            return;
        }
        let early = state.early.entry(id).or_default();
        if *early >= index {
            return;
        }
        *early = index;
        let synced = state.gate();
        drop(state);
        self.publish(synced);
    }

    /// Publishes the gate to the waiting writes, if it moved.
    fn publish(&self, synced: u64) {
        self.synced.send_if_modified(|current| {
            let changed = *current != Some(synced);
            *current = Some(synced);
            changed
        });
    }

    /// What the primary tells `target` on each AppendEntries: its last index, its `revision`
    /// (the last change it applied), and whether `target` is in the acknowledgement set.
    pub fn stamp_for(&self, target: ReplicaId, revision: u64) -> PrimaryStamp {
        let state = self.lock();
        PrimaryStamp {
            last_index: state.last_index,
            revision,
            in_sync_set: state.sync_set.contains(&target),
            strict: self.mode == SyncMode::Strict,
        }
    }

    /// The replicas the gate currently waits for at `index`, or `None` when this replica is not
    /// leading.
    fn pending(&self, index: u64, metrics: &Metrics) -> Option<Vec<ReplicaId>> {
        if metrics.state != ServerState::Leader {
            return None;
        }
        let state = self.lock();
        let membership = metrics.membership_config.membership();
        let mut waiting = Vec::new();
        for id in membership.voter_ids() {
            if membership.get_node(&id).map(|n| n.kind) != Some(ReplicaKind::Sync) {
                continue;
            }
            let view = state.replicas.get(&id);
            if view.is_some_and(|v| v.demoted_since.is_some()) {
                continue;
            }
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|log_id| log_id.index)
                .unwrap_or(0);
            if matched.max(state.held(id)) < index {
                waiting.push(id);
            }
        }
        Some(waiting)
    }

    /// Waits until every healthy sync replica has `index` durably.
    pub async fn wait_synced(
        &self,
        index: u64,
        metrics: &watch::Receiver<Metrics>,
        deadline: Instant,
    ) -> Result<(), SyncWaitError> {
        let mut synced = self.synced.subscribe();
        loop {
            match *synced.borrow_and_update() {
                None => return Err(SyncWaitError::LostPrimary),
                Some(synced) if synced >= index => return Ok(()),
                Some(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let waiting_for = self.pending(index, &metrics.borrow()).unwrap_or_default();
                    return Err(SyncWaitError::Timeout { waiting_for, mode: self.mode.as_str() });
                }
                changed = synced.changed() => {
                    if changed.is_err() {
                        return Err(SyncWaitError::LostPrimary);
                    }
                }
            }
        }
    }

    /// Each replica's lag and health, as this primary sees it (empty when not leading).
    pub fn replicas(&self) -> Vec<ReplicaProgress> {
        let now = Instant::now();
        let state = self.lock();
        if state.term.is_none() {
            return Vec::new();
        }
        state
            .replicas
            .iter()
            .map(|(&id, view)| {
                let lag_entries = state.last_index.saturating_sub(view.matched);
                let lag_ms = if lag_entries == 0 {
                    0
                } else {
                    let first_missing = view.matched + 1;
                    let at = state.append_times.partition_point(|(index, _)| *index < first_missing);
                    state
                        .append_times
                        .get(at)
                        .or(state.append_times.front())
                        .map(|(_, t)| now.duration_since(*t).as_millis() as u64)
                        .unwrap_or(0)
                };
                let health = if view.demoted_since.is_some() {
                    "demoted"
                } else if lag_entries == 0 || now.duration_since(view.last_progress) <= self.sync_timeout {
                    "ok"
                } else {
                    "unreachable"
                };
                ReplicaProgress {
                    id,
                    matched: view.matched,
                    lag_entries,
                    lag_ms,
                    health,
                }
            })
            .collect()
    }

    /// Keeps the view current: observes every metrics change, and re-judges health at least
    /// every `tick` (time alone can make a replica unhealthy). Returns when metrics end.
    pub async fn run(&self, mut metrics: watch::Receiver<Metrics>, tick: Duration) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = interval.tick() => {}
            }
            let sample = metrics.borrow_and_update().clone();
            self.observe(&sample);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    const TERM: u64 = 2;

    fn log_id(index: u64) -> LogId<ReplicaId> {
        LogId::new(CommittedLeaderId::new(TERM, 1), index)
    }

    /// Metrics of replica 1 leading three sync voters in `term`, with these matched indexes.
    fn leading(term: u64, last_index: u64, matched: [u64; 3]) -> Metrics {
        let nodes: BTreeMap<ReplicaId, Replica> = (1..=3)
            .map(|id| {
                let replica = Replica {
                    addr: format!("127.0.0.1:{id}"),
                    kind: ReplicaKind::Sync,
                };
                (id, replica)
            })
            .collect();
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let mut metrics = Metrics::new_initial(1);
        metrics.state = ServerState::Leader;
        metrics.current_term = term;
        metrics.last_log_index = Some(last_index);
        metrics.membership_config = Arc::new(StoredMembership::new(Some(log_id(1)), membership));
        metrics.replication = Some((1..=3).zip(matched).map(|(id, m)| (id, Some(log_id(m)))).collect());
        metrics
    }

    fn gate(progress: &Progress) -> Option<u64> {
        *progress.synced.borrow()
    }

    #[test]
    fn early_answers_of_this_term_open_the_gate_once_every_sync_replica_holds_the_index() {
        let progress = Progress::new(1, SyncMode::Available, Duration::from_secs(5));
        progress.observe(&leading(TERM, 10, [10, 5, 5]));
        assert_eq!(gate(&progress), Some(5));

        // One follower's answer is not enough: the gate waits for every sync replica.
        progress.early_accepted(2, TERM, 10);
        assert_eq!(gate(&progress), Some(5));
        // An answer to a message of another term counts for nothing.
        progress.early_accepted(3, TERM - 1, 10);
        assert_eq!(gate(&progress), Some(5));
        progress.early_accepted(3, TERM, 8);
        assert_eq!(gate(&progress), Some(8));
        progress.early_accepted(3, TERM, 10);
        assert_eq!(gate(&progress), Some(10));
        // An older answer arriving late moves nothing back, nor do metrics that lag behind.
        progress.early_accepted(3, TERM, 9);
        progress.observe(&leading(TERM, 10, [10, 6, 6]));
        assert_eq!(gate(&progress), Some(10));
        // Nor is the primary's own log skipped: it holds 10 only once its metrics say so.
        progress.observe(&leading(TERM, 12, [10, 6, 6]));
        progress.early_accepted(2, TERM, 12);
        progress.early_accepted(3, TERM, 12);
        assert_eq!(gate(&progress), Some(10));
        progress.observe(&leading(TERM, 12, [12, 6, 6]));
        assert_eq!(gate(&progress), Some(12));

        // A new term forgets the answers of the last one.
        progress.observe(&leading(TERM + 1, 13, [13, 6, 6]));
        assert_eq!(gate(&progress), Some(6));
        // And a replica that is not leading has no gate, and ignores answers.
        let mut follower = leading(TERM + 1, 13, [13, 6, 6]);
        follower.state = ServerState::Follower;
        follower.replication = None;
        progress.observe(&follower);
        progress.early_accepted(2, TERM + 1, 13);
        assert_eq!(gate(&progress), None);
    }

    #[tokio::test]
    async fn a_write_waiting_for_the_gate_is_answered_by_the_last_early_answer() {
        let progress = Arc::new(Progress::new(1, SyncMode::Strict, Duration::from_secs(5)));
        let metrics = leading(TERM, 10, [10, 9, 9]);
        progress.observe(&metrics);
        let (_tx, metrics_rx) = watch::channel(metrics);
        let waiting = {
            let progress = progress.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                progress.wait_synced(10, &metrics_rx, deadline).await
            })
        };
        progress.early_accepted(2, TERM, 10);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "replica 3 has not answered yet");
        progress.early_accepted(3, TERM, 10);
        waiting.await.unwrap().unwrap();
    }
}
