//! The Configuration Server Proxy (`tandem confserv --mode proxy`): a server at each site that
//! holds a copy of the configuration (all of it, or some tenants) and serves the same client
//! API as a master, so that the site's applications keep working while no master can be
//! reached.
//!
//! - **Link.** [`Proxy::follow`] asks every master it was given which one is the primary (each
//!   again and again, on its own, so that an unreachable one holds up no other), logs in at
//!   the first that says so as a Super Administrator and opens `Replicate`: a snapshot (objects
//!   with their password hashes, the mode, the session key, the recent history) or, when the
//!   master's history covers the gap, only the records after the proxy's last number; then live
//!   records and a heartbeat every interval. A snapshot comes in parts of a few megabytes
//!   (`ReplicateMessage.more`), so no message nears the link's limit whatever the
//!   configuration's size; each part is parsed as it comes and the whole built at the end, on
//!   the blocking pool, while the old copy keeps serving, then swapped in at once.
//! - **Modes.** Attached, the proxy is in *normal* mode. When nothing arrived from the master
//!   for the heartbeat timeout — never by waiting on TCP, and whatever the search for a master
//!   is doing then (it is never cut short) — it enters *limited* mode: reads,
//!   subscriptions and logins are served from memory, writes are refused at once
//!   ([`CfgError::LimitedMode`]). Every subscriber hears of each change of mode, after the
//!   records it missed.
//! - **Writes.** [`Proxy::forward`] sends a write to the primary master with the client's own
//!   session and request id (so permissions and the audit are the client's, and a write sent
//!   again is not applied twice), and answers only once the proxy has applied the write's last
//!   record itself: a client reads its own writes.
//!
//! Notification numbers are the master's, so a subscription moves freely between proxies and
//! masters.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tandem_config::{ConfigObject, ConfigSet};
use tandem_proto::confserv::{self as pb, conf_serv_client::ConfServClient, error_kind};
use tandem_tls::{ChannelCache, TlsFiles};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::client::ConfError;
use crate::error::CfgError;
use crate::node::now_ms;
use crate::record::{LogRecord, Mode};
use crate::state::{Link, LinkMode, Scope, Shared, State};

/// The defaults of `tandem confserv --mode proxy`.
pub mod defaults {
    /// How often the master sends a heartbeat on the link.
    pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
    /// Silence on the link after which the master is lost.
    pub const HEARTBEAT_TIMEOUT_MS: u64 = 2_500;
    /// Longest pause between two questions to one master while looking for the primary (a
    /// question is cheap, and a master that becomes primary should be found at once), and
    /// between two attempts to attach to one that said it was.
    pub const RECONNECT_PAUSE_MAX_MS: u64 = 250;
    /// How long a forwarded write may take, waiting for a master included.
    pub const FORWARD_DEADLINE_MS: u64 = 10_000;
}

/// Timeout of one question to a master while looking for the primary.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest message on the link (a snapshot is one message).
const LINK_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How a proxy runs.
#[derive(Clone)]
pub struct ProxyConfig {
    /// This proxy's name (status).
    pub name: String,
    /// The address clients reach it at.
    pub advertise: String,
    /// Every master that may ever be the primary (both sites' pairs).
    pub masters: Vec<String>,
    /// The Super Administrator the proxy logs in as.
    pub user: String,
    /// Their password.
    pub password: String,
    /// TLS of this proxy's service and of its links to the masters.
    pub tls: TlsFiles,
    /// How often the master is asked to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which the master is lost.
    pub heartbeat_timeout: Duration,
    /// Only these tenants (and the environment); empty = the whole configuration.
    pub tenants: Vec<String>,
    /// Records a reconnecting client can catch up from.
    pub history_max_records: usize,
    /// Age beyond which records no longer serve a catch-up.
    pub history_max_age_ms: u64,
    /// How long a session token issued here is valid.
    pub session_ttl_ms: u64,
    /// The largest request accepted, in bytes.
    pub request_bytes_max: usize,
    /// How long a forwarded write may take.
    pub forward_deadline: Duration,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("name", &self.name)
            .field("advertise", &self.advertise)
            .field("masters", &self.masters)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("tenants", &self.tenants)
            .finish_non_exhaustive()
    }
}

