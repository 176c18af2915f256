//! Membership changes, leadership hand-off and the cluster status, on this node's Raft member.
//!
//! Joining is three steps, so that no typo or dead node can weaken the quorum: the node must
//! answer on its cluster port with the id it claims (else the join fails and nothing changed);
//! it is added as a learner and must catch up (log or snapshot) and keep acknowledging the
//! leader (else it is removed again after a stall, or at once by a `leave` of it); only then is
//! it made a voter. openraft itself promotes whatever it is told to, caught up or not.
//!
//! These run on the leader; the cluster port forwards them there.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipcr_proto::NodeId;
use ipcr_proto::admin::{ClusterStatus, IpfsStatus, MemberStatus};
use openraft::impls::BasicNode;
use openraft::type_config::alias::InstantOf;
use openraft::{ChangeMembers, Instant as _, RaftMetrics, ServerState};
use tokio::sync::Notify;

use super::{RaftNode, TypeConfig};

/// How long a membership change waits for another one in progress.
const CHANGE_QUEUE: Duration = Duration::from_secs(60);
/// How long a joining learner may go without replicating anything new before the join is
/// given up (a big snapshot streams continuously, so this is about a stalled node).
const CATCH_UP_STALL: Duration = Duration::from_secs(30);
/// How far behind the leader's log a learner may be and still be promoted.
const CATCH_UP_LAG: u64 = 16;
/// How long the probe of a joining node's cluster port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Interval between two looks at the replication metrics.
const POLL: Duration = Duration::from_millis(20);

/// Why a membership change failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The request cannot succeed as asked (an unreachable node, a wrong id, a join given up
    /// or cancelled); nothing was left changed.
    #[error("{0}")]
    Refused(String),
    /// No leader, no quorum, or the change did not complete in time; retry.
    #[error("{0}")]
    Unavailable(String),
}

/// Joins in progress on this node (as leader), so that a `leave` can cancel one.
#[derive(Default)]
pub(super) struct PendingJoins(std::sync::Mutex<std::collections::HashMap<NodeId, Arc<Notify>>>);

impl PendingJoins {
    fn register(&self, id: NodeId) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.0.lock().expect("joins lock").insert(id, notify.clone());
        notify
    }

    fn done(&self, id: NodeId) {
        self.0.lock().expect("joins lock").remove(&id);
    }

    fn cancel(&self, id: NodeId) {
        if let Some(n) = self.0.lock().expect("joins lock").remove(&id) {
            n.notify_one();
        }
    }
}

/// Whether openraft refused a change because another is still in progress.
fn busy(error: &str) -> bool {
    error.contains("undergoing a configuration change")
}

/// Time since `at`, a send time openraft recorded, on its clock.
fn age(at: InstantOf<TypeConfig>) -> Duration {
    InstantOf::<TypeConfig>::now().saturating_duration_since(at)
}

/// What the leader knows of member `id`: how far its log matches, and how long ago the last
/// RPC it acknowledged was sent.
fn progress(m: &RaftMetrics<TypeConfig>, id: NodeId) -> (Option<u64>, Option<Duration>) {
    let matched = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|l| l.index);
    let acked = m
        .heartbeat
        .as_ref()
        .and_then(|h| h.get(&id).cloned().flatten())
        .map(|t| age(t.into_inner()));
    (matched, acked)
}

