//! Garbage collection as the process-level tests and `bench_gc` drive it: `ipcr-node gc` runs
//! and their reports, images whose layers are shared (and indexes and referrers naming them),
//! the writes a collection races (monolithic blob pushes, manifest deletes), the tags a
//! registry lists, and every node's `data/blobs` compared with the blobs that must be live.
//!
//! Only `tests/cluster_gc.rs`, `tests/ipfs_backend.rs` and `src/bin/bench_gc.rs` call it.
//! Helpers that assert are `must_*`, helpers that wait are `wait_*`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipcr_proto::admin::ClusterStatus;
use ipcr_proto::gc::GcReport;
use reqwest::blocking::Client;
use serde_json::json;

use crate::client::{Registry, next_link};
use crate::cluster::status_within;
use crate::node::{CLUSTER_SECRET, Node, node_binary};
use crate::oci::{INDEX, MANIFEST};
use crate::pushes::{Blob, Image, Pushed, blob};
use crate::sha256_digest;
use crate::tools::run;

/// How long one `ipcr-node gc` may run before the test gives up on it.
pub const GC_TIMEOUT: Duration = Duration::from_secs(180);
/// The error code of a manifest naming content the repository does not have.
pub const MANIFEST_BLOB_UNKNOWN: &str = "MANIFEST_BLOB_UNKNOWN";
/// Media type of the test's referrers (signatures, as far as the registry can tell).
pub const SIGNATURE: &str = "application/vnd.ipcr.test.signature";
/// The OCI empty descriptor's media type (an artifact's config).
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// What one collection is asked for, as `ipcr-node gc` flags.
#[derive(Clone, Debug)]
pub struct GcArgs {
    /// `--grace <n>s`.
    pub grace_s: u64,
    /// `--delete-untagged`.
    pub delete_untagged: bool,
    /// `--dry-run`.
    pub dry_run: bool,
}

impl GcArgs {
    /// A collection with a grace period of `grace_s` seconds, keeping untagged manifests.
    pub fn grace(grace_s: u64) -> GcArgs {
        GcArgs {
            grace_s,
            delete_untagged: false,
            dry_run: false,
        }
    }

    /// The same, deleting untagged manifests too.
    pub fn delete_untagged(mut self) -> GcArgs {
        self.delete_untagged = true;
        self
    }
}

/// `ipcr-node gc --node <cluster_url> --secret <s> --grace <n>s [...] --json`, without the
/// test's own `REGISTRY_*` variables and without backtraces in its error messages.
pub fn gc_command(cluster_url: &str, args: &GcArgs) -> Command {
    let mut cmd = Command::new(node_binary());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    // A failure's message without anyhow's backtrace (the tests may run with RUST_BACKTRACE).
    cmd.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0");
    cmd.args(["gc", "--node", cluster_url, "--secret", CLUSTER_SECRET])
        .args(["--grace", &format!("{}s", args.grace_s), "--json"]);
    if args.delete_untagged {
        cmd.arg("--delete-untagged");
    }
    if args.dry_run {
        cmd.arg("--dry-run");
    }
    cmd
}

