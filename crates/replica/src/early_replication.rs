//! Early replication: a primary sends its new entries to its followers while it is still
//! syncing them to its own log.
//!
//! openraft 0.9 writes a primary's new entries to its own log, waits for the sync, and only
//! then hands them to its replication streams, so every write pays two log syncs one after the
//! other: the primary's, then a follower's. Raft does not need that order: a leader may send
//! entries before its own copy is durable, as long as it counts itself towards a quorum only
//! once it is (Ongaro's thesis, §10.2.1). This task does the sending beside openraft.
//!
//! The log store hands each batch of the primary's own entries here before writing it
//! ([`tandem_store::LogStore::send_own_appends_to`]). For each replication target the task
//! sends them as an ordinary AppendEntries of the primary (same vote, the previous entry's id,
//! and as commit index the last entry the primary has applied), through the same peer link
//! openraft uses, so the envelope, epoch and fence checks are those of any Raft message. The
//! follower appends them through openraft like any other, and answers once they are durable.
//!
//! When openraft's own replication then hands the link to that follower an AppendEntries of
//! the same vote whose entries the follower has accepted early (or is accepting: the link waits
//! for the answer in flight), the link answers `Success` itself instead of sending them again
//! ([`crate::network::PeerLink`], [`holds`]): a put so costs the primary one message to each
//! follower, not two, and no round trip after its own sync. Raft allows it: a leader may count
//! a follower's answer whenever it arrives, and this one was given once the entries were durable
//! on the follower; under one vote nothing but this primary's own messages, which agree with
//! its log, can replace them there. (An AppendEntries that does go, e.g. after an early message
//! failed, finds the entries already in the follower's log and is answered at once.)
//!
//! The commit index travels the same way. An AppendEntries of openraft also tells the follower
//! the primary's commit index; it is answered from early messages only if one already told the
//! follower that index (they carry the last entry the primary applied), and sent otherwise. A
//! heartbeat openraft sends to tell a new commit index (it sends one after each commit when it
//! has nothing else to send) waits up to [`HEARTBEAT_WAIT`] for the next early message to tell
//! it instead — at concurrency 1 the next put's — and is answered `Success` once one accepted
//! after it did ([`covers_heartbeat`]), or sent when none comes. Heartbeats that tell nothing
//! new, and openraft's leadership checks (links of their own), always go.
//!
//! The sync gate hears of each early answer at once ([`Progress::early_accepted`]): a write
//! committed with the first follower's answer is acknowledged as soon as the last sync replica's
//! answer arrives, not after that answer has gone round openraft's core and metrics.
//!
//! Architecture invariant: progress and commitment still come only from openraft's replication;
//! an early answer reaches them only as the answer to one of openraft's own AppendEntries, for
//! entries the follower accepted under the same vote. The primary counts itself only after its
//! own log sync. The sync gate counts early answers of the primary's term, and only for writes
//! already committed. A follower is told every commit index openraft would
//! have told it, by openraft's message or by a later early one (at most [`HEARTBEAT_WAIT`]
//! later).
//!
//! A follower may so hold entries the primary never wrote (it was killed while syncing them). A
//! restarted primary must therefore not lead on in its old term, or it would give their log ids
//! to other entries; openraft 0.9 would, so the log store's open drops the committed mark of a
//! replica's own vote (`tandem_store::LogStore::open`), and it leads again only after a new
//! election.
//!
//! A follower gets an early message only while it is known to hold the entry just before it
//! (openraft reports it matched, or it accepted the previous early message); batches that queue
//! up behind a slow follower are merged into one message (of about a megabyte at most, as
//! openraft's own are). A follower that failed to answer gets
//! nothing early until openraft reports it caught up again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{LogId, RaftMetrics, Vote};
use tandem_store::log_store::REPLICATION_BATCH_BYTES;
use tandem_store::{OwnAppend, Replica, ReplicaId, TypeConfig};
use tokio::sync::{mpsc, watch};

