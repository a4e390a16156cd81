//! The configuration's mapping onto the database (key layout in [`crate::keys`]): loading the
//! whole configuration at a consistent point, following the change feed, and reading records.
//!
//! **Loading without a snapshot read.** The database has no multi-page snapshot read, so a load
//! is a fold: note the database revision R0, read `cfg/obj/` and `cfg/meta/` (possibly over
//! several pages, at different revisions), open the change feed after R0, read `cfg/meta/seq`
//! (its modification revision M), then fold the feed's events up to M into what was read,
//! keeping for each key the value with the highest modification revision. Every change of an
//! object also writes `cfg/meta/seq`, so nothing changed objects between M and the last read,
//! and the folded state is exactly the configuration at M. Events after M are handed back to be
//! followed as usual.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tandem_client::{Client, ClientError, Event, EventKind, KeyValue, Watch};
use tandem_config::{ConfigObject, ConfigSet, ObjectType};
use tracing::debug;

use crate::keys;
use crate::record::{LogRecord, Mode};
use crate::state::{ApplyError, Shared, State};

/// Why a load or a step of following failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be read.
    #[error("database: {0}")]
    Db(#[from] ClientError),
    /// A stored value is not what the server writes.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The stored objects do not form a configuration.
    #[error("stored configuration refused: {0}")]
    Config(#[from] tandem_config::ConfigError),
    /// Records could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The change feed ended while loading.
    #[error("the change feed ended while loading")]
    FeedEnded,
}

/// A loaded state, with the change feed to follow from there.
pub struct Loaded {
    /// The configuration at the load point.
    pub state: State,
    /// The feed, positioned after the load point (minus `pending`).
    pub watch: Watch,
    /// Events the feed already delivered past the load point.
    pub pending: Vec<Event>,
}

/// One key's latest value seen while loading: `(modification revision, value or deleted)`.
type Latest = BTreeMap<String, (u64, Option<Vec<u8>>)>;

fn note(latest: &mut Latest, key: String, revision: u64, value: Option<Vec<u8>>) {
    match latest.get(&key) {
        Some((seen, _)) if *seen >= revision => {}
        _ => {
            latest.insert(key, (revision, value));
        }
    }
}

/// Keys per range request while loading (the server's largest page).
const LOAD_PAGE_KEYS: u32 = 10_000;

/// Parses a stored object and checks that it is the one its key names.
fn parse_object(key: &str, object_type: ObjectType, dbid: u64, value: &[u8]) -> Result<ConfigObject, StoreError> {
    let obj: ConfigObject = serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    if obj.object_type != object_type || obj.dbid != dbid {
        return Err(StoreError::Corrupt {
            key: key.to_owned(),
            reason: format!("holds {} dbid {}", obj.object_type, obj.dbid),
        });
    }
    Ok(obj)
}

/// Folds the value the feed gave an object key at `revision` (`None`: deleted) into `objects`,
/// which is sorted by object key and holds each object with the revision it was read at: a
/// newer value replaces, adds or removes the object; an older one changes nothing.
fn fold_object(
    objects: &mut Vec<(u64, ConfigObject)>,
    key: &str,
    revision: u64,
    value: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    let Some(object_key @ (object_type, dbid)) = keys::parse_object(key) else {
        return Ok(());
    };
    let at = objects.binary_search_by_key(&object_key, |(_, obj)| obj.key());
    if at.is_ok_and(|i| objects[i].0 >= revision) {
        return Ok(());
    }
    match (value, at) {
        (Some(value), Ok(i)) => objects[i] = (revision, parse_object(key, object_type, dbid, &value)?),
        (Some(value), Err(i)) => objects.insert(i, (revision, parse_object(key, object_type, dbid, &value)?)),
        (None, Ok(i)) => {
            objects.remove(i);
        }
        (None, Err(_)) => {}
    }
    Ok(())
}

/// Loads the configuration (see the module documentation). `ring_capacity` records of history
/// are read into the ring. The state records the epoch of the database primary it was loaded
/// from: its revisions and notification numbers mean something only in that epoch.
///
/// Objects are parsed page by page as they are read, so the raw values of a large
/// configuration are never all in memory at once; only the few keys the feed changed while
/// loading go through the key-by-key fold.
pub async fn load(client: &Client, ring_capacity: usize) -> Result<Loaded, StoreError> {
    let started = Instant::now();
    let primary = client.discover().await?;
    let status = client.status(&primary).await?;
    let (r0, epoch) = (status.revision, status.epoch);
    let mut objects: Vec<(u64, ConfigObject)> = Vec::new();
    client
        .range_each(keys::OBJ_PREFIX, None, LOAD_PAGE_KEYS, |page| {
            for kv in page {
                let Some((object_type, dbid)) = keys::parse_object(&kv.key) else {
                    continue;
                };
                objects.push((kv.mod_revision, parse_object(&kv.key, object_type, dbid, &kv.value)?));
            }
            Ok::<_, StoreError>(())
        })
        .await?;
    let mut latest: Latest = BTreeMap::new();
    for kv in client.range(keys::META_PREFIX, None).await? {
        note(&mut latest, kv.key, kv.mod_revision, Some(kv.value));
    }
    let read_ms = started.elapsed().as_millis() as u64;
    let mut watch = client.watch(keys::PREFIX, r0).await?;
    let seq_kv = client.get(keys::SEQ).await?;
    let m = seq_kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut pending: Vec<Event> = Vec::new();
    let mut reached = m <= r0;
    while !reached {
        let batch = match watch.next().await {
            Some(batch) => batch?,
            None => return Err(StoreError::FeedEnded),
        };
        for event in batch {
            if event.revision <= m {
                reached |= event.revision == m;
                let value = (event.kind() == EventKind::Put).then_some(event.value);
                note(&mut latest, event.key, event.revision, value);
            } else {
                reached = true;
                pending.push(event);
            }
        }
    }

    let folded = Instant::now();
    let mut state = State::default();
    // The objects as read, sorted by key (one pass: the range is in key order type by type),
    // then the feed's later values of the few keys it changed while the pages were read.
    objects.sort_by_key(|(_, obj)| obj.key());
    for (key, (revision, value)) in latest {
        if keys::parse_object(&key).is_some() {
            fold_object(&mut objects, &key, revision, value)?;
            continue;
        }
        let Some(value) = value else { continue };
        if let Some(object_type) = keys::parse_dbid_counter(&key) {
            let counter = parse_counter(&key, &value)?;
            let last = state.last_dbid.entry(object_type).or_insert(0);
            *last = (*last).max(counter);
        } else if key == keys::SEQ {
            state.seq = parse_counter(&key, &value)?;
        } else if key == keys::MODE {
            let text = String::from_utf8_lossy(&value).into_owned();
            state.mode = text.parse::<Mode>().map_err(|reason| StoreError::Corrupt {
                key: key.clone(),
                reason,
            })?;
        } else if key == keys::SESSION_KEY {
            state.session_key = Some(parse_session_key(&key, &value)?);
        } else if key == keys::LOG_FIRST {
            state.log_first = parse_counter(&key, &value)?;
        }
    }
    for (_, obj) in &objects {
        let last = state.last_dbid.entry(obj.object_type).or_insert(0);
        *last = (*last).max(obj.dbid);
    }
    if state.log_first == 0 {
        state.log_first = 1;
    }
    state.seq_key_version = seq_kv.map_or(0, |kv| kv.version);
    state.set = ConfigSet::from_objects(objects.into_iter().map(|(_, obj)| obj))?;
    let indexed_ms = folded.elapsed().as_millis() as u64;
    state.ring = read_records(client, state.seq.saturating_sub(ring_capacity as u64) + 1, state.seq)
        .await?
        .into_iter()
        .map(Arc::new)
        .collect::<VecDeque<_>>();
    state.revision = m.max(r0);
    state.epoch = epoch;
    state.loaded = true;
    debug!(
        objects = state.set.len(),
        read_ms,
        indexed_ms,
        total_ms = started.elapsed().as_millis() as u64,
        "configuration read and indexed"
    );
    Ok(Loaded { state, watch, pending })
}

fn parse_counter(key: &str, value: &[u8]) -> Result<u64, StoreError> {
    keys::parse_u64(value).ok_or_else(|| StoreError::Corrupt {
        key: key.to_owned(),
        reason: "not a decimal number".into(),
    })
}

fn parse_session_key(key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    hex::decode(String::from_utf8_lossy(value).trim()).map_err(|_| StoreError::Corrupt {
        key: key.to_owned(),
        reason: "not a hex key".into(),
    })
}

fn parse_record(kv_key: &str, value: &[u8]) -> Result<LogRecord, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: kv_key.to_owned(),
        reason: e.to_string(),
    })
}

