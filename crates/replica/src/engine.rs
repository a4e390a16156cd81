//! The running node of a replica: openraft on an opened store, with its background tasks.
//!
//! An engine lives for one epoch of the replica's data. A forced recovery or a rejoin stops the
//! engine, changes the data on disk, and starts a new engine on it; the gRPC services, the
//! replica's identity and its connections outlive engines (see [`crate::node::Core`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{Raft, SnapshotPolicy};
use tandem_store::{LogStore, OpenError, StateMachine, StateReader, TypeConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ReplicaConfig;
use crate::early_replication::{self, EarlyCounts};
use crate::election::ElectionCounts;
use crate::network::PeerNetwork;
use crate::node::{Core, StartError};
use crate::progress::Progress;
use crate::proposer::Proposer;
use crate::read_barrier::ReadBarrier;

pub struct Engine {
    pub raft: Raft<TypeConfig>,
    /// Read access to the applied state.
    pub reader: StateReader,
    /// The durable log (also holds the epoch, the fence and the epoch's start).
    pub log: LogStore,
    /// The primary's view of every replica and the sync gate.
    pub progress: Arc<Progress>,
    /// Group commit: client transactions are proposed through it, many to an entry.
    pub proposer: Proposer,
    /// Shares leadership checks between linearizable reads.
    pub reads: Arc<ReadBarrier>,
    /// What early replication (entries sent while the primary syncs them) has done.
    pub early: Arc<EarlyCounts>,
    /// What the election task (pre-votes, campaigns) has done.
    pub elections: ElectionCounts,
    /// When this engine started (silence before any primary was heard counts from here).
    pub started: Instant,
    /// Flips to true when the engine stops, ending its watch streams.
    stopped: watch::Sender<bool>,
    /// False until the start probe found no newer epoch (see [`crate::epoch::probe_then_elect`]);
    /// until then the engine serves no client and sends and accepts no Raft traffic.
    ready: Arc<AtomicBool>,
    /// Background tasks of this engine, aborted when it stops.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// The store of one replica, opened (and checked) but not yet running.
pub struct OpenedStore {
    pub log: LogStore,
    pub state: StateMachine,
    pub reader: StateReader,
}

impl OpenedStore {
    /// Opens the data directory on the blocking pool: creates it when empty, refuses it when
    /// corrupt, foreign, of an unknown format, or when the state lost entries the log has
    /// already compacted.
    pub async fn open(config: &ReplicaConfig) -> Result<OpenedStore, StartError> {
        let dir = config.data_dir.clone();
        let cluster = config.cluster.clone();
        let id = config.id;
        let history = config.history;
        let (log, state, reader) = tokio::task::spawn_blocking(move || -> Result<_, OpenError> {
            std::fs::create_dir_all(&dir).map_err(|source| OpenError::Io {
                file: dir.clone(),
                source,
            })?;
            let log = LogStore::open(&dir, &cluster, id)?;
            let (state, reader) = StateMachine::open(&dir, &cluster, id, history)?;
            Ok((log, state, reader))
        })
        .await??;
        check_state_covers_log(&log, &state, &reader).await?;
        Ok(OpenedStore { log, state, reader })
    }
}

/// Refuses a state database that is behind the log's purged prefix: the entries it lacks are
/// gone from the log, so starting would silently lose them (e.g. `state.db` deleted or replaced
/// by an older copy).
async fn check_state_covers_log(log: &LogStore, state: &StateMachine, reader: &StateReader) -> Result<(), OpenError> {
    use openraft::storage::RaftLogStorage;
    let purged = log
        .clone()
        .get_log_state()
        .await
        .ok()
        .and_then(|s| s.last_purged_log_id)
        .map(|id| id.index);
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

impl Engine {
    /// Starts openraft on `store`. openraft's timer elections stay off: [`crate::election`]
    /// decides when to campaign (after a pre-vote), and only once [`crate::epoch::probe_then_elect`]
    /// has checked that no peer knows a newer epoch (a replica returning from a lost site must
    /// learn it is fenced before it can campaign).
    pub async fn start(core: &Arc<Core>, store: OpenedStore) -> Result<Arc<Engine>, StartError> {
        // The identity follows the store before any task of this engine runs: the start probe
        // reads the fence from it, and a rejoin's pristine store must not be taken for the
        // fenced one it replaces.
        core.identity.epoch.store(store.log.epoch(), Ordering::SeqCst);
        core.identity.set_fence(store.log.fence());
        let config = &core.config;
        let timers = config.timers;
        let raft_config = openraft::Config {
            cluster_name: config.cluster.clone(),
            heartbeat_interval: timers.heartbeat_ms,
            election_timeout_min: timers.election_min_ms,
            election_timeout_max: timers.election_max_ms,
            install_snapshot_timeout: 10_000,
            // Snapshots are asked for by `snapshot_schedule`, at indexes of this replica's own.
            snapshot_policy: SnapshotPolicy::Never,
            // Keep at most one snapshot interval of log behind a snapshot (for lagging followers).
            max_in_snapshot_log_to_keep: config.snapshot_every.min(1_000),
            purge_batch_size: 64,
            enable_elect: false,
            ..Default::default()
        }
        .validate()?;
        let progress = Arc::new(Progress::new(config.id, config.sync_mode, config.sync_timeout));
        let ready = Arc::new(AtomicBool::new(false));
        let network = PeerNetwork {
            identity: core.identity.clone(),
            channels: core.channels.clone(),
            progress: progress.clone(),
            reader: store.reader.clone(),
            ready: ready.clone(),
            early: early_replication::EarlyAcks::default(),
        };
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            network.clone(),
            store.log.clone(),
            store.state,
        )
        .await?;
        let early = network.early.counts.clone();
        let (own_appends, early_task) = early_replication::start(
            network,
            raft.metrics(),
            progress.clone(),
            Duration::from_millis(timers.election_min_ms),
        );
        store.log.send_own_appends_to(own_appends);
        let (proposer, proposer_task) = Proposer::start(raft.clone(), config.write_timeout);
        let engine = Arc::new(Engine {
            raft: raft.clone(),
            reader: store.reader,
            log: store.log,
            progress: progress.clone(),
            proposer,
            reads: ReadBarrier::new(raft.clone(), config.write_timeout),
            early,
            elections: ElectionCounts::default(),
            started: Instant::now(),
            stopped: watch::channel(false).0,
            ready,
            tasks: std::sync::Mutex::default(),
        });
        let tick = Duration::from_millis(config.timers.heartbeat_ms);
        let mut tasks = vec![
            proposer_task,
            early_task,
            tokio::spawn({
                let metrics = raft.metrics();
                async move { progress.run(metrics, tick).await }
            }),
            tokio::spawn(crate::snapshot_schedule::run(
                raft.clone(),
                config.id,
                config.snapshot_every,
            )),
            tokio::spawn(crate::witness::run(core.clone(), raft.clone())),
            tokio::spawn(crate::election::run(core.clone(), engine.clone())),
            tokio::spawn(crate::epoch::probe_then_elect(core.clone(), engine.clone())),
            tokio::spawn(crate::failfast::run(core.clone(), engine.clone())),
        ];
        engine
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(&mut tasks);
        Ok(engine)
    }

    /// Whether the start probe is done (and found no newer epoch).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// A receiver that turns true when this engine stops.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stopped.subscribe()
    }

    /// Stops openraft and the background tasks; ends this engine's watch streams.
    pub async fn stop(&self) {
        let _ = self.stopped.send(true);
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}