impl ProxyConfig {
    /// A configuration with the defaults.
    pub fn new(name: &str, advertise: &str, masters: Vec<String>, user: &str, password: &str) -> ProxyConfig {
        use crate::node::defaults as master;
        ProxyConfig {
            name: name.to_owned(),
            advertise: advertise.to_owned(),
            masters,
            user: user.to_owned(),
            password: password.to_owned(),
            tls: TlsFiles::default(),
            heartbeat_interval: Duration::from_millis(defaults::HEARTBEAT_INTERVAL_MS),
            heartbeat_timeout: Duration::from_millis(defaults::HEARTBEAT_TIMEOUT_MS),
            tenants: Vec::new(),
            history_max_records: master::HISTORY_MAX_RECORDS,
            history_max_age_ms: master::HISTORY_DAYS * 24 * 3600 * 1000,
            session_ttl_ms: master::SESSION_TTL_MS,
            request_bytes_max: master::REQUEST_BYTES_MAX,
            forward_deadline: Duration::from_millis(defaults::FORWARD_DEADLINE_MS),
        }
    }
}

/// What a forwarded call answers: the last notification number it took (0 = none), which the
/// proxy applies before answering.
pub trait Answer {
    /// The last number the call took.
    fn last_seq(&self) -> u64;
}

impl Answer for pb::WriteResponse {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl Answer for pb::ImportResponse {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

impl Answer for pb::AuditResponse {
    fn last_seq(&self) -> u64 {
        0
    }
}

/// An open replication link.
struct Attached {
    master: String,
    stream: Streaming<pb::ReplicateMessage>,
}

/// Why a proxy is not attached to a master, kept up to date by the search for one and read when
/// limited mode begins.
struct Unattached(Mutex<String>);

impl Unattached {
    fn new(reason: &str) -> Self {
        Unattached(Mutex::new(reason.to_owned()))
    }

    fn set(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = reason.into();
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The pause between two tries while looking for the primary master: 50 ms, doubling up to
/// [`defaults::RECONNECT_PAUSE_MAX_MS`].
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(50))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(defaults::RECONNECT_PAUSE_MAX_MS));
    }
}

/// One proxy.
pub struct Proxy {
    /// How it runs.
    pub config: ProxyConfig,
    /// The configuration in memory, and the link as subscribers see it.
    pub shared: Arc<Shared>,
    /// Channels to the masters.
    channels: ChannelCache,
}

impl Proxy {
    /// A proxy that has not started following yet.
    pub fn new(mut config: ProxyConfig) -> Result<Arc<Proxy>, tandem_tls::TlsError> {
        config.history_max_records = config.history_max_records.max(1);
        config.heartbeat_interval = config.heartbeat_interval.max(Duration::from_millis(50));
        config.heartbeat_timeout = config.heartbeat_timeout.max(config.heartbeat_interval);
        let channels = ChannelCache::new(config.tls.client()?);
        let shared = Shared::new(config.history_max_records);
        shared.set_link(Link {
            mode: LinkMode::Starting,
            reason: "no master reached yet".into(),
            since_ms: now_ms(),
            master: None,
        });
        Ok(Arc::new(Proxy {
            config,
            shared,
            channels,
        }))
    }

