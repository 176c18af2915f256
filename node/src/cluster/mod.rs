//! Peer transfer and replication of blob bytes between nodes, over the cluster port.
//!
//! Called by `upload` (copying chunks and blobs to replica nodes while they are written,
//! proxying a close to the node holding the most bytes, assembling a blob from chunks held
//! elsewhere), by `registry` (reading a blob this node lacks) and by the repair job. Calls
//! `raft` (membership, the cluster client) and `store`.

pub mod read;
pub mod repair;
pub mod transfer;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipcr_proto::NodeId;
use sha2::Digest as _;

use crate::raft::RaftNode;

/// How long a peer that failed or hung during a read is tried after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// Which nodes hold copies, and in which order to try them.
#[derive(Clone)]
pub struct Peers {
    node: RaftNode,
    replicas: usize,
    /// Peers that failed or hung recently, and until when they are tried last.
    suspects: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Peers {
    /// Peers of `node`; blobs need `replicas` copies (fewer when the cluster is smaller).
    pub fn new(node: RaftNode, replicas: usize) -> Peers {
        Peers {
            node,
            replicas,
            suspects: Arc::default(),
        }
    }

    /// Try `id` after the others for a while: it failed or hung.
    pub fn suspect(&self, id: NodeId) {
        let mut s = self.suspects.lock().expect("suspects lock");
        s.insert(id, Instant::now() + SUSPECT_FOR);
    }

    fn is_suspect(&self, id: NodeId) -> bool {
        let mut s = self.suspects.lock().expect("suspects lock");
        s.retain(|_, until| *until > Instant::now());
        s.contains_key(&id)
    }

    /// The members among `nodes` (other than this one) with their cluster URLs, in the order
    /// to read from them: peers that did not fail recently first, then by rendezvous hashing on
    /// `key` (so reads of one blob spread the same way on every node).
    pub fn holders(&self, nodes: &[NodeId], key: &str) -> Vec<(NodeId, String)> {
        let mut holders = self.urls(nodes);
        let order = self.ranked(key);
        holders.sort_by_cached_key(|(id, _)| {
            (
                self.is_suspect(*id),
                order.iter().position(|(o, _)| o == id).unwrap_or(usize::MAX),
            )
        });
        holders
    }

    /// This node's Raft member.
    pub fn node(&self) -> &RaftNode {
        &self.node
    }

    /// How many nodes must hold a blob: `storage.replicas`, or every voter when fewer.
    pub fn copies(&self) -> usize {
        let voters = self.node.members().iter().filter(|(_, _, v)| *v).count();
        self.replicas_for(voters)
    }

    /// How many nodes must hold a blob in a cluster of `voters`.
    pub fn replicas_for(&self, voters: usize) -> usize {
        self.replicas.min(voters.max(1))
    }

    /// The other voters, ordered by rendezvous hashing on `key`: every node computes the same
    /// order for the same key, so the chunks of one upload go to the same peers.
    pub fn ranked(&self, key: &str) -> Vec<(NodeId, String)> {
        let me = self.node.id();
        let mut peers: Vec<(u64, NodeId, String)> = self
            .node
            .members()
            .into_iter()
            .filter(|(id, _, voter)| *voter && *id != me)
            .map(|(id, url, _)| (score(key, id), id, url))
            .collect();
        peers.sort_by_key(|p| std::cmp::Reverse(p.0));
        peers.into_iter().map(|(_, id, url)| (id, url)).collect()
    }

    /// The cluster URLs of `ids`, in the given order, for the members among them.
    pub fn urls(&self, ids: &[NodeId]) -> Vec<(NodeId, String)> {
        let members = self.node.members();
        ids.iter()
            .filter(|id| **id != self.node.id())
            .filter_map(|id| {
                members
                    .iter()
                    .find(|(m, _, _)| m == id)
                    .map(|(_, u, _)| (*id, u.clone()))
            })
            .collect()
    }
}

/// Rendezvous score of `node` for `key`.
fn score(key: &str, node: NodeId) -> u64 {
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update(node.to_be_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn rendezvous_order_is_stable_and_spread() {
        let nodes = [11u64, 22, 33];
        let order = |key: &str| {
            let mut v: Vec<u64> = nodes.to_vec();
            v.sort_by_key(|n| std::cmp::Reverse(score(key, *n)));
            v
        };
        assert_eq!(order("session-a"), order("session-a"));
        let firsts: std::collections::HashSet<u64> = (0..50).map(|i| order(&format!("s{i}"))[0]).collect();
        assert_eq!(firsts.len(), 3, "every node is first for some keys");
    }
}
