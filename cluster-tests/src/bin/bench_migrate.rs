//! Issue 12's two goals, each measured beside its peer in the same run on this machine:
//!
//! - **migration**: every tag of one repository of distribution 2.8.2 (Debian's
//!   `docker-registry`), seeded by skopeo through [`cluster_tests::seed`] (30 tags sharing a
//!   base layer, a layer per group of three and one of their own, incompressible, over 1 GiB),
//!   copied into a fresh single IPCR node by `ipcr-node migrate` (at each `--concurrency`
//!   asked) and by `skopeo sync --preserve-digests` (without it, skopeo 1.9 gzips uncompressed
//!   layers on the way, so the copy's digests are not the source's). Each copy is checked
//!   before its time counts: the destination lists exactly the source's tags, names each with
//!   the source's digest (`Docker-Content-Digest` of a `HEAD`), and holds every blob with its
//!   size.
//!
//!   Beside the copies, the two halves of one, alone, at the first `--concurrency`: curl
//!   reading every blob from distribution into `/dev/null`, and curl pushing every blob into a
//!   fresh IPCR node from local files (`POST`, then `PUT` of the file). A copy can go no faster
//!   than the slower half; on two cores it pays for some of both.
//! - **pull-through cache, first pull**: one image only the upstream holds, pulled with curl
//!   (the manifest, then every blob at once, into `/dev/null`) straight from distribution and
//!   through a fresh IPCR node configured as its cache (`proxy.upstreams`, prefix `up`); then
//!   once more through the cache, served from IPCR's disk.
//!
//! ```console
//! $ cargo build --release -p ipcr-node -p cluster-tests --bin ipcr-node --bin bench_migrate
//! $ ./target/release/bench_migrate --runs 3
//! ```
//!
//! Flags: `--runs N` (3), `--tags N` (30), `--layer-mib N` (26), `--concurrency 4,1,8` (the
//! first is the one the goal is checked with, and the halves' concurrency),
//! `--pull-layer-mib N` (100: three layers), `--only migrate|pull`, `--no-halves`,
//! `--recompressing-skopeo` (also `skopeo sync` without `--preserve-digests`: a copy that fails
//! the check, for the record), `--upstream-link RATE` (distribution runs in a network
//! namespace of its own, reached over a veth link whose sending side tc's token bucket holds to
//! RATE, `1gbit` say: a registry across a network, as Docker Hub is, rather than one on
//! loopback serving from the page cache; needs root). `IPCR_NODE_BIN` picks the `ipcr-node` (nodes and migrate).
//! Everything (source, tools, destination) shares the machine's cores and disk; the CPU
//! seconds each process spent during a copy are reported beside its time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cluster_tests::Node;
use cluster_tests::bench::{median, process_cpu, push_file, reaped_children_cpu, stat_fields};
use cluster_tests::client::http_client as http;
use cluster_tests::netns::NetLab;
use cluster_tests::seed::{Seeded, Seeder};
use cluster_tests::tools::{find_on_path, run};
use cluster_tests::upstream::Upstream;

/// The source repository of the migration.
const REPO: &str = "bench/app";
/// The repository both tools copy into (`skopeo sync` names it after the source's last
/// component under the destination prefix `mig`).
const DEST_REPO: &str = "mig/app";
/// The repository holding the image the cache is measured with.
const PULL_REPO: &str = "bench/pull";
/// The cache's prefix: `up/<name>` is a cache of `<name>` upstream.
const PREFIX: &str = "up";
/// The longest one copy may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(900);
/// The longest the cache may take to store what a first pull fetched.
const CACHED_TIMEOUT: Duration = Duration::from_secs(120);
/// The manifest types every request here accepts.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
/// What every IPCR node of the run is given beyond the test defaults: no access log (the
/// migration sends a few hundred requests; distribution's access log is off too).
const NODE_ENV: [(&str, &str); 1] = [("REGISTRY_LOG_ACCESSLOG_DISABLED", "true")];

fn arg<T: FromStr>(name: &str, default: T) -> Result<T> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => v.parse().map_err(|_| anyhow!("{name} {v}: not understood")),
        None => Ok(default),
    }
}

// ---------------------------------------------------------------------------------------
// CPU time, to say where a copy's time goes on two shared cores.

