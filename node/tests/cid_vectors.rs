//! Every row of `tests/data/ipfs-cids.tsv` (a copy of the project's `shared/vectors` file: CIDs
//! a real IPFS implementation gave for known content) against IPCR's own CID computation: the
//! streaming leaf hasher the upload writer uses, fed in uneven pieces, then the DAG above it,
//! for both link settings (Kubo's 174 and Estuary's 1024).

use ipcr_node::upload::leaves::LeafHasher;
use ipcr_proto::cid::{ESTUARY_LINKS, KUBO_LINKS, file_cid};
use sha2::Digest as _;

/// The vectors' content is byte `i` = `i mod 251`; a window of this buffer starting at
/// `offset mod 251` is the content at `offset`.
fn pattern() -> Vec<u8> {
    (0..251 * 4200).map(|i| (i % 251) as u8).collect()
}

struct Row {
    size: u64,
    sha256: String,
    cid_174: String,
    cid_1024: String,
}

fn rows() -> Vec<Row> {
    let text = include_str!("data/ipfs-cids.tsv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("size\tsha256\tcid_174_links\tcid_1024_links"),
        "unexpected header"
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "malformed row {l:?}");
            Row {
                size: f[0].parse().unwrap(),
                sha256: f[1].to_string(),
                cid_174: f[2].to_string(),
                cid_1024: f[3].to_string(),
            }
        })
        .collect()
}

#[test]
fn every_row_of_the_vectors_file() {
    let pattern = pattern();
    let rows = rows();
    assert!(rows.len() >= 13, "the vectors file lost rows");
    // Uneven pieces, as request bodies arrive: never aligned with the 1 MiB leaves.
    let piece = 251 * 4000 + 17;
    for row in rows {
        let mut whole = sha2::Sha256::new();
        let mut leaves = LeafHasher::new(KUBO_LINKS);
        let mut at = 0u64;
        while at < row.size {
            let len = (piece as u64).min(row.size - at) as usize;
            let start = (at % 251) as usize;
            let bytes = &pattern[start..start + len];
            whole.update(bytes);
            leaves.update(bytes);
            at += len as u64;
        }
        assert_eq!(
            hex::encode(whole.finalize()),
            row.sha256,
            "{} bytes: content",
            row.size
        );
        let leaves = leaves.finish();
        assert_eq!(
            file_cid(&leaves, KUBO_LINKS),
            row.cid_174,
            "{} bytes, 174 links",
            row.size
        );
        assert_eq!(
            file_cid(&leaves, ESTUARY_LINKS),
            row.cid_1024,
            "{} bytes, 1024 links",
            row.size
        );
    }
}
