//! Several node processes forming one cluster, and haproxy in front of them.
//!
//! The first node bootstraps; every other one starts with `REGISTRY_CLUSTER_JOIN` pointing at
//! a member and is ready once it has been added. Waits are on the cluster's own status
//! (`/cluster/status` on the cluster port), never on sleeps.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipcr_proto::admin::ClusterStatus;

use crate::node::{CLUSTER_SECRET, Node, free_port};

/// How long a cluster may take to form or change.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster of node processes.
pub struct Cluster {
    /// Its nodes, in start order. A removed node stays in the list (stopped or not).
    pub nodes: Vec<Node>,
    env: Vec<(String, String)>,
}

/// `GET <cluster url>/cluster/status` with the cluster secret.
pub fn status_of(cluster_url: &str) -> Result<ClusterStatus, String> {
    status_within(cluster_url, Duration::from_secs(5))
}

/// [`status_of`], giving up after `timeout` (a paused node never answers).
pub fn status_within(cluster_url: &str, timeout: Duration) -> Result<ClusterStatus, String> {
    let resp = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?
        .get(format!("{cluster_url}/cluster/status"))
        .bearer_auth(CLUSTER_SECRET)
        .send()
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.json().map_err(|e| e.to_string())
}

impl Cluster {
    /// Start `n` nodes (with extra `REGISTRY_*` overrides) and wait until all are voters.
    pub fn start(n: usize, env: &[(&str, &str)]) -> Cluster {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let first = Node::start_with_env("node0", &borrowed(&env));
        let mut cluster = Cluster {
            nodes: vec![first],
            env,
        };
        for _ in 1..n {
            cluster.add_node();
        }
        cluster.wait_voters(n);
        cluster
    }

    /// Start one more node that joins through a running member, and return without waiting
    /// for it to be ready. Answers its index.
    pub fn add_node_unready(&mut self) -> usize {
        let member = self
            .nodes
            .iter_mut()
            .find_map(|n| n.is_running().then(|| n.cluster_url()))
            .expect("a running member to join through");
        let mut env = self.env.clone();
        env.push(("REGISTRY_CLUSTER_JOIN".into(), member));
        let i = self.nodes.len();
        let node = Node::start_unready(&format!("node{i}"), &borrowed(&env));
        self.nodes.push(node);
        i
    }

