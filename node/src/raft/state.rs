//! The state machine's tables and the read side used by `registry` and `upload`.
//!
//! Every table maps `&str` keys to bytes. Composite keys join their parts with `\0`, which no
//! validated repository name, tag or digest can contain, so one repository's rows form a
//! contiguous, correctly ordered range (`repo\0` .. `repo\x01`). Values are bincode records
//! prefixed with the format version (`raft::encode`).
//!
//! Reads here see whatever the local state machine has applied; callers that need
//! linearizable reads pass the node's read barrier first (`RaftNode::read_barrier`).

use std::sync::Arc;

use ipcr_proto::admin::{IpfsStatus, PinFailure};
use ipcr_proto::gc::{GcReport, GcRun, GcStatus};
use ipcr_proto::manifest::Descriptor;
use ipcr_proto::{BlobRecord, Digest, IpfsRecord, ManifestRecord, NodeId, PinState, RepoName, UploadRecord};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};

use super::decode;

/// A table of the state machine.
pub(crate) type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// `last_applied` and `membership`.
pub(crate) const META: Table = TableDefinition::new("sm_meta");
/// Repositories that ever received content: `repo` → empty.
pub(crate) const REPOS: Table = TableDefinition::new("repos");
/// `repo\0tag` → digest string.
pub(crate) const TAGS: Table = TableDefinition::new("tags");
/// Manifest content, shared by every repository holding it: `digest` → `ManifestRecord`.
pub(crate) const MANIFESTS: Table = TableDefinition::new("manifests");
/// Which repositories hold which manifests, and when they were last pushed there:
/// `repo\0digest` → ms (u64 little-endian, proposer's clock).
pub(crate) const REPO_MANIFESTS: Table = TableDefinition::new("repo_manifests");
/// The blob index: `digest` → `BlobRecord`.
pub(crate) const BLOBS: Table = TableDefinition::new("blobs");
/// Which repositories may serve which blobs, and when they were last linked (uploaded or
/// mounted): `repo\0digest` → ms (u64 little-endian, proposer's clock).
pub(crate) const REPO_BLOBS: Table = TableDefinition::new("repo_blobs");
/// `repo\0subject\0referrer` → empty.
pub(crate) const REFERRERS: Table = TableDefinition::new("referrers");
/// Open upload sessions: `id` → `UploadRecord`.
pub(crate) const UPLOADS: Table = TableDefinition::new("uploads");
/// Recently finished sessions, so a retried close gets the same answer: `id` → (digest, ms).
pub(crate) const FINISHED: Table = TableDefinition::new("finished_uploads");
/// Blobs the IPFS backend has work to do for (pending, failed, unpinning): `digest` → empty.
pub(crate) const UNPINNED: Table = TableDefinition::new("unpinned_blobs");
/// The CID leaves of blobs with a CID: `digest` → `Vec<Leaf>`.
pub(crate) const BLOB_LEAVES: Table = TableDefinition::new("blob_leaves");
/// How many repositories link each blob: `digest` → u64 little-endian.
pub(crate) const BLOB_LINKS: Table = TableDefinition::new("blob_links");
/// Which tags point at which manifest, and when they were pushed: `repo\0digest\0tag` →
/// ms (u64 little-endian, proposer's clock).
pub(crate) const TAGGED: Table = TableDefinition::new("tagged");
/// Which manifests of a repository name a manifest as an index entry:
/// `repo\0child\0parent` → empty.
pub(crate) const PARENTS: Table = TableDefinition::new("parents");
/// Which manifests of a repository reference a blob: `repo\0blob\0manifest` → empty.
pub(crate) const BLOB_REFS: Table = TableDefinition::new("blob_refs");
/// Which repositories hold a manifest (`REPO_MANIFESTS` the other way round), so that a
/// manifest's content leaves with its last repository: `digest\0repo` → empty.
pub(crate) const MANIFEST_REPOS: Table = TableDefinition::new("manifest_repos");
/// Blobs a collection removed from the index, for the nodes' janitors: `digest` → (when,
/// the collection's grace period), both ms. Removed when the blob is committed again, and
/// after a day.
pub(crate) const DROPPED: Table = TableDefinition::new("dropped_blobs");
/// Garbage collection: `running` → `GcRun`, `last` → `GcReport`.
pub(crate) const GC: Table = TableDefinition::new("gc");
/// Blobs a node is fetching from a pull-through cache's upstream: `digest` → (node, until
/// ms). Ended by the blob's commit, a release, or the claim running out.
pub(crate) const FETCHES: Table = TableDefinition::new("cache_fetches");