use crate::network::PeerNetwork;
use crate::progress::Progress;

/// Batches of own entries waiting to be sent early, per follower and in the hand-over channel.
/// A batch with no room is simply not sent early.
const QUEUE: usize = 64;

/// What early replication has done since the engine started.
#[derive(Debug, Default)]
pub struct EarlyCounts {
    /// Early AppendEntries messages sent.
    sent: AtomicU64,
    /// Those a follower accepted (it appended the entries, or already had them).
    accepted: AtomicU64,
    /// openraft's own AppendEntries answered from early answers instead of being sent.
    answered: AtomicU64,
}

/// [`EarlyCounts`] at one moment.
#[derive(Debug, Clone, Copy)]
pub struct EarlyFigures {
    pub sent: u64,
    pub accepted: u64,
    pub answered: u64,
}

impl EarlyCounts {
    /// Messages sent early, those followers accepted, and openraft's messages answered from them.
    pub fn get(&self) -> EarlyFigures {
        EarlyFigures {
            sent: self.sent.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
        }
    }

    /// Counts one of openraft's AppendEntries answered without being sent.
    pub(crate) fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// What early messages have shown of one follower's log: shared by the early sender to that
/// follower and openraft's link to it (see [`crate::network::PeerLink`]), which answers
/// openraft's AppendEntries from it instead of sending entries the follower already holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct EarlyState {
    /// The primary's vote on the messages below.
    pub vote: Option<Vote<ReplicaId>>,
    /// The last entry of an early message the follower accepted under `vote`. The follower
    /// answers only once the entries are durable, and a log holding this entry holds every
    /// entry of the primary's log up to it (Raft's log matching), so an AppendEntries of `vote`
    /// ending at or before it is answered `Success` without being sent.
    pub accepted: Option<LogId<ReplicaId>>,
    /// The last entry of the early message waiting for its answer, if any.
    pub in_flight: Option<LogId<ReplicaId>>,
    /// The newest commit index an early message the follower accepted under `vote` told it.
    pub told_commit: Option<LogId<ReplicaId>>,
    /// Early messages the follower accepted under `vote`, counted.
    pub accepted_count: u64,
}

/// [`EarlyState`] per follower, shared by every link to it, and what early replication has done.
#[derive(Debug, Clone, Default)]
pub struct EarlyAcks {
    targets: Arc<Mutex<BTreeMap<ReplicaId, Arc<watch::Sender<EarlyState>>>>>,
    pub counts: Arc<EarlyCounts>,
}

impl EarlyAcks {
    /// The state of `target` (created empty on first use).
    pub fn of(&self, target: ReplicaId) -> Arc<watch::Sender<EarlyState>> {
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets
            .entry(target)
            .or_insert_with(|| Arc::new(watch::channel(EarlyState::default()).0))
            .clone()
    }
}

/// What answers openraft's AppendEntries `request` to a follower whose early messages show
/// `state` (and that messages of the link itself have told commit index `told_by_link`):
/// `Some(true)` if the follower already holds all of its entries durably and has been told its
/// commit index (answer `Success`), `Some(false)` if an early message in flight may show it
/// (wait for its answer), `None` if the request must be sent: no entries (a heartbeat), another
/// vote, entries past anything sent early, or a commit index the follower has not been told
/// (openraft sends no heartbeat for a commit it can send with entries, so this message is what
/// would tell it).
pub fn holds(
    state: &EarlyState,
    request: &AppendEntriesRequest<TypeConfig>,
    told_by_link: Option<LogId<ReplicaId>>,
) -> Option<bool> {
    let last = request.entries.last()?.log_id;
    if state.vote != Some(request.vote) {
        return None;
    }
    if state.accepted.is_some_and(|a| a.index >= last.index) {
        return (request.leader_commit <= state.told_commit.max(told_by_link)).then_some(true);
    }
    state.in_flight.is_some_and(|f| f.index >= last.index).then_some(false)
}

