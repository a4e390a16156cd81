//! Import and export of configuration as a portable [`Document`] (serde), written as JSON or
//! YAML ([`TextFormat`]).
//!
//! A document names everything: an object by `(type, tenant name, name)` (names are unique per
//! type in a tenant), its folder by name in its tenant, and every reference by the target's
//! `(type, tenant name, name)`. DBIDs and versions are not exported, so a document can be imported
//! into another database. Objects come in a stable order: by type (in [`ObjectType::ALL`] order),
//! then tenant name, then name; lists keep their order.
//!
//! Import matches document objects to existing ones by type, tenant and name; a matched object
//! becomes exactly what the document says (fields, options and annex are replaced, not merged),
//! an unmatched one is created with a DBID from the caller's allocator, and objects not in the
//! document are left alone. [`import`] only plans: it validates the whole result (on the set with
//! the planned changes laid over it, without copying the set) and returns an [`ImportPlan`] —
//! creates, updates, skips — which [`ImportPlan::apply`] applies all or nothing, or whose
//! [`ImportPlan::changes`] the server commits. Importing the same document twice creates and
//! changes nothing the second time. A reference may point outside the document, to an object the
//! target set already has.
//!
//! **Text formats.** JSON is the format of the wire and of the store. YAML is the same model,
//! mapping for mapping: a field value is a one-key mapping (`str: text`, `ref: {type, tenant,
//! name}`), exactly as in JSON, not a YAML tag, so a document converts between the two formats
//! with any generic tool, and JSON → YAML → JSON gives the same document. A YAML syntax error is
//! reported with its line and column.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::access::{in_folder, Grant, Right};
use crate::error::{ConfigError, ObjectRef};
use crate::model::{ConfigObject, ObjectKey, ObjectType, RedactedFields, Sections, State, Value};
use crate::schema::{self, FieldKind};
use crate::set::{links_of, unique_keys, Change, ConfigSet, Link};
use crate::validate::View;

/// The document format this crate writes and reads.
pub const DOCUMENT_FORMAT: u32 = 1;

/// A portable configuration document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Format version, [`DOCUMENT_FORMAT`].
    pub format: u32,
    /// The objects, in the stable order described in the module documentation.
    pub objects: Vec<DocObject>,
}

/// An object named by its type, tenant and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocRef {
    /// The target's type.
    #[serde(rename = "type")]
    pub object_type: ObjectType,
    /// The target's tenant name; `None` for a tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The target's name.
    pub name: String,
}

/// A grant whose folder is named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocGrant {
    /// The type covered; `None` = all.
    #[serde(default)]
    pub object_type: Option<ObjectType>,
    /// The folder covered with its sub-folders; `None` = everywhere.
    #[serde(default)]
    pub folder: Option<DocRef>,
    /// The rights given.
    pub rights: BTreeSet<Right>,
}

/// A field value with references by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A reference.
    Ref(DocRef),
    /// A list of references.
    RefList(Vec<DocRef>),
    /// Grants.
    Grants(Vec<DocGrant>),
}

/// One object of a document. `Debug` hides secret fields.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocObject {
    /// The object's type.
    #[serde(rename = "type")]
    pub object_type: ObjectType,
    /// Its name.
    pub name: String,
    /// Its tenant's name; `None` for a tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its folder's name in its tenant; `None` = the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// Its state.
    #[serde(default)]
    pub state: State,
    /// Its fields, references by name.
    #[serde(default)]
    pub fields: BTreeMap<String, DocValue>,
    /// Its options.
    #[serde(default)]
    pub options: Sections,
    /// Its annex.
    #[serde(default)]
    pub annex: Sections,
}

impl DocObject {
    /// The reference naming this object.
    pub fn doc_ref(&self) -> DocRef {
        DocRef {
            object_type: self.object_type,
            tenant: self.tenant.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Debug for DocObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocObject")
            .field("object_type", &self.object_type)
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
            .finish()
    }
}

impl Document {
    /// The document as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing these plain data types cannot fail (string keys, no custom serializers).
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A document from JSON.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(json).map_err(|e| ConfigError::InvalidDocument {
            object: None,
            reason: format!("not a document: {e}"),
        })
    }

