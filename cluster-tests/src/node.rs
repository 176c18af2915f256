//! One `ipcr-node` process under test: its binary, a loopback port taken from the OS, its own
//! temporary data directory and log file, readiness through its own `/ready`, `kill -9` and
//! restart on the same data directory.
//!
//! The process is killed when the [`Node`] is dropped, on success and on failure alike. When
//! the test is failing (the thread is panicking) the tail of the node's log is printed and its
//! directory is kept, so that the whole log and the data can be read afterwards.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take from spawn to `/ready` (a restart replays its Raft log).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the log printed when a test fails (the whole file is kept on disk).
const LOG_TAIL_LINES: usize = 300;

/// Interval between two `/ready` probes.
const READY_POLL: Duration = Duration::from_millis(20);

/// A running (or killed) node process and everything it owns on disk.
pub struct Node {
    name: String,
    bin: PathBuf,
    /// `None` only after `Drop` decided to keep it.
    dir: Option<tempfile::TempDir>,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
    starts: u32,
    extra_env: Vec<(String, String)>,
}

impl Node {
    /// Start a node in a fresh directory and wait until it is ready.
    pub fn start(name: &str) -> Node {
        Self::start_with_env(name, &[])
    }

    /// A node with a fresh directory and ports, not running yet.
    fn unstarted(name: &str, env: &[(&str, &str)]) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ipcr-{name}-"))
            .tempdir()
            .expect("creating the node's temporary directory");
        std::fs::create_dir(dir.path().join("data")).expect("creating the data directory");
        Node {
            name: name.to_string(),
            bin: node_binary(),
            dir: Some(dir),
            port: free_port(),
            cluster_port: free_port(),
            child: None,
            starts: 0,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// Like [`Node::start`], with extra `REGISTRY_*` overrides (kept across restarts).
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Node {
        let mut node = Self::unstarted(name, env);
        node.spawn();
        node.wait_ready(READY_TIMEOUT);
        node
    }

    /// The node's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<cluster port>`: the node's cluster port, as peers reach it.
    pub fn cluster_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.cluster_port)
    }

    /// `127.0.0.1:<port>`, the registry host clients name in references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host())
    }

    fn root(&self) -> &Path {
        self.dir.as_ref().expect("the node's directory").path()
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

    /// Whether the process is running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the node's log file");
        writeln!(
            log,
            "==== cluster-tests: start #{} of {} on {} ====",
            self.starts,
            self.name,
            self.host()
        )
        .expect("writing the node's log file");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        // The node rejects unknown REGISTRY_* keys: the test's own environment must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("REGISTRY_HTTP_ADDR", self.host())
            .env(
                "REGISTRY_CLUSTER_ADDR",
                format!("127.0.0.1:{}", self.cluster_port),
            )
            .env("REGISTRY_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", self.data_dir())
            .env("REGISTRY_STORAGE_DELETE_ENABLED", "true")
            .env("REGISTRY_LOG_LEVEL", "info")
            // Fast elections, so that a restarted node is ready in well under a second.
            .env("REGISTRY_CLUSTER_HEARTBEAT", "100ms")
            .env("REGISTRY_CLUSTER_ELECTION_TIMEOUT", "300ms");
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} ({}): {e}", self.name, self.bin.display()));
        self.child = Some(child);
    }

    /// Wait until `GET /ready` answers 200. Panics (and so prints the log) when the process
    /// exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("{}/ready", self.base_url());
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .unwrap_or_else(|| panic!("{} is not running", self.name));
            if let Some(status) = child.try_wait().expect("polling the node process") {
                self.child = None;
                panic!("{} exited with {status} before it was ready", self.name);
            }
            let last = match http.get(&url).send() {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return,
                Ok(r) => format!("status {}", r.status()),
                Err(e) => format!("error: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}; last /ready: {last}",
                self.name
            );
            std::thread::sleep(READY_POLL);
        }
    }

    /// `kill -9` the process and reap it. Everything not on disk is lost.
    pub fn kill9(&mut self) {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        // std's Child::kill is SIGKILL on Unix: no shutdown path runs.
        child.kill().expect("sending SIGKILL to the node");
        child.wait().expect("reaping the node");
        let mut log = OpenOptions::new().append(true).open(self.log_path()).ok();
        if let Some(log) = log.as_mut() {
            let _ = writeln!(log, "==== cluster-tests: SIGKILL sent to {} ====", self.name);
        }
    }

    /// Start the process again on the same data directory and port, and wait until ready.
    /// Kills it first when it is still running.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.spawn();
        self.wait_ready(READY_TIMEOUT);
    }
}

