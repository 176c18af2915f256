//! Wire formats of the peer transfers: a request body that starts with a small encoded header
//! followed by raw bytes, and the headers and answers of each transfer.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use ipcr_proto::{Algorithm, ChunkRecord, Digest, NodeId, RepoName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::raft::{decode, encode};

/// The largest header accepted.
const MAX_HEADER: usize = 16 << 20;

/// A request body: a 4-byte big-endian length, the encoded header, then `rest`.
pub fn prefixed<T, S>(header: &T, rest: S) -> std::io::Result<reqwest::Body>
where
    T: Serialize,
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let encoded = encode(header)?;
    let mut prefix = (encoded.len() as u32).to_be_bytes().to_vec();
    prefix.extend_from_slice(&encoded);
    let head = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(prefix)) });
    Ok(reqwest::Body::wrap_stream(head.chain(rest)))
}

/// Read the header of a prefixed body; answers it and the bytes already read past it.
pub async fn read_header<T, S, E>(body: &mut S) -> std::io::Result<(T, Bytes)>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut head: Vec<u8> = Vec::new();
    loop {
        if head.len() >= 4 {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            if len > MAX_HEADER {
                return Err(bad("transfer header too large".into()));
            }
            if head.len() >= 4 + len {
                let header = decode(&head[4..4 + len])?;
                return Ok((header, Bytes::copy_from_slice(&head[4 + len..])));
            }
        }
        match body.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(bad(e.to_string())),
            None => return Err(bad("transfer ended before its header".into())),
        }
    }
}

/// Header of a chunk copied to a replica (`PUT /cluster/uploads/<id>/chunk`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// Where the chunk goes in the upload.
    pub offset: u64,
}

/// A replica's answer to a chunk copy: bytes written (fsynced) and their CRC-32.
pub type ChunkAck = Result<(u64, u32), String>;

/// Everything a node needs to assemble a finished upload as a blob, from its own chunks and
/// copies fetched from their holders (`POST /cluster/uploads/<id>/materialize`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The session.
    pub id: String,
    /// The blob's verified digest.
    pub digest: Digest,
    /// The session's algorithm.
    pub algorithm: Algorithm,
    /// Every chunk, in order, with its holders and midstate.
    pub chunks: Vec<ChunkRecord>,
    /// Cluster URLs of the holders.
    pub sources: Vec<(NodeId, String)>,
}

impl Plan {
    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.chunks.last().map(|c| c.offset + c.len).unwrap_or(0)
    }
}

/// Header of a close proxied to the node holding most of an upload
/// (`POST /cluster/uploads/<id>/finish`), followed by the last chunk's bytes, if any.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishHeader {
    /// Repository named by the client.
    pub repo: RepoName,
    /// The digest the client claims.
    pub digest: Digest,
    /// The last chunk's `Content-Range`.
    pub range: Option<(u64, u64)>,
    /// The last chunk's `Content-Length`.
    pub content_length: Option<u64>,
}

/// An upload failure, as carried between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoteError {
    /// No such session.
    Unknown,
    /// Out-of-order chunk.
    RangeMismatch(u64),
    /// Length mismatch.
    SizeInvalid(String),
    /// Digest mismatch.
    DigestInvalid(String),
    /// Body broke off.
    Aborted(String),
    /// No quorum or not enough replicas.
    Unavailable(String),
    /// Anything else.
    Internal(String),
}

/// A proxied close's answer: the blob's size.
pub type FinishAnswer = Result<u64, RemoteError>;
