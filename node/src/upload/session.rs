//! One upload session on this node: an actix actor that is the only writer of the session's
//! bytes here, handling one request at a time.
//!
//! The actor is created on first use from the replicated session record (so a session started
//! anywhere can be continued here) and keeps the running hasher between chunks. Before each
//! request it re-reads the record, so a chunk accepted by another node, or a cancellation, is
//! seen. It takes only the requests that write (chunks and the close); status and cancel read
//! and change the replicated record directly, never waiting behind a chunk. It stops when its
//! session ends: here (finish), or elsewhere or by a cancel (its next request finds the session
//! gone, or the periodic sweep drops its address).

use std::path::PathBuf;
use std::sync::Arc;

use actix::prelude::*;
use ipcr_proto::cid::CidStep;
use ipcr_proto::{Command, Digest, Reject, RepoName, UploadRecord};

use super::hasher::ResumableHasher;
use super::leaves::LeafHasher;
use super::writer::{Body, Hashes};
use super::{UploadContext, UploadError, finish, now_ms, replicate};

/// What a chunk request carries besides its body.
#[derive(Debug, Clone)]
pub struct ChunkInfo {
    /// `Content-Range` start and inclusive end, when given.
    pub range: Option<(u64, u64)>,
    /// `Content-Length`, when given.
    pub content_length: Option<u64>,
}

impl ChunkInfo {
    /// Check the range against the session's size; returns the expected body length.
    fn check(&self, size: u64) -> Result<Option<u64>, UploadError> {
        match self.range {
            Some((start, _)) if start != size => Err(UploadError::RangeMismatch { size }),
            Some((start, end)) if end < start => Err(UploadError::RangeMismatch { size }),
            Some((start, end)) => {
                let len = (end - start)
                    .checked_add(1)
                    .ok_or_else(|| UploadError::SizeInvalid("Content-Range larger than any upload".into()))?;
                if self.content_length.is_some_and(|cl| cl != len) {
                    return Err(UploadError::SizeInvalid(
                        "Content-Length does not match Content-Range".into(),
                    ));
                }
                Ok(Some(len))
            }
            None => Ok(self.content_length),
        }
    }
}

/// Append a chunk. Answers the session's new size.
#[derive(Message)]
#[rtype(result = "Result<u64, UploadError>")]
pub struct Write {
    /// Repository named in the request URL.
    pub repo: RepoName,
    /// Range and length headers.
    pub info: ChunkInfo,
    /// The chunk's bytes.
    pub body: Body,
}

/// Close the session: optional last chunk, digest check, commit. Answers the blob's size.
#[derive(Message)]
#[rtype(result = "Result<u64, UploadError>")]
pub struct Finish {
    /// Repository named in the request URL.
    pub repo: RepoName,
    /// The digest the client claims for the whole blob.
    pub digest: Digest,
    /// Range and length headers of the last chunk.
    pub info: ChunkInfo,
    /// The last chunk, if the request has a body.
    pub body: Option<Body>,
    /// May the close be proxied to the node holding most of the upload (not when it already
    /// was)?
    pub proxy: bool,
}

/// A checked write request's inputs, owned so the work can leave the actor.
pub(super) struct Prepared {
    /// Where the chunk starts: the session's acknowledged size.
    pub start: u64,
    /// The body's expected length, when known.
    pub expected: Option<u64>,
    /// This node's file of the session.
    pub path: PathBuf,
    /// The hashes at `start`.
    pub hashes: Hashes,
    /// The upload service.
    pub shared: Arc<UploadContext>,
    /// The session id.
    pub id: String,
    /// The replicated session record.
    pub record: UploadRecord,
}

/// The actor.
pub struct UploadSession {
    id: String,
    record: UploadRecord,
    hashes: Hashes,
    path: PathBuf,
    ctx: Arc<UploadContext>,
}

impl UploadSession {
    /// Build the actor from the replicated record.
    pub fn new(id: String, record: UploadRecord, ctx: Arc<UploadContext>) -> Result<Self, UploadError> {
        let hashes = Self::hashes_for(&record)?;
        let path = ctx.store.upload_path(&id);
        Ok(UploadSession {
            id,
            record,
            hashes,
            path,
            ctx,
        })
    }

