//! Client side of the peer transfers: copying chunks and blobs to replicas (streamed while
//! they are received, or replayed from the local file), fetching byte ranges from holders,
//! asking a peer to assemble a blob, and proxying a close.
//!
//! Every call runs on the Raft runtime, where the cluster client lives.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ipcr_proto::Digest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::wire::{ChunkAck, ChunkHeader, FinishAnswer, FinishHeader, Plan, prefixed};
use crate::raft::RaftNode;
use crate::raft::network::CallError;

/// Chunks buffered towards a replica.
const TEE_CHANNEL: usize = 32;
/// How long a transfer of blob bytes may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);

/// A stream of what a tokio receiver receives.
fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// Peer transfers of this node.
#[derive(Clone)]
pub struct Transfers {
    node: RaftNode,
}

/// Why a transfer failed.
pub type TransferError = String;

/// A copy being streamed to a replica: feed the sender, drop it, await the acknowledgement.
pub type Copy<T> = (mpsc::Sender<Bytes>, JoinHandle<Result<T, TransferError>>);

fn call_err(e: CallError) -> TransferError {
    e.to_string()
}

impl Transfers {
    /// Transfers made by `node`.
    pub fn new(node: RaftNode) -> Transfers {
        Transfers { node }
    }

    /// Start copying a chunk to `peer` while it is being received: answers the sender to feed
    /// with the chunk's bytes (drop it at the end) and the replica's acknowledgement.
    pub fn copy_chunk(&self, peer: &str, id: &str, header: ChunkHeader) -> Copy<(u64, u32)> {
        let (tx, rx) = mpsc::channel::<Bytes>(TEE_CHANNEL);
        let stream = receiver_stream(rx).map(Ok::<Bytes, std::io::Error>);
        let url = format!("{peer}/cluster/uploads/{id}/chunk");
        let handle = self.spawn_put::<ChunkAck, _>(url, header, stream);
        let flattened = self.node.runtime().spawn(async move {
            match handle.await {
                Ok(Ok(Ok(ack))) => Ok(ack),
                Ok(Ok(Err(refused))) => Err(refused),
                Ok(Err(e)) => Err(e),
                Err(join) => Err(join.to_string()),
            }
        });
        (tx, flattened)
    }

    /// Copy `len` bytes of a local upload file from `offset` to `peer` as a chunk.
    pub async fn copy_chunk_from_file(
        &self,
        peer: &str,
        id: &str,
        header: ChunkHeader,
        path: PathBuf,
        len: u64,
    ) -> Result<(u64, u32), TransferError> {
        let stream = crate::store::read::BlobStream::new(
            std::fs::File::open(&path).map_err(|e| e.to_string())?,
            header.offset,
            len,
        );
        let url = format!("{peer}/cluster/uploads/{id}/chunk");
        let handle = self.spawn_put::<ChunkAck, _>(url, header, stream);
        handle.await.map_err(|e| e.to_string())??
    }

