//! One master Configuration Server process: its role in the pair, the write path, and the
//! background tasks that keep it current.
//!
//! - **Role.** Both servers compete for the database lease `confserv/master`. The holder is the
//!   primary: it renews the lease every third of its TTL and is the only one that writes. The
//!   other is a hot standby: it follows the change feed, serves reads and subscriptions, refuses
//!   writes naming the primary, and asks for the lease again every tenth of its TTL, or as the
//!   holder's lease runs out if that is sooner. Before a new
//!   primary writes anything it catches up with every change committed so far.
//! - **Writes.** [`Node::commit`] hands a write to the writer task ([`Node::write_loop`]), which
//!   plans the waiting writes on the state in memory ([`crate::plan`]) and commits them in
//!   batches (group commit of independent writes), each batch one database transaction carrying
//!   the lease's fencing token, with a compare-and-set on `cfg/meta/seq`, so a stale primary can
//!   never write (the database refuses its token) and two writes can never take the same
//!   notification number. A batch whose answer is lost is settled by a fenced barrier
//!   transaction before anything else is written.
//! - **Following.** [`Node::follow`] loads the configuration and applies the change feed. The
//!   state is of one database epoch: when the database changes epoch (a forced recovery, after
//!   which a replica of the old epoch may have served a tail the new epoch dropped), the whole
//!   configuration is loaded again — never resumed by a revision of the older epoch.
//! - **Retention.** [`Node::retain`] removes the records the history no longer keeps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tandem_client::{Client, ClientError, ClientOptions, Txn, TxnOutcome};
use tandem_config::access::Principal;
use tandem_config::{schema, ConfigObject, ObjectType, Value};
use tandem_tls::TlsFiles;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::error::CfgError;
use crate::keys;
use crate::plan::Dbids;
use crate::record::{LogRecord, What, Who};
use crate::state::{Shared, State};
use crate::store;

/// A password hash for the administrator of an empty configuration.
#[derive(Clone)]
pub struct Bootstrap {
    /// The administrator's user name.
    pub admin_user: String,
    /// The argon2 PHC hash of the administrator's password (never the password itself).
    pub password_hash: String,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("admin_user", &self.admin_user)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

/// How a server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This server's name, shown as the lease holder.
    pub name: String,
    /// The address clients reach this server at (told to clients of the other server).
    pub advertise: String,
    /// Every database replica's address.
    pub db_endpoints: Vec<String>,
    /// TLS towards the database.
    pub db_tls: TlsFiles,
    /// TLS of this server's own service.
    pub tls: TlsFiles,
    /// TTL of the master lease.
    pub lease_ttl_ms: u64,
    /// Records a reconnecting client can catch up from (the seed's 1000 per request).
    pub history_max_records: usize,
    /// Age beyond which records no longer serve a catch-up and are removed (30 days).
    pub history_max_age_ms: u64,
    /// Records kept in the database for the audit trail (never fewer than the history).
    pub log_keep_records: u64,
    /// How often retention runs on the primary.
    pub retention_interval: Duration,
    /// The administrator to create when the database holds no configuration.
    pub bootstrap: Option<Bootstrap>,
    /// How long a session token is valid.
    pub session_ttl_ms: u64,
    /// The largest request accepted, in bytes.
    pub request_bytes_max: usize,
    /// The most object changes one write may make (each is two keys of one database
    /// transaction, whose size the database bounds).
    pub changes_per_write_max: usize,
}

/// The defaults of `tandem confserv`.
pub mod defaults {
    /// Lease TTL: a takeover after a crash of the primary takes about this long.
    pub const LEASE_TTL_MS: u64 = 1_000;
    /// The seed product's history limit per client request.
    pub const HISTORY_MAX_RECORDS: usize = 1_000;
    /// The seed product's history age.
    pub const HISTORY_DAYS: u64 = 30;
    /// Records kept for the audit trail.
    pub const LOG_KEEP_RECORDS: u64 = 100_000;
    /// Retention period.
    pub const RETENTION_INTERVAL_MS: u64 = 10_000;
    /// Session token validity.
    pub const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;
    /// Largest request.
    pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
    /// Most object changes in one write.
    pub const CHANGES_PER_WRITE_MAX: usize = 400;
}

impl ServerConfig {
    /// A configuration with the defaults.
    pub fn new(name: &str, advertise: &str, db_endpoints: Vec<String>) -> Self {
        ServerConfig {
            name: name.to_owned(),
            advertise: advertise.to_owned(),
            db_endpoints,
            db_tls: TlsFiles::default(),
            tls: TlsFiles::default(),
            lease_ttl_ms: defaults::LEASE_TTL_MS,
            history_max_records: defaults::HISTORY_MAX_RECORDS,
            history_max_age_ms: defaults::HISTORY_DAYS * 24 * 3600 * 1000,
            log_keep_records: defaults::LOG_KEEP_RECORDS,
            retention_interval: Duration::from_millis(defaults::RETENTION_INTERVAL_MS),
            bootstrap: None,
            session_ttl_ms: defaults::SESSION_TTL_MS,
            request_bytes_max: defaults::REQUEST_BYTES_MAX,
            changes_per_write_max: defaults::CHANGES_PER_WRITE_MAX,
        }
    }
}

/// The largest value the database takes (its own limit is 1 MiB).
const VALUE_BYTES_MAX: usize = 1024 * 1024 - 1024;
/// The largest transaction sent (the database takes requests up to 4 MiB).
const TXN_BYTES_MAX: usize = 3 * 1024 * 1024 + 512 * 1024;
/// The database's limit on compares + operations in one transaction.
const TXN_ITEMS_MAX: usize = 1024;
/// How often a write of unknown outcome is probed before giving up.
const SETTLE_ATTEMPTS: usize = 20;
/// How often a follower asks the database for its epoch while the change feed runs.
const EPOCH_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long one ask for the database's epoch may take.
const EPOCH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after the holder's lease runs out the backup asks for it: a few ms past its end.
const LEASE_EXPIRY_MARGIN: Duration = Duration::from_millis(3);
/// The shortest pause between two requests of the backup for the lease.
const LEASE_ASK_PAUSE_MIN: Duration = Duration::from_millis(20);

