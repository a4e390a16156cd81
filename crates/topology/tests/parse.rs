//! The topology file: the shipped example, and every kind of mistake reported at its line.

use std::path::Path;

use tandem_topology::{DbKind, Masters, Role, Topology, TopologyError};

const VALID: &str = r#"
name = "t"

[[site]]
name = "a"
masters = "live"

[[site]]
name = "b"
masters = "dormant"

[[host]]
name = "a-db"
site = "a"
roles = ["db"]
db_kind = "sync"

[[host]]
name = "a-cs"
site = "a"
roles = ["master", "proxy"]

[[host]]
name = "b-cs"
site = "b"
roles = ["master"]
"#;

/// The error for `text`, which must be refused: (line, column, message).
fn refused(text: &str) -> (usize, usize, String) {
    match Topology::parse(text, "t.toml") {
        Err(TopologyError::Invalid {
            origin,
            line,
            column,
            message,
        }) => {
            assert_eq!(origin, "t.toml");
            (line, column, message)
        }
        Err(other) => panic!("unexpected error kind: {other}"),
        Ok(topology) => panic!("accepted: {topology:?}"),
    }
}

/// `VALID` with `from` replaced by `to` (which must occur once).
fn edited(from: &str, to: &str) -> String {
    assert_eq!(VALID.matches(from).count(), 1, "`{from}` must occur once");
    VALID.replace(from, to)
}

/// 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).expect("needle in text");
    text[..at].matches('\n').count() + 1
}

#[test]
fn the_shipped_example_is_the_seeds_layout() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-site.toml");
    let topology = Topology::from_file(&path).expect("examples/two-site.toml is valid");
    assert_eq!(topology.name, "two-site");
    assert_eq!(topology.live_site().name, "site1");
    assert_eq!(topology.site("site2").and_then(|s| s.masters), Some(Masters::Dormant));
    for site in ["site1", "site2"] {
        assert_eq!(
            topology.hosts_with(Role::Master, Some(site)).count(),
            2,
            "{site} master pair"
        );
        assert_eq!(
            topology.hosts_with(Role::Proxy, Some(site)).count(),
            2,
            "{site} proxy pair"
        );
    }
    let replicas: Vec<(u64, &str, Option<DbKind>)> = topology
        .db_replicas()
        .map(|(id, h)| (id, h.site.as_str(), h.db_kind))
        .collect();
    assert_eq!(
        replicas,
        vec![
            (1, "site1", Some(DbKind::Sync)),
            (2, "site2", Some(DbKind::Sync)),
            (3, "site3", Some(DbKind::Witness)),
        ]
    );
    assert!(!topology.disaster.auto_activate, "off by default, as in the seed");
}

#[test]
fn a_minimal_file_gets_the_defaults() {
    let topology = Topology::parse(VALID, "t.toml").expect("valid");
    assert_eq!(topology.wan.delay_ms, 0);
    assert_eq!(topology.wan.loss_percent, 0);
    assert_eq!(topology.disaster.auto_activate_after_ms, 10_000);
    assert_eq!(
        topology.host("a-cs").map(|h| h.roles.clone()),
        Some(vec![Role::Master, Role::Proxy])
    );
    assert_eq!(topology.host("a-db").and_then(|h| h.db_kind), Some(DbKind::Sync));
}

