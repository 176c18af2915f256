//! A blob's bytes as they arrive from another registry, checked against the digest and size
//! they were asked for. The last chunk is held back until the whole stream hashed right, so
//! whoever reads it (a destination registry, a pulling client) never receives all of a wrong
//! blob: the stream ends in an error instead, and an upload or a pull built on it fails.
//!
//! Migrate wraps every blob it copies in it; the pull-through cache every blob it fetches.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use ipcr_proto::digest::{Algorithm, Digest};
use sha2::Digest as _;

/// Why a verified stream ended in an error.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading the source failed.
    #[error("reading the blob: {0}")]
    Source(String),
    /// More bytes than the descriptor's size.
    #[error("the blob is longer than its {expected} bytes")]
    TooLong {
        /// The size asked for.
        expected: u64,
    },
    /// The source ended early.
    #[error("the blob ended after {got} of its {expected} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// The size asked for.
        expected: u64,
    },
    /// The bytes hash to another digest.
    #[error("the bytes served are {got}, not {expected}")]
    Mismatch {
        /// What the bytes hash to.
        got: Digest,
        /// The digest asked for.
        expected: Digest,
    },
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(a: Algorithm) -> Hasher {
        match a {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn finish(&mut self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.finalize_reset()),
            Hasher::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.finalize_reset()),
        }
    }
}

/// `inner`'s chunks, verified against `expected` (and `size`, when known).
pub struct Verified<S> {
    inner: S,
    hasher: Hasher,
    expected: Digest,
    size: Option<u64>,
    seen: u64,
    held: Option<Bytes>,
    done: bool,
}

/// Wrap `inner` so that it yields only bytes that hash to `expected`.
pub fn verified<S, E>(inner: S, expected: Digest, size: Option<u64>) -> Verified<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    Verified {
        inner,
        hasher: Hasher::new(expected.algorithm()),
        expected,
        size,
        seen: 0,
        held: None,
        done: false,
    }
}

impl<S, E> Verified<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    /// The end of the source: the held chunk if everything checks, else the error.
    fn finish(&mut self) -> Option<Result<Bytes, VerifyError>> {
        if let Some(expected) = self.size
            && self.seen != expected
        {
            return Some(Err(VerifyError::Short {
                got: self.seen,
                expected,
            }));
        }
        let got = self.hasher.finish();
        if got != self.expected {
            return Some(Err(VerifyError::Mismatch {
                got,
                expected: self.expected.clone(),
            }));
        }
        self.held.take().map(Ok)
    }
}

impl<S, E> Stream for Verified<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, VerifyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(VerifyError::Source(e.to_string()))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(this.finish());
                }
                Poll::Ready(Some(Ok(chunk))) if chunk.is_empty() => {}
                Poll::Ready(Some(Ok(chunk))) => {
                    this.seen += chunk.len() as u64;
                    if let Some(expected) = this.size
                        && this.seen > expected
                    {
                        this.done = true;
                        return Poll::Ready(Some(Err(VerifyError::TooLong { expected })));
                    }
                    this.hasher.update(&chunk);
                    if let Some(previous) = this.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(previous)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    async fn collect(s: impl Stream<Item = Result<Bytes, VerifyError>> + Unpin) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let items: Vec<_> = s.collect().await;
        for item in items {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn right_bytes_pass_whole() {
        let d = Algorithm::Sha256.digest_bytes(b"hello world");
        let (got, err) = collect(verified(
            chunks(&[b"hello", b"", b" wor", b"ld"]),
            d.clone(),
            Some(11),
        ))
        .await;
        assert_eq!((got.as_slice(), err), (&b"hello world"[..], None));
        let (got, err) = collect(verified(chunks(&[b"hello world"]), d, None)).await;
        assert_eq!((got.len(), err), (11, None));
        let d512 = Algorithm::Sha512.digest_bytes(b"ab");
        let (got, err) = collect(verified(chunks(&[b"a", b"b"]), d512, Some(2))).await;
        assert_eq!((got.len(), err), (2, None));
        let empty = Algorithm::Sha256.digest_bytes(b"");
        let (got, err) = collect(verified(chunks(&[]), empty, Some(0))).await;
        assert_eq!((got.len(), err), (0, None));
    }

    #[tokio::test]
    async fn wrong_bytes_never_arrive_in_full() {
        let d = Algorithm::Sha256.digest_bytes(b"hello world");
        // Same length, other bytes: everything but the held-back last chunk, then the error.
        let (got, err) = collect(verified(chunks(&[b"hello", b" WORLD"]), d.clone(), Some(11))).await;
        assert_eq!(got, b"hello");
        assert!(err.unwrap().contains("not sha256:"));
        let (got, err) = collect(verified(chunks(&[b"hello worl"]), d.clone(), Some(11))).await;
        assert_eq!(
            (got.len(), err.unwrap()),
            (0, "the blob ended after 10 of its 11 bytes".into())
        );
        let (_, err) = collect(verified(chunks(&[b"hello world", b"!"]), d.clone(), Some(11))).await;
        assert!(err.unwrap().contains("longer"));
        let broken = futures::stream::iter(vec![Ok(Bytes::from_static(b"hel")), Err("reset".to_string())]);
        let (got, err) = collect(verified(broken, d, Some(11))).await;
        assert_eq!((got.len(), err.unwrap()), (0, "reading the blob: reset".into()));
    }
}
