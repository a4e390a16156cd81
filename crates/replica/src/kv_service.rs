//! The client API: reads, transactions, the change feed (see [`crate::watch`]) and leases.
//!
//! Reads are linearizable unless the caller asks for a stale read, which any data replica serves
//! from what it has applied. Writes go through [`Core::write`]: only the primary accepts them, and
//! they are acknowledged after the sync gate. Every request is validated before anything is
//! proposed, so a bad request changes nothing.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tandem_proto::db as pb;
use tandem_proto::db::kv_server::Kv;
use tandem_store::{Command, CommandResult, Compare, KeyValue, LeaseResult, Op, Txn, TxnResult};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::Engine;
use crate::node::{now_ms, Core};
use crate::refusal;
use crate::watch::{self as feed, stop_reason, store_error, Feed};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most compares plus ops in one transaction.
pub const MAX_TXN_ITEMS: usize = 1024;
/// Range page size when the caller gives none, and the largest page served.
pub const RANGE_LIMIT_DEFAULT: usize = 1000;
pub const RANGE_LIMIT_MAX: usize = 10_000;
/// Lease TTL bounds.
pub const LEASE_TTL_MS_MIN: u64 = 100;
pub const LEASE_TTL_MS_MAX: u64 = 3_600_000;

pub struct KvService {
    core: Arc<Core>,
    /// Flips to true when the replica shuts down, ending open watch streams.
    stopped: watch::Receiver<bool>,
}

impl KvService {
    pub fn new(core: Arc<Core>, stopped: watch::Receiver<bool>) -> Self {
        KvService { core, stopped }
    }

