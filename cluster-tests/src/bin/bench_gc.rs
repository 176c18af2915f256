//! `bench_gc`: what online garbage collection costs (issue 11), on a registry of 10,000
//! manifests and 50,001 blobs (not a test: it prints a table for `docs/benchmarks.md`).
//!
//! ```console
//! $ cargo build --release -p ipcr-node -p cluster-tests
//! $ ./target/release/bench_gc [--runs 3] [--nodes 1|3] [--repos 1000] [--tags 10] [--pushes 8000]
//! ```
//!
//! Repository `gcbench/r<r>` holds tags `t0`..`t9`; the manifest of each tag has five layers of
//! its own (64 bytes each) and the config all manifests share. Everything is pushed through
//! every node in turn, 16 requests at a time: the config into each repository, then per tag its
//! layers (monolithic `POST ?digest=` uploads) and its manifest. The nodes run with default
//! settings (on three nodes, `storage.replicas: 2`). Measured:
//! - a collection that removes nothing: `ipcr-node gc --grace 0s`, the median of `--runs`;
//! - after `DELETE` by digest of half the manifests (the odd tags), a collection removing half
//!   the blobs;
//! - manifest `PUT` latency, p50 and p99 over 4 clients, each pushing new manifests that name
//!   layers already uploaded: with no collection running, then while a collection of a freshly
//!   garbaged registry runs (tags `t2` and `t6` deleted), counting only the `PUT`s that started
//!   and ended during it. The goal: p99 during a collection within 1.5 × p99 without one.
//!
//! `IPCR_BENCH_KEEP=1` keeps the nodes' directories (data and logs) and prints where they are.

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use cluster_tests::Cluster;
use cluster_tests::bench::{median, percentile};
use cluster_tests::gc::{self, Api, GcArgs};
use cluster_tests::oci::{CONFIG, LAYER_TAR, MANIFEST, noise};
use cluster_tests::pushes::{Blob, blob};
use ipcr_proto::gc::GcReport;
use serde_json::json;

/// Requests in flight while loading and deleting.
const THREADS: usize = 16;
/// Clients pushing manifests while latencies are measured.
const CLIENTS: usize = 4;
/// Layers of each manifest, and their size.
const LAYERS: usize = 5;
const LAYER_LEN: usize = 64;
/// Upper bound on the `PUT`s pushed during a collection (it ends long before).
const DURING_CAP: usize = 200_000;
const CONFIG_BYTES: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

/// Wait (at most two minutes) until the number of blob files on the nodes' disks has not
/// changed for two seconds.
fn settle(cluster: &Cluster) {
    let count = || -> usize {
        cluster
            .nodes
            .iter()
            .map(|n| gc::blob_files(&n.data_dir()).len())
            .sum()
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    let (mut last, mut since) = (count(), Instant::now());
    while Instant::now() < deadline && since.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

fn arg<T: FromStr>(name: &str, default: T) -> Result<T> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => v.parse().map_err(|_| anyhow!("{name} {v}: not a number")),
        None => Ok(default),
    }
}

/// The registry's shape: which repository and layers each tag has.
struct Shape {
    repos: usize,
    tags: usize,
    config: Blob,
}

impl Shape {
    fn repo(&self, r: usize) -> String {
        format!("gcbench/r{r}")
    }

    /// Tag `t` of every repository comes before tag `t + 1` of any: item `k` is repository
    /// `k % repos`, tag `k / repos`.
    fn item(&self, k: usize) -> (usize, usize) {
        (k % self.repos, k / self.repos)
    }

    fn layers(&self, r: usize, t: usize) -> Vec<Blob> {
        (0..LAYERS)
            .map(|l| blob(noise(((r * self.tags + t) * LAYERS + l + 1) as u64, LAYER_LEN)))
            .collect()
    }

