//! The peer the benchmarks compare against: distribution 2.8.2 (Debian's `docker-registry`),
//! configured like IPCR (filesystem storage, deletes on, logs quiet).

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// Start `docker-registry` on `127.0.0.1:port` with its data and log under `work`. The caller
/// waits for `/v2/` and kills the child.
pub fn spawn_distribution(work: &Path, port: u16) -> Result<Child> {
    let config = work.join("distribution.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            work.join("distribution-data").display()
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
