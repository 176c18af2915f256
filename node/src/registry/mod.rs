//! The registry's rules: what a manifest push must satisfy (its references present, of the sizes
//! it declares), how tags, referrers, mounts and deletes behave, and which reads need the read
//! barrier (tags, listings, referrers, and any digest this node does not know yet; a digest it
//! knows is immutable and served as is).
//!
//! Called by `api` handlers; calls `raft` (commands and reads), `upload` and `store`. Knows no
//! HTTP: failures are [`RegistryError`]s that `api/error.rs` maps to OCI codes.

pub mod error;
pub mod gc;
pub mod retention;

use bytes::Bytes;
use ipcr_proto::manifest::{Descriptor, MAX_MANIFEST_SIZE, ManifestInfo, parse_manifest};
use ipcr_proto::{
    BlobRecord, Command, CommandResult, Digest, ManifestRecord, PinState, Reference, Reject, RepoName, Tag,
};

pub use error::RegistryError;

use crate::backend::Backend;
use crate::cluster::Peers;
use crate::cluster::read::{self, RemoteBlob};
use crate::cluster::transfer::Transfers;
use crate::raft::RaftNode;
use crate::raft::state::{Page, StateError, StateReader};
use crate::store::{BlobStream, FsStore};
use crate::upload::Uploads;

/// The registry service shared by all handlers. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    raft: RaftNode,
    store: FsStore,
    uploads: Uploads,
    delete_enabled: bool,
    replicas: usize,
    peers: Peers,
    transfers: Transfers,
    backend: Option<Backend>,
    /// Answer reads that no node can serve with a redirect to the backend's gateway.
    redirect: bool,
}

/// How a blob read is answered.
pub enum Served {
    /// With the bytes.
    Bytes(BlobBody),
    /// With a redirect to this URL (the backend's gateway).
    Redirect(String),
}

/// A blob's bytes, from this node's disk or from a peer.
pub enum BlobBody {
    /// Read here.
    Local(BlobStream),
    /// Streamed from the holders.
    Remote(Box<RemoteBlob>),
    /// A range read from the IPFS backend, checked leaf by leaf.
    Verified(crate::backend::range::RangeBody),
}

impl futures::Stream for BlobBody {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.get_mut() {
            BlobBody::Local(s) => std::pin::Pin::new(s).poll_next(cx),
            BlobBody::Remote(s) => std::pin::Pin::new(s).poll_next(cx),
            BlobBody::Verified(s) => s.as_mut().poll_next(cx),
        }
    }
}

/// A stored manifest as served.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its media type and bytes.
    pub record: ManifestRecord,
}

/// A manifest push's outcome.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its `subject`, when it has one.
    pub subject: Option<Digest>,
    /// The tags now pointing at it.
    pub tags: Vec<Tag>,
}

impl Registry {
    /// Assemble the service.
    pub fn new(
        raft: RaftNode,
        store: FsStore,
        uploads: Uploads,
        delete_enabled: bool,
        replicas: usize,
    ) -> Registry {
        Registry {
            peers: Peers::new(raft.clone(), replicas),
            transfers: Transfers::new(raft.clone()),
            raft,
            store,
            uploads,
            delete_enabled,
            replicas,
            backend: None,
            redirect: false,
        }
    }

    /// Serve blobs no node holds from `backend`: by redirect to its gateway when `redirect`
    /// and it has one, else through this node (verified, and kept here).
    pub fn with_backend(mut self, backend: Backend, redirect: bool) -> Registry {
        self.backend = Some(backend);
        self.redirect = redirect;
        self
    }

    /// The IPFS backend, when one is configured.
    pub fn backend(&self) -> Option<&Backend> {
        self.backend.as_ref()
    }

    /// `storage.replicas`: nodes that must hold a blob before it is acknowledged.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The upload service.
    pub fn uploads(&self) -> &Uploads {
        &self.uploads
    }

    /// The local blob store.
    pub fn store(&self) -> &FsStore {
        &self.store
    }

    /// The cluster's members, for peer URLs.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Transfers from and to peers.
    pub fn transfers(&self) -> &Transfers {
        &self.transfers
    }