    /// A manifest of the shared config and `layers`, made unique by `note`.
    fn manifest(&self, layers: &[Blob], note: &str) -> Vec<u8> {
        let desc = |media_type: &str, (digest, bytes): &Blob| json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() });
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc(CONFIG, &self.config),
            "layers": layers.iter().map(|l| desc(LAYER_TAR, l)).collect::<Vec<_>>(),
            "annotations": { "bench": note },
        }))
        .expect("json")
    }

    /// The tags no deletion of this benchmark touches (`t0`, `t4`, `t8`, ...).
    fn kept(&self) -> Vec<usize> {
        (0..self.tags).filter(|t| t % 4 == 0).collect()
    }
}

/// Push the whole registry through `apis` in turn; answers each item's manifest digest.
fn populate(apis: &[Api], shape: &Shape) -> Result<Vec<String>> {
    gc::in_parallel(shape.repos, THREADS, |r| {
        gc::retry("config", 5, &mut Vec::new(), |a| {
            apis[(r + a) % apis.len()].push_blob(&shape.repo(r), &shape.config.1)
        })
    })
    .map_err(|e| anyhow!("config blobs: {e}"))?;
    gc::in_parallel(shape.repos * shape.tags, THREADS, |k| {
        let (r, t) = shape.item(k);
        let repo = shape.repo(r);
        let api = |a: usize| &apis[(k + a) % apis.len()];
        let layers = shape.layers(r, t);
        for (_, bytes) in &layers {
            gc::retry("layer", 5, &mut Vec::new(), |a| api(a).push_blob(&repo, bytes))?;
        }
        let manifest = shape.manifest(&layers, &format!("r{r}t{t}"));
        gc::retry("manifest", 5, &mut Vec::new(), |a| {
            api(a)
                .registry()
                .put_manifest(&repo, &format!("t{t}"), MANIFEST, &manifest)
        })
    })
    .map_err(|e| anyhow!("populating: {e}"))
}

/// `DELETE` by digest of every manifest whose tag satisfies `doomed`; answers how many.
fn delete(apis: &[Api], shape: &Shape, digests: &[String], doomed: impl Fn(usize) -> bool) -> Result<usize> {
    let items: Vec<usize> = (0..digests.len()).filter(|&k| doomed(shape.item(k).1)).collect();
    gc::in_parallel(items.len(), THREADS, |i| {
        let k = items[i];
        let repo = shape.repo(shape.item(k).0);
        gc::retry("delete", 5, &mut Vec::new(), |a| {
            match apis[(k + a) % apis.len()].delete_manifest(&repo, &digests[k]) {
                Ok(202) => Ok(()),
                // An earlier attempt may have deleted it before failing.
                Ok(404) if a > 0 => Ok(()),
                Ok(s) => Err(format!("DELETE {repo}@{}: {s}", digests[k])),
                Err(e) => Err(e),
            }
        })
    })
    .map_err(|e| anyhow!("deleting: {e}"))?;
    Ok(items.len())
}

/// Manifest `PUT`s on [`CLIENTS`] threads while `go(k)` allows the `k`th: new tags `<label><k>`
/// naming the layers of a kept tag. Answers when each started and ended, and the failures.
fn put_latencies(
    apis: &[Api],
    shape: &Shape,
    label: &str,
    go: &(dyn Fn(usize) -> bool + Sync),
) -> (Vec<(Instant, Instant)>, Vec<String>) {
    let kept = shape.kept();
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (kept, next, samples, failures) = (&kept, &next, &samples, &failures);
            s.spawn(move || {
                let api = &apis[c % apis.len()];
                loop {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if !go(k) {
                        break;
                    }
                    let r = k % shape.repos;
                    let t = kept[(k / shape.repos) % kept.len()];
                    let tag = format!("{label}{k}");
                    let manifest = shape.manifest(&shape.layers(r, t), &tag);
                    let started = Instant::now();
                    let put = api
                        .registry()
                        .put_manifest(&shape.repo(r), &tag, MANIFEST, &manifest);
                    let ended = Instant::now();
                    match put {
                        Ok(_) => samples.lock().expect("samples").push((started, ended)),
                        Err(e) => failures.lock().expect("failures").push(e),
                    }
                }
            });
        }
    });
    (
        samples.into_inner().expect("samples"),
        failures.into_inner().expect("failures"),
    )
}

