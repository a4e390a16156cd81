//! [`ConfigSet`]: the whole configuration in memory, with its indexes, and the validated
//! operations on it.
//!
//! Indexes: objects by `(type, dbid)`; DBID by `(type, tenant, name)` (names are unique per type
//! within a tenant); DBID by `(type, tenant, field, value)` for fields the schema marks unique
//! (a person's `user_name`); and the reverse references, `target → {(referrer, link)}`, where the
//! link is the tenant, the folder, or a reference field (grants count as references to their
//! folders). [`ConfigSet::check_indexes`] verifies all of them against the objects.
//!
//! Every mutating operation is planned first, on `&self`, into [`Change`] records — the very
//! records the configuration server commits to its store — and only then applied, so a refused
//! operation changes nothing. [`ConfigSet::apply`] replays committed records without schema
//! validation (a backup server or a proxy following the change feed), all or nothing.
//!
//! **Cascade rules.** A plain delete is refused while anything refers to the object. With
//! `cascade`, the objects that *must* go are deleted too: everything a deleted tenant or folder
//! contains (containment is ownership, like `rm -r`), and every object whose *required* single
//! reference points to a deleted object (the DNs of a deleted switch, the applications of a
//! deleted host), recursively. Optional references are cleared instead: an optional `Ref` is
//! unset, a deleted DBID is removed from a `RefList` (a place keeps its other DNs), a grant on a
//! deleted folder is removed. The environment tenant and the Super Administrators group are never
//! deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::delta::Delta;
use crate::error::{ConfigError, IndexInconsistency, ObjectRef};
use crate::model::{ConfigObject, ObjectKey, ObjectType, Value, ENVIRONMENT_TENANT, SUPER_ADMINISTRATORS};
use crate::schema::{self, FieldKind, OnDelete};
use crate::validate::View;

/// From this many objects on, [`ConfigSet::check_all`] checks parts of the set in parallel.
const CHECK_IN_PARTS_FROM: usize = 10_000;

/// How many referrers a [`ConfigError::Referenced`] lists.
pub const REFERRERS_REPORTED_MAX: usize = 10;

/// How one object refers to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// The referrer belongs to the target tenant.
    Tenant,
    /// The referrer is in the target folder.
    Folder,
    /// The referrer's field of this name refers to the target.
    Field(&'static str),
}

/// A committed change as stored: what the server writes to its store and what a replica of the
/// configuration replays. Records carry whole objects, so replay needs no validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new object, version 1.
    Create(ConfigObject),
    /// The new state of an existing object; its version is the previous version + 1.
    Update(ConfigObject),
    /// An object removed.
    Delete {
        /// Its type.
        object_type: ObjectType,
        /// Its DBID.
        dbid: u64,
        /// Its version when deleted, for the store's compare-and-set.
        version: u64,
    },
}

impl Change {
    /// The key of the object the change is about.
    pub fn key(&self) -> ObjectKey {
        match self {
            Change::Create(o) | Change::Update(o) => o.key(),
            Change::Delete { object_type, dbid, .. } => (*object_type, *dbid),
        }
    }
}

/// A key of the name index: `(type, tenant, name)`.
type NameKey = (ObjectType, u64, String);
/// The name index: `(type, tenant) → name → dbid`, nested so that a lookup by a borrowed name
/// allocates nothing.
type NameIndex = BTreeMap<(ObjectType, u64), BTreeMap<String, u64>>;
/// A key of the unique-value index: `(type, tenant, field, value)`.
type UniqueKey = (ObjectType, u64, &'static str, String);

/// The whole configuration in memory, with indexes. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigSet {
    /// Every live object by key. Shared, so that a copy of the whole set for a reader that works
    /// outside the owner's lock (e.g. a snapshot being serialised) costs a pointer per object
    /// ([`ConfigSet::shared_objects`]); a change replaces an object, never alters it in place.
    objects: BTreeMap<ObjectKey, Arc<ConfigObject>>,
    /// `(type, tenant) → name → dbid`: names are unique per type within a tenant.
    names: NameIndex,
    /// `(type, tenant, field, value) → dbid` for fields the schema marks unique.
    unique_values: BTreeMap<UniqueKey, u64>,
    /// `target → {(referrer, link)}`: who refers to an object, and how.
    referrers: BTreeMap<ObjectKey, BTreeSet<(ObjectKey, Link)>>,
}

