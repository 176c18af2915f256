//! `kill -9` of a node in the middle of a stream of pushes, then a restart on the same data
//! directory: whatever the node acknowledged must still be there, exactly.
//!
//! Writer threads push images (blobs through `POST`/`PATCH`/`PUT` sessions, then a manifest by
//! a tag of its own) and record every acknowledgement. Some sessions are left open after an
//! acknowledged `PATCH`. After the kill and restart:
//! - every acknowledged blob and manifest (by tag and by digest) is served byte for byte;
//! - every session left idle reports exactly its acknowledged size; a session that had a
//!   `PATCH` in flight reports at least its acknowledged size (the chunk may or may not have
//!   landed) and never more than was sent;
//! - every session resumes: `PATCH` of the rest from the reported offset, `PUT` with the digest,
//!   and the blob is served.
//!
//! Several rounds on the same data directory kill at different points of the stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cluster_tests::client::Registry;
use cluster_tests::oci::{self, noise};
use cluster_tests::{Node, sha256_digest};

/// Concurrent writers.
const WRITERS: usize = 4;
/// Upper bound on pushes per writer and round (the kill comes long before).
const MAX_PUSHES: usize = 10_000;
/// Manifests acknowledged in a round before the kill, per round: early, middle, late.
const KILL_AFTER: [usize; 3] = [3, 12, 30];
/// Sessions left idle in a round before the kill.
const IDLE_SESSIONS: usize = 3;
/// How long a round may take to reach its kill point.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);

/// A blob the server acknowledged with `201`.
struct AckedBlob {
    repo: String,
    digest: String,
    bytes: Arc<Vec<u8>>,
}

/// A manifest the server acknowledged with `201`.
struct AckedManifest {
    repo: String,
    tag: String,
    digest: String,
    bytes: Vec<u8>,
}

/// An upload session with at least one acknowledged `PATCH` and no `PUT` sent.
struct OpenSession {
    repo: String,
    location: String,
    bytes: Arc<Vec<u8>>,
    /// The size the last `202` acknowledged.
    acked: u64,
    /// A `PATCH` was sent and not answered.
    in_flight: bool,
    /// The size if the `PATCH` in flight landed.
    sent: u64,
    /// Left open on purpose: no request will follow until the restart.
    idle: bool,
}

/// Everything acknowledged so far, across rounds.
#[derive(Default)]
struct Acked {
    blobs: Vec<AckedBlob>,
    manifests: Vec<AckedManifest>,
    sessions: BTreeMap<u64, OpenSession>,
    next_session: u64,
}

impl Acked {
    fn idle_sessions(&self) -> usize {
        self.sessions.values().filter(|s| s.idle).count()
    }
}

/// The shared record and a condition variable that writers signal on every acknowledgement.
#[derive(Default)]
struct Record {
    acked: Mutex<Acked>,
    changed: Condvar,
}

impl Record {
    fn update<T>(&self, f: impl FnOnce(&mut Acked) -> T) -> T {
        let out = f(&mut self.acked.lock().expect("record lock"));
        self.changed.notify_all();
        out
    }

    /// Wait until `done` holds, or panic after `timeout`.
    fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&Acked) -> bool) {
        let guard = self.acked.lock().expect("record lock");
        let (_guard, result) = self
            .changed
            .wait_timeout_while(guard, timeout, |a| !done(a))
            .expect("record lock");
        assert!(
            !result.timed_out(),
            "timed out after {timeout:?} waiting for {what}"
        );
    }
}

/// Deterministic choices for one writer.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One writer's stream: push images until the node dies. `Err` when a request failed while
/// the node was still meant to be alive.
fn writer(
    reg: Registry,
    record: Arc<Record>,
    killed: Arc<AtomicBool>,
    round: usize,
    w: usize,
) -> Result<(), String> {
    let mut rng = Rng((round as u64 + 1) * 1_000_003 + w as u64 * 7919 + 1);
    let repo = format!("crash/w{w}");
    for i in 0..MAX_PUSHES {
        let seed = ((round * WRITERS + w) * MAX_PUSHES + i) as u64;
        let pushed = push_image(
            &reg,
            &record,
            &mut rng,
            &repo,
            &format!("r{round}-w{w}-i{i}"),
            seed,
        );
        if let Err(e) = pushed {
            // A failure is expected once the node is killed; before, it is a bug.
            return if killed.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(e)
            };
        }
        if killed.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
    Ok(())
}