/// The wall clock in ms since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The server's role in the pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not loaded yet.
    Starting,
    /// Hot standby.
    Backup,
    /// Lease holder, with its fencing token.
    Primary {
        /// The lease's fencing token, carried by every write.
        token: u64,
    },
}

impl Role {
    /// `starting`, `backup` or `primary`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Backup => "backup",
            Role::Primary { .. } => "primary",
        }
    }
}

#[derive(Debug)]
struct RoleState {
    role: Role,
    /// The lease holder as last seen (`NAME@ADDR`).
    holder: Option<String>,
    /// When the lease was last renewed (the request's send time).
    renewed_at: Instant,
    /// Why this server last stepped down.
    last_step_down: Option<String>,
}

/// Who asks for a change.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The person.
    pub person: Principal,
    /// Their user name (for the audit trail).
    pub user: String,
}

impl Caller {
    /// The server itself (bootstrap).
    pub fn server() -> Caller {
        Caller {
            person: Principal(0),
            user: "(server)".into(),
        }
    }
}

/// A committed write.
#[derive(Clone, Debug)]
pub struct Committed {
    /// The records written, in number order.
    pub records: Vec<LogRecord>,
}

impl Committed {
    /// The first number taken.
    pub fn first_seq(&self) -> u64 {
        self.records.first().map_or(0, |r| r.seq)
    }

    /// The last number taken.
    pub fn last_seq(&self) -> u64 {
        self.records.last().map_or(0, |r| r.seq)
    }
}

/// One server.
pub struct Node {
    /// How it runs.
    pub config: ServerConfig,
    /// The database, for reads and writes.
    db: Client,
    /// The database, for lease requests (a short deadline: a lease request that waits longer
    /// than the TTL is useless).
    lease_db: Client,
    /// The configuration in memory.
    pub shared: Arc<Shared>,
    role: Mutex<RoleState>,
    /// Held by the writer while a batch is in flight (a graceful stop waits for it).
    write_lock: tokio::sync::Mutex<()>,
    /// Writes waiting for the writer.
    jobs: mpsc::Sender<Job>,
    /// The writer's end, taken by [`Node::write_loop`].
    job_rx: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Announces role changes (for waits and status).
    role_changed: watch::Sender<Role>,
}

impl Node {
    /// A node that has not started its tasks yet.
    pub fn new(mut config: ServerConfig) -> Result<Arc<Node>, ClientError> {
        config.lease_ttl_ms = config.lease_ttl_ms.max(100);
        config.history_max_records = config.history_max_records.max(1);
        config.log_keep_records = config.log_keep_records.max(config.history_max_records as u64);
        let ttl = Duration::from_millis(config.lease_ttl_ms);
        let db = Client::new(
            config.db_endpoints.clone(),
            ClientOptions {
                tls: config.db_tls.clone(),
                deadline: Duration::from_secs(5),
                attempt_timeout: Duration::from_secs(3),
                ..ClientOptions::default()
            },
        )?;
        let lease_db = Client::new(
            config.db_endpoints.clone(),
            ClientOptions {
                tls: config.db_tls.clone(),
                deadline: (ttl / 2).max(Duration::from_millis(200)),
                attempt_timeout: (ttl / 2).max(Duration::from_millis(200)),
                ..ClientOptions::default()
            },
        )?;
        let (role_changed, _) = watch::channel(Role::Starting);
        let (jobs, job_rx) = mpsc::channel(4 * BATCH_JOBS_MAX);
        Ok(Arc::new(Node {
            shared: Shared::new(config.history_max_records),
            config,
            db,
            lease_db,
            role: Mutex::new(RoleState {
                role: Role::Starting,
                holder: None,
                renewed_at: Instant::now(),
                last_step_down: None,
            }),
            write_lock: tokio::sync::Mutex::new(()),
            jobs,
            job_rx: Mutex::new(Some(job_rx)),
            role_changed,
        }))
    }

    /// The database client.
    pub fn db(&self) -> &Client {
        &self.db
    }

