//! Prometheus metrics, exported in one place: the debug listener's `http.debug.prometheus.path`
//! (distribution's keys).
//!
//! Counters and histograms belong to the module they describe (the registry port's requests
//! in [`crate::api::metrics`], proposals and leader changes in [`crate::raft::metrics`], IPFS
//! uploads in [`crate::backend`], repairs in [`crate::cluster::repair`]). What is a state
//! rather than an event (the Raft role and indexes, blobs held, upload sessions, pins, disk
//! space, the last garbage collection) is read when scraped, by [`NodeState`], from the same
//! sources `ipcr-node status` reads. No label carries a repository name, tag or digest.

use std::path::PathBuf;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntGauge, IntGaugeVec, Opts, Registry as Families, TextEncoder};

use crate::health::Health;
use crate::registry::Registry;

/// Every metric of one node.
pub struct Exporter {
    families: Families,
}

impl Exporter {
    /// The node's state read from `registry` and `health`, and the counters of its modules.
    pub fn new(registry: Registry, health: Health, collectors: Vec<Box<dyn Collector>>) -> Exporter {
        let families = Families::new();
        let state = NodeState::new(registry, health);
        families
            .register(Box::new(state))
            .expect("state metrics registered once");
        for c in collectors {
            families.register(c).expect("each metric registered once");
        }
        Exporter { families }
    }