    /// The engine to read from, once a read there is allowed (and linearizable unless stale).
    async fn read_barrier(&self, stale: bool) -> Result<Arc<Engine>, Status> {
        if stale {
            self.core.check_serves_clients().map(|(engine, _)| engine)
        } else {
            self.core.linearize().await
        }
    }
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(refusal::invalid("empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(refusal::invalid(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        version: kv.version,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    }
}

/// Validates a transaction request and turns it into a command.
fn txn_command(request: pb::TxnRequest) -> Result<Command, Status> {
    if request.compares.len() + request.ops.len() > MAX_TXN_ITEMS {
        return Err(refusal::invalid(format!(
            "transaction has {} compares and {} ops; the limit is {MAX_TXN_ITEMS} in all",
            request.compares.len(),
            request.ops.len()
        )));
    }
    let mut compares = Vec::with_capacity(request.compares.len());
    for compare in request.compares {
        check_key(&compare.key)?;
        compares.push(Compare {
            key: compare.key,
            version: compare.version,
        });
    }
    let mut ops = Vec::with_capacity(request.ops.len());
    let mut keys = HashSet::new();
    for op in request.ops {
        let op = match op.op {
            Some(pb::op::Op::Put(put)) => {
                if put.value.len() > MAX_VALUE_BYTES {
                    return Err(refusal::invalid(format!(
                        "value of key {:?} has {} bytes; the limit is {MAX_VALUE_BYTES}",
                        put.key,
                        put.value.len()
                    )));
                }
                Op::Put {
                    key: put.key,
                    value: put.value,
                }
            }
            Some(pb::op::Op::Delete(delete)) => Op::Delete { key: delete.key },
            None => return Err(refusal::invalid("an op has neither put nor delete")),
        };
        check_key(op.key())?;
        if !keys.insert(op.key().to_owned()) {
            return Err(refusal::invalid(format!(
                "key {:?} appears twice in one transaction",
                op.key()
            )));
        }
        ops.push(op);
    }
    Ok(Command::Txn(Txn {
        compares,
        ops,
        fence: request.fence_token,
        now_ms: now_ms(),
    }))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let request = request.into_inner();
        check_key(&request.key)?;
        let engine = self.read_barrier(request.stale).await?;
        let reader = &engine.reader;
        let kv = reader.get(&request.key).await.map_err(store_error)?;
        let revision = reader.revision().await.map_err(store_error)?;
        Ok(Response::new(pb::GetResponse {
            kv: kv.map(to_pb),
            revision,
        }))
    }

    async fn range(&self, request: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let request = request.into_inner();
        if request.prefix.len() > MAX_KEY_BYTES {
            return Err(refusal::invalid("prefix longer than the longest key"));
        }
        let limit = match request.limit as usize {
            0 => RANGE_LIMIT_DEFAULT,
            n => n.min(RANGE_LIMIT_MAX),
        };
        let engine = self.read_barrier(request.stale).await?;
        let reader = &engine.reader;
        let start_after = (!request.start_after.is_empty()).then_some(request.start_after);
        let mut kvs = reader
            .range(&request.prefix, start_after, limit + 1)
            .await
            .map_err(store_error)?;
        let more = kvs.len() > limit;
        kvs.truncate(limit);
        let revision = reader.revision().await.map_err(store_error)?;
        Ok(Response::new(pb::RangeResponse {
            kvs: kvs.into_iter().map(to_pb).collect(),
            more,
            revision,
        }))
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let command = txn_command(request.into_inner())?;
        let outcome = match self.core.write(command).await? {
            CommandResult::Txn(TxnResult::Committed { revision, versions }) => {
                pb::txn_response::Outcome::Committed(pb::Committed { revision, versions })
            }
            CommandResult::Txn(TxnResult::CompareFailed { key, expected, actual }) => {
                pb::txn_response::Outcome::CompareFailed(pb::CompareFailed { key, expected, actual })
            }
            CommandResult::Txn(TxnResult::Fenced(reason)) => pb::txn_response::Outcome::Fenced(pb::Fenced {
                reason: reason.to_string(),
            }),
            other => return Err(Status::internal(format!("unexpected state-machine answer {other:?}"))),
        };
        Ok(Response::new(pb::TxnResponse { outcome: Some(outcome) }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let (engine, _) = self.core.check_serves_clients()?;
        let feed = Feed::new(engine.reader.clone(), request.into_inner());
        // Subscribe before reading the history so that nothing falls between the two.
        let live = engine.reader.subscribe();
        // Fail fast (as a status, not a stream item) when the start is already compacted.
        let first = feed.history().await?;
        let stop = stop_reason(self.stopped.clone(), engine.stopped());
        Ok(Response::new(Box::pin(feed.stream(first, live, stop))))
    }

    type WatchManyStream = Pin<Box<dyn Stream<Item = Result<pb::WatchManyResponse, Status>> + Send>>;

    async fn watch_many(
        &self,
        request: Request<Streaming<pb::WatchControl>>,
    ) -> Result<Response<Self::WatchManyStream>, Status> {
        let (engine, _) = self.core.check_serves_clients()?;
        let stop = stop_reason(self.stopped.clone(), engine.stopped());
        Ok(Response::new(Box::pin(feed::many(
            engine.reader.clone(),
            request.into_inner(),
            stop,
        ))))
    }

    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() || request.name.len() > MAX_KEY_BYTES {
            return Err(refusal::invalid("a lease needs a name of 1 to 4096 bytes"));
        }
        if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&request.ttl_ms) {
            return Err(refusal::invalid(format!(
                "lease TTL {} ms is outside {LEASE_TTL_MS_MIN}..={LEASE_TTL_MS_MAX} ms",
                request.ttl_ms
            )));
        }
        let command = Command::LeaseGrant {
            name: request.name,
            holder: request.holder,
            ttl_ms: request.ttl_ms,
            now_ms: now_ms(),
        };
        let response = match self.core.write(command).await? {
            CommandResult::Lease(LeaseResult::Granted { token, expires_at_ms }) => pb::LeaseGrantResponse {
                granted: true,
                token,
                expires_at_ms,
                holder: String::new(),
            },
            CommandResult::Lease(LeaseResult::Held {
                holder,
                token,
                expires_at_ms,
                ..
            }) => pb::LeaseGrantResponse {
                granted: false,
                token,
                expires_at_ms,
                holder,
            },
            other => return Err(Status::internal(format!("unexpected state-machine answer {other:?}"))),
        };
        Ok(Response::new(response))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let token = request.into_inner().token;
        let response = match self
            .core
            .write(Command::LeaseKeepAlive {
                token,
                now_ms: now_ms(),
            })
            .await?
        {
            CommandResult::Lease(LeaseResult::Granted { expires_at_ms, .. }) => pb::LeaseKeepAliveResponse {
                alive: true,
                expires_at_ms,
            },
            CommandResult::Lease(LeaseResult::NotFound { .. }) => pb::LeaseKeepAliveResponse {
                alive: false,
                expires_at_ms: 0,
            },
            other => return Err(Status::internal(format!("unexpected state-machine answer {other:?}"))),
        };
        Ok(Response::new(response))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let token = request.into_inner().token;
        self.core.write(Command::LeaseRevoke { token }).await?;
        Ok(Response::new(pb::LeaseRevokeResponse {}))
    }
}
