//! The serialized midstate of a running hash, as replicated in upload-session state.
//!
//! The node's `upload::hasher` produces and consumes it; here it is only data, versioned so a
//! future change of hash library or layout can be told apart from corruption.

use serde::{Deserialize, Serialize};

use crate::digest::Algorithm;

/// Current layout version: `sha2` 0.11's `SerializableState` of the algorithm's hasher.
pub const HASH_STATE_V1: u8 = 1;

/// A resumable hash's internal state after some prefix of an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashState {
    /// Layout version, [`HASH_STATE_V1`] today.
    pub version: u8,
    /// The algorithm being computed.
    pub algorithm: Algorithm,
    /// The serialized state.
    pub bytes: Vec<u8>,
}
