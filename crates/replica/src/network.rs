//! The client side of replica-to-replica traffic: openraft's `RaftNetwork` over gRPC.
//!
//! Each openraft message is bincode-encoded into a [`RaftRequest`] envelope that names the
//! cluster, the epoch and both ends; the receiver ([`crate::raft_service`]) checks the envelope
//! before anything reaches Raft. Connections are lazy and shared per address.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::LogId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tandem_proto::db::raft_client::RaftClient;
use tandem_proto::db::{RaftReply, RaftRequest, EPOCH_KEY, PRIMARY_ADDR_KEY};
use tandem_store::{Fence, Replica, ReplicaId, StateReader, TypeConfig};
use tokio::sync::{mpsc, watch};

use crate::early_replication::{self, EarlyAcks, EarlyCounts, EarlyState};
use crate::progress::Progress;
use tandem_tls::ChannelCache;
use tonic::transport::{Channel, ClientTlsConfig};

/// Largest replica-to-replica message (a batch of log entries or a snapshot chunk).
pub const MAX_PEER_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Who this replica is on the wire: stamped on every outgoing message, checked on every incoming
/// one.
#[derive(Debug)]
pub struct PeerIdentity {
    /// This replica's id.
    pub id: ReplicaId,
    /// The replica set's name.
    pub cluster: String,
    /// The replica set's epoch as this replica knows it.
    pub epoch: AtomicU64,
    /// Set while a newer epoch supersedes this replica.
    fence: Mutex<Option<Fence>>,
    /// The newest epoch any peer has shown us, if newer than ours: the fencing task persists it.
    newer: watch::Sender<Option<Fence>>,
}

impl PeerIdentity {
    pub fn new(id: ReplicaId, cluster: &str, epoch: u64, fence: Option<Fence>) -> Self {
        PeerIdentity {
            id,
            cluster: cluster.to_owned(),
            epoch: AtomicU64::new(epoch),
            fence: Mutex::new(fence),
            newer: watch::channel(None).0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub fn fence(&self) -> Option<Fence> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Notes that a peer is in a newer epoch (the fencing task acts on it).
    pub fn observe_epoch(&self, epoch: u64, primary_addr: &str) {
        if epoch <= self.epoch() {
            return;
        }
        self.newer.send_if_modified(|newer| match newer {
            Some(known) if known.epoch > epoch => false,
            Some(known) if known.epoch == epoch => {
                if known.primary_addr.is_empty() && !primary_addr.is_empty() {
                    known.primary_addr = primary_addr.to_owned();
                    true
                } else {
                    false
                }
            }
            _ => {
                *newer = Some(Fence {
                    epoch,
                    primary_addr: primary_addr.to_owned(),
                });
                true
            }
        });
    }

    /// Newer epochs as peers reveal them.
    pub fn newer_epochs(&self) -> watch::Receiver<Option<Fence>> {
        self.newer.subscribe()
    }

    fn envelope(&self, to: ReplicaId, payload: Vec<u8>) -> RaftRequest {
        RaftRequest {
            cluster: self.cluster.clone(),
            epoch: self.epoch(),
            from: self.id,
            to,
            payload,
            ..RaftRequest::default()
        }
    }
}

/// Shared gRPC channels to peers (see [`ChannelCache`]).
#[derive(Clone)]
pub struct PeerChannels {
    channels: ChannelCache,
}

impl PeerChannels {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        PeerChannels {
            channels: ChannelCache::new(tls),
        }
    }

    /// The channel to `addr`, created lazily (no connection is made here).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.channels.channel(addr)
    }

    /// A Raft-service client for `addr`.
    pub fn raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        Ok(RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES))
    }
}

/// openraft's network factory: one [`PeerLink`] per replication target.
#[derive(Clone)]
pub struct PeerNetwork {
    pub identity: Arc<PeerIdentity>,
    pub channels: PeerChannels,
    /// The engine's view of replication, stamped on AppendEntries (see [`RaftRequest`]).
    pub progress: Arc<Progress>,
    /// The engine's state, whose revision is stamped on AppendEntries too.
    pub reader: StateReader,
    /// The engine's readiness: nothing is sent before its start probe is done.
    pub ready: Arc<AtomicBool>,
    /// What early messages have shown of each follower's log.
    pub early: EarlyAcks,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: ReplicaId, node: &Replica) -> PeerLink {
        PeerLink {
            identity: self.identity.clone(),
            channels: self.channels.clone(),
            progress: self.progress.clone(),
            reader: self.reader.clone(),
            ready: self.ready.clone(),
            early: self.early.of(target),
            early_counts: self.early.counts.clone(),
            replicates: false,
            told_commit: None,
            target,
            addr: node.addr.clone(),
            stream: None,
        }
    }
}

