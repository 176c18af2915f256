//! Blobs of proxied repositories. Bytes the cluster already holds are linked into the
//! repository once the upstream confirms it holds them there (a digest alone never opens
//! another repository's content). Otherwise one node of the cluster claims the fetch
//! (`ClaimFetch` in Raft): it streams the upstream's bytes, verified against the digest, to
//! its client and into the upload path at once (`put_whole`: stored, replicated, committed
//! like a push). Other pulls of the blob read that fetch's file as it grows ([`super::tail`]):
//! on the same node directly, on other nodes through the cluster port (and verify it again);
//! where that is not possible (no `Content-Length`) they wait for the commit. Either way the
//! blob is then linked into their repository and served like any blob. A failed fetch
//! releases its claim; a dead node's claim runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use ipcr_client::verify::verified;
use ipcr_proto::{Command, CommandResult, Digest, Reject, RepoName};
use tokio::sync::{mpsc, watch};

use super::tail::{InFlight, Outcome};
use super::{Proxy, Route};
use crate::raft::now_ms;
use crate::registry::{Registry, RegistryError};
use crate::upload::Check;
use crate::upload::writer::BodyChunk;

/// How long a fetch claim runs unless renewed.
const LEASE: Duration = Duration::from_secs(30);
/// How often a running fetch renews its claim.
const RENEW: Duration = Duration::from_secs(10);
/// How often a pull waiting for another node's fetch looks again.
const POLL: Duration = Duration::from_millis(200);
/// How long a pull waits for other nodes' fetches of its blob before giving up.
const WAIT_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Chunks in flight to the store and to the client.
const CHANNEL: usize = 16;

/// What a proxied blob read found.
pub enum Fetched {
    /// The blob is linked in the repository now: serve it as any other.
    Linked,
    /// Its size upstream (a `HEAD`: nothing fetched).
    Size(u64),
    /// This node is fetching it: the bytes as they arrive, verified (an error ends the
    /// stream before its last bytes when they do not match the digest).
    Streaming {
        /// The upstream's `Content-Length`, when it sent one.
        size: Option<u64>,
        /// The bytes.
        body: mpsc::Receiver<Result<Bytes, String>>,
    },
}

fn upstream_error(route: &Route, e: ipcr_client::Error) -> RegistryError {
    match e.status() {
        Some(404) => RegistryError::BlobUnknown,
        _ => RegistryError::Upstream(format!("{}: {e}", route.upstream())),
    }
}

