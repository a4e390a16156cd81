//! Validation of one object against the schema and the rest of a [`ConfigSet`]: name, tenant,
//! folder, every field's kind and rules, unique names and values, and references. The object is
//! checked as if it replaced the stored object with its key (for an update) or were added (for a
//! create); `View::check_dependents` then re-checks the objects whose validity depends on
//! it. Nothing here changes the set. The checks read the set through [`View`], so that an import
//! validates its planned changes on the set with the changes laid over it, not on a copy.
//!
//! Tenants: Tenant objects have tenant 0 and folder 0; every other object belongs to an existing
//! tenant. A reference may point into the referrer's own tenant or into the environment tenant
//! (DBID [`ENVIRONMENT_TENANT`]) — except a grant's folder, which for a group of the environment
//! may be in any tenant, since environment administrators administer every tenant.
//!
//! Folders: folder 0 is the tenant's root; otherwise the folder must exist in the object's own
//! tenant, must hold the object's type if its `object_type` field is set (sub-folders are always
//! allowed), and a folder may not end up inside itself.

use crate::access::Grant;
use crate::error::{ConfigError, ObjectRef};
use crate::model::{ConfigObject, ObjectKey, ObjectType, Value, ENVIRONMENT_TENANT, NAME_LEN_MAX};
use crate::password;
use crate::schema::{self, FieldKind, FieldSpec, Rule};
use crate::set::{ConfigSet, Link};

/// The deepest folder nesting accepted; bounds every walk up the folder tree.
pub const FOLDER_DEPTH_MAX: usize = 64;

fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > NAME_LEN_MAX {
        Some("longer than 255 bytes")
    } else if name.trim() != name {
        Some("starts or ends with white space")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else {
        None
    }
}

/// What validation reads of a configuration: a [`ConfigSet`], or a set with planned changes laid
/// over it (`document::Overlay`), which answers every question as the set would once the changes
/// were applied, without copying it. The checks are the trait's provided methods, so both are
/// validated by the same code.
pub(crate) trait View {
    /// The object with this key.
    fn object(&self, object_type: ObjectType, dbid: u64) -> Option<&ConfigObject>;
    /// The object of this type and tenant with this name.
    fn named(&self, object_type: ObjectType, tenant: u64, name: &str) -> Option<&ConfigObject>;
    /// The object of this type and tenant whose unique field `field` has value `value`.
    fn unique(&self, object_type: ObjectType, tenant: u64, field: &str, value: &str) -> Option<&ConfigObject>;
    /// Who refers to the object with this key, and how.
    fn links_to(&self, object_type: ObjectType, dbid: u64) -> Box<dyn Iterator<Item = (ObjectKey, Link)> + '_>;
    /// Names the object with this key in an error.
    fn describe(&self, key: ObjectKey) -> ObjectRef {
        self.object(key.0, key.1)
            .map(ObjectRef::of)
            .unwrap_or_else(|| ObjectRef::key(key.0, key.1))
    }

    /// Validates `obj` fully against the schema and the set (see the module documentation).
    fn check_object(&self, obj: &ConfigObject) -> Result<(), ConfigError> {
        let me = || ObjectRef::of(obj);
        if let Some(reason) = name_problem(&obj.name) {
            return Err(ConfigError::InvalidName { object: me(), reason });
        }
        self.check_tenant_and_folder(obj)?;
        if let Some(existing) = self.named(obj.object_type, obj.tenant, &obj.name) {
            if existing.dbid != obj.dbid {
                return Err(ConfigError::DuplicateName {
                    object: me(),
                    tenant: obj.tenant,
                    existing: ObjectRef::of(existing),
                });
            }
        }
        for (what, sections) in [("options", &obj.options), ("annex", &obj.annex)] {
            for (section, keys) in sections {
                if section.is_empty() || keys.keys().any(String::is_empty) {
                    return Err(ConfigError::InvalidValue {
                        object: me(),
                        field: what.to_owned(),
                        reason: format!("empty section name or key in section {section:?}"),
                    });
                }
            }
        }
        let spec = schema::spec(obj.object_type);
        for (name, value) in &obj.fields {
            let Some(field) = spec.field(name) else {
                return Err(ConfigError::UnknownField {
                    object: me(),
                    field: name.clone(),
                });
            };
            self.check_value(obj, field, value)?;
        }
        if let Some(missing) = spec
            .fields
            .iter()
            .find(|f| f.required && !obj.fields.contains_key(f.name))
        {
            return Err(ConfigError::MissingField {
                object: me(),
                field: missing.name.to_owned(),
            });
        }
        Ok(())
    }

