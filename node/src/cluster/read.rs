//! Serving a blob this node does not hold: streamed from the holders (range included), and, for
//! a whole-blob read, kept as a verified local copy on the way.
//!
//! No single holder can stall a read. Before the client has seen a byte, a holder that has
//! sent nothing after [`FIRST_BYTE_WAIT`] gets company: the next holder is asked too, and the
//! first to send wins (the others are dropped, their requests cancelled). Mid-stream, a holder
//! that sends nothing for [`IDLE_TIMEOUT`], or fails, is replaced by the next one, which
//! continues at the same offset: the client sees one unbroken body. A holder that failed or
//! hung goes to the back of the line for a while ([`super::Peers::suspect`]).

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
/// How long a holder may send nothing mid-stream before the read moves to the next holder.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

type Fetched = mpsc::Receiver<Result<Bytes, String>>;

/// A holder that sent its first bytes: which one, those bytes (none for an empty range), and
/// the rest of its stream.
type Opened = (usize, Option<Bytes>, Fetched);

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
    /// Open `[offset, offset + len)` on the first holder to send, trying `order` (indexes
    /// into the list) as described in the module header.
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
                    Some(Ok(bytes)) => return Ok((i, Some(bytes), rx)),
                    None if len == 0 => return Ok((i, None, rx)),
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
    reopening: Option<Opening>,
    /// How many times the read moved to another holder.
    resumed: u32,
    cache: Option<mpsc::Sender<BodyChunk>>,
}

/// How many times one read may move to another holder before it fails.
const MAX_RESUMES: u32 = 8;

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

    /// Continue from the next holder at the current offset, dropping the current one's
    /// stream (which cancels its request).
    fn resume(&mut self, why: String) {
        let (id, url) = &self.holders.list[self.current];
        tracing::warn!(holder = %url, offset = self.offset, reason = %why, "resuming a blob read from the next holder");
        self.holders.peers.suspect(*id);
        self.rx = closed();
        self.resumed += 1;
        if self.resumed > MAX_RESUMES {
            let e = format!("gave up after {MAX_RESUMES} changes of holder; last: {why}");
            self.reopening = Some(Box::pin(futures::future::ready(Err(e))));
            return;
        }
        let order = self.holders.after(self.current);
        let (offset, len) = (self.offset, self.end - self.offset);
        self.reopening = Some(Box::pin(self.holders.clone().open(order, offset, len)));
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
            if let Some(opening) = &mut this.reopening {
                match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        this.reopening = None;
                        this.cache = None;
                        this.end = this.offset;
                        return Poll::Ready(Some(Err(std::io::Error::other(e))));
                    }
                    Poll::Ready(Ok((i, first, rx))) => {
                        this.reopening = None;
                        this.current = i;
                        this.rx = rx;
                        if let Some(first) = first {
                            return Poll::Ready(Some(Ok(this.pass(first))));
                        }
                    }
                }
            }
            if this.offset >= this.end {
                this.cache = None;
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(bytes))) => return Poll::Ready(Some(Ok(this.pass(bytes)))),
                Poll::Ready(Some(Err(e))) => this.resume(e),
                Poll::Ready(None) => this.resume("the holder's stream ended early".into()),
                Poll::Pending => match this.idle.as_mut().poll(cx) {
                    Poll::Ready(()) => this.resume(format!("nothing for {IDLE_TIMEOUT:?}")),
                    Poll::Pending => return Poll::Pending,
                },
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
        (current, first, rx, cache)
    };
    Ok(RemoteBlob {
        holders,
        current,
        first,
        rx,
        offset: start,
        end: start + len,
        idle: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
        reopening: None,
        resumed: 0,
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
