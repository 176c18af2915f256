//! The cluster port: Raft RPCs, writes and read indexes forwarded by followers, membership,
//! status, and peer blob transfer. Never exposed to registry clients.
//!
//! Every request must carry the cluster secret as a bearer token; without it nobody can join,
//! vote, append entries or read a byte.

mod control;
mod raft;
mod transfer;

pub use control::cluster_status;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpResponse, web};

use crate::raft::RaftNode;
use crate::registry::Registry;

/// Largest Raft RPC body accepted (a batch of entries can carry several 4 MiB manifests).
const MAX_RPC_BODY: usize = 512 << 20;

/// What the cluster port's handlers share.
pub struct ClusterApi {
    /// This node's Raft member.
    pub node: RaftNode,
    /// The registry (blob index, for status).
    pub registry: Registry,
    /// The secret every request must present.
    pub secret: String,
    /// Peer transfers.
    pub transfers: crate::cluster::transfer::Transfers,
    /// Re-replication (a leaving node's blobs).
    pub repair: crate::cluster::repair::Repair,
    /// Uploads to the IPFS backend, when one is configured.
    pub pinner: Option<crate::backend::pinner::Pinner>,
    /// Garbage collections run from this node.
    pub collector: crate::registry::gc::Collector,
    /// The pull-through caches, whose fetches in flight other nodes read along.
    pub proxy: Option<std::sync::Arc<crate::proxy::Proxy>>,
}

/// Refuse any request without the cluster secret.
async fn require_secret(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<ClusterApi>>()
        .map(|s| format!("Bearer {}", s.secret))
        .unwrap_or_default();
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if expected.is_empty() || !constant_time_eq::constant_time_eq(given, expected.as_bytes()) {
        tracing::warn!(peer = ?req.peer_addr(), path = %req.path(), "cluster request without the cluster secret");
        let resp = HttpResponse::Unauthorized().body("cluster secret required");
        return Ok(req.into_response(resp).map_into_right_body());
    }
    next.call(req).await.map(|r| r.map_into_left_body())
}

/// The cluster port's application.
pub fn app(
    state: web::Data<ClusterApi>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .app_data(web::PayloadConfig::new(MAX_RPC_BODY))
        .wrap(from_fn(require_secret))
        .route("/raft/append", web::post().to(raft::append))
        .route("/raft/vote", web::post().to(raft::vote))
        .route("/raft/pre-vote", web::post().to(raft::pre_vote))
        .route("/raft/transfer-leader", web::post().to(raft::transfer_leader))
        .route("/raft/snapshot", web::post().to(raft::snapshot))
        .route("/cluster/write", web::post().to(control::write))
        .route("/cluster/read-index", web::post().to(control::read_index))
        .route("/cluster/join", web::post().to(control::join))
        .route("/cluster/leave", web::post().to(control::leave))
        .route("/cluster/status", web::get().to(control::status))
        .route("/cluster/gc", web::post().to(control::gc))
        .route("/cluster/uploads/{id}/chunk", web::put().to(transfer::put_chunk))
        .route(
            "/cluster/uploads/{id}/bytes",
            web::get().to(transfer::get_upload_bytes),
        )
        .route(
            "/cluster/uploads/{id}/materialize",
            web::post().to(transfer::materialize),
        )
        .route("/cluster/uploads/{id}/finish", web::put().to(transfer::finish))
        .route("/cluster/blobs/{digest}", web::get().to(transfer::get_blob))
        .route("/cluster/fetches/{digest}", web::get().to(transfer::get_fetch))
        .route("/cluster/blobs/{digest}", web::put().to(transfer::put_blob))
        .route(
            "/cluster/blobs/{digest}/fetch",
            web::post().to(transfer::fetch_blob),
        )
        .route("/cluster/blobs/{digest}/pin", web::post().to(transfer::pin_blob))
}

/// An encoded (`raft::encode`) answer.
fn encoded<T: serde::Serialize>(value: &T) -> HttpResponse {
    match crate::raft::encode(value) {
        Ok(bytes) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// Decode a request body, or answer 400.
fn decoded<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, actix_web::Error> {
    crate::raft::decode(body).map_err(|e| actix_web::error::ErrorBadRequest(format!("undecodable body: {e}")))
}
