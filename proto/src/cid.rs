//! IPFS content identifiers of blobs, as an IPFS node computes them when it imports a file:
//! CIDv1, sha2-256, raw leaves of fixed 1 MiB chunks, UnixFS balanced layout with a maximum
//! number of links per DAG node (Kubo's default 174, Estuary's 1024).
//!
//! The leaves are hashed while a blob is written (see the node's upload writer); this module
//! turns their digests into the root CID, so no byte is read twice. The DAG nodes above the
//! leaves are small (at most `max_links` links of about 40 bytes) and are encoded with
//! `ipld-dagpb`, the IPLD project's DAG-PB codec.

use ::cid::Cid;
use ::cid::multihash::Multihash;
use ipld_dagpb::{PbLink, PbNode};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::HashState;

/// Size of every leaf but the last.
pub const CHUNK: u64 = 1 << 20;
/// Kubo's default links per DAG node.
pub const KUBO_LINKS: u32 = 174;
/// Estuary's importer (and IPIP-499's `unixfs-v1-2025` profile).
pub const ESTUARY_LINKS: u32 = 1024;

const RAW: u64 = 0x55;
const DAG_PB: u64 = 0x70;
const SHA2_256: u64 = 0x12;
/// UnixFS `Data.DataType.File`.
const UNIXFS_FILE: u64 = 2;

/// An upload session's CID so far, in its replicated record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidProgress {
    /// Links per DAG node of the backend's import settings.
    pub max_links: u32,
    /// The leaves completed so far, in order.
    pub leaves: Vec<Leaf>,
    /// Midstate of the leaf in progress (none before the first chunk).
    pub partial: Option<HashState>,
}

/// What one acknowledged chunk adds to a session's [`CidProgress`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidStep {
    /// Leaves completed within the chunk.
    pub leaves: Vec<Leaf>,
    /// Midstate of the leaf in progress after it.
    pub partial: HashState,
}

/// One raw leaf: the SHA-256 of at most [`CHUNK`] bytes of the blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// SHA-256 of the leaf's bytes.
    pub sha256: [u8; 32],
    /// Its length.
    pub len: u32,
}

impl Leaf {
    /// The leaf of `bytes` (at most [`CHUNK`] of them).
    pub fn of(bytes: &[u8]) -> Self {
        debug_assert!(bytes.len() as u64 <= CHUNK);
        Leaf {
            sha256: sha2::Sha256::digest(bytes).into(),
            len: bytes.len() as u32,
        }
    }
}

fn sha256_cid(codec: u64, digest: &[u8]) -> Cid {
    let mh = Multihash::<64>::wrap(SHA2_256, digest).expect("a 32-byte digest fits a multihash");
    Cid::new_v1(codec, mh)
}

/// The CID of a blob that is a single raw leaf (at most [`CHUNK`] bytes), from its SHA-256.
pub fn raw_cid(sha256: &[u8; 32]) -> String {
    sha256_cid(RAW, sha256).to_string()
}

/// A DAG node's link as its parent holds it.
struct Child {
    cid: Cid,
    /// Bytes of the whole sub-DAG (encoded nodes and leaves), the link's `Tsize`.
    tsize: u64,
    /// File bytes under it.
    file_size: u64,
}

/// UnixFS `Data` of an inner file node: type, file size and each child's file size.
fn unixfs_file_data(children: &[Child]) -> Vec<u8> {
    use quick_protobuf::Writer;
    let mut out = Vec::with_capacity(8 + children.len() * 5);
    let mut w = Writer::new(&mut out);
    let total: u64 = children.iter().map(|c| c.file_size).sum();
    // field 1 (Type, varint), field 3 (filesize), field 4 (blocksizes, repeated, not packed)
    let write =
        |w: &mut Writer<&mut Vec<u8>>, tag: u32, v: u64| w.write_tag(tag).and_then(|()| w.write_uint64(v));
    let encoded = write(&mut w, 1 << 3, UNIXFS_FILE)
        .and_then(|()| write(&mut w, 3 << 3, total))
        .and_then(|()| {
            children
                .iter()
                .try_for_each(|c| write(&mut w, 4 << 3, c.file_size))
        });
    encoded.expect("writing to a Vec cannot fail");
    out
}

