//! [`ConfClient`]: the client library of a pair of Configuration Servers — the master pair, or a
//! site's proxy pair, which answer alike — for the command line and tests. It holds both
//! servers' addresses:
//!
//! - reads go to the primary when it is known, else to whichever server answers (both serve
//!   reads; the backup may be a moment behind);
//! - writes go to the primary, following `not-primary` answers (and the primary they name, if it
//!   is one of the servers given: a proxy's client never chases a master) and retrying only
//!   while nothing can have been written: a refusal that says so, or a connection that was
//!   refused. Any other failure of a write is [`ConfError::is_outcome_unknown`]; a proxy accepts
//!   writes itself and forwards them;
//! - a [`Subscription`] resumes on either server after the last number it delivered, so a
//!   takeover neither loses nor repeats a notification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_config::document::Document;
use tandem_config::{ConfigObject, Delta, ObjectType, Page, Query};
use tandem_proto::confserv::{self as pb, conf_serv_client::ConfServClient, error_kind};
use tandem_tls::{ChannelCache, TlsFiles};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::record::{LogRecord, Mode};

mod mux;

use mux::{Mux, MuxSubscription};

/// Kind of a failure that never reached a server's logic: the connection was refused.
pub const UNREACHABLE: &str = "unreachable";
/// Kind of a failure of the connection during a call (the request may have been processed).
pub const TRANSPORT: &str = "transport";

/// The longest pause between two rounds of a write looking for the primary: short, because a
/// takeover completes in about a lease TTL and the write should land as soon as it has.
const WRITE_RETRY_PAUSE_MAX: Duration = Duration::from_millis(50);

/// One call counted in [`Inner::in_flight`] until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A refusal or failure, with the server's stable kind (see
/// [`tandem_proto::confserv::error_kind`], plus [`UNREACHABLE`] and [`TRANSPORT`]). Its details
/// are boxed (and read through `Deref`) so that results stay small.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", .details.message)]
pub struct ConfError {
    details: Box<ErrorDetails>,
}

/// What a [`ConfError`] says.
#[derive(Clone, Debug)]
pub struct ErrorDetails {
    /// The stable kind.
    pub kind: String,
    /// The configuration model's code (`duplicate_name`, `missing_field`…), for validation.
    pub code: Option<String>,
    /// The field concerned.
    pub field: Option<String>,
    /// The primary's address on `not-primary`.
    pub primary: Option<String>,
    /// The server's last notification number on `reload-required`.
    pub seq: Option<u64>,
    /// The message, naming the object and field.
    pub message: String,
}

impl std::ops::Deref for ConfError {
    type Target = ErrorDetails;

    fn deref(&self) -> &ErrorDetails {
        &self.details
    }
}

impl From<ErrorDetails> for ConfError {
    fn from(details: ErrorDetails) -> Self {
        ConfError {
            details: Box::new(details),
        }
    }
}

impl ConfError {
    fn new(kind: &str, message: impl Into<String>) -> Self {
        ErrorDetails {
            kind: kind.to_owned(),
            code: None,
            field: None,
            primary: None,
            seq: None,
            message: message.into(),
        }
        .into()
    }

