//! Raft commands, the only way registry metadata changes, and their results.
//!
//! Every command is applied by the deterministic state machine in `node::raft`; anything that
//! varies between nodes (clocks, random ids, which nodes hold bytes) is decided by the node that
//! proposes the command and carried inside it. Types stay simple (no untagged or flattened
//! serde) because the log encodes them with bincode.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cid::{CidProgress, CidStep, Leaf};
use crate::digest::{Algorithm, Digest};
use crate::gc::{GcOptions, GcReport, GcStep, GcTally};
use crate::hash_state::HashState;
use crate::names::{RepoName, Tag};

/// Raft node identifier. Never reused.
pub type NodeId = u64;

/// A manifest as the state machine records it. `media_type` and `bytes` stay the first two
/// fields: the node reads a manifest's length from the encoded record's head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// The media type it was pushed with; served back as Content-Type.
    pub media_type: String,
    /// The exact bytes pushed.
    pub bytes: Vec<u8>,
    /// Blobs it references (must stay linked while the manifest exists).
    pub blobs: Vec<Digest>,
    /// Child manifests (index entries).
    pub children: Vec<Digest>,
    /// The manifest it refers to, if any.
    pub subject: Option<Digest>,
    /// Artifact type shown in the referrers index.
    pub artifact_type: Option<String>,
    /// Top-level annotations shown in the referrers index.
    pub annotations: BTreeMap<String, String>,
}

/// A blob's entry in the replicated blob index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    /// Size in bytes.
    pub size: u64,
    /// Nodes whose disks hold the verified bytes.
    pub nodes: Vec<NodeId>,
    /// Its copy on IPFS, when a backend is configured.
    pub ipfs: Option<IpfsRecord>,
}

/// A blob on the IPFS side: the CID IPCR computed while the blob was written, and how far the
/// backend got with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpfsRecord {
    /// The CID, as computed by IPCR with the backend's import settings.
    pub cid: String,
    /// Where the backend stands.
    pub state: PinState,
}

/// Progress of a blob's upload to the IPFS backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PinState {
    /// Durable on the nodes' disks, not yet confirmed by the backend.
    Pending,
    /// The backend holds it under the recorded CID.
    Pinned,
    /// The last attempt failed (retried later).
    Failed {
        /// Why.
        reason: String,
        /// Attempts so far.
        attempts: u32,
    },
    /// No repository links the blob any more: the backend is to drop its pin.
    Unpinning,
    /// The backend dropped its pin (pinned again if the blob is pushed again).
    Unpinned,
}

/// One chunk of an upload session, as acknowledged to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Offset of the chunk's first byte in the upload.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Nodes holding the chunk's bytes, fsynced.
    pub nodes: Vec<NodeId>,
    /// Hash midstate after the chunk: with the previous chunk's, it verifies the chunk's bytes
    /// wherever they are copied, without hashing the whole upload again.
    pub hash: HashState,
}

/// An open upload session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Repository the blob is being pushed to.
    pub repo: RepoName,
    /// Bytes acknowledged so far.
    pub size: u64,
    /// The algorithm the session hashes with.
    pub algorithm: Algorithm,
    /// Hash midstate after `size` bytes (none before the first chunk).
    pub hash: Option<HashState>,
    /// The acknowledged chunks, in order.
    pub chunks: Vec<ChunkRecord>,
    /// The blob's CID so far, when an IPFS backend is configured.
    pub cid: Option<CidProgress>,
    /// When the session started (ms since the Unix epoch, proposer's clock).
    pub started_ms: u64,
    /// When the session last changed (ms since the Unix epoch, proposer's clock).
    pub updated_ms: u64,
}

