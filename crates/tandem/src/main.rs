//! `tandem`: one binary, one sub-command per role.
//!
//! - `tandem db …`: a replica of the configuration database and the operator commands against
//!   the replica set ([`db`]).
//! - `tandem demo`: a three-replica database on loopback, written to and read back ([`demo`]).
//! - `tandem confserv --mode master|proxy`: a master Configuration Server or a proxy ([`confserv`]).
//! - `tandem cfg …`: the configuration server's client commands ([`cfg`]).
//! - `tandem up FILE`: a whole topology on this machine ([`up`]).
//! - `tandem dr …`: disaster-recovery commands on a running topology ([`dr`]).
//! - `tandem drill FILE`: the disaster end to end in network namespaces ([`drill`]).
//!
//! Architecture invariant: this crate is thin. It parses arguments, sets up logging, calls the
//! libraries and reports their typed errors with context (anyhow); behaviour lives in the
//! libraries.

mod cfg;
mod confserv;
mod db;
mod demo;
mod dr;
mod drill;
mod up;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "A configuration and control framework that survives the loss of a site"
)]
struct Cli {
    /// Threads running the async work (protocol, RPC, timers) [default: half the cores, at
    /// least 1]. A replica's storage work (log writes, applies, reads, checkpoints) runs on threads
    /// of its own besides these.
    #[arg(long, global = true, env = "TANDEM_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

/// The default number of async worker threads: half the cores, at least one.
///
/// tokio's own default is one per core. A replica's requests hop between a handful of tasks
/// (RPC, proposer, Raft core, replication, gate) and its storage threads; with an idle worker
/// for every core, each hop tends to wake another worker that finds nothing to do. Measured on a
/// two-core machine with a three-replica set (see `bench/HISTORY.md`): one worker
/// instead of two gave +12–24 % puts at concurrency 1 and 15 % less CPU per put on every replica.
/// The other half of the cores is left to the storage threads, which do the heavy work.
fn default_worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The configuration database: run a replica, or operate the replica set.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Start a three-replica database on loopback, write to it, read back, show who is primary.
    Demo(demo::DemoArgs),
    /// Run a configuration server (`--mode master`: one of the primary/backup pair; `--mode proxy`:
    /// one of a site's proxy pair).
    Confserv(confserv::ConfservArgs),
    /// The configuration: log in, read, write, watch, export/import, audit, mode, status.
    #[command(subcommand)]
    Cfg(cfg::CfgCommand),
    /// Start a whole topology (sites, hosts, roles) from a topology file on this machine.
    Up(up::UpArgs),
    /// Disaster recovery on a running topology: status, activate, deactivate, failback.
    Dr(dr::DrArgs),
    /// Run the disaster of a topology end to end in network namespaces (needs root): destroy
    /// the live site, activate the other, fail back; print the timeline and the figures.
    Drill(drill::DrillArgs),
}

/// Logs go to stderr, coloured only when it is a terminal (and `NO_COLOR` is not set): a log
/// file, a pipe or the journal gets plain text.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

impl Command {
    /// Whether this command prints a report and ends (rather than serving): such a command,
    /// like any Unix tool, ends quietly when its reader goes away (`tandem dr status | head`).
    fn is_report(&self) -> bool {
        match self {
            Command::Db(command) => !matches!(command, db::DbCommand::Serve(_)),
            Command::Cfg(_) | Command::Dr(_) => true,
            Command::Demo(_) | Command::Confserv(_) | Command::Up(_) | Command::Drill(_) => false,
        }
    }
}

/// Restores the default action of SIGPIPE (end the process), which Rust's runtime sets to
/// "ignore" so that a write to a closed pipe fails instead; `println!` then panics. Servers keep
/// the runtime's choice: a peer that closes a socket must not end them.
fn end_quietly_on_closed_stdout() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called before any other thread exists, and SigDfl installs no handler code.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("warning: cannot restore the default SIGPIPE action: {e}");
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.command.is_report() {
        end_quietly_on_closed_stdout();
    }
    init_logging();
    let workers = cli.worker_threads.map_or_else(default_worker_threads, usize::from);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Db(command) => db::run(command).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Confserv(args) => confserv::run(args).await,
            Command::Cfg(command) => cfg::run(command).await,
            Command::Up(args) => up::run(args).await,
            Command::Dr(args) => dr::run(args).await,
            Command::Drill(args) => drill::run(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each said once. Many errors, Tandem's and its
/// libraries', already end their own message with their cause's; printing the chain as it is
/// (`{:#}`) would repeat each such cause after it. A cause whose text the line already holds is
/// left out.
fn report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks every sub-command's definition (unique names, valid defaults) only when that
    /// sub-command is parsed; this checks them all at once.
    #[test]
    fn command_line_definition_is_valid() {
        super::Cli::command().debug_assert();
    }

    /// `--help` explains every argument of every command.
    #[test]
    fn every_argument_has_a_help_text() {
        fn undocumented(command: &clap::Command, path: &str, found: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    found.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                undocumented(sub, &format!("{path} {}", sub.get_name()), found);
            }
        }
        let mut command = super::Cli::command();
        command.build();
        let mut found = Vec::new();
        undocumented(&command, "tandem", &mut found);
        assert!(found.is_empty(), "arguments without a help text: {found:#?}");
    }

    #[test]
    fn an_error_report_names_each_cause_once() {
        use std::io;
        // A library error whose message already ends with its cause's, under a context.
        let read = tandem_topology::TopologyError::Read {
            path: "/etc/site.toml".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "No such file or directory"),
        };
        let error = anyhow::Error::new(read).context("cannot start the topology");
        assert_eq!(
            super::report(&error),
            "cannot start the topology: cannot read /etc/site.toml: No such file or directory"
        );
        // Causes that do not repeat each other are all kept, outermost first.
        let error = anyhow::Error::new(io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"))
            .context("cannot open the log")
            .context("replica 1");
        assert_eq!(
            super::report(&error),
            "replica 1: cannot open the log: permission denied"
        );
    }

    #[test]
    fn worker_threads_are_taken_before_or_after_the_command_and_zero_is_refused() {
        use clap::Parser;
        let parse = |args: &[&str]| super::Cli::try_parse_from(args).map(|cli| cli.worker_threads);
        assert_eq!(parse(&["tandem", "demo"]).ok(), Some(None));
        assert_eq!(parse(&["tandem", "--worker-threads", "3", "demo"]).ok(), Some(Some(3)));
        assert_eq!(parse(&["tandem", "demo", "--worker-threads", "2"]).ok(), Some(Some(2)));
        assert!(parse(&["tandem", "--worker-threads", "0", "demo"]).is_err());
        assert!(super::default_worker_threads() >= 1);
    }
}