/// The commit index a follower knows once it has accepted `request`, whose entries it then holds
/// up to `held`: the request's `leader_commit`, but no further than `held`. A follower commits
/// only entries it knows match the primary's (openraft's `commit_entries` takes the smaller of
/// the two), so a heartbeat whose previous entry lags the commit index it carries tells the
/// follower less than that index.
pub fn told_commit(
    request: &AppendEntriesRequest<TypeConfig>,
    held: Option<LogId<ReplicaId>>,
) -> Option<LogId<ReplicaId>> {
    request.leader_commit.min(held)
}

/// The last entry a follower holds once it has accepted all of `request`: its last entry, or for
/// a heartbeat the entry before it.
pub fn last_held(request: &AppendEntriesRequest<TypeConfig>) -> Option<LogId<ReplicaId>> {
    request.entries.last().map(|e| e.log_id).or(request.prev_log_id)
}

/// How long a heartbeat that carries a new commit index waits for an early message to carry it
/// instead (see [`covers_heartbeat`]): a little more than one put after another takes here, so
/// that at concurrency 1 the next put's early message does; a follower otherwise learns the
/// commit index that much later.
pub const HEARTBEAT_WAIT: Duration = Duration::from_millis(2);

/// Whether a heartbeat of openraft's replication to a follower whose early messages show
/// `state` is answered by them: the follower accepted an early message of the same vote after
/// the heartbeat was made (more than `accepted_before` of them), which told it at least the
/// heartbeat's commit index. Such a message did all a heartbeat does (the follower heard from
/// this primary, held the entries before, and learned the commit index), later.
pub fn covers_heartbeat(
    state: &EarlyState,
    heartbeat: &AppendEntriesRequest<TypeConfig>,
    accepted_before: u64,
) -> bool {
    heartbeat.entries.is_empty()
        && state.vote == Some(heartbeat.vote)
        && state.accepted_count > accepted_before
        && state.told_commit >= heartbeat.leader_commit
}

/// One batch of own entries for one follower, with what openraft last reported it matched and
/// the last entry this primary had applied (so committed) when the batch was handed over.
struct ForFollower {
    append: Arc<OwnAppend>,
    matched: Option<LogId<ReplicaId>>,
    committed: Option<LogId<ReplicaId>>,
}

