//! Copying planned manifest trees to the destination, in the order that keeps a half-done
//! run safe: blobs and child manifests first, the manifest after them, the tag last, then the
//! referrers. Each blob and manifest is handled once per destination repository however many
//! tags share it: present ones are skipped (`HEAD`), blobs another destination repository of
//! this run holds are mounted, the rest stream from source to destination, verified on the
//! way, with `--concurrency` transfers at once and transient failures retried.
//!
//! With `dry_run` nothing is written: the same checks run and what is missing is counted.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use ipcr_proto::digest::Digest;
use ipcr_proto::manifest::ReferrersIndex;
use ipcr_proto::media;
use ipcr_proto::names::RepoName;
use tokio::sync::{OnceCell, Semaphore};

use super::plan::{Node, fallback_tag};
use super::progress::{Progress, human_bytes, short};
use crate::api::{Manifest, Upload, index_entries};
use crate::error::Error;
use crate::registry::Registry;
use crate::retry::Retry;
use crate::verify::verified;

/// A source repository and the destination repository it is copied to.
#[derive(Clone, Copy)]
pub struct Pair<'a> {
    /// Read from.
    pub src: &'a RepoName,
    /// Written to.
    pub dst: &'a RepoName,
}

/// How a tag ended.
#[derive(Debug, PartialEq, Eq)]
pub enum TagOutcome {
    /// Written (or, in a dry run, would be).
    Copied,
    /// The destination's tag already named the same digest.
    UpToDate,
}

type Once = Arc<OnceCell<Result<(), String>>>;
type Key = (RepoName, Digest);
type Step<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The copying side of a run, shared by all its tags.
pub struct Copier {
    src: Arc<Registry>,
    dst: Arc<Registry>,
    slots: Semaphore,
    retry: Retry,
    dry_run: bool,
    blobs: Mutex<HashMap<Key, Once>>,
    manifests: Mutex<HashMap<Key, Once>>,
    /// A destination repository known to hold each blob, for mounts.
    located: Mutex<HashMap<Digest, RepoName>>,
    /// Blobs a dry run found missing.
    missing_blobs: std::sync::atomic::AtomicU64,
    /// Bytes a dry run found missing.
    missing_bytes: std::sync::atomic::AtomicU64,
    progress: Arc<Progress>,
}

fn once(map: &Mutex<HashMap<Key, Once>>, key: Key) -> Once {
    map.lock().expect("copier map").entry(key).or_default().clone()
}

impl Copier {
    /// A copier from `src` to `dst`, `concurrency` blob transfers at once.
    pub fn new(
        src: Arc<Registry>,
        dst: Arc<Registry>,
        concurrency: usize,
        retry: Retry,
        dry_run: bool,
        progress: Arc<Progress>,
    ) -> Copier {
        Copier {
            src,
            dst,
            slots: Semaphore::new(concurrency.max(1)),
            retry,
            dry_run,
            blobs: Mutex::default(),
            manifests: Mutex::default(),
            located: Mutex::default(),
            missing_blobs: Default::default(),
            missing_bytes: Default::default(),
            progress,
        }
    }

    /// Blobs a dry run found missing at the destination.
    pub fn missing_blobs(&self) -> u64 {
        self.missing_blobs.load(Relaxed)
    }

    /// Bytes a dry run found missing at the destination.
    pub fn missing_bytes(&self) -> u64 {
        self.missing_bytes.load(Relaxed)
    }

    /// Copy `root` and tag it `tag` (or write it by digest), then its referrers.
    pub async fn tag(
        &self,
        pair: Pair<'_>,
        tag: Option<&str>,
        root: &Arc<Node>,
    ) -> Result<TagOutcome, String> {
        let digest = root.manifest.digest.to_string();
        let reference = tag.unwrap_or(&digest);
        let current = self
            .dst
            .head_manifest(pair.dst, reference)
            .await
            .map_err(|e| e.to_string())?;
        let up_to_date = current.as_ref() == Some(&root.manifest.digest);
        if !up_to_date {
            self.closure(pair, root).await?;
            self.write(pair, reference, &root.manifest).await?;
        }
        self.referrers(pair, root).await?;
        Ok(if up_to_date {
            TagOutcome::UpToDate
        } else {
            TagOutcome::Copied
        })
    }

    async fn write(&self, pair: Pair<'_>, reference: &str, m: &Manifest) -> Result<(), String> {
        if !self.dry_run {
            self.dst
                .put_manifest(pair.dst, reference, m)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.progress.stats.manifests_written.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Everything `node` references, at the destination.
    fn closure<'a>(&'a self, pair: Pair<'a>, node: &'a Node) -> Step<'a> {
        Box::pin(async move {
            let children =
                futures::future::join_all(node.children.iter().map(|c| self.manifest(pair, c, false)));
            let blobs =
                futures::future::join_all(node.blobs.iter().map(|(d, size)| self.blob(pair, d, *size)));
            let (children, blobs) = futures::join!(children, blobs);
            children.into_iter().chain(blobs).collect()
        })
    }

