//! The gRPC statuses a replica refuses with. Each carries a stable code in the `tandem-error`
//! metadata key so that clients act on the kind of refusal, never on message text.

use tandem_proto::db::{error_code, EPOCH_KEY, ERROR_CODE_KEY, OLDEST_REVISION_KEY, PRIMARY_ADDR_KEY};
use tandem_store::Fence;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

fn coded(code: Code, error_code: &'static str, message: String) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERROR_CODE_KEY, MetadataValue::from_static(error_code));
    status
}

fn with_primary(mut status: Status, primary_addr: Option<&str>) -> Status {
    if let Some(value) = primary_addr.and_then(|addr| MetadataValue::try_from(addr).ok()) {
        status.metadata_mut().insert(PRIMARY_ADDR_KEY, value);
    }
    status
}

/// This replica is not the primary; nothing was done, so a retry elsewhere is safe.
pub fn not_primary(primary_addr: Option<&str>) -> Status {
    let message = match primary_addr {
        Some(addr) => format!("not the primary; the primary is at {addr}"),
        None => "not the primary, and no primary is known right now".to_owned(),
    };
    with_primary(coded(Code::Unavailable, error_code::NOT_PRIMARY, message), primary_addr)
}

/// A witness serves no client data; nothing was done.
pub fn witness(primary_addr: Option<&str>) -> Status {
    let message = "this replica is a witness and serves no client requests".to_owned();
    with_primary(coded(Code::Unavailable, error_code::WITNESS, message), primary_addr)
}

/// The write may or may not have been applied; only an idempotent (compare-and-set) retry is safe.
pub fn outcome_unknown(reason: impl std::fmt::Display) -> Status {
    coded(
        Code::Unavailable,
        error_code::OUTCOME_UNKNOWN,
        format!("outcome unknown: {reason}; the write may or may not be applied, retry only with a compare-and-set"),
    )
}

/// The change history no longer reaches back to the requested revision.
pub fn compacted(requested: u64, oldest: u64) -> Status {
    let mut status = coded(
        Code::OutOfRange,
        error_code::COMPACTED,
        format!("compacted, resync needed: changes after revision {requested} are no longer all kept (oldest kept: {oldest})"),
    );
    if let Ok(value) = MetadataValue::try_from(oldest.to_string()) {
        status.metadata_mut().insert(OLDEST_REVISION_KEY, value);
    }
    status
}

pub fn not_initialized() -> Status {
    coded(
        Code::Unavailable,
        error_code::NOT_INITIALIZED,
        "this replica has not joined a replica set yet (run `tandem db init`, or add it from the primary)".to_owned(),
    )
}

/// A peer message for another cluster, replica or epoch. Carries this replica's epoch (and the
/// primary it knows), so that a sender of an older epoch learns it is superseded.
pub fn wrong_cluster(message: String, own_epoch: u64, primary_addr: Option<&str>) -> Status {
    let mut status = coded(Code::FailedPrecondition, error_code::WRONG_CLUSTER, message);
    insert_epoch(&mut status, own_epoch);
    with_primary(status, primary_addr)
}

/// This replica's epoch was superseded; it does nothing until it rejoins.
pub fn fenced(own_epoch: u64, fence: &Fence) -> Status {
    let primary = (!fence.primary_addr.is_empty()).then_some(fence.primary_addr.as_str());
    let message = match primary {
        Some(addr) => format!(
            "fenced: epoch {own_epoch} superseded by {}; the primary is at {addr}",
            fence.epoch
        ),
        None => format!(
            "fenced: epoch {own_epoch} superseded by {}; the new primary is not known here",
            fence.epoch
        ),
    };
    let mut status = coded(Code::Unavailable, error_code::FENCED, message);
    // The newest epoch known, so that a peer of the old epoch that reaches this replica learns
    // it is superseded too.
    insert_epoch(&mut status, fence.epoch);
    with_primary(status, primary)
}

fn insert_epoch(status: &mut Status, epoch: u64) {
    if let Ok(value) = MetadataValue::try_from(epoch.to_string()) {
        status.metadata_mut().insert(EPOCH_KEY, value);
    }
}

pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::db::StatusMessage;

    #[test]
    fn a_refusal_sent_as_a_message_is_the_same_status_again() {
        let fence = Fence {
            epoch: 7,
            primary_addr: "10.0.0.1:2379".into(),
        };
        let status = fenced(6, &fence);
        let again = StatusMessage::from_status(&status).into_status();
        assert_eq!(again.code(), Code::Unavailable);
        assert_eq!(again.message(), status.message());
        for key in [ERROR_CODE_KEY, EPOCH_KEY, PRIMARY_ADDR_KEY] {
            assert_eq!(again.metadata().get(key), status.metadata().get(key), "{key}");
        }
        assert_eq!(again.metadata().get(EPOCH_KEY).and_then(|v| v.to_str().ok()), Some("7"));
    }
}
