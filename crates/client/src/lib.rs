//! The client library of Tandem's configuration database.
//!
//! A [`Client`] holds the addresses of every replica (both sites) and finds the primary by asking
//! them all in parallel — the part the seed's availability-group listener plays, without a
//! stretched VLAN. After a failover it finds the new primary by itself.
//!
//! Retry rules, which callers can rely on:
//! - reads are retried on any replica failure until the deadline;
//! - a write is retried only when it certainly was not applied (the replica said it is not the
//!   primary, or the connection was refused before anything was sent);
//! - otherwise a write whose fate is unknown ends in [`ClientError::OutcomeUnknown`], which says
//!   so: the write may or may not be applied, and only an idempotent retry (compare-and-set) is
//!   safe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tandem_proto::db as pb;
use tandem_proto::db::admin_client::AdminClient;
use tandem_proto::db::kv_client::KvClient;
use tandem_proto::db::{error_code, ERROR_CODE_KEY, OLDEST_REVISION_KEY, PRIMARY_ADDR_KEY};
use tandem_tls::{ChannelCache, TlsFiles};
use tonic::transport::Channel;
use tonic::{Code, Status};

pub mod stream_mux;
pub mod watch_mux;

pub use tandem_proto::db::{Event, EventKind, KeyValue, Member, RecoverResponse, RejoinResponse, StatusResponse};

/// How long an operation keeps trying (discovery, redirects, retries) before giving up.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between rounds of primary discovery.
const DISCOVERY_PAUSE: Duration = Duration::from_millis(50);
/// How long discovery waits for the other replicas once one has said it is primary: a replica
/// of a newer epoch or term would override that answer, but one that cannot be reached (a
/// destroyed site, a cut link) must not hold discovery up for its whole timeout.
const DISCOVERY_GRACE: Duration = Duration::from_millis(150);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The write was sent and its fate is not known: it may or may not be applied.
    #[error("outcome unknown: {reason} (the write may or may not be applied; retry only with a compare-and-set)")]
    OutcomeUnknown { reason: String },
    /// No replica could serve the request before the deadline; nothing was applied.
    #[error("unavailable: {reason}")]
    Unavailable { reason: String },
    /// The change feed no longer reaches back to the requested revision.
    #[error("compacted, resync needed: changes after revision {requested} are gone (oldest kept: {oldest})")]
    Compacted { requested: u64, oldest: u64 },
    /// The replica refused the request itself (bad argument, not found, …); nothing was applied.
    #[error("refused: {}", .0.message())]
    Refused(Status),
    #[error("bad endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] tandem_tls::TlsError),
}

impl ClientError {
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::OutcomeUnknown { .. })
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed { revision: u64, versions: Vec<u64> },
    CompareFailed { key: String, expected: u64, actual: u64 },
    Fenced { reason: String },
}

/// A transaction under construction.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    request: pb::TxnRequest,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }
    /// Requires `key` to be at `version` (0 = absent).
    pub fn compare(mut self, key: impl Into<String>, version: u64) -> Self {
        self.request.compares.push(pb::Compare {
            key: key.into(),
            version,
        });
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        let put = pb::Put {
            key: key.into(),
            value: value.into(),
        };
        self.request.ops.push(pb::Op {
            op: Some(pb::op::Op::Put(put)),
        });
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        let delete = pb::Delete { key: key.into() };
        self.request.ops.push(pb::Op {
            op: Some(pb::op::Op::Delete(delete)),
        });
        self
    }
    /// Refuse the transaction unless the lease with this fencing token is current.
    pub fn fence(mut self, token: u64) -> Self {
        self.request.fence_token = Some(token);
        self
    }
}

/// A granted (or refused) lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub granted: bool,
    /// The fencing token of the new lease, or of the live holder's when refused.
    pub token: u64,
    pub expires_at_ms: u64,
    /// The live holder when refused.
    pub holder: String,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub tls: TlsFiles,
    /// Per-operation deadline.
    pub deadline: Duration,
    /// Per-attempt timeout of one gRPC call.
    pub attempt_timeout: Duration,
    /// Batches of events a watch may have waiting before it is cancelled on the shared stream
    /// and opened again (see [`Watch`]).
    pub watch_buffer: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: TlsFiles::default(),
            deadline: DEFAULT_DEADLINE,
            attempt_timeout: Duration::from_secs(5),
            watch_buffer: watch_mux::WATCH_BUFFER,
        }
    }
}

