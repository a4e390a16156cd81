//! One replica of Tandem's configuration database (`tandem db serve`).
//!
//! Layout:
//! - [`config`]: what a replica is started with (identity, timers, sync policy, TLS).
//! - [`node`]: opens the store, starts openraft, serves the three gRPC services until shutdown.
//! - [`engine`]: the running node (openraft on the opened store); swapped when the epoch changes.
//! - [`epoch`]: forced recovery, fencing of a superseded epoch, rejoin.
//! - [`network`]: the client side of replica-to-replica traffic (openraft's `RaftNetwork`).
//! - [`raft_service`]: the server side of it; checks each message's cluster/epoch envelope.
//! - [`kv_service`]: the client API (reads, transactions, change feed, leases).
//! - [`watch`]: the change feed, one watch per stream (`Watch`) or many on one (`WatchMany`).
//! - [`admin_service`]: status, membership, switchover, snapshots.
//! - [`early_replication`]: a primary sends its new entries to its followers while it syncs
//!   them to its own log (openraft 0.9 would send them only after).
//! - [`proposer`]: group commit on the primary: concurrent client transactions proposed as one
//!   log entry.
//! - [`read_barrier`]: linearizable reads share leadership checks (one round at a time serves
//!   every read that arrived before it started).
//! - [`progress`]: the primary's view of each replica (lag in entries and ms, health) and the
//!   sync gate that holds a write's acknowledgement until every healthy sync replica has it.
//! - [`election`]: when a replica campaigns: after a silence, and only if a majority would vote
//!   for it (a pre-vote; openraft 0.9's timer elections stay off).
//! - [`failfast`]: a follower whose primary's port refuses connections (its process is gone)
//!   campaigns as soon as the voters' leader lease allows, not a whole election timeout later.
//! - [`witness`]: a witness that became primary hands the role to a caught-up data replica.
//! - [`snapshot_schedule`]: when this replica builds a snapshot (every so many entries, at
//!   indexes of its own, so the replicas of a set take turns).
//! - [`metrics_http`]: Prometheus `/metrics` (lag, health, demotions) on an optional HTTP port.
//! - [`refusal`]: the gRPC statuses replicas refuse with, with their stable error codes.
//!
//! Architecture invariant: consensus is openraft's; this crate decides only what openraft leaves
//! to the application — transport, who is waited for before an acknowledgement, and when to ask
//! for an election or a snapshot.

pub mod admin_service;
pub mod config;
pub mod early_replication;
pub mod election;
pub mod engine;
pub mod epoch;
pub mod failfast;
pub mod kv_service;
pub mod metrics_http;
pub mod network;
pub mod node;
pub mod progress;
pub mod proposer;
pub mod raft_service;
pub mod read_barrier;
pub mod refusal;
pub mod snapshot_schedule;
pub mod watch;
pub mod witness;

pub use config::{ReplicaConfig, SyncMode, Timers};
pub use node::{serve, serve_with_metrics, StartError};
