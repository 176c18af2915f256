//! A network partition that cuts one node of three off from its peers (`iptables -j DROP` in
//! its own network namespace; see `cluster_tests::netns`), once for a follower and once for
//! the leader, while the test still reaches every node:
//! - the isolated node refuses writes with `503` and `Retry-After` within a few seconds, and
//!   answers reads with `503` rather than its stale state;
//! - the majority keeps (or elects) a leader and takes writes, including re-tagging an existing
//!   tag to a new manifest;
//! - after healing, the isolated node catches up (its `applied` reaches the leader's) and serves
//!   the new data, and writes through it work again.
//!
//! Throughout, one reader thread per node reads every tag in a loop, and every answer is
//! checked against the history of writes: a read returns a digest that was written to that tag
//! and never refused, never older than the last acknowledged write of the tag nor than what a
//! finished read already returned (linearizable reads), and `404` only before the tag's first
//! acknowledged write. At the end every node serves the last acknowledged digest of every tag.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::netns::{NsCluster, require_netns};
use cluster_tests::oci::{self, noise};
use cluster_tests::sha256_digest;
use reqwest::StatusCode;
use reqwest::blocking::Client;

/// The repository every image goes to.
const REPO: &str = "part/app";
/// Tags pushed before the partition.
const TAGS: [&str; 3] = ["a", "b", "c"];
/// A tag first pushed while partitioned.
const NEW_TAG: &str = "d";
/// How long the isolated node may take to refuse a write or a read (the node's own bound is
/// 4 s for a write and 5 s for a read barrier).
const REFUSED_WITHIN: Duration = Duration::from_secs(7);
/// How long the majority may take to agree on a leader after a cut or a heal.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a read may keep answering `503` once the cluster has healed.
const READ_RETRY: Duration = Duration::from_secs(10);
/// Upper bound on the reader threads' life.
const READERS_DEADLINE: Duration = Duration::from_secs(300);

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Sent, not answered yet: it may be visible already.
    Pending,
    /// `201`.
    Acked,
    /// Refused by the isolated node: it can never become visible.
    Refused,
    /// Failed on the majority: it may or may not have landed.
    Unknown,
}

/// Writes and reads of one tag.
#[derive(Default)]
struct TagHistory {
    /// Digests written to the tag, in the order the (single) writer issued them.
    writes: Vec<(String, Outcome)>,
    /// The newest write index a finished read returned.
    read_max: Option<usize>,
}

impl TagHistory {
    /// The index no read starting now may go below.
    fn floor(&self) -> Option<usize> {
        let acked = self.writes.iter().rposition(|(_, o)| *o == Outcome::Acked);
        acked.max(self.read_max)
    }

    fn last_acked(&self) -> Option<&str> {
        self.writes
            .iter()
            .rev()
            .find(|(_, o)| *o == Outcome::Acked)
            .map(|(d, _)| d.as_str())
    }
}

/// Reads of one node.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    unavailable: u64,
    absent: u64,
}

/// Everything written and read during the test.
#[derive(Default)]
struct History {
    tags: BTreeMap<String, TagHistory>,
    /// Every (node, tag, digest) a read returned, with how often.
    seen: BTreeMap<(usize, String, String), u64>,
    tally: BTreeMap<usize, Tally>,
    violations: Vec<String>,
}

type Shared = Arc<Mutex<History>>;

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

/// An HTTP client for the checks that need the raw status and headers.
fn http() -> Client {
    Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// What one read of a tag answered.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Digest(String),
    Unavailable,
    Absent,
    /// A violation (also recorded in the history).
    Bad(String),
}