/// Everything `obj` refers to, and how. Values whose kind disagrees with the schema (possible
/// only through unvalidated replay) refer to nothing.
pub(crate) fn links_of(obj: &ConfigObject) -> BTreeSet<(ObjectKey, Link)> {
    let mut links = BTreeSet::new();
    if obj.tenant != 0 {
        links.insert(((ObjectType::Tenant, obj.tenant), Link::Tenant));
    }
    if obj.folder != 0 {
        links.insert(((ObjectType::Folder, obj.folder), Link::Folder));
    }
    for spec in schema::spec(obj.object_type).reference_fields() {
        let link = Link::Field(spec.name);
        match (spec.kind, obj.fields.get(spec.name)) {
            (FieldKind::Ref(t), Some(Value::Ref(d))) => {
                links.insert(((t, *d), link));
            }
            (FieldKind::RefList(t), Some(Value::RefList(list))) => {
                links.extend(list.iter().map(|d| ((t, *d), link)));
            }
            (FieldKind::Grants, Some(Value::Grants(grants))) => {
                links.extend(
                    grants
                        .iter()
                        .filter_map(|g| g.folder)
                        .map(|f| ((ObjectType::Folder, f), link)),
                );
            }
            _ => {}
        }
    }
    links
}

/// The unique-field index keys of `obj`.
pub(crate) fn unique_keys(obj: &ConfigObject) -> Vec<UniqueKey> {
    schema::spec(obj.object_type)
        .fields
        .iter()
        .filter(|f| f.unique_per_tenant)
        .filter_map(|f| match obj.fields.get(f.name) {
            Some(Value::Str(s)) => Some((obj.object_type, obj.tenant, f.name, s.clone())),
            _ => None,
        })
        .collect()
}

/// Whether `obj` is the built-in Super Administrators group.
pub(crate) fn is_super_admin_group(obj: &ConfigObject) -> bool {
    obj.object_type == ObjectType::AccessGroup && obj.tenant == ENVIRONMENT_TENANT && obj.name == SUPER_ADMINISTRATORS
}

/// Removes from `obj`'s field `field` every reference to a key in `doomed`.
fn clear_references(obj: &mut ConfigObject, field: &str, doomed: &BTreeSet<ObjectKey>) {
    let Some(spec) = schema::spec(obj.object_type).field(field) else {
        return;
    };
    match (spec.kind, obj.fields.get_mut(field)) {
        (FieldKind::Ref(t), Some(Value::Ref(d))) if doomed.contains(&(t, *d)) => {
            obj.fields.remove(field);
        }
        (FieldKind::RefList(t), Some(Value::RefList(list))) => list.retain(|d| !doomed.contains(&(t, *d))),
        (FieldKind::Grants, Some(Value::Grants(grants))) => {
            grants.retain(|g| g.folder.is_none_or(|f| !doomed.contains(&(ObjectType::Folder, f))))
        }
        _ => {}
    }
}

/// The name index of sorted, duplicate-free `(name key, dbid)` pairs.
fn nest_names(names: Vec<(NameKey, u64)>) -> NameIndex {
    let mut index = NameIndex::new();
    let mut rest = names.as_slice();
    while let Some(((t, tenant, _), _)) = rest.first() {
        let scope = (*t, *tenant);
        let end = rest.partition_point(|((t, tenant, _), _)| (*t, *tenant) == scope);
        let names = rest[..end]
            .iter()
            .map(|((_, _, name), dbid)| (name.clone(), *dbid))
            .collect();
        index.insert(scope, names);
        rest = &rest[end..];
    }
    index
}

/// Where the object with `key` is in `objects`, which is sorted by key and holds it.
fn index_of(objects: &[ConfigObject], key: ObjectKey) -> usize {
    objects.partition_point(|o| o.key() < key)
}

