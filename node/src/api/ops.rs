//! Operational endpoints: `/debug/health` (backend health, distribution's format) and
//! `/ready` (the node can serve: it knows a leader and is applying).

use actix_web::{HttpResponse, web};

use super::ApiState;

/// `GET /debug/health`: `{}` when healthy, `503` naming the failing check otherwise.
pub async fn health(state: web::Data<ApiState>) -> HttpResponse {
    match state.health.problem() {
        None => HttpResponse::Ok().json(serde_json::json!({})),
        Some((check, error)) => HttpResponse::ServiceUnavailable().json(serde_json::json!({ check: error })),
    }
}

/// `GET /ready`: `200` when this node has a leader to commit through, `503` otherwise.
pub async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    let m = state.registry.raft().metrics();
    if m.current_leader.is_some() && state.health.problem().is_none() {
        HttpResponse::Ok().json(serde_json::json!({ "ready": true }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "ready": false }))
    }
}
