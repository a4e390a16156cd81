//! Fixtures: a bootstrapped set and builders for the objects the tests use.

#![allow(dead_code)]

use std::sync::OnceLock;

use tandem_config::access::{bootstrap_with_hash, set_from_bootstrap};
use tandem_config::password::hash_password;
use tandem_config::{ConfigObject, ConfigSet, ObjectType, Value, ENVIRONMENT_TENANT};

/// The environment tenant.
pub const ENV: u64 = ENVIRONMENT_TENANT;
/// The bootstrap administrator's Person DBID.
pub const ADMIN: u64 = 1;
/// The administrator's password.
pub const ADMIN_PASSWORD: &str = "s3cret-admin";

/// The administrator's password hash, computed once per test binary (argon2 is slow unoptimised).
pub fn admin_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(ADMIN_PASSWORD).expect("hash"))
}

/// A set with the bootstrap objects: tenant 1, admin person 1, Super Administrators group 1.
pub fn base() -> ConfigSet {
    set_from_bootstrap(bootstrap_with_hash("admin", admin_hash())).expect("bootstrap")
}

pub fn tenant(dbid: u64, name: &str) -> ConfigObject {
    ConfigObject::new(ObjectType::Tenant, dbid, name, 0)
}

pub fn folder(dbid: u64, name: &str, tenant: u64, parent: u64) -> ConfigObject {
    ConfigObject::new(ObjectType::Folder, dbid, name, tenant).in_folder(parent)
}

pub fn host(dbid: u64, name: &str) -> ConfigObject {
    ConfigObject::new(ObjectType::Host, dbid, name, ENV).with_field("ip_address", "192.0.2.1")
}

pub fn app(dbid: u64, name: &str, host: u64, app_type: &str) -> ConfigObject {
    ConfigObject::new(ObjectType::Application, dbid, name, ENV)
        .with_field("app_type", app_type)
        .with_field("host", Value::Ref(host))
        .with_field("port", 2000 + dbid as i64)
}

pub fn switch(dbid: u64, name: &str, tenant: u64) -> ConfigObject {
    ConfigObject::new(ObjectType::Switch, dbid, name, tenant).with_field("switch_type", "sip")
}

pub fn dn(dbid: u64, name: &str, tenant: u64, switch: u64) -> ConfigObject {
    ConfigObject::new(ObjectType::Dn, dbid, name, tenant)
        .with_field("switch", Value::Ref(switch))
        .with_field("number", name)
}

pub fn place(dbid: u64, name: &str, tenant: u64, dns: Vec<u64>) -> ConfigObject {
    ConfigObject::new(ObjectType::Place, dbid, name, tenant).with_field("dns", Value::RefList(dns))
}

pub fn person(dbid: u64, name: &str, tenant: u64) -> ConfigObject {
    ConfigObject::new(ObjectType::Person, dbid, name, tenant)
        .with_field("user_name", name)
        .with_field("password_hash", admin_hash())
}

pub fn group(dbid: u64, name: &str, tenant: u64, members: Vec<u64>) -> ConfigObject {
    ConfigObject::new(ObjectType::AccessGroup, dbid, name, tenant).with_field("members", Value::RefList(members))
}

/// Creates every object, panicking with the error if one is refused.
pub fn create_all(set: &mut ConfigSet, objects: impl IntoIterator<Item = ConfigObject>) {
    for obj in objects {
        let name = format!("{} {}", obj.object_type, obj.name);
        set.create(obj).unwrap_or_else(|e| panic!("create {name}: {e}"));
    }
}

/// Asserts that every index agrees with the objects and every object is valid.
pub fn assert_consistent(set: &ConfigSet) {
    set.check_indexes().expect("indexes");
    set.check_all().expect("valid");
}
