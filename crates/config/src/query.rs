//! Queries over a [`ConfigSet`]: objects of one type filtered by name (exact or prefix), tenant,
//! folder (direct contents), state and field equality, returned a page at a time in DBID order.
//!
//! The type is required because DBIDs are unique only per type, so `after_dbid` is a cursor only
//! within one type. A field filter on a `RefList` field matches when the list contains the
//! reference (`members == person 7` finds the groups person 7 is in). Queries served from an
//! index (exact name in a tenant, name prefix in a tenant, folder contents, reference equality)
//! do not scan the type.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::{ConfigObject, ObjectType, State, Value};
use crate::schema;
use crate::set::{ConfigSet, Link};

/// The most objects one page returns (the seed product's limit per client request).
pub const PAGE_LIMIT_MAX: usize = 1000;

/// How a query matches names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameMatch {
    /// The name is exactly this.
    Exact(String),
    /// The name starts with this.
    Prefix(String),
}

/// A query: one type, filters, and paging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The type of objects wanted.
    pub object_type: ObjectType,
    /// Name filter.
    #[serde(default)]
    pub name: Option<NameMatch>,
    /// Only objects of this tenant.
    #[serde(default)]
    pub tenant: Option<u64>,
    /// Only objects directly in this folder (0 = a tenant's root).
    #[serde(default)]
    pub folder: Option<u64>,
    /// Only objects whose field equals the value (or, for a `RefList`, contains the `Ref`).
    #[serde(default)]
    pub fields: Vec<(String, Value)>,
    /// Only objects in this state.
    #[serde(default)]
    pub state: Option<State>,
    /// Page size, clamped to `1..=PAGE_LIMIT_MAX`.
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// Only objects with a larger DBID: the cursor from the previous page.
    #[serde(default)]
    pub after_dbid: Option<u64>,
    /// Return `(dbid, name)` only.
    #[serde(default)]
    pub brief: bool,
}

fn default_limit() -> usize {
    PAGE_LIMIT_MAX
}

impl Query {
    /// Every object of a type, first page of [`PAGE_LIMIT_MAX`].
    pub fn new(object_type: ObjectType) -> Self {
        Query {
            object_type,
            name: None,
            tenant: None,
            folder: None,
            fields: Vec::new(),
            state: None,
            limit: PAGE_LIMIT_MAX,
            after_dbid: None,
            brief: false,
        }
    }

    /// Builder: exact name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(NameMatch::Exact(name.to_owned()));
        self
    }

    /// Builder: name prefix.
    pub fn name_prefix(mut self, prefix: &str) -> Self {
        self.name = Some(NameMatch::Prefix(prefix.to_owned()));
        self
    }

    /// Builder: tenant.
    pub fn tenant(mut self, tenant: u64) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Builder: folder (direct contents).
    pub fn folder(mut self, folder: u64) -> Self {
        self.folder = Some(folder);
        self
    }

    /// Builder: field equality.
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.push((name.to_owned(), value.into()));
        self
    }

    /// Builder: state.
    pub fn state(mut self, state: State) -> Self {
        self.state = Some(state);
        self
    }

    /// Builder: page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Builder: cursor.
    pub fn after(mut self, dbid: u64) -> Self {
        self.after_dbid = Some(dbid);
        self
    }

    /// Builder: brief results.
    pub fn brief(mut self) -> Self {
        self.brief = true;
        self
    }

    /// Whether `obj` passes every filter (not the cursor).
    pub fn matches(&self, obj: &ConfigObject) -> bool {
        obj.object_type == self.object_type
            && self.tenant.is_none_or(|t| obj.tenant == t)
            && self.folder.is_none_or(|f| obj.folder == f)
            && self.state.is_none_or(|s| obj.state == s)
            && match &self.name {
                None => true,
                Some(NameMatch::Exact(n)) => &obj.name == n,
                Some(NameMatch::Prefix(p)) => obj.name.starts_with(p.as_str()),
            }
            && self
                .fields
                .iter()
                .all(|(name, want)| match (obj.fields.get(name), want) {
                    (Some(Value::RefList(list)), Value::Ref(d)) => list.contains(d),
                    (Some(have), want) => have == want,
                    (None, _) => false,
                })
    }
}

