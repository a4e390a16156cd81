//! Deletes: refused while referenced, and what a cascade deletes, clears and in which order.

use tandem_config::{Change, ConfigError, ConfigSet, Grant, ObjectType, Right, Value};

use crate::common::*;

fn telephony() -> ConfigSet {
    let mut set = base();
    create_all(
        &mut set,
        [
            switch(10, "sw1", ENV),
            switch(11, "sw2", ENV),
            dn(20, "1001", ENV, 10),
            dn(21, "1002", ENV, 10),
            dn(22, "2001", ENV, 11),
            place(30, "desk1", ENV, vec![20, 22]),
            place(31, "desk2", ENV, vec![21]),
        ],
    );
    set
}

fn position(keys: &[(ObjectType, u64)], key: (ObjectType, u64)) -> usize {
    keys.iter()
        .position(|k| *k == key)
        .unwrap_or_else(|| panic!("{key:?} not deleted"))
}

#[test]
fn plain_delete_is_refused_while_referenced() {
    let mut set = telephony();
    let before = set.clone();
    let err = set.delete(ObjectType::Switch, 10, false).unwrap_err();
    match &err {
        ConfigError::Referenced {
            object,
            referrers,
            total,
        } => {
            assert_eq!(object.dbid, 10);
            assert_eq!(*total, 2);
            assert!(referrers.iter().all(|r| r.object_type == ObjectType::Dn));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("switch \"sw1\""), "{err}");
    assert_eq!(set, before);
    // An unreferenced object goes alone.
    assert_eq!(
        set.delete(ObjectType::Place, 31, false).unwrap(),
        vec![(ObjectType::Place, 31)]
    );
    assert!(set.get(ObjectType::Place, 31).is_none());
    assert_consistent(&set);
}

#[test]
fn cascade_deletes_required_referrers_and_clears_optional_ones() {
    let mut set = telephony();
    let changes = set.plan_delete(ObjectType::Switch, 10, true).unwrap();
    // Place desk1 loses DN 20 but keeps DN 22; desk2 loses its only DN and is kept, empty.
    let updates: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Update(o) => Some(o.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].fields.get("dns").cloned().unwrap(), Value::RefList(vec![22]));
    assert_eq!(updates[0].version, 2);
    assert_eq!(updates[1].fields.get("dns").cloned().unwrap(), Value::RefList(vec![]));
    assert!(matches!(changes[0], Change::Update(_)), "updates come before deletions");

    let deleted = set.delete(ObjectType::Switch, 10, true).unwrap();
    assert_eq!(deleted.len(), 3);
    assert!(position(&deleted, (ObjectType::Dn, 20)) < position(&deleted, (ObjectType::Switch, 10)));
    assert!(position(&deleted, (ObjectType::Dn, 21)) < position(&deleted, (ObjectType::Switch, 10)));
    assert!(set.get(ObjectType::Place, 30).is_some() && set.get(ObjectType::Dn, 22).is_some());
    assert_eq!(
        set.get(ObjectType::Place, 30)
            .unwrap()
            .fields
            .get("dns")
            .cloned()
            .unwrap(),
        Value::RefList(vec![22])
    );
    assert_consistent(&set);
}

#[test]
fn cascade_from_a_host_deletes_its_applications_and_clears_references_to_them() {
    let mut set = base();
    create_all(
        &mut set,
        [
            host(10, "h1"),
            host(11, "h2"),
            app(20, "cs_primary", 10, "confserv"),
            app(21, "cs_backup", 10, "confserv").with_field("backup", Value::Ref(20)),
            app(22, "scs", 11, "scs").with_field("connections", Value::RefList(vec![20, 21])),
            app(23, "cs_far", 11, "confserv").with_field("backup", Value::Ref(21)),
            tandem_config::ConfigObject::new(ObjectType::AlarmCondition, 30, "cs down", ENV)
                .with_field("message_id", 1001)
                .with_field("level", "critical")
                .with_field("application", Value::Ref(20)),
        ],
    );
    // A cycle through optional references among the doomed: primary ↔ backup.
    set.update(
        ObjectType::Application,
        20,
        &tandem_config::Delta::new().set_field("backup", Value::Ref(21)),
    )
    .unwrap();

    let deleted = set.delete(ObjectType::Host, 10, true).unwrap();
    assert_eq!(deleted.len(), 3);
    assert_eq!(deleted.last(), Some(&(ObjectType::Host, 10)));
    let scs = set.get(ObjectType::Application, 22).unwrap();
    assert_eq!(scs.fields.get("connections").cloned().unwrap(), Value::RefList(vec![]));
    assert!(!set
        .get(ObjectType::Application, 23)
        .unwrap()
        .fields
        .contains_key("backup"));
    assert!(!set
        .get(ObjectType::AlarmCondition, 30)
        .unwrap()
        .fields
        .contains_key("application"));
    assert_consistent(&set);
}