/// The link to one peer.
pub struct PeerLink {
    identity: Arc<PeerIdentity>,
    channels: PeerChannels,
    progress: Arc<Progress>,
    reader: StateReader,
    ready: Arc<AtomicBool>,
    /// What early messages have shown of the peer's log (shared with every link to it).
    early: Arc<watch::Sender<EarlyState>>,
    early_counts: Arc<EarlyCounts>,
    /// Whether openraft replicates entries through this link (its leadership checks use links
    /// of their own, which carry only heartbeats).
    replicates: bool,
    /// The newest commit index a message sent through this link told the peer (each one's
    /// `leader_commit` up to the entries the peer then held: [`early_replication::told_commit`]).
    told_commit: Option<LogId<ReplicaId>>,
    target: ReplicaId,
    addr: String,
    /// AppendEntries go on this stream (opened on first use, and again after a failure).
    stream: Option<AppendStream>,
}

/// The kinds of peer call.
#[derive(Clone, Copy, Debug)]
pub enum PeerCall {
    AppendEntries,
    Vote,
    InstallSnapshot,
    ElectNow,
    PreVote,
}

/// Why a peer call failed before a remote answer could be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("peer {addr} refused the message: {status}")]
    Refused { addr: String, status: tonic::Status },
    #[error("undecodable message: {0}")]
    Codec(#[from] bincode::Error),
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

/// What a primary tells a replica on every AppendEntries besides the entries themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrimaryStamp {
    pub last_index: u64,
    /// The revision of the last change the primary applied: every change it acknowledged so
    /// far has this revision or an older one (entries carry batches of changes, so the last
    /// index alone does not count them).
    pub revision: u64,
    pub in_sync_set: bool,
    pub strict: bool,
}

/// One peer call: to whom, which, and how.
#[derive(Debug, Clone, Copy)]
pub struct PeerCallSpec<'a> {
    pub target: ReplicaId,
    pub addr: &'a str,
    pub call: PeerCall,
    pub timeout: Duration,
    /// Set by a primary on AppendEntries.
    pub stamp: Option<PrimaryStamp>,
}

/// Sends one bincode-encoded message to a peer and decodes its answer. A refusal that reveals a
/// newer epoch is reported to the identity (which fences this replica).
pub async fn call_peer<Req: Serialize, Resp: DeserializeOwned>(
    identity: &PeerIdentity,
    channels: &PeerChannels,
    spec: PeerCallSpec<'_>,
    req: &Req,
) -> Result<Resp, PeerError> {
    let mut client = channels
        .raft_client(spec.addr)
        .map_err(|e| unreachable(spec.addr, e.to_string()))?;
    let mut request = tonic::Request::new(envelope(identity, &spec, req)?);
    request.set_timeout(spec.timeout);
    let reply = match spec.call {
        PeerCall::AppendEntries => client.append_entries(request).await,
        PeerCall::Vote => client.vote(request).await,
        PeerCall::InstallSnapshot => client.install_snapshot(request).await,
        PeerCall::ElectNow => client.elect_now(request).await,
        PeerCall::PreVote => client.pre_vote(request).await,
    };
    answer(identity, spec.addr, reply.map(tonic::Response::into_inner))
}

fn unreachable(addr: &str, reason: String) -> PeerError {
    PeerError::Unreachable {
        addr: addr.to_owned(),
        reason,
    }
}

/// The envelope of one message, stamped as `spec` says.
fn envelope<Req: Serialize>(
    identity: &PeerIdentity,
    spec: &PeerCallSpec<'_>,
    req: &Req,
) -> Result<RaftRequest, PeerError> {
    let mut envelope = identity.envelope(spec.target, encode(req)?);
    if let Some(stamp) = spec.stamp {
        envelope.primary_last_index = stamp.last_index;
        envelope.primary_revision = stamp.revision;
        envelope.primary_time_ms = crate::node::now_ms();
        envelope.in_sync_set = stamp.in_sync_set;
        envelope.strict = stamp.strict;
    }
    Ok(envelope)
}

/// Decodes a peer's answer, or says why there is none. A refusal that reveals a newer epoch is
/// reported to the identity (which fences this replica).
fn answer<Resp: DeserializeOwned>(
    identity: &PeerIdentity,
    addr: &str,
    reply: Result<RaftReply, tonic::Status>,
) -> Result<Resp, PeerError> {
    match reply {
        Ok(reply) => Ok(decode(&reply.payload)?),
        Err(status) => {
            if let Some(epoch) = metadata_u64(&status, EPOCH_KEY) {
                let primary = status
                    .metadata()
                    .get(PRIMARY_ADDR_KEY)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                identity.observe_epoch(epoch, primary);
            }
            match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown => Err(unreachable(addr, status.to_string())),
                _ => Err(PeerError::Refused {
                    addr: addr.to_owned(),
                    status,
                }),
            }
        }
    }
}

