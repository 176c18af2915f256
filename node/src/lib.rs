//! IPCR node: the OCI Distribution API, upload sessions, Raft-replicated metadata and blob
//! stores, in one library that `main.rs` wires into the `ipcr-node` binary.
//!
//! Calls go `api` → `registry` / `upload` → `raft` / `store`, never upward. Only `api` knows
//! HTTP.

pub mod config;
pub mod raft;
