//! The Estuary (and Kubo RPC) emulator, `src/bin/estuary-emulator.rs`, as a process the tests
//! start, break on demand, `kill -9` and restart on the same port and directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::node::{built_binary, free_port};

/// The token the emulator accepts (Estuary's `EST<uuid>ARY` shape).
pub const TOKEN: &str = "EST6f1b2c3d-0000-4000-8000-000000000001ARY";

/// A running emulator.
pub struct Emulator {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Emulator {
    /// Start one on a fresh directory.
    pub fn start() -> Emulator {
        let dir = tempfile::Builder::new()
            .prefix("ipcr-estuary-")
            .tempdir()
            .expect("emulator directory");
        let mut e = Emulator {
            child: None,
            dir,
            port: free_port(),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let bin = built_binary(
            "estuary-emulator",
            "IPCR_EMULATOR_BIN",
            "cargo build -p cluster-tests --bin estuary-emulator",
        );
        let mut child = Command::new(bin)
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--addr", &format!("127.0.0.1:{}", self.port)])
            .args(["--token", TOKEN])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting estuary-emulator");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("emulator stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("emulator's first line");
        assert!(line.starts_with("listening on"), "emulator said {line:?}");
        self.child = Some(child);
    }

    /// Its base URL (API, shuttle, gateway and Kubo RPC alike).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its content directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Switch the fault mode: `ok`, `refuse`, `hang`, `wrong-cid`, `corrupt`.
    pub fn set_mode(&self, mode: &str) {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/_emulator/mode?set={mode}", self.url()))
            .send()
            .expect("emulator mode");
        assert_eq!(resp.status().as_u16(), 204, "emulator refused mode {mode}");
    }

    /// Call counters: `adds`, `reads`, `contents`.
    pub fn stats(&self) -> serde_json::Value {
        reqwest::blocking::Client::new()
            .get(format!("{}/_emulator/stats", self.url()))
            .timeout(Duration::from_secs(10))
            .send()
            .and_then(|r| r.json())
            .expect("emulator stats")
    }

    /// `kill -9` it: the backend is down.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill9();
    }
}
