//! A witness votes and stores the log, but must not stay primary: it serves no client data.
//!
//! A witness never campaigns on its own timer (`enable_elect` stays off): a data replica normally
//! wins every election. But "never campaign" can deadlock: when the witness holds entries that the
//! surviving data replica lacks, it refuses that replica its vote (its log is shorter), and nobody
//! else can win. So this task watches for a missing primary: after two election timeouts without
//! one it lets the witness campaign; the witness (whose log is then the longest) wins, replicates
//! its entries to the data replicas, and hands the role over:
//!
//! 1. wait until a sync replica has matched every entry;
//! 2. stop heartbeats, so that the witness's leader lease lapses and it will grant a vote;
//! 3. after one election timeout ask that replica to campaign (`ElectNow`); it wins with the
//!    witness's vote and holds everything the witness had.
//!
//! Invariant: the witness campaigns only while no primary is known, and leads only until a data
//! replica has caught up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use tandem_store::{ReplicaKind, TypeConfig};

use crate::network::{call_peer, PeerCall, PeerCallSpec};
use crate::node::Core;
use crate::progress::Metrics;

/// Elections without a primary the witness waits before it may campaign.
const PATIENCE_ELECTIONS: u32 = 2;

/// Whether this replica acts as a witness (its command line says so, or its membership entry).
pub fn is_witness(core: &Core, metrics: &Metrics) -> bool {
    core.config.witness || core.own_kind(metrics) == Some(ReplicaKind::Witness)
}

/// Runs for the life of an engine; acts only while this replica is a witness.
pub async fn run(core: Arc<Core>, raft: Raft<TypeConfig>) {
    let timers = core.config.timers;
    let election_max = Duration::from_millis(timers.election_max_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(timers.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut campaigning = false;
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        if !is_witness(&core, &m) || core.identity.fence().is_some() {
            continue;
        }
        if m.state == ServerState::Leader {
            if campaigning {
                raft.runtime_config().elect(false);
                campaigning = false;
            }
            hand_over(&core, &raft, &m, election_max).await;
            continue;
        }
        // openraft keeps naming the last primary after it died; what tells that a primary is alive
        // is hearing from it (every AppendEntries, heartbeats included).
        let silent = {
            let heard = core.heard.lock().unwrap_or_else(|p| p.into_inner());
            heard.at.unwrap_or(started).max(started).elapsed()
        };
        let patience = election_max * PATIENCE_ELECTIONS;
        if silent <= patience {
            if campaigning {
                raft.runtime_config().elect(false);
                campaigning = false;
            }
        } else if !campaigning {
            tracing::warn!(
                silent_ms = silent.as_millis() as u64,
                "witness: no primary heard for {PATIENCE_ELECTIONS} election timeouts; campaigning in case its log is \
                 the longest (it will hand the role to a data replica)"
            );
            raft.runtime_config().elect(true);
            campaigning = true;
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
