//! Updates: a delta changes only what it names, bumps the version, and is validated like a
//! create; a refused update changes nothing.

use tandem_config::{Change, ConfigError, Delta, ObjectType, State, Value, SUPER_ADMINISTRATORS};

use crate::common::*;

fn rich_host() -> tandem_config::ConfigObject {
    host(10, "h1")
        .with_field("os_type", "linux")
        .with_field("lca_port", 4999)
        .with_option("log", "verbose", "all")
        .with_option("log", "segment", "10MB")
        .with_option("lca", "timeout", "5")
        .with_annex("site", "name", "site1")
}

#[test]
fn only_named_fields_and_options_change_and_the_version_bumps() {
    let mut set = base();
    create_all(&mut set, [rich_host()]);
    let delta = Delta::new()
        .set_field("os_type", "windows")
        .set_option("log", "verbose", "standard");
    let (new, old) = set.update(ObjectType::Host, 10, &delta).unwrap();
    assert_eq!(old, rich_host().with_version(1));
    assert_eq!(new.version, 2);
    assert_eq!(new.str_field("os_type"), Some("windows"));
    assert_eq!(new.fields.get("lca_port").cloned().unwrap(), Value::Int(4999));
    assert_eq!(
        new.fields.get("ip_address").cloned().unwrap(),
        old.fields.get("ip_address").cloned().unwrap()
    );
    assert_eq!(new.options["log"]["verbose"], "standard");
    assert_eq!(new.options["log"]["segment"], "10MB");
    assert_eq!(new.options["lca"], old.options["lca"]);
    assert_eq!(new.annex, old.annex);
    assert_eq!((new.name.as_str(), new.folder, new.state), ("h1", 0, State::Enabled));
    assert_eq!(set.get(ObjectType::Host, 10), Some(&new));

    let (newer, _) = set
        .update(
            ObjectType::Host,
            10,
            &Delta::new().delete_option_section("lca").delete_annex("site", "name"),
        )
        .unwrap();
    assert_eq!(newer.version, 3);
    assert!(!newer.options.contains_key("lca"));
    assert_eq!(newer.options["log"], new.options["log"]);
    assert!(newer.annex["site"].is_empty(), "deleting a key keeps its section");
    assert_eq!(newer.fields, new.fields);
    assert_consistent(&set);
}

#[test]
fn rename_move_and_disable() {
    let mut set = base();
    create_all(&mut set, [rich_host(), folder(20, "Hosts", ENV, 0)]);
    let (new, _) = set
        .update(
            ObjectType::Host,
            10,
            &Delta::new().name("h-renamed").folder(20).state(State::Disabled),
        )
        .unwrap();
    assert_eq!(
        (new.name.as_str(), new.folder, new.state),
        ("h-renamed", 20, State::Disabled)
    );
    assert!(set.by_name(ObjectType::Host, ENV, "h1").is_none());
    assert_eq!(
        set.by_name(ObjectType::Host, ENV, "h-renamed").map(|h| h.dbid),
        Some(10)
    );
    assert_consistent(&set);
}

#[test]
fn refused_updates_change_nothing() {
    let mut set = base();
    create_all(&mut set, [rich_host(), host(11, "h2")]);
    let before = set.clone();
    let cases: Vec<(Delta, &str)> = vec![
        (Delta::new().name("h2"), "duplicate_name"),
        (Delta::new().unset_field("ip_address"), "missing_field"),
        (Delta::new().set_field("lca_port", "x"), "wrong_kind"),
        (Delta::new().set_field("nope", 1), "unknown_field"),
        (Delta::new().folder(77), "invalid_folder"),
        (
            Delta::new().set_field("os_type", "a").unset_field("os_type"),
            "invalid_delta",
        ),
    ];
    for (delta, code) in cases {
        let err = set.update(ObjectType::Host, 10, &delta).unwrap_err();
        assert_eq!(err.code(), code, "{delta:?}: {err}");
        assert_eq!(set, before);
    }
    let err = set.update(ObjectType::Host, 99, &Delta::new()).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::NotFound {
            object_type: ObjectType::Host,
            dbid: 99
        }
    ));
}

#[test]
fn plan_update_is_the_change_record_update_applies() {
    let mut set = base();
    create_all(&mut set, [rich_host()]);
    let delta = Delta::new().set_field("lca_port", 5000);
    let (planned, _) = set.plan_update(ObjectType::Host, 10, &delta).unwrap();
    let mut replica = set.clone();
    replica.apply_change(Change::Update(planned.clone())).unwrap();
    let (updated, _) = set.update(ObjectType::Host, 10, &delta).unwrap();
    assert_eq!(planned, updated);
    assert_eq!(replica, set);
}

