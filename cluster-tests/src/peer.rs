//! The peer the benchmarks compare against: distribution 2.8.2 (Debian's `docker-registry`),
//! configured like IPCR (filesystem storage, deletes on, logs quiet).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// The configuration [`spawn_distribution`] writes under `work`.
pub fn distribution_config(work: &Path) -> PathBuf {
    work.join("distribution.yml")
}

/// The storage root of the distribution [`spawn_distribution`] starts under `work`.
pub fn distribution_data(work: &Path) -> PathBuf {
    work.join("distribution-data")
}

/// Start `docker-registry` on `127.0.0.1:port` with its data and log under `work`. The caller
/// waits for `/v2/` and kills the child.
pub fn spawn_distribution(work: &Path, port: u16) -> Result<Child> {
    let config = distribution_config(work);
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            distribution_data(work).display()
        ),
    )?;
    let log = File::create(work.join("distribution.log"))?;
    Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting docker-registry (apt-get install docker-registry)")
}

/// `docker-registry garbage-collect <flags> <config>` on the registry [`spawn_distribution`]
/// set up under `work`; distribution collects only while that registry is stopped.
pub fn garbage_collect(work: &Path, flags: &[&str]) -> Command {
    let mut cmd = Command::new("docker-registry");
    cmd.arg("garbage-collect")
        .args(flags)
        .arg(distribution_config(work));
    cmd
}
