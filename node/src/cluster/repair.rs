//! Keeping every blob on enough nodes: the leader's background repair, making copies for a
//! node about to leave, and storing a copy of a blob fetched from a holder.
//!
//! A blob counts as held only by current voters; a node that died and was removed, or is
//! leaving, no longer counts. New copies are fetched by the target node from a holder,
//! verified against the digest while written, stored, and then recorded with `BlobHolders`.

use std::collections::BTreeSet;

use ipcr_proto::{BlobRecord, Command, CommandResult, Digest, NodeId, PinState};

use super::Peers;
use super::transfer::Transfers;
use crate::store::FsStore;
use crate::upload::hasher::ResumableHasher;
use crate::upload::writer::{self, Mode};

/// Store a verified copy of `digest` on this node, fetched from the first of `sources` that
/// serves it whole and right.
pub async fn copy_here(
    transfers: &Transfers,
    store: &FsStore,
    digest: &Digest,
    size: u64,
    sources: &[String],
) -> Result<(), String> {
    if store.stat(digest).map_err(|e| e.to_string())? == Some(size) {
        return Ok(());
    }
    let path = format!("/cluster/blobs/{digest}");
    store_from_first(store, digest, Some(size), sources, |source| {
        transfers.fetch(source, &path, 0, size)
    })
    .await
}

