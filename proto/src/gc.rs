//! Garbage collection: what a collection is asked to do, the steps it proposes through Raft,
//! and what it reports.
//!
//! A collection plans on a consistent read of the replicated metadata and proposes its steps
//! as [`GcStep`]s inside [`crate::Command::Collect`]. The state machine checks every step
//! again when it applies it (a tag pushed, a manifest referencing the blob, a mount since the
//! plan keep what they touch), so a plan made on stale data can only remove less.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::NodeId;
use crate::digest::Digest;
use crate::names::{RepoName, Tag};

/// Which tags a retention policy keeps in the repositories it covers. A tag is removed only
/// when it is not among the `keep_newest`, matches none of `keep_tags`, and (when
/// `drop_older_than_ms` is set) was pushed longer ago than that.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Repository name globs (`*` within a path segment, `**` across them).
    pub repositories: Vec<String>,
    /// Keep this many of the most recently pushed tags.
    pub keep_newest: Option<u32>,
    /// Keep tags matching any of these regular expressions (matching the whole tag).
    pub keep_tags: Vec<String>,
    /// Only tags pushed longer ago than this (ms) may be removed.
    pub drop_older_than_ms: Option<u64>,
}

/// What one collection does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcOptions {
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Also delete manifests that no tag reaches (distribution's `--delete-untagged`).
    pub delete_untagged: bool,
    /// Links, manifests and copies younger than this (ms) are kept: a push uploads its
    /// layers before its manifest.
    pub grace_ms: u64,
    /// Retention policies, first match per repository.
    pub retention: Vec<RetentionPolicy>,
    /// Report the tags retention would remove without removing them.
    pub retention_dry_run: bool,
}

/// One step of a collection, checked again by the state machine when applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GcStep {
    /// Remove a tag (retention), if it still points at `digest` as pushed at `pushed_ms`.
    Untag {
        /// Repository.
        repo: RepoName,
        /// The tag.
        tag: Tag,
        /// The manifest it pointed at when planned.
        digest: Digest,
        /// When it was pushed, as planned (a tag pushed again since is kept).
        pushed_ms: u64,
    },
    /// Delete a manifest nothing keeps: no tag, no index naming it, no subject present (a
    /// referrer goes with its subject), and pushed more than the grace period ago. Without
    /// `delete_untagged`, only referrers whose subject is gone.
    Manifest {
        /// Repository.
        repo: RepoName,
        /// The manifest.
        digest: Digest,
    },
    /// Unlink a blob no manifest of the repository references, linked more than the grace
    /// period ago. A blob no repository links any more leaves the blob index.
    Unlink {
        /// Repository.
        repo: RepoName,
        /// The blob.
        digest: Digest,
    },
    /// Remove a blob that no repository links from the blob index.
    Drop {
        /// The blob.
        digest: Digest,
    },
}

/// Removals counted for one repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoTally {
    /// Tags removed by retention.
    pub tags: u64,
    /// Manifests deleted.
    pub manifests: u64,
    /// Blobs unlinked from the repository.
    pub blobs: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What applying steps removed (or, for a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcTally {
    /// Per repository.
    pub repositories: BTreeMap<String, RepoTally>,
    /// Blobs that left the blob index (their copies leave every disk, their pins IPFS).
    pub blobs_removed: u64,
    /// Their bytes, counted once.
    pub bytes_removed: u64,
    /// Their bytes on the nodes' disks (size times copies).
    pub disk_bytes_removed: u64,
    /// Steps the state machine refused because something changed since the plan.
    pub refused: u64,
}

impl GcTally {
    /// Add another tally to this one.
    pub fn add(&mut self, other: &GcTally) {
        for (repo, t) in &other.repositories {
            let mine = self.repositories.entry(repo.clone()).or_default();
            mine.tags += t.tags;
            mine.manifests += t.manifests;
            mine.blobs += t.blobs;
            mine.bytes += t.bytes;
        }
        self.blobs_removed += other.blobs_removed;
        self.bytes_removed += other.bytes_removed;
        self.disk_bytes_removed += other.disk_bytes_removed;
        self.refused += other.refused;
    }

    /// The counters of one repository.
    pub fn repo(&mut self, repo: &RepoName) -> &mut RepoTally {
        self.repositories.entry(repo.as_str().to_string()).or_default()
    }

    /// Totals over all repositories: tags, manifests, blobs unlinked.
    pub fn totals(&self) -> RepoTally {
        let mut all = RepoTally::default();
        for t in self.repositories.values() {
            all.tags += t.tags;
            all.manifests += t.manifests;
            all.blobs += t.blobs;
            all.bytes += t.bytes;
        }
        all
    }
}

/// A collection in progress, as the replicated state records it (one at a time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRun {
    /// Its id (a UUID).
    pub run: String,
    /// The node running it.
    pub node: NodeId,
    /// When it started (ms since the epoch, that node's clock).
    pub started_ms: u64,
    /// Another collection may start after this (renewed by every step).
    pub lease_until_ms: u64,
    /// What it was asked to do, so that another node can finish it.
    pub options: GcOptions,
}

/// A finished collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Its id.
    pub run: String,
    /// The node that ran it.
    pub node: NodeId,
    /// What it was asked to do.
    pub options: GcOptions,
    /// When it started and finished (ms since the epoch).
    pub started_ms: u64,
    /// When it finished.
    pub finished_ms: u64,
    /// Tags, manifests and blob links removed over all repositories.
    pub totals: RepoTally,
    /// What it removed (or would remove, for a dry run). The replicated record of the last
    /// collection keeps the totals only: its per-repository map is empty.
    pub tally: GcTally,
}

/// `POST /cluster/gc`: run one collection now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// Report only.
    #[serde(default)]
    pub dry_run: bool,
    /// Delete untagged manifests (else the node's `storage.maintenance.gc.delete-untagged`).
    #[serde(default)]
    pub delete_untagged: Option<bool>,
    /// Grace period in ms (else the node's `storage.maintenance.gc.grace`).
    #[serde(default)]
    pub grace_ms: Option<u64>,
}

/// One line of the `POST /cluster/gc` answer (newline-delimited JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcEvent {
    /// Steps applied so far out of those planned.
    Progress {
        /// What is being done: `plan`, `untag`, `manifests`, `blobs`.
        phase: String,
        /// Steps done.
        done: u64,
        /// Steps planned.
        total: u64,
    },
    /// The collection finished.
    Done(GcReport),
    /// The collection stopped.
    Failed(String),
}

/// The last collection and the one running, for `ipcr-node status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcStatus {
    /// The last finished collection (dry runs are not recorded).
    pub last: Option<GcReport>,
    /// The collection in progress.
    pub running: Option<GcRun>,
}
