//! The `ConfServ` gRPC service of both kinds of server: authentication, reads from the state in
//! memory (filtered by the caller's rights, secrets removed), and subscriptions (history from the
//! ring, then live records from the broadcast channel) are the same on a master and a proxy;
//! writes go through [`Node::commit`] on a master and are forwarded by [`Proxy::forward`] on a
//! proxy. A master also serves `Replicate`, the feed proxies load and follow.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tandem_config::access::{self, Principal, Right};
use tandem_config::document::{self, Document};
use tandem_config::{
    password, schema, ConfigError, ConfigObject, Delta, ObjectKey, ObjectType, PageItems, Query, State as ObjState,
};
use tandem_proto::confserv::{self as pb, conf_serv_server::ConfServ};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::error::CfgError;
use crate::node::{now_ms, Caller, Committed, Node, Role};
use crate::plan::{self, ImportReport};
use crate::proxy::Proxy;
use crate::record::{to_json, LogRecord, Mode, What};
use crate::state::{resumable_in, Link, Opened, Scope, Shared, State};
use crate::store;
use crate::{auth, keys};

/// Notifications buffered per subscriber before the server waits for it.
const SUBSCRIBER_BUFFER: usize = 256;
/// How long a subscription that resumes after a number this server has not reached yet waits
/// for it (a backup a little behind the primary).
const AHEAD_WAIT: Duration = Duration::from_secs(3);
/// Logins hashing at once (argon2 is deliberately expensive).
const LOGINS_AT_ONCE: usize = 2;
/// Most audit records per answer.
const AUDIT_LIMIT_MAX: usize = 1000;
/// Most log blocks one audit request reads.
const AUDIT_BLOCKS_MAX: u64 = 10;

/// Bounds of the heartbeat interval a proxy may ask for.
const HEARTBEAT_MS_MIN: u64 = 50;
/// See [`HEARTBEAT_MS_MIN`].
const HEARTBEAT_MS_MAX: u64 = 60_000;
/// Objects per part of a snapshot sent to a proxy, in bytes of JSON (see
/// `ReplicateMessage.more`): far below the link's message limit, and small enough that a part
/// crosses a slow WAN link well within a heartbeat timeout.
const SNAPSHOT_PART_BYTES: usize = 4 * 1024 * 1024;

/// What a server is: what its writes and status come from.
#[derive(Clone)]
pub enum Backend {
    /// A master: writes through the database.
    Master(Arc<Node>),
    /// A proxy: writes forwarded to the primary master.
    Proxy(Arc<Proxy>),
}

/// The service of one server.
pub struct Service {
    /// The configuration in memory.
    shared: Arc<Shared>,
    backend: Backend,
    /// How long a session token issued here is valid.
    session_ttl_ms: u64,
    /// Age beyond which records no longer serve a catch-up.
    history_max_age_ms: u64,
    /// Bounds concurrent password checks.
    logins: Semaphore,
    /// Ends subscriptions at shutdown.
    stop: watch::Receiver<bool>,
}

impl Service {
    /// The service of a master's `node`; subscriptions end when `stop` turns true.
    pub fn new(node: Arc<Node>, stop: watch::Receiver<bool>) -> Self {
        Service {
            shared: node.shared.clone(),
            session_ttl_ms: node.config.session_ttl_ms,
            history_max_age_ms: node.config.history_max_age_ms,
            backend: Backend::Master(node),
            logins: Semaphore::new(LOGINS_AT_ONCE),
            stop,
        }
    }

    /// The service of a proxy; subscriptions end when `stop` turns true.
    pub fn proxy(proxy: Arc<Proxy>, stop: watch::Receiver<bool>) -> Self {
        Service {
            shared: proxy.shared.clone(),
            session_ttl_ms: proxy.config.session_ttl_ms,
            history_max_age_ms: proxy.config.history_max_age_ms,
            backend: Backend::Proxy(proxy),
            logins: Semaphore::new(LOGINS_AT_ONCE),
            stop,
        }
    }

    /// What the metrics of this server read.
    pub fn metrics_source(&self) -> crate::metrics::Source {
        crate::metrics::Source::new(self.shared.clone(), self.backend.clone())
    }

    fn is_proxy(&self) -> bool {
        matches!(self.backend, Backend::Proxy(_))
    }

