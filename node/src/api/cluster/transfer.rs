//! Peer transfer endpoints: chunk copies, chunk and blob reads (with `Range`), assembling a
//! finished upload, a proxied close, blob copies, and repair fetches.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures::StreamExt;
use ipcr_proto::{BlobRecord, Digest};

use super::{ClusterApi, decoded, encoded};
use crate::api::blobs::{RangeAsk, range_ask};
use crate::api::body;
use crate::cluster::wire::{
    ChunkAck, ChunkHeader, FinishAnswer, FinishHeader, Plan, RemoteError, read_header,
};
use crate::store::read::BlobStream;
use crate::upload::writer::{self, Hashes, Mode};

fn session_id(id: &str) -> actix_web::Result<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| actix_web::error::ErrorBadRequest("not an upload session id"))
}

fn digest(d: &str) -> actix_web::Result<Digest> {
    d.parse().map_err(actix_web::error::ErrorBadRequest)
}

/// The payload after a prefixed header, as one stream again.
fn rest(first: Bytes, payload: web::Payload) -> impl futures::Stream<Item = Result<Bytes, String>> + Unpin {
    futures::stream::once(futures::future::ready(Ok(first)))
        .chain(payload.map(|r| r.map_err(|e| e.to_string())))
}

/// `PUT /cluster/uploads/<id>/chunk`: store a replica's copy of a chunk at its offset and
/// answer the midstate after it.
pub async fn put_chunk(
    state: web::Data<ClusterApi>,
    id: web::Path<String>,
    mut payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let id = session_id(&id)?;
    let (header, first): (ChunkHeader, Bytes) = read_header(&mut payload)
        .await
        .map_err(actix_web::error::ErrorBadRequest)?;
    let path = state.registry.store().upload_path(&id);
    let offset = header.offset;
    let written = body::forward(rest(first, payload), |b| {
        crate::upload::blocking(move || {
            writer::write(path, offset, Hashes::crc_only(), b, None, None, Mode::Append)
        })
    })
    .await;
    let ack: ChunkAck = written
        .map(|(hashes, n)| (n, hashes.crc))
        .map_err(|e| e.to_string());
    Ok(encoded(&ack))
}

/// Serve `[start, start + len)` of a file, honouring the request's `Range`.
fn serve_file(req: &HttpRequest, path: &std::path::Path, size: u64) -> actix_web::Result<HttpResponse> {
    let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let (start, len) = match range_ask(range, size) {
        RangeAsk::Full => (0, size),
        RangeAsk::Part(s, e) => (s, e - s + 1),
        RangeAsk::Unsatisfiable => return Ok(HttpResponse::RangeNotSatisfiable().finish()),
    };
    let file = std::fs::File::open(path).map_err(actix_web::error::ErrorNotFound)?;
    let mut resp = HttpResponse::Ok();
    resp.no_chunking(len);
    Ok(resp.streaming(BlobStream::new(file, start, len)))
}

/// `GET /cluster/uploads/<id>/bytes`: bytes of this node's copy of an upload.
pub async fn get_upload_bytes(
    req: HttpRequest,
    state: web::Data<ClusterApi>,
    id: web::Path<String>,
) -> actix_web::Result<HttpResponse> {
    let id = session_id(&id)?;
    let path = state.registry.store().upload_path(&id);
    let size = std::fs::metadata(&path)
        .map_err(actix_web::error::ErrorNotFound)?
        .len();
    serve_file(&req, &path, size)
}

/// `GET /cluster/blobs/<digest>`: a stored blob of this node.
pub async fn get_blob(
    req: HttpRequest,
    state: web::Data<ClusterApi>,
    d: web::Path<String>,
) -> actix_web::Result<HttpResponse> {
    let digest = digest(&d)?;
    let store = state.registry.store();
    let size = store
        .stat(&digest)
        .map_err(actix_web::error::ErrorInternalServerError)?
        .ok_or_else(|| actix_web::error::ErrorNotFound("blob not on this node"))?;
    serve_file(&req, &store.blob_path(&digest), size)
}

