//! Listing handlers: tags, the catalog, and the referrers API.

use actix_web::HttpResponse;
use actix_web::http::header;
use ipcr_proto::manifest::ReferrersIndex;
use ipcr_proto::{Digest, RepoName, media};
use serde::Serialize;

use super::error::ApiError;
use crate::raft::state::Page;
use crate::registry::Registry;

/// RFC 5988 `Link` to the next page.
fn next_link(base: &str, n: usize, page: &Page) -> Option<String> {
    let last = page.items.last().filter(|_| page.more)?;
    let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
    Some(format!("<{base}?n={n}&last={last}>; rel=\"next\""))
}

fn page_response<T: Serialize>(body: &T, link: Option<String>) -> HttpResponse {
    let mut resp = HttpResponse::Ok();
    if let Some(l) = link {
        resp.insert_header((header::LINK, l));
    }
    resp.json(body)
}

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: &'a [String],
}

/// `GET /v2/<name>/tags/list[?n=&last=]`.
pub async fn list_tags(
    reg: &Registry,
    repo: RepoName,
    n: usize,
    last: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let page = reg.tags(&repo, last.as_deref(), n).await?;
    let link = next_link(&format!("/v2/{repo}/tags/list"), n, &page);
    Ok(page_response(
        &TagList {
            name: repo.as_str(),
            tags: &page.items,
        },
        link,
    ))
}

#[derive(Serialize)]
struct Catalog<'a> {
    repositories: &'a [String],
}

/// `GET /v2/_catalog[?n=&last=]`: the repositories `visible` lets the caller see.
pub async fn get_catalog(
    reg: &Registry,
    n: usize,
    last: Option<String>,
    visible: impl Fn(&str) -> bool,
) -> Result<HttpResponse, ApiError> {
    let page = reg.catalog(last.as_deref(), n, visible).await?;
    let link = next_link("/v2/_catalog", n, &page);
    Ok(page_response(
        &Catalog {
            repositories: &page.items,
        },
        link,
    ))
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`: always an index, empty when none.
pub async fn get_referrers(
    reg: &Registry,
    repo: RepoName,
    subject: Digest,
    artifact_type: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let list = reg.referrers(&repo, &subject, artifact_type.as_deref()).await?;
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CONTENT_TYPE, media::OCI_INDEX));
    if artifact_type.is_some() {
        resp.insert_header(("OCI-Filters-Applied", "artifactType"));
    }
    let body = serde_json::to_vec(&ReferrersIndex::new(list)).map_err(|e| ApiError::internal(&e))?;
    Ok(resp.body(body))
}