/// A mutation of registry metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store a manifest in a repository, pointing the given tags at it.
    PutManifest {
        /// Target repository.
        repo: RepoName,
        /// Digest of `record.bytes`.
        digest: Digest,
        /// Tags to point at it (the tag it was pushed by, or `?tag=` parameters).
        tags: Vec<Tag>,
        /// The manifest.
        record: ManifestRecord,
        /// Proposer's clock, ms since the epoch: when the manifest and its tags were pushed
        /// (retention's age, the garbage collector's grace period).
        now_ms: u64,
    },
    /// Remove a tag (the manifest stays).
    Untag {
        /// Repository.
        repo: RepoName,
        /// Tag to remove.
        tag: Tag,
    },
    /// Remove a manifest from a repository, with every tag pointing at it.
    DeleteManifest {
        /// Repository.
        repo: RepoName,
        /// The manifest's digest.
        digest: Digest,
    },
    /// Record verified bytes in the blob index and link them into a repository.
    CommitBlob {
        /// Repository the blob was pushed to.
        repo: RepoName,
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
        /// Nodes holding it.
        nodes: Vec<NodeId>,
        /// Its CID, when an IPFS backend is configured.
        cid: Option<String>,
        /// The CID's leaves (SHA-256 of each 1 MiB), so that a range of the blob read back from
        /// IPFS can be checked leaf by leaf.
        leaves: Vec<Leaf>,
        /// Proposer's clock: when the blob was linked (the garbage collector's grace period).
        now_ms: u64,
    },
    /// Link an already committed blob into another repository (cross-repository mount).
    LinkBlob {
        /// Repository to link into.
        repo: RepoName,
        /// The blob.
        digest: Digest,
        /// Proposer's clock: when the blob was linked.
        now_ms: u64,
    },
    /// Unlink a blob from a repository (`DELETE /v2/<name>/blobs/<digest>`).
    UnlinkBlob {
        /// Repository.
        repo: RepoName,
        /// The blob.
        digest: Digest,
    },
    /// Open an upload session.
    StartUpload {
        /// Session id (a UUID).
        id: String,
        /// Target repository.
        repo: RepoName,
        /// The algorithm the session hashes with (`?digest-algorithm=`, default sha256).
        algorithm: Algorithm,
        /// Links per DAG node of the CID to compute, when an IPFS backend is configured.
        cid_links: Option<u32>,
        /// Proposer's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Record a chunk written and fsynced by its holders.
    AppendChunk {
        /// Session id.
        id: String,
        /// Must equal the session's current size.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Nodes holding it.
        nodes: Vec<NodeId>,
        /// Hash midstate after the chunk.
        hash: HashState,
        /// What the chunk adds to the session's CID.
        cid: Option<CidStep>,
        /// Proposer's clock.
        now_ms: u64,
    },
    /// Close a session: commit its blob, link it to the session's repository, drop the session
    /// (remembering it finished, so that a retried close is answered the same).
    FinishUpload {
        /// Session id.
        id: String,
        /// Verified digest.
        digest: Digest,
        /// Final size.
        size: u64,
        /// Nodes holding the assembled blob.
        nodes: Vec<NodeId>,
        /// Its CID, when an IPFS backend is configured.
        cid: Option<String>,
        /// The CID's leaves (SHA-256 of each 1 MiB), so that a range of the blob read back from
        /// IPFS can be checked leaf by leaf.
        leaves: Vec<Leaf>,
        /// Proposer's clock.
        now_ms: u64,
    },
    /// Cancel a session.
    CancelUpload {
        /// Session id.
        id: String,
    },
    /// Drop sessions not updated since `before_ms` (distribution's upload purging), and the
    /// records of sessions finished before it.
    PurgeUploads {
        /// Cut-off, ms since the epoch.
        before_ms: u64,
    },
    /// Record the IPFS backend's answer for a blob whose CID is `cid` (refused when the
    /// blob's recorded CID differs: the answer is about other bytes). An answer that arrives
    /// after the blob was unlinked everywhere (or linked again) is refused as stale.
    SetPin {
        /// The blob.
        digest: Digest,
        /// The CID the answer is about.
        cid: String,
        /// The new state.
        state: PinState,
    },
    /// Change which nodes hold a committed blob (a copy made for repair or caching, or a node
    /// leaving).
    BlobHolders {
        /// The blob.
        digest: Digest,
        /// Nodes that now hold it, fsynced and verified.
        add: Vec<NodeId>,
        /// Nodes that no longer do.
        remove: Vec<NodeId>,
    },
    /// Start a garbage collection: refused while another one holds an unexpired lease.
    GcBegin {
        /// The collection, with its lease.
        run: crate::gc::GcRun,
    },
    /// Apply steps of the running collection `run` (refused for any other), each checked
    /// again; renews the collection's lease. Answers [`CommandResult::Collected`].
    Collect {
        /// The collection.
        run: String,
        /// Proposer's clock: ages are measured against it.
        now_ms: u64,
        /// Lease renewed until `now_ms + lease_ms`.
        lease_ms: u64,
        /// What the collection does (grace period, untagged manifests).
        options: GcOptions,
        /// The steps, in order.
        steps: Vec<GcStep>,
    },
    /// Finish the collection `run`, recording its report as the last collection.
    GcEnd {
        /// What it did.
        report: GcReport,
    },
    /// A manifest the pull-through cache fetched from its upstream: stored like
    /// [`Command::PutManifest`], but its blobs and child manifests need not be here yet
    /// (they are fetched when pulled).
    CacheManifest {
        /// The proxied repository.
        repo: RepoName,
        /// Digest of `record.bytes`.
        digest: Digest,
        /// The tags the upstream gives it (none when fetched by digest).
        tags: Vec<Tag>,
        /// The manifest, bytes as the upstream served them.
        record: ManifestRecord,
        /// Proposer's clock, ms since the epoch.
        now_ms: u64,
    },
    /// Claim the fetch of a blob from a cache's upstream, so that one node of the cluster
    /// fetches it while the others wait for its commit. Refused with
    /// [`Reject::FetchClaimed`] while another node's claim runs; a `CommitBlob` of the digest
    /// ends the claim.
    ClaimFetch {
        /// The blob.
        digest: Digest,
        /// The node fetching it.
        node: NodeId,
        /// Proposer's clock, ms since the epoch.
        now_ms: u64,
        /// The claim runs until `now_ms + lease_ms` (renewed by claiming again).
        lease_ms: u64,
    },
    /// Give a claim up (the fetch failed), so another node may try at once.
    ReleaseFetch {
        /// The blob.
        digest: Digest,
        /// The node that claimed it; another node's claim is left alone.
        node: NodeId,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::PutManifest {
                repo, digest, tags, ..
            } => {
                write!(f, "PutManifest({repo}@{digest}")?;
                for t in tags {
                    write!(f, " :{t}")?;
                }
                write!(f, ")")
            }
            Command::Untag { repo, tag } => write!(f, "Untag({repo}:{tag})"),
            Command::DeleteManifest { repo, digest } => write!(f, "DeleteManifest({repo}@{digest})"),
            Command::CommitBlob {
                repo, digest, size, ..
            } => write!(f, "CommitBlob({repo}, {digest}, {size})"),
            Command::LinkBlob { repo, digest, .. } => write!(f, "LinkBlob({repo}, {digest})"),
            Command::UnlinkBlob { repo, digest } => write!(f, "UnlinkBlob({repo}, {digest})"),
            Command::StartUpload { id, repo, .. } => write!(f, "StartUpload({id}, {repo})"),
            Command::AppendChunk { id, offset, len, .. } => write!(f, "AppendChunk({id}, {offset}+{len})"),
            Command::FinishUpload { id, digest, .. } => write!(f, "FinishUpload({id}, {digest})"),
            Command::CancelUpload { id } => write!(f, "CancelUpload({id})"),
            Command::PurgeUploads { before_ms } => write!(f, "PurgeUploads(<{before_ms})"),
            Command::BlobHolders { digest, add, remove } => {
                write!(f, "BlobHolders({digest}, +{add:?}, -{remove:?})")
            }
            Command::SetPin { digest, cid, state } => write!(f, "SetPin({digest}, {cid}, {state:?})"),
            Command::GcBegin { run } => write!(f, "GcBegin({})", run.run),
            Command::Collect { run, steps, .. } => write!(f, "Collect({run}, {} steps)", steps.len()),
            Command::GcEnd { report } => write!(f, "GcEnd({})", report.run),
            Command::CacheManifest { repo, digest, .. } => write!(f, "CacheManifest({repo}@{digest})"),
            Command::ClaimFetch { digest, node, .. } => write!(f, "ClaimFetch({digest}, {node})"),
            Command::ReleaseFetch { digest, node } => write!(f, "ReleaseFetch({digest}, {node})"),
        }
    }
}

