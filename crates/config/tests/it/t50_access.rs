//! Permissions: super administrators, read-only users, folder-scoped grants, tenants, read
//! filtering, the rights a cascading delete needs, authentication and bootstrap.

use tandem_config::access::{self, allowed, check_changes, get_as, is_super_admin, query_as};
use tandem_config::password::verify_password;
use tandem_config::{
    ConfigError, ConfigSet, Delta, Grant, ObjectType, Principal, Query, Right, State, Value, SUPER_ADMINISTRATORS,
};

use crate::common::*;

const READER: Principal = Principal(10);
const SITE1_OPERATOR: Principal = Principal(11);
const NOBODY: Principal = Principal(12);
const T2_ADMIN: Principal = Principal(13);

/// Folders Site1 (20) ⊃ Site1/Hosts (21), Site2 (22); a host in each; a reader group with Read
/// everywhere; a site-1 operator group with all rights in Site1 on hosts; a tenant T2 whose
/// administrators group has every right without a folder restriction.
fn office() -> ConfigSet {
    let mut set = base();
    create_all(
        &mut set,
        [
            tenant(2, "T2"),
            folder(20, "Site1", ENV, 0),
            folder(21, "Site1 Hosts", ENV, 20),
            folder(22, "Site2", ENV, 0),
            host(30, "h-site1").in_folder(21),
            host(31, "h-site2").in_folder(22),
            host(32, "h-root"),
            switch(33, "sw-t2", 2),
            person(10, "reader", ENV),
            person(11, "operator", ENV),
            person(12, "nobody", ENV),
            person(13, "t2admin", 2),
            group(40, "Readers", ENV, vec![10])
                .with_field("grants", Value::Grants(vec![Grant::new(None, None, &[Right::Read])])),
            group(41, "Site1 Operators", ENV, vec![11]).with_field(
                "grants",
                Value::Grants(vec![Grant::new(Some(ObjectType::Host), Some(20), &Right::ALL)]),
            ),
            group(42, "T2 Admins", 2, vec![13])
                .with_field("grants", Value::Grants(vec![Grant::new(None, None, &Right::ALL)])),
        ],
    );
    set
}

fn obj(set: &ConfigSet, t: ObjectType, dbid: u64) -> &tandem_config::ConfigObject {
    set.get(t, dbid).unwrap()
}

#[test]
fn super_administrators_may_do_everything() {
    let set = office();
    let admin = Principal(ADMIN);
    assert!(is_super_admin(&set, admin));
    for o in set.iter() {
        for right in Right::ALL {
            assert!(allowed(&set, admin, right, o), "{right} {}", o.name);
        }
    }
    assert_eq!(query_as(&set, admin, &Query::new(ObjectType::Host)).len(), 3);
}

#[test]
fn a_read_only_user_cannot_change() {
    let set = office();
    let h = obj(&set, ObjectType::Host, 31);
    assert!(allowed(&set, READER, Right::Read, h));
    for right in [Right::Create, Right::Change, Right::Delete] {
        assert!(!allowed(&set, READER, right, h), "{right}");
    }
    let (planned, _) = set
        .plan_update(ObjectType::Host, 31, &Delta::new().set_field("os_type", "linux"))
        .unwrap();
    let err = check_changes(&set, READER, &[tandem_config::Change::Update(planned)]).unwrap_err();
    assert!(
        matches!(&err, ConfigError::AccessDenied { person: 10, right: Right::Change, object } if object.dbid == 31),
        "{err}"
    );
    assert_eq!(query_as(&set, READER, &Query::new(ObjectType::Host)).len(), 3);
}

#[test]
fn a_user_without_rights_on_a_folder_cannot_see_its_objects() {
    let set = office();
    // The site-1 operator sees and may change hosts in Site1 and its sub-folders, nothing else.
    let page = query_as(&set, SITE1_OPERATOR, &Query::new(ObjectType::Host));
    assert_eq!(page.dbids(), vec![30]);
    assert!(get_as(&set, SITE1_OPERATOR, ObjectType::Host, 31).is_none());
    assert!(get_as(&set, SITE1_OPERATOR, ObjectType::Host, 30).is_some());
    assert!(allowed(
        &set,
        SITE1_OPERATOR,
        Right::Change,
        obj(&set, ObjectType::Host, 30)
    ));
    // The grant is for hosts: the folder objects themselves are not covered.
    assert!(query_as(&set, SITE1_OPERATOR, &Query::new(ObjectType::Folder)).is_empty());
    // Creating a host in Site1 is allowed, at the root it is not; moving one out is not.
    let new_host = host(50, "new").in_folder(20);
    let plan = set.plan_create(new_host.clone()).unwrap();
    check_changes(&set, SITE1_OPERATOR, &[tandem_config::Change::Create(plan)]).unwrap();
    assert!(!allowed(&set, SITE1_OPERATOR, Right::Create, &host(50, "new")));
    let (moved, _) = set.plan_update(ObjectType::Host, 30, &Delta::new().folder(22)).unwrap();
    assert!(check_changes(&set, SITE1_OPERATOR, &[tandem_config::Change::Update(moved)]).is_err());
    // Someone in no group sees nothing.
    assert!(query_as(&set, NOBODY, &Query::new(ObjectType::Host)).is_empty());
}

