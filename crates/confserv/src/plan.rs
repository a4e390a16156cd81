//! What each write would change, decided on the state held in memory and without side effects:
//! validation by the configuration model, the permission check on the very changes planned,
//! the mode, and the DBIDs allocated. The result is a list of [`What`] records the node commits
//! in one database transaction.
//!
//! DBIDs are allocated from `dbids`, the last DBID per type as the writer sees it (the state's,
//! plus those taken by writes planned before in the same transaction).

use std::collections::BTreeMap;

use tandem_config::access::{self, Principal};
use tandem_config::document::{self, Document};
use tandem_config::{Change, ConfigError, ConfigObject, Delta, ObjectKey, ObjectType};

use crate::error::CfgError;
use crate::record::{Mode, What};
use crate::state::State;

/// What an import found, besides the changes.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    /// Objects the import creates.
    pub created: Vec<ObjectKey>,
    /// Objects it changes.
    pub changed: Vec<ObjectKey>,
    /// Objects already as the document says.
    pub skipped: Vec<ObjectKey>,
}

/// Refuses a write the mode forbids to `caller`.
pub fn check_mode(state: &State, caller: Principal) -> Result<(), CfgError> {
    match state.mode {
        Mode::Normal => Ok(()),
        Mode::ReadOnly => Err(CfgError::ReadOnly {
            mode: Mode::ReadOnly,
            reason: "every write is refused until a Super Administrator switches the mode back",
        }),
        Mode::Emergency if access::is_super_admin(&state.set, caller) => Ok(()),
        Mode::Emergency => Err(CfgError::ReadOnly {
            mode: Mode::Emergency,
            reason: "only Super Administrators may write",
        }),
    }
}

/// The object, if it exists and `caller` may read it; otherwise `NotFound` (an object one may
/// not see is not admitted to exist).
pub fn visible(
    state: &State,
    caller: Principal,
    object_type: ObjectType,
    dbid: u64,
) -> Result<&ConfigObject, CfgError> {
    access::get_as(&state.set, caller, object_type, dbid)
        .ok_or(CfgError::Config(ConfigError::NotFound { object_type, dbid }))
}

fn check_version(current: &ConfigObject, expected: u64) -> Result<(), CfgError> {
    if expected != 0 && current.version != expected {
        return Err(CfgError::Conflict(format!(
            "{} {:?} (dbid {}) is at version {}, not {expected}",
            current.object_type, current.name, current.dbid, current.version
        )));
    }
    Ok(())
}

/// Records for committed-to-be changes planned by the model: each update and delete carries the
/// object as it is now.
fn whats_of(state: &State, changes: Vec<Change>) -> Vec<What> {
    changes
        .into_iter()
        .filter_map(|change| match change {
            Change::Create(object) => Some(What::Created { object }),
            Change::Update(object) => {
                let previous = state.set.get(object.object_type, object.dbid)?.clone();
                Some(What::Changed { object, previous })
            }
            Change::Delete { object_type, dbid, .. } => {
                let previous = state.set.get(object_type, dbid)?.clone();
                Some(What::Deleted { previous })
            }
        })
        .collect()
}

/// The last DBID allocated per type.
pub type Dbids = BTreeMap<ObjectType, u64>;

/// A create: the DBID is the type's next.
pub fn create(
    state: &State,
    dbids: &mut Dbids,
    caller: Principal,
    mut object: ConfigObject,
) -> Result<Vec<What>, CfgError> {
    check_mode(state, caller)?;
    let last = dbids.entry(object.object_type).or_insert(0);
    let tentative = (object.object_type, *last + 1);
    object.dbid = tentative.1;
    // A refusal names the object without the DBID it would have had: nothing was created, and
    // the next object of its type gets that DBID.
    let unnumbered = |mut e: ConfigError| {
        if let Some(named) = e.object_mut().filter(|o| (o.object_type, o.dbid) == tentative) {
            named.dbid = 0;
        }
        e
    };
    let object = state.set.plan_create(object).map_err(unnumbered)?;
    access::check_changes(&state.set, caller, &[Change::Create(object.clone())]).map_err(unnumbered)?;
    *last = object.dbid;
    Ok(vec![What::Created { object }])
}

/// An update by delta; an empty delta changes nothing.
pub fn update(
    state: &State,
    caller: Principal,
    object_type: ObjectType,
    dbid: u64,
    delta: &Delta,
    expected_version: u64,
) -> Result<Vec<What>, CfgError> {
    check_mode(state, caller)?;
    check_version(visible(state, caller, object_type, dbid)?, expected_version)?;
    if delta.is_empty() {
        return Ok(Vec::new());
    }
    let (object, previous) = state.set.plan_update(object_type, dbid, delta)?;
    access::check_changes(&state.set, caller, &[Change::Update(object.clone())])?;
    Ok(vec![What::Changed { object, previous }])
}

/// A delete, with the cascade the model plans.
pub fn delete(
    state: &State,
    caller: Principal,
    object_type: ObjectType,
    dbid: u64,
    cascade: bool,
    expected_version: u64,
) -> Result<Vec<What>, CfgError> {
    check_mode(state, caller)?;
    check_version(visible(state, caller, object_type, dbid)?, expected_version)?;
    let changes = state.set.plan_delete(object_type, dbid, cascade)?;
    access::check_changes(&state.set, caller, &changes)?;
    Ok(whats_of(state, changes))
}

/// A mode switch: Super Administrators only, whatever the current mode.
pub fn set_mode(state: &State, caller: Principal, mode: Mode) -> Result<Vec<What>, CfgError> {
    if !access::is_super_admin(&state.set, caller) {
        return Err(CfgError::Permission(format!(
            "person {} may not switch the mode: Super Administrators only",
            caller.0
        )));
    }
    if state.mode == mode {
        return Ok(Vec::new());
    }
    Ok(vec![What::Mode {
        mode,
        previous: state.mode,
    }])
}

/// An import: matched by type, tenant and name; see `tandem_config::document`.
pub fn import(
    state: &State,
    dbids: &mut Dbids,
    caller: Principal,
    document: &Document,
) -> Result<(Vec<What>, ImportReport), CfgError> {
    let mut last = dbids.clone();
    let plan = document::import(&state.set, document, |t| {
        let next = last.entry(t).or_insert(0);
        *next += 1;
        *next
    })?;
    let report = ImportReport {
        created: plan.creates.iter().map(ConfigObject::key).collect(),
        changed: plan.updates.iter().map(|(new, _)| new.key()).collect(),
        skipped: plan.skipped.clone(),
    };
    let changes = plan.changes();
    if !changes.is_empty() {
        check_mode(state, caller)?;
    }
    access::check_changes(&state.set, caller, &changes)?;
    *dbids = last;
    let whats = plan
        .creates
        .into_iter()
        .map(|object| What::Created { object })
        .chain(
            plan.updates
                .into_iter()
                .map(|(object, previous)| What::Changed { object, previous }),
        )
        .collect();
    Ok((whats, report))
}