/// `GET` tag `tag` from node `i` at `base`, check the answer against the history and record it.
fn read_tag(h: &Shared, http: &Client, i: usize, base: &str, tag: &str) -> Read {
    let floor = lock(h).tags.entry(tag.to_string()).or_default().floor();
    let answer = http
        .get(format!("{base}/v2/{REPO}/manifests/{tag}"))
        .header("Accept", oci::MANIFEST)
        .send()
        .and_then(|r| {
            let status = r.status();
            let header = r
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            r.bytes().map(|b| (status, header, b))
        });
    let mut hist = lock(h);
    let violation = match answer {
        Ok((StatusCode::OK, header, body)) => {
            let digest = sha256_digest(&body);
            hist.tally.entry(i).or_default().ok += 1;
            *hist.seen.entry((i, tag.to_string(), digest.clone())).or_insert(0) += 1;
            let t = hist.tags.entry(tag.to_string()).or_default();
            let at = t.writes.iter().position(|(d, _)| *d == digest);
            let problem = match at {
                _ if header.as_deref() != Some(digest.as_str()) => {
                    Some(format!("Docker-Content-Digest {header:?} for a body of {digest}"))
                }
                None => Some(format!("{digest}, never written to it")),
                Some(j) if t.writes[j].1 == Outcome::Refused => {
                    Some(format!("{digest}, a write the isolated node refused"))
                }
                Some(j) if floor.is_some_and(|f| j < f) => Some(format!(
                    "stale {digest} (write #{j}) after write #{} was acknowledged or read",
                    floor.expect("checked")
                )),
                Some(j) => {
                    t.read_max = t.read_max.max(Some(j));
                    None
                }
            };
            if problem.is_none() {
                drop(hist);
                return Read::Digest(digest);
            }
            problem
        }
        Ok((StatusCode::SERVICE_UNAVAILABLE, _, _)) => {
            hist.tally.entry(i).or_default().unavailable += 1;
            return Read::Unavailable;
        }
        Ok((StatusCode::NOT_FOUND, _, _)) => {
            hist.tally.entry(i).or_default().absent += 1;
            if floor.is_none() {
                return Read::Absent;
            }
            Some("404 after a write of the tag was acknowledged or read".to_string())
        }
        Ok((status, _, body)) => Some(format!("status {status}: {}", String::from_utf8_lossy(&body))),
        Err(e) => Some(format!("request failed: {e}")),
    };
    let v = format!(
        "node{i} read {tag}: {}",
        violation.expect("only violations get here")
    );
    // Printed as it happens (the test fails at the end), so it shows among the other lines.
    eprintln!("VIOLATION: {v}");
    hist.violations.push(v.clone());
    Read::Bad(v)
}

/// The blobs of one image, pushed once and shared by the manifests built on them.
struct Blobs {
    config: (String, usize),
    layer: (String, usize),
}

fn push_blobs(reg: &Registry, seed: u64) -> Blobs {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": [format!("/bin/app-{seed}")] },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .expect("json");
    let layer = noise(seed, 50_000 + seed as usize);
    let push = |bytes: &[u8]| {
        let digest = reg
            .push_blob_chunked(REPO, bytes, &[bytes.len() / 2])
            .unwrap_or_else(|e| panic!("pushing a blob of image {seed}: {e}"));
        (digest, bytes.len())
    };
    Blobs {
        config: push(&config),
        layer: push(&layer),
    }
}

/// A manifest on `blobs`, made unique by `note`.
fn manifest(blobs: &Blobs, note: &str) -> Vec<u8> {
    let d = |media_type: &str, (digest, size): &(String, usize)| serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size });
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": d(oci::CONFIG, &blobs.config),
        "layers": [d(oci::LAYER_TAR, &blobs.layer)],
        "annotations": { "ipcr.test/note": note },
    }))
    .expect("json")
}

/// `PUT` `bytes` as tag `tag` through `base`, recorded in the history; the status, the
/// `Retry-After` header and how long the answer took.
fn put_tag(
    h: &Shared,
    http: &Client,
    base: &str,
    tag: &str,
    bytes: &[u8],
    isolated: bool,
) -> (StatusCode, Option<String>, Duration) {
    let digest = sha256_digest(bytes);
    lock(h)
        .tags
        .entry(tag.to_string())
        .or_default()
        .writes
        .push((digest.clone(), Outcome::Pending));
    let started = Instant::now();
    let r = http
        .put(format!("{base}/v2/{REPO}/manifests/{tag}"))
        .header("Content-Type", oci::MANIFEST)
        .body(bytes.to_vec())
        .send();
    let took = started.elapsed();
    let (status, retry_after) = match r {
        Ok(r) => (
            r.status(),
            r.headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ),
        Err(e) => panic!("PUT {tag} through {base}: {e}"),
    };
    let outcome = match status {
        StatusCode::CREATED => Outcome::Acked,
        _ if isolated => Outcome::Refused,
        _ => Outcome::Unknown,
    };
    let mut hist = lock(h);
    let t = hist.tags.get_mut(tag).expect("recorded above");
    let w = t
        .writes
        .iter_mut()
        .rev()
        .find(|(d, _)| *d == digest)
        .expect("recorded above");
    w.1 = outcome;
    (status, retry_after, took)
}

/// Write through a node of the majority: must be acknowledged.
fn must_write(h: &Shared, http: &Client, base: &str, tag: &str, bytes: &[u8]) -> String {
    let (status, _, took) = put_tag(h, http, base, tag, bytes, false);
    assert_eq!(status, StatusCode::CREATED, "PUT {tag} through {base} ({took:?})");
    sha256_digest(bytes)
}

