//! `storage.cache`: how much of a node's disk blobs that are safely on IPFS may use.
//!
//! Every few seconds a node over its limit evicts its least recently used blobs, but only
//! blobs the blob index records as pinned and whose CID the backend confirms holding right
//! then. The node first records that it no longer holds the blob (`BlobHolders`), then removes
//! the file, so nobody is sent to a copy that is gone. Blobs pinned on IPFS need no minimum
//! number of disk copies: the repair loop leaves them alone, and a read that no node can serve
//! is served from the backend (and cached again).

use std::time::Duration;

use ipcr_proto::{Command, PinState};

use super::Backend;
use crate::raft::RaftNode;
use crate::store::FsStore;

/// How often a node checks its cache.
pub const CACHE_INTERVAL: Duration = Duration::from_secs(5);

/// The cache of one node.
#[derive(Clone)]
pub struct Cache {
    node: RaftNode,
    store: FsStore,
    backend: Backend,
    limit: u64,
}

impl Cache {
    /// Keep `store` under `limit` bytes of blobs confirmed by `backend`.
    pub fn new(node: RaftNode, store: FsStore, backend: Backend, limit: u64) -> Cache {
        Cache {
            node,
            store,
            backend,
            limit,
        }
    }

    /// One pass: evict until under the limit or out of evictable blobs. Answers the number
    /// of blobs evicted.
    pub async fn run_once(&self) -> usize {
        let store = self.store.clone();
        let Ok(Ok(mut blobs)) = tokio::task::spawn_blocking(move || store.list()).await else {
            return 0;
        };
        let mut total: u64 = blobs.iter().map(|b| b.size).sum();
        if total <= self.limit {
            return 0;
        }
        blobs.sort_by_key(|b| b.last_used);
        let me = self.node.id();
        let mut evicted = 0;
        for blob in blobs {
            if total <= self.limit {
                break;
            }
            let Ok(Some(record)) = self.node.reader().blob_any(&blob.digest) else {
                continue;
            };
            let Some(ipfs) = record.ipfs.filter(|i| i.state == PinState::Pinned) else {
                continue;
            };
            match self.backend.confirms(&ipfs.cid).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(digest = %blob.digest, cid = %ipfs.cid, "backend does not confirm a pinned blob; kept");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "backend unreachable; nothing evicted");
                    return evicted;
                }
            }
            let cmd = Command::BlobHolders {
                digest: blob.digest.clone(),
                add: Vec::new(),
                remove: vec![me],
            };
            if let Err(e) = self.node.propose(cmd).await {
                tracing::debug!(error = %e, "could not record an eviction");
                return evicted;
            }
            if let Err(e) = self.store.evict(&blob.digest) {
                tracing::warn!(digest = %blob.digest, error = %e, "could not remove an evicted blob");
                continue;
            }
            tracing::info!(digest = %blob.digest, size = blob.size, "evicted from the local cache");
            total -= blob.size;
            evicted += 1;
        }
        evicted
    }
}

/// Check the cache every [`CACHE_INTERVAL`].
pub fn spawn(cache: Cache) {
    let runtime = cache.node.runtime().clone();
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(CACHE_INTERVAL).await;
            cache.run_once().await;
        }
    });
}
