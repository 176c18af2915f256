//! IPCR as a client of other registries: what `ipcr-node migrate` and the pull-through cache
//! share (DESIGN: one client module for both).
//!
//! - [`image`]: registry addresses and image names as Docker reads them.
//! - [`auth`]: credentials (command line, `docker login`'s `config.json` and credential
//!   helpers), `WWW-Authenticate` challenges, token answers.
//! - [`registry`]: one registry: HTTPS or (loopback only) plain HTTP, the Bearer and Basic
//!   flows with tokens cached per scope and renewed when refused, retries with backoff and
//!   `Retry-After`.
//! - [`api`]: the OCI operations on it (tags, catalog, manifests, blobs, uploads, mounts,
//!   referrers).
//! - [`verify`]: a blob stream checked against its digest before its last bytes are passed on.
//! - [`migrate`]: `ipcr-node migrate`, copying repositories from one registry to another.
//!
//! Depends on `ipcr-proto` only; the node crate calls it, never the other way round.

pub mod api;
pub mod auth;
pub mod error;
pub mod image;
pub mod migrate;
pub mod registry;
pub mod retry;
pub mod verify;

pub use error::Error;
pub use registry::{Access, Registry, Scope};
