//! Membership changes, leadership hand-off and the cluster status, on this node's Raft member.
//!
//! Joining is three steps, so that no typo or dead node can weaken the quorum: the node must
//! answer on its cluster port with the id it claims (else the join fails and nothing changed);
//! it is added as a learner and must catch up (log or snapshot) and keep acknowledging the
//! leader (else it is removed again after a stall, or at once by a `leave` of it); only then is
//! it made a voter. openraft itself promotes whatever it is told to, caught up or not.
//!
//! These run on the leader; the cluster port forwards them there.

use std::collections::BTreeSet;
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
/// How long a joining learner may go without replicating or acknowledging anything before the
/// join is given up.
const CATCH_UP_STALL: Duration = Duration::from_secs(30);
/// How long a join may take to catch up in all (under the cluster port's 600 s forwarding
/// timeout).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(540);
/// How far behind the leader's log a learner may be and still be promoted.
const CATCH_UP_LAG: u64 = 16;
/// How long the probe of a joining node's cluster port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a leader that stops, or leaves the cluster, tries to hand leadership over.
pub const HAND_OFF: Duration = Duration::from_secs(5);
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

/// Joins in progress on this node (as leader), so that a `leave` can cancel one. Each join
/// has a token of its own, so that a retried join of the same node never ends another's entry.
#[derive(Default)]
pub(super) struct PendingJoins(std::sync::Mutex<std::collections::HashMap<NodeId, (u64, Arc<Notify>)>>);

/// Tokens of joins.
static JOIN_TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl PendingJoins {
    fn register(&self, id: NodeId) -> (u64, Arc<Notify>) {
        let token = JOIN_TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut joins = self.0.lock().expect("joins lock");
        // A newer join of the same node supersedes an older one, which is cancelled.
        if let Some((_, older)) = joins.insert(id, (token, notify.clone())) {
            older.notify_one();
        }
        (token, notify)
    }

    fn done(&self, id: NodeId, token: u64) {
        let mut joins = self.0.lock().expect("joins lock");
        if joins.get(&id).is_some_and(|(t, _)| *t == token) {
            joins.remove(&id);
        }
    }

    fn cancel(&self, id: NodeId) {
        if let Some((_, n)) = self.0.lock().expect("joins lock").remove(&id) {
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
        let abort = run.abort_handle();
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(ChangeError::Unavailable(join.to_string())),
            Err(_) => {
                // Stop retrying; a change already proposed may still commit.
                abort.abort();
                Err(ChangeError::Unavailable(format!(
                    "the membership change did not complete within {timeout:?}"
                )))
            }
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
    /// make it a voter. A node that already is a voter at that address succeeds without
    /// change (at another address it is refused: two nodes claim one id); a join that cannot
    /// complete removes the learner again. The work runs on the Raft runtime to its end even
    /// if the caller gives up waiting, so that no learner is left behind.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), ChangeError> {
        if let Some((_, known, voter)) = self.members().into_iter().find(|(m, _, _)| *m == id)
            && voter
        {
            return if known.trim_end_matches('/') == addr.trim_end_matches('/') {
                Ok(())
            } else {
                Err(ChangeError::Refused(format!(
                    "node {id} is already a voter at {known}, not at {addr}"
                )))
            };
        }
        // Registered before the probe, so that a leave arriving meanwhile cancels it.
        let (token, cancel) = self.joins.register(id);
        let node = self.clone();
        let run = self.runtime().spawn(async move {
            let result = tokio::select! {
                joined = node.join_as_learner_then_voter(id, addr) => joined,
                () = cancel.notified() => Err(ChangeError::Refused(format!(
                    "the join of node {id} was cancelled (by a leave, or a newer join of it)"
                ))),
            };
            node.joins.done(id, token);
            if let Err(e) = &result {
                tracing::warn!(node = id, error = %e, "join failed; removing the learner");
                if node.members().iter().any(|(m, _, voter)| *m == id && !*voter)
                    && let Err(undo) = node
                        .change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                {
                    tracing::warn!(node = id, error = %undo, "could not remove the learner of a failed join");
                }
            }
            result
        });
        run.await.map_err(|e| ChangeError::Unavailable(e.to_string()))?
    }

    async fn join_as_learner_then_voter(&self, id: NodeId, addr: String) -> Result<(), ChangeError> {
        self.probe(id, &addr).await?;
        let nodes = std::collections::BTreeMap::from([(id, BasicNode { addr })]);
        // SetNodes, not AddNodes: a learner left by an earlier attempt gets the address just
        // probed.
        self.change(ChangeMembers::SetNodes(nodes), true).await?;
        tracing::info!(node = id, "added as learner; waiting until it has caught up");
        self.wait_caught_up(id).await?;
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await?;
        tracing::info!(node = id, "promoted to voter");
        Ok(())
    }

    /// Wait until learner `id` matches the leader's log within [`CATCH_UP_LAG`] entries and
    /// acknowledged the leader within the lease. Give up when it has neither replicated
    /// anything new nor acknowledged anything for [`CATCH_UP_STALL`] (a node receiving or
    /// installing a big snapshot keeps acknowledging heartbeats), or after
    /// [`CATCH_UP_LIMIT`] in all.
    async fn wait_caught_up(&self, id: NodeId) -> Result<(), ChangeError> {
        let started = Instant::now();
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
            if matched > best || fresh {
                best = best.max(matched);
                progressed = Instant::now();
            }
            if progressed.elapsed() > CATCH_UP_STALL {
                return Err(ChangeError::Refused(format!(
                    "node {id} did not catch up: nothing replicated or acknowledged for \
                     {CATCH_UP_STALL:?} (matched {matched:?} of {last}, last acknowledgement {acked:?} ago)"
                )));
            }
            if started.elapsed() > CATCH_UP_LIMIT {
                return Err(ChangeError::Refused(format!(
                    "node {id} did not catch up within {CATCH_UP_LIMIT:?} (matched {matched:?} of {last})"
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
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return true;
        }
        // Chosen once: a leader handing off sends no heartbeats, so acknowledgements age.
        let targets = self.transfer_targets(&m);
        if targets.is_empty() {
            tracing::warn!("no caught-up voter to hand leadership to");
            return false;
        }
        for target in targets {
            tracing::info!(to = target, "handing leadership over");
            let round = (Instant::now() + self.read_timeout * 2).min(deadline);
            while Instant::now() < round {
                // Repeated: the target ignores a transfer while its log is behind ours.
                let raft = self.raft().clone();
                let _ = self
                    .runtime()
                    .spawn(async move { raft.trigger().transfer_leader(target).await })
                    .await;
                let step = Instant::now() + Duration::from_millis(50);
                while Instant::now() < step.min(round) {
                    let m = self.metrics();
                    if m.current_leader.is_some_and(|l| l != self.id()) || m.state != ServerState::Leader {
                        tracing::info!(leader = ?m.current_leader, "leadership handed over");
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        self.metrics().state != ServerState::Leader
    }

    /// The voters to hand leadership to, best first: those that acknowledged the leader within
    /// the lease, the ones with the most of the log first.
    fn transfer_targets(&self, m: &RaftMetrics<TypeConfig>) -> Vec<NodeId> {
        let mut targets: Vec<(Option<u64>, NodeId)> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.id())
            .filter_map(|v| {
                let (matched, acked) = progress(m, v);
                acked.filter(|a| *a < self.lease).map(|_| (matched, v))
            })
            .collect();
        targets.sort_by(|a, b| b.cmp(a));
        targets.into_iter().map(|(_, v)| v).collect()
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
            gc: Default::default(),
        }
    }
}
