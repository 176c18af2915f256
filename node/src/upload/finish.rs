//! Closing an upload: the work behind the session actor's `Finish`.
//!
//! The node that holds most of the upload's bytes does the work, so that a close arriving at a
//! node holding little (the usual case behind a round-robin balancer) moves no data: the close
//! and its last chunk are proxied there. That node writes the last chunk (on replicas too),
//! checks the digest from the hash midstate, completes its copy from chunks held elsewhere,
//! stores the blob, has enough replicas do the same, and only then records `FinishUpload`.

use std::collections::BTreeMap;

use ipcr_proto::cid::file_cid;
use ipcr_proto::{ChunkRecord, Command, NodeId};

use super::replicate::{self, Written};
use super::session::{Finish, Prepared};
use super::{UploadContext, UploadError, now_ms};
use crate::cluster::wire::{FinishHeader, Plan};
use crate::raft::RaftError;
use crate::store::FsStore;

/// Bytes of the session held by each node.
fn holdings(chunks: &[ChunkRecord]) -> BTreeMap<NodeId, u64> {
    let mut held = BTreeMap::new();
    for c in chunks {
        for n in &c.nodes {
            *held.entry(*n).or_insert(0) += c.len;
        }
    }
    held
}

/// The member holding the most bytes of the session (this node on a tie), with its URL.
fn best_holder(ctx: &UploadContext, chunks: &[ChunkRecord]) -> Option<(NodeId, String)> {
    let me = ctx.raft.id();
    let held = holdings(chunks);
    let mine = held.get(&me).copied().unwrap_or(0);
    let (best, bytes) = held.iter().max_by_key(|(id, b)| (**b, **id == me))?;
    if *best == me || *bytes <= mine {
        return None;
    }
    ctx.peers.urls(&[*best]).into_iter().next()
}

/// Close the session described by `p` as `msg` asks.
pub async fn finish(p: Prepared, msg: Finish) -> Result<u64, UploadError> {
    let ctx = &*p.shared;
    let me = ctx.raft.id();
    let no_body = msg.info.content_length == Some(0) && msg.info.range.is_none();
    if msg.proxy
        && let Some((holder, url)) = best_holder(ctx, &p.record.chunks)
    {
        tracing::debug!(id = %p.id, holder, "close proxied to the node holding most of the upload");
        let header = FinishHeader {
            repo: msg.repo,
            digest: msg.digest,
            range: msg.info.range,
            content_length: msg.info.content_length,
        };
        let body = msg.body.unwrap_or_else(|| tokio::sync::mpsc::channel(1).1);
        return match ctx.transfers.finish_at(&url, &p.id, header, body).await {
            Ok(answer) => answer.map_err(UploadError::from),
            Err(e) => Err(UploadError::Raft(RaftError::Unavailable(format!(
                "the node holding this upload did not answer: {e}"
            )))),
        };
    }

    let mut chunks = p.record.chunks.clone();
    let mut hashes = p.hashes;
    let mut size = p.start;
    if let Some(body) = msg.body.filter(|_| !no_body) {
        let Written {
            hashes: h,
            len,
            nodes,
        } = replicate::write_chunk(ctx, &p.id, p.start, hashes, body, p.expected).await?;
        if len > 0 {
            chunks.push(ChunkRecord {
                offset: p.start,
                len,
                nodes,
                hash: h.content.state(),
            });
            size += len;
        }
        hashes = h;
    }
    // The CID: the leaves the session recorded, then those of the last chunk.
    let (cid, leaves) = match (&p.record.cid, hashes.leaves) {
        (Some(progress), Some(last)) => {
            let mut leaves = progress.leaves.clone();
            leaves.extend(last.finish());
            (Some(file_cid(&leaves, progress.max_links)), leaves)
        }
        _ => (None, Vec::new()),
    };
    let hasher = hashes.content;
    let digest = msg.digest;
    if digest.algorithm() == hasher.algorithm() && hasher.digest() != digest {
        let message = format!("content hashes to {}", hasher.digest());
        return Err(reject_digest(ctx, &p.id, message).await);
    }
    let mut ids: Vec<NodeId> = holdings(&chunks).into_keys().collect();
    ids.retain(|id| *id != me);
    let mut sources = ctx.peers.urls(&ids);
    if let Some(url) = ctx.raft.node_url(me) {
        sources.push((me, url));
    }
    let plan = Plan {
        id: p.id.clone(),
        digest: digest.clone(),
        algorithm: p.record.algorithm,
        chunks,
        sources,
    };
    match replicate::materialize(ctx, &plan).await {
        Ok(()) => {}
        Err(UploadError::DigestInvalid(message)) => return Err(reject_digest(ctx, &p.id, message).await),
        Err(e) => return Err(e),
    }

    // Replicas: nodes already holding most of the bytes first, then rendezvous order.
    let copies = ctx.peers.copies();
    let held = holdings(&plan.chunks);
    let mut candidates = ctx.peers.ranked(&p.id);
    candidates.sort_by_key(|(id, _)| std::cmp::Reverse(held.get(id).copied().unwrap_or(0)));
    let mut nodes = vec![me];
    for (peer, url) in candidates {
        if nodes.len() >= copies {
            break;
        }
        match ctx.transfers.materialize(&url, &plan).await {
            Ok(()) => nodes.push(peer),
            Err(e) => tracing::warn!(peer, error = %e, "replica could not assemble the blob"),
        }
    }
    if nodes.len() < copies {
        return Err(UploadError::Raft(RaftError::Unavailable(format!(
            "only {} of {copies} nodes could store the blob",
            nodes.len()
        ))));
    }
    let cmd = Command::FinishUpload {
        id: p.id.clone(),
        digest,
        size,
        nodes,
        cid,
        leaves,
        now_ms: now_ms(),
    };
    match ctx.raft.propose(cmd).await?.into_result() {
        Ok(()) => {
            let _ = FsStore::remove_file(&p.path);
            Ok(size)
        }
        Err(_) => Err(UploadError::Unknown),
    }
}

/// A wrong digest ends the session: its bytes can never become this blob.
async fn reject_digest(ctx: &UploadContext, id: &str, message: String) -> UploadError {
    let _ = ctx
        .raft
        .propose(Command::CancelUpload { id: id.to_string() })
        .await;
    let _ = FsStore::remove_file(&ctx.store.upload_path(id));
    UploadError::DigestInvalid(message)
}