pub(crate) const GC_RUNNING: &str = "running";
pub(crate) const GC_LAST: &str = "last";

/// Every data table (all but `META`), in snapshot order.
pub(crate) const DATA_TABLES: [Table; 19] = [
    REPOS,
    TAGS,
    MANIFESTS,
    REPO_MANIFESTS,
    BLOBS,
    REPO_BLOBS,
    REFERRERS,
    UPLOADS,
    FINISHED,
    UNPINNED,
    BLOB_LINKS,
    BLOB_LEAVES,
    TAGGED,
    PARENTS,
    BLOB_REFS,
    MANIFEST_REPOS,
    DROPPED,
    GC,
    FETCHES,
];

pub(crate) const KEY_APPLIED: &str = "last_applied";
pub(crate) const KEY_MEMBERSHIP: &str = "membership";

/// A time or count stored as a table value (u64 little-endian); 0 when malformed.
pub(crate) fn ms_of(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

/// Join key parts with `\0`.
pub(crate) fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// The range of keys that start with `parts` followed by `\0`.
pub(crate) fn prefix_range(parts: &[&str]) -> (String, String) {
    let p = key(parts);
    (format!("{p}\0"), format!("{p}\x01"))
}

/// Why a read failed: only storage faults, never "not found".
#[derive(Debug, thiserror::Error)]
#[error("metadata store: {0}")]
pub struct StateError(String);

impl StateError {
    fn from<E: std::fmt::Display>(e: E) -> StateError {
        StateError(e.to_string())
    }
}

/// A page of names (tags or repositories) and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The names, in byte order.
    pub items: Vec<String>,
    /// Whether at least one more name follows the last one.
    pub more: bool,
}

/// What the blob index says of the blobs ([`StateReader::blob_census`]).
#[derive(Clone, Debug, Default)]
pub struct BlobCensus {
    /// Blobs held by fewer nodes than wanted, not counting those pinned on IPFS.
    pub under_replicated: u64,
    /// The IPFS backend's counts.
    pub ipfs: IpfsStatus,
    /// Blobs the node asked about holds.
    pub held: u64,
    /// Their bytes.
    pub held_bytes: u64,
}

/// Read access to the applied state. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<Database>,
}

impl StateReader {
    pub(crate) fn new(db: Arc<Database>) -> StateReader {
        StateReader { db }
    }

    fn tx(&self) -> Result<ReadTransaction, StateError> {
        self.db.begin_read().map_err(StateError::from)
    }

    fn get(tx: &ReadTransaction, table: Table, k: &str) -> Result<Option<Vec<u8>>, StateError> {
        let t = tx.open_table(table).map_err(StateError::from)?;
        Ok(t.get(k).map_err(StateError::from)?.map(|v| v.value().to_vec()))
    }

    fn has(tx: &ReadTransaction, table: Table, k: &str) -> Result<bool, StateError> {
        let t = tx.open_table(table).map_err(StateError::from)?;
        Ok(t.get(k).map_err(StateError::from)?.is_some())
    }

    fn record<T: serde::de::DeserializeOwned>(bytes: Option<Vec<u8>>) -> Result<Option<T>, StateError> {
        bytes.map(|b| decode(&b).map_err(StateError::from)).transpose()
    }

    /// Whether the repository ever received content.
    pub fn repo_exists(&self, repo: &RepoName) -> Result<bool, StateError> {
        Self::has(&self.tx()?, REPOS, repo.as_str())
    }

