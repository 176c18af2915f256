//! The raw leaves of a blob's IPFS DAG (SHA-256 of each 1 MiB chunk), hashed while the blob is
//! written, so that its CID needs no second pass over the bytes.
//!
//! Like the content hash, the leaf in progress has a midstate that travels in the replicated
//! session state: any node can continue an upload's CID where another left it.

use ipcr_proto::cid::{CHUNK, CidProgress, Leaf};
use ipcr_proto::{Algorithm, HashState};

use super::hasher::{HashStateError, ResumableHasher};

/// Leaves completed so far and the one in progress.
#[derive(Clone)]
pub struct LeafHasher {
    /// Links per DAG node of the backend's import settings.
    max_links: u32,
    /// The leaf in progress.
    partial: ResumableHasher,
    /// Its length so far (always below [`CHUNK`]).
    partial_len: u64,
    /// Completed leaves not yet taken.
    done: Vec<Leaf>,
}

impl LeafHasher {
    /// A hasher at the start of a blob.
    pub fn new(max_links: u32) -> Self {
        LeafHasher {
            max_links,
            partial: ResumableHasher::new(Algorithm::Sha256),
            partial_len: 0,
            done: Vec::new(),
        }
    }

    /// Continue after the first `size` bytes of an upload whose progress is `progress` (the
    /// leaves it recorded are not repeated here).
    pub fn resume(progress: &CidProgress, size: u64) -> Result<Self, HashStateError> {
        let partial = match &progress.partial {
            Some(state) => ResumableHasher::resume(state)?,
            None => ResumableHasher::new(Algorithm::Sha256),
        };
        Ok(LeafHasher {
            max_links: progress.max_links,
            partial,
            partial_len: size % CHUNK,
            done: Vec::new(),
        })
    }

    /// Links per DAG node.
    pub fn max_links(&self) -> u32 {
        self.max_links
    }

    /// Feed the next bytes of the blob.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((CHUNK - self.partial_len) as usize).min(bytes.len());
            self.partial.update(&bytes[..take]);
            self.partial_len += take as u64;
            bytes = &bytes[take..];
            if self.partial_len == CHUNK {
                let leaf = self.seal();
                self.done.push(leaf);
            }
        }
    }

    /// Close the leaf in progress and start the next one.
    fn seal(&mut self) -> Leaf {
        let digest = self.partial.digest().raw();
        let leaf = Leaf {
            sha256: digest.try_into().expect("a SHA-256 digest has 32 bytes"),
            len: self.partial_len as u32,
        };
        self.partial = ResumableHasher::new(Algorithm::Sha256);
        self.partial_len = 0;
        leaf
    }

    /// The leaves completed since the last call, and the midstate of the one in progress: what
    /// an acknowledged chunk records.
    pub fn step(&mut self) -> (Vec<Leaf>, HashState) {
        (std::mem::take(&mut self.done), self.partial.state())
    }

    /// The blob is complete: its last leaves (the one in progress too, if it holds bytes).
    pub fn finish(mut self) -> Vec<Leaf> {
        if self.partial_len > 0 {
            let last = self.seal();
            self.done.push(last);
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipcr_proto::cid::{KUBO_LINKS, file_cid};

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn any_split_and_resume_gives_the_same_leaves() {
        let data = pattern(3 * CHUNK as usize + 12_345);
        let whole = {
            let mut h = LeafHasher::new(KUBO_LINKS);
            h.update(&data);
            h.finish()
        };
        assert_eq!(whole.len(), 4);
        let cut = CHUNK as usize;
        for split in [0, 1, cut - 1, cut, cut + 1, 2 * cut, data.len()] {
            let mut a = LeafHasher::new(KUBO_LINKS);
            a.update(&data[..split]);
            let (mut leaves, partial) = a.step();
            let progress = CidProgress {
                max_links: KUBO_LINKS,
                leaves: leaves.clone(),
                partial: Some(partial),
            };
            let mut b = LeafHasher::resume(&progress, split as u64).unwrap();
            // Fed in uneven pieces, as request bodies arrive.
            for piece in data[split..].chunks(70_001) {
                b.update(piece);
            }
            leaves.extend(b.finish());
            assert_eq!(leaves, whole, "split at {split}");
        }
    }

    #[test]
    fn empty_and_exact_multiples() {
        assert_eq!(
            file_cid(&LeafHasher::new(KUBO_LINKS).finish(), KUBO_LINKS),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        let mut h = LeafHasher::new(KUBO_LINKS);
        h.update(&pattern(2 * CHUNK as usize));
        assert_eq!(h.finish().len(), 2);
    }
}
