//! This node's Raft member: start-up, and proposing commands (forwarded to the leader when this
//! node is a follower). The read barrier is in [`super::read`], membership in
//! [`super::membership`].
//!
//! openraft runs on its own multi-threaded tokio runtime (the HTTP servers run on actix's
//! per-worker runtimes); the handle is shared and every openraft task is spawned there.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipcr_proto::{Command, CommandResult, NodeId};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError as OpenRaftError};
use openraft::impls::BasicNode;
use openraft::{Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::log_store::LogStore;
use super::network::{CallError, ClusterClient, NetworkFactory};
use super::read::ReadBarrier;
use super::state::StateReader;
use super::state_machine::StateMachine;
use super::{LogId, Raft, TypeConfig};
use crate::config::ClusterConfig;

/// Pause between attempts while no leader is known (a new leader refuses writes for one round
/// trip after its election, so the retry comes soon).
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// How long a write waits for a leader and its commit before the client gets `503`: 2 s, or
/// three of the longest election timeouts when that is more. A new leader is elected within
/// about one and a half of them, so a write caught by a failover is retried on the new leader
/// and still answered in time.
pub fn write_timeout(cluster: &ClusterConfig) -> Duration {
    (cluster.election_timeout.0 * 6).max(Duration::from_secs(2))
}

/// Why a proposal or read barrier failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// No leader or no quorum right now; the client should retry.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The Raft member stopped (storage fault or shutdown).
    #[error("raft member failed: {0}")]
    Fatal(String),
}

/// Where a node keeps its Raft state, under its data directory.
fn paths(data_dir: &Path) -> io::Result<(PathBuf, PathBuf, PathBuf)> {
    let raft_dir = data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir)?;
    Ok((
        raft_dir.join("log.redb"),
        raft_dir.join("state.redb"),
        raft_dir.join("snapshots"),
    ))
}

/// The next snapshot is due after one log entry per this many bytes of the newest snapshot
/// (a tag's share of a snapshot is about 650 bytes): frequent enough that a new node has at
/// most a quarter of the state to replay from the log after installing the snapshot, rare
/// enough that building snapshots costs each write a bounded share.
const SNAPSHOT_BYTES_PER_ENTRY: u64 = 4096;

/// Build a snapshot (which lets the log be purged) once `every` entries were applied since the
/// last one, or, for a large state, once one entry per [`SNAPSHOT_BYTES_PER_ENTRY`] bytes of
/// the last snapshot was applied: a snapshot costs time in proportion to the state, so taking
/// one every fixed number of entries would make the cost of a write grow with the registry (at
/// a million tags a snapshot took 10 s, and one was due every 10,000 writes).
async fn compact(node: RaftNode, every: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m = node.metrics();
        if m.running_state.is_err() {
            return;
        }
        let (Some(applied), snapshot) = (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index)) else {
            continue;
        };
        let last_size = super::snapshot::SnapshotDir::new(node.snapshot_dir.clone())
            .ok()
            .and_then(|d| d.current().ok().flatten())
            .and_then(|(_, f)| std::fs::metadata(&f.path).ok())
            .map(|m| m.len())
            .unwrap_or(0);
        let due = every.max(last_size / SNAPSHOT_BYTES_PER_ENTRY);
        if applied.saturating_sub(snapshot.unwrap_or(0)) < due {
            continue;
        }
        if node.raft.trigger().snapshot().await.is_err() {
            return;
        }
        // Wait for this one before looking again.
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline && node.metrics().snapshot.map(|l| l.index) == snapshot {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The node's Raft member. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    reader: StateReader,
    pub(super) barrier: Arc<ReadBarrier>,
    /// The state machine's last applied log id.
    applied: watch::Receiver<Option<LogId>>,
    /// How long after a quorum acknowledged the leader's heartbeat it answers reads alone.
    pub(super) lease: Duration,
    /// How long a read waits for a read index before the client gets `503`.
    pub(super) read_timeout: Duration,
    /// How long a write waits for a leader and its commit before the client gets `503`.
    write_timeout: Duration,
    /// Joins this node (as leader) is running, so that a leave can cancel one.
    pub(super) joins: Arc<super::membership::PendingJoins>,
    runtime: Handle,
    client: ClusterClient,
    snapshot_dir: PathBuf,
    metrics: super::metrics::RaftMetrics,
}

