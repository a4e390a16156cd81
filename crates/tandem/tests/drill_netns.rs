//! `tandem drill` in real network namespaces: site 1 destroyed (kill -9 of every process there,
//! every link cut), site 2 activated, then failback — with a client load whose history the drill
//! checks. These tests assert the drill's verdicts, not its timings (those are figures, printed).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::process::Command;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-site.toml")
}

/// Runs `tandem drill FILE --json ARGS…` and returns its report.
async fn drill(file: &Path, run_dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(TANDEM)
        .arg("drill")
        .arg(file)
        .arg("--json")
        .args(["--settle-ms", "1500", "--run-dir"])
        .arg(run_dir)
        .args(args)
        .output()
        .await
        .expect("run tandem drill");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tandem drill failed:\n{stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not a JSON report ({e}):\n{stdout}\n{stderr}"))
}

fn number(report: &Value, path: &[&str]) -> u64 {
    let mut v = report;
    for key in path {
        v = &v[*key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {report:#}"))
}

/// What every drill must show, whatever the replica kinds: nothing acknowledged twice or out of
/// nowhere, every read at the surviving site answered, notifications gapless, one writer at a
/// time, and the failback done.
fn assert_sound(report: &Value) {
    let context = format!("{report:#}");
    assert!(
        number(report, &["writes", "acknowledged"]) > 0,
        "the load wrote nothing: {context}"
    );
    assert_eq!(number(report, &["writes", "duplicated"]), 0, "{context}");
    assert_eq!(number(report, &["writes", "phantom"]), 0, "{context}");
    let (tried, answered) = (
        number(report, &["reads", "tried"]),
        number(report, &["reads", "answered"]),
    );
    assert!(
        tried > 0 && answered == tried,
        "reads at site 2: {answered}/{tried}: {context}"
    );
    assert!(number(report, &["notifications", "received"]) > 0, "{context}");
    assert_eq!(number(report, &["notifications", "gaps"]), 0, "{context}");
    assert_eq!(number(report, &["notifications", "out_of_order"]), 0, "{context}");
    assert_eq!(report["two_writers"], false, "{context}");
    assert_eq!(report["failback_done"], true, "{context}");
    assert!(
        report["limited_mode_ms"].is_u64(),
        "site 2's proxies entered limited mode: {context}"
    );
    assert!(report["normal_mode_ms"].is_u64(), "and came back to normal: {context}");
    assert!(
        number(report, &["writes", "refused_limited"]) > 0,
        "writes at site 2 were refused with limited-mode during the outage: {context}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_sync_replica_at_site2_no_acknowledged_write_is_lost() {
    if !tandem_netlab::require_root("drill_netns::with_a_sync_replica_at_site2_no_acknowledged_write_is_lost") {
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let report = drill(&example(), &temp.path().join("run"), &[]).await;
    assert_sound(&report);
    assert_eq!(
        number(&report, &["writes", "lost"]),
        0,
        "RPO 0 with a sync replica: {report:#}"
    );
    assert!(
        report["possibly_lost"].is_null(),
        "no forced recovery was needed: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forced_activation_onto_an_async_replica_loses_no_more_than_it_printed() {
    if !tandem_netlab::require_root(
        "drill_netns::a_forced_activation_onto_an_async_replica_loses_no_more_than_it_printed",
    ) {
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    // Site 2's replica is async: with site 1 gone, the witness alone is no quorum, so site 2 can
    // only be activated by a forced recovery (a new epoch), which says what it may have lost.
    let text = std::fs::read_to_string(example()).expect("read the example");
    let async_site2 = text.replacen(
        "name = \"s2-db\"\nsite = \"site2\"\nroles = [\"db\"]\ndb_kind = \"sync\"",
        "name = \"s2-db\"\nsite = \"site2\"\nroles = [\"db\"]\ndb_kind = \"async\"",
        1,
    );
    assert_ne!(async_site2, text, "the example's s2-db block changed: update this test");
    let file = temp.path().join("async-site2.toml");
    std::fs::write(&file, async_site2).expect("write the topology");

    let report = drill(&file, &temp.path().join("run"), &["--force"]).await;
    assert_sound(&report);
    let printed = number(&report, &["possibly_lost"]);
    assert!(
        report["loss_bounded"].is_boolean(),
        "the recovery said whether its figure is a bound: {report:#}"
    );
    let lost = number(&report, &["writes", "lost"]);
    assert!(
        lost <= printed,
        "lost {lost} acknowledged writes, but --force said at most {printed}: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auto_activate_site2_activates_by_itself() {
    if !tandem_netlab::require_root("drill_netns::with_auto_activate_site2_activates_by_itself") {
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(example()).expect("read the example");
    let auto = text
        .replacen("auto_activate = false", "auto_activate = true", 1)
        .replacen("auto_activate_after_ms = 10000", "auto_activate_after_ms = 2000", 1);
    assert_ne!(auto, text, "the example's [disaster] section changed: update this test");
    let file = temp.path().join("auto.toml");
    std::fs::write(&file, auto).expect("write the topology");

    let report = drill(&file, &temp.path().join("run"), &[]).await;
    assert_sound(&report);
    assert_eq!(number(&report, &["writes", "lost"]), 0, "{report:#}");
    let timeline: Vec<&str> = report["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["what"].as_str())
        .collect();
    assert!(
        timeline
            .iter()
            .any(|what| what.starts_with("automatic activation of site2")),
        "site 2 activated by itself: {timeline:#?}"
    );
    assert!(
        !timeline.iter().any(|what| what.starts_with("operator:")),
        "no operator command: {timeline:#?}"
    );
}