    fn check_tenant_and_folder(&self, obj: &ConfigObject) -> Result<(), ConfigError> {
        let me = || ObjectRef::of(obj);
        if obj.object_type == ObjectType::Tenant {
            if obj.tenant != 0 {
                return Err(ConfigError::InvalidTenant {
                    object: me(),
                    tenant: obj.tenant,
                    reason: "a tenant object has tenant 0",
                });
            }
            if obj.folder != 0 {
                return Err(ConfigError::InvalidFolder {
                    object: me(),
                    folder: obj.folder,
                    reason: "a tenant object is in no folder",
                });
            }
            return Ok(());
        }
        if self.object(ObjectType::Tenant, obj.tenant).is_none() {
            return Err(ConfigError::InvalidTenant {
                object: me(),
                tenant: obj.tenant,
                reason: "no such tenant",
            });
        }
        if obj.folder == 0 {
            return Ok(());
        }
        let invalid = |reason| ConfigError::InvalidFolder {
            object: me(),
            folder: obj.folder,
            reason,
        };
        let Some(folder) = self.object(ObjectType::Folder, obj.folder) else {
            return Err(invalid("no such folder"));
        };
        if folder.tenant != obj.tenant {
            return Err(invalid("the folder belongs to another tenant"));
        }
        if obj.object_type != ObjectType::Folder {
            if let Some(holds) = folder.str_field("object_type") {
                if holds != obj.object_type.name() {
                    return Err(invalid("the folder holds objects of another type"));
                }
            }
            return Ok(());
        }
        // A folder: walk up, bounded, and never meet itself.
        let mut current = obj.folder;
        for _ in 0..FOLDER_DEPTH_MAX {
            if current == 0 {
                return Ok(());
            }
            if current == obj.dbid {
                return Err(ConfigError::FolderCycle {
                    object: me(),
                    folder: obj.folder,
                });
            }
            current = self.object(ObjectType::Folder, current).map_or(0, |f| f.folder);
        }
        Err(invalid("folders nested deeper than 64 levels"))
    }

    fn check_value(&self, obj: &ConfigObject, field: &FieldSpec, value: &Value) -> Result<(), ConfigError> {
        let me = || ObjectRef::of(obj);
        let invalid = |reason: String| ConfigError::InvalidValue {
            object: me(),
            field: field.name.to_owned(),
            reason,
        };
        match (field.kind, value) {
            (FieldKind::Str, Value::Str(s)) => {
                if field.required && s.is_empty() {
                    return Err(invalid("must not be empty".to_owned()));
                }
                if !field.allowed.is_empty() && !field.allowed.contains(&s.as_str()) {
                    return Err(invalid(format!("must be one of {:?}", field.allowed)));
                }
                match field.rule {
                    Rule::PhcHash if !password::is_password_hash(s) => {
                        return Err(invalid(
                            "must be an argon2 PHC hash, never a password in clear".to_owned(),
                        ));
                    }
                    Rule::ObjectTypeName if s.parse::<ObjectType>().is_err() => {
                        return Err(invalid("must be an object type name".to_owned()));
                    }
                    _ => {}
                }
                if field.unique_per_tenant {
                    if let Some(existing) = self.unique(obj.object_type, obj.tenant, field.name, s) {
                        if existing.dbid != obj.dbid {
                            return Err(ConfigError::DuplicateValue {
                                object: me(),
                                field: field.name.to_owned(),
                                existing: ObjectRef::of(existing),
                            });
                        }
                    }
                }
                Ok(())
            }
            (FieldKind::Int, Value::Int(i)) => {
                if field.min.is_some_and(|min| *i < min) || field.max.is_some_and(|max| *i > max) {
                    return Err(invalid(format!(
                        "must lie in {}..={}",
                        field.min.unwrap_or(i64::MIN),
                        field.max.unwrap_or(i64::MAX)
                    )));
                }
                Ok(())
            }
            (FieldKind::Bool, Value::Bool(_)) => Ok(()),
            (FieldKind::Ref(target_type), Value::Ref(dbid)) => {
                let target = self.check_target(obj, field, target_type, *dbid)?;
                if let Rule::SameAsTarget(other) = field.rule {
                    if target.fields.get(other) != obj.fields.get(other) {
                        return Err(ConfigError::TargetMismatch {
                            object: me(),
                            field: field.name,
                            target: ObjectRef::of(target),
                            target_field: other,
                        });
                    }
                }
                Ok(())
            }
            (FieldKind::RefList(target_type), Value::RefList(list)) => {
                for (i, dbid) in list.iter().enumerate() {
                    if list[..i].contains(dbid) {
                        return Err(invalid(format!("lists {target_type} dbid {dbid} twice")));
                    }
                    self.check_target(obj, field, target_type, *dbid)?;
                }
                Ok(())
            }
            (FieldKind::Grants, Value::Grants(grants)) => {
                for grant in grants {
                    self.check_grant(obj, field, grant)?;
                }
                Ok(())
            }
            (kind, value) => Err(ConfigError::WrongKind {
                object: me(),
                field: field.name.to_owned(),
                expected: kind.to_string(),
                actual: value.kind_name(),
            }),
        }
    }