impl Proxy {
    /// Blob `digest` of the proxied `repo`, which the registry does not link there.
    pub async fn blob(
        &self,
        reg: &Registry,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        head: bool,
    ) -> Result<Fetched, RegistryError> {
        if head {
            let size = self.upstream_size(route, digest).await?;
            return Ok(Fetched::Size(size));
        }
        let me = reg.raft().id();
        let deadline = Instant::now() + WAIT_LIMIT;
        // The upstream's size of the blob, asked once (a pull that waits long must not ask the
        // upstream on every look).
        let mut confirmed = None;
        loop {
            if reg.raft().reader().blob_any(digest)?.is_some()
                && self.link(reg, route, repo, digest, &mut confirmed).await?
            {
                return Ok(Fetched::Linked);
            }
            let here = self.fetching.lock().expect("fetching map").get(digest).cloned();
            if let Some(Some(fetch)) = here {
                // Fetched on this node now: read along, once the upstream confirms this
                // repository has the blob.
                self.confirm(route, digest, &mut confirmed).await?;
                tracing::info!(%repo, %digest, "reading along this node's fetch of a blob");
                link_when_committed(reg, repo, digest);
                return Ok(Fetched::Streaming {
                    size: Some(fetch.size),
                    body: fetch.read(),
                });
            }
            let claimed = reg.raft().reader().fetch_claim(digest)?;
            if let Some((node, until)) = claimed
                && node != me
                && until > now_ms()
                && let size = self.confirm(route, digest, &mut confirmed).await?
                && let Some(followed) = self.follow(reg, repo, digest, node, size).await?
            {
                return Ok(followed);
            }
            let free = claimed.is_none_or(|(node, until)| node == me || until <= now_ms());
            if free && let Some(guard) = Fetching::start(&self.fetching, digest) {
                let claim = Command::ClaimFetch {
                    digest: digest.clone(),
                    node: me,
                    now_ms: now_ms(),
                    lease_ms: LEASE.as_millis() as u64,
                };
                match reg.raft().propose(claim).await? {
                    CommandResult::Ok => return self.fetch_blob(reg, route, repo, digest, guard).await,
                    CommandResult::Rejected(Reject::FetchClaimed { .. }) => {}
                    other => return Err(RegistryError::Internal(format!("claiming a fetch: {other:?}"))),
                }
            }
            if Instant::now() > deadline {
                return Err(RegistryError::Upstream(format!(
                    "{digest}: another node's fetch from {} did not finish in {WAIT_LIMIT:?}",
                    route.upstream()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The upstream's size of `digest` in the route's repository, asked once into `confirmed`.
    async fn confirm(
        &self,
        route: &Route,
        digest: &Digest,
        confirmed: &mut Option<u64>,
    ) -> Result<u64, RegistryError> {
        if let Some(size) = confirmed {
            return Ok(*size);
        }
        let size = self.upstream_size(route, digest).await?;
        *confirmed = Some(size);
        Ok(size)
    }

    async fn upstream_size(&self, route: &Route, digest: &Digest) -> Result<u64, RegistryError> {
        route
            .upstream
            .remote
            .blob_size(&route.remote_repo, digest)
            .await
            .map_err(|e| upstream_error(route, e))?
            .ok_or(RegistryError::BlobUnknown)
    }

    /// Link the cluster's copy of `digest` into `repo` once the upstream confirms the
    /// repository holds it; `false` when the copy went meanwhile.
    async fn link(
        &self,
        reg: &Registry,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        confirmed: &mut Option<u64>,
    ) -> Result<bool, RegistryError> {
        self.confirm(route, digest, confirmed).await?;
        let cmd = Command::LinkBlob {
            repo: repo.clone(),
            digest: digest.clone(),
            now_ms: now_ms(),
        };
        Ok(reg.raft().propose(cmd).await? == CommandResult::Ok)
    }

    /// Read node `node`'s fetch of `digest` (`size` bytes, the upstream says) through its
    /// cluster port, verified again here; `None` when it has none to offer (not started,
    /// finished, failed, or no size known).
    async fn follow(
        &self,
        reg: &Registry,
        repo: &RepoName,
        digest: &Digest,
        node: ipcr_proto::NodeId,
        size: u64,
    ) -> Result<Option<Fetched>, RegistryError> {
        let Some((_, url)) = reg.peers().urls(&[node]).into_iter().next() else {
            return Ok(None);
        };
        let mut rx = reg
            .transfers()
            .fetch(&url, &format!("/cluster/fetches/{digest}"), 0, size);
        let first = match rx.recv().await {
            Some(Ok(bytes)) => bytes,
            _ => return Ok(None),
        };
        let rest = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut body = verified(
            futures::stream::iter([Ok(first)]).chain(rest),
            digest.clone(),
            Some(size),
        );
        let (tx, out) = mpsc::channel(CHANNEL);
        actix_web::rt::spawn(async move {
            while let Some(item) = body.next().await {
                let failed = item.is_err();
                if tx.send(item.map_err(|e| e.to_string())).await.is_err() || failed {
                    return;
                }
            }
        });
        tracing::info!(%repo, %digest, node, "reading along another node's fetch of a blob");
        link_when_committed(reg, repo, digest);
        Ok(Some(Fetched::Streaming {
            size: Some(size),
            body: out,
        }))
    }

    /// The fetch of `digest` this node runs now, for other nodes' pulls to read along.
    pub fn in_flight(&self, digest: &Digest) -> Option<InFlight> {
        self.fetching
            .lock()
            .expect("fetching map")
            .get(digest)
            .cloned()
            .flatten()
    }

    /// Fetch `digest` under this node's claim: to the client and into the store at once.
    async fn fetch_blob(
        &self,
        reg: &Registry,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        guard: Fetching,
    ) -> Result<Fetched, RegistryError> {
        let resp = match route.upstream.remote.get_blob(&route.remote_repo, digest).await {
            Ok(r) => r,
            Err(e) => {
                release(reg, digest).await;
                return Err(upstream_error(route, e));
            }
        };
        let size = resp.content_length();
        let (client_tx, client_rx) = mpsc::channel(CHANNEL);
        let (store_tx, store_rx) = mpsc::channel(CHANNEL);
        let body = verified(resp.bytes_stream(), digest.clone(), size);
        let tmp = reg.store().temp_path();
        let outcome = size.map(|n| guard.offer(InFlight::new(tmp.clone(), reg.store().blob_path(digest), n)));
        let (reg, repo, digest, upstream) = (reg.clone(), repo.clone(), digest.clone(), route.upstream());
        // The fetch goes on when the client goes: the next pull finds the blob stored.
        actix_web::rt::spawn(async move {
            let _fetching = guard;
            let store = reg.uploads().put_whole_via(
                repo.clone(),
                digest.clone(),
                size,
                store_rx,
                tmp,
                Check::Verified,
            );
            let work = async { futures::join!(store, pump(body, store_tx, client_tx)).0 };
            let stored = tokio::select! {
                stored = work => stored,
                () = renew(&reg, &digest) => unreachable!("renewing never ends"),
            };
            let ended = match stored {
                Ok(bytes) => {
                    tracing::info!(%repo, %digest, bytes, %upstream, "cached a blob");
                    Outcome::Stored
                }
                Err(e) => {
                    tracing::warn!(%repo, %digest, %upstream, error = %e, "fetching a blob failed");
                    release(&reg, &digest).await;
                    Outcome::Failed(e.to_string())
                }
            };
            if let Some(outcome) = outcome {
                let _ = outcome.send(ended);
            }
        });
        Ok(Fetched::Streaming {
            size,
            body: client_rx,
        })
    }
}

/// This node's mark that it fetches a blob (with the fetch, for others to read along once its
/// size is known); the mark goes with it.
pub(super) struct Fetching {
    map: Arc<Mutex<HashMap<Digest, Option<InFlight>>>>,
    digest: Digest,
}

impl Fetching {
    /// The mark, unless this node fetches `digest` already.
    fn start(map: &Arc<Mutex<HashMap<Digest, Option<InFlight>>>>, digest: &Digest) -> Option<Fetching> {
        let mut fetching = map.lock().expect("fetching map");
        if fetching.contains_key(digest) {
            return None;
        }
        fetching.insert(digest.clone(), None);
        Some(Fetching {
            map: map.clone(),
            digest: digest.clone(),
        })
    }

    /// Let other pulls read `fetch` as it is written; answers the sender of its outcome.
    fn offer(&self, (fetch, outcome): (InFlight, watch::Sender<Outcome>)) -> watch::Sender<Outcome> {
        self.map
            .lock()
            .expect("fetching map")
            .insert(self.digest.clone(), Some(fetch));
        outcome
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.map.lock().expect("fetching map").remove(&self.digest);
    }
}

/// Once `digest` is committed, link it into `repo` (whose pull read it along another's fetch,
/// the upstream having confirmed the repository holds it), so later pulls find it there.
fn link_when_committed(reg: &Registry, repo: &RepoName, digest: &Digest) {
    let (reg, repo, digest) = (reg.clone(), repo.clone(), digest.clone());
    actix_web::rt::spawn(async move {
        let deadline = Instant::now() + WAIT_LIMIT;
        while Instant::now() < deadline {
            let reader = reg.raft().reader();
            if matches!(reader.blob(&repo, &digest), Ok(Some(_))) {
                return;
            }
            if matches!(reader.blob_any(&digest), Ok(Some(_))) {
                let cmd = Command::LinkBlob {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    now_ms: now_ms(),
                };
                if let Err(e) = reg.raft().propose(cmd).await {
                    tracing::debug!(%repo, %digest, error = %e, "could not link a cached blob");
                }
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    });
}

/// Copy `body` to the store and the client; a client that goes away stops getting it, the
/// store keeps getting it. An error goes to both and ends the copy.
async fn pump(
    mut body: impl futures::Stream<Item = Result<Bytes, ipcr_client::verify::VerifyError>> + Unpin,
    store: mpsc::Sender<BodyChunk>,
    client: mpsc::Sender<Result<Bytes, String>>,
) {
    let (mut store, mut client) = (Some(store), Some(client));
    while let Some(item) = body.next().await {
        let item = item.map_err(|e| e.to_string());
        let failed = item.is_err();
        if let Some(s) = &store
            && s.send(item.clone()).await.is_err()
        {
            store = None;
        }
        if let Some(c) = &client
            && c.send(item).await.is_err()
        {
            client = None;
        }
        if failed || (store.is_none() && client.is_none()) {
            return;
        }
    }
}

/// Keep this node's claim on `digest` alive while its fetch runs.
async fn renew(reg: &Registry, digest: &Digest) {
    loop {
        tokio::time::sleep(RENEW).await;
        let claim = Command::ClaimFetch {
            digest: digest.clone(),
            node: reg.raft().id(),
            now_ms: now_ms(),
            lease_ms: LEASE.as_millis() as u64,
        };
        if let Err(e) = reg.raft().propose(claim).await {
            tracing::debug!(%digest, error = %e, "could not renew a fetch claim");
        }
    }
}

async fn release(reg: &Registry, digest: &Digest) {
    let cmd = Command::ReleaseFetch {
        digest: digest.clone(),
        node: reg.raft().id(),
    };
    if let Err(e) = reg.raft().propose(cmd).await {
        tracing::debug!(%digest, error = %e, "could not release a fetch claim");
    }
}
