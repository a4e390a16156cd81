//! The master Configuration Server's client API, through real processes: CRUD, every kind of
//! validation refusal, referential integrity and cascades, permissions (read-only users, folder
//! rights), the audit trail, modes, notifications (order, deltas, catch-up, reload required,
//! retention by count and by age), export → import → export (of everything, and of a folder
//! through `tandem cfg`), and the `tandem cfg` command line (JSON and YAML documents).

mod confserv_common;

use std::time::Duration;

use confserv_common::*;
use tandem_config::document::Document;
use tandem_config::{ConfigObject, Delta, Grant, ObjectType, PageItems, Query, Right, Value};
use tandem_confserv::client::{ConfClient, SubscribeFilter};
use tandem_confserv::record::{Mode, What};
use tandem_proto::confserv::{self as pb, error_kind};
use tandem_testkit::{init_tracing, Kind};
use tracing::info;

fn obj(t: ObjectType, name: &str) -> ConfigObject {
    let tenant = if t == ObjectType::Tenant { 0 } else { 1 };
    ConfigObject::new(t, 0, name, tenant)
}

async fn must_create(client: &ConfClient, object: ConfigObject) -> ConfigObject {
    match client.create(&object, None).await {
        Ok(result) => result.object.expect("the created object"),
        Err(e) => panic!("create {} {:?}: {e}", object.object_type, object.name),
    }
}

async fn must_next(sub: &mut tandem_confserv::client::Subscription) -> pb::Notification {
    match tokio::time::timeout(Duration::from_secs(20), sub.next()).await {
        Ok(Ok(n)) => std::sync::Arc::unwrap_or_clone(n),
        Ok(Err(e)) => panic!("subscription failed: {e}"),
        Err(_) => panic!("no notification within 20 s"),
    }
}

/// The next notification that is not a `live` marker.
async fn must_next_change(sub: &mut tandem_confserv::client::Subscription) -> pb::Notification {
    loop {
        let n = must_next(sub).await;
        if n.kind != "live" {
            return n;
        }
    }
}

/// Runs `tandem cfg ARGS` against `servers` with the session kept in `session`; returns whether
/// it succeeded, its output and its errors.
fn run_cfg(servers: &str, session: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(TANDEM)
        .arg("cfg")
        .args(args)
        .arg("--servers")
        .arg(servers)
        .arg("--session-file")
        .arg(session)
        .output()
        .expect("run tandem cfg");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The permission bits of `path`, in octal.
fn mode_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).expect("metadata").permissions().mode();
    format!("{:o}", mode & 0o777)
}