/// How this node enters a cluster when it has no Raft state yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Initialize a one-member cluster of itself.
    Alone,
    /// Wait to be added by an existing cluster.
    Join,
}

impl RaftNode {
    /// Open the node's Raft state under `data_dir` and start its member on `runtime`, with
    /// peers reached through the cluster port using `secret`. A node with no Raft state either
    /// initializes a one-member cluster or waits to be added, as `bootstrap` says.
    pub async fn start(
        id: NodeId,
        advertise: String,
        data_dir: &Path,
        cluster: &ClusterConfig,
        secret: String,
        bootstrap: Bootstrap,
        runtime: Handle,
    ) -> io::Result<RaftNode> {
        let (log_path, sm_path, snap_dir) = paths(data_dir)?;
        let log = LogStore::open(&log_path)?;
        let sm = StateMachine::open(&sm_path, &snap_dir)?;
        let reader = sm.reader();
        let applied = sm.applied();
        let heartbeat = cluster.heartbeat.0.as_millis() as u64;
        let election = cluster.election_timeout.0.as_millis() as u64;
        let config = Config {
            cluster_name: "ipcr".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            // Snapshots are triggered by `compact`, at intervals that grow with the state.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: cluster.snapshot_logs,
            // A node cut off from the others must not keep raising the term and force an
            // election when it comes back.
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(io::Error::other)?);
        let tls = if cluster.tls.enabled() {
            Some(crate::tls::cluster_client(&cluster.tls).map_err(io::Error::other)?)
        } else {
            None
        };
        // The HTTP client must belong to the runtime that uses it, so it is made there.
        let (raft, client) = runtime
            .spawn(async move {
                let client = ClusterClient::new(secret, tls);
                let raft = Raft::new(id, config, NetworkFactory::new(client.clone()), log, sm).await;
                raft.map(|r| (r, client))
            })
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(e.to_string()))?;
        let snapshot_every = cluster.snapshot_logs * 2;
        let node = RaftNode {
            id,
            raft,
            reader,
            barrier: Arc::default(),
            applied,
            lease: super::read::lease(cluster),
            read_timeout: super::read::read_timeout(cluster),
            write_timeout: write_timeout(cluster),
            joins: Arc::default(),
            runtime,
            client,
            snapshot_dir: snap_dir,
            metrics: Default::default(),
        };
        let initialized = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        node.runtime.spawn(compact(node.clone(), snapshot_every));
        node.runtime
            .spawn(super::metrics::count_leader_changes(node.clone()));
        if !initialized && bootstrap == Bootstrap::Alone {
            let members = BTreeMap::from([(id, BasicNode { addr: advertise })]);
            node.raft
                .initialize(members)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            tracing::info!(node = id, "initialized a one-member cluster");
        }
        Ok(node)
    }

    /// Wait until this node knows a leader and has applied everything committed before it
    /// started (so that a restarted node serves nothing stale). `false` on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.metrics().current_leader.is_some() && self.read_barrier().await.is_ok() {
                return true;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        false
    }

    /// How long a write waits for a leader and its commit.
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The openraft handle (for the cluster port's RPC handlers).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The client for peers' cluster ports.
    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// The runtime openraft and peer clients run on.
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// A fresh path for a snapshot being received.
    pub fn incoming_snapshot_path(&self) -> PathBuf {
        self.snapshot_dir
            .join(format!("incoming-{}.tmp", uuid::Uuid::new_v4()))
    }

    /// The applied state.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    /// This member's proposal and leader-change counters.
    pub fn raft_metrics(&self) -> &super::metrics::RaftMetrics {
        &self.metrics
    }

    /// Current Raft metrics (role, term, indexes, membership).
    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The cluster URL of a member.
    pub fn node_url(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Every member (voters and learners) with its cluster URL.
    pub fn members(&self) -> Vec<(NodeId, String, bool)> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone(), voters.contains(id)))
            .collect()
    }

    /// The current leader and its cluster URL, when known.
    pub(super) fn leader(&self) -> Option<(NodeId, String)> {
        let id = self.metrics().current_leader?;
        Some((id, self.node_url(id)?))
    }

    /// Propose a command and wait until it is committed and applied here. On a follower the
    /// command is forwarded to the leader; commands are idempotent, so a retry after a lost
    /// answer is safe.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, RaftError> {
        let started = Instant::now();
        let result = self.propose_until(cmd, started + self.write_timeout).await;
        self.metrics.proposed(result.is_ok(), started.elapsed());
        result
    }

    async fn propose_until(&self, cmd: Command, deadline: Instant) -> Result<CommandResult, RaftError> {
        let mut last_error = String::from("no leader");
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let raft = self.raft.clone();
            let local = cmd.clone();
            let write = self.runtime.spawn(async move { raft.client_write(local).await });
            match tokio::time::timeout(left, write).await {
                Err(_) => break,
                Ok(Err(join)) => return Err(RaftError::Fatal(join.to_string())),
                Ok(Ok(Ok(resp))) => return Ok(resp.data),
                Ok(Ok(Err(OpenRaftError::APIError(ClientWriteError::ForwardToLeader(f))))) => {
                    match f.leader_node {
                        Some(leader) => match self.forward(&leader.addr, &cmd, deadline).await {
                            Ok(result) => return Ok(result),
                            Err(e) => last_error = e,
                        },
                        None => last_error = "no leader known".into(),
                    }
                }
                Ok(Ok(Err(e))) => last_error = e.to_string(),
            }
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Err(RaftError::Unavailable(format!(
            "no quorum within {:?}: {last_error}",
            self.write_timeout
        )))
    }

    /// Send `cmd` to the leader at `url`, then wait until this node has applied it.
    async fn forward(&self, url: &str, cmd: &Command, deadline: Instant) -> Result<CommandResult, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let client = self.client.clone();
        let (url, cmd) = (url.to_string(), cmd.clone());
        let call = self
            .runtime
            .spawn(async move { client.forward_write(&url, &cmd, left).await });
        let (index, result) = match call.await.map_err(|e| e.to_string())? {
            Ok(Ok(answer)) => answer,
            Ok(Err(leader_said)) => return Err(leader_said),
            Err(CallError::Unreachable(e)) | Err(CallError::Network(e)) => return Err(e),
        };
        self.wait_applied(index, deadline).await?;
        Ok(result)
    }

    /// Wait until the local state machine has applied `index`.
    pub(super) async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), String> {
        let mut applied = self.applied.clone();
        let reached = applied.wait_for(|a| a.is_some_and(|a| a.index >= index));
        match tokio::time::timeout_at(deadline.into(), reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("the state machine stopped".into()),
            Err(_) => Err(format!("log index {index} not applied in time")),
        }
    }

    /// Propose on this node, which must be the leader (the cluster port's `/cluster/write`).
    /// Answers the log index the command was applied at.
    pub async fn propose_as_leader(&self, cmd: Command) -> Result<(u64, CommandResult), String> {
        let raft = self.raft.clone();
        let write = self.runtime.spawn(async move { raft.client_write(cmd).await });
        match tokio::time::timeout(self.write_timeout, write).await {
            Err(_) => Err("no quorum within the write timeout".into()),
            Ok(Err(join)) => Err(join.to_string()),
            Ok(Ok(Ok(resp))) => Ok((resp.log_id.index, resp.data)),
            Ok(Ok(Err(e))) => Err(e.to_string()),
        }
    }

    pub(super) fn sole_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.current_leader == Some(self.id)
            && m.state == ServerState::Leader
            && m.membership_config.membership().voter_ids().eq([self.id])
    }

    /// Stop the Raft member.
    pub async fn shutdown(&self) {
        let raft = self.raft.clone();
        let _ = self.runtime.spawn(async move { raft.shutdown().await }).await;
    }
}
