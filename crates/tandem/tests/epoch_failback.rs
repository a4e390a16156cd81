//! Failback: site 1 is lost, site 2 is recovered with the command line (`tandem db recover`),
//! site 1 comes back and rejoins, and a planned switchover under write load makes replica 1
//! primary again in the new epoch, losing no acknowledged write.

mod epoch_common;

use std::sync::Arc;
use std::time::Duration;

use tandem_testkit::{init_tracing, Cluster, ClusterOptions, History, Kind, Writers, EVENT_TIMEOUT};
use tracing::info;

use epoch_common::{
    must_check_quarantine, must_hold_exactly, must_wait_fenced, must_wait_primary_of_epoch, must_wait_silent, serial,
    writer_clients, TANDEM,
};

/// Fields of `tandem db recover --json`.
const RECOVER_FIELDS: [&str; 14] = [
    "previous_epoch",
    "epoch",
    "applied_before",
    "tail_applied",
    "start_index",
    "start_revision",
    "commit_heard",
    "primary_last_index_heard",
    "primary_revision_heard",
    "heard_ms_ago",
    "was_in_sync_set",
    "strict",
    "possibly_missing",
    "assessment",
];

/// Runs `tandem db ARGS` and returns stdout, panicking with the output when it fails.
async fn must_cli_raw(cluster: &Cluster, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    match cluster.cli_raw(&args).await {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(e) => panic!("{e}"),
    }
}

fn must_parse_json(what: &str, text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} printed no JSON ({e}):\n{text}"))
}

fn must_u64(what: &str, json: &serde_json::Value, field: &str) -> u64 {
    json[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: {field} is not a number: {json}"))
}

/// Replicas 1, 2 sync (site 1), 3 async (site 2). Site 1 dies; `tandem db recover` on 3 (refused
/// without `--force`); site 1 restarts fenced and rejoins; switchover back to replica 1 while two
/// clients write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_to_site_1_after_recovery_at_site_2() {
    let _serial = serial().await;
    init_tracing();

    info!("--- start site 1 (replicas 1, 2: sync) and site 2 (replica 3: async), strict mode");
    let mut cluster = Cluster::must_start(
        TANDEM,
        &[Kind::Sync, Kind::Sync, Kind::Async],
        ClusterOptions::default().sync_mode("strict"),
    )
    .await;
    for i in 0..10 {
        cluster.must_put(&format!("failback/e1/{i:03}"), &i.to_string()).await;
    }
    cluster.must_wait_caught_up(&[3]).await;
    let e1 = cluster.must_range("failback/e1/").await;

    info!("--- kill -9 site 1");
    cluster.must_kill9(1);
    cluster.must_kill9(2);
    must_wait_silent(&cluster, 3, Duration::from_millis(300)).await;
    let addr3 = cluster.addr(3);

    info!("--- `tandem db recover` without --force is refused and changes nothing");
    let refused = cluster
        .cli_raw(&["recover".to_owned(), "--on".to_owned(), addr3.clone()])
        .await;
    match refused {
        Err(tandem_testkit::TestkitError::Cli { stderr, status, .. }) => {
            assert!(
                stderr.contains("--force"),
                "the refusal ({status}) does not mention --force:\n{stderr}"
            );
        }
        Err(e) => panic!("recover without --force: unexpected error {e}"),
        Ok(output) => panic!("recover without --force succeeded: {output:?}"),
    }
    let status = cluster.must_status(3).await;
    assert!(
        status.epoch == 1 && status.role == "learner",
        "replica 3 changed after a refused recovery: {status:?}"
    );

    info!("--- `tandem db recover --force --json` on replica 3");
    let printed = must_cli_raw(&cluster, &["recover", "--on", &addr3, "--force", "--json"]).await;
    let report = must_parse_json("recover --json", &printed);
    for field in RECOVER_FIELDS {
        assert!(!report[field].is_null(), "recover --json lacks {field}:\n{printed}");
    }
    assert_eq!(must_u64("recover", &report, "previous_epoch"), 1, "{printed}");
    assert_eq!(must_u64("recover", &report, "epoch"), 2, "{printed}");
    assert_eq!(report["strict"], serde_json::json!(true), "{printed}");
    assert_eq!(report["was_in_sync_set"], serde_json::json!(false), "{printed}");
    assert!(report["assessment"].is_string(), "{printed}");
    let start_index = must_u64("recover", &report, "start_index");
    assert!(
        start_index >= must_u64("recover", &report, "applied_before"),
        "{printed}"
    );
    must_wait_primary_of_epoch(&cluster, 3, 2, start_index).await;
    assert_eq!(
        cluster.must_range("failback/e1/").await,
        e1,
        "replica 3 lacks writes it had caught up with"
    );
    cluster.must_put("failback/e2/000", "0").await;

    info!("--- site 1 restarts fenced; replica 1 rejoins with the command line, 2 with the client");
    cluster.must_restart(1).await;
    cluster.must_restart(2).await;
    must_wait_fenced(&cluster, 1, 2, &addr3).await;
    must_wait_fenced(&cluster, 2, 2, &addr3).await;
    let printed = must_cli_raw(&cluster, &["rejoin", "--on", &cluster.addr(1), "--json"]).await;
    let rejoined = must_parse_json("rejoin --json", &printed);
    assert_eq!(must_u64("rejoin", &rejoined, "epoch"), 2, "{printed}");
    assert_eq!(rejoined["primary"], serde_json::json!(addr3), "{printed}");
    let rejoined2 = match cluster.client().rejoin(&cluster.addr(2), None, None).await {
        Ok(rejoined) => rejoined,
        Err(e) => panic!("rejoin of replica 2 failed: {e}"),
    };
    must_check_quarantine(2, &rejoined2, start_index, &[]);
    cluster.must_wait_caught_up(&[1, 2]).await;
    let state = cluster.must_range("").await;
    for id in [1, 2] {
        must_hold_exactly(&cluster, id, &state).await;
    }

    info!("--- two clients write; planned switchover back to replica 1");
    let history = Arc::new(History::new());
    let writers = Writers::start(writer_clients(&cluster, 2), history.clone(), "failback/load");
    writers.must_wait_acknowledged(50, EVENT_TIMEOUT).await;
    history.note("switchover 3 -> 1 begins");
    let done = match cluster.client().switchover(1).await {
        Ok(done) => done,
        Err(e) => panic!("switchover to replica 1 failed: {e}"),
    };
    history.note(format!(
        "switchover done: replica {} primary in term {} after {} ms",
        done.primary, done.term, done.duration_ms
    ));
    assert_eq!(done.primary, 1, "the switchover answer names another primary");
    cluster.must_wait_primary_is(1).await;
    writers.must_wait_more(50, EVENT_TIMEOUT).await;
    let report = writers.stop().await;
    info!(%report, "writers stopped");

    info!("--- no acknowledged write lost; replica 1 is the primary of epoch 2");
    let load = cluster.must_range("failback/load/").await;
    let summary = history.must_check_writes(&load);
    info!(%summary, "history checked");
    assert_eq!(cluster.must_range("failback/e1/").await, e1);
    let status = cluster.must_status(1).await;
    assert!(
        status.role == "primary" && status.epoch == 2 && status.kind == "sync",
        "{status:?}"
    );
    cluster.must_wait_caught_up(&[2, 3]).await;
    let state = cluster.must_range("").await;
    for id in [2, 3] {
        let status = cluster.must_status(id).await;
        assert!(
            status.epoch == 2 && status.role == "secondary",
            "replica {id}: {status:?}"
        );
        must_hold_exactly(&cluster, id, &state).await;
    }
}
