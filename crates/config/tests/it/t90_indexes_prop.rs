//! Property: random sequences of operations — valid or not — keep the set consistent. After an
//! accepted operation every index entry points to a live object and every object is indexed, and
//! every object is valid; a refused operation leaves the set exactly as it was. At the end, the
//! set survives export → import into a fresh environment → export unchanged.

use proptest::prelude::*;
use tandem_config::access::{bootstrap_with_hash, set_from_bootstrap};
use tandem_config::document::{export, import};
use tandem_config::{ConfigObject, ConfigSet, Delta, Fields, Grant, ObjectType, Right, State, Value};

use crate::common::*;

/// Objects the test creates get DBIDs from here up; the bootstrap objects below stay untouched.
const FIRST_DBID: u64 = 100;

const NAMES: &[&str] = &["a", "b", "c", "d", "e"];

#[derive(Clone, Debug)]
enum Op {
    Create {
        type_index: u8,
        name: u8,
        a: u8,
        b: u8,
        c: u8,
    },
    Update {
        type_index: u8,
        pick: u8,
        what: u8,
        a: u8,
        b: u8,
        c: u8,
    },
    Delete {
        type_index: u8,
        pick: u8,
        cascade: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(type_index, name, a, b, c)| Op::Create { type_index, name, a, b, c }),
        3 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(type_index, pick, what, a, b, c)| Op::Update { type_index, pick, what, a, b, c }),
        1 => (any::<u8>(), any::<u8>(), any::<bool>())
            .prop_map(|(type_index, pick, cascade)| Op::Delete { type_index, pick, cascade }),
    ]
}

fn object_type(index: u8) -> ObjectType {
    ObjectType::ALL[index as usize % ObjectType::ALL.len()]
}

/// An existing object of the type chosen by `p`, or a DBID that does not exist.
fn pick(set: &ConfigSet, t: ObjectType, p: u8) -> u64 {
    let dbids: Vec<u64> = set.objects_of(t).map(|o| o.dbid).collect();
    if dbids.is_empty() || p % 11 == 10 {
        return 9_999;
    }
    dbids[p as usize % dbids.len()]
}

/// An object created by the test (never a bootstrap object), if any.
fn pick_own(set: &ConfigSet, t: ObjectType, p: u8) -> Option<u64> {
    let dbids: Vec<u64> = set.objects_of(t).map(|o| o.dbid).filter(|d| *d >= FIRST_DBID).collect();
    (!dbids.is_empty()).then(|| dbids[p as usize % dbids.len()])
}

/// Fields for an object of type `t`, mostly valid, sometimes not.
fn fields_for(set: &ConfigSet, t: ObjectType, a: u8, b: u8, c: u8) -> Fields {
    let mut f = Fields::new();
    let mut put = |name: &str, v: Value| {
        f.insert(name.to_owned(), v);
    };
    match t {
        ObjectType::Tenant | ObjectType::Skill => {}
        ObjectType::Folder => {
            if a % 3 == 1 {
                put("object_type", Value::Str(object_type(b).name().to_owned()));
            }
        }
        ObjectType::Host => {
            put("ip_address", "192.0.2.7".into());
            if a % 2 == 1 {
                put("lca_port", Value::Int(i64::from(b) * 300));
            }
        }
        ObjectType::Application => {
            put("app_type", ["confserv", "scs"][a as usize % 2].into());
            put("host", Value::Ref(pick(set, ObjectType::Host, b)));
            put("port", Value::Int(1000 + i64::from(c)));
            if c % 3 == 1 {
                put("backup", Value::Ref(pick(set, ObjectType::Application, a)));
            }
            if c % 4 == 1 {
                let list = vec![
                    pick(set, ObjectType::Application, a),
                    pick(set, ObjectType::Application, b),
                ];
                put("connections", Value::RefList(list));
            }
            if c % 5 == 2 {
                put("redundancy", ["none", "warm_standby", "cold"][b as usize % 3].into());
            }
        }
        ObjectType::Person => {
            put("user_name", NAMES[b as usize % NAMES.len()].into());
            put("password_hash", admin_hash().into());
            if a % 2 == 1 {
                put("skills", Value::RefList(vec![pick(set, ObjectType::Skill, c)]));
            }
        }
        ObjectType::AccessGroup => {
            put("members", Value::RefList(vec![pick(set, ObjectType::Person, b)]));
            if a % 2 == 1 {
                let folder = (c % 2 == 1).then(|| pick(set, ObjectType::Folder, c));
                put(
                    "grants",
                    Value::Grants(vec![Grant::new(Some(object_type(b)), folder, &[Right::Read])]),
                );
            }
        }
        ObjectType::Switch => put("switch_type", "sip".into()),
        ObjectType::Dn => {
            put("switch", Value::Ref(pick(set, ObjectType::Switch, b)));
            put("number", Value::Str(format!("{a}")));
        }
        ObjectType::Place => {
            let list = vec![pick(set, ObjectType::Dn, a), pick(set, ObjectType::Dn, b)];
            put("dns", Value::RefList(list));
        }
        ObjectType::AgentGroup => put("members", Value::RefList(vec![pick(set, ObjectType::Person, c)])),
        ObjectType::AlarmCondition => {
            put("message_id", Value::Int(i64::from(a)));
            if b % 2 == 1 {
                put("application", Value::Ref(pick(set, ObjectType::Application, c)));
            }
        }
    }
    f
}