    fn stub(&self, addr: &str) -> Result<ConfServClient<Channel>, String> {
        let channel = self
            .channels
            .channel(addr)
            .map_err(|e| format!("bad master address {addr:?}: {e}"))?;
        Ok(ConfServClient::new(channel)
            .max_decoding_message_size(LINK_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(LINK_MESSAGE_BYTES_MAX))
    }

    // ----- the link -----

    /// Finds the primary master, loads from it and follows it, again and again, until `stop`.
    pub async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_heard = Instant::now();
        let mut snapshot_needed = true;
        // Why no master is attached: said when limited mode begins.
        let unattached = Unattached::new("no master reached yet");
        loop {
            if *stop.borrow() {
                return;
            }
            // Limited mode begins when the heartbeat timeout ends, whatever the search for the
            // primary is doing then; the search itself is never cut short (a snapshot of a large
            // configuration may take longer than the timeout to arrive).
            let silence_over = tokio::time::sleep_until((last_heard + self.config.heartbeat_timeout).into());
            let attaching = self.attach_with_retries(snapshot_needed, &unattached);
            tokio::pin!(silence_over, attaching);
            let mut silent = false;
            let mut attached = loop {
                tokio::select! {
                    attached = &mut attaching => break attached,
                    _ = &mut silence_over, if !silent => {
                        silent = true;
                        let reason = unattached.get();
                        self.enter_limited(&format!(
                            "no master reachable for {} ms: {reason}",
                            last_heard.elapsed().as_millis()
                        ));
                    }
                    _ = stop.changed() => return,
                }
            };
            snapshot_needed = false;
            last_heard = Instant::now();
            let was = self.shared.link_now();
            let since_ms = if was.mode == LinkMode::Normal {
                was.since_ms
            } else {
                now_ms()
            };
            if was.mode == LinkMode::Limited {
                warn!(master = attached.master, "master reached again: back to normal mode");
            }
            self.shared.set_link(Link {
                mode: LinkMode::Normal,
                reason: format!("attached to the primary master {}", attached.master),
                since_ms,
                master: Some(attached.master.clone()),
            });
            let timeout = self.config.heartbeat_timeout;
            let lost = loop {
                let next = tokio::select! {
                    next = tokio::time::timeout(timeout, attached.stream.message()) => next,
                    _ = stop.changed() => return,
                };
                match next {
                    Ok(Ok(Some(message))) => {
                        last_heard = Instant::now();
                        if let Err(e) = self.apply(message) {
                            snapshot_needed = true;
                            break format!("cannot apply what master {} sent ({e}); reloading", attached.master);
                        }
                    }
                    Ok(Ok(None)) => break format!("master {} ended the link", attached.master),
                    Ok(Err(status)) => {
                        let e = ConfError::from_status(&status);
                        snapshot_needed |= e.is(error_kind::RELOAD_REQUIRED);
                        break format!("link to master {} failed: {e}", attached.master);
                    }
                    Err(_) => {
                        let reason = format!(
                            "nothing heard from master {} for {} ms (heartbeat timeout)",
                            attached.master,
                            timeout.as_millis()
                        );
                        self.enter_limited(&reason);
                        break reason;
                    }
                }
            };
            warn!(
                reason = lost,
                "lost the primary master; looking for it on every master address"
            );
            let link = self.shared.link_now();
            self.shared.set_link(Link {
                master: None,
                reason: lost.clone(),
                ..link
            });
            unattached.set(lost);
        }
    }

    /// Finds the primary master and attaches to it, trying again after a pause for as long as
    /// it takes; `unattached` says why it has not yet.
    async fn attach_with_retries(&self, snapshot_needed: bool, unattached: &Unattached) -> Attached {
        let mut pause = Backoff::new();
        loop {
            let master = self.find_primary(unattached).await;
            match self.attach(master, snapshot_needed).await {
                Ok(attached) => return attached,
                Err(reason) => unattached.set(reason),
            }
            pause.wait().await;
        }
    }

