//! [`Delta`]: the change an update makes to one object. A delta changes only what it names — the
//! name, the state, the folder, fields to set or unset, option and annex keys or sections to set
//! or delete — and leaves everything else as it was. The tenant of an object never changes.
//!
//! Within one delta, deletions of option/annex keys and sections are applied before the sets, and
//! a delta that both sets and deletes the same key (or sets a key in a section it deletes), or
//! both sets and unsets a field, is refused as contradictory. Deleting a key or section that is
//! not there is not an error: the result is the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ObjectRef};
use crate::model::{ConfigObject, ObjectType, RedactedFields, Sections, State, Value};
use crate::schema;

/// Changes to options or to the annex (section → key → value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionsDelta {
    /// Keys to set, per section; a section not yet there is created.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: Sections,
    /// Keys to delete, per section.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delete_keys: BTreeMap<String, BTreeSet<String>>,
    /// Whole sections to delete.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub delete_sections: BTreeSet<String>,
}

impl SectionsDelta {
    /// Whether this changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete_keys.is_empty() && self.delete_sections.is_empty()
    }

    fn contradiction(&self) -> Option<String> {
        for (section, keys) in &self.set {
            if self.delete_sections.contains(section) {
                return Some(format!("section {section:?} is both set and deleted"));
            }
            if let Some(deleted) = self.delete_keys.get(section) {
                if let Some(key) = keys.keys().find(|k| deleted.contains(*k)) {
                    return Some(format!("key {section:?}/{key:?} is both set and deleted"));
                }
            }
        }
        None
    }

    fn apply(&self, sections: &mut Sections) {
        for section in &self.delete_sections {
            sections.remove(section);
        }
        for (section, keys) in &self.delete_keys {
            if let Some(values) = sections.get_mut(section) {
                for key in keys {
                    values.remove(key);
                }
            }
        }
        for (section, keys) in &self.set {
            let values = sections.entry(section.clone()).or_default();
            for (key, value) in keys {
                values.insert(key.clone(), value.clone());
            }
        }
    }
}

/// An update to one object: only what is named changes.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// A new name, if renaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A new state, if enabling or disabling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// A new folder (0 = root), if moving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<u64>,
    /// Fields to set (added or replaced).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_fields: BTreeMap<String, Value>,
    /// Fields to unset.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unset_fields: BTreeSet<String>,
    /// Changes to options.
    #[serde(default, skip_serializing_if = "SectionsDelta::is_empty")]
    pub options: SectionsDelta,
    /// Changes to the annex.
    #[serde(default, skip_serializing_if = "SectionsDelta::is_empty")]
    pub annex: SectionsDelta,
}

impl Delta {
    /// A delta that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: rename.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Builder: set the state.
    pub fn state(mut self, state: State) -> Self {
        self.state = Some(state);
        self
    }

    /// Builder: move to a folder (0 = root).
    pub fn folder(mut self, folder: u64) -> Self {
        self.folder = Some(folder);
        self
    }