/// How a failed attempt affects the operation.
enum Verdict {
    /// Nothing was done; try `hint` (or rediscover) and retry.
    Retry { hint: Option<String>, reason: String },
    /// Final answer.
    Fail(ClientError),
}

/// Classifies a failed write attempt. Only refusals that guarantee nothing was applied retry.
fn classify_write(status: Status) -> Verdict {
    match error_code_of(&status) {
        Some(error_code::NOT_PRIMARY)
        | Some(error_code::WITNESS)
        | Some(error_code::NOT_INITIALIZED)
        | Some(error_code::FENCED) => Verdict::Retry {
            hint: primary_hint(&status),
            reason: status.message().to_owned(),
        },
        Some(error_code::OUTCOME_UNKNOWN) => Verdict::Fail(ClientError::OutcomeUnknown {
            reason: status.message().to_owned(),
        }),
        _ if is_connection_refused(&status) => Verdict::Retry {
            hint: None,
            reason: format!("connection refused: {}", status.message()),
        },
        _ => match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Internal => {
                Verdict::Fail(ClientError::OutcomeUnknown {
                    reason: status.message().to_owned(),
                })
            }
            _ => Verdict::Fail(ClientError::Refused(status)),
        },
    }
}

/// Classifies a failed read (or admin) attempt: anything but a definite refusal is retried.
fn classify_read(status: Status) -> Verdict {
    match error_code_of(&status) {
        Some(error_code::COMPACTED) => {
            let oldest = status
                .metadata()
                .get(OLDEST_REVISION_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Verdict::Fail(ClientError::Compacted { requested: 0, oldest })
        }
        Some(_) => Verdict::Retry {
            hint: primary_hint(&status),
            reason: status.message().to_owned(),
        },
        None => match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => Verdict::Retry {
                hint: None,
                reason: status.message().to_owned(),
            },
            _ => Verdict::Fail(ClientError::Refused(status)),
        },
    }
}

fn error_code_of(status: &Status) -> Option<&str> {
    status.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok())
}

fn primary_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(PRIMARY_ADDR_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// What a call to the one replica at `addr` failed with. A status the replica sent is its
/// refusal. One the transport made (it carries the transport's error as its source) means the
/// replica was not reached, or not to the end: for a call that changes nothing, or one whose
/// connection was refused (so nothing was sent), that is [`ClientError::Unavailable`]; for one
/// that may have changed something, [`ClientError::OutcomeUnknown`].
fn failed_at(addr: &str, status: Status, changes_state: bool) -> ClientError {
    let from_transport = status.code() == Code::Unavailable && std::error::Error::source(&status).is_some();
    if !from_transport {
        return ClientError::Refused(status);
    }
    let reason = format!("{addr}: {}", status.message());
    if changes_state && !is_connection_refused(&status) {
        ClientError::OutcomeUnknown { reason }
    } else {
        ClientError::Unavailable { reason }
    }
}

/// Whether the call failed because the TCP connection was refused (so nothing was sent).
pub fn is_connection_refused(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = error.source();
    }
    false
}

/// A live change feed.
///
/// The watches of one [`Client`] on one replica share one stream (see [`watch_mux`]). A watch
/// whose reader falls more than [`ClientOptions::watch_buffer`] batches behind is cancelled there,
/// so that it does not hold up the others, and opened again after its last revision once its
/// reader has read what it holds: the reader sees every change once, in order.
pub struct Watch {
    client: Client,
    prefix: String,
    watch: watch_mux::MuxWatch,
    /// The last revision received.
    last_revision: u64,
}

