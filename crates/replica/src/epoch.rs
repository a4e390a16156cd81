//! Epochs: forced recovery on a survivor, fencing of replicas of a superseded epoch, and their
//! rejoin.
//!
//! - **Recover.** When the quorum is gone, an operator runs `tandem db recover --force` on a
//!   survivor. Unless a primary of its own epoch is still reachable, it applies everything it
//!   holds, starts epoch E+1 with itself as the only voter (see `tandem_store::recovery`), and
//!   reports what it knows about loss.
//! - **Fence.** A replica learns of a newer epoch from any peer: a refusal carrying the peer's
//!   epoch, a message of a newer epoch, or the probe every engine runs before it may campaign. It
//!   then persists the fence, stops campaigning, refuses every peer message and every client
//!   request (`fenced: epoch N superseded by M`), and stays so across restarts.
//! - **Rejoin.** `tandem db rejoin` on a fenced replica copies its history into a quarantine
//!   directory, wipes it, starts pristine in the new epoch, and asks the new primary to add it
//!   back; it then catches up by snapshot and log.
//!
//! Invariant: a fenced replica never votes, never replicates and never serves; the only way out
//! is a rejoin, which keeps a copy of everything it drops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tandem_proto::db as pb;
use tandem_proto::db::admin_client::AdminClient;
use tandem_store::{Fence, Replica, ReplicaId, ReplicaKind};
use tonic::Status;

use crate::engine::{Engine, OpenedStore};
use crate::node::{now_ms, Core};
use crate::refusal;

/// How long a probe of one peer may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks `addr` for its status.
async fn probe(core: &Core, addr: &str) -> Result<pb::StatusResponse, Status> {
    let channel = core
        .channels
        .channel(addr)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    Ok(AdminClient::new(channel).status(request).await?.into_inner())
}

/// Every member this replica's storage knows of: the membership as of the last applied entry
/// and any membership entry in the log past that entry (only those entries are read: the log
/// before them may be long). Read from storage, not from openraft's metrics, which are not yet
/// published when an engine starts.
async fn stored_members(engine: &Engine) -> BTreeMap<ReplicaId, Replica> {
    let mut members = BTreeMap::new();
    let applied = engine.reader.applied_state().await.ok();
    if let Some((_, membership)) = &applied {
        members.extend(membership.membership().nodes().map(|(id, node)| (*id, node.clone())));
    }
    let after = applied.and_then(|(last, _)| last).map(|id| id.index).unwrap_or(0);
    let log = engine.log.clone();
    let tail = tokio::task::spawn_blocking(move || log.entries_after(after)).await;
    for entry in tail.ok().and_then(Result::ok).unwrap_or_default() {
        if let openraft::EntryPayload::Membership(membership) = entry.payload {
            members.extend(membership.nodes().map(|(id, node)| (*id, node.clone())));
        }
    }
    members
}

/// Asks every other member for its status, in parallel; notes any newer epoch on the way.
async fn probe_members(core: &Core, engine: &Engine) -> Vec<(ReplicaId, String, Result<pb::StatusResponse, Status>)> {
    let members = stored_members(engine).await;
    let answers = futures::future::join_all(members.into_iter().filter(|(id, _)| *id != core.config.id).map(
        |(id, node)| async move {
            let answer = probe(core, &node.addr).await;
            (id, node.addr, answer)
        },
    ))
    .await;
    for (_, addr, answer) in &answers {
        if let Ok(status) = answer {
            let primary = if status.role == "primary" {
                addr.as_str()
            } else {
                status.primary_addr.as_str()
            };
            core.identity.observe_epoch(status.epoch, primary);
            core.identity
                .observe_epoch(status.fenced_by_epoch, &status.primary_addr);
        }
    }
    answers
}

/// Run by every engine at start. Until it is done the engine is not *ready*: it serves no client
/// and sends and accepts no Raft traffic (openraft restores a node that was primary as primary at
/// once, elections or not). It asks the other members for their epoch, so that a replica
/// returning from a lost site learns it is fenced before it can act; then, unless fenced, it lets
/// the engine work (and [`crate::election`] campaign when a primary is missing).
pub async fn probe_then_elect(core: Arc<Core>, engine: Arc<Engine>) {
    if let Some(fence) = core.identity.fence() {
        tracing::warn!(%fence, "fenced: elections stay off until `tandem db rejoin`");
        return;
    }
    probe_members(&core, &engine).await;
    let newer = core.identity.newer_epochs().borrow().clone();
    if let Some(newer) = newer.filter(|f| f.epoch > core.identity.epoch()) {
        apply_fence(&core, newer).await;
        return;
    }
    engine.set_ready();
    tracing::debug!("no peer knows a newer epoch; ready");
}