/// An object in brief form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BriefObject {
    /// Its DBID.
    pub dbid: u64,
    /// Its name.
    pub name: String,
}

/// The objects of a page, whole or brief.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageItems {
    /// Whole objects.
    Full(Vec<ConfigObject>),
    /// `(dbid, name)` only.
    Brief(Vec<BriefObject>),
}

/// One page of query results, in DBID order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The objects.
    pub items: PageItems,
    /// The cursor for the next page (the last DBID returned), if more objects match.
    pub next_after_dbid: Option<u64>,
}

impl Page {
    /// How many objects the page holds.
    pub fn len(&self) -> usize {
        match &self.items {
            PageItems::Full(v) => v.len(),
            PageItems::Brief(v) => v.len(),
        }
    }

    /// Whether the page is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The DBIDs on the page.
    pub fn dbids(&self) -> Vec<u64> {
        match &self.items {
            PageItems::Full(v) => v.iter().map(|o| o.dbid).collect(),
            PageItems::Brief(v) => v.iter().map(|o| o.dbid).collect(),
        }
    }
}

impl ConfigSet {
    /// Runs a query over every object.
    pub fn query(&self, query: &Query) -> Page {
        self.query_filtered(query, |_| true)
    }

    /// Runs a query over the objects `visible` accepts (e.g. those a person may read); pages are
    /// filled with visible objects only.
    pub fn query_filtered(&self, query: &Query, visible: impl Fn(&ConfigObject) -> bool) -> Page {
        let limit = query.limit.clamp(1, PAGE_LIMIT_MAX);
        let after = query.after_dbid.unwrap_or(0);
        let t = query.object_type;
        let candidates: Box<dyn Iterator<Item = &ConfigObject> + '_> = match self.candidates(query) {
            Some(dbids) => Box::new(
                dbids
                    .into_iter()
                    .filter(move |d| *d > after)
                    .filter_map(move |d| self.get(t, d)),
            ),
            None => Box::new(self.objects_of_after(t, after)),
        };
        let mut found: Vec<&ConfigObject> = Vec::new();
        let mut more = false;
        for obj in candidates {
            if !query.matches(obj) || !visible(obj) {
                continue;
            }
            if found.len() == limit {
                more = true;
                break;
            }
            found.push(obj);
        }
        let found: Vec<ConfigObject> = found.into_iter().cloned().collect();
        let next_after_dbid = if more { found.last().map(|o| o.dbid) } else { None };
        let items = if query.brief {
            PageItems::Brief(
                found
                    .into_iter()
                    .map(|o| BriefObject {
                        dbid: o.dbid,
                        name: o.name,
                    })
                    .collect(),
            )
        } else {
            PageItems::Full(found)
        };
        Page { items, next_after_dbid }
    }

    /// DBIDs that may match, from an index, or `None` to scan the type.
    fn candidates(&self, query: &Query) -> Option<BTreeSet<u64>> {
        let t = query.object_type;
        if let (Some(tenant), Some(name)) = (query.tenant, &query.name) {
            return Some(match name {
                NameMatch::Exact(n) => self.by_name(t, tenant, n).map(|o| o.dbid).into_iter().collect(),
                NameMatch::Prefix(p) => self.names_range(t, tenant, p).map(|(_, d)| d).collect(),
            });
        }
        if let Some(folder) = query.folder.filter(|f| *f != 0) {
            return Some(
                self.referrers(ObjectType::Folder, folder)
                    .filter(|((st, _), link)| *st == t && *link == Link::Folder)
                    .map(|((_, d), _)| d)
                    .collect(),
            );
        }
        let spec = schema::spec(t);
        for (name, value) in &query.fields {
            let (Some(field), Value::Ref(target)) = (spec.field(name), value) else {
                continue;
            };
            let Some(target_type) = field.kind.target() else {
                continue;
            };
            return Some(
                self.referrers(target_type, *target)
                    .filter(|((st, _), link)| *st == t && *link == Link::Field(field.name))
                    .map(|((_, d), _)| d)
                    .collect(),
            );
        }
        None
    }
}
