//! Queries: filters, index-served lookups, paging and the brief form.

use tandem_config::query::BriefObject;
use tandem_config::{ConfigSet, Delta, ObjectType, PageItems, Query, State, Value};

use crate::common::*;

fn numbers() -> ConfigSet {
    let mut set = base();
    create_all(
        &mut set,
        [
            tenant(2, "T2"),
            switch(10, "sw1", ENV),
            switch(11, "sw2", ENV),
            folder(12, "F", ENV, 0),
        ],
    );
    for i in 0..10u64 {
        let sw = if i % 2 == 0 { 10 } else { 11 };
        set.create(dn(100 + i, &format!("10{i:02}"), ENV, sw)).unwrap();
    }
    create_all(
        &mut set,
        [dn(200, "1000", 2, 10), dn(201, "9000", ENV, 10).in_folder(12)],
    );
    set.update(ObjectType::Dn, 103, &Delta::new().state(State::Disabled))
        .unwrap();
    set
}

#[test]
fn field_equality_finds_the_dns_of_a_switch() {
    let set = numbers();
    let page = set.query(&Query::new(ObjectType::Dn).field("switch", Value::Ref(11)));
    assert_eq!(page.dbids(), vec![101, 103, 105, 107, 109]);
    assert_eq!(page.next_after_dbid, None);
    let page = set.query(&Query::new(ObjectType::Dn).field("switch", Value::Ref(10)).tenant(2));
    assert_eq!(page.dbids(), vec![200]);
    let page = set.query(&Query::new(ObjectType::Dn).field("dn_type", "trunk"));
    assert!(page.is_empty());
}

#[test]
fn names_exact_and_prefix_with_or_without_tenant() {
    let set = numbers();
    assert_eq!(
        set.query(&Query::new(ObjectType::Dn).name("1000")).dbids(),
        vec![100, 200]
    );
    assert_eq!(
        set.query(&Query::new(ObjectType::Dn).name("1000").tenant(ENV)).dbids(),
        vec![100]
    );
    assert_eq!(
        set.query(&Query::new(ObjectType::Dn).name_prefix("100").tenant(ENV))
            .dbids(),
        (100..110).collect::<Vec<_>>()
    );
    assert_eq!(
        set.query(&Query::new(ObjectType::Dn).name_prefix("9")).dbids(),
        vec![201]
    );
}

#[test]
fn folder_state_and_list_membership() {
    let mut set = numbers();
    assert_eq!(set.query(&Query::new(ObjectType::Dn).folder(12)).dbids(), vec![201]);
    assert_eq!(
        set.query(&Query::new(ObjectType::Dn).state(State::Disabled)).dbids(),
        vec![103]
    );
    create_all(
        &mut set,
        [
            person(300, "p1", ENV),
            person(301, "p2", ENV),
            group(310, "g", ENV, vec![300, 301]),
        ],
    );
    let page = set.query(&Query::new(ObjectType::AccessGroup).field("members", Value::Ref(301)));
    assert_eq!(page.dbids(), vec![310]);
    let page = set.query(&Query::new(ObjectType::AccessGroup).field("members", Value::Ref(1)));
    assert_eq!(page.dbids(), vec![1], "the admin is in Super Administrators only");
}

#[test]
fn paging_with_limit_and_cursor() {
    let set = numbers();
    let mut seen = Vec::new();
    let mut query = Query::new(ObjectType::Dn).tenant(ENV).limit(4);
    let mut pages = 0;
    loop {
        let page = set.query(&query);
        pages += 1;
        assert!(page.len() <= 4);
        seen.extend(page.dbids());
        match page.next_after_dbid {
            Some(after) => query = query.after(after),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<u64> = (100..110).collect();
    expected.push(201);
    assert_eq!(seen, expected);
    // A page that ends exactly at the last object says there is no more.
    let page = set.query(&Query::new(ObjectType::Dn).tenant(ENV).after(107).limit(3));
    assert_eq!((page.dbids(), page.next_after_dbid), (vec![108, 109, 201], None));
    // Limits are clamped.
    assert_eq!(set.query(&Query::new(ObjectType::Dn).limit(0)).len(), 1);
}

#[test]
fn brief_form_has_dbid_and_name_only() {
    let set = numbers();
    let page = set.query(&Query::new(ObjectType::Switch).brief());
    assert_eq!(
        page.items,
        PageItems::Brief(vec![
            BriefObject {
                dbid: 10,
                name: "sw1".into()
            },
            BriefObject {
                dbid: 11,
                name: "sw2".into()
            }
        ])
    );
}
