//! Validation of creates: one test per rule, each checking that the refusal names the object and
//! the field and that the set is unchanged.

use tandem_config::{ConfigError, ConfigObject, ConfigSet, ObjectType, State, Value};

use crate::common::*;

/// Creates `obj` in `set`, expects a refusal, checks nothing changed, returns the error.
fn refused(set: &mut ConfigSet, obj: ConfigObject) -> ConfigError {
    let before = set.clone();
    let err = set.create(obj).expect_err("create must be refused");
    assert_eq!(*set, before, "a refused create changed the set");
    err
}

#[test]
fn valid_create_is_stored_with_version_1() {
    let mut set = base();
    let created = set.create(host(10, "h1").with_field("lca_port", 4999)).unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(set.get(ObjectType::Host, 10), Some(&created));
    assert_eq!(set.by_name(ObjectType::Host, ENV, "h1").map(|o| o.dbid), Some(10));
    assert_consistent(&set);
}

#[test]
fn missing_required_field_is_refused() {
    let mut set = base();
    let err = refused(&mut set, ConfigObject::new(ObjectType::Host, 10, "h1", ENV));
    assert!(
        matches!(&err, ConfigError::MissingField { field, .. } if field == "ip_address"),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("host \"h1\" (dbid 10)") && text.contains("ip_address"),
        "{text}"
    );
    assert_eq!(err.code(), "missing_field");
    assert_eq!(err.field(), Some("ip_address"));
}

#[test]
fn required_string_must_not_be_empty() {
    let mut set = base();
    let err = refused(
        &mut set,
        ConfigObject::new(ObjectType::Host, 10, "h1", ENV).with_field("ip_address", ""),
    );
    assert!(
        matches!(&err, ConfigError::InvalidValue { field, .. } if field == "ip_address"),
        "{err}"
    );
}

#[test]
fn wrong_kind_is_refused() {
    let mut set = base();
    create_all(&mut set, [host(10, "h1")]);
    let err = refused(&mut set, app(20, "a", 10, "tserver").with_field("port", "2020"));
    assert!(
        matches!(&err, ConfigError::WrongKind { field, expected, actual: "str", .. } if field == "port" && expected == "int"),
        "{err}"
    );
    let err = refused(&mut set, app(20, "a", 10, "tserver").with_field("host", 10));
    assert!(
        matches!(&err, ConfigError::WrongKind { field, .. } if field == "host"),
        "{err}"
    );
}

#[test]
fn unknown_field_is_refused() {
    let mut set = base();
    let err = refused(&mut set, host(10, "h1").with_field("colour", "red"));
    assert!(
        matches!(&err, ConfigError::UnknownField { field, .. } if field == "colour"),
        "{err}"
    );
}

#[test]
fn enumerated_strings_and_integer_ranges_are_checked() {
    let mut set = base();
    create_all(&mut set, [host(10, "h1")]);
    let err = refused(
        &mut set,
        app(20, "a", 10, "tserver").with_field("redundancy", "cold_standby"),
    );
    assert!(
        matches!(&err, ConfigError::InvalidValue { field, .. } if field == "redundancy"),
        "{err}"
    );
    for port in [0, 65_536, -1] {
        let err = refused(&mut set, app(20, "a", 10, "tserver").with_field("port", port));
        assert!(
            matches!(&err, ConfigError::InvalidValue { field, .. } if field == "port"),
            "{err}"
        );
    }
    set.create(
        app(20, "a", 10, "tserver")
            .with_field("redundancy", "hot_standby")
            .with_field("port", 65_535),
    )
    .unwrap();
}

#[test]
fn names_must_be_unique_per_type_and_tenant() {
    let mut set = base();
    create_all(&mut set, [host(10, "h1"), tenant(2, "T2")]);
    let err = refused(&mut set, host(11, "h1"));
    assert!(
        matches!(&err, ConfigError::DuplicateName { existing, .. } if existing.dbid == 10),
        "{err}"
    );
    // Same name, other type: fine. Same name, other tenant: fine.
    create_all(&mut set, [switch(10, "h1", ENV), switch(11, "h1", 2)]);
    let err = refused(&mut set, tenant(3, "T2"));
    assert!(matches!(err, ConfigError::DuplicateName { tenant: 0, .. }), "{err}");
    assert_consistent(&set);
}

