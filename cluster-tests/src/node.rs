//! One `ipcr-node` process under test: its binary, a loopback port taken from the OS, its own
//! temporary data directory and log file, readiness through its own `/ready`, `kill -9` and
//! restart on the same data directory.
//!
//! The process itself (signals, log, directory kept on failure) is a [`Process`].

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::Process;

/// How long a node may take from spawn to `/ready` (a restart replays its Raft log).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or killed) node process and everything it owns on disk.
pub struct Node {
    process: Process,
    bin: PathBuf,
    port: u16,
    cluster_port: u16,
    /// The debug listener's port, serving metrics, when the environment turns them on
    /// (`REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED`).
    debug_port: Option<u16>,
    extra_env: Vec<(String, String)>,
}

impl Node {
    /// Start a node in a fresh directory and wait until it is ready.
    pub fn start(name: &str) -> Node {
        Self::start_with_env(name, &[])
    }

    /// A node with a fresh directory and ports, not running yet.
    fn unstarted(name: &str, env: &[(&str, &str)]) -> Node {
        Node {
            process: Process::new(name, "ipcr-"),
            bin: node_binary(),
            port: free_port(),
            cluster_port: free_port(),
            debug_port: metrics_asked(env).then(free_port),
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// Like [`Node::start`], with extra `REGISTRY_*` overrides (kept across restarts).
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Node {
        let mut node = Self::unstarted(name, env);
        node.spawn();
        node.wait_first_ready(READY_TIMEOUT);
        node
    }

    /// Wait until a node's first start is ready. A port that [`free_port`] handed out may be
    /// taken by another test's process before the node binds it: then the node exits at once
    /// saying so, and it starts again on other ports (nobody knows its ports yet).
    pub fn wait_first_ready(&mut self, timeout: Duration) {
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            let base = self.base_url();
            match self.process.wait_ready_or_exit(&base, timeout) {
                Ok(()) => return,
                Err(status) => {
                    let clashes = self.log().matches("Address already in use").count();
                    if attempt == TRIES || clashes < attempt {
                        panic!("{} exited with {status} before it was ready", self.name());
                    }
                    self.port = free_port();
                    self.cluster_port = free_port();
                    self.debug_port = self.debug_port.map(|_| free_port());
                    self.spawn();
                }
            }
        }
    }

    /// The node's name in messages.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<debug port>`, where the node serves its metrics (`/metrics`), when its
    /// environment turned them on.
    pub fn metrics_host(&self) -> Option<String> {
        self.debug_port.map(|p| format!("127.0.0.1:{p}"))
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

    /// The data directory (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.process.data_dir()
    }

    /// The log file: stdout and stderr of every start, appended.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Whether the process is running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The process, for signals (`pause`, `resume`) and its directory.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        let cluster = format!("127.0.0.1:{}", self.cluster_port);
        let mut env = self.extra_env.clone();
        if let Some(port) = self.debug_port {
            env.push(("REGISTRY_HTTP_DEBUG_ADDR".into(), format!("127.0.0.1:{port}")));
        }
        serve(&mut cmd, &self.host(), &cluster, &self.data_dir(), &env);
        let place = format!("on {}", self.host());
        self.process.spawn(cmd, &place);
    }

    /// Wait until `GET /ready` answers 200. Panics (and so prints the log) when the process
    /// exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let base = self.base_url();
        self.process.wait_ready(&base, timeout);
    }

    /// `kill -9` the process and reap it. Everything not on disk is lost.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Start the process again on the same data directory and port, and wait until ready.
    /// Kills it first when it is still running.
    pub fn restart(&mut self) {
        self.process.ensure_stopped();
        self.spawn();
        self.wait_ready(READY_TIMEOUT);
    }
}

/// Make `cmd` run `ipcr-node serve` as every test node does: registry port `registry` and
/// cluster port `cluster` (`host:port`), the shared secret, data in `data`, deletes on, info
/// logs, Raft timing left at the defaults (as a user gets them); then `extra` on top.
pub(crate) fn serve(
    cmd: &mut Command,
    registry: &str,
    cluster: &str,
    data: &Path,
    extra: &[(String, String)],
) {
    cmd.arg("serve")
        .env("REGISTRY_HTTP_ADDR", registry)
        .env("REGISTRY_CLUSTER_ADDR", cluster)
        .env("REGISTRY_CLUSTER_SECRET", CLUSTER_SECRET)
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", data)
        .env("REGISTRY_STORAGE_DELETE_ENABLED", "true")
        .env("REGISTRY_LOG_LEVEL", "info");
    for (k, v) in extra {
        cmd.env(k, v);
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

    /// Spawn a node with `env` and return at once, without waiting for it to be ready (it may
    /// never be).
    pub fn start_unready(name: &str, env: &[(&str, &str)]) -> Node {
        let mut node = Self::unstarted(name, env);
        node.spawn();
        node
    }
}

impl Node {
    /// Send SIGTERM: the node stops accepting connections and finishes the requests in
    /// flight before it exits. Returns at once; [`Node::wait_exit`] waits for the exit.
    pub fn sigterm(&mut self) {
        self.process.signal("TERM");
    }

    /// Wait until the process exits by itself (after [`Node::sigterm`]) and reap it; panics
    /// after `timeout`. [`Node::restart`] starts it again.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.process.wait_exit(timeout)
    }
}

/// Whether `env` turns the node's metrics on.
fn metrics_asked(env: &[(&str, &str)]) -> bool {
    env.iter()
        .any(|(k, v)| *k == "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED" && *v == "true")
}