#[test]
fn super_administrators_cannot_be_renamed_or_disabled() {
    let mut set = base();
    for delta in [Delta::new().name("Admins"), Delta::new().state(State::Disabled)] {
        let err = set.update(ObjectType::AccessGroup, 1, &delta).unwrap_err();
        assert!(matches!(err, ConfigError::Protected { .. }), "{err}");
    }
    // Its members may change.
    create_all(&mut set, [person(10, "bob", ENV)]);
    let (group, _) = set
        .update(
            ObjectType::AccessGroup,
            1,
            &Delta::new().set_field("members", Value::RefList(vec![1, 10])),
        )
        .unwrap();
    assert_eq!(group.name, SUPER_ADMINISTRATORS);
}

#[test]
fn replay_refuses_structural_contradictions_atomically() {
    let mut set = base();
    create_all(&mut set, [host(10, "h1")]);
    let before = set.clone();
    let changes = vec![
        Change::Create(host(11, "h2").with_version(1)),
        Change::Create(host(12, "h1").with_version(1)), // name taken
    ];
    assert!(matches!(set.apply(changes), Err(ConfigError::DuplicateName { .. })));
    assert_eq!(set, before, "the first create was undone");
    assert!(set
        .apply_change(Change::Delete {
            object_type: ObjectType::Host,
            dbid: 99,
            version: 1
        })
        .is_err());
    assert!(set.apply_change(Change::Update(host(99, "x"))).is_err());
    assert!(set.apply_change(Change::Create(host(10, "x"))).is_err());
    assert_eq!(set, before);
}

/// Test-only helper: the same object with another version.
trait WithVersion {
    fn with_version(self, version: u64) -> Self;
}

impl WithVersion for tandem_config::ConfigObject {
    fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }
}

#[test]
fn a_set_loaded_from_stored_objects_equals_the_original() {
    let mut set = base();
    create_all(
        &mut set,
        [
            host(10, "h1"),
            app(11, "a", 10, "scs"),
            switch(12, "sw", ENV),
            dn(13, "1", ENV, 12),
        ],
    );
    set.update(ObjectType::Host, 10, &Delta::new().set_field("os_type", "linux"))
        .unwrap();
    let loaded = tandem_config::ConfigSet::from_objects(set.iter().rev().cloned()).unwrap();
    assert_eq!(loaded, set);
    assert_consistent(&loaded);
    let twice = set.iter().cloned().chain(set.get(ObjectType::Host, 10).cloned());
    assert!(matches!(
        tandem_config::ConfigSet::from_objects(twice),
        Err(ConfigError::DuplicateDbid { .. })
    ));
    // A second host named h1 (another DBID) breaks the name index.
    let same_name = set.iter().cloned().chain([host(20, "h1")]);
    match tandem_config::ConfigSet::from_objects(same_name) {
        Err(ConfigError::DuplicateName { object, existing, .. }) => {
            assert_eq!((object.dbid, existing.dbid), (20, 10));
        }
        other => panic!("expected DuplicateName, got {other:?}"),
    }
    // Two persons with one user name break the unique index.
    let mut p1 = person(30, "p1", ENV);
    let mut p2 = person(31, "p2", ENV);
    for p in [&mut p1, &mut p2] {
        p.fields.insert("user_name".into(), Value::Str("same".into()));
    }
    match tandem_config::ConfigSet::from_objects(set.iter().cloned().chain([p1, p2])) {
        Err(ConfigError::DuplicateValue {
            object,
            field,
            existing,
        }) => {
            assert_eq!((object.dbid, field.as_str(), existing.dbid), (31, "user_name", 30));
        }
        other => panic!("expected DuplicateValue, got {other:?}"),
    }
}

#[test]
fn a_large_set_is_indexed_and_checked_in_parts_with_the_first_error_in_key_order() {
    // Large enough that the indexes and the check run on several threads.
    let mut objects: Vec<_> = base().iter().cloned().collect();
    objects.push(switch(100, "sw", ENV));
    objects.extend((0..20_000u64).map(|i| dn(1_000 + i, &format!("{i:05}"), ENV, 100)));
    let loaded = tandem_config::ConfigSet::from_objects(objects.iter().rev().cloned()).unwrap();
    assert_eq!(loaded.len(), objects.len());
    assert_consistent(&loaded);
    loaded.check_all().expect("valid");

    // Two DNs of a switch that does not exist, one early in key order and one late: the early
    // one is reported, whichever part finishes first.
    for dbid in [20_500, 1_500] {
        let index = objects
            .iter()
            .position(|o| o.dbid == dbid && o.object_type == ObjectType::Dn)
            .unwrap();
        objects[index] = dn(dbid, &format!("bad{dbid}"), ENV, 999_999);
    }
    let broken = tandem_config::ConfigSet::from_objects(objects.iter().cloned()).unwrap();
    match broken.check_all() {
        Err(ConfigError::DanglingReference { object, .. }) => assert_eq!(object.dbid, 1_500),
        other => panic!("expected the first dangling reference, got {other:?}"),
    }
}
