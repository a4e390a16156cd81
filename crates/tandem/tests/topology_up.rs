//! `tandem up examples/two-site.toml` on loopback, operated with `tandem dr`: the seed's layout
//! starts with site 1 active and site 2 dormant, `dr status --json` shows the expected roles,
//! `dr activate site2` moves the database primary and the masters, the proxies of both sites
//! follow by themselves, and stopping `tandem up` removes everything it started.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tandem_testkit::wait::must_eventually;
use tokio::process::{Child, Command};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-site.toml")
}

/// `tandem dr --run-dir RUN ARGS… --json`, parsed; panics with its output on failure.
async fn dr_json(run_dir: &Path, args: &[&str]) -> Value {
    let output = Command::new(TANDEM)
        .arg("dr")
        .arg("--run-dir")
        .arg(run_dir)
        .args(args)
        .arg("--json")
        .output()
        .await
        .expect("run tandem dr");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tandem dr {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tandem dr {args:?}: not JSON ({e}): {stdout}"))
}

/// `tandem dr status` whose reader has gone (as in `tandem dr status | head -0`) ends as a Unix
/// tool does, by SIGPIPE, without a panic message.
async fn dr_status_into_a_closed_pipe_ends_quietly(run_dir: &Path) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(TANDEM)
        .args(["dr", "status", "--run-dir"])
        .arg(run_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem dr status");
    drop(child.stdout.take());
    let output = child.wait_with_output().await.expect("wait for tandem dr status");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(nix::libc::SIGPIPE),
        "{:?}: {stderr}",
        output.status
    );
}

/// The `field` of each entry of `list` in `status`, by component name.
fn by_name(status: &Value, list: &str, field: &str) -> Vec<(String, String)> {
    status[list]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap_or_default().to_owned(),
                        e[field].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every component process whose command line names `run_dir`.
fn processes_of(run_dir: &Path) -> Vec<u32> {
    let needle = run_dir.as_os_str().as_encoded_bytes().to_vec();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.windows(needle.len()).any(|w| w == needle.as_slice()))
        })
        .filter(|pid| *pid != std::process::id())
        .collect()
}

