//! Tandem's wire protocol: the protobuf messages and tonic service stubs of every gRPC link.
//!
//! - [`db`]: the configuration database — the client `Kv` service, the operator `Admin` service,
//!   and the replica-to-replica `Raft` service.
//! - [`confserv`]: the Configuration Server's client service `ConfServ` (masters and proxies).
//!
//! Architecture invariant: generated code only, plus the names of the metadata keys that carry
//! structured error details and the conversion of a gRPC status to and from its message form
//! ([`db::StatusMessage`]). No other behaviour lives here.

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
    /// Metadata key carrying an epoch: on `wrong-cluster` the refusing replica's own, on `fenced`
    /// the newest it knows (so that an old-epoch peer learns it is superseded too).
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

    impl StatusMessage {
        /// `status` as a message, for a stream that must go on after it (a refused
        /// `AppendStream` request, an ended watch of `WatchMany`): its code, message and ASCII
        /// metadata.
        pub fn from_status(status: &tonic::Status) -> StatusMessage {
            use tonic::metadata::KeyAndValueRef;
            let metadata = status
                .metadata()
                .iter()
                .filter_map(|entry| match entry {
                    KeyAndValueRef::Ascii(key, value) => {
                        Some((key.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                    }
                    KeyAndValueRef::Binary(..) => None,
                })
                .collect();
            StatusMessage {
                code: status.code() as i32,
                message: status.message().to_owned(),
                metadata,
            }
        }

        /// The status this message stands for (metadata that is not valid is left out).
        pub fn into_status(self) -> tonic::Status {
            use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
            let mut metadata = MetadataMap::new();
            for (key, value) in self.metadata {
                if let (Ok(key), Ok(value)) = (key.parse::<MetadataKey<Ascii>>(), MetadataValue::try_from(value)) {
                    metadata.insert(key, value);
                }
            }
            tonic::Status::with_metadata(tonic::Code::from_i32(self.code), self.message, metadata)
        }
    }
}

pub mod confserv {
    tonic::include_proto!("tandem.confserv.v1");

    /// Metadata key naming the kind of a refusal (values in [`error_kind`]).
    pub const ERROR_KIND_KEY: &str = "tandem-cfg-error";
    /// Metadata key carrying the configuration model's stable code of a validation refusal
    /// (e.g. `duplicate_name`).
    pub const ERROR_CODE_KEY: &str = "tandem-cfg-code";
    /// Metadata key naming the field a refusal is about.
    pub const ERROR_FIELD_KEY: &str = "tandem-cfg-field";
    /// Metadata key carrying the primary's address on a `not-primary` refusal, when known.
    pub const PRIMARY_ADDR_KEY: &str = "tandem-cfg-primary";
    /// Metadata key carrying the server's last notification number on `reload-required`.
    pub const SEQ_KEY: &str = "tandem-cfg-seq";
    /// Metadata key of the session token (`Bearer TOKEN`).
    pub const AUTHORIZATION_KEY: &str = "authorization";

    /// Stable kinds of refusal carried in [`ERROR_KIND_KEY`].
    pub mod error_kind {
        /// The object or change is invalid (schema, references, unique names, cascade rules).
        pub const VALIDATION: &str = "validation";
        /// No such object (or not visible to the caller).
        pub const NOT_FOUND: &str = "not-found";
        /// The caller lacks the right.
        pub const PERMISSION: &str = "permission";
        /// No valid session token, or a bad user name or password.
        pub const UNAUTHENTICATED: &str = "unauthenticated";
        /// This server is not the primary; nothing was applied. Retry at `tandem-cfg-primary`.
        pub const NOT_PRIMARY: &str = "not-primary";
        /// The configuration is in read-only mode (or emergency mode and the caller is not a
        /// Super Administrator); nothing was applied.
        pub const READ_ONLY: &str = "read-only";
        /// The notification history no longer covers the number given: read everything again.
        pub const RELOAD_REQUIRED: &str = "reload-required";
        /// The object changed since the version the caller gave; nothing was applied.
        pub const CONFLICT: &str = "conflict";
        /// A malformed request (bad JSON, unknown type, …).
        pub const BAD_REQUEST: &str = "bad-request";
        /// The request or the change it makes exceeds a limit.
        pub const TOO_LARGE: &str = "too-large";
        /// The database could not be reached; nothing was applied.
        pub const UNAVAILABLE: &str = "unavailable";
        /// The write was sent to the database and its fate is not known.
        pub const OUTCOME_UNKNOWN: &str = "outcome-unknown";
        /// A proxy has no master to forward the write to (limited mode); nothing was applied.
        pub const LIMITED_MODE: &str = "limited-mode";
        /// A proxy that holds only some tenants was asked for an object, a tenant, a login or a
        /// subscription outside them; ask a server that holds it (a master holds everything).
        pub const NOT_HELD: &str = "not-held";
    }

    /// Kinds of notification that are not changes of the configuration.
    pub mod notification_kind {
        /// The history is replayed; what follows is new.
        pub const LIVE: &str = "live";
        /// A proxy's mode changed (normal / limited).
        pub const PROXY_MODE: &str = "proxy_mode";
    }
}