    fn role_state(&self) -> std::sync::MutexGuard<'_, RoleState> {
        self.role.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role_state().role.clone()
    }

    /// A receiver of role changes.
    pub fn role_changes(&self) -> watch::Receiver<Role> {
        self.role_changed.subscribe()
    }

    /// What this server writes as the lease holder.
    pub fn holder(&self) -> String {
        format!("{}@{}", self.config.name, self.config.advertise)
    }

    /// The lease holder as last seen, and why this server last stepped down.
    pub fn lease_view(&self) -> (Option<String>, Option<String>) {
        let role = self.role_state();
        (role.holder.clone(), role.last_step_down.clone())
    }

    /// The primary's address, as far as this server knows.
    pub fn primary_addr(&self) -> Option<String> {
        let role = self.role_state();
        match role.role {
            Role::Primary { .. } => Some(self.config.advertise.clone()),
            _ => role
                .holder
                .as_deref()
                .and_then(|h| h.rsplit_once('@'))
                .map(|(_, addr)| addr.to_owned())
                .filter(|addr| *addr != self.config.advertise),
        }
    }

    fn set_role(&self, role: Role) {
        let mut state = self.role_state();
        state.role = role.clone();
        drop(state);
        self.role_changed.send_replace(role);
    }

    /// Stops acting as primary at once, saying why.
    pub fn step_down(&self, reason: &str) {
        let mut state = self.role_state();
        if !matches!(state.role, Role::Primary { .. }) {
            return;
        }
        warn!(reason, "stepping down: no longer the primary configuration server");
        state.role = Role::Backup;
        state.holder = None;
        state.last_step_down = Some(reason.to_owned());
        drop(state);
        self.role_changed.send_replace(Role::Backup);
    }

    pub(crate) fn not_primary(&self) -> CfgError {
        CfgError::NotPrimary {
            primary: self.primary_addr(),
        }
    }

    // ----- writes -----

    /// Plans a write on the current state with `plan` and commits it (see the module
    /// documentation). `Ok(None)` when the plan changes nothing. A `request_id` already in the
    /// history (of the same person) is answered with the records it committed, not applied again.
    ///
    /// The write waits for the writer task ([`Node::write_loop`]), which may commit it in one
    /// database transaction with other writes (group commit).
    pub async fn commit(
        &self,
        caller: &Caller,
        request_id: &str,
        op: String,
        plan: impl Fn(&State, &mut Dbids) -> Result<Vec<What>, CfgError> + Send + Sync + 'static,
    ) -> Result<Option<Committed>, CfgError> {
        let stopping = || CfgError::Unavailable("the server is stopping; nothing was written".into());
        let (reply, answer) = oneshot::channel();
        let job = Job {
            caller: caller.clone(),
            request_id: request_id.to_owned(),
            op,
            plan: Box::new(plan),
            reply,
        };
        self.jobs.send(job).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// The writer: takes the waiting writes in batches, plans each on the state (and the DBIDs
    /// taken by those before it), and commits every batch as one database transaction.
    ///
    /// **Group commit.** Writes that change only objects of the common types (not tenants,
    /// folders, persons or access groups, on which permissions and validation of everything
    /// else depend, and not the mode) share a transaction when their footprints are disjoint:
    /// none changes an object (or takes a name) another one changes or refers to. Each was then
    /// validated on the same state and none can affect another's validity, so the batch is
    /// equivalent to the writes one after the other. A write that conflicts waits for the next
    /// batch; a refused write is answered at once (refused on a committed state).
    pub async fn write_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let receiver = self.job_rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut receiver) = receiver else { return };
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            if waiting.is_empty() {
                let job = tokio::select! {
                    job = receiver.recv() => job,
                    _ = shutdown.changed() => None,
                };
                match job {
                    Some(job) => waiting.push_back(job),
                    None => return,
                }
            }
            while waiting.len() < BATCH_JOBS_MAX {
                match receiver.try_recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => break,
                }
            }
            let batch: Vec<Job> = waiting.drain(..).collect();
            let _guard = self.write_lock.lock().await;
            waiting.extend(self.write_batch(batch).await);
        }
    }

    /// Plans and commits one batch; returns the writes deferred to the next one.
    async fn write_batch(&self, batch: Vec<Job>) -> Vec<Job> {
        let Role::Primary { token } = self.role() else {
            for job in batch {
                let _ = job.reply.send(Err(self.not_primary()));
            }
            return Vec::new();
        };
        let mut accepted: Vec<(Job, Vec<What>)> = Vec::new();
        let mut deferred: Vec<Job> = Vec::new();
        let (seq0, seq_version, last_dbid) = {
            let state = self.shared.read();
            if !state.loaded {
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(CfgError::Unavailable("the configuration is still loading".into())));
                }
                return Vec::new();
            }
            let mut dbids = state.last_dbid.clone();
            let mut footprint = Footprint::default();
            let (mut solo, mut changes, mut bytes) = (false, 0usize, 0usize);
            for job in batch {
                if let Some(done) = answered(&state, &job) {
                    let _ = job.reply.send(Ok(Some(done)));
                    continue;
                }
                let mut trial = dbids.clone();
                let whats = match (job.plan)(&state, &mut trial) {
                    Ok(whats) if whats.is_empty() => {
                        let _ = job.reply.send(Ok(None));
                        continue;
                    }
                    Ok(whats) => whats,
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                        continue;
                    }
                };
                let job_solo = whats.iter().any(is_solo);
                let job_footprint = Footprint::of(&whats);
                let job_bytes = estimate_bytes(&whats);
                let fits = accepted.is_empty()
                    || (!solo
                        && !job_solo
                        && !footprint.conflicts(&job_footprint)
                        && changes + whats.len() <= self.config.changes_per_write_max
                        && bytes + job_bytes <= TXN_BYTES_MAX / 2);
                if !fits {
                    deferred.push(job);
                    continue;
                }
                solo |= job_solo;
                changes += whats.len();
                bytes += job_bytes;
                footprint.add(job_footprint);
                dbids = trial;
                accepted.push((job, whats));
            }
            (state.seq, state.seq_key_version, state.last_dbid.clone())
        };
        if accepted.is_empty() {
            return deferred;
        }
        if let [(_, whats)] = accepted.as_slice() {
            if whats.len() > self.config.changes_per_write_max {
                let e = CfgError::TooLarge(format!(
                    "the write makes {} changes; one write may make at most {} (split it)",
                    whats.len(),
                    self.config.changes_per_write_max
                ));
                for (job, _) in accepted {
                    let _ = job.reply.send(Err(e.clone()));
                }
                return deferred;
            }
        }

        let write_id: u64 = rand::thread_rng().gen();
        let when_ms = now_ms();
        let writer = format!("{}#{token}", self.config.name);
        let mut records: Vec<LogRecord> = Vec::new();
        let mut spans: Vec<(Job, usize, usize)> = Vec::new();
        for (job, whats) in accepted {
            let first = seq0 + records.len() as u64 + 1;
            let last = first + whats.len() as u64 - 1;
            let who = Who {
                person: job.caller.person.0,
                user: job.caller.user.clone(),
            };
            let from = records.len();
            for (i, what) in whats.into_iter().enumerate() {
                records.push(LogRecord {
                    seq: first + i as u64,
                    txn_first: first,
                    txn_last: last,
                    when_ms,
                    who: who.clone(),
                    op: job.op.clone(),
                    write_id,
                    request_id: job.request_id.clone(),
                    writer: writer.clone(),
                    what,
                    cached: Default::default(),
                });
            }
            spans.push((job, from, records.len()));
        }
        let last = seq0 + records.len() as u64;
        let outcome = match self.transaction(token, seq_version, last, &records, &last_dbid) {
            Ok(txn) => self.send_write(token, seq_version, txn, records).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Some(committed)) => {
                for (job, from, to) in spans {
                    let records = committed.records[from..to].to_vec();
                    let _ = job.reply.send(Ok(Some(Committed { records })));
                }
            }
            Ok(None) => {
                for (job, _, _) in spans {
                    let _ = job.reply.send(Ok(None));
                }
            }
            Err(e) => {
                for (job, _, _) in spans {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
        deferred
    }

    /// Sends a write's transaction and interprets the answer.
    async fn send_write(
        &self,
        token: u64,
        seq_version: u64,
        txn: Txn,
        records: Vec<LogRecord>,
    ) -> Result<Option<Committed>, CfgError> {
        match self.db.txn(txn).await {
            Ok(TxnOutcome::Committed { versions, .. }) => {
                let seq_version = versions.first().copied().unwrap_or(0);
                self.apply_own(&records, seq_version);
                Ok(Some(Committed { records }))
            }
            Ok(TxnOutcome::CompareFailed { key, expected, actual }) => {
                warn!(
                    key,
                    expected, actual, "write refused by compare-and-set: this server is behind"
                );
                Err(CfgError::Unavailable(
                    "this server was catching up with the database; nothing was written, retry".into(),
                ))
            }
            Ok(TxnOutcome::Fenced { reason }) => {
                self.step_down(&format!(
                    "the database refused a write with a stale fencing token: {reason}"
                ));
                Err(self.not_primary())
            }
            Err(ClientError::OutcomeUnknown { reason }) => {
                warn!(reason, "write of unknown outcome: settling it before anything else");
                self.settle(token, seq_version, records).await
            }
            Err(ClientError::Refused(status)) if status.code() == tonic::Code::InvalidArgument => Err(
                CfgError::TooLarge(format!("the database refused the write: {}", status.message())),
            ),
            Err(e) => Err(CfgError::Unavailable(format!("database: {e}"))),
        }
    }

    /// The transaction of a write: compare-and-set on the number, the fencing token, the
    /// counters of DBIDs allocated, the objects, the records, the mode.
    fn transaction(
        &self,
        token: u64,
        seq_version: u64,
        last: u64,
        records: &[LogRecord],
        last_dbid: &BTreeMap<ObjectType, u64>,
    ) -> Result<Txn, CfgError> {
        let mut txn = Txn::new()
            .compare(keys::SEQ, seq_version)
            .put(keys::SEQ, last.to_string())
            .fence(token);
        let mut bytes = 64usize;
        let mut items = 2usize;
        let mut counters: BTreeMap<ObjectType, u64> = BTreeMap::new();
        for record in records {
            if let What::Created { object } = &record.what {
                if object.dbid > last_dbid.get(&object.object_type).copied().unwrap_or(0) {
                    let counter = counters.entry(object.object_type).or_insert(0);
                    *counter = (*counter).max(object.dbid);
                }
            }
        }
        for (object_type, dbid) in counters {
            txn = txn.put(keys::dbid_counter(object_type), dbid.to_string());
            items += 1;
        }
        let too_large = |what: String| CfgError::TooLarge(what);
        for record in records {
            match &record.what {
                What::Created { object } | What::Changed { object, .. } => {
                    let value = serde_json::to_vec(object).unwrap_or_default();
                    if value.len() > VALUE_BYTES_MAX {
                        return Err(too_large(format!(
                            "{} {:?} takes {} bytes stored; the limit is {VALUE_BYTES_MAX}",
                            object.object_type,
                            object.name,
                            value.len()
                        )));
                    }
                    bytes += value.len();
                    txn = txn.put(keys::object(object.object_type, object.dbid), value);
                }
                What::Deleted { previous } => {
                    txn = txn.delete(keys::object(previous.object_type, previous.dbid));
                }
                What::Mode { mode, .. } => {
                    txn = txn.put(keys::MODE, mode.name());
                }
            }
            let value = serde_json::to_vec(record).unwrap_or_default();
            if value.len() > VALUE_BYTES_MAX {
                return Err(too_large(format!(
                    "record {} takes {} bytes; the limit is {VALUE_BYTES_MAX}",
                    record.seq,
                    value.len()
                )));
            }
            bytes += value.len();
            items += 2;
            txn = txn.put(keys::log(record.seq), value);
        }
        if bytes > TXN_BYTES_MAX || items > TXN_ITEMS_MAX {
            return Err(too_large(format!(
                "the write needs a transaction of {bytes} bytes and {items} items; the database takes \
                 at most {TXN_BYTES_MAX} bytes and {TXN_ITEMS_MAX} items (split it)"
            )));
        }
        Ok(txn)
    }

    fn apply_own(&self, records: &[LogRecord], seq_version: u64) {
        if let Err(e) = self.shared.apply_records(records.to_vec(), seq_version) {
            // The change feed brings the same records; a state that cannot take them is reloaded
            // by the follower.
            warn!(error = %e, "cannot apply a committed write to the state in memory");
        }
    }

    /// Settles a write whose answer was lost: a fenced barrier transaction that expects the
    /// number unchanged is ordered after it in the database's log. If the barrier commits, the
    /// write was not applied and never will be; if the number moved, the record at the write's
    /// first number tells whether it was this write.
    async fn settle(
        &self,
        token: u64,
        seq_version: u64,
        records: Vec<LogRecord>,
    ) -> Result<Option<Committed>, CfgError> {
        let Some(first) = records.first() else {
            return Ok(None);
        };
        let (first_seq, write_id) = (first.seq, first.write_id);
        for attempt in 0..SETTLE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let barrier = Txn::new()
                .compare(keys::SEQ, seq_version)
                .put(keys::BARRIER, write_id.to_string())
                .fence(token);
            let fenced = match self.db.txn(barrier).await {
                Ok(TxnOutcome::Committed { .. }) => {
                    info!(write_id, "settled: the write was not applied");
                    return Err(CfgError::Unavailable(
                        "the database lost the write while failing over; nothing was written, retry".into(),
                    ));
                }
                Ok(TxnOutcome::CompareFailed { .. }) => false,
                Ok(TxnOutcome::Fenced { .. }) => true,
                Err(e) => {
                    warn!(error = %e, attempt, "cannot settle a write of unknown outcome yet");
                    continue;
                }
            };
            let found = match store::read_record(&self.db, first_seq).await {
                Ok(found) => found,
                Err(e) => {
                    warn!(error = %e, attempt, "cannot read back a write of unknown outcome yet");
                    continue;
                }
            };
            let ours = found.is_some_and(|r| r.write_id == write_id);
            if ours {
                let version = self.db.get(keys::SEQ).await.ok().flatten().map_or(0, |kv| kv.version);
                // The feed may have brought later records already; take the version only if
                // nothing followed.
                let version = if version == seq_version + 1 { version } else { 0 };
                self.apply_own(&records, version);
                info!(write_id, "settled: the write was applied");
            }
            if fenced {
                self.step_down("the database refused a write with a stale fencing token while settling a write");
            }
            return match (ours, fenced) {
                (true, _) => Ok(Some(Committed { records })),
                (false, true) => Err(self.not_primary()),
                // The write expected a number that had already moved: it was refused, and this
                // server's state is behind; the change feed brings it up to date.
                (false, false) => Err(CfgError::Unavailable(
                    "this server was catching up with the database; nothing was written, retry".into(),
                )),
            };
        }
        Err(CfgError::OutcomeUnknown(
            "the database did not answer; the write may or may not be applied".into(),
        ))
    }

    // ----- background tasks -----

    /// Loads the configuration and follows the change feed until `shutdown`; reloads whenever
    /// the feed cannot be continued.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut pause = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let loaded = tokio::select! {
                loaded = store::load(&self.db, self.config.history_max_records) => loaded,
                _ = shutdown.changed() => return,
            };
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    warn!(error = %e, "cannot load the configuration yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            let mut loaded = loaded;
            self.link_epochs(&mut loaded.state).await;
            info!(
                seq = loaded.state.seq,
                objects = loaded.state.set.len(),
                revision = loaded.state.revision,
                epoch = loaded.state.epoch,
                "configuration loaded"
            );
            if let Err(e) = loaded.state.set.check_all() {
                warn!(error = %e, "the stored configuration breaks a validation rule");
            }
            self.shared.replace(loaded.state);
            if self.role() == Role::Starting {
                self.set_role(Role::Backup);
            }
            let mut watch = loaded.watch;
            if let Err(e) = store::apply_events(&self.shared, loaded.pending) {
                warn!(error = %e, "cannot apply the change feed; reloading");
                continue;
            }
            let mut epoch_check = tokio::time::interval(EPOCH_CHECK_INTERVAL);
            epoch_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            epoch_check.tick().await;
            loop {
                let next = tokio::select! {
                    next = watch.next() => next,
                    _ = epoch_check.tick() => {
                        // A replica of an older epoch may keep its feed open (and quiet) while a
                        // newer epoch has begun elsewhere.
                        let followed = self.shared.read().epoch;
                        if let Ok(Ok(now)) = tokio::time::timeout(EPOCH_CHECK_TIMEOUT, self.db_epoch()).await {
                            if now > followed {
                                warn!(
                                    followed_epoch = followed,
                                    database_epoch = now,
                                    "the database changed epoch under this server: reloading the whole configuration"
                                );
                                break;
                            }
                        }
                        continue;
                    }
                    _ = shutdown.changed() => return,
                };
                match next {
                    Some(Ok(events)) => {
                        if let Err(e) = store::apply_events(&self.shared, events) {
                            warn!(error = %e, "cannot apply the change feed; reloading");
                            break;
                        }
                    }
                    Some(Err(ClientError::Compacted { .. })) => {
                        warn!("the change feed no longer reaches back to this server's state; reloading");
                        break;
                    }
                    ended => {
                        if let Some(Err(e)) = ended {
                            info!(error = %e, "change feed interrupted; resuming");
                        }
                        match self.resume_watch(&mut shutdown).await {
                            Some(Ok(resumed)) => watch = resumed,
                            Some(Err(())) => break,
                            None => return,
                        }
                    }
                }
            }
        }
    }

    /// Before a state loaded in a new database epoch replaces the one held: whether the new
    /// history continues the old one (the record at the old last number is the same write), in
    /// which case numbers of the old epoch up to there keep their meaning
    /// ([`State::continued`]); otherwise subscribers and proxies of the old history must reload.
    async fn link_epochs(&self, loaded: &mut State) {
        let (previous_epoch, previous_seq, previous_last, mut continued) = {
            let state = self.shared.read();
            (
                state.epoch,
                state.seq,
                state.ring.back().cloned(),
                state.continued.clone(),
            )
        };
        if previous_epoch == 0 || previous_epoch == loaded.epoch {
            return;
        }
        let same_write = |r: &LogRecord| {
            previous_last
                .as_ref()
                .is_some_and(|p| p.seq == r.seq && p.write_id == r.write_id)
        };
        let continues = if previous_seq == 0 {
            true
        } else if loaded.seq < previous_seq {
            false
        } else if let Some(found) = loaded.ring.iter().find(|r| r.seq == previous_seq) {
            same_write(found)
        } else {
            matches!(store::read_record(&self.db, previous_seq).await, Ok(Some(r)) if same_write(&r))
        };
        if continues {
            for upto in continued.values_mut() {
                *upto = (*upto).min(previous_seq);
            }
            continued.insert(previous_epoch, previous_seq);
            loaded.continued = continued;
            warn!(
                previous_epoch,
                epoch = loaded.epoch,
                previous_seq,
                seq = loaded.seq,
                "configuration reloaded in a new database epoch whose history continues this server's: subscribers \
                 and proxies go on"
            );
        } else {
            warn!(
                previous_epoch,
                epoch = loaded.epoch,
                previous_seq,
                seq = loaded.seq,
                objects = loaded.set.len(),
                "configuration reloaded in a new database epoch whose history replaced this server's (a forced \
                 recovery dropped what it served): subscribers and proxies of the old history must reload"
            );
        }
    }

    /// The epoch of the database's primary now.
    async fn db_epoch(&self) -> Result<u64, ClientError> {
        let primary = self.db.discover().await?;
        Ok(self.db.status(&primary).await?.epoch)
    }

    /// Opens the change feed again after the revision followed so far, once the database is
    /// known to be in the epoch that revision belongs to. `None` on shutdown, `Some(Err)` when
    /// the state must be reloaded: the feed no longer reaches back, or the database changed
    /// epoch (a revision of the older epoch may lie in a tail the new epoch dropped, or be
    /// beyond where the new epoch started: it says nothing in the new one).
    async fn resume_watch(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Result<tandem_client::Watch, ()>> {
        loop {
            let (revision, followed) = {
                let state = self.shared.read();
                (state.revision, state.epoch)
            };
            let epoch = tokio::select! {
                epoch = self.db_epoch() => epoch,
                _ = shutdown.changed() => return None,
            };
            match epoch {
                Ok(now) if now != followed => {
                    warn!(
                        followed_epoch = followed,
                        database_epoch = now,
                        revision,
                        "the database changed epoch under this server: reloading the whole configuration instead of \
                         resuming the change feed by revision"
                    );
                    return Some(Err(()));
                }
                Ok(_) => {}
                Err(e) => {
                    info!(error = %e, "cannot learn the database's epoch yet; the change feed resumes once it is known");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => return None,
                    }
                    continue;
                }
            }
            let attempt = tokio::select! {
                attempt = self.db.watch(keys::PREFIX, revision) => attempt,
                _ = shutdown.changed() => return None,
            };
            match attempt {
                Ok(watch) => return Some(Ok(watch)),
                Err(ClientError::Compacted { .. }) => {
                    warn!(revision, "the change feed no longer reaches back; reloading");
                    return Some(Err(()));
                }
                Err(e) => {
                    info!(error = %e, "cannot resume the change feed yet");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => return None,
                    }
                }
            }
        }
    }

    /// Competes for the lease and keeps it while held, until `shutdown`; then releases it.
    pub async fn hold_office(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let ttl = Duration::from_millis(self.config.lease_ttl_ms);
        // A kill leaves the lease running for TTL minus the time since its last renewal: a third
        // of the TTL between renewals keeps three tries per TTL and a takeover of 2/3 to 3/3 TTL.
        let renew_every = ttl / 3;
        let retry_every = (ttl / 10).clamp(LEASE_ASK_PAUSE_MIN, Duration::from_millis(500));
        let mut last_error_logged: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.role() {
                Role::Starting => {
                    tokio::select! {
                        _ = tokio::time::sleep(retry_every) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                Role::Backup => {
                    let sent_at = Instant::now();
                    let mut pause = retry_every;
                    match self
                        .lease_db
                        .lease_grant(keys::LEASE_NAME, &self.holder(), self.config.lease_ttl_ms)
                        .await
                    {
                        Ok(grant) if grant.granted => self.take_office(grant.token, sent_at).await,
                        Ok(grant) => {
                            // Ask again as the holder's lease runs out if that comes first (by
                            // the database's clock as this host reads its own; a wrong guess
                            // only costs a refused request).
                            // Never sooner than `LEASE_ASK_PAUSE_MIN`: a clock far ahead of the
                            // database's must not turn this into a stream of requests.
                            let left = Duration::from_millis(grant.expires_at_ms.saturating_sub(now_ms()));
                            pause = pause.min(left + LEASE_EXPIRY_MARGIN).max(LEASE_ASK_PAUSE_MIN);
                            let mut role = self.role_state();
                            if role.holder.as_deref() != Some(grant.holder.as_str()) {
                                info!(holder = grant.holder, "the master lease is held by the primary");
                            }
                            role.holder = Some(grant.holder);
                        }
                        Err(e) => {
                            if last_error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                                warn!(error = %e, "cannot ask the database for the master lease");
                                last_error_logged = Some(Instant::now());
                            }
                        }
                    }
                    if self.role() == Role::Backup {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed() => break,
                        }
                    }
                }
                Role::Primary { token } => {
                    tokio::select! {
                        _ = tokio::time::sleep(renew_every) => {}
                        _ = shutdown.changed() => break,
                    }
                    if self.role() != (Role::Primary { token }) {
                        continue;
                    }
                    let sent_at = Instant::now();
                    match self.lease_db.lease_keep_alive(token).await {
                        Ok(Some(_)) => self.role_state().renewed_at = sent_at,
                        Ok(None) => self.step_down("the master lease expired or was taken over (keep-alive refused)"),
                        Err(e) => {
                            let since = self.role_state().renewed_at.elapsed();
                            if since >= ttl {
                                self.step_down(&format!(
                                    "the master lease could not be renewed for {} ms: {e}",
                                    since.as_millis()
                                ));
                            } else {
                                warn!(error = %e, "cannot renew the master lease yet");
                            }
                        }
                    }
                }
            }
        }
        // A graceful stop hands the lease over at once.
        if let Role::Primary { token } = self.role() {
            let _guard = self.write_lock.lock().await;
            self.set_role(Role::Backup);
            match self.lease_db.lease_revoke(token).await {
                Ok(()) => info!(token, "released the master lease"),
                Err(e) => warn!(error = %e, "cannot release the master lease; it expires by itself"),
            }
        }
    }

    /// Becomes primary with a granted lease: catches up with every committed change first (or
    /// gives the lease back), then bootstraps an empty database.
    async fn take_office(&self, token: u64, sent_at: Instant) {
        let ttl = Duration::from_millis(self.config.lease_ttl_ms);
        let caught_up = async {
            let target = self
                .db
                .get(keys::SEQ)
                .await
                .map_err(|e| e.to_string())?
                .map_or(0, |kv| kv.version);
            let mut applied = self.shared.applied();
            loop {
                if self.shared.read().seq_key_version >= target {
                    return Ok(());
                }
                if applied.changed().await.is_err() {
                    return Err("the state is gone".to_owned());
                }
            }
        };
        let outcome = match tokio::time::timeout(ttl.max(Duration::from_secs(2)), caught_up).await {
            Ok(outcome) => outcome,
            Err(_) => Err("timed out".to_owned()),
        };
        if let Err(reason) = outcome {
            warn!(
                reason,
                "cannot catch up with the database after winning the lease; giving it back"
            );
            let _ = self.lease_db.lease_revoke(token).await;
            return;
        }
        {
            let mut role = self.role_state();
            role.renewed_at = sent_at;
            role.holder = Some(self.holder());
        }
        self.set_role(Role::Primary { token });
        let (seq, objects) = {
            let state = self.shared.read();
            (state.seq, state.set.len())
        };
        info!(
            token,
            seq, objects, "became the primary configuration server (master lease granted)"
        );
        if let Err(e) = self.ensure_bootstrap(token).await {
            warn!(error = %e, "cannot bootstrap the configuration");
        }
    }

    /// Creates the session key and, on an empty configuration with a bootstrap administrator
    /// configured, the environment tenant, the administrator and the Super Administrators.
    async fn ensure_bootstrap(&self, token: u64) -> Result<(), CfgError> {
        if self.shared.read().session_key.is_none() {
            let key = crate::auth::new_session_key();
            let txn = Txn::new()
                .compare(keys::SESSION_KEY, 0)
                .put(keys::SESSION_KEY, hex::encode(&key))
                .fence(token);
            match self.db.txn(txn).await {
                Ok(TxnOutcome::Committed { .. }) => {
                    info!("created the session key");
                    self.shared.update(|s| s.session_key = Some(key));
                }
                Ok(other) => info!(?other, "session key not created (another server did, or fenced)"),
                Err(e) => return Err(CfgError::Unavailable(e.to_string())),
            }
        }
        let empty = {
            let state = self.shared.read();
            state.seq == 0 && state.set.is_empty()
        };
        let Some(bootstrap) = self.config.bootstrap.clone().filter(|_| empty) else {
            if empty {
                warn!("the configuration is empty and no bootstrap administrator was given: nobody can log in");
            }
            return Ok(());
        };
        let objects = tandem_config::access::bootstrap_with_hash(&bootstrap.admin_user, &bootstrap.password_hash);
        tandem_config::access::set_from_bootstrap(objects.clone())?;
        let committed = self
            .commit(&Caller::server(), "", "bootstrap".into(), move |state, _| {
                if state.seq != 0 || !state.set.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(objects.iter().cloned().map(|object| What::Created { object }).collect())
            })
            .await?;
        if committed.is_some() {
            info!(admin = bootstrap.admin_user, "bootstrapped an empty configuration");
        }
        Ok(())
    }

    /// Removes, on the primary, the records beyond the kept count or older than the history's
    /// age, every `retention_interval`, until `shutdown`.
    pub async fn retain(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.retention_interval) => {}
                _ = shutdown.changed() => return,
            }
            if let Role::Primary { token } = self.role() {
                if let Err(e) = self.retain_once(token).await {
                    info!(error = %e, "retention deferred");
                }
            }
        }
    }

    async fn retain_once(&self, token: u64) -> Result<(), CfgError> {
        let db_err = |e: store::StoreError| CfgError::Unavailable(e.to_string());
        let (seq, mut first) = {
            let state = self.shared.read();
            (state.seq, state.log_first)
        };
        let by_count = seq.saturating_sub(self.config.log_keep_records) + 1;
        let cutoff_ms = now_ms().saturating_sub(self.config.history_max_age_ms);
        let mut by_age = first;
        // Records are in commit order, so their times (nearly) are: find the first young one.
        if first <= seq {
            let old = |r: &Option<LogRecord>| r.as_ref().is_none_or(|r| r.when_ms < cutoff_ms);
            if old(&store::read_record(&self.db, first).await.map_err(db_err)?) {
                let (mut low, mut high) = (first, seq + 1);
                while low + 1 < high {
                    let mid = low + (high - low) / 2;
                    if old(&store::read_record(&self.db, mid).await.map_err(db_err)?) {
                        low = mid;
                    } else {
                        high = mid;
                    }
                }
                by_age = high;
            }
        }
        let target = by_count.max(by_age).min(seq + 1);
        while first < target {
            let batch = (target - first).min(500);
            let version = self
                .db
                .get(keys::LOG_FIRST)
                .await
                .map_err(|e| CfgError::Unavailable(e.to_string()))?
                .map_or(0, |kv| kv.version);
            let mut txn = Txn::new()
                .compare(keys::LOG_FIRST, version)
                .put(keys::LOG_FIRST, (first + batch).to_string())
                .fence(token);
            for s in first..first + batch {
                txn = txn.delete(keys::log(s));
            }
            match self.db.txn(txn).await {
                Ok(TxnOutcome::Committed { .. }) => {
                    first += batch;
                    self.shared.update(|s| s.log_first = s.log_first.max(first));
                    info!(kept_from = first, "retention removed old records");
                }
                Ok(TxnOutcome::Fenced { reason }) => {
                    self.step_down(&format!(
                        "the database refused retention with a stale fencing token: {reason}"
                    ));
                    return Ok(());
                }
                Ok(TxnOutcome::CompareFailed { .. }) => return Ok(()),
                Err(e) => return Err(CfgError::Unavailable(e.to_string())),
            }
        }
        Ok(())
    }
}