    /// The address of the first master that says it is primary. Every master is asked again
    /// and again, each on its own (after a pause that grows to
    /// [`defaults::RECONNECT_PAUSE_MAX_MS`]), so that one that cannot be reached (a destroyed
    /// site), whose question takes a whole [`PROBE_TIMEOUT`], holds up no other: a master that
    /// becomes primary is found within a pause. `unattached` is kept saying what each master
    /// last answered.
    async fn find_primary(&self, unattached: &Unattached) -> String {
        if self.config.masters.is_empty() {
            unattached.set("no master address is configured");
            return std::future::pending().await;
        }
        let answers: Mutex<BTreeMap<&str, String>> = Mutex::new(BTreeMap::new());
        let asks = self.config.masters.iter().map(|addr| {
            let answers = &answers;
            Box::pin(async move {
                let mut pause = Backoff::new();
                loop {
                    let answer = match self.probe(addr).await {
                        Ok(role) if role == "primary" => return addr.clone(),
                        Ok(role) => role,
                        Err(e) => e,
                    };
                    let seen = {
                        let mut answers = answers.lock().unwrap_or_else(PoisonError::into_inner);
                        answers.insert(addr, answer);
                        let seen: Vec<String> = answers.iter().map(|(addr, a)| format!("{addr}: {a}")).collect();
                        seen.join("; ")
                    };
                    unattached.set(format!("no master is primary ({seen})"));
                    pause.wait().await;
                }
            })
        });
        let (primary, _, _) = futures::future::select_all(asks).await;
        primary
    }

    /// What the master at `addr` says its role is, within [`PROBE_TIMEOUT`].
    async fn probe(&self, addr: &str) -> Result<String, String> {
        let mut stub = self.stub(addr)?;
        let mut request = Request::new(pb::StatusRequest {});
        request.set_timeout(PROBE_TIMEOUT);
        match tokio::time::timeout(PROBE_TIMEOUT, stub.status(request)).await {
            Ok(Ok(status)) => Ok(status.into_inner().role),
            Ok(Err(status)) => Err(ConfError::from_status(&status).to_string()),
            Err(_) => Err("no answer".to_owned()),
        }
    }

    fn enter_limited(&self, reason: &str) {
        let link = self.shared.link_now();
        if link.mode == LinkMode::Limited {
            return;
        }
        if link.mode == LinkMode::Starting && !self.shared.read().loaded {
            // Nothing to serve yet: it stays starting.
            return;
        }
        warn!(
            reason,
            "entering limited mode: reads and subscriptions continue, writes are refused"
        );
        self.shared.set_link(Link {
            mode: LinkMode::Limited,
            reason: reason.to_owned(),
            since_ms: now_ms(),
            master: None,
        });
    }