    /// The document as YAML (see the module documentation: field values are one-key mappings,
    /// as in JSON).
    pub fn to_yaml(&self) -> String {
        let mut out = Vec::new();
        // As for JSON, serializing these plain data types cannot fail; the emitter writes UTF-8.
        let written =
            yaml_serde::with::singleton_map_recursive::serialize(self, &mut yaml_serde::Serializer::new(&mut out));
        match written {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// A document from YAML; a syntax error or a value of the wrong shape is reported with its
    /// line and column.
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        yaml_serde::with::singleton_map_recursive::deserialize(yaml_serde::Deserializer::from_str(yaml)).map_err(
            |e: yaml_serde::Error| {
                let reason = match e.location() {
                    Some(at) => format!(
                        "not a YAML document: line {}, column {}: {}",
                        at.line(),
                        at.column(),
                        yaml_message(&e)
                    ),
                    None => format!("not a YAML document: {e}"),
                };
                ConfigError::InvalidDocument { object: None, reason }
            },
        )
    }

    /// The document as text in `format`.
    pub fn to_text(&self, format: TextFormat) -> String {
        match format {
            TextFormat::Json => self.to_json(),
            TextFormat::Yaml => self.to_yaml(),
        }
    }

    /// A document from text in `format`.
    pub fn from_text(text: &str, format: TextFormat) -> Result<Self, ConfigError> {
        match format {
            TextFormat::Json => Self::from_json(text),
            TextFormat::Yaml => Self::from_yaml(text),
        }
    }
}

/// The message of a YAML error without the position its `Display` appends (it is given first).
fn yaml_message(e: &yaml_serde::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) if e.location().is_some() => text[..at].to_owned(),
        _ => text,
    }
}

/// The text formats of a [`Document`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TextFormat {
    /// JSON, pretty-printed: the format of the wire and the default of the command line.
    Json,
    /// YAML, the same model mapping for mapping.
    Yaml,
}

impl TextFormat {
    /// The format a file name's extension names: `.yaml` / `.yml` → YAML, `.json` → JSON (any
    /// case); `None` for any other name.
    pub fn from_file_name(name: &str) -> Option<TextFormat> {
        let (_, extension) = name.rsplit_once('.')?;
        match extension.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(TextFormat::Yaml),
            "json" => Some(TextFormat::Json),
            _ => None,
        }
    }
}

impl fmt::Display for TextFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextFormat::Json => "json",
            TextFormat::Yaml => "yaml",
        })
    }
}

impl std::str::FromStr for TextFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(TextFormat::Json),
            "yaml" | "yml" => Ok(TextFormat::Yaml),
            other => Err(format!("unknown document format {other:?}: json or yaml")),
        }
    }
}

// ----- export -----

struct Exporter<'a> {
    set: &'a ConfigSet,
}

impl Exporter<'_> {
    fn tenant_name(&self, obj: &ConfigObject) -> Result<Option<String>, ConfigError> {
        if obj.object_type == ObjectType::Tenant {
            return Ok(None);
        }
        self.set
            .get(ObjectType::Tenant, obj.tenant)
            .map(|t| Some(t.name.clone()))
            .ok_or(ConfigError::InvalidTenant {
                object: ObjectRef::of(obj),
                tenant: obj.tenant,
                reason: "no such tenant",
            })
    }

    fn name_ref(
        &self,
        from: &ConfigObject,
        field: &str,
        object_type: ObjectType,
        dbid: u64,
    ) -> Result<DocRef, ConfigError> {
        let target = self
            .set
            .get(object_type, dbid)
            .ok_or_else(|| ConfigError::DanglingReference {
                object: ObjectRef::of(from),
                field: field.to_owned(),
                target_type: object_type,
                target: dbid,
            })?;
        Ok(DocRef {
            object_type,
            tenant: self.tenant_name(target)?,
            name: target.name.clone(),
        })
    }

    fn value(&self, obj: &ConfigObject, field: &str, value: &Value) -> Result<DocValue, ConfigError> {
        let spec = schema::spec(obj.object_type)
            .field(field)
            .ok_or_else(|| ConfigError::UnknownField {
                object: ObjectRef::of(obj),
                field: field.to_owned(),
            })?;
        Ok(match (spec.kind, value) {
            (_, Value::Str(s)) => DocValue::Str(s.clone()),
            (_, Value::Int(i)) => DocValue::Int(*i),
            (_, Value::Bool(b)) => DocValue::Bool(*b),
            (FieldKind::Ref(t), Value::Ref(d)) => DocValue::Ref(self.name_ref(obj, field, t, *d)?),
            (FieldKind::RefList(t), Value::RefList(list)) => DocValue::RefList(
                list.iter()
                    .map(|d| self.name_ref(obj, field, t, *d))
                    .collect::<Result<_, _>>()?,
            ),
            (FieldKind::Grants, Value::Grants(grants)) => DocValue::Grants(
                grants
                    .iter()
                    .map(|g| {
                        Ok(DocGrant {
                            object_type: g.object_type,
                            folder: g
                                .folder
                                .map(|f| self.name_ref(obj, field, ObjectType::Folder, f))
                                .transpose()?,
                            rights: g.rights.clone(),
                        })
                    })
                    .collect::<Result<_, ConfigError>>()?,
            ),
            (kind, value) => {
                return Err(ConfigError::WrongKind {
                    object: ObjectRef::of(obj),
                    field: field.to_owned(),
                    expected: kind.to_string(),
                    actual: value.kind_name(),
                })
            }
        })
    }

    fn object(&self, obj: &ConfigObject) -> Result<DocObject, ConfigError> {
        let folder = match obj.folder {
            0 => None,
            f => Some(self.name_ref(obj, "folder", ObjectType::Folder, f)?.name),
        };
        let fields = obj
            .fields
            .iter()
            .map(|(name, value)| Ok((name.clone(), self.value(obj, name, value)?)))
            .collect::<Result<_, ConfigError>>()?;
        Ok(DocObject {
            object_type: obj.object_type,
            name: obj.name.clone(),
            tenant: self.tenant_name(obj)?,
            folder,
            state: obj.state,
            fields,
            options: obj.options.clone(),
            annex: obj.annex.clone(),
        })
    }
}

