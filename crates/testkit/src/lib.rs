//! Tandem's multi-process test harness: real `tandem db serve` replicas, one operating-system
//! process each, driven the way an operator and a crash would drive them.
//!
//! Layout:
//! - [`process`]: [`ReplicaProcess`], one replica process with its own temporary directory —
//!   start on a free port, `kill -9`, SIGTERM, SIGSTOP/SIGCONT, restart on the same port — and
//!   its captured log, printed when a test fails.
//! - [`cluster`]: [`Cluster`], a replica set of such processes (sync, async and witness
//!   replicas), formed through the client library, with waits that poll status against a
//!   deadline and `must_*` helpers that panic with context.
//! - [`history`]: [`History`], the record of every client write (invoke → ok | fail | unknown)
//!   and the check that the final state holds exactly what the answers promised.
//! - [`workload`]: [`Writers`], concurrent clients writing unique keys into a [`History`].
//! - [`wait`]: [`eventually`], the one polling loop every wait goes through.
//!
//! Architecture invariants:
//! - No fixed sleeps stand in for an event: every wait polls an observable condition (a file, a
//!   process state, a status answer) against a deadline, and a timeout says what was last seen.
//! - No replica process outlives its test: processes are killed when dropped, and the kernel
//!   kills them if the test process dies first (`PR_SET_PDEATHSIG`).
//! - The harness talks to replicas only through the public surfaces: the command line, the
//!   client library and signals. It links no replica code.

pub mod cluster;
pub mod history;
pub mod process;
pub mod wait;
pub mod workload;

use std::time::Duration;

pub use cluster::{Cluster, ClusterOptions, Kind, TlsPaths};
pub use history::{CheckSummary, Counts, History, Op, OpId, Outcome, Violation, Violations};
pub use process::ReplicaProcess;
pub use tandem_client as client;
pub use wait::{eventually, must_eventually};
pub use workload::{Writers, WritersReport};

/// Why a harness action failed. Test code usually calls the `must_*` helpers, which panic with
/// this error's text.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("cannot {action}: {source}")]
    Io { action: String, source: std::io::Error },
    #[error("replica {id} exited before it was ready ({status}); its log ends with:\n{log}")]
    ExitedEarly { id: u64, status: String, log: String },
    #[error("replica {id} was not ready after {waited_ms} ms; its log ends with:\n{log}")]
    NotReady { id: u64, waited_ms: u64, log: String },
    #[error("cannot send {signal} to replica {id}: {source}")]
    Signal {
        id: u64,
        signal: &'static str,
        source: nix::Error,
    },
    #[error("replica {id} is {state}: cannot {action}")]
    WrongState {
        id: u64,
        state: &'static str,
        action: &'static str,
    },
    #[error("no replica {id} in this cluster")]
    NoSuchReplica { id: u64 },
    #[error("timed out after {waited_ms} ms waiting for {what}; last seen: {last}")]
    Timeout { what: String, waited_ms: u64, last: String },
    #[error("client: {0}")]
    Client(#[from] tandem_client::ClientError),
    #[error("`tandem {args}` failed ({status}):\nstdout: {stdout}\nstderr: {stderr}")]
    Cli {
        args: String,
        status: String,
        stdout: String,
        stderr: String,
    },
}

/// Deadline for replica-level events on a loaded two-core machine (an election, a failover,
/// catching up). Generous on purpose: a wait ends as soon as its condition holds.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs a `tracing` subscriber that writes to the test's captured output (once per test
/// binary; later calls do nothing). Filter with `RUST_LOG`, default `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
