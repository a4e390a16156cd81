//! Where the configuration lives in the database: every key the server reads or writes, and how
//! the values are encoded. Everything is under `cfg/`, so one watch of that prefix follows it all.
//!
//! - `cfg/obj/{type}/{dbid:020}` → the object as JSON (a `tandem_config::ConfigObject`); the
//!   key's database version equals the object's `version`.
//! - `cfg/log/{seq:020}` → one notification and audit record ([`crate::record::LogRecord`]),
//!   numbered densely from 1; records below `cfg/meta/log-first` were removed by retention.
//! - `cfg/meta/seq` → the last notification number (decimal). Every change of the configuration
//!   writes it, with a compare-and-set on its version, so numbers have no gap and no duplicate.
//! - `cfg/meta/dbid/{type}` → the last DBID allocated for the type (decimal); DBIDs are never
//!   reused, even after the object with the highest one is deleted.
//! - `cfg/meta/mode` → `normal`, `read_only` or `emergency`.
//! - `cfg/meta/session-key` → the key (hex) that signs session tokens, shared by both servers.
//! - `cfg/meta/log-first` → the oldest record number retention kept (decimal).
//! - `cfg/meta/barrier` → written only to settle the fate of a write whose answer was lost.

use tandem_config::ObjectType;

/// The prefix of everything the configuration server stores.
pub const PREFIX: &str = "cfg/";
/// Prefix of the objects.
pub const OBJ_PREFIX: &str = "cfg/obj/";
/// Prefix of the server's bookkeeping keys.
pub const META_PREFIX: &str = "cfg/meta/";
/// Prefix of the notification and audit records.
pub const LOG_PREFIX: &str = "cfg/log/";
/// The last notification number.
pub const SEQ: &str = "cfg/meta/seq";
/// The configuration mode.
pub const MODE: &str = "cfg/meta/mode";
/// The session-token signing key.
pub const SESSION_KEY: &str = "cfg/meta/session-key";
/// The oldest record kept.
pub const LOG_FIRST: &str = "cfg/meta/log-first";
/// Settles a write of unknown outcome.
pub const BARRIER: &str = "cfg/meta/barrier";
/// Prefix of the DBID counters.
pub const DBID_PREFIX: &str = "cfg/meta/dbid/";
/// The database lease the two master servers compete for.
pub const LEASE_NAME: &str = "confserv/master";
/// Records per block of the log (a block is one range read: the keys share a prefix).
pub const LOG_BLOCK: u64 = 1000;

/// The key of an object.
pub fn object(object_type: ObjectType, dbid: u64) -> String {
    format!("{OBJ_PREFIX}{object_type}/{dbid:020}")
}

/// The type and DBID of an object key.
pub fn parse_object(key: &str) -> Option<(ObjectType, u64)> {
    let rest = key.strip_prefix(OBJ_PREFIX)?;
    let (t, dbid) = rest.split_once('/')?;
    Some((t.parse().ok()?, dbid.parse().ok()?))
}

/// The key of a DBID counter.
pub fn dbid_counter(object_type: ObjectType) -> String {
    format!("{DBID_PREFIX}{object_type}")
}

/// The type of a DBID counter key.
pub fn parse_dbid_counter(key: &str) -> Option<ObjectType> {
    key.strip_prefix(DBID_PREFIX)?.parse().ok()
}

/// The key of a record.
pub fn log(seq: u64) -> String {
    format!("{LOG_PREFIX}{seq:020}")
}

/// The number of a record key.
pub fn parse_log(key: &str) -> Option<u64> {
    key.strip_prefix(LOG_PREFIX)?.parse().ok()
}

/// The prefix shared by the keys of the records of block `seq / LOG_BLOCK`.
pub fn log_block_prefix(seq: u64) -> String {
    format!("{LOG_PREFIX}{:017}", seq / LOG_BLOCK)
}

/// A decimal counter value.
pub fn parse_u64(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_number() {
        assert_eq!(parse_object(&object(ObjectType::Dn, 42)), Some((ObjectType::Dn, 42)));
        assert_eq!(parse_log(&log(7)), Some(7));
        assert!(log(9) < log(10));
        assert!(log(999).starts_with(&log_block_prefix(999)));
        assert!(!log(1000).starts_with(&log_block_prefix(999)));
        assert_eq!(
            parse_dbid_counter(&dbid_counter(ObjectType::AccessGroup)),
            Some(ObjectType::AccessGroup)
        );
        assert_eq!(parse_object("cfg/obj/nope/1"), None);
    }
}
