//! Membership changes under load: a cluster grows from one node to three while a writer pushes
//! images, then shrinks with `ipcr-node leave`.
//!
//! - The second node joins by itself (`REGISTRY_CLUSTER_JOIN`); the third waits for an
//!   operator, who adds it with `ipcr-node join`; `ipcr-node join` of a node that already is a
//!   member changes nothing.
//! - Every push succeeds, possibly after bounded retries; every acknowledged image is then
//!   served byte for byte by every node.
//! - `ipcr-node status` prints every member in a table, and `--json` is a `ClusterStatus`.
//! - After `ipcr-node leave` the node is no longer a member anywhere; once it is gone for good
//!   (`kill -9`), every image is still served by every remaining node and the status reports no
//!   under-replicated blob.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::cluster::{CLUSTER_TIMEOUT, status_of};
use cluster_tests::node::{CLUSTER_SECRET, READY_TIMEOUT, node_binary};
use cluster_tests::pushes::{self, Pushed};
use cluster_tests::tools::{Output, must_run};
use cluster_tests::{Cluster, Node};
use ipcr_proto::NodeId;
use ipcr_proto::admin::ClusterStatus;

/// Upper bound on the writer's images (it is stopped long before).
const MAX_IMAGES: usize = 2_000;
/// Images acknowledged between two membership changes, at least.
const IMAGES_PER_PHASE: usize = 3;
/// How long the writer may take to acknowledge a phase's images.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an operator command may run (a join waits for the learner to catch up).
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// What the writer acknowledged, and a condition variable signalled on every image.
#[derive(Default)]
struct Progress {
    pushed: Mutex<Vec<Pushed>>,
    changed: Condvar,
}

impl Progress {
    fn count(&self) -> usize {
        self.pushed.lock().expect("progress lock").len()
    }

    /// Wait until at least `n` images were acknowledged (panics after [`PROGRESS_TIMEOUT`]).
    fn wait_count(&self, n: usize, during: &str) {
        let guard = self.pushed.lock().expect("progress lock");
        let (guard, result) = self
            .changed
            .wait_timeout_while(guard, PROGRESS_TIMEOUT, |p| p.len() < n)
            .expect("progress lock");
        assert!(
            !result.timed_out(),
            "{during}: only {} of {n} images acknowledged after {PROGRESS_TIMEOUT:?}",
            guard.len()
        );
    }
}

/// The writer: pushes image after image through the registries in `targets` (one after the
/// other, a new pick on every attempt) until `stop`. Answers the failures it retried.
fn spawn_writer(
    targets: Arc<Mutex<Vec<Registry>>>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Vec<String>, String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut turn = 0usize;
        let mut pick = |_attempt: usize| {
            let targets = targets.lock().expect("targets lock");
            turn += 1;
            targets[turn % targets.len()].clone()
        };
        for i in 0..MAX_IMAGES {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let image = pushes::image(i as u64 + 1, 2, 150_000);
            let pushed = pushes::push_with_retries(
                &mut pick,
                "membership/app",
                &format!("i{i}"),
                &image,
                64 * 1024,
                &mut failures,
            )?;
            progress.pushed.lock().expect("progress lock").push(pushed);
            progress.changed.notify_all();
        }
        Ok(failures)
    })
}

/// Run `ipcr-node <args>` (the operator's tool) and require success.
fn must_ipcr_node(args: &[&str]) -> Output {
    let mut cmd = Command::new(node_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).args(["--secret", CLUSTER_SECRET]);
    must_run(&mut cmd, CLI_TIMEOUT)
}

fn must_status(url: &str) -> ClusterStatus {
    status_of(url).unwrap_or_else(|e| panic!("status of {url}: {e}"))
}

