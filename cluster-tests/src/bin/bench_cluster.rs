//! Benchmarks of a three-node IPCR cluster behind haproxy against a single IPCR node, in one
//! run on one machine.
//!
//! ```text
//! cargo build --release -p ipcr-node && cargo run --release -p cluster-tests --bin bench_cluster [-- --workers N]
//! ```
//!
//! `--workers N` sets `http.workers` on every IPCR node of the run, the single node's as well
//! as the cluster's; without it each node serves with one thread per core.
//!
//! distribution 2.8.2 (`docker-registry`) runs in the same run for reference.
//!
//! Measures: a 1 GiB push (POST + PUT, curl) through the cluster with `storage.replicas: 2`
//! against the single node; manifest reads by tag under `wrk -t2 -c64` through the cluster
//! against the single node; 100 concurrent pushes of 10 MiB layers through the cluster (all
//! must succeed; throughput and latency percentiles); the time a new node takes to join a
//! cluster holding 10,000 tags and serve them. Prints a Markdown report for
//! `docs/benchmarks.md`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use cluster_tests::bench::{location, make_blob, median, percentile, push_big, wrk};
use cluster_tests::{Balancer, Cluster, Node};
use sha2::{Digest as _, Sha256};

const ROUNDS: usize = 3;
const LAYER: usize = 10 << 20;
const PUSHERS: usize = 100;
const TAGS: usize = 10_000;
const TAG_WRITERS: usize = 32;

const QUIET: [(&str, &str); 2] = [
    ("REGISTRY_LOG_LEVEL", "warn"),
    ("REGISTRY_LOG_ACCESSLOG_DISABLED", "true"),
];

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// distribution 2.8.2, the peer, killed on drop.
struct Distribution {
    child: std::process::Child,
    base: String,
}

