//! Serving a blob this node does not hold: streamed from a holder (range included), and, for
//! a whole-blob read, kept as a verified local copy on the way.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ipcr_proto::{BlobRecord, Command, Digest};
use tokio::sync::mpsc;

use super::Peers;
use super::transfer::Transfers;
use crate::store::FsStore;
use crate::upload::writer::{BODY_CHANNEL, BodyChunk};

/// A blob's bytes coming from a peer.
pub struct RemoteBlob {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Result<Bytes, String>>,
    cache: Option<mpsc::Sender<BodyChunk>>,
}

impl RemoteBlob {
    fn pass(&mut self, bytes: Bytes) -> Bytes {
        // The copy must never slow the client down: if it cannot keep up, it is given up.
        if let Some(cache) = &self.cache
            && cache.try_send(Ok(bytes.clone())).is_err()
        {
            self.cache = None;
        }
        bytes
    }
}

impl futures::Stream for RemoteBlob {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            let b = self.pass(first);
            return Poll::Ready(Some(Ok(b)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.cache = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(bytes))) => {
                let b = self.pass(bytes);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.cache = None;
                Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
        }
    }
}

/// Open `[start, start + len)` of `digest` on the first holder that answers. A whole-blob read
/// also stores a verified copy here and records this node as a holder.
pub async fn open(
    peers: &Peers,
    transfers: &Transfers,
    store: &FsStore,
    digest: &Digest,
    record: &BlobRecord,
    start: u64,
    len: u64,
) -> Result<RemoteBlob, String> {
    let mut holders = peers.urls(&record.nodes);
    let order = peers.ranked(&digest.to_string());
    holders.sort_by_key(|(id, _)| order.iter().position(|(o, _)| o == id).unwrap_or(usize::MAX));
    let mut last_error = String::from("no member holds the blob");
    for (_, url) in holders {
        let mut rx = transfers.fetch(&url, &format!("/cluster/blobs/{digest}"), start, len);
        let first = match rx.recv().await {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                last_error = e;
                continue;
            }
            None if len == 0 => None,
            None => {
                last_error = format!("{url} sent nothing");
                continue;
            }
        };
        let cache = (start == 0 && len == record.size).then(|| keep_copy(peers, store, digest, record.size));
        return Ok(RemoteBlob { first, rx, cache });
    }
    Err(last_error)
}

/// Write the bytes passing through into a local copy; once complete and verified, store it
/// and record this node as a holder.
fn keep_copy(peers: &Peers, store: &FsStore, digest: &Digest, size: u64) -> mpsc::Sender<BodyChunk> {
    let (tx, rx) = mpsc::channel(BODY_CHANNEL);
    let (peers, store, digest) = (peers.clone(), store.clone(), digest.clone());
    peers.node().runtime().clone().spawn(async move {
        let stored = super::repair::store_verified(&store, &digest, Some(size), rx, "the holder").await;
        if stored.is_ok() {
            let cmd = Command::BlobHolders {
                digest: digest.clone(),
                add: vec![peers.node().id()],
                remove: Vec::new(),
            };
            if let Err(e) = peers.node().propose(cmd).await {
                tracing::debug!(%digest, error = %e, "could not record a cached copy");
            }
        }
    });
    tx
}
