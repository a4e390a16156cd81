//! Import and export: round trip through an empty set, idempotence, portability, subtree export,
//! planning without change, refusals and stale plans.

use tandem_config::access::{bootstrap_with_hash, set_from_bootstrap};
use tandem_config::document::{export, import, DocRef, DocValue, Document, DOCUMENT_FORMAT};
use tandem_config::{ConfigError, ConfigObject, ConfigSet, Delta, Grant, ObjectType, Right, State, Value};

use crate::common::*;

/// A configuration using every type, nested folders, cross-tenant references into the
/// environment, a backup cycle, grants on folders, options, annex and a disabled object.
pub fn rich() -> ConfigSet {
    let mut set = base();
    create_all(
        &mut set,
        [
            tenant(2, "Acme"),
            folder(10, "Servers", ENV, 0).with_field("object_type", "application"),
            folder(11, "Site1", ENV, 10),
            folder(12, "Agents", 2, 0),
            host(20, "h1")
                .with_field("os_type", "linux")
                .with_field("lca_port", 4999),
            host(21, "h2").with_annex("site", "name", "two"),
            app(30, "cs_primary", 20, "confserv")
                .in_folder(11)
                .with_option("confserv", "port", "2020"),
            app(31, "cs_backup", 21, "confserv")
                .in_folder(11)
                .with_field("backup", Value::Ref(30))
                .with_field("redundancy", "hot_standby")
                .with_field("autostart", true),
            app(32, "scs", 20, "scs").with_field("connections", Value::RefList(vec![31, 30])),
            ConfigObject::new(ObjectType::AlarmCondition, 40, "cs down", ENV)
                .with_field("message_id", 1001)
                .with_field("level", "major")
                .with_field("application", Value::Ref(30)),
            switch(50, "sw", 2),
            dn(51, "1001", 2, 50).with_field("dn_type", "extension"),
            dn(52, "1002", 2, 50).with_state(State::Disabled),
            place(53, "desk", 2, vec![52, 51]),
            ConfigObject::new(ObjectType::Skill, 60, "french", 2),
            person(61, "agent1", 2)
                .in_folder(12)
                .with_field("is_agent", true)
                .with_field("skills", Value::RefList(vec![60])),
            person(62, "ops", ENV),
            ConfigObject::new(ObjectType::AgentGroup, 63, "sales", 2).with_field("members", Value::RefList(vec![61])),
            group(64, "Operators", ENV, vec![62]).with_field(
                "grants",
                Value::Grants(vec![
                    Grant::new(Some(ObjectType::Application), Some(11), &[Right::Read, Right::Change]),
                    Grant::new(None, Some(12), &[Right::Read]),
                ]),
            ),
        ],
    );
    set.update(
        ObjectType::Application,
        30,
        &Delta::new().set_field("backup", Value::Ref(31)),
    )
    .unwrap();
    set
}

/// A fresh environment whose admin has another password hash than `rich()`'s.
fn fresh() -> ConfigSet {
    let other_hash =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";
    set_from_bootstrap(bootstrap_with_hash("admin", other_hash)).unwrap()
}

/// An allocator handing out DBIDs from 1000 up, whatever the type.
fn allocator() -> impl FnMut(ObjectType) -> u64 {
    let mut next = 1000;
    move |_| {
        next += 1;
        next
    }
}