    /// Builder: set a field.
    pub fn set_field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set_fields.insert(name.to_owned(), value.into());
        self
    }

    /// Builder: unset a field.
    pub fn unset_field(mut self, name: &str) -> Self {
        self.unset_fields.insert(name.to_owned());
        self
    }

    /// Builder: set an option key.
    pub fn set_option(mut self, section: &str, key: &str, value: &str) -> Self {
        self.options
            .set
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Builder: delete an option key.
    pub fn delete_option(mut self, section: &str, key: &str) -> Self {
        self.options
            .delete_keys
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned());
        self
    }

    /// Builder: delete an option section.
    pub fn delete_option_section(mut self, section: &str) -> Self {
        self.options.delete_sections.insert(section.to_owned());
        self
    }

    /// Builder: set an annex key.
    pub fn set_annex(mut self, section: &str, key: &str, value: &str) -> Self {
        self.annex
            .set
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// Builder: delete an annex key.
    pub fn delete_annex(mut self, section: &str, key: &str) -> Self {
        self.annex
            .delete_keys
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned());
        self
    }

    /// Builder: delete an annex section.
    pub fn delete_annex_section(mut self, section: &str) -> Self {
        self.annex.delete_sections.insert(section.to_owned());
        self
    }

    /// Whether this changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.state.is_none()
            && self.folder.is_none()
            && self.set_fields.is_empty()
            && self.unset_fields.is_empty()
            && self.options.is_empty()
            && self.annex.is_empty()
    }

    /// The object `old` becomes under this delta, version unchanged and not yet validated
    /// against the schema (except that unset fields must be known to it).
    pub fn apply_to(&self, old: &ConfigObject) -> Result<ConfigObject, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidDelta {
            object: ObjectRef::of(old),
            reason,
        };
        if let Some(field) = self.set_fields.keys().find(|f| self.unset_fields.contains(*f)) {
            return Err(invalid(format!("field `{field}` is both set and unset")));
        }
        if let Some(reason) = self.options.contradiction() {
            return Err(invalid(format!("options: {reason}")));
        }
        if let Some(reason) = self.annex.contradiction() {
            return Err(invalid(format!("annex: {reason}")));
        }
        let spec = schema::spec(old.object_type);
        if let Some(field) = self.unset_fields.iter().find(|f| spec.field(f).is_none()) {
            return Err(ConfigError::UnknownField {
                object: ObjectRef::of(old),
                field: field.clone(),
            });
        }

        let mut new = old.clone();
        if let Some(name) = &self.name {
            new.name = name.clone();
        }
        if let Some(state) = self.state {
            new.state = state;
        }
        if let Some(folder) = self.folder {
            new.folder = folder;
        }
        for field in &self.unset_fields {
            new.fields.remove(field);
        }
        for (field, value) in &self.set_fields {
            new.fields.insert(field.clone(), value.clone());
        }
        self.options.apply(&mut new.options);
        self.annex.apply(&mut new.annex);
        Ok(new)
    }

    /// The delta that turns `old` into `new` (same object; the tenant must be equal). Options
    /// and annex sections are replaced whole where they differ.
    pub fn between(old: &ConfigObject, new: &ConfigObject) -> Delta {
        let mut delta = Delta::new();
        if old.name != new.name {
            delta.name = Some(new.name.clone());
        }
        if old.state != new.state {
            delta.state = Some(new.state);
        }
        if old.folder != new.folder {
            delta.folder = Some(new.folder);
        }
        for (field, value) in &new.fields {
            if old.fields.get(field) != Some(value) {
                delta.set_fields.insert(field.clone(), value.clone());
            }
        }
        for field in old.fields.keys() {
            if !new.fields.contains_key(field) {
                delta.unset_fields.insert(field.clone());
            }
        }
        delta.options = sections_between(&old.options, &new.options);
        delta.annex = sections_between(&old.annex, &new.annex);
        delta
    }
}

