//! `tandem db`: run one replica (`serve`) or operate the replica set (everything else).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use tandem_client::{Client, ClientOptions, EventKind, Member, StatusResponse};
use tandem_replica::{ReplicaConfig, SyncMode, Timers};
use tandem_store::{HistoryLimit, ReplicaKind};
use tandem_tls::TlsFiles;

#[derive(Subcommand)]
pub enum DbCommand {
    /// Run one replica of the configuration database until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Form a new replica set from pristine replicas.
    Init(InitArgs),
    /// Show every replica: role, kind, term, epoch, indexes and lag.
    Status(StatusArgs),
    /// Write one key.
    Put(PutArgs),
    /// Read one key (linearizable, or --stale from one replica).
    Get(GetArgs),
    /// Delete one key.
    Delete(KeyArgs),
    /// List keys under a prefix.
    Range(RangeArgs),
    /// Print changes under a prefix as they happen.
    Watch(WatchArgs),
    /// Add a replica to the set (it catches up as a learner first).
    AddReplica(MemberArgs),
    /// Remove a replica from the set.
    RemoveReplica(IdArgs),
    /// Change a replica's kind (sync, async or witness).
    SetKind(MemberKindArgs),
    /// Planned switchover: make another sync replica primary, losing nothing.
    Switchover(SwitchoverArgs),
    /// Build a snapshot on a replica now (and so compact its log).
    Snapshot(SnapshotArgs),
    /// Forced recovery when the quorum is lost: the replica becomes the only voter of a new
    /// epoch. May lose acknowledged writes; prints how many.
    Recover(RecoverArgs),
    /// Rejoin a fenced replica (of a superseded epoch) to the new epoch as a secondary; its
    /// divergent history is kept in a quarantine directory.
    Rejoin(RejoinArgs),
}

#[derive(Args)]
pub struct RecoverArgs {
    /// The surviving replica to recover on.
    #[arg(long, value_name = "HOST:PORT")]
    on: String,
    /// Confirm: acknowledged writes the survivor lacks are lost, and a new epoch starts.
    #[arg(long)]
    force: bool,
    /// Print the report as JSON: the new and previous epoch, what was applied before, the
    /// log tail applied, and the bound on acknowledged changes possibly lost.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsFiles,
}

#[derive(Args)]
pub struct RejoinArgs {
    /// The fenced replica to rejoin.
    #[arg(long, value_name = "HOST:PORT")]
    on: String,
    /// The new epoch's primary (default: the one the fence names).
    #[arg(long, value_name = "HOST:PORT")]
    primary: Option<String>,
    /// Rejoin as this kind (default: its kind before it was fenced).
    #[arg(long)]
    kind: Option<ReplicaKind>,
    /// Print the report as JSON: the epoch joined, its primary, the divergent entries dropped
    /// and where their copies are kept.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsFiles,
}

/// How to reach the replica set.
#[derive(Args, Clone)]
pub struct Endpoints {
    /// Every replica's HOST:PORT (both sites), comma-separated.
    #[arg(long, env = "TANDEM_ENDPOINTS", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 15_000)]
    deadline_ms: u64,
    #[command(flatten)]
    tls: TlsFiles,
}

