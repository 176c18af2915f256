//! Leader-side RPCs for followers (forwarded writes, read indexes) and the administrative
//! endpoints (join, leave, status, garbage collection). Join and leave sent to a follower are forwarded to the
//! leader, so an operator can address any member.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures::StreamExt;
use ipcr_proto::Command;
use ipcr_proto::admin::{ClusterStatus, JoinRequest, LeaveRequest};
use ipcr_proto::gc::{GcEvent, GcRequest};
use serde::Serialize;

use super::{ClusterApi, decoded, encoded};
use crate::raft::membership::ChangeError;
use crate::raft::network::ForwardedWrite;
use crate::registry::Registry;

/// How long a membership change may take (a learner catching up from a snapshot).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(600);

/// `POST /cluster/write`: propose a follower's command.
pub async fn write(state: web::Data<ClusterApi>, body: web::Bytes) -> actix_web::Result<HttpResponse> {
    let cmd: Command = decoded(&body)?;
    let answer: ForwardedWrite = state.node.propose_as_leader(cmd).await;
    Ok(encoded(&answer))
}

/// `POST /cluster/read-index`: a read index for a follower's linearizable read. The (empty,
/// versioned) body is read so that actix keeps the connection: an unread body makes it close
/// the connection after the answer, and the follower would connect anew for every read index.
pub async fn read_index(state: web::Data<ClusterApi>, body: web::Bytes) -> actix_web::Result<HttpResponse> {
    let () = decoded(&body)?;
    Ok(encoded(&state.node.read_index_for_follower().await))
}

/// Run a membership change on the leader: here when this node leads, else by forwarding.
async fn on_leader<T: Serialize + Send + 'static>(
    state: &ClusterApi,
    path: &'static str,
    req: T,
    here: impl Future<Output = Result<(), ChangeError>>,
) -> HttpResponse {
    if state.node.raft().is_leader() {
        return match here.await {
            Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "ok": true })),
            // The request itself cannot succeed: no retry will help.
            Err(ChangeError::Refused(e)) => HttpResponse::UnprocessableEntity().body(e),
            Err(ChangeError::Unavailable(e)) => HttpResponse::ServiceUnavailable().body(e),
        };
    }
    let Some(url) = state
        .node
        .metrics()
        .current_leader
        .and_then(|l| state.node.node_url(l))
    else {
        return HttpResponse::ServiceUnavailable().body("no leader known; retry");
    };
    let client = state.node.client().clone();
    let call = state.node.runtime().spawn(async move {
        let resp = client
            .http()
            .post(format!("{url}{path}"))
            .header("Authorization", client.bearer())
            .json(&req)
            .timeout(MEMBERSHIP_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, text))
    });
    match call.await {
        Ok(Ok((status, text))) => HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
        )
        .content_type("application/json")
        .body(text),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(format!("forwarding to the leader: {e}")),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// `POST /cluster/join`: probe the node, add it as learner, then voter once caught up.
/// `422` when the node cannot be reached (or is not the node it claims to be) or does not
/// catch up: the cluster is left as it was.
pub async fn join(state: web::Data<ClusterApi>, req: web::Json<JoinRequest>) -> HttpResponse {
    let req = req.into_inner();
    tracing::info!(node = req.id, addr = %req.addr, "join requested");
    let here = state.node.add_member(req.id, req.addr.clone());
    on_leader(&state, "/cluster/join", req, here).await
}

/// `POST /cluster/leave`: remove a node (cancelling its join if one is in progress). A leader
/// asked to remove itself first hands leadership to another voter, which then removes it.
pub async fn leave(state: web::Data<ClusterApi>, req: web::Json<LeaveRequest>) -> HttpResponse {
    let req = req.into_inner();
    tracing::info!(node = req.id, "leave requested");
    if req.id == state.node.id() && state.node.raft().is_leader() {
        state.node.hand_off(crate::raft::membership::HAND_OFF).await;
    }
    let (repair, node, id) = (state.repair.clone(), state.node.clone(), req.id);
    let here = async move {
        // Every blob it holds first gets enough copies on the nodes that stay.
        repair.evacuate(id).await.map_err(ChangeError::Unavailable)?;
        node.remove_member(id).await
    };
    on_leader(&state, "/cluster/leave", req, here).await
}

/// `GET /cluster/status`: this node's view of the cluster, as JSON.
pub async fn status(state: web::Data<ClusterApi>) -> HttpResponse {
    HttpResponse::Ok().json(cluster_status(&state.registry))
}

/// This node's view of the cluster: members, Raft indexes, under-replicated blobs, the IPFS
/// backend's progress and garbage collection (one pass over the blob index). Also shown by
/// the web page.
pub fn cluster_status(registry: &Registry) -> ClusterStatus {
    let node = registry.raft();
    let voters = node.members().iter().filter(|(_, _, v)| *v).count();
    let want = registry.replicas().min(voters.max(1));
    let (under, mut ipfs) = node.reader().blob_health(want).unwrap_or_default();
    let ipfs = registry.backend().map(|b| {
        ipfs.backend = b.name().to_string();
        ipfs
    });
    let mut status = node.status(under, ipfs);
    status.gc = node.reader().gc_status().unwrap_or_default();
    status
}

/// `POST /cluster/gc`: run one garbage collection from this node. The answer streams
/// newline-delimited JSON [`GcEvent`]s: progress, then the report (or the failure). The
/// collection goes on if the caller goes away.
pub async fn gc(state: web::Data<ClusterApi>, req: web::Json<GcRequest>) -> HttpResponse {
    let req = req.into_inner();
    let mut options = state.collector.defaults(req.dry_run);
    if let Some(d) = req.delete_untagged {
        options.delete_untagged = d;
    }
    if let Some(g) = req.grace_ms {
        options.grace_ms = g;
    }
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = state.collector.clone();
    state.node.runtime().spawn(async move {
        let last = match collector.run(options, &events).await {
            Ok(report) => GcEvent::Done(report),
            Err(e) => GcEvent::Failed(e.to_string()),
        };
        let _ = events.send(last);
    });
    let events = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let lines = events.map(|event| {
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, actix_web::Error>(web::Bytes::from(line))
    });
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(lines)
}