    /// Start copying a whole blob to `peer` while it is being received; the replica verifies
    /// the digest itself before acknowledging.
    pub fn copy_blob(&self, peer: &str, digest: &Digest) -> Copy<()> {
        let (tx, rx) = mpsc::channel::<Bytes>(TEE_CHANNEL);
        let stream = receiver_stream(rx).map(Ok::<Bytes, std::io::Error>);
        let url = format!("{peer}/cluster/blobs/{digest}");
        let handle = self.spawn_put::<Result<(), String>, _>(url, (), stream);
        let flattened = self.node.runtime().spawn(async move {
            match handle.await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(refused))) => Err(refused),
                Ok(Err(e)) => Err(e),
                Err(join) => Err(join.to_string()),
            }
        });
        (tx, flattened)
    }

    /// Copy a stored blob of this node to `peer`.
    pub async fn copy_blob_from_file(
        &self,
        peer: &str,
        digest: &Digest,
        path: PathBuf,
        size: u64,
    ) -> Result<(), TransferError> {
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let stream = crate::store::read::BlobStream::new(file, 0, size);
        let url = format!("{peer}/cluster/blobs/{digest}");
        let handle = self.spawn_put::<Result<(), String>, _>(url, (), stream);
        handle.await.map_err(|e| e.to_string())??
    }

    /// PUT a prefixed body to `url` on the Raft runtime and decode the answer.
    fn spawn_put<Resp, S>(
        &self,
        url: String,
        header: impl serde::Serialize + Send + 'static,
        rest: S,
    ) -> JoinHandle<Result<Resp, TransferError>>
    where
        Resp: serde::de::DeserializeOwned + Send + 'static,
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let client = self.node.client().clone();
        self.node.runtime().spawn(async move {
            let body = prefixed(&header, rest).map_err(|e| e.to_string())?;
            let resp = client
                .http()
                .put(&url)
                .header("Authorization", client.bearer())
                .timeout(TRANSFER_TIMEOUT)
                .body(body)
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            if !status.is_success() {
                return Err(format!(
                    "{url}: HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            crate::raft::decode(&bytes).map_err(|e| format!("{url}: {e}"))
        })
    }

    /// Stream `len` bytes from `offset` of a peer's resource (`/cluster/blobs/<digest>` or
    /// `/cluster/uploads/<id>/bytes`) through the returned receiver, on the Raft runtime. The
    /// transfer stops as soon as the receiver is dropped, even while the peer sends nothing
    /// (a reader that gave up on a hung peer leaves no request behind).
    pub fn fetch(
        &self,
        peer: &str,
        path: &str,
        offset: u64,
        len: u64,
    ) -> mpsc::Receiver<Result<Bytes, TransferError>> {
        let (tx, rx) = mpsc::channel(TEE_CHANNEL);
        let client = self.node.client().clone();
        let url = format!("{peer}{path}");
        self.node.runtime().spawn(async move {
            let transfer = async {
                let resp = client
                    .http()
                    .get(&url)
                    .header("Authorization", client.bearer())
                    .header("Range", format!("bytes={}-{}", offset, offset + len.max(1) - 1))
                    .timeout(TRANSFER_TIMEOUT)
                    .send()
                    .await;
                let resp = match resp {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => {
                        let _ = tx.send(Err(format!("{url}: HTTP {}", r.status()))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{url}: {e}"))).await;
                        return;
                    }
                };
                let mut stream = resp.bytes_stream();
                while let Some(item) = stream.next().await {
                    let item = item.map_err(|e| format!("{url}: {e}"));
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            };
            tokio::select! {
                () = transfer => {}
                () = tx.closed() => {}
            }
        });
        rx
    }

    /// Ask `peer` to assemble the blob of a finished upload from its chunks and copies fetched
    /// from their holders, verify it and store it.
    pub async fn materialize(&self, peer: &str, plan: &Plan) -> Result<(), TransferError> {
        let client = self.node.client().clone();
        let (peer, plan) = (peer.to_string(), plan.clone());
        let path = format!("/cluster/uploads/{}/materialize", plan.id);
        self.node
            .runtime()
            .spawn(async move {
                let answer: Result<(), String> = client
                    .call(&peer, &path, &plan, TRANSFER_TIMEOUT)
                    .await
                    .map_err(call_err)?;
                answer
            })
            .await
            .map_err(|e| e.to_string())?
    }

    /// Ask `peer` to make a stored copy of a blob, fetched from one of `sources` (repair).
    pub async fn replicate(
        &self,
        peer: &str,
        digest: &Digest,
        sources: Vec<String>,
    ) -> Result<(), TransferError> {
        let client = self.node.client().clone();
        let path = format!("/cluster/blobs/{digest}/fetch");
        let peer = peer.to_string();
        self.node
            .runtime()
            .spawn(async move {
                let answer: Result<(), String> = client
                    .call(&peer, &path, &sources, TRANSFER_TIMEOUT)
                    .await
                    .map_err(call_err)?;
                answer
            })
            .await
            .map_err(|e| e.to_string())?
    }

    /// Ask `peer`, which holds `digest`, to upload it to the IPFS backend.
    pub async fn pin_at(&self, peer: &str, digest: &Digest) -> Result<(), TransferError> {
        let client = self.node.client().clone();
        let path = format!("/cluster/blobs/{digest}/pin");
        let peer = peer.to_string();
        self.node
            .runtime()
            .spawn(async move {
                let answer: Result<(), String> = client
                    .call(&peer, &path, &(), TRANSFER_TIMEOUT)
                    .await
                    .map_err(call_err)?;
                answer
            })
            .await
            .map_err(|e| e.to_string())?
    }

    /// Proxy a close (with its last chunk, if any) to `peer`, which holds most of the upload.
    pub async fn finish_at(
        &self,
        peer: &str,
        id: &str,
        header: FinishHeader,
        body: mpsc::Receiver<Result<Bytes, String>>,
    ) -> Result<FinishAnswer, TransferError> {
        let stream = receiver_stream(body).map(|r| r.map_err(std::io::Error::other));
        let url = format!("{peer}/cluster/uploads/{id}/finish");
        let handle = self.spawn_put::<FinishAnswer, _>(url, header, stream);
        handle.await.map_err(|e| e.to_string())?
    }
}
