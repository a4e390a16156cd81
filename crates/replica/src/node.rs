//! Starting and running one replica: open the store (refusing a bad data directory), start
//! openraft, start the background tasks, serve the gRPC services until shutdown.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{Raft, ServerState, SnapshotPolicy};
use tandem_proto::db::admin_server::AdminServer;
use tandem_proto::db::kv_server::KvServer;
use tandem_proto::db::raft_server::RaftServer;
use tandem_store::{
    Command, CommandResult, LogStore, OpenError, ReplicaId, ReplicaKind, StateMachine, StateReader, TypeConfig,
};
use tokio::net::TcpListener;
use tokio::sync::{watch, RwLock};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::admin_service::AdminService;
use crate::config::ReplicaConfig;
use crate::kv_service::KvService;
use crate::network::{PeerChannels, PeerIdentity, PeerNetwork, MAX_PEER_MESSAGE_BYTES};
use crate::progress::{Metrics, Progress, SyncWaitError};
use crate::raft_service::RaftService;
use crate::refusal;

/// Why a replica could not start (or stopped serving).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing the data directory: {0}")]
    DataDir(#[from] OpenError),
    #[error("invalid raft settings: {0}")]
    RaftConfig(#[from] openraft::ConfigError),
    #[error("raft failed to start: {0}")]
    Raft(#[from] openraft::error::Fatal<ReplicaId>),
    #[error("TLS settings: {0}")]
    Tls(#[from] tandem_tls::TlsError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("opening the store was interrupted: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Everything the services share.
pub struct Core {
    pub config: ReplicaConfig,
    /// Identity stamped on, and checked against, peer messages.
    pub identity: Arc<PeerIdentity>,
    pub raft: Raft<TypeConfig>,
    /// Read access to the applied state.
    pub reader: StateReader,
    /// The durable log (kept for the epoch and other replica-local metadata).
    pub log: LogStore,
    /// Outgoing peer connections (Raft traffic, election requests).
    pub channels: PeerChannels,
    pub progress: Arc<Progress>,
    /// Writes hold it shared; a switchover holds it exclusively while it hands over, so that no
    /// write is accepted that the new primary would not have.
    pub write_fence: RwLock<()>,
}

impl Core {
    pub fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// This replica's kind according to the membership (None while pristine or removed).
    pub fn own_kind(&self, metrics: &Metrics) -> Option<ReplicaKind> {
        metrics.membership_config.membership().get_node(&self.config.id).map(|n| n.kind)
    }

    /// The primary's address as this replica knows it.
    pub fn primary_addr(&self, metrics: &Metrics) -> Option<String> {
        let leader = metrics.current_leader?;
        metrics.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    /// Refuses client traffic on a witness.
    pub fn check_serves_clients(&self) -> Result<Metrics, Status> {
        let metrics = self.metrics();
        if self.own_kind(&metrics) == Some(ReplicaKind::Witness) {
            return Err(refusal::witness(self.primary_addr(&metrics).as_deref()));
        }
        Ok(metrics)
    }

    /// Waits until a read here would be linearizable (this replica is primary and has applied
    /// everything committed before the read began).
    pub async fn linearize(&self) -> Result<(), Status> {
        let metrics = self.check_serves_clients()?;
        if metrics.membership_config.membership().voter_ids().next().is_none() {
            return Err(refusal::not_initialized());
        }
        let result = tokio::time::timeout(self.config.write_timeout, self.raft.ensure_linearizable()).await;
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                Err(refusal::not_primary(forward.leader_node.as_ref().map(|n| n.addr.as_str())))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(Status::unavailable(format!("no quorum confirms this primary: {e}")))
            }
            Ok(Err(RaftError::Fatal(fatal))) => Err(Status::unavailable(format!("replica is stopping: {fatal}"))),
            Err(_) => Err(Status::unavailable("no quorum confirmed this primary in time")),
        }
    }

    /// Proposes `command`, waits for its commit and for every healthy sync replica, and returns
    /// what the state machine answered.
    pub async fn write(&self, command: Command) -> Result<CommandResult, Status> {
        let deadline = Instant::now() + self.config.write_timeout;
        let _shared = self.write_fence.read().await;
        let metrics = self.check_serves_clients()?;
        if metrics.state != ServerState::Leader {
            return Err(refusal::not_primary(self.primary_addr(&metrics).as_deref()));
        }
        let proposed = tokio::time::timeout_at(deadline.into(), self.raft.client_write(command)).await;
        let response = match proposed {
            Err(_) => return Err(refusal::outcome_unknown("no commit before the write deadline")),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                // openraft answers this only for entries it never proposed or has truncated:
                // nothing was applied.
                return Err(refusal::not_primary(forward.leader_node.as_ref().map(|n| n.addr.as_str())));
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                return Err(Status::failed_precondition(e.to_string()));
            }
            Ok(Err(RaftError::Fatal(fatal))) => return Err(refusal::outcome_unknown(fatal)),
            Ok(Ok(response)) => response,
        };
        let mut metrics_rx = self.raft.metrics();
        match self.progress.wait_synced(response.log_id.index, &mut metrics_rx, deadline).await {
            Ok(()) => Ok(response.data),
            Err(e @ SyncWaitError::LostPrimary) | Err(e @ SyncWaitError::Timeout { .. }) => {
                Err(refusal::outcome_unknown(format!("committed at index {}, but {e}", response.log_id.index)))
            }
        }
    }

    /// The highest commit index this replica knows of.
    pub async fn commit_index(&self) -> u64 {
        self.raft.with_raft_state(|state| state.committed.map(|id| id.index).unwrap_or(0)).await.unwrap_or(0)
    }
}

/// The primary's wall clock, stamped into time-dependent commands.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Accepted connections, with Nagle's algorithm off (small RPCs must not wait for delayed ACKs).
fn incoming(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Refuses a state database that is behind the log's purged prefix: the entries it lacks are
/// gone from the log, so starting would silently lose them (e.g. `state.db` deleted or replaced
/// by an older copy).
async fn check_state_covers_log(log: &LogStore, state: &StateMachine, reader: &StateReader) -> Result<(), OpenError> {
    use openraft::storage::RaftLogStorage;
    let purged = log.clone().get_log_state().await.ok().and_then(|s| s.last_purged_log_id).map(|id| id.index);
    let applied = reader.applied().await.ok().flatten().map(|id| id.index);
    match purged {
        Some(purged) if applied.is_none_or(|applied| applied < purged) => Err(OpenError::Corrupt {
            file: state.path().to_owned(),
            reason: format!(
                "the state has applied up to index {applied:?} but the log was compacted up to {purged}: \
                 the state database was lost or replaced by an older copy"
            ),
        }),
        _ => Ok(()),
    }
}

/// Runs one replica on `listener` until `shutdown` completes.
///
/// The data directory is opened (created when empty, refused when corrupt, foreign or of an
/// unknown format), openraft is started, and the client, admin and peer services are served.
pub async fn serve(
    config: ReplicaConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    serve_with_metrics(config, listener, None, shutdown).await
}

/// [`serve`], plus Prometheus metrics over HTTP on `metrics_listener` when given.
pub async fn serve_with_metrics(
    config: ReplicaConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let (log, state_machine, reader) = {
        let dir = config.data_dir.clone();
        let cluster = config.cluster.clone();
        let id = config.id;
        let history_limit = config.history_limit;
        tokio::task::spawn_blocking(move || -> Result<_, OpenError> {
            std::fs::create_dir_all(&dir).map_err(|source| OpenError::Io { file: dir.clone(), source })?;
            let log = LogStore::open(&dir, &cluster, id)?;
            let (state_machine, reader) = StateMachine::open(&dir, &cluster, id, history_limit)?;
            Ok((log, state_machine, reader))
        })
        .await??
    };

    check_state_covers_log(&log, &state_machine, &reader).await?;

    let timers = config.effective_timers();
    let raft_config = openraft::Config {
        cluster_name: config.cluster.clone(),
        heartbeat_interval: timers.heartbeat_ms,
        election_timeout_min: timers.election_min_ms,
        election_timeout_max: timers.election_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()?;

    let identity = Arc::new(PeerIdentity {
        id: config.id,
        cluster: config.cluster.clone(),
        epoch: AtomicU64::new(log.epoch()),
    });
    let channels = PeerChannels::new(config.tls.client()?);
    let network = PeerNetwork { identity: identity.clone(), channels: channels.clone() };
    let raft = Raft::new(config.id, Arc::new(raft_config), network, log.clone(), state_machine).await?;
    let progress = Arc::new(Progress::new(config.id, config.sync_mode, config.sync_timeout));

    tracing::info!(
        replica = config.id,
        cluster = %config.cluster,
        addr = %config.advertise,
        epoch = log.epoch(),
        witness = config.witness,
        sync_mode = config.sync_mode.as_str(),
        "replica started"
    );

    let core = Arc::new(Core {
        identity,
        raft: raft.clone(),
        reader,
        log,
        channels,
        progress: progress.clone(),
        write_fence: RwLock::new(()),
        config,
    });

    let tick = Duration::from_millis(core.config.timers.heartbeat_ms);
    let progress_task = tokio::spawn({
        let metrics = raft.metrics();
        async move { progress.run(metrics, tick).await }
    });
    let witness_task = tokio::spawn(crate::witness::run(core.clone()));

    let (stopped_tx, stopped_rx) = watch::channel(false);
    let metrics_task = metrics_listener.map(|listener| {
        let mut stopped = stopped_rx.clone();
        tokio::spawn(crate::metrics_http::serve(core.clone(), listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    });

    let max_request = core.config.max_request_bytes;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = core.config.tls.server()? {
        server = server.tls_config(tls)?;
    }
    let result = server
        .add_service(
            KvServer::new(KvService::new(core.clone(), stopped_rx.clone()))
                .max_decoding_message_size(max_request),
        )
        .add_service(AdminServer::new(AdminService::new(core.clone())).max_decoding_message_size(max_request))
        .add_service(
            RaftServer::new(RaftService::new(core.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming(listener), async move {
            shutdown.await;
            // Ends open watch streams, which would otherwise hold the server open.
            let _ = stopped_tx.send(true);
        })
        .await;

    tracing::info!(replica = core.config.id, "replica stopping");
    witness_task.abort();
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    progress_task.abort();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    result?;
    Ok(())
}
