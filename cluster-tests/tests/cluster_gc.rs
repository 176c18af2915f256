//! Online garbage collection through real node processes (issue 11):
//! - for a minute, two writers push images (layers first, the manifest 1 to 2 s later or, for
//!   some, after the grace period; layers shared between images and repositories), delete and
//!   move tags and delete manifests, while two loops run `ipcr-node gc --grace 3s
//!   --delete-untagged` through rotating nodes: a manifest racing a collection is acknowledged
//!   or refused with `MANIFEST_BLOB_UNKNOWN` (then pushed again), every tag still listed is
//!   exactly what was acknowledged and pulls completely (HTTP and `skopeo copy` into an OCI
//!   layout); after a final collection with grace 0 nothing unreferenced is served and the
//!   disks hold exactly the live blobs;
//! - `kill -9` of the leader while it runs a collection of about 1800 blob links: the next
//!   leader finishes it once its lease expired, kept images pull, and the killed node, back,
//!   sheds what was collected;
//! - a follower stopped during a collection removes its copies once back, with no other
//!   collection; index children and referrers of kept images stay, the referrer of a deleted
//!   image and an orphan manifest go, and the report counts exactly what went;
//! - scheduled collections (`storage.maintenance.gc`) reclaim on the leader with no operator.
//!
//! The clusters keep 3 replicas on 3 nodes, so every live blob has one file on every node and
//! the disks compare with the live blobs byte for byte. With 2 replicas of 3 nodes, which nodes
//! hold a blob depends on each upload's placement (a blob pushed twice may gain a third holder)
//! and on reads that keep a copy, and no endpoint lists the holders.
//!
//! The tests of this file run one at a time: each starts three nodes and loads them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cluster_tests::clients::must_skopeo_copy;
use cluster_tests::cluster::status_within;
use cluster_tests::gc::{self, Api, GcArgs, MANIFEST_BLOB_UNKNOWN};
use cluster_tests::oci::{INDEX, Layout, MANIFEST, noise};
use cluster_tests::pushes::{self, Blob, Image, Pushed, blob};
use cluster_tests::tools::require_tool;
use cluster_tests::{Cluster, Node};
use ipcr_proto::gc::{GcReport, RepoTally};

/// Every cluster of this file: 3 replicas, so that every node holds every live blob.
const ENV: [(&str, &str); 1] = [("REGISTRY_STORAGE_REPLICAS", "3")];
/// Copies of each live blob over the three nodes.
const COPIES: usize = 3;
/// How long the disks may take to shed what a collection removed (the janitor runs every few
/// seconds and right after a collection).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a dead node's collection may hold its lease (30 s) before the leader finishes it.
const LEASE_TIMEOUT: Duration = Duration::from_secs(75);

/// How long the writers of the first test push and delete.
const WRITE_FOR: Duration = Duration::from_secs(60);
/// Writers, each in repositories of its own.
const WRITERS: usize = 2;
/// Upper bound on each writer's images (the clock stops them first).
const MAX_IMAGES: usize = 60;
/// Loops running collections at the same time.
const COLLECTORS: usize = 2;
/// Layers shared between images and repositories.
const SHARED_LAYERS: usize = 6;
/// Collections that must succeed while the writers write.
const MIN_COLLECTIONS: usize = 3;

/// Images of garbage in the leader-kill test, and layers of each: enough blob links that a
/// collection takes several steps.
const GARBAGE_IMAGES: usize = 30;
const GARBAGE_LAYERS: usize = 60;
/// The leader is killed once its collection shows in the status, or after this at the latest.
const KILL_AT_THE_LATEST: Duration = Duration::from_secs(2);

/// One test at a time (see the module header). A failed test poisons the lock; the next one
/// still runs.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A client of every node's registry port, in node order.
fn apis(cluster: &Cluster) -> Vec<Api> {
    cluster.nodes.iter().map(|n| Api::new(&n.base_url())).collect()
}

/// A small deterministic generator (xorshift), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `GET <path>` on `api` must answer `want`.
fn must_status(api: &Api, path: &str, want: u16) {
    let got = api.get_status(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, want, "GET {}{path}", api.base());
}

/// `DELETE /v2/<repo>/manifests/<reference>` must answer `202`.
fn must_delete(api: &Api, repo: &str, reference: &str) {
    let got = api
        .delete_manifest(repo, reference)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, 202, "DELETE {repo}:{reference} through {}", api.base());
}

