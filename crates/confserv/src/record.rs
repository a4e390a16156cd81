//! The records of the configuration's history: one [`LogRecord`] per notification number,
//! stored at `cfg/log/{seq}` in the same database transaction as the change it describes. The
//! same records are the notifications clients receive (as [`pb::Notification`]), the history a
//! reconnecting client catches up from, what a backup server replays to stay current, and the
//! audit trail (who, when, what, previous values).

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use tandem_config::{schema, Change, ConfigObject, Delta, ObjectType};
use tandem_proto::confserv as pb;

/// The configuration's mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Writes as permissions allow.
    #[default]
    Normal,
    /// Every write refused (except switching the mode back, by a Super Administrator).
    ReadOnly,
    /// Only Super Administrators may write.
    Emergency,
}

impl Mode {
    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::ReadOnly => "read_only",
            Mode::Emergency => "emergency",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Mode::Normal),
            "read_only" | "read-only" => Ok(Mode::ReadOnly),
            "emergency" => Ok(Mode::Emergency),
            other => Err(format!("unknown mode {other:?} (normal, read_only or emergency)")),
        }
    }
}

/// Who made a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// The person's DBID; 0 = the server itself (bootstrap).
    pub person: u64,
    /// The person's user name, as it was then.
    pub user: String,
}

/// What one record says happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum What {
    /// An object was created.
    Created {
        /// The object as stored.
        object: ConfigObject,
    },
    /// An object was changed.
    Changed {
        /// The object after the change.
        object: ConfigObject,
        /// The object before it (the audit's previous values).
        previous: ConfigObject,
    },
    /// An object was deleted.
    Deleted {
        /// The object as it was.
        previous: ConfigObject,
    },
    /// The mode was switched.
    Mode {
        /// The new mode.
        mode: Mode,
        /// The mode before.
        previous: Mode,
    },
}

/// One numbered record of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The notification number: dense, from 1, in commit order.
    pub seq: u64,
    /// The first and last numbers of the transaction this record belongs to.
    pub txn_first: u64,
    /// See `txn_first`.
    pub txn_last: u64,
    /// The primary's clock when it committed, in ms since the epoch.
    pub when_ms: u64,
    /// Who asked for the change.
    pub who: Who,
    /// What the client asked for, in words (e.g. `delete application 5 with cascade`).
    pub op: String,
    /// Random, per transaction: lets the writer recognise its own transaction when the
    /// database's answer was lost.
    pub write_id: u64,
    /// The client's id of the request (empty when it gave none): a request sent again is
    /// answered from the record instead of applied twice.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The master that committed it and the fencing token of its lease (`NAME#TOKEN`): the
    /// history shows one writer at a time, each token's records after the previous one's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
    /// What happened.
    pub what: What,
    /// Its notification, made on first use: a change committed while thousands of clients
    /// subscribe is serialized once, not once per subscriber.
    #[serde(skip)]
    pub cached: CachedNotification,
}

/// A record's notification once made. Not part of the record's value: two records are equal
/// whether or not either has made its notification yet.
#[derive(Clone, Default)]
pub struct CachedNotification(OnceLock<Arc<pb::Notification>>);

impl PartialEq for CachedNotification {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CachedNotification {}

impl fmt::Debug for CachedNotification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CachedNotification")
    }
}

impl LogRecord {
    /// The change to replay on a copy of the configuration, if the record changes an object.
    pub fn change(&self) -> Option<Change> {
        match &self.what {
            What::Created { object } => Some(Change::Create(object.clone())),
            What::Changed { object, .. } => Some(Change::Update(object.clone())),
            What::Deleted { previous } => Some(Change::Delete {
                object_type: previous.object_type,
                dbid: previous.dbid,
                version: previous.version,
            }),
            What::Mode { .. } => None,
        }
    }

    /// The object the record is about (its new state, or its last one when deleted).
    pub fn object(&self) -> Option<&ConfigObject> {
        match &self.what {
            What::Created { object } | What::Changed { object, .. } => Some(object),
            What::Deleted { previous } => Some(previous),
            What::Mode { .. } => None,
        }
    }