/// Runs for the life of the replica: fences it as soon as a peer reveals a newer epoch.
pub async fn watch_for_newer_epochs(core: Arc<Core>) {
    let mut newer = core.identity.newer_epochs();
    while newer.changed().await.is_ok() {
        let Some(fence) = newer.borrow_and_update().clone() else {
            continue;
        };
        let current = core.identity.fence();
        let news = fence.epoch > core.identity.epoch()
            && current
                .as_ref()
                .is_none_or(|c| c.epoch < fence.epoch || (c.primary_addr.is_empty() && !fence.primary_addr.is_empty()));
        if news {
            apply_fence(&core, fence).await;
        }
    }
}

/// Fences this replica: durably, then in memory; stops campaigning.
async fn apply_fence(core: &Core, fence: Fence) {
    let Ok(engine) = core.engine() else { return };
    let log = engine.log.clone();
    let stored = fence.clone();
    match tokio::task::spawn_blocking(move || log.set_fence(Some(stored))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "could not persist the fence; it holds until restart only"),
        Err(e) => tracing::error!(error = %e, "could not persist the fence; it holds until restart only"),
    }
    core.identity.set_fence(Some(fence.clone()));
    tracing::error!(
        epoch = core.identity.epoch(),
        newer_epoch = fence.epoch,
        primary = %fence.primary_addr,
        "FENCED: this replica's epoch {} was superseded by epoch {} (a forced recovery elsewhere). It refuses \
         client requests and takes no part in elections or replication until `tandem db rejoin`",
        core.identity.epoch(),
        fence.epoch
    );
}

