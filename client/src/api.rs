//! The OCI distribution API as a client calls it: tags and the catalog page by page,
//! manifests fetched and checked against their digest, blobs streamed, monolithic uploads
//! and cross-repository mounts, and the referrers API.
//!
//! Built on [`Registry::send`]; migrate and the pull-through cache call it.

use bytes::Bytes;
use futures::StreamExt as _;
use ipcr_proto::digest::{Algorithm, Digest};
use ipcr_proto::manifest::{Descriptor, MAX_MANIFEST_SIZE, ManifestError, ManifestInfo, parse_manifest};
use ipcr_proto::media;
use ipcr_proto::names::RepoName;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LINK, LOCATION};
use reqwest::{Response, StatusCode, Url};

use crate::error::Error;
use crate::registry::{Registry, Scope};

/// Every manifest type IPCR stores, for `Accept`. Schema 1 is not asked for.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest as a registry serves it: its bytes untouched, so the digest stays the same.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The bytes.
    pub bytes: Bytes,
    /// Its media type (the response's `Content-Type`, else the body's `mediaType`).
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
}

impl Manifest {
    /// What it references (blobs, child manifests, subject), as the registry validates it.
    pub fn info(&self) -> Result<ManifestInfo, ManifestError> {
        parse_manifest(Some(&self.media_type), &self.bytes)
    }

    /// The descriptor an index (or a referrers list) names it with.
    pub fn descriptor(&self, info: &ManifestInfo) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            urls: None,
            annotations: info.annotations.clone(),
            artifact_type: info.artifact_type.clone(),
            platform: None,
        }
    }
}

/// How a blob upload started.
#[derive(Debug)]
pub enum Upload {
    /// The destination mounted the blob from another repository: nothing to send.
    Mounted,
    /// An upload session: send the bytes to this URL.
    At(Url),
}

/// The next page's URL from a `Link: <...>; rel="next"` header.
fn next_page(reg: &Registry, headers: &HeaderMap) -> Option<Url> {
    let link = headers.get(LINK)?.to_str().ok()?;
    link.split(',')
        .find(|l| l.contains("rel=\"next\"") || l.contains("rel=next"))
        .and_then(|l| {
            let start = l.find('<')? + 1;
            let end = l.find('>')?;
            Some(reg.url(l.get(start..end)?.trim_start_matches('/')))
        })
}

