//! What the pages show, read through the same paths the `/v2` API serves from: listings and
//! tags after the read barrier ([`Registry::catalog`], [`Registry::tags`],
//! [`Registry::referrers`]), manifests and blobs by digest from the applied state
//! ([`Registry::manifest`], [`Registry::blob`]), and per-repository totals from one consistent
//! view of the state machine's tables taken after the barrier.
//!
//! Costs: the repository list is one range scan of the catalog, then per repository a scan
//! of its tags and of its blob links (with one blob-index lookup per link); no manifest is
//! read. A tag list reads each listed tag's manifest and, for an index, its children. Only
//! `ui` calls this module; it knows no HTML.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipcr_proto::manifest::Descriptor;
use ipcr_proto::{BlobRecord, Digest, ManifestRecord, PinState, Reference, RepoName};

use super::oci::{self, Kind, Parsed};
use crate::raft::state::{StateError, StateReader, View};
use crate::registry::{Registry, RegistryError};

/// Repositories on one page of the list.
pub const REPO_PAGE: usize = 1000;
/// Tags on one page of a repository.
pub const TAG_PAGE: usize = 500;

/// One row of the repository list.
#[derive(Debug, Clone)]
pub struct RepoRow {
    /// The repository.
    pub name: String,
    /// Its tags.
    pub tags: usize,
    /// Bytes of the distinct blobs linked into it (layers and configs, each once).
    pub size: u64,
    /// When a tag was last pushed (ms since the epoch, the proposer's clock).
    pub last_push_ms: Option<u64>,
}

/// A page of the repository list.
#[derive(Debug, Clone)]
pub struct RepoList {
    /// The rows, in name order.
    pub rows: Vec<RepoRow>,
    /// Whether more repositories follow the last row.
    pub more: bool,
}

/// Repositories `visible` admits whose name contains `q`, after `last`, with their tag counts
/// and sizes.
pub async fn repositories(
    reg: &Registry,
    visible: impl Fn(&str) -> bool,
    q: Option<&str>,
    last: Option<&str>,
) -> Result<RepoList, RegistryError> {
    let q = q.map(str::to_lowercase);
    let wanted = |name: &str| visible(name) && q.as_deref().is_none_or(|q| name.contains(q));
    let page = reg.catalog(last, REPO_PAGE, wanted).await?;
    let view = reg.raft().reader().view()?;
    let mut rows = Vec::with_capacity(page.items.len());
    for name in page.items {
        let Ok(repo) = name.parse::<RepoName>() else {
            continue;
        };
        let tags = view.tags(&repo)?;
        let mut size = 0;
        for (digest, _) in view.links(&repo)? {
            size += view.blob(&digest)?.map_or(0, |b| b.size);
        }
        rows.push(RepoRow {
            name,
            tags: tags.len(),
            size,
            last_push_ms: tags.iter().map(|(_, _, ms)| *ms).max(),
        });
    }
    Ok(RepoList {
        rows,
        more: page.more,
    })
}

/// One row of a repository's tag list.
#[derive(Debug, Clone)]
pub struct TagRow {
    /// The tag.
    pub tag: String,
    /// The manifest it names.
    pub digest: Digest,
    /// The manifest's media type as stored.
    pub media_type: String,
    /// Image, index, artifact or unreadable.
    pub kind: Kind,
    /// Bytes of the manifest and everything it references, each distinct blob once.
    pub size: u64,
    /// Platforms of an index's entries (placeholders of attestations left out).
    pub platforms: Vec<String>,
    /// When the tag was pushed (ms since the epoch).
    pub pushed_ms: Option<u64>,
}

/// A page of a repository's tags.
#[derive(Debug, Clone)]
pub struct TagList {
    /// The rows, in tag order.
    pub rows: Vec<TagRow>,
    /// Whether more tags follow.
    pub more: bool,
}

/// A repository's tags after `last` (linearizable, as `tags/list`): `NameUnknown` when the
/// repository does not exist.
pub async fn tags(reg: &Registry, repo: &RepoName, last: Option<&str>) -> Result<TagList, RegistryError> {
    let page = reg.tags(repo, last, TAG_PAGE).await?;
    let reader = reg.raft().reader();
    let pushed: HashMap<String, u64> = reader
        .view()?
        .tags(repo)?
        .into_iter()
        .map(|(tag, _, ms)| (tag.as_str().to_string(), ms))
        .collect();
    let mut sizer = Sizer::new(reader, repo);
    let mut rows = Vec::with_capacity(page.items.len());
    for tag in page.items {
        // Untagged between the listing and now: leave it out, as a later listing would.
        let Some((digest, record)) = reader.tagged_manifest(repo, &tag)? else {
            continue;
        };
        let parsed = oci::parse(&record.bytes);
        let platforms = match &parsed {
            Parsed::Manifest(m) if ipcr_proto::media::is_index(&record.media_type) => m
                .manifests
                .iter()
                .filter_map(oci::Desc::platform)
                .filter(|p| !oci::is_placeholder_platform(p))
                .collect(),
            _ => Vec::new(),
        };
        rows.push(TagRow {
            kind: Kind::of(&record.media_type, &parsed),
            size: sizer.total(&record)?,
            media_type: record.media_type,
            pushed_ms: pushed.get(&tag).copied(),
            tag,
            digest,
            platforms,
        });
    }
    Ok(TagList {
        rows,
        more: page.more,
    })
}