impl Watch {
    /// The next batch of events (whole transactions), `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Result<Vec<Event>, ClientError>> {
        loop {
            let status = match self.watch.next().await {
                Some(Ok(events)) => {
                    let events = Arc::unwrap_or_clone(events);
                    if let Some(last) = events.last() {
                        self.last_revision = last.revision;
                    }
                    return Some(Ok(events));
                }
                Some(Err(status)) => status,
                None if self.watch.fell_behind() => {
                    match self.client.open_watch(&self.prefix, self.last_revision).await {
                        Ok(watch) => self.watch = watch,
                        Err(e) => return Some(Err(e)),
                    }
                    continue;
                }
                None => return None,
            };
            return Some(Err(match classify_read(status) {
                Verdict::Fail(ClientError::Compacted { oldest, .. }) => ClientError::Compacted {
                    requested: self.last_revision,
                    oldest,
                },
                Verdict::Fail(e) => e,
                Verdict::Retry { reason, .. } => ClientError::Unavailable { reason },
            }));
        }
    }

    /// The revision to resume from after a reconnect.
    pub fn last_revision(&self) -> u64 {
        self.last_revision
    }
}

/// A client of one replica set.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every replica's `host:port`, as given.
    endpoints: Vec<String>,
    options: ClientOptions,
    /// Channels by address.
    channels: ChannelCache,
    /// The primary as last found.
    primary: Mutex<Option<String>>,
    /// The `WatchMany` stream to each replica watched, by address.
    watch_muxes: tokio::sync::Mutex<HashMap<String, Arc<watch_mux::Mux>>>,
}

