//! Storage backend health (`health.storagedriver`): a periodic probe and the state that
//! `/debug/health` reports.
//!
//! The probe writes, fsyncs, reads back and removes a small file in the data directory. After
//! `threshold` consecutive failures the backend is reported unhealthy; one success clears it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::StorageDriverHealthConfig;

/// Shared health state. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    driver: String,
    threshold: u32,
    failures: u32,
    last_error: Option<String>,
}

impl Health {
    /// A healthy state for the named driver (`filesystem`, `estuary`, ...).
    pub fn new(driver: &str, threshold: u32) -> Health {
        Health {
            inner: Arc::new(Mutex::new(Inner {
                driver: driver.to_string(),
                threshold: threshold.max(1),
                failures: 0,
                last_error: None,
            })),
        }
    }

    /// Record one probe's outcome.
    pub fn record(&self, outcome: Result<(), String>) {
        let mut i = self.inner.lock().expect("health lock");
        match outcome {
            Ok(()) => {
                if i.failures >= i.threshold {
                    tracing::info!(driver = %i.driver, "storage backend healthy again");
                }
                i.failures = 0;
                i.last_error = None;
            }
            Err(e) => {
                i.failures += 1;
                if i.failures == i.threshold {
                    tracing::warn!(driver = %i.driver, error = %e, "storage backend unhealthy");
                }
                i.last_error = Some(e);
            }
        }
    }

    /// `Some((check name, error))` when unhealthy.
    pub fn problem(&self) -> Option<(String, String)> {
        let i = self.inner.lock().expect("health lock");
        (i.failures >= i.threshold).then(|| {
            (
                format!("storagedriver_{}", i.driver),
                i.last_error.clone().unwrap_or_default(),
            )
        })
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

/// Probe `dir` every `interval` forever (on the current tokio runtime), when enabled.
pub fn spawn_probe(health: Health, dir: PathBuf, config: &StorageDriverHealthConfig) {
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
            health.record(outcome);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_failures_then_one_success() {
        let h = Health::new("filesystem", 3);
        h.record(Err("a".into()));
        h.record(Err("b".into()));
        assert!(h.problem().is_none());
        h.record(Err("c".into()));
        assert_eq!(h.problem(), Some(("storagedriver_filesystem".into(), "c".into())));
        h.record(Ok(()));
        assert!(h.problem().is_none());
    }

    #[test]
    fn probe_works_and_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(probe(dir.path()).is_ok());
        assert!(probe(&dir.path().join("missing")).is_err());
    }
}