    /// `node` at the destination by digest, once per destination repository; counted as a
    /// referrer written when `referrer` and it was not there.
    fn manifest<'a>(&'a self, pair: Pair<'a>, node: &'a Arc<Node>, referrer: bool) -> Step<'a> {
        Box::pin(async move {
            let cell = once(&self.manifests, (pair.dst.clone(), node.manifest.digest.clone()));
            cell.get_or_init(|| async {
                let d = node.manifest.digest.to_string();
                if self
                    .dst
                    .head_manifest(pair.dst, &d)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    return Ok(());
                }
                self.closure(pair, node).await?;
                self.write(pair, &d, &node.manifest).await?;
                if referrer {
                    self.progress.stats.referrers_written.fetch_add(1, Relaxed);
                }
                Ok(())
            })
            .await
            .clone()
        })
    }

    /// The referrers of `node` and of its children, at the destination and listed there: by
    /// its referrers API, or else under the fallback tag.
    fn referrers<'a>(&'a self, pair: Pair<'a>, node: &'a Arc<Node>) -> Step<'a> {
        Box::pin(async move {
            for child in &node.children {
                self.referrers(pair, child).await?;
            }
            if node.referrers.is_empty() {
                return Ok(());
            }
            for r in &node.referrers {
                self.manifest(pair, r, true).await?;
                self.referrers(pair, r).await?;
            }
            if self.dry_run {
                return Ok(());
            }
            let subject = &node.manifest.digest;
            let listed = self
                .dst
                .referrers(pair.dst, subject)
                .await
                .map_err(|e| e.to_string())?;
            match listed {
                Some(_) => Ok(()),
                None => self.fallback(pair, subject, &node.referrers).await,
            }
        })
    }

    /// Add `refs` to the destination's fallback tag of `subject` (a registry without the
    /// referrers API), keeping what it lists already.
    async fn fallback(&self, pair: Pair<'_>, subject: &Digest, refs: &[Arc<Node>]) -> Result<(), String> {
        let tag = fallback_tag(subject);
        let mut entries = match self.dst.get_manifest(pair.dst, &tag).await {
            Ok(m) => index_entries(&m.bytes)?,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        let before = entries.len();
        for r in refs {
            if !entries.iter().any(|e| e.digest == r.manifest.digest) {
                entries.push(r.descriptor.clone());
            }
        }
        if entries.len() == before {
            return Ok(());
        }
        let bytes =
            Bytes::from(serde_json::to_vec(&ReferrersIndex::new(entries)).map_err(|e| e.to_string())?);
        let m = Manifest {
            digest: ipcr_proto::digest::Algorithm::Sha256.digest_bytes(&bytes),
            bytes,
            media_type: media::OCI_INDEX.into(),
        };
        self.write(pair, &tag, &m).await
    }

    /// Blob `digest` in the destination repository, once per repository.
    async fn blob(&self, pair: Pair<'_>, digest: &Digest, size: u64) -> Result<(), String> {
        let cell = once(&self.blobs, (pair.dst.clone(), digest.clone()));
        cell.get_or_init(|| self.blob_once(pair, digest, size))
            .await
            .clone()
    }

    async fn blob_once(&self, pair: Pair<'_>, digest: &Digest, size: u64) -> Result<(), String> {
        let fail = |e: Error| format!("blob {}: {e}", short(digest));
        if self
            .dst
            .blob_size(pair.dst, digest)
            .await
            .map_err(fail)?
            .is_some()
        {
            self.located(digest, pair.dst);
            self.progress.blob_done_without_copy(size, false);
            return Ok(());
        }
        if self.dry_run {
            self.missing_blobs.fetch_add(1, Relaxed);
            self.missing_bytes.fetch_add(size, Relaxed);
            self.progress.line(format!(
                "would copy {} ({}) to {}",
                short(digest),
                human_bytes(size),
                pair.dst
            ));
            return Ok(());
        }
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        let mut attempt = 0;
        loop {
            match self.transfer(pair, digest, size).await {
                Ok(()) => {
                    self.located(digest, pair.dst);
                    return Ok(());
                }
                Err(e) => match self.retry.backoff(attempt).filter(|_| e.is_transient()) {
                    Some(wait) => {
                        tracing::debug!(%digest, attempt, error = %e, "blob copy failed; retrying");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(fail(e)),
                },
            }
        }
    }

    fn located(&self, digest: &Digest, repo: &RepoName) {
        self.located
            .lock()
            .expect("copier map")
            .entry(digest.clone())
            .or_insert_with(|| repo.clone());
    }

    /// One attempt: mount from another destination repository if one may hold it (one of
    /// this run's, else the source's name), else stream it from the source into a monolithic
    /// upload (a refused mount starts that upload anyway).
    async fn transfer(&self, pair: Pair<'_>, digest: &Digest, size: u64) -> Result<(), Error> {
        let from = self
            .located
            .lock()
            .expect("copier map")
            .get(digest)
            .cloned()
            // Not seen in this run: an earlier run may have put it under the source's name.
            .or_else(|| Some(pair.src.clone()))
            .filter(|r| r != pair.dst);
        let at = match self
            .dst
            .start_upload(pair.dst, from.as_ref().map(|r| (digest, r)))
            .await?
        {
            Upload::Mounted => {
                self.progress.blob_done_without_copy(size, true);
                return Ok(());
            }
            Upload::At(url) => url,
        };
        let resp = self.src.get_blob(pair.src, digest).await?;
        let progress = self.progress.blob_started(digest, size);
        let count = progress.counter();
        let body = verified(resp.bytes_stream(), digest.clone(), Some(size))
            .inspect_ok(move |chunk| count(chunk.len()));
        let result = self
            .dst
            .finish_upload(
                pair.dst,
                at,
                digest,
                size,
                reqwest::Body::wrap_stream(body.boxed()),
            )
            .await;
        match &result {
            Ok(()) => progress.copied(digest, pair.dst.as_str()),
            Err(e) => progress.failed(&format!("{} to {}: {e}", short(digest), pair.dst)),
        }
        result
    }
}