/// Exports the whole set, or one folder with everything under it (the folder included), as a
/// document. Fails only on a set that is not valid (a dangling reference, possible only after
/// unvalidated replay) or a folder that does not exist.
pub fn export(set: &ConfigSet, folder: Option<u64>) -> Result<Document, ConfigError> {
    if let Some(f) = folder {
        if set.get(ObjectType::Folder, f).is_none() {
            return Err(ConfigError::NotFound {
                object_type: ObjectType::Folder,
                dbid: f,
            });
        }
    }
    let exporter = Exporter { set };
    let mut objects = set
        .iter()
        .filter(|o| folder.is_none_or(|f| in_folder(set, o, f)))
        .map(|o| exporter.object(o))
        .collect::<Result<Vec<_>, _>>()?;
    objects.sort_by(|a, b| (a.object_type, &a.tenant, &a.name).cmp(&(b.object_type, &b.tenant, &b.name)));
    Ok(Document {
        format: DOCUMENT_FORMAT,
        objects,
    })
}

// ----- import -----

/// What importing a document would do. Nothing has changed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportPlan {
    /// New objects, version 1, in document order.
    pub creates: Vec<ConfigObject>,
    /// Existing objects that change: `(new, previous)`, new version = previous + 1.
    pub updates: Vec<(ConfigObject, ConfigObject)>,
    /// Existing objects the document describes exactly as they are.
    pub skipped: Vec<ObjectKey>,
}

impl ImportPlan {
    /// How many objects would be created.
    pub fn created(&self) -> usize {
        self.creates.len()
    }

    /// How many objects would change.
    pub fn changed(&self) -> usize {
        self.updates.len()
    }

    /// How many objects are already as the document says.
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// The records to commit: creates then updates.
    pub fn changes(&self) -> Vec<Change> {
        self.creates
            .iter()
            .cloned()
            .map(Change::Create)
            .chain(self.updates.iter().map(|(new, _)| Change::Update(new.clone())))
            .collect()
    }

    /// Applies the plan to `set`, all or nothing. Refused if an object it updates changed since
    /// the plan was made, a DBID it creates is taken, or the result is no longer valid.
    pub fn apply(&self, set: &mut ConfigSet) -> Result<(), ConfigError> {
        for (new, previous) in &self.updates {
            match set.get(new.object_type, new.dbid) {
                Some(current) if current.version == previous.version => {}
                _ => {
                    return Err(ConfigError::StalePlan {
                        object: ObjectRef::of(previous),
                        reason: "changed or deleted since the plan was made",
                    })
                }
            }
        }
        check_plan(set, self)?;
        set.apply(self.changes())
    }
}

