//! `kill -9` of nodes of a three-node cluster while clients write:
//! - the leader, during 20 concurrent pushes through haproxy: writes resume through a survivor
//!   within 5 s, every client's retries succeed, and every acknowledged image is served byte for
//!   byte by every survivor;
//! - the node that took the first chunks of an upload (a follower, or the leader): the upload
//!   continues through the other nodes and its blob is served by every survivor;
//! - two of three nodes: a write answers `503` with `Retry-After` within seconds, and writes work
//!   again once one node is back.
//!
//! The tests of this file run one at a time: the time to recover is measured, and three clusters
//! and twenty writers at once on a small machine would measure the machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::oci::noise;
use cluster_tests::pushes::{self, Pushed};
use cluster_tests::tools::require_tool;
use cluster_tests::{Balancer, Cluster, sha256_digest};

/// Concurrent writers in the leader-kill test.
const WRITERS: usize = 20;
/// Upper bound on images per writer (they are stopped long before).
const MAX_IMAGES: usize = 500;
/// Images acknowledged before the leader is killed.
const ACKED_BEFORE_KILL: usize = WRITERS;
/// Images each writer must have acknowledged after the kill before the writers stop.
const ACKED_AFTER_KILL: usize = 2;
/// Writes must work again this soon after the leader died.
const RESUME_WITHIN: Duration = Duration::from_secs(5);
/// A write without quorum must be answered this soon.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(6);
/// Bound on every wait for progress in this file.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);

/// One test at a time (see the module header). A failed test poisons the lock; the next one
/// still runs.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the writers acknowledged, signalled on every image.
#[derive(Default)]
struct Progress {
    /// Per writer, its acknowledged images in order.
    pushed: Mutex<Vec<Vec<Pushed>>>,
    changed: Condvar,
}

impl Progress {
    /// Wait until `done` holds for the per-writer record (panics after [`PROGRESS_TIMEOUT`]).
    fn wait_until(&self, what: &str, done: impl Fn(&[Vec<Pushed>]) -> bool) {
        let guard = self.pushed.lock().expect("progress lock");
        let (guard, result) = self
            .changed
            .wait_timeout_while(guard, PROGRESS_TIMEOUT, |p| !done(p))
            .expect("progress lock");
        let counts: Vec<usize> = guard.iter().map(Vec::len).collect();
        assert!(
            !result.timed_out(),
            "timed out after {PROGRESS_TIMEOUT:?} waiting for {what}; acknowledged per writer: {counts:?}"
        );
    }

    fn counts(&self) -> Vec<usize> {
        self.pushed
            .lock()
            .expect("progress lock")
            .iter()
            .map(Vec::len)
            .collect()
    }
}

/// Writer `w`: images `failover/w<w>:i<i>` through `reg` until `stop`. Answers the failures it
/// retried, or why a push failed for good.
fn spawn_writer(
    w: usize,
    reg: Registry,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Vec<String>, String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let repo = format!("failover/w{w}");
        for i in 0..MAX_IMAGES {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let image = pushes::image((w * MAX_IMAGES + i) as u64 + 1, 2, 96 * 1024);
            let pushed = pushes::push_with_retries(
                &mut |_| reg.clone(),
                &repo,
                &format!("i{i}"),
                &image,
                32 * 1024,
                &mut failures,
            )?;
            progress.pushed.lock().expect("progress lock")[w].push(pushed);
            progress.changed.notify_all();
        }
        Ok(failures)
    })
}