/// A running `tandem up`. Dropping it (a failed assertion, say) kills `tandem up` and every
/// component still naming its run directory: the components are `tandem up`'s children, which a
/// kill of `tandem up` alone would leave running.
struct Up {
    child: Child,
    output: PathBuf,
    run_dir: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        for pid in processes_of(&self.run_dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Up {
    async fn start(file: &Path, run_dir: &Path, output: PathBuf) -> Up {
        let log = std::fs::File::create(&output).expect("create the output file");
        let child = Command::new(TANDEM)
            .arg("up")
            .arg(file)
            .arg("--run-dir")
            .arg(run_dir)
            .stdout(log.try_clone().expect("clone the output file"))
            .stderr(log)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tandem up");
        Up {
            child,
            output,
            run_dir: run_dir.to_owned(),
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_two_site_example_starts_and_site2_is_activated() {
    let temp = tempfile::tempdir().expect("temp dir");
    let run_dir = temp.path().join("run");
    let mut up = Up::start(&example(), &run_dir, temp.path().join("up.out")).await;

    let ready = run_dir.join("ready");
    must_eventually("tandem up to be ready", Duration::from_secs(120), || {
        let exited = up.child.try_wait().ok().flatten();
        let output = up.output();
        let ready = ready.exists();
        async move {
            match (ready, exited) {
                (true, _) => Ok(()),
                (false, Some(status)) => Err(format!("tandem up exited ({status}):\n{output}")),
                (false, None) => Err("not ready yet".to_owned()),
            }
        }
    })
    .await;
    if up.child.try_wait().ok().flatten().is_some() {
        panic!("tandem up exited:\n{}", up.output());
    }

    // Site 1 active, site 2 dormant; every proxy attached to the live master.
    let status = must_eventually("every proxy in normal mode", Duration::from_secs(30), || {
        let run_dir = run_dir.clone();
        async move {
            let status = dr_json(&run_dir, &["status"]).await;
            let modes = by_name(&status, "proxies", "mode");
            if modes.len() == 4 && modes.iter().all(|(_, mode)| mode == "normal") {
                Ok(status)
            } else {
                Err(format!("proxy modes: {modes:?}"))
            }
        }
    })
    .await;
    assert_eq!(status["active_site"], "site1", "{status:#}");
    assert_eq!(status["db_primary"], "s1-db/db", "{status:#}");
    dr_status_into_a_closed_pipe_ends_quietly(&run_dir).await;
    let roles = by_name(&status, "replicas", "role");
    assert_eq!(
        roles,
        vec![
            ("s1-db/db".into(), "primary".into()),
            ("s2-db/db".into(), "secondary".into()),
            ("witness/db".into(), "secondary".into())
        ]
    );
    let mut masters = by_name(&status, "masters", "role");
    masters.sort();
    let site1: Vec<&str> = masters[..2].iter().map(|(_, role)| role.as_str()).collect();
    assert!(
        site1 == ["backup", "primary"] || site1 == ["primary", "backup"],
        "site 1's pair: one primary, one backup: {masters:?}"
    );
    assert_eq!(
        masters[2..],
        [
            ("s2-cs1/master".into(), "stopped".into()),
            ("s2-cs2/master".into(), "stopped".into())
        ]
    );

    // Sites that cannot be activated or deactivated are refused, and say why.
    for (args, says) in [
        (["activate", "site3"], "site `site3` has no master pair"),
        (["deactivate", "site3"], "site `site3` has no master pair"),
        (
            ["activate", "site9"],
            "no site `site9` in topology two-site (sites: site1, site2, site3)",
        ),
    ] {
        let stderr = tandem_refuses([
            OsStr::new("dr"),
            "--run-dir".as_ref(),
            run_dir.as_os_str(),
            args[0].as_ref(),
            args[1].as_ref(),
        ])
        .await;
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    // Activate site 2: the primary and the masters move; the proxies follow by themselves.
    let report = dr_json(&run_dir, &["activate", "site2"]).await;
    assert_eq!(report["ok"], true, "{report:#}");
    let site2_masters: Vec<String> = status["masters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["site"] == "site2")
        .filter_map(|m| m["addr"].as_str().map(str::to_owned))
        .collect();
    let status = must_eventually(
        "every proxy attached to a site-2 master",
        Duration::from_secs(30),
        || {
            let run_dir = run_dir.clone();
            let site2_masters = site2_masters.clone();
            async move {
                let status = dr_json(&run_dir, &["status"]).await;
                let attached = by_name(&status, "proxies", "master");
                let modes = by_name(&status, "proxies", "mode");
                let all = attached.len() == 4
                    && attached.iter().all(|(_, m)| site2_masters.contains(m))
                    && modes.iter().all(|(_, mode)| mode == "normal");
                if all {
                    Ok(status)
                } else {
                    Err(format!("proxies: {attached:?} {modes:?}"))
                }
            }
        },
    )
    .await;
    assert_eq!(status["active_site"], "site2", "{status:#}");
    assert_eq!(status["db_primary"], "s2-db/db", "{status:#}");
    let masters = by_name(&status, "masters", "role");
    for (name, role) in &masters {
        if name.starts_with("s1-") {
            assert_eq!(role, "stopped", "site 1's masters are dormant now: {masters:?}");
        }
    }

    // The deploy scripts: stop site 2's pair (its proxies lose their master), start it again.
    let script = |name: &str, args: &[&str]| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(name);
        std::process::Command::new(path)
            .args(args)
            .env("TANDEM", TANDEM)
            .env("TANDEM_RUN_DIR", &run_dir)
            .output()
            .expect("run a deploy script")
    };
    let stopped = script("stop-master-pair.sh", &["site2"]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let status = dr_json(&run_dir, &["status"]).await;
    assert!(status["active_site"].is_null(), "no master holds the lease: {status:#}");
    must_eventually("site 2's proxies in limited mode", Duration::from_secs(30), || {
        let run_dir = run_dir.clone();
        async move {
            let status = dr_json(&run_dir, &["status"]).await;
            let modes = by_name(&status, "proxies", "mode");
            let site2: Vec<_> = modes.iter().filter(|(name, _)| name.starts_with("s2-")).collect();
            if site2.len() == 2 && site2.iter().all(|(_, mode)| mode == "limited") {
                Ok(())
            } else {
                Err(format!("proxy modes: {modes:?}"))
            }
        }
    })
    .await;
    let started = script("start-master-pair.sh", &["site2"]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let shown = script("status.sh", &["--json"]);
    let status: Value = serde_json::from_slice(&shown.stdout).expect("status.sh --json prints JSON");
    assert_eq!(status["active_site"], "site2", "{status:#}");

    // Stopping `tandem up` stops everything and removes the run directory.
    let pid = up.child.id().expect("tandem up runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("signal tandem up");
    let exit = tokio::time::timeout(Duration::from_secs(60), up.child.wait())
        .await
        .expect("tandem up stops within a minute")
        .expect("wait for tandem up");
    assert!(exit.success(), "tandem up exit: {exit}\n{}", up.output());
    assert!(!run_dir.exists(), "the run directory is removed");
    assert_eq!(
        processes_of(&run_dir),
        Vec::<u32>::new(),
        "no component process is left"
    );
}

#[tokio::test]
async fn a_bad_topology_file_is_reported_at_its_line_and_nothing_starts() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = temp.path().join("bad.toml");
    let text = std::fs::read_to_string(example()).expect("read the example").replacen(
        "roles = [\"master\", \"proxy\"]",
        "roles = [\"master\", \"proxi\"]",
        1,
    );
    std::fs::write(&file, &text).expect("write the bad file");
    let line = text[..text.find("proxi\"").expect("edited")].matches('\n').count() + 1;
    let run_dir = temp.path().join("run");
    let stderr = tandem_refuses([
        OsStr::new("up"),
        file.as_os_str(),
        "--run-dir".as_ref(),
        run_dir.as_os_str(),
    ])
    .await;
    assert!(
        stderr.contains(&format!("bad.toml:{line}:")) && stderr.contains("unknown role `proxi`"),
        "{stderr}"
    );
    assert!(!run_dir.exists(), "nothing was created");

    let stderr = tandem_refuses([
        OsStr::new("dr"),
        "status".as_ref(),
        "--run-dir".as_ref(),
        run_dir.as_os_str(),
    ])
    .await;
    assert!(stderr.contains("no topology runs from"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is said once: {stderr}"
    );

    let missing = temp.path().join("missing.toml");
    let stderr = tandem_refuses([
        OsStr::new("up"),
        missing.as_os_str(),
        "--run-dir".as_ref(),
        run_dir.as_os_str(),
    ])
    .await;
    assert!(
        stderr.contains(&format!("cannot read {}", missing.display())),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is said once: {stderr}"
    );
    assert!(!run_dir.exists(), "nothing was created");
}

/// Runs `tandem ARGS`, which must fail; its standard error.
async fn tandem_refuses<const N: usize>(args: [&OsStr; N]) -> String {
    let output = Command::new(TANDEM).args(args).output().await.expect("run tandem");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "tandem {args:?} was refused: {stderr}");
    stderr
}