/// The records numbered `first..=last` that are still stored, in order.
pub async fn read_records(client: &Client, first: u64, last: u64) -> Result<Vec<LogRecord>, StoreError> {
    let mut records = Vec::new();
    if first > last {
        return Ok(records);
    }
    let mut block = first / keys::LOG_BLOCK;
    while block <= last / keys::LOG_BLOCK {
        for kv in client
            .range(&keys::log_block_prefix(block * keys::LOG_BLOCK), None)
            .await?
        {
            let Some(seq) = keys::parse_log(&kv.key) else { continue };
            if (first..=last).contains(&seq) {
                records.push(parse_record(&kv.key, &kv.value)?);
            }
        }
        block += 1;
    }
    records.sort_by_key(|r| r.seq);
    Ok(records)
}

/// One record, if still stored.
pub async fn read_record(client: &Client, seq: u64) -> Result<Option<LogRecord>, StoreError> {
    match client.get(&keys::log(seq)).await? {
        Some(KeyValue { key, value, .. }) => Ok(Some(parse_record(&key, &value)?)),
        None => Ok(None),
    }
}

/// Applies a batch of change-feed events (whole transactions) to the state: the records they
/// carry, and the bookkeeping keys.
pub fn apply_events(shared: &Shared, events: Vec<Event>) -> Result<(), StoreError> {
    let mut by_revision: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for event in events {
        by_revision.entry(event.revision).or_default().push(event);
    }
    for (revision, events) in by_revision {
        if revision <= shared.read().revision {
            continue;
        }
        let mut records = Vec::new();
        let mut seq_version = 0;
        for event in &events {
            let put = event.kind() == EventKind::Put;
            if keys::parse_log(&event.key).is_some() {
                if put {
                    records.push(parse_record(&event.key, &event.value)?);
                }
            } else if event.key == keys::SEQ && put {
                seq_version = event.version;
            } else if let Some(object_type) = keys::parse_dbid_counter(&event.key) {
                if put {
                    let counter = parse_counter(&event.key, &event.value)?;
                    shared.update(|s| {
                        let last = s.last_dbid.entry(object_type).or_insert(0);
                        *last = (*last).max(counter);
                    });
                }
            } else if event.key == keys::SESSION_KEY && put {
                let key = parse_session_key(&event.key, &event.value)?;
                shared.update(|s| s.session_key = Some(key));
            } else if event.key == keys::LOG_FIRST && put {
                let first = parse_counter(&event.key, &event.value)?;
                shared.update(|s| s.log_first = s.log_first.max(first));
            }
        }
        if !records.is_empty() || seq_version > 0 {
            shared.apply_records(records, seq_version)?;
        }
        shared.update(|s| s.revision = s.revision.max(revision));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tandem_config::{ConfigObject, ObjectType};

    use super::fold_object;
    use crate::keys;

    fn dn(dbid: u64, name: &str) -> ConfigObject {
        ConfigObject::new(ObjectType::Dn, dbid, name, 1)
    }

    fn stored(obj: &ConfigObject) -> Option<Vec<u8>> {
        Some(serde_json::to_vec(obj).unwrap())
    }

    /// `(dbid, revision, name)` of each object, in order.
    fn summary(objects: &[(u64, ConfigObject)]) -> Vec<(u64, u64, String)> {
        objects.iter().map(|(r, o)| (o.dbid, *r, o.name.clone())).collect()
    }

    #[test]
    fn late_changes_fold_into_the_sorted_objects_by_revision() {
        let mut objects = vec![(10, dn(1, "a")), (10, dn(3, "c")), (10, dn(5, "e"))];
        let key = |dbid| keys::object(ObjectType::Dn, dbid);
        // Newer: replaces. Older or equal: ignored.
        fold_object(&mut objects, &key(3), 12, stored(&dn(3, "c2"))).unwrap();
        fold_object(&mut objects, &key(1), 9, stored(&dn(1, "stale"))).unwrap();
        fold_object(&mut objects, &key(5), 10, None).unwrap();
        // New: inserted in order. Deleted: removed. Deleting what is absent: nothing.
        fold_object(&mut objects, &key(4), 13, stored(&dn(4, "d"))).unwrap();
        fold_object(&mut objects, &key(1), 14, None).unwrap();
        fold_object(&mut objects, &key(7), 15, None).unwrap();
        assert_eq!(
            summary(&objects),
            vec![(3, 12, "c2".into()), (4, 13, "d".into()), (5, 10, "e".into())]
        );
        // A value that is not the object its key names is refused.
        assert!(fold_object(&mut objects, &key(6), 16, stored(&dn(8, "wrong"))).is_err());
    }
}
