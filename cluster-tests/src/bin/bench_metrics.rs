//! Benchmark: what Prometheus metrics cost on the hot path (issue 13), in one run: manifest
//! GETs by tag (`wrk -t2 -c64`) and 1 GiB monolithic pushes (`curl`, POST + PUT), on IPCR with
//! `http.debug.prometheus` off and on, and on distribution 2.8.2 with its own
//! `http.debug.prometheus` off and on, beside it. While a server's metrics are on, a scraper
//! reads them every second, as a Prometheus scraping at that rate would.
//!
//! The two servers of a pair (off, on) run side by side and are measured in alternation
//! (off then on, then on then off, ...), each measurement paired with its neighbour, so that
//! the machine's drift (other processes, the page cache, the host) hits both alike; the
//! result is the median of the pairs' ratios. Beside throughput, each server's CPU time per
//! request (from `/proc/<pid>/stat`) says what the metrics cost regardless of what else ran.
//!
//! ```console
//! $ cargo build --release -p ipcr-node -p cluster-tests --bin ipcr-node --bin bench_metrics
//! $ ./target/release/bench_metrics [--runs 9] [--seconds 5]
//! ```
//! Needs `docker-registry`, `wrk` and `curl` (`apt-get install -y docker-registry wrk curl`).
//! `IPCR_NODE_BIN` picks another `ipcr-node`.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::bench::{curl, make_blob, median, process_cpu, push_big, push_file};
use cluster_tests::node::free_port;
use sha2::{Digest as _, Sha256};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Clone, Copy, PartialEq)]
enum Server {
    Ipcr,
    Distribution,
}

#[derive(Clone, Copy)]
struct Setup {
    server: Server,
    metrics: bool,
}

impl Setup {
    fn name(self) -> String {
        let who = match self.server {
            Server::Ipcr => "IPCR",
            Server::Distribution => "distribution",
        };
        format!("{who}, metrics {}", if self.metrics { "on" } else { "off" })
    }
}

/// A server process killed on drop, with a scraper of its metrics while they are on.
struct Running {
    child: Child,
    base: String,
    scraping: Option<(Arc<AtomicBool>, std::thread::JoinHandle<usize>)>,
}

