//! The configuration in memory and everything a server knows about it: the [`ConfigSet`], the
//! last notification number applied, the recent history (a ring of records), the DBID counters,
//! the mode and the session key. Both servers of the pair keep one, current with the database:
//! the primary applies its own commits at once, and both apply what the change feed brings
//! (a record already applied is skipped by its number, so the two paths never apply twice).
//!
//! Every record applied is published on a broadcast channel *while the state is locked*, so a
//! subscriber that subscribes to the channel before reading the ring misses nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tandem_config::model::{ENVIRONMENT_TENANT, ENVIRONMENT_TENANT_NAME};
use tandem_config::{Change, ConfigObject, ConfigSet, ObjectType};
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

/// How a proxy serves (a master is always [`LinkMode::Normal`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkMode {
    /// Nothing loaded yet.
    #[default]
    Starting,
    /// Attached to the primary master: writes are forwarded.
    Normal,
    /// No master reachable: reads, subscriptions and logins are served, writes refused.
    Limited,
}

impl LinkMode {
    /// `starting`, `normal` or `limited`.
    pub fn name(self) -> &'static str {
        match self {
            LinkMode::Starting => "starting",
            LinkMode::Normal => "normal",
            LinkMode::Limited => "limited",
        }
    }
}

/// A proxy's link to the master, as its subscribers and its status show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// How it serves.
    pub mode: LinkMode,
    /// Why (the master attached to, or why none is).
    pub reason: String,
    /// Since when, in ms since the epoch.
    pub since_ms: u64,
    /// The master attached to.
    pub master: Option<String>,
}

/// The tenants a proxy holds, when it does not hold the whole configuration: the environment
/// tenant (persons, access groups: logins and permissions) and the tenants named. Objects of
/// other tenants are left out; records about them only advance the notification number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// The tenants' names.
    names: BTreeSet<String>,
    /// Their DBIDs, as learnt from the objects.
    tenants: BTreeSet<u64>,
}

impl Scope {
    /// The tenants named (and the environment).
    pub fn new(names: impl IntoIterator<Item = String>) -> Scope {
        Scope {
            names: names.into_iter().collect(),
            tenants: BTreeSet::new(),
        }
    }

    /// Whether the objects of tenant `dbid` are held.
    pub fn holds_tenant(&self, dbid: u64) -> bool {
        dbid == ENVIRONMENT_TENANT || self.tenants.contains(&dbid)
    }

    /// Whether the tenant named `name` is held.
    pub fn holds_tenant_named(&self, name: &str) -> bool {
        name == ENVIRONMENT_TENANT_NAME || self.names.contains(name)
    }

    /// The tenants held, for messages: `tenants "a", "b" and the environment`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.names.iter().map(|n| format!("{n:?}")).collect();
        format!("tenants {} and the environment", names.join(", "))
    }

    /// Whether `obj` is held; learns the DBID of a tenant named.
    pub fn holds(&mut self, obj: &ConfigObject) -> bool {
        if obj.object_type == ObjectType::Tenant {
            let held = obj.dbid == ENVIRONMENT_TENANT
                || obj.name == ENVIRONMENT_TENANT_NAME
                || self.names.contains(&obj.name)
                || self.tenants.contains(&obj.dbid);
            if held {
                self.tenants.insert(obj.dbid);
            }
            return held;
        }
        obj.tenant == ENVIRONMENT_TENANT || self.tenants.contains(&obj.tenant)
    }

    /// The change a record makes to the objects held, if any.
    fn change(&mut self, what: &What) -> Option<Change> {
        let deletion = |previous: &ConfigObject| Change::Delete {
            object_type: previous.object_type,
            dbid: previous.dbid,
            version: previous.version,
        };
        match what {
            What::Created { object } => self.holds(object).then(|| Change::Create(object.clone())),
            What::Changed { object, previous } => match (self.holds(previous), self.holds(object)) {
                (true, true) => Some(Change::Update(object.clone())),
                (false, true) => Some(Change::Create(object.clone())),
                (true, false) => Some(deletion(previous)),
                (false, false) => None,
            },
            What::Deleted { previous } => self.holds(previous).then_some(deletion(previous)),
            What::Mode { .. } => None,
        }
    }
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
    /// The database revision the change feed has been followed to. Meaningful only in `epoch`:
    /// a revision of an older epoch may lie in a tail the new epoch dropped.
    pub revision: u64,
    /// The epoch of the notification history (its lineage): on a master, the database epoch the
    /// configuration was loaded in and is followed in; on a proxy, that of its master's snapshot.
    /// A notification number means something only with its epoch (0 = not known yet).
    pub epoch: u64,
    /// Older epochs whose history this one is known to continue, each up to the number where it
    /// was checked (a master that reloads in a new epoch finds there the last record it had):
    /// a number of such an epoch up to that bound means the same here.
    pub continued: BTreeMap<u64, u64>,
    /// Whether the state has been loaded from the database.
    pub loaded: bool,
    /// The tenants held, when not the whole configuration (proxies only).
    pub scope: Option<Scope>,
    /// With a scope: the number after which the ring holds every record of the tenants held.
    /// Records of other tenants never enter the ring, so its first record does not say where
    /// its coverage begins; this does (the last record it dropped, or where the history the
    /// state was loaded with began).
    pub scope_floor: u64,
}

