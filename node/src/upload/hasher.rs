//! A resumable content hash whose midstate can be replicated in upload-session state.
//!
//! A session hashes each chunk as it is written and records the midstate with the chunk, so
//! the node that closes the upload (possibly not the one that received the chunks) continues
//! from the midstate instead of re-reading the blob.

use digest::common::hazmat::SerializableState;
use ipcr_proto::hash_state::HASH_STATE_V1;
use ipcr_proto::{Algorithm, Digest, HashState};
use sha2::Digest as _;

/// Why a replicated midstate could not be resumed.
#[derive(Debug, thiserror::Error)]
#[error("unusable hash state: {0}")]
pub struct HashStateError(String);

/// A running SHA-256 or SHA-512.
#[derive(Clone)]
pub enum ResumableHasher {
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

impl ResumableHasher {
    /// A hasher over zero bytes.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => ResumableHasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => ResumableHasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            ResumableHasher::Sha256(_) => Algorithm::Sha256,
            ResumableHasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ResumableHasher::Sha256(h) => h.update(bytes),
            ResumableHasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far (the hasher stays usable).
    pub fn digest(&self) -> Digest {
        match self {
            ResumableHasher::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.clone().finalize()),
            ResumableHasher::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.clone().finalize()),
        }
    }

    /// The midstate, for replication.
    pub fn state(&self) -> HashState {
        let bytes = match self {
            ResumableHasher::Sha256(h) => h.serialize().to_vec(),
            ResumableHasher::Sha512(h) => h.serialize().to_vec(),
        };
        HashState {
            version: HASH_STATE_V1,
            algorithm: self.algorithm(),
            bytes,
        }
    }

    /// Resume from a replicated midstate.
    pub fn resume(state: &HashState) -> Result<Self, HashStateError> {
        if state.version != HASH_STATE_V1 {
            return Err(HashStateError(format!("version {}", state.version)));
        }
        let bad = |e: &dyn std::fmt::Display| HashStateError(e.to_string());
        match state.algorithm {
            Algorithm::Sha256 => {
                let arr = state.bytes.as_slice().try_into().map_err(|e| bad(&e))?;
                sha2::Sha256::deserialize(arr)
                    .map(ResumableHasher::Sha256)
                    .map_err(|e| bad(&e))
            }
            Algorithm::Sha512 => {
                let arr = state.bytes.as_slice().try_into().map_err(|e| bad(&e))?;
                sha2::Sha512::deserialize(arr)
                    .map(ResumableHasher::Sha512)
                    .map_err(|e| bad(&e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_from_any_split_point_gives_the_whole_digest() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let whole = alg.digest_bytes(&data);
            for split in [0, 1, 63, 64, 65, 127, 128, 129, 5000, 10_000] {
                let mut a = ResumableHasher::new(alg);
                a.update(&data[..split]);
                let state = a.state();
                let mut b = ResumableHasher::resume(&state).unwrap();
                b.update(&data[split..]);
                assert_eq!(b.digest(), whole, "{alg:?} split at {split}");
            }
        }
    }

    #[test]
    fn refuses_foreign_state() {
        let mut s = ResumableHasher::new(Algorithm::Sha256).state();
        s.bytes.pop();
        assert!(ResumableHasher::resume(&s).is_err());
        let mut s = ResumableHasher::new(Algorithm::Sha256).state();
        s.version = 9;
        assert!(ResumableHasher::resume(&s).is_err());
        let mut s = ResumableHasher::new(Algorithm::Sha256).state();
        s.algorithm = Algorithm::Sha512;
        assert!(ResumableHasher::resume(&s).is_err());
    }
}
