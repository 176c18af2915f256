//! Blob uploads: sessions (one actix actor each), monolithic pushes, and purging of abandoned
//! sessions.
//!
//! Called by `api` (through thin handlers) and by the purge timer; calls `raft` to record
//! every acknowledged chunk and `store` to make verified blobs visible.

mod direct;
mod finish;
pub mod hasher;
pub mod leaves;
pub mod replicate;
pub mod session;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, ArbiterHandle, MailboxError};
use ipcr_proto::{Algorithm, Command, Digest, RepoName};

use crate::cluster::Peers;
use crate::cluster::transfer::Transfers;
use crate::cluster::wire::{FinishHeader, Plan, RemoteError};
use crate::raft::{RaftError, RaftNode};
use crate::store::FsStore;
pub use replicate::Check;
use session::{ChunkInfo, Finish, UploadSession, Write};
use writer::Body;

/// Why an upload request failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No such session in this repository.
    #[error("upload unknown")]
    Unknown,
    /// The chunk does not start at the session's current end.
    #[error("chunk out of order; upload is at {size}")]
    RangeMismatch {
        /// The session's current size.
        size: u64,
    },
    /// The body's length disagrees with its headers.
    #[error("{0}")]
    SizeInvalid(String),
    /// The content does not hash to the claimed digest.
    #[error("digest mismatch: {0}")]
    DigestInvalid(String),
    /// The client's body stream broke off.
    #[error("request body aborted: {0}")]
    Aborted(String),
    /// The cluster could not record the change.
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// A disk fault.
    #[error("upload storage: {0}")]
    Io(#[from] std::io::Error),
    /// A broken invariant.
    #[error("upload internal error: {0}")]
    Internal(String),
}

impl From<MailboxError> for UploadError {
    fn from(e: MailboxError) -> Self {
        match e {
            // Only actors of sessions that ended (finished, cancelled, purged) are stopped, so
            // a closed mailbox means the session is gone.
            MailboxError::Closed => UploadError::Unknown,
            MailboxError::Timeout => UploadError::Internal("upload session did not answer".into()),
        }
    }
}

impl From<RemoteError> for UploadError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Unknown => UploadError::Unknown,
            RemoteError::RangeMismatch(size) => UploadError::RangeMismatch { size },
            RemoteError::SizeInvalid(m) => UploadError::SizeInvalid(m),
            RemoteError::DigestInvalid(m) => UploadError::DigestInvalid(m),
            RemoteError::Aborted(m) => UploadError::Aborted(m),
            RemoteError::Unavailable(m) => UploadError::Raft(RaftError::Unavailable(m)),
            RemoteError::Internal(m) => UploadError::Internal(m),
        }
    }
}

impl From<&UploadError> for RemoteError {
    fn from(e: &UploadError) -> Self {
        match e {
            UploadError::Unknown => RemoteError::Unknown,
            UploadError::RangeMismatch { size } => RemoteError::RangeMismatch(*size),
            UploadError::SizeInvalid(m) => RemoteError::SizeInvalid(m.clone()),
            UploadError::DigestInvalid(m) => RemoteError::DigestInvalid(m.clone()),
            UploadError::Aborted(m) => RemoteError::Aborted(m.clone()),
            UploadError::Raft(RaftError::Unavailable(m)) => RemoteError::Unavailable(m.clone()),
            other => RemoteError::Internal(other.to_string()),
        }
    }
}

/// Run blocking file work on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, UploadError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, UploadError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UploadError::Internal(e.to_string()))?
}

pub use crate::raft::now_ms;

/// What every session actor shares.
pub struct UploadContext {
    raft: RaftNode,
    store: FsStore,
    peers: Peers,
    transfers: Transfers,
    sessions: Mutex<HashMap<String, Addr<UploadSession>>>,
    /// Links per DAG node of blobs' CIDs, when an IPFS backend is configured.
    cid_links: Option<u32>,
}

impl UploadContext {
    /// Drop a stopped session's address, unless a newer actor already took its place.
    fn forget(&self, id: &str, addr: &Addr<UploadSession>) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.get(id) == Some(addr) {
            sessions.remove(id);
        }
    }
}

/// The upload service.
#[derive(Clone)]
pub struct Uploads {
    ctx: Arc<UploadContext>,
    arbiter: ArbiterHandle,
}

impl Uploads {
    /// Sessions' actors run on `arbiter`; their blocking work on the blocking pool. With
    /// `cid_links`, every blob's CID is computed while it is written, with that many links per
    /// DAG node.
    pub fn new(
        raft: RaftNode,
        store: FsStore,
        replicas: usize,
        cid_links: Option<u32>,
        arbiter: ArbiterHandle,
    ) -> Uploads {
        Uploads {
            ctx: Arc::new(UploadContext {
                peers: Peers::new(raft.clone(), replicas),
                transfers: Transfers::new(raft.clone()),
                raft,
                store,
                sessions: Mutex::new(HashMap::new()),
                cid_links,
            }),
            arbiter,
        }
    }

