//! The configuration in memory and everything a server knows about it: the [`ConfigSet`], the
//! last notification number applied, the recent history (a ring of records), the DBID counters,
//! the mode and the session key. Both servers of the pair keep one, current with the database:
//! the primary applies its own commits at once, and both apply what the change feed brings
//! (a record already applied is skipped by its number, so the two paths never apply twice).
//!
//! Every record applied is published on a broadcast channel *while the state is locked*, so a
//! subscriber that subscribes to the channel before reading the ring misses nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tandem_config::{ConfigSet, ObjectType};
use tokio::sync::{broadcast, watch};

use crate::record::{LogRecord, Mode, What};

/// Records kept in the broadcast channel for slow subscribers (they fall back to the ring).
const BROADCAST_CAPACITY: usize = 4096;

/// Why records could not be applied: the state must be reloaded from the database.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A record is missing between the last applied and the one given.
    #[error("gap in the notification numbers: applied up to {applied}, next given {given}")]
    Gap {
        /// The last number applied.
        applied: u64,
        /// The number given.
        given: u64,
    },
    /// The record contradicts the configuration held (a bug, or a state that is not current).
    #[error("record {seq} cannot be replayed: {reason}")]
    Replay {
        /// Its number.
        seq: u64,
        /// Why.
        reason: String,
    },
}

/// What the server knows of the configuration.
#[derive(Debug, Default)]
pub struct State {
    /// Every object.
    pub set: ConfigSet,
    /// The last notification number applied.
    pub seq: u64,
    /// The database version of `cfg/meta/seq` that goes with `seq` (the primary's
    /// compare-and-set expects it).
    pub seq_key_version: u64,
    /// The last DBID allocated per type.
    pub last_dbid: BTreeMap<ObjectType, u64>,
    /// The mode.
    pub mode: Mode,
    /// The most recent records, oldest first, at most `ring_capacity`: what a reconnecting
    /// client catches up from.
    pub ring: VecDeque<Arc<LogRecord>>,
    /// How many records the ring keeps (the history's record limit).
    pub ring_capacity: usize,
    /// The oldest record number retention kept in the database.
    pub log_first: u64,
    /// The key that signs session tokens, once known.
    pub session_key: Option<Vec<u8>>,
    /// The database revision the change feed has been followed to.
    pub revision: u64,
    /// Whether the state has been loaded from the database.
    pub loaded: bool,
}

impl State {
    /// The next DBID for a type, not yet allocated.
    pub fn next_dbid(&self, object_type: ObjectType) -> u64 {
        self.last_dbid.get(&object_type).copied().unwrap_or(0) + 1
    }

    /// The oldest number after which a client can still resume (the ring's first record - 1),
    /// or `seq` when the ring is empty.
    pub fn history_floor(&self) -> u64 {
        self.ring.front().map_or(self.seq, |r| r.seq - 1)
    }

    fn push_ring(&mut self, record: Arc<LogRecord>) {
        self.ring.push_back(record);
        while self.ring.len() > self.ring_capacity.max(1) {
            self.ring.pop_front();
        }
    }
}

/// The state and its channels, shared by every task of a server.
#[derive(Debug)]
pub struct Shared {
    state: RwLock<State>,
    /// Every record applied, in order.
    events: broadcast::Sender<Arc<LogRecord>>,
    /// The last notification number applied (for waits).
    applied: watch::Sender<u64>,
}

impl Shared {
    /// An empty, unloaded state whose ring keeps `ring_capacity` records.
    pub fn new(ring_capacity: usize) -> Arc<Shared> {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (applied, _) = watch::channel(0);
        Arc::new(Shared {
            state: RwLock::new(State {
                ring_capacity,
                log_first: 1,
                ..State::default()
            }),
            events,
            applied,
        })
    }

    /// Reads the state. Never held across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of every record applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.events.subscribe()
    }

    /// A receiver of the last applied number.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Replaces the whole state (a load from the database). Subscribers see the jump in numbers
    /// and catch up from the new ring.
    pub fn replace(&self, mut state: State) {
        let mut guard = self.write();
        state.ring_capacity = guard.ring_capacity;
        state.loaded = true;
        while state.ring.len() > state.ring_capacity.max(1) {
            state.ring.pop_front();
        }
        let seq = state.seq;
        *guard = state;
        self.applied.send_replace(seq);
    }

    /// Applies committed records in number order, skipping those already applied; publishes
    /// each. `seq_key_version` is the version of `cfg/meta/seq` after the last of them.
    pub fn apply_records(&self, records: Vec<LogRecord>, seq_key_version: u64) -> Result<usize, ApplyError> {
        let mut guard = self.write();
        let state = &mut *guard;
        let mut applied = 0;
        let mut records = records;
        records.sort_by_key(|r| r.seq);
        for record in records {
            if record.seq <= state.seq {
                continue;
            }
            if record.seq != state.seq + 1 {
                return Err(ApplyError::Gap {
                    applied: state.seq,
                    given: record.seq,
                });
            }
            match &record.what {
                What::Mode { mode, .. } => state.mode = *mode,
                _ => {
                    if let Some(change) = record.change() {
                        if let Some(obj) = record.object() {
                            let last = state.last_dbid.entry(obj.object_type).or_insert(0);
                            *last = (*last).max(obj.dbid);
                        }
                        state.set.apply_change(change).map_err(|e| ApplyError::Replay {
                            seq: record.seq,
                            reason: e.to_string(),
                        })?;
                    }
                }
            }
            state.seq = record.seq;
            let record = Arc::new(record);
            state.push_ring(record.clone());
            // No receiver is not an error: nobody is subscribed.
            let _ = self.events.send(record);
            applied += 1;
        }
        state.seq_key_version = state.seq_key_version.max(seq_key_version);
        let seq = state.seq;
        drop(guard);
        if applied > 0 {
            self.applied.send_replace(seq);
        }
        Ok(applied)
    }

    /// Runs `f` on the state, locked for writing (bookkeeping the change feed brings: counters,
    /// the session key, the retention floor, the revision followed).
    pub fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Who;
    use tandem_config::ConfigObject;

    fn created(seq: u64, name: &str) -> LogRecord {
        let mut obj = ConfigObject::new(ObjectType::Tenant, seq, name, 0);
        obj.version = 1;
        LogRecord {
            seq,
            txn_first: seq,
            txn_last: seq,
            when_ms: 0,
            who: Who {
                person: 0,
                user: String::new(),
            },
            op: String::new(),
            write_id: 0,
            request_id: String::new(),
            what: What::Created { object: obj },
        }
    }

    #[test]
    fn records_apply_once_in_order_and_gaps_are_refused() {
        let shared = Shared::new(2);
        let mut rx = shared.subscribe();
        assert_eq!(
            shared.apply_records(vec![created(2, "b"), created(1, "a")], 1).unwrap(),
            2
        );
        assert_eq!(
            shared.apply_records(vec![created(2, "b")], 1).unwrap(),
            0,
            "already applied"
        );
        assert!(matches!(
            shared.apply_records(vec![created(4, "d")], 2),
            Err(ApplyError::Gap { applied: 2, given: 4 })
        ));
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert!(rx.try_recv().is_err());
        shared.apply_records(vec![created(3, "c")], 3).unwrap();
        let state = shared.read();
        assert_eq!(state.set.len(), 3);
        assert_eq!(state.ring.len(), 2, "ring keeps its capacity");
        assert_eq!(state.history_floor(), 1);
        assert_eq!(state.next_dbid(ObjectType::Tenant), 4);
    }
}