/// Why the state machine refused a command. Refusals are deterministic: every node refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Reject {
    /// A manifest references a blob or child manifest not present in the repository.
    #[error("manifest references unknown {0}")]
    ManifestBlobUnknown(Digest),
    /// The manifest or tag does not exist in the repository.
    #[error("manifest unknown")]
    ManifestUnknown,
    /// The blob is not linked in the repository (or not committed at all).
    #[error("blob unknown")]
    BlobUnknown,
    /// The upload session does not exist (finished, cancelled, purged, or never started).
    #[error("upload unknown")]
    UploadUnknown,
    /// A chunk does not start where the session ends.
    #[error("chunk does not start at the upload's end ({size})")]
    RangeMismatch {
        /// The session's current size.
        size: u64,
    },
    /// Another garbage collection is running (or this one's lease was taken over).
    #[error("garbage collection {0} is running")]
    GcRunning(String),
    /// Another node is fetching this blob from the cache's upstream.
    #[error("node {node} is fetching it until {until_ms}")]
    FetchClaimed {
        /// The node fetching it.
        node: NodeId,
        /// Its claim's end (proposer's clock, ms).
        until_ms: u64,
    },
}

/// The state machine's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied (or a no-op that needs no change, such as a repeated link).
    Ok,
    /// Refused; nothing changed.
    Rejected(Reject),
    /// Garbage collection steps applied: what they removed.
    Collected(GcTally),
}