impl RaftNode {
    /// Run a membership change on the Raft runtime, queueing behind one in progress.
    async fn change(
        &self,
        members: ChangeMembers<NodeId, BasicNode>,
        retain: bool,
    ) -> Result<(), ChangeError> {
        let raft = self.raft().clone();
        let timeout = self.write_timeout() + CHANGE_QUEUE;
        let run = self.runtime().spawn(async move {
            let deadline = tokio::time::Instant::now() + CHANGE_QUEUE;
            loop {
                match raft.change_membership(members.clone(), retain).await {
                    Ok(_) => return Ok(()),
                    Err(e) if busy(&e.to_string()) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(ChangeError::Unavailable(e.to_string())),
                }
            }
        });
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ChangeError::Unavailable(join.to_string())),
            Err(_) => Err(ChangeError::Unavailable(format!(
                "the membership change did not complete within {timeout:?}"
            ))),
        }
    }

    /// Check that `addr` is the cluster port of node `id`, answering with our secret.
    async fn probe(&self, id: NodeId, addr: &str) -> Result<(), ChangeError> {
        let client = self.client().clone();
        let url = format!("{}/cluster/status", addr.trim_end_matches('/'));
        let call = self.runtime().spawn(async move {
            let resp = client
                .http()
                .get(&url)
                .header("Authorization", client.bearer())
                .timeout(PROBE_TIMEOUT)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("{url}: HTTP {}", resp.status()));
            }
            resp.json::<ClusterStatus>()
                .await
                .map_err(|e| format!("{url}: {e}"))
        });
        let status = call
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?
            .map_err(|e| ChangeError::Refused(format!("node {id} cannot be reached at {addr}: {e}")))?;
        if status.id != id {
            return Err(ChangeError::Refused(format!(
                "{addr} is node {}, not node {id}",
                status.id
            )));
        }
        Ok(())
    }

    /// Add `id` (reachable at `addr`): probe it, add it as a learner, wait until it caught up,
    /// make it a voter. A node that is already a voter succeeds without change; a join that
    /// cannot complete removes the learner again.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), ChangeError> {
        if self.members().iter().any(|(m, _, voter)| *m == id && *voter) {
            return Ok(());
        }
        self.probe(id, &addr).await?;
        let cancel = self.joins.register(id);
        let result = self.join_as_learner_then_voter(id, addr, &cancel).await;
        self.joins.done(id);
        if let Err(e) = &result {
            tracing::warn!(node = id, error = %e, "join failed; removing the learner");
            if self.members().iter().any(|(m, _, voter)| *m == id && !*voter)
                && let Err(undo) = self
                    .change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
            {
                tracing::warn!(node = id, error = %undo, "could not remove the learner of a failed join");
            }
        }
        result
    }

    async fn join_as_learner_then_voter(
        &self,
        id: NodeId,
        addr: String,
        cancel: &Notify,
    ) -> Result<(), ChangeError> {
        let nodes = std::collections::BTreeMap::from([(id, BasicNode { addr })]);
        // SetNodes, not AddNodes: a learner left by an earlier attempt gets the address just
        // probed.
        self.change(ChangeMembers::SetNodes(nodes), true).await?;
        tracing::info!(node = id, "added as learner; waiting until it has caught up");
        let wait = self.wait_caught_up(id);
        tokio::select! {
            caught_up = wait => caught_up?,
            () = cancel.notified() => {
                return Err(ChangeError::Refused(format!("the join of node {id} was cancelled by a leave")));
            }
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await?;
        tracing::info!(node = id, "promoted to voter");
        Ok(())
    }

    /// Wait until learner `id` matches the leader's log within [`CATCH_UP_LAG`] entries and
    /// acknowledged the leader within the lease; give up after [`CATCH_UP_STALL`] without
    /// progress.
    async fn wait_caught_up(&self, id: NodeId) -> Result<(), ChangeError> {
        let mut best: Option<u64> = None;
        let mut progressed = Instant::now();
        loop {
            let m = self.metrics();
            if m.state != ServerState::Leader {
                return Err(ChangeError::Unavailable(format!(
                    "this node stopped leading while node {id} was catching up; retry"
                )));
            }
            let (matched, acked) = progress(&m, id);
            let last = m.last_log_index.unwrap_or(0);
            let fresh = acked.is_some_and(|a| a < self.lease);
            if fresh && matched.is_some_and(|i| i + CATCH_UP_LAG >= last) {
                return Ok(());
            }
            if matched > best {
                best = matched;
                progressed = Instant::now();
            }
            if progressed.elapsed() > CATCH_UP_STALL {
                return Err(ChangeError::Refused(format!(
                    "node {id} did not catch up: nothing replicated for {CATCH_UP_STALL:?} \
                     (matched {matched:?} of {last}, last acknowledgement {acked:?} ago)"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Remove `id` from the cluster (voter or learner), cancelling a join of it in progress.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ChangeError> {
        self.joins.cancel(id);
        let Some((_, _, voter)) = self.members().into_iter().find(|(m, _, _)| *m == id) else {
            return Ok(());
        };
        let ids = BTreeSet::from([id]);
        if voter {
            self.change(ChangeMembers::RemoveVoters(ids), false).await
        } else {
            self.change(ChangeMembers::RemoveNodes(ids), false).await
        }
    }

    /// When this node leads, hand leadership to a voter that is caught up and answering, and
    /// wait until another node leads; tries each such voter in turn within `within`. Answers
    /// whether this node no longer leads. Writes sent here meanwhile are forwarded to the new
    /// leader, and this node stops answering reads from its lease the moment it hands off.
    pub async fn hand_off(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut tried = HashSet::new();
        loop {
            let m = self.metrics();
            if m.state != ServerState::Leader {
                return true;
            }
            let Some(target) = self.transfer_target(&m, &tried) else {
                tracing::warn!("no caught-up voter to hand leadership to");
                return false;
            };
            tried.insert(target);
            tracing::info!(to = target, "handing leadership over");
            let raft = self.raft().clone();
            let _ = self
                .runtime()
                .spawn(async move { raft.trigger().transfer_leader(target).await })
                .await;
            let round = Instant::now() + self.read_timeout * 2;
            while Instant::now() < round.min(deadline) {
                let m = self.metrics();
                if m.current_leader.is_some_and(|l| l != self.id()) {
                    tracing::info!(leader = ?m.current_leader, "leadership handed over");
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// The voter to hand leadership to: one that acknowledged the leader within the lease,
    /// with the most of the log.
    fn transfer_target(&self, m: &RaftMetrics<TypeConfig>, tried: &HashSet<NodeId>) -> Option<NodeId> {
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.id() && !tried.contains(v))
            .filter_map(|v| {
                let (matched, acked) = progress(m, v);
                acked.filter(|a| *a < self.lease).map(|_| (matched, v))
            })
            .max()
            .map(|(_, v)| v)
    }

    /// This node's view of the cluster. `under_replicated` comes from the blob index.
    pub fn status(&self, under_replicated_blobs: u64, ipfs: Option<IpfsStatus>) -> ClusterStatus {
        let m = self.metrics();
        let members = self
            .members()
            .into_iter()
            .map(|(id, addr, voter)| MemberStatus {
                id,
                addr,
                voter,
                matched: progress(&m, id).0,
            })
            .collect();
        ClusterStatus {
            id: m.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed: m.local_committed.map(|l| l.index),
            applied: m.last_applied.map(|l| l.index),
            members,
            under_replicated_blobs,
            ipfs,
        }
    }
}