/// Most writes waiting at once that one batch considers.
const BATCH_JOBS_MAX: usize = 256;

/// How a write's plan is given to the writer.
pub type PlanFn = Box<dyn Fn(&State, &mut Dbids) -> Result<Vec<What>, CfgError> + Send + Sync>;

/// A write waiting for the writer.
struct Job {
    caller: Caller,
    request_id: String,
    op: String,
    plan: PlanFn,
    reply: oneshot::Sender<Result<Option<Committed>, CfgError>>,
}

/// The records a request already committed, if it is sent again (same person, same id) while
/// the history holds it.
fn answered(state: &State, job: &Job) -> Option<Committed> {
    if job.request_id.is_empty() {
        return None;
    }
    let records: Vec<LogRecord> = state
        .ring
        .iter()
        .filter(|r| r.request_id == job.request_id && r.who.person == job.caller.person.0)
        .map(|r| (**r).clone())
        .collect();
    if records.is_empty() {
        return None;
    }
    info!(
        request_id = job.request_id,
        "request sent again: answered from the history, not applied twice"
    );
    Some(Committed { records })
}

/// Whether a change must be committed alone: the types everything else's permissions and
/// validation depend on, and the mode.
fn is_solo(what: &What) -> bool {
    match what {
        What::Mode { .. } => true,
        What::Created { object } | What::Changed { object, .. } | What::Deleted { previous: object } => matches!(
            object.object_type,
            ObjectType::Tenant | ObjectType::Folder | ObjectType::Person | ObjectType::AccessGroup
        ),
    }
}