/// The `docker-registry` this process started (the upstream hides its child).
fn distribution_pid() -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().to_string();
        pid.parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let fields = stat_fields(&pid)?;
        if comm.trim() == "docker-registry" && fields.get(1) == Some(&me) {
            pid.parse().ok()
        } else {
            None
        }
    })
}

/// CPU seconds spent during one copy or pull.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// The client (`skopeo`, `ipcr-node migrate`, curl).
    tool: f64,
    /// The IPCR node.
    ipcr: f64,
    /// distribution.
    source: f64,
}

/// CPU counters before a measurement.
struct CpuMark {
    reaped: f64,
    ipcr: (u32, f64),
    source: Option<(u32, f64)>,
}

impl CpuMark {
    fn now(ipcr: u32, source: Option<u32>) -> CpuMark {
        CpuMark {
            reaped: reaped_cpu(),
            ipcr: (ipcr, cpu(ipcr)),
            source: source.map(|p| (p, cpu(p))),
        }
    }

    /// What was spent since, the client counted once it has been reaped.
    fn spent(&self) -> Cpu {
        Cpu {
            tool: reaped_cpu() - self.reaped,
            ipcr: cpu(self.ipcr.0) - self.ipcr.1,
            source: self.source.map_or(0.0, |(p, before)| cpu(p) - before),
        }
    }
}

/// CPU seconds of `pid`, 0 once it is gone (the report then shows what it spent as 0).
fn cpu(pid: u32) -> f64 {
    process_cpu(pid).unwrap_or(0.0)
}

