//! The `tandem cfg` command line without a server: every sub-command answers `--help` with its
//! usage, and `tandem cfg --help` lists exactly the sub-commands tested here.

use std::process::Command;

/// The `tandem` binary cargo built for these tests.
const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Every `tandem cfg` sub-command.
const SUBCOMMANDS: [&str; 12] = [
    "login", "get", "query", "create", "update", "delete", "watch", "export", "import", "audit", "mode", "status",
];

/// Runs `tandem ARGS` with no server address in the environment; returns whether it succeeded,
/// its output and its errors.
fn tandem(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(TANDEM)
        .args(args)
        .env_remove("TANDEM_CFG_SERVERS")
        .output()
        .expect("run tandem");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_cfg_subcommand_prints_its_usage() {
    for sub in SUBCOMMANDS {
        let (ok, out, err) = tandem(&["cfg", sub, "--help"]);
        assert!(ok, "tandem cfg {sub} --help failed:\n{out}\n{err}");
        assert!(
            out.contains(&format!("Usage: tandem cfg {sub}")),
            "tandem cfg {sub} --help does not show its usage:\n{out}"
        );
        assert!(out.contains("--servers"), "tandem cfg {sub} --help:\n{out}");
    }
}

#[test]
fn cfg_help_lists_exactly_the_subcommands_tested() {
    let (ok, out, err) = tandem(&["cfg", "--help"]);
    assert!(ok, "tandem cfg --help failed:\n{out}\n{err}");
    let listed: Vec<&str> = out
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert_eq!(listed, SUBCOMMANDS, "{out}");
}
