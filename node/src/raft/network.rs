//! The Raft transport and the leader RPCs, over HTTP to the peers' cluster ports.
//!
//! Every request carries the cluster secret as a bearer token and a bincode body prefixed with
//! the format version (`raft::encode`). Raft RPCs go to `/raft/*`; the two RPCs a follower
//! sends its leader on behalf of clients (forwarded writes and read indexes) to `/cluster/*`.
//! Connection failures are `Unreachable` (openraft backs off); anything else is a
//! `NetworkError`.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use ipcr_proto::{Command, CommandResult, NodeId};
use openraft::RaftNetworkFactory;
use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::snapshot::SnapshotFile;
use super::{TypeConfig, decode, encode};

/// The header a snapshot transfer starts with, before the snapshot file's bytes.
pub type SnapshotHeader = (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>);

/// A forwarded write's answer: the log index it was applied at, and its result.
pub type ForwardedWrite = Result<(u64, CommandResult), String>;

/// An HTTP client for peers' cluster ports. Cheap to clone.
#[derive(Clone)]
pub struct ClusterClient {
    http: reqwest::Client,
    secret: String,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The peer could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The peer answered something unusable.
    #[error("{0}")]
    Network(String),
}

impl ClusterClient {
    /// A client sending `secret`, over mutual TLS when `tls` is given (`cluster.tls`). Must be
    /// created on the runtime that will use it.
    pub fn new(secret: String, tls: Option<rustls::ClientConfig>) -> ClusterClient {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30));
        // Peers are trusted by `cluster.tls` alone, never by the system's CA store (which an
        // image built FROM scratch does not even have).
        builder = match tls {
            Some(tls) => builder.tls_backend_preconfigured(tls).https_only(true),
            None => builder.tls_backend_preconfigured(crate::tls::trust_nobody()),
        };
        let http = builder.build().expect("HTTP client");
        ClusterClient { http, secret }
    }

    /// The underlying HTTP client, for streaming transfers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The bearer token peers expect.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    /// POST an encoded body to `base + path` and decode the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body = encode(req).map_err(|e| CallError::Network(e.to_string()))?;
        self.send(base, path, Bytes::from(body), timeout).await
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let url = format!("{base}{path}");
        let resp = self
            .http
            .post(&url)
            .header("Authorization", self.bearer())
            .header("Content-Type", "application/octet-stream")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable(format!("{url}: {e}"))
                } else {
                    CallError::Network(format!("{url}: {e}"))
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Network(format!("{url}: {e}")))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(CallError::Network(format!("{url}: HTTP {status}: {text}")));
        }
        decode(&bytes).map_err(|e| CallError::Network(format!("{url}: {e}")))
    }

    /// Ask the leader at `leader` to propose `cmd`.
    pub async fn forward_write(
        &self,
        leader: &str,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<ForwardedWrite, CallError> {
        self.call(leader, "/cluster/write", cmd, timeout).await
    }

    /// Ask the leader at `leader` for a read index.
    pub async fn read_index(
        &self,
        leader: &str,
        timeout: Duration,
    ) -> Result<Result<u64, String>, CallError> {
        self.call(leader, "/cluster/read-index", &(), timeout).await
    }
}

/// Creates a [`PeerRaft`] per target node.
#[derive(Clone)]
pub struct NetworkFactory {
    client: ClusterClient,
}

impl NetworkFactory {
    /// A factory whose clients send `secret`.
    pub fn new(client: ClusterClient) -> NetworkFactory {
        NetworkFactory { client }
    }
}

/// openraft's client for one peer.
pub struct PeerRaft {
    target: NodeId,
    url: String,
    client: ClusterClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerRaft;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerRaft {
        PeerRaft {
            target,
            url: node.addr.trim_end_matches('/').to_string(),
            client: self.client.clone(),
        }
    }
}

fn rpc_error<E: std::error::Error>(e: CallError) -> RPCError<TypeConfig, E> {
    match e {
        CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(m))),
        CallError::Network(m) => RPCError::Network(NetworkError::new(&std::io::Error::other(m))),
    }
}

impl PeerRaft {
    async fn rpc<Req, Resp>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let res: Result<Resp, RaftError<TypeConfig>> = self
            .client
            .call(&self.url, path, req, option.hard_ttl())
            .await
            .map_err(rpc_error)?;
        res.map_err(|e| {
            let err = std::io::Error::other(format!("node {}: {e}", self.target));
            RPCError::Network(NetworkError::new(&err))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerRaft {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }

    /// A real pre-vote: a node cut off from the others cannot win one, so it does not keep
    /// raising the term and does not force an election when it comes back.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/pre-vote", &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc("/raft/transfer-leader", &req, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // Body: header length (u32, big endian), the encoded header, then the file, streamed.
        let header: SnapshotHeader = (vote, snapshot.meta);
        let header = encode(&header).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut prefix = (header.len() as u32).to_be_bytes().to_vec();
        prefix.extend_from_slice(&header);
        let file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let body = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(prefix)) })
            .chain(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let send = self
            .client
            .send::<Result<SnapshotResponse<TypeConfig>, RaftError<TypeConfig>>>(
                &self.url,
                "/raft/snapshot",
                reqwest::Body::wrap_stream(body),
                Duration::from_secs(3600),
            );
        tokio::pin!(cancel);
        tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            res = send => match res {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(StreamingError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))),
                Err(CallError::Unreachable(m)) => Err(StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(m)))),
                Err(CallError::Network(m)) => Err(StreamingError::Network(NetworkError::new(&std::io::Error::other(m)))),
            },
        }
    }
}
