//! Raft: the type configuration, the durable log store, the state machine that holds all
//! registry metadata, and the node's Raft member.
//!
//! Callers (`registry`, `upload`, `api` through them) change metadata only by proposing a
//! [`Command`] through [`RaftNode::propose`], and read it through [`state::StateReader`] after
//! a read barrier. Nothing here knows HTTP.

mod apply;
#[cfg(test)]
mod fetch_tests;
pub mod log_store;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
mod read;
pub mod snapshot;
pub mod state;
pub mod state_machine;
#[cfg(test)]
pub(crate) mod testing;

use ipcr_proto::{Command, CommandResult};
use openraft::impls::BasicNode;

pub use node::{Bootstrap, RaftError, RaftNode};

openraft::declare_raft_types!(
    /// IPCR's Raft types: registry commands in, command results out, nodes addressed by their
    /// cluster URL.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
);

/// The openraft handle specialised to IPCR.
pub type Raft = openraft::Raft<TypeConfig, state_machine::StateMachine>;

/// A Raft log id.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;

/// Milliseconds since the Unix epoch: the proposer's clock, carried in commands (the state
/// machine never reads a clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Version byte written before every encoded log entry, vote and snapshot, so that a future
/// change of encoding is detected instead of misread. 2: manifests and blob links carry the
/// time they were pushed, and the state has the garbage collector's indexes (a data directory
/// of version 1 is refused, not misread).
pub const FORMAT: u8 = 2;

/// bincode settings used for everything this module persists.
pub(crate) fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encode a value with the format version prefix.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = vec![FORMAT];
    let body = bincode::serde::encode_to_vec(value, bincode_config()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a value written by [`encode`].
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::io::Result<T> {
    match bytes.split_first() {
        Some((&FORMAT, body)) => bincode::serde::decode_from_slice(body, bincode_config())
            .map(|(v, _)| v)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Some((v, _)) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown format version {v}"),
        )),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "empty record",
        )),
    }
}