impl State {
    /// The next DBID for a type, not yet allocated.
    pub fn next_dbid(&self, object_type: ObjectType) -> u64 {
        self.last_dbid.get(&object_type).copied().unwrap_or(0) + 1
    }

    /// The oldest number after which a client can still resume, records written before
    /// `cutoff_ms` (ms since the epoch) being too old to serve. It is the latest of:
    /// - where the ring's coverage begins ([`State::ring_floor`], the record limit);
    /// - the last record retention removed from the database (`log_first` - 1);
    /// - the newest record of the ring written before `cutoff_ms` (the age limit), so that
    ///   nothing served from the ring after the floor is older than the history keeps.
    ///
    /// Retention runs on the primary only, now and then, and never trims the ring: the age is
    /// applied here, when asked, so that every server (primary, standby, proxy) answers by it
    /// alike and at once.
    pub fn history_floor(&self, cutoff_ms: u64) -> u64 {
        let retained = self.log_first.saturating_sub(1).min(self.seq);
        self.ring_floor().max(retained).max(self.aged_floor(cutoff_ms))
    }

    /// Where the ring's coverage begins: the number after which it holds every record (of the
    /// tenants held, with a scope), that is its first record - 1, or `seq` when it is empty.
    pub fn ring_floor(&self) -> u64 {
        match self.scope {
            Some(_) => self.scope_floor.min(self.seq),
            None => self.ring.front().map_or(self.seq, |r| r.seq - 1),
        }
    }

    /// The number of the newest record of the ring written before `cutoff_ms`, or 0 when none
    /// is. Records are in commit order, so their times nearly are; the newest such record is
    /// looked for, not the first, so that a clock that stepped back cannot let an old record
    /// through.
    fn aged_floor(&self, cutoff_ms: u64) -> u64 {
        self.ring
            .iter()
            .rev()
            .find(|r| r.when_ms < cutoff_ms)
            .map_or(0, |r| r.seq)
    }

    fn push_ring(&mut self, record: Arc<LogRecord>) {
        self.ring.push_back(record);
        self.trim_ring();
    }

    /// Drops the oldest records beyond the ring's capacity.
    fn trim_ring(&mut self) {
        while self.ring.len() > self.ring_capacity.max(1) {
            if let Some(dropped) = self.ring.pop_front() {
                self.scope_floor = self.scope_floor.max(dropped.seq);
            }
        }
    }
}

/// Whether number `after` of the history of epoch `asked` (what a subscriber or proxy last
/// received; 0 = unknown, from an older client) can be resumed on a server holding `state`. A forced recovery of the database starts a new epoch whose history may reuse the
/// numbers of the dropped tail with other contents, so a number is meaningful only with its
/// epoch, unless the server knows its history continues that epoch's up to there
/// ([`State::continued`]). An unknown epoch is taken as the first one (1).
pub fn resumable_in(state: &State, after: u64, asked: u64) -> bool {
    let asked = if asked == 0 && state.epoch != 0 { 1 } else { asked };
    asked == state.epoch || state.continued.get(&asked).is_some_and(|upto| after <= *upto)
}

/// A count of things open now (subscriptions, replication links), for the metrics.
#[derive(Debug, Default)]
pub struct OpenCount(Arc<AtomicU64>);

