//! The configuration object model: object types, the generic [`ConfigObject`] every type shares,
//! and the [`Value`]s its typed fields hold. Which fields a type has, and what they must contain,
//! is not here but in [`crate::schema`]; this module only says what an object *is*.
//!
//! Every object is addressed by `(ObjectType, dbid)`: DBIDs are unique per type and never reused,
//! and the caller (the configuration server) allocates them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::access::Grant;
use crate::error::ConfigError;

/// The key of an object: its type and its DBID (unique per type, never reused).
pub type ObjectKey = (ObjectType, u64);

/// Options or annex: section → key → value.
pub type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// An object's typed fields by name, in name order. A flat sorted vector rather than a B-tree:
/// objects have a handful of fields, and a B-tree node is allocated for eleven (a million DNs
/// with two fields each spent over 600 MB on half-empty nodes).
pub type Fields = litemap::LiteMap<String, Value>;

/// DBID of the environment tenant, created by [`crate::access::bootstrap`]. Objects of the
/// environment (hosts, applications, the administrators) live in it, and references from any
/// tenant may point into it.
pub const ENVIRONMENT_TENANT: u64 = 1;

/// Name of the environment tenant created by [`crate::access::bootstrap`].
pub const ENVIRONMENT_TENANT_NAME: &str = "Environment";

/// Name of the built-in access group, in the environment tenant, whose members may do
/// everything. It cannot be renamed, disabled or deleted.
pub const SUPER_ADMINISTRATORS: &str = "Super Administrators";

/// Longest object name accepted, in bytes.
pub const NAME_LEN_MAX: usize = 255;

macro_rules! object_types {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// The type of a configuration object. The declaration order is the order of
        /// [`ObjectType::ALL`], of exports and of `Ord`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ObjectType {
            $($(#[$doc])* $variant,)*
        }

        impl ObjectType {
            /// Every object type, in declaration order.
            pub const ALL: &'static [ObjectType] = &[$(ObjectType::$variant,)*];

            /// The stable snake_case name, as used by serde, the CLI and `Display`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ObjectType::$variant => $name,)*
                }
            }
        }
    };
}

object_types! {
    /// A tenant: the top-level owner of objects. Tenant objects themselves have tenant 0.
    Tenant => "tenant",
    /// A folder holding objects of its tenant; folders nest through their own `folder`.
    Folder => "folder",
    /// A machine on which a Local Control Agent starts applications.
    Host => "host",
    /// A server application (Configuration Server, SCS, Message Server, …) on a host.
    Application => "application",
    /// A user or agent, with a hashed password.
    Person => "person",
    /// A group of persons holding permission grants.
    AccessGroup => "access_group",
    /// A telephony switch.
    Switch => "switch",
    /// A directory number on a switch.
    Dn => "dn",
    /// A place (a desk) grouping DNs.
    Place => "place",
    /// A group of agents.
    AgentGroup => "agent_group",
    /// A skill agents may have.
    Skill => "skill",
    /// A condition on log events that raises an alarm.
    AlarmCondition => "alarm_condition",
}

impl fmt::Display for ObjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ObjectType {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| ConfigError::UnknownObjectType { name: s.to_owned() })
    }
}

/// Whether an object is in service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// In service (the default).
    #[default]
    Enabled,
    /// Out of service: kept in the configuration but not used (a disabled person cannot log in,
    /// a disabled access group grants nothing).
    Disabled,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Enabled => "enabled",
            State::Disabled => "disabled",
        })
    }
}

/// The value of a typed field. JSON is externally tagged, e.g. `{"str": "10.0.0.1"}`,
/// `{"int": 2020}`, `{"bool": true}`, `{"ref": 7}`, `{"ref_list": [3, 4]}`, so that an integer and
/// a reference never look alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// A string.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A reference to one object; the target's type is given by the schema of the field.
    Ref(u64),
    /// An ordered list of references to objects of the type the schema gives; no duplicates.
    RefList(Vec<u64>),
    /// The permission grants of an access group (see [`crate::access`]).
    Grants(Vec<Grant>),
}