/// A rough size of a write's share of a transaction (object and record).
fn estimate_bytes(whats: &[What]) -> usize {
    whats
        .iter()
        .map(|w| 3 * serde_json::to_vec(w).map_or(0, |v| v.len()) + 512)
        .sum()
}

/// What a write changes and what it relies on.
#[derive(Default)]
struct Footprint {
    /// Objects changed, and names taken or freed: `(type, tenant, name)`.
    touched: BTreeSet<FootKey>,
    /// Objects referred to by the objects written.
    referenced: BTreeSet<FootKey>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum FootKey {
    Object(ObjectType, u64),
    Name(ObjectType, u64, String),
}

impl Footprint {
    fn of(whats: &[What]) -> Footprint {
        let mut fp = Footprint::default();
        for what in whats {
            match what {
                What::Created { object } => fp.write(object),
                What::Changed { object, previous } => {
                    fp.write(object);
                    fp.touched.insert(FootKey::Name(
                        previous.object_type,
                        previous.tenant,
                        previous.name.clone(),
                    ));
                }
                What::Deleted { previous } => {
                    fp.touched.insert(FootKey::Object(previous.object_type, previous.dbid));
                    fp.touched.insert(FootKey::Name(
                        previous.object_type,
                        previous.tenant,
                        previous.name.clone(),
                    ));
                }
                What::Mode { .. } => {}
            }
        }
        fp
    }

