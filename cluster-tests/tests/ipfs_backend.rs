//! Blobs on IPFS through the Estuary backend (and the emulator that stands in for Estuary and
//! Kubo): CIDs that agree with the vectors, pins recorded in the replicated blob index, pulls
//! of blobs no node holds any more (redirected or proxied, always verified), a backend outage
//! during pushes, wrong answers and corrupted bytes from the backend, cache eviction.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::emulator::{Emulator, TOKEN};
use cluster_tests::pushes::{self, Pushed, image};
use cluster_tests::tools::require_tool;
use cluster_tests::{Balancer, Cluster, Node, sha256_digest};
use ipcr_proto::admin::IpfsStatus;
use reqwest::blocking::Client;
use serde_json::Value;

const VECTORS: &str = include_str!("../../node/tests/data/ipfs-cids.tsv");

/// `(size, cid_174, cid_1024)` of the vectors' rows up to `max` bytes.
fn vector_rows(max: u64) -> Vec<(u64, String, String)> {
    VECTORS
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].parse().unwrap(), f[2].to_string(), f[3].to_string())
        })
        .filter(|(size, _, _)| *size <= max)
        .collect()
}

/// The vectors' content of `n` bytes: byte `i` is `i mod 251`.
fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn estuary_add(emu: &Emulator, auth: Option<&str>, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let part = reqwest::blocking::multipart::Part::bytes(bytes).file_name(name.to_string());
    let form = reqwest::blocking::multipart::Form::new().part("data", part);
    let mut req = Client::new()
        .post(format!("{}/content/add", emu.url()))
        .multipart(form);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().expect("content/add");
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn estuary_get(emu: &Emulator, path: &str) -> Value {
    let resp = Client::new()
        .get(format!("{}{path}", emu.url()))
        .bearer_auth(TOKEN)
        .send()
        .expect("estuary GET");
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.json().expect("json")
}

#[test]
fn the_emulator_follows_estuary_and_kubo_and_agrees_with_the_vectors() {
    let emu = Emulator::start();
    // Estuary's authentication errors.
    for (auth, reason) in [
        (None, "ERR_AUTH_MISSING"),
        (Some("Token abc"), "ERR_AUTH_MISSING_BEARER"),
        (Some("Bearer"), "ERR_INVALID_AUTH"),
        (Some("Bearer ESTnotatokenARY"), "ERR_INVALID_TOKEN"),
    ] {
        let (status, body) = estuary_add(&emu, auth, "x", b"x".to_vec());
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(body["error"]["reason"], reason, "{auth:?}: {body}");
        assert_eq!(body["error"]["code"], 401);
    }
    let bearer = format!("Bearer {TOKEN}");
    // Adds: Estuary imports with 1024 links, Kubo with its default 174.
    for (size, cid_174, cid_1024) in vector_rows(10 << 20) {
        let (status, body) = estuary_add(&emu, Some(&bearer), &format!("blob-{size}"), pattern(size));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["cid"], cid_1024.as_str(), "estuary add of {size} bytes");
        assert!(
            body["estuaryId"].as_u64().is_some() && body["providers"].is_array(),
            "{body}"
        );
        assert!(body["retrieval_url"].as_str().unwrap().ends_with(&cid_1024));
        let part = reqwest::blocking::multipart::Part::bytes(pattern(size)).file_name("f");
        let resp = Client::new()
            .post(format!(
                "{}/api/v0/add?cid-version=1&raw-leaves=true&chunker=size-1048576&pin=true",
                emu.url()
            ))
            .multipart(reqwest::blocking::multipart::Form::new().part("file", part))
            .send()
            .unwrap();
        let line: Value = serde_json::from_str(resp.text().unwrap().lines().last().unwrap()).unwrap();
        assert_eq!(line["Hash"], cid_174.as_str(), "kubo add of {size} bytes");
    }
    // Pins, content by CID, the gateway with ranges, Kubo's cat.
    let (_, _, cid) = vector_rows(3_500_000).pop().unwrap();
    let pins = estuary_get(&emu, &format!("/pinning/pins?cid={cid}&status=pinned&limit=5"));
    // One content per add, as in Estuary: the Estuary add and the Kubo add of these bytes.
    assert_eq!(pins["count"], 2, "{pins}");
    let pin = pins["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pin"]["name"] == "blob-3500000")
        .expect("the Estuary add's pin");
    assert_eq!(pin["status"], "pinned");
    assert_eq!(pin["pin"]["cid"], cid.as_str());
    assert_eq!(pin["pin"]["name"], "blob-3500000");
    assert!(pin["requestid"].is_string() && pin["created"].is_string() && pin["delegates"].is_array());
    let by_name = estuary_get(&emu, "/pinning/pins?name=blob-3500000");
    assert_eq!(by_name["count"], 1);
    let by_cid = estuary_get(&emu, &format!("/content/by-cid/{cid}"));
    assert_eq!(by_cid[0]["content"]["cid"], cid.as_str());
    assert!(by_cid[0]["deals"].is_array());
    let whole = pattern(3_500_000);
    let ranged = Client::new()
        .get(format!("{}/gw/ipfs/{cid}", emu.url()))
        .header("Range", "bytes=1000000-1999999")
        .send()
        .unwrap();
    assert_eq!(ranged.status().as_u16(), 206);
    assert_eq!(
        ranged.headers()["content-range"].to_str().unwrap(),
        "bytes 1000000-1999999/3500000"
    );
    assert_eq!(&ranged.bytes().unwrap()[..], &whole[1_000_000..2_000_000]);
    let cat = Client::new()
        .post(format!("{}/api/v0/cat?arg={cid}&offset=10&length=100", emu.url()))
        .send()
        .unwrap();
    assert_eq!(&cat.bytes().unwrap()[..], &whole[10..110]);
    // Faults on demand.
    emu.set_mode("wrong-cid");
    let (_, body) = estuary_add(&emu, Some(&bearer), "w", pattern(1000));
    assert_ne!(body["cid"], vector_rows(1000).pop().unwrap().2.as_str());
    emu.set_mode("corrupt");
    let got = Client::new()
        .get(format!("{}/gw/ipfs/{cid}", emu.url()))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.len(), whole.len());
    assert_ne!(&got[..], &whole[..], "corrupt mode must flip a byte");
    emu.set_mode("refuse");
    let (status, body) = estuary_add(&emu, Some(&bearer), "r", pattern(10));
    assert_eq!(status, 500, "{body}");
    emu.set_mode("ok");
}