/// Wait until a small blob push succeeds through one of `survivors` (tried in turn); answers
/// the time from `since` to the acknowledgement. Bounded by [`PROGRESS_TIMEOUT`].
fn wait_write_works(survivors: &[Registry], since: Instant) -> Duration {
    let mut errors = Vec::new();
    for attempt in 0.. {
        let reg = &survivors[attempt % survivors.len()];
        let blob = noise(900_000 + attempt as u64, 4096);
        match reg.push_blob_chunked("failover/probe", &blob, &[]) {
            Ok(_) => return since.elapsed(),
            Err(e) => errors.push(e),
        }
        assert!(
            since.elapsed() < PROGRESS_TIMEOUT,
            "no write succeeded within {PROGRESS_TIMEOUT:?}: {errors:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unreachable!("the loop returns or panics")
}

#[test]
fn killing_the_leader_during_twenty_pushes_loses_nothing_acknowledged() {
    let _serial = serial();
    if require_tool("haproxy").is_none() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let lb = Balancer::start(&cluster.hosts());
    let leader = cluster.wait_leader();

    let progress = Arc::new(Progress {
        pushed: Mutex::new(vec![Vec::new(); WRITERS]),
        changed: Condvar::new(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| spawn_writer(w, Registry::new(&lb.base_url()), progress.clone(), stop.clone()))
        .collect();
    progress.wait_until("images before the kill", |p| {
        p.iter().map(Vec::len).sum::<usize>() >= ACKED_BEFORE_KILL
    });

    let at_kill = progress.counts();
    let killed_at = Instant::now();
    cluster.nodes[leader].kill9();
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != leader).collect();
    let direct: Vec<Registry> = survivors
        .iter()
        .map(|i| Registry::new(&cluster.nodes[*i].base_url()))
        .collect();
    let resumed = wait_write_works(&direct, killed_at);
    assert!(
        resumed < RESUME_WITHIN,
        "the first write after killing the leader succeeded after {resumed:?}"
    );

    progress.wait_until("images after the kill from every writer", |p| {
        p.iter()
            .zip(&at_kill)
            .all(|(now, then)| now.len() >= then + ACKED_AFTER_KILL)
    });
    stop.store(true, Ordering::SeqCst);
    let mut retried = Vec::new();
    for (w, writer) in writers.into_iter().enumerate() {
        let failures = writer
            .join()
            .expect("writer thread")
            .unwrap_or_else(|e| panic!("writer {w}: a push failed for good: {e}"));
        retried.extend(failures);
    }
    let new_leader = cluster.wait_leader();
    assert_ne!(new_leader, leader, "a killed node cannot lead");

    let pushed: Vec<Pushed> = progress
        .pushed
        .lock()
        .expect("progress lock")
        .iter()
        .flatten()
        .cloned()
        .collect();
    eprintln!(
        "failover: writes resumed {resumed:?} after the kill; {} images acknowledged ({} before the kill); {} failed attempts retried: {:#?}",
        pushed.len(),
        at_kill.iter().sum::<usize>(),
        retried.len(),
        failure_kinds(&retried)
    );
    for (i, reg) in survivors.iter().zip(&direct) {
        let name = cluster.nodes[*i].name().to_string();
        for p in &pushed {
            pushes::must_serve(reg, &name, p);
        }
    }
}

/// How many failures of each kind (request and status, or transport error) were retried.
fn failure_kinds(failures: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for f in failures {
        let request = ["POST", "PATCH", "PUT manifest", "PUT", "GET"]
            .into_iter()
            .find(|r| f.contains(&format!(": {r} ")))
            .unwrap_or("?");
        let outcome = f
            .split_once(": status ")
            .map(|(_, rest)| rest.split(':').next().unwrap_or(rest).to_string())
            .unwrap_or_else(|| "no answer".to_string());
        *kinds.entry(format!("{request} -> {outcome}")).or_insert(0) += 1;
    }
    kinds
}

/// The path (`/v2/...`) of an absolute upload location, to send it to another node.
fn path_of(location: &str) -> String {
    let rest = location
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {location}"));
    rest[rest.find('/').unwrap_or(rest.len())..].to_string()
}

/// Wait until `reg` reports the upload at `location` holds `expected` bytes (a node may answer
/// `503` while a new leader is elected). Bounded by [`PROGRESS_TIMEOUT`].
fn wait_upload_at(reg: &Registry, location: &str, expected: u64) {
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    loop {
        let last = match reg.upload_status(location) {
            Ok(size) if size == expected => return,
            Ok(size) => panic!("upload {location} holds {size} bytes, expected {expected}"),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "no status of {location} within {PROGRESS_TIMEOUT:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Start an upload on the follower (or the leader) A, send it the first chunks, `kill -9` A,
/// and finish the upload through the other nodes, each asked for the session's size before it
/// takes a request.
fn upload_survives_the_kill_of_its_first_node(kill_the_leader: bool) {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    let a = if kill_the_leader { leader } else { (leader + 1) % 3 };
    let others: Vec<usize> = (0..3).filter(|i| *i != a).collect();
    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.base_url()).collect();
    let reg = |i: usize| Registry::new(&bases[i]);
    let repo = "failover/resume";
    let blob = noise(if kill_the_leader { 71 } else { 72 }, 3_000_000);
    let cuts = [0, 400_000, 1_000_000, 1_700_000, 2_300_000, blob.len()];

    let location = path_of(&reg(a).start_upload(repo).expect("POST to A"));
    for w in cuts.windows(2).take(2) {
        reg(a)
            .patch(&location, w[0] as u64, &blob[w[0]..w[1]])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    cluster.nodes[a].kill9();

    for (k, w) in cuts.windows(2).enumerate().skip(2) {
        let node = reg(others[k % 2]);
        wait_upload_at(&node, &location, w[0] as u64);
        let acked = node
            .patch(&location, w[0] as u64, &blob[w[0]..w[1]])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(acked, w[1] as u64);
    }
    let closer = reg(others[(cuts.len() - 1) % 2]);
    wait_upload_at(&closer, &location, blob.len() as u64);
    let digest = sha256_digest(&blob);
    closer
        .finish(&location, &digest)
        .unwrap_or_else(|e| panic!("{e}"));

    for i in others {
        let got = reg(i)
            .get_blob(repo, &digest)
            .unwrap_or_else(|e| panic!("node{i}: {e}"));
        assert!(got.bytes == blob, "node{i} served different bytes");
    }
}

#[test]
fn an_upload_survives_the_kill_of_the_follower_that_took_its_first_chunks() {
    let _serial = serial();
    upload_survives_the_kill_of_its_first_node(false);
}

#[test]
fn an_upload_survives_the_kill_of_the_leader_that_took_its_first_chunks() {
    let _serial = serial();
    upload_survives_the_kill_of_its_first_node(true);
}

#[test]
fn without_quorum_writes_get_503_with_retry_after_until_a_node_is_back() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, &[]);
    cluster.nodes[1].kill9();
    cluster.nodes[2].kill9();

    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let url = format!(
        "{}/v2/failover/quorum/blobs/uploads/",
        cluster.nodes[0].base_url()
    );
    let asked = Instant::now();
    let resp = http
        .post(&url)
        .header("Content-Length", "0")
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let took = asked.elapsed();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().unwrap_or_default();
    assert_eq!(
        status,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "POST without quorum: {body}"
    );
    assert!(took < UNAVAILABLE_WITHIN, "the 503 took {took:?}");
    let retry_after = retry_after.unwrap_or_else(|| panic!("503 without Retry-After: {body}"));
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "Retry-After is not a number of seconds: {retry_after}"
    );

    // One node back: a majority again.
    let back = Instant::now();
    cluster.nodes[1].restart();
    let regs = [
        Registry::new(&cluster.nodes[0].base_url()),
        Registry::new(&cluster.nodes[1].base_url()),
    ];
    let resumed = wait_write_works(&regs, back);
    eprintln!("quorum: 503 after {took:?}; writes work {resumed:?} after the restart began");
    let mut failures = Vec::new();
    let pushed = pushes::push_with_retries(
        &mut |attempt| regs[attempt % 2].clone(),
        "failover/quorum",
        "back",
        &pushes::image(81, 2, 300_000),
        100_000,
        &mut failures,
    )
    .unwrap_or_else(|e| panic!("push after a node came back: {e}"));
    assert!(
        failures.is_empty(),
        "writes failed once they worked: {failures:#?}"
    );
    for (i, reg) in regs.iter().enumerate() {
        pushes::must_serve(reg, &format!("node{i}"), &pushed);
    }
}
