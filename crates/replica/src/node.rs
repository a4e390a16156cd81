//! Starting and running one replica: open the store (refusing a bad data directory), start
//! openraft, start the background tasks, serve the gRPC services until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tandem_proto::db::admin_server::AdminServer;
use tandem_proto::db::kv_server::KvServer;
use tandem_proto::db::raft_server::RaftServer;
use tandem_store::{Command, CommandResult, OpenError, ReplicaId, ReplicaKind};
use tokio::net::TcpListener;
use tokio::sync::{watch, RwLock};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::admin_service::AdminService;
use crate::config::ReplicaConfig;
use crate::engine::{Engine, OpenedStore};
use crate::kv_service::KvService;
use crate::network::{PeerChannels, PeerIdentity, MAX_PEER_MESSAGE_BYTES};
use crate::progress::{Metrics, SyncWaitError};
use crate::proposer::ProposeError;
use crate::raft_service::RaftService;
use crate::read_barrier::ReadError;
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

/// Everything the services share; outlives engines (see [`Engine`]).
pub struct Core {
    pub config: ReplicaConfig,
    /// Identity stamped on, and checked against, peer messages (epoch and fence included).
    pub identity: Arc<PeerIdentity>,
    /// Outgoing peer connections (Raft traffic, election requests, probes).
    pub channels: PeerChannels,
    /// The running engine; `None` only while a recovery or rejoin swaps it.
    engine: std::sync::RwLock<Option<Arc<Engine>>>,
    /// Serialises engine swaps (recovery, rejoin).
    pub swap: tokio::sync::Mutex<()>,
    /// Writes hold it shared; a switchover or an engine swap holds it exclusively, so that no
    /// write is accepted that the next primary (or the next engine) would not have.
    pub write_fence: RwLock<()>,
    /// What this replica last heard from a primary, for its own lag and for loss bounds.
    pub heard: std::sync::Mutex<Heard>,
}

/// What the primary last said to this replica.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    /// The primary's last log index.
    pub primary_last_index: u64,
    /// The primary's revision (its last applied change); 0 from a primary that does not say.
    pub primary_revision: u64,
    /// When it was received (this replica's clock).
    pub at: Option<Instant>,
    /// When the primary sent it (the primary's wall clock, Unix ms): the moment the figures
    /// describe, even if the message waited in a socket.
    pub primary_time_ms: Option<u64>,
    /// Whether this replica was in the primary's acknowledgement set, and the primary strict.
    pub in_sync_set: bool,
    pub strict: bool,
    /// When a primary's message last reached this replica and was not refused for its term
    /// (AppendEntries answered with success or a conflict, a snapshot accepted), or this replica
    /// granted a vote (the candidate is about to be primary): what tells a live primary from a
    /// gone one for elections (see [`crate::election`]).
    pub contact: Option<Instant>,
    /// When this replica last held everything the primary had told it of.
    pub caught_up_at: Option<Instant>,
}