/// Encode an inner node over `children` and answer the link to it.
fn inner(children: Vec<Child>) -> Child {
    let data = unixfs_file_data(&children);
    let file_size = children.iter().map(|c| c.file_size).sum();
    let below: u64 = children.iter().map(|c| c.tsize).sum();
    let node = PbNode {
        links: children
            .into_iter()
            .map(|c| PbLink {
                cid: c.cid,
                name: Some(String::new()),
                size: Some(c.tsize),
            })
            .collect(),
        data: Some(data.into()),
    };
    let bytes = node.into_bytes();
    Child {
        cid: sha256_cid(DAG_PB, &sha2::Sha256::digest(&bytes)),
        tsize: below + bytes.len() as u64,
        file_size,
    }
}

/// The sub-DAG of `depth` levels over `leaves` (depth 0: a leaf itself).
fn build(leaves: &[Leaf], depth: u32, max_links: usize) -> Child {
    if depth == 0 {
        let leaf = &leaves[0];
        return Child {
            cid: sha256_cid(RAW, &leaf.sha256),
            tsize: u64::from(leaf.len),
            file_size: u64::from(leaf.len),
        };
    }
    let per_child = max_links.saturating_pow(depth - 1);
    let children = leaves
        .chunks(per_child)
        .map(|part| build(part, depth - 1, max_links))
        .collect();
    inner(children)
}

/// The root CID of a file whose raw leaves are `leaves`, in order, in the balanced layout with
/// at most `max_links` links per node. An empty file is one empty leaf.
pub fn file_cid(leaves: &[Leaf], max_links: u32) -> String {
    let max_links = max_links.max(2) as usize;
    if leaves.len() <= 1 {
        let empty = Leaf::of(&[]);
        return raw_cid(&leaves.first().unwrap_or(&empty).sha256);
    }
    // The smallest depth whose full tree holds every leaf.
    let mut depth = 1;
    let mut capacity = max_links;
    while capacity < leaves.len() {
        depth += 1;
        capacity = capacity.saturating_mul(max_links);
    }
    build(leaves, depth, max_links).cid.to_string()
}

/// Is `text` a CID (any version, any multibase this library knows)? Answers its canonical
/// string, so two spellings of one CID compare equal.
pub fn canonical(text: &str) -> Option<String> {
    Cid::try_from(text).ok().map(|c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first `n` bytes of the vectors' sequence: byte `i` is `i mod 251`.
    fn leaves(n: u64) -> Vec<Leaf> {
        let pattern: Vec<u8> = (0..251u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let mut buf = Vec::with_capacity(CHUNK as usize);
        let mut at = 0u64;
        while at < n {
            buf.clear();
            let len = CHUNK.min(n - at);
            while (buf.len() as u64) < len {
                let start = ((at + buf.len() as u64) % 251) as usize;
                let want = (len as usize - buf.len()).min(251 - start);
                buf.extend_from_slice(&pattern[start..start + want]);
            }
            out.push(Leaf::of(&buf));
            at += len;
        }
        out
    }

    #[test]
    fn small_rows_of_the_vectors() {
        // Rows of ../shared/vectors/ipfs-cids.tsv small enough for a unit test; the whole file
        // is checked by the node's `cid_vectors` test.
        let rows = [
            (0, "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
            (
                1048576,
                "bafkreidddocae7lltzjlkooe5a3tmiwsgazn7logjvqk7bzttsidpzhxne",
            ),
            (
                1048577,
                "bafybeidjogjfwuhbzwopgd4bn3skcf5m6oz72xshywcndzxgqb623nfclu",
            ),
            (
                3500000,
                "bafybeibziiytyscwziajwchsmt4lbv4q74cspzoz7iqvgu7smg6zqmvmea",
            ),
        ];
        for (size, cid) in rows {
            let l = leaves(size);
            assert_eq!(file_cid(&l, KUBO_LINKS), cid, "{size} bytes, 174 links");
            assert_eq!(file_cid(&l, ESTUARY_LINKS), cid, "{size} bytes, 1024 links");
        }
    }

    #[test]
    fn canonical_spelling() {
        let v1 = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
        assert_eq!(canonical(v1).as_deref(), Some(v1));
        assert_eq!(canonical("not a cid"), None);
    }
}
