//! Permissions: who may read, create, change or delete which objects, and the bootstrap of an
//! empty configuration.
//!
//! An access group (an `AccessGroup` object) has `members` (persons) and `grants`; a [`Grant`]
//! gives [`Right`]s on objects of one type or of all types, everywhere or in one folder and its
//! sub-folders (a grant on folder F covers F itself too). A person's rights are the union of the
//! grants of every *enabled* group they are a member of; a disabled or missing person has no
//! rights. A group's grants apply within its own tenant only, except the groups of the
//! environment tenant, whose grants reach every tenant. Members of the built-in
//! [`SUPER_ADMINISTRATORS`] group may do everything.
//!
//! Reading is filtered: [`query_as`] and [`get_as`] return only what the person may read. Writes
//! are checked on the [`Change`] records an operation plans ([`check_changes`]): a create needs
//! `Create` on the new object, an update `Change` on the object both where it was and where it
//! goes, a delete `Delete` on every object deleted — and a cascade `Change` on every referrer it
//! clears.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ObjectRef};
pub use crate::model::SUPER_ADMINISTRATORS;
use crate::model::{ConfigObject, ObjectType, State, Value, ENVIRONMENT_TENANT, ENVIRONMENT_TENANT_NAME};
use crate::password::hash_password;
use crate::query::{Page, Query};
use crate::set::{is_super_admin_group, Change, ConfigSet, Link};
use crate::validate::FOLDER_DEPTH_MAX;

/// One right on an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    /// See the object.
    Read,
    /// Create it.
    Create,
    /// Update it.
    Change,
    /// Delete it.
    Delete,
}

impl Right {
    /// Every right.
    pub const ALL: [Right; 4] = [Right::Read, Right::Create, Right::Change, Right::Delete];
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Read => "read",
            Right::Create => "create",
            Right::Change => "change",
            Right::Delete => "delete",
        })
    }
}

/// Rights an access group gives on a set of objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The type of objects covered; `None` = every type.
    #[serde(default)]
    pub object_type: Option<ObjectType>,
    /// The folder covered with its sub-folders; `None` = everywhere in the group's reach.
    #[serde(default)]
    pub folder: Option<u64>,
    /// The rights given (at least one).
    pub rights: BTreeSet<Right>,
}

impl Grant {
    /// A grant of `rights` on objects of `object_type` (or all) in `folder` (or everywhere).
    pub fn new(object_type: Option<ObjectType>, folder: Option<u64>, rights: &[Right]) -> Self {
        Grant {
            object_type,
            folder,
            rights: rights.iter().copied().collect(),
        }
    }
}

/// The person on whose behalf an operation runs: a Person DBID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Principal(pub u64);

/// The enabled access groups `person` is a member of.
pub fn groups_of(set: &ConfigSet, person: Principal) -> impl Iterator<Item = &ConfigObject> {
    set.referrers(ObjectType::Person, person.0)
        .filter(|((t, _), link)| *t == ObjectType::AccessGroup && *link == Link::Field("members"))
        .filter_map(|((t, d), _)| set.get(t, d))
        .filter(|g| g.state == State::Enabled)
}

/// Whether `person` exists, is enabled, and is a member of the Super Administrators group.
pub fn is_super_admin(set: &ConfigSet, person: Principal) -> bool {
    person_enabled(set, person) && groups_of(set, person).any(is_super_admin_group)
}

fn person_enabled(set: &ConfigSet, person: Principal) -> bool {
    set.get(ObjectType::Person, person.0)
        .is_some_and(|p| p.state == State::Enabled)
}

/// Whether `object` is `folder` or lies in it or in one of its sub-folders.
pub fn in_folder(set: &ConfigSet, object: &ConfigObject, folder: u64) -> bool {
    let mut current = if object.object_type == ObjectType::Folder {
        object.dbid
    } else {
        object.folder
    };
    for _ in 0..=FOLDER_DEPTH_MAX {
        if current == 0 {
            return false;
        }
        if current == folder {
            return true;
        }
        current = set.get(ObjectType::Folder, current).map_or(0, |f| f.folder);
    }
    false
}

fn grant_covers(set: &ConfigSet, group: &ConfigObject, grant: &Grant, object: &ConfigObject) -> bool {
    let in_reach = group.tenant == ENVIRONMENT_TENANT
        || object.tenant == group.tenant
        || (object.object_type == ObjectType::Tenant && object.dbid == group.tenant);
    in_reach
        && grant.object_type.is_none_or(|t| t == object.object_type)
        && grant.folder.is_none_or(|f| in_folder(set, object, f))
}

