//! Wire and domain types shared by every part of IPCR, free of I/O.
//!
//! Owns the registry's vocabulary (digests, repository names, references, media types), the OCI
//! error codes and their JSON envelope, the manifest models used to validate pushes, and the
//! Raft commands that are the only way metadata changes. Anything here may be used by `node`,
//! `cluster-tests` and future clients; nothing here depends on actix, tokio or a network.

pub mod admin;
pub mod cid;
pub mod command;
pub mod digest;
pub mod error;
pub mod gc;
pub mod hash_state;
pub mod manifest;
pub mod media;
pub mod names;

pub use command::{
    BlobRecord, ChunkRecord, Command, CommandResult, IpfsRecord, ManifestRecord, NodeId, PinState, Reject,
    UploadRecord,
};
pub use digest::{Algorithm, Digest, DigestError};
pub use error::{ErrorCode, ErrorEnvelope, ErrorInfo};
pub use hash_state::HashState;
pub use names::{NameError, Reference, RepoName, Tag};
