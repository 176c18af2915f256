//! Storage health: the periodic probes and the state that `/debug/health` and `/ready` report;
//! and whether the node is draining (stopping), which `/ready` reports.
//!
//! The disk probe always runs, every [`DISK_PROBE_INTERVAL`]: it writes, fsyncs, reads back and
//! removes a small file in each directory the node writes (`uploads/`, where every push lands
//! first, and `blobs/`); a node that cannot store must not look ready, so no setting turns it
//! off. The disk is unhealthy after [`DISK_THRESHOLD`] consecutive failures. The IPFS backend
//! probe (`health.storagedriver`, off by default) makes an authenticated call to the backend
//! every `interval` and reports it unhealthy after `threshold` failures; it costs a request to
//! a service that may count them, hence the setting. One success clears a check. Only the disk
//! decides readiness: while the backend is down, pushes go on and blobs wait on the nodes'
//! disks until it is back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::Backend;
use crate::config::StorageDriverHealthConfig;

/// Time between two probes of the disk: a broken directory makes the node unready within
/// `DISK_THRESHOLD` of these. Each probe writes and fsyncs a few bytes per directory.
pub const DISK_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Consecutive failed disk probes before the node reports itself unable to store: one failure
/// may be a passing hiccup, which should not take the node out of a load balancer.
pub const DISK_THRESHOLD: u32 = 2;

/// Shared health state. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<Checks>>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

struct Checks {
    /// The node's own disk (`storagedriver_filesystem`).
    disk: Check,
    /// The IPFS backend (`storagedriver_estuary` or `storagedriver_ipfs`), when configured.
    backend: Option<Check>,
}

/// Consecutive failures of one check.
struct Check {
    name: String,
    threshold: u32,
    failures: u32,
    last_error: Option<String>,
}

impl Check {
    fn new(driver: &str, threshold: u32) -> Check {
        Check {
            name: format!("storagedriver_{driver}"),
            threshold: threshold.max(1),
            failures: 0,
            last_error: None,
        }
    }

    fn record(&mut self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                if self.failures >= self.threshold {
                    tracing::info!(check = %self.name, "storage healthy again");
                }
                self.failures = 0;
                self.last_error = None;
            }
            Err(e) => {
                self.failures += 1;
                if self.failures == self.threshold {
                    tracing::warn!(check = %self.name, error = %e, "storage unhealthy");
                }
                self.last_error = Some(e);
            }
        }
    }

    fn problem(&self) -> Option<(String, String)> {
        (self.failures >= self.threshold)
            .then(|| (self.name.clone(), self.last_error.clone().unwrap_or_default()))
    }
}

impl Health {
    /// A healthy state: the disk, and the named IPFS backend (`estuary`, `ipfs`) if any, which
    /// is unhealthy after `backend_threshold` failures (`health.storagedriver.threshold`).
    pub fn new(backend: Option<&str>, backend_threshold: u32) -> Health {
        Health {
            inner: Arc::new(Mutex::new(Checks {
                disk: Check::new("filesystem", DISK_THRESHOLD),
                backend: backend.map(|b| Check::new(b, backend_threshold)),
            })),
            draining: Arc::default(),
        }
    }

    /// The node is stopping: load balancers should send it nothing new.
    pub fn set_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the node is stopping.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Record one probe of the disk.
    pub fn record_disk(&self, outcome: Result<(), String>) {
        self.inner.lock().expect("health lock").disk.record(outcome);
    }

    /// Record one probe of the IPFS backend.
    pub fn record_backend(&self, outcome: Result<(), String>) {
        if let Some(b) = &mut self.inner.lock().expect("health lock").backend {
            b.record(outcome);
        }
    }

    /// Every failing check, as `(check name, error)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let c = self.inner.lock().expect("health lock");
        c.disk
            .problem()
            .into_iter()
            .chain(c.backend.as_ref().and_then(Check::problem))
            .collect()
    }

    /// Every check, as `(check name, healthy)`.
    pub fn checks(&self) -> Vec<(String, bool)> {
        let c = self.inner.lock().expect("health lock");
        std::iter::once(&c.disk)
            .chain(c.backend.as_ref())
            .map(|check| (check.name.clone(), check.problem().is_none()))
            .collect()
    }

    /// The disk's problem, if it is unhealthy: the node cannot take writes. An unhealthy
    /// IPFS backend does not count; blobs wait on the disks until it is back.
    pub fn disk_problem(&self) -> Option<(String, String)> {
        self.inner.lock().expect("health lock").disk.problem()
    }
}