impl Client {
    pub fn new(endpoints: Vec<String>, options: ClientOptions) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Endpoint {
                endpoint: String::new(),
                reason: "no endpoints given".into(),
            });
        }
        let tls = options.tls.client()?;
        let inner = Inner {
            endpoints,
            options,
            channels: ChannelCache::new(tls),
            primary: Mutex::default(),
            watch_muxes: tokio::sync::Mutex::default(),
        };
        Ok(Client { inner: Arc::new(inner) })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        self.inner.channels.channel(addr).map_err(|e| ClientError::Endpoint {
            endpoint: addr.to_owned(),
            reason: e.to_string(),
        })
    }

    fn kv(&self, addr: &str) -> Result<KvClient<Channel>, ClientError> {
        Ok(KvClient::new(self.channel(addr)?))
    }

    fn admin(&self, addr: &str) -> Result<AdminClient<Channel>, ClientError> {
        Ok(AdminClient::new(self.channel(addr)?))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.inner.options.attempt_timeout);
        request
    }

    /// Status of one replica.
    pub async fn status(&self, addr: &str) -> Result<StatusResponse, ClientError> {
        let mut admin = self.admin(addr)?;
        match admin.status(self.request(pb::StatusRequest {})).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(match classify_read(status) {
                Verdict::Fail(e) => e,
                Verdict::Retry { reason, .. } => ClientError::Unavailable {
                    reason: format!("{addr}: {reason}"),
                },
            }),
        }
    }

    /// Status of every replica, asked in parallel, in endpoint order.
    pub async fn status_all(&self) -> Vec<(String, Result<StatusResponse, ClientError>)> {
        let asks = self
            .inner
            .endpoints
            .iter()
            .map(|addr| async move { (addr.clone(), self.status(addr).await) });
        futures::future::join_all(asks).await
    }

    /// Every replica's status as it arrives, until all have answered or [`DISCOVERY_GRACE`]
    /// after the first one that says it is primary.
    async fn discovery_answers(&self) -> Vec<(String, Result<StatusResponse, ClientError>)> {
        let mut pending: futures::stream::FuturesUnordered<_> = self
            .inner
            .endpoints
            .iter()
            .map(|addr| async move { (addr.clone(), self.status(addr).await) })
            .collect();
        let mut answers = Vec::new();
        let mut grace_until: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace_until {
                Some(until) => match tokio::time::timeout_at(until, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => pending.next().await,
            };
            let Some((addr, answer)) = next else { break };
            if grace_until.is_none() && answer.as_ref().is_ok_and(|s| s.role == "primary") {
                grace_until = Some(tokio::time::Instant::now() + DISCOVERY_GRACE);
            }
            answers.push((addr, answer));
        }
        answers
    }

    /// Finds the primary: asks every replica in parallel and takes the one that says it is
    /// primary in the highest term; otherwise follows what the replicas say the primary is.
    pub async fn discover(&self) -> Result<String, ClientError> {
        let deadline = Instant::now() + self.inner.options.deadline;
        loop {
            let answers = self.discovery_answers().await;
            // Terms of different epochs are not comparable: the newest epoch wins, then the
            // highest term within it.
            let mut best: Option<((u64, u64), String)> = None;
            for (addr, answer) in &answers {
                if let Ok(status) = answer {
                    let rank = (status.epoch, status.term);
                    if status.role == "primary" && best.as_ref().is_none_or(|(best, _)| rank > *best) {
                        best = Some((rank, addr.clone()));
                    }
                }
            }
            let newest_epoch = answers
                .iter()
                .filter_map(|(_, a)| a.as_ref().ok())
                .map(|s| s.epoch)
                .max();
            if best.as_ref().is_some_and(|((epoch, _), _)| Some(*epoch) < newest_epoch) {
                best = None;
            }
            if best.is_none() {
                // A primary not in our list (added later, or named by a fenced replica) is still
                // reachable by its address.
                best = answers
                    .iter()
                    .filter_map(|(_, a)| a.as_ref().ok())
                    .filter(|s| !s.primary_addr.is_empty())
                    .max_by_key(|s| (s.epoch.max(s.fenced_by_epoch), s.term))
                    .map(|s| ((s.epoch, s.term), s.primary_addr.clone()));
            }
            if let Some((_, addr)) = best {
                *self.inner.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.clone());
                return Ok(addr);
            }
            if Instant::now() >= deadline {
                let reasons: Vec<String> = answers
                    .iter()
                    .map(|(addr, a)| match a {
                        Ok(s) => format!("{addr}: {}", s.role),
                        Err(e) => format!("{addr}: {e}"),
                    })
                    .collect();
                return Err(ClientError::Unavailable {
                    reason: format!("no primary found ({})", reasons.join("; ")),
                });
            }
            tokio::time::sleep(DISCOVERY_PAUSE).await;
        }
    }

    /// The primary as last found, discovering it when unknown.
    pub async fn primary(&self) -> Result<String, ClientError> {
        let known = self.inner.primary.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match known {
            Some(addr) => Ok(addr),
            None => self.discover().await,
        }
    }

    fn forget_primary(&self, hint: Option<String>) {
        *self.inner.primary.lock().unwrap_or_else(|p| p.into_inner()) = hint;
    }

    /// Runs `attempt` against the primary until it succeeds, fails for good, or the deadline
    /// passes. `write` selects the write retry rules.
    async fn on_primary<T, F, Fut>(&self, write: bool, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.inner.options.deadline;
        let mut last_reason = String::new();
        let mut pause = Duration::from_millis(10);
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Unavailable {
                    reason: format!("gave up at the deadline: {last_reason}"),
                });
            }
            let addr = match self.primary().await {
                Ok(addr) => addr,
                Err(e) => return Err(e),
            };
            let status = match attempt(addr.clone()).await {
                Ok(value) => return Ok(value),
                Err(status) => status,
            };
            let verdict = if write {
                classify_write(status)
            } else {
                classify_read(status)
            };
            match verdict {
                Verdict::Fail(e) => return Err(e),
                Verdict::Retry { hint, reason } => {
                    last_reason = format!("{addr}: {reason}");
                    let followed = hint.is_some();
                    self.forget_primary(hint.filter(|h| *h != addr));
                    if !followed {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                }
            }
        }
    }

    /// Reads one key (linearizable).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, ClientError> {
        self.on_primary(false, |addr| async move {
            let mut kv = self.kv(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
            let request = self.request(pb::GetRequest {
                key: key.to_owned(),
                stale: false,
            });
            Ok(kv.get(request).await?.into_inner().kv)
        })
        .await
    }

    /// Reads one key from a given replica's applied state (may be stale).
    pub async fn get_stale(&self, addr: &str, key: &str) -> Result<Option<KeyValue>, ClientError> {
        let mut kv = self.kv(addr)?;
        let request = self.request(pb::GetRequest {
            key: key.to_owned(),
            stale: true,
        });
        match kv.get(request).await {
            Ok(response) => Ok(response.into_inner().kv),
            Err(status) => Err(match classify_read(status) {
                Verdict::Fail(e) => e,
                Verdict::Retry { reason, .. } => ClientError::Unavailable {
                    reason: format!("{addr}: {reason}"),
                },
            }),
        }
    }

    /// Every key under `prefix` (linearizable unless `stale_from` names a replica to read from).
    pub async fn range(&self, prefix: &str, stale_from: Option<&str>) -> Result<Vec<KeyValue>, ClientError> {
        let mut all = Vec::new();
        self.range_each(prefix, stale_from, 0, |page| {
            all.extend(page);
            Ok::<_, ClientError>(())
        })
        .await?;
        Ok(all)
    }

    /// Every key under `prefix` as [`Client::range`] reads them, handed to `each` one page at a
    /// time (in key order; `page_limit` keys per request, 0 for the server's default), so that a
    /// large prefix need not be held in memory at once. Stops at the first error `each` returns.
    ///
    /// The next page is requested before `each` gets the current one, so the server reads it
    /// while `each` works (at most two pages are in memory at once).
    pub async fn range_each<E: From<ClientError>>(
        &self,
        prefix: &str,
        stale_from: Option<&str>,
        page_limit: u32,
        mut each: impl FnMut(Vec<KeyValue>) -> Result<(), E>,
    ) -> Result<(), E> {
        // The page in flight; dropping the set (an early return, or this future dropped)
        // aborts it.
        let mut in_flight = tokio::task::JoinSet::new();
        let request_after = |in_flight: &mut tokio::task::JoinSet<_>, start_after: String| {
            let request = pb::RangeRequest {
                prefix: prefix.to_owned(),
                start_after,
                limit: page_limit,
                stale: stale_from.is_some(),
            };
            let client = self.clone();
            let stale_from = stale_from.map(str::to_owned);
            in_flight.spawn(async move { client.range_page(request, stale_from).await });
        };
        request_after(&mut in_flight, String::new());
        loop {
            let page = match in_flight.join_next().await {
                Some(Ok(page)) => page?,
                Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Some(Err(e)) => {
                    return Err(ClientError::Unavailable {
                        reason: format!("a range request was cancelled: {e}"),
                    }
                    .into())
                }
                None => unreachable!("a page is requested before each wait"),
            };
            match page.kvs.last().filter(|_| page.more) {
                Some(last) => request_after(&mut in_flight, last.key.clone()),
                None => return each(page.kvs),
            }
            each(page.kvs)?;
        }
    }

    /// One page of a range: from `stale_from` (stale), or from the primary.
    async fn range_page(
        &self,
        request: pb::RangeRequest,
        stale_from: Option<String>,
    ) -> Result<pb::RangeResponse, ClientError> {
        match stale_from {
            Some(addr) => {
                let mut kv = self.kv(&addr)?;
                Ok(kv
                    .range(self.request(request))
                    .await
                    .map_err(|status| failed_at(&addr, status, false))?
                    .into_inner())
            }
            None => {
                self.on_primary(false, |addr| {
                    let request = request.clone();
                    async move {
                        let mut kv = self.kv(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
                        Ok(kv.range(self.request(request)).await?.into_inner())
                    }
                })
                .await
            }
        }
    }

    /// Runs a transaction on the primary.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, ClientError> {
        let request = txn.request;
        let response = self
            .on_primary(true, |addr| {
                let request = request.clone();
                async move {
                    let mut kv = self.kv(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
                    Ok(kv.txn(self.request(request)).await?.into_inner())
                }
            })
            .await?;
        match response.outcome {
            Some(pb::txn_response::Outcome::Committed(c)) => Ok(TxnOutcome::Committed {
                revision: c.revision,
                versions: c.versions,
            }),
            Some(pb::txn_response::Outcome::CompareFailed(f)) => Ok(TxnOutcome::CompareFailed {
                key: f.key,
                expected: f.expected,
                actual: f.actual,
            }),
            Some(pb::txn_response::Outcome::Fenced(f)) => Ok(TxnOutcome::Fenced { reason: f.reason }),
            None => Err(ClientError::Refused(Status::internal(
                "transaction answer without an outcome",
            ))),
        }
    }

    /// Puts one key; returns the revision it created.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<u64, ClientError> {
        match self.txn(Txn::new().put(key, value)).await? {
            TxnOutcome::Committed { revision, .. } => Ok(revision),
            other => Err(ClientError::Refused(Status::internal(format!(
                "unexpected outcome {other:?}"
            )))),
        }
    }

    /// Deletes one key; returns the store revision after it.
    pub async fn delete(&self, key: &str) -> Result<u64, ClientError> {
        match self.txn(Txn::new().delete(key)).await? {
            TxnOutcome::Committed { revision, .. } => Ok(revision),
            other => Err(ClientError::Refused(Status::internal(format!(
                "unexpected outcome {other:?}"
            )))),
        }
    }

    /// Opens the change feed of `prefix` after `after_revision`, on the primary. The watches of
    /// this client on one replica share one `WatchMany` stream.
    pub async fn watch(&self, prefix: &str, after_revision: u64) -> Result<Watch, ClientError> {
        let watch = self.open_watch(prefix, after_revision).await?;
        Ok(Watch {
            client: self.clone(),
            prefix: prefix.to_owned(),
            watch,
            last_revision: after_revision,
        })
    }

    async fn open_watch(&self, prefix: &str, after_revision: u64) -> Result<watch_mux::MuxWatch, ClientError> {
        self.on_primary(false, |addr| async move {
            let mux = self.watch_mux(&addr).await?;
            let request = pb::WatchRequest {
                prefix: prefix.to_owned(),
                after_revision,
            };
            let options = &self.inner.options;
            watch_mux::open(&mux, request, options.attempt_timeout, options.watch_buffer).await
        })
        .await
        .map_err(|e| match e {
            ClientError::Compacted { oldest, .. } => ClientError::Compacted {
                requested: after_revision,
                oldest,
            },
            other => other,
        })
    }

    /// The watch stream to `addr`: the open one, or a new one when there is none or it broke.
    async fn watch_mux(&self, addr: &str) -> Result<Arc<watch_mux::Mux>, Status> {
        let mut muxes = self.inner.watch_muxes.lock().await;
        if let Some(mux) = muxes.get(addr).filter(|mux| mux.usable()) {
            return Ok(mux.clone());
        }
        let kv = self.kv(addr).map_err(|e| Status::unavailable(e.to_string()))?;
        let mux = watch_mux::connect(kv, self.inner.options.attempt_timeout).await?;
        muxes.insert(addr.to_owned(), mux.clone());
        Ok(mux)
    }

    pub async fn lease_grant(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<LeaseGrant, ClientError> {
        let response = self
            .on_primary(true, |addr| async move {
                let mut kv = self.kv(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
                let request = pb::LeaseGrantRequest {
                    name: name.to_owned(),
                    holder: holder.to_owned(),
                    ttl_ms,
                };
                Ok(kv.lease_grant(self.request(request)).await?.into_inner())
            })
            .await?;
        Ok(LeaseGrant {
            granted: response.granted,
            token: response.token,
            expires_at_ms: response.expires_at_ms,
            holder: response.holder,
        })
    }

    /// Extends a lease; `Ok(None)` when it is gone or expired.
    pub async fn lease_keep_alive(&self, token: u64) -> Result<Option<u64>, ClientError> {
        let response = self
            .on_primary(true, |addr| async move {
                let mut kv = self.kv(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
                Ok(kv
                    .lease_keep_alive(self.request(pb::LeaseKeepAliveRequest { token }))
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(response.alive.then_some(response.expires_at_ms))
    }

    pub async fn lease_revoke(&self, token: u64) -> Result<(), ClientError> {
        self.on_primary(true, |addr| async move {
            let mut kv = self.kv(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
            kv.lease_revoke(self.request(pb::LeaseRevokeRequest { token })).await?;
            Ok(())
        })
        .await
    }

    /// Forms a new replica set; `via` must be one of the voters.
    pub async fn initialize(&self, via: &str, members: Vec<Member>) -> Result<Vec<Member>, ClientError> {
        let mut admin = self.admin(via)?;
        let mut request = tonic::Request::new(pb::InitializeRequest { members });
        request.set_timeout(self.inner.options.deadline);
        admin
            .initialize(request)
            .await
            .map(|r| r.into_inner().members)
            .map_err(|status| failed_at(via, status, true))
    }

    pub async fn add_replica(&self, member: Member) -> Result<Vec<Member>, ClientError> {
        self.on_primary(false, |addr| {
            let member = member.clone();
            async move {
                let mut admin = self.admin(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
                let mut request = tonic::Request::new(pb::AddReplicaRequest { member: Some(member) });
                request.set_timeout(self.inner.options.deadline);
                Ok(admin.add_replica(request).await?.into_inner().members)
            }
        })
        .await
    }

    pub async fn remove_replica(&self, id: u64) -> Result<Vec<Member>, ClientError> {
        self.on_primary(false, |addr| async move {
            let mut admin = self.admin(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
            Ok(admin
                .remove_replica(self.request(pb::RemoveReplicaRequest { id }))
                .await?
                .into_inner()
                .members)
        })
        .await
    }

    pub async fn set_kind(&self, id: u64, kind: &str) -> Result<Vec<Member>, ClientError> {
        self.on_primary(false, |addr| async move {
            let mut admin = self.admin(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
            let request = pb::SetKindRequest {
                id,
                kind: kind.to_owned(),
            };
            Ok(admin.set_kind(self.request(request)).await?.into_inner().members)
        })
        .await
    }

    /// Planned switchover to replica `target`.
    pub async fn switchover(&self, target: u64) -> Result<pb::SwitchoverResponse, ClientError> {
        let response = self
            .on_primary(false, |addr| async move {
                let mut admin = self.admin(&addr).map_err(|e| Status::unavailable(e.to_string()))?;
                let mut request = tonic::Request::new(pb::SwitchoverRequest { target });
                request.set_timeout(self.inner.options.deadline);
                Ok(admin.switchover(request).await?.into_inner())
            })
            .await?;
        self.forget_primary(None);
        Ok(response)
    }

    /// Builds a snapshot on one replica (compacting its log); returns the snapshot's index.
    pub async fn snapshot(&self, addr: &str) -> Result<u64, ClientError> {
        let mut admin = self.admin(addr)?;
        let mut request = tonic::Request::new(pb::SnapshotRequest {});
        request.set_timeout(self.inner.options.deadline);
        admin
            .snapshot(request)
            .await
            .map(|r| r.into_inner().index)
            .map_err(|status| failed_at(addr, status, false))
    }

    /// Forced recovery on the replica at `addr` (see `tandem db recover`).
    pub async fn recover(&self, addr: &str, force: bool) -> Result<pb::RecoverResponse, ClientError> {
        let mut admin = self.admin(addr)?;
        let mut request = tonic::Request::new(pb::RecoverRequest { force });
        request.set_timeout(self.inner.options.deadline);
        let response = admin
            .recover(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| failed_at(addr, status, true))?;
        self.forget_primary(Some(addr.to_owned()));
        Ok(response)
    }

    /// Rejoin of the fenced replica at `addr` to the newer epoch (see `tandem db rejoin`).
    pub async fn rejoin(
        &self,
        addr: &str,
        primary: Option<&str>,
        kind: Option<&str>,
    ) -> Result<pb::RejoinResponse, ClientError> {
        let mut admin = self.admin(addr)?;
        let request = pb::RejoinRequest {
            primary: primary.unwrap_or_default().to_owned(),
            kind: kind.unwrap_or_default().to_owned(),
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.inner.options.deadline.max(Duration::from_secs(150)));
        admin
            .rejoin(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|status| failed_at(addr, status, true))
    }
}
