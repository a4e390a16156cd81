//! Tandem's configuration object model: the typed objects a Configuration Server serves, their
//! schema and validation, the in-memory configuration with its indexes, permissions, password
//! hashing, and import/export of portable documents.
//!
//! Layout:
//! - [`model`]: object types, [`ConfigObject`], [`Value`], the environment constants.
//! - [`schema`]: the per-type field table ([`schema::TYPES`]) everything else reads.
//! - [`set`]: [`ConfigSet`], its indexes, validated create/update/delete planned into [`Change`]
//!   records, and unvalidated replay of committed records.
//! - [`delta`]: [`Delta`], what an update changes.
//! - [`query`]: [`Query`] and [`Page`].
//! - [`validate`]: the rules an object obeys against the schema and the set.
//! - [`access`]: rights, grants, [`access::allowed`], read filtering, [`access::bootstrap`].
//! - [`password`]: argon2 hashing of passwords.
//! - [`document`]: [`document::export`] and [`document::import`]; documents as JSON or YAML.
//! - [`error`]: [`ConfigError`], naming the object and field of every refusal.
//!
//! Architecture invariants: this crate does no I/O — no networking, no async, no storage, no
//! clock. The configuration server allocates DBIDs, stores the [`Change`] records an operation
//! plans, and replays committed records with [`ConfigSet::apply`]. Every mutating operation is
//! all or nothing: it is validated in full before anything changes.

#![warn(missing_docs)]

pub mod access;
pub mod delta;
pub mod document;
pub mod error;
pub mod model;
pub mod password;
pub mod query;
pub mod schema;
pub mod set;
pub mod validate;

pub use access::{Grant, Principal, Right};
pub use delta::{Delta, SectionsDelta};
pub use document::{Document, ImportPlan, TextFormat};
pub use error::{ConfigError, IndexInconsistency, ObjectRef};
pub use model::{ConfigObject, Fields, ObjectKey, ObjectType, State, Value, ENVIRONMENT_TENANT, SUPER_ADMINISTRATORS};
pub use query::{NameMatch, Page, PageItems, Query};
pub use set::{Change, ConfigSet, Link};
