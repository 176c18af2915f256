//! Serving a blob this node does not hold: streamed from the holders (range included), and, for
//! a whole-blob read, kept as a verified local copy on the way.
//!
//! No single holder can stall a read. Before the client has seen a byte, a holder that has
//! sent nothing after [`FIRST_BYTE_WAIT`] gets company: the next holder is asked too, and the
//! first to send wins (the others are dropped, their requests cancelled). Mid-stream the same:
//! a holder that sends nothing for [`IDLE_TIMEOUT`] keeps its stream while the other holders
//! are asked to continue from the same offset, and whichever sends first goes on (a failed
//! holder is replaced outright). The client sees one unbroken body. A holder that failed or
//! was overtaken goes to the back of the line for a while ([`super::Peers::suspect`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipcr_proto::{BlobRecord, Command, Digest, NodeId};
use tokio::sync::mpsc;

use super::Peers;
use super::transfer::Transfers;
use crate::store::FsStore;
use crate::upload::writer::{BODY_CHANNEL, BodyChunk};

/// How long the first holder asked may take to send its first bytes before the next holder is
/// asked as well.
pub const FIRST_BYTE_WAIT: Duration = Duration::from_millis(250);
/// How long every holder together may take to send a first byte before the read fails.
pub const FIRST_BYTE_LIMIT: Duration = Duration::from_secs(10);
/// How long a holder may send nothing mid-stream before the next holder is asked to continue
/// too (the first of the two to send goes on).
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(250);

type Fetched = mpsc::Receiver<Result<Bytes, String>>;

/// A holder that sent its first bytes: which one, those bytes, and the rest of its stream.
type Opened = (usize, Bytes, Fetched);

type Opening = Pin<Box<dyn Future<Output = Result<Opened, String>> + Send>>;

/// A holder asked, with its first item (`None`: it ended without one) and the rest.
type Asked = Pin<Box<dyn Future<Output = (usize, Option<Result<Bytes, String>>, Fetched)> + Send>>;

/// Where a read's bytes can come from.
#[derive(Clone)]
struct Holders {
    peers: Peers,
    transfers: Transfers,
    /// The holders, best first.
    list: Vec<(NodeId, String)>,
    path: String,
}

impl Holders {
    /// Open `[offset, offset + len)` (never empty) on the first holder to send, trying
    /// `order` (indexes into the list) as described in the module header.
    async fn open(self, order: Vec<usize>, offset: u64, len: u64) -> Result<Opened, String> {
        let mut waiting: FuturesUnordered<Asked> = FuturesUnordered::new();
        let mut queue = order.into_iter();
        let mut last_error = String::from("no member holds the blob");
        let limit = tokio::time::sleep(FIRST_BYTE_LIMIT);
        tokio::pin!(limit);
        loop {
            if waiting.is_empty() {
                let Some(i) = queue.next() else {
                    return Err(last_error);
                };
                waiting.push(self.ask(i, offset, len));
            }
            let more = queue.len() > 0;
            tokio::select! {
                Some((i, first, rx)) = waiting.next() => match first {
                    Some(Ok(bytes)) => return Ok((i, bytes, rx)),
                    Some(Err(e)) => {
                        self.peers.suspect(self.list[i].0);
                        last_error = e;
                    }
                    None => {
                        self.peers.suspect(self.list[i].0);
                        last_error = format!("{} sent nothing", self.list[i].1);
                    }
                },
                () = tokio::time::sleep(FIRST_BYTE_WAIT), if more => {
                    let i = queue.next().expect("more holders");
                    tracing::info!(holder = %self.list[i].1, "a holder is slow to answer; asking the next one too");
                    waiting.push(self.ask(i, offset, len));
                }
                () = &mut limit => {
                    return Err(format!("no holder sent a byte within {FIRST_BYTE_LIMIT:?}; last error: {last_error}"));
                }
            }
        }
    }

    /// Ask holder `i` and wait for its first item.
    fn ask(&self, i: usize, offset: u64, len: u64) -> Asked {
        let mut rx = self.transfers.fetch(&self.list[i].1, &self.path, offset, len);
        Box::pin(async move {
            let first = rx.recv().await;
            (i, first, rx)
        })
    }

    /// Every holder, starting after `current` and ending with it (with one holder, or every
    /// other one down, the same holder is asked again).
    fn after(&self, current: usize) -> Vec<usize> {
        let n = self.list.len();
        (1..=n).map(|k| (current + k) % n).collect()
    }
}

/// A blob's bytes coming from the holders.
pub struct RemoteBlob {
    holders: Holders,
    current: usize,
    first: Option<Bytes>,
    rx: Fetched,
    /// Where the next byte the client gets starts, and where the range ends.
    offset: u64,
    end: u64,
    idle: Pin<Box<tokio::time::Sleep>>,
    /// Other holders asked to continue from `offset` while the current one is silent (or
    /// failed); the first of them to send takes over, unless the current one sends first.
    hedge: Option<Opening>,
    cache: Option<mpsc::Sender<BodyChunk>>,
}

