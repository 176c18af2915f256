//! Manifest handlers: `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use ipcr_proto::manifest::MAX_MANIFEST_SIZE;
use ipcr_proto::{ErrorCode, Reference, RepoName, Tag, media};

use super::body;
use super::error::ApiError;
use crate::proxy::Proxy;
use crate::registry::{Registry, RegistryError};

/// Whether the client's `Accept` headers admit `media_type`. No `Accept`, or a wildcard,
/// admits everything; Docker schema 2 manifests are served whatever the client asks, as
/// distribution does.
pub fn accepts(req: &HttpRequest, media_type: &str) -> bool {
    let mut any = false;
    for value in req.headers().get_all(header::ACCEPT) {
        let Ok(v) = value.to_str() else { continue };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            any = true;
            if t == "*/*" || t == "application/*" || t == media_type {
                return true;
            }
        }
    }
    !any || media_type == media::DOCKER_MANIFEST
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`; through the cache for a proxied repository.
pub async fn get_manifest(
    req: &HttpRequest,
    reg: &Registry,
    repo: RepoName,
    reference: Reference,
    head: bool,
    proxy: Option<&Proxy>,
) -> Result<HttpResponse, ApiError> {
    let m = match proxy.and_then(|p| p.route(&repo).map(|r| (p, r))) {
        Some((p, route)) => p.manifest(reg, &route, &repo, &reference).await?,
        None => reg.manifest(&repo, &reference).await?,
    };
    if !accepts(req, &m.record.media_type) {
        return Err(ApiError::new(
            ErrorCode::ManifestUnknown,
            format!(
                "manifest is {}, which the Accept header does not allow",
                m.record.media_type
            ),
        ));
    }
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CONTENT_TYPE, m.record.media_type.as_str()))
        .insert_header(("Docker-Content-Digest", m.digest.to_string()))
        .insert_header((header::ETAG, format!("\"{}\"", m.digest)));
    if head {
        return Ok(resp.body(body::HeadBody(m.record.bytes.len() as u64)));
    }
    Ok(resp.body(m.record.bytes))
}

/// `PUT /v2/<name>/manifests/<reference>[?tag=...]`.
pub async fn put_manifest(
    req: &HttpRequest,
    payload: body::RequestBody,
    reg: &Registry,
    repo: RepoName,
    reference: Reference,
    tags: Vec<Tag>,
) -> Result<HttpResponse, ApiError> {
    if body::content_length(req)?.is_some_and(|l| l > MAX_MANIFEST_SIZE as u64) {
        return Err(RegistryError::ManifestTooLarge.into());
    }
    let Some(bytes) = body::read_limited(payload, MAX_MANIFEST_SIZE).await? else {
        return Err(RegistryError::ManifestTooLarge.into());
    };
    let extra = !tags.is_empty();
    let pushed = reg
        .put_manifest(repo.clone(), reference, body::content_type(req), bytes, tags)
        .await?;
    let mut resp = HttpResponse::build(StatusCode::CREATED);
    resp.insert_header((
        header::LOCATION,
        format!("/v2/{repo}/manifests/{}", pushed.digest),
    ))
    .insert_header(("Docker-Content-Digest", pushed.digest.to_string()));
    if let Some(subject) = &pushed.subject {
        resp.insert_header(("OCI-Subject", subject.to_string()));
    }
    if extra {
        for t in &pushed.tags {
            resp.append_header(("OCI-Tag", t.as_str()));
        }
    }
    Ok(resp.finish())
}

/// `DELETE /v2/<name>/manifests/<reference>`: a tag, or a manifest with its tags.
pub async fn delete_manifest(
    reg: &Registry,
    repo: RepoName,
    reference: Reference,
) -> Result<HttpResponse, ApiError> {
    reg.delete_manifest(repo, reference).await?;
    Ok(HttpResponse::Accepted().finish())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn accept_negotiation() {
        let none = TestRequest::default().to_http_request();
        assert!(accepts(&none, media::OCI_INDEX));
        let oci = TestRequest::default()
            .insert_header((
                header::ACCEPT,
                format!("{}, {};q=0.5", media::OCI_MANIFEST, media::DOCKER_MANIFEST),
            ))
            .to_http_request();
        assert!(accepts(&oci, media::OCI_MANIFEST));
        assert!(!accepts(&oci, media::OCI_INDEX));
        assert!(accepts(&oci, media::DOCKER_MANIFEST));
        let two = TestRequest::default()
            .append_header((header::ACCEPT, media::OCI_MANIFEST))
            .append_header((header::ACCEPT, media::OCI_INDEX))
            .to_http_request();
        assert!(accepts(&two, media::OCI_INDEX));
        let wild = TestRequest::default()
            .insert_header((header::ACCEPT, "*/*"))
            .to_http_request();
        assert!(accepts(&wild, media::DOCKER_MANIFEST_LIST));
    }
}