fn digest_header(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Registry {
    async fn fail(&self, what: String, resp: Response) -> Error {
        Error::from_response(self.addr(), &what, resp).await
    }

    fn transport(&self, error: reqwest::Error) -> Error {
        Error::Http {
            registry: self.addr().to_string(),
            error,
        }
    }

    /// The successful answer to the `GET` `build` makes, body read whole (`None` when longer
    /// than `limit`). A body that breaks off is asked for again with the backoff: [`Registry::send`]
    /// retries only what fails before the answer's head. `what` names the request in errors.
    async fn get_whole(
        &self,
        scope: &Scope,
        what: &str,
        limit: usize,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<Option<(HeaderMap, Bytes)>, Error> {
        let mut attempt = 0;
        loop {
            let resp = self.send(scope, &build).await?;
            if !resp.status().is_success() {
                return Err(self.fail(what.to_string(), resp).await);
            }
            let headers = resp.headers().clone();
            match read_limited(resp, limit).await {
                Ok(body) => return Ok(Some((headers, body))),
                Err(None) => return Ok(None),
                Err(Some(e)) => match self.retry().backoff(attempt) {
                    Some(wait) => {
                        tracing::debug!(registry = %self.addr(), what, attempt, ?wait, error = %e, "the body broke off; retrying");
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(self.transport(e)),
                },
            }
        }
    }

    /// Every page of a listing that starts at `first`, each page's names read by `names`.
    async fn paged(
        &self,
        scope: &Scope,
        first: Url,
        names: impl Fn(serde_json::Value) -> Vec<String>,
    ) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let what = format!("GET {}", url.path());
            let protocol = |detail: String| Error::Protocol {
                registry: self.addr().to_string(),
                detail: format!("{what}: {detail}"),
            };
            let (headers, body) = self
                .get_whole(scope, &what, MAX_MANIFEST_SIZE, |c| c.get(url.clone()))
                .await?
                .ok_or_else(|| protocol("a page larger than 4 MiB".into()))?;
            next = next_page(self, &headers);
            let body: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| protocol(format!("not JSON: {e}")))?;
            let page = names(body);
            if page.is_empty() {
                break;
            }
            out.extend(page);
        }
        Ok(out)
    }

    /// Every tag of `repo`.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<String>, Error> {
        let url = self.url(&format!("v2/{repo}/tags/list?n=1000"));
        self.paged(&Scope::pull(repo.as_str()), url, |v| strings(&v["tags"]))
            .await
    }

    /// Every repository the registry lists in `_catalog`.
    pub async fn catalog(&self) -> Result<Vec<String>, Error> {
        let url = self.url("v2/_catalog?n=1000");
        self.paged(&Scope::catalog(), url, |v| strings(&v["repositories"]))
            .await
    }

    /// `GET` a manifest by tag or digest: at most 4 MiB, its digest checked against the
    /// reference (a digest) or the registry's `Docker-Content-Digest` (a tag).
    pub async fn get_manifest(&self, repo: &RepoName, reference: &str) -> Result<Manifest, Error> {
        let what = format!("GET /v2/{repo}/manifests/{reference}");
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let protocol = |detail: String| Error::Protocol {
            registry: self.addr().to_string(),
            detail: format!("{what}: {detail}"),
        };
        let (headers, bytes) = self
            .get_whole(&Scope::pull(repo.as_str()), &what, MAX_MANIFEST_SIZE, |c| {
                c.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?
            .ok_or_else(|| protocol("larger than 4 MiB".into()))?;
        let claimed = digest_header(&headers);
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .filter(|ct| media::MANIFEST_TYPES.contains(&ct.as_str()) || media::is_schema1(ct));
        let expected: Option<Digest> = reference.parse().ok().or(claimed);
        let algorithm = expected.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
        let digest = algorithm.digest_bytes(&bytes);
        if let Some(e) = expected
            && e != digest
        {
            return Err(protocol(format!("the bytes served are {digest}, not {e}")));
        }
        let media_type = match content_type {
            Some(ct) => ct,
            None => body_media_type(&bytes).ok_or_else(|| protocol("no manifest media type".into()))?,
        };
        if media::is_schema1(&media_type) {
            return Err(protocol("Docker schema 1 manifests are not supported".into()));
        }
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// The digest `reference` names in `repo`, or `None` when it is not there.
    pub async fn head_manifest(&self, repo: &RepoName, reference: &str) -> Result<Option<Digest>, Error> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(&Scope::pull(repo.as_str()), |c| {
                c.head(url.clone()).header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match digest_header(resp.headers()) {
                Some(d) => Ok(Some(d)),
                // A registry that does not name the digest: read the manifest instead.
                None => Ok(Some(self.get_manifest(repo, reference).await?.digest)),
            },
            _ => Err(self
                .fail(format!("HEAD /v2/{repo}/manifests/{reference}"), resp)
                .await),
        }
    }

    /// `PUT` `m` under `reference` (a tag, or its digest). Returns whether the registry
    /// indexed its subject for the referrers API (the `OCI-Subject` answer).
    pub async fn put_manifest(&self, repo: &RepoName, reference: &str, m: &Manifest) -> Result<bool, Error> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"));
        let resp = self
            .send(&Scope::push(repo.as_str()), |c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, &m.media_type)
                    .body(m.bytes.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .fail(format!("PUT /v2/{repo}/manifests/{reference}"), resp)
                .await);
        }
        Ok(resp.headers().contains_key("oci-subject"))
    }

    /// The size of blob `digest` in `repo`, or `None` when it is not there.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, Error> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(&Scope::pull(repo.as_str()), |c| c.head(url.clone()))
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(
                resp.headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0),
            )),
            _ => Err(self.fail(format!("HEAD /v2/{repo}/blobs/{digest}"), resp).await),
        }
    }

    /// `GET` blob `digest` of `repo`, following redirects to storage; the caller streams the
    /// body (and checks its digest: this does not).
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Response, Error> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"));
        let resp = self
            .send(&Scope::pull(repo.as_str()), |c| c.get(url.clone()))
            .await?;
        if !resp.status().is_success() {
            return Err(self.fail(format!("GET /v2/{repo}/blobs/{digest}"), resp).await);
        }
        Ok(resp)
    }

    /// Start an upload to `repo`, asking to mount `digest` from repository `from` when given.
    pub async fn start_upload(
        &self,
        repo: &RepoName,
        mount: Option<(&Digest, &RepoName)>,
    ) -> Result<Upload, Error> {
        let (scope, path) = match mount {
            Some((d, from)) => (
                Scope::mount(repo.as_str(), from.as_str()),
                format!("v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
            ),
            None => (Scope::push(repo.as_str()), format!("v2/{repo}/blobs/uploads/")),
        };
        let url = self.url(&path);
        let resp = self
            .send(&scope, |c| c.post(url.clone()).header(CONTENT_LENGTH, "0"))
            .await?;
        let status = resp.status();
        if status == StatusCode::CREATED && mount.is_some() {
            return Ok(Upload::Mounted);
        }
        if status != StatusCode::ACCEPTED {
            return Err(self.fail(format!("POST /v2/{repo}/blobs/uploads/"), resp).await);
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Protocol {
                registry: self.addr().to_string(),
                detail: "an upload started without a Location".into(),
            })?;
        let url = Url::parse(location).or_else(|_| self.base_join(location))?;
        Ok(Upload::At(url))
    }

    fn base_join(&self, location: &str) -> Result<Url, Error> {
        self.url("").join(location).map_err(|e| Error::Protocol {
            registry: self.addr().to_string(),
            detail: format!("Location {location:?}: {e}"),
        })
    }

    /// Close upload `at` with all of the blob's `size` bytes in one `PUT`: `body` is
    /// consumed, so this is sent once (a failure is retried by starting the copy again).
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        at: Url,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), Error> {
        let mut url = at;
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let mut req = self
            .http()
            .put(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        if let Some(auth) = self.authorization(&Scope::push(repo.as_str())).await? {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.fail(format!("PUT upload of {digest} to {repo}"), resp).await);
        }
        Ok(())
    }

    /// The referrers of `digest` in `repo` through the referrers API, or `None` when the
    /// registry has no such API (a `404`; a registry with it answers an empty index).
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, Error> {
        let url = self.url(&format!("v2/{repo}/referrers/{digest}"));
        let what = format!("GET /v2/{repo}/referrers/{digest}");
        let answer = self
            .get_whole(&Scope::pull(repo.as_str()), &what, MAX_MANIFEST_SIZE, |c| {
                c.get(url.clone())
            })
            .await;
        let body = match answer {
            Ok(Some((_, body))) => body,
            Ok(None) => {
                return Err(Error::Protocol {
                    registry: self.addr().to_string(),
                    detail: "a referrers index larger than 4 MiB".into(),
                });
            }
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(index_entries(&body).map_err(|detail| Error::Protocol {
            registry: self.addr().to_string(),
            detail: format!("referrers of {digest}: {detail}"),
        })?))
    }
}

