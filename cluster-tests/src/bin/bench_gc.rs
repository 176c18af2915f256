//! `bench_gc`: what online garbage collection costs (issue 11), on a registry of 10,000
//! manifests and 50,001 blobs (not a test: it prints a table for `docs/benchmarks.md`).
//!
//! ```console
//! $ cargo build --release -p ipcr-node -p cluster-tests
//! $ ./target/release/bench_gc [--runs 3] [--nodes 1|3] [--repos 1000] [--tags 10] [--pushes 8000]
//!       [--no-peer | --peer-repos 1000]
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
//! Then, unless `--no-peer`, the peer: distribution 2.8.2 (`docker-registry`, filesystem
//! storage, deletes on) loaded with the same shape (`--peer-repos` repositories, default
//! `--repos`) the same way, except that each blob is a `POST` then a `PUT ?digest=` with its
//! bytes (distribution 2.8 ignores a body sent with the `POST`). distribution collects only
//! offline, so each `docker-registry garbage-collect` runs with the registry stopped: on the
//! full registry (the median of `--runs`), once with `--delete-untagged`, then, after the odd
//! tags' manifests are deleted by digest through the running registry, once more (removing
//! half). Its blob files (under `docker/registry/v2/blobs`, manifests included) are counted
//! before and after. A second table sets those times beside IPCR's online collections.
//!
//! `IPCR_BENCH_KEEP=1` keeps the nodes' directories and distribution's (data and logs) and prints
//! where they are. `IPCR_BENCH_SLOWEST=1` prints the 40 slowest `PUT`s during the collection
//! and when they started (how the state machine's once-a-second durable commit was found).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cluster_tests::bench::{median, percentile};
use cluster_tests::gc::{self, Api, GcArgs};
use cluster_tests::node::free_port;
use cluster_tests::oci::{CONFIG, LAYER_TAR, MANIFEST, noise};
use cluster_tests::pushes::{Blob, blob};
use cluster_tests::{Cluster, peer, sha256_digest, tools};
use ipcr_proto::gc::GcReport;
use reqwest::blocking::Client;
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
/// How long one `docker-registry garbage-collect` may run.
const PEER_GC_TIMEOUT: Duration = Duration::from_secs(600);
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

/// Uploads one blob (`api`, repository, bytes): answers its digest.
type PushBlob<'a> = &'a (dyn Fn(&Api, &str, &[u8]) -> Result<String, String> + Sync);