fn sections_between(old: &Sections, new: &Sections) -> SectionsDelta {
    let mut delta = SectionsDelta::default();
    for (section, keys) in new {
        match old.get(section) {
            Some(old_keys) if old_keys == keys => {}
            Some(old_keys) => {
                let set: BTreeMap<_, _> = keys
                    .iter()
                    .filter(|(k, v)| old_keys.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let deleted: BTreeSet<_> = old_keys.keys().filter(|k| !keys.contains_key(*k)).cloned().collect();
                if !set.is_empty() {
                    delta.set.insert(section.clone(), set);
                }
                if !deleted.is_empty() {
                    delta.delete_keys.insert(section.clone(), deleted);
                }
            }
            None => {
                delta.set.insert(section.clone(), keys.clone());
            }
        }
    }
    for section in old.keys() {
        if !new.contains_key(section) {
            delta.delete_sections.insert(section.clone());
        }
    }
    delta
}

/// Which type's schema says which set fields are secret is unknown to a bare delta, so `Debug`
/// hides a field's value if it is secret in any type.
impl fmt::Debug for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret_in_any = ObjectType::ALL
            .iter()
            .copied()
            .find(|t| self.set_fields.keys().any(|name| schema::is_secret(*t, name)))
            .unwrap_or(ObjectType::Tenant);
        f.debug_struct("Delta")
            .field("name", &self.name)
            .field("state", &self.state)
            .field("folder", &self.folder)
            .field(
                "set_fields",
                &RedactedFields {
                    object_type: secret_in_any,
                    fields: &self.set_fields,
                },
            )
            .field("unset_fields", &self.unset_fields)
            .field("options", &self.options)
            .field("annex", &self.annex)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> ConfigObject {
        ConfigObject::new(ObjectType::Host, 2, "h", 1)
            .with_field("ip_address", "10.0.0.1")
            .with_field("os_type", "linux")
            .with_option("a", "x", "1")
            .with_option("a", "y", "2")
            .with_option("b", "z", "3")
            .with_annex("n", "k", "v")
    }

    #[test]
    fn only_named_parts_change() {
        let old = host();
        let new = Delta::new()
            .set_option("a", "x", "9")
            .delete_option("a", "y")
            .apply_to(&old)
            .unwrap();
        assert_eq!(new.options["a"].len(), 1);
        assert_eq!(new.options["a"]["x"], "9");
        assert_eq!(new.options["b"], old.options["b"]);
        assert_eq!(new.fields, old.fields);
        assert_eq!(new.annex, old.annex);
        assert_eq!(new.name, old.name);
        assert_eq!(new.version, old.version);
    }

    #[test]
    fn sections_and_fields() {
        let old = host();
        let new = Delta::new()
            .delete_option_section("b")
            .set_option("c", "k", "v")
            .unset_field("os_type")
            .set_field("lca_port", 4999)
            .delete_annex_section("n")
            .apply_to(&old)
            .unwrap();
        assert!(!new.options.contains_key("b"));
        assert_eq!(new.options["c"]["k"], "v");
        assert!(!new.fields.contains_key("os_type"));
        assert_eq!(new.fields.get("lca_port").cloned().unwrap(), Value::Int(4999));
        assert!(new.annex.is_empty());
    }

    #[test]
    fn contradictions_are_refused() {
        let old = host();
        let both = Delta::new().set_field("os_type", "x").unset_field("os_type");
        assert!(matches!(both.apply_to(&old), Err(ConfigError::InvalidDelta { .. })));
        let key = Delta::new().set_option("a", "x", "1").delete_option("a", "x");
        assert!(matches!(key.apply_to(&old), Err(ConfigError::InvalidDelta { .. })));
        let section = Delta::new().set_annex("n", "x", "1").delete_annex_section("n");
        assert!(matches!(section.apply_to(&old), Err(ConfigError::InvalidDelta { .. })));
        let unknown = Delta::new().unset_field("nope");
        assert!(matches!(unknown.apply_to(&old), Err(ConfigError::UnknownField { .. })));
    }

    #[test]
    fn between_reproduces_the_target() {
        let old = host();
        let new = Delta::new()
            .name("h2")
            .delete_option_section("b")
            .set_option("a", "x", "5")
            .delete_option("a", "y")
            .set_option("c", "k", "v")
            .unset_field("os_type")
            .set_annex("n", "k2", "v2")
            .apply_to(&old)
            .unwrap();
        let delta = Delta::between(&old, &new);
        assert_eq!(delta.apply_to(&old).unwrap(), new);
        assert!(Delta::between(&old, &old).is_empty());
    }

    #[test]
    fn debug_redacts_password_hash() {
        let delta = Delta::new().set_field("password_hash", "$argon2id$secretstuff");
        let printed = format!("{delta:?}");
        assert!(!printed.contains("secretstuff"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