#[test]
fn cascade_on_a_folder_deletes_what_it_contains() {
    let mut set = base();
    create_all(
        &mut set,
        [
            folder(10, "Site1", ENV, 0),
            folder(11, "Hosts", ENV, 10),
            host(20, "h1").in_folder(11),
            app(30, "a1", 20, "tserver"),
            host(21, "h-root"),
            group(40, "site1 operators", ENV, vec![]).with_field(
                "grants",
                Value::Grants(vec![Grant::new(None, Some(11), &[Right::Read])]),
            ),
        ],
    );
    assert!(matches!(
        set.delete(ObjectType::Folder, 10, false),
        Err(ConfigError::Referenced { .. })
    ));
    let deleted = set.delete(ObjectType::Folder, 10, true).unwrap();
    assert_eq!(deleted.len(), 4, "{deleted:?}");
    assert!(position(&deleted, (ObjectType::Application, 30)) < position(&deleted, (ObjectType::Host, 20)));
    assert!(position(&deleted, (ObjectType::Host, 20)) < position(&deleted, (ObjectType::Folder, 11)));
    assert!(position(&deleted, (ObjectType::Folder, 11)) < position(&deleted, (ObjectType::Folder, 10)));
    assert!(set.get(ObjectType::Host, 21).is_some());
    let operators = set.get(ObjectType::AccessGroup, 40).unwrap();
    assert_eq!(
        operators.fields.get("grants").cloned().unwrap(),
        Value::Grants(vec![]),
        "grant on the deleted folder is removed"
    );
    assert_consistent(&set);
}

#[test]
fn cascade_on_a_tenant_deletes_everything_in_it() {
    let mut set = base();
    create_all(
        &mut set,
        [
            tenant(2, "T2"),
            folder(10, "F", 2, 0),
            switch(11, "sw", 2).in_folder(10),
            dn(12, "1001", 2, 11),
            person(13, "agent", 2),
            switch(14, "env-sw", ENV),
        ],
    );
    let deleted = set.delete(ObjectType::Tenant, 2, true).unwrap();
    assert_eq!(deleted.len(), 5);
    assert_eq!(deleted.last(), Some(&(ObjectType::Tenant, 2)));
    assert!(set.get(ObjectType::Switch, 14).is_some());
    assert_consistent(&set);
}

#[test]
fn the_environment_and_the_super_administrators_are_protected() {
    let mut set = base();
    let before = set.clone();
    for cascade in [false, true] {
        let err = set.delete(ObjectType::Tenant, ENV, cascade).unwrap_err();
        assert!(matches!(err, ConfigError::Protected { .. }), "{err}");
        let err = set.delete(ObjectType::AccessGroup, 1, cascade).unwrap_err();
        assert!(matches!(err, ConfigError::Protected { .. }), "{err}");
    }
    // Deleting the admin person cascades into nothing protected: the group only loses a member.
    set.delete(ObjectType::Person, ADMIN, true).unwrap();
    assert_eq!(
        set.get(ObjectType::AccessGroup, 1)
            .unwrap()
            .fields
            .get("members")
            .cloned()
            .unwrap(),
        Value::RefList(vec![])
    );
    assert_ne!(set, before);
    assert!(matches!(
        set.delete(ObjectType::Host, 5, true),
        Err(ConfigError::NotFound { .. })
    ));
}
