//! The operator API: status, forming the replica set, membership changes, planned switchover
//! and snapshots.
//!
//! Membership changes and switchover run on the primary (others answer `not-primary` with its
//! address). A kind change is a membership change: `async` replicas are learners, `sync` and
//! `witness` replicas are voters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tandem_proto::db as pb;
use tandem_proto::db::admin_server::Admin;
use tandem_store::{Replica, ReplicaId, ReplicaKind, TypeConfig};
use tonic::{Request, Response, Status};

use crate::network::{call_peer, PeerCall, PeerCallSpec};
use crate::node::Core;
use crate::progress::Metrics;
use crate::refusal;

pub struct AdminService {
    core: Arc<Core>,
}

impl AdminService {
    pub fn new(core: Arc<Core>) -> Self {
        AdminService { core }
    }

    fn require_primary(&self) -> Result<Metrics, Status> {
        if let Some(fence) = self.core.identity.fence() {
            return Err(refusal::fenced(self.core.identity.epoch(), &fence));
        }
        let metrics = self.core.metrics()?;
        if metrics.state != ServerState::Leader {
            return Err(refusal::not_primary(self.core.primary_addr(&metrics).as_deref()));
        }
        Ok(metrics)
    }

    fn members(&self) -> Result<pb::MembershipResponse, Status> {
        Ok(members_of(&self.core.metrics()?))
    }

    fn raft(&self) -> Result<openraft::Raft<TypeConfig>, Status> {
        Ok(self.core.engine()?.raft.clone())
    }

    async fn change(&self, changes: ChangeMembers<ReplicaId, Replica>, retain: bool) -> Result<(), Status> {
        self.raft()?
            .change_membership(changes, retain)
            .await
            .map_err(membership_error)?;
        Ok(())
    }
}

fn members_of(metrics: &Metrics) -> pb::MembershipResponse {
    let members = metrics
        .membership_config
        .membership()
        .nodes()
        .map(|(id, node)| pb::Member {
            id: *id,
            addr: node.addr.clone(),
            kind: node.kind.to_string(),
        })
        .collect();
    pb::MembershipResponse { members }
}

fn parse_member(member: Option<pb::Member>) -> Result<(ReplicaId, Replica), Status> {
    let member = member.ok_or_else(|| refusal::invalid("missing member"))?;
    if member.addr.is_empty() {
        return Err(refusal::invalid(format!("replica {} has no address", member.id)));
    }
    let kind: ReplicaKind = member.kind.parse().map_err(refusal::invalid)?;
    Ok((
        member.id,
        Replica {
            addr: member.addr,
            kind,
        },
    ))
}

fn membership_error(e: RaftError<ReplicaId, ClientWriteError<ReplicaId, Replica>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            refusal::not_primary(forward.leader_node.as_ref().map(|n| n.addr.as_str()))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Status::failed_precondition(e.to_string()),
        RaftError::Fatal(fatal) => Status::unavailable(fatal.to_string()),
    }
}

