//! Joins that must not hurt the cluster (issue 9's hostile probe), and `/ready` telling the
//! truth:
//! - a join of an unreachable node, or of an address that is another node, is refused with
//!   `422` and changes nothing: on one node and on three, every member stays a voter, writes
//!   and `/ready` work, and the refused node is nowhere in the membership;
//! - a node that answers the probe but never takes a log entry (a fake peer that hangs on every
//!   Raft call) stays a learner: the cluster commits writes meanwhile, `/ready` says 200, and
//!   `leave` of it cancels the join at once (the join answers `422`) and removes it;
//! - a node started with a mistyped advertise address gets `422`, says so in its log, stops
//!   asking, and is not ready; the cluster never hears of it again;
//! - `/ready` answers `503` within a second once a node cannot commit (two of three nodes
//!   killed), and `200` again once they are back.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::cluster::status_of;
use cluster_tests::node::CLUSTER_SECRET;
use cluster_tests::oci::{self, noise};
use cluster_tests::{Cluster, Node};
use ipcr_proto::admin::{ClusterStatus, JoinRequest, LeaveRequest};

/// How long a refused join may take to be answered.
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}

/// `POST <cluster url><path>` with the secret: status and body.
fn admin_post<T: serde::Serialize>(cluster_url: &str, path: &str, body: &T) -> (u16, String) {
    let r = http()
        .post(format!("{cluster_url}{path}"))
        .bearer_auth(CLUSTER_SECRET)
        .json(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().unwrap_or_default())
}

/// `GET /ready`: the status code.
fn ready(base: &str) -> u16 {
    http()
        .get(format!("{base}/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Push a small image with a unique tag through `base`; panics unless acknowledged.
fn must_push(base: &str, tag: &str) {
    let reg = Registry::new(base);
    let config = noise(tag.len() as u64 + 7, 64);
    let digest = reg
        .push_blob_chunked("faults/app", &config, &[])
        .unwrap_or_else(|e| panic!("pushing a blob for {tag}: {e}"));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": { "mediaType": oci::CONFIG, "digest": digest, "size": config.len() },
        "layers": [],
        "annotations": { "tag": tag },
    }))
    .expect("json");
    reg.put_manifest("faults/app", tag, oci::MANIFEST, &manifest)
        .unwrap_or_else(|e| panic!("pushing manifest {tag}: {e}"));
}

fn voters(s: &ClusterStatus) -> Vec<u64> {
    s.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

/// A join of `id` at `addr` through `member` must be refused quickly with 422, naming why.
fn must_refuse_join(member: &str, id: u64, addr: &str, why: &str) {
    let started = Instant::now();
    let (status, text) = admin_post(
        member,
        "/cluster/join",
        &JoinRequest {
            id,
            addr: addr.into(),
        },
    );
    assert_eq!(status, 422, "join of {id} at {addr}: {status} {text}");
    assert!(
        text.contains(why),
        "join of {id} at {addr}: the reason `{text}` lacks `{why}`"
    );
    assert!(
        started.elapsed() < REFUSED_WITHIN,
        "join refused only after {:?}",
        started.elapsed()
    );
}

#[test]
fn joins_of_unreachable_or_wrong_nodes_change_nothing() {
    // One node: before, such a join made node 777 a voter of a one-voter cluster, which could
    // then commit nothing, for good.
    let single = Node::start_with_env("single", &[]);
    let url = single.cluster_url();
    must_refuse_join(&url, 777, "http://127.0.0.1:1", "cannot be reached");
    let s = status_of(&url).expect("status");
    assert_eq!(s.members.len(), 1, "members after a refused join: {s:?}");
    must_push(&single.base_url(), "after-refusal");
    assert_eq!(ready(&single.base_url()), 200);
    drop(single);

    // Three nodes: the refused node must not become a fourth voter (which would remove the
    // cluster's tolerance of one failure), nor may an address that is another node's.
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let member = cluster.nodes[leader].cluster_url();
    must_refuse_join(&member, 777, "http://127.0.0.1:1", "cannot be reached");
    let follower = (leader + 1) % 3;
    let other = cluster.nodes[follower].cluster_url();
    must_refuse_join(&member, 778, &other, "not node 778");
    // Through a follower too (forwarded to the leader).
    must_refuse_join(&other, 779, "http://127.0.0.1:1", "cannot be reached");
    let s = status_of(&member).expect("status");
    assert_eq!(voters(&s).len(), 3, "voters after refused joins: {s:?}");
    assert_eq!(s.members.len(), 3, "members after refused joins: {s:?}");
    // Still tolerates one failure.
    let victim = (leader + 2) % 3;
    cluster.nodes[victim].kill9();
    must_push(&cluster.nodes[leader].base_url(), "one-down");
    cluster.nodes[victim].restart();
}

/// A fake node: answers `GET /cluster/status` as node `id`, and hangs on anything else (every
/// Raft call) until dropped.
struct FakePeer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl FakePeer {
    fn start(id: u64) -> FakePeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let flag = flag.clone();
                        std::thread::spawn(move || serve_fake(conn, id, &flag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakePeer { port, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_fake(conn: TcpStream, id: u64, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) if !stop.load(Ordering::SeqCst) => continue,
            Err(_) => return,
        }
        // Skip the headers.
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) => return,
                Ok(_) if h == "\r\n" => break,
                Ok(_) => {}
                Err(_) if stop.load(Ordering::SeqCst) => return,
                Err(_) => {}
            }
        }
        if line.starts_with("GET /cluster/status") {
            let body = serde_json::to_string(&ClusterStatus {
                id,
                state: "Learner".into(),
                leader: None,
                term: 0,
                last_log_index: None,
                committed: None,
                applied: None,
                members: Vec::new(),
                under_replicated_blobs: 0,
                ipfs: None,
                gc: Default::default(),
            })
            .expect("json");
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        }
        // A Raft call: never answered.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        return;
    }
}