    /// The digest a tag points to.
    pub fn tag(&self, repo: &RepoName, tag: &str) -> Result<Option<Digest>, StateError> {
        let raw = Self::get(&self.tx()?, TAGS, &key(&[repo.as_str(), tag]))?;
        Ok(raw
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok()))
    }

    /// A manifest held by the repository.
    pub fn manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestRecord>, StateError> {
        let tx = self.tx()?;
        let d = digest.to_string();
        if !Self::has(&tx, REPO_MANIFESTS, &key(&[repo.as_str(), &d]))? {
            return Ok(None);
        }
        Self::record(Self::get(&tx, MANIFESTS, &d)?)
    }

    /// A manifest's record, whatever repository holds it.
    pub fn manifest_any(&self, digest: &Digest) -> Result<Option<ManifestRecord>, StateError> {
        Self::record(Self::get(&self.tx()?, MANIFESTS, &digest.to_string())?)
    }

    /// The length of a manifest held by the repository, read without copying its bytes (a
    /// manifest may be 4 MiB, and an index can name thousands): only the record's leading
    /// fields are decoded, `media_type` and then the length prefix of `bytes`, which bincode
    /// writes as it writes a `u64`. `ManifestRecord` must keep those two fields first.
    pub fn manifest_len(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, StateError> {
        let tx = self.tx()?;
        let d = digest.to_string();
        if !Self::has(&tx, REPO_MANIFESTS, &key(&[repo.as_str(), &d]))? {
            return Ok(None);
        }
        let t = tx.open_table(MANIFESTS).map_err(StateError::from)?;
        let Some(value) = t.get(d.as_str()).map_err(StateError::from)? else {
            return Ok(None);
        };
        let (_media_type, len): (String, u64) = decode(value.value()).map_err(StateError::from)?;
        Ok(Some(len))
    }

    /// Resolve a tag and read its manifest in one consistent view.
    pub fn tagged_manifest(
        &self,
        repo: &RepoName,
        tag: &str,
    ) -> Result<Option<(Digest, ManifestRecord)>, StateError> {
        let tx = self.tx()?;
        let Some(raw) = Self::get(&tx, TAGS, &key(&[repo.as_str(), tag]))? else {
            return Ok(None);
        };
        let Some(digest) = String::from_utf8(raw).ok().and_then(|s| s.parse::<Digest>().ok()) else {
            return Ok(None);
        };
        let record = Self::record(Self::get(&tx, MANIFESTS, &digest.to_string())?)?;
        Ok(record.map(|r| (digest, r)))
    }

    /// A blob linked into the repository, with its index entry.
    pub fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobRecord>, StateError> {
        let tx = self.tx()?;
        let d = digest.to_string();
        if !Self::has(&tx, REPO_BLOBS, &key(&[repo.as_str(), &d]))? {
            return Ok(None);
        }
        Self::record(Self::get(&tx, BLOBS, &d)?)
    }

    /// A blob's index entry, whatever repository holds it.
    pub fn blob_any(&self, digest: &Digest) -> Result<Option<BlobRecord>, StateError> {
        Self::record(Self::get(&self.tx()?, BLOBS, &digest.to_string())?)
    }

    /// Up to `n` names from `table` under `prefix`, strictly after `last`.
    fn page(
        &self,
        table: Table,
        prefix: Option<&str>,
        last: Option<&str>,
        n: usize,
    ) -> Result<Page, StateError> {
        let tx = self.tx()?;
        let t = tx.open_table(table).map_err(StateError::from)?;
        let (lo, hi) = match prefix {
            Some(p) => prefix_range(&[p]),
            None => (String::new(), String::from("\u{10FFFF}")),
        };
        let strip = |k: &str| -> String {
            match prefix {
                Some(_) => k.split('\0').nth(1).unwrap_or_default().to_string(),
                None => k.to_string(),
            }
        };
        let start = match (prefix, last) {
            (Some(p), Some(l)) => key(&[p, l]),
            (None, Some(l)) => l.to_string(),
            (_, None) => lo.clone(),
        };
        let mut items = Vec::new();
        let mut more = false;
        for row in t.range(start.as_str()..hi.as_str()).map_err(StateError::from)? {
            let (k, _) = row.map_err(StateError::from)?;
            let name = strip(k.value());
            if last.is_some_and(|l| name.as_str() <= l) {
                continue;
            }
            if items.len() == n {
                more = true;
                break;
            }
            items.push(name);
        }
        Ok(Page { items, more })
    }

    /// Tags of a repository in byte order, after `last`, at most `n`.
    pub fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Page, StateError> {
        self.page(TAGS, Some(repo.as_str()), last, n)
    }

    /// Repositories in byte order, after `last`, at most `n`.
    pub fn catalog(&self, last: Option<&str>, n: usize) -> Result<Page, StateError> {
        self.page(REPOS, None, last, n)
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Descriptor>, StateError> {
        let tx = self.tx()?;
        let t = tx.open_table(REFERRERS).map_err(StateError::from)?;
        let s = subject.to_string();
        let (lo, hi) = prefix_range(&[repo.as_str(), &s]);
        let mut out = Vec::new();
        for row in t.range(lo.as_str()..hi.as_str()).map_err(StateError::from)? {
            let (k, _) = row.map_err(StateError::from)?;
            let Some(digest) = k
                .value()
                .rsplit('\0')
                .next()
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            let Some(m) = Self::record::<ManifestRecord>(Self::get(&tx, MANIFESTS, &digest.to_string())?)?
            else {
                continue;
            };
            out.push(Descriptor {
                media_type: m.media_type,
                size: m.bytes.len() as u64,
                digest,
                urls: None,
                annotations: (!m.annotations.is_empty()).then_some(m.annotations),
                artifact_type: m.artifact_type,
                platform: None,
            });
        }
        Ok(out)
    }

    /// An open upload session.
    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>, StateError> {
        Self::record(Self::get(&self.tx()?, UPLOADS, id)?)
    }

    /// Up to `n` committed blobs with their index entries, in digest order strictly after
    /// `after`: a pass over the blob index in bounded pages, for repair.
    pub fn blobs_after(
        &self,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<(Digest, BlobRecord)>, StateError> {
        let tx = self.tx()?;
        let t = tx.open_table(BLOBS).map_err(StateError::from)?;
        let rows = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => t.range::<&str>(..),
        }
        .map_err(StateError::from)?;
        let mut out = Vec::new();
        for row in rows.take(n) {
            let (k, v) = row.map_err(StateError::from)?;
            if let Ok(d) = k.value().parse() {
                out.push((d, decode(v.value()).map_err(StateError::from)?));
            }
        }
        Ok(out)
    }

    /// Up to `n` blobs the IPFS backend has not confirmed (pending or failed), in digest
    /// order strictly after `after`.
    pub fn unpinned(&self, after: Option<&str>, n: usize) -> Result<Vec<(Digest, BlobRecord)>, StateError> {
        let tx = self.tx()?;
        let t = tx.open_table(UNPINNED).map_err(StateError::from)?;
        let mut out = Vec::new();
        let rows = match after {
            Some(a) => t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => t.range::<&str>(..),
        }
        .map_err(StateError::from)?;
        for row in rows {
            if out.len() >= n {
                break;
            }
            let (k, _) = row.map_err(StateError::from)?;
            let Ok(digest) = k.value().parse::<Digest>() else {
                continue;
            };
            if let Some(record) = Self::record::<BlobRecord>(Self::get(&tx, BLOBS, k.value())?)? {
                out.push((digest, record));
            }
        }
        Ok(out)
    }

    /// The CID leaves of a blob, when it has a CID.
    pub fn leaves(&self, digest: &Digest) -> Result<Option<Vec<ipcr_proto::cid::Leaf>>, StateError> {
        Self::record(Self::get(&self.tx()?, BLOB_LEAVES, &digest.to_string())?)
    }

    /// Every open upload session.
    pub fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, StateError> {
        let tx = self.tx()?;
        let t = tx.open_table(UPLOADS).map_err(StateError::from)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(StateError::from)? {
            let (k, v) = row.map_err(StateError::from)?;
            out.push((
                k.value().to_string(),
                decode(v.value()).map_err(StateError::from)?,
            ));
        }
        Ok(out)
    }

    /// Blobs held by fewer than `want` nodes (not counting those pinned on IPFS), and the
    /// IPFS backend's counts: [`StateReader::blob_census`] without a node.
    pub fn blob_health(&self, want: usize) -> Result<(u64, IpfsStatus), StateError> {
        let c = self.blob_census(want, 0)?;
        Ok((c.under_replicated, c.ipfs))
    }

    /// One pass over the blob index: what [`StateReader::blob_health`] answers, and the blobs
    /// and bytes the index says `node` holds (metrics).
    pub fn blob_census(&self, want: usize, node: NodeId) -> Result<BlobCensus, StateError> {
        let tx = self.tx()?;
        let t = tx.open_table(BLOBS).map_err(StateError::from)?;
        let (mut under, mut ipfs) = (0, IpfsStatus::default());
        let (mut held, mut held_bytes) = (0, 0);
        for row in t.iter().map_err(StateError::from)? {
            let (k, v) = row.map_err(StateError::from)?;
            let b: BlobRecord = decode(v.value()).map_err(StateError::from)?;
            if b.nodes.contains(&node) {
                held += 1;
                held_bytes += b.size;
            }
            let pinned = b.ipfs.as_ref().is_some_and(|i| i.state == PinState::Pinned);
            // A blob being unpinned is linked nowhere: garbage, whatever its copies.
            let unlinked = b
                .ipfs
                .as_ref()
                .is_some_and(|i| matches!(i.state, PinState::Unpinning | PinState::Unpinned));
            if b.nodes.len() < want && !pinned && !unlinked {
                under += 1;
            }
            match b.ipfs {
                None => {}
                Some(IpfsRecord {
                    state: PinState::Pinned,
                    ..
                }) => ipfs.pinned += 1,
                Some(IpfsRecord {
                    state: PinState::Pending | PinState::Unpinning,
                    ..
                }) => ipfs.pending += 1,
                Some(IpfsRecord {
                    state: PinState::Unpinned,
                    ..
                }) => {}
                Some(IpfsRecord {
                    cid,
                    state: PinState::Failed { reason, attempts },
                }) => {
                    ipfs.failed += 1;
                    if ipfs.failures.len() < 10 {
                        ipfs.failures.push(PinFailure {
                            digest: k.value().to_string(),
                            cid,
                            reason,
                            attempts,
                        });
                    }
                }
            }
        }
        Ok(BlobCensus {
            under_replicated: under,
            ipfs,
            held,
            held_bytes,
        })
    }

    /// The last garbage collection and the one running.
    pub fn gc_status(&self) -> Result<GcStatus, StateError> {
        let tx = self.tx()?;
        Ok(GcStatus {
            last: Self::record::<GcReport>(Self::get(&tx, GC, GC_LAST)?)?,
            running: Self::record::<GcRun>(Self::get(&tx, GC, GC_RUNNING)?)?,
        })
    }

    /// The node fetching `digest` from a cache's upstream and until when (ms), if any.
    pub fn fetch_claim(&self, digest: &Digest) -> Result<Option<(u64, u64)>, StateError> {
        Self::record(Self::get(&self.tx()?, FETCHES, &digest.to_string())?)
    }

    /// When a collection removed a blob from the index, and with which grace period (ms).
    pub fn dropped(&self, digest: &Digest) -> Result<Option<(u64, u64)>, StateError> {
        Self::record(Self::get(&self.tx()?, DROPPED, &digest.to_string())?)
    }

    /// One consistent view of the whole state, for the garbage collector's plan.
    pub fn view(&self) -> Result<View, StateError> {
        Ok(View { tx: self.tx()? })
    }

    /// Number of rows in each data table, for status output.
    pub fn counts(&self) -> Result<Vec<(String, u64)>, StateError> {
        let tx = self.tx()?;
        let mut out = Vec::new();
        for table in DATA_TABLES {
            let t = tx.open_table(table).map_err(StateError::from)?;
            out.push((table.name().to_string(), t.len().map_err(StateError::from)?));
        }
        Ok(out)
    }
}

/// A consistent read of the state (one read transaction): what the garbage collector plans
/// on. Rows written after it was opened are not seen.
pub struct View {
    tx: ReadTransaction,
}

/// A manifest of a repository as the collector sees it.
pub struct HeldManifest {
    /// Its digest.
    pub digest: Digest,
    /// When it was last pushed to the repository (ms, proposer's clock).
    pub pushed_ms: u64,
    /// The record.
    pub record: ManifestRecord,
}

impl View {
    /// `(key, value)` rows of `table` under `parts` (everything when `parts` is empty).
    fn rows(&self, table: Table, parts: &[&str]) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let t = self.tx.open_table(table).map_err(StateError::from)?;
        let rows = if parts.is_empty() {
            t.range::<&str>(..).map_err(StateError::from)?
        } else {
            let (lo, hi) = prefix_range(parts);
            t.range(lo.as_str()..hi.as_str()).map_err(StateError::from)?
        };
        let mut out = Vec::new();
        for row in rows {
            let (k, v) = row.map_err(StateError::from)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Every repository.
    pub fn repos(&self) -> Result<Vec<RepoName>, StateError> {
        Ok(self
            .rows(REPOS, &[])?
            .into_iter()
            .filter_map(|(k, _)| k.parse().ok())
            .collect())
    }

    /// A repository's tags: (tag, manifest, when pushed).
    pub fn tags(&self, repo: &RepoName) -> Result<Vec<(ipcr_proto::Tag, Digest, u64)>, StateError> {
        let times = self.rows(TAGGED, &[repo.as_str()])?;
        let mut out = Vec::new();
        for (k, v) in times {
            let mut parts = k.split('\0').skip(1);
            let (Some(Ok(digest)), Some(Ok(tag))) =
                (parts.next().map(str::parse), parts.next().map(str::parse))
            else {
                continue;
            };
            out.push((tag, digest, ms_of(&v)));
        }
        Ok(out)
    }

    /// A repository's manifests.
    pub fn manifests(&self, repo: &RepoName) -> Result<Vec<HeldManifest>, StateError> {
        let t = self.tx.open_table(MANIFESTS).map_err(StateError::from)?;
        let mut out = Vec::new();
        for (k, v) in self.rows(REPO_MANIFESTS, &[repo.as_str()])? {
            let Some(Ok(digest)) = k.split('\0').nth(1).map(str::parse::<Digest>) else {
                continue;
            };
            let Some(raw) = t.get(digest.to_string().as_str()).map_err(StateError::from)? else {
                continue;
            };
            out.push(HeldManifest {
                digest,
                pushed_ms: ms_of(&v),
                record: decode(raw.value()).map_err(StateError::from)?,
            });
        }
        Ok(out)
    }

    /// The blobs linked into a repository, with when they were linked.
    pub fn links(&self, repo: &RepoName) -> Result<Vec<(Digest, u64)>, StateError> {
        Ok(self
            .rows(REPO_BLOBS, &[repo.as_str()])?
            .into_iter()
            .filter_map(|(k, v)| Some((k.split('\0').nth(1)?.parse().ok()?, ms_of(&v))))
            .collect())
    }

    /// How many repositories link a blob.
    pub fn link_count(&self, digest: &Digest) -> Result<u64, StateError> {
        let t = self.tx.open_table(BLOB_LINKS).map_err(StateError::from)?;
        Ok(t.get(digest.to_string().as_str())
            .map_err(StateError::from)?
            .map_or(0, |v| ms_of(v.value())))
    }

    /// A blob's index entry.
    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, StateError> {
        let t = self.tx.open_table(BLOBS).map_err(StateError::from)?;
        t.get(digest.to_string().as_str())
            .map_err(StateError::from)?
            .map(|v| decode(v.value()).map_err(StateError::from))
            .transpose()
    }

    /// Blobs of the index that no repository links.
    pub fn unlinked_blobs(&self) -> Result<Vec<(Digest, BlobRecord)>, StateError> {
        let links = self.tx.open_table(BLOB_LINKS).map_err(StateError::from)?;
        let mut out = Vec::new();
        for (k, v) in self.rows(BLOBS, &[])? {
            let linked = links
                .get(k.as_str())
                .map_err(StateError::from)?
                .is_some_and(|n| ms_of(n.value()) > 0);
            if linked {
                continue;
            }
            if let Ok(digest) = k.parse() {
                out.push((digest, decode(&v).map_err(StateError::from)?));
            }
        }
        Ok(out)
    }
}