impl CommandResult {
    /// Turn the answer into a `Result`.
    pub fn into_result(self) -> Result<(), Reject> {
        match self {
            CommandResult::Ok | CommandResult::Collected(_) => Ok(()),
            CommandResult::Rejected(r) => Err(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_roundtrip_through_bincode() {
        let cfg = bincode::config::standard();
        let digest: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        let cmds = vec![
            Command::PutManifest {
                repo: "a/b".parse().unwrap(),
                digest: digest.clone(),
                tags: vec!["v1".parse().unwrap()],
                record: ManifestRecord {
                    media_type: "x".into(),
                    bytes: b"{}".to_vec(),
                    blobs: vec![digest.clone()],
                    children: vec![],
                    subject: None,
                    artifact_type: Some("t".into()),
                    annotations: [("k".to_string(), "v".to_string())].into(),
                },
                now_ms: 7,
            },
            Command::Collect {
                run: "r".into(),
                now_ms: 1,
                lease_ms: 2,
                options: GcOptions {
                    dry_run: false,
                    delete_untagged: true,
                    grace_ms: 3,
                    retention: vec![crate::gc::RetentionPolicy {
                        repositories: vec!["a/**".into()],
                        keep_newest: Some(3),
                        keep_tags: vec!["v.*".into()],
                        drop_older_than_ms: None,
                    }],
                    retention_dry_run: false,
                },
                steps: vec![
                    GcStep::Untag {
                        repo: "a/b".parse().unwrap(),
                        tag: "v1".parse().unwrap(),
                        digest: digest.clone(),
                        pushed_ms: 4,
                    },
                    GcStep::Drop {
                        digest: digest.clone(),
                    },
                ],
            },
            Command::AppendChunk {
                id: "u".into(),
                offset: 1,
                len: 2,
                nodes: vec![1, 2],
                hash: HashState {
                    version: 1,
                    algorithm: crate::Algorithm::Sha512,
                    bytes: vec![0; 104],
                },
                cid: Some(CidStep {
                    leaves: vec![crate::cid::Leaf::of(b"leaf")],
                    partial: HashState {
                        version: 1,
                        algorithm: crate::Algorithm::Sha256,
                        bytes: vec![1; 104],
                    },
                }),
                now_ms: 5,
            },
            Command::SetPin {
                digest: digest.clone(),
                cid: "bafkrei".into(),
                state: PinState::Failed {
                    reason: "r".into(),
                    attempts: 2,
                },
            },
            Command::PurgeUploads { before_ms: 9 },
        ];
        for cmd in cmds {
            let bytes = bincode::serde::encode_to_vec(&cmd, cfg).unwrap();
            let (back, _): (Command, _) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(back, cmd);
        }
        let r = CommandResult::Rejected(Reject::RangeMismatch { size: 3 });
        let bytes = bincode::serde::encode_to_vec(&r, cfg).unwrap();
        let (back, _): (CommandResult, _) = bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, r);
    }
}
