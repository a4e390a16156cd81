//! Tandem's network lab: real hosts in network namespaces, grouped in sites, joined by a WAN
//! that a test can break — for disaster tests that run real processes on a real network, and
//! for `tandem up --netns`.
//!
//! Layout:
//! - [`lab`]: [`Lab`], [`Site`] and [`Host`] — creating the namespaces, links and routes, and
//!   the faults: partitions (both ways or one way), random loss, a host's cable pulled, WAN
//!   delay.
//! - [`rules`]: the router's nftables ruleset, rendered from the faults in force.
//! - [`relay`]: the user-space TCP relay that delays cross-site bytes.
//! - [`layout`]: the address plan (`10.77.SITE.0/24`) and interface names.
//! - [`names`]: namespace names (`tdm{pid}x{n}-…`), and removing labs and their leftovers.
//! - [`privileges`]: whether this process can build labs ([`require_root`] for tests), and
//!   installing `nft` when it is missing.
//! - `sys`: running `ip` and `nft`, and entering a namespace.
//!
//! Architecture invariants:
//! - Faults are modelled where a real network has them: packets are dropped on arrival at the
//!   router, never in a sender's own output path (which would fail its send at once).
//! - Traffic within a site is bridged and no WAN fault touches it; traffic between sites is
//!   routed through the router and every WAN fault applies to it, relayed or not.
//! - A lab removes everything it created when dropped, during a panic too, and never fails
//!   doing so; a new lab removes what dead processes left behind.
//! - Labs never collide: every namespace name carries the creating process's id and a number
//!   unique in that process. Nothing is created outside the lab's own namespaces.

pub mod lab;
pub mod layout;
pub mod names;
pub mod privileges;
pub mod relay;
pub mod rules;
mod sys;

pub use lab::{block_on_in, Host, Lab, Site};
pub use privileges::{check_privileges, ensure_nft_installed, is_ci, require_root, Unavailable};

/// Why a lab action failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{tool}` is not installed (Debian package {package})")]
    ToolMissing { tool: &'static str, package: &'static str },
    #[error("cannot install nftables: {0}")]
    NftInstall(String),
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot {action}: {source}")]
    Io { action: String, source: std::io::Error },
    #[error("cannot {action}: {source}")]
    Sys { action: String, source: nix::Error },
    #[error("invalid {kind} name {name:?}: use 1 to 32 letters, digits, '-' or '_'")]
    InvalidName { kind: &'static str, name: String },
    #[error("a {kind} named {name:?} already exists in this lab")]
    Exists { kind: &'static str, name: String },
    #[error("no site named {0:?} in this lab")]
    NoSuchSite(String),
    #[error("no host named {0:?} in this lab")]
    NoSuchHost(String),
    #[error("a lab has at most {max} {what}")]
    Limit { what: &'static str, max: usize },
    #[error("a WAN fault or delay needs two different sites")]
    SameSite,
    #[error("loss is a percentage from 0 to 100, not {0}")]
    InvalidLoss(u8),
    #[error("WAN relay: {0}")]
    Relay(String),
}
