//! Names of a lab's namespaces, and the removal of labs — one's own on drop, and leftovers of
//! processes that died without dropping theirs.
//!
//! Every namespace of a lab is named `tdm{pid}x{number}-…`: the creating process's id and a
//! number unique within that process. A namespace whose process is gone is a leftover, and any
//! lab's creation removes it. A name with this process's own id whose number is not one of this
//! process's live labs is a leftover too (an earlier process with the same id).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::sys::{self, NETNS_DIR};

/// Start of every lab namespace name.
pub const NAME_START: &str = "tdm";

/// Numbers already handed out in this process.
static NEXT_NUMBER: AtomicU64 = AtomicU64::new(0);
/// Numbers of this process's labs that exist (reserved before anything is created, released
/// after everything is removed).
static LIVE: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

fn live() -> MutexGuard<'static, BTreeSet<u64>> {
    // A panic while holding this lock leaves the set consistent (single inserts and removes).
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The identity of one lab: `tdm{pid}x{number}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabId {
    pub pid: u32,
    pub number: u64,
}

impl LabId {
    /// Reserves a fresh id in this process, skipping any number some namespace already uses.
    pub fn reserve() -> LabId {
        let pid = std::process::id();
        let existing = list_namespaces();
        loop {
            let id = LabId {
                pid,
                number: NEXT_NUMBER.fetch_add(1, Ordering::Relaxed),
            };
            let prefix = id.prefix();
            if existing.iter().any(|n| n.starts_with(&prefix)) {
                continue;
            }
            live().insert(id.number);
            return id;
        }
    }

    /// Marks the id as no longer in use.
    pub fn release(&self) {
        live().remove(&self.number);
    }

    /// `tdm{pid}x{number}-`: the start of every namespace name of the lab.
    pub fn prefix(&self) -> String {
        format!("{NAME_START}{}x{}-", self.pid, self.number)
    }

    /// Parses the id out of a namespace name.
    pub fn parse(netns: &str) -> Option<LabId> {
        let rest = netns.strip_prefix(NAME_START)?;
        let (id, _) = rest.split_once('-')?;
        let (pid, number) = id.split_once('x')?;
        Some(LabId {
            pid: pid.parse().ok()?,
            number: number.parse().ok()?,
        })
    }
}

/// Every named network namespace (empty when there are none).
pub fn list_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Whether a process with this id exists.
fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence only; EPERM means it exists but is not ours.
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Whether a lab namespace belongs to no live lab.
fn is_leftover(id: &LabId) -> bool {
    if id.pid == std::process::id() {
        return !live().contains(&id.number);
    }
    !process_alive(id.pid)
}

/// Removes the namespaces of labs whose process is gone. Returns how many were removed.
pub fn sweep_leftovers() -> usize {
    let leftovers: Vec<String> = list_namespaces()
        .into_iter()
        .filter(|n| LabId::parse(n).is_some_and(|id| is_leftover(&id)))
        .collect();
    for netns in &leftovers {
        tracing::info!(netns, "removing a network namespace left over by an earlier run");
        remove_namespace(netns);
    }
    leftovers.len()
}

/// Removes every namespace whose name starts with `prefix`.
pub fn remove_namespaces_with_prefix(prefix: &str) {
    for netns in list_namespaces().into_iter().filter(|n| n.starts_with(prefix)) {
        remove_namespace(&netns);
    }
}

/// Kills every process inside namespace `netns` and deletes the namespace. Anything already
/// gone is fine: this never fails.
pub fn remove_namespace(netns: &str) {
    let own = std::process::id();
    if let Ok(pids) = sys::ip(["netns", "pids", netns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            if u32::try_from(pid).is_ok_and(|p| p == own) {
                continue;
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    match sys::ip(["netns", "delete", netns]) {
        Ok(_) => {}
        Err(e) => {
            if sys::netns_path(netns).exists() {
                tracing::warn!(netns, error = %e, "cannot delete a network namespace");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_process_and_the_number() {
        let id = LabId { pid: 4242, number: 7 };
        assert_eq!(id.prefix(), "tdm4242x7-");
        assert_eq!(LabId::parse("tdm4242x7-site1-h1"), Some(id.clone()));
        assert_eq!(LabId::parse("tdm4242x7-r"), Some(id));
        assert_eq!(LabId::parse("tdm4242x-r"), None);
        assert_eq!(LabId::parse("other"), None);
        assert_eq!(LabId::parse("tdm4242x7"), None);
    }

    #[test]
    fn own_numbers_are_leftovers_only_when_not_live() {
        let id = LabId {
            pid: std::process::id(),
            number: u64::MAX,
        };
        assert!(is_leftover(&id));
        live().insert(id.number);
        assert!(!is_leftover(&id));
        id.release();
        assert!(is_leftover(&id));
    }
}
