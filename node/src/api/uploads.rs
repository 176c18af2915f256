//! Upload handlers: `POST /v2/<name>/blobs/uploads/` (session, monolithic push, mount) and
//! `PATCH`/`PUT`/`GET`/`DELETE` of an upload location.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use ipcr_proto::{Algorithm, Digest, RepoName};

use super::body;
use super::error::{ApiError, upload_range};
use crate::registry::Registry;

/// The location of an upload: relative and the same whichever node answers.
fn location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn session_response(status: StatusCode, repo: &RepoName, id: &str, size: u64) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, location(repo, id)))
        .insert_header((header::RANGE, upload_range(size)))
        .insert_header(("Docker-Upload-UUID", id))
        .insert_header((header::CONTENT_LENGTH, "0"))
        .finish()
}

fn blob_created(repo: &RepoName, digest: &Digest) -> HttpResponse {
    HttpResponseBuilder::new(StatusCode::CREATED)
        .insert_header((header::LOCATION, format!("/v2/{repo}/blobs/{digest}")))
        .insert_header(("Docker-Content-Digest", digest.to_string()))
        .insert_header((header::CONTENT_LENGTH, "0"))
        .finish()
}

/// `POST /v2/<name>/blobs/uploads/[?digest=|?mount=&from=|?digest-algorithm=]`.
pub async fn start_upload(
    req: &HttpRequest,
    payload: body::RequestBody,
    reg: &Registry,
    repo: RepoName,
    digest: Option<Digest>,
    mount: Option<(Digest, Option<RepoName>)>,
    algorithm: Algorithm,
) -> Result<HttpResponse, ApiError> {
    if let Some((blob, Some(from))) = &mount
        && reg.mount(repo.clone(), blob, from).await?
    {
        return Ok(blob_created(&repo, blob));
    }
    if let Some(digest) = digest {
        let length = body::content_length(req)?;
        let uploads = reg.uploads();
        let target = repo.clone();
        let check = digest.clone();
        body::forward(payload, |b| uploads.put_whole(target, check, length, b)).await?;
        return Ok(blob_created(&repo, &digest));
    }
    let id = reg.uploads().start(repo.clone(), algorithm).await?;
    Ok(session_response(StatusCode::ACCEPTED, &repo, &id, 0))
}

/// `PATCH <location>`: append a chunk.
pub async fn patch_upload(
    req: &HttpRequest,
    payload: body::RequestBody,
    reg: &Registry,
    repo: RepoName,
    id: String,
) -> Result<HttpResponse, ApiError> {
    let info = body::chunk_info(req)?;
    let uploads = reg.uploads();
    let target = repo.clone();
    let size = body::forward(payload, |b| uploads.write(&id, target, info, b)).await?;
    Ok(session_response(StatusCode::ACCEPTED, &repo, &id, size))
}

/// `PUT <location>?digest=`: optional last chunk, then close.
pub async fn put_upload(
    req: &HttpRequest,
    payload: body::RequestBody,
    reg: &Registry,
    repo: RepoName,
    id: String,
    digest: Digest,
) -> Result<HttpResponse, ApiError> {
    let info = body::chunk_info(req)?;
    let uploads = reg.uploads();
    let target = repo.clone();
    let check = digest.clone();
    body::forward(payload, |b| uploads.finish(&id, target, check, info, Some(b))).await?;
    Ok(blob_created(&repo, &digest))
}

/// `GET <location>`: the session's progress.
pub async fn get_upload(reg: &Registry, repo: RepoName, id: String) -> Result<HttpResponse, ApiError> {
    let size = reg.uploads().status(&id, repo.clone()).await?;
    Ok(session_response(StatusCode::NO_CONTENT, &repo, &id, size))
}

/// `DELETE <location>`: cancel.
pub async fn delete_upload(reg: &Registry, repo: RepoName, id: String) -> Result<HttpResponse, ApiError> {
    reg.uploads().cancel(&id, repo).await?;
    Ok(HttpResponse::NoContent().finish())
}
