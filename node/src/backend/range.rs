//! A range of a blob that no node holds, read from the IPFS backend leaf by leaf: each 1 MiB
//! leaf the range touches is fetched (a gateway `Range`, or `cat` with `offset` and `length`),
//! checked against its SHA-256 recorded in the blob index, and only then is its part of the
//! range sent. A whole-blob read instead fetches everything and checks the digest.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use ipcr_proto::cid::{CHUNK, Leaf};
use sha2::Digest as _;

use super::{Backend, Source};

/// The verified bytes of a range, as a response body.
pub type RangeBody = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>>>>;

/// Fetch leaf `i` from the first of `sources` that serves bytes matching its hash.
async fn leaf(backend: &Backend, sources: &[Source], leaves: &[Leaf], i: usize) -> Result<Bytes, String> {
    let want = &leaves[i];
    let offset = i as u64 * CHUNK;
    let mut last = String::from("no source");
    for source in sources {
        match backend.fetch_range(source, offset, u64::from(want.len)).await {
            Ok(bytes)
                if bytes.len() == want.len as usize && sha2::Sha256::digest(&bytes)[..] == want.sha256 =>
            {
                return Ok(Bytes::from(bytes));
            }
            Ok(_) => {
                tracing::warn!(%source, leaf = i, "backend served a leaf that does not match its hash");
                last = format!("{source} served leaf {i} with other bytes");
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `[start, start + len)` of the content `cid` whose leaves are `leaves`. The first leaf is
/// fetched and checked before this returns, so a source serving wrong bytes fails the request
/// before any byte is sent; a later leaf that no source serves right ends the body early.
pub async fn open(
    backend: &Backend,
    cid: &str,
    leaves: Vec<Leaf>,
    start: u64,
    len: u64,
) -> Result<RangeBody, String> {
    let sources: Arc<[Source]> = backend.sources(cid).into();
    let leaves: Arc<[Leaf]> = leaves.into();
    let end = start + len;
    let first = (start / CHUNK) as usize;
    let last = if len == 0 {
        first
    } else {
        ((end - 1) / CHUNK) as usize
    };
    if last >= leaves.len() {
        return Err(format!("range beyond the blob's {} leaves", leaves.len()));
    }
    let cut = move |i: usize, bytes: Bytes| {
        let leaf_start = i as u64 * CHUNK;
        let from = start.saturating_sub(leaf_start) as usize;
        let to = ((end - leaf_start) as usize).min(bytes.len());
        bytes.slice(from..to)
    };
    let head = cut(first, leaf(backend, &sources, &leaves, first).await?);
    let backend = backend.clone();
    let rest = futures::stream::unfold(first + 1, move |i| {
        let (backend, sources, leaves) = (backend.clone(), sources.clone(), leaves.clone());
        async move {
            if i > last {
                return None;
            }
            let item = leaf(&backend, &sources, &leaves, i)
                .await
                .map(|b| cut(i, b))
                .map_err(std::io::Error::other);
            // After a failure the body ends: the client sees fewer bytes than announced.
            let next = if item.is_ok() { i + 1 } else { last + 1 };
            Some((item, next))
        }
    });
    Ok(Box::pin(
        futures::stream::once(async move { Ok(head) }).chain(rest),
    ))
}
