//! The `ConfServ` gRPC service: authentication, reads from the state in memory (filtered by the
//! caller's rights, secrets removed), writes through [`Node::commit`], and subscriptions
//! (history from the ring, then live records from the broadcast channel).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

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
use crate::node::{now_ms, Caller, Committed, Node};
use crate::plan::{self, ImportReport};
use crate::record::{to_json, LogRecord, Mode, What};
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

/// The service of one server.
pub struct Service {
    node: Arc<Node>,
    /// Bounds concurrent password checks.
    logins: Semaphore,
    /// Ends subscriptions at shutdown.
    stop: watch::Receiver<bool>,
}

impl Service {
    /// The service of `node`; subscriptions end when `stop` turns true.
    pub fn new(node: Arc<Node>, stop: watch::Receiver<bool>) -> Self {
        Service {
            node,
            logins: Semaphore::new(LOGINS_AT_ONCE),
            stop,
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, CfgError> {
        let token = request
            .metadata()
            .get(pb::AUTHORIZATION_KEY)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_owned())
            .ok_or_else(|| CfgError::Unauthenticated("no session token: log in first".into()))?;
        let state = self.node.shared.read();
        let key = state
            .session_key
            .as_ref()
            .ok_or_else(|| CfgError::Unavailable("this server does not know the session key yet".into()))?;
        let person = auth::verify(key, &token, now_ms()).map_err(|e| CfgError::Unauthenticated(e.into()))?;
        match state.set.get(ObjectType::Person, person) {
            Some(p) if p.state == ObjState::Enabled => Ok(Caller {
                person: Principal(person),
                user: p.str_field("user_name").unwrap_or(&p.name).to_owned(),
            }),
            _ => Err(CfgError::Unauthenticated(
                "the session's person no longer exists or is disabled".into(),
            )),
        }
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

/// The records after `after` a subscriber must replay, and the number they reach; or why the
/// history does not cover them.
async fn history_after(node: &Node, after: u64) -> Result<(Vec<Arc<LogRecord>>, u64), CfgError> {
    if after > node.shared.read().seq {
        let mut applied = node.shared.applied();
        let reached = tokio::time::timeout(AHEAD_WAIT, applied.wait_for(|seq| *seq >= after)).await;
        if !matches!(reached, Ok(Ok(_))) {
            let seq = node.shared.read().seq;
            return Err(CfgError::ReloadRequired {
                reason: format!("notification {after} is ahead of this server's history (it is at {seq})"),
                seq,
            });
        }
    }
    let state = node.shared.read();
    if after >= state.seq {
        return Ok((Vec::new(), state.seq));
    }
    let floor = state.history_floor();
    if after < floor {
        return Err(CfgError::ReloadRequired {
            reason: format!(
                "the history after notification {after} is no longer kept (it resumes after {floor}; up to {} records \
                 are kept)",
                state.ring_capacity
            ),
            seq: state.seq,
        });
    }
    let records: Vec<Arc<LogRecord>> = state.ring.iter().filter(|r| r.seq > after).cloned().collect();
    let cutoff_ms = now_ms().saturating_sub(node.config.history_max_age_ms);
    if records.first().is_some_and(|r| r.when_ms < cutoff_ms) {
        return Err(CfgError::ReloadRequired {
            reason: format!("the history after notification {after} is older than the history keeps"),
            seq: state.seq,
        });
    }
    Ok((records, state.seq))
}

/// One subscriber's task: replays, then follows; ends when the client goes away or the server
/// stops.
struct Feed {
    node: Arc<Node>,
    caller: Caller,
    filter: Filter,
    tx: mpsc::Sender<Result<pb::Notification, Status>>,
    /// The last number covered (sent or filtered out).
    last: u64,
}

impl Feed {
    /// Sends `record` if the filter and the caller's rights let it through; `false` when the
    /// client is gone.
    async fn deliver(&mut self, record: &LogRecord) -> bool {
        if record.seq <= self.last {
            return true;
        }
        self.last = record.seq;
        let visible = match record.object() {
            None => true,
            Some(obj) => {
                self.filter.matches(obj) && {
                    let state = self.node.shared.read();
                    access::allowed(&state.set, self.caller.person, Right::Read, obj)
                }
            }
        };
        if !visible {
            return true;
        }
        self.tx.send(Ok(record.notification())).await.is_ok()
    }

    async fn run(
        mut self,
        replay: Vec<Arc<LogRecord>>,
        reached: u64,
        mut live: broadcast::Receiver<Arc<LogRecord>>,
        mut stop: watch::Receiver<bool>,
    ) {
        for record in replay {
            if !self.deliver(&record).await {
                return;
            }
        }
        self.last = self.last.max(reached);
        let marker = pb::Notification {
            seq: self.last,
            kind: "live".into(),
            mode: self.node.shared.read().mode.name().into(),
            ..Default::default()
        };
        if self.tx.send(Ok(marker)).await.is_err() {
            return;
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                _ = self.tx.closed() => return,
                _ = stopped(&mut stop) => {
                    let _ = self.tx.send(Err(CfgError::Unavailable("the server is stopping".into()).to_status())).await;
                    return;
                }
            };
            let gap = match received {
                Ok(record) if record.seq <= self.last + 1 => {
                    if !self.deliver(&record).await {
                        return;
                    }
                    false
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if gap {
                match history_after(&self.node, self.last).await {
                    Ok((records, reached)) => {
                        for record in records {
                            if !self.deliver(&record).await {
                                return;
                            }
                        }
                        self.last = self.last.max(reached);
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(e.to_status())).await;
                        return;
                    }
                }
            }
        }
    }
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
            let state = self.node.shared.read();
            let key = state
                .session_key
                .clone()
                .ok_or_else(|| CfgError::Unavailable("this server does not know the session key yet".into()))?;
            let tenant_name = if request.tenant.is_empty() {
                tandem_config::model::ENVIRONMENT_TENANT_NAME
            } else {
                request.tenant.as_str()
            };
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
        let expires_at_ms = now_ms() + self.node.config.session_ttl_ms;
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
        let state = self.node.shared.read();
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
        let state = self.node.shared.read();
        let mut page = access::query_as(&state.set, caller.person, &query);
        if let PageItems::Full(objects) = &mut page.items {
            for obj in objects.iter_mut() {
                *obj = obj.without_secrets();
            }
        }
        Ok(Response::new(pb::QueryResponse {
            page_json: to_json(&page),
            seq: state.seq,
        }))
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
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
        let committed = self
            .node
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
        let committed = self
            .node
            .commit(&caller, &request.request_id, op, move |state, _| {
                plan::update(state, person, t, dbid, &delta, expected)
            })
            .await?;
        let object = match &committed {
            Some(c) => c.records.first().and_then(|r| r.object().cloned()),
            None => self.node.shared.read().set.get(t, dbid).cloned(),
        };
        Ok(Response::new(write_response(committed, object)))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let t = object_type(&request.object_type)?;
        let (dbid, cascade, expected) = (request.dbid, request.cascade, request.expected_version);
        let op = format!("delete {t} {dbid}{}", if cascade { " with cascade" } else { "" });
        let person = caller.person;
        let committed = self
            .node
            .commit(&caller, &request.request_id, op, move |state, _| {
                plan::delete(state, person, t, dbid, cascade, expected)
            })
            .await?;
        Ok(Response::new(write_response(committed, None)))
    }

    type SubscribeStream = ReceiverStream<Result<pb::Notification, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let filter = Filter::from_request(&request)?;
        // Subscribe before reading the history, so that nothing falls between the two.
        let live = self.node.shared.subscribe();
        let (replay, reached) = match request.after_seq {
            Some(after) => history_after(&self.node, after).await?,
            None => (Vec::new(), self.node.shared.read().seq),
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let feed = Feed {
            node: self.node.clone(),
            caller,
            filter,
            tx,
            last: request.after_seq.unwrap_or(reached),
        };
        tokio::spawn(feed.run(replay, reached, live, self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn set_mode(&self, request: Request<pb::SetModeRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
        let mode: Mode = request.get_ref().mode.parse().map_err(CfgError::BadRequest)?;
        let person = caller.person;
        let committed = self
            .node
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
            let state = self.node.shared.read();
            (state.seq, state.log_first)
        };
        let mut next = request.after_seq.max(log_first.saturating_sub(1)) + 1;
        let mut found: Vec<String> = Vec::new();
        let mut blocks = 0;
        while next <= seq && found.len() < limit && blocks < AUDIT_BLOCKS_MAX {
            let block_end = (next / keys::LOG_BLOCK + 1) * keys::LOG_BLOCK - 1;
            let records = store::read_records(self.node.db(), next, block_end.min(seq))
                .await
                .map_err(|e| CfgError::Unavailable(e.to_string()))?;
            blocks += 1;
            let state = self.node.shared.read();
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
        let state = self.node.shared.read();
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
        let request = request.into_inner();
        let doc = Document::from_json(&request.document_json).map_err(CfgError::from)?;
        if request.dry_run {
            let state = self.node.shared.read();
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
        let found: Arc<std::sync::Mutex<Option<(Vec<What>, ImportReport)>>> = Arc::default();
        let op = format!("import of {} objects", doc.objects.len());
        let person = caller.person;
        let doc = Arc::new(doc);
        let planned = found.clone();
        let committed = self
            .node
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
        let state = self.node.shared.read();
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
        let role = self.node.role();
        let (holder, last_step_down) = self.node.lease_view();
        let state = self.node.shared.read();
        Ok(Response::new(pb::StatusResponse {
            name: self.node.config.name.clone(),
            addr: self.node.config.advertise.clone(),
            role: role.name().into(),
            lease_holder: holder.unwrap_or_default(),
            primary_addr: self.node.primary_addr().unwrap_or_default(),
            mode: state.mode.name().into(),
            last_seq: state.seq,
            history_oldest_seq: state.history_floor(),
            objects: state.set.len() as u64,
            fencing_token: match role {
                crate::node::Role::Primary { token } => token,
                _ => 0,
            },
            db_revision: state.revision,
            last_step_down: last_step_down.unwrap_or_default(),
        }))
    }
}
