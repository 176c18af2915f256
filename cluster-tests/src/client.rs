//! A minimal blocking client of the OCI distribution API, for tests that must know exactly
//! what the server acknowledged: every method returns `Ok` only for the spec's success status
//! with the spec's headers, and `Err` (with the status and body) for anything else, including
//! a connection that died mid-request.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};

use crate::sha256_digest;

/// A registry at one base URL.
#[derive(Clone)]
pub struct Registry {
    base: String,
    http: Client,
}

/// A fetched manifest or blob.
pub struct Fetched {
    /// The body.
    pub bytes: Vec<u8>,
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<String>,
    /// `Content-Type`, when sent.
    pub content_type: Option<String>,
}

fn header(r: &Response, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Err` describing an unexpected answer.
fn unexpected<T>(what: &str, r: Response) -> Result<T, String> {
    let status = r.status();
    let body = r.text().unwrap_or_default();
    Err(format!("{what}: status {status}: {body}"))
}

/// The size a `Range: 0-<end>` header states (`0-0` reads as one byte; callers avoid sizes
/// below two where the spec's form is ambiguous).
pub fn range_size(range: &str) -> Result<u64, String> {
    let end = range
        .strip_prefix("0-")
        .and_then(|e| e.parse::<u64>().ok())
        .ok_or_else(|| format!("malformed Range `{range}`"))?;
    Ok(end + 1)
}

/// A blocking HTTP client with the tests' bounded timeouts, no proxy.
pub fn http_client() -> Client {
    Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// The next page a listing's `Link: <path>; rel="next"` header names.
pub fn next_link(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get("Link")
        .and_then(|l| l.to_str().ok())
        .and_then(|l| l.split_once('<'))
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(p, _)| p.to_string())
}

impl Registry {
    /// A client of `base` (`http://127.0.0.1:<port>`), with bounded timeouts.
    pub fn new(base: &str) -> Registry {
        Registry {
            base: base.trim_end_matches('/').to_string(),
            http: http_client(),
        }
    }

    /// Its base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Its HTTP client, for requests this client has no method for.
    pub(crate) fn http(&self) -> &Client {
        &self.http
    }

    /// `path_or_url` against the base URL (an absolute URL stays as it is).
    pub(crate) fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    fn send(&self, what: &str, req: reqwest::blocking::RequestBuilder) -> Result<Response, String> {
        req.send().map_err(|e| format!("{what}: {e}"))
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new session's location (an absolute URL).
    pub fn start_upload(&self, repo: &str) -> Result<String, String> {
        let what = format!("POST upload in {repo}");
        let r = self.send(
            &what,
            self.http
                .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
                .header(CONTENT_LENGTH, "0"),
        )?;
        if r.status() != StatusCode::ACCEPTED {
            return unexpected(&what, r);
        }
        let location = header(&r, LOCATION).ok_or_else(|| format!("{what}: no Location"))?;
        Ok(self.url(&location))
    }

    /// `PATCH <location>` with `chunk` at `offset`; the session size the server acknowledged,
    /// which must be `offset + chunk.len()`.
    pub fn patch(&self, location: &str, offset: u64, chunk: &[u8]) -> Result<u64, String> {
        assert!(!chunk.is_empty(), "empty chunk");
        let end = offset + chunk.len() as u64;
        let what = format!("PATCH {location} bytes {offset}-{}", end - 1);
        let r = self.send(
            &what,
            self.http
                .patch(self.url(location))
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
                .body(chunk.to_vec()),
        )?;
        if r.status() != StatusCode::ACCEPTED {
            return unexpected(&what, r);
        }
        let range = header(&r, RANGE).ok_or_else(|| format!("{what}: no Range"))?;
        let size = range_size(&range).map_err(|e| format!("{what}: {e}"))?;
        if size != end {
            return Err(format!(
                "{what}: acknowledged Range {range}, expected 0-{}",
                end - 1
            ));
        }
        Ok(size)
    }

    /// `PUT <location>?digest=` without a body: close the session.
    pub fn finish(&self, location: &str, digest: &str) -> Result<(), String> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let what = format!("PUT {location} digest {digest}");
        let r = self.send(
            &what,
            self.http
                .put(format!("{}{sep}digest={digest}", self.url(location)))
                .header(CONTENT_LENGTH, "0"),
        )?;
        if r.status() != StatusCode::CREATED {
            return unexpected(&what, r);
        }
        match header(&r, "Docker-Content-Digest") {
            Some(d) if d == digest => Ok(()),
            other => Err(format!("{what}: Docker-Content-Digest {other:?}")),
        }
    }

    /// `GET <location>`: the session's size from its `Range`.
    pub fn upload_status(&self, location: &str) -> Result<u64, String> {
        let what = format!("GET {location}");
        let r = self.send(&what, self.http.get(self.url(location)))?;
        if r.status() != StatusCode::NO_CONTENT {
            return unexpected(&what, r);
        }
        let range = header(&r, RANGE).ok_or_else(|| format!("{what}: no Range"))?;
        range_size(&range).map_err(|e| format!("{what}: {e}"))
    }

    /// Push `bytes` as a blob in chunks split at `cuts` (strictly increasing offsets).
    pub fn push_blob_chunked(&self, repo: &str, bytes: &[u8], cuts: &[usize]) -> Result<String, String> {
        let location = self.start_upload(repo)?;
        let mut offset = 0;
        for &end in cuts.iter().chain([bytes.len()].iter()) {
            if end > offset {
                self.patch(&location, offset as u64, &bytes[offset..end])?;
                offset = end;
            }
        }
        let digest = sha256_digest(bytes);
        self.finish(&location, &digest)?;
        Ok(digest)
    }

    /// `PUT /v2/<repo>/manifests/<reference>`: the digest the server acknowledged, which must
    /// be the digest of `bytes`.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, String> {
        let what = format!("PUT manifest {repo}:{reference}");
        let r = self.send(
            &what,
            self.http
                .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                .header(CONTENT_TYPE, media_type)
                .body(bytes.to_vec()),
        )?;
        if r.status() != StatusCode::CREATED {
            return unexpected(&what, r);
        }
        let expected = sha256_digest(bytes);
        match header(&r, "Docker-Content-Digest") {
            Some(d) if d == expected => Ok(d),
            other => Err(format!(
                "{what}: Docker-Content-Digest {other:?}, expected {expected}"
            )),
        }
    }

    fn fetch(&self, what: String, path: String, accept: Option<&str>) -> Result<Fetched, String> {
        let mut req = self.http.get(self.url(&path));
        if let Some(accept) = accept {
            req = req.header(ACCEPT, accept);
        }
        let r = self.send(&what, req)?;
        if r.status() != StatusCode::OK {
            return unexpected(&what, r);
        }
        let digest = header(&r, "Docker-Content-Digest");
        let content_type = header(&r, CONTENT_TYPE);
        let bytes = r
            .bytes()
            .map_err(|e| format!("{what}: reading body: {e}"))?
            .to_vec();
        Ok(Fetched {
            bytes,
            digest,
            content_type,
        })
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting OCI manifests and indexes.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Fetched, String> {
        self.fetch(
            format!("GET manifest {repo}:{reference}"),
            format!("/v2/{repo}/manifests/{reference}"),
            Some(&format!("{},{}", crate::oci::MANIFEST, crate::oci::INDEX)),
        )
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Fetched, String> {
        self.fetch(
            format!("GET blob {repo}@{digest}"),
            format!("/v2/{repo}/blobs/{digest}"),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_sizes() {
        assert_eq!(range_size("0-9"), Ok(10));
        assert_eq!(range_size("0-0"), Ok(1));
        assert!(range_size("bytes=0-9").is_err());
        assert!(range_size("5-9").is_err());
    }
}
