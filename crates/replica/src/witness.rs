//! A witness votes and stores the log, but must not stay primary: it serves no client data.
//!
//! The witness campaigns only after a much longer timeout than the data replicas, so it leads
//! only when its log is longer than every surviving data replica's (the case where a plain
//! "witness never leads" rule would deadlock the election: the witness would refuse to vote for
//! a data replica that lacks its entries, and nobody else could win). While it leads, this task
//! waits until a sync replica has matched every entry, then asks that replica to campaign; the
//! replica wins with the witness's vote and holds everything the witness had.

use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, ServerState};
use tandem_store::{ReplicaKind, TypeConfig};

use crate::network::{call_peer, PeerCall, PeerCallSpec};
use crate::node::Core;

/// Runs for the life of the replica; acts only while this replica is a leading witness.
pub async fn run(core: Arc<Core>, raft: Raft<TypeConfig>) {
    let timers = core.config.effective_timers();
    let mut metrics = raft.metrics();
    loop {
        if metrics.changed().await.is_err() {
            return;
        }
        let m = metrics.borrow_and_update().clone();
        if m.state != ServerState::Leader || core.own_kind(&m) != Some(ReplicaKind::Witness) {
            continue;
        }
        let last = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let heir = membership.voter_ids().find_map(|id| {
            let node = membership.get_node(&id)?;
            let matched = m.replication.as_ref()?.get(&id).copied().flatten()?.index;
            (node.kind == ReplicaKind::Sync && matched >= last).then(|| (id, node.addr.clone()))
        });
        let Some((heir, addr)) = heir else { continue };
        tracing::info!(
            heir,
            last,
            "witness is primary; handing the role to a caught-up sync replica"
        );
        let asked: Result<Result<(), String>, _> = call_peer(
            &core.identity,
            &core.channels,
            PeerCallSpec {
                target: heir,
                addr: &addr,
                call: PeerCall::ElectNow,
                timeout: Duration::from_millis(timers.election_max_ms),
                stamp: None,
            },
            &(),
        )
        .await;
        if let Err(e) = asked {
            tracing::warn!(heir, error = %e, "witness hand-off request failed; will retry");
        }
        // The heir wins once this witness's leader lease lapses; give it that long before asking
        // again.
        tokio::time::sleep(Duration::from_millis(timers.election_max_ms)).await;
    }
}