/// One probe of a data directory.
pub fn probe(dir: &Path) -> Result<(), String> {
    let path: PathBuf = dir.join(format!(".health-{}", uuid::Uuid::new_v4().simple()));
    let run = || -> std::io::Result<()> {
        let payload = b"ipcr health probe";
        std::fs::write(&path, payload)?;
        std::fs::File::open(&path)?.sync_all()?;
        if std::fs::read(&path)? != payload {
            return Err(std::io::Error::other("probe file read back differently"));
        }
        std::fs::remove_file(&path)
    };
    let result = run().map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&path);
    result
}

/// One probe of each of `dirs`; the first failure names its directory by its last component
/// (`uploads: Not a directory`), not by its path, which is the operator's business.
pub fn probe_dirs(dirs: &[PathBuf]) -> Result<(), String> {
    for dir in dirs {
        probe(dir).map_err(|e| {
            let name = dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            format!("{name}: {e}")
        })?;
    }
    Ok(())
}

/// Probe `dirs` now and then every `interval`, forever (on the current tokio runtime).
/// Always running: readiness depends on it. The server passes [`DISK_PROBE_INTERVAL`].
pub fn spawn_disk_probe(health: Health, dirs: Vec<PathBuf>, interval: Duration) {
    tokio::spawn(async move {
        loop {
            let d = dirs.clone();
            let outcome = tokio::task::spawn_blocking(move || probe_dirs(&d))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            health.record_disk(outcome);
            tokio::time::sleep(interval).await;
        }
    });
}

/// Probe the IPFS backend every `health.storagedriver.interval` forever (on the current tokio
/// runtime), when `health.storagedriver.enabled`.
pub fn spawn_backend_probe(health: Health, backend: Backend, config: &StorageDriverHealthConfig) {
    if !config.enabled {
        return;
    }
    let interval: Duration = config.interval.0.max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            health.record_backend(backend.probe().await.map_err(|e| e.to_string()));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_failures_then_one_success() {
        let h = Health::new(None, 3);
        for _ in 1..DISK_THRESHOLD {
            h.record_disk(Err("a".into()));
        }
        assert!(h.problems().is_empty());
        h.record_disk(Err("c".into()));
        assert_eq!(
            h.problems(),
            vec![("storagedriver_filesystem".into(), "c".into())]
        );
        assert!(h.disk_problem().is_some());
        h.record_disk(Ok(()));
        assert!(h.problems().is_empty());
    }

    #[test]
    fn an_unhealthy_backend_is_reported_but_leaves_the_disk_healthy() {
        let h = Health::new(Some("estuary"), 2);
        h.record_backend(Err("down".into()));
        h.record_backend(Err("still down".into()));
        assert_eq!(
            h.problems(),
            vec![("storagedriver_estuary".into(), "still down".into())]
        );
        assert!(h.disk_problem().is_none());
        h.record_backend(Ok(()));
        assert!(h.problems().is_empty());
    }

    #[test]
    fn probe_works_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(probe(dir.path()).is_ok());
        assert!(probe(&dir.path().join("missing")).is_err());
        let (uploads, blobs) = (dir.path().join("uploads"), dir.path().join("blobs"));
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(&uploads, b"a file where the directory was").unwrap();
        let dirs = [uploads.clone(), blobs];
        let e = probe_dirs(&dirs).unwrap_err();
        assert!(e.starts_with("uploads: "), "{e}");
        assert!(!e.contains(&dir.path().display().to_string()), "{e}");
        std::fs::remove_file(&uploads).unwrap();
        std::fs::create_dir(&uploads).unwrap();
        assert!(probe_dirs(&dirs).is_ok());
        // Nothing is left behind.
        assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    }
}
