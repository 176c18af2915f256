//! Writing upload bytes on this node and on replica nodes before anything is acknowledged, and
//! assembling a finished upload's blob from chunks held on several nodes.
//!
//! A chunk is streamed to the first replica (by rendezvous order of the session id) while it is
//! written here; if that replica fails, the chunk is replayed from this node's file to the
//! next. This node hashes the chunk (SHA-256 midstate, checked against the client's digest at
//! the close); a replica's copy is checked by CRC-32: both sides compute it over the bytes they
//! wrote and must agree, so the midstate holds for the replica's bytes too. Chunks fetched
//! later from a holder (to complete a copy at the close) are checked against the hash chain.

use ipcr_proto::{Algorithm, ChunkRecord, Digest, HashState, NodeId};

use ipcr_proto::cid::file_cid;

use super::hasher::ResumableHasher;
use super::leaves::LeafHasher;
use super::writer::{self, Body, Hashes, Mode};
use super::{UploadContext, UploadError, blocking};
use crate::cluster::wire::{ChunkHeader, Plan};
use crate::raft::RaftError;

/// A chunk written here and on replicas.
pub struct Written {
    /// The hashes after the chunk.
    pub hashes: Hashes,
    /// Bytes written.
    pub len: u64,
    /// Nodes holding it, fsynced and verified (this node first).
    pub nodes: Vec<NodeId>,
}

fn unavailable(msg: String) -> UploadError {
    UploadError::Raft(RaftError::Unavailable(msg))
}

/// Write a chunk of session `id` at `start` here and on as many replicas as the cluster needs.
pub async fn write_chunk(
    ctx: &UploadContext,
    id: &str,
    start: u64,
    hashes: Hashes,
    body: Body,
    expected: Option<u64>,
) -> Result<Written, UploadError> {
    let copies = ctx.peers.copies();
    let peers = ctx.peers.ranked(id);
    let header = ChunkHeader { offset: start };
    let tee = (copies > 1)
        .then(|| peers.first())
        .flatten()
        .map(|(peer, url)| (*peer, ctx.transfers.copy_chunk(url, id, header.clone())));
    let (tee_tx, tee_ack) = match tee {
        Some((peer, (tx, ack))) => (Some(tx), Some((peer, ack))),
        None => (None, None),
    };
    let path = ctx.store.upload_path(id);
    let local_path = path.clone();
    let (hashes, len) =
        blocking(move || writer::write(local_path, start, hashes, body, expected, tee_tx, Mode::Append))
            .await?;
    let crc = hashes.crc;
    let mut nodes = vec![ctx.raft.id()];
    if let Some((peer, ack)) = tee_ack {
        match ack.await {
            Ok(Ok((n, copied))) if n == len && copied == crc => nodes.push(peer),
            Ok(Ok(_)) => tracing::warn!(peer, "replica's copy of a chunk disagrees; trying another"),
            Ok(Err(e)) => tracing::warn!(peer, error = %e, "replica failed a chunk; trying another"),
            Err(e) => tracing::warn!(peer, error = %e, "replica task failed"),
        }
    }
    for (peer, url) in &peers {
        if nodes.len() >= copies {
            break;
        }
        if nodes.contains(peer) {
            continue;
        }
        let copied = ctx
            .transfers
            .copy_chunk_from_file(url, id, header.clone(), path.clone(), len)
            .await;
        match copied {
            Ok((n, copied)) if n == len && copied == crc => nodes.push(*peer),
            Ok(_) => tracing::warn!(peer, "replica's copy of a chunk disagrees"),
            Err(e) => tracing::warn!(peer, error = %e, "replica failed a chunk"),
        }
    }
    if nodes.len() < copies {
        return Err(unavailable(format!(
            "only {} of {copies} nodes could store the chunk",
            nodes.len()
        )));
    }
    Ok(Written { hashes, len, nodes })
}

/// A blob stored by a monolithic push.
pub struct Stored {
    /// Its size.
    pub size: u64,
    /// Nodes holding it (this node first).
    pub nodes: Vec<NodeId>,
    /// Its CID, when an IPFS backend is configured.
    pub cid: Option<String>,
    /// The CID's leaves.
    pub leaves: Vec<ipcr_proto::cid::Leaf>,
}

/// Who checks a whole blob's bytes against its digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// This node, hashing them as it writes them (a client's push).
    Here,
    /// Whoever produced the body: a stream that ends in an error rather than yield its last
    /// bytes unless they hash to the digest (the pull-through cache's verified fetch). Hashing
    /// them again would double the CPU a cached pull costs. Only with a known length: a body
    /// whose sender went away without an error ends early, and only the length tells.
    Verified,
}