#[test]
fn an_unknown_role_is_named_at_its_line() {
    let text = edited(r#"roles = ["master", "proxy"]"#, r#"roles = ["master", "proxxy"]"#);
    let (line, column, message) = refused(&text);
    assert_eq!(line, line_of(&text, "proxxy"));
    assert_eq!(column, 20, "the column of the value");
    assert!(message.contains("unknown role `proxxy`"), "{message}");
}

#[test]
fn a_host_on_no_declared_site() {
    let text = edited("name = \"b-cs\"\nsite = \"b\"", "name = \"b-cs\"\nsite = \"c\"");
    let (line, _, message) = refused(&text);
    assert_eq!(line, line_of(&text, "site = \"c\""));
    assert!(
        message.contains("site `c`, which is not declared (sites: a, b)"),
        "{message}"
    );
}

#[test]
fn two_live_master_pairs() {
    let text = edited("masters = \"dormant\"", "masters = \"live\"");
    let (line, _, message) = refused(&text);
    assert_eq!(line, 10, "the second `live`");
    assert!(message.contains("two live master pairs"), "{message}");
}

#[test]
fn no_live_master_pair() {
    let text = edited("masters = \"live\"", "masters = \"dormant\"");
    let (_, _, message) = refused(&text);
    assert!(
        message.contains("exactly one site's master pair must be live"),
        "{message}"
    );
}

#[test]
fn syntax_errors_and_unknown_keys_have_their_line() {
    let text = edited("[[host]]\nname = \"b-cs\"", "[[host]]\nname = \"b-cs\"\nport = 7");
    let (line, _, message) = refused(&text);
    assert_eq!(line, line_of(&text, "port = 7"));
    assert!(message.contains("unknown field `port`"), "{message}");

    let text = edited("name = \"t\"", "name = \"t");
    let (line, _, _) = refused(&text);
    assert_eq!(line, 2);
}

#[test]
fn every_other_mistake_is_refused_with_a_reason() {
    let cases: &[(&str, &str, &str)] = &[
        ("db_kind = \"sync\"", "db_kind = \"quorum\"", "db_kind `quorum`"),
        ("db_kind = \"sync\"\n", "", "runs `db` but has no db_kind"),
        (
            "roles = [\"master\"]",
            "roles = [\"master\"]\ndb_kind = \"async\"",
            "has a db_kind but does not run `db`",
        ),
        ("roles = [\"master\"]", "roles = []", "has no role"),
        (
            "roles = [\"master\"]",
            "roles = [\"master\", \"master\"]",
            "listed twice",
        ),
        ("name = \"b-cs\"", "name = \"a-cs\"", "host `a-cs` is declared twice"),
        ("name = \"b\"", "name = \"a\"", "site `a` is declared twice"),
        ("name = \"a-db\"", "name = \"A DB\"", "host name `A DB`"),
        (
            "masters = \"dormant\"",
            "masters = \"sleeping\"",
            "use `live` or `dormant`",
        ),
        ("masters = \"dormant\"\n", "", "has master servers but no"),
        ("db_kind = \"sync\"", "db_kind = \"async\"", "no database replica votes"),
        (
            "name = \"t\"",
            "name = \"t\"\n[wan]\nloss_percent = 101",
            "loss_percent 101 is over 100",
        ),
        (
            "roles = [\"master\"]",
            "roles = [\"master\"]\naddress = \"10.0.0\"",
            "not an IPv4 address",
        ),
    ];
    for (from, to, expected) in cases {
        let (_, _, message) = refused(&edited(from, to));
        assert!(message.contains(expected), "`{from}` → `{to}`: {message}");
    }
}

#[test]
fn pairs_are_at_most_two() {
    let three_masters = format!(
        "{VALID}\n[[host]]\nname = \"b-cs2\"\nsite = \"b\"\nroles = [\"master\"]\n\
         [[host]]\nname = \"b-cs3\"\nsite = \"b\"\nroles = [\"master\"]\n"
    );
    let (_, _, message) = refused(&three_masters);
    assert!(message.contains("3 master servers"), "{message}");

    let three_proxies = format!(
        "{VALID}\n[[host]]\nname = \"p1\"\nsite = \"b\"\nroles = [\"proxy\"]\n\
         [[host]]\nname = \"p2\"\nsite = \"b\"\nroles = [\"proxy\"]\n\
         [[host]]\nname = \"p3\"\nsite = \"b\"\nroles = [\"proxy\"]\n"
    );
    let (_, _, message) = refused(&three_proxies);
    assert!(message.contains("3 proxies"), "{message}");
}

#[test]
fn the_live_site_needs_a_data_replica() {
    let text = edited("site = \"a\"\nroles = [\"db\"]", "site = \"b\"\nroles = [\"db\"]");
    let (line, _, message) = refused(&text);
    assert_eq!(line, line_of(&text, "masters = \"live\""));
    assert!(message.contains("live site `a` has no data replica"), "{message}");
}

#[test]
fn a_missing_file_is_a_read_error() {
    let err = Topology::from_file(Path::new("/nonexistent/topology.toml")).expect_err("missing");
    assert!(matches!(err, TopologyError::Read { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot read /nonexistent/topology.toml"),
        "{err}"
    );
}
