//! Tandem's Configuration Servers. The master (`tandem confserv --mode master`) is the one
//! component that writes the configuration database. It holds the whole configuration in
//! memory, validates every change with the object model of `tandem-config`, writes it through
//! the database in one fenced transaction, and notifies its clients — numbered notifications
//! with a history, so a client that reconnects gets exactly what it missed. The proxy
//! (`tandem confserv --mode proxy`) serves a site's clients from a copy it keeps current from
//! the primary master, and keeps serving them, in limited mode, while no master is reachable.
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
//! - [`proxy`]: a Configuration Server Proxy — a copy of the configuration loaded from the
//!   primary master and kept current over a heartbeated link, serving the same API, with
//!   writes forwarded, and a limited mode while no master is reachable.
//! - [`auth`]: session tokens valid on every server.
//! - [`service`]: the `ConfServ` gRPC service, of masters and proxies alike.
//! - [`mux`]: `SubscribeMany`, many subscriptions on one stream, each notification sent once
//!   for all the subscriptions it is for.
//! - [`server`]: [`serve`] and [`serve_proxy`], with listeners and shutdown injected.
//! - [`metrics`]: Prometheus metrics over HTTP, read from the status and activity counters.
//! - [`client`]: [`client::ConfClient`], the client library of a pair of masters or proxies.
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
pub mod metrics;
pub mod mux;
pub mod node;
pub mod plan;
pub mod proxy;
pub mod record;
pub mod server;
pub mod service;
pub mod state;
pub mod store;

pub use error::CfgError;
pub use node::{Bootstrap, Node, Role, ServerConfig};
pub use proxy::{Proxy, ProxyConfig};
pub use server::{serve, serve_proxy, Listeners, ServeError};