/// A long-lived `AppendStream` to one peer: requests go in one at a time and their replies
/// come back in order. Dropped after any failure (a new one is opened for the next message),
/// so a reply can never be taken for the answer to a later request.
struct AppendStream {
    requests: mpsc::Sender<RaftRequest>,
    replies: tonic::Streaming<RaftReply>,
    /// The number of the last request sent.
    seq: u64,
}

impl AppendStream {
    /// Opens a stream with `first` as its first request (sent with the stream's headers, so a
    /// new stream costs no extra round trip) and waits for its reply.
    async fn open(
        channels: &PeerChannels,
        addr: &str,
        mut first: RaftRequest,
    ) -> Result<(AppendStream, RaftReply), tonic::Status> {
        let mut client = channels
            .raft_client(addr)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (requests, outgoing) = mpsc::channel(1);
        first.seq = 1;
        if requests.try_send(first).is_err() {
            return Err(tonic::Status::internal("a new append stream's queue is full"));
        }
        let replies = client
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let mut stream = AppendStream {
            requests,
            replies,
            seq: 1,
        };
        let reply = stream.reply().await?;
        Ok((stream, reply))
    }

    /// Sends one request and waits for its reply (a refusal comes back as its status).
    async fn call(&mut self, mut request: RaftRequest) -> Result<RaftReply, tonic::Status> {
        self.seq += 1;
        request.seq = self.seq;
        if self.requests.send(request).await.is_err() {
            return Err(tonic::Status::unavailable("the append stream was closed"));
        }
        self.reply().await
    }

    /// The reply to the last request sent.
    async fn reply(&mut self) -> Result<RaftReply, tonic::Status> {
        let reply = self
            .replies
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("the peer ended the append stream"))?;
        if reply.seq != self.seq {
            return Err(tonic::Status::unavailable(format!(
                "the append stream answered request {} instead of {}",
                reply.seq, self.seq
            )));
        }
        match reply.refusal {
            Some(refusal) => Err(refusal.into_status()),
            None => Ok(reply),
        }
    }
}

fn metadata_u64(status: &tonic::Status, key: &str) -> Option<u64> {
    status.metadata().get(key)?.to_str().ok()?.parse().ok()
}

/// One message on a link's [`AppendStream`], within `spec.timeout` (opening the stream
/// included). The stream is kept only after a reply: a failure, a timeout or this future
/// being dropped mid-call closes it.
async fn call_on_stream<Req: Serialize, Resp: DeserializeOwned>(
    identity: &PeerIdentity,
    channels: &PeerChannels,
    kept: &mut Option<AppendStream>,
    spec: &PeerCallSpec<'_>,
    req: &Req,
) -> Result<Resp, PeerError> {
    let request = envelope(identity, spec, req)?;
    let taken = kept.take();
    let exchange = async move {
        match taken {
            Some(mut stream) => {
                let reply = stream.call(request).await?;
                Ok::<_, tonic::Status>((stream, reply))
            }
            None => AppendStream::open(channels, spec.addr, request).await,
        }
    };
    let reply = match tokio::time::timeout(spec.timeout, exchange).await {
        Ok(Ok((stream, reply))) => {
            *kept = Some(stream);
            Ok(reply)
        }
        Ok(Err(status)) => Err(status),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {:?}",
            spec.timeout
        ))),
    };
    answer(identity, spec.addr, reply)
}

impl PeerLink {
    /// Whether this replica sends Raft messages at all: it has finished starting and is not
    /// fenced (no answer is made up for a message [`PeerLink::call`] would refuse to send).
    fn sends(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.identity.fence().is_none()
    }

    /// What early messages have shown of the peer's log (see [`crate::early_replication`]).
    pub(crate) fn early_state(&self) -> &watch::Sender<EarlyState> {
        &self.early
    }