    /// The live target of a reference, in a tenant the referrer may refer to.
    fn check_target(
        &self,
        obj: &ConfigObject,
        field: &FieldSpec,
        target_type: ObjectType,
        dbid: u64,
    ) -> Result<&ConfigObject, ConfigError> {
        let forbidden = |target: ObjectRef, reason| ConfigError::ForbiddenReference {
            object: ObjectRef::of(obj),
            field: field.name,
            target,
            reason,
        };
        if (target_type, dbid) == obj.key() {
            return Err(forbidden(ObjectRef::of(obj), "an object may not refer to itself"));
        }
        let Some(target) = self.object(target_type, dbid) else {
            return Err(ConfigError::DanglingReference {
                object: ObjectRef::of(obj),
                field: field.name.to_owned(),
                target_type,
                target: dbid,
            });
        };
        if target.tenant != obj.tenant && target.tenant != ENVIRONMENT_TENANT {
            return Err(forbidden(ObjectRef::of(target), "it belongs to another tenant"));
        }
        Ok(target)
    }

    fn check_grant(&self, obj: &ConfigObject, field: &FieldSpec, grant: &Grant) -> Result<(), ConfigError> {
        if grant.rights.is_empty() {
            return Err(ConfigError::InvalidValue {
                object: ObjectRef::of(obj),
                field: field.name.to_owned(),
                reason: "a grant must give at least one right".to_owned(),
            });
        }
        let Some(dbid) = grant.folder else { return Ok(()) };
        let Some(folder) = self.object(ObjectType::Folder, dbid) else {
            return Err(ConfigError::DanglingReference {
                object: ObjectRef::of(obj),
                field: field.name.to_owned(),
                target_type: ObjectType::Folder,
                target: dbid,
            });
        };
        if obj.tenant != ENVIRONMENT_TENANT && folder.tenant != obj.tenant {
            return Err(ConfigError::ForbiddenReference {
                object: ObjectRef::of(obj),
                field: field.name,
                target: ObjectRef::of(folder),
                reason: "a tenant's group may only grant rights in its own tenant",
            });
        }
        Ok(())
    }

    /// Re-checks the objects whose validity depends on `new` replacing `old`: referrers whose
    /// field must agree with a field of `new` (an application's backup has the same `app_type`),
    /// and the contents of a folder whose `object_type` changed.
    fn check_dependents(&self, new: &ConfigObject, old: &ConfigObject) -> Result<(), ConfigError> {
        if new.fields == old.fields {
            return Ok(());
        }
        for ((src_type, src_dbid), link) in self.links_to(new.object_type, new.dbid) {
            let Link::Field(field_name) = link else { continue };
            let Some(field) = schema::spec(src_type).field(field_name) else {
                continue;
            };
            let Rule::SameAsTarget(other) = field.rule else {
                continue;
            };
            let Some(src) = self.object(src_type, src_dbid) else {
                continue;
            };
            if src.fields.get(other) != new.fields.get(other) {
                return Err(ConfigError::TargetMismatch {
                    object: ObjectRef::of(src),
                    field: field.name,
                    target: ObjectRef::of(new),
                    target_field: other,
                });
            }
        }
        if new.object_type == ObjectType::Folder && new.fields.get("object_type") != old.fields.get("object_type") {
            if let Some(holds) = new.str_field("object_type") {
                for ((src_type, src_dbid), link) in self.links_to(ObjectType::Folder, new.dbid) {
                    if link == Link::Folder && src_type != ObjectType::Folder && src_type.name() != holds {
                        return Err(ConfigError::InvalidFolder {
                            object: self.describe((src_type, src_dbid)),
                            folder: new.dbid,
                            reason: "the folder would hold objects of another type",
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl View for ConfigSet {
    fn object(&self, object_type: ObjectType, dbid: u64) -> Option<&ConfigObject> {
        self.get(object_type, dbid)
    }

    fn named(&self, object_type: ObjectType, tenant: u64, name: &str) -> Option<&ConfigObject> {
        self.by_name(object_type, tenant, name)
    }

    fn unique(&self, object_type: ObjectType, tenant: u64, field: &str, value: &str) -> Option<&ConfigObject> {
        self.by_unique(object_type, tenant, field, value)
    }

    fn links_to(&self, object_type: ObjectType, dbid: u64) -> Box<dyn Iterator<Item = (ObjectKey, Link)> + '_> {
        Box::new(self.referrers(object_type, dbid))
    }
}