/// CPU seconds of this process's reaped children.
fn reaped_cpu() -> f64 {
    reaped_children_cpu().unwrap_or(0.0)
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Checking a copy.

fn header(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    Some(resp.headers().get(name)?.to_str().ok()?.to_string())
}

/// Whether `base`'s `repo` lists exactly `want`'s tags, names each with the same digest and
/// holds each blob with its size; answers the objects checked.
fn verify(base: &str, repo: &str, want: &Seeded) -> Result<usize> {
    let http = http();
    let listed: serde_json::Value = http
        .get(format!("{base}/v2/{repo}/tags/list?n=10000"))
        .send()?
        .error_for_status()?
        .json()?;
    let listed: BTreeSet<String> = listed["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some(t.as_str()?.to_string()))
        .collect();
    let expected: BTreeSet<String> = want.tags.keys().cloned().collect();
    if listed != expected {
        bail!(
            "{repo} lists {} tags, not the source's {}: missing {:?}, extra {:?}",
            listed.len(),
            expected.len(),
            expected.difference(&listed).collect::<Vec<_>>(),
            listed.difference(&expected).collect::<Vec<_>>()
        );
    }
    for (tag, d) in &want.tags {
        let resp = http
            .head(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("Accept", ACCEPT)
            .send()?;
        let got = header(&resp, "docker-content-digest");
        if resp.status() != 200 || got.as_deref() != Some(d.digest.as_str()) {
            bail!(
                "{repo}:{tag}: status {}, digest {got:?}, not the source's {} ({})",
                resp.status(),
                d.digest,
                layer_types(&http, base, repo, tag)
            );
        }
    }
    Ok(want.tags.len() + verify_blobs(&http, base, repo, want)?)
}

/// Whether `base`'s `repo` holds every blob of `want` with its size; answers how many.
fn verify_blobs(http: &reqwest::blocking::Client, base: &str, repo: &str, want: &Seeded) -> Result<usize> {
    for (digest, size) in &want.blobs {
        let resp = http.head(format!("{base}/v2/{repo}/blobs/{digest}")).send()?;
        let got = header(&resp, "content-length");
        if resp.status() != 200 || got != Some(size.to_string()) {
            bail!(
                "{repo} blob {digest}: status {}, length {got:?}, not {size}",
                resp.status()
            );
        }
    }
    Ok(want.blobs.len())
}

/// What the copy's manifest of `tag` names as layers, to say how a copy differs.
fn layer_types(http: &reqwest::blocking::Client, base: &str, repo: &str, tag: &str) -> String {
    let manifest: Option<serde_json::Value> = http
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Accept", ACCEPT)
        .send()
        .and_then(|r| r.json())
        .ok();
    let types: BTreeSet<String> = manifest
        .iter()
        .flat_map(|m| m["layers"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| Some(l["mediaType"].as_str()?.to_string()))
        .collect();
    format!("the copy's layers: {types:?}")
}

/// `sha256:<hex>` of the blob `base` serves.
fn blob_digest(base: &str, repo: &str, digest: &str) -> Result<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut resp = http()
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()?
        .error_for_status()?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = resp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

// ---------------------------------------------------------------------------------------
// Migration.

/// A way to copy the repository.
#[derive(Clone, Copy, PartialEq)]
enum Tool {
    /// `skopeo sync`, with `--preserve-digests` or without (then it gzips uncompressed layers,
    /// and the copy's digests are not the source's).
    Skopeo {
        preserve: bool,
    },
    Migrate(u16),
    /// Half a copy: curl `GET`s every blob from the source into `/dev/null`, this many at once.
    Read(u16),
    /// The other half: curl pushes every blob (`POST`, `PUT` of the file) from local files
    /// into the node, this many at once.
    Write(u16),
}

impl Tool {
    fn name(self) -> String {
        match self {
            Tool::Skopeo { preserve: true } => "`skopeo sync --preserve-digests`".to_string(),
            Tool::Skopeo { preserve: false } => "`skopeo sync` (recompressing)".to_string(),
            Tool::Migrate(c) => format!("`ipcr-node migrate --concurrency {c}`"),
            Tool::Read(c) => format!("half: curl reads every blob from distribution, {c} at once"),
            Tool::Write(c) => format!("half: curl pushes every blob to IPCR from files, {c} at once"),
        }
    }

    fn command(self, skopeo: &Path, src: &str, dest: &str) -> Command {
        match self {
            Tool::Read(_) | Tool::Write(_) => unreachable!("curl halves are not one command"),
            Tool::Skopeo { preserve } => {
                let mut cmd = Command::new(skopeo);
                let prefix = DEST_REPO.rsplit_once('/').expect("a prefix").0;
                cmd.args([
                    "--insecure-policy",
                    "sync",
                    "--src",
                    "docker",
                    "--dest",
                    "docker",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                ]);
                if preserve {
                    cmd.arg("--preserve-digests");
                }
                cmd.arg(format!("{src}/{REPO}")).arg(format!("{dest}/{prefix}"));
                cmd
            }
            Tool::Migrate(c) => {
                let mut cmd = Command::new(cluster_tests::node::node_binary());
                cmd.args([
                    "migrate",
                    "--no-progress",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    "--concurrency",
                    &c.to_string(),
                ])
                .arg(format!("{src}/{REPO}"))
                .arg(format!("{dest}/{DEST_REPO}"))
                .env_remove("IPCR_LOG");
                cmd
            }
        }
    }
}

/// One copy into a fresh node.
struct CopyRun {
    secs: f64,
    cpu: Cpu,
    /// Objects verified, or why the copy is not the source's.
    verified: Result<usize, String>,
    /// What migrate's summary said (its last lines).
    said: String,
    /// Seconds of each layer (blob over 1 MiB) migrate streamed, from its log lines.
    layer_secs: Vec<f64>,
}

/// The seconds of each blob over 1 MiB in `ipcr-node migrate --no-progress`'s log lines
/// (`copied sha256:… to repo (26.00 MiB, 0.4 s)`).
fn layer_secs(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.starts_with("copied ") && l.contains(" MiB, "))
        .filter_map(|l| {
            let (_, tail) = l.rsplit_once(" MiB, ")?;
            tail.strip_suffix(" s)")?.parse().ok()
        })
        .collect()
}

fn copy_once(tool: Tool, ctx: &Ctx, seeded: &Seeded) -> Result<CopyRun> {
    let mut node = Node::start_with_env("dest", &NODE_ENV);
    sync();
    let mark = CpuMark::now(node.process().pid(), distribution_pid());
    let started = Instant::now();
    let out = match tool {
        Tool::Read(c) => {
            let src = ctx.upstream.base_url();
            each_blob(seeded, c, |d, size| {
                let out = curl_get(&format!("{src}/v2/{REPO}/blobs/{d}"), None).output()?;
                match curl_said(&out)? {
                    (200, got) if got == size => Ok(()),
                    (code, got) => bail!("GET {d}: {code}, {got} of {size} bytes"),
                }
            })?;
            None
        }
        Tool::Write(c) => {
            let (base, files) = (node.base_url(), ctx.files.as_ref().context("no blob files")?);
            each_blob(seeded, c, |d, _| {
                push_file(&base, DEST_REPO, &files.path().join(d), d)
            })?;
            None
        }
        _ => {
            let mut cmd = tool.command(&ctx.skopeo, &ctx.upstream.host(), &node.host());
            // No Docker credentials of the user's: both tools go anonymously.
            let empty = tempfile::tempdir()?;
            cmd.env("DOCKER_CONFIG", empty.path());
            let out = run(&mut cmd, COPY_TIMEOUT);
            if !out.status.success() {
                bail!("{} failed:\n{}", tool.name(), out.describe());
            }
            Some(out)
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let cpu = mark.spent();
    let verified = match tool {
        Tool::Read(_) => Ok(seeded.blobs.len()),
        Tool::Write(_) => verify_blobs(&http(), &node.base_url(), DEST_REPO, seeded),
        _ => verify(&node.base_url(), DEST_REPO, seeded),
    }
    .map_err(|e| e.to_string());
    let (said, layer_secs) = match (tool, out) {
        (Tool::Migrate(_), Some(out)) => (
            out.stdout_text()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; "),
            layer_secs(&out.stderr_text()),
        ),
        _ => (String::new(), Vec::new()),
    };
    Ok(CopyRun {
        secs,
        cpu,
        verified,
        said,
        layer_secs,
    })
}

/// Run `work` on every blob of `seeded` (digest, size), `concurrency` at once.
fn each_blob(seeded: &Seeded, concurrency: u16, work: impl Fn(&str, u64) -> Result<()> + Sync) -> Result<()> {
    let blobs: Vec<(&String, &u64)> = seeded.blobs.iter().collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let Some((d, size)) = blobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        work(d, **size)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow!("a worker panicked"))?)
    })
}

/// Every blob of `seeded` from the source into a directory under /var/tmp, each file named
/// by its digest: what [`Tool::Write`] pushes.
fn download_blobs(upstream: &Upstream, seeded: &Seeded) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("ipcr-bench-migrate-blobs-")
        .tempdir_in("/var/tmp")?;
    let src = upstream.base_url();
    each_blob(seeded, 4, |d, size| {
        let path = dir.path().join(d);
        let status = Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(&path)
            .arg(format!("{src}/v2/{REPO}/blobs/{d}"))
            .status()?;
        if !status.success() || std::fs::metadata(&path)?.len() != size {
            bail!("downloading {d}: {status}");
        }
        Ok(())
    })?;
    Ok(dir)
}

