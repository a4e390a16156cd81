//! When a replica campaigns for primary: after a silence, and only if a majority would vote for
//! it (a pre-vote, Raft thesis §9.6).
//!
//! openraft 0.9 has no pre-vote. On its own timer a replica that lost touch with the primary (its
//! process stopped, its link cut) campaigns again and again, raising its term each time; when it
//! is back, the primary sees the higher term in its answers and steps down, and the set holds an
//! election, and pauses writes, for nothing. So openraft's timer elections stay off
//! (`enable_elect=false`) and this task decides when to campaign:
//!
//! 1. it waits for a silence: no message from a primary for as long as openraft's own timer
//!    would wait (its leader lease, `election_timeout_max`, plus a random
//!    `election_timeout_min..=election_timeout_max`; a witness waits [`WITNESS_PATIENCE`] leases
//!    instead of one, so that a data replica normally wins);
//! 2. it asks every other voter whether it would vote for it (`PreVote`, which changes nothing
//!    on either side: no term, no vote);
//! 3. only when a majority of the voters, itself included, says yes, it asks openraft to campaign
//!    (`trigger().elect()`); otherwise it waits for another silence.
//!
//! A voter says yes ([`judge`]) unless it is fenced, it hears from a primary itself (a follower
//! that heard one within the lease; a primary that a majority answered within the lease, or that
//! was just elected), or the candidate's log is behind its own (the real vote would be refused
//! too). A voter that does not know the call (an older version) counts as a yes: its real vote
//! decides.
//!
//! A replica alone in its membership (the survivor of a forced recovery) campaigns at once.
//! [`crate::failfast`] and the switchover and witness hand-off (`ElectNow`) still ask openraft to
//! campaign directly: each does so only once the primary is known to be gone or to have handed
//! over.
//!
//! Invariant: a data replica's only campaigns are those this task, `failfast` and `ElectNow`
//! start; the pre-vote only ever prevents a campaign. Safety stays openraft's (its vote rules):
//! a campaign that starts anyway is refused by voters that hear a primary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::{LogId, Raft, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tandem_store::{ReplicaId, TypeConfig};

use crate::engine::Engine;
use crate::network::{call_peer, PeerCall, PeerCallSpec, PeerError};
use crate::node::Core;
use crate::witness::is_witness;

/// Leases a witness waits for without a primary before it may campaign (a data replica waits
/// one): it should win only when no data replica can.
pub const WITNESS_PATIENCE: u32 = 2;

/// A candidate's question: would you vote for a replica whose log ends here?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub last_log_id: Option<LogId<ReplicaId>>,
}

/// The answer, and why (for the candidate's log).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreVoteReply {
    pub granted: bool,
    pub reason: String,
}

/// What a voter knows when it judges a pre-vote.
#[derive(Debug, Clone)]
pub struct VoterView {
    pub fenced: bool,
    /// This voter leads, and a majority last answered it this long ago (`None`: not yet, it was
    /// just elected).
    pub leading: Option<Option<Duration>>,
    /// The primary it follows, and how long ago it last heard from it (or since it started,
    /// if never).
    pub primary: Option<ReplicaId>,
    pub silent: Duration,
    pub last_log_id: Option<LogId<ReplicaId>>,
    /// openraft's leader lease: how long a voter refuses real votes after hearing a primary.
    pub lease: Duration,
}

/// Whether a voter that knows `view` would vote for a candidate whose log ends at
/// `candidate_last`.
pub fn judge(view: &VoterView, candidate_last: Option<LogId<ReplicaId>>) -> PreVoteReply {
    let no = |reason: String| PreVoteReply { granted: false, reason };
    if view.fenced {
        return no("fenced: this replica's epoch was superseded".into());
    }
    match view.leading {
        Some(Some(ack)) if ack < view.lease => {
            return no(format!(
                "this replica is primary; a majority answered it {} ms ago",
                ack.as_millis()
            ));
        }
        // Elected a moment ago: its first heartbeats are on their way.
        Some(None) => return no("this replica was just elected primary".into()),
        Some(Some(_)) => {}
        None if view.silent < view.lease => {
            let primary = view.primary.map_or("a primary".to_owned(), |p| format!("primary {p}"));
            return no(format!(
                "this replica heard from {primary} {} ms ago",
                view.silent.as_millis()
            ));
        }
        None => {}
    }
    if candidate_last < view.last_log_id {
        return no(format!(
            "the candidate's log ends at {}, this replica's at {}",
            show(candidate_last),
            show(view.last_log_id)
        ));
    }
    PreVoteReply {
        granted: true,
        reason: "no primary heard, and the candidate's log is up to date".into(),
    }
}