#[test]
fn export_names_everything_and_omits_dbids() {
    let document = export(&rich(), None).unwrap();
    let json = document.to_json();
    assert!(!json.contains("\"dbid\"") && !json.contains("\"version\""));
    let backup = document.objects.iter().find(|o| o.name == "cs_backup").unwrap();
    assert_eq!(backup.folder.as_deref(), Some("Site1"));
    assert_eq!(
        backup.fields.get("backup").cloned().unwrap(),
        DocValue::Ref(DocRef {
            object_type: ObjectType::Application,
            tenant: Some("Environment".into()),
            name: "cs_primary".into()
        })
    );
    // Stable order: types in declaration order, then tenant, then name.
    let keys: Vec<_> = document
        .objects
        .iter()
        .map(|o| (o.object_type, o.tenant.clone(), o.name.clone()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(Document::from_json(&json).unwrap(), document);
    // Debug never prints the hash.
    let printed = format!("{document:?}");
    assert!(!printed.contains(admin_hash()), "{printed}");
}

#[test]
fn round_trip_through_an_empty_set_and_idempotence() {
    let source = rich();
    let document = export(&source, None).unwrap();
    let n = document.objects.len();
    assert_eq!(n, source.len());

    let mut target = fresh();
    let before = target.clone();
    let plan = import(&target, &document, allocator()).unwrap();
    assert_eq!(target, before, "import only plans");
    // The environment, the group and the admin exist; only the admin's hash differs.
    assert_eq!((plan.created(), plan.changed(), plan.skipped()), (n - 3, 1, 2));
    plan.apply(&mut target).unwrap();
    assert_consistent(&target);
    assert_eq!(
        export(&target, None).unwrap(),
        document,
        "export → import → export is the identity"
    );

    let again = import(&target, &document, allocator()).unwrap();
    assert_eq!((again.created(), again.changed(), again.skipped()), (0, 0, n));
    assert!(again.changes().is_empty());
}

#[test]
fn plan_changes_replayed_equal_plan_apply() {
    let document = export(&rich(), None).unwrap();
    let mut applied = fresh();
    let mut replayed = fresh();
    let plan = import(&applied, &document, allocator()).unwrap();
    plan.apply(&mut applied).unwrap();
    replayed.apply(plan.changes()).unwrap();
    assert_eq!(applied, replayed);
}

#[test]
fn export_of_a_folder_takes_its_subtree() {
    let source = rich();
    let document = export(&source, Some(10)).unwrap();
    let names: Vec<_> = document.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["Servers", "Site1", "cs_backup", "cs_primary"]);
    // Its references to hosts outside resolve against the target set.
    let mut target = fresh();
    create_all(&mut target, [host(5, "h1"), host(6, "h2")]);
    let plan = import(&target, &document, allocator()).unwrap();
    assert_eq!(plan.created(), 4);
    plan.apply(&mut target).unwrap();
    let primary = target.by_name(ObjectType::Application, ENV, "cs_primary").unwrap();
    assert_eq!(primary.fields.get("host").cloned().unwrap(), Value::Ref(5));
    assert!(matches!(export(&source, Some(999)), Err(ConfigError::NotFound { .. })));
}

#[test]
fn unresolvable_or_invalid_documents_are_refused_without_change() {
    let document = export(&rich(), Some(10)).unwrap();
    let target = fresh();
    let err = import(&target, &document, allocator()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::InvalidDocument { reason, .. } if reason.contains("cannot be resolved")),
        "{err}"
    );

    let mut twice = export(&rich(), None).unwrap();
    twice.objects.push(twice.objects[5].clone());
    assert!(matches!(
        import(&fresh(), &twice, allocator()),
        Err(ConfigError::InvalidDocument { .. })
    ));

    let mut broken = export(&rich(), None).unwrap();
    let scs = broken.objects.iter_mut().find(|o| o.name == "scs").unwrap();
    scs.fields.remove("port");
    let err = import(&fresh(), &broken, allocator()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::MissingField { field, .. } if field == "port"),
        "{err}"
    );

    let mut future = export(&rich(), None).unwrap();
    future.format = 99;
    let err = import(&fresh(), &future, allocator()).unwrap_err();
    // The document as a whole is at fault: no object is named.
    assert_eq!(err.to_string(), format!("import: format 99 is not {DOCUMENT_FORMAT}"));
    let err = Document::from_json("{\"objects\": ").unwrap_err();
    assert!(err.to_string().starts_with("import: not a document: "), "{err}");
}

#[test]
fn a_plan_made_before_a_change_is_stale() {
    let source = rich();
    let mut document = export(&source, None).unwrap();
    let h1 = document.objects.iter_mut().find(|o| o.name == "h1").unwrap();
    h1.fields.insert("os_type".into(), DocValue::Str("windows".into()));
    let mut target = source.clone();
    let plan = import(&target, &document, allocator()).unwrap();
    assert_eq!((plan.created(), plan.changed()), (0, 1));
    target
        .update(ObjectType::Host, 20, &Delta::new().set_field("lca_port", 5000))
        .unwrap();
    let before = target.clone();
    assert!(matches!(plan.apply(&mut target), Err(ConfigError::StalePlan { .. })));
    assert_eq!(target, before);
}

#[test]
fn a_plan_is_checked_as_if_applied_with_its_other_changes() {
    let source = rich();
    let set_field = |doc: &mut Document, name: &str, field: &str, value: DocValue| {
        let obj = doc.objects.iter_mut().find(|o| o.name == name).unwrap();
        obj.fields.insert(field.into(), value);
    };

    // A backup must keep its primary's type: changing one of the pair alone is refused…
    let mut one = export(&source, None).unwrap();
    set_field(&mut one, "cs_primary", "app_type", DocValue::Str("scs".into()));
    let err = import(&source, &one, allocator()).unwrap_err();
    assert!(matches!(err, ConfigError::TargetMismatch { .. }), "{err}");
    // …changing both in the same document is not: each is checked against the other's new state.
    let mut both = one.clone();
    set_field(&mut both, "cs_backup", "app_type", DocValue::Str("scs".into()));
    let plan = import(&source, &both, allocator()).unwrap();
    assert_eq!(plan.changed(), 2);
    let mut target = source.clone();
    plan.apply(&mut target).unwrap();
    assert_consistent(&target);
    assert_eq!(export(&target, None).unwrap(), both);

    // A folder may not start holding another type than its contents.
    let mut folder = export(&source, None).unwrap();
    set_field(&mut folder, "Site1", "object_type", DocValue::Str("host".into()));
    let err = import(&source, &folder, allocator()).unwrap_err();
    assert!(matches!(err, ConfigError::InvalidFolder { .. }), "{err}");

    // A new person may not take a user name another person holds, in the set or in the document.
    let mut taken = export(&source, None).unwrap();
    let mut newcomer = taken.objects.iter().find(|o| o.name == "ops").unwrap().clone();
    newcomer.name = "ops-2".into();
    taken.objects.push(newcomer.clone());
    let err = import(&source, &taken, allocator()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::DuplicateValue { field, .. } if field == "user_name"),
        "{err}"
    );
    let mut twins = Document {
        format: taken.format,
        objects: vec![newcomer.clone()],
    };
    newcomer.name = "ops-3".into();
    twins.objects.push(newcomer);
    set_field(&mut twins, "ops-2", "user_name", DocValue::Str("twin".into()));
    set_field(&mut twins, "ops-3", "user_name", DocValue::Str("twin".into()));
    let err = import(&source, &twins, allocator()).unwrap_err();
    assert!(
        matches!(&err, ConfigError::DuplicateValue { field, .. } if field == "user_name"),
        "{err}"
    );
}
