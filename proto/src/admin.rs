//! Types of the cluster port's administrative endpoints (`/cluster/join`, `/cluster/leave`,
//! `/cluster/status`), exchanged as JSON so an operator can also use `curl`.

use serde::{Deserialize, Serialize};

use crate::command::NodeId;

/// Ask the cluster to add a node: as a learner first, then, once caught up, as a voter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The new node's id.
    pub id: NodeId,
    /// The URL of its cluster port.
    pub addr: String,
}

/// Ask the cluster to remove a node, after re-replicating the blobs it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveRequest {
    /// The node's id.
    pub id: NodeId,
}

/// One member as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Cluster URL.
    pub addr: String,
    /// Voter (or learner).
    pub voter: bool,
    /// Last log index known replicated to it (from the leader's view; `None` elsewhere).
    pub matched: Option<u64>,
}

/// A node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering node.
    pub id: NodeId,
    /// Its Raft role: Leader, Follower, Candidate, Learner.
    pub state: String,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last committed index.
    pub committed: Option<u64>,
    /// Last applied index.
    pub applied: Option<u64>,
    /// Every member.
    pub members: Vec<MemberStatus>,
    /// Blobs held by fewer nodes than `storage.replicas` (or the cluster size, when smaller),
    /// not counting blobs pinned on IPFS (there, disk copies are a cache).
    pub under_replicated_blobs: u64,
    /// The IPFS backend's progress, when one is configured.
    pub ipfs: Option<IpfsStatus>,
    /// The last garbage collection and the one running.
    #[serde(default)]
    pub gc: crate::gc::GcStatus,
}

/// Where the blobs stand on the IPFS backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpfsStatus {
    /// `estuary` or `ipfs`.
    pub backend: String,
    /// Blobs the backend confirmed under their CID.
    pub pinned: u64,
    /// Blobs durable on the nodes' disks, not yet sent.
    pub pending: u64,
    /// Blobs whose last attempt failed (they are retried).
    pub failed: u64,
    /// Some of the failures, with their reasons.
    pub failures: Vec<PinFailure>,
}

/// One blob the backend has not taken yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinFailure {
    /// The blob.
    pub digest: String,
    /// Its CID.
    pub cid: String,
    /// Why the last attempt failed.
    pub reason: String,
    /// Attempts so far.
    pub attempts: u32,
}