/// Sizes from what the state records, not from what manifests declare: blobs from the blob
/// index, child manifests from their stored bytes. Blob sizes are remembered, as images of
/// one repository share layers.
struct Sizer<'a> {
    reader: &'a StateReader,
    repo: &'a RepoName,
    blobs: HashMap<Digest, u64>,
}

impl<'a> Sizer<'a> {
    fn new(reader: &'a StateReader, repo: &'a RepoName) -> Sizer<'a> {
        Sizer {
            reader,
            repo,
            blobs: HashMap::new(),
        }
    }

    fn blob(&mut self, digest: &Digest) -> Result<u64, StateError> {
        if let Some(size) = self.blobs.get(digest) {
            return Ok(*size);
        }
        let size = self.reader.blob(self.repo, digest)?.map_or(0, |b| b.size);
        self.blobs.insert(digest.clone(), size);
        Ok(size)
    }

    /// The manifest, its blobs, and (for an index) its children with theirs; every distinct
    /// blob once.
    fn total(&mut self, record: &ManifestRecord) -> Result<u64, StateError> {
        let mut blobs: BTreeSet<Digest> = record.blobs.iter().cloned().collect();
        let mut total = record.bytes.len() as u64;
        for child in &record.children {
            if let Some(c) = self.reader.manifest(self.repo, child)? {
                total += c.bytes.len() as u64;
                blobs.extend(c.blobs);
            }
        }
        for digest in &blobs {
            total += self.blob(digest)?;
        }
        Ok(total)
    }
}

/// A blob as the manifest page shows it.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// Size in the blob index.
    pub size: u64,
    /// Nodes holding it.
    pub nodes: usize,
    /// Its CID and pin state, when an IPFS backend is configured.
    pub cid: Option<(String, PinState)>,
    /// The backend's gateway URL of the CID, when it has a gateway.
    pub gateway: Option<String>,
}

/// Everything the manifest page shows.
#[derive(Debug, Clone)]
pub struct ManifestDetail {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its stored record (media type and bytes).
    pub record: ManifestRecord,
    /// The bytes, read.
    pub parsed: Parsed,
    /// Image, index, artifact or unreadable.
    pub kind: Kind,
    /// The config's and layers' index entries, by digest (absent: not in this repository).
    pub blobs: BTreeMap<String, BlobInfo>,
    /// An index's entries present in this repository.
    pub present: BTreeSet<String>,
    /// Tags naming it, with when they were pushed.
    pub tags: Vec<(String, u64)>,
    /// Manifests whose subject it is.
    pub referrers: Vec<Descriptor>,
    /// Bytes of the manifest and everything it references, each distinct blob once.
    pub total: u64,
}

/// A manifest of `repo` by digest (as `GET /v2/<repo>/manifests/<digest>` finds it), the
/// blobs it names, the tags naming it and its referrers.
pub async fn manifest(
    reg: &Registry,
    repo: &RepoName,
    digest: &Digest,
) -> Result<ManifestDetail, RegistryError> {
    let served = reg.manifest(repo, &Reference::Digest(digest.clone())).await?;
    let record = served.record;
    let parsed = oci::parse(&record.bytes);
    let mut blobs = BTreeMap::new();
    let mut present = BTreeSet::new();
    if let Parsed::Manifest(m) = &parsed {
        for d in m.config.iter().chain(&m.layers) {
            let Some(digest) = d.digest() else { continue };
            if blobs.contains_key(&d.digest) {
                continue;
            }
            // Foreign layers and blobs gone since the push are shown without an entry.
            if let Ok(b) = reg.blob(repo, &digest).await {
                blobs.insert(d.digest.clone(), blob_info(reg, b));
            }
        }
        let reader = reg.raft().reader();
        for d in &m.manifests {
            if let Some(child) = d.digest()
                && reader.manifest_len(repo, &child)?.is_some()
            {
                present.insert(d.digest.clone());
            }
        }
    }
    let reader = reg.raft().reader();
    let tags = tags_of(&reader.view()?, repo, digest)?;
    let referrers = reg.referrers(repo, digest, None).await?;
    let total = Sizer::new(reader, repo).total(&record)?;
    Ok(ManifestDetail {
        kind: Kind::of(&record.media_type, &parsed),
        digest: served.digest,
        record,
        parsed,
        blobs,
        present,
        tags,
        referrers,
        total,
    })
}

fn blob_info(reg: &Registry, b: BlobRecord) -> BlobInfo {
    let gateway = match (&b.ipfs, reg.backend()) {
        (Some(i), Some(backend)) => backend.gateway_url(&i.cid),
        _ => None,
    };
    BlobInfo {
        size: b.size,
        nodes: b.nodes.len(),
        cid: b.ipfs.map(|i| (i.cid, i.state)),
        gateway,
    }
}

/// Tags of `repo` naming `digest`, in tag order.
fn tags_of(view: &View, repo: &RepoName, digest: &Digest) -> Result<Vec<(String, u64)>, StateError> {
    let mut out: Vec<(String, u64)> = view
        .tags(repo)?
        .into_iter()
        .filter(|(_, d, _)| d == digest)
        .map(|(t, _, ms)| (t.as_str().to_string(), ms))
        .collect();
    out.sort();
    Ok(out)
}
