//! `bench_scale`: how IPCR's costs grow with the number of tags (issue 9), measured at each
//! step of one growing registry, with distribution 2.8.2 loaded the same way in the same run.
//!
//! ```text
//! cargo build --release -p ipcr-node -p cluster-tests
//! ./target/release/bench_scale [--steps 10000,100000,1000000] [--repos 10000] [--peer-max 100000]
//! ```
//!
//! Tag `k` is `t<k / repos>` in repository `scale/r<k % repos>`; every tag has a manifest of
//! its own (about 300 bytes), and every manifest the same config blob, mounted once into each
//! repository. A three-node IPCR cluster (default settings, `storage.replicas: 2`) is loaded
//! through its leader with 64 requests in flight; distribution too, up to `--peer-max` tags
//! (loading it is the slow part of the run). After each step:
//! - memory: the largest resident set (and its peak) of the nodes, and distribution's;
//! - disk: the state machine (`raft/state.redb`), the newest snapshot, and distribution's tree;
//! - snapshots: the last build on the leader (from its log), and an install on a new node;
//! - a new node joining: until `/ready`, and until it serves the newest tag;
//! - `_catalog` paged by 1000 and the first repository's `tags/list` paged by 100, in full;
//! - manifest GET by tag, `wrk -t2 -c64 -d10s` on a follower: of one tag (as `bench_cluster`
//!   measures reads), and of tags at random among all (every read a cold lookup);
//! - a follower restarted after `kill -9`: until `/ready` and until it serves the newest tag.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cluster_tests::node::free_port;
use cluster_tests::{Cluster, oci};
use futures::StreamExt;

/// Requests in flight while loading.
const CONCURRENCY: usize = 64;
const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn manifest(k: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": { "mediaType": oci::CONFIG, "digest": cluster_tests::sha256_digest(CONFIG), "size": CONFIG.len() },
        "layers": [],
        "annotations": { "k": k.to_string() },
    }))
    .expect("json")
}

fn path_of(k: usize, repos: usize) -> String {
    format!("/v2/scale/r{}/manifests/t{}", k % repos, k / repos)
}

