//! Benchmark: what Prometheus metrics cost on the hot path (issue 13), in one run: a 1 GiB
//! monolithic push (`curl`, POST + PUT) and manifest GETs by tag (`wrk -t2 -c64 -d10s`), on IPCR
//! with `http.debug.prometheus` off and on, and on distribution 2.8.2 with its own
//! `http.debug.prometheus` off and on, beside it. While a server's metrics are on, a scraper
//! reads them every second, as a Prometheus scraping at that rate would. Every round starts
//! each server afresh, in an order that rotates from round to round.
//!
//! ```console
//! $ cargo build --release -p ipcr-node -p cluster-tests --bin ipcr-node --bin bench_metrics
//! $ ./target/release/bench_metrics [--runs 5]
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
use cluster_tests::bench::{curl, make_blob, median, push_big, wrk};
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
fn push_manifest(base: &str, repo: &str, big: &str) -> Result<()> {
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(config)));
    let data = std::str::from_utf8(config)?;
    let (code, _, _) = curl(
        &[
            "-X",
            "POST",
            "--data-binary",
            data,
            "-H",
            "Content-Type: application/octet-stream",
        ],
        &format!("{base}/v2/{repo}/blobs/uploads/?digest={config_digest}"),
    )?;
    if code != 201 {
        bail!("config push: {code}");
    }
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

struct Round {
    push: f64,
    rps: f64,
    scrapes: usize,
}

fn measure(work: &Path, setup: Setup, blob: &Path, digest: &str) -> Result<Round> {
    let mut server = start(work, setup)?;
    let push = push_big(&server.base, "bench/metrics", blob, digest)?;
    push_manifest(&server.base, "bench/metrics", digest)?;
    let rps = wrk(&format!("{}/v2/bench/metrics/manifests/v1", server.base))?;
    let scrapes = server.scrapes();
    if setup.metrics && scrapes == 0 {
        bail!("{}: no scrape succeeded", setup.name());
    }
    Ok(Round { push, rps, scrapes })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(5);
    let work = tempfile::Builder::new().prefix("ipcr-bench-metrics-").tempdir()?;
    let blob = work.path().join("blob");
    eprintln!("making a 1 GiB blob ...");
    let digest = make_blob(&blob, 13)?;
    let setups = [
        Setup {
            server: Server::Ipcr,
            metrics: false,
        },
        Setup {
            server: Server::Ipcr,
            metrics: true,
        },
        Setup {
            server: Server::Distribution,
            metrics: false,
        },
        Setup {
            server: Server::Distribution,
            metrics: true,
        },
    ];
    let mut results: Vec<Vec<Round>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for k in 0..setups.len() {
            let i = (k + round) % setups.len();
            let r = measure(work.path(), setups[i], &blob, &digest)?;
            eprintln!(
                "round {}: {}: push {:.2} s, {:.0} manifest GETs/s, {} scrapes",
                round + 1,
                setups[i].name(),
                r.push,
                r.rps,
                r.scrapes
            );
            results[i].push(r);
        }
    }
    println!("\n| server | 1 GiB push (s): runs | median | manifest GET (req/s): runs | median |");
    println!("|---|---|---|---|---|");
    let mut medians = Vec::new();
    for (setup, rounds) in setups.iter().zip(&results) {
        let pushes: Vec<f64> = rounds.iter().map(|r| r.push).collect();
        let rps: Vec<f64> = rounds.iter().map(|r| r.rps).collect();
        let join = |v: &[f64], p: usize| {
            v.iter()
                .map(|x| format!("{x:.prec$}", prec = p))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {} | {} | **{:.2}** | {} | **{:.0}** |",
            setup.name(),
            join(&pushes, 2),
            median(&pushes),
            join(&rps, 0),
            median(&rps)
        );
        medians.push((median(&pushes), median(&rps)));
    }
    let change = |on: f64, off: f64| (on / off - 1.0) * 100.0;
    let (ipcr_push, ipcr_rps) = (
        change(medians[1].0, medians[0].0),
        change(medians[1].1, medians[0].1),
    );
    let (dist_push, dist_rps) = (
        change(medians[3].0, medians[2].0),
        change(medians[3].1, medians[2].1),
    );
    println!(
        "\nMetrics on vs off (medians): IPCR push {ipcr_push:+.1} %, manifest GETs {ipcr_rps:+.1} %; \
         distribution push {dist_push:+.1} %, manifest GETs {dist_rps:+.1} %."
    );
    let met = ipcr_push <= 3.0 && ipcr_rps >= -3.0;
    println!(
        "Goal: IPCR with metrics within 3 % of without (push time and manifest GETs/s): {}",
        if met { "met" } else { "not met" }
    );
    Ok(())
}
