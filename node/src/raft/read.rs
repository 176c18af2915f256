//! Linearizable reads: the read barrier every tag, listing and upload-session read passes, and
//! the read index a leader hands its followers.
//!
//! A read index is openraft's own (`Raft::get_read_linearizer`): the leader's *commit* index
//! (at least its term's first entry), taken inside the Raft core after the read arrived, while
//! the leader's lease holds (a quorum acknowledged a heartbeat *sent* less than `lease` ago, on
//! the monotonic clock) or after a fresh heartbeat round. A reader then waits until its own
//! state machine has applied that index. Using the commit index, not what the leader happens
//! to have applied, matters: a follower can learn of a commit and apply it before the leader
//! does, and a later read on the leader must not return the older value (issue 9's stale read).
//!
//! Concurrent reads share rounds: every read that arrives while a round is running waits for
//! the next one, so N reads cost one round, and each is still ordered after every write
//! acknowledged before it arrived. Nothing here knows HTTP.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::raft::linearizable_read::LinearizerOption;
use tokio::sync::oneshot;

use super::node::{RETRY_PAUSE, RaftError, RaftNode};
use crate::config::ClusterConfig;

/// How long a leader answers reads from its lease after a quorum acknowledged its heartbeat:
/// the shortest election timeout, half of what openraft's own lease allows, so that clocks
/// running at different rates on the leader and the voters cannot break it.
pub(super) fn lease(cluster: &ClusterConfig) -> Duration {
    cluster.election_timeout.0
}

/// How long a read waits for a read index before its client gets `503`: the longest election
/// timeout. A read that cannot get one from the leader in that time (the leader is gone,
/// paused or cut off) gets a definite answer instead of waiting for an election.
pub(super) fn read_timeout(cluster: &ClusterConfig) -> Duration {
    cluster.election_timeout.0 * 2
}

/// Coalesces concurrent linearizable reads into rounds.
#[derive(Default)]
pub(super) struct ReadBarrier {
    state: Mutex<BarrierState>,
}

#[derive(Default)]
struct BarrierState {
    running: bool,
    waiting: Vec<oneshot::Sender<Result<(), String>>>,
}

impl RaftNode {
    /// A read index, on the leader: openraft's linearizer with this node's lease, a heartbeat
    /// round when the lease is stale, given up after `deadline`.
    async fn read_index_as_leader(&self, deadline: Instant) -> Result<u64, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let option = LinearizerOption::new(Some(self.lease), true).with_wait_timeout(left);
        let raft = self.raft().clone();
        let read = self
            .runtime()
            .spawn(async move { raft.get_read_linearizer(option).await });
        match tokio::time::timeout(left, read).await {
            Err(_) => Err("no quorum within the read timeout".into()),
            Ok(Err(join)) => Err(join.to_string()),
            Ok(Ok(Ok(linearizer))) => Ok(linearizer.read_log_id().log_id().index),
            Ok(Ok(Err(e))) => Err(e.to_string()),
        }
    }

    /// A read index for a follower (the cluster port's `/cluster/read-index`). The follower
    /// waits for it itself: the leader does not need to have applied it.
    pub async fn read_index_for_follower(&self) -> Result<u64, String> {
        if !self.raft().is_leader() {
            return Err("not the leader".into());
        }
        self.read_index_as_leader(Instant::now() + self.read_timeout)
            .await
    }

    /// Wait until the local state reflects every write acknowledged anywhere in the cluster
    /// before this call; `Unavailable` after the read timeout (no leader, no quorum, or this
    /// node too far behind). Free when this node is the cluster's only voter and its leader:
    /// it acknowledges a write only once applied, and nobody else can commit.
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
            self.runtime().spawn(async move { node.drive_barrier().await });
        }
        // A read arriving during a round waits for the next one too, but never longer than the
        // read timeout in all.
        match tokio::time::timeout(self.read_timeout, rx).await {
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
            let result = self.one_read_index().await;
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }

    /// Obtain a read index (locally when leading, else from the leader) and wait until it is
    /// applied here, all within the read timeout.
    async fn one_read_index(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.read_timeout;
        let mut last_error = String::from("no leader");
        while Instant::now() < deadline {
            let index = if self.metrics().state == ServerState::Leader {
                self.read_index_as_leader(deadline).await
            } else if let Some((_, url)) = self.leader() {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.client().read_index(&url, left).await {
                    Ok(answer) => answer,
                    Err(e) => Err(e.to_string()),
                }
            } else {
                Err("no leader known".into())
            };
            match index {
                Ok(index) => return self.wait_applied(index, deadline).await,
                Err(e) => last_error = e,
            }
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Err(format!(
            "no read index within {:?}: {last_error}",
            self.read_timeout
        ))
    }
}
