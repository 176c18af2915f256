//! The pull-through cache (`proxy:`) with real upstreams: distribution 2.8.2 behind the test's
//! token server (the Bearer flow IPCR answers itself) or open, a fault proxy in front of it
//! where the test needs one. `docker pull` of an image only the upstream holds, digest
//! unchanged; pulls of one new blob on two nodes (or two on one node) at once fetch it once,
//! and it is then an
//! ordinary blob of the cluster; bad bytes and an upstream killed mid-blob leave nothing
//! behind; tags follow the upstream after `ttl`, and cached ones are served while the
//! upstream is down or rate-limits.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cluster_tests::client::http_client as http;
use cluster_tests::clients::Docker;
use cluster_tests::credentials::{DockerSession, must_build_and_push};
use cluster_tests::faults::{Fault, FaultProxy, Rule, When};
use cluster_tests::seed::{Seeded, Seeder, UpstreamClient};
use cluster_tests::tools::{require_docker, require_static_busybox, require_tool};
use cluster_tests::upstream::{TokenConfig, TokenServer, Upstream};
use cluster_tests::{Cluster, Node, sha256_digest};

const ALICE: (&str, &str) = ("alice", "alice-pw");
const REPO: &str = "team/app";

/// `REGISTRY_PROXY_UPSTREAMS` making `<prefix>/*` a cache of `remoteurl`.
fn upstreams(prefix: &str, remoteurl: &str, creds: Option<(&str, &str)>, ttl: &str) -> (String, String) {
    let creds = creds
        .map(|(u, p)| format!(", username: {u}, password: {p}"))
        .unwrap_or_default();
    (
        "REGISTRY_PROXY_UPSTREAMS".into(),
        format!("[{{prefix: {prefix}, remoteurl: '{remoteurl}', ttl: {ttl}{creds}}}]"),
    )
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `GET <base><path>`: the status and, for a 200, the whole body (`Err` when it broke off).
fn get(base: &str, path: &str) -> (u16, Result<Vec<u8>, String>) {
    let resp = http()
        .get(format!("{base}{path}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json")
        .send()
        .unwrap_or_else(|e| panic!("GET {base}{path}: {e}"));
    let status = resp.status().as_u16();
    let declared = resp.content_length();
    let body = resp.bytes().map(|b| b.to_vec()).map_err(|e| e.to_string());
    let body = match (body, declared) {
        (Ok(b), Some(n)) if b.len() as u64 != n => Err(format!("{} of {n} bytes", b.len())),
        (other, _) => other,
    };
    (status, body)
}

/// The blob `digest` of `repo` through `base`, which must be whole and right.
#[track_caller]
fn must_get_blob(base: &str, repo: &str, digest: &str) -> Vec<u8> {
    let (status, body) = get(base, &format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(status, 200, "GET {base} {repo}@{digest}");
    let body = body.unwrap_or_else(|e| panic!("{base} {repo}@{digest}: {e}"));
    assert_eq!(
        sha256_digest(&body),
        digest,
        "bytes of {repo}@{digest} from {base}"
    );
    body
}

/// The digest `reference` names in `repo` through `base`.
#[track_caller]
fn must_manifest_digest(base: &str, repo: &str, reference: &str) -> String {
    let (status, body) = get(base, &format!("/v2/{repo}/manifests/{reference}"));
    assert_eq!(status, 200, "GET {base} {repo}:{reference}");
    sha256_digest(&body.expect("a whole manifest"))
}

/// Whether a file named like `digest`'s hex lies anywhere under `dir` (a node's data).
fn holds_file(dir: &Path, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    fn walk(dir: &Path, hex: &str) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p, hex)
            } else {
                p.file_name().is_some_and(|n| n.to_string_lossy() == hex)
            }
        })
    }
    walk(dir, hex)
}

