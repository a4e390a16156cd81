//! The schema: for every object type, its typed fields — kind, whether required, allowed values,
//! references and the extra rule a field obeys. It is one static table, [`TYPES`]: adding a field
//! is adding one [`FieldSpec`] line, adding a type is one [`ObjectType`] variant plus one
//! [`TypeSpec`] entry. Validation ([`crate::ConfigSet`]), cascades and export all read this table;
//! nothing else in the crate knows a field by name except the few rules named in [`Rule`] and the
//! `members`/`grants` fields [`crate::access`] reads.
//!
//! What happens to a referrer when its target is deleted with `cascade` follows from the field's
//! spec ([`FieldSpec::on_target_delete`]): a *required* single reference cannot be cleared, so the
//! referrer is deleted too (the DNs of a deleted switch, the applications of a deleted host); any
//! other reference (optional `Ref`, `RefList`, a grant's folder) is cleared and the referrer
//! kept (a place loses the deleted DN from its `dns`).

use std::fmt;

use crate::model::ObjectType;

/// The kind of value a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    /// A string ([`crate::Value::Str`]).
    Str,
    /// An integer ([`crate::Value::Int`]).
    Int,
    /// A boolean ([`crate::Value::Bool`]).
    Bool,
    /// A reference to an object of the given type ([`crate::Value::Ref`]).
    Ref(ObjectType),
    /// A list of references to objects of the given type ([`crate::Value::RefList`]).
    RefList(ObjectType),
    /// Permission grants ([`crate::Value::Grants`]); their folders are references to folders.
    Grants,
}

impl FieldKind {
    /// The type a reference field points to, if it is one.
    pub const fn target(self) -> Option<ObjectType> {
        match self {
            FieldKind::Ref(t) | FieldKind::RefList(t) => Some(t),
            FieldKind::Grants => Some(ObjectType::Folder),
            _ => None,
        }
    }

    /// Whether values of this kind refer to other objects.
    pub const fn is_reference(self) -> bool {
        self.target().is_some()
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldKind::Str => f.write_str("str"),
            FieldKind::Int => f.write_str("int"),
            FieldKind::Bool => f.write_str("bool"),
            FieldKind::Ref(t) => write!(f, "ref({t})"),
            FieldKind::RefList(t) => write!(f, "ref_list({t})"),
            FieldKind::Grants => f.write_str("grants"),
        }
    }
}

/// An extra rule a field's value obeys, beyond its kind, range and allowed values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No extra rule.
    None,
    /// For a `Ref` field: the target's field of this name must equal the referrer's own field of
    /// the same name (an application's backup has the same `app_type`).
    SameAsTarget(&'static str),
    /// For a `Str` field: an argon2 PHC string, never a password in clear.
    PhcHash,
    /// For a `Str` field: the name of an object type.
    ObjectTypeName,
}

/// What a cascading delete does to an object whose field refers to a deleted object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    /// The referrer cannot live without the target and is deleted too.
    DeleteReferrer,
    /// The reference is removed and the referrer kept.
    Clear,
}

/// One typed field of a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// Field name, snake_case, as in [`crate::ConfigObject::fields`].
    pub name: &'static str,
    /// What kind of value it holds.
    pub kind: FieldKind,
    /// Whether the field must be set (a required string must also be non-empty).
    pub required: bool,
    /// Whether no two objects of the type in one tenant may have the same value (strings only).
    pub unique_per_tenant: bool,
    /// Whether the value is hidden from `Debug` and from [`crate::ConfigObject::without_secrets`].
    pub secret: bool,
    /// For strings: the only values accepted; empty = any.
    pub allowed: &'static [&'static str],
    /// For integers: the smallest value accepted.
    pub min: Option<i64>,
    /// For integers: the largest value accepted.
    pub max: Option<i64>,
    /// An extra rule.
    pub rule: Rule,
}

impl FieldSpec {
    const fn new(name: &'static str, kind: FieldKind) -> Self {
        FieldSpec {
            name,
            kind,
            required: false,
            unique_per_tenant: false,
            secret: false,
            allowed: &[],
            min: None,
            max: None,
            rule: Rule::None,
        }
    }