/// Forced recovery (`tandem db recover --force`).
pub async fn recover(core: &Arc<Core>, force: bool) -> Result<pb::RecoverResponse, Status> {
    if !force {
        return Err(Status::failed_precondition(
            "forced recovery may lose acknowledged writes and starts a new epoch; confirm with --force",
        ));
    }
    let _swap = core.swap.lock().await;
    if let Some(fence) = core.identity.fence() {
        return Err(Status::failed_precondition(format!(
            "this replica is fenced ({fence}); recover on the newer epoch's side, or rejoin this one"
        )));
    }
    let engine = core.engine()?;
    let metrics = engine.raft.metrics().borrow().clone();
    let epoch = core.identity.epoch();
    if metrics.membership_config.membership().voter_ids().next().is_none() {
        return Err(refusal::not_initialized());
    }
    if metrics.state == ServerState::Leader {
        return Err(Status::failed_precondition(format!(
            "this replica is the primary of epoch {epoch}: there is nothing to recover"
        )));
    }
    for (id, addr, answer) in probe_members(core, &engine).await {
        let Ok(status) = answer else { continue };
        if status.epoch > epoch || status.fenced_by_epoch > epoch {
            return Err(Status::failed_precondition(format!(
                "replica {id} at {addr} knows a newer epoch {}: this replica is superseded; rejoin it instead",
                status.epoch.max(status.fenced_by_epoch)
            )));
        }
        if status.epoch == epoch && status.role == "primary" && status.fenced_by_epoch == 0 {
            return Err(Status::failed_precondition(format!(
                "replica {id} at {addr} is the primary of epoch {epoch} and reachable: forced recovery refused \
                 (a second primary beside a live one is exactly what must not happen); use `tandem db switchover` \
                 for a planned move"
            )));
        }
    }

    let kind = match core.own_kind(&metrics) {
        Some(ReplicaKind::Witness) => ReplicaKind::Witness,
        _ => ReplicaKind::Sync,
    };
    tracing::warn!(epoch, "forced recovery: stopping the node to start epoch {}", epoch + 1);

    let _exclusive = core.write_fence.write().await;
    drop(engine);
    let Some(engine) = core.take_engine() else {
        return Err(Status::unavailable("no engine to stop"));
    };
    // The figures are read once the node has stopped: until then it goes on receiving and
    // applying entries.
    engine.stop().await;
    let commit_heard = {
        use openraft::storage::RaftLogStorage;
        let mut log = engine.log.clone();
        log.read_committed()
            .await
            .ok()
            .flatten()
            .map(|id| id.index)
            .unwrap_or(0)
    };
    drop(engine);
    let heard = core.heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Dated by the older of when the primary sent the last message and when it arrived, so a
    // message that waited in a socket does not make the figures look fresher than they are.
    let heard_ms_ago = match (heard.primary_time_ms, heard.at) {
        (Some(sent), Some(at)) => now_ms().saturating_sub(sent).max(at.elapsed().as_millis() as u64),
        _ => 0,
    };
    let restart_err = |e: crate::node::StartError| Status::internal(format!("cannot reopen the store: {e}"));
    let mut store = OpenedStore::open(&core.config).await.map_err(restart_err)?;
    let node = Replica {
        addr: core.config.advertise.clone(),
        kind,
    };
    let started = tandem_store::recovery::start_new_epoch(&store.log, &mut store.state, core.config.id, node).await;
    let started = match started {
        Ok(started) => started,
        Err(e) => {
            // The epoch change is one transaction: the store is still in the old epoch. Put the
            // old node back.
            tracing::error!(error = %e, "forced recovery failed; restarting in epoch {epoch}");
            drop(store);
            let store = OpenedStore::open(&core.config).await.map_err(restart_err)?;
            core.install(Engine::start(core, store).await.map_err(restart_err)?);
            return Err(Status::internal(format!("forced recovery failed: {e}")));
        }
    };
    // Everything the survivor holds is applied now (the tail included): its revision is the
    // last change the new epoch starts from.
    let start_revision = store.reader.applied_revision();
    let engine = Engine::start(core, store).await.map_err(restart_err)?;
    core.install(engine.clone());
    let elected = engine
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.state == ServerState::Leader, "primary of the new epoch")
        .await;
    if elected.is_ok() {
        // A snapshot with the new membership, for replicas that join the new epoch.
        let _ = engine.raft.trigger().snapshot().await;
    }

    let start_index = started.start.index;
    let applied_before = started.applied_before.map(|id| id.index).unwrap_or(0);
    let mut bound_known = true;
    let (possibly_missing, assessment) = if heard.in_sync_set && heard.strict {
        (
            0,
            format!(
                "no acknowledged change is missing: this replica was in the primary's synchronous set (strict \
                 mode) when last heard {heard_ms_ago} ms before the recovery, so every acknowledged write reached it"
            ),
        )
    } else if heard.at.is_none() {
        bound_known = false;
        (
            0,
            format!(
                "unknown: this replica never heard from a primary since it started; it holds up to index \
                 {start_index} (revision {start_revision})"
            ),
        )
    } else if heard.primary_revision == 0 && heard.primary_last_index > start_index {
        // A primary that does not stamp its revision: its entries may each carry many changes,
        // so the gap in entries bounds nothing.
        bound_known = false;
        (
            0,
            format!(
                "unknown: the old primary had reached index {} when last heard {heard_ms_ago} ms before the \
                 recovery, {} entries past this replica's {start_index}, but did not say how many changes they \
                 carry",
                heard.primary_last_index,
                heard.primary_last_index - start_index
            ),
        )
    } else {
        // Every change the old primary had acknowledged when it was last heard has a revision
        // at most the one it stamped; this replica holds every change up to its own.
        let bound = heard.primary_revision.saturating_sub(start_revision);
        let mut text = format!(
            "up to {bound} acknowledged changes may be missing: the old primary had reached revision {} (index {}) \
             when last heard {heard_ms_ago} ms before the recovery, and this replica holds up to revision \
             {start_revision} (index {start_index})",
            heard.primary_revision, heard.primary_last_index
        );
        if heard.in_sync_set {
            text.push_str(
                "; it was in the synchronous set (available mode), so only writes acknowledged after the old primary \
                 could have demoted it (the sync timeout after it was last heard) can be missing",
            );
        } else {
            text.push_str("; writes the old primary acknowledged after it was last heard are not counted");
        }
        (bound, text)
    };
    tracing::error!(
        previous_epoch = started.previous_epoch,
        epoch = started.epoch,
        applied_before,
        tail_applied = started.tail_applied,
        start_index,
        start_revision,
        commit_heard,
        primary_last_index_heard = heard.primary_last_index,
        primary_revision_heard = heard.primary_revision,
        possibly_missing,
        leases_ended = started.leases_ended,
        "FORCED RECOVERY: this replica is now the only voter of epoch {}; {assessment}. Re-add the other replicas \
         with `tandem db add-replica`; replicas of epoch {} are fenced and must `tandem db rejoin`",
        started.epoch,
        started.previous_epoch
    );
    Ok(pb::RecoverResponse {
        previous_epoch: started.previous_epoch,
        epoch: started.epoch,
        applied_before,
        tail_applied: started.tail_applied,
        start_index,
        commit_heard,
        primary_last_index_heard: heard.primary_last_index,
        heard_ms_ago,
        was_in_sync_set: heard.in_sync_set,
        strict: heard.strict,
        possibly_missing,
        start_revision,
        primary_revision_heard: heard.primary_revision,
        assessment,
        leases_ended: started.leases_ended,
        bound_known,
    })
}