    fn opener(&self) -> Opener {
        Opener {
            shared: self.shared.clone(),
            history_max_age_ms: self.history_max_age_ms,
            proxy: self.is_proxy(),
            stop: self.stop.clone(),
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, CfgError> {
        let token = request
            .metadata()
            .get(pb::AUTHORIZATION_KEY)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_owned())
            .ok_or_else(|| CfgError::Unauthenticated("no session token: log in first".into()))?;
        let state = self.shared.read();
        let key = state
            .session_key
            .as_ref()
            .ok_or_else(|| CfgError::Unavailable("this server does not know the session key yet".into()))?;
        let person = auth::verify(key, &token, now_ms()).map_err(|e| CfgError::Unauthenticated(e.into()))?;
        match (state.set.get(ObjectType::Person, person), &state.scope) {
            (Some(p), _) if p.state == ObjState::Enabled => Ok(Caller {
                person: Principal(person),
                user: p.str_field("user_name").unwrap_or(&p.name).to_owned(),
            }),
            (None, Some(scope)) => Err(not_held(scope, format!("person {person}, whose session this is"))),
            _ => Err(CfgError::Unauthenticated(
                "the session's person no longer exists or is disabled".into(),
            )),
        }
    }
}

/// A proxy's refusal of `what`, outside the tenants it holds.
fn not_held(scope: &Scope, what: String) -> CfgError {
    CfgError::NotHeld {
        what,
        held: scope.describe(),
    }
}

/// On a proxy of some tenants, refuses a get of what it does not hold: a tenant not held, an
/// object of one (which the proxy cannot tell from an object that does not exist).
fn check_held_get(state: &State, t: ObjectType, request: &pb::GetRequest) -> Result<(), CfgError> {
    let Some(scope) = &state.scope else {
        return Ok(());
    };
    let outside = if request.dbid != 0 {
        state
            .set
            .get(t, request.dbid)
            .is_none()
            .then(|| format!("{t} {} (no tenant held has it)", request.dbid))
    } else if t == ObjectType::Tenant {
        (!scope.holds_tenant_named(&request.name)).then(|| format!("tenant {:?}", request.name))
    } else {
        (!scope.holds_tenant(request.tenant.max(1))).then(|| format!("the objects of tenant {}", request.tenant))
    };
    match outside {
        Some(what) => Err(not_held(scope, what)),
        None => Ok(()),
    }
}

/// On a proxy of some tenants, refuses a query or a subscription limited to a tenant not held.
fn check_held_tenant(state: &State, tenant: Option<u64>) -> Result<(), CfgError> {
    match (&state.scope, tenant) {
        (Some(scope), Some(t)) if t != 0 && !scope.holds_tenant(t) => {
            Err(not_held(scope, format!("the objects of tenant {t}")))
        }
        _ => Ok(()),
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> CfgError {
    CfgError::BadRequest(format!("{what}: {e}"))
}

fn object_type(name: &str) -> Result<ObjectType, CfgError> {
    name.parse::<ObjectType>().map_err(CfgError::Config)
}

fn key_of(key: ObjectKey, name: &str) -> pb::ObjectKey {
    pb::ObjectKey {
        object_type: key.0.name().to_owned(),
        dbid: key.1,
        name: name.to_owned(),
    }
}

fn write_response(committed: Option<Committed>, object: Option<ConfigObject>) -> pb::WriteResponse {
    let mut response = pb::WriteResponse {
        object_json: object.map(|o| to_json(&o.without_secrets())).unwrap_or_default(),
        ..Default::default()
    };
    if let Some(committed) = committed {
        response.first_seq = committed.first_seq();
        response.last_seq = committed.last_seq();
        for record in &committed.records {
            let Some(obj) = record.object() else { continue };
            let key = key_of(obj.key(), &obj.name);
            match record.what {
                What::Created { .. } => response.created.push(key),
                What::Changed { .. } => response.changed.push(key),
                What::Deleted { .. } => response.deleted.push(key),
                What::Mode { .. } => {}
            }
        }
    }
    response
}

/// Hashes a password off the async threads.
async fn hash(password: String) -> Result<String, CfgError> {
    tokio::task::spawn_blocking(move || password::hash_password(&password))
        .await
        .map_err(|e| CfgError::Unavailable(format!("password hashing task: {e}")))?
        .map_err(|e| CfgError::Config(ConfigError::Password(e)))
}

/// A subscription's filter.
#[derive(Clone, Debug)]
struct Filter {
    types: BTreeSet<ObjectType>,
    tenant: Option<u64>,
    dbid: Option<u64>,
}

impl Filter {
    fn from_request(request: &pb::SubscribeRequest) -> Result<Filter, CfgError> {
        let types = request
            .object_types
            .iter()
            .map(|t| object_type(t))
            .collect::<Result<BTreeSet<_>, _>>()?;
        if request.dbid.is_some() && types.len() != 1 {
            return Err(CfgError::BadRequest(
                "a subscription to one DBID needs exactly one object type".into(),
            ));
        }
        Ok(Filter {
            types,
            tenant: request.tenant,
            dbid: request.dbid,
        })
    }

    fn matches(&self, obj: &ConfigObject) -> bool {
        (self.types.is_empty() || self.types.contains(&obj.object_type))
            && self.tenant.is_none_or(|t| obj.tenant == t)
            && self.dbid.is_none_or(|d| obj.dbid == d)
    }
}

/// The records after `after` (a number of the history of `epoch`) a subscriber must replay, and
/// the number they reach; or why the history does not cover them.
async fn history_after(
    shared: &Shared,
    history_max_age_ms: u64,
    after: u64,
    epoch: u64,
) -> Result<(Vec<Arc<LogRecord>>, u64), CfgError> {
    let broken = other_epoch(&shared.read(), after, epoch);
    if let Some(e) = broken {
        return Err(e);
    }
    if after > shared.read().seq {
        let mut applied = shared.applied();
        let reached = tokio::time::timeout(AHEAD_WAIT, applied.wait_for(|seq| *seq >= after)).await;
        if !matches!(reached, Ok(Ok(_))) {
            let seq = shared.read().seq;
            return Err(CfgError::ReloadRequired {
                reason: format!("notification {after} is ahead of this server's history (it is at {seq})"),
                seq,
            });
        }
    }
    history_in(&shared.read(), history_max_age_ms, after, epoch)
}

/// `reload-required` when `after`, a number of the history of `epoch`, cannot be resumed in the
/// history held now because that is of another epoch (see [`resumable_in`]).
fn other_epoch(state: &State, after: u64, epoch: u64) -> Option<CfgError> {
    (!resumable_in(state, after, epoch)).then(|| CfgError::ReloadRequired {
        reason: format!(
            "notification {after} is of the history of epoch {epoch}, this server's is of epoch {} (a forced recovery \
             of the database replaced the history; the same numbers may carry other changes): read everything again",
            state.epoch
        ),
        seq: state.seq,
    })
}

/// Moves `epoch`, of a stream that has covered the history up to `last`, to the epoch of the
/// history held now when that history continues it; otherwise `reload-required`.
fn follow_epoch(shared: &Shared, last: u64, epoch: &mut u64) -> Option<CfgError> {
    follow_epoch_in(&shared.read(), last, epoch)
}

/// [`follow_epoch`] in `state`, already read.
fn follow_epoch_in(state: &State, last: u64, epoch: &mut u64) -> Option<CfgError> {
    let broken = other_epoch(state, last, *epoch);
    if broken.is_none() {
        *epoch = state.epoch;
    }
    broken
}

/// The records after `after` (a number of the history of `epoch`) in the history held now, and
/// the number they reach; or why the history does not cover them.
fn history_in(
    state: &State,
    history_max_age_ms: u64,
    after: u64,
    epoch: u64,
) -> Result<(Vec<Arc<LogRecord>>, u64), CfgError> {
    if let Some(e) = other_epoch(state, after, epoch) {
        return Err(e);
    }
    if after > state.seq {
        return Err(CfgError::ReloadRequired {
            reason: format!(
                "notification {after} is ahead of this server's history (it is at {})",
                state.seq
            ),
            seq: state.seq,
        });
    }
    if after >= state.seq {
        return Ok((Vec::new(), state.seq));
    }
    // The same floor as the status shows: no record after it is older than the history keeps.
    let floor = state.history_floor(now_ms().saturating_sub(history_max_age_ms));
    if after < state.ring_floor() {
        return Err(CfgError::ReloadRequired {
            reason: format!(
                "the history after notification {after} is no longer kept (it resumes after {floor}; up to {} records \
                 are kept)",
                state.ring_capacity
            ),
            seq: state.seq,
        });
    }
    if after < floor {
        return Err(CfgError::ReloadRequired {
            reason: format!(
                "the history after notification {after} is older than the history keeps (it resumes after {floor}; \
                 records are kept {history_max_age_ms} ms)"
            ),
            seq: state.seq,
        });
    }
    let records: Vec<Arc<LogRecord>> = state.ring.iter().filter(|r| r.seq > after).cloned().collect();
    Ok((records, state.seq))
}

/// A subscription's notifications, as its client reads them.
pub(crate) type NotificationStream = Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

/// A subscription's notifications, each shared with the other subscriptions it is for.
pub(crate) type SharedNotificationStream = Pin<Box<dyn Stream<Item = Result<Arc<pb::Notification>, Status>> + Send>>;

/// What opening a subscription needs, apart from the service: a `SubscribeMany` stream opens
/// subscriptions from a task of its own.
#[derive(Clone)]
pub(crate) struct Opener {
    shared: Arc<Shared>,
    history_max_age_ms: u64,
    proxy: bool,
    stop: watch::Receiver<bool>,
}

impl Opener {
    /// Opens a subscription for `caller`: checks the request, takes the history it resumes
    /// after, and returns the stream of what follows.
    pub(crate) async fn open(
        &self,
        caller: Caller,
        request: pb::SubscribeRequest,
    ) -> Result<SharedNotificationStream, Status> {
        Ok(Box::pin(self.open_feed(caller, request).await?.into_stream()))
    }

    /// The records applied from now on, for a stream-level driver of feeds (`crate::mux`).
    pub(crate) fn records(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.shared.subscribe()
    }

    /// The epoch, link and stop channels, for a stream-level driver of feeds.
    pub(crate) fn controls(&self) -> (watch::Receiver<u64>, watch::Receiver<Link>, watch::Receiver<bool>) {
        (self.shared.epochs(), self.shared.link(), self.stop.clone())
    }

    /// The last number applied.
    pub(crate) fn seq(&self) -> u64 {
        self.shared.read().seq
    }

    /// Opens a subscription as a [`Feed`] holding its replay and `live` marker.
    pub(crate) async fn open_feed(&self, caller: Caller, request: pb::SubscribeRequest) -> Result<Feed, Status> {
        let filter = Filter::from_request(&request)?;
        check_held_tenant(&self.shared.read(), filter.tenant)?;
        // Subscribe before reading the history, so that nothing falls between the two.
        let live = self.shared.subscribe();
        let link = self.shared.link();
        let mut epochs = self.shared.epochs();
        let epoch = *epochs.borrow_and_update();
        let (replay, reached) = match request.after_seq {
            Some(after) => {
                let broken = other_epoch(&self.shared.read(), after, request.epoch);
                if let Some(e) = broken {
                    info!(
                        after,
                        asked = request.epoch,
                        epoch,
                        "a subscriber resumed in another epoch: reload required"
                    );
                    return Err(e.into());
                }
                history_after(&self.shared, self.history_max_age_ms, after, epoch).await?
            }
            None => (Vec::new(), self.shared.read().seq),
        };
        let mode = link.borrow().clone();
        let feed = Feed {
            shared: self.shared.clone(),
            history_max_age_ms: self.history_max_age_ms,
            proxy: self.proxy,
            caller,
            filter,
            outbox: VecDeque::new(),
            ended: false,
            last: request.after_seq.unwrap_or(reached),
            epoch,
            live: Some(live),
            mode,
            link,
            epochs,
            stop: self.stop.clone(),
            control: None,
            offer: false,
            said_why: false,
            _open: self.shared.activity.subscribers.open(),
        };
        Ok(feed.with_replay(replay, reached))
    }
}

/// One subscription, as the stream its client reads: replays, then follows; ends when the
/// client goes away (the stream is dropped) or the server stops. It has no task of its own: the
/// connection's response task polls it, so a change reaches a subscriber without a second task
/// and a channel between the two (this is what a fan-out to thousands of subscribers costs).
///
/// On a `SubscribeMany` stream a feed may also be *attached* to the stream (see `crate::mux`):
/// it then has no broadcast receiver of its own, and the stream hands it each record.
pub(crate) struct Feed {
    shared: Arc<Shared>,
    history_max_age_ms: u64,
    /// Whether this server is a proxy (its markers and events carry the proxy's mode).
    proxy: bool,
    caller: Caller,
    filter: Filter,
    /// Made and not yet taken by the client's stream.
    outbox: VecDeque<Result<Arc<pb::Notification>, Status>>,
    /// The subscription is over: the stream ends once the outbox is empty.
    ended: bool,
    /// The last number covered (sent or filtered out).
    last: u64,
    /// The epoch of the history `last` belongs to: the subscription ends with `reload-required`
    /// when the server's history changes epoch.
    epoch: u64,
    /// The records as they are applied; `None` while attached to a stream that hands them over.
    live: Option<broadcast::Receiver<Arc<LogRecord>>>,
    link: watch::Receiver<Link>,
    /// The proxy's mode as last told to the subscriber.
    mode: Link,
    epochs: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    /// Waits for a change of epoch or link, or the stop. Kept across records: thousands of
    /// subscriptions waiting on the same three channels would otherwise each register and
    /// unregister three waiters per record.
    control: Option<futures::future::BoxFuture<'static, Wake>>,
    /// On a `SubscribeMany` stream: the feed has caught up (or just opened) and offers itself for
    /// attachment once its outbox is empty.
    offer: bool,
    /// It ended with a status of its own (else it ends saying the subscription should resume).
    said_why: bool,
    /// Counts this subscription among the open ones while it lives.
    _open: Opened,
}

/// What a feed on a `SubscribeMany` stream says.
pub(crate) enum FeedStep {
    /// A notification, or the end with its status.
    Item(Result<Arc<pb::Notification>, Status>),
    /// The feed, caught up with an empty outbox, for the stream to hand it records itself.
    Offer(Box<Feed>),
}

/// What woke a subscription up.
enum Wake {
    Records(Result<Option<Vec<Arc<LogRecord>>>, CfgError>),
    Epoch(bool),
    Link(bool),
    Stop,
}

impl Feed {
    /// Puts what `replay` holds and the `live` marker in the outbox.
    fn with_replay(mut self, replay: Vec<Arc<LogRecord>>, reached: u64) -> Feed {
        for record in replay {
            self.deliver(&record);
        }
        if !self.ended {
            self.last = self.last.max(reached);
            self.mode = self.link.borrow_and_update().clone();
            let live = self.marker(pb::notification_kind::LIVE);
            self.outbox.push_back(Ok(Arc::new(live)));
        }
        self
    }

    /// The last number covered.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Whether the subscription is over.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// Hands a record to an attached feed. One past the next it needs means records were not
    /// handed over (outside a proxy's tenants, or before a reload): it catches up from the
    /// history held now instead, which holds the record too.
    pub(crate) fn hand(&mut self, record: &LogRecord) {
        if record.seq <= self.last.saturating_add(1) {
            self.deliver(record);
            return;
        }
        let answer = history_in(&self.shared.read(), self.history_max_age_ms, self.last, self.epoch);
        match answer {
            Ok((records, reached)) => {
                for record in records {
                    self.deliver(&record);
                }
                if !self.ended {
                    self.last = self.last.max(reached);
                }
            }
            Err(e) => self.end_with(e.to_status()),
        }
    }

    /// What the feed has made since last asked.
    pub(crate) fn take_outbox(
        &mut self,
    ) -> std::collections::vec_deque::Drain<'_, Result<Arc<pb::Notification>, Status>> {
        self.outbox.drain(..)
    }

    /// Ends an attached feed because the server stops.
    pub(crate) fn stop_now(&mut self) {
        if !self.ended {
            self.end_with(CfgError::Unavailable("the server is stopping".into()).to_status());
        }
    }

    /// Whether the feed may be attached now: caught up, nothing waiting in its outbox, and no
    /// change of epoch or link it has not acted on yet (nor a stop).
    pub(crate) fn attachable(&self) -> bool {
        !self.ended
            && self.outbox.is_empty()
            && matches!(self.epochs.has_changed(), Ok(false))
            && matches!(self.link.has_changed(), Ok(false))
            && !*self.stop.borrow()
    }

    /// Attaches the feed to a stream that hands it the records: drops its own receiver.
    pub(crate) fn attach(&mut self) {
        self.live = None;
        self.control = None;
    }

    /// Detaches the feed from its stream: it follows the records by itself again, first
    /// catching up from the history (a fresh receiver misses what came before it).
    pub(crate) fn detach(mut self) -> BoxStream<'static, FeedStep> {
        self.live = Some(self.shared.subscribe());
        self.follow_alone(true, false)
    }

    /// The feed on a `SubscribeMany` stream, following the records by itself: notifications,
    /// then its end (a status; `unavailable` to resume when it ended without one). `catch_up`
    /// first reads the history after its last number; `offer`: it offers itself for attachment
    /// as soon as its outbox is empty (else after its next records).
    pub(crate) fn follow_alone(mut self, catch_up: bool, offer: bool) -> BoxStream<'static, FeedStep> {
        self.offer = offer;
        futures::stream::unfold(Some((self, catch_up)), |state| async move {
            let (mut feed, catch_up) = state?;
            if catch_up && feed.catch_up().await {
                feed.offer = true;
            }
            loop {
                if let Some(item) = feed.outbox.pop_front() {
                    return Some((FeedStep::Item(item), Some((feed, false))));
                }
                if feed.ended {
                    if feed.said_why {
                        return None;
                    }
                    let resume = Status::unavailable("the subscription ended: resume it");
                    feed.said_why = true;
                    return Some((FeedStep::Item(Err(resume)), Some((feed, false))));
                }
                if feed.offer && feed.attachable() {
                    feed.offer = false;
                    return Some((FeedStep::Offer(Box::new(feed)), None));
                }
                feed.follow().await;
            }
        })
        .boxed()
    }