    /// The Raft member.
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// A missing item is `NAME_UNKNOWN` when its whole repository is unknown.
    fn unknown(&self, repo: &RepoName, otherwise: RegistryError) -> RegistryError {
        match self.raft.reader().repo_exists(repo) {
            Ok(false) => RegistryError::NameUnknown,
            _ => otherwise,
        }
    }

    /// Fetch a manifest by tag (linearizable) or by digest (from the applied state when this
    /// node knows it; see [`Registry::blob`]).
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ServedManifest, RegistryError> {
        let found = match reference {
            Reference::Tag(tag) => {
                self.raft.read_barrier().await?;
                self.raft.reader().tagged_manifest(repo, tag.as_str())?
            }
            Reference::Digest(d) => self
                .by_digest(|reader| reader.manifest(repo, d))
                .await?
                .map(|r| (d.clone(), r)),
        };
        found
            .map(|(digest, record)| ServedManifest { digest, record })
            .ok_or_else(|| self.unknown(repo, RegistryError::ManifestUnknown))
    }

    /// Store a manifest pushed by tag or digest, with extra tags from `?tag=`.
    pub async fn put_manifest(
        &self,
        repo: RepoName,
        reference: Reference,
        content_type: Option<&str>,
        body: Bytes,
        extra_tags: Vec<Tag>,
    ) -> Result<PushedManifest, RegistryError> {
        if body.len() > MAX_MANIFEST_SIZE {
            return Err(RegistryError::ManifestTooLarge);
        }
        let info = parse_manifest(content_type, &body)?;
        let (digest, mut tags) = match reference {
            Reference::Digest(claimed) => {
                let actual = claimed.algorithm().digest_bytes(&body);
                if actual != claimed {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest hashes to {actual}, not {claimed}"
                    )));
                }
                (claimed, Vec::new())
            }
            Reference::Tag(tag) => (ipcr_proto::Algorithm::Sha256.digest_bytes(&body), vec![tag]),
        };
        self.check_sizes(&repo, &info).await?;
        for t in extra_tags {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        let record = ManifestRecord {
            media_type: info.media_type,
            bytes: body.to_vec(),
            blobs: info.blobs,
            children: info.children,
            subject: info.subject.clone(),
            artifact_type: info.artifact_type,
            annotations: info.annotations.unwrap_or_default(),
        };
        let cmd = Command::PutManifest {
            repo,
            digest: digest.clone(),
            tags: tags.clone(),
            record,
            now_ms: crate::raft::now_ms(),
        };
        match self.raft.propose(cmd).await?.into_result() {
            Ok(()) => Ok(PushedManifest {
                digest,
                subject: info.subject,
                tags,
            }),
            Err(Reject::ManifestBlobUnknown(d)) => Err(RegistryError::ManifestBlobUnknown(d)),
            Err(r) => Err(RegistryError::Internal(r.to_string())),
        }
    }

    /// Refuse a manifest whose descriptors declare sizes their content does not have: a client
    /// trusting it would fetch, allocate or verify the wrong number of bytes. A digest's size
    /// never changes, so a check made before the proposal cannot be raced (whether the content
    /// is still there is checked again when the command is applied). Content this node has not
    /// applied yet is looked for again after the read barrier; content missing even then is
    /// left to the apply, which refuses the manifest with `MANIFEST_BLOB_UNKNOWN`.
    async fn check_sizes(&self, repo: &RepoName, info: &ManifestInfo) -> Result<(), RegistryError> {
        if self.compare_sizes(repo, info)? {
            self.raft.read_barrier().await?;
            self.compare_sizes(repo, info)?;
        }
        Ok(())
    }

    /// One pass of [`Registry::check_sizes`] over the applied state: answers whether some
    /// referenced content was not found. Blobs are sized by the blob index, child manifests
    /// by their stored bytes.
    fn compare_sizes(&self, repo: &RepoName, info: &ManifestInfo) -> Result<bool, RegistryError> {
        let reader = self.raft.reader();
        let blobs = info
            .blobs
            .iter()
            .map(|d| (d, reader.blob(repo, d).map(|b| b.map(|b| b.size))));
        let children = info.children.iter().map(|d| (d, reader.manifest_len(repo, d)));
        let mut missing = false;
        for (digest, found) in blobs.chain(children) {
            let Some(expected) = found? else {
                missing = true;
                continue;
            };
            let Some(&declared) = info.sizes.get(digest) else {
                continue;
            };
            if declared != expected {
                return Err(RegistryError::DescriptorSize {
                    digest: digest.clone(),
                    declared,
                    expected,
                });
            }
        }
        Ok(missing)
    }

    fn check_delete(&self) -> Result<(), RegistryError> {
        if self.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::DeleteDisabled)
        }
    }

    /// Delete a tag, or a manifest with every tag pointing at it.
    pub async fn delete_manifest(&self, repo: RepoName, reference: Reference) -> Result<(), RegistryError> {
        self.check_delete()?;
        let cmd = match reference {
            Reference::Tag(tag) => Command::Untag {
                repo: repo.clone(),
                tag,
            },
            Reference::Digest(digest) => Command::DeleteManifest {
                repo: repo.clone(),
                digest,
            },
        };
        match self.raft.propose(cmd).await?.into_result() {
            Ok(()) => Ok(()),
            Err(_) => Err(self.unknown(&repo, RegistryError::ManifestUnknown)),
        }
    }

    /// A page of a repository's tags (linearizable).
    pub async fn tags(&self, repo: &RepoName, last: Option<&str>, n: usize) -> Result<Page, RegistryError> {
        self.raft.read_barrier().await?;
        if !self.raft.reader().repo_exists(repo)? {
            return Err(RegistryError::NameUnknown);
        }
        Ok(self.raft.reader().tags(repo, last, n)?)
    }

    /// A page of the catalog (linearizable).
    pub async fn catalog(
        &self,
        last: Option<&str>,
        n: usize,
        visible: impl Fn(&str) -> bool,
    ) -> Result<Page, RegistryError> {
        self.raft.read_barrier().await?;
        let reader = self.raft.reader();
        let mut page = Page {
            items: Vec::new(),
            more: false,
        };
        let mut after = last.map(str::to_string);
        // Pages of the whole catalog are read until `n` visible names are found: a caller who
        // may see few repositories among many still gets full pages, and no hidden name.
        loop {
            let batch = reader.catalog(after.as_deref(), n.max(100))?;
            for name in batch.items {
                if page.items.len() == n {
                    page.more = true;
                    return Ok(page);
                }
                after = Some(name.clone());
                if visible(&name) {
                    page.items.push(name);
                }
            }
            if !batch.more {
                return Ok(page);
            }
        }
    }

    /// Manifests in `repo` whose subject is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        self.raft.read_barrier().await?;
        let mut all = self.raft.reader().referrers(repo, subject)?;
        if let Some(t) = artifact_type {
            all.retain(|d| d.artifact_type.as_deref() == Some(t));
        }
        Ok(all)
    }

    /// A blob linked into `repo`, with its index entry. Content addressed by digest never
    /// changes, so a blob this node has applied is answered from its state with no read
    /// barrier: pulls go on while there is no leader. One that it does not know passes the
    /// barrier before it is declared unknown, so a pull right after a push through another
    /// node never gets a stale `404`. (A blob unlinked a moment ago may still be served by a
    /// node that has not applied the unlink yet.)
    pub async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobRecord, RegistryError> {
        self.by_digest(|reader| reader.blob(repo, digest))
            .await?
            .ok_or_else(|| self.unknown(repo, RegistryError::BlobUnknown))
    }

    /// Look up content by digest: in the applied state, and only when it is not there, again
    /// after the read barrier (see [`Registry::blob`]).
    async fn by_digest<T>(
        &self,
        lookup: impl Fn(&StateReader) -> Result<Option<T>, StateError>,
    ) -> Result<Option<T>, RegistryError> {
        if let Some(found) = lookup(self.raft.reader())? {
            return Ok(Some(found));
        }
        self.raft.read_barrier().await?;
        Ok(lookup(self.raft.reader())?)
    }

    /// Stream `len` bytes of a blob from `start`: from this node's disk when it holds the blob,
    /// else from a node that does, else from the IPFS backend (redirected to its gateway, or
    /// restored here first: bytes from the backend are verified before anyone sees them).
    pub async fn read_blob(
        &self,
        digest: &Digest,
        record: &BlobRecord,
        start: u64,
        len: u64,
    ) -> Result<Served, RegistryError> {
        if let Some(body) = self.read_local(digest, record, start, len)? {
            return Ok(Served::Bytes(body));
        }
        let peers = read::open(
            &self.peers,
            &self.transfers,
            &self.store,
            digest,
            record,
            start,
            len,
        )
        .await;
        let peer_error = match peers {
            Ok(body) => return Ok(Served::Bytes(BlobBody::Remote(Box::new(body)))),
            Err(e) => e,
        };
        let unavailable = |why: String| RegistryError::Raft(crate::raft::RaftError::Unavailable(why));
        let (Some(backend), Some(ipfs)) = (&self.backend, &record.ipfs) else {
            return Err(unavailable(format!(
                "no holder of {digest} answered: {peer_error}"
            )));
        };
        if ipfs.state != PinState::Pinned {
            return Err(unavailable(format!(
                "no holder of {digest} answered ({peer_error}) and the backend does not hold it yet"
            )));
        }
        if self.redirect
            && let Some(url) = backend.gateway_url(&ipfs.cid)
        {
            return Ok(Served::Redirect(url));
        }
        // A range: only the leaves it touches, each checked against its recorded hash.
        if (start > 0 || len < record.size)
            && let Some(leaves) = self.raft.reader().leaves(digest)?
        {
            return crate::backend::range::open(backend, &ipfs.cid, leaves, start, len)
                .await
                .map(|body| Served::Bytes(BlobBody::Verified(body)))
                .map_err(|e| {
                    unavailable(format!(
                        "no holder of {digest} answered ({peer_error}); the backend: {e}"
                    ))
                });
        }
        // Each of the backend's sources in turn, until one serves bytes matching the digest.
        let sources = backend.sources(&ipfs.cid);
        let restored = crate::cluster::repair::store_from_first(
            &self.store,
            digest,
            Some(record.size),
            sources,
            |source| backend.fetch(source),
        )
        .await;
        if let Err(e) = restored {
            return Err(unavailable(format!(
                "no holder of {digest} answered ({peer_error}); the backend: {e}"
            )));
        }
        tracing::info!(%digest, cid = %ipfs.cid, "restored a blob from the backend");
        let cmd = Command::BlobHolders {
            digest: digest.clone(),
            add: vec![self.raft.id()],
            remove: Vec::new(),
        };
        if let Err(e) = self.raft.propose(cmd).await {
            tracing::debug!(%digest, error = %e, "could not record a restored copy");
        }
        match self.read_local(digest, record, start, len)? {
            Some(body) => Ok(Served::Bytes(body)),
            None => Err(unavailable(format!("{digest} vanished right after its restore"))),
        }
    }

    /// The bytes from this node's disk, when it holds the blob.
    fn read_local(
        &self,
        digest: &Digest,
        record: &BlobRecord,
        start: u64,
        len: u64,
    ) -> Result<Option<BlobBody>, RegistryError> {
        match self.store.stat(digest)? {
            Some(size) if size == record.size => {
                Ok(Some(BlobBody::Local(self.store.read_range(digest, start, len)?)))
            }
            Some(size) => {
                tracing::error!(%digest, size, indexed = record.size, "local copy has the wrong size");
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Unlink a blob from a repository.
    pub async fn delete_blob(&self, repo: RepoName, digest: Digest) -> Result<(), RegistryError> {
        self.check_delete()?;
        match self
            .raft
            .propose(Command::UnlinkBlob {
                repo: repo.clone(),
                digest,
            })
            .await?
            .into_result()
        {
            Ok(()) => Ok(()),
            Err(_) => Err(self.unknown(&repo, RegistryError::BlobUnknown)),
        }
    }

    /// Mount a blob from `from` into `repo`. `false` when `from` does not hold it (the client
    /// then uploads normally).
    pub async fn mount(
        &self,
        repo: RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<bool, RegistryError> {
        self.raft.read_barrier().await?;
        if self.raft.reader().blob(from, digest)?.is_none() {
            return Ok(false);
        }
        let cmd = Command::LinkBlob {
            repo,
            digest: digest.clone(),
            now_ms: crate::raft::now_ms(),
        };
        Ok(self.raft.propose(cmd).await? == CommandResult::Ok)
    }
}