/// Store a verified copy of `digest` from the first of `sources` whose bytes hash to it;
/// `fetch` opens a source's stream. Answers the last source's error when none did.
pub async fn store_from_first<S: std::fmt::Display>(
    store: &FsStore,
    digest: &Digest,
    size: Option<u64>,
    sources: impl IntoIterator<Item = S>,
    fetch: impl Fn(&S) -> tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
) -> Result<(), String> {
    let mut last_error = String::from("no source");
    for source in sources {
        let from = source.to_string();
        match store_verified(store, digest, size, fetch(&source), &from).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(%digest, source = %from, error = %e, "could not store a copy from this source");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

/// Write `fetched` to a temporary file while hashing it and store it as `digest` only if it
/// hashes to `digest` (and is exactly `size` bytes, when given); nothing is left behind
/// otherwise. `from` names the source in errors.
pub async fn store_verified(
    store: &FsStore,
    digest: &Digest,
    size: Option<u64>,
    fetched: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    from: &str,
) -> Result<(), String> {
    let tmp = store.temp_path();
    let (path, check, st, from) = (tmp.clone(), digest.clone(), store.clone(), from.to_string());
    let stored = crate::upload::blocking(move || {
        let hasher = ResumableHasher::new(check.algorithm());
        let (hashes, _) = writer::write(path.clone(), 0, hasher.into(), fetched, size, None, Mode::Append)?;
        let actual = hashes.content.digest();
        if actual != check {
            return Err(crate::upload::UploadError::DigestInvalid(format!(
                "{from} served bytes hashing to {actual}"
            )));
        }
        st.commit(&path, &check)?;
        Ok(())
    })
    .await;
    let _ = FsStore::remove_file(&tmp);
    stored.map_err(|e| e.to_string())
}

/// Blobs read from the index at a time by a repair pass.
const PAGE: usize = 1000;

/// The repair service of a node.
#[derive(Clone)]
pub struct Repair {
    peers: Peers,
    transfers: Transfers,
    store: FsStore,
    /// Copies made for under-replicated blobs, by result.
    copies: prometheus::IntCounterVec,
}

impl Repair {
    /// Repairs made by `peers`' node.
    pub fn new(peers: Peers, transfers: Transfers, store: FsStore) -> Repair {
        Repair {
            peers,
            transfers,
            store,
            copies: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "ipcr_repair_copies_total",
                    "Copies of under-replicated blobs this node's repair made or failed to make, by result.",
                ),
                &["result"],
            )
            .expect("a valid metric"),
        }
    }

    /// Everything to export.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.copies.clone())]
    }

    fn voters_except(&self, leaving: Option<NodeId>) -> Vec<(NodeId, String)> {
        self.peers
            .node()
            .members()
            .into_iter()
            .filter(|(id, _, voter)| *voter && Some(*id) != leaving)
            .map(|(id, url, _)| (id, url))
            .collect()
    }

    /// Make one more copy of a blob on a voter that lacks it. Answers the new holder.
    async fn copy_once(
        &self,
        digest: &Digest,
        record: &BlobRecord,
        voters: &[(NodeId, String)],
    ) -> Result<NodeId, String> {
        let me = self.peers.node().id();
        let holders: Vec<&(NodeId, String)> = voters
            .iter()
            .filter(|(id, _)| record.nodes.contains(id))
            .collect();
        let sources: Vec<String> = holders.iter().map(|(_, url)| url.clone()).collect();
        let mut targets: Vec<&(NodeId, String)> = voters
            .iter()
            .filter(|(id, _)| !record.nodes.contains(id))
            .collect();
        let order = self.peers.ranked(&digest.to_string());
        targets.sort_by_key(|(id, _)| order.iter().position(|(o, _)| o == id).unwrap_or(0));
        let mut last_error = String::from("no voter lacks the blob");
        for (target, url) in targets {
            let copied = if *target == me {
                copy_here(&self.transfers, &self.store, digest, record.size, &sources).await
            } else {
                self.transfers.replicate(url, digest, sources.clone()).await
            };
            match copied {
                Ok(()) => {
                    let cmd = Command::BlobHolders {
                        digest: digest.clone(),
                        add: vec![*target],
                        remove: Vec::new(),
                    };
                    return match self
                        .peers
                        .node()
                        .propose(cmd)
                        .await
                        .map(CommandResult::into_result)
                    {
                        Ok(Ok(())) => Ok(*target),
                        Ok(Err(r)) => Err(r.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                }
                Err(e) => last_error = format!("copy to node {target}: {e}"),
            }
        }
        Err(last_error)
    }

    /// One pass over the blob index, page by page: give every blob held by fewer voters than
    /// needed one more copy, at most `limit` copies. Answers how many were made.
    pub async fn run_once(&self, limit: usize) -> usize {
        let voters = self.voters_except(None);
        let want = self.peers.copies();
        let mut made = 0;
        let mut after: Option<String> = None;
        while made < limit {
            let Ok(page) = self.peers.node().reader().blobs_after(after.as_deref(), PAGE) else {
                break;
            };
            let Some((last, _)) = page.last() else { break };
            after = Some(last.to_string());
            for (digest, record) in page {
                if made >= limit {
                    break;
                }
                let held = voters.iter().filter(|(id, _)| record.nodes.contains(id)).count();
                // A blob pinned on IPFS is durable there: disk copies are a cache.
                let pinned = record.ipfs.as_ref().is_some_and(|i| i.state == PinState::Pinned);
                if held == 0 || held >= want || pinned {
                    continue;
                }
                match self.copy_once(&digest, &record, &voters).await {
                    Ok(node) => {
                        made += 1;
                        self.copies.with_label_values(&["ok"]).inc();
                        tracing::info!(%digest, node, "repaired an under-replicated blob");
                    }
                    Err(e) => {
                        self.copies.with_label_values(&["failed"]).inc();
                        tracing::warn!(%digest, error = %e, "could not repair an under-replicated blob")
                    }
                }
            }
        }
        made
    }

    /// Before `leaving` leaves: every blob it holds gets enough copies on the voters that
    /// stay, and stops counting it as a holder.
    pub async fn evacuate(&self, leaving: NodeId) -> Result<(), String> {
        let voters = self.voters_except(Some(leaving));
        let want = self.peers.replicas_for(voters.len());
        let mut after: Option<String> = None;
        loop {
            let page = self
                .peers
                .node()
                .reader()
                .blobs_after(after.as_deref(), PAGE)
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.to_string());
            for (digest, record) in page {
                if record.nodes.contains(&leaving) {
                    self.evacuate_one(leaving, &voters, want, &digest, record).await?;
                }
            }
        }
        Ok(())
    }

    /// Give one blob of `leaving` enough copies on `voters`, then drop `leaving` as a holder.
    async fn evacuate_one(
        &self,
        leaving: NodeId,
        voters: &[(NodeId, String)],
        want: usize,
        digest: &Digest,
        mut record: BlobRecord,
    ) -> Result<(), String> {
        let staying: BTreeSet<NodeId> = voters.iter().map(|(id, _)| *id).collect();
        // The leaving node is still a source while it is a member.
        let mut sources = voters.to_vec();
        if let Some(url) = self.peers.node().node_url(leaving) {
            sources.push((leaving, url));
        }
        while record.nodes.iter().filter(|n| staying.contains(n)).count() < want {
            let node = self.copy_once(digest, &record, &sources).await?;
            record.nodes.push(node);
        }
        let cmd = Command::BlobHolders {
            digest: digest.clone(),
            add: Vec::new(),
            remove: vec![leaving],
        };
        self.peers.node().propose(cmd).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}