    /// The stream of notifications: the outbox, then what comes.
    fn into_stream(self) -> impl Stream<Item = Result<Arc<pb::Notification>, Status>> + Send + 'static {
        futures::stream::unfold(self, |mut feed| async move {
            loop {
                if let Some(item) = feed.outbox.pop_front() {
                    return Some((item, feed));
                }
                if feed.ended {
                    return None;
                }
                feed.follow().await;
            }
        })
    }

    /// Waits for what comes next and puts what the subscriber must be told in the outbox (or
    /// ends the subscription).
    async fn follow(&mut self) {
        let control = self
            .control
            .get_or_insert_with(|| control_changes(self.epochs.clone(), self.link.clone(), self.stop.clone()));
        // Records first: a record's wake-up then costs no poll of the control channels, which
        // are looked at again once the records run dry.
        let live = self.live.get_or_insert_with(|| self.shared.subscribe());
        let wake = tokio::select! {
            biased;
            next = next_records(live, &self.shared, self.history_max_age_ms, self.last, self.epoch) => {
                Wake::Records(next)
            }
            wake = control => wake,
        };
        if !matches!(wake, Wake::Records(_)) {
            self.control = None;
        }
        match wake {
            Wake::Records(Ok(Some(records))) => {
                for record in records {
                    self.deliver(&record);
                }
                self.offer = true;
            }
            Wake::Records(Ok(None)) | Wake::Epoch(false) | Wake::Link(false) => self.ended = true,
            Wake::Records(Err(e)) => self.end_with(e.to_status()),
            // The server reloaded a history of another epoch (possibly at the same numbers):
            // this subscriber's copy may have diverged.
            Wake::Epoch(true) => {
                self.epochs.borrow_and_update();
                self.follow_epoch();
            }
            // A proxy attached (possibly after a reload that jumped the numbers) or lost its
            // master: deliver what the history holds first, then the mode.
            Wake::Link(true) => {
                if !self.catch_up().await {
                    return;
                }
                let now = self.link.borrow_and_update().clone();
                if now.mode != self.mode.mode {
                    self.mode = now;
                    let event = self.marker(pb::notification_kind::PROXY_MODE);
                    self.outbox.push_back(Ok(Arc::new(event)));
                }
            }
            Wake::Stop => self.end_with(CfgError::Unavailable("the server is stopping".into()).to_status()),
        }
    }

    /// Ends the subscription with `status` once what is in the outbox has been taken.
    fn end_with(&mut self, status: Status) {
        self.outbox.push_back(Err(status));
        self.ended = true;
        self.said_why = true;
    }

    /// Puts `record` in the outbox if the filter and the caller's rights let it through.
    fn deliver(&mut self, record: &LogRecord) {
        if self.ended || record.seq <= self.last {
            return;
        }
        // One read of the state for both checks: thousands of subscriptions do this per record.
        let visible = {
            let state = self.shared.read();
            if let Some(e) = follow_epoch_in(&state, self.last, &mut self.epoch) {
                drop(state);
                self.end_with(e.to_status());
                return;
            }
            match record.object() {
                None => true,
                Some(obj) => {
                    self.filter.matches(obj) && access::allowed(&state.set, self.caller.person, Right::Read, obj)
                }
            }
        };
        self.last = record.seq;
        if visible {
            self.outbox.push_back(Ok(record.notification_in(self.epoch)));
        }
    }

    /// Follows the server's history into a new epoch when it continues this subscription's up to
    /// the last number covered; otherwise tells the client `reload-required`, ends the
    /// subscription and answers `false`.
    fn follow_epoch(&mut self) -> bool {
        match follow_epoch(&self.shared, self.last, &mut self.epoch) {
            None => true,
            Some(e) => {
                self.end_with(e.to_status());
                false
            }
        }
    }

    /// A notification of the proxy's mode (`kind` live or proxy_mode), or a plain one on a
    /// master.
    fn marker(&self, kind: &str) -> pb::Notification {
        let mut n = pb::Notification {
            seq: self.last,
            kind: kind.into(),
            mode: self.shared.read().mode.name().into(),
            epoch: self.epoch,
            ..Default::default()
        };
        if self.proxy {
            n.proxy_mode = self.mode.mode.name().into();
            n.proxy_mode_reason = self.mode.reason.clone();
            n.proxy_mode_since_ms = self.mode.since_ms;
        }
        n
    }

    /// Replays what the history holds after the last number covered; `false` when the
    /// subscription ends (the history does not cover the gap: the client is told
    /// `reload-required`).
    async fn catch_up(&mut self) -> bool {
        match history_after(&self.shared, self.history_max_age_ms, self.last, self.epoch).await {
            Ok((records, reached)) => {
                for record in records {
                    self.deliver(&record);
                }
                if self.ended {
                    return false;
                }
                self.last = self.last.max(reached);
                true
            }
            Err(e) => {
                self.end_with(e.to_status());
                false
            }
        }
    }
}