/// A running sender to one follower; dropping it stops the sender (so none outlives its
/// engine: the dispatcher is one of the engine's tasks).
struct Follower {
    addr: String,
    queue: mpsc::Sender<ForFollower>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts early replication: returns where the log store hands over own entries, and the task
/// that sends them (it ends when the log store drops the sender). Followers' answers are told to
/// `progress` (the sync gate).
pub fn start(
    network: PeerNetwork,
    metrics: watch::Receiver<RaftMetrics<ReplicaId, Replica>>,
    progress: Arc<Progress>,
    timeout: Duration,
) -> (mpsc::Sender<OwnAppend>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let counts = network.early.counts.clone();
    let task = tokio::spawn(dispatch(rx, network, metrics, progress, timeout, counts));
    (tx, task)
}

/// Hands every batch to a sender per current replication target (none unless this replica is
/// primary).
async fn dispatch(
    mut appends: mpsc::Receiver<OwnAppend>,
    mut network: PeerNetwork,
    metrics: watch::Receiver<RaftMetrics<ReplicaId, Replica>>,
    progress: Arc<Progress>,
    timeout: Duration,
    counts: Arc<EarlyCounts>,
) {
    let own_id = network.identity.id;
    let mut followers: BTreeMap<ReplicaId, Follower> = BTreeMap::new();
    while let Some(append) = appends.recv().await {
        let append = Arc::new(append);
        // (target, its address, what it matched) for every replication target but this one.
        type Target = (ReplicaId, Option<Replica>, Option<LogId<ReplicaId>>);
        let (committed, targets): (Option<LogId<ReplicaId>>, Vec<Target>) = {
            let metrics = metrics.borrow();
            let targets = match &metrics.replication {
                Some(replication) => replication
                    .iter()
                    .filter(|(id, _)| **id != own_id)
                    .map(|(id, matched)| {
                        let node = metrics.membership_config.membership().get_node(id).cloned();
                        (*id, node, *matched)
                    })
                    .collect(),
                None => Vec::new(),
            };
            (metrics.last_applied, targets)
        };
        followers.retain(|id, _| targets.iter().any(|(target, _, _)| target == id));
        for (target, node, matched) in targets {
            let Some(node) = node else { continue };
            if followers.get(&target).is_none_or(|f| f.addr != node.addr) {
                let (queue, rx) = mpsc::channel(QUEUE);
                let link = network.new_client(target, &node).await;
                let sender = Sender {
                    target,
                    link,
                    progress: progress.clone(),
                    counts: counts.clone(),
                };
                let task = tokio::spawn(sender.run(rx, timeout));
                followers.insert(
                    target,
                    Follower {
                        addr: node.addr,
                        queue,
                        task,
                    },
                );
            }
            if let Some(follower) = followers.get(&target) {
                let _ = follower.queue.try_send(ForFollower {
                    append: append.clone(),
                    matched,
                    committed,
                });
            }
        }
    }
}

/// What sends early messages to one follower.
struct Sender {
    /// The follower.
    target: ReplicaId,
    /// openraft's kind of link to it.
    link: crate::network::PeerLink,
    /// The sync gate, told of every answer.
    progress: Arc<Progress>,
    counts: Arc<EarlyCounts>,
}

impl Sender {
    /// Sends batches to the follower, one message at a time, until the dispatcher drops it.
    async fn run(self, mut queue: mpsc::Receiver<ForFollower>, timeout: Duration) {
        let Sender {
            target,
            mut link,
            progress,
            counts,
        } = self;
        // The last entry the follower accepted from an early message.
        let mut accepted: Option<LogId<ReplicaId>> = None;
        // After a failed message: nothing early until openraft reports the follower matched this.
        let mut wait_for: Option<u64> = None;
        while let Some(first) = queue.recv().await {
            let mut pending = vec![first];
            while let Ok(more) = queue.try_recv() {
                pending.push(more);
            }
            let matched = pending.iter().filter_map(|p| p.matched).max();
            if let Some(index) = wait_for {
                if matched.is_none_or(|m| m.index < index) {
                    continue;
                }
                wait_for = None;
                accepted = None;
            }
            let Some(message) = merge(&pending, accepted, matched) else {
                continue;
            };
            let last = message.entries.last().map(|e| e.log_id);
            let vote = message.vote;
            link.early_state().send_modify(|state| {
                if state.vote != Some(vote) {
                    *state = EarlyState {
                        vote: Some(vote),
                        ..EarlyState::default()
                    };
                }
                state.in_flight = last;
            });
            counts.sent.fetch_add(1, Ordering::Relaxed);
            let answer = link.send_append_entries(&message, &RPCOption::new(timeout)).await;
            // What the follower now holds for sure: entries it accepted stay in its log for as long
            // as this vote lasts (only a message of this primary could replace them, and its
            // entries agree with them), and counting an answer later is what Raft allows anyway.
            let held = match answer {
                Ok(AppendEntriesResponse::Success) => last,
                Ok(AppendEntriesResponse::PartialSuccess(upto)) => upto,
                Ok(AppendEntriesResponse::Conflict) | Ok(AppendEntriesResponse::HigherVote(_)) => None,
                Err(ref e) => {
                    tracing::debug!(error = %e, "an early AppendEntries failed; waiting for openraft's replication");
                    wait_for = last.map(|l| l.index);
                    None
                }
            };
            if let Some(held) = held {
                counts.accepted.fetch_add(1, Ordering::Relaxed);
                progress.early_accepted(target, vote.leader_id().term, held.index);
            }
            accepted = held;
            let told = told_commit(&message, held);
            link.early_state().send_modify(|state| {
                if state.vote == Some(vote) {
                    state.accepted = state.accepted.max(held);
                    state.in_flight = None;
                    if held.is_some() {
                        state.told_commit = state.told_commit.max(told);
                        state.accepted_count += 1;
                    }
                }
            });
        }
    }
}

/// One AppendEntries carrying the newest run of consecutive batches in `pending` (same vote,
/// each starting right after the previous one, together within about
/// [`REPLICATION_BATCH_BYTES`]: the newest batch always goes), if the follower holds the entry
/// before it: it matched it (as openraft last reported) or accepted it early.
fn merge(
    pending: &[ForFollower],
    accepted: Option<LogId<ReplicaId>>,
    matched: Option<LogId<ReplicaId>>,
) -> Option<AppendEntriesRequest<TypeConfig>> {
    let newest = pending.last()?;
    let mut start = pending.len() - 1;
    let mut bytes = newest.append.bytes;
    while start > 0 {
        let (before, batch) = (&pending[start - 1].append, &pending[start].append);
        if before.vote != batch.vote || before.entries.last().map(|e| e.log_id) != batch.prev {
            break;
        }
        bytes = bytes.saturating_add(before.bytes);
        if bytes > REPLICATION_BATCH_BYTES {
            break;
        }
        start -= 1;
    }
    let first = &pending[start].append;
    let holds_prev = match first.prev {
        None => true,
        Some(prev) => accepted == Some(prev) || matched.is_some_and(|m| m.index >= prev.index),
    };
    if !holds_prev {
        return None;
    }
    let entries = pending[start..]
        .iter()
        .flat_map(|p| p.append.entries.iter().cloned())
        .collect();
    Some(AppendEntriesRequest {
        vote: newest.append.vote,
        prev_log_id: first.prev,
        entries,
        leader_commit: pending.iter().filter_map(|p| p.committed).max(),
    })
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Vote};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<ReplicaId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// A batch of blank entries `from..=to` of `term`, after `prev`, said to be 100 bytes.
    fn batch(term: u64, prev: Option<u64>, from: u64, to: u64) -> ForFollower {
        sized_batch(term, prev, from, to, 100)
    }