/// What every copy of a run shares.
struct Ctx {
    skopeo: PathBuf,
    upstream: Upstream,
    /// The blobs as files, when [`Tool::Write`] is measured.
    files: Option<tempfile::TempDir>,
}

fn run_migration(
    tools: &[Tool],
    runs: usize,
    ctx: &Ctx,
    seeded: &Seeded,
) -> Result<Vec<(Tool, Vec<CopyRun>)>> {
    let mut results: Vec<(Tool, Vec<CopyRun>)> = tools.iter().map(|t| (*t, Vec::new())).collect();
    for round in 0..runs {
        // Each round starts with another tool: none is always first after the seeding.
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            let tool = tools[i];
            eprintln!("round {}: {} ...", round + 1, tool.name());
            let r = copy_once(tool, ctx, seeded)?;
            eprintln!(
                "  {:.2} s; CPU: tool {:.1} s, IPCR {:.1} s, distribution {:.1} s; {}{}",
                r.secs,
                r.cpu.tool,
                r.cpu.ipcr,
                r.cpu.source,
                match &r.verified {
                    Ok(n) => format!("{n} objects verified"),
                    Err(e) => format!("NOT VERIFIED: {e}"),
                },
                if r.said.is_empty() {
                    String::new()
                } else {
                    format!("; {}", r.said)
                }
            );
            results[i].1.push(r);
        }
    }
    Ok(results)
}