#[test]
fn paging_counts_only_visible_objects() {
    let set = office();
    let page = query_as(&set, SITE1_OPERATOR, &Query::new(ObjectType::Host).limit(1));
    assert_eq!((page.dbids(), page.next_after_dbid), (vec![30], None));
}

#[test]
fn a_tenant_group_reaches_its_own_tenant_only() {
    let set = office();
    assert!(allowed(
        &set,
        T2_ADMIN,
        Right::Delete,
        obj(&set, ObjectType::Switch, 33)
    ));
    assert!(allowed(&set, T2_ADMIN, Right::Read, obj(&set, ObjectType::Tenant, 2)));
    assert!(!allowed(&set, T2_ADMIN, Right::Read, obj(&set, ObjectType::Host, 32)));
    assert!(!allowed(
        &set,
        T2_ADMIN,
        Right::Read,
        obj(&set, ObjectType::Tenant, ENV)
    ));
    // The environment's readers read every tenant.
    assert!(allowed(&set, READER, Right::Read, obj(&set, ObjectType::Switch, 33)));
}

#[test]
fn disabled_groups_and_persons_grant_nothing() {
    let mut set = office();
    set.update(ObjectType::AccessGroup, 40, &Delta::new().state(State::Disabled))
        .unwrap();
    assert!(!allowed(&set, READER, Right::Read, obj(&set, ObjectType::Host, 32)));
    set.update(ObjectType::Person, ADMIN, &Delta::new().state(State::Disabled))
        .unwrap();
    assert!(!is_super_admin(&set, Principal(ADMIN)));
    assert!(!allowed(
        &set,
        Principal(ADMIN),
        Right::Read,
        obj(&set, ObjectType::Host, 32)
    ));
    assert!(!allowed(
        &set,
        Principal(999),
        Right::Read,
        obj(&set, ObjectType::Host, 32)
    ));
}

#[test]
fn authentication_checks_the_hash() {
    let set = office();
    assert_eq!(
        access::authenticate(&set, ENV, "admin", ADMIN_PASSWORD),
        Some(Principal(ADMIN))
    );
    assert_eq!(access::authenticate(&set, ENV, "admin", "wrong"), None);
    assert_eq!(access::authenticate(&set, ENV, "ghost", ADMIN_PASSWORD), None);
    assert_eq!(
        access::authenticate(&set, 2, "admin", ADMIN_PASSWORD),
        None,
        "other tenant"
    );
}

#[test]
fn bootstrap_makes_the_environment_the_admin_and_the_group() {
    let objects = access::bootstrap("root", "pw-1").unwrap();
    let set = access::set_from_bootstrap(objects.clone()).unwrap();
    assert_eq!(set.len(), 3);
    let tenant = set.get(ObjectType::Tenant, ENV).unwrap();
    assert_eq!((tenant.name.as_str(), tenant.tenant), ("Environment", 0));
    let group = set.by_name(ObjectType::AccessGroup, ENV, SUPER_ADMINISTRATORS).unwrap();
    assert_eq!(group.fields.get("members").cloned().unwrap(), Value::RefList(vec![1]));
    let admin = set.get(ObjectType::Person, 1).unwrap();
    let hash = admin.str_field("password_hash").unwrap();
    assert_ne!(hash, "pw-1");
    assert!(verify_password("pw-1", hash));
    assert!(is_super_admin(&set, Principal(1)));
    assert!(objects.iter().all(|o| o.version == 1));
    // Debug of the person never shows the hash, let alone the password.
    let printed = format!("{admin:?} {objects:?} {set:?}");
    assert!(!printed.contains(hash) && !printed.contains("pw-1"), "{printed}");
    assert!(printed.contains("<redacted>"));
    assert!(!admin.without_secrets().fields.contains_key("password_hash"));
}

const DN_OPERATOR: Principal = Principal(14);

/// A switch (10) with DN 20, which place 30 lists; an operator (person 14) whose group (43)
/// has Read and Delete on DNs and switches, and nothing on places.
fn telephony_with_an_operator() -> ConfigSet {
    let mut set = base();
    create_all(
        &mut set,
        [
            switch(10, "sw1", ENV),
            dn(20, "1001", ENV, 10),
            place(30, "desk1", ENV, vec![20]),
            person(14, "dn-operator", ENV),
            group(43, "DN Operators", ENV, vec![14]).with_field(
                "grants",
                Value::Grants(vec![
                    Grant::new(Some(ObjectType::Dn), None, &[Right::Read, Right::Delete]),
                    Grant::new(Some(ObjectType::Switch), None, &[Right::Read, Right::Delete]),
                ]),
            ),
        ],
    );
    set
}

