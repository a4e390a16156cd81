//! The server side of replica-to-replica traffic. Every message's envelope is checked (cluster,
//! addressee, epoch) before its payload is decoded and handed to openraft, so a replica of
//! another replica set or another epoch can neither vote here nor append here.
//!
//! Replication sends AppendEntries on a long-lived stream per link (`AppendStream`), answered in
//! order: a message is handled only after the one before it, as a replication link sends them
//! one at a time anyway. A refused message is answered with its refusal and the stream goes on.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use tandem_proto::db::raft_server::Raft;
use tandem_proto::db::{RaftReply, RaftRequest};
use tandem_store::{ReplicaId, TypeConfig};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::election::{self, PreVoteRequest};
use crate::network::{decode, encode};
use crate::node::Core;
use crate::refusal;

#[derive(Clone)]
pub struct RaftService {
    core: Arc<Core>,
    /// Becomes true when the replica shuts down: open append streams end then (a graceful
    /// shutdown waits for every open stream, and a primary never ends its own).
    stopped: watch::Receiver<bool>,
}

impl RaftService {
    pub fn new(core: Arc<Core>, stopped: watch::Receiver<bool>) -> Self {
        RaftService { core, stopped }
    }

    /// Checks the envelope and returns the payload.
    ///
    /// A fenced replica refuses every message (its old epoch must not reach a quorum through
    /// it). A message of a newer epoch fences this replica; one of an older epoch is refused with
    /// this replica's epoch, which fences its sender.
    fn admit(&self, message: RaftRequest) -> Result<RaftRequest, Status> {
        let identity = &self.core.identity;
        let epoch = identity.epoch();
        let primary = self.core.metrics().ok().and_then(|m| self.core.primary_addr(&m));
        let refuse = |text: String| refusal::wrong_cluster(text, epoch, primary.as_deref());
        if message.cluster != identity.cluster {
            return Err(refuse(format!(
                "message from replica set {:?}, this replica belongs to {:?}",
                message.cluster, identity.cluster
            )));
        }
        if message.to != identity.id {
            return Err(refuse(format!(
                "message for replica {}, this is replica {}",
                message.to, identity.id
            )));
        }
        if let Some(fence) = identity.fence() {
            return Err(refusal::fenced(epoch, &fence));
        }
        if message.epoch > epoch {
            identity.observe_epoch(message.epoch, "");
        }
        if message.epoch != epoch {
            return Err(refuse(format!(
                "message from replica {} of epoch {}, this replica is in epoch {epoch}",
                message.from, message.epoch
            )));
        }
        Ok(message)
    }

    fn raft(&self) -> Result<openraft::Raft<TypeConfig>, Status> {
        let engine = self.core.engine()?;
        if !engine.is_ready() {
            return Err(Status::unavailable(
                "this replica is starting: checking its peers for a newer epoch",
            ));
        }
        Ok(engine.raft.clone())
    }

    async fn append(&self, message: RaftRequest) -> Result<RaftReply, Status> {
        let message = self.admit(message)?;
        let rpc: AppendEntriesRequest<TypeConfig> = payload(&message)?;
        let raft = self.raft()?;
        let result = raft.append_entries(rpc).await;
        if result
            .as_ref()
            .is_ok_and(|r| !matches!(r, AppendEntriesResponse::HigherVote(_)))
        {
            self.core.contact_from_primary();
        }
        if message.primary_last_index > 0 && result.as_ref().is_ok_and(|r| r.is_success()) {
            let own_last = raft.metrics().borrow().last_log_index.unwrap_or(0);
            self.core.heard_from_primary(&message, own_last);
        }
        encoded(&result)
    }
}

fn encoded<T: Serialize>(value: &T) -> Result<RaftReply, Status> {
    let payload = encode(value).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
    Ok(RaftReply {
        payload,
        ..RaftReply::default()
    })
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftReply>, Status> {
    encoded(value).map(Response::new)
}

fn payload<T: serde::de::DeserializeOwned>(message: &RaftRequest) -> Result<T, Status> {
    decode(&message.payload).map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.append(request.into_inner()).await.map(Response::new)
    }

    type AppendStreamStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send>>;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        // Polled by the connection itself: no task of its own, one message at a time.
        let replies = futures::stream::unfold(
            (request.into_inner(), self.clone()),
            |(mut requests, service)| async move {
                let mut stopped = service.stopped.clone();
                // A broken request stream ends the reply stream: the sender opens a new one.
                let message = tokio::select! {
                    message = requests.message() => message.ok()??,
                    _ = stopped.wait_for(|s| *s) => return None,
                };
                let seq = message.seq;
                let reply = match service.append(message).await {
                    Ok(reply) => RaftReply { seq, ..reply },
                    Err(status) => RaftReply {
                        seq,
                        refusal: Some(tandem_proto::db::StatusMessage::from_status(&status)),
                        ..RaftReply::default()
                    },
                };
                Some((Ok(reply), (requests, service)))
            },
        );
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let message = self.admit(request.into_inner())?;
        let rpc: VoteRequest<ReplicaId> = payload(&message)?;
        let result = self.raft()?.vote(rpc).await;
        // A vote granted starts openraft's lease too (it refuses other candidates for as long): a
        // primary is about to be, and this replica must not grant pre-votes meanwhile either.
        if result.as_ref().is_ok_and(|r| r.vote_granted) {
            self.core.contact_from_primary();
        }
        reply(&result)
    }

    async fn install_snapshot(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let message = self.admit(request.into_inner())?;
        let rpc: InstallSnapshotRequest<TypeConfig> = payload(&message)?;
        let vote = rpc.vote;
        let result: Result<_, RaftError<ReplicaId, InstallSnapshotError>> = self.raft()?.install_snapshot(rpc).await;
        if result.as_ref().is_ok_and(|r| r.vote <= vote) {
            self.core.contact_from_primary();
        }
        reply(&result)
    }

    async fn elect_now(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let message = self.admit(request.into_inner())?;
        tracing::info!(from = message.from, "asked to campaign for primary now");
        let result: Result<(), String> = self.raft()?.trigger().elect().await.map_err(|e| e.to_string());
        reply(&result)
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let message = self.admit(request.into_inner())?;
        let question: PreVoteRequest = payload(&message)?;
        // Refused while starting, like every Raft message (`raft` says why).
        self.raft()?;
        let engine = self.core.engine()?;
        let answer = election::answer(&self.core, &engine, &question).await;
        tracing::debug!(from = message.from, granted = answer.granted, reason = %answer.reason, "pre-vote");
        reply(&answer)
    }
}
