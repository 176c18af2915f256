//! Node processes each in its own Linux network namespace, so that a test can cut one node off
//! from its peers while still talking to every node itself (what loopback ports cannot do).
//!
//! Layout of one [`NetLab`] (all names carry the test process's id and a counter, so parallel
//! tests and runs never collide):
//!
//! ```text
//!   root ns (the test)          hub ns                    node ns i
//!   ipcr<pid>x<k> 10.77.K.254 ── vroot ─┐
//!                                       br0 ── vn<i> ──── eth0 10.77.K.<i+1>
//! ```
//!
//! The bridge lives in a namespace of its own: the root namespace's firewall (Docker sets the
//! `FORWARD` policy to `DROP`, and `br_netfilter` sends bridged frames through it) never sees
//! node-to-node traffic. A partition is `iptables -j DROP` inside the isolated node's namespace
//! for the other nodes' addresses, both directions, so packets vanish (peers see timeouts, as
//! in a real partition) while the test's address, 10.77.K.254, still gets through.
//!
//! [`NetLab`] removes its links and namespaces when dropped, on failure too; [`NsNode`] is a
//! [`Process`] like [`crate::Node`]: killed when dropped, its log printed when the test fails. [`NsCluster`] drops its nodes before its lab. Needs root, `ip` (iproute2)
//! and `iptables`; [`require_netns`] skips the test locally, and fails it under `CI=true`.
//! Only the test binaries under `tests/` and the benchmarks call this module.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipcr_proto::admin::ClusterStatus;

use crate::cluster::{CLUSTER_TIMEOUT, status_of};
use crate::node::{READY_TIMEOUT, node_binary, serve};
use crate::process::Process;
use crate::tools;

/// The registry port every node listens on, inside its own namespace.
pub const REGISTRY_PORT: u16 = 5000;
/// The cluster port every node listens on, inside its own namespace.
pub const CLUSTER_PORT: u16 = 5001;

/// How long one `ip`/`iptables` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval between two polls of a node's status.
const POLL: Duration = Duration::from_millis(50);

/// Labs created by this process (part of every name).
static LABS: AtomicU32 = AtomicU32::new(0);
/// Picking a free subnet and creating its links is one step per process.
static CREATING: Mutex<()> = Mutex::new(());

/// Whether this machine can run namespaced nodes (root, `ip`, `iptables`). When not: panics
/// under CI, else prints a skip line, and the caller returns early.
pub fn require_netns() -> bool {
    if tools::require_tool("ip").is_none() || tools::require_tool("iptables").is_none() {
        return false;
    }
    let probe = format!(
        "ipcr{}probe{}",
        std::process::id(),
        LABS.fetch_add(1, Ordering::SeqCst)
    );
    let can = tools::run(Command::new("ip").args(["netns", "add", &probe]), COMMAND_TIMEOUT)
        .status
        .success();
    if can {
        let _ = tools::run(Command::new("ip").args(["netns", "del", &probe]), COMMAND_TIMEOUT);
    }
    tools::require("network namespaces (root and iproute2: `ip netns add`)", can)
}

/// Run `program args`, `Err` with everything it printed unless it succeeds.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = tools::run(Command::new(program).args(args), COMMAND_TIMEOUT);
    if out.status.success() {
        Ok(())
    } else {
        Err(out.describe())
    }
}

fn must(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        panic!("{e}");
    }
}

/// A bridge and one namespace per node; see the module header.
pub struct NetLab {
    tag: String,
    subnet: u8,
    hub: Option<String>,
    root_link: Option<String>,
    spaces: Vec<String>,
}