fn print_migration(results: &[(Tool, Vec<CopyRun>)], seeded: &Seeded, layer_mib: usize) {
    let bytes = seeded.total_bytes();
    let mb = bytes as f64 / 1e6;
    println!(
        "\n### Migration: {} tags, {} distinct blobs, {:.0} MB ({:.2} GiB; {layer_mib} MiB layers), \
         distribution 2.8.2 → a fresh IPCR node each copy\n",
        seeded.tags.len(),
        seeded.blobs.len(),
        mb,
        bytes as f64 / f64::from(1u32 << 30)
    );
    println!(
        "| tool | runs (s) | median (s) | MB/s | one layer, median (s) | CPU s, median: tool / IPCR / \
         distribution | checked |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (tool, runs) in results {
        let secs: Vec<f64> = runs.iter().map(|r| r.secs).collect();
        let cpu = |f: fn(&Cpu) -> f64| median(&runs.iter().map(|r| f(&r.cpu)).collect::<Vec<_>>());
        let failed: Vec<&String> = runs.iter().filter_map(|r| r.verified.as_ref().err()).collect();
        let what = match tool {
            Tool::Read(_) => "each blob's size",
            Tool::Write(_) => "every blob's size",
            _ => "the tag list, every tag's digest, every blob's size",
        };
        let checked = match failed.first() {
            None => format!("{} of {}: {what}", runs.len(), runs.len()),
            Some(e) => format!("**{} of {} failed**: {e}", failed.len(), runs.len()),
        };
        let layers: Vec<f64> = runs.iter().flat_map(|r| r.layer_secs.iter().copied()).collect();
        let layer = if layers.is_empty() {
            String::new()
        } else {
            format!("{:.2}", median(&layers))
        };
        let m = median(&secs);
        println!(
            "| {} | {} | **{m:.2}** | {:.0} | {layer} | {:.1} / {:.1} / {:.1} | {checked} |",
            tool.name(),
            secs.iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            mb / m,
            cpu(|c| c.tool),
            cpu(|c| c.ipcr),
            cpu(|c| c.source),
        );
    }
    if let Some((_, runs)) = results.iter().find(|(t, _)| matches!(t, Tool::Migrate(_)))
        && let Some(last) = runs.last()
    {
        println!("\nmigrate's own summary (last run): {}", last.said);
    }
    let skopeo = results
        .iter()
        .find(|(t, _)| *t == Tool::Skopeo { preserve: true });
    let first = results.iter().find(|(t, _)| matches!(t, Tool::Migrate(_)));
    if let (Some((_, s)), Some((t, m))) = (skopeo, first) {
        let ok = s.iter().chain(m).all(|r| r.verified.is_ok());
        let ratio = median(&s.iter().map(|r| r.secs).collect::<Vec<_>>())
            / median(&m.iter().map(|r| r.secs).collect::<Vec<_>>());
        println!(
            "\nGoal: {} ≥ 2 × faster than `skopeo sync --preserve-digests`: {ratio:.2} × ({}{})",
            t.name(),
            if ratio >= 2.0 && ok { "met" } else { "not met" },
            if ok { "" } else { "; a copy failed its check" }
        );
    }
}

// ---------------------------------------------------------------------------------------
// Pull-through cache.

fn curl_get(url: &str, accept: Option<&str>) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-L",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
    ]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    cmd.arg(url);
    cmd
}

/// The status and size curl printed.
fn curl_said(out: &std::process::Output) -> Result<(u16, u64)> {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut f = text.split_whitespace();
    match (f.next().map(str::parse), f.next().map(str::parse)) {
        (Some(Ok(code)), Some(Ok(size))) => Ok((code, size)),
        _ => bail!("curl printed {text:?}"),
    }
}