/// `REGISTRY_*` settings of a node using the emulator as its Estuary.
fn estuary_env(emu: &Emulator, redirect: bool) -> Vec<(String, String)> {
    vec![
        ("REGISTRY_STORAGE_ESTUARY_URL".into(), emu.url()),
        ("REGISTRY_STORAGE_ESTUARY_SHUTTLE_URL".into(), emu.url()),
        ("REGISTRY_STORAGE_ESTUARY_AUTH_TOKEN".into(), TOKEN.into()),
        (
            "REGISTRY_STORAGE_REDIRECT_DISABLE".into(),
            (!redirect).to_string(),
        ),
        ("REGISTRY_HEALTH_STORAGEDRIVER_ENABLED".into(), "true".into()),
        ("REGISTRY_HEALTH_STORAGEDRIVER_INTERVAL".into(), "200ms".into()),
        ("REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD".into(), "2".into()),
    ]
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn ipfs_status(cluster: &Cluster) -> IpfsStatus {
    ipfs_status_at(cluster, 0)
}

fn ipfs_status_at(cluster: &Cluster, i: usize) -> IpfsStatus {
    cluster
        .status(i)
        .expect("status")
        .ipfs
        .expect("the status shows the backend")
}

/// Wait until the status shows `n` blobs pinned and none pending or failed.
fn wait_pinned(cluster: &Cluster, n: u64, timeout: Duration) -> IpfsStatus {
    wait_pinned_at(cluster, 0, n, timeout)
}

/// [`wait_pinned`], asking node `i`.
fn wait_pinned_at(cluster: &Cluster, i: usize, n: u64, timeout: Duration) -> IpfsStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let s = ipfs_status_at(cluster, i);
        if s.pinned >= n && s.pending == 0 && s.failed == 0 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "blobs not pinned within {timeout:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn push(reg: &Registry, repo: &str, seed: u64) -> Pushed {
    let img = image(seed, 2, 1_500_000 + seed as usize);
    let mut failures = Vec::new();
    pushes::push_with_retries(&mut |_| reg.clone(), repo, "v1", &img, 1 << 20, &mut failures)
        .unwrap_or_else(|e| panic!("push {repo}: {e}"))
}