impl NetLab {
    /// Create the bridge and `n` node namespaces on a 10.77.K.0/24 no interface of the root
    /// namespace uses yet.
    pub fn create(n: usize) -> NetLab {
        assert!(n < 250, "at most 249 nodes");
        let _creating = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let k = LABS.fetch_add(1, Ordering::SeqCst);
        let subnet = free_subnet(pid as usize * 7 + k as usize);
        // Pushed as created: Drop removes whatever exists, even after a failure half-way.
        let mut lab = NetLab {
            tag: format!("ipcr{pid}x{k}"),
            subnet,
            hub: None,
            root_link: None,
            spaces: Vec::new(),
        };
        let hub = format!("{}-hub", lab.tag);
        must("ip", &["netns", "add", &hub]);
        lab.hub = Some(hub.clone());
        must("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        let root_link = lab.tag.clone();
        must(
            "ip",
            &[
                "link", "add", &root_link, "type", "veth", "peer", "name", "vroot", "netns", &hub,
            ],
        );
        lab.root_link = Some(root_link.clone());
        must("ip", &["-n", &hub, "link", "set", "vroot", "master", "br0", "up"]);
        must(
            "ip",
            &["addr", "add", &format!("{}/24", lab.test_ip()), "dev", &root_link],
        );
        must("ip", &["link", "set", &root_link, "up"]);
        for i in 0..n {
            let ns = format!("{}-n{i}", lab.tag);
            must("ip", &["netns", "add", &ns]);
            lab.spaces.push(ns.clone());
            let port = format!("vn{i}");
            must(
                "ip",
                &[
                    "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            must("ip", &["-n", &hub, "link", "set", &port, "master", "br0", "up"]);
            must(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", lab.ip(i)),
                    "dev",
                    "eth0",
                ],
            );
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, i + 1)
    }

    /// The root namespace's address on the bridge: where the test's requests come from.
    pub fn test_ip(&self) -> String {
        format!("10.77.{}.254", self.subnet)
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: usize) -> &str {
        &self.spaces[i]
    }

    /// Cut node `i` off from every other node, both directions, silently (`DROP`); the test
    /// still reaches it.
    pub fn isolate(&self, i: usize) {
        let ns = self.namespace(i);
        for j in (0..self.spaces.len()).filter(|&j| j != i) {
            let peer = self.ip(j);
            must(
                "ip",
                &[
                    "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP",
                ],
            );
            must(
                "ip",
                &[
                    "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP",
                ],
            );
        }
    }

    /// Limit what node `i`'s namespace sends to `rate` (tc's units: `1gbit`, `200mbit`) with a
    /// token bucket: a registry at the far end of a link, for benchmarks.
    pub fn limit_egress(&self, i: usize, rate: &str) {
        let ns = self.namespace(i);
        must(
            "ip",
            &[
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate,
                "burst", "1mb", "latency", "50ms",
            ],
        );
    }

    /// Undo [`NetLab::isolate`] (the namespace is ours: its rules are only the partition's).
    pub fn heal(&self, i: usize) {
        let ns = self.namespace(i);
        for chain in ["INPUT", "OUTPUT"] {
            must("ip", &["netns", "exec", ns, "iptables", "-F", chain]);
        }
    }
}

/// The first K (from `start`) whose 10.77.K.0/24 appears in no address or route of the root
/// namespace.
fn free_subnet(start: usize) -> u8 {
    let show = |args: &[&str]| tools::run(Command::new("ip").args(args), COMMAND_TIMEOUT).stdout_text();
    let used = format!(
        "{}\n{}",
        show(&["-o", "-4", "addr", "show"]),
        show(&["-4", "route", "show"])
    );
    (0..250)
        .map(|o| ((start + o) % 250 + 1) as u8)
        .find(|k| !used.contains(&format!("10.77.{k}.")))
        .expect("a free 10.77.K.0/24")
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace removes its links, but asynchronously: the root end goes first,
        // by name, so that nothing of ours is left in the root namespace when we return.
        let mut left = Vec::new();
        if let Some(link) = self.root_link.take()
            && let Err(e) = run("ip", &["link", "del", &link])
        {
            left.push(e);
        }
        for ns in self.spaces.drain(..).chain(self.hub.take()) {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                left.push(e);
            }
        }
        if !left.is_empty() {
            eprintln!("cleaning up network namespaces {}: {}", self.tag, left.join("\n"));
        }
    }
}

/// One `ipcr-node` process in a namespace of a [`NetLab`], bound to its namespace address.
pub struct NsNode {
    process: Process,
    namespace: String,
    ip: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
}

impl NsNode {
    /// Start node `i` of `lab` (joining through `join`, a cluster URL, when given), with extra
    /// `REGISTRY_*` overrides, and wait until it is ready.
    pub fn start(lab: &NetLab, i: usize, join: Option<&str>, extra: &[(String, String)]) -> NsNode {
        let mut env = extra.to_vec();
        if let Some(join) = join {
            env.push(("REGISTRY_CLUSTER_JOIN".to_string(), join.to_string()));
        }
        let mut node = NsNode {
            process: Process::new(&format!("node{i}"), "ipcr-ns-"),
            namespace: lab.namespace(i).to_string(),
            ip: lab.ip(i),
            bin: node_binary(),
            env,
        };
        node.spawn();
        node.wait_ready(READY_TIMEOUT);
        node
    }

    /// The node's name in messages.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// `<ip>:5000`, the registry host.
    pub fn host(&self) -> String {
        format!("{}:{REGISTRY_PORT}", self.ip)
    }

    /// `http://<ip>:5000`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `http://<ip>:5001`: the cluster port, as peers reach it.
    pub fn cluster_url(&self) -> String {
        format!("http://{}:{CLUSTER_PORT}", self.ip)
    }

