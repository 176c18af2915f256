//! Operational endpoints: `/debug/health` (backend health, distribution's format) and
//! `/ready` (the node can serve: it knows a leader and is applying).

use actix_web::{HttpResponse, web};

use super::ApiState;

/// `GET /debug/health`: `{}` when healthy, `503` naming each failing check otherwise.
pub async fn health(state: web::Data<ApiState>) -> HttpResponse {
    let problems = state.health.problems();
    if problems.is_empty() {
        return HttpResponse::Ok().json(serde_json::json!({}));
    }
    let body: serde_json::Map<String, serde_json::Value> = problems
        .into_iter()
        .map(|(check, error)| (check, serde_json::Value::String(error)))
        .collect();
    HttpResponse::ServiceUnavailable().json(body)
}

/// `GET /ready`: `200` when this node has a leader to commit through and a healthy disk,
/// `503` otherwise (an unhealthy IPFS backend does not make a node unready).
pub async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    let m = state.registry.raft().metrics();
    if m.current_leader.is_some() && state.health.disk_problem().is_none() {
        HttpResponse::Ok().json(serde_json::json!({ "ready": true }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "ready": false }))
    }
}
