//! Restarting nodes one at a time under pull load, and what SIGTERM does to pulls in flight.
//!
//! `rolling_restart_under_pull_load_fails_no_pull`: puller threads pull one image (manifest by
//! tag, then every blob, each checked byte for byte) through haproxy in a loop, and no pull may
//! fail while each node in turn is:
//! 1. drained in haproxy through its admin socket (`set server nodes/n<i> state drain`): no
//!    new request goes to it, those in flight finish; we wait until it serves none. Without a
//!    drain, a request haproxy already sent to a node that dies fails (haproxy retries only
//!    failed connections): a limit of the balancer, not of the node;
//! 2. stopped with SIGTERM and waited for until it exits;
//! 3. restarted on its data directory ([`Node::restart`]) and waited for: `/ready`, then three
//!    voters agreeing on a leader;
//! 4. put back (`state ready`) and waited for until haproxy reports it `UP` and sends it pulls.
//!
//! The leader's turn comes too, so pulls also ride through an election.
//!
//! `sigterm_finishes_pulls_in_flight`: two pulls of a large blob straight from a node are
//! paused by their readers after the first MiB; the node gets SIGTERM; once it refuses new
//! connections it must stay up for [`HOLD`] (its pulls are unfinished), then the readers resume
//! and both pulls must complete byte for byte, and the node exits cleanly.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::oci::{self, noise};
use cluster_tests::tools::require_tool;
use cluster_tests::{Balancer, Cluster, Node};

/// The repository of the pulled image.
const REPO: &str = "roll/app";
/// Its tag.
const TAG: &str = "latest";
/// Threads pulling through the balancer.
const PULLERS: usize = 4;
/// Upper bound on the whole load.
const LOAD_DEADLINE: Duration = Duration::from_secs(600);
/// Pulls of the large blob straight from a node when it gets SIGTERM.
const SLOW_PULLS: usize = 2;
/// The large blob: far more than socket buffers hold, so its pulls are really in flight.
const LARGE_BLOB: usize = 32 << 20;
/// What a paused reader takes before SIGTERM.
const FIRST_READ: usize = 1 << 20;
/// How long haproxy may take to drain a server or bring it back up.
const BALANCER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM once its pulls are done.
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// How long a step may wait for a paused reader or for the node to stop accepting.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node with pulls in flight must stay up after SIGTERM while its readers pause
/// (well under actix's 30 s shutdown timeout).
const HOLD: Duration = Duration::from_secs(3);

/// The image the pullers pull.
struct Image {
    manifest: Vec<u8>,
    digest: String,
    /// `(digest, bytes)` of the config and the layers.
    blobs: Vec<(String, Vec<u8>)>,
}

fn push_image(reg: &Registry) -> Image {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": ["/bin/app"] },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .expect("json");
    let layers = [noise(1, 300_000), noise(2, 2_000_000)];
    let mut blobs = Vec::new();
    for bytes in [config].into_iter().chain(layers) {
        let digest = reg
            .push_blob_chunked(REPO, &bytes, &[bytes.len() / 2])
            .unwrap_or_else(|e| panic!("pushing a blob: {e}"));
        blobs.push((digest, bytes));
    }
    let d = |media_type: &str, (digest, bytes): &(String, Vec<u8>)| serde_json::json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() });
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": d(oci::CONFIG, &blobs[0]),
        "layers": blobs[1..].iter().map(|b| d(oci::LAYER_TAR, b)).collect::<Vec<_>>(),
    }))
    .expect("json");
    let digest = reg
        .put_manifest(REPO, TAG, oci::MANIFEST, &manifest)
        .unwrap_or_else(|e| panic!("pushing the manifest: {e}"));
    Image {
        manifest,
        digest,
        blobs,
    }
}

/// One pull of the image: manifest by tag, then every blob, all checked.
fn pull(reg: &Registry, image: &Image) -> Result<(), String> {
    let m = reg.get_manifest(REPO, TAG)?;
    if m.bytes != image.manifest || m.digest.as_deref() != Some(image.digest.as_str()) {
        return Err(format!("manifest {TAG}: got {:?}", m.digest));
    }
    for (digest, bytes) in &image.blobs {
        let b = reg.get_blob(REPO, digest)?;
        if b.bytes != *bytes {
            return Err(format!("blob {digest}: {} bytes differ", b.bytes.len()));
        }
    }
    Ok(())
}

