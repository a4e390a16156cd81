//! A Tandem topology at run time, on this machine: `tandem up` starts it, `tandem dr` tells what
//! it is doing and moves the active site — the seed's "scripts to start and stop the master
//! Configuration Server pair", made into commands that say plainly what happens.
//!
//! Layout:
//! - [`plan`]: where each component (one role on one host) runs: address, directory,
//!   namespace. Written to `plan.json` in the run directory.
//! - [`launch`]: starting, stopping, killing and pausing components as processes; pid files
//!   are the record of what runs.
//! - [`status`]: every component's own answer, put together (`tandem dr status`).
//! - [`operate`]: activate, deactivate and fail back a site; automatic activation.
//! - [`up`]: `tandem up`: the whole topology started, watched, and removed at the end.
//! - [`netns`]: a topology in network namespaces (`--netns`), reached from the lab's router.
//! - [`drill`]: `tandem drill`: the disaster end to end, with its timeline, figures and the
//!   check of a client load's history.
//!
//! Architecture invariants:
//! - Nothing here decides who may write: the database's epochs and the master lease do. These
//!   commands only move the database primary (switchover, or forced recovery when asked with
//!   `--force`) and start or stop master pairs; a mistake in them can cost availability, never
//!   an acknowledged write or a second writer.
//! - A master of another site is stopped only when it answers: an operator's command never
//!   reaches past a network that has failed.
//!
//! May depend on: `tandem-topology`, `tandem-client`, `tandem-confserv` (its client),
//! `tandem-proto`, `tandem-tls`, `tandem-netlab`, `tandem-config` (the drill's objects).

pub mod drill;
pub mod launch;
pub mod netns;
pub mod operate;
pub mod plan;
pub mod status;
pub mod up;

use std::path::{Path, PathBuf};

pub use launch::Launcher;
pub use plan::{Component, Plan};
pub use status::Status;

#[derive(Debug, thiserror::Error)]
pub enum DrError {
    #[error("no topology runs from {run_dir} (start one with `tandem up FILE --run-dir {run_dir}`): {source}", run_dir = run_dir.display())]
    NotRunning {
        run_dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Plan(String),
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {0}: {1}")]
    Start(String, String),
    #[error("cannot signal process {0}: {1}")]
    Signal(i32, String),
    #[error("database: {0}")]
    Db(String),
    #[error("configuration server: {0}")]
    Conf(String),
    /// A command that cannot be carried out as asked (unknown site, no quorum without --force…).
    #[error("{0}")]
    Refused(String),
    /// Something expected did not happen in time.
    #[error("{0}")]
    Timeout(String),
    /// The network lab (`--netns`, drills).
    #[error("network lab: {0}")]
    Lab(String),
}

impl DrError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> DrError {
        DrError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Writes `contents` to `path` through a temporary file and a rename: readers see the old file
/// or the new one, never half of it.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), DrError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| DrError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DrError::io(path, e))
}