/// The `manifests` of an index's JSON.
pub fn index_entries(body: &[u8]) -> Result<Vec<Descriptor>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    serde_json::from_slice::<Index>(body)
        .map(|i| i.manifests)
        .map_err(|e| e.to_string())
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn body_media_type(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => Some(m.to_string()),
        None if v.get("manifests").is_some() => Some(media::OCI_INDEX.into()),
        None if v.get("config").is_some() => Some(media::OCI_MANIFEST.into()),
        None => None,
    }
}

/// A response body of at most `limit` bytes; `Err(None)` when it is longer.
async fn read_limited(resp: Response, limit: usize) -> Result<Bytes, Option<reqwest::Error>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(None);
    }
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Some)?;
        if out.len() + chunk.len() > limit {
            return Err(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_come_from_the_body_when_the_header_has_none() {
        assert_eq!(
            body_media_type(br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#)
                .as_deref(),
            Some(media::DOCKER_MANIFEST)
        );
        assert_eq!(
            body_media_type(br#"{"manifests":[]}"#).as_deref(),
            Some(media::OCI_INDEX)
        );
        assert_eq!(
            body_media_type(br#"{"config":{}}"#).as_deref(),
            Some(media::OCI_MANIFEST)
        );
        assert_eq!(body_media_type(b"{}"), None);
        assert_eq!(body_media_type(b"nope"), None);
    }

    #[test]
    fn index_entries_read_descriptors() {
        let d = format!("sha256:{}", "b".repeat(64));
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{d}","size":3,"artifactType":"x/y"}}]}}"#,
            media::OCI_MANIFEST
        );
        let e = index_entries(body.as_bytes()).unwrap();
        assert_eq!(
            (e[0].digest.to_string(), e[0].artifact_type.as_deref()),
            (d, Some("x/y"))
        );
        assert!(index_entries(b"{}").is_err());
        assert!(index_entries(b"[]").is_err());
    }
}