/// A client's pull of `repo:tag` from `base`: the manifest, then every blob at once; each
/// answer must be 200 with the blob's size. Answers the seconds.
fn pull(base: &str, repo: &str, tag: &str, blobs: &[(String, u64)]) -> Result<f64> {
    sync();
    let started = Instant::now();
    let out = curl_get(&format!("{base}/v2/{repo}/manifests/{tag}"), Some(ACCEPT))
        .output()
        .context("running curl")?;
    let (code, _) = curl_said(&out)?;
    if code != 200 {
        bail!("GET {base}/v2/{repo}/manifests/{tag}: {code}");
    }
    let children: Vec<Child> = blobs
        .iter()
        .map(|(d, _)| {
            curl_get(&format!("{base}/v2/{repo}/blobs/{d}"), None)
                .stdout(Stdio::piped())
                .spawn()
                .context("running curl")
        })
        .collect::<Result<_>>()?;
    let mut wrong = Vec::new();
    for (child, (digest, size)) in children.into_iter().zip(blobs) {
        let (code, got) = curl_said(&child.wait_with_output()?)?;
        if code != 200 || got != *size {
            wrong.push(format!("{digest}: {code}, {got} of {size} bytes"));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if !wrong.is_empty() {
        bail!("pull of {repo}:{tag} from {base}: {}", wrong.join("; "));
    }
    Ok(secs)
}

/// One round of the cache: seconds of the direct pull, the first and second pulls through a
/// fresh cache, and how long after the first pull the cache had stored every blob.
struct PullRound {
    direct: f64,
    first: f64,
    second: f64,
    stored_after: f64,
    first_cpu: Cpu,
}

fn cached_blobs(node: &Node) -> usize {
    node.log().matches("cached a blob").count()
}

fn pull_round(round: usize, upstream: &Upstream, seeded: &Seeded) -> Result<PullRound> {
    let (tag, _) = seeded.tags.first_key_value().context("a seeded tag")?;
    let blobs: Vec<(String, u64)> = seeded.blobs.iter().map(|(d, s)| (d.clone(), *s)).collect();
    let remote = format!("[{{prefix: {PREFIX}, remoteurl: 'http://{}'}}]", upstream.host());
    let mut env = NODE_ENV.to_vec();
    env.push(("REGISTRY_PROXY_UPSTREAMS", remote.as_str()));
    let mut node = Node::start_with_env("cache", &env);
    let cached_repo = format!("{PREFIX}/{}", seeded.repo);
    let direct = || pull(&upstream.base_url(), &seeded.repo, tag, &blobs);
    // Odd rounds pull directly after the cache, even ones before.
    let before = if round.is_multiple_of(2) {
        Some(direct()?)
    } else {
        None
    };
    let mark = CpuMark::now(node.process().pid(), distribution_pid());
    let first = pull(&node.base_url(), &cached_repo, tag, &blobs)?;
    let first_cpu = mark.spent();
    let done = Instant::now();
    while cached_blobs(&node) < blobs.len() {
        if done.elapsed() > CACHED_TIMEOUT {
            bail!(
                "the cache stored {} of {} blobs within {CACHED_TIMEOUT:?}; log: {}",
                cached_blobs(&node),
                blobs.len(),
                node.log_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stored_after = done.elapsed().as_secs_f64();
    let second = pull(&node.base_url(), &cached_repo, tag, &blobs)?;
    if cached_blobs(&node) != blobs.len() {
        bail!("the second pull fetched from the upstream again");
    }
    for (d, _) in &blobs {
        let got = blob_digest(&node.base_url(), &cached_repo, d)?;
        if got != *d {
            bail!("the cache serves {got} as {d}");
        }
    }
    let direct = match before {
        Some(s) => s,
        None => direct()?,
    };
    Ok(PullRound {
        direct,
        first,
        second,
        stored_after,
        first_cpu,
    })
}

fn print_pull(rounds: &[PullRound], seeded: &Seeded, layer_mib: usize, link: &str) {
    let bytes = seeded.total_bytes();
    let layers = seeded.blobs.len() - 1;
    println!(
        "\n### Pull-through cache: one tag of {layers} layers of {layer_mib} MiB ({:.0} MB), \
         curl (manifest, then every blob at once), upstream {}\n",
        bytes as f64 / 1e6,
        if link.is_empty() {
            "on loopback".to_string()
        } else {
            format!("behind a {link} link")
        }
    );
    println!("| pull | runs (s) | median (s) | MB/s |\n|---|---|---|---|");
    let row = |name: &str, f: fn(&PullRound) -> f64| {
        let v: Vec<f64> = rounds.iter().map(f).collect();
        println!(
            "| {name} | {} | **{:.2}** | {:.0} |",
            v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", "),
            median(&v),
            bytes as f64 / 1e6 / median(&v)
        );
        median(&v)
    };
    let direct = row("straight from distribution 2.8.2", |r| r.direct);
    let first = row("first pull through a fresh IPCR cache", |r| r.first);
    row("second pull through the cache (from IPCR's disk)", |r| r.second);
    let cpu = |f: fn(&Cpu) -> f64| median(&rounds.iter().map(|r| f(&r.first_cpu)).collect::<Vec<_>>());
    println!(
        "\nFirst pull, CPU seconds (median): IPCR {:.1}, distribution {:.1}, curl {:.1}; every blob \
         stored {:.2} s (median) after the client had it all.",
        cpu(|c| c.ipcr),
        cpu(|c| c.source),
        cpu(|c| c.tool),
        median(&rounds.iter().map(|r| r.stored_after).collect::<Vec<_>>())
    );
    let ratio = first / direct;
    println!(
        "\nGoal: first pull through the cache ≤ 1.2 × the direct pull: {ratio:.2} × ({})",
        if ratio <= 1.2 { "met" } else { "not met" }
    );
}

// ---------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let runs: usize = arg("--runs", 3usize)?.clamp(1, 10);
    let n_tags: usize = arg("--tags", 30usize)?;
    let layer_mib: usize = arg("--layer-mib", 26usize)?;
    let pull_layer_mib: usize = arg("--pull-layer-mib", 100usize)?;
    let only: String = arg("--only", String::new())?;
    let concurrency: String = arg("--concurrency", "4,1,8".to_string())?;
    let mut tools = vec![Tool::Skopeo { preserve: true }];
    if std::env::args().any(|a| a == "--recompressing-skopeo") {
        tools.push(Tool::Skopeo { preserve: false });
    }
    let levels: Vec<u16> = concurrency
        .split(',')
        .map(|c| {
            c.trim()
                .parse()
                .map_err(|_| anyhow!("--concurrency {concurrency}"))
        })
        .collect::<Result<_>>()?;
    tools.extend(levels.iter().map(|c| Tool::Migrate(*c)));
    let halves = !std::env::args().any(|a| a == "--no-halves");
    if halves {
        tools.extend([Tool::Read(levels[0]), Tool::Write(levels[0])]);
    }
    let skopeo: PathBuf = find_on_path("skopeo").context("no skopeo on PATH: apt-get install skopeo")?;
    for tool in ["docker-registry", "curl"] {
        find_on_path(tool).with_context(|| format!("no {tool} on PATH: apt-get install {tool}"))?;
    }
    let help = Command::new(cluster_tests::node::node_binary())
        .args(["migrate", "--help"])
        .output()
        .context("running ipcr-node migrate --help")?;
    if !help.status.success() {
        bail!("this ipcr-node has no `migrate`: cargo build --release -p ipcr-node");
    }
    eprintln!(
        "ipcr-node: {}; load average {}",
        cluster_tests::node::node_binary().display(),
        load_average()
    );

    let link: String = arg("--upstream-link", String::new())?;
    // Declared before the upstream, so dropped after it.
    let lab = (!link.is_empty()).then(|| {
        let lab = NetLab::create(1);
        lab.limit_egress(0, &link);
        lab
    });
    let upstream = match &lab {
        Some(lab) => Upstream::open_in(lab.namespace(0), &lab.ip(0)),
        None => Upstream::open(),
    }
    .context("distribution 2.8.2 (docker-registry)")?;
    if !link.is_empty() {
        eprintln!(
            "distribution at {}, sending through a {link} link",
            upstream.host()
        );
    }
    let seeder = Seeder::new(&skopeo, &upstream, None);
    let mut app = Seeded::new(REPO);
    let mut image = Seeded::new(PULL_REPO);
    let started = Instant::now();
    if only != "pull" {
        eprintln!("seeding {n_tags} tags of {layer_mib} MiB layers into {REPO} ...");
        seeder.seed_tags(&mut app, n_tags, layer_mib << 20);
    }
    if only != "migrate" {
        eprintln!("seeding one tag of {pull_layer_mib} MiB layers into {PULL_REPO} ...");
        seeder.seed_tags(&mut image, 1, pull_layer_mib << 20);
    }
    // The seeder's OCI layout holds a copy of everything: free its disk before measuring.
    drop(seeder);
    eprintln!(
        "seeded in {:.0} s; load average {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );

    let mut ctx = Ctx {
        skopeo,
        upstream,
        files: None,
    };
    let migration = if only != "pull" {
        if halves {
            ctx.files = Some(download_blobs(&ctx.upstream, &app)?);
        }
        Some(run_migration(&tools, runs, &ctx, &app)?)
    } else {
        None
    };
    // The blob files go before the cache is measured.
    ctx.files = None;
    let mut rounds = Vec::new();
    if only != "migrate" {
        for round in 0..runs {
            eprintln!("cache round {} ...", round + 1);
            let r = pull_round(round, &ctx.upstream, &image)?;
            eprintln!(
                "  direct {:.2} s, first through the cache {:.2} s (stored {:.2} s later), second {:.2} s",
                r.direct, r.first, r.stored_after, r.second
            );
            rounds.push(r);
        }
    }
    if let Some(results) = &migration {
        print_migration(results, &app, layer_mib);
    }
    if !rounds.is_empty() {
        print_pull(&rounds, &image, pull_layer_mib, &link);
    }
    println!("\nLoad average at the end: {}", load_average());
    Ok(())
}