    /// Sends an AppendEntries as it is, never answering it from early messages (the early
    /// sender's own messages go this way).
    pub(crate) async fn send_append_entries(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, RPCError<ReplicaId, Replica, RaftError<ReplicaId>>> {
        self.call(PeerCall::AppendEntries, rpc, option).await
    }

    /// Whether the peer already holds every entry of `rpc` durably, as its answers to early
    /// messages show (waiting, within the message's timeout, for an early message in flight
    /// that carries them). A heartbeat, a message of another vote, or entries never sent early
    /// are not answered here.
    async fn holds_early(&self, rpc: &AppendEntriesRequest<TypeConfig>, option: &RPCOption) -> bool {
        if !self.sends() {
            return false;
        }
        let mut state = self.early.subscribe();
        let answer = async {
            loop {
                match early_replication::holds(&state.borrow_and_update(), rpc, self.told_commit) {
                    Some(true) => return true,
                    Some(false) => {}
                    None => return false,
                }
                if state.changed().await.is_err() {
                    return false;
                }
            }
        };
        let held = tokio::time::timeout(option.hard_ttl(), answer).await.unwrap_or(false);
        if held {
            self.early_counts.answered();
        }
        held
    }

    /// Whether a heartbeat of openraft's replication that carries a new commit index is
    /// answered by an early message instead (see [`early_replication::covers_heartbeat`]),
    /// waiting at most [`early_replication::HEARTBEAT_WAIT`] for one. Only while early messages
    /// reach the peer (it accepted one at or past the heartbeat's previous entry), and never a
    /// heartbeat that tells nothing new (those keep the peer hearing from this primary).
    async fn heartbeat_told_early(&self, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        if !self.replicates || !rpc.entries.is_empty() || !self.sends() {
            return false;
        }
        let mut state = self.early.subscribe();
        let accepted_before = {
            let now = state.borrow_and_update();
            let flowing = now.vote == Some(rpc.vote) && now.accepted.is_some() && now.accepted >= rpc.prev_log_id;
            let told = self.told_commit.max(now.told_commit);
            if !flowing || rpc.leader_commit <= told {
                return false;
            }
            now.accepted_count
        };
        let covered = async {
            loop {
                if state.changed().await.is_err() {
                    return false;
                }
                if early_replication::covers_heartbeat(&state.borrow_and_update(), rpc, accepted_before) {
                    return true;
                }
            }
        };
        let covered = tokio::time::timeout(early_replication::HEARTBEAT_WAIT, covered)
            .await
            .unwrap_or(false);
        if covered {
            self.early_counts.answered();
        }
        covered
    }

    async fn call<Req, Resp, E>(
        &mut self,
        call: PeerCall,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<ReplicaId, Replica, RaftError<ReplicaId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if !self.ready.load(Ordering::SeqCst) {
            let e = PeerError::Unreachable {
                addr: self.addr.clone(),
                reason: "this replica is still starting".into(),
            };
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        if self.identity.fence().is_some() {
            // A fenced replica takes no part in its old epoch: it neither replicates nor campaigns.
            let e = PeerError::Unreachable {
                addr: self.addr.clone(),
                reason: "this replica is fenced".into(),
            };
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let stamp = matches!(call, PeerCall::AppendEntries)
            .then(|| self.progress.stamp_for(self.target, self.reader.applied_revision()));
        let spec = PeerCallSpec {
            target: self.target,
            addr: &self.addr,
            call,
            timeout: option.hard_ttl(),
            stamp,
        };
        let result: Result<Result<Resp, RaftError<ReplicaId, E>>, PeerError> = match call {
            PeerCall::AppendEntries => {
                call_on_stream(&self.identity, &self.channels, &mut self.stream, &spec, req).await
            }
            _ => call_peer(&self.identity, &self.channels, spec, req).await,
        };
        match result {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
            Err(e @ PeerError::Unreachable { .. }) | Err(e @ PeerError::Refused { .. }) => {
                // A refused envelope (other cluster or epoch) is treated as unreachable so that
                // openraft backs off instead of hammering it.
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e @ PeerError::Codec(_)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, RPCError<ReplicaId, Replica, RaftError<ReplicaId>>> {
        // Raft lets a leader count a follower's answer whenever it arrives: the early message's
        // answer was given once the same entries were durable on the follower.
        if !rpc.entries.is_empty() {
            self.replicates = true;
        }
        if self.holds_early(&rpc, &option).await || self.heartbeat_told_early(&rpc).await {
            return Ok(AppendEntriesResponse::Success);
        }
        let answer = self.call(PeerCall::AppendEntries, &rpc, &option).await;
        if let Ok(AppendEntriesResponse::Success) = answer {
            let told = early_replication::told_commit(&rpc, early_replication::last_held(&rpc));
            self.told_commit = self.told_commit.max(told);
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<ReplicaId>,
        RPCError<ReplicaId, Replica, RaftError<ReplicaId, InstallSnapshotError>>,
    > {
        self.call(PeerCall::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, RPCError<ReplicaId, Replica, RaftError<ReplicaId>>> {
        self.call(PeerCall::Vote, &rpc, &option).await
    }
}