/// Runs one operation; returns whether the set accepted it.
fn run(set: &mut ConfigSet, next_dbid: &mut u64, op: &Op) -> bool {
    match *op {
        Op::Create {
            type_index,
            name,
            a,
            b,
            c,
        } => {
            let t = object_type(type_index);
            *next_dbid += 1;
            let tenant = if t == ObjectType::Tenant {
                0
            } else {
                pick(set, ObjectType::Tenant, a)
            };
            let folder = if b % 2 == 1 || t == ObjectType::Tenant {
                0
            } else {
                pick(set, ObjectType::Folder, b)
            };
            let mut obj =
                ConfigObject::new(t, *next_dbid, NAMES[name as usize % NAMES.len()], tenant).in_folder(folder);
            obj.fields = fields_for(set, t, a, b, c);
            if c % 7 == 0 {
                obj = obj.with_option("s", "k", "v");
            }
            set.create(obj).is_ok()
        }
        Op::Update {
            type_index,
            pick: p,
            what,
            a,
            b,
            c,
        } => {
            let t = object_type(type_index);
            let Some(dbid) = pick_own(set, t, p) else { return false };
            let Some(old) = set.get(t, dbid).cloned() else {
                return false;
            };
            let spec = tandem_config::schema::spec(t);
            let delta = match what % 6 {
                0 => Delta::new().name(NAMES[a as usize % NAMES.len()]),
                1 => Delta::new().state(if old.state == State::Enabled {
                    State::Disabled
                } else {
                    State::Enabled
                }),
                2 => Delta::new().folder(if a % 2 == 1 {
                    0
                } else {
                    pick(set, ObjectType::Folder, a)
                }),
                3 => {
                    let mut target = old.clone();
                    target.fields = fields_for(set, t, a, b, c);
                    Delta::between(&old, &target)
                }
                4 => match spec.fields.get(a as usize % spec.fields.len().max(1)) {
                    Some(field) => Delta::new().unset_field(field.name),
                    None => Delta::new(),
                },
                _ => Delta::new()
                    .set_option("s", &format!("k{a}"), "v")
                    .delete_option_section(&format!("t{b}")),
            };
            let accepted = set.update(t, dbid, &delta);
            if let Ok((new, previous)) = &accepted {
                assert_eq!(new.version, previous.version + 1);
            }
            accepted.is_ok()
        }
        Op::Delete {
            type_index,
            pick: p,
            cascade,
        } => {
            let t = object_type(type_index);
            let Some(dbid) = pick_own(set, t, p) else { return false };
            match set.delete(t, dbid, cascade) {
                Ok(deleted) => {
                    assert!(deleted.iter().all(|(t, d)| set.get(*t, *d).is_none()));
                    true
                }
                Err(_) => false,
            }
        }
    }
}

fn start() -> ConfigSet {
    let mut set = base();
    create_all(&mut set, [tenant(FIRST_DBID, "T")]);
    set
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn operations_keep_indexes_consistent(ops in prop::collection::vec(op(), 1..80)) {
        let mut set = start();
        let mut next_dbid = FIRST_DBID;
        for op in &ops {
            let before = set.clone();
            if run(&mut set, &mut next_dbid, op) {
                if let Err(e) = set.check_indexes() {
                    panic!("after {op:?}: {e}");
                }
                if let Err(e) = set.check_all() {
                    panic!("after {op:?}: invalid: {e}");
                }
            } else {
                prop_assert_eq!(&set, &before, "refused {:?} changed the set", op);
            }
        }

        let document = export(&set, None).unwrap();
        let mut fresh = set_from_bootstrap(bootstrap_with_hash("admin", admin_hash())).unwrap();
        let mut next = 10_000;
        let plan = import(&fresh, &document, |_| { next += 1; next }).unwrap();
        plan.apply(&mut fresh).unwrap();
        fresh.check_indexes().unwrap();
        prop_assert_eq!(export(&fresh, None).unwrap(), document);
    }
}