/// Counters of the pull load.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

fn start_pullers(
    lb: &Balancer,
    image: &Arc<Image>,
    load: &Arc<Load>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let started = Instant::now();
    (0..PULLERS)
        .map(|_| {
            let (reg, image, load, stop) = (
                Registry::new(&lb.base_url()),
                image.clone(),
                load.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_DEADLINE {
                    match pull(&reg, &image) {
                        Ok(()) => load.ok.fetch_add(1, Ordering::SeqCst),
                        // After a failure elsewhere has stopped the test, the balancer goes away.
                        Err(_) if stop.load(Ordering::SeqCst) => break,
                        Err(e) => {
                            let line = format!("at {:?}: {e}", started.elapsed());
                            eprintln!("FAILED PULL {line}");
                            load.failures.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                            load.failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect()
}

/// Wait until `load` has completed `more` pulls beyond `from`, or panic after `timeout`.
fn wait_pulls(load: &Load, from: u64, more: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while load.ok.load(Ordering::SeqCst) < from + more {
        assert!(
            Instant::now() < deadline,
            "pulls stalled: {} completed within {timeout:?}, wanted {more}",
            load.ok.load(Ordering::SeqCst) - from
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pull of `digest` straight from `base` that reads [`FIRST_READ`] bytes, reports on
/// `started`, waits for `resume`, then reads the rest; the bytes it got.
fn paused_pull(
    base: String,
    digest: String,
    started: mpsc::Sender<()>,
    resume: mpsc::Receiver<()>,
) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client");
    let mut r = http
        .get(format!("{base}/v2/{REPO}/blobs/{digest}"))
        .send()
        .map_err(|e| format!("GET: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("GET: status {}", r.status()));
    }
    let mut bytes = vec![0; FIRST_READ];
    r.read_exact(&mut bytes)
        .map_err(|e| format!("first {FIRST_READ} bytes: {e}"))?;
    let _ = started.send(());
    resume
        .recv_timeout(STEP_TIMEOUT * 2)
        .map_err(|e| format!("never resumed: {e}"))?;
    r.read_to_end(&mut bytes)
        .map_err(|e| format!("after {} bytes: {e}", bytes.len()))?;
    Ok(bytes)
}

/// Wait until nothing accepts connections at `host` any more, or panic after `timeout`.
fn wait_refusing(host: &str, timeout: Duration) {
    let addr: SocketAddr = host.parse().expect("a socket address");
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{host} still accepts connections {timeout:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM `node` with [`SLOW_PULLS`] pulls of `large` in flight; they must complete.
fn must_finish_pulls_across_sigterm(node: &mut Node, large: &(String, Vec<u8>)) -> Duration {
    let (started_tx, started_rx) = mpsc::channel();
    let mut resumers = Vec::new();
    let pulls: Vec<_> = (0..SLOW_PULLS)
        .map(|_| {
            let (resume_tx, resume_rx) = mpsc::channel();
            resumers.push(resume_tx);
            let (base, digest, started) = (node.base_url(), large.0.clone(), started_tx.clone());
            std::thread::spawn(move || paused_pull(base, digest, started, resume_rx))
        })
        .collect();
    for _ in 0..SLOW_PULLS {
        started_rx
            .recv_timeout(STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("a pull of the large blob from {} did not start: {e}", node.name()));
    }
    let sent = Instant::now();
    node.sigterm();
    // The node has begun its shutdown (it no longer accepts) while both pulls are unfinished:
    // it must stay up for them.
    wait_refusing(&node.host(), STEP_TIMEOUT);
    let held = Instant::now();
    while node.is_running() && held.elapsed() < HOLD {
        std::thread::sleep(Duration::from_millis(20));
    }
    let exited_early = (!node.is_running()).then(|| sent.elapsed());
    for r in resumers {
        let _ = r.send(());
    }
    for p in pulls {
        let bytes = p.join().expect("puller thread").unwrap_or_else(|e| {
            panic!(
                "a pull in flight at SIGTERM of {} failed: {e} (the node exited {exited_early:?} \
                 after SIGTERM, its pulls unfinished)",
                node.name()
            )
        });
        assert!(
            bytes == large.1,
            "a pull in flight at SIGTERM of {} got {} different bytes",
            node.name(),
            bytes.len()
        );
    }
    let status = node.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.success(),
        "{} exited with {status} after SIGTERM",
        node.name()
    );
    sent.elapsed()
}

#[test]
fn rolling_restart_under_pull_load_fails_no_pull() {
    if require_tool("haproxy").is_none() {
        return;
    }
    let started = Instant::now();
    let mut cluster = Cluster::start(3, &[]);
    let first = Registry::new(&cluster.nodes[0].base_url());
    let image = Arc::new(push_image(&first));
    let lb = Balancer::start_with_admin(&cluster.hosts());
    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_failure = StopOnDrop(stop.clone());
    let pullers = start_pullers(&lb, &image, &load, &stop);
    wait_pulls(&load, 0, 20, STEP_TIMEOUT);

    for i in 0..cluster.nodes.len() {
        let step = Instant::now();
        let was_leader = cluster.wait_leader() == i;
        let before = load.ok.load(Ordering::SeqCst);
        lb.set_state(i, "drain");
        lb.wait_server(i, "drained", BALANCER_TIMEOUT, |s| {
            s.status == "DRAIN" && s.current == 0
        });
        let sent = Instant::now();
        cluster.nodes[i].sigterm();
        let status = cluster.nodes[i].wait_exit(EXIT_TIMEOUT);
        assert!(status.success(), "node{i} exited with {status} after SIGTERM");
        let stopped_in = sent.elapsed();
        cluster.nodes[i].restart();
        cluster.wait_voters(3);
        cluster.wait_leader();
        lb.set_state(i, "ready");
        lb.wait_server(i, "up", BALANCER_TIMEOUT, |s| s.status == "UP");
        // The load kept going through the step, and the node takes requests again.
        let up = lb.server_stat(i).total;
        wait_pulls(&load, load.ok.load(Ordering::SeqCst), 10, STEP_TIMEOUT);
        assert!(
            lb.server_stat(i).total > up,
            "haproxy sent node{i} nothing after it came back"
        );
        eprintln!(
            "node{i}{}: SIGTERM to exit {stopped_in:?}, step {:?}, {} pulls during it, {} failed so far",
            if was_leader { " (leader)" } else { "" },
            step.elapsed(),
            load.ok.load(Ordering::SeqCst) - before,
            load.failed.load(Ordering::SeqCst)
        );
    }

    stop.store(true, Ordering::SeqCst);
    for p in pullers {
        p.join().expect("puller thread");
    }
    let (ok, failed) = (load.ok.load(Ordering::SeqCst), load.failed.load(Ordering::SeqCst));
    eprintln!(
        "rolling restart: {ok} pulls completed, {failed} failed, in {:?}",
        started.elapsed()
    );
    let failures = load.failures.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        failed == 0,
        "{failed} of {} pulls through the balancer failed:\n{}",
        ok + failed,
        failures.join("\n")
    );
}

/// Stops the pullers when the test fails (dropped before the balancer and the nodes).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn sigterm_finishes_pulls_in_flight() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let follower = (leader + 1) % 3;
    let large_bytes = noise(3, LARGE_BLOB);
    let large = (
        Registry::new(&cluster.nodes[follower].base_url())
            .push_blob_chunked(REPO, &large_bytes, &[LARGE_BLOB / 2])
            .unwrap_or_else(|e| panic!("pushing the large blob: {e}")),
        large_bytes,
    );
    for i in [follower, leader] {
        let took = must_finish_pulls_across_sigterm(&mut cluster.nodes[i], &large);
        eprintln!("node{i}: {SLOW_PULLS} pulls in flight finished; SIGTERM to exit {took:?}");
        cluster.nodes[i].restart();
        cluster.wait_voters(3);
    }
}