    fn write(&mut self, object: &ConfigObject) {
        self.touched.insert(FootKey::Object(object.object_type, object.dbid));
        self.touched
            .insert(FootKey::Name(object.object_type, object.tenant, object.name.clone()));
        self.referenced
            .insert(FootKey::Object(ObjectType::Tenant, object.tenant));
        self.referenced
            .insert(FootKey::Object(ObjectType::Folder, object.folder));
        for field in schema::spec(object.object_type).reference_fields() {
            let target = field.kind.target().unwrap_or(ObjectType::Folder);
            match object.fields.get(field.name) {
                Some(Value::Ref(d)) => {
                    self.referenced.insert(FootKey::Object(target, *d));
                }
                Some(Value::RefList(list)) => {
                    self.referenced.extend(list.iter().map(|d| FootKey::Object(target, *d)));
                }
                Some(Value::Grants(grants)) => {
                    self.referenced.extend(
                        grants
                            .iter()
                            .filter_map(|g| g.folder)
                            .map(|f| FootKey::Object(ObjectType::Folder, f)),
                    );
                }
                _ => {}
            }
        }
    }

    fn conflicts(&self, other: &Footprint) -> bool {
        other
            .touched
            .iter()
            .any(|k| self.touched.contains(k) || self.referenced.contains(k))
            || other.referenced.iter().any(|k| self.touched.contains(k))
    }