/// Wait until the cluster port at `url` answers its status (a node just spawned).
fn wait_status(url: &str) -> ClusterStatus {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match status_of(url) {
            Ok(s) => return s,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{url} did not answer its status within {READY_TIMEOUT:?}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn member_ids(s: &ClusterStatus) -> BTreeSet<NodeId> {
    s.members.iter().map(|m| m.id).collect()
}

/// Wait until every node in `urls` reports exactly `ids` as members, all voters.
fn wait_members(urls: &[String], ids: &BTreeSet<NodeId>) {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        let mut last = None;
        for url in urls {
            match status_of(url) {
                Ok(s) if member_ids(&s) == *ids && s.members.iter().all(|m| m.voter) => {}
                Ok(s) => last = Some(format!("{url}: members {:?}", s.members)),
                Err(e) => last = Some(format!("{url}: {e}")),
            }
        }
        let Some(last) = last else {
            return;
        };
        assert!(
            Instant::now() < deadline,
            "members did not become {ids:?} within {CLUSTER_TIMEOUT:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until every node in `urls` reports no under-replicated blob.
fn wait_fully_replicated(urls: &[String]) {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    for url in urls {
        loop {
            let s = must_status(url);
            if s.under_replicated_blobs == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} still reports {} under-replicated blobs after {CLUSTER_TIMEOUT:?}",
                s.under_replicated_blobs
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Every node in `cluster` that runs serves every image in `pushed`.
fn must_serve_everywhere(cluster: &mut Cluster, pushed: &[Pushed]) {
    for i in 0..cluster.nodes.len() {
        if !cluster.nodes[i].is_running() {
            continue;
        }
        let node = &cluster.nodes[i];
        let reg = Registry::new(&node.base_url());
        for p in pushed {
            pushes::must_serve(&reg, node.name(), p);
        }
    }
}

/// `ipcr-node status` of `url`: a table with every member of `expected`, and JSON that parses
/// to the same members.
fn must_print_status(url: &str, expected: &ClusterStatus) {
    let table = must_ipcr_node(&["status", "--node", url]).stdout_text();
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains(&format!("node {} is", expected.id)) && header.contains("under-replicated blobs"),
        "status header:\n{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["ID", "ROLE", "LEADER", "MATCHED", "ADDRESS"]),
        "no column header in:\n{table}"
    );
    for m in &expected.members {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(m.id.to_string().as_str()))
            .unwrap_or_else(|| panic!("no row for member {} in:\n{table}", m.id));
        assert!(
            row.contains("voter") && row.trim_end().ends_with(&m.addr),
            "row of {}: {row}",
            m.id
        );
        assert_eq!(
            row.contains(" * "),
            expected.leader == Some(m.id),
            "leader mark in row of {}: {row}",
            m.id
        );
    }
    let json = must_ipcr_node(&["status", "--node", url, "--json"]).stdout_text();
    let parsed: ClusterStatus = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("status --json is not a ClusterStatus: {e}\n{json}"));
    assert_eq!(parsed.id, expected.id);
    assert_eq!(member_ids(&parsed), member_ids(expected));
    assert_eq!(parsed.leader, expected.leader);
}

#[test]
fn grows_from_one_to_three_nodes_under_pushes_then_shrinks_with_leave() {
    let mut cluster = Cluster::start(1, &[]);
    let targets = Arc::new(Mutex::new(vec![Registry::new(&cluster.nodes[0].base_url())]));
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(targets.clone(), progress.clone(), stop.clone());
    progress.wait_count(IMAGES_PER_PHASE, "one node");

    // node1 joins by itself.
    let before = progress.count();
    let n1 = cluster.add_node();
    cluster.wait_voters(2);
    targets
        .lock()
        .expect("targets lock")
        .push(Registry::new(&cluster.nodes[n1].base_url()));
    progress.wait_count(before + IMAGES_PER_PHASE, "after node1 joined");

    // node2 waits for the operator.
    let before = progress.count();
    let mut node2 = Node::start_awaiting_join("node2", &[]);
    let waiting = wait_status(&node2.cluster_url());
    assert!(
        waiting.members.is_empty(),
        "node2 has members before it joined: {waiting:?}"
    );
    let node2_id = waiting.id;
    let seen = must_status(&cluster.nodes[0].cluster_url());
    assert!(
        !member_ids(&seen).contains(&node2_id),
        "node2 is a member before anyone added it: {seen:?}"
    );
    let joined = must_ipcr_node(&[
        "join",
        &cluster.nodes[n1].cluster_url(),
        "--node",
        &node2.cluster_url(),
    ]);
    assert!(
        joined.stdout_text().contains(&format!("node {node2_id}")),
        "{}",
        joined.describe()
    );
    node2.wait_ready(READY_TIMEOUT);
    cluster.nodes.push(node2);
    let n2 = cluster.nodes.len() - 1;
    cluster.wait_voters(3);
    targets
        .lock()
        .expect("targets lock")
        .push(Registry::new(&cluster.nodes[n2].base_url()));

    // Joining a member again changes nothing.
    let members = member_ids(&must_status(&cluster.nodes[0].cluster_url()));
    assert_eq!(members.len(), 3);
    must_ipcr_node(&[
        "join",
        &cluster.nodes[n2].cluster_url(),
        "--node",
        &cluster.nodes[n1].cluster_url(),
    ]);
    let urls: Vec<String> = cluster.nodes.iter().map(Node::cluster_url).collect();
    wait_members(&urls, &members);
    progress.wait_count(before + IMAGES_PER_PHASE, "after node2 joined");

    stop.store(true, Ordering::SeqCst);
    let failures = writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("a push failed for good: {e}"));
    let pushed = progress.pushed.lock().expect("progress lock").clone();
    eprintln!(
        "membership: {} images acknowledged, {} failed attempts retried",
        pushed.len(),
        failures.len()
    );
    must_serve_everywhere(&mut cluster, &pushed);

    let leader = cluster.wait_leader();
    let leader_status = must_status(&cluster.nodes[leader].cluster_url());
    must_print_status(&cluster.nodes[leader].cluster_url(), &leader_status);

    // Shrink: a follower leaves (the one the operator added, unless it leads).
    let leaving = if leader == n2 { n1 } else { n2 };
    let leaving_url = cluster.nodes[leaving].cluster_url();
    let leaving_id = must_status(&leaving_url).id;
    let left = must_ipcr_node(&["leave", "--node", &leaving_url]);
    assert!(
        left.stdout_text().contains(&format!("node {leaving_id}")),
        "{}",
        left.describe()
    );
    let remaining: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != leaving).collect();
    let remaining_urls: Vec<String> = remaining
        .iter()
        .map(|i| cluster.nodes[*i].cluster_url())
        .collect();
    let mut expected = members.clone();
    expected.remove(&leaving_id);
    wait_members(&remaining_urls, &expected);
    // Gone for good: whatever it held must now live elsewhere.
    cluster.nodes[leaving].kill9();
    cluster.wait_voters(2);
    wait_fully_replicated(&remaining_urls);
    must_serve_everywhere(&mut cluster, &pushed);
    let leader = cluster.wait_leader();
    let status = must_status(&cluster.nodes[leader].cluster_url());
    assert!(!member_ids(&status).contains(&leaving_id));
    must_print_status(&cluster.nodes[leader].cluster_url(), &status);

    // The smaller cluster still takes writes.
    let mut failures = Vec::new();
    let reg = Registry::new(&cluster.nodes[remaining[0]].base_url());
    let image = pushes::image(MAX_IMAGES as u64 + 1, 2, 100_000);
    let after = pushes::push_with_retries(
        &mut |_| reg.clone(),
        "membership/app",
        "after-leave",
        &image,
        64 * 1024,
        &mut failures,
    )
    .unwrap_or_else(|e| panic!("push after the leave: {e}"));
    must_serve_everywhere(&mut cluster, &[after]);
}
