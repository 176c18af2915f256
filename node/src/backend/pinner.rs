//! Getting committed blobs onto the IPFS backend, after they are durable on the cluster's disks.
//!
//! The leader walks the blobs the backend has not confirmed (the state machine keeps them in
//! their own table) and has a node holding each one upload it: itself when it holds the blob,
//! else a holder over the cluster port. The outcome is recorded in the replicated blob index
//! (`SetPin`): pinned, or failed with the reason and the number of attempts. Failures are
//! retried with exponential backoff; a new leader picks up whatever the old one left pending,
//! and a dead holder is simply skipped for the next one. A blob that no repository links any
//! more is unpinned from the backend the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ipcr_proto::{BlobRecord, Command, Digest, PinState};

use super::Backend;
use crate::cluster::transfer::Transfers;
use crate::raft::RaftNode;
use crate::store::FsStore;

/// How often the leader looks for blobs to pin.
pub const PIN_INTERVAL: Duration = Duration::from_secs(1);
/// Blobs looked at per pass.
const BATCH: usize = 256;
/// Uploads running at once.
const PARALLEL: usize = 2;
/// Longest pause between two attempts for one blob.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The pinning service of a node. Cheap to clone.
#[derive(Clone)]
pub struct Pinner {
    node: RaftNode,
    backend: Backend,
    store: FsStore,
    transfers: Transfers,
    /// When each failed blob may be tried again (the leader's memory; a new leader retries at
    /// once).
    not_before: Arc<Mutex<HashMap<Digest, Instant>>>,
}

impl Pinner {
    /// Pinning of `node`'s blobs to `backend`.
    pub fn new(node: RaftNode, backend: Backend, store: FsStore, transfers: Transfers) -> Pinner {
        Pinner {
            node,
            backend,
            store,
            transfers,
            not_before: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Upload a blob this node holds (here, or for the leader through the cluster port).
    pub async fn pin_local(&self, digest: &Digest, record: &BlobRecord) -> Result<(), String> {
        let Some(ipfs) = &record.ipfs else {
            return Err("the blob has no CID".into());
        };
        match self.store.stat(digest) {
            Ok(Some(size)) if size == record.size => {}
            _ => return Err("this node does not hold the blob".into()),
        }
        self.backend
            .add(
                self.store.blob_path(digest),
                record.size,
                digest.to_string(),
                ipfs.cid.clone(),
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Have a holder upload one blob; answers the error of the last holder tried.
    async fn pin_one(&self, digest: &Digest, record: &BlobRecord) -> Result<(), String> {
        let me = self.node.id();
        let mut last = String::from("no member holds the blob");
        if record.nodes.contains(&me) {
            match self.pin_local(digest, record).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        for (id, url, _) in self.node.members() {
            if id == me || !record.nodes.contains(&id) {
                continue;
            }
            match self.transfers.pin_at(&url, digest).await {
                Ok(()) => return Ok(()),
                Err(e) => last = format!("node {id}: {e}"),
            }
        }
        Err(last)
    }

    fn due(&self, digest: &Digest, now: Instant) -> bool {
        let map = self.not_before.lock().expect("pinner lock");
        map.get(digest).is_none_or(|t| *t <= now)
    }

    /// One pass on the leader: try every due unconfirmed blob once. Answers how many got
    /// pinned.
    pub async fn run_once(&self) -> usize {
        let now = Instant::now();
        let Ok(blobs) = self.node.reader().unpinned(None, BATCH) else {
            return 0;
        };
        let due: Vec<(Digest, BlobRecord)> = blobs
            .into_iter()
            .filter(|(d, r)| r.ipfs.is_some() && self.due(d, now))
            .collect();
        let outcomes: Vec<bool> = futures::stream::iter(due)
            .map(|(digest, record)| async move { self.settle(digest, record).await })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let pinned = outcomes.into_iter().filter(|pinned| *pinned).count();
        if pinned > 0 {
            // The backend takes blobs again: whatever waits out a backoff goes next pass.
            self.not_before.lock().expect("pinner lock").clear();
        }
        pinned
    }

    /// Pin one blob and record the outcome; answers whether it got pinned.
    async fn settle(&self, digest: Digest, record: BlobRecord) -> bool {
        let Some(ipfs) = record.ipfs.clone() else {
            return false;
        };
        if ipfs.state == PinState::Unpinning {
            return self.unpin(digest, ipfs.cid).await;
        }
        let attempts = match &ipfs.state {
            PinState::Failed { attempts, .. } => *attempts,
            _ => 0,
        };
        let outcome = self.pin_one(&digest, &record).await;
        let state = match &outcome {
            Ok(()) => {
                self.not_before.lock().expect("pinner lock").remove(&digest);
                tracing::info!(%digest, cid = %ipfs.cid, backend = self.backend.name(), "blob pinned");
                PinState::Pinned
            }
            Err(reason) => {
                let backoff = Duration::from_secs(1u64 << attempts.min(6)).min(MAX_BACKOFF);
                self.not_before
                    .lock()
                    .expect("pinner lock")
                    .insert(digest.clone(), Instant::now() + backoff);
                tracing::warn!(%digest, error = %reason, attempts = attempts + 1, "pinning failed; retrying later");
                PinState::Failed {
                    reason: reason.clone(),
                    attempts: attempts + 1,
                }
            }
        };
        let cmd = Command::SetPin {
            digest: digest.clone(),
            cid: ipfs.cid,
            state,
        };
        if let Err(e) = self.node.propose(cmd).await {
            tracing::debug!(%digest, error = %e, "could not record a pin outcome");
        }
        outcome.is_ok()
    }

    /// Have the backend drop the pin of a blob no repository links; answers whether it did.
    /// A failure is only retried (the blob stays `Unpinning`).
    async fn unpin(&self, digest: Digest, cid: String) -> bool {
        match self.backend.unpin(&cid).await {
            Ok(()) => {
                tracing::info!(%digest, %cid, backend = self.backend.name(), "blob unpinned");
                let cmd = Command::SetPin {
                    digest: digest.clone(),
                    cid,
                    state: PinState::Unpinned,
                };
                if let Err(e) = self.node.propose(cmd).await {
                    tracing::debug!(%digest, error = %e, "could not record an unpin");
                }
                true
            }
            Err(e) => {
                tracing::warn!(%digest, error = %e, "unpinning failed; retrying later");
                self.not_before
                    .lock()
                    .expect("pinner lock")
                    .insert(digest, Instant::now() + MAX_BACKOFF / 4);
                false
            }
        }
    }
}

/// On the leader, pin what is pending every [`PIN_INTERVAL`].
pub fn spawn(pinner: Pinner) {
    let node = pinner.node.clone();
    node.runtime().clone().spawn(async move {
        loop {
            tokio::time::sleep(PIN_INTERVAL).await;
            if pinner.node.raft().is_leader() {
                pinner.run_once().await;
            }
        }
    });
}
