//! Applying one [`Command`] to the state machine's tables: the deterministic heart of IPCR.
//!
//! Given the same tables and the same command, every node makes the same change and gives the
//! same answer. Checks that guard against races (a manifest whose blob was unlinked between
//! validation and commit, a chunk that no longer starts at the session's end) are made here,
//! inside the write transaction, so they cannot be raced.

use std::io;

use ipcr_proto::cid::{CidProgress, Leaf};
use ipcr_proto::{
    BlobRecord, ChunkRecord, Command, CommandResult, Digest, IpfsRecord, ManifestRecord, PinState, Reject,
    RepoName, UploadRecord,
};
use redb::{ReadableTable, WriteTransaction};

use super::state::{
    BLOB_LEAVES, BLOB_LINKS, BLOBS, FINISHED, MANIFESTS, REFERRERS, REPO_BLOBS, REPO_MANIFESTS, REPOS, TAGS,
    Table, UNPINNED, UPLOADS, key, prefix_range,
};
use super::{decode, encode};

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

/// Thin typed access to the tables inside one write transaction.
struct Tx<'a>(&'a WriteTransaction);

impl Tx<'_> {
    fn get(&self, table: Table, k: &str) -> io::Result<Option<Vec<u8>>> {
        let t = self.0.open_table(table).map_err(io_err)?;
        Ok(t.get(k).map_err(io_err)?.map(|v| v.value().to_vec()))
    }

    fn has(&self, table: Table, k: &str) -> io::Result<bool> {
        Ok(self.get(table, k)?.is_some())
    }

    fn put(&self, table: Table, k: &str, v: &[u8]) -> io::Result<()> {
        let mut t = self.0.open_table(table).map_err(io_err)?;
        t.insert(k, v).map_err(io_err)?;
        Ok(())
    }

    fn del(&self, table: Table, k: &str) -> io::Result<bool> {
        let mut t = self.0.open_table(table).map_err(io_err)?;
        Ok(t.remove(k).map_err(io_err)?.is_some())
    }

    fn record<T: serde::de::DeserializeOwned>(&self, table: Table, k: &str) -> io::Result<Option<T>> {
        self.get(table, k)?.map(|b| decode(&b)).transpose()
    }

    fn put_record<T: serde::Serialize>(&self, table: Table, k: &str, v: &T) -> io::Result<()> {
        self.put(table, k, &encode(v)?)
    }

    fn touch_repo(&self, repo: &RepoName) -> io::Result<()> {
        self.put(REPOS, repo.as_str(), &[])
    }

    /// Link a committed blob into `repo`. The first link of a blob the backend dropped (or
    /// was about to drop) has it pinned again.
    fn link(&self, repo: &RepoName, digest: &Digest) -> io::Result<()> {
        let d = digest.to_string();
        let link = key(&[repo.as_str(), &d]);
        if self.has(REPO_BLOBS, &link)? {
            return Ok(());
        }
        self.put(REPO_BLOBS, &link, &[])?;
        let links = self.links(&d)? + 1;
        self.put(BLOB_LINKS, &d, &links.to_le_bytes())?;
        if links == 1
            && let Some(mut record) = self.record::<BlobRecord>(BLOBS, &d)?
            && let Some(ipfs) = record.ipfs.as_mut()
            && matches!(ipfs.state, PinState::Unpinning | PinState::Unpinned)
        {
            ipfs.state = PinState::Pending;
            self.put_record(BLOBS, &d, &record)?;
            self.put(UNPINNED, &d, &[])?;
        }
        self.touch_repo(repo)
    }

    /// Unlink a blob from `repo`; answers whether it was linked. A blob no repository links
    /// any more is dropped from the IPFS backend.
    fn unlink(&self, repo: &RepoName, digest: &Digest) -> io::Result<bool> {
        let d = digest.to_string();
        if !self.del(REPO_BLOBS, &key(&[repo.as_str(), &d]))? {
            return Ok(false);
        }
        let links = self.links(&d)?.saturating_sub(1);
        self.put(BLOB_LINKS, &d, &links.to_le_bytes())?;
        if links == 0
            && let Some(mut record) = self.record::<BlobRecord>(BLOBS, &d)?
            && let Some(ipfs) = record.ipfs.as_mut()
            && ipfs.state != PinState::Unpinned
        {
            ipfs.state = PinState::Unpinning;
            self.put_record(BLOBS, &d, &record)?;
            self.put(UNPINNED, &d, &[])?;
        }
        Ok(true)
    }

    /// How many repositories link the blob.
    fn links(&self, digest: &str) -> io::Result<u64> {
        Ok(self
            .get(BLOB_LINKS, digest)?
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0))
    }

    /// Whether `digest` is linked into `repo` as a blob.
    fn has_blob(&self, repo: &RepoName, digest: &Digest) -> io::Result<bool> {
        self.has(REPO_BLOBS, &key(&[repo.as_str(), &digest.to_string()]))
    }

    /// Whether `repo` holds the manifest `digest`.
    fn has_manifest(&self, repo: &RepoName, digest: &Digest) -> io::Result<bool> {
        self.has(REPO_MANIFESTS, &key(&[repo.as_str(), &digest.to_string()]))
    }

    fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        nodes: &[u64],
        cid: Option<&String>,
        leaves: &[Leaf],
    ) -> io::Result<()> {
        let d = digest.to_string();
        let mut record = self.record::<BlobRecord>(BLOBS, &d)?.unwrap_or(BlobRecord {
            size,
            nodes: Vec::new(),
            ipfs: None,
        });
        // A blob pushed again keeps the backend state it already has.
        if record.ipfs.is_none()
            && let Some(cid) = cid
        {
            record.ipfs = Some(IpfsRecord {
                cid: cid.clone(),
                state: PinState::Pending,
            });
            self.put(UNPINNED, &d, &[])?;
            if !leaves.is_empty() {
                self.put_record(BLOB_LEAVES, &d, &leaves.to_vec())?;
            }
        }
        for n in nodes {
            if !record.nodes.contains(n) {
                record.nodes.push(*n);
            }
        }
        record.nodes.sort_unstable();
        self.put_record(BLOBS, &d, &record)?;
        self.link(repo, digest)
    }
}

