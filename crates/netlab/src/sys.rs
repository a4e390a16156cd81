//! The lab's contact with the operating system: finding and running `ip` and `nft`, and running
//! code on a thread that has entered a network namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};

use crate::LabError;

/// Where `ip netns` keeps the namespaces it names (one file per namespace).
pub const NETNS_DIR: &str = "/run/netns";
/// Directories searched for system tools besides `PATH` (root's tools live there, and a test
/// runner's `PATH` may lack them).
const SBIN_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The path of a program: the first match in `PATH`, then in the system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The `ip` program (iproute2).
pub fn ip_program() -> Result<PathBuf, LabError> {
    find_program("ip").ok_or(LabError::ToolMissing {
        tool: "ip",
        package: "iproute2",
    })
}

/// The `nft` program (nftables).
pub fn nft_program() -> Result<PathBuf, LabError> {
    find_program("nft").ok_or(LabError::ToolMissing {
        tool: "nft",
        package: "nftables",
    })
}

/// Runs a command to completion, feeding it `stdin`; a non-zero exit is an error carrying the
/// command line and what it printed.
pub fn run(command: &mut Command, stdin: Option<&str>) -> Result<String, LabError> {
    let line = describe(command);
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| LabError::Io {
        action: format!("run `{line}`"),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|source| LabError::Io {
            action: format!("write the input of `{line}`"),
            source,
        })?;
    }
    let output = child.wait_with_output().map_err(|source| LabError::Io {
        action: format!("wait for `{line}`"),
        source,
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `ip ARGS…`.
pub fn ip<I, S>(args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(ip_program()?);
    command.args(args);
    run(&mut command, None)
}

/// Runs `ip -n NETNS ARGS…` (an `ip` command acting on a namespace).
pub fn ip_in<I, S>(netns: &str, args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(ip_program()?);
    command.arg("-n").arg(netns).args(args);
    run(&mut command, None)
}

/// Runs the nft `script` inside namespace `netns` in one transaction.
pub fn nft_in(netns: &str, script: &str) -> Result<(), LabError> {
    let mut command = Command::new(ip_program()?);
    command
        .args(["netns", "exec", netns])
        .arg(nft_program()?)
        .args(["-f", "-"]);
    run(&mut command, Some(script)).map(|_| ())
}

/// A command line as text, for errors and logs.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The file that names namespace `netns`.
pub fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

/// Moves the calling thread into network namespace `netns`. Only this thread moves; sockets it
/// creates belong to that namespace for their whole life, wherever they are used later.
pub fn enter_netns(netns: &str) -> Result<(), LabError> {
    let path = netns_path(netns);
    let file = File::open(&path).map_err(|source| LabError::Io {
        action: format!("open namespace {}", path.display()),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Sys {
        action: format!("enter network namespace {netns}"),
        source,
    })
}

/// Runs `f` on a fresh thread inside network namespace `netns` and returns its result. The
/// calling thread stays where it is.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T, LabError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name(format!("netns-{netns}"))
            .spawn_scoped(scope, || {
                enter_netns(netns)?;
                Ok(f())
            })
            .map_err(|source| LabError::Io {
                action: format!("start a thread for namespace {netns}"),
                source,
            })?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
