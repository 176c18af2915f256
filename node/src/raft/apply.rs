//! Applying one [`Command`] to the state machine's tables: the deterministic heart of IPCR.
//!
//! Given the same tables and the same command, every node makes the same change and gives the
//! same answer. Checks that guard against races (a manifest whose blob was unlinked between
//! validation and commit, a chunk that no longer starts at the session's end) are made here,
//! inside the write transaction, so they cannot be raced.

use std::io;

use ipcr_proto::cid::{CidProgress, Leaf};
use ipcr_proto::gc::{GcOptions, GcReport, GcRun, GcStep, GcTally};
use ipcr_proto::{
    BlobRecord, ChunkRecord, Command, CommandResult, Digest, IpfsRecord, ManifestRecord, PinState, Reject,
    RepoName, Tag, UploadRecord,
};
use redb::{ReadableTable, WriteTransaction};

use super::state::{
    BLOB_LEAVES, BLOB_LINKS, BLOB_REFS, BLOBS, DROPPED, FETCHES, FINISHED, GC, GC_LAST, GC_RUNNING,
    MANIFEST_REPOS, MANIFESTS, PARENTS, REFERRERS, REPO_BLOBS, REPO_MANIFESTS, REPOS, TAGGED, TAGS, Table,
    UNPINNED, UPLOADS, key, ms_of, prefix_range,
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

    /// Whether any key of `table` starts with `parts` followed by `\0`.
    fn any_under(&self, table: Table, parts: &[&str]) -> io::Result<bool> {
        let t = self.0.open_table(table).map_err(io_err)?;
        let (lo, hi) = prefix_range(parts);
        Ok(t.range(lo.as_str()..hi.as_str())
            .map_err(io_err)?
            .next()
            .is_some())
    }

    /// The keys of `table` under `parts`.
    fn keys_under(&self, table: Table, parts: &[&str]) -> io::Result<Vec<String>> {
        let t = self.0.open_table(table).map_err(io_err)?;
        let (lo, hi) = prefix_range(parts);
        let mut out = Vec::new();
        for row in t.range(lo.as_str()..hi.as_str()).map_err(io_err)? {
            out.push(row.map_err(io_err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// A time stored in `table` under `k`.
    fn ms(&self, table: Table, k: &str) -> io::Result<Option<u64>> {
        Ok(self.get(table, k)?.map(|v| ms_of(&v)))
    }

    /// Link a committed blob into `repo` at `now_ms`. Linking again renews the link's age (a
    /// push that uploads or mounts a blob again is about to reference it). The first link of
    /// a blob the backend dropped (or was about to drop) has it pinned again.
    fn link(&self, repo: &RepoName, digest: &Digest, now_ms: u64) -> io::Result<()> {
        let d = digest.to_string();
        let link = key(&[repo.as_str(), &d]);
        let linked = self.has(REPO_BLOBS, &link)?;
        self.put(REPO_BLOBS, &link, &now_ms.to_le_bytes())?;
        if linked {
            return Ok(());
        }
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

    /// Unlink a blob from `repo`; answers how many repositories still link it (`None` when
    /// `repo` did not). A blob no repository links any more is dropped from the IPFS backend.
    fn unlink(&self, repo: &RepoName, digest: &Digest) -> io::Result<Option<u64>> {
        let d = digest.to_string();
        if !self.del(REPO_BLOBS, &key(&[repo.as_str(), &d]))? {
            return Ok(None);
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
        Ok(Some(links))
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

    /// Record verified bytes of `size` held by `nodes` (with their CID and its leaves, when
    /// an IPFS backend is configured) and link them into `repo` at `now_ms`.
    fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        (size, nodes): (u64, &[u64]),
        (cid, leaves): (Option<&String>, &[Leaf]),
        now_ms: u64,
    ) -> io::Result<()> {
        let d = digest.to_string();
        // The blob is here: whoever was fetching it from a cache's upstream is done.
        self.del(FETCHES, &d)?;
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
        // Pushed again: its copies are no collector's any more.
        self.del(DROPPED, &d)?;
        self.link(repo, digest, now_ms)
    }

    /// Store a manifest in `repo` (pushed at `now_ms`) with the reverse indexes the garbage
    /// collector checks, and point `tags` at it.
    fn put_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        tags: &[Tag],
        record: &ManifestRecord,
        now_ms: u64,
    ) -> io::Result<()> {
        let (r, d) = (repo.as_str(), digest.to_string());
        self.put_record(MANIFESTS, &d, record)?;
        self.put(REPO_MANIFESTS, &key(&[r, &d]), &now_ms.to_le_bytes())?;
        self.put(MANIFEST_REPOS, &key(&[&d, r]), &[])?;
        for blob in &record.blobs {
            self.put(BLOB_REFS, &key(&[r, &blob.to_string(), &d]), &[])?;
        }
        for child in &record.children {
            self.put(PARENTS, &key(&[r, &child.to_string(), &d]), &[])?;
        }
        for tag in tags {
            let tk = key(&[r, tag.as_str()]);
            if let Some(old) = self.get(TAGS, &tk)? {
                self.del(TAGGED, &key(&[r, &String::from_utf8_lossy(&old), tag.as_str()]))?;
            }
            self.put(TAGS, &tk, d.as_bytes())?;
            self.put(TAGGED, &key(&[r, &d, tag.as_str()]), &now_ms.to_le_bytes())?;
        }
        if let Some(subject) = &record.subject {
            self.put(REFERRERS, &key(&[r, &subject.to_string(), &d]), &[])?;
        }
        self.touch_repo(repo)
    }

    /// Remove a tag; answers whether it existed.
    fn untag(&self, repo: &RepoName, tag: &str) -> io::Result<bool> {
        let tk = key(&[repo.as_str(), tag]);
        let Some(old) = self.get(TAGS, &tk)? else {
            return Ok(false);
        };
        self.del(TAGS, &tk)?;
        self.del(
            TAGGED,
            &key(&[repo.as_str(), &String::from_utf8_lossy(&old), tag]),
        )?;
        Ok(true)
    }

    /// Remove a manifest from `repo` with the tags pointing at it and its index entries; its
    /// content goes with the last repository holding it. Answers whether `repo` held it.
    fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> io::Result<bool> {
        let (r, d) = (repo.as_str(), digest.to_string());
        if !self.del(REPO_MANIFESTS, &key(&[r, &d]))? {
            return Ok(false);
        }
        for k in self.keys_under(TAGGED, &[r, &d])? {
            if let Some(tag) = k.rsplit('\0').next() {
                self.del(TAGS, &key(&[r, tag]))?;
            }
            self.del(TAGGED, &k)?;
        }
        if let Some(m) = self.record::<ManifestRecord>(MANIFESTS, &d)? {
            if let Some(subject) = m.subject {
                self.del(REFERRERS, &key(&[r, &subject.to_string(), &d]))?;
            }
            for child in &m.children {
                self.del(PARENTS, &key(&[r, &child.to_string(), &d]))?;
            }
            for blob in &m.blobs {
                self.del(BLOB_REFS, &key(&[r, &blob.to_string(), &d]))?;
            }
        }
        self.del(MANIFEST_REPOS, &key(&[&d, r]))?;
        if !self.any_under(MANIFEST_REPOS, &[&d])? {
            self.del(MANIFESTS, &d)?;
        }
        Ok(true)
    }

    /// Take a blob no repository links out of the blob index, with its holders (whose copies
    /// the nodes then delete), at `now_ms` with `grace_ms`: the blob's tombstone tells the
    /// nodes' janitors which copies are collected. A blob the IPFS backend has yet to unpin
    /// keeps its entry, without holders, until the backend confirms; a later collection
    /// removes it. Answers whether holders were removed (and the blob is counted).
    fn drop_blob(&self, d: &str, (now_ms, grace_ms): (u64, u64), tally: &mut GcTally) -> io::Result<bool> {
        let Some(mut record) = self.record::<BlobRecord>(BLOBS, d)? else {
            return Ok(false);
        };
        let copies = record.nodes.len() as u64;
        self.put_record(DROPPED, d, &(now_ms, grace_ms))?;
        let unpinning = record
            .ipfs
            .as_ref()
            .is_some_and(|i| i.state != PinState::Unpinned);
        if unpinning {
            if copies == 0 {
                return Ok(false);
            }
            record.nodes.clear();
            self.put_record(BLOBS, d, &record)?;
        } else {
            for table in [BLOBS, BLOB_LINKS, BLOB_LEAVES, UNPINNED] {
                self.del(table, d)?;
            }
            if copies == 0 {
                return Ok(true);
            }
        }
        tally.blobs_removed += 1;
        tally.bytes_removed += record.size;
        tally.disk_bytes_removed += record.size * copies;
        Ok(true)
    }

    /// Apply one step of a collection if it still holds; answers whether it did.
    fn gc_step(
        &self,
        step: &GcStep,
        now_ms: u64,
        options: &GcOptions,
        tally: &mut GcTally,
    ) -> io::Result<bool> {
        let old_enough = |ms: u64| now_ms.saturating_sub(ms) >= options.grace_ms;
        match step {
            GcStep::Untag {
                repo,
                tag,
                digest,
                pushed_ms,
            } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                let points = self
                    .get(TAGS, &key(&[r, tag.as_str()]))?
                    .is_some_and(|v| v == d.as_bytes());
                if !points || self.ms(TAGGED, &key(&[r, &d, tag.as_str()]))? != Some(*pushed_ms) {
                    return Ok(false);
                }
                self.untag(repo, tag.as_str())?;
                tally.repo(repo).tags += 1;
            }
            GcStep::Manifest { repo, digest } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                let Some(pushed) = self.ms(REPO_MANIFESTS, &key(&[r, &d]))? else {
                    return Ok(false);
                };
                if !old_enough(pushed)
                    || self.any_under(TAGGED, &[r, &d])?
                    || self.any_under(PARENTS, &[r, &d])?
                {
                    return Ok(false);
                }
                let Some(m) = self.record::<ManifestRecord>(MANIFESTS, &d)? else {
                    return Ok(false);
                };
                // A referrer goes with its subject, not before; anything else only when asked.
                let keep = match &m.subject {
                    Some(subject) => self.has_manifest(repo, subject)?,
                    None => !options.delete_untagged,
                };
                if keep {
                    return Ok(false);
                }
                self.delete_manifest(repo, digest)?;
                tally.repo(repo).manifests += 1;
            }
            GcStep::Unlink { repo, digest } => {
                let (r, d) = (repo.as_str(), digest.to_string());
                let Some(linked) = self.ms(REPO_BLOBS, &key(&[r, &d]))? else {
                    return Ok(false);
                };
                if !old_enough(linked) || self.any_under(BLOB_REFS, &[r, &d])? {
                    return Ok(false);
                }
                let size = self.record::<BlobRecord>(BLOBS, &d)?.map_or(0, |b| b.size);
                let left = self.unlink(repo, digest)?;
                let counts = tally.repo(repo);
                counts.blobs += 1;
                counts.bytes += size;
                if left == Some(0) {
                    self.drop_blob(&d, (now_ms, options.grace_ms), tally)?;
                }
            }
            GcStep::Drop { digest } => {
                let d = digest.to_string();
                if self.links(&d)? != 0 {
                    return Ok(false);
                }
                return self.drop_blob(&d, (now_ms, options.grace_ms), tally);
            }
        }
        Ok(true)
    }
}

/// How long the tombstone of a collected blob is kept (ms).
const DROPPED_FOR_MS: u64 = 24 * 3600 * 1000;

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
            now_ms,
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
            t.put_manifest(repo, digest, tags, record, *now_ms)?;
        }
        // What a cache fetched is what its upstream holds: its references arrive when pulled.
        Command::CacheManifest {
            repo,
            digest,
            tags,
            record,
            now_ms,
        } => t.put_manifest(repo, digest, tags, record, *now_ms)?,
        Command::ClaimFetch {
            digest,
            node,
            now_ms,
            lease_ms,
        } => {
            let d = digest.to_string();
            if let Some((holder, until_ms)) = t.record::<(u64, u64)>(FETCHES, &d)?
                && holder != *node
                && until_ms > *now_ms
            {
                return rejected(Reject::FetchClaimed {
                    node: holder,
                    until_ms,
                });
            }
            t.put_record(FETCHES, &d, &(*node, now_ms.saturating_add(*lease_ms)))?;
        }
        Command::ReleaseFetch { digest, node } => {
            let d = digest.to_string();
            if t.record::<(u64, u64)>(FETCHES, &d)?
                .is_some_and(|(holder, _)| holder == *node)
            {
                t.del(FETCHES, &d)?;
            }
        }
        Command::Untag { repo, tag } => {
            if !t.untag(repo, tag.as_str())? {
                return rejected(Reject::ManifestUnknown);
            }
        }
        Command::DeleteManifest { repo, digest } => {
            if !t.delete_manifest(repo, digest)? {
                return rejected(Reject::ManifestUnknown);
            }
        }
        Command::CommitBlob {
            repo,
            digest,
            size,
            nodes,
            cid,
            leaves,
            now_ms,
        } => t.commit_blob(repo, digest, (*size, nodes), (cid.as_ref(), leaves), *now_ms)?,
        Command::LinkBlob { repo, digest, now_ms } => {
            // A mount copies a link: a blob no repository links is garbage, perhaps already
            // without copies and leaving the IPFS backend (its entry waits for the unpin).
            let d = digest.to_string();
            if !t.has(BLOBS, &d)? || t.links(&d)? == 0 {
                return rejected(Reject::BlobUnknown);
            }
            t.link(repo, digest, *now_ms)?;
        }
        Command::UnlinkBlob { repo, digest } => {
            if t.unlink(repo, digest)?.is_none() {
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
            t.commit_blob(&u.repo, digest, (*size, nodes), (cid.as_ref(), leaves), *now_ms)?;
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
        Command::GcBegin { run } => {
            if let Some(current) = t.record::<GcRun>(GC, GC_RUNNING)?
                && current.run != run.run
                && current.lease_until_ms > run.started_ms
            {
                return rejected(Reject::GcRunning(current.run));
            }
            t.put_record(GC, GC_RUNNING, run)?;
            // Tombstones a day old have served: every node still up swept long ago, and a
            // node back after longer finds those copies older than any grace period.
            let mut dropped = tx.open_table(DROPPED).map_err(io_err)?;
            let horizon = run.started_ms.saturating_sub(DROPPED_FOR_MS);
            dropped
                .retain(|_, v| decode::<(u64, u64)>(v).is_ok_and(|(ms, _)| ms >= horizon))
                .map_err(io_err)?;
        }
        Command::Collect {
            run,
            now_ms,
            lease_ms,
            options,
            steps,
        } => {
            // Only the collection holding the lease applies steps: one at a time.
            let Some(mut current) = t.record::<GcRun>(GC, GC_RUNNING)?.filter(|c| &c.run == run) else {
                return rejected(Reject::GcRunning(run.clone()));
            };
            current.lease_until_ms = current.lease_until_ms.max(now_ms + lease_ms);
            t.put_record(GC, GC_RUNNING, &current)?;
            let mut tally = GcTally::default();
            for step in steps {
                if !t.gc_step(step, *now_ms, options, &mut tally)? {
                    tally.refused += 1;
                }
            }
            return Ok(CommandResult::Collected(tally));
        }
        Command::GcEnd { report } => {
            if t.record::<GcRun>(GC, GC_RUNNING)?
                .is_none_or(|c| c.run != report.run)
            {
                return rejected(Reject::GcRunning(report.run.clone()));
            }
            t.del(GC, GC_RUNNING)?;
            let mut last: GcReport = report.clone();
            last.tally.repositories.clear();
            t.put_record(GC, GC_LAST, &last)?;
        }
    }
    Ok(CommandResult::Ok)
}

#[cfg(test)]
mod tests {
    use ipcr_proto::Algorithm;
    use ipcr_proto::gc::RepoTally;

    use super::*;
    use crate::raft::testing::{Db, db, options, report};

    fn repo(r: &str) -> RepoName {
        r.parse().unwrap()
    }

    fn unlink(r: &str, d: &Digest) -> GcStep {
        GcStep::Unlink {
            repo: repo(r),
            digest: d.clone(),
        }
    }

    fn manifest(r: &str, d: &Digest) -> GcStep {
        GcStep::Manifest {
            repo: repo(r),
            digest: d.clone(),
        }
    }

    #[test]
    fn a_manifest_and_a_collection_of_its_blob_never_both_win() {
        let db = db();
        let layer = db.commit("a", b"layer", 0);
        db.ok(Command::GcBegin {
            run: GcRun {
                run: "r".into(),
                node: 1,
                started_ms: 0,
                lease_until_ms: 30_000,
                options: options(0, false),
            },
        });
        // The manifest lands first: the planned unlink is refused, the blob stays.
        let (_, pushed) = db.push("a", Some("v1"), (&[&layer], &[], None), 10);
        assert_eq!(pushed, CommandResult::Ok);
        let t = db.collect("r", 20, options(0, false), vec![unlink("a", &layer)]);
        assert_eq!((t.refused, t.blobs_removed), (1, 0));
        assert!(db.reader().blob(&repo("a"), &layer).unwrap().is_some());
        // The collection lands first: the manifest is refused.
        let other = db.commit("a", b"other", 0);
        let t = db.collect("r", 20, options(0, false), vec![unlink("a", &other)]);
        assert_eq!(
            (t.refused, t.blobs_removed, t.bytes_removed, t.disk_bytes_removed),
            (0, 1, 5, 10)
        );
        let (_, pushed) = db.push("a", Some("v2"), (&[&other], &[], None), 30);
        assert_eq!(
            pushed,
            CommandResult::Rejected(Reject::ManifestBlobUnknown(other.clone()))
        );
        assert!(db.reader().blob_any(&other).unwrap().is_none());
        // A mount of the collected blob is refused too.
        let mount = db.apply(Command::LinkBlob {
            repo: repo("b"),
            digest: other.clone(),
            now_ms: 40,
        });
        assert_eq!(mount, CommandResult::Rejected(Reject::BlobUnknown));
        // Its tombstone tells the janitors, until it is pushed again.
        assert_eq!(db.reader().dropped(&other).unwrap(), Some((20, 0)));
        db.commit("a", b"other", 50);
        assert_eq!(db.reader().dropped(&other).unwrap(), None);
    }

    #[test]
    fn tombstones_last_a_day() {
        let db = db();
        let day = 24 * 3600 * 1000;
        let blob = db.commit("a", b"blob", 0);
        db.begin("r", 0);
        db.collect("r", 1_000, options(0, false), vec![unlink("a", &blob)]);
        db.ok(Command::GcEnd { report: report("r") });
        db.begin("s", day);
        assert!(db.reader().dropped(&blob).unwrap().is_some());
        db.begin("s", day + 1_001);
        assert!(db.reader().dropped(&blob).unwrap().is_none());
    }

    #[test]
    fn the_grace_period_counts_from_the_last_upload_or_mount() {
        let db = db();
        let layer = db.commit("a", b"layer", 1_000);
        db.begin("r", 0);
        let t = db.collect("r", 1_500, options(1_000, false), vec![unlink("a", &layer)]);
        assert_eq!(t.refused, 1);
        // Uploaded again at 2 000: still young at 2 500.
        db.commit("a", b"layer", 2_000);
        let t = db.collect("r", 2_500, options(1_000, false), vec![unlink("a", &layer)]);
        assert_eq!(t.refused, 1);
        // Linked elsewhere: unlinking one repository leaves the blob in the index.
        db.ok(Command::LinkBlob {
            repo: repo("b"),
            digest: layer.clone(),
            now_ms: 0,
        });
        let t = db.collect(
            "r",
            3_000,
            options(1_000, false),
            vec![unlink("a", &layer), unlink("b", &layer)],
        );
        assert_eq!(
            t.repositories["a"],
            RepoTally {
                blobs: 1,
                bytes: 5,
                ..Default::default()
            }
        );
        assert_eq!((t.refused, t.blobs_removed), (0, 1));
        assert_eq!(db.rows(BLOB_LINKS) + db.rows(BLOBS) + db.rows(REPO_BLOBS), 0);
    }

    #[test]
    fn manifests_go_only_when_nothing_names_them() {
        let db = db();
        let layer = db.commit("a", b"layer", 0);
        let (child, _) = db.push("a", None, (&[&layer], &[], None), 0);
        let (index, _) = db.push("a", None, (&[], &[&child], None), 0);
        let (tagged, _) = db.push("a", Some("t"), (&[&layer], &[&child], Some(&child)), 0);
        let (signature, _) = db.push("a", None, (&[], &[], Some(&index)), 0);
        db.begin("r", 0);
        let all = |db: &Db| {
            db.collect(
                "r",
                100,
                options(0, true),
                vec![
                    manifest("a", &child),
                    manifest("a", &signature),
                    manifest("a", &index),
                    manifest("a", &tagged),
                ],
            )
        };
        // The child has two parents, the signature its subject, the last one a tag: only the
        // index goes.
        let t = all(&db);
        assert_eq!((t.repositories["a"].manifests, t.refused), (1, 3));
        // Now the signature's subject is gone (and the index is no step to apply any more);
        // the child still has a parent.
        let t = all(&db);
        assert_eq!((t.repositories["a"].manifests, t.refused), (1, 3));
        db.ok(Command::Untag {
            repo: repo("a"),
            tag: "t".parse().unwrap(),
        });
        // Untagged, but its subject (the child) is present: a referrer stays with its subject.
        let t = all(&db);
        assert_eq!(t.repositories.get("a").map(|r| r.manifests), None);
        // Without --delete-untagged nothing untagged goes but referrers of a missing subject.
        let t = db.collect(
            "r",
            100,
            options(0, false),
            vec![manifest("a", &child), manifest("a", &tagged)],
        );
        assert_eq!(t.refused, 2);
        // With it, the child can go once nothing names it, and then the referrer.
        let t = db.collect("r", 100, options(0, true), vec![manifest("a", &tagged)]);
        assert_eq!(t.refused, 1);
        db.ok(Command::DeleteManifest {
            repo: repo("a"),
            digest: tagged.clone(),
        });
        let t = db.collect(
            "r",
            100,
            options(0, true),
            vec![manifest("a", &child), unlink("a", &layer)],
        );
        assert_eq!(
            (
                t.repositories["a"].manifests,
                t.repositories["a"].blobs,
                t.refused
            ),
            (1, 1, 0)
        );
        for table in [
            MANIFESTS,
            REPO_MANIFESTS,
            MANIFEST_REPOS,
            TAGS,
            TAGGED,
            PARENTS,
            BLOB_REFS,
            REFERRERS,
            BLOBS,
        ] {
            assert_eq!(db.rows(table), 0, "{}", redb::TableHandle::name(&table));
        }
    }

    #[test]
    fn a_manifest_pushed_within_the_grace_period_or_tagged_again_stays() {
        let db = db();
        let (m, _) = db.push("a", Some("t"), (&[], &[], None), 1_000);
        db.begin("r", 0);
        let untag = |pushed_ms| GcStep::Untag {
            repo: repo("a"),
            tag: "t".parse().unwrap(),
            digest: m.clone(),
            pushed_ms,
        };
        // Planned on the push at 500: the tag was pushed again (at 1 000) since.
        let t = db.collect("r", 5_000, options(0, true), vec![untag(500), manifest("a", &m)]);
        assert_eq!(t.refused, 2);
        let t = db.collect(
            "r",
            1_500,
            options(1_000, true),
            vec![untag(1_000), manifest("a", &m)],
        );
        assert_eq!((t.repositories["a"].tags, t.refused), (1, 1));
        let t = db.collect("r", 2_000, options(1_000, true), vec![manifest("a", &m)]);
        assert_eq!(t.repositories["a"].manifests, 1);
    }

    #[test]
    fn content_held_by_another_repository_stays() {
        let db = db();
        let (m, _) = db.push("a", Some("t"), (&[], &[], None), 0);
        db.push("b", Some("t"), (&[], &[], None), 0);
        db.ok(Command::DeleteManifest {
            repo: repo("a"),
            digest: m.clone(),
        });
        assert!(db.reader().manifest(&repo("b"), &m).unwrap().is_some());
        db.ok(Command::DeleteManifest {
            repo: repo("b"),
            digest: m.clone(),
        });
        assert_eq!(db.rows(MANIFESTS), 0);
    }

    #[test]
    fn a_blob_still_to_be_unpinned_keeps_its_entry_without_holders() {
        let db = db();
        let digest = Algorithm::Sha256.digest_bytes(b"pinned");
        db.ok(Command::CommitBlob {
            repo: repo("a"),
            digest: digest.clone(),
            size: 6,
            nodes: vec![1],
            cid: Some("bafk".into()),
            leaves: Vec::new(),
            now_ms: 0,
        });
        db.begin("r", 0);
        let t = db.collect("r", 10, options(0, false), vec![unlink("a", &digest)]);
        assert_eq!(t.blobs_removed, 1);
        let record = db.reader().blob_any(&digest).unwrap().unwrap();
        assert!(record.nodes.is_empty());
        assert_eq!(record.ipfs.unwrap().state, PinState::Unpinning);
        // Nothing links it: a mount is refused although its entry waits for the unpin.
        let mount = db.apply(Command::LinkBlob {
            repo: repo("b"),
            digest: digest.clone(),
            now_ms: 20,
        });
        assert_eq!(mount, CommandResult::Rejected(Reject::BlobUnknown));
        // Dropping it again changes nothing until the backend confirms.
        let t = db.collect(
            "r",
            10,
            options(0, false),
            vec![GcStep::Drop {
                digest: digest.clone(),
            }],
        );
        assert_eq!(t.refused, 1);
        db.ok(Command::SetPin {
            digest: digest.clone(),
            cid: "bafk".into(),
            state: PinState::Unpinned,
        });
        let t = db.collect(
            "r",
            10,
            options(0, false),
            vec![GcStep::Drop {
                digest: digest.clone(),
            }],
        );
        assert_eq!((t.refused, t.blobs_removed), (0, 0));
        assert!(db.reader().blob_any(&digest).unwrap().is_none());
    }

    #[test]
    fn one_collection_at_a_time() {
        let db = db();
        assert_eq!(db.begin("one", 0), CommandResult::Ok);
        assert_eq!(
            db.begin("two", 10_000),
            CommandResult::Rejected(Reject::GcRunning("one".into()))
        );
        let stale = db.apply(Command::Collect {
            run: "two".into(),
            now_ms: 0,
            lease_ms: 0,
            options: options(0, false),
            steps: Vec::new(),
        });
        assert_eq!(stale, CommandResult::Rejected(Reject::GcRunning("two".into())));
        // A step renews the lease; once it expired another collection takes over.
        db.collect("one", 20_000, options(0, false), Vec::new());
        assert!(matches!(db.begin("two", 40_000), CommandResult::Rejected(_)));
        assert_eq!(db.begin("two", 60_000), CommandResult::Ok);
        let stale = db.apply(Command::GcEnd {
            report: report("one"),
        });
        assert!(matches!(stale, CommandResult::Rejected(_)));
        db.ok(Command::GcEnd {
            report: report("two"),
        });
        let status = db.reader().gc_status().unwrap();
        assert_eq!((status.last, status.running), (Some(report("two")), None));
    }
}