/// Write a whole blob (a monolithic push) to the temporary file `tmp` here, check its digest
/// (unless `check` says its body was verified), store it, and have enough replicas store
/// verified copies.
pub async fn put_blob(
    ctx: &UploadContext,
    digest: &Digest,
    content_length: Option<u64>,
    body: Body,
    tmp: std::path::PathBuf,
    check: Check,
) -> Result<Stored, UploadError> {
    let copies = ctx.peers.copies();
    let peers = ctx.peers.ranked(&digest.to_string());
    let tee = (copies > 1)
        .then(|| peers.first())
        .flatten()
        .map(|(peer, url)| (*peer, ctx.transfers.copy_blob(url, digest)));
    let (tee_tx, tee_ack) = match tee {
        Some((peer, (tx, ack))) => (Some(tx), Some((peer, ack))),
        None => (None, None),
    };
    let (store, path, expected) = (ctx.store.clone(), tmp.clone(), digest.clone());
    let leaves = ctx.cid_links.map(LeafHasher::new);
    let check = if content_length.is_some() {
        check
    } else {
        Check::Here
    };
    let hashes = match check {
        Check::Here => Hashes::new(ResumableHasher::new(expected.algorithm()), leaves),
        Check::Verified => Hashes::verified(leaves),
    };
    let stored = blocking(move || {
        let (hashes, size) = writer::write(
            path.clone(),
            0,
            hashes,
            body,
            content_length,
            tee_tx,
            Mode::Append,
        )?;
        if check == Check::Here {
            let actual = hashes.content.digest();
            if actual != expected {
                return Err(UploadError::DigestInvalid(format!("content hashes to {actual}")));
            }
        }
        store.commit(&path, &expected)?;
        let (cid, leaves) = match hashes.leaves {
            Some(l) => {
                let links = l.max_links();
                let leaves = l.finish();
                (Some(file_cid(&leaves, links)), leaves)
            }
            None => (None, Vec::new()),
        };
        Ok((size, cid, leaves))
    })
    .await;
    let _ = crate::store::FsStore::remove_file(&tmp);
    let (size, cid, leaves) = stored?;
    let mut nodes = vec![ctx.raft.id()];
    if let Some((peer, ack)) = tee_ack {
        match ack.await {
            Ok(Ok(())) => nodes.push(peer),
            Ok(Err(e)) => tracing::warn!(peer, error = %e, "replica failed a blob; trying another"),
            Err(e) => tracing::warn!(peer, error = %e, "replica task failed"),
        }
    }
    for (peer, url) in &peers {
        if nodes.len() >= copies {
            break;
        }
        if nodes.contains(peer) {
            continue;
        }
        let path = ctx.store.blob_path(digest);
        match ctx.transfers.copy_blob_from_file(url, digest, path, size).await {
            Ok(()) => nodes.push(*peer),
            Err(e) => tracing::warn!(peer, error = %e, "replica failed a blob"),
        }
    }
    if nodes.len() < copies {
        return Err(unavailable(format!(
            "only {} of {copies} nodes could store the blob",
            nodes.len()
        )));
    }
    Ok(Stored {
        size,
        nodes,
        cid,
        leaves,
    })
}

/// The midstate before chunk `i` of `chunks` (`None` for the first).
fn before(chunks: &[ChunkRecord], i: usize) -> Option<HashState> {
    i.checked_sub(1).map(|p| chunks[p].hash.clone())
}

/// Make this node's copy of the upload complete (fetching the chunks it lacks from their
/// holders, each checked against the hash chain), check the whole blob against the plan's
/// digest, and store it as a blob.
pub async fn materialize(ctx: &UploadContext, plan: &Plan) -> Result<(), UploadError> {
    let me = ctx.raft.id();
    let path = ctx.store.upload_path(&plan.id);
    for (i, chunk) in plan.chunks.iter().enumerate() {
        if chunk.nodes.contains(&me) || chunk.len == 0 {
            continue;
        }
        fill(ctx, plan, i, &path).await?;
    }
    let size = plan.size();
    let (store, digest, algorithm) = (ctx.store.clone(), plan.digest.clone(), plan.algorithm);
    let last = plan.chunks.last().map(|c| c.hash.clone());
    blocking(move || {
        writer::settle(&path, size)?;
        let actual = if digest.algorithm() == algorithm {
            match &last {
                Some(state) => ResumableHasher::resume(state)
                    .map_err(|e| UploadError::Internal(e.to_string()))?
                    .digest(),
                None => ResumableHasher::new(algorithm).digest(),
            }
        } else {
            writer::rehash(&path, size, digest.algorithm())?
        };
        if actual != digest {
            return Err(UploadError::DigestInvalid(format!("content hashes to {actual}")));
        }
        store.commit(&path, &digest)?;
        Ok(())
    })
    .await
}

/// Copy chunk `i` of the plan into this node's upload file from one of its holders.
async fn fill(ctx: &UploadContext, plan: &Plan, i: usize, path: &std::path::Path) -> Result<(), UploadError> {
    let chunk = &plan.chunks[i];
    let holders: Vec<&String> = plan
        .sources
        .iter()
        .filter(|(id, _)| chunk.nodes.contains(id))
        .map(|(_, url)| url)
        .collect();
    let resume = |state: &Option<HashState>, algorithm: Algorithm| match state {
        Some(s) => ResumableHasher::resume(s).map_err(|e| UploadError::Internal(e.to_string())),
        None => Ok(ResumableHasher::new(algorithm)),
    };
    let mut last_error = format!(
        "no reachable holder of bytes {}..{}",
        chunk.offset,
        chunk.offset + chunk.len
    );
    for url in holders {
        let hasher = resume(&before(&plan.chunks, i), plan.algorithm)?;
        let source = format!("/cluster/uploads/{}/bytes", plan.id);
        let fetched = ctx.transfers.fetch(url, &source, chunk.offset, chunk.len);
        let (path, offset, len) = (path.to_path_buf(), chunk.offset, chunk.len);
        let written = blocking(move || {
            writer::write(path, offset, hasher.into(), fetched, Some(len), None, Mode::Fill)
        })
        .await;
        match written {
            Ok((hashes, n)) if n == chunk.len && hashes.content.state() == chunk.hash => return Ok(()),
            Ok(_) => last_error = format!("{url} sent bytes that do not match the upload's hash chain"),
            Err(e) => last_error = format!("{url}: {e}"),
        }
    }
    Err(unavailable(last_error))
}