#[test]
fn dbids_are_never_taken_twice() {
    let mut set = base();
    create_all(&mut set, [host(10, "h1")]);
    let err = refused(&mut set, host(10, "h2"));
    assert!(matches!(err, ConfigError::DuplicateDbid { .. }), "{err}");
}

#[test]
fn names_are_checked() {
    let mut set = base();
    for name in ["", " h", "h ", "a\nb"] {
        let err = refused(&mut set, host(10, name));
        assert!(matches!(err, ConfigError::InvalidName { .. }), "{name:?}: {err}");
    }
    let err = refused(&mut set, host(10, &"x".repeat(256)));
    assert!(matches!(err, ConfigError::InvalidName { .. }), "{err}");
}

#[test]
fn references_must_exist_with_the_schema_type() {
    let mut set = base();
    create_all(&mut set, [switch(10, "sw", ENV)]);
    // Host 10 does not exist, although Switch 10 does: the schema says `host` is a Host.
    let err = refused(&mut set, app(20, "a", 10, "tserver"));
    assert!(
        matches!(&err, ConfigError::DanglingReference { field, target_type: ObjectType::Host, target: 10, .. } if field == "host"),
        "{err}"
    );
    let err = refused(&mut set, place(30, "p", ENV, vec![10]));
    assert!(
        matches!(&err, ConfigError::DanglingReference { field, target_type: ObjectType::Dn, .. } if field == "dns"),
        "{err}"
    );
}

#[test]
fn reference_lists_have_no_duplicates() {
    let mut set = base();
    create_all(&mut set, [switch(10, "sw", ENV), dn(11, "1001", ENV, 10)]);
    let err = refused(&mut set, place(30, "p", ENV, vec![11, 11]));
    assert!(
        matches!(&err, ConfigError::InvalidValue { field, .. } if field == "dns"),
        "{err}"
    );
}

#[test]
fn an_object_may_not_refer_to_itself() {
    let mut set = base();
    create_all(&mut set, [host(10, "h1"), app(20, "a", 10, "tserver")]);
    let err = set
        .update(
            ObjectType::Application,
            20,
            &tandem_config::Delta::new().set_field("backup", Value::Ref(20)),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::ForbiddenReference { field: "backup", .. }),
        "{err}"
    );
}

#[test]
fn references_stay_in_the_tenant_or_point_to_the_environment() {
    let mut set = base();
    create_all(
        &mut set,
        [
            tenant(2, "T2"),
            tenant(3, "T3"),
            switch(10, "sw2", 2),
            switch(11, "swenv", ENV),
        ],
    );
    let err = refused(&mut set, dn(20, "1001", 3, 10));
    assert!(
        matches!(&err, ConfigError::ForbiddenReference { field: "switch", .. }),
        "{err}"
    );
    // Into the environment: allowed.
    create_all(&mut set, [dn(20, "1001", 3, 11), dn(21, "1002", 2, 10)]);
}

#[test]
fn backup_application_has_the_same_type() {
    let mut set = base();
    create_all(
        &mut set,
        [
            host(10, "h1"),
            app(20, "cs_backup", 10, "confserv"),
            app(21, "ts", 10, "tserver"),
        ],
    );
    let err = refused(
        &mut set,
        app(22, "cs_primary", 10, "confserv").with_field("backup", Value::Ref(21)),
    );
    assert!(
        matches!(&err, ConfigError::TargetMismatch { field: "backup", target_field: "app_type", target, .. } if target.dbid == 21),
        "{err}"
    );
    set.create(app(22, "cs_primary", 10, "confserv").with_field("backup", Value::Ref(20)))
        .unwrap();
    // Changing the backup's type afterwards would break the pair: refused, naming the primary.
    let err = set
        .update(
            ObjectType::Application,
            20,
            &tandem_config::Delta::new().set_field("app_type", "scs"),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::TargetMismatch { object, .. } if object.dbid == 22),
        "{err}"
    );
    assert_consistent(&set);
}

#[test]
fn user_names_are_unique_per_tenant() {
    let mut set = base();
    create_all(
        &mut set,
        [tenant(2, "T2"), person(10, "alice", ENV), person(11, "alice", 2)],
    );
    let err = refused(&mut set, person(12, "alice2", ENV).with_field("user_name", "alice"));
    assert!(
        matches!(&err, ConfigError::DuplicateValue { field, existing, .. } if field == "user_name" && existing.dbid == 10),
        "{err}"
    );
    assert_eq!(
        set.by_unique(ObjectType::Person, 2, "user_name", "alice")
            .map(|p| p.dbid),
        Some(11)
    );
}