    /// The kind, as clients see it.
    pub fn kind(&self) -> &'static str {
        match self.what {
            What::Created { .. } => "created",
            What::Changed { .. } => "changed",
            What::Deleted { .. } => "deleted",
            What::Mode { .. } => "mode",
        }
    }

    /// A copy without secret fields (password hashes), for readers.
    pub fn redacted(&self) -> LogRecord {
        let mut copy = self.clone();
        copy.what = match &self.what {
            What::Created { object } => What::Created {
                object: object.without_secrets().into_owned(),
            },
            What::Changed { object, previous } => What::Changed {
                object: object.without_secrets().into_owned(),
                previous: previous.without_secrets().into_owned(),
            },
            What::Deleted { previous } => What::Deleted {
                previous: previous.without_secrets().into_owned(),
            },
            mode @ What::Mode { .. } => mode.clone(),
        };
        copy
    }

    /// The notification a client receives (secret fields removed).
    pub fn notification(&self) -> pb::Notification {
        Arc::unwrap_or_clone(self.notification_in(0))
    }

    /// The notification of this record in the history of `epoch`, shared by every subscriber
    /// it is for (made once for the first epoch asked, which is every subscriber's but across
    /// an epoch change).
    pub fn notification_in(&self, epoch: u64) -> Arc<pb::Notification> {
        let cached = self.cached.0.get_or_init(|| {
            let mut n = self.make_notification();
            n.epoch = epoch;
            Arc::new(n)
        });
        if cached.epoch == epoch {
            return cached.clone();
        }
        let mut n = pb::Notification::clone(cached);
        n.epoch = epoch;
        Arc::new(n)
    }

    fn make_notification(&self) -> pb::Notification {
        let mut n = pb::Notification {
            seq: self.seq,
            kind: self.kind().to_owned(),
            person: self.who.person,
            user: self.who.user.clone(),
            when_ms: self.when_ms,
            txn_first_seq: self.txn_first,
            txn_last_seq: self.txn_last,
            ..Default::default()
        };
        match &self.what {
            What::Created { object } => {
                set_object(&mut n, object);
                n.object_json = to_json(&object.without_secrets());
            }
            What::Changed { object, previous } => {
                set_object(&mut n, object);
                n.object_json = to_json(&object.without_secrets());
                n.delta_json = to_json(&redacted_delta(object.object_type, Delta::between(previous, object)));
            }
            What::Deleted { previous } => {
                set_object(&mut n, previous);
                n.version = 0;
            }
            What::Mode { mode, .. } => n.mode = mode.name().to_owned(),
        }
        n
    }
}

fn set_object(n: &mut pb::Notification, object: &ConfigObject) {
    n.object_type = object.object_type.name().to_owned();
    n.dbid = object.dbid;
    n.name = object.name.clone();
    n.version = object.version;
}

/// `delta` without the values of secret fields: a changed password shows as nothing.
pub fn redacted_delta(object_type: ObjectType, mut delta: Delta) -> Delta {
    delta.set_fields.retain(|name, _| !schema::is_secret(object_type, name));
    delta.unset_fields.retain(|name| !schema::is_secret(object_type, name));
    delta
}

/// JSON of a plain data type (cannot fail: string keys, no custom serializers).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person() -> ConfigObject {
        ConfigObject::new(ObjectType::Person, 5, "ann", 1)
            .with_field("user_name", "ann")
            .with_field(
                "password_hash",
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
            )
    }

    fn record(what: What) -> LogRecord {
        LogRecord {
            seq: 3,
            txn_first: 3,
            txn_last: 3,
            when_ms: 1,
            who: Who {
                person: 1,
                user: "admin".into(),
            },
            op: "test".into(),
            write_id: 9,
            request_id: String::new(),
            writer: String::new(),
            what,
            cached: Default::default(),
        }
    }

    #[test]
    fn a_notification_is_made_once_and_shared_in_its_epoch() {
        let created = record(What::Created { object: person() });
        let first = created.notification_in(4);
        let again = created.notification_in(4);
        assert!(
            Arc::ptr_eq(&first, &again),
            "one notification shared by every subscriber"
        );
        assert_eq!(first.epoch, 4);
        let other = created.notification_in(5);
        assert_eq!(other.epoch, 5, "another epoch gets its own copy");
        assert_eq!(
            pb::Notification {
                epoch: 4,
                ..(*other).clone()
            },
            *first,
            "and nothing else differs"
        );
        assert!(
            Arc::ptr_eq(&created.notification_in(4), &first),
            "the shared one is kept"
        );
        assert_eq!(created.notification().epoch, 0);
    }

    #[test]
    fn notifications_carry_no_secret() {
        let old = person();
        let mut new = old.clone().with_field("first_name", "Ann");
        new.fields.insert(
            "password_hash".into(),
            "$argon2id$v=19$m=19456,t=2,p=1$b3RoZXJzYWx0$b3RoZXI".into(),
        );
        new.version = 2;
        let changed = record(What::Changed {
            object: new.clone(),
            previous: old.clone(),
        });
        let n = changed.notification();
        assert!(!n.object_json.contains("argon2"), "{}", n.object_json);
        assert!(!n.delta_json.contains("argon2"), "{}", n.delta_json);
        assert!(n.delta_json.contains("first_name"));
        assert_eq!(n.kind, "changed");
        assert_eq!(n.version, 2);
        let audit = to_json(&changed.redacted());
        assert!(!audit.contains("argon2"), "{audit}");
        assert_eq!(changed.change(), Some(Change::Update(new)));
    }

    #[test]
    fn record_json_round_trips() {
        let r = record(What::Mode {
            mode: Mode::Emergency,
            previous: Mode::Normal,
        });
        let back: LogRecord = serde_json::from_str(&to_json(&r)).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.change(), None);
        assert_eq!("read_only".parse::<Mode>(), Ok(Mode::ReadOnly));
    }
}