    /// The hashes after the record's acknowledged bytes.
    fn hashes_for(record: &UploadRecord) -> Result<Hashes, UploadError> {
        let internal = |e: super::hasher::HashStateError| UploadError::Internal(e.to_string());
        let content = match &record.hash {
            Some(state) => ResumableHasher::resume(state).map_err(internal)?,
            None => ResumableHasher::new(record.algorithm),
        };
        let leaves = match &record.cid {
            Some(progress) => Some(LeafHasher::resume(progress, record.size).map_err(internal)?),
            None => None,
        };
        Ok(Hashes::new(content, leaves))
    }

    /// Re-read the replicated record; reload the hasher if another node moved the session on.
    /// A session that no longer exists ends the actor.
    fn refresh(&mut self, repo: &RepoName, ctx: &mut Context<Self>) -> Result<(), UploadError> {
        let Some(record) = self
            .ctx
            .raft
            .reader()
            .upload(&self.id)
            .map_err(|e| UploadError::Internal(e.to_string()))?
        else {
            self.end(ctx);
            return Err(UploadError::Unknown);
        };
        if &record.repo != repo {
            return Err(UploadError::Unknown);
        }
        if record.size != self.record.size {
            self.hashes = Self::hashes_for(&record)?;
        }
        self.record = record;
        Ok(())
    }

    /// What a request that writes needs, after checking it against the replicated session:
    /// where the chunk starts, how long its body must be, and owned copies of the state.
    fn prepare(
        &mut self,
        repo: &RepoName,
        info: &ChunkInfo,
        ctx: &mut Context<Self>,
    ) -> Result<Prepared, UploadError> {
        self.refresh(repo, ctx)?;
        let start = self.record.size;
        Ok(Prepared {
            start,
            expected: info.check(start)?,
            path: self.path.clone(),
            hashes: self.hashes.clone(),
            shared: self.ctx.clone(),
            id: self.id.clone(),
            record: self.record.clone(),
        })
    }

    /// Stop the actor after the current message (the session is over).
    fn end(&mut self, ctx: &mut Context<Self>) {
        self.ctx.forget(&self.id, &ctx.address());
        ctx.stop();
    }
}

impl Actor for UploadSession {
    type Context = Context<Self>;

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.ctx.forget(&self.id, &ctx.address());
    }
}

fn ready<T: 'static>(v: T) -> AtomicResponse<UploadSession, T> {
    AtomicResponse::new(Box::pin(fut::ready(v)))
}

impl Handler<Write> for UploadSession {
    type Result = AtomicResponse<Self, Result<u64, UploadError>>;

    fn handle(&mut self, msg: Write, ctx: &mut Context<Self>) -> Self::Result {
        let p = match self.prepare(&msg.repo, &msg.info, ctx) {
            Ok(p) => p,
            Err(e) => return ready(Err(e)),
        };
        let work = async move {
            let start = p.start;
            let mut w =
                replicate::write_chunk(&p.shared, &p.id, start, p.hashes, msg.body, p.expected).await?;
            if w.len == 0 {
                return Ok((w.hashes, start));
            }
            let cid = w.hashes.leaves.as_mut().map(|l| {
                let (leaves, partial) = l.step();
                CidStep { leaves, partial }
            });
            let cmd = Command::AppendChunk {
                id: p.id,
                offset: start,
                len: w.len,
                nodes: w.nodes,
                hash: w.hashes.content.state(),
                cid,
                now_ms: now_ms(),
            };
            match p.shared.raft.propose(cmd).await?.into_result() {
                Ok(()) => Ok((w.hashes, start + w.len)),
                Err(Reject::RangeMismatch { size }) => Err(UploadError::RangeMismatch { size }),
                Err(_) => Err(UploadError::Unknown),
            }
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(|res, act, ctx| match res {
            Ok((hashes, size)) => {
                act.hashes = hashes;
                act.record.size = size;
                Ok(size)
            }
            Err(UploadError::Unknown) => {
                act.end(ctx);
                Err(UploadError::Unknown)
            }
            Err(e) => Err(e),
        })))
    }
}

impl Handler<Finish> for UploadSession {
    type Result = AtomicResponse<Self, Result<u64, UploadError>>;

    fn handle(&mut self, msg: Finish, ctx: &mut Context<Self>) -> Self::Result {
        let p = match self.prepare(&msg.repo, &msg.info, ctx) {
            Ok(p) => p,
            Err(e) => return ready(Err(e)),
        };
        AtomicResponse::new(Box::pin(finish::finish(p, msg).into_actor(self).map(
            |res, act, ctx| {
                if matches!(
                    res,
                    Ok(_) | Err(UploadError::Unknown | UploadError::DigestInvalid(_))
                ) {
                    act.end(ctx);
                }
                res
            },
        )))
    }
}