    /// Attaches to `master` (which said it was primary): logs in there, opens the replication
    /// and applies its first message (all of a snapshot's parts).
    async fn attach(&self, master: String, snapshot_needed: bool) -> Result<Attached, String> {
        let mut stub = self.stub(&master)?;
        let mut login = Request::new(pb::LoginRequest {
            user: self.config.user.clone(),
            password: self.config.password.clone(),
            tenant: String::new(),
        });
        login.set_timeout(self.config.heartbeat_timeout.max(PROBE_TIMEOUT));
        let token = stub
            .login(login)
            .await
            .map_err(|s| format!("cannot log in at master {master}: {}", ConfError::from_status(&s)))?
            .into_inner()
            .token;
        let (after_seq, epoch, after_write_id) = {
            let state = self.shared.read();
            let after_seq = (state.loaded && !snapshot_needed).then_some(state.seq);
            let write_id = state
                .ring
                .back()
                .filter(|r| Some(r.seq) == after_seq)
                .map_or(0, |r| r.write_id);
            (after_seq, state.epoch, write_id)
        };
        // The master answers a resume in another epoch (its history replaced by a forced
        // recovery of the database) with a snapshot.
        let mut request = Request::new(pb::ReplicateRequest {
            after_seq,
            epoch,
            after_write_id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            snapshot_in_parts: true,
        });
        let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| format!("bad token: {e}"))?;
        request.metadata_mut().insert(pb::AUTHORIZATION_KEY, bearer);
        let timeout = self.config.heartbeat_timeout;
        let mut stream = match tokio::time::timeout(timeout, stub.replicate(request)).await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                return Err(format!(
                    "master {master} refused replication: {}",
                    ConfError::from_status(&status)
                ))
            }
            Err(_) => return Err(format!("master {master} did not answer the replication request")),
        };
        // A snapshot may be large: give it the time a heartbeat would take, then some.
        let first = match tokio::time::timeout(timeout * 2, stream.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => return Err(format!("master {master} ended the link at once")),
            Ok(Err(status)) => return Err(format!("link to master {master}: {}", ConfError::from_status(&status))),
            Err(_) => return Err(format!("master {master} sent nothing on the link")),
        };
        if first.kind != "snapshot" {
            let kind = first.kind.clone();
            self.apply(first)
                .map_err(|e| format!("cannot apply what master {master} sent: {e}"))?;
            info!(
                master,
                kind,
                seq = self.shared.read().seq,
                "attached to the primary master"
            );
            return Ok(Attached { master, stream });
        }
        // A snapshot: each part's objects are parsed as it comes (its JSON then dropped), and
        // the whole built at the end, all on the blocking pool, so that this proxy's async
        // workers keep serving from the old copy meanwhile.
        let mut more = first.more;
        let (header, mut objects) = parse_part(first).await.map_err(|e| format!("master {master}: {e}"))?;
        let mut parts = 1;
        while more {
            // Each part is given the time the first was (a part is up to a few megabytes).
            let part = match tokio::time::timeout(timeout * 2, stream.message()).await {
                Ok(Ok(Some(part))) => part,
                Ok(Ok(None)) => {
                    return Err(format!(
                        "master {master} ended the link after {parts} part(s) of its snapshot"
                    ))
                }
                Ok(Err(status)) => return Err(format!("link to master {master}: {}", ConfError::from_status(&status))),
                Err(_) => {
                    return Err(format!(
                        "master {master} sent no further part of its snapshot for {} ms (after {parts})",
                        (timeout * 2).as_millis()
                    ))
                }
            };
            check_snapshot_part(&header, &part).map_err(|e| format!("master {master}: {e}"))?;
            more = part.more;
            let (_, more_objects) = parse_part(part).await.map_err(|e| format!("master {master}: {e}"))?;
            // One vector grown part by part: a vector this large lives in a block of its own,
            // which the allocator gives back as soon as it is freed (parts kept apart and joined
            // at the end held on to their memory: 70 MB more at the peak at 1,000,000 objects).
            objects.extend(more_objects);
            parts += 1;
        }
        let tenants = self.config.tenants.clone();
        let state = tokio::task::spawn_blocking(move || snapshot_state(&tenants, header, objects))
            .await
            .map_err(|e| format!("building the snapshot's state failed: {e}"))?
            .map_err(|e| format!("cannot apply what master {master} sent: {e}"))?;
        self.install(state);
        info!(
            master,
            kind = "snapshot",
            parts,
            seq = self.shared.read().seq,
            "attached to the primary master"
        );
        Ok(Attached { master, stream })
    }

    /// Swaps `state` (a snapshot's) in for the copy this proxy serves.
    fn install(&self, state: State) {
        let (seq, objects, epoch) = (state.seq, state.set.len(), state.epoch);
        let previous_epoch = self.shared.read().epoch;
        if previous_epoch != 0 && previous_epoch != epoch {
            warn!(
                previous_epoch,
                epoch, seq, "the master's history changed epoch: replaced this proxy's copy with its snapshot"
            );
        }
        self.shared.replace(state);
        info!(
            seq,
            objects, epoch, "loaded the configuration from a snapshot (swapped in at once)"
        );
    }

    /// Applies one message of the link.
    fn apply(&self, message: pb::ReplicateMessage) -> Result<(), String> {
        match message.kind.as_str() {
            // A snapshot opens a link (`attach`) and comes nowhere else.
            "snapshot" => Err("a snapshot came after the link was open".into()),
            "records" => {
                // The master sends records of a new epoch only when its history continues the
                // one this copy holds (otherwise it ends the link and sends a snapshot).
                self.shared.update(|s| {
                    if s.epoch != message.epoch {
                        if s.epoch != 0 {
                            let (old, seq) = (s.epoch, s.seq);
                            s.continued.insert(old, seq);
                        }
                        s.epoch = message.epoch;
                    }
                });
                let records = parse_records(&message.records_json)?;
                self.shared.apply_records(records, 0).map_err(|e| e.to_string())?;
                Ok(())
            }
            "heartbeat" => Ok(()),
            other => Err(format!("unknown message kind {other:?}")),
        }
    }

    // ----- writes -----

    /// Forwards a write (or an audit read) to the primary master with the client's own session
    /// and answers once this proxy has applied what it took. Refused at once in limited mode.
    pub async fn forward<T, R, F, Fut>(&self, request: Request<T>, call: F) -> Result<Response<R>, Status>
    where
        T: Clone,
        R: Answer,
        F: Fn(ConfServClient<Channel>, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let authorization = request.metadata().get(pb::AUTHORIZATION_KEY).cloned();
        let message = request.into_inner();
        let deadline = Instant::now() + self.config.forward_deadline;
        let mut link = self.shared.link();
        loop {
            let now = link.borrow_and_update().clone();
            if now.mode == LinkMode::Limited {
                return Err(CfgError::LimitedMode {
                    reason: now.reason,
                    since_ms: now.since_ms,
                }
                .into());
            }
            let Some(master) = now.master else {
                // Between two masters: wait for the link to say more, until the deadline.
                let waited = tokio::time::timeout_at(deadline.into(), link.changed()).await;
                if !matches!(waited, Ok(Ok(()))) {
                    return Err(CfgError::Unavailable(format!(
                        "this proxy has no master to forward the write to right now ({}); nothing was written",
                        now.reason
                    ))
                    .into());
                }
                continue;
            };
            let stub = self.stub(&master).map_err(CfgError::Unavailable)?;
            let mut forwarded = Request::new(message.clone());
            forwarded.set_timeout(deadline.saturating_duration_since(Instant::now()).max(PROBE_TIMEOUT));
            if let Some(value) = authorization.clone() {
                forwarded.metadata_mut().insert(pb::AUTHORIZATION_KEY, value);
            }
            match call(stub, forwarded).await {
                Ok(response) => {
                    self.wait_applied(response.get_ref().last_seq(), deadline).await?;
                    return Ok(response);
                }
                Err(status) => {
                    let e = ConfError::from_status(&status);
                    let retry = e.is(error_kind::NOT_PRIMARY)
                        || e.is(crate::client::UNREACHABLE)
                        || e.is(error_kind::UNAVAILABLE);
                    if !retry || Instant::now() >= deadline {
                        return Err(without_primary_hint(status));
                    }
                    // Nothing was written: wait until the link has moved (or a moment), then again.
                    let _ = tokio::time::timeout(Duration::from_millis(200), link.changed()).await;
                }
            }
        }
    }

    /// Waits until this proxy has applied `seq`.
    async fn wait_applied(&self, seq: u64, deadline: Instant) -> Result<(), CfgError> {
        let mut applied = self.shared.applied();
        let waited = tokio::time::timeout_at(deadline.into(), applied.wait_for(|s| *s >= seq)).await;
        if matches!(waited, Ok(Ok(_))) {
            return Ok(());
        }
        Err(CfgError::OutcomeUnknown(format!(
            "the master committed the write (notification {seq}) but this proxy has not received it yet; send it again \
             (it is not applied twice)"
        )))
    }
}

