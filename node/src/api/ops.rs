//! Operational endpoints: `/debug/health` (backend health, distribution's format) and
//! `/ready` (the node can serve linearizable reads and take writes).

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

/// `GET /ready`: `200` when this node can serve linearizable reads (which proves a leader with a
/// quorum behind it, so writes can commit too) and has a healthy disk; `503` with a short
/// reason otherwise (the details are logged), and from the moment it starts stopping. An
/// unhealthy IPFS backend does not make a node unready. Answers within the read timeout (the
/// longest election timeout).
pub async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    let unready = |reason: String| {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "ready": false, "reason": reason }))
    };
    if state.health.draining() {
        return unready("the node is stopping".into());
    }
    if let Some((check, error)) = state.health.disk_problem() {
        return unready(format!("{check}: {error}"));
    }
    match state.registry.raft().read_barrier().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "ready": true })),
        Err(e) => {
            // The error names peers and their cluster URLs: the log's, not the load balancer's.
            tracing::warn!(error = %e, "not ready: no linearizable read");
            unready("no leader with a quorum answered".into())
        }
    }
}
