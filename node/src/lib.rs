//! IPCR node: the OCI Distribution API, upload sessions, Raft-replicated metadata and blob
//! stores, in one library that `main.rs` wires into the `ipcr-node` binary.
//!
//! Calls go `api` → `registry` / `upload` → `raft` / `store`, never upward. Only `api` knows
//! HTTP; `server` wires the pieces together.

pub mod api;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod raft;
pub mod registry;
pub mod server;
pub mod store;
pub mod tls;
pub mod ui;
pub mod upload;