async fn next_records(
    live: &mut broadcast::Receiver<Arc<LogRecord>>,
    shared: &Shared,
    history_max_age_ms: u64,
    last: u64,
    epoch: u64,
) -> Result<Option<Vec<Arc<LogRecord>>>, CfgError> {
    match live.recv().await {
        Ok(record) if record.seq <= last => Ok(Some(Vec::new())),
        Ok(record) if record.seq == last + 1 => Ok(Some(vec![record])),
        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
            let (records, _) = history_after(shared, history_max_age_ms, last, epoch).await?;
            Ok(Some(records))
        }
        Err(broadcast::error::RecvError::Closed) => Ok(None),
    }
}

/// Waits for the first of: a change of epoch, a change of the proxy's link, the stop. Works on
/// copies of the feed's receivers, which the feed marks seen itself once it has acted.
fn control_changes(
    mut epochs: watch::Receiver<u64>,
    mut link: watch::Receiver<Link>,
    mut stop: watch::Receiver<bool>,
) -> futures::future::BoxFuture<'static, Wake> {
    Box::pin(async move {
        tokio::select! {
            changed = epochs.changed() => Wake::Epoch(changed.is_ok()),
            changed = link.changed() => Wake::Link(changed.is_ok()),
            _ = stopped(&mut stop) => Wake::Stop,
        }
    })
}

/// Ends a stream because the server stops.
async fn say_stopping<T>(tx: &mpsc::Sender<Result<T, Status>>) {
    let _ = tx
        .send(Err(CfgError::Unavailable("the server is stopping".into()).to_status()))
        .await;
}

/// Completes when `stop` turns true.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

fn strip_document_secrets(doc: &mut Document) {
    for obj in &mut doc.objects {
        let t = obj.object_type;
        obj.fields.retain(|name, _| !schema::is_secret(t, name));
    }
}

fn import_keys(state: &crate::state::State, keys: &[ObjectKey], pending: &[What]) -> Vec<pb::ObjectKey> {
    keys.iter()
        .map(|k| {
            let name = state
                .set
                .get(k.0, k.1)
                .map(|o| o.name.clone())
                .or_else(|| {
                    pending
                        .iter()
                        .filter_map(|w| match w {
                            What::Created { object } if object.key() == *k => Some(object.name.clone()),
                            _ => None,
                        })
                        .next()
                })
                .unwrap_or_default();
            key_of(*k, &name)
        })
        .collect()
}

#[tonic::async_trait]
impl ConfServ for Service {
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let request = request.into_inner();
        let refused = || CfgError::Unauthenticated("bad user name or password".into());
        let (person, hash, key, super_admin) = {
            let state = self.shared.read();
            let key = state
                .session_key
                .clone()
                .ok_or_else(|| CfgError::Unavailable("this server does not know the session key yet".into()))?;
            let tenant_name = if request.tenant.is_empty() {
                tandem_config::model::ENVIRONMENT_TENANT_NAME
            } else {
                request.tenant.as_str()
            };
            if let Some(scope) = state.scope.as_ref().filter(|s| !s.holds_tenant_named(tenant_name)) {
                return Err(not_held(scope, format!("the logins of tenant {tenant_name:?}")).into());
            }
            let tenant = state
                .set
                .by_name(ObjectType::Tenant, 0, tenant_name)
                .ok_or_else(refused)?
                .dbid;
            let person = state
                .set
                .by_unique(ObjectType::Person, tenant, "user_name", &request.user)
                .filter(|p| p.state == ObjState::Enabled)
                .ok_or_else(refused)?;
            let hash = person.str_field("password_hash").ok_or_else(refused)?.to_owned();
            let super_admin = access::is_super_admin(&state.set, Principal(person.dbid));
            (person.dbid, hash, key, super_admin)
        };
        let _permit = self
            .logins
            .acquire()
            .await
            .map_err(|_| CfgError::Unavailable("stopping".into()))?;
        let password = request.password;
        let matches = tokio::task::spawn_blocking(move || password::verify_password(&password, &hash))
            .await
            .map_err(|e| CfgError::Unavailable(format!("password check task: {e}")))?;
        if !matches {
            info!(user = request.user, "login refused: bad user name or password");
            return Err(refused().into());
        }
        let expires_at_ms = now_ms() + self.session_ttl_ms;
        let token = auth::issue(&key, person, expires_at_ms)
            .ok_or_else(|| CfgError::Unavailable("cannot sign a session token".into()))?;
        info!(user = request.user, person, "login");
        Ok(Response::new(pb::LoginResponse {
            token,
            person,
            expires_at_ms,
            super_admin,
        }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::ObjectResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let t = object_type(&request.object_type)?;
        let state = self.shared.read();
        check_held_get(&state, t, &request)?;
        let dbid = if request.dbid != 0 {
            request.dbid
        } else {
            let tenant = if t == ObjectType::Tenant {
                0
            } else {
                request.tenant.max(1)
            };
            state.set.by_name(t, tenant, &request.name).map_or(0, |o| o.dbid)
        };
        let obj = plan::visible(&state, caller.person, t, dbid).map_err(|e| match (e, request.dbid) {
            (_, 0) => CfgError::BadRequest(format!(
                "no {t} named {:?} in tenant {} is visible to you",
                request.name, request.tenant
            )),
            (e, _) => e,
        })?;
        Ok(Response::new(pb::ObjectResponse {
            object_json: to_json(&obj.without_secrets()),
            seq: state.seq,
        }))
    }

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<pb::QueryResponse>, Status> {
        let caller = self.caller(&request)?;
        let query: Query = serde_json::from_str(&request.get_ref().query_json).map_err(|e| bad("query", e))?;
        let state = self.shared.read();
        check_held_tenant(&state, query.tenant)?;
        let mut page = access::query_as(&state.set, caller.person, &query);
        if let PageItems::Full(objects) = &mut page.items {
            for obj in objects.iter_mut() {
                if let Cow::Owned(clean) = obj.without_secrets() {
                    *obj = clean;
                }
            }
        }
        Ok(Response::new(pb::QueryResponse {
            page_json: to_json(&page),
            seq: state.seq,
        }))
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
        let node = match &self.backend {
            Backend::Master(node) => node,
            Backend::Proxy(proxy) => {
                return proxy
                    .forward(request, |mut stub, r| async move { stub.create(r).await })
                    .await
            }
        };
        let request = request.into_inner();
        let mut obj: ConfigObject = serde_json::from_str(&request.object_json).map_err(|e| bad("object", e))?;
        if !request.password.is_empty() {
            if obj.object_type != ObjectType::Person {
                return Err(CfgError::BadRequest(format!("a {} has no password", obj.object_type)).into());
            }
            let hashed = hash(request.password).await?;
            obj.fields.insert("password_hash".into(), hashed.into());
        }
        let op = format!("create {} {:?}", obj.object_type, obj.name);
        let person = caller.person;
        let committed = node
            .commit(&caller, &request.request_id, op, move |state, dbids| {
                plan::create(state, dbids, person, obj.clone())
            })
            .await?;
        let created = committed
            .as_ref()
            .and_then(|c| c.records.first())
            .and_then(|r| r.object().cloned());
        Ok(Response::new(write_response(committed, created)))
    }

    async fn update(&self, request: Request<pb::UpdateRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
        let node = match &self.backend {
            Backend::Master(node) => node,
            Backend::Proxy(proxy) => {
                return proxy
                    .forward(request, |mut stub, r| async move { stub.update(r).await })
                    .await
            }
        };
        let request = request.into_inner();
        let t = object_type(&request.object_type)?;
        let mut delta: Delta = if request.delta_json.trim().is_empty() {
            Delta::new()
        } else {
            serde_json::from_str(&request.delta_json).map_err(|e| bad("delta", e))?
        };
        if !request.password.is_empty() {
            if t != ObjectType::Person {
                return Err(CfgError::BadRequest(format!("a {t} has no password")).into());
            }
            let hashed = hash(request.password).await?;
            delta.set_fields.insert("password_hash".into(), hashed.into());
        }
        let (dbid, expected) = (request.dbid, request.expected_version);
        let op = format!("update {t} {dbid}");
        let person = caller.person;
        let committed = node
            .commit(&caller, &request.request_id, op, move |state, _| {
                plan::update(state, person, t, dbid, &delta, expected)
            })
            .await?;
        let object = match &committed {
            Some(c) => c.records.first().and_then(|r| r.object().cloned()),
            None => self.shared.read().set.get(t, dbid).cloned(),
        };
        Ok(Response::new(write_response(committed, object)))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
        let node = match &self.backend {
            Backend::Master(node) => node,
            Backend::Proxy(proxy) => {
                return proxy
                    .forward(request, |mut stub, r| async move { stub.delete(r).await })
                    .await
            }
        };
        let request = request.into_inner();
        let t = object_type(&request.object_type)?;
        let (dbid, cascade, expected) = (request.dbid, request.cascade, request.expected_version);
        let op = format!("delete {t} {dbid}{}", if cascade { " with cascade" } else { "" });
        let person = caller.person;
        let committed = node
            .commit(&caller, &request.request_id, op, move |state, _| {
                plan::delete(state, person, t, dbid, cascade, expected)
            })
            .await?;
        Ok(Response::new(write_response(committed, None)))
    }

    type SubscribeStream = NotificationStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.caller(&request)?;
        let feed = self.opener().open(caller, request.into_inner()).await?;
        Ok(Response::new(Box::pin(futures::StreamExt::map(feed, |item| {
            item.map(Arc::unwrap_or_clone)
        }))))
    }