fn role(metrics: &Metrics) -> &'static str {
    match metrics.state {
        ServerState::Leader => "primary",
        ServerState::Follower => "secondary",
        ServerState::Candidate => "candidate",
        ServerState::Learner if metrics.membership_config.membership().nodes().next().is_none() => "pristine",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// This replica's status: its own role and indexes, and (on the primary) every replica's lag and
/// health.
pub async fn status(core: &Core) -> Result<pb::StatusResponse, Status> {
    let engine = core.engine()?;
    let metrics = engine.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<ReplicaId> = membership.voter_ids().collect();
    let progress: BTreeMap<ReplicaId, _> = engine.progress.replicas().into_iter().map(|p| (p.id, p)).collect();
    let replicas = membership
        .nodes()
        .map(|(id, node)| {
            let p = progress.get(id);
            pb::ReplicaStatus {
                id: *id,
                addr: node.addr.clone(),
                kind: node.kind.to_string(),
                voter: voters.contains(id),
                matched_index: p.map(|p| p.matched).unwrap_or(0),
                lag_entries: p.map(|p| p.lag_entries).unwrap_or(0),
                lag_ms: p.map(|p| p.lag_ms).unwrap_or(0),
                health: p.map(|p| p.health).unwrap_or("unknown").to_owned(),
            }
        })
        .collect();
    let revision = engine.reader.revision().await.unwrap_or(0);
    let fence = core.identity.fence();
    let (own_lag_entries, own_lag_ms, heard_ago) = core.own_lag(&metrics);
    let heard = core.heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let epoch_start_index = engine.log.epoch_start().ok().flatten().map(|id| id.index).unwrap_or(0);
    let appended = engine.log.append_counts();
    let proposed = engine.proposer.counts();
    let reads = engine.reads.counts();
    let early = engine.early.get();
    Ok(pb::StatusResponse {
        id: core.config.id,
        addr: core.config.advertise.clone(),
        cluster: core.config.cluster.clone(),
        role: if fence.is_some() {
            "fenced"
        } else if !engine.is_ready() {
            // openraft may already call itself primary (it restores a leader as leader); until the
            // start probe is done this replica acts as nothing.
            "starting"
        } else {
            role(&metrics)
        }
        .to_owned(),
        kind: core.own_kind(&metrics).map(|k| k.to_string()).unwrap_or_default(),
        term: metrics.current_term,
        epoch: core.identity.epoch(),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        commit_index: core.commit_index(&engine).await,
        applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
        snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
        revision,
        primary_id: metrics.current_leader.filter(|_| fence.is_none() && engine.is_ready()),
        primary_addr: match &fence {
            Some(fence) => fence.primary_addr.clone(),
            None if engine.is_ready() => core.primary_addr(&metrics).unwrap_or_default(),
            None => String::new(),
        },
        sync_mode: engine.progress.mode().as_str().to_owned(),
        sync_timeout_ms: engine.progress.sync_timeout().as_millis() as u64,
        replicas,
        demotions: engine.progress.demotions(),
        fenced_by_epoch: fence.map(|f| f.epoch).unwrap_or(0),
        epoch_start_index,
        own_lag_entries,
        own_lag_ms,
        heard_primary_last_index: heard.primary_last_index,
        heard_primary_ms_ago: heard_ago.map(|d| d.as_millis() as u64).unwrap_or(0),
        in_sync_set: heard.in_sync_set,
        log_writes: appended.appends,
        log_entries_written: appended.entries,
        txns_proposed: proposed.txns,
        txn_entries_proposed: proposed.entries,
        linearizable_reads: reads.reads,
        read_checks: reads.checks,
        early_appends_sent: early.sent,
        early_appends_accepted: early.accepted,
        early_appends_answered: early.answered,
        log_checkpoints: Some(checkpoint_counts(engine.log.checkpoint_counts())),
        state_checkpoints: Some(checkpoint_counts(engine.reader.checkpoint_counts())),
        campaigns: engine.elections.campaigns.load(Ordering::Relaxed),
        pre_votes_refused: engine.elections.refused.load(Ordering::Relaxed),
    })
}

fn checkpoint_counts(counts: tandem_store::CheckpointCounts) -> pb::CheckpointCounts {
    pb::CheckpointCounts {
        checkpoints: counts.passive,
        rewinds: counts.restarts,
        rewinds_busy: counts.restarts_busy,
        failures: counts.failed,
        wal_frames: counts.log_frames,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status(&self.core).await?))
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let mut voters = BTreeMap::new();
        let mut learners = BTreeMap::new();
        for member in request.into_inner().members {
            let (id, replica) = parse_member(Some(member))?;
            let set = if replica.kind.is_voter() {
                &mut voters
            } else {
                &mut learners
            };
            if set.insert(id, replica).is_some() {
                return Err(refusal::invalid(format!("replica {id} listed twice")));
            }
        }
        if !voters.contains_key(&self.core.config.id) {
            return Err(refusal::invalid(format!(
                "initialise through one of the voters (sync or witness replicas); replica {} is not one",
                self.core.config.id
            )));
        }
        if let Some(id) = learners.keys().find(|id| voters.contains_key(id)) {
            return Err(refusal::invalid(format!("replica {id} listed twice")));
        }
        tracing::info!(voters = ?voters.keys().collect::<Vec<_>>(), learners = ?learners.keys().collect::<Vec<_>>(), "initialising the replica set");
        match self.raft()?.initialize(voters).await {
            Ok(()) => {}
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                return Err(Status::failed_precondition(format!("already initialised: {e}")));
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => return Err(refusal::invalid(e.to_string())),
            Err(RaftError::Fatal(fatal)) => return Err(Status::unavailable(fatal.to_string())),
        }
        if !learners.is_empty() {
            // Learners can be added once the initial membership is committed.
            let elected = self
                .raft()?
                .wait(Some(Duration::from_secs(10)))
                .metrics(
                    |m| {
                        m.current_leader.is_some()
                            && m.last_applied.map(|a| a.index) >= m.membership_config.log_id().map(|l| l.index)
                    },
                    "a primary is elected and the membership committed",
                )
                .await
                .map_err(|e| Status::unavailable(format!("no primary elected: {e}")))?;
            if elected.current_leader != Some(self.core.config.id) {
                return Err(Status::unavailable(format!(
                    "voters initialised, but replica {:?} became primary: add the async replicas there",
                    elected.current_leader
                )));
            }
            for (id, replica) in learners {
                self.raft()?
                    .add_learner(id, replica, false)
                    .await
                    .map_err(membership_error)?;
            }
        }
        Ok(Response::new(self.members()?))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let (id, replica) = parse_member(request.into_inner().member)?;
        let metrics = self.require_primary()?;
        if metrics.membership_config.membership().get_node(&id).is_some() {
            return Err(Status::already_exists(format!(
                "replica {id} is already a member (use set-kind)"
            )));
        }
        let voter = replica.kind.is_voter();
        tracing::info!(replica = id, addr = %replica.addr, kind = %replica.kind, "adding replica");
        // A learner first, so that it catches up before it counts in any quorum.
        self.raft()?
            .add_learner(id, replica, true)
            .await
            .map_err(membership_error)?;
        if voter {
            self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await?;
        }
        Ok(Response::new(self.members()?))
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let id = request.into_inner().id;
        let metrics = self.require_primary()?;
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!("replica {id} is not a member")));
        }
        if id == self.core.config.id {
            return Err(Status::failed_precondition(
                "the primary cannot remove itself: switch over to another replica first",
            ));
        }
        tracing::info!(replica = id, "removing replica");
        if membership.voter_ids().any(|v| v == id) {
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await?;
        } else {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
        }
        Ok(Response::new(self.members()?))
    }

    async fn set_kind(&self, request: Request<pb::SetKindRequest>) -> Result<Response<pb::MembershipResponse>, Status> {
        let request = request.into_inner();
        let kind: ReplicaKind = request.kind.parse().map_err(refusal::invalid)?;
        let metrics = self.require_primary()?;
        let membership = metrics.membership_config.membership();
        let node = membership
            .get_node(&request.id)
            .ok_or_else(|| Status::not_found(format!("replica {} is not a member", request.id)))?
            .clone();
        if node.kind == kind {
            return Ok(Response::new(self.members()?));
        }
        if request.id == self.core.config.id && !kind.is_voter() {
            return Err(Status::failed_precondition(
                "the primary must stay a voter: switch over first",
            ));
        }
        let id = request.id;
        tracing::info!(replica = id, from = %node.kind, to = %kind, "changing replica kind");
        let updated = Replica {
            addr: node.addr.clone(),
            kind,
        };
        let was_voter = membership.voter_ids().any(|v| v == id);
        if was_voter && !kind.is_voter() {
            // Voter → learner (retain keeps it replicating), then record its kind.
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                .await?;
        }
        self.change(ChangeMembers::SetNodes(BTreeMap::from([(id, updated)])), false)
            .await?;
        if !was_voter && kind.is_voter() {
            self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await?;
        }
        Ok(Response::new(self.members()?))
    }

    async fn switchover(
        &self,
        request: Request<pb::SwitchoverRequest>,
    ) -> Result<Response<pb::SwitchoverResponse>, Status> {
        let target = request.into_inner().target;
        let started = Instant::now();
        let core = &self.core;
        let metrics = self.require_primary()?;
        if target == core.config.id {
            return Ok(Response::new(pb::SwitchoverResponse {
                primary: target,
                term: metrics.current_term,
                duration_ms: 0,
            }));
        }
        let membership = metrics.membership_config.membership();
        let node = membership
            .get_node(&target)
            .ok_or_else(|| Status::not_found(format!("replica {target} is not a member")))?
            .clone();
        if !membership.voter_ids().any(|v| v == target) || node.kind != ReplicaKind::Sync {
            return Err(Status::failed_precondition(format!(
                "replica {target} is a {} replica; only a sync replica can become primary",
                node.kind
            )));
        }
        tracing::info!(
            target,
            "switchover: holding new writes until the target has every entry"
        );
        let election_max = Duration::from_millis(core.config.timers.election_max_ms);
        let deadline = Instant::now() + core.config.write_timeout + 4 * election_max;
        // No write is accepted from here on, so the log stops growing.
        let _exclusive = core.write_fence.write().await;
        let raft = core.engine()?.raft.clone();
        let mut metrics_rx = raft.metrics();
        loop {
            let m = metrics_rx.borrow_and_update().clone();
            if m.state != ServerState::Leader {
                return Err(Status::aborted(
                    "lost the primary role during the switchover; check status",
                ));
            }
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target).copied().flatten())
                .map(|l| l.index);
            if matched.unwrap_or(0) >= last {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), metrics_rx.changed())
                .await
                .is_err()
            {
                return Err(Status::deadline_exceeded(format!(
                    "replica {target} did not catch up (matched {matched:?} of {last}); writes resume here"
                )));
            }
        }
        tracing::info!(target, "switchover: target caught up, asking it to campaign");
        loop {
            let asked: Result<Result<(), String>, _> = call_peer(
                &core.identity,
                &core.channels,
                PeerCallSpec {
                    target,
                    addr: &node.addr,
                    call: PeerCall::ElectNow,
                    timeout: election_max,
                    stamp: None,
                },
                &(),
            )
            .await;
            match asked {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(target, error = %e, "switchover: target refused to campaign"),
                Err(e) => tracing::warn!(target, error = %e, "switchover: election request failed"),
            }
            let waited = raft
                .wait(Some(election_max * 2))
                .metrics(|m| m.current_leader == Some(target), "target is primary")
                .await;
            match waited {
                Ok(m) => {
                    let duration_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(target, term = m.current_term, duration_ms, "switchover done");
                    return Ok(Response::new(pb::SwitchoverResponse {
                        primary: target,
                        term: m.current_term,
                        duration_ms,
                    }));
                }
                Err(_) if Instant::now() < deadline => continue,
                Err(e) => {
                    return Err(Status::deadline_exceeded(format!(
                        "replica {target} did not become primary: {e}"
                    )))
                }
            }
        }
    }

    async fn snapshot(&self, _request: Request<pb::SnapshotRequest>) -> Result<Response<pb::SnapshotResponse>, Status> {
        let raft = self.raft()?;
        let applied = raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let m = raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.map(|s| s.index).unwrap_or(0) >= applied,
                "snapshot built",
            )
            .await
            .map_err(|e| Status::deadline_exceeded(e.to_string()))?;
        Ok(Response::new(pb::SnapshotResponse {
            index: m.snapshot.map(|s| s.index).unwrap_or(0),
        }))
    }

    async fn recover(&self, request: Request<pb::RecoverRequest>) -> Result<Response<pb::RecoverResponse>, Status> {
        Ok(Response::new(
            crate::epoch::recover(&self.core, request.into_inner().force).await?,
        ))
    }

    async fn rejoin(&self, request: Request<pb::RejoinRequest>) -> Result<Response<pb::RejoinResponse>, Status> {
        Ok(Response::new(
            crate::epoch::rejoin(&self.core, request.into_inner()).await?,
        ))
    }
}
