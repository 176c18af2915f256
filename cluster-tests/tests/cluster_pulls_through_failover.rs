//! Pulls do not wait for elections (issue 9): on each follower, every 50 ms, a reader fetches a
//! manifest by digest, a blob that follower holds, and a range of a blob only the other two
//! nodes hold; through a `kill -9` of the leader and through a partition of the leader (network
//! namespaces), no fetch may fail and none may take over 500 ms. Content addressed by digest is
//! served from the applied state without a read index, and a holder that is gone or cut off is
//! abandoned for the other within a fraction of that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::netns::{NsCluster, require_netns};
use cluster_tests::oci::{self, noise};
use cluster_tests::sha256_digest;

const REPO: &str = "pulls/app";
/// How often each reader fetches.
const EVERY: Duration = Duration::from_millis(50);
/// The longest any fetch may take.
const LIMIT: Duration = Duration::from_millis(500);
/// Layers pushed at most while looking for a spread where every node holds one and lacks one.
const MAX_LAYERS: usize = 40;
/// How long the cluster may take to agree on a leader again.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

struct Content {
    manifest: (String, Vec<u8>),
    layers: Vec<(String, Vec<u8>)>,
}

/// Whether `data` (a node's data directory) holds blob `digest`.
fn holds(data: &std::path::Path, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    data.join("blobs/sha256").join(&hex[..2]).join(hex).is_file()
}

/// Push layers through each of `bases` in turn until every node holds one and lacks one (the
/// receiving node keeps a copy, the second replica follows rendezvous hashing), then a
/// manifest of them.
fn push(bases: &[String], data_dirs: &[std::path::PathBuf]) -> Content {
    let reg = Registry::new(&bases[0]);
    let config = noise(5, 200);
    let config_digest = reg.push_blob_chunked(REPO, &config, &[]).expect("config");
    let mut layers: Vec<(String, Vec<u8>)> = Vec::new();
    let spread = |layers: &[(String, Vec<u8>)]| {
        data_dirs
            .iter()
            .all(|d| layers.iter().any(|(l, _)| holds(d, l)) && layers.iter().any(|(l, _)| !holds(d, l)))
    };
    while !spread(&layers) {
        assert!(
            layers.len() < MAX_LAYERS,
            "{MAX_LAYERS} layers and still not spread over every node"
        );
        let bytes = noise(100 + layers.len() as u64, 1 << 20);
        let through = Registry::new(&bases[layers.len() % bases.len()]);
        let digest = through.push_blob_chunked(REPO, &bytes, &[]).expect("layer");
        layers.push((digest, bytes));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": { "mediaType": oci::CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|(d, b)| serde_json::json!({
            "mediaType": oci::LAYER_TAR, "digest": d, "size": b.len() })).collect::<Vec<_>>(),
    }))
    .expect("json");
    let digest = reg
        .put_manifest(REPO, "v1", oci::MANIFEST, &manifest)
        .expect("manifest");
    Content {
        manifest: (digest, manifest),
        layers,
    }
}

/// What the readers saw.
#[derive(Default)]
struct Seen {
    fetches: u64,
    slowest: Duration,
    failures: Vec<String>,
}

/// Fetch `url` (with `range` when given) and compare the body with `want`.
fn fetch(
    http: &reqwest::blocking::Client,
    url: &str,
    range: Option<&str>,
    want: &[u8],
) -> Result<(), String> {
    let mut req = http.get(url).header("Accept", oci::MANIFEST);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    let r = req.send().map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
    }
    if body.as_ref() != want {
        return Err(format!("{} bytes, not the {} expected", body.len(), want.len()));
    }
    Ok(())
}

