//! Tandem's replicated store, minus the network: the types every replica agrees on and the
//! on-disk Raft log and state machine, both in SQLite (WAL mode).
//!
//! Layout:
//! - [`types`]: the openraft type configuration, commands, results, replica kinds.
//! - [`log_store`]: the durable Raft log, vote and committed index (`log.db`).
//! - [`state_machine`]: keys, leases and the change history (`state.db`), snapshots, and the
//!   [`StateReader`] handle the services read through.
//! - [`snapshot_file`]: a snapshot's data as openraft reads and writes it: an open file.
//! - [`recovery`]: a new epoch on a survivor (forced recovery); quarantine before a rejoin.
//! - [`error`]: typed errors, among them why a data directory is refused at start.
//! - `db` (SQLite plumbing), `checkpoint` (background checkpoints of both files) and
//!   `read_pool` (the read connections, each on a thread of its own) are private; what the
//!   checkpoints have done is public ([`CheckpointCounts`], from the log store and the reader).
//!
//! Architecture invariant: this crate knows nothing of gRPC, sockets or clocks. Time enters only
//! as the `now_ms` a command carries, so every replica applies the same log to the same state.

mod checkpoint;
mod db;
pub mod error;
pub mod log_store;
mod read_pool;
pub mod recovery;
pub mod snapshot_file;
pub mod state_machine;
pub mod types;

pub use checkpoint::CheckpointCounts;
pub use error::{OpenError, StoreError};
pub use log_store::{AppendCounts, LogStore, OwnAppend};
pub use snapshot_file::SnapshotFile;
pub use state_machine::{StateMachine, StateReader};
pub use types::*;
