//! Typed errors. Every refusal names the object it concerns ([`ObjectRef`]: type, DBID and name)
//! and, where there is one, the field; each variant has a stable code ([`ConfigError::code`]) the
//! server can put on the wire. Error messages never contain a field's value, so that a secret
//! cannot leak through them.

use std::fmt;

use crate::access::Right;
use crate::model::{ConfigObject, ObjectType};

/// Names an object in an error: its type, DBID and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// The object's type.
    pub object_type: ObjectType,
    /// The object's DBID (0 when it has none yet, in an import document).
    pub dbid: u64,
    /// The object's name (empty when unknown, e.g. for a missing object).
    pub name: String,
}

impl ObjectRef {
    /// Names `object`.
    pub fn of(object: &ConfigObject) -> Self {
        ObjectRef {
            object_type: object.object_type,
            dbid: object.dbid,
            name: object.name.clone(),
        }
    }

    /// Names an object by key only.
    pub fn key(object_type: ObjectType, dbid: u64) -> Self {
        ObjectRef {
            object_type,
            dbid,
            name: String::new(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{} dbid {}", self.object_type, self.dbid)
        } else if self.dbid == 0 {
            // Not allocated yet (an object of an import document).
            write!(f, "{} {:?}", self.object_type, self.name)
        } else {
            write!(f, "{} {:?} (dbid {})", self.object_type, self.name, self.dbid)
        }
    }
}

/// Why an operation on the configuration was refused. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A string is not an object type name.
    #[error("unknown object type {name:?}")]
    UnknownObjectType {
        /// The string given.
        name: String,
    },
    /// No object has this key.
    #[error("{object_type} dbid {dbid} does not exist")]
    NotFound {
        /// Type looked for.
        object_type: ObjectType,
        /// DBID looked for.
        dbid: u64,
    },
    /// A create names a DBID already in use for its type.
    #[error("{object}: dbid already in use")]
    DuplicateDbid {
        /// The object being created.
        object: ObjectRef,
    },
    /// The name is empty, too long, padded with spaces or contains control characters.
    #[error("{object}: invalid name: {reason}")]
    InvalidName {
        /// The object.
        object: ObjectRef,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another object of the same type in the same tenant has this name.
    #[error("{object}: name already used in tenant {tenant} by {existing}")]
    DuplicateName {
        /// The object refused.
        object: ObjectRef,
        /// The tenant DBID (0 for tenants).
        tenant: u64,
        /// The object that has the name.
        existing: ObjectRef,
    },
    /// The tenant is missing, not a tenant, or not allowed for this object.
    #[error("{object}: invalid tenant {tenant}: {reason}")]
    InvalidTenant {
        /// The object.
        object: ObjectRef,
        /// The tenant DBID given.
        tenant: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The folder is missing, of another tenant, or holds objects of another type.
    #[error("{object}: invalid folder {folder}: {reason}")]
    InvalidFolder {
        /// The object.
        object: ObjectRef,
        /// The folder DBID given.
        folder: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The field is not in the type's schema.
    #[error("{object}: unknown field `{field}`")]
    UnknownField {
        /// The object.
        object: ObjectRef,
        /// The field name.
        field: String,
    },
    /// A required field is not set.
    #[error("{object}: required field `{field}` is missing")]
    MissingField {
        /// The object.
        object: ObjectRef,
        /// The field name.
        field: String,
    },
    /// The field's value is of the wrong kind.
    #[error("{object}: field `{field}` must be {expected}, got {actual}")]
    WrongKind {
        /// The object.
        object: ObjectRef,
        /// The field name.
        field: String,
        /// The kind the schema wants.
        expected: String,
        /// The kind given.
        actual: &'static str,
    },
    /// The value has the right kind but is not acceptable.
    #[error("{object}: field `{field}`: {reason}")]
    InvalidValue {
        /// The object.
        object: ObjectRef,
        /// The field name.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Another object of the same type in the same tenant has this value of a unique field.
    #[error("{object}: field `{field}` must be unique in its tenant; {existing} has the same value")]
    DuplicateValue {
        /// The object refused.
        object: ObjectRef,
        /// The unique field.
        field: String,
        /// The object that has the value.
        existing: ObjectRef,
    },
    /// A reference points to no live object of the field's target type.
    #[error("{object}: field `{field}` refers to {target_type} dbid {target}, which does not exist")]
    DanglingReference {
        /// The referrer.
        object: ObjectRef,
        /// The reference field.
        field: String,
        /// The type the field refers to.
        target_type: ObjectType,
        /// The missing DBID.
        target: u64,
    },
    /// A reference points to an object the referrer may not refer to (itself, or another tenant).
    #[error("{object}: field `{field}` may not refer to {target}: {reason}")]
    ForbiddenReference {
        /// The referrer.
        object: ObjectRef,
        /// The reference field.
        field: &'static str,
        /// The target.
        target: ObjectRef,
        /// Why not.
        reason: &'static str,
    },
    /// A reference's target disagrees with the referrer on a field that must match.
    #[error("{object}: field `{field}` refers to {target} whose `{target_field}` differs")]
    TargetMismatch {
        /// The referrer.
        object: ObjectRef,
        /// The reference field.
        field: &'static str,
        /// The target.
        target: ObjectRef,
        /// The field that must be equal on both.
        target_field: &'static str,
    },
    /// A folder would contain itself.
    #[error("{object}: folder {folder} would make a cycle")]
    FolderCycle {
        /// The folder being placed.
        object: ObjectRef,
        /// Where it was to go.
        folder: u64,
    },
    /// A plain delete of an object other objects refer to.
    #[error("{object} is referred to by {total} object(s), e.g. {}; delete them first or cascade", first_of(.referrers))]
    Referenced {
        /// The object to delete.
        object: ObjectRef,
        /// Some of the referrers (at most [`crate::set::REFERRERS_REPORTED_MAX`]).
        referrers: Vec<ObjectRef>,
        /// How many referrers there are.
        total: usize,
    },
    /// The environment tenant and the Super Administrators group may not be deleted, and the
    /// group may not be renamed or disabled.
    #[error("{object} is protected: {reason}")]
    Protected {
        /// The object.
        object: ObjectRef,
        /// What may not be done.
        reason: &'static str,
    },
    /// A delta contradicts itself (sets and unsets the same field, …).
    #[error("{object}: invalid delta: {reason}")]
    InvalidDelta {
        /// The object.
        object: ObjectRef,
        /// What is contradictory.
        reason: String,
    },
    /// An import document is malformed or names something that cannot be resolved.
    #[error("import: {}{reason}", object.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    InvalidDocument {
        /// The document object concerned (dbid 0 if not yet allocated); none when the document
        /// as a whole is at fault.
        object: Option<ObjectRef>,
        /// What is wrong.
        reason: String,
    },
    /// A plan was made against another state of the set than the one it is applied to.
    #[error("{object}: stale plan: {reason}")]
    StalePlan {
        /// The object that changed meanwhile.
        object: ObjectRef,
        /// How.
        reason: &'static str,
    },
    /// A person lacks the right for an operation.
    #[error("person {person} may not {right} {object}")]
    AccessDenied {
        /// The person's DBID.
        person: u64,
        /// The right missing.
        right: Right,
        /// The object.
        object: ObjectRef,
    },
    /// Hashing a password failed.
    #[error(transparent)]
    Password(#[from] crate::password::PasswordError),
}

fn first_of(referrers: &[ObjectRef]) -> String {
    referrers.first().map(ToString::to_string).unwrap_or_default()
}

impl ConfigError {
    /// The object the refusal names, if it names one.
    pub fn object_mut(&mut self) -> Option<&mut ObjectRef> {
        use ConfigError::*;
        match self {
            DuplicateDbid { object }
            | InvalidName { object, .. }
            | DuplicateName { object, .. }
            | InvalidTenant { object, .. }
            | InvalidFolder { object, .. }
            | UnknownField { object, .. }
            | MissingField { object, .. }
            | WrongKind { object, .. }
            | InvalidValue { object, .. }
            | DuplicateValue { object, .. }
            | DanglingReference { object, .. }
            | ForbiddenReference { object, .. }
            | TargetMismatch { object, .. }
            | FolderCycle { object, .. }
            | Referenced { object, .. }
            | Protected { object, .. }
            | InvalidDelta { object, .. }
            | StalePlan { object, .. }
            | AccessDenied { object, .. } => Some(object),
            InvalidDocument { object, .. } => object.as_mut(),
            UnknownObjectType { .. } | NotFound { .. } | Password(_) => None,
        }
    }

    /// A stable code for the variant, for the wire and for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::UnknownObjectType { .. } => "unknown_object_type",
            ConfigError::NotFound { .. } => "not_found",
            ConfigError::DuplicateDbid { .. } => "duplicate_dbid",
            ConfigError::InvalidName { .. } => "invalid_name",
            ConfigError::DuplicateName { .. } => "duplicate_name",
            ConfigError::InvalidTenant { .. } => "invalid_tenant",
            ConfigError::InvalidFolder { .. } => "invalid_folder",
            ConfigError::UnknownField { .. } => "unknown_field",
            ConfigError::MissingField { .. } => "missing_field",
            ConfigError::WrongKind { .. } => "wrong_kind",
            ConfigError::InvalidValue { .. } => "invalid_value",
            ConfigError::DuplicateValue { .. } => "duplicate_value",
            ConfigError::DanglingReference { .. } => "dangling_reference",
            ConfigError::ForbiddenReference { .. } => "forbidden_reference",
            ConfigError::TargetMismatch { .. } => "target_mismatch",
            ConfigError::FolderCycle { .. } => "folder_cycle",
            ConfigError::Referenced { .. } => "referenced",
            ConfigError::Protected { .. } => "protected",
            ConfigError::InvalidDelta { .. } => "invalid_delta",
            ConfigError::InvalidDocument { .. } => "invalid_document",
            ConfigError::StalePlan { .. } => "stale_plan",
            ConfigError::AccessDenied { .. } => "access_denied",
            ConfigError::Password(_) => "password",
        }
    }

    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownField { field, .. }
            | ConfigError::MissingField { field, .. }
            | ConfigError::WrongKind { field, .. }
            | ConfigError::InvalidValue { field, .. }
            | ConfigError::DuplicateValue { field, .. }
            | ConfigError::DanglingReference { field, .. } => Some(field),
            ConfigError::ForbiddenReference { field, .. } | ConfigError::TargetMismatch { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The indexes of a [`crate::ConfigSet`] disagree with its objects: a bug, never an input error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("configuration index inconsistent: {0}")]
pub struct IndexInconsistency(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_named_by_what_it_has() {
        let named = |dbid: u64, name: &str| ObjectRef {
            object_type: ObjectType::Skill,
            dbid,
            name: name.into(),
        };
        assert_eq!(named(7, "english").to_string(), "skill \"english\" (dbid 7)");
        assert_eq!(named(7, "").to_string(), "skill dbid 7");
        assert_eq!(
            named(0, "english").to_string(),
            "skill \"english\"",
            "an object of an import document has no DBID yet"
        );
    }
}