/// Wait (bounded) until a file of `digest` is under `dir`.
#[track_caller]
fn must_hold_soon(dir: &Path, digest: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds_file(dir, digest) {
        assert!(
            Instant::now() < deadline,
            "{digest} was not stored under {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// distribution's file of blob `digest` under its storage root.
fn upstream_blob_file(up: &Upstream, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    up.data_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("reading the upstream's blob");
    bytes[at as usize] ^= 0xff;
    std::fs::write(path, bytes).expect("writing the upstream's blob");
}

/// Pull `digest` of `repo` through each of `bases` at the same moment; each must be whole.
fn must_pull_together(bases: &[String], repo: &str, digest: &str) {
    let start = Arc::new(Barrier::new(bases.len()));
    let pulls: Vec<_> = bases
        .iter()
        .map(|base| {
            let (start, base, repo, digest) =
                (start.clone(), base.clone(), repo.to_string(), digest.to_string());
            std::thread::spawn(move || {
                start.wait();
                must_get_blob(&base, &repo, &digest).len()
            })
        })
        .collect();
    for p in pulls {
        p.join().expect("a pull");
    }
}

/// An open distribution seeded with `tags` tags of `layer_size` layers in [`REPO`], or `None`
/// when a tool is missing (the test is skipped).
fn seeded_upstream(tags: usize, layer_size: usize) -> Option<(Upstream, Seeded)> {
    let skopeo = require_tool("skopeo")?;
    let up = Upstream::open()?;
    let mut seeded = Seeded::new(REPO);
    Seeder::new(&skopeo, &up, None).seed_tags(&mut seeded, tags, layer_size);
    Some((up, seeded))
}

/// The blobs of `seeded` with their sizes, the largest first.
fn by_size(seeded: &Seeded) -> Vec<(String, u64)> {
    let mut blobs: Vec<(String, u64)> = seeded.blobs.iter().map(|(d, s)| (d.clone(), *s)).collect();
    blobs.sort_by_key(|(_, s)| std::cmp::Reverse(*s));
    blobs
}

const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\nCMD [\"/bin/busybox\",\"echo\",\"pulled through the cache\"]\n";

#[test]
fn docker_pulls_an_image_only_the_upstream_holds_through_the_cache() {
    let (Some(docker_bin), Some(busybox)) = (require_docker(), require_static_busybox()) else {
        return;
    };
    let tokens = TokenServer::start(TokenConfig::users(&[ALICE]));
    let Some(up) = Upstream::token(&tokens) else {
        return;
    };
    let session = DockerSession::new(&docker_bin);
    let login = session.login(&up.host(), ALICE.0, ALICE.1);
    assert!(
        login.status.success(),
        "docker login to the upstream: {}",
        login.describe()
    );
    let mut docker = Docker::new(docker_bin);
    let upstream_tag = format!("{}/{REPO}:v1", up.host());
    let marker = format!("proxy-cache-{}", up.host());
    let (id, digest) = must_build_and_push(
        &mut docker,
        &session,
        &busybox,
        DOCKERFILE,
        &marker,
        &upstream_tag,
    );
    docker.must(&["rmi", &upstream_tag]);

    let env = [upstreams("hub", &up.base_url(), Some(ALICE), "5m")];
    let node = Node::start_with_env("cache", &borrowed(&env));
    let issued = tokens.issued();
    let cached = format!("{}/hub/{REPO}", node.host());
    docker.must_pull_fresh(&format!("{cached}:v1"), &cached, &digest, &id, |docker| {
        let container = format!("ipcr-proxy-{}", node.port());
        docker.containers.push(container.clone());
        let out = docker.must(&["run", "--name", &container, &format!("{cached}:v1")]);
        assert!(
            out.stdout_text().contains("pulled through the cache"),
            "{}",
            out.describe()
        );
        docker.must(&["rm", &container]);
    });
    assert!(
        tokens.issued() > issued,
        "IPCR asked the token server for the upstream's tokens"
    );
    assert_eq!(
        must_manifest_digest(&node.base_url(), &format!("hub/{REPO}"), "v1"),
        digest
    );

    // A cache takes no pushes, as distribution answers in proxy mode.
    let resp = http()
        .post(format!("{}/v2/hub/{REPO}/blobs/uploads/", node.base_url()))
        .send()
        .expect("POST");
    assert_eq!(resp.status(), 405);
    assert!(resp.text().unwrap_or_default().contains("UNSUPPORTED"));
}

#[test]
fn one_fetch_per_blob_in_the_cluster_then_an_ordinary_blob() {
    let Some((mut up, seeded)) = seeded_upstream(1, 24 << 20) else {
        return;
    };
    let blobs = by_size(&seeded);
    let (blob, other) = (blobs[0].0.clone(), blobs[1].0.clone());
    let faults = FaultProxy::start(&up.base_url());
    // The upstream sends blobs slowly (2 ms per 64 KiB: about a second for a layer), so that
    // the pulls below are under way together and the later ones read along the fetch.
    faults.set(
        Rule::new(Fault::Slow(Duration::from_millis(2)), When::Always)
            .on_method("GET")
            .on_path("/blobs/"),
    );
    let env = [upstreams("up", &faults.base_url(), None, "5m")];
    let cluster = Cluster::start(3, &borrowed(&env));
    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.base_url()).collect();
    let repo = format!("up/{REPO}");
    must_manifest_digest(&bases[0], &repo, "v0");

    must_pull_together(&[bases[1].clone(), bases[2].clone()], &repo, &blob);
    let fetches = faults
        .exchanges()
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains(&blob))
        .count();
    assert_eq!(
        fetches, 1,
        "two nodes pulling one blob fetched it {fetches} times from the upstream"
    );
    let along = |i: usize, whose: &str| {
        cluster.nodes[i]
            .log()
            .contains(&format!("reading along {whose} fetch"))
    };
    assert!(
        along(1, "another node's") || along(2, "another node's"),
        "the node that did not fetch streamed the other's fetch as it was written"
    );

    // A second blob, pulled twice at once through one node: fetched once too.
    must_pull_together(&[bases[0].clone(), bases[0].clone()], &repo, &other);
    let fetches = faults
        .exchanges()
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains(&other))
        .count();
    assert_eq!(
        fetches, 1,
        "two pulls through one node fetched one blob {fetches} times from the upstream"
    );
    assert!(
        along(0, "this node's"),
        "the second pull streamed the first's fetch as it was written"
    );

    // Now it is the cluster's: every node serves it, and the tag, with the upstream gone.
    up.kill9();
    for base in &bases {
        must_get_blob(base, &repo, &blob);
        assert_eq!(must_manifest_digest(base, &repo, "v0"), seeded.tags["v0"].digest);
    }
    let holders = cluster
        .nodes
        .iter()
        .filter(|n| holds_file(&n.data_dir(), &blob))
        .count();
    assert!(
        holders >= 2,
        "the cached blob is on {holders} nodes; storage.replicas is 2"
    );
}

#[test]
fn bad_bytes_and_broken_fetches_leave_nothing_behind() {
    let Some((mut up, seeded)) = seeded_upstream(1, 16 << 20) else {
        return;
    };
    let blobs = by_size(&seeded);
    let (bad, bad_size) = blobs[0].clone();
    let (cut, _) = blobs[1].clone();
    let env = [upstreams("up", &up.base_url(), None, "5m")];
    let node = Node::start_with_env("cache", &borrowed(&env));
    let (base, repo) = (node.base_url(), format!("up/{REPO}"));

    // The upstream serves other bytes than the digest: the pull fails before its last
    // bytes, and nothing is kept.
    let file = upstream_blob_file(&up, &bad);
    flip_byte(&file, bad_size / 2);
    for _ in 0..2 {
        let (status, body) = get(&base, &format!("/v2/{repo}/blobs/{bad}"));
        match (status, body) {
            (200, Ok(b)) => panic!(
                "a corrupt blob was served whole ({} bytes, {})",
                b.len(),
                sha256_digest(&b)
            ),
            (200, Err(_)) => {}
            (other, _) => panic!("GET of a corrupt upstream blob answered {other}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!holds_file(&node.data_dir(), &bad), "a corrupt blob was stored");
    flip_byte(&file, bad_size / 2);
    must_get_blob(&base, &repo, &bad);
    // The client has every byte before the store commits them.
    must_hold_soon(&node.data_dir(), &bad);

    // The upstream dies mid-blob: the client's pull fails, nothing is kept, and once the
    // upstream is back the blob comes whole.
    let mut resp = http()
        .get(format!("{base}/v2/{repo}/blobs/{cut}"))
        .send()
        .expect("GET through the cache");
    assert_eq!(resp.status(), 200);
    let mut first = vec![0u8; 1 << 20];
    resp.read_exact(&mut first).expect("the first MiB");
    up.kill9();
    let mut rest = Vec::new();
    let outcome = resp.read_to_end(&mut rest);
    let got = first.len() + rest.len();
    assert!(
        outcome.is_err() || sha256_digest(&[first, rest].concat()) != cut,
        "the pull completed ({got} bytes) though the upstream died"
    );
    let (status, _) = get(&base, &format!("/v2/{repo}/blobs/{cut}"));
    assert_eq!(
        status, 503,
        "with the upstream down the uncached blob is unavailable"
    );
    assert!(!holds_file(&node.data_dir(), &cut), "a broken fetch was stored");
    up.restart();
    must_get_blob(&base, &repo, &cut);
}

#[test]
fn tags_follow_the_upstream_after_ttl_and_cached_ones_outlive_it() {
    let Some((mut up, seeded)) = seeded_upstream(2, 64 << 10) else {
        return;
    };
    let (v0, v1) = (seeded.tags["v0"].clone(), seeded.tags["v1"].clone());
    let faults = FaultProxy::start(&up.base_url());
    let ttl = Duration::from_secs(2);
    let env = [upstreams("up", &faults.base_url(), None, "2s")];
    let node = Node::start_with_env("cache", &borrowed(&env));
    let (base, repo) = (node.base_url(), format!("up/{REPO}"));

    assert_eq!(must_manifest_digest(&base, &repo, "v0"), v0.digest);
    let confirmed = Instant::now();
    // The upstream moves the tag.
    let client = UpstreamClient::new(&up, None);
    let moved = client.get_manifest(REPO, "v1").expect("v1 upstream");
    client.must_put_manifest(REPO, "v0", &moved.media_type, &moved.bytes);
    let seen = must_manifest_digest(&base, &repo, "v0");
    if confirmed.elapsed() < ttl {
        assert_eq!(
            seen, v0.digest,
            "within the ttl the cached tag is served without asking"
        );
    }
    std::thread::sleep(ttl.saturating_sub(confirmed.elapsed()) + Duration::from_millis(200));
    assert_eq!(
        must_manifest_digest(&base, &repo, "v0"),
        v1.digest,
        "after the ttl the tag follows the upstream"
    );

    // The upstream rate-limits: the cached tag is served; what was never cached is not.
    faults.set(Rule::new(Fault::too_many_requests(30), When::Always));
    std::thread::sleep(ttl);
    assert_eq!(must_manifest_digest(&base, &repo, "v0"), v1.digest);
    assert!(
        faults.faults_served() > 0,
        "the cache asked the rate-limited upstream"
    );
    let never = seeded.blobs.keys().next().expect("a blob").clone();
    let (status, _) = get(&base, &format!("/v2/{repo}/blobs/{never}"));
    assert_eq!(status, 503, "an uncached blob while the upstream rate-limits");

    // The upstream is down: the cached tag, and what it references once pulled, are served.
    faults.clear();
    for digest in seeded.blobs.keys() {
        let (status, _) = get(&base, &format!("/v2/{repo}/blobs/{digest}"));
        assert_eq!(status, 200, "blob {digest} through the cache");
    }
    up.kill9();
    std::thread::sleep(ttl);
    assert_eq!(must_manifest_digest(&base, &repo, "v0"), v1.digest);
    for digest in seeded.blobs.keys() {
        must_get_blob(&base, &repo, digest);
    }
    let (status, _) = get(&base, &format!("/v2/{repo}/manifests/never-pushed"));
    assert_eq!(status, 503, "an uncached tag while the upstream is down");
}
