//! One node process under test, however it is launched: its temporary directory (with `data/`
//! and the log file every start appends to), the child process, signals (`kill -9`, `SIGTERM`,
//! `SIGSTOP`/`SIGCONT`), and readiness through the node's own `/ready`.
//!
//! The process is killed when dropped, on success and on failure alike. When the test is
//! failing (the thread is panicking) the tail of the log is printed and the directory is kept,
//! so that the whole log and the data can be read afterwards. [`crate::Node`] (loopback) and
//! [`crate::netns::NsNode`] (a network namespace) are both built on it.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of the log printed when a test fails (the whole file is kept on disk).
const LOG_TAIL_LINES: usize = 300;
/// Interval between two `/ready` probes or exit checks.
const POLL: Duration = Duration::from_millis(20);

/// A node's process and everything it owns on disk.
pub struct Process {
    name: String,
    /// Removed when dropped, unless [`Process::keep`] took it.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    child: Option<Child>,
    starts: u32,
    paused: bool,
}

impl Process {
    /// A process named `name`, not started, with a fresh directory holding an empty `data/`.
    pub fn new(name: &str, prefix: &str) -> Process {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}{name}-"))
            .tempdir()
            .expect("creating the node's temporary directory");
        std::fs::create_dir(dir.path().join("data")).expect("creating the data directory");
        Process {
            name: name.to_string(),
            path: dir.path().to_path_buf(),
            dir: Some(dir),
            child: None,
            starts: 0,
            paused: false,
        }
    }

    /// The name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The temporary directory (the working directory of the process).
    pub fn root(&self) -> &Path {
        &self.path
    }

    /// The data directory (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// The log file: stdout and stderr of every start, appended.
    pub fn log_path(&self) -> PathBuf {
        self.root().join("node.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Append a `==== cluster-tests: ... ====` line to the log, so that what the test did can
    /// be read among what the node said.
    pub fn note(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(self.log_path()) {
            let _ = writeln!(log, "==== cluster-tests: {what} ====");
        }
    }

    /// Start `cmd` (already given its program, arguments and environment) with the log as
    /// stdout and stderr, in the node's directory, without the test's own `REGISTRY_*`
    /// variables except those `cmd` sets. `place` says where it runs, for the log.
    pub fn spawn(&mut self, mut cmd: Command, place: &str) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        self.note(&format!("start #{} of {} {place}", self.starts, self.name));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the node's log file");
        // The node rejects unknown REGISTRY_* keys: the test's own environment must not leak in.
        let set: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_os_string()).collect();
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") && !set.contains(&key) {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {place}: {e}", self.name));
        self.child = Some(child);
        self.paused = false;
    }

    /// Whether the process is running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether the process is stopped by [`Process::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .id()
    }

    /// Send `signal` (`TERM`, `STOP`, `CONT`, ...) with `kill`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        self.note(&format!("SIG{signal} sent to {}", self.name));
        crate::tools::must_run(
            Command::new("kill").args([format!("-{signal}"), pid.to_string()]),
            Duration::from_secs(10),
        );
    }

    /// `SIGSTOP`: the process freezes with everything it holds (sockets stay open, nothing is
    /// answered), as a long GC pause or an overloaded VM would.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
    }

    /// `SIGCONT` after [`Process::pause`].
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    /// `kill -9` the process and reap it. Everything not on disk is lost.
    pub fn kill9(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        // std's Child::kill is SIGKILL on Unix: no shutdown path runs (a stopped process dies
        // too).
        child.kill().expect("sending SIGKILL to the node");
        child.wait().expect("reaping the node");
        self.paused = false;
        self.note(&format!("SIGKILL sent to {}", self.name));
    }

    /// Make sure no process is left: `kill -9` a running one, reap one that exited.
    pub fn ensure_stopped(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
    }

    /// Wait until the process exits by itself (after `SIGTERM`) and reap it; panics after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        loop {
            if let Some(status) = child.try_wait().expect("polling the node process") {
                self.child = None;
                self.note(&format!("{} exited with {status}", self.name));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running {timeout:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(POLL);
        }
    }

    /// Wait until `GET <base>/ready` answers 200. Panics (and so prints the log) when the
    /// process exits first or `timeout` passes.
    pub fn wait_ready(&mut self, base: &str, timeout: Duration) {
        if let Err(status) = self.wait_ready_or_exit(base, timeout) {
            panic!("{} exited with {status} before it was ready", self.name);
        }
    }

    /// [`Process::wait_ready`], answering the exit status when the process exits first.
    pub fn wait_ready_or_exit(
        &mut self,
        base: &str,
        timeout: Duration,
    ) -> Result<(), std::process::ExitStatus> {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("{base}/ready");
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .unwrap_or_else(|| panic!("{} is not running", self.name));
            if let Some(status) = child.try_wait().expect("polling the node process") {
                self.child = None;
                self.note(&format!("{} exited with {status} before it was ready", self.name));
                return Err(status);
            }
            let last = match http.get(&url).send() {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(r) => format!("status {}", r.status()),
                Err(e) => format!("error: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}; last /ready: {last}",
                self.name
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "---- {} log ({}), last {} of {} lines ----",
                self.name,
                self.log_path().display(),
                lines.len() - from,
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
            eprintln!("---- end of {} log ----", self.name);
            self.keep();
        }
    }
}

impl Process {
    /// Keep the directory (data and log) after the test, and say where it is.
    pub fn keep(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
            eprintln!("kept {}'s data and log in {}", self.name, self.path.display());
        }
    }
}