    /// The log file: stdout and stderr of every start, appended.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.process.data_dir()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The process, for signals (`pause`, `resume`, `kill9`) and its directory.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    fn spawn(&mut self) {
        // `ip netns exec` execs the node in place: the child's pid is the node's.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace])
            .arg(&self.bin)
            .env("REGISTRY_CLUSTER_ADVERTISE", self.cluster_url());
        let cluster = format!("{}:{CLUSTER_PORT}", self.ip);
        serve(
            &mut cmd,
            &self.host(),
            &cluster,
            &self.process.data_dir(),
            &self.env,
        );
        let place = format!("in {} on {}", self.namespace, self.host());
        self.process.spawn(cmd, &place);
    }

    /// Wait until `GET /ready` answers 200; panics when the process exits first or `timeout`
    /// passes.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let base = self.base_url();
        self.process.wait_ready(&base, timeout);
    }

    /// `kill -9` the process (if it runs) and start it again on the same data, without
    /// waiting for it to be ready.
    pub fn restart_nowait(&mut self) {
        self.process.ensure_stopped();
        self.spawn();
    }

    /// The status as this node sees it.
    pub fn status(&self) -> Result<ClusterStatus, String> {
        status_of(&self.cluster_url())
    }
}

/// A cluster of [`NsNode`]s in one [`NetLab`].
pub struct NsCluster {
    /// Its nodes, node `i` in namespace `i`. Declared before `lab`: the processes are killed
    /// before their namespaces are removed.
    pub nodes: Vec<NsNode>,
    /// The namespaces.
    pub lab: NetLab,
}

impl NsCluster {
    /// Start `n` namespaced nodes (node 0 bootstraps, the others join through it) and wait
    /// until all agree on a leader with `n` voters.
    pub fn start(n: usize) -> NsCluster {
        Self::start_with_env(n, &[])
    }

    /// Like [`NsCluster::start`], with extra `REGISTRY_*` overrides for every node.
    pub fn start_with_env(n: usize, env: &[(&str, &str)]) -> NsCluster {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let lab = NetLab::create(n);
        let mut cluster = NsCluster {
            nodes: Vec::new(),
            lab,
        };
        cluster.nodes.push(NsNode::start(&cluster.lab, 0, None, &env));
        let join = cluster.nodes[0].cluster_url();
        for i in 1..n {
            let node = NsNode::start(&cluster.lab, i, Some(&join), &env);
            cluster.nodes.push(node);
        }
        let all: Vec<usize> = (0..n).collect();
        let s = cluster.wait_leader_among(&all, CLUSTER_TIMEOUT);
        let voters = s.members.iter().filter(|m| m.voter).count();
        assert_eq!(voters, n, "voters after forming the cluster: {s:?}");
        cluster
    }

    /// The status as node `i` sees it.
    pub fn status(&self, i: usize) -> Result<ClusterStatus, String> {
        self.nodes[i].status()
    }

    /// The index of the node with Raft id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.status(i).is_ok_and(|s| s.id == id))
    }

    /// Wait until every node of `among` names the same leader, that leader is one of `among`,
    /// reports itself `Leader` and has every member a voter. Answers the leader's status.
    pub fn wait_leader_among(&self, among: &[usize], timeout: Duration) -> ClusterStatus {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not polled");
        while Instant::now() < deadline {
            match self.agreed_leader(among) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
            std::thread::sleep(POLL);
        }
        panic!("nodes {among:?} did not agree on a leader among them within {timeout:?}: {last}");
    }

    fn agreed_leader(&self, among: &[usize]) -> Result<ClusterStatus, String> {
        let mut statuses = Vec::new();
        for &i in among {
            statuses.push(self.status(i).map_err(|e| format!("node{i}: {e}"))?);
        }
        let leader = statuses[0].leader.ok_or("no leader known")?;
        if statuses.iter().any(|s| s.leader != Some(leader)) {
            let seen: Vec<_> = statuses.iter().map(|s| s.leader).collect();
            return Err(format!("leaders seen: {seen:?}"));
        }
        let s = statuses
            .into_iter()
            .find(|s| s.id == leader)
            .ok_or_else(|| format!("leader {leader} is not among {among:?}"))?;
        if s.state != "Leader" {
            return Err(format!("leader {leader} reports {}", s.state));
        }
        if s.members.iter().any(|m| !m.voter) {
            return Err(format!("learners among the members: {:?}", s.members));
        }
        Ok(s)
    }

    /// Wait until every node of `among` has applied at least what their agreed leader had
    /// applied when the wait began. Answers that index.
    pub fn wait_caught_up(&self, among: &[usize], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let target = self
            .wait_leader_among(among, timeout)
            .applied
            .expect("the leader has applied its own entries");
        let mut last = String::new();
        while Instant::now() < deadline {
            let behind: Vec<String> = among
                .iter()
                .filter_map(|&i| match self.status(i) {
                    Ok(s) if s.applied.is_some_and(|a| a >= target) => None,
                    Ok(s) => Some(format!("node{i} applied {:?}", s.applied)),
                    Err(e) => Some(format!("node{i}: {e}")),
                })
                .collect();
            if behind.is_empty() {
                return target;
            }
            last = behind.join(", ");
            std::thread::sleep(POLL);
        }
        panic!("nodes {among:?} did not apply index {target} within {timeout:?}: {last}");
    }
}
