//! The Raft member's own metrics: how long proposals take, and how often the leader changed.
//! Its state (role, term, indexes) is read when scraped ([`crate::metrics`]).

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounter};

use super::node::RaftNode;

/// Proposal latency buckets, in seconds: a local fsynced commit takes a millisecond or two, a
/// write caught by a failover seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counters of one Raft member (cheap to clone: they are shared).
#[derive(Clone)]
pub struct RaftMetrics {
    proposals: HistogramVec,
    leader_changes: IntCounter,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        RaftMetrics {
            proposals: HistogramVec::new(
                HistogramOpts::new(
                    "ipcr_raft_proposal_duration_seconds",
                    "Time from proposing a command until it was committed and applied here (or failed), by result.",
                )
                .buckets(BUCKETS.to_vec()),
                &["result"],
            )
            .expect("a valid metric"),
            leader_changes: IntCounter::new(
                "ipcr_raft_leader_changes_total",
                "Times this node saw a different leader elected.",
            )
            .expect("a valid metric"),
        }
    }
}

impl RaftMetrics {
    /// Everything to export.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.proposals.clone()),
            Box::new(self.leader_changes.clone()),
        ]
    }

    /// A proposal ended after `took`.
    pub(super) fn proposed(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "failed" };
        self.proposals
            .with_label_values(&[result])
            .observe(took.as_secs_f64());
    }
}

/// Count the leaders `node` sees come, for as long as its member runs.
pub(super) async fn count_leader_changes(node: RaftNode) {
    let mut watch = node.raft().metrics();
    let mut last = watch.borrow_watched().current_leader;
    while watch.changed().await.is_ok() {
        let leader = watch.borrow_watched().current_leader;
        if leader.is_some() && leader != last {
            node.raft_metrics().leader_changes.inc();
        }
        if leader.is_some() {
            last = leader;
        }
    }
}