/// Validates `plan` as if it were applied to `set`: every object it creates or changes, and the
/// objects that depend on those it changes, on the set with the plan laid over it ([`Overlay`]).
/// The cost grows with the plan, not with the set.
fn check_plan(set: &ConfigSet, plan: &ImportPlan) -> Result<(), ConfigError> {
    let overlay = Overlay::new(set, plan)?;
    for obj in &plan.creates {
        overlay.check_object(obj)?;
    }
    for (new, previous) in &plan.updates {
        set.check_protected_update(previous, new)?;
        overlay.check_object(new)?;
        overlay.check_dependents(new, previous)?;
    }
    Ok(())
}

/// A set with a plan's creates and updates laid over it, read through [`View`] exactly as the set
/// would read once they were applied in order (creates, then updates), without copying it.
/// Building it refuses what applying would: a create of a taken key, an update of a missing one,
/// a name or unique value another object holds.
struct Overlay<'a> {
    base: &'a ConfigSet,
    /// The objects created or replaced.
    objects: BTreeMap<ObjectKey, &'a ConfigObject>,
    /// `(type, tenant, name) → dbid` of the objects in `objects`.
    names: BTreeMap<(ObjectType, u64, String), u64>,
    /// Unique-field entries of the objects in `objects`.
    unique: BTreeMap<(ObjectType, u64, &'static str, String), u64>,
    /// `target → {(referrer, link)}` of the objects in `objects`; the base's entries whose
    /// referrer is in `objects` are stale and skipped.
    links: BTreeMap<ObjectKey, BTreeSet<(ObjectKey, Link)>>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a ConfigSet, plan: &'a ImportPlan) -> Result<Self, ConfigError> {
        let mut overlay = Overlay {
            base,
            objects: BTreeMap::new(),
            names: BTreeMap::new(),
            unique: BTreeMap::new(),
            links: BTreeMap::new(),
        };
        for obj in &plan.creates {
            if overlay.object(obj.object_type, obj.dbid).is_some() {
                return Err(ConfigError::DuplicateDbid {
                    object: ObjectRef::of(obj),
                });
            }
            overlay.put(obj)?;
        }
        for (new, _) in &plan.updates {
            if overlay.object(new.object_type, new.dbid).is_none() {
                return Err(ConfigError::NotFound {
                    object_type: new.object_type,
                    dbid: new.dbid,
                });
            }
            overlay.put(new)?;
        }
        Ok(overlay)
    }

    /// Lays `obj` over the set (replacing the object with its key), refusing a name or unique
    /// value another object holds, as `ConfigSet::apply` does.
    fn put(&mut self, obj: &'a ConfigObject) -> Result<(), ConfigError> {
        if let Some(existing) = self.named(obj.object_type, obj.tenant, &obj.name) {
            if existing.dbid != obj.dbid {
                return Err(ConfigError::DuplicateName {
                    object: ObjectRef::of(obj),
                    tenant: obj.tenant,
                    existing: ObjectRef::of(existing),
                });
            }
        }
        let unique = unique_keys(obj);
        for (object_type, tenant, field, value) in &unique {
            if let Some(existing) = self.unique(*object_type, *tenant, field, value) {
                if existing.dbid != obj.dbid {
                    return Err(ConfigError::DuplicateValue {
                        object: ObjectRef::of(obj),
                        field: (*field).to_owned(),
                        existing: ObjectRef::of(existing),
                    });
                }
            }
        }
        if let Some(previous) = self.objects.insert(obj.key(), obj) {
            let name = (previous.object_type, previous.tenant, previous.name.clone());
            if self.names.get(&name) == Some(&previous.dbid) {
                self.names.remove(&name);
            }
            for key in unique_keys(previous) {
                if self.unique.get(&key) == Some(&previous.dbid) {
                    self.unique.remove(&key);
                }
            }
            for (target, link) in links_of(previous) {
                if let Some(referrers) = self.links.get_mut(&target) {
                    referrers.remove(&(previous.key(), link));
                }
            }
        }
        self.names
            .insert((obj.object_type, obj.tenant, obj.name.clone()), obj.dbid);
        for key in unique {
            self.unique.insert(key, obj.dbid);
        }
        for (target, link) in links_of(obj) {
            self.links.entry(target).or_default().insert((obj.key(), link));
        }
        Ok(())
    }
}

