//! Blob handlers: `GET`/`HEAD` (with `Range`; through the cache for a proxied repository)
//! and `DELETE /v2/<name>/blobs/<digest>`.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use futures::StreamExt as _;
use ipcr_proto::{Digest, ErrorCode, RepoName};

use super::body::HeadBody;
use super::error::ApiError;
use crate::proxy::{Fetched, Proxy};
use crate::registry::{Registry, Served};

/// What a `Range` header asks of a blob of a given size.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No (usable) range: the whole blob.
    Full,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// A single range that cannot be served.
    Unsatisfiable,
}

/// Interpret a `Range` header per RFC 9110 for one byte range; several ranges, or a header
/// in another unit, are answered with the whole blob.
pub fn range_ask(value: Option<&str>, size: u64) -> RangeAsk {
    let Some(spec) = value.map(str::trim).and_then(|v| v.strip_prefix("bytes=")) else {
        return RangeAsk::Full;
    };
    if spec.contains(',') {
        return RangeAsk::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Unsatisfiable;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => b
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0 && size > 0)
            .map(|n| (size.saturating_sub(n), size - 1)),
        // `bytes=N-`: from N to the end.
        (false, true) => a.parse::<u64>().ok().filter(|s| *s < size).map(|s| (s, size - 1)),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e && s < size => Some((s, e.min(size - 1))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        Some((s, e)) => RangeAsk::Part(s, e),
        None => RangeAsk::Unsatisfiable,
    }
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
pub async fn get_blob(
    req: &HttpRequest,
    reg: &Registry,
    repo: RepoName,
    digest: Digest,
    head: bool,
    proxy: Option<&Proxy>,
) -> Result<HttpResponse, ApiError> {
    let record = match reg.blob(&repo, &digest).await {
        Ok(r) => r,
        Err(e) if crate::proxy::missing(&e) => {
            let Some((p, route)) = proxy.and_then(|p| p.route(&repo).map(|r| (p, r))) else {
                return Err(e.into());
            };
            match p.blob(reg, &route, &repo, &digest, head).await? {
                Fetched::Linked => reg.blob(&repo, &digest).await?,
                Fetched::Size(size) => return Ok(blob_response(StatusCode::OK, &digest).body(HeadBody(size))),
                Fetched::Streaming { size, mut body } => {
                    // A range asked of a blob being fetched is answered whole (RFC 9110 lets
                    // a server ignore Range); the client gets the bytes as they arrive.
                    let mut resp = blob_response(StatusCode::OK, &digest);
                    if let Some(n) = size {
                        resp.no_chunking(n);
                    }
                    let stream = futures::stream::poll_fn(move |cx| body.poll_recv(cx))
                        .map(|chunk| chunk.map_err(std::io::Error::other));
                    return Ok(resp.streaming(stream));
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    let size = record.size;
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match range_ask(range, size) {
        RangeAsk::Full => (StatusCode::OK, 0, size),
        RangeAsk::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        RangeAsk::Unsatisfiable => {
            return Err(
                ApiError::new(ErrorCode::SizeInvalid, "requested range not satisfiable")
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(header::CONTENT_RANGE, format!("bytes */{size}")),
            );
        }
    };
    let mut resp = blob_response(status, &digest);
    if status == StatusCode::PARTIAL_CONTENT {
        resp.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    if head {
        return Ok(resp.body(HeadBody(len)));
    }
    match reg.read_blob(&digest, &record, start, len).await? {
        Served::Bytes(stream) => {
            resp.no_chunking(len);
            Ok(resp.streaming(stream))
        }
        Served::Redirect(url) => Ok(HttpResponse::TemporaryRedirect()
            .insert_header((header::LOCATION, url))
            .insert_header(("Docker-Content-Digest", digest.to_string()))
            .finish()),
    }
}

/// A blob answer's headers: content-addressed, so cacheable for ever.
fn blob_response(status: StatusCode, digest: &Digest) -> HttpResponseBuilder {
    let mut resp = HttpResponse::build(status);
    resp.insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header(("Docker-Content-Digest", digest.to_string()))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, format!("\"{digest}\"")))
        .insert_header((header::CACHE_CONTROL, "max-age=31536000"));
    resp
}

/// `DELETE /v2/<name>/blobs/<digest>`.
pub async fn delete_blob(reg: &Registry, repo: RepoName, digest: Digest) -> Result<HttpResponse, ApiError> {
    reg.delete_blob(repo, digest).await?;
    Ok(HttpResponse::Accepted().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        let n = 2048;
        assert_eq!(range_ask(None, n), RangeAsk::Full);
        assert_eq!(range_ask(Some("bytes=500-1499"), n), RangeAsk::Part(500, 1499));
        assert_eq!(range_ask(Some("bytes=500-"), n), RangeAsk::Part(500, 2047));
        assert_eq!(range_ask(Some("bytes=-500"), n), RangeAsk::Part(1548, 2047));
        assert_eq!(range_ask(Some("bytes=-5000"), n), RangeAsk::Part(0, 2047));
        assert_eq!(range_ask(Some("bytes=2000-5000"), n), RangeAsk::Part(2000, 2047));
        assert_eq!(range_ask(Some("bytes=500-0"), n), RangeAsk::Unsatisfiable);
        assert_eq!(range_ask(Some("bytes=5000-10000"), n), RangeAsk::Unsatisfiable);
        assert_eq!(range_ask(Some("bytes=2048-"), n), RangeAsk::Unsatisfiable);
        assert_eq!(range_ask(Some("bytes=x-y"), n), RangeAsk::Unsatisfiable);
        assert_eq!(range_ask(Some("bytes=0-1,5-6"), n), RangeAsk::Full);
        assert_eq!(range_ask(Some("items=0-1"), n), RangeAsk::Full);
        assert_eq!(range_ask(Some("bytes=0-0"), 0), RangeAsk::Unsatisfiable);
    }
}