/// Upload `bytes` as a chunked session, recording each acknowledged `PATCH`. With
/// `leave_open`, stop after the first chunk and leave the session idle.
fn upload(
    reg: &Registry,
    record: &Record,
    rng: &mut Rng,
    repo: &str,
    bytes: Arc<Vec<u8>>,
    leave_open: bool,
) -> Result<(), String> {
    let len = bytes.len();
    // The first chunk is at least 2 bytes, so that its `Range` is unambiguous.
    let first = 2 + rng.below(len as u64 / 2) as usize;
    let second = first + rng.below((len - first) as u64) as usize;
    let location = reg.start_upload(repo)?;
    let mut key = None;
    let mut offset = 0;
    for end in [first, second, len] {
        if end <= offset {
            continue;
        }
        if let Some(k) = key {
            record.update(|a| {
                let s = a.sessions.get_mut(&k).expect("session");
                (s.in_flight, s.sent) = (true, end as u64);
            });
        }
        let acked = reg.patch(&location, offset as u64, &bytes[offset..end])?;
        offset = end;
        let k = *key.get_or_insert_with(|| {
            record.update(|a| {
                a.next_session += 1;
                a.sessions.insert(
                    a.next_session,
                    OpenSession {
                        repo: repo.to_string(),
                        location: location.clone(),
                        bytes: bytes.clone(),
                        acked,
                        in_flight: false,
                        sent: acked,
                        idle: false,
                    },
                );
                a.next_session
            })
        });
        record.update(|a| {
            let s = a.sessions.get_mut(&k).expect("session");
            (s.acked, s.in_flight, s.idle) = (acked, false, leave_open);
        });
        if leave_open {
            return Ok(());
        }
    }
    // From here the outcome of the PUT is unknown until it answers: the session is no longer
    // checked as open, and the blob is checked only once acknowledged.
    record.update(|a| a.sessions.remove(&key.expect("at least one chunk")));
    let digest = sha256_digest(&bytes);
    reg.finish(&location, &digest)?;
    record.update(|a| {
        a.blobs.push(AckedBlob {
            repo: repo.to_string(),
            digest,
            bytes,
        })
    });
    Ok(())
}

fn push_image(
    reg: &Registry,
    record: &Record,
    rng: &mut Rng,
    repo: &str,
    tag: &str,
    seed: u64,
) -> Result<(), String> {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": [format!("/bin/{tag}")] },
        "rootfs": { "type": "layers", "diff_ids": [] },
    });
    let config = Arc::new(serde_json::to_vec(&config).expect("json"));
    let layers: Vec<Arc<Vec<u8>>> = (0..2)
        .map(|l| Arc::new(noise(seed * 4 + l, 4 + rng.below(200_000) as usize)))
        .collect();
    for blob in [&config].into_iter().chain(&layers) {
        upload(reg, record, rng, repo, blob.clone(), false)?;
    }
    if seed % 3 == 1 {
        let extra = Arc::new(noise(seed * 4 + 3, 4 + rng.below(100_000) as usize));
        upload(reg, record, rng, repo, extra, true)?;
    }
    let descriptor = |media_type: &str, b: &[u8]| serde_json::json!({ "mediaType": media_type, "digest": sha256_digest(b), "size": b.len() });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MANIFEST,
        "config": descriptor(oci::CONFIG, &config),
        "layers": layers.iter().map(|l| descriptor(oci::LAYER_TAR, l)).collect::<Vec<_>>(),
    });
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let digest = reg.put_manifest(repo, tag, oci::MANIFEST, &bytes)?;
    record.update(|a| {
        a.manifests.push(AckedManifest {
            repo: repo.to_string(),
            tag: tag.to_string(),
            digest,
            bytes,
        })
    });
    Ok(())
}

/// Every acknowledged blob and manifest is served byte for byte.
fn must_serve_everything_acked(reg: &Registry, acked: &Acked) {
    for b in &acked.blobs {
        let got = reg
            .get_blob(&b.repo, &b.digest)
            .unwrap_or_else(|e| panic!("acked blob lost: {e}"));
        assert!(got.bytes == *b.bytes, "blob {}@{} changed", b.repo, b.digest);
        assert_eq!(
            got.digest.as_deref(),
            Some(b.digest.as_str()),
            "digest header of {}",
            b.digest
        );
    }
    for m in &acked.manifests {
        for reference in [&m.tag, &m.digest] {
            let got = reg
                .get_manifest(&m.repo, reference)
                .unwrap_or_else(|e| panic!("acked manifest lost: {e}"));
            assert!(got.bytes == m.bytes, "manifest {}:{reference} changed", m.repo);
            assert_eq!(
                got.digest.as_deref(),
                Some(m.digest.as_str()),
                "{}:{reference}",
                m.repo
            );
        }
    }
}