/// The result of a scoped thread; a panic there goes on here.
fn join<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// The name index of `objects` (sorted by key), refused if two share a name.
fn name_index(objects: &[ConfigObject]) -> Result<NameIndex, ConfigError> {
    let mut names: Vec<(NameKey, u64)> = objects
        .iter()
        .map(|o| ((o.object_type, o.tenant, o.name.clone()), o.dbid))
        .collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        let ((object_type, tenant, _), existing) = pair[0];
        let (_, dbid) = pair[1];
        return Err(ConfigError::DuplicateName {
            object: ObjectRef::of(&objects[index_of(objects, (object_type, dbid))]),
            tenant,
            existing: ObjectRef::of(&objects[index_of(objects, (object_type, existing))]),
        });
    }
    Ok(nest_names(names))
}

/// The unique-value index of `objects` (sorted by key), refused if two share a value.
fn unique_value_index(objects: &[ConfigObject]) -> Result<BTreeMap<UniqueKey, u64>, ConfigError> {
    let mut unique_values: Vec<(UniqueKey, u64)> = objects
        .iter()
        .flat_map(|o| unique_keys(o).into_iter().map(|key| (key, o.dbid)))
        .collect();
    unique_values.sort_unstable();
    if let Some(pair) = unique_values.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        let ((object_type, _, field, _), existing) = pair[0];
        let (_, dbid) = pair[1];
        return Err(ConfigError::DuplicateValue {
            object: ObjectRef::of(&objects[index_of(objects, (object_type, dbid))]),
            field: field.to_owned(),
            existing: ObjectRef::of(&objects[index_of(objects, (object_type, existing))]),
        });
    }
    Ok(unique_values.into_iter().collect())
}

/// Who refers to whom among `objects`.
fn referrer_index(objects: &[ConfigObject]) -> BTreeMap<ObjectKey, BTreeSet<(ObjectKey, Link)>> {
    let mut links: Vec<(ObjectKey, (ObjectKey, Link))> = objects
        .iter()
        .flat_map(|o| {
            links_of(o)
                .into_iter()
                .map(move |(target, link)| (target, (o.key(), link)))
        })
        .collect();
    links.sort_unstable();
    let mut referrers = BTreeMap::new();
    let mut rest = links.as_slice();
    while let Some(&(target, _)) = rest.first() {
        let end = rest.partition_point(|(t, _)| *t == target);
        let sources: BTreeSet<(ObjectKey, Link)> = rest[..end].iter().map(|(_, source)| *source).collect();
        referrers.insert(target, sources);
        rest = &rest[end..];
    }
    referrers
}