/// Push the whole registry through `apis` in turn, each blob with `push`; answers each item's
/// manifest digest.
fn populate(apis: &[Api], shape: &Shape, push: PushBlob) -> Result<Vec<String>> {
    gc::in_parallel(shape.repos, THREADS, |r| {
        gc::retry("config", 5, &mut Vec::new(), |a| {
            push(&apis[(r + a) % apis.len()], &shape.repo(r), &shape.config.1)
        })
    })
    .map_err(|e| anyhow!("config blobs: {e}"))?;
    gc::in_parallel(shape.repos * shape.tags, THREADS, |k| {
        let (r, t) = shape.item(k);
        let repo = shape.repo(r);
        let api = |a: usize| &apis[(k + a) % apis.len()];
        let layers = shape.layers(r, t);
        for (_, bytes) in &layers {
            gc::retry("layer", 5, &mut Vec::new(), |a| push(api(a), &repo, bytes))?;
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

/// `POST /v2/<repo>/blobs/uploads/`, then `PUT <location>?digest=` with the bytes: the upload
/// distribution 2.8 takes in two requests (it ignores a body sent with the `POST`).
fn post_then_put(http: &Client, api: &Api, repo: &str, bytes: &[u8]) -> Result<String, String> {
    let digest = sha256_digest(bytes);
    let location = api.registry().start_upload(repo)?;
    let sep = if location.contains('?') { '&' } else { '?' };
    let what = format!("PUT of {repo}@{digest}");
    let r = http
        .put(format!("{location}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .map_err(|e| format!("{what}: {e}"))?;
    match r.status().as_u16() {
        201 => Ok(digest),
        s => Err(format!("{what}: status {s}: {}", r.text().unwrap_or_default())),
    }
}

/// What one `docker-registry garbage-collect` said and left.
struct Collected {
    /// Its summary line, `N blobs marked, M blobs and K manifests eligible for deletion`, as
    /// `[N, M, K]`, when it printed one.
    summary: Option<[u64; 3]>,
    /// Blob files on disk after it.
    files: usize,
}

impl Collected {
    /// Whether it removed anything, by its summary or by the files on disk.
    fn removed_any(&self, files_before: usize) -> bool {
        self.files != files_before || self.summary.is_some_and(|[_, b, m]| b + m > 0)
    }

    fn describe(&self, files_before: usize) -> String {
        let said = match self.summary {
            Some([marked, blobs, manifests]) => {
                format!("{blobs} blobs and {manifests} manifests removed, {marked} blobs marked")
            }
            None => "printed no summary".into(),
        };
        format!("{said}; blob files {files_before} → {}", self.files)
    }
}

/// The numbers of `garbage-collect`'s summary line (the last line naming `blobs marked`).
fn summary(stdout: &str) -> Option<[u64; 3]> {
    let line = stdout.lines().rev().find(|l| l.contains("blobs marked"))?;
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (n.len() == 3).then(|| [n[0], n[1], n[2]])
}

/// distribution 2.8.2 under `work`: serving while it is loaded and while manifests are
/// deleted, stopped while it collects. Killed on drop.
struct Distribution {
    work: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Distribution {
    fn new(work: &Path) -> Distribution {
        Distribution {
            work: work.to_path_buf(),
            port: free_port(),
            child: None,
        }
    }

    /// Start it; answers its API once `/v2/` answers 200 (within a minute).
    fn start(&mut self) -> Result<Api> {
        self.child = Some(peer::spawn_distribution(&self.work, self.port)?);
        let api = Api::new(&format!("http://127.0.0.1:{}", self.port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while api.get_status("/v2/") != Ok(200) {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.work.join("distribution.log"));
                bail!(
                    "distribution did not answer /v2/ within 60 s: {}",
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(api)
    }

    /// Kill it: every write it acknowledged is on disk already.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Files `docker/registry/v2/blobs/<algorithm>/<two hex>/<hex>/data`: layers, configs and
    /// manifests alike.
    fn blob_files(&self) -> usize {
        let entries = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let root = peer::distribution_data(&self.work).join("docker/registry/v2/blobs");
        entries(&root)
            .iter()
            .flat_map(|alg| entries(alg))
            .flat_map(|prefix| entries(&prefix))
            .filter(|blob| blob.join("data").is_file())
            .count()
    }

    /// One `garbage-collect` with `flags`, which needs the registry stopped: what it said, and
    /// its wall-clock seconds.
    fn collect(&mut self, flags: &[&str]) -> Result<(Collected, f64)> {
        self.stop();
        let started = Instant::now();
        let out = tools::run(&mut peer::garbage_collect(&self.work, flags), PEER_GC_TIMEOUT);
        let secs = started.elapsed().as_secs_f64();
        if !out.status.success() {
            let all = out.describe();
            let lines: Vec<&str> = all.lines().collect();
            bail!(
                "garbage-collect failed; the end of what it printed:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let collected = Collected {
            summary: summary(&out.stdout_text()),
            files: self.blob_files(),
        };
        Ok((collected, secs))
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The peer's numbers: the same steps as IPCR's, collections offline.
struct PeerRun {
    manifests: usize,
    populate_s: f64,
    /// Requests of the populate (two per blob, one per manifest).
    requests: usize,
    /// Blob files of the full registry.
    files: usize,
    nothing_s: Vec<f64>,
    nothing: Collected,
    untagged_s: f64,
    untagged: Collected,
    /// Manifests deleted before the collection removing half.
    deleted: usize,
    half_s: f64,
    half: Collected,
}

/// Load distribution with `shape`, then collect (stopped) nothing `runs` times, nothing with
/// `--delete-untagged` once, and half after deleting the odd tags' manifests.
fn run_peer(shape: &Shape, runs: usize, keep: bool) -> Result<PeerRun> {
    let dir = tempfile::Builder::new()
        .prefix("ipcr-bench-gc-distribution-")
        .tempdir()?;
    let work = dir.path().to_path_buf();
    if keep {
        let _ = dir.keep();
        eprintln!("distribution's directory: {}", work.display());
    }
    let mut dist = Distribution::new(&work);
    let api = dist.start()?;
    let http = cluster_tests::client::http_client();
    let manifests = shape.repos * shape.tags;
    eprintln!("distribution: populating {manifests} manifests ...");
    let started = Instant::now();
    let digests = populate(std::slice::from_ref(&api), shape, &|api, repo, bytes| {
        post_then_put(&http, api, repo, bytes)
    })?;
    let populate_s = started.elapsed().as_secs_f64();
    dist.stop();
    let files = dist.blob_files();
    if files != manifests * (LAYERS + 1) + 1 {
        bail!(
            "distribution holds {files} blob files, not {} after the populate",
            manifests * (LAYERS + 1) + 1
        );
    }

    eprintln!("distribution (stopped): garbage-collect removing nothing ...");
    let mut nothing_s = Vec::new();
    let mut nothing = None;
    for _ in 0..runs {
        let (said, secs) = dist.collect(&[])?;
        if said.removed_any(files) {
            bail!(
                "garbage-collect of a registry without garbage: {}",
                said.describe(files)
            );
        }
        nothing_s.push(secs);
        nothing = Some(said);
    }
    let (untagged, untagged_s) = dist.collect(&["--delete-untagged"])?;
    if untagged.removed_any(files) {
        bail!(
            "garbage-collect --delete-untagged of a registry without garbage: {}",
            untagged.describe(files)
        );
    }

    eprintln!("distribution: deleting the odd tags, then (stopped) garbage-collect removing half ...");
    let api = dist.start()?;
    let deleted = delete(std::slice::from_ref(&api), shape, &digests, |t| t % 2 == 1)?;
    let (half, half_s) = dist.collect(&[])?;
    let expected = files - deleted * (LAYERS + 1);
    if half.files != expected {
        eprintln!(
            "warning: distribution kept {} blob files, not {expected}",
            half.files
        );
    }
    Ok(PeerRun {
        manifests,
        populate_s,
        requests: shape.repos * 2 + manifests * (LAYERS * 2 + 1),
        files,
        nothing_s,
        nothing: nothing.expect("at least one run"),
        untagged_s,
        untagged,
        deleted,
        half_s,
        half,
    })
}

/// IPCR's numbers that the second table sets beside distribution's.
struct Online {
    nodes: usize,
    manifests: usize,
    populate_s: f64,
    /// Requests of the populate (one per blob and per manifest).
    requests: usize,
    nothing_s: f64,
    half_s: f64,
    /// Blobs the collection removing half removed.
    half_removed: u64,
    /// Manifests deleted before the collection removing half.
    deleted: usize,
    /// Manifest `PUT` latencies during a collection.
    during: String,
}

fn print_beside(ipcr: &Online, peer: &PeerRun, runs: usize) {
    println!(
        "\n### Garbage collection beside distribution 2.8.2: IPCR online (serving), \
         distribution offline (stopped)\n"
    );
    println!(
        "| measure | IPCR, {} manifests, {} node(s) | distribution, {} manifests |\n|---|---|---|",
        ipcr.manifests, ipcr.nodes, peer.manifests
    );
    println!(
        "| populate ({THREADS} requests in flight) | {:.0} s ({:.0} manifests/s, {:.0} requests/s) | \
         {:.0} s ({:.0} manifests/s, {:.0} requests/s: POST then PUT per blob) |",
        ipcr.populate_s,
        ipcr.manifests as f64 / ipcr.populate_s,
        ipcr.requests as f64 / ipcr.populate_s,
        peer.populate_s,
        peer.manifests as f64 / peer.populate_s,
        peer.requests as f64 / peer.populate_s
    );
    println!(
        "| collection removing nothing | {:.2} s (median of {runs}) | {:.2} s (median of {runs}; {}) |",
        ipcr.nothing_s,
        median(&peer.nothing_s),
        peer.nothing.describe(peer.files)
    );
    println!(
        "| collection removing nothing, `--delete-untagged` | not measured | {:.2} s ({}) |",
        peer.untagged_s,
        peer.untagged.describe(peer.files)
    );
    println!(
        "| collection removing half | {:.2} s ({} manifests deleted before; {} blobs removed) | \
         {:.2} s ({} manifests deleted before; {}) |",
        ipcr.half_s,
        ipcr.deleted,
        ipcr.half_removed,
        peer.half_s,
        peer.deleted,
        peer.half.describe(peer.files)
    );
    println!(
        "| manifest PUT during a collection | {} | none: the registry is stopped |",
        ipcr.during
    );
    println!(
        "\ndistribution cannot collect while serving: `garbage-collect` needs the registry \
         stopped (or read-only), so the manifest PUT rows have no distribution counterpart, and \
         its times leave out stopping and restarting it. Its blob files hold manifests too (one \
         per manifest beside IPCR's blobs)."
    );
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
    let with_peer = !std::env::args().any(|a| a == "--no-peer");
    let peer_repos: usize = arg("--peer-repos", shape.repos)?;
    if !(nodes == 1 || nodes == 3) || shape.tags < 4 || shape.repos == 0 || peer_repos == 0 {
        bail!("--nodes 1 or 3, --tags at least 4, --repos and --peer-repos at least 1");
    }
    if with_peer && tools::find_on_path("docker-registry").is_none() {
        bail!(
            "no docker-registry (distribution 2.8.2) on PATH: apt-get install docker-registry, or --no-peer"
        );
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
    let keep = std::env::var_os("IPCR_BENCH_KEEP").is_some();
    let mut cluster = Cluster::start(nodes, &env);
    if keep {
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
    let digests = populate(&apis, &shape, &|api, repo, bytes| api.push_blob(repo, bytes))?;
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
    if !with_peer {
        return Ok(());
    }

    // The nodes stop first: distribution is measured alone on the machine.
    drop(cluster);
    let peer_shape = Shape {
        repos: peer_repos,
        tags: shape.tags,
        config: shape.config.clone(),
    };
    let peer = run_peer(&peer_shape, runs, keep)?;
    let online = Online {
        nodes,
        manifests,
        populate_s,
        requests: shape.repos + manifests * (LAYERS + 1),
        nothing_s: median(&nothing),
        half_s,
        half_removed: half_report.tally.blobs_removed,
        deleted: half,
        during: format!(
            "{} ({} PUTs within the {during_s:.2} s collection)",
            quantiles(&during_ms),
            during_ms.len()
        ),
    };
    print_beside(&online, &peer, runs);
    Ok(())
}