impl Endpoints {
    fn client(&self) -> anyhow::Result<Client> {
        let options = ClientOptions {
            tls: self.tls.clone(),
            deadline: Duration::from_millis(self.deadline_ms),
            ..ClientOptions::default()
        };
        Client::new(self.endpoints.clone(), options).context("cannot set up the client")
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// This replica's id in the replica set (never reused for another machine).
    #[arg(long)]
    id: u64,
    /// Directory of the replica's log and state (created when missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// HOST:PORT to listen on; port 0 picks a free port.
    #[arg(long)]
    listen: String,
    /// HOST:PORT peers and clients use to reach this replica (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Name of the replica set; a data directory of another set is refused.
    #[arg(long, default_value = "tandem")]
    cluster: String,
    /// Act as a witness: vote, hold the log, never serve clients, campaign only when no primary
    /// has been seen for two election timeouts, and then hand the role to a data replica.
    #[arg(long)]
    witness: bool,
    /// strict: writes wait for every sync replica; available: demote one silent for --sync-timeout-ms.
    #[arg(long, default_value = "available")]
    sync_mode: SyncMode,
    /// With --sync-mode available: how long a sync replica that is behind may confirm nothing
    /// before it is demoted to async (writes stop waiting for it until it has caught up).
    #[arg(long, default_value_t = 5_000)]
    sync_timeout_ms: u64,
    /// How often the primary sends a heartbeat to each replica when it has nothing else to send.
    #[arg(long, default_value_t = Timers::default().heartbeat_ms)]
    heartbeat_ms: u64,
    /// A replica that hears nothing from the primary for a random time between
    /// --election-min-ms and --election-max-ms asks the voters whether it may campaign.
    #[arg(long, default_value_t = Timers::default().election_min_ms)]
    election_min_ms: u64,
    /// See --election-min-ms.
    #[arg(long, default_value_t = Timers::default().election_max_ms)]
    election_max_ms: u64,
    /// Revisions of the change feed kept for reconnecting watchers (up to 64 more, or a
    /// quarter more of a limit below 256, accumulate between cuts).
    #[arg(long, default_value_t = HistoryLimit::DEFAULT.revisions)]
    history_limit: u64,
    /// Changes of the change feed kept for reconnecting watchers (whole revisions are dropped,
    /// oldest first; up to a quarter more accumulate between cuts).
    #[arg(long, default_value_t = HistoryLimit::DEFAULT.changes,
          value_parser = clap::value_parser!(u64).range(1..))]
    history_changes: u64,
    /// Build a snapshot and compact the log every this many entries (each replica at indexes
    /// of its own, so the replicas of a set take turns).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every: u64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Once listening, write the bound HOST:PORT to this file (and, with --metrics-listen, the
    /// metrics HOST:PORT on a second line).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsFiles,
}

#[derive(Args)]
pub struct InitArgs {
    /// A member as ID=HOST:PORT:KIND (KIND: sync, async or witness); repeat for each.
    #[arg(long = "member", required = true, value_parser = parse_member)]
    members: Vec<Member>,
    /// Send the request to this replica (default: the first sync or witness member).
    #[arg(long)]
    via: Option<String>,
    #[command(flatten)]
    tls: TlsFiles,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Print JSON (one object per endpoint) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value (stored as its UTF-8 bytes).
    value: String,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args)]
pub struct KeyArgs {
    /// The key.
    key: String,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args)]
pub struct GetArgs {
    /// The key.
    key: String,
    /// Read from this replica's applied state instead (may be stale; a secondary can answer).
    #[arg(long, value_name = "HOST:PORT")]
    stale: Option<String>,
    #[command(flatten)]
    endpoints: Endpoints,
    /// Print the key, its value, revisions and version as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RangeArgs {
    /// The key prefix (default: every key).
    #[arg(default_value = "")]
    prefix: String,
    #[command(flatten)]
    endpoints: Endpoints,
    /// Print the keys as one JSON array.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WatchArgs {
    /// The key prefix to watch (default: every key).
    #[arg(default_value = "")]
    prefix: String,
    /// Start after this revision (0: from the oldest change kept).
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args)]
pub struct MemberArgs {
    /// The new replica's id (never one used before in this set).
    #[arg(long)]
    id: u64,
    /// The HOST:PORT it serves on.
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,
    /// Its kind: sync, async or witness.
    #[arg(long)]
    kind: ReplicaKind,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args)]
pub struct IdArgs {
    /// The replica's id.
    #[arg(long)]
    id: u64,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args)]
pub struct MemberKindArgs {
    /// The replica's id.
    #[arg(long)]
    id: u64,
    /// Its new kind: sync, async or witness.
    #[arg(long)]
    kind: ReplicaKind,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args)]
pub struct SwitchoverArgs {
    /// The sync replica to make primary.
    #[arg(long)]
    to: u64,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Args)]
pub struct SnapshotArgs {
    /// The replica to snapshot.
    #[arg(long, value_name = "HOST:PORT")]
    on: String,
    #[command(flatten)]
    endpoints: Endpoints,
}