/// Whether `person` has `right` on `object` (which need not be in the set yet, for a create).
pub fn allowed(set: &ConfigSet, person: Principal, right: Right, object: &ConfigObject) -> bool {
    if !person_enabled(set, person) {
        return false;
    }
    groups_of(set, person).any(|group| {
        is_super_admin_group(group)
            || group
                .fields
                .get("grants")
                .and_then(Value::as_grants)
                .is_some_and(|grants| {
                    grants
                        .iter()
                        .any(|g| g.rights.contains(&right) && grant_covers(set, group, g, object))
                })
    })
}

/// `allowed`, as an error naming the object when not.
pub fn require(set: &ConfigSet, person: Principal, right: Right, object: &ConfigObject) -> Result<(), ConfigError> {
    if allowed(set, person, right, object) {
        Ok(())
    } else {
        Err(ConfigError::AccessDenied {
            person: person.0,
            right,
            object: ObjectRef::of(object),
        })
    }
}

/// Checks that `person` may commit `changes` (planned by the set's operations): see the module
/// documentation.
pub fn check_changes(set: &ConfigSet, person: Principal, changes: &[Change]) -> Result<(), ConfigError> {
    for change in changes {
        match change {
            Change::Create(obj) => require(set, person, Right::Create, obj)?,
            Change::Update(obj) => {
                if let Some(old) = set.get(obj.object_type, obj.dbid) {
                    require(set, person, Right::Change, old)?;
                }
                require(set, person, Right::Change, obj)?;
            }
            Change::Delete { object_type, dbid, .. } => {
                if let Some(old) = set.get(*object_type, *dbid) {
                    require(set, person, Right::Delete, old)?;
                }
            }
        }
    }
    Ok(())
}

/// The object, if it exists and `person` may read it.
pub fn get_as(set: &ConfigSet, person: Principal, object_type: ObjectType, dbid: u64) -> Option<&ConfigObject> {
    set.get(object_type, dbid)
        .filter(|o| allowed(set, person, Right::Read, o))
}

/// A query that returns only objects `person` may read.
pub fn query_as(set: &ConfigSet, person: Principal, query: &Query) -> Page {
    if is_super_admin(set, person) {
        return set.query(query);
    }
    set.query_filtered(query, |o| allowed(set, person, Right::Read, o))
}

/// The person of `tenant` with this user name and password, if the password matches and the
/// person is enabled.
pub fn authenticate(set: &ConfigSet, tenant: u64, user_name: &str, password: &str) -> Option<Principal> {
    let person = set.by_unique(ObjectType::Person, tenant, "user_name", user_name)?;
    let hash = person.str_field("password_hash")?;
    (person.state == State::Enabled && crate::password::verify_password(password, hash))
        .then_some(Principal(person.dbid))
}

/// The objects of an empty configuration: the environment tenant (DBID
/// [`ENVIRONMENT_TENANT`]), the administrator (Person DBID 1, with `password` hashed) and the
/// Super Administrators group (AccessGroup DBID 1) with the administrator as its member, in
/// creation order, version 1.
pub fn bootstrap(admin_user: &str, password: &str) -> Result<Vec<ConfigObject>, ConfigError> {
    Ok(bootstrap_with_hash(admin_user, &hash_password(password)?))
}

/// [`bootstrap`] with a password already hashed (a PHC string, e.g. from a bootstrap file that
/// must not hold the password in clear). The hash is checked by validation on create.
pub fn bootstrap_with_hash(admin_user: &str, password_hash: &str) -> Vec<ConfigObject> {
    let mut objects = vec![
        ConfigObject::new(ObjectType::Tenant, ENVIRONMENT_TENANT, ENVIRONMENT_TENANT_NAME, 0),
        ConfigObject::new(ObjectType::Person, 1, admin_user, ENVIRONMENT_TENANT)
            .with_field("user_name", admin_user)
            .with_field("password_hash", password_hash),
        ConfigObject::new(ObjectType::AccessGroup, 1, SUPER_ADMINISTRATORS, ENVIRONMENT_TENANT)
            .with_field("members", Value::RefList(vec![1])),
    ];
    for obj in &mut objects {
        obj.version = 1;
    }
    objects
}

/// A set holding `objects` (e.g. from [`bootstrap`]), each created with validation.
pub fn set_from_bootstrap(objects: Vec<ConfigObject>) -> Result<ConfigSet, ConfigError> {
    let mut set = ConfigSet::new();
    for obj in objects {
        set.create(obj)?;
    }
    Ok(set)
}

/// A set holding the [`bootstrap`] objects, validated.
pub fn bootstrapped_set(admin_user: &str, password: &str) -> Result<ConfigSet, ConfigError> {
    set_from_bootstrap(bootstrap(admin_user, password)?)
}