/// [`run_cfg`] that must succeed; returns its output.
fn must_cfg(servers: &str, session: &std::path::Path, args: &[&str]) -> String {
    let (ok, out, err) = run_cfg(servers, session, args);
    assert!(ok, "tandem cfg {args:?} failed:\n{out}\n{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_crud_validation_and_referential_integrity() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a database and one master server, bootstrapped with an administrator");
    let pair = Pair::start(&[Kind::Sync], 1, &[]).await;
    let admin = pair.admin().await;

    info!("--- create, read, query by field with paging and brief form");
    let host = must_create(&admin, obj(ObjectType::Host, "h1").with_field("ip_address", "10.0.0.1")).await;
    assert_eq!(host.version, 1);
    let sw1 = must_create(&admin, obj(ObjectType::Switch, "sw1")).await;
    let sw2 = must_create(&admin, obj(ObjectType::Switch, "sw2")).await;
    let dn = |name: &str, sw: u64| {
        obj(ObjectType::Dn, name)
            .with_field("switch", Value::Ref(sw))
            .with_field("number", name)
    };
    let dn1 = must_create(&admin, dn("1001", sw1.dbid)).await;
    let dn2 = must_create(&admin, dn("1002", sw1.dbid)).await;
    let dn3 = must_create(&admin, dn("2001", sw2.dbid)).await;
    assert!(
        dn1.dbid < dn2.dbid && dn2.dbid < dn3.dbid,
        "DBIDs are allocated in order"
    );
    assert_eq!(admin.get(ObjectType::Dn, dn1.dbid).await.expect("get"), dn1);
    assert_eq!(
        admin.get_by_name(ObjectType::Dn, 1, "1002").await.expect("get by name"),
        dn2
    );
    let of_sw1 = Query::new(ObjectType::Dn).field("switch", Value::Ref(sw1.dbid));
    let page = admin.query(&of_sw1).await.expect("query");
    assert_eq!(page.dbids(), vec![dn1.dbid, dn2.dbid], "all DNs of switch sw1");
    let first = admin.query(&of_sw1.clone().limit(1).brief()).await.expect("query");
    assert!(matches!(&first.items, PageItems::Brief(b) if b[0].name == "1001"));
    assert_eq!(first.next_after_dbid, Some(dn1.dbid));
    let second = admin
        .query(&of_sw1.clone().limit(1).after(dn1.dbid))
        .await
        .expect("query");
    assert_eq!(second.dbids(), vec![dn2.dbid]);
    assert_eq!(second.next_after_dbid, None);

    info!("--- update by delta: only what is named changes; a stale expected version conflicts");
    let delta = Delta::new()
        .set_field("dn_type", "extension")
        .set_option("tserver", "timeout", "30");
    let updated = admin
        .update(ObjectType::Dn, dn1.dbid, &delta, None, 1)
        .await
        .expect("update")
        .object
        .expect("object");
    assert_eq!(updated.version, 2);
    assert_eq!(updated.str_field("dn_type"), Some("extension"));
    assert_eq!(updated.options["tserver"]["timeout"], "30");
    assert_eq!(updated.str_field("number"), Some("1001"));
    assert_refused(
        admin
            .update(ObjectType::Dn, dn1.dbid, &Delta::new().name("x"), None, 1)
            .await,
        error_kind::CONFLICT,
        None,
    );

    info!("--- every validation rule answers with a typed error naming the object and field");
    let e = assert_refused(
        admin.create(&obj(ObjectType::Host, "h2"), None).await,
        error_kind::VALIDATION,
        Some("missing_field"),
    );
    assert_eq!(e.field.as_deref(), Some("ip_address"));
    assert!(e.message.contains("h2") && e.message.contains("ip_address"), "{e}");
    assert_refused(
        admin
            .create(
                &obj(ObjectType::Host, "h2")
                    .with_field("ip_address", "x")
                    .with_field("colour", "red"),
                None,
            )
            .await,
        error_kind::VALIDATION,
        Some("unknown_field"),
    );
    assert_refused(
        admin
            .create(
                &obj(ObjectType::Host, "h2")
                    .with_field("ip_address", "x")
                    .with_field("lca_port", "many"),
                None,
            )
            .await,
        error_kind::VALIDATION,
        Some("wrong_kind"),
    );
    let e = assert_refused(
        admin
            .create(&obj(ObjectType::Host, "h1").with_field("ip_address", "10.0.0.2"), None)
            .await,
        error_kind::VALIDATION,
        Some("duplicate_name"),
    );
    // Nothing was created: the refusal gives the new object no DBID, only the existing one's.
    assert!(
        e.message.contains(&format!(
            "host \"h1\": name already used in tenant 1 by host \"h1\" (dbid {})",
            host.dbid
        )),
        "{e}"
    );
    let e = assert_refused(
        admin.create(&dn("3001", 999), None).await,
        error_kind::VALIDATION,
        Some("dangling_reference"),
    );
    assert_eq!(e.field.as_deref(), Some("switch"));
    let app = |name: &str, app_type: &str, port: i64| {
        obj(ObjectType::Application, name)
            .with_field("app_type", app_type)
            .with_field("host", Value::Ref(host.dbid))
            .with_field("port", port)
    };
    assert_refused(
        admin.create(&app("bad-port", "tserver", 70_000), None).await,
        error_kind::VALIDATION,
        Some("invalid_value"),
    );
    let app1 = must_create(&admin, app("ts1", "tserver", 7000)).await;
    let stat = must_create(&admin, app("stat1", "statserver", 7001)).await;
    let e = assert_refused(
        admin
            .update(
                ObjectType::Application,
                app1.dbid,
                &Delta::new().set_field("backup", Value::Ref(stat.dbid)),
                None,
                0,
            )
            .await,
        error_kind::VALIDATION,
        Some("target_mismatch"),
    );
    assert_eq!(e.field.as_deref(), Some("backup"));
    assert_refused(
        admin
            .create(&obj(ObjectType::Skill, "pw").with_field("x", 1), Some("secret"))
            .await,
        error_kind::BAD_REQUEST,
        None,
    );

    info!("--- bad input: malformed JSON, unknown type, oversized request, bad password");
    let token = admin.token().expect("token");
    let mut raw = pb::conf_serv_client::ConfServClient::connect(format!("http://{}", pair.addrs()[0]))
        .await
        .expect("connect");
    fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
        request
    }
    let status = raw
        .create(with_token(
            &token,
            pb::CreateRequest {
                object_json: "{not json".into(),
                password: String::new(),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("malformed JSON");
    assert_eq!(
        status.metadata().get(pb::ERROR_KIND_KEY).unwrap(),
        error_kind::BAD_REQUEST
    );
    let status = raw
        .get(with_token(
            &token,
            pb::GetRequest {
                object_type: "spaceship".into(),
                dbid: 1,
                ..Default::default()
            },
        ))
        .await
        .expect_err("unknown type");
    assert_eq!(
        status.metadata().get(pb::ERROR_KIND_KEY).unwrap(),
        error_kind::BAD_REQUEST
    );
    assert!(status.message().contains("spaceship"), "{status:?}");
    info!("--- a write sent again with the same request id is answered, not applied twice");
    let again = pb::CreateRequest {
        object_json: serde_json::to_string(&obj(ObjectType::Skill, "once")).expect("json"),
        password: String::new(),
        request_id: "request-42".into(),
    };
    let first = raw
        .create(with_token(&token, again.clone()))
        .await
        .expect("create")
        .into_inner();
    let second = raw
        .create(with_token(&token, again))
        .await
        .expect("sent again")
        .into_inner();
    assert_eq!(
        (first.first_seq, first.object_json.clone()),
        (second.first_seq, second.object_json)
    );
    let skills = admin
        .query(&Query::new(ObjectType::Skill).name("once"))
        .await
        .expect("query");
    assert_eq!(skills.len(), 1);
    let huge = "x".repeat(5 * 1024 * 1024);
    assert_refused(
        admin
            .create(&obj(ObjectType::Skill, "huge").with_annex("a", "b", &huge), None)
            .await,
        error_kind::TOO_LARGE,
        None,
    );
    let big = "x".repeat(2 * 1024 * 1024);
    assert_refused(
        admin
            .create(&obj(ObjectType::Skill, "big").with_annex("a", "b", &big), None)
            .await,
        error_kind::TOO_LARGE,
        None,
    );
    assert_refused(
        pair.client().login(ADMIN, "wrong", "").await,
        error_kind::UNAUTHENTICATED,
        None,
    );
    assert_refused(
        pair.client().get(ObjectType::Host, host.dbid).await,
        error_kind::UNAUTHENTICATED,
        None,
    );

    info!("--- referential integrity: a referenced switch is not deleted; cascade takes its DNs");
    let e = assert_refused(
        admin.delete(ObjectType::Switch, sw1.dbid, false).await,
        error_kind::VALIDATION,
        Some("referenced"),
    );
    assert!(e.message.contains("sw1"), "{e}");
    let place = must_create(
        &admin,
        obj(ObjectType::Place, "desk").with_field("dns", Value::RefList(vec![dn1.dbid, dn3.dbid])),
    )
    .await;
    let result = admin.delete(ObjectType::Switch, sw1.dbid, true).await.expect("cascade");
    let deleted: Vec<(String, u64)> = result.deleted.iter().map(|k| (k.object_type.clone(), k.dbid)).collect();
    assert_eq!(deleted.len(), 3, "{deleted:?}");
    assert!(deleted.contains(&("switch".into(), sw1.dbid)));
    assert_eq!(
        result.changed.len(),
        1,
        "the place loses the deleted DN: {:?}",
        result.changed
    );
    assert_eq!(
        result.last_seq - result.first_seq + 1,
        4,
        "one number per object changed"
    );
    let desk = admin.get(ObjectType::Place, place.dbid).await.expect("place");
    assert_eq!(desk.field("dns"), Some(&Value::RefList(vec![dn3.dbid])));
    assert_refused(admin.get(ObjectType::Dn, dn1.dbid).await, error_kind::NOT_FOUND, None);
    assert_refused(
        admin.delete(ObjectType::Switch, sw1.dbid, false).await,
        error_kind::NOT_FOUND,
        None,
    );

    info!("--- nothing partial was written, DBIDs are never reused, the server still serves");
    let hosts = admin.query(&Query::new(ObjectType::Host)).await.expect("hosts");
    assert_eq!(hosts.dbids(), vec![host.dbid]);
    let sw3 = must_create(&admin, obj(ObjectType::Switch, "sw3")).await;
    assert!(sw3.dbid > sw2.dbid, "a DBID is never reused");
    let dns = admin.query(&Query::new(ObjectType::Dn)).await.expect("dns");
    assert_eq!(dns.dbids(), vec![dn3.dbid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_permissions_audit_and_modes() {
    init_tracing();
    let _serial = serial().await;
    let pair = Pair::start(&[Kind::Sync], 1, &[]).await;
    let admin = pair.admin().await;

    info!("--- folders, hosts in them, a read-only user and a user with rights on one folder");
    let folder = |name: &str| obj(ObjectType::Folder, name).with_field("object_type", "host");
    let f1 = must_create(&admin, folder("F1")).await;
    let f2 = must_create(&admin, folder("F2")).await;
    let host = |name: &str, f: u64| {
        obj(ObjectType::Host, name)
            .with_field("ip_address", "10.0.0.1")
            .in_folder(f)
    };
    let h1 = must_create(&admin, host("hf1", f1.dbid)).await;
    let h2 = must_create(&admin, host("hf2", f2.dbid)).await;
    let h0 = must_create(&admin, host("h0", 0)).await;
    let person = |name: &str| obj(ObjectType::Person, name).with_field("user_name", name);
    let reader = admin
        .create(&person("reader"), Some("reader-pw"))
        .await
        .expect("reader");
    let f1user = admin.create(&person("f1user"), Some("f1-pw")).await.expect("f1user");
    let reader_id = reader.created[0].dbid;
    let f1user_id = f1user.created[0].dbid;
    let reader_object = reader.object.expect("object");
    assert!(
        reader_object.field("password_hash").is_none(),
        "a password hash is never sent to clients"
    );
    must_create(
        &admin,
        obj(ObjectType::AccessGroup, "Readers")
            .with_field("members", Value::RefList(vec![reader_id]))
            .with_field("grants", Value::Grants(vec![Grant::new(None, None, &[Right::Read])])),
    )
    .await;
    must_create(
        &admin,
        obj(ObjectType::AccessGroup, "F1 hosts")
            .with_field("members", Value::RefList(vec![f1user_id]))
            .with_field(
                "grants",
                Value::Grants(vec![Grant::new(
                    Some(ObjectType::Host),
                    Some(f1.dbid),
                    &[Right::Read, Right::Create, Right::Change],
                )]),
            ),
    )
    .await;

    info!("--- the read-only user sees everything and can change nothing");
    let reader = pair.client();
    must_login(&reader, "reader", "reader-pw").await;
    assert_eq!(
        reader.query(&Query::new(ObjectType::Host)).await.expect("query").len(),
        3
    );
    assert_refused(
        reader.create(&host("r1", 0), None).await,
        error_kind::PERMISSION,
        Some("access_denied"),
    );
    assert_refused(
        reader
            .update(
                ObjectType::Host,
                h0.dbid,
                &Delta::new().set_field("os_type", "linux"),
                None,
                0,
            )
            .await,
        error_kind::PERMISSION,
        None,
    );
    assert_refused(
        reader.delete(ObjectType::Host, h0.dbid, false).await,
        error_kind::PERMISSION,
        None,
    );
    assert_refused(reader.set_mode(Mode::ReadOnly).await, error_kind::PERMISSION, None);

    info!("--- the folder user sees and writes only folder F1");
    let f1c = pair.client();
    must_login(&f1c, "f1user", "f1-pw").await;
    let visible = f1c.query(&Query::new(ObjectType::Host)).await.expect("query");
    assert_eq!(visible.dbids(), vec![h1.dbid], "only the host of F1 is visible");
    assert_refused(f1c.get(ObjectType::Host, h2.dbid).await, error_kind::NOT_FOUND, None);
    let mine = must_create(&f1c, host("hf1b", f1.dbid)).await;
    assert_refused(
        f1c.create(&host("hf2b", f2.dbid), None).await,
        error_kind::PERMISSION,
        None,
    );
    assert_refused(
        f1c.update(
            ObjectType::Host,
            h2.dbid,
            &Delta::new().set_field("os_type", "x"),
            None,
            0,
        )
        .await,
        error_kind::NOT_FOUND,
        None,
    );
    f1c.update(
        ObjectType::Host,
        h1.dbid,
        &Delta::new().set_field("ip_address", "10.0.0.9"),
        None,
        0,
    )
    .await
    .expect("change in F1");

    info!("--- the audit trail: who, when, what, previous values");
    let (records, _) = admin
        .audit(pb::AuditRequest {
            object_type: "host".into(),
            dbid: h1.dbid,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].who.user, ADMIN);
    assert!(matches!(records[0].what, What::Created { .. }));
    assert_eq!(records[1].who.user, "f1user");
    assert_eq!(records[1].who.person, f1user_id);
    match &records[1].what {
        What::Changed { object, previous } => {
            assert_eq!(previous.str_field("ip_address"), Some("10.0.0.1"));
            assert_eq!(object.str_field("ip_address"), Some("10.0.0.9"));
        }
        other => panic!("expected a change, got {other:?}"),
    }
    assert!(records[1].when_ms >= records[0].when_ms && records[1].when_ms > 0);
    let (persons, _) = admin
        .audit(pb::AuditRequest {
            object_type: "person".into(),
            ..Default::default()
        })
        .await
        .expect("audit of persons");
    let text = serde_json::to_string(&persons).expect("json");
    assert!(!text.contains("argon2"), "no password hash in the audit answer");
    let (f1_view, _) = f1c
        .audit(pb::AuditRequest {
            object_type: "host".into(),
            ..Default::default()
        })
        .await
        .expect("audit as f1user");
    assert!(
        f1_view.iter().all(|r| r.object().is_some_and(|o| o.folder == f1.dbid)),
        "the folder user reads the audit of F1 only: {f1_view:?}"
    );
    assert_eq!(f1_view.len(), 3);

    info!("--- modes: emergency lets only Super Administrators write; read-only lets nobody");
    let mut sub = admin.subscribe(SubscribeFilter::default(), None);
    assert_eq!(must_next(&mut sub).await.kind, "live");
    admin.set_mode(Mode::Emergency).await.expect("emergency");
    let e = assert_refused(
        f1c.create(&host("hf1c", f1.dbid), None).await,
        error_kind::READ_ONLY,
        None,
    );
    assert!(e.message.contains("emergency"), "{e}");
    must_create(&admin, host("by-admin", 0)).await;
    admin.set_mode(Mode::ReadOnly).await.expect("read-only");
    assert_refused(admin.create(&host("nope", 0), None).await, error_kind::READ_ONLY, None);
    assert_refused(
        admin.delete(ObjectType::Host, mine.dbid, false).await,
        error_kind::READ_ONLY,
        None,
    );
    admin.set_mode(Mode::Normal).await.expect("normal");
    must_create(&f1c, host("hf1d", f1.dbid)).await;
    let kinds: Vec<(String, String)> = {
        let mut seen = Vec::new();
        for _ in 0..5 {
            let n = must_next_change(&mut sub).await;
            seen.push((n.kind, if n.mode.is_empty() { n.name } else { n.mode }));
        }
        seen
    };
    assert_eq!(
        kinds,
        vec![
            ("mode".into(), "emergency".into()),
            ("created".into(), "by-admin".into()),
            ("mode".into(), "read_only".into()),
            ("mode".into(), "normal".into()),
            ("created".into(), "hf1d".into()),
        ],
        "every subscriber is told of mode switches, in order with the changes"
    );
    let status = admin.status(&pair.addrs()[0]).await.expect("status");
    assert_eq!(status.mode, "normal");

    info!("--- disabling a person ends their sessions");
    admin
        .update(
            ObjectType::Person,
            reader_id,
            &Delta::new().state(tandem_config::State::Disabled),
            None,
            0,
        )
        .await
        .expect("disable");
    assert_refused(
        reader.query(&Query::new(ObjectType::Host)).await,
        error_kind::UNAUTHENTICATED,
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_notifications_order_deltas_catch_up_and_reload() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a server keeping a history of 5 records, retention every 200 ms");
    let pair = Pair::start(
        &[Kind::Sync],
        1,
        &[
            "--history-max-records",
            "5",
            "--log-keep-records",
            "5",
            "--retention-interval-ms",
            "200",
        ],
    )
    .await;
    let admin = pair.admin().await;

    info!("--- created, changed (the delta), deleted: in commit order, numbered densely");
    let mut sub = admin.subscribe(SubscribeFilter::default(), None);
    let live = must_next(&mut sub).await;
    assert_eq!(live.kind, "live");
    let start = live.seq;
    let h = must_create(&admin, obj(ObjectType::Host, "h").with_field("ip_address", "10.0.0.1")).await;
    admin
        .update(
            ObjectType::Host,
            h.dbid,
            &Delta::new()
                .set_field("os_type", "linux")
                .set_annex("site", "room", "7"),
            None,
            0,
        )
        .await
        .expect("update");
    assert_refused(
        admin.create(&obj(ObjectType::Host, "h"), None).await,
        error_kind::VALIDATION,
        None,
    );
    admin.delete(ObjectType::Host, h.dbid, false).await.expect("delete");
    let created = must_next_change(&mut sub).await;
    let changed = must_next_change(&mut sub).await;
    let deleted = must_next_change(&mut sub).await;
    assert_eq!(
        (created.seq, changed.seq, deleted.seq),
        (start + 1, start + 2, start + 3),
        "a refused write takes no number"
    );
    assert_eq!((created.kind.as_str(), created.name.as_str()), ("created", "h"));
    let object: ConfigObject = serde_json::from_str(&created.object_json).expect("object");
    assert_eq!(object.str_field("ip_address"), Some("10.0.0.1"));
    assert_eq!(changed.kind, "changed");
    assert_eq!(changed.version, 2);
    let delta: Delta = serde_json::from_str(&changed.delta_json).expect("delta");
    assert_eq!(
        delta,
        Delta::new()
            .set_field("os_type", "linux")
            .set_annex("site", "room", "7"),
        "only what changed"
    );
    assert_eq!((deleted.kind.as_str(), deleted.dbid), ("deleted", h.dbid));
    assert_eq!(created.user, ADMIN);

    info!("--- a client that reconnects gets exactly what it missed");
    let last = sub.last_seq().expect("last");
    drop(sub);
    for i in 0..3 {
        must_create(&admin, obj(ObjectType::Skill, &format!("s{i}"))).await;
    }
    let mut again = admin.subscribe(SubscribeFilter::default(), Some(last));
    let missed: Vec<u64> = {
        let mut seqs = Vec::new();
        loop {
            let n = must_next(&mut again).await;
            if n.kind == "live" {
                break;
            }
            seqs.push(n.seq);
        }
        seqs
    };
    assert_eq!(missed, vec![last + 1, last + 2, last + 3]);
    let mut skills_only = admin.subscribe(
        SubscribeFilter {
            object_types: vec![ObjectType::Person],
            ..Default::default()
        },
        Some(last),
    );
    assert_eq!(
        must_next(&mut skills_only).await.kind,
        "live",
        "the filter lets no skill through"
    );

    info!("--- past the history (5 records), a reconnecting client must reload");
    for i in 3..10 {
        must_create(&admin, obj(ObjectType::Skill, &format!("s{i}"))).await;
    }
    let mut stale = admin.subscribe(SubscribeFilter::default(), Some(last));
    let e = assert_refused(stale.next().await, error_kind::RELOAD_REQUIRED, None);
    assert!(e.seq.is_some_and(|s| s >= last + 10), "{e:?}");
    let n = must_next_change(&mut again).await;
    assert_eq!(n.seq, last + 4, "a live subscriber is not affected");

    info!("--- retention removes the records the history no longer keeps");
    must_eventually_oldest(&admin, last + 10 - 5 + 1).await;
}

async fn must_eventually_oldest(admin: &ConfClient, at_least: u64) {
    tandem_testkit::must_eventually("retention to remove old records", EVENT_TIMEOUT, || async {
        match admin.audit(pb::AuditRequest::default()).await {
            Ok((records, _)) if records.first().is_some_and(|r| r.seq >= at_least) => Ok(()),
            Ok((records, _)) => Err(format!("oldest kept: {:?}", records.first().map(|r| r.seq))),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t35_history_age_limit_reload_required_and_retention() {
    init_tracing();
    let _serial = serial().await;
    const AGE_MS: u64 = 1_200;
    // The young record is written this long after the old ones: it is still young when they
    // have aged, and when retention removes them.
    const YOUNG_AFTER_MS: u64 = 400;
    info!("--- a pair keeping {AGE_MS} ms of history (records: the default 1000), retention every 100 ms");
    let age = AGE_MS.to_string();
    let pair = Pair::start(
        &[Kind::Sync],
        2,
        &["--history-max-age-ms", &age, "--retention-interval-ms", "100"],
    )
    .await;
    let admin = pair.admin().await;

    info!("--- three changes; a client resuming while they are young catches up");
    let mut sub = admin.subscribe(SubscribeFilter::default(), None);
    let start = must_next(&mut sub).await.seq;
    for i in 0..3 {
        must_create(&admin, obj(ObjectType::Skill, &format!("old{i}"))).await;
    }
    let mut old_when_ms = 0;
    for _ in 0..3 {
        old_when_ms = must_next_change(&mut sub).await.when_ms;
    }
    let last = sub.last_seq().expect("last");
    assert_eq!(last, start + 3);
    let mut young = admin.subscribe(SubscribeFilter::default(), Some(last - 1));
    assert_eq!(
        must_next(&mut young).await.seq,
        last,
        "the history serves a young record"
    );
    drop(young);
    // Both servers, the primary and the standby that follows the feed, say so.
    for (addr, floor) in must_resumable_after(&pair).await {
        assert!(
            floor <= start,
            "{addr}: the young records are resumable, yet it says after {floor}"
        );
    }

    info!("--- a fourth change, younger");
    // The ages are the point of the test: records carry the server's time, the waits follow it.
    sleep_until_ms(old_when_ms + YOUNG_AFTER_MS).await;
    let fresh = must_create(&admin, obj(ObjectType::Skill, "young")).await;
    let n = must_next_change(&mut sub).await;
    assert_eq!((n.seq, n.dbid), (last + 1, fresh.dbid));
    let young_when_ms = n.when_ms;
    drop(sub);

    info!("--- past the age of the first three, resuming before them gets reload-required, saying why");
    sleep_until_ms(old_when_ms + AGE_MS + 50).await;
    let mut stale = admin.subscribe(SubscribeFilter::default(), Some(start));
    let e = assert_refused(stale.next().await, error_kind::RELOAD_REQUIRED, None);
    assert!(e.message.contains("older than the history keeps"), "{e:?}");
    assert_eq!(e.seq, Some(last + 1), "{e:?}");
    for (addr, floor) in must_resumable_after(&pair).await {
        assert_eq!(
            floor, last,
            "{addr}: the status's oldest resumable number is past the aged records, not past the young one"
        );
    }
    let mut after_old = admin.subscribe(SubscribeFilter::default(), Some(last));
    let n = must_next_change(&mut after_old).await;
    assert_eq!(
        (n.seq, n.name.as_str()),
        (last + 1, "young"),
        "resuming just before the young record works"
    );
    let mut caught_up = admin.subscribe(SubscribeFilter::default(), Some(last + 1));
    assert_eq!(
        must_next(&mut caught_up).await.kind,
        "live",
        "a client that missed nothing resumes"
    );

    info!("--- retention removes the old records from the database (the audit trail), not the young one");
    let (records, answered_by_ms) =
        tandem_testkit::must_eventually("retention to remove the old records", EVENT_TIMEOUT, || async {
            match admin.audit(pb::AuditRequest::default()).await {
                Ok((records, _)) if records.iter().all(|r| r.seq > last) => Ok((records, now_ms())),
                Ok((records, _)) => Err(format!("oldest kept: {:?}", records.first().map(|r| r.seq))),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    if answered_by_ms < young_when_ms + AGE_MS {
        // The retention pass that removed the old records ran before this answer, so while the
        // young record was younger than the age.
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![last + 1], "a record younger than the age is kept");
    } else {
        info!("the young record aged too before the audit answered: only the removal is checked");
    }
}

/// The number each server of `pair` says a client can resume after (the status's
/// `history_oldest_seq`).
async fn must_resumable_after(pair: &Pair) -> Vec<(String, u64)> {
    let answers = pair.client().status_all().await;
    assert_eq!(answers.len(), pair.servers.len(), "every server answers");
    answers
        .into_iter()
        .map(|(addr, status)| {
            let floor = status.expect("status").history_oldest_seq;
            (addr, floor)
        })
        .collect()
}

/// Sleeps until the wall clock reaches `at_ms` (ms since the epoch).
async fn sleep_until_ms(at_ms: u64) {
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now_ms()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_export_import_round_trip() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a configuration with every kind of reference");
    let source = Pair::start(&[Kind::Sync], 1, &[]).await;
    let admin = source.admin().await;
    let tenant = must_create(&admin, obj(ObjectType::Tenant, "Acme")).await;
    let in_tenant = |t: ObjectType, name: &str| ConfigObject::new(t, 0, name, tenant.dbid);
    let apps = must_create(
        &admin,
        obj(ObjectType::Folder, "Apps").with_field("object_type", "application"),
    )
    .await;
    let host = must_create(
        &admin,
        obj(ObjectType::Host, "h1")
            .with_field("ip_address", "10.0.0.1")
            .with_option("lca", "port", "4999"),
    )
    .await;
    let app = |name: &str| {
        obj(ObjectType::Application, name)
            .with_field("app_type", "tserver")
            .with_field("host", Value::Ref(host.dbid))
            .with_field("port", 7000)
            .in_folder(apps.dbid)
    };
    let backup = must_create(&admin, app("ts-backup")).await;
    must_create(&admin, app("ts-primary").with_field("backup", Value::Ref(backup.dbid))).await;
    let sw = must_create(&admin, in_tenant(ObjectType::Switch, "sw")).await;
    let dn = must_create(
        &admin,
        in_tenant(ObjectType::Dn, "1001")
            .with_field("switch", Value::Ref(sw.dbid))
            .with_field("number", "1001")
            .with_annex("x", "y", "z"),
    )
    .await;
    must_create(
        &admin,
        in_tenant(ObjectType::Place, "desk").with_field("dns", Value::RefList(vec![dn.dbid])),
    )
    .await;
    let agent = admin
        .create(
            &obj(ObjectType::Person, "agent").with_field("user_name", "agent"),
            Some("agent-pw"),
        )
        .await
        .expect("person");
    must_create(
        &admin,
        obj(ObjectType::AccessGroup, "App admins")
            .with_field("members", Value::RefList(vec![agent.created[0].dbid]))
            .with_field(
                "grants",
                Value::Grants(vec![Grant::new(None, Some(apps.dbid), &[Right::Read, Right::Change])]),
            ),
    )
    .await;
    let exported = admin.export(None).await.expect("export");
    assert!(exported.objects.len() >= 12, "{}", exported.objects.len());

    info!("--- import into an empty database, then export again: the same document");
    let target = Pair::start(&[Kind::Sync], 1, &[]).await;
    let target_admin = target.admin().await;
    let report = target_admin.import(&exported.to_json(), false).await.expect("import");
    assert!(report.created.len() >= 9, "{report:?}");
    assert_eq!(
        report.first_seq + (report.created.len() + report.changed.len()) as u64 - 1,
        report.last_seq
    );
    let again = target_admin.export(None).await.expect("export again");
    assert_eq!(again, exported, "export → import → export gives the same document");

    info!("--- import is idempotent, and the imported password works");
    let second = target_admin
        .import(&exported.to_json(), false)
        .await
        .expect("import again");
    assert!(second.created.is_empty() && second.changed.is_empty(), "{second:?}");
    assert_eq!(second.skipped.len(), exported.objects.len());
    let agent_client = target.client();
    must_login(&agent_client, "agent", "agent-pw").await;

    info!("--- an import with a dangling name is refused whole");
    let mut broken = exported.clone();
    if let Some(o) = broken.objects.iter_mut().find(|o| o.name == "ts-primary") {
        o.name = "ts-renamed".into();
        if let Some(tandem_config::document::DocValue::Ref(r)) = o.fields.get_mut("backup") {
            r.name = "missing".into();
        }
    }
    assert_refused(
        target_admin.import(&broken.to_json(), false).await,
        error_kind::VALIDATION,
        Some("invalid_document"),
    );
    assert_eq!(
        target_admin.export(None).await.expect("export"),
        exported,
        "nothing partial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t45_folder_export_import_through_the_command_line() {
    init_tracing();
    let _serial = serial().await;
    info!("--- a folder Site1 (a host, a sub-folder with an application on that host) and objects outside it");
    let source = Pair::start(&[Kind::Sync], 1, &[]).await;
    let admin = source.admin().await;
    let site1 = must_create(&admin, obj(ObjectType::Folder, "Site1")).await;
    let site1_apps = must_create(
        &admin,
        obj(ObjectType::Folder, "Site1 Apps")
            .with_field("object_type", "application")
            .in_folder(site1.dbid),
    )
    .await;
    let host = |name: &str| obj(ObjectType::Host, name).with_field("ip_address", "10.0.0.1");
    let s1_host = must_create(
        &admin,
        host("s1-host").with_option("lca", "port", "4999").in_folder(site1.dbid),
    )
    .await;
    let app = |name: &str, host: u64| {
        obj(ObjectType::Application, name)
            .with_field("app_type", "tserver")
            .with_field("host", Value::Ref(host))
            .with_field("port", 7000)
    };
    must_create(
        &admin,
        app("s1-app", s1_host.dbid)
            .with_annex("x", "y", "z")
            .in_folder(site1_apps.dbid),
    )
    .await;
    let site2 = must_create(&admin, obj(ObjectType::Folder, "Site2")).await;
    let s2_host = must_create(&admin, host("s2-host").in_folder(site2.dbid)).await;
    must_create(&admin, app("s2-app", s2_host.dbid).in_folder(site2.dbid)).await;
    must_create(&admin, host("root-host")).await;
    // Outside the folder, referring into it: not part of its export.
    must_create(&admin, app("root-app", s1_host.dbid)).await;

    let dir = tempfile::tempdir().expect("dir");
    let source_servers = source.addrs().join(",");
    let source_session = dir.path().join("source-session");
    let pw = write_file(dir.path(), "pw", ADMIN_PASSWORD);
    let pw = pw.to_str().expect("path");
    must_cfg(
        &source_servers,
        &source_session,
        &["login", "--user", ADMIN, "--password-file", pw],
    );

    info!("--- tandem cfg export --folder: the folder's subtree and nothing else");
    let file = dir.path().join("site1.json");
    let file_arg = file.to_str().expect("path");
    let site1_arg = site1.dbid.to_string();
    must_cfg(
        &source_servers,
        &source_session,
        &["export", "--folder", &site1_arg, "--output", file_arg],
    );
    let exported = Document::from_json(&std::fs::read_to_string(&file).expect("read")).expect("a document");
    let mut names: Vec<(ObjectType, &str)> = exported
        .objects
        .iter()
        .map(|o| (o.object_type, o.name.as_str()))
        .collect();
    names.sort();
    let mut expected = vec![
        (ObjectType::Folder, "Site1"),
        (ObjectType::Folder, "Site1 Apps"),
        (ObjectType::Host, "s1-host"),
        (ObjectType::Application, "s1-app"),
    ];
    expected.sort();
    assert_eq!(names, expected, "only the folder, its sub-folder and their contents");
    let (ok, _, err) = run_cfg(&source_servers, &source_session, &["export", "--folder", "999999"]);
    assert!(!ok && err.contains("999999"), "an unknown folder is refused: {err}");

    info!("--- imported into an empty master, exported again: the same document");
    let target = Pair::start(&[Kind::Sync], 1, &[]).await;
    let target_servers = target.addrs().join(",");
    let target_session = dir.path().join("target-session");
    must_cfg(
        &target_servers,
        &target_session,
        &["login", "--user", ADMIN, "--password-file", pw],
    );
    let out = must_cfg(&target_servers, &target_session, &["import", file_arg, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["created"].as_array().map(Vec::len), Some(4), "{report}");
    assert_eq!(report["changed"].as_array().map(Vec::len), Some(0), "{report}");
    let out = must_cfg(
        &target_servers,
        &target_session,
        &["get", "folder", "--name", "Site1", "--json"],
    );
    let imported: ConfigObject = serde_json::from_str(&out).expect("the folder");
    let out = must_cfg(
        &target_servers,
        &target_session,
        &["export", "--folder", &imported.dbid.to_string()],
    );
    let again = Document::from_json(&out).expect("a document");
    assert_eq!(
        again, exported,
        "folder export → import → export gives the same document"
    );
    let whole = target.admin().await.export(None).await.expect("export everything");
    assert_eq!(
        whole.objects.len(),
        exported.objects.len() + 3,
        "the target holds the bootstrap objects and the folder, nothing else"
    );
    let app = whole
        .objects
        .iter()
        .find(|o| o.name == "s1-app")
        .expect("the application");
    assert_eq!(app.folder.as_deref(), Some("Site1 Apps"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t50_command_line() {
    init_tracing();
    let _serial = serial().await;
    let pair = Pair::start(&[Kind::Sync], 2, &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let pw = write_file(dir.path(), "pw", ADMIN_PASSWORD);
    let session = dir.path().join("session");
    let servers = pair.addrs().join(",");
    let run = |args: &[&str]| run_cfg(&servers, &session, args);
    let must = |args: &[&str]| must_cfg(&servers, &session, args);

    info!("--- login keeps the session; create, query, get, update, delete");
    let out = must(&["login", "--user", ADMIN, "--password-file", pw.to_str().unwrap()]);
    assert!(out.contains("Super Administrator"), "{out}");
    assert_eq!(mode_of(&session), "600", "the session file is its owner's alone");

    info!("--- login --json: who, which server answered, where the session is; the token only if asked");
    let out = must(&[
        "login",
        "--user",
        ADMIN,
        "--password-file",
        pw.to_str().unwrap(),
        "--json",
    ]);
    let login: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(login["user"], ADMIN, "{login}");
    assert_eq!(login["super_admin"], true, "{login}");
    assert!(login["person"].as_u64().is_some_and(|p| p > 0), "{login}");
    assert!(login["expires_at_ms"].as_u64().is_some_and(|t| t > now_ms()), "{login}");
    let answered = login["server"].as_str().expect("the server that answered");
    assert!(pair.addrs().iter().any(|a| a == answered), "{login}");
    assert_eq!(login["session_file"].as_str(), session.to_str(), "{login}");
    assert!(
        login.get("token").is_none(),
        "the token stays in the session file: {login}"
    );
    let kept = std::fs::read_to_string(&session).expect("the session file");
    assert!(!out.contains(kept.trim()), "{out}");
    assert_eq!(
        mode_of(&session),
        "600",
        "a session file replaced is its owner's alone too"
    );
    let out = must(&[
        "login",
        "--user",
        ADMIN,
        "--password-file",
        pw.to_str().unwrap(),
        "--json",
        "--print-token",
    ]);
    assert!(!out.contains(ADMIN_PASSWORD), "never the password: {out}");
    let login: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(login["session_file"].is_null(), "--print-token saves nothing: {login}");
    let token = login["token"].as_str().expect("the token");
    assert_eq!(
        std::fs::read_to_string(&session).expect("the session file"),
        kept,
        "the session file is left alone"
    );
    assert_eq!(
        must(&["mode", "--token", token]).trim(),
        "normal",
        "the printed token is a session"
    );
    let out = must(&[
        "create",
        "host",
        "--name",
        "cli-host",
        "--field",
        "ip_address=10.1.1.1",
        "--field",
        "lca_port=4999",
        "--option",
        "log/level=debug",
        "--json",
    ]);
    let created: serde_json::Value = serde_json::from_str(&out).expect("json");
    let dbid = created["object"]["dbid"].as_u64().expect("dbid");
    assert_eq!(created["object"]["fields"]["lca_port"]["int"], 4999);
    let out = must(&["query", "host", "--prefix", "cli-"]);
    assert!(out.contains("cli-host") && out.contains("DBID"), "{out}");
    let out = must(&["get", "host", &dbid.to_string()]);
    assert!(out.contains("log/level = debug"), "{out}");
    must(&[
        "update",
        "host",
        &dbid.to_string(),
        "--field",
        "os_type=linux",
        "--delete-option",
        "log",
    ]);
    let out = must(&["get", "host", "--name", "cli-host", "--json"]);
    let host: ConfigObject = serde_json::from_str(&out).expect("object");
    assert_eq!(host.version, 2);
    assert!(host.options.is_empty());

    info!("--- refusals are clear and exit non-zero");
    let (ok, _, err) = run(&["create", "host", "--name", "no-ip"]);
    assert!(!ok && err.contains("ip_address"), "{err}");
    let (ok, _, err) = run(&["create", "host", "--name", "x", "--field", "lca_port=many"]);
    assert!(!ok && err.contains("integer"), "{err}");
    let (ok, _, err) = run(&["get", "spaceship", "1"]);
    assert!(!ok && err.contains("spaceship"), "{err}");

    info!("--- watch, audit, mode, export/import, status");
    let out = must(&["watch", "--after", "0", "--count", "4", "--json"]);
    assert_eq!(out.lines().filter(|l| l.contains("\"created\"")).count(), 4, "{out}");
    let out = must(&["audit", "--type", "host"]);
    assert!(
        out.contains("create host \"cli-host\"") && out.contains("update host"),
        "{out}"
    );
    must(&["mode", "emergency"]);
    assert_eq!(must(&["mode"]).trim(), "emergency");
    must(&["mode", "normal"]);
    let file = dir.path().join("export.json");
    must(&["export", "--output", file.to_str().unwrap()]);
    let out = must(&["import", file.to_str().unwrap(), "--dry-run"]);
    assert!(out.contains("0 created, 0 changed"), "{out}");

    info!("--- YAML: export by extension or --format, the same document; import detects .yaml");
    let yaml_file = dir.path().join("export.yaml");
    must(&["export", "--output", yaml_file.to_str().unwrap()]);
    let json_doc = Document::from_json(&std::fs::read_to_string(&file).unwrap()).expect("JSON export");
    let yaml_text = std::fs::read_to_string(&yaml_file).unwrap();
    assert!(yaml_text.starts_with("format: 1\n"), "{yaml_text}");
    assert_eq!(Document::from_yaml(&yaml_text).expect("YAML export"), json_doc);
    let stdout_yaml = must(&["export", "--format", "yaml"]);
    assert_eq!(stdout_yaml.trim_end(), yaml_text.trim_end());
    let out = must(&["import", yaml_file.to_str().unwrap(), "--dry-run"]);
    assert!(out.contains("0 created, 0 changed"), "{out}");
    let plain = dir.path().join("export.txt");
    std::fs::write(&plain, &yaml_text).unwrap();
    let out = must(&["import", plain.to_str().unwrap(), "--format", "yaml", "--dry-run"]);
    assert!(out.contains("0 created, 0 changed"), "{out}");
    let broken = write_file(
        dir.path(),
        "broken.yml",
        "format: 1\nobjects:\n- type: host\n  name: x\n fields: {}\n",
    );
    let (ok, _, err) = run(&["import", broken.to_str().unwrap(), "--dry-run"]);
    assert!(
        !ok && err.contains("broken.yml") && err.contains("line 5, column 2"),
        "{err}"
    );
    let out = must(&["status"]);
    assert!(out.contains("primary") && out.contains("backup"), "{out}");
    let out = must(&["delete", "host", &dbid.to_string()]);
    assert!(out.contains("deleted host"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t60_concurrent_writes_are_equivalent_to_one_after_the_other() {
    init_tracing();
    let _serial = serial().await;
    let pair = Pair::start(&[Kind::Sync], 1, &[]).await;
    let admin = pair.admin().await;

    info!("--- 20 clients create the same name at once: exactly one succeeds");
    let attempts = (0..20).map(|_| {
        let c = admin.clone();
        async move { c.create(&obj(ObjectType::Skill, "same"), None).await }
    });
    let results = futures::future::join_all(attempts).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for e in results.into_iter().filter_map(Result::err) {
        assert_eq!(e.code.as_deref(), Some("duplicate_name"), "{e:?}");
    }

    info!("--- 40 DNs created at once: distinct, dense DBIDs and numbers");
    let sw = must_create(&admin, obj(ObjectType::Switch, "sw")).await;
    let creates = (0..40).map(|i| {
        let c = admin.clone();
        let dn = obj(ObjectType::Dn, &format!("dn{i}"))
            .with_field("switch", Value::Ref(sw.dbid))
            .with_field("number", format!("{i}").as_str());
        async move { c.create(&dn, None).await }
    });
    let results: Vec<_> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("create"))
        .collect();
    let mut dbids: Vec<u64> = results
        .iter()
        .map(|r| r.object.as_ref().expect("object").dbid)
        .collect();
    dbids.sort_unstable();
    assert_eq!(dbids, (dbids[0]..dbids[0] + 40).collect::<Vec<_>>());
    let mut seqs: Vec<u64> = results.iter().map(|r| r.first_seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 40, "one notification number each");

    info!("--- DNs created on a switch while it is deleted: never a DN of a missing switch");
    let sw2 = must_create(&admin, obj(ObjectType::Switch, "sw2")).await;
    let mut writes = Vec::new();
    for i in 0..10 {
        let c = admin.clone();
        let dn = obj(ObjectType::Dn, &format!("race{i}"))
            .with_field("switch", Value::Ref(sw2.dbid))
            .with_field("number", format!("r{i}").as_str());
        writes.push(tokio::spawn(async move { c.create(&dn, None).await.map(|_| ()) }));
        if i == 5 {
            let c = admin.clone();
            writes.push(tokio::spawn(async move {
                c.delete(ObjectType::Switch, sw2.dbid, false).await.map(|_| ())
            }));
        }
    }
    for w in writes {
        let _ = w.await.expect("task");
    }
    let dns = admin
        .query(&Query::new(ObjectType::Dn).field("switch", Value::Ref(sw2.dbid)))
        .await
        .expect("query");
    match admin.get(ObjectType::Switch, sw2.dbid).await {
        Ok(_) => info!(dns = dns.len(), "the switch stayed (the delete came after a DN)"),
        Err(e) => {
            assert_eq!(e.kind, error_kind::NOT_FOUND);
            assert!(dns.is_empty(), "DNs of a deleted switch: {:?}", dns.dbids());
        }
    }
    admin.export(None).await.expect("the configuration is valid as a whole");
}