impl OpenCount {
    /// Counts one more until the guard returned is dropped.
    pub fn open(&self) -> Opened {
        self.0.fetch_add(1, Ordering::Relaxed);
        Opened(self.0.clone())
    }

    /// How many are open.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One thing counted by an [`OpenCount`], until dropped.
#[derive(Debug)]
pub struct Opened(Arc<AtomicU64>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a server is doing besides its state, as its metrics show it.
#[derive(Debug, Default)]
pub struct Activity {
    /// Subscriptions open now.
    pub subscribers: OpenCount,
    /// Proxies following this master now (`Replicate` links).
    pub replication_links: OpenCount,
    /// Changes of a proxy's mode (starting, normal, limited) since it started.
    pub proxy_mode_changes: AtomicU64,
}

/// The state and its channels, shared by every task of a server.
#[derive(Debug)]
pub struct Shared {
    state: RwLock<State>,
    /// Every record applied, in order.
    events: broadcast::Sender<Arc<LogRecord>>,
    /// The last notification number applied (for waits).
    applied: watch::Sender<u64>,
    /// The epoch of the history (see [`State::epoch`]), announced when a reload changes it, so
    /// that subscribers and replication links of the old history end at once.
    epoch: watch::Sender<u64>,
    /// A proxy's link to the master; every change (and every new attachment) is announced, so
    /// subscribers can check for a gap and report the mode.
    link: watch::Sender<Link>,
    /// Subscribers, replication links and mode changes, for the metrics.
    pub activity: Activity,
}

impl Shared {
    /// An empty, unloaded state whose ring keeps `ring_capacity` records.
    pub fn new(ring_capacity: usize) -> Arc<Shared> {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (applied, _) = watch::channel(0);
        let (epoch, _) = watch::channel(0);
        let (link, _) = watch::channel(Link::default());
        Arc::new(Shared {
            link,
            state: RwLock::new(State {
                ring_capacity,
                log_first: 1,
                ..State::default()
            }),
            events,
            applied,
            epoch,
            activity: Activity::default(),
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

    /// A receiver of the history's epoch (see [`State::epoch`]).
    pub fn epochs(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// A receiver of the link's changes.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    /// The link now.
    pub fn link_now(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Sets the link and announces it, even when it is unchanged.
    pub fn set_link(&self, link: Link) {
        let mode = link.mode;
        if self.link.send_replace(link).mode != mode {
            self.activity.proxy_mode_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Replaces the whole state (a load from the database). Subscribers see the jump in numbers
    /// and catch up from the new ring; when the epoch changed, the old history's subscribers and
    /// replication links end with `reload-required` (see [`resumable_in`]).
    pub fn replace(&self, mut state: State) {
        let mut guard = self.write();
        state.ring_capacity = guard.ring_capacity;
        state.loaded = true;
        state.trim_ring();
        let (seq, epoch) = (state.seq, state.epoch);
        *guard = state;
        drop(guard);
        self.epoch.send_if_modified(|e| std::mem::replace(e, epoch) != epoch);
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
            let change = match state.scope.as_mut() {
                Some(scope) => scope.change(&record.what),
                None => record.change(),
            };
            let held = change.is_some();
            match &record.what {
                What::Mode { mode, .. } => state.mode = *mode,
                _ => {
                    if let Some(change) = change {
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
            applied += 1;
            if !held && record.object().is_some() {
                // Outside the scope: the number advances, nobody hears of it.
                continue;
            }
            let record = Arc::new(record);
            state.push_ring(record.clone());
            // No receiver is not an error: nobody is subscribed.
            let _ = self.events.send(record);
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
            writer: String::new(),
            what: What::Created { object: obj },
            cached: Default::default(),
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
        assert_eq!(state.history_floor(0), 1);
        assert_eq!(state.next_dbid(ObjectType::Tenant), 4);
    }

    #[test]
    fn a_scoped_state_holds_only_its_tenants_and_still_advances_the_number() {
        let shared = Shared::new(10);
        shared.update(|s| s.scope = Some(Scope::new(["east".to_owned()])));
        let mut rx = shared.subscribe();
        let mut east = created(1, "east");
        east.what = What::Created {
            object: ConfigObject::new(ObjectType::Tenant, 2, "east", 0),
        };
        let mut west = created(2, "west");
        west.what = What::Created {
            object: ConfigObject::new(ObjectType::Tenant, 3, "west", 0),
        };
        let mut in_east = created(3, "s1");
        in_east.what = What::Created {
            object: ConfigObject::new(ObjectType::Skill, 1, "s1", 2),
        };
        let mut in_west = created(4, "s2");
        in_west.what = What::Created {
            object: ConfigObject::new(ObjectType::Skill, 2, "s2", 3),
        };
        assert_eq!(shared.apply_records(vec![east, west, in_east, in_west], 4).unwrap(), 4);
        let state = shared.read();
        assert_eq!(state.seq, 4, "every number advances");
        assert_eq!(state.set.len(), 2, "the east tenant and its skill");
        assert!(state.set.get(ObjectType::Skill, 1).is_some());
        assert!(state.set.get(ObjectType::Skill, 2).is_none());
        let published: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok()).map(|r| r.seq).collect();
        assert_eq!(published, vec![1, 3], "records outside the scope are not published");
    }

    #[test]
    fn a_scoped_history_begins_after_the_last_record_it_dropped_not_at_its_first_record() {
        let shared = Shared::new(2);
        shared.update(|s| s.scope = Some(Scope::new(["east".to_owned()])));
        let tenant = |seq: u64, dbid: u64, name: &str| {
            let mut r = created(seq, name);
            r.what = What::Created {
                object: ConfigObject::new(ObjectType::Tenant, dbid, name, 0),
            };
            r
        };
        let skill = |seq: u64, tenant: u64| {
            let mut r = created(seq, "skill");
            r.what = What::Created {
                object: ConfigObject::new(ObjectType::Skill, seq, format!("s{seq}"), tenant),
            };
            r
        };
        // 1 east, 2 west, 3 east's, 4..=6 west's, 7 and 8 east's: the ring keeps 7 and 8.
        let mut records = vec![tenant(1, 2, "east"), tenant(2, 3, "west"), skill(3, 2)];
        records.extend((4..=6).map(|seq| skill(seq, 3)));
        records.extend([skill(7, 2), skill(8, 2)]);
        shared.apply_records(records, 8).unwrap();
        let state = shared.read();
        let ring: Vec<u64> = state.ring.iter().map(|r| r.seq).collect();
        assert_eq!(ring, vec![7, 8]);
        assert_eq!(
            state.history_floor(0),
            3,
            "a client after 3 (or after 4..=6, which were the other tenant's) misses only 7 and 8"
        );
    }

    #[test]
    fn the_history_floor_moves_past_records_older_than_the_cutoff_and_those_retention_removed() {
        let shared = Shared::new(10);
        let timed = |seq: u64, when_ms: u64| LogRecord {
            when_ms,
            ..created(seq, &format!("t{seq}"))
        };
        // A clock that stepped back at 4: record 4 is older than record 3.
        let records = [(1, 100), (2, 200), (3, 400), (4, 300), (5, 500)];
        shared
            .apply_records(records.iter().map(|&(seq, when_ms)| timed(seq, when_ms)).collect(), 5)
            .unwrap();
        let state = shared.read();
        assert_eq!(state.history_floor(0), 0, "no age limit: the whole ring");
        assert_eq!(state.history_floor(100), 0, "written at the cutoff is not older");
        assert_eq!(state.history_floor(250), 2, "1 and 2 are too old");
        assert_eq!(
            state.history_floor(350),
            4,
            "4 is too old, so 3 before it cannot be served either"
        );
        assert_eq!(
            state.history_floor(10_000),
            5,
            "all too old: only a client that missed nothing"
        );
        drop(state);
        shared.update(|s| s.log_first = 3);
        assert_eq!(
            shared.read().history_floor(0),
            2,
            "records retention removed are not resumable, even when the ring still holds them"
        );
    }

    #[test]
    fn mode_changes_are_counted_and_repeats_are_not() {
        let shared = Shared::new(1);
        let link = |mode| Link {
            mode,
            ..Link::default()
        };
        shared.set_link(link(LinkMode::Starting));
        shared.set_link(link(LinkMode::Normal));
        shared.set_link(link(LinkMode::Normal));
        shared.set_link(link(LinkMode::Limited));
        assert_eq!(shared.activity.proxy_mode_changes.load(Ordering::Relaxed), 2);
        let open = shared.activity.subscribers.open();
        assert_eq!(shared.activity.subscribers.get(), 1);
        drop(open);
        assert_eq!(shared.activity.subscribers.get(), 0);
    }
}
