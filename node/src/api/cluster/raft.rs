//! openraft's RPCs, received: append entries, vote, transfer leadership, and full snapshots
//! streamed into a file.

use actix_web::{HttpResponse, web};
use futures::StreamExt;
use std::future::Future;

use openraft::errors::RaftError;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::type_config::alias::SnapshotOf;
use tokio::io::AsyncWriteExt;

use super::{ClusterApi, decoded, encoded};
use crate::raft::TypeConfig;
use crate::raft::network::SnapshotHeader;
use crate::raft::snapshot::SnapshotFile;

/// Run an openraft call on the Raft runtime and encode its answer.
async fn on_raft<T, F>(state: &ClusterApi, call: F) -> HttpResponse
where
    T: serde::Serialize + Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    match state.node.runtime().spawn(call).await {
        Ok(answer) => encoded(&answer),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// `POST /raft/append`.
pub async fn append(state: web::Data<ClusterApi>, body: web::Bytes) -> actix_web::Result<HttpResponse> {
    let req: AppendEntriesRequest<TypeConfig> = decoded(&body)?;
    let raft = state.node.raft().clone();
    Ok(on_raft(&state, async move { raft.append_entries(req).await }).await)
}

/// `POST /raft/vote`.
pub async fn vote(state: web::Data<ClusterApi>, body: web::Bytes) -> actix_web::Result<HttpResponse> {
    let req: VoteRequest<TypeConfig> = decoded(&body)?;
    let raft = state.node.raft().clone();
    Ok(on_raft(&state, async move { raft.vote(req).await }).await)
}

/// `POST /raft/pre-vote`.
pub async fn pre_vote(state: web::Data<ClusterApi>, body: web::Bytes) -> actix_web::Result<HttpResponse> {
    let req: VoteRequest<TypeConfig> = decoded(&body)?;
    let raft = state.node.raft().clone();
    Ok(on_raft(&state, async move { raft.pre_vote(req).await }).await)
}

/// `POST /raft/transfer-leader`.
pub async fn transfer_leader(
    state: web::Data<ClusterApi>,
    body: web::Bytes,
) -> actix_web::Result<HttpResponse> {
    let req: TransferLeaderRequest<TypeConfig> = decoded(&body)?;
    let raft = state.node.raft().clone();
    Ok(on_raft(&state, async move {
        raft.handle_transfer_leader(req)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal)
    })
    .await)
}

/// `POST /raft/snapshot`: a 4-byte header length, the header (vote, meta), then the snapshot
/// file, written to disk as it arrives and installed once complete.
pub async fn snapshot(state: web::Data<ClusterApi>, mut payload: web::Payload) -> HttpResponse {
    let path = state.node.incoming_snapshot_path();
    let received = receive_snapshot(&path, &mut payload).await;
    let (vote, meta) = match received {
        Ok(h) => h,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return HttpResponse::BadRequest().body(format!("snapshot transfer: {e}"));
        }
    };
    let snapshot = SnapshotOf::<TypeConfig, SnapshotFile> {
        meta,
        snapshot: SnapshotFile { path: path.clone() },
    };
    let raft = state.node.raft().clone();
    let resp = on_raft(&state, async move {
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal)
    })
    .await;
    // An installed snapshot was moved into the snapshot directory; anything left is garbage.
    let _ = tokio::fs::remove_file(&path).await;
    resp
}

async fn receive_snapshot(
    path: &std::path::Path,
    payload: &mut web::Payload,
) -> std::io::Result<SnapshotHeader> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut head = Vec::new();
    let mut file = tokio::fs::File::create(path).await?;
    let mut header: Option<SnapshotHeader> = None;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| bad(&e.to_string()))?;
        if header.is_some() {
            file.write_all(&chunk).await?;
            continue;
        }
        head.extend_from_slice(&chunk);
        if head.len() < 4 {
            continue;
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > super::MAX_RPC_BODY {
            return Err(bad("snapshot header too large"));
        }
        if head.len() < 4 + len {
            continue;
        }
        header = Some(crate::raft::decode(&head[4..4 + len])?);
        file.write_all(&head[4 + len..]).await?;
    }
    file.sync_all().await?;
    header.ok_or_else(|| bad("snapshot transfer ended before its header"))
}