/// Read `tag` from node `i` until it answers (`503` is retried for [`READ_RETRY`]); must be
/// `want`.
fn must_read(h: &Shared, http: &Client, c: &NsCluster, i: usize, tag: &str, want: &str) {
    let deadline = Instant::now() + READ_RETRY;
    loop {
        match read_tag(h, http, i, &c.nodes[i].base_url(), tag) {
            Read::Digest(d) => {
                assert_eq!(d, want, "node{i} serves {tag}");
                return;
            }
            Read::Bad(v) => panic!("{v}"),
            other => assert!(
                Instant::now() < deadline,
                "node{i} did not serve {tag} within {READ_RETRY:?}: {other:?}"
            ),
        }
    }
}

/// `GET url` on the isolated node: must be `503` with `Retry-After` within [`REFUSED_WITHIN`].
fn must_refuse_read(http: &Client, url: &str) -> Duration {
    let started = Instant::now();
    let r = http
        .get(url)
        .header("Accept", oci::MANIFEST)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let took = started.elapsed();
    let status = r.status();
    let retry_after = r.headers().contains_key("Retry-After");
    let body = r.text().unwrap_or_default();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "GET {url} on the isolated node ({took:?}): {body}"
    );
    assert!(retry_after, "GET {url}: 503 without Retry-After");
    assert!(took <= REFUSED_WITHIN, "GET {url}: 503 only after {took:?}");
    took
}

/// One reader per node, reading every tag in a loop until `stop`.
fn start_readers(h: &Shared, c: &NsCluster, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..c.nodes.len())
        .map(|i| {
            let (h, stop, base) = (h.clone(), stop.clone(), c.nodes[i].base_url());
            std::thread::spawn(move || {
                let http = http();
                let deadline = Instant::now() + READERS_DEADLINE;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    for tag in TAGS.iter().chain([&NEW_TAG]) {
                        read_tag(&h, &http, i, &base, tag);
                    }
                }
            })
        })
        .collect()
}

/// Which node the partition cuts off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Follower,
    Leader,
}