fn show(log_id: Option<LogId<ReplicaId>>) -> String {
    log_id.map_or("the start".to_owned(), |id| id.to_string())
}

/// What this task has done since the engine started (status and `/metrics`).
#[derive(Debug, Default)]
pub struct ElectionCounts {
    /// Pre-votes after which this replica campaigned.
    pub campaigns: AtomicU64,
    /// Pre-votes a majority refused (no campaign followed).
    pub refused: AtomicU64,
}

/// This replica's answer to a pre-vote.
pub async fn answer(core: &Core, engine: &Engine, request: &PreVoteRequest) -> PreVoteReply {
    let last_log_id = match last_log_id(engine).await {
        Ok(last) => last,
        Err(reason) => return PreVoteReply { granted: false, reason },
    };
    let m = engine.raft.metrics().borrow().clone();
    let leading = (m.state == ServerState::Leader).then(|| m.millis_since_quorum_ack.map(Duration::from_millis));
    let view = VoterView {
        fenced: core.identity.fence().is_some(),
        leading,
        primary: m.current_leader,
        silent: core.silence(engine),
        last_log_id,
        lease: Duration::from_millis(core.config.timers.election_max_ms),
    };
    judge(&view, request.last_log_id)
}

/// The last entry of this replica's log (what openraft's vote compares; `None`: empty).
async fn last_log_id(engine: &Engine) -> Result<Option<LogId<ReplicaId>>, String> {
    use openraft::storage::RaftLogStorage;
    match engine.log.clone().get_log_state().await {
        Ok(state) => Ok(state.last_log_id),
        Err(e) => Err(format!("cannot read the last entry of this replica's log: {e}")),
    }
}

/// Runs for the life of an engine; campaigns as the module documentation says.
pub async fn run(core: Arc<Core>, engine: Arc<Engine>) {
    let timers = core.config.timers;
    let lease = Duration::from_millis(timers.election_max_ms);
    let tick = Duration::from_millis((timers.heartbeat_ms / 4).max(5));
    let random_extra =
        || Duration::from_millis(rand::thread_rng().gen_range(timers.election_min_ms..=timers.election_max_ms));
    let mut extra = random_extra();
    // Silence is counted from the later of the last message of a primary and this moment (reset
    // while leading and after each pre-vote).
    let mut since = Instant::now();
    // Whether a refusal was already logged at info level in this silence (later ones go to debug).
    let mut told = false;
    let mut last_campaign: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        if !engine.is_ready() {
            since = Instant::now();
            continue;
        }
        if core.identity.fence().is_some() {
            return;
        }
        let m = engine.raft.metrics().borrow().clone();
        let voters: Vec<ReplicaId> = m.membership_config.membership().voter_ids().collect();
        let me = core.config.id;
        if m.state == ServerState::Leader || !voters.contains(&me) {
            since = Instant::now();
            told = false;
            continue;
        }
        if voters.len() == 1 {
            // The survivor of a forced recovery: nobody to ask, and nobody to disrupt.
            if last_campaign.is_none_or(|at| at.elapsed() >= lease) {
                tracing::info!("this replica is the only voter: campaigning for primary");
                engine.elections.campaigns.fetch_add(1, Ordering::Relaxed);
                campaign(&engine.raft, "only voter").await;
                last_campaign = Some(Instant::now());
            }
            continue;
        }
        let patience = if is_witness(&core, &m) { WITNESS_PATIENCE } else { 1 };
        let silent = core.silence(&engine).min(since.elapsed());
        if silent < lease * patience + extra {
            continue;
        }
        let request = match last_log_id(&engine).await {
            Ok(last_log_id) => PreVoteRequest { last_log_id },
            Err(reason) => {
                tracing::warn!(%reason, "not campaigning");
                since = Instant::now();
                continue;
            }
        };
        let needed = voters.len() / 2 + 1;
        let (granted, refusals) = pre_vote(&core, &m, &voters, needed, &request, lease).await;
        if granted >= needed {
            tracing::info!(
                silent_ms = silent.as_millis() as u64,
                granted,
                voters = voters.len(),
                "no primary heard for {} ms and a majority would vote for this replica: campaigning for primary",
                silent.as_millis()
            );
            engine.elections.campaigns.fetch_add(1, Ordering::Relaxed);
            campaign(&engine.raft, "pre-vote granted").await;
            last_campaign = Some(Instant::now());
            told = false;
        } else {
            engine.elections.refused.fetch_add(1, Ordering::Relaxed);
            let refusals = refusals.join("; ");
            if told {
                tracing::debug!(silent_ms = silent.as_millis() as u64, granted, %refusals, "pre-vote refused");
            } else {
                tracing::info!(
                    silent_ms = silent.as_millis() as u64,
                    granted,
                    needed,
                    %refusals,
                    "no primary heard, but too few voters would vote for this replica: not campaigning (no term raised)"
                );
                told = true;
            }
        }
        since = Instant::now();
        extra = random_extra();
    }
}