impl Core {
    /// The running engine, or a retryable refusal while it is being swapped.
    pub fn engine(&self) -> Result<Arc<Engine>, Status> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Status::unavailable("this replica is changing epoch; retry shortly"))
    }

    /// Takes the engine out (for a swap); services refuse until [`Core::install`].
    pub fn take_engine(&self) -> Option<Arc<Engine>> {
        self.engine.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Installs a (new) engine; [`Engine::start`] has already aligned the identity with its
    /// store's epoch and fence.
    pub fn install(&self, engine: Arc<Engine>) {
        *self.engine.write().unwrap_or_else(|p| p.into_inner()) = Some(engine);
    }

    pub fn metrics(&self) -> Result<Metrics, Status> {
        Ok(self.engine()?.raft.metrics().borrow().clone())
    }

    /// This replica's kind according to the membership (None while pristine or removed).
    pub fn own_kind(&self, metrics: &Metrics) -> Option<ReplicaKind> {
        metrics
            .membership_config
            .membership()
            .get_node(&self.config.id)
            .map(|n| n.kind)
    }

    /// The primary's address as this replica knows it.
    pub fn primary_addr(&self, metrics: &Metrics) -> Option<String> {
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Refuses client traffic on a fenced replica and on a witness.
    pub fn check_serves_clients(&self) -> Result<(Arc<Engine>, Metrics), Status> {
        if let Some(fence) = self.identity.fence() {
            return Err(refusal::fenced(self.identity.epoch(), &fence));
        }
        let engine = self.engine()?;
        if !engine.is_ready() {
            return Err(Status::unavailable(
                "this replica is starting: checking its peers for a newer epoch",
            ));
        }
        let metrics = engine.raft.metrics().borrow().clone();
        if self.own_kind(&metrics) == Some(ReplicaKind::Witness) {
            return Err(refusal::witness(self.primary_addr(&metrics).as_deref()));
        }
        Ok((engine, metrics))
    }

    /// Waits until a read here would be linearizable (this replica is primary and has applied
    /// everything committed before the read began); returns the engine to read from.
    pub async fn linearize(&self) -> Result<Arc<Engine>, Status> {
        let (engine, metrics) = self.check_serves_clients()?;
        if metrics.membership_config.membership().voter_ids().next().is_none() {
            return Err(refusal::not_initialized());
        }
        match engine.reads.wait().await {
            Ok(()) => Ok(engine),
            Err(ReadError::NotPrimary { primary_addr }) => Err(refusal::not_primary(primary_addr.as_deref())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// Proposes `command`, waits for its commit and for every healthy sync replica, and returns
    /// what the state machine answered.
    ///
    /// A transaction goes through the engine's [`crate::proposer::Proposer`], which proposes
    /// the transactions waiting at the same time as one entry (group commit); lease commands are
    /// proposed alone (a lease's fencing token is its entry's index).
    pub async fn write(&self, command: Command) -> Result<CommandResult, Status> {
        let deadline = Instant::now() + self.config.write_timeout;
        let _shared = self.write_fence.read().await;
        let (engine, metrics) = self.check_serves_clients()?;
        if metrics.state != ServerState::Leader {
            return Err(refusal::not_primary(self.primary_addr(&metrics).as_deref()));
        }
        let (index, data) = match command {
            Command::Txn(txn) => match tokio::time::timeout_at(deadline.into(), engine.proposer.propose(txn)).await {
                Err(_) => return Err(refusal::outcome_unknown("no commit before the write deadline")),
                Ok(Err(e)) => return Err(propose_error(e)),
                Ok(Ok(proposed)) => (proposed.log_id.index, CommandResult::Txn(proposed.result)),
            },
            other => self.propose_alone(&engine, other, deadline).await?,
        };
        let metrics_rx = engine.raft.metrics();
        match engine.progress.wait_synced(index, &metrics_rx, deadline).await {
            Ok(()) => Ok(data),
            Err(e @ SyncWaitError::LostPrimary) | Err(e @ SyncWaitError::Timeout { .. }) => {
                Err(refusal::outcome_unknown(format!("committed at index {index}, but {e}")))
            }
        }
    }

    /// Proposes one command as an entry of its own; returns the entry's index and what the state
    /// machine answered.
    async fn propose_alone(
        &self,
        engine: &Engine,
        command: Command,
        deadline: Instant,
    ) -> Result<(u64, CommandResult), Status> {
        let proposed = tokio::time::timeout_at(deadline.into(), engine.raft.client_write(command)).await;
        let response = match proposed {
            Err(_) => return Err(refusal::outcome_unknown("no commit before the write deadline")),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                // openraft answers this only for entries it never proposed or has truncated:
                // nothing was applied.
                return Err(refusal::not_primary(
                    forward.leader_node.as_ref().map(|n| n.addr.as_str()),
                ));
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                return Err(Status::failed_precondition(e.to_string()));
            }
            Ok(Err(RaftError::Fatal(fatal))) => return Err(refusal::outcome_unknown(fatal)),
            Ok(Ok(response)) => response,
        };
        Ok((response.log_id.index, response.data))
    }

    /// The highest commit index this replica knows of.
    ///
    /// Asked on a task of its own: a caller that gives up (a status call past its deadline)
    /// drops only the task's handle, and openraft still has someone to hand the answer to (it
    /// logs an error when the asker is gone).
    pub async fn commit_index(&self, engine: &Engine) -> u64 {
        let raft = engine.raft.clone();
        let ask = tokio::spawn(async move {
            raft.with_raft_state(|state| state.committed.map(|id| id.index).unwrap_or(0))
                .await
        });
        match ask.await {
            Ok(Ok(index)) => index,
            Ok(Err(_)) | Err(_) => 0,
        }
    }

    /// Records what a primary just told this replica (on every AppendEntries it accepts).
    pub fn heard_from_primary(&self, stamp: &tandem_proto::db::RaftRequest, own_last_index: u64) {
        let now = Instant::now();
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let (primary_last_index, in_sync_set, strict) = (stamp.primary_last_index, stamp.in_sync_set, stamp.strict);
        heard.primary_last_index = primary_last_index;
        heard.primary_revision = stamp.primary_revision;
        heard.at = Some(now);
        heard.primary_time_ms = Some(stamp.primary_time_ms);
        heard.in_sync_set = in_sync_set;
        heard.strict = strict;
        if own_last_index >= primary_last_index {
            heard.caught_up_at = Some(now);
        }
    }

    /// Records that a primary's message reached this replica and was not refused for its term, or
    /// that this replica granted a vote.
    pub fn contact_from_primary(&self) {
        self.heard.lock().unwrap_or_else(|p| p.into_inner()).contact = Some(Instant::now());
    }

    /// How long this replica has not heard from a primary: since the last contact, or since
    /// `engine` started if none came since.
    pub fn silence(&self, engine: &Engine) -> Duration {
        let contact = self.heard.lock().unwrap_or_else(|p| p.into_inner()).contact;
        let since = contact.map_or(engine.started, |at| at.max(engine.started));
        since.elapsed()
    }

    /// This replica's own lag (entries, ms) from what the primary last said, and how long ago
    /// that was; all zero on the primary.
    pub fn own_lag(&self, metrics: &Metrics) -> (u64, u64, Option<Duration>) {
        if metrics.state == ServerState::Leader {
            return (0, 0, None);
        }
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let entries = heard
            .primary_last_index
            .saturating_sub(metrics.last_log_index.unwrap_or(0));
        let ms = match (entries, heard.caught_up_at.or(heard.at)) {
            (0, _) | (_, None) => 0,
            (_, Some(since)) => since.elapsed().as_millis() as u64,
        };
        (entries, ms, heard.at.map(|at| at.elapsed()))
    }
}

/// The refusal a failed proposal is answered with.
fn propose_error(e: ProposeError) -> Status {
    match e {
        ProposeError::NotPrimary { primary_addr } => refusal::not_primary(primary_addr.as_deref()),
        ProposeError::OutcomeUnknown(reason) => refusal::outcome_unknown(reason),
        ProposeError::Stopped => Status::unavailable("this replica is stopping; retry shortly"),
        ProposeError::Internal(reason) => Status::internal(reason),
    }
}

/// The primary's wall clock, stamped into time-dependent commands.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    let store = OpenedStore::open(&config).await?;
    let identity = Arc::new(PeerIdentity::new(
        config.id,
        &config.cluster,
        store.log.epoch(),
        store.log.fence(),
    ));
    let channels = PeerChannels::new(config.tls.client()?);
    let server_tls = config.tls.server()?;
    let core = Arc::new(Core {
        identity,
        channels,
        engine: std::sync::RwLock::new(None),
        swap: tokio::sync::Mutex::new(()),
        write_fence: RwLock::new(()),
        heard: std::sync::Mutex::default(),
        config,
    });
    let engine = Engine::start(&core, store).await?;
    core.install(engine);
    let fencing_task = tokio::spawn(crate::epoch::watch_for_newer_epochs(core.clone()));
    tracing::info!(
        replica = core.config.id,
        cluster = %core.config.cluster,
        addr = %core.config.advertise,
        epoch = core.identity.epoch(),
        fenced = ?core.identity.fence(),
        witness = core.config.witness,
        sync_mode = core.config.sync_mode.as_str(),
        "replica started"
    );

    let (stopped_tx, stopped_rx) = watch::channel(false);
    let metrics_task = metrics_listener.map(|listener| {
        let mut stopped = stopped_rx.clone();
        tokio::spawn(crate::metrics_http::serve(core.clone(), listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    });
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = server_tls {
        server = server.tls_config(tls)?;
    }
    let max_request = core.config.max_request_bytes;
    let result = server
        .add_service(
            KvServer::new(KvService::new(core.clone(), stopped_rx.clone())).max_decoding_message_size(max_request),
        )
        .add_service(AdminServer::new(AdminService::new(core.clone())).max_decoding_message_size(max_request))
        .add_service(
            RaftServer::new(RaftService::new(core.clone(), stopped_rx.clone()))
                .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming(listener), async move {
            shutdown.await;
            // Ends open watch and append streams, which would otherwise hold the server open.
            let _ = stopped_tx.send(true);
        })
        .await;

    tracing::info!(replica = core.config.id, "replica stopping");
    fencing_task.abort();
    if let Some(engine) = core.take_engine() {
        engine.stop().await;
    }
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    result?;
    Ok(())
}