    /// Assemble and store the blob of a finished upload on this node (a peer's request).
    pub async fn materialize(&self, plan: &Plan) -> Result<(), UploadError> {
        replicate::materialize(&self.ctx, plan).await
    }

    /// Open a session; answers its id.
    pub async fn start(&self, repo: RepoName, algorithm: Algorithm) -> Result<String, UploadError> {
        let id = uuid::Uuid::new_v4().to_string();
        let cmd = Command::StartUpload {
            id: id.clone(),
            repo,
            algorithm,
            cid_links: self.ctx.cid_links,
            now_ms: now_ms(),
        };
        match self.ctx.raft.propose(cmd).await?.into_result() {
            Ok(()) => Ok(id),
            Err(r) => Err(UploadError::Internal(r.to_string())),
        }
    }

    /// The session's actor on this node, created from the replicated record when absent.
    ///
    /// The request may follow one answered by another node a moment ago, so the session is
    /// read after the read barrier: this node has applied every acknowledged change of it.
    async fn session(&self, id: &str) -> Result<Addr<UploadSession>, UploadError> {
        self.settled(id).await?;
        let mut sessions = self.ctx.sessions.lock().expect("sessions lock");
        if let Some(addr) = sessions.get(id).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        let record = self.replicated(id)?.ok_or(UploadError::Unknown)?;
        let actor = UploadSession::new(id.to_string(), record, self.ctx.clone())?;
        let addr = UploadSession::start_in_arbiter(&self.arbiter, move |_| actor);
        sessions.insert(id.to_string(), addr.clone());
        Ok(addr)
    }

    /// Append a chunk; answers the new size.
    pub async fn write(
        &self,
        id: &str,
        repo: RepoName,
        info: ChunkInfo,
        body: Body,
    ) -> Result<u64, UploadError> {
        let written = self.session(id).await?.send(Write { repo, info, body }).await?;
        self.gone_if_cancelled(id, written)
    }

    /// A session cancelled while one of its requests ran may have lost its file under it: the
    /// request then failed on the file, and its client is told the session is unknown, as
    /// for any request after the cancel.
    fn gone_if_cancelled<T>(&self, id: &str, result: Result<T, UploadError>) -> Result<T, UploadError> {
        match result {
            Err(UploadError::Io(e))
                if e.kind() == std::io::ErrorKind::NotFound
                    && self.replicated(id).is_ok_and(|u| u.is_none()) =>
            {
                Err(UploadError::Unknown)
            }
            other => other,
        }
    }

    /// Close a session with the blob's digest and an optional last chunk; answers the size.
    pub async fn finish(
        &self,
        id: &str,
        repo: RepoName,
        digest: Digest,
        info: ChunkInfo,
        body: Option<Body>,
    ) -> Result<u64, UploadError> {
        let finished = self
            .session(id)
            .await?
            .send(Finish {
                repo,
                digest,
                info,
                body,
                proxy: true,
            })
            .await?;
        self.gone_if_cancelled(id, finished)
    }

    /// A close proxied here by another node: done on this node.
    pub async fn finish_here(&self, id: &str, header: FinishHeader, body: Body) -> Result<u64, UploadError> {
        let info = ChunkInfo {
            range: header.range,
            content_length: header.content_length,
        };
        self.session(id)
            .await?
            .send(Finish {
                repo: header.repo,
                digest: header.digest,
                info,
                body: Some(body),
                proxy: false,
            })
            .await?
    }