/// A receiver that is already closed, in place of a holder's stream given up on.
fn closed() -> Fetched {
    mpsc::channel(1).1
}

impl RemoteBlob {
    fn pass(&mut self, mut bytes: Bytes) -> Bytes {
        // Never past the range, whatever a holder sends.
        bytes.truncate((self.end - self.offset).min(bytes.len() as u64) as usize);
        self.offset += bytes.len() as u64;
        let next = tokio::time::Instant::now() + IDLE_TIMEOUT;
        self.idle.as_mut().reset(next);
        // The copy must never slow the client down: if it cannot keep up, it is given up.
        if let Some(cache) = &self.cache
            && cache.try_send(Ok(bytes.clone())).is_err()
        {
            self.cache = None;
        }
        bytes
    }

    /// Ask the other holders to continue from the current offset. A current holder that
    /// failed is asked again too, last; one that is only silent keeps its stream meanwhile.
    fn hedge(&mut self, why: &str, failed: bool) {
        let (_, url) = &self.holders.list[self.current];
        tracing::warn!(holder = %url, offset = self.offset, reason = %why, "asking the next holder to continue a blob read");
        let mut order = self.holders.after(self.current);
        if !failed {
            order.pop();
        }
        let (offset, len) = (self.offset, self.end - self.offset);
        self.hedge = Some(Box::pin(self.holders.clone().open(order, offset, len)));
    }

    /// Continue with holder `i`, which sent its first bytes from the current offset.
    fn switch(&mut self, i: usize, rx: Fetched) {
        let (id, url) = &self.holders.list[self.current];
        tracing::warn!(from = %url, to = %self.holders.list[i].1, offset = self.offset, "a blob read resumes from another holder");
        self.holders.peers.suspect(*id);
        self.current = i;
        // Dropping the old stream cancels its request.
        self.rx = rx;
    }

    fn fail(&mut self, e: String) -> Poll<Option<std::io::Result<Bytes>>> {
        self.hedge = None;
        self.cache = None;
        self.end = self.offset;
        Poll::Ready(Some(Err(std::io::Error::other(e))))
    }
}

impl futures::Stream for RemoteBlob {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(this.pass(first))));
        }
        loop {
            if this.offset >= this.end {
                this.hedge = None;
                this.cache = None;
                return Poll::Ready(None);
            }
            // The current holder first: when it sends, a hedge in flight is dropped.
            let failed = match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(bytes))) if !bytes.is_empty() => {
                    this.hedge = None;
                    return Poll::Ready(Some(Ok(this.pass(bytes))));
                }
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => Some(e),
                Poll::Ready(None) => Some("the holder's stream ended early".to_string()),
                Poll::Pending => None,
            };
            if let Some(why) = failed {
                this.holders.peers.suspect(this.holders.list[this.current].0);
                this.rx = closed();
                if this.hedge.is_none() {
                    this.hedge(&why, true);
                }
            }
            let current_gone = this.rx.is_closed() && this.rx.is_empty();
            if let Some(hedge) = &mut this.hedge {
                match hedge.as_mut().poll(cx) {
                    Poll::Ready(Ok((i, first, rx))) => {
                        this.hedge = None;
                        this.switch(i, rx);
                        return Poll::Ready(Some(Ok(this.pass(first))));
                    }
                    Poll::Ready(Err(e)) if current_gone => return this.fail(e),
                    // No other holder; the current one is still there: keep waiting for it.
                    Poll::Ready(Err(_)) => this.hedge = None,
                    Poll::Pending => return Poll::Pending,
                }
            }
            match this.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let next = tokio::time::Instant::now() + IDLE_TIMEOUT;
                    this.idle.as_mut().reset(next);
                    this.hedge(&format!("nothing for {IDLE_TIMEOUT:?}"), false);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Open `[start, start + len)` of `digest` on the holders, as described in the module header.
/// A whole-blob read also stores a verified copy here and records this node as a holder.
pub async fn open(
    peers: &Peers,
    transfers: &Transfers,
    store: &FsStore,
    digest: &Digest,
    record: &BlobRecord,
    start: u64,
    len: u64,
) -> Result<RemoteBlob, String> {
    let holders = Holders {
        peers: peers.clone(),
        transfers: transfers.clone(),
        list: peers.holders(&record.nodes, &digest.to_string()),
        path: format!("/cluster/blobs/{digest}"),
    };
    // An empty range needs no holder (and a `Range` header cannot ask for zero bytes).
    let (current, first, rx, cache) = if len == 0 {
        (0, None, closed(), None)
    } else {
        let order = (0..holders.list.len()).collect();
        let (current, first, rx) = holders.clone().open(order, start, len).await?;
        let cache = (start == 0 && len == record.size).then(|| keep_copy(peers, store, digest, record.size));
        (current, Some(first), rx, cache)
    };
    Ok(RemoteBlob {
        holders,
        current,
        first,
        rx,
        offset: start,
        end: start + len,
        idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
        hedge: None,
        cache,
    })
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
