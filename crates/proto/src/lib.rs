//! Tandem's wire protocol: the protobuf messages and tonic service stubs of every gRPC link.
//!
//! - [`db`]: the configuration database — the client `Kv` service, the operator `Admin` service,
//!   and the replica-to-replica `Raft` service.
//!
//! Architecture invariant: generated code only, plus the names of the metadata keys that carry
//! structured error details. No behaviour lives here.

pub mod db {
    tonic::include_proto!("tandem.db.v1");

    /// Metadata key naming the kind of a refusal (values in [`error_code`]).
    pub const ERROR_CODE_KEY: &str = "tandem-error";
    /// Metadata key carrying the current primary's address, when known, on a `not-primary`
    /// refusal.
    pub const PRIMARY_ADDR_KEY: &str = "tandem-primary";
    /// Metadata key carrying the oldest revision still in the change history on a `compacted`
    /// refusal.
    pub const OLDEST_REVISION_KEY: &str = "tandem-oldest-revision";
    /// Metadata key carrying the refusing replica's epoch (on `wrong-cluster` and `fenced`).
    pub const EPOCH_KEY: &str = "tandem-epoch";

    /// Stable error codes carried in [`ERROR_CODE_KEY`].
    pub mod error_code {
        /// This replica is not the primary; retry at `tandem-primary` if present.
        pub const NOT_PRIMARY: &str = "not-primary";
        /// The watch start is older than the retained history: reload, then watch again.
        pub const COMPACTED: &str = "compacted";
        /// A witness holds no client data to serve.
        pub const WITNESS: &str = "witness";
        /// The write was proposed but its fate is not known (leadership lost while waiting).
        pub const OUTCOME_UNKNOWN: &str = "outcome-unknown";
        /// The replica set has not been initialised yet.
        pub const NOT_INITIALIZED: &str = "not-initialized";
        /// A peer message from another cluster or epoch.
        pub const WRONG_CLUSTER: &str = "wrong-cluster";
        /// This replica's epoch was superseded by a forced recovery elsewhere; it refuses to act
        /// until it rejoins. `tandem-primary` names the new primary when known.
        pub const FENCED: &str = "fenced";
    }
}