/// A master's refusal as the proxy's own: without the primary's address, which the proxy's
/// clients must not chase (they talk to proxies).
fn without_primary_hint(mut status: Status) -> Status {
    status.metadata_mut().remove(pb::PRIMARY_ADDR_KEY);
    status
}

/// A whole new state from a snapshot (its first part's `header`, every part's `objects`), built
/// aside while the old one keeps serving; only the objects of `tenants` are kept when some are
/// named. Blocking: a million objects take seconds.
fn snapshot_state(
    tenants: &[String],
    header: pb::ReplicateMessage,
    mut objects: Vec<ConfigObject>,
) -> Result<State, String> {
    let mut scope = (!tenants.is_empty()).then(|| Scope::new(tenants.iter().cloned()));
    if let Some(scope) = scope.as_mut() {
        // Tenants first, so that the scope knows their DBIDs before it sees their objects.
        for tenant in objects
            .iter()
            .filter(|o| o.object_type == tandem_config::ObjectType::Tenant)
        {
            scope.holds(tenant);
        }
    }
    let mut state = State::default();
    // The objects held are kept where they are: at 1,000,000 objects a copy of them all is
    // over 150 MB.
    objects.retain(|obj| {
        let last = state.last_dbid.entry(obj.object_type).or_insert(0);
        *last = (*last).max(obj.dbid);
        scope.as_mut().is_none_or(|s| s.holds(obj))
    });
    state.set = ConfigSet::from_objects(objects).map_err(|e| format!("snapshot refused: {e}"))?;
    state.seq = header.seq;
    state.epoch = header.epoch;
    state.mode = header.mode.parse::<Mode>()?;
    state.session_key = (!header.session_key.is_empty()).then_some(header.session_key);
    let mut ring = parse_records(&header.records_json)?;
    ring.retain(|r| r.seq <= header.seq);
    // Where the master's history begins, before the records of other tenants are left out.
    state.scope_floor = ring.first().map_or(header.seq, |r| r.seq - 1);
    if let Some(scope) = scope.as_mut() {
        ring.retain(|r| r.object().is_none_or(|o| scope.holds(o)));
    }
    state.ring = ring.into_iter().map(Arc::new).collect();
    state.log_first = 1;
    state.scope = scope;
    state.loaded = true;
    Ok(state)
}