    type SubscribeManyStream = ReceiverStream<Result<pb::SubscriptionEvent, Status>>;

    async fn subscribe_many(
        &self,
        request: Request<tonic::Streaming<pb::SubscriptionControl>>,
    ) -> Result<Response<Self::SubscribeManyStream>, Status> {
        let caller = self.caller(&request)?;
        Ok(Response::new(crate::mux::serve(
            self.opener(),
            caller,
            request.into_inner(),
        )))
    }

    async fn set_mode(&self, request: Request<pb::SetModeRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
        let node = match &self.backend {
            Backend::Master(node) => node,
            Backend::Proxy(proxy) => {
                return proxy
                    .forward(request, |mut stub, r| async move { stub.set_mode(r).await })
                    .await
            }
        };
        let mode: Mode = request.get_ref().mode.parse().map_err(CfgError::BadRequest)?;
        let person = caller.person;
        let committed = node
            .commit(
                &caller,
                &request.get_ref().request_id,
                format!("set mode {mode}"),
                move |state, _| plan::set_mode(state, person, mode),
            )
            .await?;
        if committed.is_some() {
            warn!(%mode, user = caller.user, "configuration mode switched");
        }
        Ok(Response::new(write_response(committed, None)))
    }

    async fn audit(&self, request: Request<pb::AuditRequest>) -> Result<Response<pb::AuditResponse>, Status> {
        let caller = self.caller(&request)?;
        let node = match &self.backend {
            Backend::Master(node) => node,
            // The audit trail is in the database, which only masters read.
            Backend::Proxy(proxy) => {
                return proxy
                    .forward(request, |mut stub, r| async move { stub.audit(r).await })
                    .await
            }
        };
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => 100,
            n => n.min(AUDIT_LIMIT_MAX),
        };
        let filter_type = match request.object_type.as_str() {
            "" => None,
            t => Some(object_type(t)?),
        };
        let (seq, log_first) = {
            let state = self.shared.read();
            (state.seq, state.log_first)
        };
        let mut next = request.after_seq.max(log_first.saturating_sub(1)) + 1;
        let mut found: Vec<String> = Vec::new();
        let mut blocks = 0;
        while next <= seq && found.len() < limit && blocks < AUDIT_BLOCKS_MAX {
            let block_end = (next / keys::LOG_BLOCK + 1) * keys::LOG_BLOCK - 1;
            let records = store::read_records(node.db(), next, block_end.min(seq))
                .await
                .map_err(|e| CfgError::Unavailable(e.to_string()))?;
            blocks += 1;
            let state = self.shared.read();
            let super_admin = access::is_super_admin(&state.set, caller.person);
            let mut scanned_to = block_end.min(seq);
            for record in records {
                if found.len() >= limit {
                    scanned_to = record.seq - 1;
                    break;
                }
                let visible = match record.object() {
                    None => super_admin && filter_type.is_none() && request.dbid == 0,
                    Some(obj) => {
                        filter_type.is_none_or(|t| obj.object_type == t)
                            && (request.dbid == 0 || obj.dbid == request.dbid)
                            && (super_admin || access::allowed(&state.set, caller.person, Right::Read, obj))
                    }
                };
                if visible && (request.person == 0 || record.who.person == request.person) {
                    found.push(to_json(&record.redacted()));
                }
            }
            next = scanned_to + 1;
        }
        Ok(Response::new(pb::AuditResponse {
            records_json: found,
            next_after_seq: if next <= seq { next - 1 } else { 0 },
            oldest_seq: log_first,
        }))
    }

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<pb::ExportResponse>, Status> {
        let caller = self.caller(&request)?;
        let folder = match request.get_ref().folder {
            0 => None,
            f => Some(f),
        };
        let state = self.shared.read();
        if let Some(scope) = &state.scope {
            match folder {
                None => {
                    return Err(not_held(
                        scope,
                        "the whole configuration (export a folder, or from a master)".into(),
                    )
                    .into())
                }
                Some(f) if state.set.get(ObjectType::Folder, f).is_none() => {
                    return Err(not_held(scope, format!("folder {f}")).into())
                }
                Some(_) => {}
            }
        }
        let super_admin = access::is_super_admin(&state.set, caller.person);
        if !super_admin {
            if let Some(hidden) = state
                .set
                .iter()
                .filter(|o| folder.is_none_or(|f| access::in_folder(&state.set, o, f)))
                .find(|o| !access::allowed(&state.set, caller.person, Right::Read, o))
            {
                return Err(CfgError::Permission(format!(
                    "the export would include {} {:?} (dbid {}), which you may not read",
                    hidden.object_type, hidden.name, hidden.dbid
                ))
                .into());
            }
        }
        let mut doc = document::export(&state.set, folder).map_err(CfgError::from)?;
        if !super_admin {
            strip_document_secrets(&mut doc);
        }
        Ok(Response::new(pb::ExportResponse {
            document_json: doc.to_json(),
            seq: state.seq,
        }))
    }

    async fn import(&self, request: Request<pb::ImportRequest>) -> Result<Response<pb::ImportResponse>, Status> {
        let caller = self.caller(&request)?;
        // A dry run plans on the state in memory, which must then be the whole configuration.
        let whole = self.shared.read().scope.is_none();
        let node = match &self.backend {
            Backend::Proxy(proxy) if !request.get_ref().dry_run || !whole => {
                return proxy
                    .forward(request, |mut stub, r| async move { stub.import(r).await })
                    .await
            }
            Backend::Master(node) => Some(node),
            // A dry run only plans, on the state in memory.
            Backend::Proxy(_) => None,
        };
        let request = request.into_inner();
        let doc = Document::from_json(&request.document_json).map_err(CfgError::from)?;
        let node = match node {
            Some(node) if !request.dry_run => node,
            _ => {
                let state = self.shared.read();
                let mut dbids = state.last_dbid.clone();
                let (whats, report) = plan::import(&state, &mut dbids, caller.person, &doc)?;
                return Ok(Response::new(pb::ImportResponse {
                    created: import_keys(&state, &report.created, &whats),
                    changed: import_keys(&state, &report.changed, &whats),
                    skipped: import_keys(&state, &report.skipped, &whats),
                    first_seq: 0,
                    last_seq: 0,
                }));
            }
        };
        let found: Arc<std::sync::Mutex<Option<(Vec<What>, ImportReport)>>> = Arc::default();
        let op = format!("import of {} objects", doc.objects.len());
        let person = caller.person;
        let doc = Arc::new(doc);
        let planned = found.clone();
        let committed = node
            .commit(&caller, &request.request_id, op, move |state, dbids| {
                let (whats, report) = plan::import(state, dbids, person, &doc)?;
                *planned.lock().unwrap_or_else(|p| p.into_inner()) = Some((whats.clone(), report));
                Ok(whats)
            })
            .await?;
        let (mut pending, mut report) = found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        if let (Some(c), true) = (&committed, pending.is_empty()) {
            // A request sent again: report what the first one did.
            pending = c.records.iter().map(|r| r.what.clone()).collect();
            for what in &pending {
                match what {
                    What::Created { object } => report.created.push(object.key()),
                    What::Changed { object, .. } => report.changed.push(object.key()),
                    _ => {}
                }
            }
        }
        let state = self.shared.read();
        info!(
            created = report.created.len(),
            changed = report.changed.len(),
            skipped = report.skipped.len(),
            user = caller.user,
            "import"
        );
        Ok(Response::new(pb::ImportResponse {
            created: import_keys(&state, &report.created, &pending),
            changed: import_keys(&state, &report.changed, &pending),
            skipped: import_keys(&state, &report.skipped, &pending),
            first_seq: committed.as_ref().map_or(0, Committed::first_seq),
            last_seq: committed.as_ref().map_or(0, Committed::last_seq),
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(status_of(&self.shared, &self.backend)))
    }

    type ReplicateStream = ReceiverStream<Result<pb::ReplicateMessage, Status>>;

    async fn replicate(
        &self,
        request: Request<pb::ReplicateRequest>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        let caller = self.caller(&request)?;
        let Backend::Master(node) = &self.backend else {
            return Err(
                CfgError::BadRequest("a proxy does not serve replication: ask the primary master".into()).into(),
            );
        };
        if !matches!(node.role(), Role::Primary { .. }) {
            return Err(node.not_primary().into());
        }
        if !access::is_super_admin(&self.shared.read().set, caller.person) {
            return Err(
                CfgError::Permission("replication (for proxies) needs a Super Administrator's session".into()).into(),
            );
        }
        let request = request.into_inner();
        let interval = Duration::from_millis(request.heartbeat_interval_ms.clamp(HEARTBEAT_MS_MIN, HEARTBEAT_MS_MAX));
        // Subscribe before reading, so that nothing falls between the start and the live records.
        let live = self.shared.subscribe();
        let mut epochs = self.shared.epochs();
        epochs.borrow_and_update();
        let (first, last, epoch) = {
            let state = self.shared.read();
            // The same write at the same number: the proxy's history is this one's up to there,
            // whatever epoch it was received in.
            let continues = request.after_write_id != 0
                && state
                    .ring
                    .iter()
                    .any(|r| Some(r.seq) == request.after_seq && r.write_id == request.after_write_id);
            let asked_epoch = if continues { state.epoch } else { request.epoch };
            let resumed = request
                .after_seq
                .and_then(|after| history_in(&state, self.history_max_age_ms, after, asked_epoch).ok());
            match resumed {
                Some((records, reached)) => (
                    FirstOfFeed::Records(records_message(&records, reached, state.epoch)),
                    reached,
                    state.epoch,
                ),
                None => (
                    FirstOfFeed::Snapshot(SnapshotSource::of(&state), snapshot_part_bytes(&request)),
                    state.seq,
                    state.epoch,
                ),
            }
        };
        let (kind, objects) = match &first {
            FirstOfFeed::Records(_) => ("records", 0),
            FirstOfFeed::Snapshot(source, _) => ("snapshot", source.objects.len()),
        };
        info!(
            user = caller.user,
            kind,
            objects,
            seq = last,
            epoch,
            asked_epoch = request.epoch,
            "a proxy attached for replication"
        );
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let feed = Replication {
            node: node.clone(),
            history_max_age_ms: self.history_max_age_ms,
            tx,
            last,
            epoch,
            _open: self.shared.activity.replication_links.open(),
        };
        tokio::spawn(feed.run(first, live, interval, epochs, self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A server's status now: what `Status` answers and the metrics show.
pub fn status_of(shared: &Shared, backend: &Backend) -> pb::StatusResponse {
    let history_max_age_ms = match backend {
        Backend::Master(node) => node.config.history_max_age_ms,
        Backend::Proxy(proxy) => proxy.config.history_max_age_ms,
    };
    let state = shared.read();
    let mut status = pb::StatusResponse {
        mode: state.mode.name().into(),
        last_seq: state.seq,
        // What a resume is checked against (see `history_in`), the age limit included.
        history_oldest_seq: state.history_floor(now_ms().saturating_sub(history_max_age_ms)),
        objects: state.set.len() as u64,
        db_revision: state.revision,
        epoch: state.epoch,
        ..Default::default()
    };
    drop(state);
    match backend {
        Backend::Master(node) => {
            let role = node.role();
            let (holder, last_step_down) = node.lease_view();
            status.name = node.config.name.clone();
            status.addr = node.config.advertise.clone();
            status.role = role.name().into();
            status.lease_holder = holder.unwrap_or_default();
            status.primary_addr = node.primary_addr().unwrap_or_default();
            status.fencing_token = match role {
                Role::Primary { token } => token,
                _ => 0,
            };
            status.last_step_down = last_step_down.unwrap_or_default();
        }
        Backend::Proxy(proxy) => {
            let link = shared.link_now();
            status.name = proxy.config.name.clone();
            status.addr = proxy.config.advertise.clone();
            status.role = "proxy".into();
            status.proxy_mode = link.mode.name().into();
            status.proxy_mode_reason = link.reason;
            status.proxy_mode_since_ms = link.since_ms;
            status.master = link.master.unwrap_or_default();
        }
    }
    status
}

/// A `records` message of replication.
fn records_message(records: &[Arc<LogRecord>], seq: u64, epoch: u64) -> pb::ReplicateMessage {
    pb::ReplicateMessage {
        kind: "records".into(),
        seq,
        epoch,
        records_json: records.iter().map(|r| to_json(&**r)).collect(),
        ..Default::default()
    }
}

/// The `snapshot` of replication, taken under the state's lock at the cost of a pointer per
/// object and record, and turned into messages part by part outside it (see
/// `ReplicateMessage.more`): everything a proxy needs to serve, secrets included. Serialising
/// a million objects under the lock held the master's writes up for about 1.6 s.
struct SnapshotSource {
    seq: u64,
    epoch: u64,
    mode: String,
    session_key: Vec<u8>,
    /// The recent history; taken by the first part.
    records: Option<Vec<Arc<LogRecord>>>,
    objects: Vec<Arc<ConfigObject>>,
    /// The first object not in a part yet.
    next: usize,
    /// Its JSON, when made for the last part but left for this one.
    carried: Option<String>,
    /// Whether the last part has been made.
    done: bool,
}

impl SnapshotSource {
    fn of(state: &State) -> SnapshotSource {
        SnapshotSource {
            seq: state.seq,
            epoch: state.epoch,
            mode: state.mode.name().into(),
            session_key: state.session_key.clone().unwrap_or_default(),
            records: Some(state.ring.iter().cloned().collect()),
            objects: state.set.shared_objects(),
            next: 0,
            carried: None,
            done: false,
        }
    }

    /// The next part, of about `part_bytes` of JSON, or `None` after the last. The first part
    /// carries the header, the recent history and the first objects; an object larger than
    /// `part_bytes` goes alone in its part.
    fn next_part(&mut self, part_bytes: usize) -> Option<pb::ReplicateMessage> {
        if self.done {
            return None;
        }
        let mut part = pb::ReplicateMessage {
            kind: "snapshot".into(),
            seq: self.seq,
            epoch: self.epoch,
            ..Default::default()
        };
        if let Some(records) = self.records.take() {
            part.records_json = records.iter().map(|r| to_json(&**r)).collect();
            part.mode = self.mode.clone();
            part.session_key = std::mem::take(&mut self.session_key);
        }
        let mut bytes: usize = part.records_json.iter().map(String::len).sum();
        while let Some(obj) = self.objects.get(self.next) {
            let json = self.carried.take().unwrap_or_else(|| to_json(&**obj));
            if bytes > 0 && bytes.saturating_add(json.len()) > part_bytes {
                self.carried = Some(json);
                break;
            }
            bytes += json.len();
            part.objects_json.push(json);
            self.next += 1;
        }
        part.more = self.next < self.objects.len();
        self.done = !part.more;
        if self.done {
            // The handles go at once: an object replaced meanwhile is freed now.
            self.objects = Vec::new();
        }
        Some(part)
    }
}

/// The size of the parts of a snapshot for the proxy that sent `request`: one part (the whole
/// snapshot in one message) for a proxy that does not take parts.
fn snapshot_part_bytes(request: &pb::ReplicateRequest) -> usize {
    if request.snapshot_in_parts {
        SNAPSHOT_PART_BYTES
    } else {
        usize::MAX
    }
}

/// What a replication feed sends first.
enum FirstOfFeed {
    /// The records after the proxy's number.
    Records(pb::ReplicateMessage),
    /// A snapshot, made into parts of about this many bytes as they are sent.
    Snapshot(SnapshotSource, usize),
}

/// One proxy's replication feed on the primary master: the first message, then every record
/// applied, and a heartbeat whenever the interval passed; ends when this server stops being the
/// primary (the proxy then finds the new one), when the history cannot bridge a lag (the proxy
/// reattaches and gets a snapshot), or when the proxy goes away.
struct Replication {
    node: Arc<Node>,
    history_max_age_ms: u64,
    tx: mpsc::Sender<Result<pb::ReplicateMessage, Status>>,
    /// The last number sent.
    last: u64,
    /// The epoch of the history sent: the link ends with `reload-required` when the master's
    /// history changes epoch (the proxy then takes a snapshot).
    epoch: u64,
    /// Counts this link among the open ones while it runs.
    _open: Opened,
}

impl Replication {
    /// Follows the master's history into a new epoch when it continues the one sent so far up to
    /// the last number sent; otherwise ends the link with `reload-required` (the proxy then
    /// takes a snapshot) and answers `false`.
    async fn follow_epoch(&mut self, shared: &Shared) -> bool {
        match follow_epoch(shared, self.last, &mut self.epoch) {
            None => true,
            Some(e) => {
                warn!(error = %e, "the history changed epoch: the proxy must take a snapshot");
                let _ = self.tx.send(Err(e.to_status())).await;
                false
            }
        }
    }

    /// Sends `first` (the records of a resume, or a snapshot's parts), then the live feed.
    async fn run(
        mut self,
        first: FirstOfFeed,
        mut live: broadcast::Receiver<Arc<LogRecord>>,
        interval: Duration,
        mut epochs: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        match first {
            FirstOfFeed::Records(message) => {
                if self.tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            FirstOfFeed::Snapshot(mut source, part_bytes) => {
                // Each part is made on the blocking pool: a part is tens of milliseconds of
                // serialising, which the async workers must not sit in.
                let mut parts = 0;
                loop {
                    let made = tokio::task::spawn_blocking(move || {
                        let part = source.next_part(part_bytes);
                        (source, part)
                    })
                    .await;
                    let part = match made {
                        Ok((rest, Some(part))) => {
                            source = rest;
                            part
                        }
                        Ok((_, None)) => break,
                        Err(e) => {
                            warn!(error = %e, "making a part of a snapshot failed");
                            let _ = self.tx.send(Err(Status::internal("making the snapshot failed"))).await;
                            return;
                        }
                    };
                    parts += 1;
                    if self.tx.send(Ok(part)).await.is_err() {
                        return;
                    }
                }
                info!(parts, seq = self.last, "sent a proxy its snapshot");
            }
        }
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.node.shared.clone();
        loop {
            let next = tokio::select! {
                next = next_records(&mut live, &shared, self.history_max_age_ms, self.last, self.epoch) => next,
                changed = epochs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !self.follow_epoch(&shared).await {
                        return;
                    }
                    continue;
                }
                _ = heartbeat.tick() => {
                    if !matches!(self.node.role(), Role::Primary { .. }) {
                        let _ = self.tx.send(Err(self.node.not_primary().to_status())).await;
                        return;
                    }
                    let seq = shared.read().seq;
                    let beat = pb::ReplicateMessage {
                        kind: "heartbeat".into(),
                        seq,
                        epoch: self.epoch,
                        ..Default::default()
                    };
                    if self.tx.send(Ok(beat)).await.is_err() {
                        return;
                    }
                    continue;
                }
                _ = self.tx.closed() => return,
                _ = stopped(&mut stop) => return say_stopping(&self.tx).await,
            };
            let mut records = match next {
                Ok(Some(records)) => records,
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "a proxy's replication fell behind the history; it must reload");
                    let _ = self.tx.send(Err(e.to_status())).await;
                    return;
                }
            };
            records.retain(|r| r.seq > self.last);
            let Some(reached) = records.last().map(|r| r.seq) else {
                continue;
            };
            if !self.follow_epoch(&shared).await {
                return;
            }
            self.last = reached;
            if self
                .tx
                .send(Ok(records_message(&records, reached, self.epoch)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Who;
    use futures::StreamExt;

    fn created(seq: u64) -> Arc<LogRecord> {
        let mut object = ConfigObject::new(ObjectType::Tenant, seq, format!("t{seq}"), 0);
        object.version = 1;
        Arc::new(LogRecord {
            seq,
            txn_first: seq,
            txn_last: seq,
            when_ms: now_ms(),
            who: Who {
                person: 0,
                user: String::new(),
            },
            op: String::new(),
            write_id: 0,
            request_id: String::new(),
            writer: String::new(),
            what: What::Created { object },
            cached: Default::default(),
        })
    }

    fn history(epoch: u64) -> State {
        State {
            seq: 5,
            epoch,
            ring: (1..=5).map(created).collect(),
            ring_capacity: 10,
            ..State::default()
        }
    }

    fn is_reload_required(answer: Result<(Vec<Arc<LogRecord>>, u64), CfgError>) -> bool {
        matches!(answer, Err(CfgError::ReloadRequired { seq: 5, .. }))
    }

    const AGE_MS: u64 = 3_600_000;

    /// A state of `tenants` tenant objects, with `history`'s recent records.
    fn with_tenants(tenants: u64) -> State {
        let objects = (1..=tenants).map(|dbid| {
            let mut tenant = ConfigObject::new(ObjectType::Tenant, dbid, format!("tenant-{dbid:04}"), 0);
            tenant.version = 1;
            tenant
        });
        State {
            set: tandem_config::ConfigSet::from_objects(objects).expect("tenants"),
            mode: Mode::ReadOnly,
            session_key: Some(vec![7; 32]),
            ..history(3)
        }
    }

    /// Every part of a snapshot of `state`.
    fn snapshot_parts(state: &State, part_bytes: usize) -> Vec<pb::ReplicateMessage> {
        let mut source = SnapshotSource::of(state);
        std::iter::from_fn(|| source.next_part(part_bytes)).collect()
    }

    fn objects_of(parts: &[pb::ReplicateMessage]) -> Vec<String> {
        parts.iter().flat_map(|p| p.objects_json.iter().cloned()).collect()
    }

    #[test]
    fn a_large_snapshot_goes_in_parts_that_join_back_into_the_whole() {
        let state = with_tenants(40);
        let every: Vec<String> = state.set.iter().map(to_json).collect();
        let one = every[0].len();
        let part_bytes = 5 * one;
        let parts = snapshot_parts(&state, part_bytes);
        assert!(
            parts.len() >= 8,
            "40 objects of {one} bytes in parts of {part_bytes}: {} parts",
            parts.len()
        );
        assert_eq!(objects_of(&parts), every, "every object once, in order");
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(
                (part.kind.as_str(), part.seq, part.epoch),
                ("snapshot", 5, 3),
                "part {i}"
            );
            assert_eq!(part.more, i + 1 < parts.len(), "only the last part says no more follow");
            let bytes: usize = part.objects_json.iter().map(String::len).sum::<usize>()
                + part.records_json.iter().map(String::len).sum::<usize>();
            assert!(
                bytes <= part_bytes || part.objects_json.len() <= 1,
                "part {i} holds {bytes} bytes"
            );
            if i > 0 {
                assert!(part.records_json.is_empty() && part.session_key.is_empty() && part.mode.is_empty());
            }
        }
        assert_eq!(
            parts[0].records_json.len(),
            5,
            "the recent history comes with the first part"
        );
        assert_eq!((parts[0].mode.as_str(), parts[0].session_key.len()), ("read_only", 32));

        for part in &parts[1..] {
            crate::proxy::check_snapshot_part(&parts[0], part).expect("a part of the same snapshot");
        }
    }

    #[test]
    fn a_snapshot_that_fits_goes_in_one_message_and_an_object_larger_than_a_part_alone() {
        let state = with_tenants(40);
        let parts = snapshot_parts(&state, SNAPSHOT_PART_BYTES);
        assert_eq!(parts.len(), 1);
        assert!(!parts[0].more);
        assert_eq!(parts[0].objects_json.len(), 40);

        let older_proxy = pb::ReplicateRequest::default();
        let parts = snapshot_parts(&state, snapshot_part_bytes(&older_proxy));
        assert_eq!(parts.len(), 1, "a proxy from before parts gets one message");
        assert_eq!(parts[0].objects_json.len(), 40);
        let parts = snapshot_parts(&state, 1);
        assert_eq!(parts.len(), 41, "the history alone, then one object per part");
        assert!(parts[0].objects_json.is_empty());
        assert!(parts[1..].iter().all(|p| p.objects_json.len() == 1));
    }

    #[test]
    fn a_snapshot_is_the_set_as_it_was_when_taken_whatever_changes_while_it_is_sent() {
        use tandem_config::Change;
        let mut state = with_tenants(10);
        let before: Vec<String> = state.set.iter().map(to_json).collect();
        let mut source = SnapshotSource::of(&state);
        let first = source.next_part(2 * before[0].len()).expect("a first part");
        let mut renamed = state.set.get(ObjectType::Tenant, 9).expect("tenant 9").clone();
        renamed.name = "renamed".into();
        renamed.version += 1;
        state
            .set
            .apply([
                Change::Delete {
                    object_type: ObjectType::Tenant,
                    dbid: 3,
                    version: 1,
                },
                Change::Update(renamed),
                Change::Create(ConfigObject::new(ObjectType::Tenant, 11, "new", 0)),
            ])
            .expect("changes");
        let mut parts = vec![first];
        parts.extend(std::iter::from_fn(|| source.next_part(2 * before[0].len())));
        assert!(parts.len() > 2);
        assert_eq!(objects_of(&parts), before, "the set as it was, not as it is");
        assert_eq!(state.set.len(), 10);
        assert_eq!(
            state.set.get(ObjectType::Tenant, 9).map(|t| t.name.as_str()),
            Some("renamed")
        );
    }

    #[test]
    fn a_part_of_another_snapshot_or_another_message_is_refused() {
        let parts = snapshot_parts(&with_tenants(10), 1);
        let check = |part| crate::proxy::check_snapshot_part(&parts[0], &part);
        assert!(check(parts[1].clone()).is_ok());
        assert!(check(pb::ReplicateMessage {
            seq: 6,
            ..parts[1].clone()
        })
        .is_err());
        assert!(check(pb::ReplicateMessage {
            epoch: 4,
            ..parts[1].clone()
        })
        .is_err());
        assert!(check(pb::ReplicateMessage {
            kind: "heartbeat".into(),
            ..parts[1].clone()
        })
        .is_err());
    }

    #[test]
    fn a_resume_in_another_epoch_is_told_to_reload() {
        let state = history(2);
        let (records, reached) = history_in(&state, AGE_MS, 3, 2).expect("same epoch");
        assert_eq!((records.len(), reached), (2, 5));
        assert!(
            is_reload_required(history_in(&state, AGE_MS, 3, 1)),
            "number 3 of epoch 1 says nothing in epoch 2"
        );
        assert!(
            is_reload_required(history_in(&state, AGE_MS, 5, 1)),
            "not even at the same number"
        );
        assert!(
            is_reload_required(history_in(&state, AGE_MS, 3, 0)),
            "an unknown epoch is the first one"
        );
        assert!(is_reload_required(history_in(&state, AGE_MS, 3, 3)), "a newer epoch");
        let first = history(1);
        assert!(
            history_in(&first, AGE_MS, 3, 0).is_ok(),
            "an older client in the first epoch"
        );
        assert!(history_in(&first, AGE_MS, 3, 1).is_ok());
        let mut continued = history(2);
        continued.continued.insert(1, 4);
        assert!(
            history_in(&continued, AGE_MS, 4, 1).is_ok(),
            "epoch 2 continues epoch 1 up to 4"
        );
        assert!(
            is_reload_required(history_in(&continued, AGE_MS, 5, 1)),
            "but not beyond"
        );
    }

    /// A feed of everything in `shared`'s history (at 5, in epoch 1), as the server's own caller.
    fn feed_of(shared: &Arc<Shared>, stop: watch::Receiver<bool>) -> Feed {
        let mut epochs = shared.epochs();
        epochs.borrow_and_update();
        let link = shared.link();
        let mode = link.borrow().clone();
        Feed {
            shared: shared.clone(),
            history_max_age_ms: AGE_MS,
            proxy: false,
            caller: Caller::server(),
            filter: Filter {
                types: BTreeSet::new(),
                tenant: None,
                dbid: None,
            },
            outbox: VecDeque::new(),
            ended: false,
            last: 5,
            epoch: 1,
            live: Some(shared.subscribe()),
            mode,
            link,
            epochs,
            stop,
            control: None,
            offer: false,
            said_why: false,
            _open: shared.activity.subscribers.open(),
        }
    }

    /// Numbers of what `feed` made since last asked (errors as 0).
    fn made(feed: &mut Feed) -> Vec<u64> {
        feed.take_outbox().map(|n| n.map_or(0, |n| n.seq)).collect()
    }

    #[tokio::test]
    async fn an_attached_feed_takes_handed_records_once_and_reads_the_history_past_a_gap() {
        let shared = Shared::new(10);
        shared.replace(history(1));
        let (_stop_tx, stop) = watch::channel(false);
        let mut feed = feed_of(&shared, stop).with_replay(Vec::new(), 5);
        assert_eq!(made(&mut feed), vec![5], "the live marker");
        assert!(feed.attachable());
        feed.attach();
        // Mode records: every subscriber sees them.
        let mode = |seq: u64| LogRecord {
            what: What::Mode {
                mode: Mode::Normal,
                previous: Mode::Normal,
            },
            ..LogRecord::clone(&created(seq))
        };
        let apply = |seq: u64| {
            shared.apply_records(vec![mode(seq)], seq).expect("apply");
        };
        apply(6);
        feed.hand(&mode(6));
        feed.hand(&mode(6));
        assert_eq!(made(&mut feed), vec![6], "the next record, once");
        apply(7);
        apply(8);
        feed.hand(&mode(8));
        assert_eq!(
            made(&mut feed),
            vec![7, 8],
            "7 was not handed over: read from the history"
        );
        assert_eq!(feed.last(), 8);
        feed.hand(&mode(7));
        assert_eq!(made(&mut feed), Vec::<u64>::new(), "nothing it has, again");

        shared.set_link(Link::default());
        assert!(!feed.attachable(), "a change of link it has not acted on yet");
        apply(9);
        let mut alone = feed.detach();
        match alone.next().await {
            Some(FeedStep::Item(Ok(n))) => assert_eq!(n.seq, 9, "detached, it catches up first"),
            _ => panic!("expected record 9"),
        }
    }

    #[tokio::test]
    async fn a_subscriber_ends_when_the_history_is_reloaded_in_another_epoch() {
        let shared = Shared::new(10);
        shared.replace(history(1));
        let (_stop_tx, stop) = watch::channel(false);
        let feed = feed_of(&shared, stop);
        let mut stream = Box::pin(feed.with_replay(Vec::new(), 5).into_stream());
        let live = stream.next().await.expect("live marker").expect("not an error");
        assert_eq!((live.kind.as_str(), live.seq, live.epoch), ("live", 5, 1));
        // The same numbers, another history.
        shared.replace(history(2));
        let refused = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the subscriber is told at once")
            .expect("an answer");
        let status = refused.expect_err("reload-required");
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends at once");
        assert!(end.is_none(), "nothing after reload-required: {end:?}");
    }
}