/// Nothing of `gone` is served by `api` any more, except what `live` still references: its
/// manifest answers `404`, and so does each of its blobs no live manifest of its repository
/// names.
fn must_not_serve(api: &Api, gone: &[&Pushed], live: &[&Pushed]) {
    let live_manifests: BTreeSet<(&str, &str)> = live
        .iter()
        .map(|p| (p.repo.as_str(), p.digest.as_str()))
        .collect();
    let live_links: BTreeSet<(&str, &str)> = live
        .iter()
        .flat_map(|p| p.blobs.iter().map(|(d, _)| (p.repo.as_str(), d.as_str())))
        .collect();
    let mut checked = BTreeSet::new();
    for p in gone {
        let (repo, digest) = (p.repo.as_str(), p.digest.as_str());
        if !live_manifests.contains(&(repo, digest)) && checked.insert((repo, digest)) {
            must_status(api, &format!("/v2/{repo}/manifests/{digest}"), 404);
        }
        for (d, _) in &p.blobs {
            if !live_links.contains(&(repo, d.as_str())) && checked.insert((repo, d.as_str())) {
                must_status(api, &format!("/v2/{repo}/blobs/{d}"), 404);
            }
        }
    }
}

/// `skopeo copy` of `image` from `host` into an OCI layout under `work`: the manifest's
/// digest and every blob (digest and bytes) must be what was pushed.
fn must_pull_with_skopeo(skopeo: &Path, host: &str, image: &Pushed, work: &Path) {
    let dir = work.join(image.repo.replace('/', "_"));
    if !dir.exists() {
        Layout::create(&dir);
    }
    let tag = &image.tag;
    must_skopeo_copy(
        skopeo,
        false,
        &format!("docker://{host}/{}:{tag}", image.repo),
        &format!("oci:{}:{tag}", dir.display()),
    );
    let layout = Layout::open(&dir);
    let root = layout.must_resolve(tag);
    assert_eq!(root.digest, image.digest, "{}:{tag} pulled by skopeo", image.repo);
    let got = layout.must_reachable(&root);
    let want: BTreeSet<&String> = std::iter::once(&image.digest)
        .chain(image.blobs.iter().map(|(d, _)| d))
        .collect();
    assert_eq!(
        got.keys().collect::<BTreeSet<_>>(),
        want,
        "content of {}:{tag} pulled by skopeo",
        image.repo
    );
    for (d, bytes) in &image.blobs {
        assert!(got[d] == **bytes, "{}:{tag}: blob {d} differs", image.repo);
    }
}

/// What one writer did, and what the registry must hold because of it.
#[derive(Default)]
struct Written {
    /// The tags present: `(repository, tag)` → the image it names.
    tags: BTreeMap<(String, String), Pushed>,
    /// Images no tag names any more (tag deleted or moved, or manifest deleted).
    dropped: Vec<Pushed>,
    images: usize,
    overwrites: usize,
    tag_deletes: usize,
    manifest_deletes: usize,
    /// Manifest pushes refused with `MANIFEST_BLOB_UNKNOWN`, retried after the blobs again.
    blob_unknown: usize,
    /// Other failed requests, retried.
    failures: Vec<String>,
}

/// The nodes' registry ports, taken in turn, one request after the other.
struct Turns {
    apis: Vec<Api>,
    turn: usize,
}

impl Turns {
    fn next(&mut self) -> &Api {
        self.turn += 1;
        &self.apis[self.turn % self.apis.len()]
    }
}

/// Upload every blob of `image` into `repo`, alternately monolithic and in two chunks.
fn upload(to: &mut Turns, repo: &str, image: &Image, failures: &mut Vec<String>) -> Result<(), String> {
    for (j, (digest, bytes)) in image.blobs.iter().enumerate() {
        let what = format!("blob {repo}@{digest}");
        let got = gc::retry(&what, 10, failures, |_| {
            let api = to.next();
            if j % 2 == 0 {
                api.push_blob(repo, bytes)
            } else {
                api.registry().push_blob_chunked(repo, bytes, &[bytes.len() / 2])
            }
        })?;
        if &got != digest {
            return Err(format!("{what} acknowledged as {got}"));
        }
    }
    Ok(())
}

