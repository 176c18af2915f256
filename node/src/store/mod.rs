//! Blob bytes: the node's content-addressed disk store.
//!
//! Callers (`upload`, `registry`) hand it verified files to commit and ask it for byte ranges;
//! it knows nothing of repositories, Raft or HTTP.

pub mod fs;
pub mod read;

pub use fs::FsStore;
pub use read::BlobStream;