#[test]
fn password_hash_must_be_a_hash_not_a_password() {
    let mut set = base();
    let err = refused(&mut set, person(10, "bob", ENV).with_field("password_hash", "hunter2"));
    assert!(
        matches!(&err, ConfigError::InvalidValue { field, .. } if field == "password_hash"),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"), "errors never echo values: {err}");
}

#[test]
fn tenants_are_checked() {
    let mut set = base();
    let err = refused(&mut set, host(10, "h").into_tenant(0));
    assert!(matches!(err, ConfigError::InvalidTenant { tenant: 0, .. }), "{err}");
    let err = refused(&mut set, host(10, "h").into_tenant(9));
    assert!(matches!(err, ConfigError::InvalidTenant { tenant: 9, .. }), "{err}");
    let err = refused(&mut set, ConfigObject::new(ObjectType::Tenant, 2, "T", ENV));
    assert!(matches!(err, ConfigError::InvalidTenant { .. }), "{err}");
    // A person's tenant must be a Tenant, not e.g. a host with that dbid.
    create_all(&mut set, [host(10, "h")]);
    let err = refused(&mut set, person(11, "p", 10));
    assert!(matches!(err, ConfigError::InvalidTenant { tenant: 10, .. }), "{err}");
}

#[test]
fn folders_are_checked() {
    let mut set = base();
    create_all(
        &mut set,
        [
            tenant(2, "T2"),
            folder(10, "Hosts", ENV, 0).with_field("object_type", "host"),
            folder(11, "Other", 2, 0),
            folder(12, "Sub", ENV, 10),
        ],
    );
    let err = refused(&mut set, host(20, "h").in_folder(99));
    assert!(matches!(err, ConfigError::InvalidFolder { folder: 99, .. }), "{err}");
    let err = refused(&mut set, host(20, "h").in_folder(11));
    assert!(
        matches!(err, ConfigError::InvalidFolder { folder: 11, .. }),
        "other tenant: {err}"
    );
    let err = refused(&mut set, switch(20, "s", ENV).in_folder(10));
    assert!(
        matches!(err, ConfigError::InvalidFolder { folder: 10, .. }),
        "typed folder: {err}"
    );
    let err = refused(&mut set, folder(20, "F", ENV, 0).with_field("object_type", "gizmo"));
    assert!(
        matches!(&err, ConfigError::InvalidValue { field, .. } if field == "object_type"),
        "{err}"
    );
    create_all(&mut set, [host(20, "h").in_folder(10), host(21, "h2").in_folder(12)]);

    // A folder cannot move under itself.
    let err = set
        .update(ObjectType::Folder, 10, &tandem_config::Delta::new().folder(12))
        .unwrap_err();
    assert!(matches!(err, ConfigError::FolderCycle { .. }), "{err}");
    // Typing a folder that holds other types is refused.
    create_all(&mut set, [switch(30, "s", ENV).in_folder(12)]);
    let err = set
        .update(
            ObjectType::Folder,
            12,
            &tandem_config::Delta::new().set_field("object_type", "host"),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidFolder { object, .. } if object.dbid == 30),
        "{err}"
    );
    assert_consistent(&set);
}

#[test]
fn options_need_section_and_key_names() {
    let mut set = base();
    let err = refused(&mut set, host(10, "h").with_option("", "k", "v"));
    assert!(
        matches!(&err, ConfigError::InvalidValue { field, .. } if field == "options"),
        "{err}"
    );
    let err = refused(&mut set, host(10, "h").with_annex("s", "", "v"));
    assert!(
        matches!(&err, ConfigError::InvalidValue { field, .. } if field == "annex"),
        "{err}"
    );
    set.create(
        host(10, "h")
            .with_option("log", "verbose", "all")
            .with_state(State::Disabled),
    )
    .unwrap();
}

/// Test-only helper: the same object in another tenant.
trait IntoTenant {
    fn into_tenant(self, tenant: u64) -> Self;
}

impl IntoTenant for ConfigObject {
    fn into_tenant(mut self, tenant: u64) -> Self {
        self.tenant = tenant;
        self
    }
}