/// Push the config blob into the first repository, then mount it into every other one.
async fn mount_config(http: &reqwest::Client, base: &str, repos: usize) -> Result<()> {
    let digest = cluster_tests::sha256_digest(CONFIG);
    // POST then PUT: distribution 2.8 ignores a body sent with the POST.
    let r = http
        .post(format!("{base}/v2/scale/r0/blobs/uploads/"))
        .send()
        .await?;
    let location = r
        .headers()
        .get("Location")
        .and_then(|l| l.to_str().ok())
        .context("no Location for the config blob's upload")?
        .to_string();
    let location = if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = http
        .put(format!("{location}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(CONFIG.to_vec())
        .send()
        .await?;
    if r.status().as_u16() != 201 {
        bail!("config blob: {}", r.status());
    }
    let mounts = futures::stream::iter(1..repos)
        .map(|r| {
            let url = format!("{base}/v2/scale/r{r}/blobs/uploads/?mount={digest}&from=scale/r0");
            async move {
                let resp = http.post(url).send().await?;
                if resp.status().as_u16() != 201 {
                    bail!("mount into r{r}: {}", resp.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY);
    let results: Vec<Result<()>> = mounts.collect().await;
    results.into_iter().collect()
}

/// PUT the manifests of tags `from..to` through `base`; answers tags per second.
async fn load(http: &reqwest::Client, base: &str, from: usize, to: usize, repos: usize) -> Result<f64> {
    let started = Instant::now();
    let puts = futures::stream::iter(from..to)
        .map(|k| {
            let url = format!("{base}{}", path_of(k, repos));
            async move {
                for attempt in 0.. {
                    let r = http
                        .put(&url)
                        .header("Content-Type", oci::MANIFEST)
                        .body(manifest(k))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 201 => return Ok(()),
                        // Acknowledged or not, a retry of the same manifest is harmless.
                        _ if attempt < 5 => tokio::time::sleep(Duration::from_millis(200)).await,
                        Ok(r) => bail!("PUT {url}: {}", r.status()),
                        Err(e) => bail!("PUT {url}: {e}"),
                    }
                }
                unreachable!()
            }
        })
        .buffer_unordered(CONCURRENCY);
    let results: Vec<Result<()>> = puts.collect().await;
    results.into_iter().collect::<Result<()>>()?;
    Ok((to - from) as f64 / started.elapsed().as_secs_f64())
}

/// Follow `Link: <...>; rel="next"` from `first`; answers (seconds, pages, items).
fn page_through(base: &str, first: &str, key: &str) -> Result<(f64, usize, usize)> {
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    let started = Instant::now();
    let (mut next, mut pages, mut items) = (Some(first.to_string()), 0, 0);
    while let Some(path) = next.take() {
        let r = http.get(format!("{base}{path}")).send()?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        next = cluster_tests::client::next_link(r.headers());
        let v: serde_json::Value = r.json()?;
        items += v[key].as_array().map(|a| a.len()).unwrap_or(0);
        pages += 1;
    }
    Ok((started.elapsed().as_secs_f64(), pages, items))
}

/// `wrk` requests per second of manifest GETs of random tags among the first `tags`.
fn wrk_random(base: &str, tags: usize, repos: usize, work: &Path) -> Result<f64> {
    let script = work.join("random.lua");
    std::fs::write(
        &script,
        format!(
            "math.randomseed(os.time())\nrequest = function()\n  local k = math.random(0, {})\n  return wrk.format(\"GET\", \"/v2/scale/r\" .. (k % {repos}) .. \"/manifests/t\" .. math.floor(k / {repos}), {{[\"Accept\"] = \"{}\"}})\nend\n",
            tags - 1,
            oci::MANIFEST
        ),
    )?;
    let script = script.to_str().context("a UTF-8 path")?;
    cluster_tests::bench::wrk_with(&["-s", script], base)
}

/// A table row: `measure` against IPCR at `ipcr` and, when given, distribution at `peer`,
/// each shown by `show`.
fn side_by_side<T>(
    what: &str,
    ipcr: &str,
    peer: Option<&str>,
    measure: impl Fn(&str) -> Result<T>,
    show: impl Fn(T) -> String,
) -> Result<String> {
    let mine = show(measure(ipcr)?);
    let theirs = match peer {
        Some(p) => show(measure(p)?),
        None => "not loaded".into(),
    };
    Ok(format!("| {what} | {mine} | {theirs} |\n"))
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes under `path` (a file or a tree).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}

/// The last line of `log` containing `message`, and its `field=` value.
fn logged(log: &str, message: &str, field: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(message))?;
    let at = line.find(&format!("{field}="))? + field.len() + 1;
    line[at..].split_whitespace().next()?.parse().ok()
}

/// Wait until `GET base+path` answers 200; seconds waited.
fn wait_serving(base: &str, path: &str, since: Instant) -> Result<f64> {
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if http
            .get(format!("{base}{path}"))
            .header("Accept", oci::MANIFEST)
            .send()
            .is_ok_and(|r| r.status().as_u16() == 200)
        {
            return Ok(since.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("{base}{path} not served within 600 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// distribution, the peer, killed on drop.
struct Peer {
    child: std::process::Child,
    base: String,
    work: std::path::PathBuf,
    port: u16,
}

impl Peer {
    fn start(work: &Path, port: u16) -> Result<Peer> {
        let peer = Peer {
            child: cluster_tests::peer::spawn_distribution(work, port)?,
            base: format!("http://127.0.0.1:{port}"),
            work: work.to_path_buf(),
            port,
        };
        wait_serving(&peer.base, "/v2/", Instant::now())?;
        Ok(peer)
    }

    fn restart(&mut self) -> Result<f64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = Instant::now();
        self.child = cluster_tests::peer::spawn_distribution(&self.work, self.port)?;
        wait_serving(&self.base, "/v2/", started)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> Result<()> {
    let steps: Vec<usize> = arg("--steps")
        .unwrap_or_else(|| "10000,100000,1000000".into())
        .split(',')
        .map(|s| s.parse().expect("a number of tags"))
        .collect();
    let repos: usize = arg("--repos")
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(10_000);
    let peer_max: usize = arg("--peer-max")
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new()?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let work = tempfile::Builder::new().prefix("ipcr-bench-scale-").tempdir()?;
    let env = [
        ("REGISTRY_LOG_ACCESSLOG_DISABLED", "true"),
        ("REGISTRY_STORAGE_REPLICAS", "2"),
    ];
    let mut cluster = Cluster::start(3, &env);
    let mut peer = Peer::start(work.path(), free_port())?;
    let leader = cluster.wait_leader();
    rt.block_on(mount_config(&http, &cluster.nodes[leader].base_url(), repos))?;
    rt.block_on(mount_config(&http, &peer.base, repos))?;
    let mut rows = Vec::new();
    let mut loaded = 0;
    for &target in &steps {
        let leader = cluster.wait_leader();
        let base = cluster.nodes[leader].base_url();
        let rate = rt.block_on(load(&http, &base, loaded, target, repos))?;
        let peer_rate = if target <= peer_max {
            Some(rt.block_on(load(&http, &peer.base, loaded, target, repos))?)
        } else {
            None
        };
        loaded = target;
        let newest = path_of(target - 1, repos);
        let follower = (0..cluster.nodes.len())
            .find(|&i| i != leader && cluster.nodes[i].is_running())
            .expect("a follower");
        let fbase = cluster.nodes[follower].base_url();
        wait_serving(&fbase, &newest, Instant::now())?;
        let mut row = format!(
            "### {target} tags in {repos} repositories\n\n| measure | IPCR | distribution |\n|---|---|---|\n"
        );
        let peer_on = peer_rate.is_some();
        let both = |ipcr: String, dist: Option<String>| {
            format!(" {ipcr} | {} |\n", dist.unwrap_or_else(|| "not loaded".into()))
        };
        row += &format!(
            "| load (tags/s, 64 in flight) |{}",
            both(format!("{rate:.0}"), peer_rate.map(|r| format!("{r:.0}")))
        );
        // Memory and disk.
        let mut rss = (0.0f64, 0.0f64);
        for i in 0..cluster.nodes.len() {
            if cluster.nodes[i].is_running() {
                let (now, peak) = memory(cluster.nodes[i].process().pid());
                rss = (rss.0.max(now), rss.1.max(peak));
            }
        }
        let (prss, ppeak) = memory(peer.child.id());
        row += &format!(
            "| memory per node, MiB (now / peak) |{}",
            both(
                format!("{:.0} / {:.0}", rss.0, rss.1),
                peer_on.then(|| format!("{prss:.0} / {ppeak:.0}"))
            )
        );
        let data = cluster.nodes[leader].data_dir();
        let state = size_of(&data.join("raft/state.redb"));
        let snaps = size_of(&data.join("raft/snapshots"));
        row += &format!(
            "| disk, MiB |{}",
            both(
                format!(
                    "{:.0} state machine, {:.0} snapshot, {:.0} log",
                    mib(state),
                    mib(snaps),
                    mib(size_of(&data.join("raft/log.redb")))
                ),
                peer_on.then(|| format!("{:.0}", mib(size_of(&work.path().join("distribution-data"))))),
            )
        );
        let log = cluster.nodes[leader].log();
        row += &format!(
            "| last snapshot build on the leader |{}",
            both(
                format!(
                    "{} ms, {:.0} MiB",
                    logged(&log, "snapshot built", "ms").map_or("-".into(), |v| v.to_string()),
                    mib(logged(&log, "snapshot built", "bytes").unwrap_or(0))
                ),
                Some("n/a".into()),
            )
        );
        // A new node joins and serves.
        let started = Instant::now();
        let joined = cluster.add_node_unready();
        cluster.nodes[joined].wait_ready(Duration::from_secs(600));
        let ready = started.elapsed().as_secs_f64();
        let serving = wait_serving(&cluster.nodes[joined].base_url(), &newest, started)?;
        let jlog = cluster.nodes[joined].log();
        let install = logged(&jlog, "snapshot installed", "ms");
        let (jrss, jpeak) = memory(cluster.nodes[joined].process().pid());
        row += &format!(
            "| new node: ready / serving the newest tag |{}",
            both(
                format!(
                    "{ready:.1} s / {serving:.1} s (snapshot install {} ms, peak memory {jpeak:.0} MiB, now {jrss:.0})",
                    install.map_or("-".into(), |v| v.to_string())
                ),
                Some("n/a".into()),
            )
        );
        cluster.remove_node(joined);
        // Listing and reads, measured alike on a follower and, when loaded, on distribution.
        let peer_base = peer_on.then_some(peer.base.as_str());
        row += &side_by_side(
            "`_catalog` by 1000, whole",
            &fbase,
            peer_base,
            |b| page_through(b, "/v2/_catalog?n=1000", "repositories"),
            |(s, p, i)| format!("{s:.2} s ({p} pages, {i} repositories)"),
        )?;
        row += &side_by_side(
            "`tags/list` of one repository by 100, whole",
            &fbase,
            peer_base,
            |b| page_through(b, "/v2/scale/r0/tags/list?n=100", "tags"),
            |(s, p, i)| format!("{:.1} ms ({p} pages, {i} tags)", s * 1000.0),
        )?;
        // One tag, as bench_cluster measures reads, and tags at random among all.
        row += &side_by_side(
            "manifest GET of one tag (req/s, a follower)",
            &fbase,
            peer_base,
            |b| cluster_tests::bench::wrk(&format!("{b}{newest}")),
            |g| format!("{g:.0}"),
        )?;
        row += &side_by_side(
            "manifest GET of tags at random among all (req/s, a follower)",
            &fbase,
            peer_base,
            |b| wrk_random(b, target, repos, work.path()),
            |g| format!("{g:.0}"),
        )?;
        // A restart.
        let started = Instant::now();
        cluster.nodes[follower].kill9();
        cluster.nodes[follower].restart();
        let ready = started.elapsed().as_secs_f64();
        let serving = wait_serving(&fbase, &newest, started)?;
        let peer_restart = peer_on.then(|| peer.restart()).transpose()?;
        row += &format!(
            "| restart after kill -9: ready / serving |{}",
            both(
                format!("{ready:.2} s / {serving:.2} s"),
                peer_restart.map(|s| format!("{s:.2} s"))
            )
        );
        cluster.wait_voters(3);
        println!("{row}");
        rows.push(row);
    }
    println!("\n{}", rows.join("\n"));
    Ok(())
}
