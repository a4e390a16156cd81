//! Fast failover when the primary's process is gone.
//!
//! A follower campaigns on its own ([`crate::election`], as openraft 0.9's timer would) only after
//! the leader lease *and* an election timeout have passed since it last heard from the primary
//! (the lease is `election_timeout_max`, so with the default timers that is 1.2–1.6 s), and
//! openraft makes a voter refuse every vote request until its own lease has expired. When the primary's host is up but its process died (a crash, `kill -9`),
//! the wait is pointless: its port refuses connections. So a follower that has not heard from the
//! primary for two heartbeats connects to the primary's address once:
//!
//! - refused (`ECONNREFUSED`: nothing listens there) — the primary is gone. The follower tells
//!   [`Progress`] (so that, if it becomes primary, it does not wait for that replica to answer) and
//!   asks openraft to campaign as soon as the other voters' leases have expired: at the last
//!   message it heard plus `election_timeout_max`, plus a stagger by its rank among the voters so
//!   that two followers rarely split the vote;
//! - anything else (connected, timed out, unreachable) — nothing is concluded, and the usual
//!   timers decide. A lost host or a cut link never answers with a refusal, so this only ever
//!   makes an election earlier where the primary is certainly not running, never causes one.
//!
//! Safety does not depend on any of this: elections are openraft's, and a campaign that starts
//! too early is simply refused by the voters.

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};
use tandem_store::{ReplicaId, TypeConfig};

use crate::engine::Engine;
use crate::node::Core;
use crate::witness::is_witness;

/// Heartbeats without a message from the primary before its address is probed.
const SILENT_HEARTBEATS: u32 = 2;

/// Runs for the life of an engine.
pub async fn run(core: Arc<Core>, engine: Arc<Engine>) {
    let timers = core.config.timers;
    let heartbeat = Duration::from_millis(timers.heartbeat_ms);
    let lease = Duration::from_millis(timers.election_max_ms);
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The primary (by id) and the last message from it that was already probed.
    let mut probed: Option<(ReplicaId, Instant)> = None;
    loop {
        tick.tick().await;
        let m = engine.raft.metrics().borrow().clone();
        if !engine.is_ready()
            || core.identity.fence().is_some()
            || m.state != ServerState::Follower
            || is_witness(&core, &m)
            || !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == core.config.id)
        {
            continue;
        }
        let (Some(primary), Some(addr)) = (m.current_leader, core.primary_addr(&m)) else {
            continue;
        };
        let Some(heard_at) = core.heard.lock().unwrap_or_else(|p| p.into_inner()).at else {
            continue;
        };
        if heard_at.elapsed() < heartbeat * SILENT_HEARTBEATS || probed == Some((primary, heard_at)) {
            continue;
        }
        probed = Some((primary, heard_at));
        match tokio::time::timeout(heartbeat, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {}
            _ => continue,
        }
        // The voters other than the gone primary, by id: this replica's place among them staggers
        // the campaigns.
        let rank = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != primary)
            .position(|id| id == core.config.id)
            .unwrap_or(0) as u32;
        let at = heard_at + lease + heartbeat / 2 + heartbeat * rank;
        tracing::warn!(
            primary,
            addr,
            silent_ms = heard_at.elapsed().as_millis() as u64,
            campaign_in_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64,
            "the primary's port refuses connections: its process is gone. Campaigning as soon as the \
             other voters' leader lease expires"
        );
        engine.progress.mark_gone(primary);
        campaign_at(&core, &engine.raft, primary, heard_at, at).await;
    }
}

/// Asks openraft to campaign at `at`, unless a primary was heard from since `heard_at` or this
/// replica stopped being a follower of `gone`.
async fn campaign_at(core: &Core, raft: &Raft<TypeConfig>, gone: ReplicaId, heard_at: Instant, at: Instant) {
    tokio::time::sleep_until(at.into()).await;
    let heard_since = core.heard.lock().unwrap_or_else(|p| p.into_inner()).at != Some(heard_at);
    let m = raft.metrics().borrow().clone();
    if heard_since || m.state != ServerState::Follower || m.current_leader != Some(gone) {
        return;
    }
    tracing::info!(gone, "campaigning for primary: the primary's process is gone");
    if let Err(e) = raft.trigger().elect().await {
        tracing::warn!(error = %e, "could not start a campaign");
    }
}