    /// Check that `id` can name a session, then pass the read barrier: this node has applied
    /// every acknowledged change of the session.
    async fn settled(&self, id: &str) -> Result<(), UploadError> {
        // Ids are UUIDs we issued; anything else cannot name a session (and must never reach
        // a file path).
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(UploadError::Unknown);
        }
        Ok(self.ctx.raft.read_barrier().await?)
    }

    /// The session's replicated record as this node has applied it.
    fn replicated(&self, id: &str) -> Result<Option<ipcr_proto::UploadRecord>, UploadError> {
        self.ctx
            .raft
            .reader()
            .upload(id)
            .map_err(|e| UploadError::Internal(e.to_string()))
    }

    /// The replicated record of a session in `repo`, after the read barrier. Not through the
    /// session's actor: status and cancel never wait behind a chunk being written.
    async fn record(&self, id: &str, repo: &RepoName) -> Result<ipcr_proto::UploadRecord, UploadError> {
        self.settled(id).await?;
        self.replicated(id)?
            .filter(|r| &r.repo == repo)
            .ok_or(UploadError::Unknown)
    }

    /// The session's acknowledged size (a chunk still being written does not count).
    pub async fn status(&self, id: &str, repo: RepoName) -> Result<u64, UploadError> {
        Ok(self.record(id, &repo).await?.size)
    }

    /// Cancel a session. A chunk being written meanwhile is refused when it completes (its
    /// session is gone), and this node's actor of the session ends with it.
    pub async fn cancel(&self, id: &str, repo: RepoName) -> Result<(), UploadError> {
        self.record(id, &repo).await?;
        let cmd = Command::CancelUpload { id: id.to_string() };
        match self.ctx.raft.propose(cmd).await?.into_result() {
            Ok(()) => {
                let _ = FsStore::remove_file(&self.ctx.store.upload_path(id));
                Ok(())
            }
            Err(_) => Err(UploadError::Unknown),
        }
    }

    /// A monolithic push (`POST ?digest=` with the body): no session, same guarantees.
    pub async fn put_whole(
        &self,
        repo: RepoName,
        digest: Digest,
        content_length: Option<u64>,
        body: Body,
    ) -> Result<u64, UploadError> {
        let tmp = self.ctx.store.temp_path();
        self.put_whole_via(repo, digest, content_length, body, tmp, Check::Here)
            .await
    }

    /// [`Uploads::put_whole`], written first to `tmp` (a [`FsStore::temp_path`]), which others
    /// may read while it grows, and checked as `check` says: the pull-through cache's fetch of
    /// a blob, whose body was verified on its way.
    pub async fn put_whole_via(
        &self,
        repo: RepoName,
        digest: Digest,
        content_length: Option<u64>,
        body: Body,
        tmp: std::path::PathBuf,
        check: Check,
    ) -> Result<u64, UploadError> {
        let stored = replicate::put_blob(&self.ctx, &digest, content_length, body, tmp, check).await?;
        let size = stored.size;
        let cmd = Command::CommitBlob {
            repo,
            digest,
            size,
            nodes: stored.nodes,
            cid: stored.cid,
            leaves: stored.leaves,
            now_ms: now_ms(),
        };
        match self.ctx.raft.propose(cmd).await?.into_result() {
            Ok(()) => Ok(size),
            Err(r) => Err(UploadError::Internal(r.to_string())),
        }
    }

    /// Sessions with an actor on this node (those it served a request of lately).
    pub fn actors(&self) -> usize {
        self.ctx.sessions.lock().expect("sessions lock").len()
    }

    /// Let the actors of sessions that no longer exist (finished or cancelled through another
    /// node, or purged) stop: the map holds their only address. Answers how many were dropped.
    pub fn sweep(&self) -> Result<usize, UploadError> {
        let mut sessions = self.ctx.sessions.lock().expect("sessions lock");
        let before = sessions.len();
        let mut live = HashMap::new();
        for (id, addr) in sessions.drain() {
            if self.replicated(&id)?.is_some() {
                live.insert(id, addr);
            }
        }
        *sessions = live;
        Ok(before - sessions.len())
    }

    /// Drop sessions untouched for `age` (cluster-wide, through Raft), then remove this node's
    /// files of sessions that no longer exist. Answers how many sessions were purged.
    pub async fn purge(&self, age: Duration, dry_run: bool) -> Result<usize, UploadError> {
        let before_ms = now_ms().saturating_sub(age.as_millis() as u64);
        let reader = self.ctx.raft.reader().clone();
        let stale = reader
            .uploads()
            .map_err(|e| UploadError::Internal(e.to_string()))?
            .into_iter()
            .filter(|(_, u)| u.updated_ms < before_ms)
            .count();
        if dry_run {
            tracing::info!(stale, "upload purge (dry run)");
            return Ok(stale);
        }
        if stale > 0 {
            self.ctx.raft.propose(Command::PurgeUploads { before_ms }).await?;
        }
        let store = self.ctx.store.clone();
        let live: std::collections::HashSet<String> = reader
            .uploads()
            .map_err(|e| UploadError::Internal(e.to_string()))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        blocking(move || Ok(remove_orphans(&store, &live, age)?)).await?;
        Ok(stale)
    }
}

/// Files younger than this are never removed as orphans: a session started after the list of
/// live sessions was read has a file newer than that list.
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// Remove upload files whose session is gone, and temporary files older than `age`.
fn remove_orphans(
    store: &FsStore,
    live: &std::collections::HashSet<String>,
    age: Duration,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(store.uploads_dir())? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let idle = entry.metadata()?.modified()?.elapsed().unwrap_or_default();
        let orphan = if name.starts_with("tmp-") {
            idle > age.max(ORPHAN_GRACE)
        } else {
            !live.contains(&name) && idle > ORPHAN_GRACE
        };
        if orphan {
            tracing::info!(file = %name, "removing abandoned upload file");
            FsStore::remove_file(&entry.path())?;
        }
    }
    Ok(())
}