/// Parses the objects of one part of a snapshot on the blocking pool; returns the part without
/// them (the first part's header) and the objects.
async fn parse_part(mut part: pb::ReplicateMessage) -> Result<(pb::ReplicateMessage, Vec<ConfigObject>), String> {
    let json = std::mem::take(&mut part.objects_json);
    let objects = tokio::task::spawn_blocking(move || {
        json.iter()
            .map(|json| serde_json::from_str(json).map_err(|e| format!("bad object in a snapshot: {e}")))
            .collect::<Result<Vec<ConfigObject>, String>>()
    })
    .await
    .map_err(|e| format!("parsing a part of the snapshot failed: {e}"))??;
    Ok((part, objects))
}

/// Checks that `part` is a further part of the snapshot whose first part is `first` (see
/// `ReplicateMessage.more`).
pub(crate) fn check_snapshot_part(first: &pb::ReplicateMessage, part: &pb::ReplicateMessage) -> Result<(), String> {
    if part.kind != "snapshot" {
        return Err(format!(
            "a {:?} message came before the last part of the snapshot",
            part.kind
        ));
    }
    if (part.seq, part.epoch) != (first.seq, first.epoch) {
        return Err(format!(
            "a part of another snapshot (number {} of epoch {}) came with the one at number {} of epoch {}",
            part.seq, part.epoch, first.seq, first.epoch
        ));
    }
    Ok(())
}

fn parse_records(list: &[String]) -> Result<Vec<LogRecord>, String> {
    list.iter()
        .map(|json| serde_json::from_str(json).map_err(|e| format!("bad record: {e}")))
        .collect()
}
