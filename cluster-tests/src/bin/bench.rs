//! Benchmarks of a single IPCR node against distribution 2.8.2 (Debian's `docker-registry`),
//! the machine's disk floor (`dd ... conv=fsync`) and nginx serving the same file with
//! `sendfile`, all in one run on the same machine with the same client.
//!
//! ```text
//! cargo build --release -p ipcr-node && cargo run --release -p cluster-tests --bin bench
//! ```
//!
//! Prints a Markdown report (the numbers of every round, the medians and the ratios the goals
//! are stated in) for `docs/benchmarks.md`. Needs `docker-registry`, `nginx`, `wrk`, `dd` and
//! a release build of `ipcr-node`. Every server binds to 127.0.0.1 and is killed at the end.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::bench::{curl, make_blob, median, wrk};
use reqwest::blocking::Client;
use sha2::{Digest as _, Sha256};

const BLOB_SIZE: u64 = 1 << 30;
const CHUNK: u64 = 64 << 20;
const ROUNDS: usize = 3;
const PULLS_PER_ROUND: usize = 3;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server process killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_http(url: &str, what: &str) -> Result<()> {
    let client = Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if client.get(url).send().is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not answer {url} within 30 s")
}

fn ipcr_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("bench binary has no directory")?;
    let bin = dir.join("ipcr-node");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p ipcr-node` first",
            bin.display()
        );
    }
    Ok(bin)
}

fn start_ipcr(work: &Path) -> Result<Server> {
    let port = free_port()?;
    let data = work.join("ipcr-data");
    let log = File::create(work.join("ipcr.log"))?;
    let child = Command::new(ipcr_binary()?)
        .arg("serve")
        .env("REGISTRY_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &data)
        .env("REGISTRY_LOG_LEVEL", "warn")
        .env("REGISTRY_LOG_ACCESSLOG_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting ipcr-node")?;
    let base = format!("http://127.0.0.1:{port}");
    let server = Server {
        name: "ipcr",
        child,
        base,
    };
    wait_http(&format!("{}/ready", server.base), "ipcr-node")?;
    Ok(server)
}

fn start_distribution(work: &Path) -> Result<Server> {
    let port = free_port()?;
    let server = Server {
        name: "distribution",
        child: cluster_tests::peer::spawn_distribution(work, port)?,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_http(&format!("{}/v2/", server.base), "docker-registry")?;
    Ok(server)
}

fn start_nginx(work: &Path, root: &Path) -> Result<Server> {
    let port = free_port()?;
    let dir = work.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {pid};\nerror_log {err};\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n  uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n  sendfile on;\n  tcp_nopush on;\n  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            err = dir.join("error.log").display(),
            tmp = dir.display(),
            root = root.display(),
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")?;
    let server = Server {
        name: "nginx",
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_http(&format!("{}/blob", server.base), "nginx")?;
    Ok(server)
}

fn sync() {
    let _ = Command::new("sync").status();
}

/// The machine's floor: `dd if=blob of=copy bs=4M conv=fsync`.
fn dd_floor(blob: &Path, work: &Path) -> Result<f64> {
    let copy = work.join("dd-copy");
    sync();
    let t = Instant::now();
    let status = Command::new("dd")
        .arg(format!("if={}", blob.display()))
        .arg(format!("of={}", copy.display()))
        .args(["bs=4M", "conv=fsync", "status=none"])
        .status()?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("dd failed");
    }
    std::fs::remove_file(copy)?;
    Ok(secs)
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

fn start_session(base: &str, repo: &str) -> Result<(String, f64)> {
    let (code, secs, headers) = curl(&["-X", "POST"], &format!("{base}/v2/{repo}/blobs/uploads/"))?;
    if code != 202 {
        bail!("POST upload to {base}: {code}");
    }
    let loc = header(&headers, "location").context("no Location")?;
    Ok((absolute(base, &loc), secs))
}

fn with_query(location: &str, query: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{query}")
}

/// POST a session, then PUT the whole blob: the monolithic flow both registries support.
fn push_monolithic(base: &str, repo: &str, blob: &Path, digest: &str) -> Result<f64> {
    sync();
    let (loc, t0) = start_session(base, repo)?;
    let file = blob.display().to_string();
    let (code, t1, _) = curl(
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            &file,
        ],
        &with_query(&loc, &format!("digest={digest}")),
    )?;
    if code != 201 {
        bail!("monolithic PUT to {base}: {code}");
    }
    Ok(t0 + t1)
}

/// POST, PATCH 64 MiB chunks with Content-Range, PUT `?digest=`.
fn push_chunked(base: &str, repo: &str, chunks: &[PathBuf], digest: &str) -> Result<f64> {
    sync();
    let (mut loc, mut total) = start_session(base, repo)?;
    let mut offset = 0;
    for chunk in chunks {
        let len = std::fs::metadata(chunk)?.len();
        let range = format!("Content-Range: {}-{}", offset, offset + len - 1);
        let file = chunk.display().to_string();
        let (code, secs, headers) = curl(
            &[
                "-X",
                "PATCH",
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                &range,
                "-T",
                &file,
            ],
            &loc,
        )?;
        if code != 202 {
            bail!("PATCH to {base}: {code}");
        }
        total += secs;
        loc = absolute(base, &header(&headers, "location").context("no Location")?);
        offset += len;
    }
    let (code, secs, _) = curl(&["-X", "PUT"], &with_query(&loc, &format!("digest={digest}")))?;
    if code != 201 {
        bail!("closing PUT to {base}: {code}");
    }
    Ok(total + secs)
}

fn pull(url: &str) -> Result<f64> {
    let (code, secs, _) = curl(&[], url)?;
    if code != 200 {
        bail!("GET {url}: {code}");
    }
    Ok(secs)
}

/// Split the blob into the files the chunked pushes send.
fn split(blob: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut input = File::open(blob)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..BLOB_SIZE.div_ceil(CHUNK) {
        let n = read_full(&mut input, &mut buf)?;
        let path = dir.join(format!("chunk-{i:03}"));
        std::fs::write(&path, &buf[..n])?;
        out.push(path);
    }
    Ok(out)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let r = f.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(n)
}

/// Push a tiny image (config blob + manifest) tagged `latest`; answers the manifest URL.
fn push_manifest(client: &Client, base: &str, repo: &str) -> Result<String> {
    let config = b"{}";
    let cd = format!("sha256:{}", hex::encode(Sha256::digest(config)));
    let (loc, _) = start_session(base, repo)?;
    let resp = client
        .put(with_query(&loc, &format!("digest={cd}")))
        .body(config.to_vec())
        .send()?;
    if resp.status().as_u16() != 201 {
        bail!("config PUT: {}", resp.status());
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":2}},"layers":[]}}"#
    );
    let url = format!("{base}/v2/{repo}/manifests/latest");
    let resp = client
        .put(&url)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()?;
    if resp.status().as_u16() != 201 {
        bail!("manifest PUT: {}", resp.status());
    }
    Ok(url)
}

/// Peak resident set size of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    Ok(kb / 1024.0)
}

fn row(name: &str, v: &[f64], unit: &str) -> String {
    let runs = v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    format!("| {name} | {runs} | **{:.2}** {unit} |", median(v))
}

fn main() -> Result<()> {
    let work = tempfile::Builder::new().prefix("ipcr-bench-").tempdir()?;
    let work = work.path();
    eprintln!("work directory: {}", work.display());
    let blob_dir = work.join("www");
    std::fs::create_dir_all(&blob_dir)?;
    let blob = blob_dir.join("blob");
    eprintln!("generating a 1 GiB blob ...");
    let digest = make_blob(&blob, 0x9E37_79B9_7F4A_7C15)?;
    let chunk_dir = work.join("chunks");
    std::fs::create_dir_all(&chunk_dir)?;
    let chunks = split(&blob, &chunk_dir)?;

    let ipcr = start_ipcr(work)?;
    let dist = start_distribution(work)?;
    let nginx = start_nginx(work, &blob_dir)?;
    let client = Client::builder().timeout(Duration::from_secs(600)).build()?;

    let (mut floor, mut mono_i, mut mono_d, mut chunk_i, mut chunk_d) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut pull_i, mut pull_d, mut pull_n) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}", round + 1);
        floor.push(dd_floor(&blob, work)?);
        mono_i.push(push_monolithic(
            &ipcr.base,
            &format!("mono{round}"),
            &blob,
            &digest,
        )?);
        mono_d.push(push_monolithic(
            &dist.base,
            &format!("mono{round}"),
            &blob,
            &digest,
        )?);
        chunk_i.push(push_chunked(
            &ipcr.base,
            &format!("chunk{round}"),
            &chunks,
            &digest,
        )?);
        chunk_d.push(push_chunked(
            &dist.base,
            &format!("chunk{round}"),
            &chunks,
            &digest,
        )?);
        for _ in 0..PULLS_PER_ROUND {
            pull_i.push(pull(&format!("{}/v2/mono0/blobs/{digest}", ipcr.base))?);
            pull_d.push(pull(&format!("{}/v2/mono0/blobs/{digest}", dist.base))?);
            pull_n.push(pull(&format!("{}/blob", nginx.base))?);
        }
    }
    let rss = peak_rss_mib(ipcr.child.id())?;

    let url_i = push_manifest(&client, &ipcr.base, "bench/manifest")?;
    let url_d = push_manifest(&client, &dist.base, "bench/manifest")?;
    eprintln!("wrk against {} and {} ...", ipcr.name, dist.name);
    let rps_i = wrk(&url_i)?;
    let rps_d = wrk(&url_d)?;

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("### Run of {}", chrono_free_date());
    println!();
    println!(
        "Machine: {cores} cores ({cpu}). 1 GiB incompressible blob, {ROUNDS} rounds ({PULLS_PER_ROUND} pulls of each server per round; IPCR's first pull reads from the disk, as IPCR's pushes write around the page cache, every other pull from the page cache), client: curl, the same for every server."
    );
    println!();
    println!("| measurement | runs (s) | median |");
    println!("|---|---|---|");
    println!("{}", row("floor: `dd bs=4M conv=fsync`", &floor, "s"));
    println!("{}", row("IPCR push, monolithic (POST + PUT)", &mono_i, "s"));
    println!(
        "{}",
        row("distribution push, monolithic (POST + PUT)", &mono_d, "s")
    );
    println!(
        "{}",
        row("IPCR push, 64 MiB chunks (PATCH × 16 + PUT)", &chunk_i, "s")
    );
    println!("{}", row("distribution push, 64 MiB chunks", &chunk_d, "s"));
    println!("{}", row("IPCR pull", &pull_i, "s"));
    println!("{}", row("distribution pull", &pull_d, "s"));
    println!("{}", row("nginx `sendfile` of the same bytes", &pull_n, "s"));
    println!();
    println!("| goal | measured | met |");
    println!("|---|---|---|");
    let goal = |name: &str, value: String, ok: bool| {
        println!("| {name} | {value} | {} |", if ok { "yes" } else { "**no**" })
    };
    let (f, mi, md, ci, cd) = (
        median(&floor),
        median(&mono_i),
        median(&mono_d),
        median(&chunk_i),
        median(&chunk_d),
    );
    goal(
        "monolithic push ≤ 1.3 × dd floor",
        format!("{:.2} ×", mi / f),
        mi / f <= 1.3,
    );
    goal(
        "chunked push ≤ 1.3 × dd floor",
        format!("{:.2} ×", ci / f),
        ci / f <= 1.3,
    );
    goal(
        "monolithic push ≥ 2 × faster than distribution",
        format!("{:.2} ×", md / mi),
        md / mi >= 2.0,
    );
    goal(
        "chunked push ≥ 2 × faster than distribution",
        format!("{:.2} ×", cd / ci),
        cd / ci >= 2.0,
    );
    let (pi, pn) = (median(&pull_i), median(&pull_n));
    goal(
        "pull ≤ 1.2 × nginx sendfile",
        format!("{:.2} ×", pi / pn),
        pi / pn <= 1.2,
    );
    goal(
        "manifest GET by tag, `wrk -t2 -c64`: ≥ 10 × distribution",
        format!("{rps_i:.0} vs {rps_d:.0} req/s = {:.1} ×", rps_i / rps_d),
        rps_i / rps_d >= 10.0,
    );
    goal(
        "IPCR peak RSS over all pushes < 100 MiB",
        format!("{rss:.1} MiB"),
        rss < 100.0,
    );
    drop((ipcr, dist, nginx));
    Ok(())
}

/// Today's date from `date -u`, without a date crate.
fn chrono_free_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
