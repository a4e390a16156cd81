//! Tandem's master Configuration Server (`tandem confserv --mode master`): the one component that
//! writes the configuration database. It holds the whole configuration in memory, validates
//! every change with the object model of `tandem-config`, writes it through the database in one
//! fenced transaction, and notifies its clients — numbered notifications with a history, so a
//! client that reconnects gets exactly what it missed.
//!
//! Layout:
//! - [`keys`]: the database keys and their encoding.
//! - [`record`]: [`record::LogRecord`], one numbered change: notification, history, audit.
//! - [`state`]: the configuration in memory, the ring of recent records, the broadcast of
//!   records applied.
//! - [`store`]: loading the configuration from the database at a consistent point, applying
//!   the change feed.
//! - [`plan`]: what a write would change — validation, permissions, mode — without effects.
//! - [`node`]: one server — its role in the primary/backup pair (the fenced lease), the write
//!   path, and the background tasks (following, lease, retention).
//! - [`auth`]: session tokens valid on both servers.
//! - [`service`]: the `ConfServ` gRPC service.
//! - [`server`]: [`serve`], with listener and shutdown injected.
//! - [`client`]: [`client::ConfClient`], the client library of both servers (CLI and tests).
//! - [`error`]: [`CfgError`] and its wire form.
//!
//! Architecture invariants:
//! - Only the lease holder writes, and every write carries the lease's fencing token: a server
//!   that lost the lease (paused, partitioned) cannot change anything, because the database
//!   refuses the token.
//! - Every change of the configuration is one database transaction that writes the objects, one
//!   record per object changed, and `cfg/meta/seq` under a compare-and-set: numbers are dense,
//!   ordered, and never reused; a change is acknowledged only after that transaction commits.
//! - The state in memory changes only by applying committed records, in number order.
//! - A password exists only as an argon2 hash; nothing sent to a client, logged or returned in
//!   an error contains a hash.

pub mod auth;
pub mod client;
pub mod error;
pub mod keys;
pub mod node;
pub mod plan;
pub mod record;
pub mod server;
pub mod service;
pub mod state;
pub mod store;

pub use error::CfgError;
pub use node::{Bootstrap, Node, Role, ServerConfig};
pub use server::{serve, ServeError};