/// Run one collection through the node at `cluster_url`: its report (the one JSON document
/// printed on stdout), or the exit status and everything printed when it failed.
pub fn run_gc(cluster_url: &str, args: &GcArgs) -> Result<GcReport, String> {
    let out = run(&mut gc_command(cluster_url, args), GC_TIMEOUT);
    if !out.status.success() {
        return Err(format!(
            "ipcr-node gc through {cluster_url} exited with {}: {}{}",
            out.status,
            out.stderr_text(),
            out.stdout_text()
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ipcr-node gc printed no GcReport ({e}):\n{}", out.describe()))
}

/// [`run_gc`], which must succeed with a report consistent with `args`.
pub fn must_gc(cluster_url: &str, args: &GcArgs) -> GcReport {
    let report = run_gc(cluster_url, args).unwrap_or_else(|e| panic!("{e}"));
    must_be_consistent(&report, args);
    report
}

/// Whether a failed run's message says that another collection is running.
pub fn is_busy(message: &str) -> bool {
    message.to_lowercase().contains("running")
}

/// A report of a run asked for with `args` agrees with itself: its options, its times, its
/// totals (the sum over its repositories), and bytes removed from disks at least once each.
pub fn must_be_consistent(report: &GcReport, args: &GcArgs) {
    let o = &report.options;
    assert_eq!(
        (o.grace_ms, o.delete_untagged, o.dry_run),
        (args.grace_s * 1000, args.delete_untagged, args.dry_run),
        "options of collection {}: {report:?}",
        report.run
    );
    assert!(
        report.finished_ms >= report.started_ms,
        "collection {} finished before it started: {report:?}",
        report.run
    );
    assert_eq!(
        report.totals,
        report.tally.totals(),
        "totals of collection {} are not the sum over its repositories",
        report.run
    );
    let t = &report.tally;
    assert!(
        t.disk_bytes_removed >= t.bytes_removed && (t.blobs_removed > 0 || t.bytes_removed == 0),
        "byte counts of collection {}: {t:?}",
        report.run
    );
}

/// One line about a report, for the test's output.
pub fn describe(report: &GcReport) -> String {
    let (t, all) = (&report.tally, &report.totals);
    format!(
        "collection {} on node {} in {} ms: {} tags, {} manifests, {} blob links ({} B) removed; \
         {} blobs left the index ({} B, {} B on disks); {} steps refused",
        report.run,
        report.node,
        report.finished_ms.saturating_sub(report.started_ms),
        all.tags,
        all.manifests,
        all.blobs,
        all.bytes,
        t.blobs_removed,
        t.bytes_removed,
        t.disk_bytes_removed,
        t.refused
    )
}

/// Wait until every node at `cluster_urls` answers a status with no collection running;
/// answers those statuses.
pub fn wait_gc_idle(cluster_urls: &[String], timeout: Duration) -> Vec<ClusterStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen: Vec<Result<ClusterStatus, String>> = cluster_urls
            .iter()
            .map(|u| status_within(u, Duration::from_secs(5)))
            .collect();
        if seen
            .iter()
            .all(|s| s.as_ref().is_ok_and(|s| s.gc.running.is_none()))
        {
            return seen.into_iter().map(|s| s.expect("checked")).collect();
        }
        assert!(
            Instant::now() < deadline,
            "a collection still runs (or a node does not answer) after {timeout:?}: {:?}",
            seen.iter()
                .map(|s| s.as_ref().map(|s| &s.gc.running))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An artifact whose `subject` is the manifest `subject` (bytes), with one blob of its own
/// made from `seed`, as a signature would be; its config is the empty descriptor.
pub fn referrer(seed: u64, subject: &[u8]) -> Image {
    let config = blob(b"{}".to_vec());
    let signature = blob(crate::oci::noise(seed, 200));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": SIGNATURE,
        "config": descriptor(EMPTY, &config),
        "layers": [descriptor(SIGNATURE, &signature)],
        "subject": { "mediaType": MANIFEST, "digest": sha256_digest(subject), "size": subject.len() },
    }))
    .expect("json");
    Image {
        blobs: vec![config, signature],
        manifest,
    }
}

/// An image index of `manifests` (their bytes), each for linux on a made-up architecture.
pub fn index(manifests: &[&[u8]]) -> Vec<u8> {
    let entries: Vec<_> = manifests
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({
                "mediaType": MANIFEST,
                "digest": sha256_digest(m),
                "size": m.len(),
                "platform": { "os": "linux", "architecture": format!("arch{i}") },
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": entries }))
        .expect("json")
}

fn descriptor(media_type: &str, (digest, bytes): &Blob) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() })
}

/// `image` as acknowledged in `repo` under `reference` (a tag, or its digest).
pub fn pushed(repo: &str, reference: &str, image: &Image) -> Pushed {
    Pushed {
        repo: repo.to_string(),
        tag: reference.to_string(),
        digest: sha256_digest(&image.manifest),
        manifest: image.manifest.clone(),
        blobs: image.blobs.clone(),
    }
}

/// The blobs (config and layers) of `images`, digest → size.
pub fn live_blobs<'a>(images: impl IntoIterator<Item = &'a Pushed>) -> BTreeMap<String, u64> {
    images
        .into_iter()
        .flat_map(|p| p.blobs.iter().map(|(d, b)| (d.clone(), b.len() as u64)))
        .collect()
}

/// The registry port of one node (or a balancer): [`crate::client::Registry`], plus the writes
/// and listings the collection tests need beyond it.
#[derive(Clone)]
pub struct Api {
    registry: Registry,
}

