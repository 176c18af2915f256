//! `bench_failover`: how long writes stall when the leader of a three-node cluster (default
//! settings) dies (`kill -9`) or stops (`SIGTERM`, which hands leadership over first).
//!
//! ```text
//! cargo build --release -p ipcr-node -p cluster-tests
//! ./target/release/bench_failover [--kills 10] [--stops 5]
//! ```
//!
//! A writer starts a small manifest push every 5 ms through the two other nodes (each push in
//! its own thread, so a stalled push does not hold up the next). For each fault it reports:
//! - *writes back*: from the fault to the acknowledgement of the first push started after it;
//! - *in flight*: the latest answer (201 or an error) to a push already running at the fault;
//! - *stall*: the longest gap between two acknowledgements around the fault.
//!
//! Medians and maxima over all faults are printed at the end. distribution has no cluster to
//! compare with; `IPCR_NODE_BIN=<older build>` measures another build of IPCR the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::bench::median;
use cluster_tests::{Cluster, oci};

/// Time between two pushes started by the writer (several are in flight at any moment).
const EVERY: Duration = Duration::from_millis(5);
/// Steady state before a fault, and observation after it.
const BEFORE: Duration = Duration::from_secs(1);
const AFTER: Duration = Duration::from_secs(5);

/// One push: when it started and ended, relative to the run's epoch, and whether it was
/// acknowledged.
#[derive(Clone, Copy)]
struct Push {
    start: Duration,
    end: Duration,
    ok: bool,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// Push small manifests through `bases` until `stop`, recording every push.
fn writer(bases: Vec<String>, epoch: Instant, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Push>>>) {
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = cluster_tests::sha256_digest(config);
    let mut n = 0u64;
    let mut threads = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let base = bases[n as usize % bases.len()].clone();
        let body = serde_json::json!({
            "schemaVersion": 2, "mediaType": oci::MANIFEST,
            "config": {"mediaType": oci::CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [], "annotations": {"n": n.to_string()},
        })
        .to_string();
        let (http, log) = (http.clone(), log.clone());
        threads.push(std::thread::spawn(move || {
            let start = epoch.elapsed();
            let ok = http
                .put(format!("{base}/v2/bench/failover/manifests/w{}", n % 16))
                .header("Content-Type", oci::MANIFEST)
                .body(body)
                .send()
                .is_ok_and(|r| r.status().as_u16() == 201);
            let end = epoch.elapsed();
            log.lock().expect("log").push(Push { start, end, ok });
        }));
        std::thread::sleep(EVERY);
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Push the config blob once, through `base`.
fn setup(base: &str) {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let reg = cluster_tests::client::Registry::new(base);
    reg.push_blob_chunked("bench/failover", config, &[])
        .expect("config blob");
}

/// What one fault cost, in seconds.
struct Cost {
    writes_back: f64,
    in_flight: f64,
    /// How many pushes were running at the fault.
    running: usize,
    stall: f64,
    failed: usize,
}

fn measure(pushes: &[Push], fault: Duration) -> Cost {
    let writes_back = pushes
        .iter()
        .filter(|p| p.ok && p.start >= fault)
        .map(|p| p.end)
        .min()
        .map(|e| (e - fault).as_secs_f64())
        .unwrap_or(f64::INFINITY);
    let in_flight = pushes
        .iter()
        .filter(|p| p.start < fault && p.end > fault)
        .map(|p| (p.end - fault).as_secs_f64())
        .fold(0.0, f64::max);
    let running = pushes.iter().filter(|p| p.start < fault && p.end > fault).count();
    let mut acks: Vec<Duration> = pushes.iter().filter(|p| p.ok).map(|p| p.end).collect();
    acks.sort();
    let stall = acks
        .windows(2)
        .filter(|w| w[1] > fault)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .fold(0.0, f64::max);
    Cost {
        writes_back,
        in_flight,
        running,
        stall,
        failed: pushes.iter().filter(|p| !p.ok).count(),
    }
}

/// Run `rounds` faults of one kind, printing each; answers the costs.
fn rounds(cluster: &mut Cluster, rounds: usize, graceful: bool) -> Vec<Cost> {
    let mut costs = Vec::new();
    for round in 1..=rounds {
        let leader = cluster.wait_leader();
        let others: Vec<String> = (0..cluster.nodes.len())
            .filter(|&i| i != leader)
            .map(|i| cluster.nodes[i].base_url())
            .collect();
        let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let epoch = Instant::now();
        let w = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || writer(others, epoch, stop, log))
        };
        // Off the writer's beat, so that the fault meets pushes at every stage.
        std::thread::sleep(BEFORE + Duration::from_millis(round as u64 * 3 % 5));
        let fault = epoch.elapsed();
        if graceful {
            cluster.nodes[leader].sigterm();
        } else {
            cluster.nodes[leader].kill9();
        }
        std::thread::sleep(AFTER);
        stop.store(true, Ordering::SeqCst);
        w.join().expect("writer");
        let pushes = log.lock().expect("log").clone();
        let c = measure(&pushes, fault);
        println!(
            "{} {round}: writes back after {:.3} s, {} pushes in flight answered within {:.3} s, longest stall {:.3} s, {} of {} pushes failed",
            if graceful { "SIGTERM" } else { "kill -9" },
            c.writes_back,
            c.running,
            c.in_flight,
            c.stall,
            c.failed,
            pushes.len()
        );
        costs.push(c);
        if graceful {
            cluster.nodes[leader].wait_exit(Duration::from_secs(60));
        }
        cluster.nodes[leader].restart();
        cluster.wait_voters(3);
    }
    costs
}

fn summary(what: &str, costs: &[Cost]) {
    let col = |f: fn(&Cost) -> f64| costs.iter().map(f).collect::<Vec<f64>>();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (back, stall) = (col(|c| c.writes_back), col(|c| c.stall));
    // Only the faults that met a push in flight say how long such a push waits.
    let flight: Vec<f64> = costs
        .iter()
        .filter(|c| c.running > 0)
        .map(|c| c.in_flight)
        .collect();
    println!(
        "| {what} | {} | {:.3} / {:.3} s | {:.3} / {:.3} s ({} faults) | {:.3} / {:.3} s | {} |",
        costs.len(),
        median(&back),
        max(&back),
        if flight.is_empty() { 0.0 } else { median(&flight) },
        max(&flight),
        flight.len(),
        median(&stall),
        max(&stall),
        costs.iter().map(|c| c.failed).sum::<usize>()
    );
}

fn main() {
    let kills = arg("--kills", 10);
    let stops = arg("--stops", 5);
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_leader();
    setup(&cluster.nodes[leader].base_url());
    let killed = rounds(&mut cluster, kills, false);
    let stopped = rounds(&mut cluster, stops, true);
    println!();
    println!(
        "| fault | n | writes back (median / max) | in-flight answered (median / max) | longest stall (median / max) | failed pushes |"
    );
    println!("|---|---|---|---|---|---|");
    summary("kill -9 of the leader", &killed);
    summary("SIGTERM of the leader", &stopped);
}