impl Value {
    /// A short name of the variant, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "str",
            Value::Int(_) => "int",
            Value::Bool(_) => "bool",
            Value::Ref(_) => "ref",
            Value::RefList(_) => "ref_list",
            Value::Grants(_) => "grants",
        }
    }

    /// The string, if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `Int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean, if this is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The target DBID, if this is a `Ref`.
    pub fn as_ref_dbid(&self) -> Option<u64> {
        match self {
            Value::Ref(d) => Some(*d),
            _ => None,
        }
    }

    /// The target DBIDs, if this is a `RefList`.
    pub fn as_ref_list(&self) -> Option<&[u64]> {
        match self {
            Value::RefList(l) => Some(l),
            _ => None,
        }
    }

    /// The grants, if this is a `Grants`.
    pub fn as_grants(&self) -> Option<&[Grant]> {
        match self {
            Value::Grants(g) => Some(g),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// One configuration object. Every type shares this shape; the schema says which `fields` a
/// type has. `Debug` prints secret fields (the password hash) as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigObject {
    /// What kind of object this is; with `dbid`, its identity.
    pub object_type: ObjectType,
    /// Unique per type, never reused, allocated by the configuration server.
    pub dbid: u64,
    /// Unique per type within the tenant; how people and documents name the object.
    pub name: String,
    /// DBID of the owning tenant; 0 only for Tenant objects.
    pub tenant: u64,
    /// DBID of the containing folder (of the same tenant); 0 = the tenant's root.
    #[serde(default)]
    pub folder: u64,
    /// In service or not.
    #[serde(default)]
    pub state: State,
    /// The typed fields the schema defines for this type; absent = unset.
    #[serde(default)]
    pub fields: Fields,
    /// Application options: section → key → value, free-form.
    #[serde(default)]
    pub options: Sections,
    /// User properties (annex): section → key → value, free-form.
    #[serde(default)]
    pub annex: Sections,
    /// 1 on creation, +1 on every update; the server's compare-and-set uses it.
    #[serde(default)]
    pub version: u64,
}

impl ConfigObject {
    /// A new, enabled object in the tenant's root folder with no fields, version 0 (a create
    /// sets it to 1).
    pub fn new(object_type: ObjectType, dbid: u64, name: impl Into<String>, tenant: u64) -> Self {
        ConfigObject {
            object_type,
            dbid,
            name: name.into(),
            tenant,
            folder: 0,
            state: State::Enabled,
            fields: Fields::new(),
            options: Sections::new(),
            annex: Sections::new(),
            version: 0,
        }
    }

    /// The object's key, `(type, dbid)`.
    pub fn key(&self) -> ObjectKey {
        (self.object_type, self.dbid)
    }

    /// Builder: sets a field.
    pub fn with_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_owned(), value.into());
        self
    }

    /// Builder: sets the folder.
    pub fn in_folder(mut self, folder: u64) -> Self {
        self.folder = folder;
        self
    }

    /// Builder: sets the state.
    pub fn with_state(mut self, state: State) -> Self {
        self.state = state;
        self
    }

    /// Builder: sets one option.
    pub fn with_option(mut self, section: &str, key: &str, value: &str) -> Self {
        self.options
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Builder: sets one annex entry.
    pub fn with_annex(mut self, section: &str, key: &str, value: &str) -> Self {
        self.annex
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// A field's value, if set.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A string field's value, if set and a string.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// The object without secret fields (the password hash), for readers who must not see
    /// them: borrowed when it has none, which is every object but a person with a password.
    pub fn without_secrets(&self) -> Cow<'_, ConfigObject> {
        let secret = |name: &String| crate::schema::is_secret(self.object_type, name);
        if !self.fields.keys().any(secret) {
            return Cow::Borrowed(self);
        }
        let mut copy = self.clone();
        copy.fields.retain(|name, _| !secret(name));
        Cow::Owned(copy)
    }

    /// Whether `other` has the same content: everything but `dbid` and `version`.
    pub fn same_content(&self, other: &ConfigObject) -> bool {
        self.object_type == other.object_type
            && self.name == other.name
            && self.tenant == other.tenant
            && self.folder == other.folder
            && self.state == other.state
            && self.fields == other.fields
            && self.options == other.options
            && self.annex == other.annex
    }
}

/// Prints fields (any map of field name to value), hiding the values of secret ones.
pub(crate) struct RedactedFields<'a, M> {
    /// The type whose schema says which fields are secret.
    pub object_type: ObjectType,
    /// The fields to print.
    pub fields: &'a M,
}

impl<'a, M, V> fmt::Debug for RedactedFields<'a, M>
where
    &'a M: IntoIterator<Item = (&'a String, &'a V)>,
    V: fmt::Debug + 'a,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.fields {
            if crate::schema::is_secret(self.object_type, name) {
                map.entry(name, &format_args!("<redacted>"));
            } else {
                map.entry(name, value);
            }
        }
        map.finish()
    }
}

impl fmt::Debug for ConfigObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigObject")
            .field("object_type", &self.object_type)
            .field("dbid", &self.dbid)
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("folder", &self.folder)
            .field("state", &self.state)
            .field(
                "fields",
                &RedactedFields {
                    object_type: self.object_type,
                    fields: &self.fields,
                },
            )
            .field("options", &self.options)
            .field("annex", &self.annex)
            .field("version", &self.version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_type_names_round_trip() {
        for t in ObjectType::ALL {
            assert_eq!(t.to_string().parse::<ObjectType>().unwrap(), *t);
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
        }
        assert_eq!("access_group".parse::<ObjectType>().unwrap(), ObjectType::AccessGroup);
        assert!(matches!(
            "nope".parse::<ObjectType>(),
            Err(ConfigError::UnknownObjectType { .. })
        ));
    }

    #[test]
    fn value_json_is_tagged() {
        assert_eq!(serde_json::to_string(&Value::Int(5)).unwrap(), r#"{"int":5}"#);
        assert_eq!(serde_json::to_string(&Value::Ref(5)).unwrap(), r#"{"ref":5}"#);
        assert_eq!(
            serde_json::to_string(&Value::RefList(vec![1, 2])).unwrap(),
            r#"{"ref_list":[1,2]}"#
        );
        assert_eq!(serde_json::to_string(&Value::from("x")).unwrap(), r#"{"str":"x"}"#);
        assert_eq!(serde_json::to_string(&Value::Bool(true)).unwrap(), r#"{"bool":true}"#);
        let back: Value = serde_json::from_str(r#"{"ref_list":[3]}"#).unwrap();
        assert_eq!(back, Value::RefList(vec![3]));
    }

    #[test]
    fn object_json_round_trips() {
        let o = ConfigObject::new(ObjectType::Host, 3, "h", 1)
            .with_field("ip_address", "10.0.0.1")
            .with_option("s", "k", "v");
        let json = serde_json::to_string(&o).unwrap();
        let back: ConfigObject = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
    }
}