    fn add(&mut self, other: Footprint) {
        self.touched.extend(other.touched);
        self.referenced.extend(other.referenced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(dbid: u64, name: &str, switch: u64) -> ConfigObject {
        ConfigObject::new(ObjectType::Dn, dbid, name, 1)
            .with_field("switch", Value::Ref(switch))
            .with_field("number", name)
    }

    #[test]
    fn footprints_conflict_on_shared_objects_names_and_references() {
        let a = Footprint::of(&[What::Created {
            object: dn(1, "1001", 7),
        }]);
        let b = Footprint::of(&[What::Created {
            object: dn(2, "1002", 7),
        }]);
        assert!(!a.conflicts(&b), "two DNs of one switch are independent");
        let same_name = Footprint::of(&[What::Created {
            object: dn(3, "1001", 8),
        }]);
        assert!(a.conflicts(&same_name), "two objects taking one name");
        let switch = ConfigObject::new(ObjectType::Switch, 7, "sw", 1);
        let delete_switch = Footprint::of(&[What::Deleted { previous: switch }]);
        assert!(
            a.conflicts(&delete_switch) && delete_switch.conflicts(&a),
            "a DN of a deleted switch"
        );
        let mut moved = dn(1, "1001", 9);
        moved.version = 2;
        let update = Footprint::of(&[What::Changed {
            object: moved,
            previous: dn(1, "1001", 7),
        }]);
        assert!(a.conflicts(&update), "two writes of one object");
        assert!(is_solo(&What::Created {
            object: ConfigObject::new(ObjectType::Folder, 1, "f", 1)
        }));
        assert!(!is_solo(&What::Created { object: dn(1, "1", 1) }));
    }
}