    /// Start one more node that joins through a running member, and wait until it is ready.
    /// Answers its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.add_node_unready();
        self.nodes[i].wait_first_ready(crate::node::READY_TIMEOUT);
        i
    }

    /// The status as node `i` sees it.
    pub fn status(&self, i: usize) -> Result<ClusterStatus, String> {
        status_of(&self.nodes[i].cluster_url())
    }

    /// Wait until some running node reports `n` voters and a leader, and every running node
    /// agrees on that leader.
    pub fn wait_voters(&mut self, n: usize) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.agreed() {
                Ok(s) if s.members.iter().filter(|m| m.voter).count() == n => return,
                Ok(s) => last = format!("{} voters", s.members.iter().filter(|m| m.voter).count()),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not reach {n} voters within {CLUSTER_TIMEOUT:?}: {last}");
    }

    /// The status every running node agrees on (same leader), or why not.
    fn agreed(&mut self) -> Result<ClusterStatus, String> {
        let mut seen: Option<ClusterStatus> = None;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            let s = self.status(i)?;
            if s.leader.is_none() {
                return Err(format!("node{i} knows no leader"));
            }
            if let Some(prev) = &seen
                && prev.leader != s.leader
            {
                return Err("nodes disagree on the leader".into());
            }
            seen = Some(s);
        }
        seen.ok_or_else(|| "no running node".into())
    }

    /// Remove node `i` from the cluster (`/cluster/leave` through another running member),
    /// then stop it. It stays in [`Cluster::nodes`], stopped.
    pub fn remove_node(&mut self, i: usize) {
        let id = self.status(i).expect("the leaving node's status").id;
        let member = (0..self.nodes.len())
            .find(|&m| m != i && self.nodes[m].is_running())
            .expect("another running member");
        let resp = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(CLUSTER_TIMEOUT)
            .build()
            .expect("http client")
            .post(format!("{}/cluster/leave", self.nodes[member].cluster_url()))
            .bearer_auth(CLUSTER_SECRET)
            .json(&ipcr_proto::admin::LeaveRequest { id })
            .send()
            .expect("POST /cluster/leave");
        assert!(resp.status().is_success(), "leave of node{i}: {}", resp.status());
        self.nodes[i].kill9();
    }

    /// The leader's status, once the running nodes agree on a leader.
    pub fn wait_leader_status(&mut self) -> ClusterStatus {
        let i = self.wait_leader();
        self.status(i).expect("the leader's status")
    }

    /// Index of the node that currently leads (waits until the running nodes agree on one).
    pub fn wait_leader(&mut self) -> usize {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(s) = self.agreed() {
                let leader = s.leader.expect("agreed on a leader");
                for i in 0..self.nodes.len() {
                    if self.nodes[i].is_running() && self.status(i).is_ok_and(|st| st.id == leader) {
                        return i;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no agreed leader within {CLUSTER_TIMEOUT:?}");
    }

    /// The registry hosts (`127.0.0.1:<port>`) of the running nodes.
    pub fn hosts(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            if n.is_running() {
                out.push(n.host());
            }
        }
        out
    }
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// haproxy balancing round-robin over registry nodes, with health checks on `/ready`.
pub struct Balancer {
    port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Balancer {
    /// Start haproxy in front of `backends` (`host:port` each) and wait until it answers.
    pub fn start(backends: &[String]) -> Balancer {
        Self::launch(backends, false)
    }

    /// Write the configuration (round robin, health checks on `/ready`; the admin socket
    /// `admin.sock` when `admin`), start haproxy and wait until it answers.
    fn launch(backends: &[String], admin: bool) -> Balancer {
        let dir = tempfile::Builder::new()
            .prefix("ipcr-haproxy-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let stats = if admin {
            format!(
                "  stats socket {} level admin\n",
                dir.path().join("admin.sock").display()
            )
        } else {
            String::new()
        };
        let mut config = format!(
            "global\n  maxconn 2000\n{stats}\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 600s\n  timeout server 600s\n  option redispatch\n  retries 2\n  retry-on conn-failure empty-response\n\nfrontend registry\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\nbackend nodes\n  balance roundrobin\n  option httpchk GET /ready\n  http-check expect status 200\n  default-server inter 300ms fall 2 rise 2\n"
        );
        for (i, b) in backends.iter().enumerate() {
            config.push_str(&format!("  server n{i} {b} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("writing haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy (apt-get install haproxy)");
        let b = Balancer {
            port,
            child: Some(child),
            _dir: dir,
            config: path,
        };
        b.wait_answering();
        b
    }

    fn wait_answering(&self) {
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if client
                .get(format!("{}/v2/", self.base_url()))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("haproxy did not answer within 20 s ({})", self.config.display());
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host())
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One server of the balancer as haproxy's `show stat` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStat {
    /// `status`: `UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/2`, ...
    pub status: String,
    /// `scur`: requests (streams) it is serving now.
    pub current: u64,
    /// `stot`: requests it has been given so far.
    pub total: u64,
}

impl Balancer {
    /// Like [`Balancer::start`] (the same configuration), plus haproxy's admin socket, so that a
    /// test can drain a server before stopping its node ([`Balancer::set_state`]) and watch its
    /// sessions ([`Balancer::server_stat`]).
    pub fn start_with_admin(backends: &[String]) -> Balancer {
        Self::launch(backends, true)
    }

    /// Send one command to the admin socket (only after [`Balancer::start_with_admin`]) and
    /// return haproxy's answer.
    pub fn admin(&self, command: &str) -> String {
        use std::io::{Read as _, Write as _};
        let socket = self._dir.path().join("admin.sock");
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)
            .unwrap_or_else(|e| panic!("connecting to haproxy's admin socket {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("socket timeout");
        // Without `prompt` mode haproxy answers one command and closes the connection.
        stream
            .write_all(format!("{command}\n").as_bytes())
            .expect("writing to haproxy's admin socket");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("reading haproxy's answer to `{command}`: {e}"));
        answer
    }

    /// `set server nodes/n<i> state <state>`: `ready`, `drain` (no new requests, those in
    /// flight finish, health checks go on) or `maint`.
    pub fn set_state(&self, i: usize, state: &str) {
        let answer = self.admin(&format!("set server nodes/n{i} state {state}"));
        assert!(
            answer.trim().is_empty(),
            "haproxy refused state {state} for n{i}: {answer}"
        );
    }

    /// Server `n<i>` as `show stat` reports it.
    pub fn server_stat(&self, i: usize) -> ServerStat {
        let csv = self.admin("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("`show stat` without a header: {csv}"))
            .split(',')
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .unwrap_or_else(|| panic!("`show stat` has no column {name}"))
        };
        let (px, sv, status, scur, stot) = (
            col("pxname"),
            col("svname"),
            col("status"),
            col("scur"),
            col("stot"),
        );
        let name = format!("n{i}");
        let row: Vec<&str> = lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|r| r.get(px) == Some(&"nodes") && r.get(sv) == Some(&name.as_str()))
            .unwrap_or_else(|| panic!("`show stat` has no server nodes/{name}: {csv}"));
        let number = |c: usize| row[c].parse::<u64>().unwrap_or(0);
        ServerStat {
            status: row[status].to_string(),
            current: number(scur),
            total: number(stot),
        }
    }

    /// Wait until server `n<i>` satisfies `done`, or panic after `timeout`.
    pub fn wait_server(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ServerStat) -> bool,
    ) -> ServerStat {
        let deadline = Instant::now() + timeout;
        loop {
            let stat = self.server_stat(i);
            if done(&stat) {
                return stat;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy server n{i} not {what} within {timeout:?}: {stat:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
