//! A witness votes and stores the log, but must not stay primary: it serves no client data.
//!
//! A witness campaigns later than a data replica ([`crate::election::WITNESS_PATIENCE`] leader
//! leases of silence instead of one), so a data replica normally wins every election. But a
//! witness that never campaigned could deadlock the set: when it holds entries that the
//! surviving data replica lacks, it refuses that replica its vote (its log is shorter), and
//! nobody else can win. So it does campaign after the longer silence (through the same pre-vote
//! as any replica); it wins, replicates its entries to the data replicas, and this task hands
//! the role over:
//!
//! 1. wait until a sync replica has matched every entry;
//! 2. stop heartbeats, so that the witness's leader lease lapses and it will grant a vote;
//! 3. after one election timeout ask that replica to campaign (`ElectNow`); it wins with the
//!    witness's vote and holds everything the witness had.
//!
//! Invariant: the witness campaigns only while no primary is known, and leads only until a data
//! replica has caught up.

use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, ServerState};
use tandem_store::{ReplicaKind, TypeConfig};

use crate::network::{call_peer, PeerCall, PeerCallSpec};
use crate::node::Core;
use crate::progress::Metrics;

/// Whether this replica acts as a witness (its command line says so, or its membership entry).
pub fn is_witness(core: &Core, metrics: &Metrics) -> bool {
    core.config.witness || core.own_kind(metrics) == Some(ReplicaKind::Witness)
}

/// Runs for the life of an engine; acts only while this replica is a witness and primary.
pub async fn run(core: Arc<Core>, raft: Raft<TypeConfig>) {
    let timers = core.config.timers;
    let election_max = Duration::from_millis(timers.election_max_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(timers.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        if m.state == ServerState::Leader && is_witness(&core, &m) && core.identity.fence().is_none() {
            hand_over(&core, &raft, &m, election_max).await;
        }
    }
}

/// While the witness leads: once a sync replica has every entry, let the lease lapse and ask that
/// replica to campaign.
async fn hand_over(core: &Core, raft: &Raft<TypeConfig>, m: &Metrics, election_max: Duration) {
    let last = m.last_log_index.unwrap_or(0);
    let membership = m.membership_config.membership();
    let heir = membership.voter_ids().find_map(|id| {
        let node = membership.get_node(&id)?;
        let matched = m.replication.as_ref()?.get(&id).copied().flatten()?.index;
        (node.kind == ReplicaKind::Sync && matched >= last).then(|| (id, node.addr.clone()))
    });
    let Some((heir, addr)) = heir else { return };
    tracing::info!(
        heir,
        last,
        "witness is primary; handing the role to a caught-up sync replica"
    );
    raft.runtime_config().heartbeat(false);
    tokio::time::sleep(election_max).await;
    let spec = PeerCallSpec {
        target: heir,
        addr: &addr,
        call: PeerCall::ElectNow,
        timeout: election_max,
        stamp: None,
    };
    let asked: Result<Result<(), String>, _> = call_peer(&core.identity, &core.channels, spec, &()).await;
    if let Err(e) = asked {
        tracing::warn!(heir, error = %e, "witness hand-off request failed; will retry");
    }
    let handed = raft
        .wait(Some(election_max * 2))
        .metrics(|m| m.state != ServerState::Leader, "witness no longer primary")
        .await;
    raft.runtime_config().heartbeat(true);
    if handed.is_ok() {
        tracing::info!(heir, "witness handed the primary role over");
    }
}
