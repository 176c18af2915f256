//! Request bodies and the headers that describe them.
//!
//! Blob bodies are forwarded chunk by chunk through a bounded channel to the blocking writer,
//! never collected; only manifests (at most 4 MiB) are read whole. Every body is a
//! [`RequestBody`]: one that stalls (`http.bodytimeout`) ends with an error, so a client that
//! stops sending, or trickles a byte a second, cannot hold an upload or a connection forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpRequest;
use actix_web::http::header;
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use ipcr_proto::ErrorCode;
use tokio::sync::mpsc;

use super::error::ApiError;
use crate::upload::session::ChunkInfo;
use crate::upload::writer::{BODY_CHANNEL, Body};

/// A body must deliver this many bytes (or end) within each `http.bodytimeout`.
pub const BODY_PROGRESS: usize = 16 << 10;

/// A request's body, cut off with an error when it stalls: when, while the server waits for
/// it, fewer than [`BODY_PROGRESS`] bytes arrive within the timeout and the body has not ended.
///
/// Only the client's time counts: the clock starts when the server first waits for the body
/// (not while the request waits for its turn), and a pause in reading on the server's side (a
/// slow disk holding the writer back) starts it afresh.
pub struct RequestBody {
    inner: web::Payload,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Whether `deadline` runs: from the first wait after the last [`BODY_PROGRESS`] bytes.
    armed: bool,
    since: usize,
    /// When the last item was handed to the server, which then took its time to ask again.
    handed: Option<tokio::time::Instant>,
    done: bool,
    /// The request's metrics record, which counts the bytes read.
    record: Option<super::metrics::Recorder>,
}

impl RequestBody {
    /// Watch `payload`, allowing `timeout` for each [`BODY_PROGRESS`] bytes.
    pub fn new(payload: web::Payload, timeout: Duration) -> RequestBody {
        RequestBody {
            inner: payload,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            since: 0,
            handed: None,
            done: false,
            record: None,
        }
    }

    /// Count the bytes read in `record` (metrics are on).
    pub fn counted(mut self, record: Option<super::metrics::Recorder>) -> RequestBody {
        self.record = record;
        self
    }
}

impl futures::Stream for RequestBody {
    type Item = Result<Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let now = tokio::time::Instant::now();
        if this.handed.take().is_some_and(|h| now - h > this.timeout / 4) {
            // The server was not reading: the client is not to blame for that time.
            this.armed = false;
            this.since = 0;
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                if let Some(r) = &this.record {
                    r.received(bytes.len());
                }
                this.handed = Some(now);
                this.since += bytes.len();
                if this.since >= BODY_PROGRESS {
                    this.since = 0;
                    this.armed = false;
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e.to_string())))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    this.deadline.as_mut().reset(now + this.timeout);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.done = true;
                        tracing::info!(timeout = ?this.timeout, "request body stalled; cut off");
                        Poll::Ready(Some(Err(format!(
                            "request body stalled: less than {BODY_PROGRESS} bytes in {:?}",
                            this.timeout
                        ))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Run `op` with the request body as a [`Body`] while this task pumps the payload into it.
/// If `op` stops reading early (an error before the body), the pump stops too.
pub async fn forward<S, E, F, Fut, T>(payload: S, op: F) -> T
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
    F: FnOnce(Body) -> Fut,
    Fut: Future<Output = T>,
{
    let (tx, rx) = mpsc::channel(BODY_CHANNEL);
    let pump = async move {
        let mut payload = payload;
        while let Some(chunk) = payload.next().await {
            let item = chunk.map_err(|e| e.to_string());
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    };
    let (out, ()) = futures::join!(op(rx), pump);
    out
}

/// Read a whole body of at most `limit` bytes; `None` when it is longer.
pub async fn read_limited(mut payload: RequestBody, limit: usize) -> Result<Option<Bytes>, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(ErrorCode::ManifestInvalid, format!("reading body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

/// `Content-Length`, when present and valid.
pub fn content_length(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    match req.headers().get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::new(ErrorCode::SizeInvalid, "invalid Content-Length")),
    }
}

/// `Content-Range: <start>-<end>` of an upload chunk (the spec's form; `bytes ` prefix and
/// `/total` suffix tolerated).
pub fn content_range(req: &HttpRequest) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = req.headers().get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let invalid = || ApiError::new(ErrorCode::BlobUploadInvalid, "invalid Content-Range");
    let s = v.to_str().map_err(|_| invalid())?;
    parse_content_range(s).map(Some).ok_or_else(invalid)
}

/// The start and inclusive end of a `Content-Range` value, `None` when it is malformed.
/// Whether the range fits the session is for the session to check. Public so the property
/// tests and the fuzz target can reach it without building an HTTP request.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let s = value.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-')?;
    Some((decimal(a.trim())?, decimal(b.trim())?))
}

/// Digits only: `u64::from_str` also takes a leading `+`, which no range grammar has.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Range and length of an upload chunk.
pub fn chunk_info(req: &HttpRequest) -> Result<ChunkInfo, ApiError> {
    Ok(ChunkInfo {
        range: content_range(req)?,
        content_length: content_length(req)?,
    })
}

/// The request's `Content-Type` without parameters.
pub fn content_type(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim())
        .filter(|s| !s.is_empty())
}

/// The body of a `HEAD` answer: reports the size of what a `GET` would send (so
/// `Content-Length` is right) and sends nothing.
pub struct HeadBody(pub u64);

impl actix_web::body::MessageBody for HeadBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.0)
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, Self::Error>>> {
        std::task::Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(parse_content_range("0-1023"), Some((0, 1023)));
        assert_eq!(parse_content_range(" bytes 10-20/*"), Some((10, 20)));
        assert_eq!(parse_content_range("bytes 10 - 20/100"), Some((10, 20)));
        // The session refuses an end before the start; the parser only reads numbers.
        assert_eq!(parse_content_range("5-0"), Some((5, 0)));
        for bad in [
            "",
            "-",
            "5",
            "5-",
            "-5",
            "a-b",
            "bytes=0-5",
            "18446744073709551616-0",
            "0x1-2",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    /// Found by the `content_range_is_the_spec_form` property: `u64::from_str` takes a
    /// leading `+`, so `+0-+5` was read as `0-5`.
    #[test]
    fn content_range_refuses_signs() {
        for bad in ["+0-0", "0-+5", "bytes +1-2", "1 - +2"] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }
}
