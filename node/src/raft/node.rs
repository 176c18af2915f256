//! This node's Raft member: start-up, proposing commands, and the read barrier.
//!
//! openraft runs on its own multi-threaded tokio runtime (the HTTP server runs on actix's
//! per-worker runtimes); the handle is shared and every openraft task is spawned there.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipcr_proto::{Command, CommandResult, NodeId};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError as OpenRaftError};
use openraft::impls::BasicNode;
use openraft::{Config, RaftMetrics, ReadPolicy, ServerState, SnapshotPolicy};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::log_store::LogStore;
use super::network::NetworkFactory;
use super::state::StateReader;
use super::state_machine::StateMachine;
use super::{Raft, TypeConfig};
use crate::config::ClusterConfig;

/// How long a write waits for a leader before the client gets `503`.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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
fn paths(data_dir: &Path) -> io::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let raft_dir = data_dir.join("raft");
    std::fs::create_dir_all(&raft_dir)?;
    Ok((
        raft_dir.join("log.redb"),
        raft_dir.join("state.redb"),
        raft_dir.join("snapshots"),
    ))
}

/// Coalesces concurrent linearizable reads: every read that arrives while a leadership check
/// is in flight waits for the next one, so N concurrent reads cost one check, not N, and each
/// read is still ordered after every write acknowledged before it arrived.
#[derive(Default)]
struct ReadBarrier {
    state: Mutex<BarrierState>,
}

#[derive(Default)]
struct BarrierState {
    running: bool,
    waiting: Vec<oneshot::Sender<Result<(), String>>>,
}

/// The node's Raft member. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    id: NodeId,
    raft: Raft,
    reader: StateReader,
    barrier: Arc<ReadBarrier>,
    runtime: Handle,
}

impl RaftNode {
    /// Open the node's Raft state under `data_dir` and start its member on `runtime`. A node
    /// that has never been part of a cluster initializes a one-member cluster of itself.
    /// Returns once the node leads and has applied everything committed before it stopped.
    pub async fn start(
        id: NodeId,
        advertise: String,
        data_dir: &Path,
        cluster: &ClusterConfig,
        runtime: Handle,
    ) -> io::Result<RaftNode> {
        let (log_path, sm_path, snap_dir) = paths(data_dir)?;
        let log = LogStore::open(&log_path)?;
        let sm = StateMachine::open(&sm_path, &snap_dir)?;
        let reader = sm.reader();
        let heartbeat = cluster.heartbeat.0.as_millis() as u64;
        let election = cluster.election_timeout.0.as_millis() as u64;
        let config = Config {
            cluster_name: "ipcr".into(),
            heartbeat_interval: heartbeat,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cluster.snapshot_logs * 2),
            max_in_snapshot_log_to_keep: cluster.snapshot_logs,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(io::Error::other)?);
        let raft = runtime
            .spawn(async move { Raft::new(id, config, NetworkFactory, log, sm).await })
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(e.to_string()))?;
        let node = RaftNode {
            id,
            raft,
            reader,
            barrier: Arc::default(),
            runtime,
        };
        if !node
            .raft
            .is_initialized()
            .await
            .map_err(|e| io::Error::other(e.to_string()))?
        {
            let members = BTreeMap::from([(id, BasicNode { addr: advertise })]);
            node.raft
                .initialize(members)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            tracing::info!(node = id, "initialized a one-member cluster");
        }
        node.raft
            .wait(Some(Duration::from_secs(30)))
            .state(ServerState::Leader, "become leader")
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        // The leader's read index covers its first (blank) entry, so waiting for it means every
        // entry committed before a restart has been applied before we serve a request.
        node.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The applied state.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    /// Current Raft metrics (role, term, indexes, membership).
    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Propose a command and wait until it is committed and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, RaftError> {
        let raft = self.raft.clone();
        let write = self.runtime.spawn(async move { raft.client_write(cmd).await });
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Err(_) => Err(RaftError::Unavailable(
                "no quorum within the write timeout".into(),
            )),
            Ok(Err(join)) => Err(RaftError::Fatal(join.to_string())),
            Ok(Ok(Ok(resp))) => Ok(resp.data),
            Ok(Ok(Err(OpenRaftError::APIError(ClientWriteError::ForwardToLeader(f))))) => Err(
                RaftError::Unavailable(format!("not the leader (leader: {:?})", f.leader_id)),
            ),
            Ok(Ok(Err(e))) => Err(RaftError::Unavailable(e.to_string())),
        }
    }

    /// Wait until the local state reflects every write acknowledged anywhere in the cluster
    /// before this call. Free when this node is the cluster's only voter and its leader.
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        if self.sole_voter() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.barrier.state.lock().expect("barrier lock");
            s.waiting.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            let node = self.clone();
            self.runtime.spawn(async move { node.drive_barrier().await });
        }
        match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(RaftError::Unavailable(e)),
            Ok(Err(_)) => Err(RaftError::Fatal("read barrier dropped".into())),
            Err(_) => Err(RaftError::Unavailable("read barrier timed out".into())),
        }
    }

    async fn drive_barrier(&self) {
        loop {
            let waiters = {
                let mut s = self.barrier.state.lock().expect("barrier lock");
                if s.waiting.is_empty() {
                    s.running = false;
                    return;
                }
                std::mem::take(&mut s.waiting)
            };
            let result = self
                .raft
                .ensure_linearizable(ReadPolicy::ReadIndex)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    fn sole_voter(&self) -> bool {
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