impl Drop for Node {
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
            if let Some(dir) = self.dir.take() {
                eprintln!("kept {}'s data and log in {}", self.name, dir.keep().display());
            }
        }
    }
}

/// The cluster secret every test node shares.
pub const CLUSTER_SECRET: &str = "cluster-tests-secret";

/// A port on 127.0.0.1 that the OS just handed out. The listener is dropped so the node can
/// bind it; another process could take it in between, and then the node's log says so.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The `ipcr-node` binary built by `cargo build` in this workspace's target directory:
/// `$IPCR_NODE_BIN` when set, else see [`built_binary`].
pub fn node_binary() -> PathBuf {
    built_binary("ipcr-node", "IPCR_NODE_BIN", "cargo build -p ipcr-node")
}

/// A binary of this workspace: `$<env>` when set, else next to the test binary
/// (`target/<profile>/deps/..`), else under `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn built_binary(name: &str, env: &str, build: &str) -> PathBuf {
    if let Some(explicit) = std::env::var_os(env) {
        let path = PathBuf::from(explicit);
        assert!(path.is_file(), "{env}={} is not a file", path.display());
        return path;
    }
    let name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        if dir.ends_with("deps")
            && let Some(profile_dir) = dir.parent()
        {
            candidates.push(profile_dir.join(&name));
        }
        candidates.push(dir.join(&name));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_relative() { workspace.join(t) } else { t })
        .unwrap_or_else(|| workspace.join("target"));
    candidates.push(target.join("debug").join(&name));
    candidates.push(target.join("release").join(&name));
    match candidates.iter().find(|p| p.is_file()) {
        Some(found) => found.clone(),
        None => panic!(
            "the {name} binary is missing (looked for {}); run `{build}` first",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl Node {
    /// Spawn a node that neither bootstraps a cluster of its own nor joins one by itself, and
    /// return without waiting for `/ready`: it waits for an operator to add it
    /// (`ipcr-node join <member> --node <its cluster url>`).
    ///
    /// A node with no Raft state and no join target would initialize a one-member cluster, so
    /// its join target is its own cluster port, which cannot add it (it knows no leader and
    /// answers `503`, and the node keeps asking). Once a member has added it, the node is ready
    /// and that join request succeeds as a no-op. Call [`Node::wait_ready`] after the join.
    pub fn start_awaiting_join(name: &str, env: &[(&str, &str)]) -> Node {
        let mut node = Self::unstarted(name, env);
        let own = node.cluster_url();
        node.extra_env.retain(|(k, _)| k != "REGISTRY_CLUSTER_JOIN");
        node.extra_env.push(("REGISTRY_CLUSTER_JOIN".to_string(), own));
        node.spawn();
        node
    }
}

impl Node {
    /// Send SIGTERM: the node stops accepting connections and finishes the requests in
    /// flight before it exits. Returns at once; [`Node::wait_exit`] waits for the exit.
    pub fn sigterm(&mut self) {
        let pid = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
            .id();
        let mut log = OpenOptions::new().append(true).open(self.log_path()).ok();
        if let Some(log) = log.as_mut() {
            let _ = writeln!(log, "==== cluster-tests: SIGTERM sent to {} ====", self.name);
        }
        crate::tools::must_run(
            Command::new("kill").args(["-TERM", &pid.to_string()]),
            Duration::from_secs(10),
        );
    }

    /// Wait until the process exits by itself (after [`Node::sigterm`]) and reap it; panics
    /// after `timeout`. [`Node::restart`] starts it again.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        loop {
            if let Some(status) = child.try_wait().expect("polling the node process") {
                self.child = None;
                let mut log = OpenOptions::new().append(true).open(self.log_path()).ok();
                if let Some(log) = log.as_mut() {
                    let _ = writeln!(log, "==== cluster-tests: {} exited with {status} ====", self.name);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running {timeout:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(READY_POLL);
        }
    }
}