    /// The text format (version 0.0.4) of every metric now.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.families.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Raft roles, one gauge each (1 for the current one).
const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

/// Gauges read from the node's state at each scrape.
struct NodeState {
    registry: Registry,
    health: Health,
    dirs: Vec<PathBuf>,
    role: IntGaugeVec,
    is_leader: IntGauge,
    has_leader: IntGauge,
    leader_id: Gauge,
    term: IntGauge,
    last_log: IntGauge,
    committed: IntGauge,
    applied: IntGauge,
    apply_lag: IntGauge,
    voters: IntGauge,
    learners: IntGauge,
    uploads: IntGauge,
    upload_actors: IntGauge,
    blobs_held: IntGauge,
    bytes_held: IntGauge,
    under_replicated: IntGauge,
    ipfs_blobs: IntGaugeVec,
    check_up: IntGaugeVec,
    disk_size: IntGaugeVec,
    disk_free: IntGaugeVec,
    gc_running: IntGauge,
    gc_last_end: Gauge,
    gc_last_duration: Gauge,
    gc_last_blobs: IntGauge,
    gc_last_bytes: IntGauge,
    build: IntGaugeVec,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("a valid metric")
}

fn gauge_f(name: &str, help: &str) -> Gauge {
    Gauge::new(name, help).expect("a valid metric")
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

impl NodeState {
    fn new(registry: Registry, health: Health) -> NodeState {
        let dirs = registry.store().dirs();
        NodeState {
            registry,
            health,
            dirs,
            role: gauges(
                "ipcr_raft_state",
                "1 for this node's Raft role, 0 for the others.",
                &["state"],
            ),
            is_leader: gauge("ipcr_raft_is_leader", "1 when this node is the Raft leader."),
            has_leader: gauge("ipcr_raft_has_leader", "1 when this node knows a leader."),
            leader_id: gauge_f(
                "ipcr_raft_leader_id",
                "The id of the leader this node knows (0: none).",
            ),
            term: gauge("ipcr_raft_term", "This node's current Raft term."),
            last_log: gauge("ipcr_raft_last_log_index", "Index of this node's last log entry."),
            committed: gauge(
                "ipcr_raft_commit_index",
                "Index of the last entry this node knows committed.",
            ),
            applied: gauge(
                "ipcr_raft_applied_index",
                "Index of the last entry this node's state machine applied.",
            ),
            apply_lag: gauge(
                "ipcr_raft_apply_lag_entries",
                "Entries committed but not yet applied on this node.",
            ),
            voters: gauge(
                "ipcr_raft_voters",
                "Voting members of the cluster, as this node knows them.",
            ),
            learners: gauge("ipcr_raft_learners", "Non-voting members (nodes joining)."),
            uploads: gauge(
                "ipcr_upload_sessions",
                "Open upload sessions in the cluster (replicated; every node reports the same).",
            ),
            upload_actors: gauge(
                "ipcr_upload_sessions_local",
                "Upload sessions with state on this node (an actor serving their requests).",
            ),
            blobs_held: gauge(
                "ipcr_store_blobs",
                "Blobs the blob index says this node holds on its disk.",
            ),
            bytes_held: gauge("ipcr_store_bytes", "Bytes of the blobs this node holds."),
            under_replicated: gauge(
                "ipcr_blobs_under_replicated",
                "Blobs held by fewer nodes than storage.replicas (or the cluster size), not counting blobs pinned on IPFS: the repair's queue.",
            ),
            ipfs_blobs: gauges(
                "ipcr_ipfs_blobs",
                "Blobs on the IPFS backend by state: pinned, pending (not yet sent), failed (retried).",
                &["state"],
            ),
            check_up: gauges(
                "ipcr_health_check_up",
                "1 when a health check passes: storagedriver_filesystem, storagedriver_<ipfs backend>.",
                &["check"],
            ),
            disk_size: gauges(
                "ipcr_disk_size_bytes",
                "Size of the filesystem holding a data directory.",
                &["dir"],
            ),
            disk_free: gauges(
                "ipcr_disk_free_bytes",
                "Bytes available to IPCR on the filesystem holding a data directory.",
                &["dir"],
            ),
            gc_running: gauge(
                "ipcr_gc_running",
                "1 while a garbage collection runs in the cluster.",
            ),
            gc_last_end: gauge_f(
                "ipcr_gc_last_end_timestamp_seconds",
                "When the last garbage collection finished (0: never).",
            ),
            gc_last_duration: gauge_f(
                "ipcr_gc_last_duration_seconds",
                "How long the last garbage collection took.",
            ),
            gc_last_blobs: gauge(
                "ipcr_gc_last_removed_blobs",
                "Blobs the last garbage collection removed from the blob index.",
            ),
            gc_last_bytes: gauge(
                "ipcr_gc_last_removed_bytes",
                "Bytes of the blobs the last garbage collection removed (each counted once).",
            ),
            build: gauges(
                "ipcr_build_info",
                "1, labelled with the version of ipcr-node.",
                &["version"],
            ),
        }
    }

    fn parts(&self) -> Vec<&dyn Collector> {
        vec![
            &self.role,
            &self.is_leader,
            &self.has_leader,
            &self.leader_id,
            &self.term,
            &self.last_log,
            &self.committed,
            &self.applied,
            &self.apply_lag,
            &self.voters,
            &self.learners,
            &self.uploads,
            &self.upload_actors,
            &self.blobs_held,
            &self.bytes_held,
            &self.under_replicated,
            &self.ipfs_blobs,
            &self.check_up,
            &self.disk_size,
            &self.disk_free,
            &self.gc_running,
            &self.gc_last_end,
            &self.gc_last_duration,
            &self.gc_last_blobs,
            &self.gc_last_bytes,
            &self.build,
        ]
    }

    /// Read the state into the gauges.
    fn update(&self) {
        let raft = self.registry.raft();
        let m = raft.metrics();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        for r in ROLES {
            self.role.with_label_values(&[r]).set((r == role) as i64);
        }
        self.is_leader.set((role == "leader") as i64);
        self.has_leader.set(m.current_leader.is_some() as i64);
        self.leader_id.set(m.current_leader.unwrap_or(0) as f64);
        self.term.set(m.current_term as i64);
        let index = |l: Option<u64>| l.unwrap_or(0) as i64;
        let committed = index(m.local_committed.map(|l| l.index));
        let applied = index(m.last_applied.map(|l| l.index));
        self.last_log.set(index(m.last_log_index));
        self.committed.set(committed);
        self.applied.set(applied);
        self.apply_lag.set((committed - applied).max(0));
        let members = raft.members();
        let voters = members.iter().filter(|(_, _, v)| *v).count();
        self.voters.set(voters as i64);
        self.learners.set((members.len() - voters) as i64);

        let reader = raft.reader();
        if let Ok(uploads) = reader.uploads() {
            self.uploads.set(uploads.len() as i64);
        }
        self.upload_actors.set(self.registry.uploads().actors() as i64);
        let want = self.registry.replicas().min(voters.max(1));
        if let Ok(census) = reader.blob_census(want, raft.id()) {
            self.blobs_held.set(census.held as i64);
            self.bytes_held.set(census.held_bytes as i64);
            self.under_replicated.set(census.under_replicated as i64);
            if self.registry.backend().is_some() {
                for (state, n) in [
                    ("pinned", census.ipfs.pinned),
                    ("pending", census.ipfs.pending),
                    ("failed", census.ipfs.failed),
                ] {
                    self.ipfs_blobs.with_label_values(&[state]).set(n as i64);
                }
            }
        }
        for (check, up) in self.health.checks() {
            self.check_up.with_label_values(&[&check]).set(up as i64);
        }
        for dir in &self.dirs {
            if let Ok(fs) = rustix::fs::statvfs(dir) {
                let label = dir.display().to_string();
                self.disk_size
                    .with_label_values(&[&label])
                    .set((fs.f_blocks * fs.f_frsize) as i64);
                self.disk_free
                    .with_label_values(&[&label])
                    .set((fs.f_bavail * fs.f_frsize) as i64);
            }
        }
        if let Ok(gc) = reader.gc_status() {
            self.gc_running.set(gc.running.is_some() as i64);
            if let Some(last) = gc.last {
                self.gc_last_end.set(last.finished_ms as f64 / 1000.0);
                self.gc_last_duration
                    .set(last.finished_ms.saturating_sub(last.started_ms) as f64 / 1000.0);
                self.gc_last_blobs.set(last.tally.blobs_removed as i64);
                self.gc_last_bytes.set(last.tally.bytes_removed as i64);
            }
        }
        self.build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    }
}

impl Collector for NodeState {
    fn desc(&self) -> Vec<&Desc> {
        self.parts().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        self.parts().into_iter().flat_map(|c| c.collect()).collect()
    }
}