/// Rejoin of a fenced replica (`tandem db rejoin`).
pub async fn rejoin(core: &Arc<Core>, request: pb::RejoinRequest) -> Result<pb::RejoinResponse, Status> {
    let _swap = core.swap.lock().await;
    let fence = core.identity.fence();
    let mut primary = match (request.primary.is_empty(), &fence) {
        (false, _) => request.primary.clone(),
        (true, None) => {
            return Err(Status::failed_precondition(format!(
                "this replica is not fenced (it is in epoch {}, and no newer epoch has reached it): nothing to rejoin",
                core.identity.epoch()
            )))
        }
        (true, Some(fence)) if fence.primary_addr.is_empty() => {
            return Err(Status::invalid_argument(
                "the new primary is not known here: name it with --primary HOST:PORT",
            ))
        }
        (true, Some(fence)) => fence.primary_addr.clone(),
    };
    let mut status = probe(core, &primary).await?;
    if status.role != "primary" && !status.primary_addr.is_empty() {
        primary = status.primary_addr.clone();
        status = probe(core, &primary).await?;
    }
    let epoch = core.identity.epoch();
    if status.epoch <= epoch {
        return Err(Status::failed_precondition(format!(
            "replica at {primary} is in epoch {}, not newer than this replica's epoch {epoch}: nothing to rejoin",
            status.epoch
        )));
    }
    if status.role != "primary" {
        return Err(Status::unavailable(format!(
            "replica at {primary} is not the primary of epoch {}",
            status.epoch
        )));
    }
    let engine = core.engine()?;
    let old_kind = core.own_kind(&engine.raft.metrics().borrow());
    let kind: ReplicaKind = if request.kind.is_empty() {
        old_kind.unwrap_or(ReplicaKind::Sync)
    } else {
        request.kind.parse().map_err(refusal::invalid)?
    };
    let started = Instant::now();

    let _exclusive = core.write_fence.write().await;
    drop(engine);
    let Some(engine) = core.take_engine() else {
        return Err(Status::unavailable("no engine to stop"));
    };
    engine.stop().await;
    let dir = &core.config.data_dir;
    let dest = dir
        .join("quarantine")
        .join(format!("epoch-{epoch}-to-{}-{}", status.epoch, now_ms()));
    let quarantined = tandem_store::recovery::quarantine(dir, &engine.log, status.epoch_start_index, &dest)
        .await
        .map_err(|e| Status::internal(format!("cannot quarantine the old history (nothing was deleted): {e}")))?;
    drop(engine);
    tandem_store::recovery::wipe(dir).map_err(|e| Status::internal(format!("cannot remove the old history: {e}")))?;
    let restart_err = |e: crate::node::StartError| Status::internal(format!("cannot start the fresh store: {e}"));
    let store = OpenedStore::open(&core.config).await.map_err(restart_err)?;
    {
        let log = store.log.clone();
        let new_epoch = status.epoch;
        tokio::task::spawn_blocking(move || log.set_epoch(new_epoch))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("cannot record the new epoch: {e}")))?;
    }
    core.install(Engine::start(core, store).await.map_err(restart_err)?);
    tracing::warn!(
        new_epoch = status.epoch,
        dropped = quarantined.divergent_entries,
        first = ?quarantined.first_index,
        last = ?quarantined.last_index,
        quarantine = %quarantined.dir.display(),
        "rejoin: dropped {} entries of the superseded epoch past index {} (copies in {}); asking {primary} to add \
         this replica back as {kind}",
        quarantined.divergent_entries,
        status.epoch_start_index,
        quarantined.dir.display()
    );

    let channel = core
        .channels
        .channel(&primary)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let member = pb::Member {
        id: core.config.id,
        addr: core.config.advertise.clone(),
        kind: kind.to_string(),
    };
    let mut request = tonic::Request::new(pb::AddReplicaRequest { member: Some(member) });
    request.set_timeout(Duration::from_secs(120));
    match AdminClient::new(channel).add_replica(request).await {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => {
            return Err(Status::unavailable(format!(
                "the old history is quarantined in {} and this replica is pristine in epoch {}, but the primary \
                 did not add it back: {}; run `tandem db add-replica` on the primary",
                quarantined.dir.display(),
                core.identity.epoch(),
                status.message()
            )))
        }
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rejoined epoch {}",
        status.epoch
    );
    Ok(pb::RejoinResponse {
        epoch: status.epoch,
        primary,
        quarantine_dir: quarantined.dir.display().to_string(),
        divergent_entries: quarantined.divergent_entries,
        first_divergent_index: quarantined.first_index.unwrap_or(0),
        last_divergent_index: quarantined.last_index.unwrap_or(0),
    })
}