impl ConfigSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding `objects` as they are, as loaded from the store: indexed but not validated
    /// (call [`ConfigSet::check_all`] for that). Refused only if two objects share a key, a name
    /// or a unique value.
    ///
    /// Built in bulk: each index is sorted once and built from sorted input, which for a million
    /// objects is several times faster than inserting them one by one.
    pub fn from_objects(objects: impl IntoIterator<Item = ConfigObject>) -> Result<Self, ConfigError> {
        // One vector of the objects, sorted where it is (a million objects take over 150 MB: no
        // second copy of it is made).
        let mut objects: Vec<ConfigObject> = objects.into_iter().collect();
        objects.sort_unstable_by_key(ConfigObject::key);
        if let Some(pair) = objects.windows(2).find(|pair| pair[0].key() == pair[1].key()) {
            return Err(ConfigError::DuplicateDbid {
                object: ObjectRef::of(&pair[1]),
            });
        }

        // The three indexes are independent: each is built on a thread of its own.
        let (names, unique_values, referrers) = std::thread::scope(|scope| {
            let names = scope.spawn(|| name_index(&objects));
            let unique_values = scope.spawn(|| unique_value_index(&objects));
            let referrers = referrer_index(&objects);
            (join(names), join(unique_values), referrers)
        });
        let (names, unique_values) = (names?, unique_values?);

        Ok(ConfigSet {
            objects: objects.into_iter().map(|obj| (obj.key(), Arc::new(obj))).collect(),
            names,
            unique_values,
            referrers,
        })
    }

    /// How many objects there are.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every object, by type then DBID.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &ConfigObject> {
        self.objects.values().map(|o| &**o)
    }

    /// Every object, by type then DBID, as shared handles: a copy of the set as it is now that
    /// stays valid after the set changes, at the cost of a pointer per object.
    pub fn shared_objects(&self) -> Vec<Arc<ConfigObject>> {
        self.objects.values().cloned().collect()
    }

    /// The objects of one type, by DBID.
    pub fn objects_of(&self, object_type: ObjectType) -> impl Iterator<Item = &ConfigObject> {
        self.objects
            .range((object_type, 0)..=(object_type, u64::MAX))
            .map(|(_, o)| &**o)
    }

    /// The objects of one type with a DBID above `after`, by DBID.
    pub(crate) fn objects_of_after(&self, object_type: ObjectType, after: u64) -> impl Iterator<Item = &ConfigObject> {
        let start = after.saturating_add(1);
        self.objects
            .range((object_type, start)..=(object_type, u64::MAX))
            .map(|(_, o)| &**o)
            .filter(move |o| o.dbid > after)
    }

    /// The object with this key.
    pub fn get(&self, object_type: ObjectType, dbid: u64) -> Option<&ConfigObject> {
        self.objects.get(&(object_type, dbid)).map(|o| &**o)
    }

    /// The object of this type and tenant (0 for tenants) with this name.
    pub fn by_name(&self, object_type: ObjectType, tenant: u64, name: &str) -> Option<&ConfigObject> {
        let dbid = self.name_dbid(object_type, tenant, name)?;
        self.get(object_type, dbid)
    }

    /// The object of this type and tenant whose unique field `field` has value `value`.
    pub fn by_unique(&self, object_type: ObjectType, tenant: u64, field: &str, value: &str) -> Option<&ConfigObject> {
        let spec = schema::spec(object_type).field(field)?;
        let dbid = self
            .unique_values
            .get(&(object_type, tenant, spec.name, value.to_owned()))?;
        self.get(object_type, *dbid)
    }

    /// Who refers to the object with this key, and how.
    pub fn referrers(&self, object_type: ObjectType, dbid: u64) -> impl Iterator<Item = (ObjectKey, Link)> + '_ {
        self.referrers.get(&(object_type, dbid)).into_iter().flatten().copied()
    }

    pub(crate) fn names_range(
        &self,
        object_type: ObjectType,
        tenant: u64,
        prefix: &str,
    ) -> impl Iterator<Item = (&String, u64)> + '_ {
        let prefix = prefix.to_owned();
        self.names
            .get(&(object_type, tenant))
            .into_iter()
            .flat_map(move |names| {
                let prefix = prefix.clone();
                names
                    .range(prefix.clone()..)
                    .take_while(move |(name, _)| name.starts_with(&prefix))
                    .map(|(name, dbid)| (name, *dbid))
            })
    }

    /// The DBID holding this name, if any.
    fn name_dbid(&self, object_type: ObjectType, tenant: u64, name: &str) -> Option<u64> {
        self.names.get(&(object_type, tenant))?.get(name).copied()
    }

    // ----- validated operations -----

    /// Validates a new object and returns it as it would be stored (version 1). The caller gives
    /// the DBID; it must not be in use for the type.
    pub fn plan_create(&self, mut obj: ConfigObject) -> Result<ConfigObject, ConfigError> {
        if self.objects.contains_key(&obj.key()) {
            return Err(ConfigError::DuplicateDbid {
                object: ObjectRef::of(&obj),
            });
        }
        obj.version = 1;
        self.check_object(&obj)?;
        Ok(obj)
    }

    /// Creates an object: validates it fully (required fields, value kinds, unknown fields,
    /// unique name and unique fields in the tenant, references that exist in the right tenant,
    /// tenant and folder) and stores it with version 1.
    pub fn create(&mut self, obj: ConfigObject) -> Result<ConfigObject, ConfigError> {
        let obj = self.plan_create(obj)?;
        self.put(obj.clone())?;
        Ok(obj)
    }

    /// Validates an update and returns `(new, previous)`; the new version is the previous + 1.
    pub fn plan_update(
        &self,
        object_type: ObjectType,
        dbid: u64,
        delta: &Delta,
    ) -> Result<(ConfigObject, ConfigObject), ConfigError> {
        let old = self
            .get(object_type, dbid)
            .ok_or(ConfigError::NotFound { object_type, dbid })?;
        let mut new = delta.apply_to(old)?;
        new.version = old.version + 1;
        self.check_protected_update(old, &new)?;
        self.check_object(&new)?;
        self.check_dependents(&new, old)?;
        Ok((new, old.clone()))
    }

    /// Updates an object with `delta` (only what it names changes) and bumps its version; also
    /// re-checks the objects whose validity depends on this one (a backup application's type, a
    /// folder's contents). Returns `(new, previous)`.
    pub fn update(
        &mut self,
        object_type: ObjectType,
        dbid: u64,
        delta: &Delta,
    ) -> Result<(ConfigObject, ConfigObject), ConfigError> {
        let (new, old) = self.plan_update(object_type, dbid, delta)?;
        self.put(new.clone())?;
        Ok((new, old))
    }

    /// Plans a delete: the [`Change`]s to commit, updates of referrers whose optional references
    /// are cleared first, then the deletions, referrers before what they refer to. See the module
    /// documentation for what `cascade` deletes.
    pub fn plan_delete(&self, object_type: ObjectType, dbid: u64, cascade: bool) -> Result<Vec<Change>, ConfigError> {
        let root = self
            .get(object_type, dbid)
            .ok_or(ConfigError::NotFound { object_type, dbid })?;
        if !cascade {
            self.check_protected_delete(root)?;
            let referrers: BTreeSet<ObjectKey> = self.referrers(object_type, dbid).map(|(k, _)| k).collect();
            if !referrers.is_empty() {
                return Err(ConfigError::Referenced {
                    object: ObjectRef::of(root),
                    referrers: referrers
                        .iter()
                        .take(REFERRERS_REPORTED_MAX)
                        .map(|k| self.object_ref(*k))
                        .collect(),
                    total: referrers.len(),
                });
            }
            return Ok(vec![Change::Delete {
                object_type,
                dbid,
                version: root.version,
            }]);
        }

        // Everything that must go.
        let mut doomed = BTreeSet::from([root.key()]);
        let mut stack = vec![root.key()];
        while let Some(key) = stack.pop() {
            for (src, link) in self.referrers(key.0, key.1) {
                if doomed.contains(&src) || !self.must_follow(src, link) {
                    continue;
                }
                doomed.insert(src);
                stack.push(src);
            }
        }
        for key in &doomed {
            if let Some(obj) = self.objects.get(key) {
                self.check_protected_delete(obj)?;
            }
        }

        // Survivors that lose a reference.
        let mut cleared: BTreeMap<ObjectKey, ConfigObject> = BTreeMap::new();
        for key in &doomed {
            for (src, link) in self.referrers(key.0, key.1) {
                let Link::Field(field) = link else { continue };
                if doomed.contains(&src) {
                    continue;
                }
                let Some(obj) = self.objects.get(&src) else { continue };
                let new = cleared.entry(src).or_insert_with(|| {
                    let mut copy = ConfigObject::clone(obj);
                    copy.version += 1;
                    copy
                });
                clear_references(new, field, &doomed);
            }
        }

        let mut changes: Vec<Change> = cleared.into_values().map(Change::Update).collect();
        changes.extend(self.deletion_order(&doomed).into_iter().filter_map(|key| {
            self.objects.get(&key).map(|o| Change::Delete {
                object_type: key.0,
                dbid: key.1,
                version: o.version,
            })
        }));
        Ok(changes)
    }

    /// Deletes an object. Without `cascade`, refused while anything refers to it; with it,
    /// deletes what must go and clears optional references (module documentation). Returns the
    /// keys deleted, in the order deleted (referrers first). [`ConfigSet::plan_delete`] also
    /// gives the referrers updated.
    pub fn delete(
        &mut self,
        object_type: ObjectType,
        dbid: u64,
        cascade: bool,
    ) -> Result<Vec<(ObjectType, u64)>, ConfigError> {
        let changes = self.plan_delete(object_type, dbid, cascade)?;
        let deleted = changes
            .iter()
            .filter(|c| matches!(c, Change::Delete { .. }))
            .map(Change::key)
            .collect();
        self.apply(changes)?;
        Ok(deleted)
    }

    /// Whether a cascading delete of a link's target must delete the referrer.
    fn must_follow(&self, src: ObjectKey, link: Link) -> bool {
        match link {
            Link::Tenant | Link::Folder => true,
            Link::Field(field) => schema::spec(src.0)
                .field(field)
                .is_some_and(|spec| spec.on_target_delete() == OnDelete::DeleteReferrer),
        }
    }

    /// `doomed` ordered so that every object comes after the doomed objects referring to it.
    /// References that force a deletion (tenant, folder, required reference) never form a cycle;
    /// optional references may (two applications backing up each other), and such a cycle is
    /// broken by ordering it by the forcing references alone.
    fn deletion_order(&self, doomed: &BTreeSet<ObjectKey>) -> Vec<ObjectKey> {
        // src → target → whether the reference forces the deletion.
        let mut edges: BTreeMap<ObjectKey, BTreeMap<ObjectKey, bool>> = BTreeMap::new();
        // target → (pending referrers, pending forcing referrers).
        let mut pending: BTreeMap<ObjectKey, (usize, usize)> = doomed.iter().map(|k| (*k, (0, 0))).collect();
        for src in doomed {
            let Some(obj) = self.objects.get(src) else { continue };
            let targets = edges.entry(*src).or_default();
            for (target, link) in links_of(obj) {
                if target != *src && doomed.contains(&target) {
                    *targets.entry(target).or_insert(false) |= self.must_follow(*src, link);
                }
            }
            for (target, forcing) in targets.iter() {
                if let Some((all, must)) = pending.get_mut(target) {
                    *all += 1;
                    *must += usize::from(*forcing);
                }
            }
        }
        let mut order = Vec::with_capacity(doomed.len());
        while !pending.is_empty() {
            let next = pending
                .iter()
                .find(|(_, (all, _))| *all == 0)
                .or_else(|| pending.iter().find(|(_, (_, must))| *must == 0))
                .map(|(k, _)| *k)
                .or_else(|| pending.keys().next().copied());
            let Some(key) = next else { break };
            pending.remove(&key);
            for (target, forcing) in edges.get(&key).into_iter().flatten() {
                if let Some((all, must)) = pending.get_mut(target) {
                    *all = all.saturating_sub(1);
                    *must = must.saturating_sub(usize::from(*forcing));
                }
            }
            order.push(key);
        }
        order
    }

    fn check_protected_delete(&self, obj: &ConfigObject) -> Result<(), ConfigError> {
        if obj.object_type == ObjectType::Tenant && obj.dbid == ENVIRONMENT_TENANT {
            return Err(ConfigError::Protected {
                object: ObjectRef::of(obj),
                reason: "the environment tenant cannot be deleted",
            });
        }
        if is_super_admin_group(obj) {
            return Err(ConfigError::Protected {
                object: ObjectRef::of(obj),
                reason: "the Super Administrators group cannot be deleted",
            });
        }
        Ok(())
    }

    pub(crate) fn check_protected_update(&self, old: &ConfigObject, new: &ConfigObject) -> Result<(), ConfigError> {
        if is_super_admin_group(old) {
            if new.name != old.name {
                return Err(ConfigError::Protected {
                    object: ObjectRef::of(old),
                    reason: "the Super Administrators group cannot be renamed",
                });
            }
            if new.state != old.state {
                return Err(ConfigError::Protected {
                    object: ObjectRef::of(old),
                    reason: "the Super Administrators group cannot be disabled",
                });
            }
        }
        Ok(())
    }

    pub(crate) fn object_ref(&self, key: ObjectKey) -> ObjectRef {
        self.objects
            .get(&key)
            .map(|o| ObjectRef::of(o))
            .unwrap_or_else(|| ObjectRef::key(key.0, key.1))
    }

    // ----- replay -----

    /// Applies one committed change without schema validation. Refused (and nothing changed)
    /// only if it contradicts the set's structure: a create of an existing key, an update or
    /// delete of a missing one, or a name or unique value held by another object.
    pub fn apply_change(&mut self, change: Change) -> Result<(), ConfigError> {
        self.apply(std::iter::once(change))
    }

    /// Applies committed changes in order, all or nothing (see [`ConfigSet::apply_change`]).
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> Result<(), ConfigError> {
        let mut undo: Vec<(ObjectKey, Option<ConfigObject>)> = Vec::new();
        for change in changes {
            let key = change.key();
            let result = match change {
                Change::Create(obj) => {
                    if self.objects.contains_key(&key) {
                        Err(ConfigError::DuplicateDbid {
                            object: ObjectRef::of(&obj),
                        })
                    } else {
                        self.put(obj)
                    }
                }
                Change::Update(obj) => {
                    if self.objects.contains_key(&key) {
                        self.put(obj)
                    } else {
                        Err(ConfigError::NotFound {
                            object_type: key.0,
                            dbid: key.1,
                        })
                    }
                }
                Change::Delete { object_type, dbid, .. } => self
                    .remove(key)
                    .map(Some)
                    .ok_or(ConfigError::NotFound { object_type, dbid }),
            };
            match result {
                Ok(previous) => undo.push((key, previous)),
                Err(err) => {
                    for (key, previous) in undo.into_iter().rev() {
                        self.remove(key);
                        if let Some(previous) = previous {
                            self.put_unchecked(previous);
                        }
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    // ----- index maintenance -----

    /// Stores `obj` (replacing the object with its key), keeping indexes; refused if its name or
    /// a unique value is held by another object. Returns the object replaced.
    pub(crate) fn put(&mut self, obj: ConfigObject) -> Result<Option<ConfigObject>, ConfigError> {
        if let Some(existing) = self.name_dbid(obj.object_type, obj.tenant, &obj.name) {
            if existing != obj.dbid {
                return Err(ConfigError::DuplicateName {
                    object: ObjectRef::of(&obj),
                    tenant: obj.tenant,
                    existing: self.object_ref((obj.object_type, existing)),
                });
            }
        }
        for key in unique_keys(&obj) {
            if let Some(&existing) = self.unique_values.get(&key) {
                if existing != obj.dbid {
                    return Err(ConfigError::DuplicateValue {
                        object: ObjectRef::of(&obj),
                        field: key.2.to_owned(),
                        existing: self.object_ref((obj.object_type, existing)),
                    });
                }
            }
        }
        Ok(self.put_unchecked(obj))
    }

    fn put_unchecked(&mut self, obj: ConfigObject) -> Option<ConfigObject> {
        let previous = self.remove(obj.key());
        self.names
            .entry((obj.object_type, obj.tenant))
            .or_default()
            .insert(obj.name.clone(), obj.dbid);
        for key in unique_keys(&obj) {
            self.unique_values.insert(key, obj.dbid);
        }
        for (target, link) in links_of(&obj) {
            self.referrers.entry(target).or_default().insert((obj.key(), link));
        }
        self.objects.insert(obj.key(), Arc::new(obj));
        previous
    }

    fn remove(&mut self, key: ObjectKey) -> Option<ConfigObject> {
        let obj = self.objects.remove(&key)?;
        let scope = (obj.object_type, obj.tenant);
        if let Some(names) = self.names.get_mut(&scope) {
            if names.get(&obj.name) == Some(&obj.dbid) {
                names.remove(&obj.name);
                if names.is_empty() {
                    self.names.remove(&scope);
                }
            }
        }
        for unique in unique_keys(&obj) {
            if self.unique_values.get(&unique) == Some(&obj.dbid) {
                self.unique_values.remove(&unique);
            }
        }
        for (target, link) in links_of(&obj) {
            if let Some(set) = self.referrers.get_mut(&target) {
                set.remove(&(key, link));
                if set.is_empty() {
                    self.referrers.remove(&target);
                }
            }
        }
        // A copy only while a shared handle (a snapshot under way) still holds it.
        Some(Arc::unwrap_or_clone(obj))
    }

    /// Verifies every index against the objects: each entry points to a live object that has the
    /// indexed name, value or reference, and each object's names, values and references are
    /// indexed. A failure is a bug in this crate.
    pub fn check_indexes(&self) -> Result<(), IndexInconsistency> {
        let fail = |s: String| Err(IndexInconsistency(s));
        for ((t, tenant), names) in &self.names {
            if names.is_empty() {
                return fail(format!("empty name index for ({t}, {tenant})"));
            }
            for (name, dbid) in names {
                match self.get(*t, *dbid) {
                    Some(o) if o.tenant == *tenant && &o.name == name => {}
                    _ => return fail(format!("name index ({t}, {tenant}, {name:?}) → {dbid} is stale")),
                }
            }
        }
        for (key @ (t, _, field, value), dbid) in &self.unique_values {
            match self.get(*t, *dbid) {
                Some(o) if unique_keys(o).contains(key) => {}
                _ => return fail(format!("unique index ({t}, {field}, {value:?}) → {dbid} is stale")),
            }
        }
        let mut reference_count = 0usize;
        for (target, sources) in &self.referrers {
            if sources.is_empty() {
                return fail(format!("empty referrer set for {target:?}"));
            }
            for (src, link) in sources {
                match self.objects.get(src) {
                    Some(o) if links_of(o).contains(&(*target, *link)) => reference_count += 1,
                    _ => return fail(format!("referrer index {target:?} ← {src:?} via {link:?} is stale")),
                }
            }
        }
        let mut expected_references = 0usize;
        for (key, obj) in &self.objects {
            if *key != obj.key() {
                return fail(format!("object stored under {key:?} has key {:?}", obj.key()));
            }
            if self.name_dbid(obj.object_type, obj.tenant, &obj.name) != Some(obj.dbid) {
                return fail(format!("{} is missing from the name index", ObjectRef::of(obj)));
            }
            for unique in unique_keys(obj) {
                if self.unique_values.get(&unique) != Some(&obj.dbid) {
                    return fail(format!("{} is missing from the unique index", ObjectRef::of(obj)));
                }
            }
            for (target, link) in links_of(obj) {
                expected_references += 1;
                if !self.referrers.get(&target).is_some_and(|s| s.contains(&(*key, link))) {
                    return fail(format!(
                        "{} → {target:?} is missing from the referrer index",
                        ObjectRef::of(obj)
                    ));
                }
            }
        }
        let name_count: usize = self.names.values().map(BTreeMap::len).sum();
        if name_count != self.objects.len() {
            return fail(format!("{name_count} names for {} objects", self.objects.len()));
        }
        if reference_count != expected_references {
            return fail(format!(
                "{reference_count} indexed references, {expected_references} expected"
            ));
        }
        Ok(())
    }

    /// Validates every object against the schema and the rest of the set, as after loading it
    /// from the store. The first invalid object is reported.
    pub fn check_all(&self) -> Result<(), ConfigError> {
        // A large set is checked in as many parts as there are cores, each on a thread of its
        // own; the error reported is still the first in key order.
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
        if parts == 1 || self.objects.len() < CHECK_IN_PARTS_FROM {
            return self.objects.values().try_for_each(|obj| self.check_object(obj));
        }
        let objects: Vec<&ConfigObject> = self.iter().collect();
        let part = objects.len().div_ceil(parts);
        std::thread::scope(|scope| {
            let checks: Vec<_> = objects
                .chunks(part)
                .map(|objects| scope.spawn(move || objects.iter().try_for_each(|obj| self.check_object(obj))))
                .collect();
            checks.into_iter().try_for_each(join)
        })
    }
}