    /// Reads a status.
    pub fn from_status(status: &Status) -> ConfError {
        let get = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let kind = get(pb::ERROR_KIND_KEY).unwrap_or_else(|| {
            if tandem_client::is_connection_refused(status) {
                UNREACHABLE.to_owned()
            } else {
                match status.code() {
                    Code::Unauthenticated => error_kind::UNAUTHENTICATED.to_owned(),
                    Code::InvalidArgument => error_kind::BAD_REQUEST.to_owned(),
                    Code::OutOfRange | Code::ResourceExhausted => error_kind::TOO_LARGE.to_owned(),
                    _ => TRANSPORT.to_owned(),
                }
            }
        });
        ErrorDetails {
            code: get(pb::ERROR_CODE_KEY),
            field: get(pb::ERROR_FIELD_KEY),
            primary: get(pb::PRIMARY_ADDR_KEY),
            seq: get(pb::SEQ_KEY).and_then(|s| s.parse().ok()),
            message: if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                status.message().to_owned()
            },
            kind,
        }
        .into()
    }

    /// Whether the kind is `kind`.
    pub fn is(&self, kind: &str) -> bool {
        self.kind == kind
    }

    /// Whether a write that failed so may or may not have been applied.
    pub fn is_outcome_unknown(&self) -> bool {
        self.kind == error_kind::OUTCOME_UNKNOWN || self.kind == TRANSPORT
    }

    /// Whether a request that failed so certainly changed nothing and may be sent again,
    /// possibly elsewhere.
    fn retryable(&self) -> bool {
        matches!(
            self.kind.as_str(),
            UNREACHABLE | error_kind::NOT_PRIMARY | error_kind::UNAVAILABLE
        )
    }
}

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// TLS files (a CA makes links `https`).
    pub tls: TlsFiles,
    /// How long an operation keeps trying (failover, redirects).
    pub deadline: Duration,
    /// Timeout of one call.
    pub attempt_timeout: Duration,
    /// HTTP/2 connections to each server at most: one while few calls are in flight, more (taken
    /// in turn) as calls pile up, since one connection is handled by one task at each end.
    pub connections: usize,
    /// Notifications a subscription may have waiting: one that falls further behind is dropped
    /// from its shared stream (holding up no other subscription) and resumes from its last
    /// number once it has read them.
    pub subscription_buffer: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            tls: TlsFiles::default(),
            deadline: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(10),
            connections: 4,
            subscription_buffer: mux::ROUTE_BUFFER,
        }
    }
}

/// What a write did.
#[derive(Clone, Debug, Default)]
pub struct WriteResult {
    /// The numbers the change took (0 when nothing changed).
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// The object as stored, for create and update.
    pub object: Option<ConfigObject>,
    /// Objects created, changed, deleted.
    pub created: Vec<pb::ObjectKey>,
    /// See `created`.
    pub changed: Vec<pb::ObjectKey>,
    /// See `created`.
    pub deleted: Vec<pb::ObjectKey>,
}

impl WriteResult {
    fn from_response(r: pb::WriteResponse) -> Result<WriteResult, ConfError> {
        let object = if r.object_json.is_empty() {
            None
        } else {
            Some(parse_json::<ConfigObject>(&r.object_json)?)
        };
        Ok(WriteResult {
            first_seq: r.first_seq,
            last_seq: r.last_seq,
            object,
            created: r.created,
            changed: r.changed,
            deleted: r.deleted,
        })
    }
}

/// A random id for one logical write.
fn new_request_id() -> String {
    use rand::Rng;
    let id: u128 = rand::thread_rng().gen();
    format!("{id:032x}")
}

fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, ConfError> {
    serde_json::from_str(json).map_err(|e| ConfError::new(error_kind::BAD_REQUEST, format!("bad answer: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    crate::record::to_json(value)
}

/// What a subscription wants.
#[derive(Clone, Debug, Default)]
pub struct SubscribeFilter {
    /// Object types; empty = all.
    pub object_types: Vec<ObjectType>,
    /// Only this tenant.
    pub tenant: Option<u64>,
    /// Only this DBID (with one type).
    pub dbid: Option<u64>,
}

/// A client of both servers of a pair.
#[derive(Clone)]
pub struct ConfClient {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Vec<String>,
    /// Calls waiting for an answer (subscriptions only until they are established).
    in_flight: AtomicUsize,
    config: ClientConfig,
    /// Channels by address.
    channels: ChannelCache,
    token: Mutex<Option<String>>,
    /// The primary as last seen.
    primary: Mutex<Option<String>>,
    /// The server that last answered a read.
    preferred: Mutex<Option<String>>,
    /// The subscription stream to each server (see [`Subscription`]), each behind a lock of its
    /// own held while it is (re)opened.
    muxes: Mutex<HashMap<String, MuxSlot>>,
}

/// The subscription stream to one server, when open.
type MuxSlot = Arc<tokio::sync::Mutex<Option<Arc<Mux>>>>;

impl ConfClient {
    /// A client of `servers` (both masters' `HOST:PORT`).
    pub fn new(servers: Vec<String>, config: ClientConfig) -> Result<ConfClient, ConfError> {
        if servers.is_empty() {
            return Err(ConfError::new(
                error_kind::BAD_REQUEST,
                "no configuration server address given",
            ));
        }
        let tls = config
            .tls
            .client()
            .map_err(|e| ConfError::new(error_kind::BAD_REQUEST, e.to_string()))?;
        let channels = ChannelCache::new(tls).with_connections(config.connections);
        Ok(ConfClient {
            inner: Arc::new(Inner {
                servers,
                in_flight: AtomicUsize::new(0),
                config,
                channels,
                token: Mutex::default(),
                primary: Mutex::default(),
                preferred: Mutex::default(),
                muxes: Mutex::default(),
            }),
        })
    }

    /// The servers' addresses.
    pub fn servers(&self) -> &[String] {
        &self.inner.servers
    }

    /// Uses a session token obtained earlier.
    pub fn set_token(&self, token: &str) {
        *self.inner.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.to_owned());
    }

    /// The session token, once logged in.
    pub fn token(&self) -> Option<String> {
        self.inner.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The address of the server that last answered a read or a login, if any (with calls in
    /// flight at once, the last of them to be answered).
    pub fn last_answered(&self) -> Option<String> {
        self.inner.preferred.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A stub on a connection to `addr` chosen by how many calls are in flight, and the count of
    /// this call among them while the returned guard lives.
    fn stub(&self, addr: &str) -> Result<(ConfServClient<Channel>, InFlight<'_>), ConfError> {
        let in_flight = self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(&self.inner.in_flight);
        let channel = self
            .inner
            .channels
            .channel_for_load(addr, in_flight)
            .map_err(|e| ConfError::new(error_kind::BAD_REQUEST, format!("bad server address {addr:?}: {e}")))?;
        let stub = ConfServClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        Ok((stub, guard))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.inner.config.attempt_timeout);
        if let Some(token) = self.token() {
            if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
                request.metadata_mut().insert(pb::AUTHORIZATION_KEY, value);
            }
        }
        request
    }

    /// Servers in the order to try: `first` (if any), then the others as given.
    fn order(&self, first: Option<String>) -> Vec<String> {
        let mut order: Vec<String> = first.into_iter().collect();
        for s in &self.inner.servers {
            if !order.contains(s) {
                order.push(s.clone());
            }
        }
        order
    }

    /// Runs a read on any server that answers.
    async fn on_any<T, F, Fut>(&self, mut call: F) -> Result<T, ConfError>
    where
        F: FnMut(ConfServClient<Channel>, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.config.deadline;
        let mut pause = Duration::from_millis(20);
        loop {
            // The primary first, when known: it has applied every write it acknowledged, so a
            // client reads its own writes.
            let primary = self.inner.primary.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let preferred = primary.or_else(|| self.inner.preferred.lock().unwrap_or_else(|p| p.into_inner()).clone());
            let mut last: Option<ConfError> = None;
            for addr in self.order(preferred) {
                let (stub, _in_flight) = self.stub(&addr)?;
                match call(stub, addr.clone()).await {
                    Ok(value) => {
                        *self.inner.preferred.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                        return Ok(value);
                    }
                    Err(status) => {
                        let e = ConfError::from_status(&status);
                        if !(e.retryable() || e.is(TRANSPORT)) || e.is(error_kind::NOT_PRIMARY) {
                            return Err(e);
                        }
                        let mut primary = self.inner.primary.lock().unwrap_or_else(|p| p.into_inner());
                        if primary.as_deref() == Some(addr.as_str()) {
                            *primary = None;
                        }
                        drop(primary);
                        last = Some(e);
                    }
                }
            }
            if Instant::now() + pause >= deadline {
                return Err(last.unwrap_or_else(|| ConfError::new(UNREACHABLE, "no server answered")));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Runs a write on the primary, following redirects. Retries what certainly changed nothing
    /// and, since every write carries a request id the server deduplicates, also a write whose
    /// answer was lost (on the other server when the connection broke).
    async fn on_primary<T, F, Fut>(&self, mut call: F) -> Result<T, ConfError>
    where
        F: FnMut(ConfServClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.config.deadline;
        let mut pause = Duration::from_millis(20);
        let mut next_index = 0usize;
        // The first attempt whose outcome is unknown: from then on, a later refusal does not
        // prove the write was not applied (the refusing server may not know of that attempt).
        let mut uncertain: Option<ConfError> = None;
        let settle = |e: ConfError, uncertain: &Option<ConfError>| {
            match uncertain {
            Some(first) if !e.is_outcome_unknown() => ConfError::new(
                error_kind::OUTCOME_UNKNOWN,
                format!("the outcome of the write is unknown: an earlier attempt failed with `{first}` and may have been applied; the last attempt was refused: {e}"),
            ),
            _ => e,
        }
        };
        loop {
            let known = self.inner.primary.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let addr = known.unwrap_or_else(|| {
                let addr = self.inner.servers[next_index % self.inner.servers.len()].clone();
                next_index += 1;
                addr
            });
            let (stub, _in_flight) = self.stub(&addr)?;
            let e = match call(stub).await {
                Ok(value) => {
                    *self.inner.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                    return Ok(value);
                }
                Err(status) => ConfError::from_status(&status),
            };
            if e.is_outcome_unknown() && uncertain.is_none() {
                uncertain = Some(e.clone());
            }
            if !(e.retryable() || e.is_outcome_unknown()) {
                return Err(settle(e, &uncertain));
            }
            let hint = e
                .primary
                .clone()
                .filter(|h| *h != addr && self.inner.servers.contains(h));
            let followed = hint.is_some();
            if !followed {
                // Try the next server first: this one may be gone or frozen.
                let at = self.inner.servers.iter().position(|s| *s == addr).unwrap_or(0);
                next_index = at + 1;
            }
            *self.inner.primary.lock().unwrap_or_else(|p| p.into_inner()) = hint;
            if Instant::now() + pause >= deadline {
                return Err(settle(e, &uncertain));
            }
            if !followed {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(WRITE_RETRY_PAUSE_MAX);
            }
        }
    }

    /// Logs in on any server; the token is kept for later calls (and is valid on both).
    pub async fn login(&self, user: &str, password: &str, tenant: &str) -> Result<pb::LoginResponse, ConfError> {
        let response = self
            .on_any(|mut stub, _| {
                let request = self.request(pb::LoginRequest {
                    user: user.to_owned(),
                    password: password.to_owned(),
                    tenant: tenant.to_owned(),
                });
                async move { Ok(stub.login(request).await?.into_inner()) }
            })
            .await?;
        self.set_token(&response.token);
        Ok(response)
    }

    /// One object by DBID.
    pub async fn get(&self, object_type: ObjectType, dbid: u64) -> Result<ConfigObject, ConfError> {
        self.get_request(pb::GetRequest {
            object_type: object_type.name().into(),
            dbid,
            ..Default::default()
        })
        .await
    }

    /// One object by name in a tenant.
    pub async fn get_by_name(
        &self,
        object_type: ObjectType,
        tenant: u64,
        name: &str,
    ) -> Result<ConfigObject, ConfError> {
        self.get_request(pb::GetRequest {
            object_type: object_type.name().into(),
            dbid: 0,
            name: name.into(),
            tenant,
        })
        .await
    }

    async fn get_request(&self, message: pb::GetRequest) -> Result<ConfigObject, ConfError> {
        let response = self
            .on_any(|mut stub, _| {
                let request = self.request(message.clone());
                async move { Ok(stub.get(request).await?.into_inner()) }
            })
            .await?;
        parse_json(&response.object_json)
    }

    /// One page of a query.
    pub async fn query(&self, query: &Query) -> Result<Page, ConfError> {
        let json = to_json(query);
        let response = self
            .on_any(|mut stub, _| {
                let request = self.request(pb::QueryRequest {
                    query_json: json.clone(),
                });
                async move { Ok(stub.query(request).await?.into_inner()) }
            })
            .await?;
        parse_json(&response.page_json)
    }

    /// Creates an object (its DBID is allocated by the server); `password` for a person.
    pub async fn create(&self, object: &ConfigObject, password: Option<&str>) -> Result<WriteResult, ConfError> {
        let message = pb::CreateRequest {
            object_json: to_json(object),
            password: password.unwrap_or_default().to_owned(),
            request_id: new_request_id(),
        };
        let response = self
            .on_primary(|mut stub| {
                let request = self.request(message.clone());
                async move { Ok(stub.create(request).await?.into_inner()) }
            })
            .await?;
        WriteResult::from_response(response)
    }

    /// Updates an object by delta; `expected_version` 0 = any.
    pub async fn update(
        &self,
        object_type: ObjectType,
        dbid: u64,
        delta: &Delta,
        password: Option<&str>,
        expected_version: u64,
    ) -> Result<WriteResult, ConfError> {
        let message = pb::UpdateRequest {
            object_type: object_type.name().into(),
            dbid,
            delta_json: to_json(delta),
            password: password.unwrap_or_default().to_owned(),
            expected_version,
            request_id: new_request_id(),
        };
        let response = self
            .on_primary(|mut stub| {
                let request = self.request(message.clone());
                async move { Ok(stub.update(request).await?.into_inner()) }
            })
            .await?;
        WriteResult::from_response(response)
    }

    /// Deletes an object (with `cascade`, what must go with it).
    pub async fn delete(&self, object_type: ObjectType, dbid: u64, cascade: bool) -> Result<WriteResult, ConfError> {
        let message = pb::DeleteRequest {
            object_type: object_type.name().into(),
            dbid,
            cascade,
            expected_version: 0,
            request_id: new_request_id(),
        };
        let response = self
            .on_primary(|mut stub| {
                let request = self.request(message.clone());
                async move { Ok(stub.delete(request).await?.into_inner()) }
            })
            .await?;
        WriteResult::from_response(response)
    }

    /// Switches the mode.
    pub async fn set_mode(&self, mode: Mode) -> Result<WriteResult, ConfError> {
        let request_id = new_request_id();
        let response = self
            .on_primary(|mut stub| {
                let request = self.request(pb::SetModeRequest {
                    mode: mode.name().into(),
                    request_id: request_id.clone(),
                });
                async move { Ok(stub.set_mode(request).await?.into_inner()) }
            })
            .await?;
        WriteResult::from_response(response)
    }

    /// One page of the audit trail; returns the records and the number to continue after
    /// (0 = no more).
    pub async fn audit(&self, message: pb::AuditRequest) -> Result<(Vec<LogRecord>, u64), ConfError> {
        let response = self
            .on_any(|mut stub, _| {
                let request = self.request(message.clone());
                async move { Ok(stub.audit(request).await?.into_inner()) }
            })
            .await?;
        let records = response
            .records_json
            .iter()
            .map(|j| parse_json(j))
            .collect::<Result<Vec<LogRecord>, _>>()?;
        Ok((records, response.next_after_seq))
    }

    /// The whole configuration, or a folder, as a document.
    pub async fn export(&self, folder: Option<u64>) -> Result<Document, ConfError> {
        let response = self
            .on_any(|mut stub, _| {
                let request = self.request(pb::ExportRequest {
                    folder: folder.unwrap_or(0),
                });
                async move { Ok(stub.export(request).await?.into_inner()) }
            })
            .await?;
        Document::from_json(&response.document_json).map_err(|e| ConfError::new(error_kind::BAD_REQUEST, e.to_string()))
    }

    /// Imports a document (JSON); `dry_run` only reports.
    pub async fn import(&self, document_json: &str, dry_run: bool) -> Result<pb::ImportResponse, ConfError> {
        let message = pb::ImportRequest {
            document_json: document_json.to_owned(),
            dry_run,
            request_id: new_request_id(),
        };
        if dry_run {
            return self
                .on_any(|mut stub, _| {
                    let request = self.request(message.clone());
                    async move { Ok(stub.import(request).await?.into_inner()) }
                })
                .await;
        }
        self.on_primary(|mut stub| {
            let request = self.request(message.clone());
            async move { Ok(stub.import(request).await?.into_inner()) }
        })
        .await
    }

    /// Status of one server.
    pub async fn status(&self, addr: &str) -> Result<pb::StatusResponse, ConfError> {
        let (mut stub, _in_flight) = self.stub(addr)?;
        stub.status(self.request(pb::StatusRequest {}))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| ConfError::from_status(&s))
    }

    /// Status of every server, in the order given.
    pub async fn status_all(&self) -> Vec<(String, Result<pb::StatusResponse, ConfError>)> {
        let asks = self
            .inner
            .servers
            .iter()
            .map(|addr| async move { (addr.clone(), self.status(addr).await) });
        futures::future::join_all(asks).await
    }

    /// The subscription stream to `addr`, opened when there is none (or it broke, or the session
    /// token changed since).
    async fn mux(&self, addr: &str) -> Result<Arc<Mux>, Status> {
        let slot = self
            .inner
            .muxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        let token = self.token();
        if let Some(mux) = slot.as_ref().filter(|m| m.usable(&token)) {
            return Ok(mux.clone());
        }
        let (stub, _in_flight) = self
            .stub(addr)
            .map_err(|e| Status::invalid_argument(e.message.clone()))?;
        let mux = Mux::connect(
            stub,
            |control| {
                let mut request = self.request(control);
                // A stream lives longer than one call's timeout.
                request.set_timeout(Duration::from_secs(365 * 24 * 3600));
                request
            },
            token,
            self.inner.config.attempt_timeout,
            self.inner.config.subscription_buffer,
        )
        .await?;
        *slot = Some(mux.clone());
        Ok(mux)
    }

    /// Subscribes to notifications after `after` (or from now).
    pub fn subscribe(&self, filter: SubscribeFilter, after: Option<u64>) -> Subscription {
        Subscription {
            client: self.clone(),
            filter,
            last: after,
            epoch: 0,
            stream: None,
            server: None,
        }
    }
}

/// A subscription that survives the loss of a server: it resumes on any server after the last
/// number delivered. Yields `live` markers after each (re)connection's replay. The subscriptions
/// of one client to one server share one `SubscribeMany` stream (see [`mux`]).
pub struct Subscription {
    client: ConfClient,
    filter: SubscribeFilter,
    /// The last number delivered (or covered by a `live` marker).
    last: Option<u64>,
    /// The epoch of the history `last` belongs to (0 = not known yet), sent on every resume: a
    /// server whose history is of another epoch answers `reload-required` rather than continue
    /// a history that may have diverged from what was delivered.
    epoch: u64,
    stream: Option<MuxSubscription>,
    /// The server of the current stream.
    server: Option<String>,
}

impl Subscription {
    /// The last number delivered or covered.
    pub fn last_seq(&self) -> Option<u64> {
        self.last
    }

    /// The server currently streaming.
    pub fn server(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// The epoch of the history the last number delivered belongs to (0 = none received yet).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Resumes in the history of `epoch` (the [`Subscription::epoch`] of an earlier
    /// subscription whose last number is the `after` given to [`ConfClient::subscribe`]).
    pub fn in_epoch(mut self, epoch: u64) -> Subscription {
        self.epoch = epoch;
        self
    }

    async fn connect(&mut self) -> Result<(), ConfError> {
        let message = pb::SubscribeRequest {
            object_types: self.filter.object_types.iter().map(|t| t.name().to_owned()).collect(),
            tenant: self.filter.tenant,
            dbid: self.filter.dbid,
            after_seq: self.last,
            epoch: self.epoch,
        };
        let client = self.client.clone();
        let stream = client
            .on_any(|_, addr| {
                let (client, message) = (client.clone(), message.clone());
                async move {
                    let mux = client.mux(&addr).await?;
                    mux.open(message, client.inner.config.attempt_timeout).await
                }
            })
            .await?;
        self.server = client.inner.preferred.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.stream = Some(stream);
        Ok(())
    }

    /// The next notification (or `live` marker, or a proxy's `proxy_mode` event). Reconnects by
    /// itself, resuming after the last number in its epoch; fails on `reload-required` (read
    /// everything again, then subscribe after the number it gives — also when the server's
    /// history changed epoch) and when no server answers before the client's deadline. The
    /// notification is shared with the client's other subscriptions it is for
    /// (`Arc::unwrap_or_clone` makes it one's own).
    pub async fn next(&mut self) -> Result<Arc<pb::Notification>, ConfError> {
        loop {
            if self.stream.is_none() {
                self.connect().await?;
            }
            let Some(stream) = self.stream.as_mut() else { continue };
            match stream.message().await {
                Ok(Some(n)) => {
                    if n.epoch != 0 {
                        self.epoch = n.epoch;
                    }
                    if n.kind == pb::notification_kind::LIVE || n.kind == pb::notification_kind::PROXY_MODE {
                        self.last = Some(self.last.unwrap_or(0).max(n.seq));
                        return Ok(n);
                    }
                    if self.last.is_some_and(|l| n.seq <= l) {
                        continue;
                    }
                    self.last = Some(n.seq);
                    return Ok(n);
                }
                Ok(None) => self.stream = None,
                Err(status) => {
                    let e = ConfError::from_status(&status);
                    self.stream = None;
                    if !(e.retryable() || e.is(TRANSPORT)) {
                        return Err(e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API of a server whose node has no database (enough to answer `Status`), and the
    /// sender that keeps it from stopping.
    fn status_only_service() -> (
        pb::conf_serv_server::ConfServServer<crate::service::Service>,
        tokio::sync::watch::Sender<bool>,
    ) {
        let node = crate::Node::new(crate::ServerConfig::new("t", "127.0.0.1:1", vec!["127.0.0.1:1".into()])).unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let service = pb::conf_serv_server::ConfServServer::new(crate::service::Service::new(node, stop));
        (service, stop_tx)
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let client = ConfClient::new(
            vec![addr.clone()],
            ClientConfig {
                deadline: Duration::from_millis(100),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        let e = client.status(&addr).await.unwrap_err();
        assert_eq!(e.kind, UNREACHABLE, "{e:?}");
        let e = client.status(&addr).await.unwrap_err();
        assert_eq!(e.kind, UNREACHABLE, "second attempt on the same channel: {e:?}");
    }

    #[tokio::test]
    async fn a_server_gone_after_a_call_is_unreachable_once_the_connection_is_refused() {
        let (service, _stop_tx) = status_only_service();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = end_rx.await;
                }),
        );
        let client = ConfClient::new(vec![addr.clone()], ClientConfig::default()).unwrap();
        client.status(&addr).await.expect("status while serving");
        let _ = end_tx.send(());
        server.await.unwrap().unwrap();
        let mut kinds = Vec::new();
        for _ in 0..3 {
            kinds.push(client.status(&addr).await.unwrap_err().kind.clone());
        }
        assert_eq!(kinds.last().map(String::as_str), Some(UNREACHABLE), "{kinds:?}");
        eprintln!("{kinds:?}");
    }

    #[tokio::test]
    async fn a_quiet_client_keeps_one_connection_and_a_busy_one_spreads_its_calls() {
        let (service, _stop_tx) = status_only_service();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let incoming =
            futures::StreamExt::inspect(tokio_stream::wrappers::TcpListenerStream::new(listener), move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        let client = ConfClient::new(vec![addr.clone()], ClientConfig::default()).unwrap();
        for _ in 0..20 {
            client.status(&addr).await.expect("status");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one call at a time: one connection");
        let calls = (0..400).map(|_| client.status(&addr));
        for answer in futures::future::join_all(calls).await {
            answer.expect("status");
        }
        let connections = accepted.load(Ordering::SeqCst);
        assert!(
            (2..=ClientConfig::default().connections).contains(&connections),
            "400 calls at once: spread over the allowed connections, got {connections}"
        );
    }
}