fn partition_one_node(kind: Victim) {
    let started = Instant::now();
    let c = NsCluster::start(3);
    let all = [0, 1, 2];
    let h: Shared = Arc::default();
    let http = http();
    let regs: Vec<Registry> = c.nodes.iter().map(|n| Registry::new(&n.base_url())).collect();

    // Before: one image per tag, each pushed through a different node.
    let mut blobs = Vec::new();
    for (i, tag) in TAGS.iter().enumerate() {
        let b = push_blobs(&regs[i], i as u64 + 1);
        must_write(
            &h,
            &http,
            &c.nodes[i].base_url(),
            tag,
            &manifest(&b, &format!("{tag} v1")),
        );
        blobs.push(b);
    }
    c.wait_caught_up(&all, CATCH_UP_TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let readers = start_readers(&h, &c, &stop);
    for i in all {
        for tag in TAGS {
            let want = lock(&h).tags[tag].last_acked().expect("acked").to_string();
            must_read(&h, &http, &c, i, tag, &want);
        }
    }

    let before = c.wait_leader_among(&all, LEADER_TIMEOUT);
    let leader = c
        .index_of(before.leader.expect("a leader"))
        .expect("the leader's index");
    let victim = match kind {
        Victim::Leader => leader,
        Victim::Follower => all.into_iter().find(|&i| i != leader).expect("a follower"),
    };
    let majority: Vec<usize> = all.into_iter().filter(|&i| i != victim).collect();
    eprintln!(
        "{kind:?}: cutting off node{victim} (leader node{leader}, term {}) at {:?}",
        before.term,
        started.elapsed()
    );
    c.lab.isolate(victim);

    // The majority keeps its leader (follower cut off) or elects one among itself.
    let during = c.wait_leader_among(&majority, LEADER_TIMEOUT);
    match kind {
        Victim::Follower => assert_eq!(
            during.leader, before.leader,
            "the majority changed leader when a follower was cut off"
        ),
        Victim::Leader => assert!(
            during.term > before.term,
            "a new leader without a new term: {during:?}"
        ),
    }
    eprintln!(
        "{kind:?}: majority leader {:?} in term {} at {:?}",
        during.leader,
        during.term,
        started.elapsed()
    );

    // The majority re-tags `a` to a new manifest on new blobs and pushes a new tag.
    let (m0, m1) = (majority[0], majority[1]);
    let fresh = push_blobs(&regs[m0], 10);
    let a2 = must_write(&h, &http, &c.nodes[m0].base_url(), "a", &manifest(&fresh, "a v2"));
    let d1 = must_write(
        &h,
        &http,
        &c.nodes[m1].base_url(),
        NEW_TAG,
        &manifest(&blobs[1], "d v1"),
    );
    for &i in &majority {
        must_read(&h, &http, &c, i, "a", &a2);
        must_read(&h, &http, &c, i, NEW_TAG, &d1);
    }

    // The isolated node refuses a write (re-tagging `b`) and a blob upload, and answers reads
    // of what it may not know about with 503: neither its old `a` nor a 404 for what it never
    // saw. All at once, each within its own bound.
    let victim_base = c.nodes[victim].base_url();
    let refused_b = manifest(&blobs[1], "b from the minority");
    let (put_took, upload_took, read_took) = std::thread::scope(|s| {
        let put = s.spawn(|| {
            let (status, retry_after, took) = put_tag(&h, &http, &victim_base, "b", &refused_b, true);
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "PUT b on the isolated node ({took:?})"
            );
            assert!(retry_after.is_some(), "503 without Retry-After");
            assert!(took <= REFUSED_WITHIN, "PUT b refused only after {took:?}");
            took
        });
        let upload = s.spawn(|| {
            let started = Instant::now();
            let upload = regs[victim].push_blob_chunked(REPO, &noise(99, 1000), &[]);
            let took = started.elapsed();
            match upload {
                Ok(d) => panic!("the isolated node acknowledged blob {d}"),
                Err(e) => assert!(e.contains("503"), "blob upload on the isolated node: {e}"),
            }
            assert!(took <= REFUSED_WITHIN, "blob upload refused only after {took:?}");
            took
        });
        let reads: Vec<_> = [
            "manifests/a".to_string(),
            format!("manifests/{NEW_TAG}"),
            format!("manifests/{a2}"),
            format!("blobs/{}", fresh.layer.0),
            "tags/list".to_string(),
        ]
        .into_iter()
        .map(|path| {
            let (http, url) = (&http, format!("{victim_base}/v2/{REPO}/{path}"));
            s.spawn(move || must_refuse_read(http, &url))
        })
        .collect();
        let join = |t: std::thread::ScopedJoinHandle<'_, Duration>| {
            t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        };
        (
            join(put),
            join(upload),
            reads.into_iter().map(join).collect::<Vec<_>>(),
        )
    });
    eprintln!(
        "{kind:?}: node{victim} refused a manifest PUT in {put_took:?}, a blob upload in \
         {upload_took:?}, reads in {read_took:?}"
    );

    // Heal: it catches up and serves the new data; writes through it work again.
    c.lab.heal(victim);
    let healed = Instant::now();
    let after = c.wait_leader_among(&all, LEADER_TIMEOUT);
    let applied = c.wait_caught_up(&all, CATCH_UP_TIMEOUT);
    eprintln!(
        "{kind:?}: healed; leader {:?} in term {}, node{victim} applied {applied} after {:?}",
        after.leader,
        after.term,
        healed.elapsed()
    );
    must_read(&h, &http, &c, victim, "a", &a2);
    must_read(&h, &http, &c, victim, NEW_TAG, &d1);
    let c2 = must_write(
        &h,
        &http,
        &victim_base,
        "c",
        &manifest(&fresh, "c v2 after the heal"),
    );

    // Every node serves the last acknowledged digest of every tag.
    for i in all {
        for tag in TAGS.iter().chain([&NEW_TAG]) {
            let want = lock(&h).tags[*tag].last_acked().expect("acked").to_string();
            must_read(&h, &http, &c, i, tag, &want);
        }
        must_read(&h, &http, &c, i, "c", &c2);
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().expect("reader thread");
    }

    let hist = lock(&h);
    // A read may have returned a write while it was pending: the refusal came later.
    let refused: Vec<&String> = hist
        .tags
        .values()
        .flat_map(|t| t.writes.iter())
        .filter(|(_, o)| *o == Outcome::Refused)
        .map(|(d, _)| d)
        .collect();
    let leaked: Vec<_> = hist
        .seen
        .keys()
        .filter(|(_, _, d)| refused.contains(&d))
        .collect();
    eprintln!(
        "{kind:?}: reads per node {:?}; {} distinct (node, tag, digest) seen; {:?} in all",
        hist.tally,
        hist.seen.len(),
        started.elapsed()
    );
    assert!(leaked.is_empty(), "refused writes were served: {leaked:?}");
    assert!(
        hist.violations.is_empty(),
        "{} bad reads:\n{}",
        hist.violations.len(),
        hist.violations.join("\n")
    );
    for &i in &majority {
        assert!(hist.tally[&i].ok > 0, "node{i} served no read");
    }
}

#[test]
fn an_isolated_follower_refuses_and_catches_up() {
    if !require_netns() {
        return;
    }
    partition_one_node(Victim::Follower);
}

#[test]
fn an_isolated_leader_is_replaced_and_catches_up() {
    if !require_netns() {
        return;
    }
    partition_one_node(Victim::Leader);
}