impl Running {
    /// Stop scraping; answers how many scrapes succeeded.
    fn scrapes(&mut self) -> usize {
        match self.scraping.take() {
            Some((stop, handle)) => {
                stop.store(true, Ordering::SeqCst);
                handle.join().unwrap_or(0)
            }
            None => 0,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.scrapes();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read `url` every second until told to stop; answers the scrapes that succeeded.
fn scrape_every_second(url: String) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let ok = Arc::new(AtomicUsize::new(0));
    let handle = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            if matches!(curl(&[], &url), Ok((200, _, _))) {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        ok.load(Ordering::SeqCst)
    });
    (stop, handle)
}

fn start(work: &Path, setup: Setup) -> Result<Running> {
    let port = free_port();
    let debug = free_port();
    let data = work.join(format!("data-{port}"));
    let log = File::create(work.join(format!("server-{port}.log")))?;
    let child = match setup.server {
        Server::Ipcr => {
            let mut cmd = Command::new(cluster_tests::node::node_binary());
            cmd.arg("serve")
                .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("REGISTRY_CLUSTER_ADDR", format!("127.0.0.1:{}", free_port()))
                .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &data)
                .env("REGISTRY_LOG_LEVEL", "warn")
                .env("REGISTRY_LOG_ACCESSLOG_DISABLED", "true");
            if setup.metrics {
                cmd.env("REGISTRY_HTTP_DEBUG_ADDR", format!("127.0.0.1:{debug}"))
                    .env("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true");
            }
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting ipcr-node")?
        }
        Server::Distribution => {
            let mut config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                data.display()
            );
            if setup.metrics {
                config.push_str(&format!(
                    "  debug:\n    addr: 127.0.0.1:{debug}\n    prometheus:\n      enabled: true\n      path: /metrics\n"
                ));
            }
            let path = work.join(format!("distribution-{port}.yml"));
            std::fs::write(&path, config)?;
            Command::new("docker-registry")
                .arg("serve")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting docker-registry (apt-get install docker-registry)")?
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let mut running = Running {
        child,
        base: base.clone(),
        scraping: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(curl(&[], &format!("{base}/v2/")), Ok((200, _, _))) {
        if Instant::now() > deadline {
            bail!("{} did not answer within 30 s", setup.name());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if setup.metrics {
        let url = format!("http://127.0.0.1:{debug}/metrics");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(curl(&[], &url), Ok((200, _, _))) {
            if Instant::now() > deadline {
                bail!("{}: no metrics at {url}", setup.name());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        running.scraping = Some(scrape_every_second(url));
    }
    Ok(running)
}

/// Push a small config and a manifest naming it and the big blob, tagged `v1`.
fn push_manifest(work: &Path, base: &str, repo: &str, big: &str) -> Result<()> {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(config)));
    let file = work.join("config.json");
    std::fs::write(&file, config)?;
    push_file(base, repo, &file, &config_digest)?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{big}","size":{}}}]}}"#,
        config.len(),
        cluster_tests::bench::BIG
    );
    let (code, _, _) = curl(
        &[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {MANIFEST}"),
            "--data-binary",
            &manifest,
        ],
        &format!("{base}/v2/{repo}/manifests/v1"),
    )?;
    if code != 201 {
        bail!("manifest push: {code}");
    }
    Ok(())
}

/// `wrk -t2 -c64 -d<secs>s` of a manifest GET by tag: (requests per second, requests).
fn wrk_for(url: &str, secs: u32) -> Result<(f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s")])
        .args(["-H", &format!("Accept: {MANIFEST}")])
        .arg(url)
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if text.contains("Non-2xx") {
        bail!("wrk saw errors against {url}:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    Ok((rps, requests))
}

/// One measurement of one server.
struct Sample {
    push: f64,
    rps: f64,
    /// Server CPU microseconds per manifest GET.
    cpu_us: f64,
}

fn measure(server: &Running, round: usize, blob: &Path, digest: &str, secs: u32) -> Result<Sample> {
    let pid = server.child.id();
    let push = push_big(&server.base, &format!("bench/push{round}"), blob, digest)?;
    let cpu = || process_cpu(pid).with_context(|| format!("reading /proc/{pid}/stat"));
    let before = cpu()?;
    let (rps, requests) = wrk_for(&format!("{}/v2/bench/metrics/manifests/v1", server.base), secs)?;
    let cpu_us = (cpu()? - before) / requests * 1e6;
    Ok(Sample { push, rps, cpu_us })
}

/// The results of one pair of servers, metrics off and on.
struct Pair {
    name: &'static str,
    off: Vec<Sample>,
    on: Vec<Sample>,
    scrapes: usize,
}

fn run_pair(work: &Path, server: Server, runs: usize, secs: u32, blob: &Path, digest: &str) -> Result<Pair> {
    let name = match server {
        Server::Ipcr => "IPCR",
        Server::Distribution => "distribution",
    };
    let mut off = start(
        work,
        Setup {
            server,
            metrics: false,
        },
    )?;
    let mut on = start(
        work,
        Setup {
            server,
            metrics: true,
        },
    )?;
    for s in [&off, &on] {
        push_file(&s.base, "bench/metrics", blob, digest)?;
        push_manifest(work, &s.base, "bench/metrics", digest)?;
    }
    let mut pair = Pair {
        name,
        off: Vec::new(),
        on: Vec::new(),
        scrapes: 0,
    };
    for round in 0..runs {
        let order = if round.is_multiple_of(2) {
            [false, true]
        } else {
            [true, false]
        };
        for metrics in order {
            let server = if metrics { &on } else { &off };
            let s = measure(server, round, blob, digest, secs)?;
            eprintln!(
                "{name} round {}: metrics {}: push {:.2} s, {:.0} GETs/s, {:.1} CPU µs per GET",
                round + 1,
                if metrics { "on " } else { "off" },
                s.push,
                s.rps,
                s.cpu_us
            );
            if metrics {
                pair.on.push(s);
            } else {
                pair.off.push(s);
            }
        }
    }
    pair.scrapes = on.scrapes();
    if pair.scrapes == 0 {
        bail!("{name}: no scrape of its metrics succeeded");
    }
    off.scrapes();
    Ok(pair)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> Result<usize> {
        Ok(args
            .iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let runs = arg("--runs", 9)?.max(1);
    let secs = arg("--seconds", 5)?.max(1) as u32;
    let work = tempfile::Builder::new().prefix("ipcr-bench-metrics-").tempdir()?;
    let blob = work.path().join("blob");
    eprintln!("making a 1 GiB blob ...");
    let digest = make_blob(&blob, 13)?;
    let pairs = [
        run_pair(work.path(), Server::Ipcr, runs, secs, &blob, &digest)?,
        run_pair(work.path(), Server::Distribution, runs, secs, &blob, &digest)?,
    ];
    let list = |v: &[f64], prec: usize| {
        v.iter()
            .map(|x| format!("{x:.prec$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\n{runs} alternating rounds per pair; wrk -t2 -c64 -d{secs}s of a manifest GET by tag; a 1 GiB push (POST + PUT) per round\n"
    );
    println!(
        "| server | metrics | 1 GiB push (s) | median | manifest GETs/s | median | server CPU µs per GET, median |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut goal = Vec::new();
    for pair in &pairs {
        for (label, samples) in [("off", &pair.off), ("on", &pair.on)] {
            let push: Vec<f64> = samples.iter().map(|s| s.push).collect();
            let rps: Vec<f64> = samples.iter().map(|s| s.rps).collect();
            let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_us).collect();
            println!(
                "| {} | {label} | {} | **{:.2}** | {} | **{:.0}** | {:.1} |",
                pair.name,
                list(&push, 2),
                median(&push),
                list(&rps, 0),
                median(&rps),
                median(&cpu)
            );
        }
        let ratios = |f: fn(&Sample) -> f64| -> Vec<f64> {
            pair.on
                .iter()
                .zip(&pair.off)
                .map(|(on, off)| f(on) / f(off))
                .collect()
        };
        let (push, rps, cpu) = (
            median(&ratios(|s| s.push)),
            median(&ratios(|s| s.rps)),
            median(&ratios(|s| s.cpu_us)),
        );
        goal.push((pair.name, push, rps, cpu));
    }
    println!();
    for (name, push, rps, cpu) in &goal {
        println!(
            "{name}, metrics on ÷ off (median of the paired rounds): push time {:+.1} %, manifest GETs/s {:+.1} %, CPU per GET {:+.1} %",
            (push - 1.0) * 100.0,
            (rps - 1.0) * 100.0,
            (cpu - 1.0) * 100.0
        );
    }
    let (_, push, rps, _) = goal[0];
    let met = push <= 1.03 && rps >= 0.97;
    println!(
        "Goal: IPCR with metrics within 3 % of without (push time and manifest GETs/s): {}",
        if met { "met" } else { "not met" }
    );
    Ok(())
}