async fn campaign(raft: &Raft<TypeConfig>, why: &str) {
    if let Err(e) = raft.trigger().elect().await {
        tracing::warn!(error = %e, why, "could not start a campaign");
    }
}

/// Asks every other voter; answers the yeses (this replica's own included) and the refusals,
/// as soon as `needed` said yes or every voter answered.
async fn pre_vote(
    core: &Core,
    m: &crate::progress::Metrics,
    voters: &[ReplicaId],
    needed: usize,
    request: &PreVoteRequest,
    timeout: Duration,
) -> (usize, Vec<String>) {
    let membership = m.membership_config.membership();
    let mut asks: FuturesUnordered<_> = voters
        .iter()
        .filter(|id| **id != core.config.id)
        .filter_map(|id| membership.get_node(id).map(|node| (*id, node.addr.clone())))
        .map(|(target, addr)| async move {
            let spec = PeerCallSpec {
                target,
                addr: &addr,
                call: PeerCall::PreVote,
                timeout,
                stamp: None,
            };
            let reply: Result<PreVoteReply, PeerError> = call_peer(&core.identity, &core.channels, spec, request).await;
            (target, reply)
        })
        .collect();
    let mut granted = 1;
    let mut refusals = Vec::new();
    while let Some((target, reply)) = asks.next().await {
        match reply {
            Ok(reply) if reply.granted => granted += 1,
            Ok(reply) => refusals.push(format!("replica {target}: {}", reply.reason)),
            // A replica of an older version: its real vote decides.
            Err(PeerError::Refused { status, .. }) if status.code() == tonic::Code::Unimplemented => granted += 1,
            Err(e) => refusals.push(format!("replica {target}: {e}")),
        }
        if granted >= needed {
            break;
        }
    }
    (granted, refusals)
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId<ReplicaId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    fn follower(silent_ms: u64) -> VoterView {
        VoterView {
            fenced: false,
            leading: None,
            primary: Some(1),
            silent: Duration::from_millis(silent_ms),
            last_log_id: log_id(2, 10),
            lease: Duration::from_millis(800),
        }
    }

    #[test]
    fn a_follower_that_hears_its_primary_refuses_and_one_that_does_not_grants() {
        let refused = judge(&follower(100), log_id(2, 10));
        assert!(!refused.granted);
        assert!(
            refused.reason.contains("heard from primary 1 100 ms ago"),
            "{}",
            refused.reason
        );
        assert!(judge(&follower(800), log_id(2, 10)).granted);
    }

    #[test]
    fn a_primary_refuses_while_a_majority_answers_it() {
        let mut view = follower(5000);
        view.leading = Some(Some(Duration::from_millis(30)));
        assert!(!judge(&view, log_id(2, 10)).granted);
        view.leading = Some(Some(Duration::from_millis(900)));
        assert!(judge(&view, log_id(2, 10)).granted);
        view.leading = Some(None);
        assert!(!judge(&view, log_id(2, 10)).granted);
    }

    #[test]
    fn a_candidate_whose_log_is_behind_is_refused() {
        let view = follower(5000);
        for behind in [log_id(2, 9), log_id(1, 50), None] {
            let reply = judge(&view, behind);
            assert!(!reply.granted, "{behind:?}");
            assert!(reply.reason.contains("the candidate's log ends at"), "{}", reply.reason);
        }
        assert!(judge(&view, log_id(3, 1)).granted);
    }

    #[test]
    fn a_fenced_replica_refuses() {
        let mut view = follower(5000);
        view.fenced = true;
        assert!(!judge(&view, log_id(3, 1)).granted);
    }
}
