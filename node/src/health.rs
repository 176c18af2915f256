//! Storage backend health (`health.storagedriver`): a periodic probe and the state that
//! `/debug/health` reports; and whether the node is draining (stopping), which `/ready` reports.
//!
//! The probe writes, fsyncs, reads back and removes a small file in the data directory, and,
//! when an IPFS backend is configured, makes an authenticated call to it. Each check is
//! reported unhealthy after `threshold` consecutive failures; one success clears it. Only the
//! disk decides readiness: while the backend is down, pushes go on and blobs wait on the
//! nodes' disks until it is back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::Backend;
use crate::config::StorageDriverHealthConfig;

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
    /// A healthy state: the disk, and the named IPFS backend (`estuary`, `ipfs`) if any.
    pub fn new(backend: Option<&str>, threshold: u32) -> Health {
        Health {
            inner: Arc::new(Mutex::new(Checks {
                disk: Check::new("filesystem", threshold),
                backend: backend.map(|b| Check::new(b, threshold)),
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

/// Probe `dir` (and the IPFS backend, when there is one) every `interval` forever (on the
/// current tokio runtime), when enabled.
pub fn spawn_probe(
    health: Health,
    dir: PathBuf,
    backend: Option<Backend>,
    config: &StorageDriverHealthConfig,
) {
    if !config.enabled {
        return;
    }
    let interval: Duration = config.interval.0.max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let d = dir.clone();
            let outcome = tokio::task::spawn_blocking(move || probe(&d))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            health.record_disk(outcome);
            if let Some(b) = &backend {
                health.record_backend(b.probe().await.map_err(|e| e.to_string()));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_failures_then_one_success() {
        let h = Health::new(None, 3);
        h.record_disk(Err("a".into()));
        h.record_disk(Err("b".into()));
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
    }
}