/// How many open sessions of each kind were resumed.
#[derive(Debug, Default)]
struct Resumed {
    /// Left open on purpose.
    idle: usize,
    /// Between two acknowledged chunks of a push.
    between_chunks: usize,
    /// With a `PATCH` in flight at the kill.
    mid_patch: usize,
}

/// Every open session reports a size consistent with what was acknowledged, and resumes to
/// completion; its blob then counts as acknowledged.
fn must_resume_sessions(reg: &Registry, acked: &mut Acked) -> Resumed {
    let mut resumed = Resumed::default();
    for (_, s) in std::mem::take(&mut acked.sessions) {
        let total = s.bytes.len() as u64;
        let size = reg
            .upload_status(&s.location)
            .unwrap_or_else(|e| panic!("open session lost (acked {} of {total} bytes): {e}", s.acked));
        if s.in_flight {
            resumed.mid_patch += 1;
            assert!(
                (s.acked..=s.sent).contains(&size),
                "{}: size {size} after a PATCH in flight: acked {}, sent {} of {total}",
                s.location,
                s.acked,
                s.sent
            );
        } else {
            if s.idle {
                resumed.idle += 1;
            } else {
                resumed.between_chunks += 1;
            }
            assert_eq!(
                size, s.acked,
                "{}: size of a session with no request in flight",
                s.location
            );
        }
        if size < total {
            reg.patch(&s.location, size, &s.bytes[size as usize..])
                .unwrap_or_else(|e| panic!("resuming: {e}"));
        }
        let digest = sha256_digest(&s.bytes);
        reg.finish(&s.location, &digest)
            .unwrap_or_else(|e| panic!("resuming: {e}"));
        let got = reg
            .get_blob(&s.repo, &digest)
            .unwrap_or_else(|e| panic!("resumed blob: {e}"));
        assert!(got.bytes == *s.bytes, "resumed blob {digest} differs");
        acked.blobs.push(AckedBlob {
            repo: s.repo,
            digest,
            bytes: s.bytes,
        });
    }
    resumed
}

#[test]
fn acknowledged_pushes_and_open_uploads_survive_kill_9() {
    let mut node = Node::start("crash");
    let reg = Registry::new(&node.base_url());
    let record = Arc::new(Record::default());
    for (round, kill_after) in KILL_AFTER.into_iter().enumerate() {
        let started = Instant::now();
        let (manifests_before, idle_before) = {
            let a = record.acked.lock().expect("record lock");
            (a.manifests.len(), a.idle_sessions())
        };
        let killed = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (reg, record, killed) = (reg.clone(), record.clone(), killed.clone());
                std::thread::spawn(move || writer(reg, record, killed, round, w))
            })
            .collect();
        record.wait_until(PROGRESS_TIMEOUT, "pushes to reach the kill point", |a| {
            a.manifests.len() >= manifests_before + kill_after
                && a.idle_sessions() >= idle_before + IDLE_SESSIONS
        });
        killed.store(true, Ordering::SeqCst);
        node.kill9();
        for (w, handle) in writers.into_iter().enumerate() {
            if let Err(e) = handle.join().expect("writer thread") {
                panic!("writer {w} failed before the kill: {e}");
            }
        }

        node.restart();
        let mut acked = record.acked.lock().expect("record lock");
        must_serve_everything_acked(&reg, &acked);
        let resumed = must_resume_sessions(&reg, &mut acked);
        eprintln!(
            "round {round}: killed after {} new manifests; {} manifests and {} blobs intact; \
             sessions resumed: {resumed:?} ({:?})",
            acked.manifests.len() - manifests_before,
            acked.manifests.len(),
            acked.blobs.len(),
            started.elapsed()
        );
    }
    // Resumed blobs are served too, and the node still takes pushes after its last restart.
    let acked = record.acked.lock().expect("record lock");
    must_serve_everything_acked(&reg, &acked);
    let last = noise(u64::MAX, 1000);
    let digest = reg
        .push_blob_chunked("crash/after", &last, &[10, 500])
        .unwrap_or_else(|e| panic!("push after restarts: {e}"));
    assert!(
        reg.get_blob("crash/after", &digest)
            .expect("blob after restarts")
            .bytes
            == last
    );
}
