//! Membership changes and the cluster status, on this node's Raft member.
//!
//! Adding a node makes it a learner first and waits until it has caught up (log or snapshot),
//! then promotes it to voter, so a slow newcomer never weakens the quorum. These run on the
//! leader; the cluster port forwards them there.

use std::collections::BTreeSet;

use ipcr_proto::NodeId;
use ipcr_proto::admin::{ClusterStatus, IpfsStatus, MemberStatus};
use openraft::ChangeMembers;
use openraft::impls::BasicNode;

use super::RaftNode;

/// How long a membership change waits for another one in progress.
const CHANGE_QUEUE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether openraft refused a change because another is still in progress.
fn busy(error: &str) -> bool {
    error.contains("undergoing a configuration change")
}

impl RaftNode {
    /// Add `id` (reachable at `addr`) as a learner, wait until it caught up, make it a voter.
    /// Adding a node that is already a voter succeeds without change.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), String> {
        if self.members().iter().any(|(m, _, voter)| *m == id && *voter) {
            return Ok(());
        }
        let raft = self.raft().clone();
        self.runtime()
            .spawn(async move {
                // Nodes joining at the same moment queue behind each other's change instead
                // of being refused.
                let deadline = tokio::time::Instant::now() + CHANGE_QUEUE;
                loop {
                    let added = raft.add_learner(id, BasicNode { addr: addr.clone() }, true).await;
                    match added {
                        Ok(_) => break,
                        Err(e) if busy(&e.to_string()) && tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(format!("adding node {id} as learner: {e}")),
                    }
                }
                loop {
                    let promoted = raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                        .await;
                    match promoted {
                        Ok(_) => return Ok(()),
                        Err(e) if busy(&e.to_string()) && tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => return Err(format!("promoting node {id} to voter: {e}")),
                    }
                }
            })
            .await
            .map_err(|e| e.to_string())?
    }

    /// Remove `id` from the cluster (voter or learner).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), String> {
        if !self.members().iter().any(|(m, _, _)| *m == id) {
            return Ok(());
        }
        let raft = self.raft().clone();
        self.runtime()
            .spawn(async move {
                let voters: BTreeSet<NodeId> = raft.voter_ids().collect();
                if voters.contains(&id) {
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| format!("removing voter {id}: {e}"))?;
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| format!("removing learner {id}: {e}"))?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
    }

    /// This node's view of the cluster. `under_replicated` comes from the blob index.
    pub fn status(&self, under_replicated_blobs: u64, ipfs: Option<IpfsStatus>) -> ClusterStatus {
        let m = self.metrics();
        let matched = |id: &NodeId| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index)
        };
        let members = self
            .members()
            .into_iter()
            .map(|(id, addr, voter)| MemberStatus {
                id,
                addr,
                voter,
                matched: matched(&id),
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
