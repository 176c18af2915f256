//! Request bodies and the headers that describe them.
//!
//! Blob bodies are forwarded chunk by chunk through a bounded channel to the blocking writer,
//! never collected; only manifests (at most 4 MiB) are read whole.

use std::future::Future;

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
pub async fn read_limited(mut payload: web::Payload, limit: usize) -> Result<Option<Bytes>, ApiError> {
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
    let s = v.to_str().map_err(|_| invalid())?.trim();
    let s = s.strip_prefix("bytes ").unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(invalid)?;
    let start = a.trim().parse().map_err(|_| invalid())?;
    let end = b.trim().parse().map_err(|_| invalid())?;
    Ok(Some((start, end)))
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
