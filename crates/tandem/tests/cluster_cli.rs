//! The operator's command line against a live replica set: `put`, `get` (linearizable and
//! `--stale`), `range`, `delete`, `status`, all through `--endpoints`; what commands aimed at
//! one replica say when it cannot do what is asked, or cannot be reached; and a `serve` flag
//! refused.

mod common;

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, Kind};
use tracing::info;

use common::TANDEM;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_commands_round_trip() {
    init_tracing();

    info!("--- start two sync replicas and a witness");
    let cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Witness],
        ClusterOptions::default(),
    )
    .await;

    info!("--- put, then get the value back");
    let put = cluster.must_cli(&["put", "cli/a", "alpha"]).await;
    assert!(put.starts_with("OK revision"), "unexpected put output: {put:?}");
    cluster.must_cli(&["put", "cli/b", "beta"]).await;
    assert_eq!(cluster.must_cli(&["get", "cli/a"]).await.trim(), "alpha");

    info!("--- a stale read from each data replica, once caught up");
    cluster.must_wait_caught_up(&[1, 2]).await;
    for id in [1, 2] {
        let addr = cluster.addr(id);
        assert_eq!(
            cluster.must_cli(&["get", "cli/b", "--stale", &addr]).await.trim(),
            "beta",
            "replica {id}"
        );
    }

    info!("--- range lists both keys in order");
    let listed = cluster.must_cli(&["range", "cli/"]).await;
    let keys: Vec<&str> = listed.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(keys, vec!["cli/a", "cli/b"], "range output: {listed:?}");

    info!("--- delete, then get fails and names the key");
    cluster.must_cli(&["delete", "cli/a"]).await;
    let missing = cluster.cli(&["get", "cli/a"]).await;
    let message = match missing {
        Err(e) => e.to_string(),
        Ok(out) => panic!("get of a deleted key succeeded: {out:?}"),
    };
    assert!(message.contains("cli/a"), "the error does not name the key: {message}");

    info!("--- status prints one row per replica");
    let table = cluster.must_cli(&["status"]).await;
    for addr in cluster.endpoints() {
        assert!(table.contains(&addr), "status lacks {addr}:\n{table}");
    }
    assert!(table.contains("primary"), "status shows no primary:\n{table}");

    info!("--- commands aimed at one replica say plainly what went wrong");
    let not_fenced = cluster
        .cli_raw(&["rejoin".into(), "--on".into(), cluster.addr(1)])
        .await;
    let message = not_fenced
        .expect_err("rejoin of a replica that is not fenced")
        .to_string();
    assert!(message.contains("this replica is not fenced"), "{message}");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    };
    for args in [
        vec!["snapshot", "--on", &closed],
        vec!["get", "cli/b", "--stale", &closed],
    ] {
        let message = cluster.cli(&args).await.expect_err("nothing listens there").to_string();
        assert!(
            message.contains(&format!("unavailable: {closed}")) && !message.contains("refused:"),
            "{args:?}: {message}"
        );
    }
}

/// A snapshot interval of zero entries is refused at the command line, before anything starts.
#[tokio::test]
async fn serve_refuses_a_snapshot_interval_of_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let child = tokio::process::Command::new(TANDEM)
        .args([
            "db",
            "serve",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--snapshot-every",
            "0",
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // A replica that accepted the flag would serve until killed (dropping it kills it).
    let output = tokio::time::timeout(tandem_testkit::EVENT_TIMEOUT, child.wait_with_output())
        .await
        .expect("the replica started instead of refusing the flag")
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--snapshot-every"), "{stderr}");
    assert!(!data_dir.exists(), "nothing was created");
}