/// `DELETE` of a manifest the registry acknowledged: `202`, retried on transport errors and
/// 5xx. A `404` is a lost manifest (unless an earlier attempt may have deleted it).
fn delete(to: &mut Turns, repo: &str, reference: &str, failures: &mut Vec<String>) -> Result<(), String> {
    let mut maybe_done = false;
    for attempt in 1..=8 {
        match to.next().delete_manifest(repo, reference) {
            Ok(202) => return Ok(()),
            Ok(404) if maybe_done => return Ok(()),
            Ok(404) => {
                return Err(format!(
                    "DELETE {repo}:{reference}: 404, an acknowledged manifest is gone"
                ));
            }
            Ok(s) => {
                maybe_done |= s >= 500;
                failures.push(format!("DELETE {repo}:{reference} (attempt {attempt}): {s}"));
            }
            Err(e) => {
                maybe_done = true;
                failures.push(format!("{e} (attempt {attempt})"));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("DELETE {repo}:{reference} failed 8 times"))
}

/// Writer `w`: image after image until `until`, in repositories `gc/w<w>/r0..2`, each with a
/// layer of its own and one or two of `shared`; the manifest 1 to 2 s after the layers (every
/// sixth 3.5 to 4.5 s after, beyond the grace period), by a tag of its own or (every fifth
/// image) by a tag the repository already has. Every fourth image a tag is deleted, every
/// fifth a manifest by digest.
fn write(w: usize, apis: Vec<Api>, shared: Vec<Blob>, until: Instant) -> Result<Written, String> {
    let mut out = Written::default();
    let mut rng = Rng::new(w as u64 + 17);
    let mut to = Turns { apis, turn: w };
    for k in 0..MAX_IMAGES {
        if Instant::now() >= until {
            break;
        }
        let seed = (w * 1000 + k) as u64 + 1;
        let repo = format!("gc/w{w}/r{}", k % 3);
        let in_repo: Vec<String> = out
            .tags
            .keys()
            .filter(|(r, _)| *r == repo)
            .map(|(_, t)| t.clone())
            .collect();
        let tag = if k % 5 == 4 && !in_repo.is_empty() {
            in_repo[rng.below(in_repo.len())].clone()
        } else {
            format!("i{k}")
        };
        let mut layers = vec![blob(noise(seed, 8192 + rng.below(8) * 4096))];
        for _ in 0..1 + rng.below(2) {
            let s = shared[rng.below(shared.len())].clone();
            if !layers.contains(&s) {
                layers.push(s);
            }
        }
        let image = pushes::image_of(seed, &layers);
        upload(&mut to, &repo, &image, &mut out.failures)?;
        // Every sixth manifest comes after the grace period: collections race it.
        let late = if k % 6 == 5 { 2500 } else { 0 };
        std::thread::sleep(Duration::from_millis(1000 + late + rng.below(1000) as u64));
        let mut acked = false;
        for attempt in 1..=8 {
            match to
                .next()
                .registry()
                .put_manifest(&repo, &tag, MANIFEST, &image.manifest)
            {
                Ok(_) => {
                    acked = true;
                    break;
                }
                Err(e) if e.contains(MANIFEST_BLOB_UNKNOWN) && e.contains("status 400") => {
                    out.blob_unknown += 1;
                    upload(&mut to, &repo, &image, &mut out.failures)?;
                }
                Err(e) => {
                    out.failures.push(format!("{e} (attempt {attempt})"));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        if !acked {
            return Err(format!(
                "manifest {repo}:{tag} never acknowledged: {:?}",
                out.failures
            ));
        }
        out.images += 1;
        if let Some(old) = out
            .tags
            .insert((repo.clone(), tag.clone()), gc::pushed(&repo, &tag, &image))
        {
            out.overwrites += 1;
            out.dropped.push(old);
        }
        for (every, by_digest) in [(4, false), (5, true)] {
            if k % every != every - 1 || out.tags.is_empty() {
                continue;
            }
            let key = out
                .tags
                .keys()
                .nth(rng.below(out.tags.len()))
                .expect("a tag")
                .clone();
            let victim = out.tags.remove(&key).expect("present");
            let reference = if by_digest { &victim.digest } else { &victim.tag };
            delete(&mut to, &victim.repo, reference, &mut out.failures)?;
            if by_digest {
                out.manifest_deletes += 1;
            } else {
                out.tag_deletes += 1;
            }
            out.dropped.push(victim);
        }
    }
    Ok(out)
}

/// What a loop of collections saw.
#[derive(Default)]
struct Collected {
    reports: Vec<GcReport>,
    /// Runs refused because another collection was running.
    busy: usize,
    /// Runs that failed otherwise.
    failures: Vec<String>,
}

/// Collector `id`: `ipcr-node gc --grace 3s --delete-untagged` through the nodes in turn,
/// until `stop`.
fn run_collections(id: usize, urls: Vec<String>, stop: Arc<AtomicBool>) -> Collected {
    let args = GcArgs::grace(3).delete_untagged();
    let deadline = Instant::now() + WRITE_FOR + Duration::from_secs(120);
    let mut out = Collected::default();
    std::thread::sleep(Duration::from_millis(1500 * id as u64));
    let mut turn = id;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match gc::run_gc(&urls[turn % urls.len()], &args) {
            Ok(r) => {
                gc::must_be_consistent(&r, &args);
                if r.totals.blobs + r.totals.manifests > 0 {
                    eprintln!("collector {id}: {}", gc::describe(&r));
                }
                out.reports.push(r);
            }
            Err(e) if gc::is_busy(&e) => out.busy += 1,
            Err(e) => out.failures.push(e),
        }
        turn += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    out
}

#[test]
fn collections_during_pushes_lose_nothing_and_leave_nothing() {
    let _serial = serial();
    let cluster = Cluster::start(3, &ENV);
    let apis = apis(&cluster);
    let urls: Vec<String> = cluster.nodes.iter().map(Node::cluster_url).collect();
    let shared: Vec<Blob> = (0..SHARED_LAYERS)
        .map(|i| blob(noise(900_000 + i as u64, 20_000 + i * 3000)))
        .collect();
    let until = Instant::now() + WRITE_FOR;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (apis, shared) = (apis.clone(), shared.clone());
            std::thread::spawn(move || write(w, apis, shared, until))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let collectors: Vec<_> = (0..COLLECTORS)
        .map(|id| {
            let (urls, stop) = (urls.clone(), stop.clone());
            std::thread::spawn(move || run_collections(id, urls, stop))
        })
        .collect();
    let written: Vec<Written> = writers
        .into_iter()
        .map(|h| {
            h.join()
                .expect("writer thread")
                .unwrap_or_else(|e| panic!("writer: {e}"))
        })
        .collect();
    stop.store(true, Ordering::SeqCst);
    let collected: Vec<Collected> = collectors
        .into_iter()
        .map(|h| h.join().expect("collector thread"))
        .collect();

    let sum = |f: fn(&Written) -> usize| written.iter().map(f).sum::<usize>();
    let reports: Vec<&GcReport> = collected.iter().flat_map(|c| &c.reports).collect();
    let busy: usize = collected.iter().map(|c| c.busy).sum();
    eprintln!(
        "writers: {} images, {} tags left, {} tags moved, {} tags deleted, {} manifests deleted, {} manifest \
         pushes refused with MANIFEST_BLOB_UNKNOWN and retried, {} other failures retried; \
         collections: {} succeeded, {busy} refused as another was running, {} blob links and {} \
         blobs removed",
        sum(|w| w.images),
        sum(|w| w.tags.len()),
        sum(|w| w.overwrites),
        sum(|w| w.tag_deletes),
        sum(|w| w.manifest_deletes),
        sum(|w| w.blob_unknown),
        sum(|w| w.failures.len()),
        reports.len(),
        reports.iter().map(|r| r.totals.blobs).sum::<u64>(),
        reports.iter().map(|r| r.tally.blobs_removed).sum::<u64>(),
    );
    let failed: Vec<&String> = collected.iter().flat_map(|c| &c.failures).collect();
    assert!(
        failed.is_empty(),
        "collections failed otherwise than busy: {failed:#?}"
    );
    assert!(
        reports.len() >= MIN_COLLECTIONS,
        "only {} collections succeeded during the pushes",
        reports.len()
    );

    // Every tag listed is one the writers hold, and names what they pushed.
    let tags: BTreeMap<(String, String), Pushed> = written.iter().flat_map(|w| w.tags.clone()).collect();
    let dropped: Vec<&Pushed> = written.iter().flat_map(|w| &w.dropped).collect();
    let listed = apis[0].listed_tags().unwrap_or_else(|e| panic!("{e}"));
    let expected: BTreeSet<(String, String)> = tags.keys().cloned().collect();
    assert_eq!(
        listed.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "tags listed that the writers deleted or never pushed"
    );
    assert_eq!(
        expected.difference(&listed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "acknowledged tags missing"
    );
    for (i, p) in tags.values().enumerate() {
        let api = &apis[i % apis.len()];
        pushes::must_serve(api.registry(), api.base(), p);
    }
    if let Some(skopeo) = require_tool("skopeo") {
        let work = tempfile::tempdir().expect("tempdir");
        for (i, p) in tags.values().enumerate() {
            must_pull_with_skopeo(&skopeo, &cluster.nodes[i % 3].host(), p, work.path());
        }
    }

    // A last collection with no grace: nothing unreferenced is served, and the disks hold
    // exactly the live blobs.
    let last = gc::must_gc(&urls[1], &GcArgs::grace(0).delete_untagged());
    eprintln!("final: {}", gc::describe(&last));
    let live: Vec<&Pushed> = tags.values().collect();
    must_not_serve(&apis[2], &dropped, &live);
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    gc::wait_converged(
        &nodes,
        &gc::live_blobs(live.iter().copied()),
        COPIES,
        CONVERGE_TIMEOUT,
    );
    let status = cluster.status(0).expect("status");
    let recorded = status.gc.last.expect("the last collection in the status");
    assert_eq!(recorded.run, last.run, "the status's last collection");
    assert_eq!(recorded.totals, last.totals, "totals in the status");
    assert!(
        recorded.tally.repositories.is_empty(),
        "the status keeps totals only: {recorded:?}"
    );
    assert!(status.gc.running.is_none(), "{:?}", status.gc.running);
}

/// `n` images of `layers` layers of 512 bytes each, from `seed` on, in `gc/garbage<i % 3>`.
fn garbage(n: usize, layers: usize, seed: u64) -> Vec<(String, Image)> {
    (0..n)
        .map(|i| {
            let s = seed + (i * (layers + 1)) as u64;
            let own: Vec<Blob> = (0..layers).map(|l| blob(noise(s + l as u64 + 1, 512))).collect();
            (format!("gc/garbage{}", i % 3), pushes::image_of(s, &own))
        })
        .collect()
}

/// Push every image of `images` by tag `g<i>` (blobs on 8 threads), then delete each
/// manifest by digest. Answers what was pushed.
fn push_then_delete(apis: &[Api], images: &[(String, Image)]) -> Vec<Pushed> {
    let jobs: Vec<(usize, usize)> = images
        .iter()
        .enumerate()
        .flat_map(|(i, (_, img))| (0..img.blobs.len()).map(move |b| (i, b)))
        .collect();
    gc::in_parallel(jobs.len(), 8, |j| {
        let (i, b) = jobs[j];
        let (repo, img) = &images[i];
        let what = format!("blob {repo}@{}", img.blobs[b].0);
        gc::retry(&what, 10, &mut Vec::new(), |a| {
            apis[(j + a) % apis.len()].push_blob(repo, &img.blobs[b].1)
        })
    })
    .unwrap_or_else(|e| panic!("pushing the garbage's blobs: {e}"));
    let mut pushed = Vec::new();
    for (i, (repo, img)) in images.iter().enumerate() {
        let image = gc::must_push(
            apis,
            repo,
            &format!("g{i}"),
            &Image {
                blobs: Vec::new(),
                manifest: img.manifest.clone(),
            },
            MANIFEST,
        );
        must_delete(&apis[i % apis.len()], repo, &image.digest);
        pushed.push(gc::pushed(repo, &image.tag, img));
    }
    pushed
}

/// Three images of three layers in `gc/kept`, tagged `k0..k2`.
fn push_kept(apis: &[Api], seed: u64) -> Vec<Pushed> {
    (0..3u64)
        .map(|i| {
            let layers: Vec<Blob> = (0..3).map(|l| blob(noise(seed + i * 10 + l, 30_000))).collect();
            let image = pushes::image_of(seed + i * 10, &layers);
            gc::must_push(apis, "gc/kept", &format!("k{i}"), &image, MANIFEST)
        })
        .collect()
}

#[test]
fn leader_killed_mid_collection_is_finished_by_the_next_leader() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, &ENV);
    let apis = apis(&cluster);
    let kept = push_kept(&apis, 7000);
    let doomed = push_then_delete(&apis, &garbage(GARBAGE_IMAGES, GARBAGE_LAYERS, 10_000));
    let live = gc::live_blobs(&kept);
    let leader = cluster.wait_leader();
    let leader_id = cluster.status(leader).expect("the leader's status").id;
    let leader_url = cluster.nodes[leader].cluster_url();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let survivor_urls: Vec<String> = survivors
        .iter()
        .map(|&i| cluster.nodes[i].cluster_url())
        .collect();

    // The collection starts on the leader, which is killed as soon as it shows running.
    cluster.nodes[leader]
        .process()
        .note("gc started; killed once it runs");
    let cli = {
        let url = leader_url.clone();
        std::thread::spawn(move || gc::run_gc(&url, &GcArgs::grace(0)))
    };
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < KILL_AT_THE_LATEST && !cli.is_finished() {
        if let Ok(s) = status_within(&leader_url, Duration::from_secs(1))
            && let Some(run) = s.gc.running
        {
            assert_eq!(run.node, leader_id, "the collection runs where it was asked for");
            seen = Some(run);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.nodes[leader].kill9();
    eprintln!(
        "leader killed {:?} after the collection was asked for; seen running: {:?}",
        started.elapsed(),
        seen.as_ref().map(|r| &r.run)
    );
    match cli.join().expect("the gc thread") {
        Ok(r) => eprintln!(
            "the killed leader's collection still finished: {}",
            gc::describe(&r)
        ),
        Err(e) => eprintln!("the killed leader's collection failed, as it may: {e}"),
    }

    // The next leader finishes the collection once its lease expired.
    cluster.wait_leader();
    let statuses = gc::wait_gc_idle(&survivor_urls, LEASE_TIMEOUT);
    let alive: Vec<&Node> = survivors.iter().map(|&i| &cluster.nodes[i]).collect();
    let run = seen
        .as_ref()
        .expect("the collection was seen running before the kill");
    // Finished by the next leader: run again with the same options (a run of its own),
    // unless the killed leader had finished it first.
    for s in &statuses {
        let last = s.gc.last.as_ref().expect("the finished collection in the status");
        assert!(
            last.run == run.run || (last.node != leader_id && last.options == run.options),
            "node {}: the last collection is neither the one killed nor its continuation: {last:?}",
            s.id
        );
        eprintln!("finished by node {}: {}", last.node, gc::describe(last));
    }
    // Finished means done, before any other collection: the garbage is gone.
    must_not_serve(&apis[survivors[0]], &doomed.iter().collect::<Vec<_>>(), &[]);
    gc::wait_converged(&alive, &live, 2, CONVERGE_TIMEOUT);
    // No lease is left behind: another collection runs at once.
    let again = gc::must_gc(&survivor_urls[0], &GcArgs::grace(0));
    eprintln!("after the kill: {}", gc::describe(&again));
    for &i in &survivors {
        for p in &kept {
            pushes::must_serve(apis[i].registry(), cluster.nodes[i].name(), p);
        }
    }
    must_not_serve(&apis[survivors[1]], &doomed.iter().collect::<Vec<_>>(), &[]);
    gc::wait_converged(&alive, &live, 2, CONVERGE_TIMEOUT);

    // The killed node, back, sheds what was collected while it was dead.
    cluster.nodes[leader].restart();
    cluster.wait_voters(3);
    let last = gc::must_gc(&cluster.nodes[leader].cluster_url(), &GcArgs::grace(0));
    eprintln!("with every node back: {}", gc::describe(&last));
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    gc::wait_converged(&nodes, &live, COPIES, CONVERGE_TIMEOUT);
    for p in &kept {
        pushes::must_serve(apis[leader].registry(), cluster.nodes[leader].name(), p);
    }
}

#[test]
fn node_down_during_a_collection_removes_its_copies_when_back() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, &ENV);
    let apis = apis(&cluster);
    let down = (cluster.wait_leader() + 1) % 3;
    let up: Vec<usize> = (0..3).filter(|&i| i != down).collect();
    let (repo, other) = ("gc/down", "gc/down-other");
    let shared = blob(noise(3001, 40_000));
    let own = |seed: u64, len: usize| blob(noise(seed, len));
    let by_digest = |img: &Image| cluster_tests::sha256_digest(&img.manifest);
    let push =
        |repo: &str, reference: &str, img: &Image| gc::must_push(&apis, repo, reference, img, MANIFEST);
    // Kept: a tagged image, one that only a tagged index reaches, a referrer of the first.
    let a = push(
        repo,
        "a",
        &pushes::image_of(3100, &[shared.clone(), own(3101, 30_000)]),
    );
    let b_image = pushes::image_of(3200, &[own(3201, 30_000)]);
    let b = push(repo, &by_digest(&b_image), &b_image);
    let index = Image {
        blobs: Vec::new(),
        manifest: gc::index(&[&a.manifest, &b.manifest]),
    };
    let multi = gc::must_push(&apis, repo, "multi", &index, INDEX);
    let sig_a_image = gc::referrer(3300, &a.manifest);
    let sig_a = push(repo, &by_digest(&sig_a_image), &sig_a_image);
    // Doomed: an image deleted by digest and its referrer, an image of another repository
    // sharing a layer with `a` (deleted by digest), and a manifest nothing reaches.
    let d = push(
        repo,
        "d",
        &pushes::image_of(3400, &[own(3401, 30_000), own(3402, 20_000)]),
    );
    let sig_d_image = gc::referrer(3500, &d.manifest);
    let sig_d = push(repo, &by_digest(&sig_d_image), &sig_d_image);
    let e = push(
        other,
        "e",
        &pushes::image_of(3600, &[shared.clone(), own(3601, 25_000)]),
    );
    let u_image = pushes::image_of(3700, &[own(3701, 15_000)]);
    let u = push(repo, &by_digest(&u_image), &u_image);
    let kept = [&a, &b, &multi, &sig_a];
    let live = gc::live_blobs(kept);

    cluster.nodes[down].sigterm();
    cluster.nodes[down].wait_exit(Duration::from_secs(60));
    must_delete(&apis[up[0]], repo, &d.digest);
    must_delete(&apis[up[1]], other, &e.digest);
    let report = gc::must_gc(
        &cluster.nodes[up[0]].cluster_url(),
        &GcArgs::grace(0).delete_untagged(),
    );
    eprintln!("{}", gc::describe(&report));

    // The report counts exactly what went: the referrer of `d` and the orphan `u` deleted;
    // the blobs of `d`, `sig_d`, `e` and `u` unlinked from their repositories; of those, all
    // but the shared layer and the empty config (still named by `a` and `sig_a`) removed.
    let size = |blobs: &[&Blob]| blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
    let in_repo: Vec<&Blob> = d.blobs.iter().chain(&u.blobs).chain(&sig_d.blobs[1..]).collect();
    let in_other: Vec<&Blob> = e.blobs.iter().collect();
    let tally = |manifests, blobs: &[&Blob]| RepoTally {
        tags: 0,
        manifests,
        blobs: blobs.len() as u64,
        bytes: size(blobs),
    };
    let expected: BTreeMap<String, RepoTally> = [
        (repo.to_string(), tally(2, &in_repo)),
        (other.to_string(), tally(0, &in_other)),
    ]
    .into();
    assert_eq!(report.tally.repositories, expected, "per repository");
    let removed: Vec<&Blob> = in_repo
        .iter()
        .chain(&in_other)
        .copied()
        .filter(|(d, _)| !live.contains_key(d))
        .collect();
    let t = &report.tally;
    assert_eq!(
        (t.blobs_removed, t.bytes_removed, t.disk_bytes_removed, t.refused),
        (
            removed.len() as u64,
            size(&removed),
            size(&removed) * COPIES as u64,
            0
        ),
        "blobs removed (the stopped node's copies counted)"
    );

    // The nodes up shed their copies at once; the stopped node still has its own.
    let alive: Vec<&Node> = up.iter().map(|&i| &cluster.nodes[i]).collect();
    gc::wait_converged(&alive, &live, 2, CONVERGE_TIMEOUT);
    let stale = gc::blob_files(&cluster.nodes[down].data_dir());
    assert!(
        removed.iter().all(|(d, _)| stale.contains_key(d)),
        "the stopped node lost copies while it was down"
    );
    for &i in &up {
        for p in kept {
            pushes::must_serve(apis[i].registry(), cluster.nodes[i].name(), p);
        }
        must_not_serve(&apis[i], &[&d, &sig_d, &e, &u], &kept);
        must_status(&apis[i], &format!("/v2/{repo}/blobs/{}", shared.0), 200);
    }

    // Back, it removes its copies by itself: no other collection runs.
    cluster.nodes[down].restart();
    cluster.wait_voters(3);
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    gc::wait_converged(&nodes, &live, COPIES, CONVERGE_TIMEOUT);
    let status = cluster.status(down).expect("status");
    assert_eq!(
        status.gc.last.map(|l| l.run),
        Some(report.run),
        "no collection but the test's"
    );
    for p in kept {
        pushes::must_serve(apis[down].registry(), cluster.nodes[down].name(), p);
    }
}

#[test]
fn scheduled_collections_reclaim_on_the_leader_without_an_operator() {
    let _serial = serial();
    let env = [
        ENV[0],
        ("REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED", "true"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL", "5s"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_GRACE", "2s"),
        ("REGISTRY_STORAGE_MAINTENANCE_GC_DELETE_UNTAGGED", "true"),
    ];
    let mut cluster = Cluster::start(3, &env);
    let apis = apis(&cluster);
    let image = |seed: u64| {
        pushes::image_of(
            seed,
            &[blob(noise(seed + 1, 30_000)), blob(noise(seed + 2, 20_000))],
        )
    };
    let kept = gc::must_push(&apis, "gc/sched", "kept", &image(8000), MANIFEST);
    let untagged = gc::must_push(&apis, "gc/sched", "moved", &image(8100), MANIFEST);
    let deleted = gc::must_push(&apis, "gc/sched", "gone", &image(8200), MANIFEST);
    must_delete(&apis[1], "gc/sched", "moved");
    must_delete(&apis[2], "gc/sched", &deleted.digest);

    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    gc::wait_converged(&nodes, &gc::live_blobs([&kept]), COPIES, CONVERGE_TIMEOUT);
    for api in &apis {
        must_not_serve(api, &[&untagged, &deleted], &[&kept]);
        pushes::must_serve(api.registry(), api.base(), &kept);
    }
    let status = cluster.wait_leader_status();
    let last = status.gc.last.expect("a scheduled collection in the status");
    assert_eq!(
        Some(last.node),
        status.leader,
        "scheduled collections run on the leader"
    );
    assert_eq!(
        (
            last.options.grace_ms,
            last.options.delete_untagged,
            last.options.dry_run
        ),
        (2000, true, false),
        "the configured options"
    );
    assert!(last.tally.repositories.is_empty(), "the status keeps totals only");
}

#[test]
fn retention_keeps_the_newest_tags_of_the_repositories_it_names() {
    let _serial = serial();
    let env = [
        ENV[0],
        (
            "REGISTRY_STORAGE_MAINTENANCE_GC_RETENTION_POLICIES",
            r#"[{repositories: ["ci/**"], keep-newest: 2, keep-tags: ["release-.*"]}]"#,
        ),
    ];
    let cluster = Cluster::start(1, &env);
    let apis = apis(&cluster);
    let url = cluster.nodes[0].cluster_url();
    let image = |seed: u64| pushes::image_of(seed, &[blob(noise(seed + 1, 20_000))]);
    // Pushed in order, so that build-3 and build-4 are the newest; release-1 is the oldest.
    let mut ci = Vec::new();
    for (i, tag) in ["release-1", "build-1", "build-2", "build-3", "build-4"]
        .iter()
        .enumerate()
    {
        ci.push(gc::must_push(
            &apis,
            "ci/app",
            tag,
            &image(9000 + i as u64 * 10),
            MANIFEST,
        ));
        std::thread::sleep(Duration::from_millis(20));
    }
    let prod: Vec<Pushed> = (0..3)
        .map(|i| {
            gc::must_push(
                &apis,
                "prod/app",
                &format!("v{i}"),
                &image(9500 + i * 10),
                MANIFEST,
            )
        })
        .collect();
    let listed = || apis[0].listed_tags().unwrap_or_else(|e| panic!("{e}"));
    let before = listed();

    // A dry run reports the two old builds and changes nothing.
    let mut dry = GcArgs::grace(0).delete_untagged();
    dry.dry_run = true;
    let report = gc::must_gc(&url, &dry);
    let counts = &report.tally.repositories["ci/app"];
    assert_eq!(
        (counts.tags, counts.manifests, counts.blobs),
        (2, 2, 4),
        "{}",
        gc::describe(&report)
    );
    assert!(!report.tally.repositories.contains_key("prod/app"));
    assert_eq!(listed(), before);

    let report = gc::must_gc(&url, &GcArgs::grace(0).delete_untagged());
    eprintln!("{}", gc::describe(&report));
    assert_eq!((report.totals.tags, report.totals.manifests), (2, 2));
    let expected: BTreeSet<(String, String)> = before
        .into_iter()
        .filter(|(repo, tag)| !(repo == "ci/app" && (tag == "build-1" || tag == "build-2")))
        .collect();
    assert_eq!(listed(), expected);
    must_not_serve(&apis[0], &[&ci[1], &ci[2]], &[]);
    let live: Vec<&Pushed> = [&ci[0], &ci[3], &ci[4]].into_iter().chain(&prod).collect();
    for p in &live {
        pushes::must_serve(apis[0].registry(), cluster.nodes[0].name(), p);
    }
    let nodes: Vec<&Node> = cluster.nodes.iter().collect();
    gc::wait_converged(&nodes, &gc::live_blobs(live), 1, CONVERGE_TIMEOUT);
}