/// `GET /cluster/fetches/<digest>`: a blob this node is fetching from a cache's upstream, from
/// its first byte as it is written (`404` when there is no such fetch, or its size is unknown).
pub async fn get_fetch(
    state: web::Data<ClusterApi>,
    d: web::Path<String>,
) -> actix_web::Result<HttpResponse> {
    let digest = digest(&d)?;
    let fetch = state
        .proxy
        .as_ref()
        .and_then(|p| p.in_flight(&digest))
        .ok_or_else(|| actix_web::error::ErrorNotFound("no fetch of this blob on this node"))?;
    let size = fetch.size;
    let mut rx = fetch.read();
    let body =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(|item| item.map_err(std::io::Error::other));
    let mut resp = HttpResponse::Ok();
    resp.content_type("application/octet-stream").no_chunking(size);
    Ok(resp.streaming(body))
}

/// `POST /cluster/uploads/<id>/materialize`: assemble and store a finished upload's blob.
pub async fn materialize(state: web::Data<ClusterApi>, body: web::Bytes) -> actix_web::Result<HttpResponse> {
    let plan: Plan = decoded(&body)?;
    session_id(&plan.id)?;
    let done: Result<(), String> = state
        .registry
        .uploads()
        .materialize(&plan)
        .await
        .map_err(|e| e.to_string());
    Ok(encoded(&done))
}

/// `PUT /cluster/uploads/<id>/finish`: a close proxied here by the node that received it.
pub async fn finish(
    state: web::Data<ClusterApi>,
    id: web::Path<String>,
    mut payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let id = session_id(&id)?;
    let (header, first): (FinishHeader, Bytes) = read_header(&mut payload)
        .await
        .map_err(actix_web::error::ErrorBadRequest)?;
    let uploads = state.registry.uploads().clone();
    let done = body::forward(rest(first, payload), |b| async move {
        uploads.finish_here(&id, header, b).await
    })
    .await;
    let answer: FinishAnswer = done.map_err(|e| RemoteError::from(&e));
    Ok(encoded(&answer))
}

/// `PUT /cluster/blobs/<digest>`: store a replica's copy of a blob, verified against its digest.
pub async fn put_blob(
    state: web::Data<ClusterApi>,
    d: web::Path<String>,
    mut payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let digest = digest(&d)?;
    let ((), first): ((), Bytes) = read_header(&mut payload)
        .await
        .map_err(actix_web::error::ErrorBadRequest)?;
    let store = state.registry.store();
    let stored = body::forward(rest(first, payload), |b| {
        crate::cluster::repair::store_verified(store, &digest, None, b, "the sender")
    })
    .await;
    Ok(encoded(&stored))
}

/// The index entry of a committed blob, read after the read barrier.
async fn committed(state: &ClusterApi, digest: &Digest) -> Result<BlobRecord, String> {
    state.node.read_barrier().await.map_err(|e| e.to_string())?;
    state
        .node
        .reader()
        .blob_any(digest)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "blob not committed".to_string())
}

/// `POST /cluster/blobs/<digest>/pin`: a blob this node holds, uploaded to the IPFS backend on
/// the leader's request.
pub async fn pin_blob(
    state: web::Data<ClusterApi>,
    d: web::Path<String>,
    body: web::Bytes,
) -> actix_web::Result<HttpResponse> {
    let () = decoded(&body)?;
    let digest = digest(&d)?;
    let answer: Result<(), String> = async {
        let pinner = state
            .pinner
            .as_ref()
            .ok_or("no IPFS backend is configured on this node")?;
        let record = committed(&state, &digest).await?;
        pinner.pin_local(&digest, &record).await
    }
    .await;
    Ok(encoded(&answer))
}

/// `POST /cluster/blobs/<digest>/fetch`: make a copy of a blob here, from one of the given
/// holders (repair).
pub async fn fetch_blob(
    state: web::Data<ClusterApi>,
    d: web::Path<String>,
    body: web::Bytes,
) -> actix_web::Result<HttpResponse> {
    let digest = digest(&d)?;
    let sources: Vec<String> = decoded(&body)?;
    let answer: Result<(), String> = async {
        let record = committed(&state, &digest).await?;
        crate::cluster::repair::copy_here(
            &state.transfers,
            state.registry.store(),
            &digest,
            record.size,
            &sources,
        )
        .await
    }
    .await;
    Ok(encoded(&answer))
}