impl View for Overlay<'_> {
    fn object(&self, object_type: ObjectType, dbid: u64) -> Option<&ConfigObject> {
        match self.objects.get(&(object_type, dbid)) {
            Some(obj) => Some(obj),
            None => self.base.get(object_type, dbid),
        }
    }

    fn named(&self, object_type: ObjectType, tenant: u64, name: &str) -> Option<&ConfigObject> {
        if let Some(dbid) = self.names.get(&(object_type, tenant, name.to_owned())) {
            return self.object(object_type, *dbid);
        }
        self.base
            .by_name(object_type, tenant, name)
            .filter(|o| !self.objects.contains_key(&o.key()))
    }

    fn unique(&self, object_type: ObjectType, tenant: u64, field: &str, value: &str) -> Option<&ConfigObject> {
        let spec = schema::spec(object_type).field(field)?;
        if let Some(dbid) = self.unique.get(&(object_type, tenant, spec.name, value.to_owned())) {
            return self.object(object_type, *dbid);
        }
        self.base
            .by_unique(object_type, tenant, field, value)
            .filter(|o| !self.objects.contains_key(&o.key()))
    }

    fn links_to(&self, object_type: ObjectType, dbid: u64) -> Box<dyn Iterator<Item = (ObjectKey, Link)> + '_> {
        let replaced = &self.objects;
        Box::new(
            self.base
                .referrers(object_type, dbid)
                .filter(move |(src, _)| !replaced.contains_key(src))
                .chain(self.links.get(&(object_type, dbid)).into_iter().flatten().copied()),
        )
    }
}

/// Plans the import of `document` into `set` (see the module documentation); `allocate` gives
/// the DBID of each object to create, and is called once per such object: tenants first, then
/// the others, each in document order.
pub fn import(
    set: &ConfigSet,
    document: &Document,
    mut allocate: impl FnMut(ObjectType) -> u64,
) -> Result<ImportPlan, ConfigError> {
    let invalid = |doc: &DocObject, dbid: u64, reason: String| ConfigError::InvalidDocument {
        object: Some(ObjectRef {
            object_type: doc.object_type,
            dbid,
            name: doc.name.clone(),
        }),
        reason,
    };
    if document.format != DOCUMENT_FORMAT {
        return Err(ConfigError::InvalidDocument {
            object: None,
            reason: format!("format {} is not {DOCUMENT_FORMAT}", document.format),
        });
    }

    // Tenants first: every other object's key needs its tenant's DBID.
    let mut dbids: HashMap<(ObjectType, u64, String), u64> = HashMap::new();
    let mut existing: HashMap<(ObjectType, u64, String), bool> = HashMap::new();
    let mut order: Vec<(usize, u64)> = Vec::with_capacity(document.objects.len());
    for pass_tenants in [true, false] {
        for (index, doc) in document.objects.iter().enumerate() {
            if (doc.object_type == ObjectType::Tenant) != pass_tenants {
                continue;
            }
            let tenant = match (&doc.tenant, doc.object_type) {
                (None, ObjectType::Tenant) => 0,
                (Some(_), ObjectType::Tenant) => return Err(invalid(doc, 0, "a tenant has no tenant".to_owned())),
                (None, _) => return Err(invalid(doc, 0, "no tenant named".to_owned())),
                (Some(name), _) => resolve_tenant(set, &dbids, name).ok_or_else(|| {
                    invalid(
                        doc,
                        0,
                        format!("tenant {name:?} is neither in the document nor in the set"),
                    )
                })?,
            };
            let key = (doc.object_type, tenant, doc.name.clone());
            if dbids.contains_key(&key) {
                return Err(invalid(doc, 0, "appears twice in the document".to_owned()));
            }
            let (dbid, found) = match set.by_name(doc.object_type, tenant, &doc.name) {
                Some(obj) => (obj.dbid, true),
                None => (allocate(doc.object_type), false),
            };
            dbids.insert(key.clone(), dbid);
            existing.insert(key, found);
            order.push((index, dbid));
        }
    }
    order.sort_unstable();

    let resolver = Resolver { set, dbids: &dbids };
    let mut plan = ImportPlan {
        creates: Vec::new(),
        updates: Vec::new(),
        skipped: Vec::new(),
    };
    for (index, dbid) in order {
        let doc = &document.objects[index];
        let obj = resolver
            .object(doc, dbid)
            .map_err(|reason| invalid(doc, dbid, reason))?;
        match set.get(obj.object_type, dbid) {
            Some(old) if existing.get(&(obj.object_type, obj.tenant, obj.name.clone())) == Some(&true) => {
                if old.same_content(&obj) {
                    plan.skipped.push(old.key());
                } else {
                    let mut new = obj;
                    new.version = old.version + 1;
                    plan.updates.push((new, old.clone()));
                }
            }
            Some(_) => {
                return Err(ConfigError::DuplicateDbid {
                    object: ObjectRef::of(&obj),
                })
            }
            None => {
                let mut new = obj;
                new.version = 1;
                plan.creates.push(new);
            }
        }
    }
    check_plan(set, &plan)?;
    Ok(plan)
}

