//! The registry layer's errors. `api/error.rs` maps each to an OCI code and HTTP status.

use ipcr_proto::Digest;
use ipcr_proto::manifest::ManifestError;

use crate::raft::RaftError;
use crate::raft::state::StateError;
use crate::upload::UploadError;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The repository has never received content.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// No such manifest or tag in the repository.
    #[error("manifest unknown")]
    ManifestUnknown,
    /// No such blob in the repository.
    #[error("blob unknown")]
    BlobUnknown,
    /// The manifest fails validation.
    #[error(transparent)]
    ManifestInvalid(#[from] ManifestError),
    /// The manifest is larger than the limit.
    #[error("manifest larger than 4 MiB")]
    ManifestTooLarge,
    /// The manifest references a blob or child manifest the repository lacks.
    #[error("manifest references unknown {0}")]
    ManifestBlobUnknown(Digest),
    /// A descriptor in the manifest declares a size its content does not have.
    #[error("descriptor {digest} declares {declared} bytes; the content has {expected}")]
    DescriptorSize {
        /// The descriptor's digest.
        digest: Digest,
        /// The size the descriptor declares.
        declared: u64,
        /// The size of the content in the repository.
        expected: u64,
    },
    /// A digest does not match the content.
    #[error("{0}")]
    DigestInvalid(String),
    /// Deletion is disabled by configuration.
    #[error("deletion is disabled (storage.delete.enabled)")]
    DeleteDisabled,
    /// An upload failed.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// The cluster could not answer.
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// The metadata store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The blob store failed.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    /// A pull-through cache's upstream could not answer, and nothing is cached.
    #[error("upstream: {0}")]
    Upstream(String),
    /// A broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
}