    /// An optional string field.
    pub const fn str(name: &'static str) -> Self {
        Self::new(name, FieldKind::Str)
    }

    /// An optional integer field.
    pub const fn int(name: &'static str) -> Self {
        Self::new(name, FieldKind::Int)
    }

    /// An optional boolean field.
    pub const fn bool(name: &'static str) -> Self {
        Self::new(name, FieldKind::Bool)
    }

    /// An optional reference to an object of type `target`.
    pub const fn reference(name: &'static str, target: ObjectType) -> Self {
        Self::new(name, FieldKind::Ref(target))
    }

    /// An optional list of references to objects of type `target`.
    pub const fn ref_list(name: &'static str, target: ObjectType) -> Self {
        Self::new(name, FieldKind::RefList(target))
    }

    /// An optional list of permission grants.
    pub const fn grants(name: &'static str) -> Self {
        Self::new(name, FieldKind::Grants)
    }

    /// Builder: the field must be set.
    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// Builder: the value is unique per type within a tenant.
    pub const fn unique(mut self) -> Self {
        self.unique_per_tenant = true;
        self
    }

    /// Builder: the value is secret.
    pub const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Builder: only these string values are accepted.
    pub const fn one_of(mut self, allowed: &'static [&'static str]) -> Self {
        self.allowed = allowed;
        self
    }

    /// Builder: integers must lie in `min..=max`.
    pub const fn range(mut self, min: i64, max: i64) -> Self {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    /// Builder: an extra rule.
    pub const fn rule(mut self, rule: Rule) -> Self {
        self.rule = rule;
        self
    }

    /// What a cascading delete of this field's target does to the referrer.
    pub const fn on_target_delete(&self) -> OnDelete {
        match (self.kind, self.required) {
            (FieldKind::Ref(_), true) => OnDelete::DeleteReferrer,
            _ => OnDelete::Clear,
        }
    }
}

/// The fields of one object type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeSpec {
    /// The type described.
    pub object_type: ObjectType,
    /// Its typed fields; any other field name is refused.
    pub fields: &'static [FieldSpec],
}

impl TypeSpec {
    /// The spec of a field, if the type has it.
    pub fn field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The fields that refer to other objects.
    pub fn reference_fields(&self) -> impl Iterator<Item = &'static FieldSpec> {
        self.fields.iter().filter(|f| f.kind.is_reference())
    }
}

/// Application redundancy types.
pub const REDUNDANCY_TYPES: &[&str] = &["none", "warm_standby", "hot_standby"];

/// DN types.
pub const DN_TYPES: &[&str] = &[
    "extension",
    "acd_position",
    "acd_queue",
    "routing_point",
    "virtual_queue",
    "trunk",
    "voice_mail",
];

/// Alarm levels.
pub const ALARM_LEVELS: &[&str] = &["critical", "major", "minor"];

const PORT_MAX: i64 = 65_535;