/// Every node's local copy of `digest` removed.
fn wipe(cluster: &Cluster, digest: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    for node in &cluster.nodes {
        let path = node.data_dir().join("blobs/sha256").join(&hex[..2]).join(hex);
        let _ = std::fs::remove_file(path);
    }
}

/// Push through a 3-node cluster on the emulated Estuary, check every blob got its CID and
/// is pinned under it, wipe every node's copy of a layer, pull it through the balancer.
fn pull_of_a_wiped_blob(redirect: bool) {
    if require_tool("haproxy").is_none() {
        return;
    }
    let emu = Emulator::start();
    let env = estuary_env(&emu, redirect);
    let mut cluster = Cluster::start(3, &borrowed(&env));
    let lb = Balancer::start(&cluster.hosts());
    let reg = Registry::new(&lb.base_url());
    let pushed = push(&reg, "ipfs/app", 7);
    let digests: BTreeSet<&String> = pushed.blobs.iter().map(|(d, _)| d).collect();
    wait_pinned(&cluster, digests.len() as u64, Duration::from_secs(60));
    // The emulator holds each blob under the CID the node computed for it.
    for (digest, bytes) in &pushed.blobs {
        let pins = estuary_get(&emu, &format!("/pinning/pins?name={digest}"));
        assert_eq!(pins["count"], 1, "{digest}: {pins}");
        let cid = pins["results"][0]["pin"]["cid"].as_str().unwrap();
        let gw = Client::new()
            .get(format!("{}/gw/ipfs/{cid}", emu.url()))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert_eq!(sha256_digest(&gw), *digest);
        assert_eq!(gw.len(), bytes.len());
    }
    let (layer, bytes) = pushed.blobs[1].clone();
    wipe(&cluster, &layer);
    let url = format!("{}/v2/ipfs/app/blobs/{layer}", lb.base_url());
    let no_follow = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    if !redirect {
        // A range first: only the leaves it touches are read from IPFS, each checked, and
        // nothing is kept.
        let (a, b) = (1_048_000usize, 1_050_000usize);
        let part = Client::new()
            .get(&url)
            .header("Range", format!("bytes={a}-{}", b - 1))
            .send()
            .unwrap();
        assert_eq!(part.status().as_u16(), 206, "a range of a wiped blob");
        assert_eq!(
            &part.bytes().unwrap()[..],
            &bytes[a..b],
            "range across two leaves"
        );
    }
    let resp = no_follow.get(&url).send().unwrap();
    if redirect {
        assert_eq!(
            resp.status().as_u16(),
            307,
            "a wiped blob is redirected to the gateway"
        );
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        assert!(
            location.starts_with(&format!("{}/gw/ipfs/bafy", emu.url())),
            "{location}"
        );
        let got = Client::new().get(&location).send().unwrap().bytes().unwrap();
        assert_eq!(sha256_digest(&got), layer);
    } else {
        assert_eq!(
            resp.status().as_u16(),
            200,
            "a wiped blob is served through the node"
        );
        let got = resp.bytes().unwrap();
        assert_eq!(&got[..], &bytes[..]);
        // Served once, kept: the node that restored it holds a verified copy again.
        let held = cluster
            .nodes
            .iter()
            .filter(|n| {
                let hex = layer.strip_prefix("sha256:").unwrap();
                n.data_dir()
                    .join("blobs/sha256")
                    .join(&hex[..2])
                    .join(hex)
                    .exists()
            })
            .count();
        assert_eq!(held, 1, "exactly the serving node restored a copy");
        // And a range of it from every node.
        for host in cluster.hosts() {
            let part = Client::new()
                .get(format!("http://{host}/v2/ipfs/app/blobs/{layer}"))
                .header("Range", "bytes=100-199")
                .send()
                .unwrap();
            assert_eq!(part.status().as_u16(), 206);
            assert_eq!(&part.bytes().unwrap()[..], &bytes[100..200]);
        }
    }
}