impl Api {
    /// A client of `base` (`http://127.0.0.1:<port>`), with bounded timeouts.
    pub fn new(base: &str) -> Api {
        Api {
            registry: Registry::new(base),
        }
    }

    /// Its base URL.
    pub fn base(&self) -> &str {
        self.registry.base()
    }

    fn http(&self) -> &Client {
        self.registry.http()
    }

    /// The same port as a [`Registry`] (chunked uploads, manifest pushes, pulls).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// `POST /v2/<repo>/blobs/uploads/?digest=` with the whole blob: a monolithic push, which
    /// must answer `201` with the blob's digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String, String> {
        let digest = sha256_digest(bytes);
        let what = format!("monolithic push of {repo}@{digest}");
        let r = self
            .http()
            .post(
                self.registry
                    .url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")),
            )
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .map_err(|e| format!("{what}: {e}"))?;
        let status = r.status().as_u16();
        if status != 201 {
            return Err(format!(
                "{what}: status {status}: {}",
                r.text().unwrap_or_default()
            ));
        }
        Ok(digest)
    }

    /// `DELETE /v2/<repo>/manifests/<reference>`: the status (`202` when deleted).
    pub fn delete_manifest(&self, repo: &str, reference: &str) -> Result<u16, String> {
        self.http()
            .delete(self.registry.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .map(|r| r.status().as_u16())
            .map_err(|e| format!("DELETE {repo}:{reference}: {e}"))
    }

    /// The status of `GET <path>` (a manifest or a blob), the body read and dropped.
    pub fn get_status(&self, path: &str) -> Result<u16, String> {
        let r = self
            .http()
            .get(self.registry.url(path))
            .header("Accept", format!("{MANIFEST},{INDEX}"))
            .send()
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = r.status().as_u16();
        r.bytes()
            .map_err(|e| format!("GET {path}: reading the body: {e}"))?;
        Ok(status)
    }

    /// Every `(repository, tag)` the registry lists: `_catalog`, then each repository's
    /// `tags/list`, both followed page by page. A repository without tags may be listed.
    pub fn listed_tags(&self) -> Result<BTreeSet<(String, String)>, String> {
        let mut out = BTreeSet::new();
        for repo in self.pages("/v2/_catalog?n=100", "repositories")? {
            for tag in self.pages(&format!("/v2/{repo}/tags/list?n=100"), "tags")? {
                out.insert((repo.clone(), tag));
            }
        }
        Ok(out)
    }

    /// The strings of `key` over every page from `first` (`Link: <...>; rel="next"`). A `404`
    /// (a repository without tags) is no items.
    fn pages(&self, first: &str, key: &str) -> Result<Vec<String>, String> {
        let (mut next, mut items) = (Some(first.to_string()), Vec::new());
        while let Some(path) = next.take() {
            let r = self
                .http()
                .get(self.registry.url(&path))
                .send()
                .map_err(|e| format!("GET {path}: {e}"))?;
            if r.status().as_u16() == 404 {
                break;
            }
            if !r.status().is_success() {
                return Err(format!("GET {path}: status {}", r.status()));
            }
            next = next_link(r.headers());
            let v: serde_json::Value = r.json().map_err(|e| format!("GET {path}: {e}"))?;
            let page = v[key].as_array().cloned().unwrap_or_default();
            items.extend(page.iter().filter_map(|s| s.as_str().map(str::to_string)));
        }
        Ok(items)
    }
}