/// The schema: one entry per object type, in [`ObjectType::ALL`] order.
pub static TYPES: &[TypeSpec] = &[
    TypeSpec {
        object_type: ObjectType::Tenant,
        fields: &[],
    },
    TypeSpec {
        object_type: ObjectType::Folder,
        // The parent of a folder is its own `folder` attribute, not a field: one source of truth.
        fields: &[FieldSpec::str("object_type").rule(Rule::ObjectTypeName)],
    },
    TypeSpec {
        object_type: ObjectType::Host,
        fields: &[
            FieldSpec::str("ip_address").required(),
            FieldSpec::str("os_type"),
            FieldSpec::int("lca_port").range(1, PORT_MAX),
        ],
    },
    TypeSpec {
        object_type: ObjectType::Application,
        fields: &[
            FieldSpec::str("app_type").required(),
            FieldSpec::reference("host", ObjectType::Host).required(),
            FieldSpec::int("port").required().range(1, PORT_MAX),
            FieldSpec::str("command_line"),
            FieldSpec::str("working_directory"),
            FieldSpec::bool("autostart"),
            FieldSpec::reference("backup", ObjectType::Application).rule(Rule::SameAsTarget("app_type")),
            FieldSpec::str("redundancy").one_of(REDUNDANCY_TYPES),
            FieldSpec::ref_list("connections", ObjectType::Application),
        ],
    },
    TypeSpec {
        object_type: ObjectType::Person,
        fields: &[
            FieldSpec::str("user_name").required().unique(),
            FieldSpec::str("password_hash").secret().rule(Rule::PhcHash),
            FieldSpec::str("first_name"),
            FieldSpec::str("last_name"),
            FieldSpec::bool("is_agent"),
            FieldSpec::ref_list("skills", ObjectType::Skill),
        ],
    },
    TypeSpec {
        object_type: ObjectType::AccessGroup,
        fields: &[
            FieldSpec::ref_list("members", ObjectType::Person),
            FieldSpec::grants("grants"),
        ],
    },
    TypeSpec {
        object_type: ObjectType::Switch,
        fields: &[FieldSpec::str("switch_type")],
    },
    TypeSpec {
        object_type: ObjectType::Dn,
        fields: &[
            FieldSpec::reference("switch", ObjectType::Switch).required(),
            FieldSpec::str("number").required(),
            FieldSpec::str("dn_type").one_of(DN_TYPES),
        ],
    },
    TypeSpec {
        object_type: ObjectType::Place,
        fields: &[FieldSpec::ref_list("dns", ObjectType::Dn)],
    },
    TypeSpec {
        object_type: ObjectType::AgentGroup,
        fields: &[FieldSpec::ref_list("members", ObjectType::Person)],
    },
    TypeSpec {
        object_type: ObjectType::Skill,
        fields: &[],
    },
    TypeSpec {
        object_type: ObjectType::AlarmCondition,
        fields: &[
            FieldSpec::int("message_id").required(),
            FieldSpec::str("level").one_of(ALARM_LEVELS),
            FieldSpec::reference("application", ObjectType::Application),
        ],
    },
];

/// The spec of an object type.
pub fn spec(object_type: ObjectType) -> &'static TypeSpec {
    // TYPES has one entry per variant in declaration order; `table_is_in_type_order` checks it.
    &TYPES[object_type as usize]
}

/// Whether a field of a type is secret.
pub fn is_secret(object_type: ObjectType, field: &str) -> bool {
    spec(object_type).field(field).is_some_and(|f| f.secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_type_order() {
        assert_eq!(TYPES.len(), ObjectType::ALL.len());
        for (spec, t) in TYPES.iter().zip(ObjectType::ALL) {
            assert_eq!(spec.object_type, *t);
            assert_eq!(super::spec(*t).object_type, *t);
        }
    }

    #[test]
    fn table_is_well_formed() {
        for spec in TYPES {
            for (i, f) in spec.fields.iter().enumerate() {
                assert!(
                    spec.fields[..i].iter().all(|g| g.name != f.name),
                    "{} {} twice",
                    spec.object_type,
                    f.name
                );
                assert!(
                    !["name", "tenant", "folder", "state"].contains(&f.name),
                    "reserved {}",
                    f.name
                );
                if f.unique_per_tenant || !f.allowed.is_empty() || f.secret {
                    assert_eq!(f.kind, FieldKind::Str, "{}.{}", spec.object_type, f.name);
                }
                if let Rule::SameAsTarget(other) = f.rule {
                    let FieldKind::Ref(target) = f.kind else {
                        panic!("{} not a ref", f.name)
                    };
                    assert!(super::spec(target).field(other).is_some());
                    assert!(spec.field(other).is_some());
                }
            }
        }
    }

    #[test]
    fn cascade_follows_required_single_references() {
        let dn_switch = spec(ObjectType::Dn).field("switch").unwrap();
        assert_eq!(dn_switch.on_target_delete(), OnDelete::DeleteReferrer);
        let place_dns = spec(ObjectType::Place).field("dns").unwrap();
        assert_eq!(place_dns.on_target_delete(), OnDelete::Clear);
        let backup = spec(ObjectType::Application).field("backup").unwrap();
        assert_eq!(backup.on_target_delete(), OnDelete::Clear);
    }

    #[test]
    fn password_hash_is_secret() {
        assert!(is_secret(ObjectType::Person, "password_hash"));
        assert!(!is_secret(ObjectType::Person, "user_name"));
    }
}