fn ms(samples: &[(Instant, Instant)]) -> Vec<f64> {
    samples
        .iter()
        .map(|(a, b)| b.duration_since(*a).as_secs_f64() * 1000.0)
        .collect()
}

/// `p50 x ms, p99 y ms`.
fn quantiles(v: &[f64]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.1} ms, p99 {:.1} ms",
        percentile(v, 0.5),
        percentile(v, 0.99)
    )
}

/// One collection with grace 0 through `url`: its report and wall-clock seconds.
fn timed_gc(url: &str) -> Result<(GcReport, f64)> {
    let started = Instant::now();
    let report = gc::run_gc(url, &GcArgs::grace(0)).map_err(anyhow::Error::msg)?;
    Ok((report, started.elapsed().as_secs_f64()))
}

fn counts(r: &GcReport) -> String {
    format!(
        "{} manifests, {} blob links, {} blobs ({} B; {} B on disks) removed; {} ms by its report",
        r.totals.manifests,
        r.totals.blobs,
        r.tally.blobs_removed,
        r.tally.bytes_removed,
        r.tally.disk_bytes_removed,
        r.finished_ms.saturating_sub(r.started_ms)
    )
}

fn main() -> Result<()> {
    let runs: usize = arg("--runs", 3usize)?.clamp(1, 10);
    let nodes: usize = arg("--nodes", 1usize)?;
    let pushes: usize = arg("--pushes", 8000usize)?;
    let shape = Shape {
        repos: arg("--repos", 1000usize)?,
        tags: arg("--tags", 10usize)?,
        config: blob(CONFIG_BYTES.to_vec()),
    };
    if !(nodes == 1 || nodes == 3) || shape.tags < 4 || shape.repos == 0 {
        bail!("--nodes 1 or 3, --tags at least 4, --repos at least 1");
    }
    let help = std::process::Command::new(cluster_tests::node::node_binary())
        .args(["gc", "--help"])
        .output()
        .context("running ipcr-node gc --help")?;
    if !help.status.success() {
        bail!("this ipcr-node has no `gc` subcommand: cargo build --release -p ipcr-node");
    }
    let env = [
        ("REGISTRY_LOG_ACCESSLOG_DISABLED", "true"),
        ("REGISTRY_LOG_LEVEL", "warn"),
    ];
    let mut cluster = Cluster::start(nodes, &env);
    if std::env::var_os("IPCR_BENCH_KEEP").is_some() {
        for n in &mut cluster.nodes {
            n.process().keep();
        }
    }
    let apis: Vec<Api> = cluster.nodes.iter().map(|n| Api::new(&n.base_url())).collect();
    let leader = cluster.wait_leader();
    let url = cluster.nodes[leader].cluster_url();
    let manifests = shape.repos * shape.tags;
    let blobs = manifests * LAYERS + 1;

    eprintln!("populating {manifests} manifests and {blobs} blobs on {nodes} node(s) ...");
    let started = Instant::now();
    let digests = populate(&apis, &shape)?;
    let populate_s = started.elapsed().as_secs_f64();

    eprintln!("collections that remove nothing ...");
    let mut nothing = Vec::new();
    let mut nothing_report = None;
    for _ in 0..runs {
        let (report, secs) = timed_gc(&url)?;
        if report.tally.blobs_removed != 0 || report.totals.manifests != 0 {
            bail!("a collection of a registry without garbage removed something: {report:?}");
        }
        nothing.push(secs);
        nothing_report = Some(report);
    }

    eprintln!("deleting the odd tags, then a collection that removes half ...");
    let half = delete(&apis, &shape, &digests, |t| t % 2 == 1)?;
    let (half_report, half_s) = timed_gc(&url)?;
    // The nodes delete the collected copies after the collection: let that disk work end
    // before measuring pushes without a collection.
    settle(&cluster);

    eprintln!("manifest PUT latency without a collection ...");
    let fresh = delete(&apis, &shape, &digests, |t| t % 4 == 2)?;
    let (without, failed_without) = put_latencies(&apis, &shape, "calm", &|k| k < pushes);
    eprintln!("manifest PUT latency during a collection ...");
    let done = AtomicBool::new(false);
    let (during_gc, (samples, failed_during)) = std::thread::scope(|s| {
        let collection = s.spawn(|| {
            let started = Instant::now();
            let r = timed_gc(&url);
            done.store(true, Ordering::SeqCst);
            (r, started, Instant::now())
        });
        let pushed = put_latencies(&apis, &shape, "busy", &|k| {
            !done.load(Ordering::SeqCst) && k < DURING_CAP
        });
        (collection.join().expect("the collection thread"), pushed)
    });
    let (during_report, window_start, window_end) = during_gc;
    let (during_report, during_s) = during_report?;
    let inside: Vec<(Instant, Instant)> = samples
        .into_iter()
        .filter(|(a, b)| *a >= window_start && *b <= window_end)
        .collect();
    let (without_ms, during_ms) = (ms(&without), ms(&inside));
    if std::env::var_os("IPCR_BENCH_SLOWEST").is_some() {
        let mut slow: Vec<(f64, f64)> = inside
            .iter()
            .map(|(a, b)| {
                (
                    (*b - *a).as_secs_f64() * 1e3,
                    (*a - window_start).as_secs_f64() * 1e3,
                )
            })
            .collect();
        slow.sort_by(|x, y| y.0.total_cmp(&x.0));
        for (took, at) in slow.iter().take(40) {
            eprintln!("slow PUT: {took:.1} ms at +{at:.0} ms");
        }
    }

    let nothing_report = nothing_report.expect("at least one run");
    println!(
        "\n### Garbage collection: {manifests} manifests, {blobs} blobs, {nodes} node(s) \
         ({runs} runs of the empty collection)\n"
    );
    println!("| measure | value |\n|---|---|");
    println!(
        "| populate (16 requests in flight) | {populate_s:.0} s ({:.0} manifests/s, {:.0} blobs/s) |",
        manifests as f64 / populate_s,
        blobs as f64 / populate_s
    );
    println!(
        "| collection removing nothing | {:.2} s (median; {}) |",
        median(&nothing),
        counts(&nothing_report)
    );
    println!(
        "| collection removing half ({half} manifests deleted before) | {half_s:.2} s ({}) |",
        counts(&half_report)
    );
    println!(
        "| manifest PUT without a collection | {} ({} PUTs, {CLIENTS} clients, {} failed) |",
        quantiles(&without_ms),
        without_ms.len(),
        failed_without.len()
    );
    println!(
        "| manifest PUT during a collection ({fresh} manifests deleted before) | {} ({} PUTs \
         within the {during_s:.2} s collection, {} failed; {}) |",
        quantiles(&during_ms),
        during_ms.len(),
        failed_during.len(),
        counts(&during_report)
    );
    if !without_ms.is_empty() && !during_ms.is_empty() {
        println!(
            "\nGoal: p99 of manifest PUTs during a collection within 1.5 × without one: {:.2} ×",
            percentile(&during_ms, 0.99) / percentile(&without_ms, 0.99)
        );
    }
    for f in failed_without.iter().chain(&failed_during).take(5) {
        eprintln!("failed PUT: {f}");
    }
    if during_ms.len() < 100 {
        eprintln!(
            "note: only {} PUTs fell within the collection; a larger --repos gives it more to do",
            during_ms.len()
        );
    }
    Ok(())
}