fn resolve_tenant(set: &ConfigSet, dbids: &HashMap<(ObjectType, u64, String), u64>, name: &str) -> Option<u64> {
    dbids
        .get(&(ObjectType::Tenant, 0, name.to_owned()))
        .copied()
        .or_else(|| set.by_name(ObjectType::Tenant, 0, name).map(|t| t.dbid))
}

/// Turns document objects into configuration objects, resolving names first against the
/// document, then against the set.
struct Resolver<'a> {
    set: &'a ConfigSet,
    dbids: &'a HashMap<(ObjectType, u64, String), u64>,
}

impl Resolver<'_> {
    fn dbid(&self, r: &DocRef) -> Result<u64, String> {
        let unresolved = || {
            format!(
                "reference to {} {:?} in tenant {:?} cannot be resolved",
                r.object_type, r.name, r.tenant
            )
        };
        let tenant = match &r.tenant {
            None => 0,
            Some(name) => resolve_tenant(self.set, self.dbids, name).ok_or_else(unresolved)?,
        };
        self.dbids
            .get(&(r.object_type, tenant, r.name.clone()))
            .copied()
            .or_else(|| self.set.by_name(r.object_type, tenant, &r.name).map(|o| o.dbid))
            .ok_or_else(unresolved)
    }

    fn typed_ref(&self, r: &DocRef, expected: ObjectType, field: &str) -> Result<u64, String> {
        if r.object_type != expected {
            return Err(format!(
                "field `{field}` refers to a {}, not a {expected}",
                r.object_type
            ));
        }
        self.dbid(r)
    }

    fn value(&self, object_type: ObjectType, field: &str, value: &DocValue) -> Result<Value, String> {
        let spec = schema::spec(object_type)
            .field(field)
            .ok_or_else(|| format!("unknown field `{field}`"))?;
        Ok(match (spec.kind, value) {
            (_, DocValue::Str(s)) => Value::Str(s.clone()),
            (_, DocValue::Int(i)) => Value::Int(*i),
            (_, DocValue::Bool(b)) => Value::Bool(*b),
            (FieldKind::Ref(t), DocValue::Ref(r)) => Value::Ref(self.typed_ref(r, t, field)?),
            (FieldKind::RefList(t), DocValue::RefList(list)) => Value::RefList(
                list.iter()
                    .map(|r| self.typed_ref(r, t, field))
                    .collect::<Result<_, _>>()?,
            ),
            (FieldKind::Grants, DocValue::Grants(grants)) => Value::Grants(
                grants
                    .iter()
                    .map(|g| {
                        Ok(Grant {
                            object_type: g.object_type,
                            folder: g
                                .folder
                                .as_ref()
                                .map(|f| self.typed_ref(f, ObjectType::Folder, field))
                                .transpose()?,
                            rights: g.rights.clone(),
                        })
                    })
                    .collect::<Result<_, String>>()?,
            ),
            (kind, _) => return Err(format!("field `{field}` must be {kind}")),
        })
    }

    fn object(&self, doc: &DocObject, dbid: u64) -> Result<ConfigObject, String> {
        let tenant = match &doc.tenant {
            None => 0,
            Some(name) => {
                resolve_tenant(self.set, self.dbids, name).ok_or_else(|| format!("unknown tenant {name:?}"))?
            }
        };
        let folder = match &doc.folder {
            None => 0,
            Some(name) => self.dbid(&DocRef {
                object_type: ObjectType::Folder,
                tenant: doc.tenant.clone(),
                name: name.clone(),
            })?,
        };
        let fields = doc
            .fields
            .iter()
            .map(|(name, value)| Ok((name.clone(), self.value(doc.object_type, name, value)?)))
            .collect::<Result<_, String>>()?;
        Ok(ConfigObject {
            object_type: doc.object_type,
            dbid,
            name: doc.name.clone(),
            tenant,
            folder,
            state: doc.state,
            fields,
            options: doc.options.clone(),
            annex: doc.annex.clone(),
            version: 0,
        })
    }
}