impl Distribution {
    fn start(work: &Path) -> Result<Self> {
        let port = cluster_tests::node::free_port();
        let dist = Distribution {
            child: cluster_tests::peer::spawn_distribution(work, port)?,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !client
            .get(format!("{}/v2/", dist.base))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                bail!("docker-registry did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(dist)
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One push of a layer and a manifest by tag with a blocking client; answers seconds.
fn push_image(
    client: &reqwest::blocking::Client,
    base: &str,
    repo: &str,
    tag: &str,
    layer: &[u8],
) -> Result<f64> {
    let started = Instant::now();
    let put_blob = |bytes: &[u8]| -> Result<String> {
        let digest = sha256(bytes);
        let resp = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send()?;
        if resp.status().as_u16() != 202 {
            bail!("POST: {}", resp.status());
        }
        let loc = location(
            base,
            &format!("location: {}", resp.headers()["location"].to_str()?),
        )?;
        let resp = client
            .patch(&loc)
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()?;
        if resp.status().as_u16() != 202 {
            bail!("PATCH: {}", resp.status());
        }
        let loc = location(
            base,
            &format!("location: {}", resp.headers()["location"].to_str()?),
        )?;
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = client.put(format!("{loc}{sep}digest={digest}")).send()?;
        if resp.status().as_u16() != 201 {
            bail!("PUT: {} {}", resp.status(), resp.text().unwrap_or_default());
        }
        Ok(digest)
    };
    let config = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
    let cd = put_blob(&config)?;
    let ld = put_blob(layer)?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let resp = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()?;
    if resp.status().as_u16() != 201 {
        bail!("manifest PUT: {}", resp.status());
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A tiny image tagged `latest` in `repo`; answers the manifest URL.
fn tiny_image(base: &str, repo: &str) -> Result<String> {
    let client = reqwest::blocking::Client::new();
    push_image(&client, base, repo, "latest", b"layer")?;
    Ok(format!("{base}/v2/{repo}/manifests/latest"))
}

/// 100 concurrent pushes of distinct 10 MiB layers; answers (seconds of each success, wall
/// seconds, failures).
fn concurrent_pushes(base: &str) -> Result<(Vec<f64>, f64, Vec<String>)> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let threads: Vec<_> = (0..PUSHERS)
        .map(|i| {
            let (base, latencies, failures) = (base.to_string(), latencies.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut layer = vec![0u8; LAYER];
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
                for word in layer.chunks_exact_mut(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    word.copy_from_slice(&state.to_le_bytes());
                }
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(600))
                    .build()
                    .expect("client");
                match push_image(&client, &base, &format!("load/p{i}"), "v1", &layer) {
                    Ok(s) => latencies.lock().unwrap().push(s),
                    Err(e) => failures.lock().unwrap().push(format!("push {i}: {e}")),
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let failures = failures.lock().unwrap().clone();
    for f in &failures {
        eprintln!("FAILED: {f}");
    }
    let l = latencies.lock().unwrap().clone();
    Ok((l, wall, failures))
}

/// Tag `TAGS` manifests in one repository through `base`; answers seconds.
fn write_tags(base: &str) -> Result<f64> {
    let client = reqwest::blocking::Client::new();
    push_image(&client, base, "many/tags", "seed", b"shared layer")?;
    let seed = client
        .get(format!("{base}/v2/many/tags/manifests/seed"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()?
        .bytes()?
        .to_vec();
    let started = Instant::now();
    let next = Arc::new(Mutex::new(0usize));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..TAG_WRITERS)
        .map(|_| {
            let (base, next, errors, seed) = (base.to_string(), next.clone(), errors.clone(), seed.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        if *n >= TAGS {
                            return;
                        }
                        *n += 1;
                        *n
                    };
                    let resp = client
                        .put(format!("{base}/v2/many/tags/manifests/t{i:05}"))
                        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                        .body(seed.clone())
                        .send();
                    if !resp.as_ref().is_ok_and(|r| r.status().as_u16() == 201) {
                        errors.lock().unwrap().push(i);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let errors = errors.lock().unwrap().len();
    if errors > 0 {
        bail!("{errors} tag writes failed");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Every tag of `many/tags` a node lists, following the pages.
fn count_tags(client: &reqwest::blocking::Client, node: &Node) -> Option<usize> {
    let mut count = 0;
    let mut last = String::new();
    loop {
        let url = format!("{}/v2/many/tags/tags/list?n=5000&last={last}", node.base_url());
        let v: serde_json::Value = client.get(url).send().ok()?.json().ok()?;
        let tags = v["tags"].as_array()?;
        count += tags.len();
        match tags.last().and_then(|t| t.as_str()) {
            Some(t) if tags.len() == 5000 => last = t.to_string(),
            _ => return Some(count),
        }
    }
}

/// Poll a node until its tag list of `many/tags` holds every tag; answers whether it did.
fn wait_tags(node: &Node, deadline: Instant) -> bool {
    let client = reqwest::blocking::Client::new();
    while Instant::now() < deadline {
        if count_tags(&client, node).is_some_and(|n| n > TAGS) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `--workers N` from the command line, if given.
fn workers_arg() -> Result<Option<String>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(None),
        [flag, n] if flag == "--workers" && n.parse::<usize>().is_ok_and(|n| n > 0) => Ok(Some(n.clone())),
        _ => bail!("usage: bench_cluster [--workers N]"),
    }
}

fn main() -> Result<()> {
    let workers = workers_arg()?;
    let mut env = QUIET.to_vec();
    if let Some(n) = &workers {
        env.push(("REGISTRY_HTTP_WORKERS", n.as_str()));
    }
    let work = tempfile::Builder::new().prefix("ipcr-bench-cluster-").tempdir()?;
    let blob = work.path().join("blob");
    eprintln!("generating a 1 GiB blob ...");
    let digest = make_blob(&blob, 0x2545_F491_4F6C_DD1D)?;

    let single = Node::start_with_env("single", &env);
    // The single node behind the same balancer, so both sides pay the same proxy.
    let single_lb = Balancer::start(&[single.host()]);
    let mut cluster = Cluster::start(3, &env);
    let lb = Balancer::start(&cluster.hosts());
    let dist = Distribution::start(work.path())?;
    // Elections under load would show as a higher term at the end.
    let term = |cluster: &mut Cluster| cluster.wait_leader_status().term;
    let term_start = term(&mut cluster);

    let (mut big_single, mut big_single_lb, mut big_cluster) = (Vec::new(), Vec::new(), Vec::new());
    let mut big_dist = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("1 GiB push, round {}/{ROUNDS}", round + 1);
        big_single.push(push_big(
            &single.base_url(),
            &format!("big{round}"),
            &blob,
            &digest,
        )?);
        big_single_lb.push(push_big(
            &single_lb.base_url(),
            &format!("lb{round}"),
            &blob,
            &digest,
        )?);
        big_cluster.push(push_big(&lb.base_url(), &format!("big{round}"), &blob, &digest)?);
        big_dist.push(push_big(&dist.base, &format!("big{round}"), &blob, &digest)?);
    }

    eprintln!("manifest reads ...");
    let single_url = tiny_image(&single.base_url(), "read/one")?;
    let rps_single = wrk(&single_url)?;
    let rps_single_lb = wrk(&single_url.replace(&single.base_url(), &single_lb.base_url()))?;
    let cluster_url = tiny_image(&lb.base_url(), "read/one")?;
    let rps_cluster = wrk(&cluster_url)?;
    let rps_dist = wrk(&tiny_image(&dist.base, "read/one")?)?;
    let mut rps_direct = Vec::new();
    for host in cluster.hosts() {
        rps_direct.push(wrk(
            &cluster_url.replace(&lb.base_url(), &format!("http://{host}"))
        )?);
    }

    eprintln!("{PUSHERS} concurrent pushes of 10 MiB ...");
    let (lat, wall, failed) = concurrent_pushes(&lb.base_url())?;

    eprintln!("{TAGS} tags ...");
    let tag_secs = write_tags(&lb.base_url())?;
    let term_end = term(&mut cluster);
    eprintln!("a new node joins ...");
    let started = Instant::now();
    let i = cluster.add_node();
    let ready = started.elapsed().as_secs_f64();
    let served = wait_tags(&cluster.nodes[i], Instant::now() + Duration::from_secs(300));
    let serving = started.elapsed().as_secs_f64();
    if !served {
        bail!("the new node did not serve all {TAGS} tags within 300 s");
    }

    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    let (bs, bsl, bc) = (median(&big_single), median(&big_single_lb), median(&big_cluster));
    let mib = (PUSHERS * LAYER) as f64 / (1 << 20) as f64;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("### Cluster run, data under `{}`", std::env::temp_dir().display());
    println!();
    println!(
        "{cores} cores; 3 nodes (storage.replicas 2) behind haproxy round-robin vs one node, all on this \
         machine; every IPCR node with http.workers {}; client curl for the 1 GiB push, wrk for reads, \
         reqwest otherwise.",
        workers.as_deref().unwrap_or("unset (one per core)")
    );
    println!();
    println!("| measurement | runs | median |");
    println!("|---|---|---|");
    println!(
        "| 1 GiB push, single node, direct (s) | {} | **{bs:.2}** |",
        fmt(&big_single)
    );
    println!(
        "| 1 GiB push, single node through haproxy (s) | {} | **{bsl:.2}** |",
        fmt(&big_single_lb)
    );
    println!(
        "| 1 GiB push, 3-node cluster through haproxy, 2 replicas (s) | {} | **{bc:.2}** |",
        fmt(&big_cluster)
    );
    println!(
        "| 1 GiB push, distribution 2.8.2, direct (s) | {} | **{:.2}** |",
        fmt(&big_dist),
        median(&big_dist)
    );
    println!("| manifest GET by tag, single node, direct (req/s) | | **{rps_single:.0}** |");
    println!("| manifest GET by tag, single node through haproxy (req/s) | | **{rps_single_lb:.0}** |");
    println!("| manifest GET by tag, cluster through haproxy (req/s) | | **{rps_cluster:.0}** |");
    println!("| manifest GET by tag, distribution 2.8.2, direct (req/s) | | **{rps_dist:.0}** |");
    println!(
        "| manifest GET by tag, each cluster node direct (req/s) | {} | |",
        rps_direct
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| {PUSHERS} concurrent pushes of a 10 MiB layer + manifest through haproxy | {} of {PUSHERS} succeeded in {wall:.1} s ({:.0} MiB/s){} | p50 {:.2} s, p99 {:.2} s, max {:.2} s |",
        lat.len(),
        mib * lat.len() as f64 / PUSHERS as f64 / wall,
        failed
            .first()
            .map(|f| format!("; first failure: {f}"))
            .unwrap_or_default(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    println!("| writing {TAGS} tags through haproxy, {TAG_WRITERS} clients (s) | | **{tag_secs:.1}** |");
    println!(
        "| Raft term before / after the pushes and reads above (default heartbeat and election timeout) | | {term_start} / {term_end} ({} elections) |",
        term_end - term_start
    );
    println!(
        "| new node joins a cluster holding {TAGS} tags: ready / serving every tag (s) | | **{ready:.2} / {serving:.2}** |"
    );
    println!();
    println!("| goal | measured | met |");
    println!("|---|---|---|");
    let goal = |name: &str, value: String, ok: bool| {
        println!("| {name} | {value} | {} |", if ok { "yes" } else { "**no**" })
    };
    goal(
        "1 GiB push through the cluster ≥ 0.7 × the single node (both through haproxy)",
        format!("{:.2} × (single node direct: {:.2} ×)", bsl / bc, bs / bc),
        bsl / bc >= 0.7,
    );
    goal(
        "manifest GET through the cluster ≥ 0.5 × the single node (both through haproxy)",
        format!(
            "{:.2} × (single node direct: {:.2} ×)",
            rps_cluster / rps_single_lb,
            rps_cluster / rps_single
        ),
        rps_cluster / rps_single_lb >= 0.5,
    );
    goal(
        "100 concurrent 10 MiB pushes all succeed",
        format!("{}/{PUSHERS}", lat.len()),
        lat.len() == PUSHERS,
    );
    drop((lb, cluster, single_lb, single));
    Ok(())
}