#[test]
fn a_learner_that_never_catches_up_stays_a_learner_and_leave_cancels_it() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let member = cluster.nodes[leader].cluster_url();
    let base = cluster.nodes[leader].base_url();
    let fake = FakePeer::start(4242);
    let join = {
        let (member, addr) = (member.clone(), fake.url());
        std::thread::spawn(move || admin_post(&member, "/cluster/join", &JoinRequest { id: 4242, addr }))
    };
    // It becomes a learner, and stays one.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status_of(&member).expect("status");
        if s.members.iter().any(|m| m.id == 4242 && !m.voter) {
            break;
        }
        assert!(Instant::now() < deadline, "4242 never became a learner: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..3 {
        must_push(&base, &format!("with-learner-{i}"));
    }
    std::thread::sleep(Duration::from_secs(2));
    let s = status_of(&member).expect("status");
    assert!(
        s.members.iter().any(|m| m.id == 4242 && !m.voter),
        "the hung node must still be a learner, never a voter: {s:?}"
    );
    assert_eq!(voters(&s).len(), 3);
    assert_eq!(ready(&base), 200);
    // Leave cancels the join and removes it.
    let started = Instant::now();
    let (status, text) = admin_post(&member, "/cluster/leave", &LeaveRequest { id: 4242 });
    assert_eq!(status, 200, "leave: {text}");
    let (status, text) = join.join().expect("join thread");
    assert_eq!(status, 422, "the cancelled join: {status} {text}");
    assert!(text.contains("cancelled"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "leave took {:?}",
        started.elapsed()
    );
    let s = status_of(&member).expect("status");
    assert!(!s.members.iter().any(|m| m.id == 4242), "still a member: {s:?}");
    must_push(&base, "after-leave");
}

#[test]
fn a_node_with_a_mistyped_advertise_address_is_refused_and_stops_asking() {
    let cluster = Cluster::start(1, &[]);
    let member = cluster.nodes[0].cluster_url();
    // The typo: a port nothing listens on.
    let typo = format!("http://127.0.0.1:{}", cluster_tests::node::free_port());
    let mut stray = Node::start_unready(
        "stray",
        &[
            ("REGISTRY_CLUSTER_JOIN", member.as_str()),
            ("REGISTRY_CLUSTER_ADVERTISE", typo.as_str()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stray.log().contains("join refused; not retrying") {
        assert!(
            Instant::now() < deadline,
            "the stray node never reported the refusal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        stray.log().contains("cannot be reached"),
        "the reason is in the log"
    );
    assert_ne!(
        ready(&stray.base_url()),
        200,
        "a node that could not join is not ready"
    );
    let s = status_of(&member).expect("status");
    assert_eq!(s.members.len(), 1, "the cluster is unchanged: {s:?}");
    must_push(&cluster.nodes[0].base_url(), "after-stray");
    assert!(stray.is_running());
}

#[test]
fn ready_says_503_as_soon_as_a_node_cannot_commit() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let keep = (leader + 1) % 3;
    let base = cluster.nodes[keep].base_url();
    assert_eq!(ready(&base), 200);
    for i in (0..3).filter(|&i| i != keep) {
        cluster.nodes[i].kill9();
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    loop {
        let code = ready(&base);
        if code == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/ready still {code} without a quorum");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "/ready answered 503 {:?} after losing the quorum",
        started.elapsed()
    );
    // Tag reads get a definite answer, never a hang.
    let t = Instant::now();
    let r = http()
        .get(format!("{base}/v2/faults/app/tags/list"))
        .send()
        .expect("tags/list answers");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("Retry-After").is_some());
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    for i in (0..3).filter(|&i| i != keep) {
        cluster.nodes[i].restart();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&base) != 200 {
        assert!(Instant::now() < deadline, "/ready never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}