/// Replaces the grants of the operator's group (43).
fn grant_operator(set: &mut ConfigSet, grants: Vec<Grant>) {
    set.update(
        ObjectType::AccessGroup,
        43,
        &Delta::new().set_field("grants", Value::Grants(grants)),
    )
    .expect("the operator's group takes new grants");
}

/// A delete as the server makes it: planned on the set, every planned change checked against
/// the person's rights, and only then applied.
fn delete_as(
    set: &mut ConfigSet,
    person: Principal,
    object_type: ObjectType,
    dbid: u64,
    cascade: bool,
) -> Result<Vec<tandem_config::Change>, ConfigError> {
    let changes = set.plan_delete(object_type, dbid, cascade)?;
    check_changes(set, person, &changes)?;
    set.apply(changes.clone())?;
    Ok(changes)
}

#[test]
fn a_cascade_needs_change_rights_on_every_referrer_it_clears() {
    let mut set = telephony_with_an_operator();
    let dn = obj(&set, ObjectType::Dn, 20);
    assert!(
        allowed(&set, DN_OPERATOR, Right::Delete, dn),
        "may delete the DN itself"
    );
    assert!(!allowed(
        &set,
        DN_OPERATOR,
        Right::Change,
        obj(&set, ObjectType::Place, 30)
    ));
    let before = set.clone();

    // The cascade would clear the place's reference to the DN: refused, naming the place.
    let err = delete_as(&mut set, DN_OPERATOR, ObjectType::Dn, 20, true).unwrap_err();
    assert!(
        matches!(
            &err,
            ConfigError::AccessDenied { person: 14, right: Right::Change, object }
                if object.object_type == ObjectType::Place && object.dbid == 30
        ),
        "{err}"
    );
    assert_eq!(err.code(), "access_denied");
    assert!(err.to_string().contains("desk1"), "the refusal names the place: {err}");
    assert_eq!(set, before, "nothing changed");
    assert_eq!(
        obj(&set, ObjectType::Place, 30).fields.get("dns").cloned(),
        Some(Value::RefList(vec![20]))
    );

    // The same from the switch: the DN goes with it (Delete is granted), the place is cleared
    // (Change is not): refused as a whole.
    let err = delete_as(&mut set, DN_OPERATOR, ObjectType::Switch, 10, true).unwrap_err();
    assert!(
        matches!(&err, ConfigError::AccessDenied { right: Right::Change, object, .. } if object.dbid == 30),
        "{err}"
    );
    assert_eq!(set, before, "nothing changed");
    assert_consistent(&set);
}

#[test]
fn a_cascade_with_change_rights_on_the_referrers_succeeds() {
    let mut set = telephony_with_an_operator();
    grant_operator(
        &mut set,
        vec![
            Grant::new(Some(ObjectType::Dn), None, &[Right::Read, Right::Delete]),
            Grant::new(Some(ObjectType::Switch), None, &[Right::Read, Right::Delete]),
            Grant::new(Some(ObjectType::Place), None, &[Right::Change]),
        ],
    );

    let changes = delete_as(&mut set, DN_OPERATOR, ObjectType::Dn, 20, true).expect("cascade");
    let keys: Vec<_> = changes.iter().map(tandem_config::Change::key).collect();
    assert_eq!(keys, vec![(ObjectType::Place, 30), (ObjectType::Dn, 20)]);
    assert!(set.get(ObjectType::Dn, 20).is_none());
    let desk = obj(&set, ObjectType::Place, 30);
    assert_eq!(desk.fields.get("dns").cloned(), Some(Value::RefList(vec![])));
    assert_eq!(desk.version, 2);
    assert_consistent(&set);
}

#[test]
fn a_cascade_needs_delete_rights_on_every_object_it_deletes() {
    let mut set = telephony_with_an_operator();
    // Only switches: the cascade from the switch would delete its DN too.
    grant_operator(
        &mut set,
        vec![
            Grant::new(Some(ObjectType::Switch), None, &[Right::Read, Right::Delete]),
            Grant::new(Some(ObjectType::Place), None, &[Right::Change]),
        ],
    );
    let before = set.clone();
    let err = delete_as(&mut set, DN_OPERATOR, ObjectType::Switch, 10, true).unwrap_err();
    assert!(
        matches!(
            &err,
            ConfigError::AccessDenied { right: Right::Delete, object, .. }
                if object.object_type == ObjectType::Dn && object.dbid == 20
        ),
        "{err}"
    );
    assert_eq!(set, before, "nothing changed");
}
