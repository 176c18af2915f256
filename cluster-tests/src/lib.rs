//! Process-level test harness of IPCR: real `ipcr-node` processes on loopback ports taken from
//! the OS, real clients (`skopeo`, `docker`), and the small pieces those tests share.
//!
//! - [`node`]: start, wait for, `kill -9` and restart a node process; its log is printed when
//!   a test fails.
//! - [`process`]: a node process however launched: signals, log, readiness, kept on failure.
//! - [`bench`]: what the benchmark binaries share (a big blob, timed pushes and pulls).
//! - [`cluster`]: several nodes forming one cluster (joining through a member), waits on the
//!   cluster's status, and haproxy in front of them.
//! - [`emulator`]: the Estuary / Kubo RPC emulator as a process that fails on demand.
//! - [`jepsen`]: concurrent clients and a nemesis of pauses, kills and partitions; histories checked.
//! - [`linearizability`]: a checker of register histories (Wing & Gong with Lowe's memoization).
//! - [`netns`]: nodes each in its own network namespace, so that one can be partitioned off.
//! - [`tools`]: require an external tool; skip the test locally, fail loudly under `CI=true`.
//! - [`oci`]: build and read OCI image layouts on disk (tar and gzip layers, configs,
//!   manifests, indexes), byte for byte under the test's control.
//! - [`client`]: a minimal blocking OCI distribution client that reports exactly what the
//!   server acknowledged.
//! - [`clients`]: the `docker` and `skopeo` command-line clients as the tests drive them.
//! - [`peer`]: distribution 2.8.2, the registry the benchmarks compare against.
//! - [`pushes`]: images pushed with bounded retries while nodes fail or change, and checks of
//!   what was acknowledged.
//! - [`pki`]: a throwaway CA, certificates and token signing keys, made when a test starts.
//! - [`tls`]: TLS clients trusting the test CA, and raw TLS connections speaking HTTP/1.1.
//! - [`secure`]: nodes serving TLS and access control, their cluster over mutual TLS, and
//!   haproxy passing TLS through to them.
//! - [`jwt`]: tokens forged, tampered and signed by the tests themselves.
//! - [`credentials`]: htpasswd users, `docker login` in a config of its own, the test CA in
//!   the Docker Engine's `certs.d`, and tokens from IPCR's token endpoint.
//! - [`upstream`] and [`seed`]: distribution 2.8.2 as a source registry (open, htpasswd, or
//!   behind a token server of the test's), and content pushed into it by skopeo, recorded exactly.
//! - [`faults`]: a reverse proxy in the test process that answers `429`/`503`, delays, or cuts
//!   bodies off on the requests the test picks, in front of a registry.
//! - [`browser`]: headless Chromium: a page's DOM after its scripts ran, and screenshots.
//! - [`gc`]: `ipcr-node gc` runs and their reports, images whose layers overlap, and the check
//!   that the nodes' disks hold exactly the live blobs.
//! - [`prometheus`]: a real Prometheus scraping nodes' metrics with `deploy/alerts.yml`, read
//!   through its query API, and `promtool`.
//!
//! Only the test binaries under `tests/` call this crate. Helpers that assert are `must_*`,
//! helpers that wait are `wait_*`.

pub mod bench;
pub mod browser;
pub mod client;
pub mod clients;
pub mod cluster;
pub mod credentials;
pub mod emulator;
pub mod faults;
pub mod gc;
pub mod jepsen;
pub mod jwt;
pub mod linearizability;
pub mod netns;
pub mod node;
pub mod oci;
pub mod peer;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod pushes;
pub mod secure;
pub mod seed;
pub mod tls;
pub mod tools;
pub mod upstream;

pub use cluster::{Balancer, Cluster};
pub use node::Node;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