    /// [`batch`], said to be `bytes` long.
    fn sized_batch(term: u64, prev: Option<u64>, from: u64, to: u64, bytes: usize) -> ForFollower {
        let entries = (from..=to)
            .map(|i| Entry {
                log_id: log_id(term, i),
                payload: EntryPayload::Blank,
            })
            .collect();
        ForFollower {
            append: Arc::new(OwnAppend {
                vote: Vote::new_committed(term, 1),
                prev: prev.map(|p| log_id(term, p)),
                entries,
                bytes,
            }),
            matched: None,
            committed: None,
        }
    }

    fn indexes(request: &AppendEntriesRequest<TypeConfig>) -> Vec<u64> {
        request.entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn consecutive_batches_go_as_one_message_after_what_the_follower_holds() {
        let mut pending = [
            batch(2, Some(4), 5, 6),
            batch(2, Some(6), 7, 7),
            batch(2, Some(7), 8, 9),
        ];
        pending[0].committed = Some(log_id(2, 2));
        pending[1].committed = Some(log_id(2, 3));
        let request = merge(&pending, Some(log_id(2, 4)), None).expect("the follower holds 4");
        assert_eq!(request.prev_log_id, Some(log_id(2, 4)));
        assert_eq!(indexes(&request), vec![5, 6, 7, 8, 9]);
        assert_eq!(request.vote, Vote::new_committed(2, 1));
        assert_eq!(
            request.leader_commit,
            Some(log_id(2, 3)),
            "the newest commit index handed over with a batch goes with them"
        );
    }

    #[test]
    fn only_the_newest_consecutive_run_is_sent() {
        // A gap between 6 and 8 (the batch of 7 had no room): only 8..9 can go, after 7.
        let pending = [batch(2, Some(4), 5, 6), batch(2, Some(7), 8, 9)];
        let request = merge(&pending, None, Some(log_id(2, 7))).expect("openraft reports 7 matched");
        assert_eq!(request.prev_log_id, Some(log_id(2, 7)));
        assert_eq!(indexes(&request), vec![8, 9]);
        // A new term starts a new run.
        let pending = [batch(2, Some(4), 5, 6), batch(3, Some(6), 7, 7)];
        let request = merge(&pending, None, Some(log_id(2, 6))).expect("matched 6");
        assert_eq!(indexes(&request), vec![7]);
        assert_eq!(request.vote, Vote::new_committed(3, 1));
    }

    #[test]
    fn a_merged_message_keeps_to_about_a_megabyte_but_the_newest_batch_always_goes() {
        let third = REPLICATION_BATCH_BYTES * 3 / 10;
        let pending = [
            sized_batch(2, Some(4), 5, 5, third),
            sized_batch(2, Some(5), 6, 6, third),
            sized_batch(2, Some(6), 7, 7, third),
            sized_batch(2, Some(7), 8, 8, third),
        ];
        // 4 × 0.3 MB do not fit: the newest three do, after 5 (which the follower must hold).
        let request = merge(&pending, None, Some(log_id(2, 5))).expect("matched 5");
        assert_eq!(indexes(&request), vec![6, 7, 8]);
        assert_eq!(request.prev_log_id, Some(log_id(2, 5)));
        assert!(
            merge(&pending, None, Some(log_id(2, 4))).is_none(),
            "holding only 4, the follower cannot take 6..8, and 5..8 is too large"
        );
        let huge = [
            sized_batch(2, Some(4), 5, 5, 10),
            sized_batch(2, Some(5), 6, 6, 2 * REPLICATION_BATCH_BYTES),
        ];
        let request = merge(&huge, None, Some(log_id(2, 5))).expect("matched 5");
        assert_eq!(indexes(&request), vec![6], "a batch larger than the budget goes alone");
    }

    fn request(term: u64, prev: Option<u64>, from: u64, to: u64) -> AppendEntriesRequest<TypeConfig> {
        let batch = batch(term, prev, from, to);
        AppendEntriesRequest {
            vote: batch.append.vote,
            prev_log_id: batch.append.prev,
            entries: batch.append.entries.clone(),
            leader_commit: None,
        }
    }

    #[test]
    fn openraft_is_answered_only_for_entries_accepted_early_under_its_vote() {
        let state = |term: u64, accepted: Option<u64>, in_flight: Option<u64>| EarlyState {
            vote: Some(Vote::new_committed(term, 1)),
            accepted: accepted.map(|i| log_id(term, i)),
            in_flight: in_flight.map(|i| log_id(term, i)),
            ..EarlyState::default()
        };
        assert_eq!(
            holds(&state(2, Some(9), None), &request(2, Some(4), 5, 9), None),
            Some(true)
        );
        assert_eq!(
            holds(&state(2, Some(12), None), &request(2, Some(4), 5, 9), None),
            Some(true),
            "holding 12 it holds everything before"
        );
        assert_eq!(
            holds(&state(2, Some(8), None), &request(2, Some(4), 5, 9), None),
            None,
            "9 was never sent early"
        );
        assert_eq!(
            holds(&state(2, Some(4), Some(9)), &request(2, Some(4), 5, 9), None),
            Some(false),
            "wait for the answer to the message carrying 9"
        );
        assert_eq!(holds(&state(2, None, Some(8)), &request(2, Some(4), 5, 9), None), None);
        assert_eq!(
            holds(&state(2, Some(9), None), &request(3, Some(4), 5, 9), None),
            None,
            "accepted under another vote"
        );
        assert_eq!(
            holds(&EarlyState::default(), &request(2, Some(4), 5, 9), None),
            None,
            "nothing sent early"
        );
        assert_eq!(
            holds(&state(2, Some(9), None), &request(2, Some(9), 10, 9), None),
            None,
            "a heartbeat is not answered here"
        );

        // The commit index the request carries must have reached the follower already.
        let mut telling = request(2, Some(4), 5, 9);
        telling.leader_commit = Some(log_id(2, 7));
        let mut told_6 = state(2, Some(9), None);
        told_6.told_commit = Some(log_id(2, 6));
        assert_eq!(holds(&told_6, &telling, None), None, "the follower was told 6, not 7");
        assert_eq!(
            holds(&told_6, &telling, Some(log_id(2, 7))),
            Some(true),
            "the link's own messages told it 7"
        );
        told_6.told_commit = Some(log_id(2, 8));
        assert_eq!(holds(&told_6, &telling, None), Some(true), "an early message told it 8");
    }

    #[test]
    fn a_heartbeat_is_answered_only_by_a_later_early_message_telling_its_commit_index() {
        let mut heartbeat = request(2, Some(9), 10, 9);
        heartbeat.leader_commit = Some(log_id(2, 9));
        let state = |accepted_count: u64, told: u64| EarlyState {
            vote: Some(Vote::new_committed(2, 1)),
            accepted: Some(log_id(2, 10)),
            told_commit: Some(log_id(2, told)),
            accepted_count,
            ..EarlyState::default()
        };
        assert!(covers_heartbeat(&state(6, 9), &heartbeat, 5));
        assert!(covers_heartbeat(&state(6, 10), &heartbeat, 5));
        assert!(
            !covers_heartbeat(&state(5, 9), &heartbeat, 5),
            "no early message accepted since the heartbeat was made"
        );
        assert!(!covers_heartbeat(&state(6, 8), &heartbeat, 5), "told only 8");
        let mut other_vote = state(6, 9);
        other_vote.vote = Some(Vote::new_committed(3, 1));
        assert!(!covers_heartbeat(&other_vote, &heartbeat, 5));
        assert!(
            !covers_heartbeat(&state(6, 9), &request(2, Some(4), 5, 9), 5),
            "a message with entries is no heartbeat"
        );
    }

    #[test]
    fn a_follower_is_told_a_commit_index_only_up_to_the_entries_it_holds() {
        // A heartbeat after 5 carrying commit index 9 (reached with another follower): a
        // follower holding nothing past 5 commits only up to 5.
        let mut heartbeat = request(2, Some(5), 6, 5);
        heartbeat.leader_commit = Some(log_id(2, 9));
        assert_eq!(last_held(&heartbeat), Some(log_id(2, 5)));
        assert_eq!(told_commit(&heartbeat, last_held(&heartbeat)), Some(log_id(2, 5)));
        // Entries up to 12 with commit index 9: all of 9 is told.
        let mut entries = request(2, Some(5), 6, 12);
        entries.leader_commit = Some(log_id(2, 9));
        assert_eq!(last_held(&entries), Some(log_id(2, 12)));
        assert_eq!(told_commit(&entries, last_held(&entries)), Some(log_id(2, 9)));
        // Accepted only up to 7 (a partial success): up to 7.
        assert_eq!(told_commit(&entries, Some(log_id(2, 7))), Some(log_id(2, 7)));
        assert_eq!(told_commit(&entries, None), None, "refused: nothing told");
    }

    #[test]
    fn nothing_is_sent_to_a_follower_not_known_to_hold_the_previous_entry() {
        let pending = [batch(2, Some(4), 5, 6)];
        assert!(merge(&pending, None, None).is_none());
        assert!(merge(&pending, None, Some(log_id(2, 3))).is_none(), "matched only 3");
        assert!(merge(&pending, Some(log_id(2, 3)), None).is_none(), "accepted only 3");
        assert!(merge(&pending, None, Some(log_id(2, 9))).is_some(), "matched past 4");
        assert!(
            merge(&[batch(2, None, 1, 1)], None, None).is_some(),
            "an empty log holds nothing"
        );
    }
}