/// Parses `ID=HOST:PORT:KIND`.
fn parse_member(text: &str) -> Result<Member, String> {
    let (id, rest) = text.split_once('=').ok_or("expected ID=HOST:PORT:KIND")?;
    let (addr, kind) = rest.rsplit_once(':').ok_or("expected ID=HOST:PORT:KIND")?;
    let id: u64 = id.parse().map_err(|_| format!("replica id {id:?} is not a number"))?;
    let kind: ReplicaKind = kind.parse()?;
    if !addr.contains(':') {
        return Err(format!("address {addr:?} is not HOST:PORT"));
    }
    Ok(Member {
        id,
        addr: addr.to_owned(),
        kind: kind.to_string(),
    })
}

pub async fn run(command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Serve(args) => serve(args).await,
        DbCommand::Init(args) => {
            let via = match args.via {
                Some(via) => via,
                None => args
                    .members
                    .iter()
                    .find(|m| m.kind != "async")
                    .map(|m| m.addr.clone())
                    .context("at least one member must be sync or witness")?,
            };
            let client = Client::new(
                vec![via.clone()],
                ClientOptions {
                    tls: args.tls,
                    ..ClientOptions::default()
                },
            )?;
            let members = client
                .initialize(&via, args.members)
                .await
                .context("initialisation failed")?;
            print_members(&members);
            Ok(())
        }
        DbCommand::Status(args) => {
            let client = args.endpoints.client()?;
            let answers = client.status_all().await;
            if args.json {
                let items: Vec<serde_json::Value> = answers
                    .iter()
                    .map(|(addr, answer)| match answer {
                        Ok(status) => serde_json::json!({ "endpoint": addr, "status": status }),
                        Err(e) => serde_json::json!({ "endpoint": addr, "error": e.to_string() }),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print_status(&answers);
            }
            Ok(())
        }
        DbCommand::Put(args) => {
            let revision = args.endpoints.client()?.put(&args.key, args.value.into_bytes()).await?;
            println!("OK revision {revision}");
            Ok(())
        }
        DbCommand::Get(args) => {
            let client = args.endpoints.client()?;
            let kv = match &args.stale {
                Some(addr) => client.get_stale(addr, &args.key).await?,
                None => client.get(&args.key).await?,
            };
            match kv {
                Some(kv) if args.json => println!("{}", serde_json::to_string(&kv)?),
                Some(kv) => println!("{}", String::from_utf8_lossy(&kv.value)),
                None => bail!("key {:?} not found", args.key),
            }
            Ok(())
        }
        DbCommand::Delete(args) => {
            let revision = args.endpoints.client()?.delete(&args.key).await?;
            println!("OK revision {revision}");
            Ok(())
        }
        DbCommand::Range(args) => {
            let kvs = args.endpoints.client()?.range(&args.prefix, None).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&kvs)?);
            } else {
                for kv in kvs {
                    println!(
                        "{}\t{}\t(version {})",
                        kv.key,
                        String::from_utf8_lossy(&kv.value),
                        kv.version
                    );
                }
            }
            Ok(())
        }
        DbCommand::Watch(args) => {
            let client = args.endpoints.client()?;
            let mut watch = client.watch(&args.prefix, args.after).await?;
            while let Some(batch) = watch.next().await {
                for event in batch? {
                    let kind = if event.kind == EventKind::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    println!(
                        "{}\t{kind}\t{}\t{}",
                        event.revision,
                        event.key,
                        String::from_utf8_lossy(&event.value)
                    );
                }
            }
            Ok(())
        }
        DbCommand::AddReplica(args) => {
            let member = Member {
                id: args.id,
                addr: args.addr,
                kind: args.kind.to_string(),
            };
            print_members(&args.endpoints.client()?.add_replica(member).await?);
            Ok(())
        }
        DbCommand::RemoveReplica(args) => {
            print_members(&args.endpoints.client()?.remove_replica(args.id).await?);
            Ok(())
        }
        DbCommand::SetKind(args) => {
            print_members(&args.endpoints.client()?.set_kind(args.id, args.kind.as_str()).await?);
            Ok(())
        }
        DbCommand::Switchover(args) => {
            let done = args.endpoints.client()?.switchover(args.to).await?;
            println!(
                "replica {} is primary (term {}) after {} ms",
                done.primary, done.term, done.duration_ms
            );
            Ok(())
        }
        DbCommand::Recover(args) => {
            if !args.force {
                bail!(
                    "forced recovery starts a new epoch and loses any acknowledged write this replica lacks; \
                     run `tandem db status` first, then confirm with --force"
                );
            }
            let options = ClientOptions {
                tls: args.tls,
                ..ClientOptions::default()
            };
            let client = Client::new(vec![args.on.clone()], options)?;
            let report = client.recover(&args.on, true).await.context("forced recovery failed")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "replica at {} is the primary of epoch {} (was epoch {})",
                    args.on, report.epoch, report.previous_epoch
                );
                println!("  applied before recovery:      {}", report.applied_before);
                println!("  log tail applied (uncommitted): {}", report.tail_applied);
                println!(
                    "  new epoch starts after:       index {}, revision {}",
                    report.start_index, report.start_revision
                );
                println!("  highest commit index heard:   {}", report.commit_heard);
                println!(
                    "  primary last heard at:        index {}, revision {} ({} ms before recovery)",
                    report.primary_last_index_heard, report.primary_revision_heard, report.heard_ms_ago
                );
                println!("  leases of the old epoch ended: {}", report.leases_ended);
                if report.bound_known {
                    println!("  POSSIBLE LOSS: {} acknowledged change(s)", report.possibly_missing);
                } else {
                    println!("  POSSIBLE LOSS: UNKNOWN (see below)");
                }
                println!("  {}", report.assessment);
                println!("Re-add replicas with `tandem db add-replica`; old-epoch replicas must `tandem db rejoin`.");
            }
            Ok(())
        }
        DbCommand::Rejoin(args) => {
            let options = ClientOptions {
                tls: args.tls,
                ..ClientOptions::default()
            };
            let client = Client::new(vec![args.on.clone()], options)?;
            let kind = args.kind.map(|k| k.to_string());
            let report = client
                .rejoin(&args.on, args.primary.as_deref(), kind.as_deref())
                .await
                .context("rejoin failed")?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "replica at {} rejoined epoch {} (primary {})",
                    args.on, report.epoch, report.primary
                );
                println!(
                    "  dropped {} divergent entries{}; copies kept in {}",
                    report.divergent_entries,
                    if report.divergent_entries > 0 {
                        format!(
                            " (indexes {}..={})",
                            report.first_divergent_index, report.last_divergent_index
                        )
                    } else {
                        String::new()
                    },
                    report.quarantine_dir
                );
            }
            Ok(())
        }
        DbCommand::Snapshot(args) => {
            let index = args.endpoints.client()?.snapshot(&args.on).await?;
            println!("snapshot at index {index}");
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?
        .to_string();
    let mut config = ReplicaConfig::new(
        args.id,
        &args.cluster,
        args.data_dir.clone(),
        args.advertise.unwrap_or(bound.clone()),
    );
    config.witness = args.witness;
    config.sync_mode = args.sync_mode;
    config.sync_timeout = Duration::from_millis(args.sync_timeout_ms);
    config.timers = Timers {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_min_ms,
        election_max_ms: args.election_max_ms,
    };
    config.history = HistoryLimit {
        revisions: args.history_limit,
        changes: args.history_changes,
    };
    config.snapshot_every = args.snapshot_every;
    config.tls = args.tls;
    let metrics_listener = match &args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?,
        ),
        None => None,
    };
    let mut ready = format!("{bound}\n");
    if let Some(listener) = &metrics_listener {
        let addr = listener.local_addr().context("cannot read the metrics address")?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        ready.push_str(&format!("{addr}\n"));
    }
    if let Some(path) = &args.ready_file {
        // Written atomically so a reader never sees half an address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    tandem_replica::serve_with_metrics(config, listener, metrics_listener, shutdown_signal())
        .await
        .with_context(|| format!("replica {} ({})", args.id, args.data_dir.display()))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

fn print_members(members: &[Member]) {
    println!("{:<6} {:<24} KIND", "ID", "ADDRESS");
    for m in members {
        println!("{:<6} {:<24} {}", m.id, m.addr, m.kind);
    }
}

/// The status table: one row per replica, the primary's view of lag and health.
pub fn print_status(answers: &[(String, Result<StatusResponse, tandem_client::ClientError>)]) {
    let primary = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .find(|s| s.role == "primary");
    println!(
        "{:<4} {:<22} {:<10} {:<8} {:>5} {:>5} {:>9} {:>9} {:>8} {:>8}  HEALTH",
        "ID", "ADDRESS", "ROLE", "KIND", "TERM", "EPOCH", "COMMIT", "APPLIED", "LAG", "LAG_MS"
    );
    for (addr, answer) in answers {
        match answer {
            Ok(s) => {
                let seen = primary.and_then(|p| p.replicas.iter().find(|r| r.id == s.id));
                let (lag, lag_ms, health) = match (s.role.as_str(), seen) {
                    ("primary", _) => ("-".to_owned(), "-".to_owned(), "ok".to_owned()),
                    ("fenced", _) => (
                        "-".to_owned(),
                        "-".to_owned(),
                        format!("fenced by epoch {}", s.fenced_by_epoch),
                    ),
                    (_, Some(r)) => (r.lag_entries.to_string(), r.lag_ms.to_string(), r.health.clone()),
                    // No primary answered: the replica's own view of its lag.
                    _ => (
                        s.own_lag_entries.to_string(),
                        s.own_lag_ms.to_string(),
                        "no primary".to_owned(),
                    ),
                };
                println!(
                    "{:<4} {:<22} {:<10} {:<8} {:>5} {:>5} {:>9} {:>9} {:>8} {:>8}  {}",
                    s.id, addr, s.role, s.kind, s.term, s.epoch, s.commit_index, s.applied_index, lag, lag_ms, health
                );
            }
            Err(e) => println!("{:<4} {:<22} {}", "?", addr, e),
        }
    }
    if let Some(p) = primary {
        if p.demotions > 0 {
            println!(
                "note: {} sync replica demotion(s) since this primary started (sync mode {})",
                p.demotions, p.sync_mode
            );
        }
    }
    for s in answers.iter().filter_map(|(_, a)| a.as_ref().ok()) {
        for note in checkpoint_notes(s) {
            println!("{note}");
        }
    }
}

/// Warnings about a replica's checkpoints: failed ones (each is retried, but a file whose
/// checkpoints keep failing grows its write-ahead log without bound).
fn checkpoint_notes(s: &StatusResponse) -> Vec<String> {
    [("log.db", &s.log_checkpoints), ("state.db", &s.state_checkpoints)]
        .into_iter()
        .filter_map(|(file, counts)| {
            let counts = counts.as_ref()?;
            (counts.failures > 0).then(|| {
                format!(
                    "warning: replica {}: {} checkpoint(s) of {file} failed since it started ({} pages in its \
                     write-ahead log; the replica's log says why)",
                    s.id, counts.failures, counts.wal_frames
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::db::CheckpointCounts;

    #[test]
    fn failed_checkpoints_are_reported_per_file() {
        let mut status = StatusResponse {
            id: 2,
            log_checkpoints: Some(CheckpointCounts {
                checkpoints: 40,
                ..CheckpointCounts::default()
            }),
            state_checkpoints: Some(CheckpointCounts {
                checkpoints: 38,
                failures: 3,
                wal_frames: 5000,
                ..CheckpointCounts::default()
            }),
            ..StatusResponse::default()
        };
        assert_eq!(
            checkpoint_notes(&status),
            [
                "warning: replica 2: 3 checkpoint(s) of state.db failed since it started (5000 pages in its \
              write-ahead log; the replica's log says why)"
            ]
        );
        status.state_checkpoints = None;
        assert!(checkpoint_notes(&status).is_empty());
    }
}