/// Push `image` into `repo` under `reference` (a tag or its digest) through `nodes` in turn,
/// retrying every step a bounded number of times: its blobs (monolithic pushes), then its
/// manifest of `media_type`. Answers what was acknowledged.
pub fn must_push(nodes: &[Api], repo: &str, reference: &str, image: &Image, media_type: &str) -> Pushed {
    let mut failures = Vec::new();
    for (j, (digest, bytes)) in image.blobs.iter().enumerate() {
        let what = format!("blob {repo}@{digest}");
        let got = retry(&what, 10, &mut failures, |a| {
            nodes[(j + a) % nodes.len()].push_blob(repo, bytes)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&got, digest, "acknowledged digest of {what}");
    }
    let what = format!("manifest {repo}:{reference}");
    retry(&what, 10, &mut failures, |a| {
        nodes[a % nodes.len()]
            .registry()
            .put_manifest(repo, reference, media_type, &image.manifest)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    pushed(repo, reference, image)
}

/// Run `step(attempt)` until it succeeds, at most `attempts` times, 200 ms apart; every
/// failure is appended to `failures`.
pub fn retry<T>(
    what: &str,
    attempts: usize,
    failures: &mut Vec<String>,
    mut step: impl FnMut(usize) -> Result<T, String>,
) -> Result<T, String> {
    let mut last = String::new();
    for attempt in 0..attempts {
        match step(attempt) {
            Ok(v) => return Ok(v),
            Err(e) => {
                failures.push(format!("{what} (attempt {}): {e}", attempt + 1));
                last = e;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{what} failed {attempts} times; last: {last}"))
}

/// Run `work(i)` for every `i` in `0..n` on `threads` threads; the results in order, or the
/// first error (with how many items failed).
pub fn in_parallel<T: Send>(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<T, String>>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    let r = work(i);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let failed = results.iter().filter(|r| matches!(r, Some(Err(_)))).count();
    let mut out = Vec::with_capacity(n);
    for r in results {
        match r.expect("every item ran") {
            Ok(v) => out.push(v),
            Err(e) => return Err(format!("{failed} of {n} failed; first: {e}")),
        }
    }
    Ok(out)
}

/// Every blob file under `<data_dir>/blobs/<algorithm>/<two hex>/<hex>`: digest → size.
/// Anything else there (the health probe's file) is not a blob; a file removed while being
/// listed is skipped.
pub fn blob_files(data_dir: &Path) -> BTreeMap<String, u64> {
    let entries = |dir: &Path| -> Vec<std::fs::DirEntry> {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().collect())
            .unwrap_or_default()
    };
    let mut out = BTreeMap::new();
    for alg in entries(&data_dir.join("blobs")) {
        if !alg.path().is_dir() {
            continue;
        }
        let alg_name = alg.file_name().to_string_lossy().to_string();
        for prefix in entries(&alg.path()) {
            if !prefix.path().is_dir() {
                continue;
            }
            for file in entries(&prefix.path()) {
                let name = file.file_name().to_string_lossy().to_string();
                if !name.bytes().all(|b| b.is_ascii_hexdigit()) || name.len() < 32 {
                    continue;
                }
                if let Ok(meta) = file.metadata()
                    && meta.is_file()
                {
                    out.insert(format!("{alg_name}:{name}"), meta.len());
                }
            }
        }
    }
    out
}

/// Every node's blob files against the live blobs, when they agreed.
#[derive(Debug)]
pub struct Converged {
    /// Blob files over the nodes.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Live blobs.
    pub live: usize,
    /// Σ live size × copies.
    pub expected_bytes: u64,
    /// How long it took.
    pub waited: Duration,
}

/// How `disks` (name and blob files of each node) differ from `live` blobs held by `copies`
/// of those nodes each: files of blobs not live, live blobs with another number of copies,
/// files of the wrong size. Empty when they agree.
pub fn discrepancies(
    disks: &[(String, BTreeMap<String, u64>)],
    live: &BTreeMap<String, u64>,
    copies: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut held: BTreeMap<&String, usize> = BTreeMap::new();
    for (name, files) in disks {
        let leftover: Vec<_> = files.iter().filter(|(d, _)| !live.contains_key(*d)).collect();
        if !leftover.is_empty() {
            let bytes: u64 = leftover.iter().map(|(_, s)| **s).sum();
            out.push(format!(
                "{name} keeps {} blobs that are not live ({bytes} B), e.g. {:?}",
                leftover.len(),
                leftover.iter().take(3).map(|(d, _)| d).collect::<Vec<_>>()
            ));
        }
        for (digest, size) in files {
            if let Some(&want) = live.get(digest) {
                *held.entry(digest).or_default() += 1;
                if *size != want {
                    out.push(format!("{name} holds {digest} with {size} B, not {want}"));
                }
            }
        }
    }
    let wrong: Vec<String> = live
        .keys()
        .filter_map(|d| {
            let n = held.get(d).copied().unwrap_or(0);
            (n != copies).then(|| format!("{d}: {n} copies"))
        })
        .collect();
    if !wrong.is_empty() {
        out.push(format!(
            "{} live blobs are not held by exactly {copies} of {:?}, e.g. {:?}",
            wrong.len(),
            disks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            &wrong[..wrong.len().min(5)]
        ));
    }
    out
}

/// Wait until the blob files of `nodes` are exactly the `live` blobs (digest → size), each
/// on `copies` of them: nothing left over, nothing missing. Prints and answers the numbers;
/// panics with what still differs after `timeout`.
pub fn wait_converged(
    nodes: &[&Node],
    live: &BTreeMap<String, u64>,
    copies: usize,
    timeout: Duration,
) -> Converged {
    let started = Instant::now();
    loop {
        let disks: Vec<(String, BTreeMap<String, u64>)> = nodes
            .iter()
            .map(|n| (n.name().to_string(), blob_files(&n.data_dir())))
            .collect();
        let problems = discrepancies(&disks, live, copies);
        let files = disks.iter().map(|(_, f)| f.len()).sum();
        let bytes = disks.iter().flat_map(|(_, f)| f.values()).sum();
        let expected_bytes = live.values().sum::<u64>() * copies as u64;
        if problems.is_empty() {
            let c = Converged {
                files,
                bytes,
                live: live.len(),
                expected_bytes,
                waited: started.elapsed(),
            };
            eprintln!(
                "disks converged after {:?}: {} blob files, {} B over {} nodes = {} live blobs \
                 ({} B) x {copies} copies = {} B",
                c.waited,
                c.files,
                c.bytes,
                nodes.len(),
                c.live,
                live.values().sum::<u64>(),
                c.expected_bytes
            );
            return c;
        }
        assert!(
            started.elapsed() < timeout,
            "the disks did not converge within {timeout:?}: {files} blob files, {bytes} B on disks, \
             expected {} live blobs x {copies} = {expected_bytes} B:\n{}",
            live.len(),
            problems.join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discrepancies_name_leftovers_missing_copies_and_wrong_sizes() {
        let live: BTreeMap<String, u64> = [("sha256:aa".to_string(), 3), ("sha256:bb".to_string(), 5)].into();
        let disk = |files: &[(&str, u64)]| -> BTreeMap<String, u64> {
            files.iter().map(|(d, s)| (d.to_string(), *s)).collect()
        };
        let good = vec![
            ("n0".to_string(), disk(&[("sha256:aa", 3), ("sha256:bb", 5)])),
            ("n1".to_string(), disk(&[("sha256:aa", 3), ("sha256:bb", 5)])),
        ];
        assert!(discrepancies(&good, &live, 2).is_empty());
        assert_eq!(discrepancies(&good, &live, 1).len(), 1, "three copies too many");
        let bad = vec![
            ("n0".to_string(), disk(&[("sha256:aa", 3), ("sha256:cc", 9)])),
            ("n1".to_string(), disk(&[("sha256:aa", 4), ("sha256:bb", 5)])),
        ];
        let found = discrepancies(&bad, &live, 2).join("\n");
        assert!(
            found.contains("n0 keeps 1 blobs that are not live (9 B)"),
            "{found}"
        );
        assert!(found.contains("n1 holds sha256:aa with 4 B"), "{found}");
        assert!(found.contains("sha256:bb: 1 copies"), "{found}");
    }

    #[test]
    fn blob_files_lists_only_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let hex = "ab".repeat(32);
        let prefix = dir.path().join("blobs/sha256/ab");
        std::fs::create_dir_all(&prefix).unwrap();
        std::fs::write(prefix.join(&hex), b"12345").unwrap();
        std::fs::write(dir.path().join("blobs/.probe"), b"x").unwrap();
        std::fs::write(prefix.join("tmp"), b"x").unwrap();
        let found = blob_files(dir.path());
        assert_eq!(found, [(format!("sha256:{hex}"), 5)].into());
    }

    #[test]
    fn images_referrers_and_indexes_name_their_content() {
        let layer = blob(b"layer".to_vec());
        let img = crate::pushes::image_of(7, std::slice::from_ref(&layer));
        assert_eq!(img.blobs.len(), 2);
        assert_eq!(img.blobs[1], layer);
        let m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        assert_eq!(m["config"]["digest"], img.blobs[0].0.as_str());
        let sig = referrer(1, &img.manifest);
        let s: serde_json::Value = serde_json::from_slice(&sig.manifest).unwrap();
        assert_eq!(s["subject"]["digest"], sha256_digest(&img.manifest).as_str());
        let idx: serde_json::Value = serde_json::from_slice(&index(&[&img.manifest])).unwrap();
        assert_eq!(idx["manifests"][0]["size"], img.manifest.len());
        assert!(is_busy("Error: garbage collection 1234 is running"));
    }
}
