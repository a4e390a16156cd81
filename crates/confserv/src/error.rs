//! [`CfgError`]: why the server refused a request, and how a refusal travels as a gRPC status
//! (its kind in `tandem-cfg-error`, see [`tandem_proto::confserv::error_kind`]).

use tandem_config::ConfigError;
use tandem_proto::confserv::{self as pb, error_kind};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::record::Mode;

/// A refusal. Unless it is [`CfgError::OutcomeUnknown`], nothing was written.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CfgError {
    /// The configuration model refused the change or could not find the object.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// This server does not hold the lease.
    #[error("not the primary configuration server{}", primary_text(.primary))]
    NotPrimary {
        /// The primary's address, when known.
        primary: Option<String>,
    },
    /// The mode forbids the write.
    #[error("the configuration is in {mode} mode: {reason}")]
    ReadOnly {
        /// The mode.
        mode: Mode,
        /// Who may still write.
        reason: &'static str,
    },
    /// No valid session.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller lacks a right the model does not name (e.g. switching the mode).
    #[error("permission denied: {0}")]
    Permission(String),
    /// The history does not cover the number a client resumes from.
    #[error("reload required: {reason}")]
    ReloadRequired {
        /// Why.
        reason: String,
        /// The server's last notification number.
        seq: u64,
    },
    /// The object is not at the version the client expected.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Malformed request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Over a limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The database could not be reached, or the server is not ready; nothing was written.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A proxy without a master refuses writes; nothing was applied.
    #[error(
        "limited mode since {since_ms} (ms since the epoch): {reason}; writes are refused until this proxy reaches \
         the master again"
    )]
    LimitedMode {
        /// Why the proxy has no master.
        reason: String,
        /// Since when, in ms since the epoch.
        since_ms: u64,
    },
    /// A proxy of some tenants was asked for what it does not hold.
    #[error("not held by this proxy: {what}; it holds only {held}: ask a server that holds it")]
    NotHeld {
        /// What was asked for.
        what: String,
        /// What the proxy holds (`tenants "a" and the environment`).
        held: String,
    },
}

fn primary_text(primary: &Option<String>) -> String {
    match primary {
        Some(addr) => format!("; the primary is {addr}"),
        None => "; no primary is known right now".to_owned(),
    }
}

impl CfgError {
    /// The stable kind (`tandem-cfg-error`).
    pub fn kind(&self) -> &'static str {
        match self {
            CfgError::Config(ConfigError::NotFound { .. }) => error_kind::NOT_FOUND,
            CfgError::Config(ConfigError::AccessDenied { .. }) => error_kind::PERMISSION,
            CfgError::Config(ConfigError::UnknownObjectType { .. }) => error_kind::BAD_REQUEST,
            CfgError::Config(ConfigError::StalePlan { .. }) => error_kind::CONFLICT,
            CfgError::Config(_) => error_kind::VALIDATION,
            CfgError::NotPrimary { .. } => error_kind::NOT_PRIMARY,
            CfgError::ReadOnly { .. } => error_kind::READ_ONLY,
            CfgError::Unauthenticated(_) => error_kind::UNAUTHENTICATED,
            CfgError::Permission(_) => error_kind::PERMISSION,
            CfgError::ReloadRequired { .. } => error_kind::RELOAD_REQUIRED,
            CfgError::Conflict(_) => error_kind::CONFLICT,
            CfgError::BadRequest(_) => error_kind::BAD_REQUEST,
            CfgError::TooLarge(_) => error_kind::TOO_LARGE,
            CfgError::Unavailable(_) => error_kind::UNAVAILABLE,
            CfgError::OutcomeUnknown(_) => error_kind::OUTCOME_UNKNOWN,
            CfgError::LimitedMode { .. } => error_kind::LIMITED_MODE,
            CfgError::NotHeld { .. } => error_kind::NOT_HELD,
        }
    }

    fn code(&self) -> Code {
        match self {
            CfgError::Config(ConfigError::NotFound { .. }) | CfgError::NotHeld { .. } => Code::NotFound,
            CfgError::Config(ConfigError::AccessDenied { .. }) | CfgError::Permission(_) => Code::PermissionDenied,
            CfgError::Config(ConfigError::UnknownObjectType { .. }) | CfgError::BadRequest(_) => Code::InvalidArgument,
            CfgError::Config(_) => Code::FailedPrecondition,
            CfgError::NotPrimary { .. } | CfgError::Unavailable(_) | CfgError::LimitedMode { .. } => Code::Unavailable,
            CfgError::ReadOnly { .. } => Code::FailedPrecondition,
            CfgError::Unauthenticated(_) => Code::Unauthenticated,
            CfgError::ReloadRequired { .. } => Code::OutOfRange,
            CfgError::Conflict(_) => Code::Aborted,
            CfgError::TooLarge(_) => Code::ResourceExhausted,
            CfgError::OutcomeUnknown(_) => Code::Unknown,
        }
    }

    /// The gRPC status carrying this refusal.
    pub fn to_status(&self) -> Status {
        let mut status = Status::new(self.code(), self.to_string());
        let metadata = status.metadata_mut();
        metadata.insert(pb::ERROR_KIND_KEY, MetadataValue::from_static(self.kind()));
        if let CfgError::Config(e) = self {
            metadata.insert(pb::ERROR_CODE_KEY, MetadataValue::from_static(e.code()));
            if let Some(value) = e.field().and_then(|f| MetadataValue::try_from(f).ok()) {
                metadata.insert(pb::ERROR_FIELD_KEY, value);
            }
        }
        if let CfgError::NotPrimary { primary: Some(addr) } = self {
            if let Ok(value) = MetadataValue::try_from(addr.as_str()) {
                metadata.insert(pb::PRIMARY_ADDR_KEY, value);
            }
        }
        if let CfgError::ReloadRequired { seq, .. } = self {
            if let Ok(value) = MetadataValue::try_from(seq.to_string()) {
                metadata.insert(pb::SEQ_KEY, value);
            }
        }
        status
    }
}

impl From<CfgError> for Status {
    fn from(e: CfgError) -> Status {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_config::ObjectType;

    #[test]
    fn statuses_carry_kind_code_and_field() {
        let e = CfgError::Config(ConfigError::MissingField {
            object: tandem_config::ObjectRef::key(ObjectType::Host, 3),
            field: "ip_address".into(),
        });
        let s = e.to_status();
        assert_eq!(s.metadata().get(pb::ERROR_KIND_KEY).unwrap(), "validation");
        assert_eq!(s.metadata().get(pb::ERROR_CODE_KEY).unwrap(), "missing_field");
        assert_eq!(s.metadata().get(pb::ERROR_FIELD_KEY).unwrap(), "ip_address");
        assert!(s.message().contains("ip_address"));
        let s = CfgError::NotPrimary {
            primary: Some("127.0.0.1:9".into()),
        }
        .to_status();
        assert_eq!(s.metadata().get(pb::PRIMARY_ADDR_KEY).unwrap(), "127.0.0.1:9");
        assert_eq!(s.metadata().get(pb::ERROR_KIND_KEY).unwrap(), "not-primary");
    }
}