/// Apply one command. `Err` is a storage fault (fatal for the node); refusals are `Ok`.
pub(crate) fn apply(tx: &WriteTransaction, cmd: &Command) -> io::Result<CommandResult> {
    let t = Tx(tx);
    let rejected = |r| Ok(CommandResult::Rejected(r));
    match cmd {
        Command::PutManifest {
            repo,
            digest,
            tags,
            record,
        } => {
            // Config and layers must be pullable as blobs, index entries as manifests.
            for blob in &record.blobs {
                if !t.has_blob(repo, blob)? {
                    return rejected(Reject::ManifestBlobUnknown(blob.clone()));
                }
            }
            for child in &record.children {
                if !t.has_manifest(repo, child)? {
                    return rejected(Reject::ManifestBlobUnknown(child.clone()));
                }
            }
            let d = digest.to_string();
            t.put_record(MANIFESTS, &d, record)?;
            t.put(REPO_MANIFESTS, &key(&[repo.as_str(), &d]), &[])?;
            for tag in tags {
                t.put(TAGS, &key(&[repo.as_str(), tag.as_str()]), d.as_bytes())?;
            }
            if let Some(subject) = &record.subject {
                t.put(REFERRERS, &key(&[repo.as_str(), &subject.to_string(), &d]), &[])?;
            }
            t.touch_repo(repo)?;
        }
        Command::Untag { repo, tag } => {
            if !t.del(TAGS, &key(&[repo.as_str(), tag.as_str()]))? {
                return rejected(Reject::ManifestUnknown);
            }
        }
        Command::DeleteManifest { repo, digest } => {
            let d = digest.to_string();
            if !t.del(REPO_MANIFESTS, &key(&[repo.as_str(), &d]))? {
                return rejected(Reject::ManifestUnknown);
            }
            // Tags pointing at the manifest go with it.
            let (lo, hi) = prefix_range(&[repo.as_str()]);
            let mut tags = tx.open_table(TAGS).map_err(io_err)?;
            tags.retain_in(lo.as_str()..hi.as_str(), |_, v| v != d.as_bytes())
                .map_err(io_err)?;
            drop(tags);
            if let Some(m) = t.record::<ManifestRecord>(MANIFESTS, &d)?
                && let Some(subject) = m.subject
            {
                t.del(REFERRERS, &key(&[repo.as_str(), &subject.to_string(), &d]))?;
            }
        }
        Command::CommitBlob {
            repo,
            digest,
            size,
            nodes,
            cid,
            leaves,
        } => t.commit_blob(repo, digest, *size, nodes, cid.as_ref(), leaves)?,
        Command::LinkBlob { repo, digest } => {
            if !t.has(BLOBS, &digest.to_string())? {
                return rejected(Reject::BlobUnknown);
            }
            t.link(repo, digest)?;
        }
        Command::UnlinkBlob { repo, digest } => {
            if !t.unlink(repo, digest)? {
                return rejected(Reject::BlobUnknown);
            }
        }
        Command::StartUpload {
            id,
            repo,
            algorithm,
            cid_links,
            now_ms,
        } => {
            let record = UploadRecord {
                repo: repo.clone(),
                size: 0,
                algorithm: *algorithm,
                hash: None,
                chunks: Vec::new(),
                cid: cid_links.map(|max_links| CidProgress {
                    max_links,
                    leaves: Vec::new(),
                    partial: None,
                }),
                started_ms: *now_ms,
                updated_ms: *now_ms,
            };
            t.put_record(UPLOADS, id, &record)?;
        }
        Command::AppendChunk {
            id,
            offset,
            len,
            nodes,
            hash,
            cid,
            now_ms,
        } => {
            let Some(mut u) = t.record::<UploadRecord>(UPLOADS, id)? else {
                return rejected(Reject::UploadUnknown);
            };
            // The same chunk proposed again (a retry after a lost answer) changes nothing.
            let last = u.chunks.last();
            if last.is_some_and(|c| c.offset == *offset && c.len == *len && &c.hash == hash) {
                return Ok(CommandResult::Ok);
            }
            if *offset != u.size {
                return rejected(Reject::RangeMismatch { size: u.size });
            }
            u.size += len;
            u.hash = Some(hash.clone());
            if let (Some(progress), Some(step)) = (u.cid.as_mut(), cid) {
                progress.leaves.extend(step.leaves.iter().cloned());
                progress.partial = Some(step.partial.clone());
            }
            u.chunks.push(ChunkRecord {
                offset: *offset,
                len: *len,
                nodes: nodes.clone(),
                hash: hash.clone(),
            });
            u.updated_ms = *now_ms;
            t.put_record(UPLOADS, id, &u)?;
        }
        Command::FinishUpload {
            id,
            digest,
            size,
            nodes,
            cid,
            leaves,
            now_ms,
        } => {
            let Some(u) = t.record::<UploadRecord>(UPLOADS, id)? else {
                // A retried close of a session that finished as this digest succeeds again.
                let done = t.record::<(String, u64)>(FINISHED, id)?;
                if done.is_some_and(|(d, _)| d == digest.to_string()) {
                    return Ok(CommandResult::Ok);
                }
                return rejected(Reject::UploadUnknown);
            };
            t.commit_blob(&u.repo, digest, *size, nodes, cid.as_ref(), leaves)?;
            t.del(UPLOADS, id)?;
            t.put_record(FINISHED, id, &(digest.to_string(), *now_ms))?;
        }
        Command::CancelUpload { id } => {
            if !t.del(UPLOADS, id)? {
                return rejected(Reject::UploadUnknown);
            }
        }
        Command::PurgeUploads { before_ms } => {
            let mut uploads = tx.open_table(UPLOADS).map_err(io_err)?;
            let mut stale = Vec::new();
            for row in uploads.iter().map_err(io_err)? {
                let (k, v) = row.map_err(io_err)?;
                let u: UploadRecord = decode(v.value())?;
                if u.updated_ms < *before_ms {
                    stale.push(k.value().to_string());
                }
            }
            for k in stale {
                uploads.remove(k.as_str()).map_err(io_err)?;
            }
            drop(uploads);
            let mut finished = tx.open_table(FINISHED).map_err(io_err)?;
            finished
                .retain(|_, v| decode::<(String, u64)>(v).is_ok_and(|(_, ms)| ms >= *before_ms))
                .map_err(io_err)?;
        }
        Command::BlobHolders { digest, add, remove } => {
            let d = digest.to_string();
            let Some(mut record) = t.record::<BlobRecord>(BLOBS, &d)? else {
                return rejected(Reject::BlobUnknown);
            };
            record.nodes.retain(|n| !remove.contains(n));
            for n in add {
                if !record.nodes.contains(n) {
                    record.nodes.push(*n);
                }
            }
            record.nodes.sort_unstable();
            t.put_record(BLOBS, &d, &record)?;
        }
        Command::SetPin { digest, cid, state } => {
            let d = digest.to_string();
            let Some(mut record) = t.record::<BlobRecord>(BLOBS, &d)? else {
                return rejected(Reject::BlobUnknown);
            };
            // An outcome must be about the same bytes and the same intent: a pin's outcome is
            // stale once the blob is being unpinned, an unpin's once it is pinned again.
            let unpinning = matches!(state, PinState::Unpinned);
            match record.ipfs.as_mut() {
                Some(ipfs)
                    if &ipfs.cid == cid
                        && unpinning == (ipfs.state == PinState::Unpinning)
                        && ipfs.state != PinState::Unpinned =>
                {
                    ipfs.state = state.clone()
                }
                _ => return rejected(Reject::BlobUnknown),
            }
            t.put_record(BLOBS, &d, &record)?;
            if matches!(state, PinState::Pinned | PinState::Unpinned) {
                t.del(UNPINNED, &d)?;
            } else {
                t.put(UNPINNED, &d, &[])?;
            }
        }
    }
    Ok(CommandResult::Ok)
}