/// Readers on `followers` (indexes) until `stop`.
fn readers(
    cluster: &NsCluster,
    content: &Arc<Content>,
    followers: &[usize],
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<std::thread::JoinHandle<()>> {
    followers
        .iter()
        .map(|&f| {
            let base = cluster.nodes[f].base_url();
            let data = cluster.nodes[f].data_dir();
            let held = |d: &str| holds(&data, d);
            let local = content
                .layers
                .iter()
                .find(|(d, _)| held(d))
                .expect("a layer held here")
                .clone();
            let remote = content
                .layers
                .iter()
                .find(|(d, _)| !held(d))
                .expect("a layer held elsewhere only")
                .clone();
            let (content, stop, seen) = (content.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("http client");
                let (md, mb) = &content.manifest;
                let range = format!("bytes=0-{}", remote.1.len() - 2);
                let fetches = [
                    (format!("{base}/v2/{REPO}/manifests/{md}"), None, mb.as_slice()),
                    (
                        format!("{base}/v2/{REPO}/blobs/{}", local.0),
                        None,
                        local.1.as_slice(),
                    ),
                    (
                        format!("{base}/v2/{REPO}/blobs/{}", remote.0),
                        Some(range.as_str()),
                        &remote.1[..remote.1.len() - 1],
                    ),
                ];
                while !stop.load(Ordering::SeqCst) {
                    for (url, range, want) in &fetches {
                        let started = Instant::now();
                        let result = fetch(&http, url, *range, want);
                        let took = started.elapsed();
                        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                        s.fetches += 1;
                        s.slowest = s.slowest.max(took);
                        match result {
                            Err(e) => s.failures.push(format!("node{f} {url}: {e}")),
                            Ok(()) if took > LIMIT => {
                                s.failures.push(format!("node{f} {url}: took {took:?}"))
                            }
                            Ok(()) => {}
                        }
                    }
                    std::thread::sleep(EVERY);
                }
            })
        })
        .collect()
}

/// Run `fault` (which answers how to undo it) with readers on the leader's followers, then
/// undo it and check what the readers saw.
fn through(
    cluster: &mut NsCluster,
    content: &Arc<Content>,
    what: &str,
    fault: impl FnOnce(&mut NsCluster, usize),
) {
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    let leader_id = cluster.wait_leader_among(&all, LEADER_TIMEOUT).id;
    let leader = cluster.index_of(leader_id).expect("the leader's index");
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let threads = readers(cluster, content, &followers, &stop, &seen);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    fault(cluster, leader);
    // The majority elects a new leader and takes writes meanwhile.
    let s = cluster.wait_leader_among(&followers, LEADER_TIMEOUT);
    eprintln!("{what}: node{} leads again after {:?}", s.id, started.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("a reader panicked");
    }
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    eprintln!("{what}: {} fetches, slowest {:?}", s.fetches, s.slowest);
    assert!(s.fetches > 50, "{what}: too few fetches to judge ({})", s.fetches);
    assert!(
        s.failures.is_empty(),
        "{what}: {} failures:\n{}",
        s.failures.len(),
        s.failures.join("\n")
    );
}

#[test]
fn pulls_by_digest_ride_through_a_leader_kill_and_a_leader_partition() {
    if !require_netns() {
        return;
    }
    let mut cluster = NsCluster::start_with_env(3, &[("REGISTRY_STORAGE_REPLICAS", "2")]);
    let data_dirs: Vec<_> = cluster.nodes.iter().map(|n| n.data_dir()).collect();
    let bases: Vec<_> = cluster.nodes.iter().map(|n| n.base_url()).collect();
    let content = Arc::new(push(&bases, &data_dirs));
    for (d, b) in &content.layers {
        assert_eq!(*d, sha256_digest(b));
    }
    let all: Vec<usize> = (0..3).collect();
    cluster.wait_caught_up(&all, LEADER_TIMEOUT);

    let mut killed = None;
    through(&mut cluster, &content, "kill -9 of the leader", |c, leader| {
        c.nodes[leader].process().kill9();
        killed = Some(leader);
    });
    let killed = killed.expect("killed");
    cluster.nodes[killed].restart_nowait();
    cluster.nodes[killed].wait_ready(cluster_tests::node::READY_TIMEOUT);
    cluster.wait_caught_up(&all, LEADER_TIMEOUT);

    let mut cut = None;
    through(&mut cluster, &content, "partition of the leader", |c, leader| {
        c.lab.isolate(leader);
        cut = Some(leader);
    });
    let cut = cut.expect("cut");
    cluster.lab.heal(cut);
    cluster.wait_caught_up(&all, LEADER_TIMEOUT);
}
