//! Whether this process can build labs, and getting `nft` when it is missing.
//!
//! A lab needs root (to create namespaces, links and rules), a working `ip netns`, and `nft`.
//! Tests call [`require_root`] first: without root they are skipped loudly — except under
//! `CI=true`, where a skipped network test would hide a broken CI, so it is a failure. As root
//! without `nft`, [`require_root`] installs it with `apt-get` once per process, under a file
//! lock so that parallel test binaries do not run `apt-get` at the same time.

use std::fs::OpenOptions;
use std::io::Write;
use std::process::Command;
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::geteuid;

use crate::names::{remove_namespace, LabId};
use crate::sys::{self, nft_program};
use crate::LabError;

/// File whose lock serialises installing nftables across processes.
const APT_LOCK_FILE: &str = "tandem-netlab-apt.lock";

/// Why labs cannot be built here (not an error of the lab: of the environment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// Namespaces and rules need root.
    NotRoot { euid: u32 },
    /// `ip` is missing, or `ip netns add` fails (a sandbox without the privilege, say).
    NoNetns { why: String },
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NotRoot { euid } => write!(f, "not running as root (effective uid {euid})"),
            Unavailable::NoNetns { why } => write!(f, "`ip netns` is not usable: {why}"),
        }
    }
}

/// Checks (once per process) that this process can create network namespaces: root, `ip`,
/// and a probe namespace really created and deleted.
pub fn check_privileges() -> Result<(), Unavailable> {
    static CHECKED: OnceLock<Result<(), Unavailable>> = OnceLock::new();
    CHECKED.get_or_init(probe).clone()
}

fn probe() -> Result<(), Unavailable> {
    let euid = geteuid().as_raw();
    if euid != 0 {
        return Err(Unavailable::NotRoot { euid });
    }
    let id = LabId::reserve();
    let netns = format!("{}probe", id.prefix());
    let result = sys::ip(["netns", "add", netns.as_str()])
        .map(|_| ())
        .map_err(|e| Unavailable::NoNetns { why: e.to_string() });
    remove_namespace(&netns);
    id.release();
    result
}

/// Makes sure `nft` is present, installing Debian's `nftables` package with `apt-get` when it
/// is not (once per process; parallel processes wait for each other on a file lock).
pub fn ensure_nft_installed() -> Result<(), LabError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| install_nft().map_err(|e| e.to_string()))
        .clone()
        .map_err(LabError::NftInstall)
}

fn install_nft() -> Result<(), LabError> {
    if nft_program().is_ok() {
        return Ok(());
    }
    let lock_path = std::env::temp_dir().join(APT_LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| LabError::Io {
            action: format!("open {}", lock_path.display()),
            source,
        })?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| LabError::Sys {
        action: format!("lock {}", lock_path.display()),
        source,
    })?;
    // Another process may have installed it while this one waited for the lock.
    if nft_program().is_ok() {
        return Ok(());
    }
    let apt = sys::find_program("apt-get").ok_or(LabError::ToolMissing {
        tool: "apt-get",
        package: "apt (or install nftables by hand)",
    })?;
    loud("netlab: `nft` is missing; installing Debian's nftables package with apt-get");
    let install = || {
        let mut command = Command::new(&apt);
        command
            .args(["install", "-y", "-q", "nftables"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        sys::run(&mut command, None)
    };
    if let Err(first) = install() {
        // The package lists may be missing or stale: refresh them once and try again.
        tracing::info!(error = %first, "apt-get install failed; updating the package lists");
        let mut update = Command::new(&apt);
        update.args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive");
        sys::run(&mut update, None)?;
        install()?;
    }
    nft_program().map(|_| ())
}

/// Writes a line straight to standard error — not through `eprintln!`, which the test harness
/// captures and shows only for failing tests: a skipped test must be seen.
fn loud(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Whether this run is a CI run (`CI=true`), where a skipped network test is a failure.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The gate of every network-namespace test: returns `true` when the test can run.
///
/// Without the privileges it prints a loud notice that `test` is skipped and why, and returns
/// `false` — or panics under `CI=true`. As root it installs `nft` when missing, and panics with
/// the reason when that fails.
pub fn require_root(test: &str) -> bool {
    match check_privileges() {
        Ok(()) => {}
        Err(why) => {
            let text = format!("network-namespace test `{test}` SKIPPED: {why}. Run the tests as root to include it.");
            if is_ci() {
                panic!("{text} (CI=true: a skipped network test is a failure)");
            }
            let bar = "!".repeat(100);
            loud(&format!("\n{bar}\n!!! {text}\n{bar}\n"));
            return false;
        }
    }
    if let Err(e) = ensure_nft_installed() {
        panic!("network-namespace test `{test}` cannot run: {e}");
    }
    true
}