#[test]
fn a_blob_no_node_holds_is_served_from_the_gateway_without_redirect() {
    pull_of_a_wiped_blob(false);
}

#[test]
fn a_blob_no_node_holds_is_redirected_to_the_gateway() {
    pull_of_a_wiped_blob(true);
}

#[test]
fn pushes_go_on_while_the_backend_is_down_and_a_dead_leaders_backlog_drains() {
    let mut emu = Emulator::start();
    let env = estuary_env(&emu, false);
    let mut cluster = Cluster::start(3, &borrowed(&env));
    let hosts = cluster.hosts();
    emu.kill9();
    // The backend's health goes bad on every node; readiness does not depend on it.
    let http = Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = http
            .get(format!("http://{}/debug/health", hosts[0]))
            .send()
            .unwrap();
        if h.status().as_u16() == 503 {
            let body: Value = h.json().unwrap();
            assert!(body.to_string().contains("storagedriver_estuary"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "backend never reported unhealthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut pushed = Vec::new();
    for i in 0..20u64 {
        let reg = Registry::new(&format!("http://{}", hosts[i as usize % hosts.len()]));
        pushed.push(push(&reg, &format!("down/p{i}"), 100 + i));
    }
    let blobs: BTreeSet<String> = pushed
        .iter()
        .flat_map(|p| p.blobs.iter().map(|(d, _)| d.clone()))
        .collect();
    let s = ipfs_status(&cluster);
    assert_eq!(s.pinned, 0, "{s:?}");
    assert_eq!(s.pending + s.failed, blobs.len() as u64, "{s:?}");
    // The leader, which drives the uploads, dies with the backlog pending: the new leader and
    // the surviving holders finish it.
    let leader = cluster.wait_leader();
    cluster.nodes[leader].kill9();
    let alive = (leader + 1) % hosts.len();
    emu.restart();
    let s = wait_pinned_at(&cluster, alive, blobs.len() as u64, Duration::from_secs(120));
    assert_eq!(s.pinned, blobs.len() as u64);
    for d in &blobs {
        let pins = estuary_get(&emu, &format!("/pinning/pins?name={d}"));
        assert!(
            pins["count"].as_u64().unwrap() >= 1,
            "{d} never reached the backend"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(format!("http://{}/debug/health", hosts[alive]))
        .send()
        .unwrap()
        .status()
        .as_u16()
        != 200
    {
        assert!(Instant::now() < deadline, "backend never reported healthy again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn wrong_answers_and_corrupted_bytes_from_the_backend_are_never_accepted() {
    let emu = Emulator::start();
    // A separate gateway in front (as Estuary's API node was), which will serve bad bytes; the
    // shuttle's own gateway is the second source.
    let gw = Emulator::start();
    let mut env = estuary_env(&emu, false);
    env.push((
        "REGISTRY_STORAGE_ESTUARY_GATEWAY".into(),
        format!("{}/gw/ipfs", gw.url()),
    ));
    let cluster = Cluster::start(1, &borrowed(&env));
    let reg = Registry::new(&cluster.nodes[0].base_url());
    // A backend that answers another CID: recorded as a failure, never as pinned.
    emu.set_mode("wrong-cid");
    let pushed = push(&reg, "bad/cid", 300);
    let n = pushed.blobs.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = ipfs_status(&cluster);
        assert_eq!(s.pinned, 0, "a wrong CID was accepted: {s:?}");
        if s.failed == n {
            assert!(s.failures[0].reason.contains("backend answered CID"), "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "wrong CIDs not reported: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    emu.set_mode("ok");
    wait_pinned(&cluster, n, Duration::from_secs(120));
    let (layer, bytes) = pushed.blobs[1].clone();
    let hex = layer.strip_prefix("sha256:").unwrap().to_string();
    let local = cluster.nodes[0]
        .data_dir()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(&hex);
    let pull = || {
        Client::new()
            .get(format!(
                "{}/v2/bad/cid/blobs/{layer}",
                cluster.nodes[0].base_url()
            ))
            .send()
            .unwrap()
    };
    // The first source serves corrupted bytes: refused, and the next source serves the blob.
    let bearer = format!("Bearer {TOKEN}");
    let (status, _) = estuary_add(&gw, Some(&bearer), "copy", bytes.to_vec());
    assert_eq!(status, 200);
    gw.set_mode("corrupt");
    wipe(&cluster, &layer);
    let resp = pull();
    assert_eq!(resp.status().as_u16(), 200, "the second source must be used");
    assert_eq!(&resp.bytes().unwrap()[..], &bytes[..]);
    assert!(
        gw.stats()["reads"].as_u64().unwrap() >= 1,
        "the corrupt source was not tried first"
    );
    // Every source corrupted: the pull fails cleanly, nothing wrong is kept; a range too.
    wipe(&cluster, &layer);
    emu.set_mode("corrupt");
    let resp = pull();
    assert_eq!(resp.status().as_u16(), 503, "corrupted bytes must not be served");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(!local.exists(), "corrupted bytes were stored");
    let ranged = |range: &str| {
        Client::new()
            .get(format!(
                "{}/v2/bad/cid/blobs/{layer}",
                cluster.nodes[0].base_url()
            ))
            .header("Range", range)
            .send()
            .unwrap()
    };
    assert_eq!(
        ranged("bytes=0-99").status().as_u16(),
        503,
        "a corrupted leaf must not be served"
    );
    // The first source still corrupt, the second right: a range is served from it.
    emu.set_mode("ok");
    let part = ranged("bytes=1048570-1048589");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(&part.bytes().unwrap()[..], &bytes[1_048_570..1_048_590]);
    // Once a source serves the right bytes, the same pull works.
    emu.set_mode("ok");
    let got = reg
        .get_blob("bad/cid", &layer)
        .expect("pull after the backend recovered");
    assert_eq!(got.bytes, bytes.to_vec());
}

#[test]
fn a_hanging_backend_is_given_up_on_and_retried() {
    let emu = Emulator::start();
    let env = estuary_env(&emu, false);
    let cluster = Cluster::start(1, &borrowed(&env));
    let reg = Registry::new(&cluster.nodes[0].base_url());
    emu.set_mode("hang");
    // Pushes do not wait for the backend.
    let started = Instant::now();
    let pushed = push(&reg, "hang/app", 500);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a push waited for the backend"
    );
    // The upload is abandoned after the stall timeout (30 s) and recorded as failed.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = ipfs_status(&cluster);
        if s.failed > 0 {
            assert!(s.failures[0].reason.contains("estuary add"), "{s:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a hanging backend was never given up on: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    emu.set_mode("ok");
    wait_pinned(&cluster, pushed.blobs.len() as u64, Duration::from_secs(180));
}

#[test]
fn the_cache_evicts_only_what_the_backend_confirms() {
    let emu = Emulator::start();
    let mut env = estuary_env(&emu, false);
    env.push(("REGISTRY_STORAGE_CACHE_MAXSIZE".into(), "1MiB".into()));
    let node = Node::start_with_env("cache", &borrowed(&env));
    let reg = Registry::new(&node.base_url());
    emu.set_mode("refuse");
    let pushed = push(&reg, "cache/app", 400);
    let count_local = || {
        pushed
            .blobs
            .iter()
            .filter(|(d, _)| {
                let hex = d.strip_prefix("sha256:").unwrap();
                node.data_dir()
                    .join("blobs/sha256")
                    .join(&hex[..2])
                    .join(hex)
                    .exists()
            })
            .count()
    };
    // Over the limit, but nothing is confirmed by the backend: everything stays.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(count_local(), pushed.blobs.len());
    emu.set_mode("ok");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_local() > 1 {
        assert!(Instant::now() < deadline, "nothing evicted over the cache limit");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Evicted blobs are still served (from the backend, verified, and cached again).
    for (digest, bytes) in &pushed.blobs {
        let got = reg
            .get_blob("cache/app", digest)
            .expect("pull of an evicted blob");
        assert_eq!(&got.bytes, &bytes[..]);
    }
}

#[test]
fn the_kubo_backend_adds_with_the_node_settings_and_reads_through_cat() {
    let emu = Emulator::start();
    // 4 links per node: a 5 MiB layer becomes a DAG of two levels, checked against the
    // emulator's own importer.
    let env = [
        ("REGISTRY_STORAGE_IPFS_API", emu.url()),
        ("REGISTRY_STORAGE_IPFS_LINKS", "4".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = Cluster::start(1, &env);
    let reg = Registry::new(&cluster.nodes[0].base_url());
    let layer = pattern(5 << 20);
    let digest = reg
        .push_blob_chunked("kubo/app", &layer, &[700_000, 3_000_000])
        .expect("chunked push");
    let s = wait_pinned(&cluster, 1, Duration::from_secs(60));
    assert_eq!(s.backend, "ipfs");
    wipe(&cluster, &digest);
    // A range through `cat` with offset and length, three leaves checked.
    let part = Client::new()
        .get(format!(
            "{}/v2/kubo/app/blobs/{digest}",
            cluster.nodes[0].base_url()
        ))
        .header("Range", "bytes=1000000-3200000")
        .send()
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(&part.bytes().unwrap()[..], &layer[1_000_000..=3_200_000]);
    let got = reg.get_blob("kubo/app", &digest).expect("pull through cat");
    assert_eq!(got.bytes, layer);
    // Unlinked everywhere: `pin/rm` on the Kubo node.
    let resp = Client::new()
        .delete(format!(
            "{}/v2/kubo/app/blobs/{digest}",
            cluster.nodes[0].base_url()
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while emu.stats()["contents"].as_u64().unwrap() > 0 {
        assert!(Instant::now() < deadline, "never unpinned from the Kubo node");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_blob_no_repository_links_is_unpinned_and_pinned_again_when_pushed_again() {
    let emu = Emulator::start();
    let env = estuary_env(&emu, false);
    let cluster = Cluster::start(1, &borrowed(&env));
    let base = cluster.nodes[0].base_url();
    let reg = Registry::new(&base);
    let layer = pattern(2_000_000);
    let digest = reg.push_blob_chunked("gone/a", &layer, &[]).expect("push to a");
    reg.push_blob_chunked("gone/b", &layer, &[1_000_000])
        .expect("push to b");
    wait_pinned(&cluster, 1, Duration::from_secs(60));
    let pins = || {
        estuary_get(&emu, &format!("/pinning/pins?name={digest}"))["count"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(pins(), 1, "pinned once, whatever the number of repositories");
    let delete = |repo: &str| {
        let resp = Client::new()
            .delete(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 202, "DELETE from {repo}");
    };
    // Still linked from gone/b: stays pinned.
    delete("gone/a");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pins(), 1, "unpinned while another repository links it");
    // Linked nowhere: unpinned.
    delete("gone/b");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pins() != 0 {
        assert!(Instant::now() < deadline, "never unpinned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = ipfs_status(&cluster);
    assert_eq!((s.pinned, s.pending, s.failed), (0, 0, 0), "{s:?}");
    // Pushed again: pinned again.
    reg.push_blob_chunked("gone/c", &layer, &[]).expect("push to c");
    wait_pinned(&cluster, 1, Duration::from_secs(60));
    assert_eq!(pins(), 1);
}

/// How many pins the emulator holds under the name `digest`.
fn pins(emu: &Emulator, digest: &str) -> u64 {
    estuary_get(emu, &format!("/pinning/pins?name={digest}"))["count"]
        .as_u64()
        .unwrap()
}

/// `DELETE` of `image`'s manifest by digest must answer `202`.
fn must_delete_manifest(base: &str, image: &Pushed) {
    let status = cluster_tests::gc::Api::new(base)
        .delete_manifest(&image.repo, &image.digest)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 202, "DELETE of {}@{}", image.repo, image.digest);
}

#[test]
fn collected_blobs_are_unpinned_and_kept_ones_stay_pinned() {
    use cluster_tests::gc::{self, GcArgs};
    let emu = Emulator::start();
    let env = estuary_env(&emu, false);
    let cluster = Cluster::start(1, &borrowed(&env));
    let base = cluster.nodes[0].base_url();
    let reg = Registry::new(&base);
    // Two images sharing nothing: configs and layers all of their own.
    let kept = push(&reg, "gc/kept", 600);
    let doomed = push(&reg, "gc/doomed", 601);
    let all = kept.blobs.len() + doomed.blobs.len();
    wait_pinned(&cluster, all as u64, Duration::from_secs(60));
    let pins = |digest: &str| pins(&emu, digest);
    for (d, _) in kept.blobs.iter().chain(&doomed.blobs) {
        assert_eq!(pins(d), 1, "{d} pinned once");
    }
    must_delete_manifest(&base, &doomed);
    let report = gc::must_gc(&cluster.nodes[0].cluster_url(), &GcArgs::grace(0));
    eprintln!("{}", gc::describe(&report));
    assert_eq!(
        report.tally.blobs_removed,
        doomed.blobs.len() as u64,
        "the doomed image's blobs, and only them"
    );
    // Collected: unpinned; kept: still pinned, and the status agrees.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<&String> = doomed
            .blobs
            .iter()
            .map(|(d, _)| d)
            .filter(|d| pins(d) != 0)
            .collect();
        let s = ipfs_status(&cluster);
        if left.is_empty() && (s.pinned, s.pending, s.failed) == (kept.blobs.len() as u64, 0, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "collected blobs still pinned: {left:?}; status {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (d, _) in &kept.blobs {
        assert_eq!(pins(d), 1, "kept blob {d} unpinned");
    }
    pushes::must_serve(&reg, "the node", &kept);
    for (d, _) in &doomed.blobs {
        let status = Client::new()
            .get(format!("{base}/v2/gc/doomed/blobs/{d}"))
            .send()
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 404, "collected blob {d} still served");
    }
}

#[test]
fn the_cache_evicts_while_collections_remove_what_no_tag_reaches() {
    use cluster_tests::gc::{self, GcArgs};
    let emu = Emulator::start();
    let mut env = estuary_env(&emu, false);
    env.push(("REGISTRY_STORAGE_CACHE_MAXSIZE".into(), "1MiB".into()));
    let node = Node::start_with_env("cache-gc", &borrowed(&env));
    let (base, cluster_url) = (node.base_url(), node.cluster_url());
    let reg = Registry::new(&base);
    let kept = push(&reg, "gc/kept", 700);
    let doomed = push(&reg, "gc/doomed", 701);
    let local = |blobs: &[(String, std::sync::Arc<Vec<u8>>)]| {
        gc::blob_files(&node.data_dir())
            .keys()
            .filter(|d| blobs.iter().any(|(b, _)| b == *d))
            .count()
    };
    // The cache evicts blobs the backend confirms, the doomed image's among them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while local(&kept.blobs) + local(&doomed.blobs) > 2 {
        assert!(Instant::now() < deadline, "nothing evicted over the cache limit");
        std::thread::sleep(Duration::from_millis(200));
    }
    must_delete_manifest(&base, &doomed);
    let report = gc::must_gc(&cluster_url, &GcArgs::grace(0));
    eprintln!("{}", gc::describe(&report));
    assert_eq!(
        report.totals.blobs,
        doomed.blobs.len() as u64,
        "every doomed link"
    );
    // Collected blobs leave the disk (those not evicted) and the backend; kept ones stay
    // pullable, from the disk or the backend, and the cache goes on evicting them.
    let pins = |digest: &str| pins(&emu, digest);
    let deadline = Instant::now() + Duration::from_secs(60);
    while local(&doomed.blobs) > 0 || doomed.blobs.iter().any(|(d, _)| pins(d) != 0) {
        assert!(
            Instant::now() < deadline,
            "collected blobs still on the disk or pinned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (d, _) in &kept.blobs {
        assert_eq!(pins(d), 1, "kept blob {d} unpinned");
    }
    for (digest, bytes) in &kept.blobs {
        let got = reg.get_blob("gc/kept", digest).expect("pull of a kept blob");
        assert_eq!(&got.bytes, &bytes[..]);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while local(&kept.blobs) > 1 {
        assert!(
            Instant::now() < deadline,
            "the cache stopped evicting after a collection"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Once the backend confirmed the unpins, a later collection finds nothing more to do.
    let again = gc::must_gc(&cluster_url, &GcArgs::grace(0));
    assert_eq!(
        (again.totals.blobs, again.tally.blobs_removed, again.tally.refused),
        (0, 0, 0)
    );
}
