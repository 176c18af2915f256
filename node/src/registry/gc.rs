//! Online garbage collection across the cluster.
//!
//! A collection plans on one consistent read of the replicated metadata (after a read barrier,
//! so it sees everything acknowledged before it started) and proposes its steps in batches
//! (`Command::Collect`), each checked again by the state machine when applied: a tag pushed,
//! an index or a manifest naming something, or a blob uploaded or mounted since the plan keeps
//! what it touches. Marking starts from every tag (after retention): manifests, their config
//! and layers, the children of an index, and the referrers of anything kept. Blob bytes leave
//! the disks only after the commit that removes the blob from the index: every node's
//! [`Janitor`] deletes the copies the index no longer records it holding, so a node that was
//! down deletes its copies when it is back.
//!
//! One collection runs at a time in the cluster: `GcBegin` takes a lease in the replicated
//! state, every batch renews it, `GcEnd` releases it. A collection whose node died is
//! finished by the leader once the lease has expired (every step can be planned again).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ipcr_proto::gc::{GcEvent, GcOptions, GcReport, GcRun, GcStep, GcTally};
use ipcr_proto::{Command, CommandResult, Digest, PinState, Reject};
use tokio::sync::mpsc::UnboundedSender;

use super::retention::Retention;
use crate::config::GcConfig;
use crate::raft::state::{HeldManifest, StateError, View};
use crate::raft::{RaftError, RaftNode, now_ms};
use crate::store::FsStore;

/// Steps per proposed command. Applying a batch holds the state machine (about 40 µs a
/// step), and a push queued behind it waits: with 500 steps a batch, the p99 of manifest
/// pushes during a collection was 7 times that without one (docs/benchmarks.md).
const BATCH: usize = 16;
/// After each batch the collector waits this many times as long as the batch took, so that a
/// collection takes at most a quarter of the log and the state machine from pushes.
const PACE: u32 = 3;
/// How long a collection keeps the cluster's lease without proposing a step.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often the leader checks whether a collection is due (or was left unfinished), and
/// every node whether a collection changed the index.
const TICK: Duration = Duration::from_secs(5);
/// A node deletes unrecorded copies at least this often, collection or not.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why a collection did not finish.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another collection holds the lease.
    #[error("garbage collection {0} is running (one at a time in the cluster)")]
    Running(String),
    /// No quorum, or this node is shutting down.
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// The metadata store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Anything else (a bad retention pattern, a refused step that should not be).
    #[error("{0}")]
    Other(String),
}

/// What a collection will propose, in order, and what that removes if nothing changes.
struct Plan {
    untag: Vec<GcStep>,
    manifests: Vec<GcStep>,
    blobs: Vec<GcStep>,
    tally: GcTally,
}

/// Order dead manifests so that every index comes before its entries and every subject
/// before its referrers: the state machine deletes a manifest only when nothing names it.
fn parents_first<'a>(dead: &[&'a HeldManifest]) -> Vec<&'a Digest> {
    let index: HashMap<&Digest, usize> = dead.iter().enumerate().map(|(i, m)| (&m.digest, i)).collect();
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); dead.len()];
    let mut waiting = vec![0usize; dead.len()];
    for (i, m) in dead.iter().enumerate() {
        for child in &m.record.children {
            if let Some(&c) = index.get(child) {
                after[i].push(c);
                waiting[c] += 1;
            }
        }
        if let Some(&s) = m.record.subject.as_ref().and_then(|s| index.get(s)) {
            after[s].push(i);
            waiting[i] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..dead.len()).filter(|&i| waiting[i] == 0).collect();
    let mut out = Vec::with_capacity(dead.len());
    while let Some(i) = ready.pop() {
        out.push(&dead[i].digest);
        for &j in &after[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(j);
            }
        }
    }
    out
}

/// The digest a blob step is about, then its repository.
fn blob_order(step: &GcStep) -> (&Digest, &str) {
    match step {
        GcStep::Unlink { repo, digest } => (digest, repo.as_str()),
        GcStep::Drop { digest } => (digest, ""),
        GcStep::Untag { digest, .. } | GcStep::Manifest { digest, .. } => (digest, ""),
    }
}

/// Plan a collection on `view` at `now_ms`.
fn plan(view: &View, options: &GcOptions, now_ms: u64) -> Result<Plan, GcError> {
    let retention = Retention::compile(&options.retention).map_err(GcError::Other)?;
    let young = |ms: u64| now_ms.saturating_sub(ms) < options.grace_ms;
    let mut plan = Plan {
        untag: Vec::new(),
        manifests: Vec::new(),
        blobs: Vec::new(),
        tally: GcTally::default(),
    };
    // Links each blob loses, to tell which blobs leave the index with their last link, and
    // its size and copies (read once, however many repositories unlink it).
    let mut unlinked: HashMap<Digest, (u64, Option<(u64, usize)>)> = HashMap::new();
    for repo in view.repos()? {
        let tags = view.tags(&repo)?;
        let times: Vec<(&str, u64)> = tags.iter().map(|(t, _, ms)| (t.as_str(), *ms)).collect();
        let expired: HashSet<usize> = retention
            .expired(repo.as_str(), &times, now_ms)
            .into_iter()
            .collect();
        let mut roots: Vec<Digest> = Vec::new();
        for (i, (tag, digest, pushed_ms)) in tags.iter().enumerate() {
            if expired.contains(&i) {
                plan.tally.repo(&repo).tags += 1;
                if !options.retention_dry_run {
                    plan.untag.push(GcStep::Untag {
                        repo: repo.clone(),
                        tag: tag.clone(),
                        digest: digest.clone(),
                        pushed_ms: *pushed_ms,
                    });
                    continue;
                }
            }
            roots.push(digest.clone());
        }
        let held = view.manifests(&repo)?;
        let by_digest: HashMap<&Digest, &HeldManifest> = held.iter().map(|m| (&m.digest, m)).collect();
        let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for m in &held {
            if young(m.pushed_ms) || (m.record.subject.is_none() && !options.delete_untagged) {
                roots.push(m.digest.clone());
            }
            if let Some(subject) = &m.record.subject {
                referrers.entry(subject).or_default().push(&m.digest);
            }
        }
        // Mark: what the roots reach through index entries and referrers.
        let mut live: HashSet<&Digest> = HashSet::new();
        let mut stack: Vec<&Digest> = roots
            .iter()
            .filter_map(|d| by_digest.get(d).map(|m| &m.digest))
            .collect();
        while let Some(d) = stack.pop() {
            if !live.insert(d) {
                continue;
            }
            let m = by_digest[d];
            stack.extend(
                m.record
                    .children
                    .iter()
                    .filter_map(|c| by_digest.get(c).map(|m| &m.digest)),
            );
            stack.extend(referrers.get(d).into_iter().flatten().copied());
        }
        let dead: Vec<&HeldManifest> = held.iter().filter(|m| !live.contains(&m.digest)).collect();
        for digest in parents_first(&dead) {
            plan.tally.repo(&repo).manifests += 1;
            plan.manifests.push(GcStep::Manifest {
                repo: repo.clone(),
                digest: digest.clone(),
            });
        }
        let referenced: HashSet<&Digest> = held
            .iter()
            .filter(|m| live.contains(&m.digest))
            .flat_map(|m| &m.record.blobs)
            .collect();
        for (blob, linked_ms) in view.links(&repo)? {
            if referenced.contains(&blob) || young(linked_ms) {
                continue;
            }
            let (lost, record) = match unlinked.entry(blob.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert((0, view.blob(&blob)?.map(|b| (b.size, b.nodes.len())))),
            };
            *lost += 1;
            let counts = plan.tally.repo(&repo);
            counts.blobs += 1;
            counts.bytes += record.map_or(0, |(size, _)| size);
            plan.blobs.push(GcStep::Unlink {
                repo: repo.clone(),
                digest: blob,
            });
        }
    }
    let mut removed = |size: u64, copies: usize| {
        plan.tally.blobs_removed += 1;
        plan.tally.bytes_removed += size;
        plan.tally.disk_bytes_removed += size * copies as u64;
    };
    for (blob, (lost, record)) in &unlinked {
        if let Some((size, copies)) = record
            && view.link_count(blob)? <= *lost
        {
            removed(*size, *copies);
        }
    }
    for (digest, record) in view.unlinked_blobs()? {
        let unpinning = record
            .ipfs
            .as_ref()
            .is_some_and(|i| i.state != PinState::Unpinned);
        if unpinning && record.nodes.is_empty() {
            continue; // waits for the backend to drop its pin
        }
        if !record.nodes.is_empty() {
            removed(record.size, record.nodes.len());
        }
        plan.blobs.push(GcStep::Drop { digest });
    }
    // Blobs in digest order: the tables keyed by digest (the index, the link counts, the
    // leaves) then change page by page, not all over, between two durable commits of the
    // state machine.
    plan.blobs.sort_by(|a, b| blob_order(a).cmp(&blob_order(b)));
    Ok(plan)
}

/// Runs collections from this node.
#[derive(Clone)]
pub struct Collector {
    raft: RaftNode,
    config: GcConfig,
}

impl Collector {
    /// Collections proposed by `raft`'s node, with `config`'s defaults and schedule.
    pub fn new(raft: RaftNode, config: GcConfig) -> Collector {
        Collector { raft, config }
    }

    /// The configured defaults of a collection.
    pub fn defaults(&self, dry_run: bool) -> GcOptions {
        self.config.options(dry_run)
    }

    async fn plan(&self, options: &GcOptions) -> Result<Plan, GcError> {
        self.raft.read_barrier().await?;
        let (reader, options) = (self.raft.reader().clone(), options.clone());
        in_background("gc-plan", move || plan(&reader.view()?, &options, now_ms()))
            .await
            .map_err(GcError::Other)?
    }

    /// Run one collection (or, with `dry_run`, plan one), reporting progress to `events`.
    pub async fn run(
        &self,
        options: GcOptions,
        events: &UnboundedSender<GcEvent>,
    ) -> Result<GcReport, GcError> {
        let started_ms = now_ms();
        let report = |run: String, tally: GcTally, options: GcOptions| GcReport {
            run,
            node: self.raft.id(),
            options,
            started_ms,
            finished_ms: now_ms(),
            totals: tally.totals(),
            tally,
        };
        if options.dry_run {
            let plan = self.plan(&options).await?;
            return Ok(report(String::new(), plan.tally, options));
        }
        let run = GcRun {
            run: uuid::Uuid::new_v4().to_string(),
            node: self.raft.id(),
            started_ms,
            lease_until_ms: started_ms + LEASE.as_millis() as u64,
            options,
        };
        match self
            .raft
            .propose(Command::GcBegin { run: run.clone() })
            .await?
            .into_result()
        {
            Ok(()) => {}
            Err(Reject::GcRunning(other)) => return Err(GcError::Running(other)),
            Err(e) => return Err(GcError::Other(e.to_string())),
        }
        tracing::info!(run = %run.run, "garbage collection started");
        let plan = self.plan(&run.options).await?;
        let total = (plan.untag.len() + plan.manifests.len() + plan.blobs.len()) as u64;
        let progress = |phase: &str, done: u64| {
            let _ = events.send(GcEvent::Progress {
                phase: phase.to_string(),
                done,
                total,
            });
        };
        progress("plan", 0);
        let (mut tally, mut done) = (GcTally::default(), 0);
        for (phase, steps) in [
            ("untag", plan.untag),
            ("manifests", plan.manifests),
            ("blobs", plan.blobs),
        ] {
            for batch in steps.chunks(BATCH) {
                let proposed = Instant::now();
                let cmd = Command::Collect {
                    run: run.run.clone(),
                    now_ms: now_ms(),
                    lease_ms: LEASE.as_millis() as u64,
                    options: run.options.clone(),
                    steps: batch.to_vec(),
                };
                match self.raft.propose(cmd).await? {
                    CommandResult::Collected(t) => tally.add(&t),
                    CommandResult::Rejected(Reject::GcRunning(_)) => {
                        return Err(GcError::Other(format!("collection {} lost its lease", run.run)));
                    }
                    other => return Err(GcError::Other(format!("unexpected answer {other:?}"))),
                }
                done += batch.len() as u64;
                progress(phase, done);
                tokio::time::sleep(proposed.elapsed() * PACE).await;
            }
        }
        let report = report(run.run.clone(), tally, run.options);
        if let Err(e) = self
            .raft
            .propose(Command::GcEnd {
                report: report.clone(),
            })
            .await?
            .into_result()
        {
            return Err(GcError::Other(format!(
                "collection {} lost its lease: {e}",
                report.run
            )));
        }
        let t = &report.tally;
        tracing::info!(
            run = %report.run,
            tags = report.totals.tags,
            manifests = report.totals.manifests,
            links = report.totals.blobs,
            blobs = t.blobs_removed,
            bytes = t.bytes_removed,
            refused = t.refused,
            ms = report.finished_ms - report.started_ms,
            "garbage collection finished"
        );
        Ok(report)
    }

    /// What the leader should run now: a collection left unfinished by a node whose lease
    /// expired, or a scheduled one that is due.
    fn due(&self, since: Instant) -> Option<GcOptions> {
        let status = self.raft.reader().gc_status().ok()?;
        let now = now_ms();
        if let Some(running) = status.running {
            return (now > running.lease_until_ms).then(|| {
                tracing::info!(run = %running.run, node = running.node, "finishing a collection whose node stopped");
                GcOptions {
                    dry_run: false,
                    ..running.options
                }
            });
        }
        if !self.config.enabled {
            return None;
        }
        let interval = self.config.interval.0;
        let due = match status.last {
            Some(last) => now.saturating_sub(last.finished_ms) >= interval.as_millis() as u64,
            None => since.elapsed() >= interval,
        };
        due.then(|| self.defaults(false))
    }
}

/// The leader's schedule: a due collection, or one to finish, every [`TICK`].
pub fn spawn_schedule(collector: Collector) {
    let runtime = collector.raft.runtime().clone();
    runtime.spawn(async move {
        let since = Instant::now();
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        loop {
            tokio::time::sleep(TICK).await;
            let m = collector.raft.metrics();
            if m.current_leader != Some(m.id) {
                continue;
            }
            if let Some(options) = collector.due(since)
                && let Err(e) = collector.run(options, &events).await
            {
                tracing::warn!(error = %e, "scheduled garbage collection failed");
            }
        }
    });
}

/// Deletes this node's copies of blobs the index no longer records it holding.
#[derive(Clone)]
pub struct Janitor {
    raft: RaftNode,
    store: FsStore,
    grace: Duration,
}

impl Janitor {
    /// The janitor of `store`; `grace` (`storage.maintenance.gc.grace`) protects fresh
    /// copies that no collection removed.
    pub fn new(raft: RaftNode, store: FsStore, grace: Duration) -> Janitor {
        Janitor { raft, store, grace }
    }

    /// One pass: answers the copies deleted and their bytes.
    ///
    /// A copy is written (or, when it already exists, touched) before the command recording
    /// it is proposed, so a copy the index does not record may be one about to be. A copy of
    /// a blob a collection removed goes once its inode is older than that collection's grace
    /// period; any other unrecorded copy (a new upload on its way, a copy whose recording was
    /// refused) only once older than the configured grace period. The read barrier makes
    /// every command committed before the pass visible to it.
    pub async fn sweep(&self) -> Result<(usize, u64), String> {
        self.raft.read_barrier().await.map_err(|e| e.to_string())?;
        let reader = self.raft.reader().clone();
        let (store, me, grace) = (self.store.clone(), self.raft.id(), self.grace);
        in_background("gc-janitor", move || {
            let (mut files, mut bytes) = (0, 0);
            for blob in store.list().map_err(|e| e.to_string())? {
                match reader.blob_any(&blob.digest) {
                    Ok(Some(record)) if record.nodes.contains(&me) => continue,
                    Err(_) => continue,
                    _ => {}
                }
                let protect = match reader.dropped(&blob.digest) {
                    Ok(Some((_, collected_with))) => Duration::from_millis(collected_with).min(grace),
                    Ok(None) => grace,
                    Err(_) => continue,
                };
                match store.remove_unrecorded(&blob.digest, protect) {
                    Ok(Some(size)) => {
                        tracing::debug!(digest = %blob.digest, size, "deleted a copy no longer recorded here");
                        files += 1;
                        bytes += size;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(digest = %blob.digest, error = %e, "could not delete a copy"),
                }
            }
            Ok((files, bytes))
        })
        .await?
    }
}

/// Run `work` on a thread of its own at a lower CPU priority (nice 10): a collection's plan
/// and the janitor's pass are background work that would otherwise take a two-core node's
/// CPU from the requests in flight (on Linux, a thread's nice value is its own).
async fn in_background<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = rustix::process::nice(10);
            let _ = tx.send(work());
        })
        .map_err(|e| e.to_string())?;
    rx.await.map_err(|e| e.to_string())
}

/// Sweep when a collection finished (checked every [`TICK`]) and every [`SWEEP_EVERY`].
pub fn spawn_janitor(janitor: Janitor) {
    let runtime = janitor.raft.runtime().clone();
    runtime.spawn(async move {
        let mut seen = None;
        let mut last = Instant::now() - SWEEP_EVERY;
        loop {
            let status = janitor
                .raft
                .reader()
                .gc_status()
                .ok()
                .and_then(|s| s.last)
                .map(|l| l.run);
            if status != seen || last.elapsed() >= SWEEP_EVERY {
                match janitor.sweep().await {
                    Ok((files, bytes)) => {
                        if files > 0 {
                            tracing::info!(files, bytes, "deleted copies of collected blobs");
                        }
                        seen = status;
                        last = Instant::now();
                    }
                    // No quorum: try again next tick.
                    Err(e) => tracing::debug!(error = %e, "janitor pass skipped"),
                }
            }
            tokio::time::sleep(TICK).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use ipcr_proto::gc::RetentionPolicy;

    use super::*;
    use crate::raft::testing::{db, options};

    fn names(steps: &[GcStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                GcStep::Untag { repo, tag, .. } => format!("untag {repo}:{tag}"),
                GcStep::Manifest { repo, digest } => format!("manifest {repo}@{}", &digest.hex()[..6]),
                GcStep::Unlink { repo, digest } => format!("unlink {repo}@{}", &digest.hex()[..6]),
                GcStep::Drop { digest } => format!("drop {}", &digest.hex()[..6]),
            })
            .collect()
    }

    #[test]
    fn marks_from_tags_through_indexes_and_referrers() {
        let db = db();
        let config = db.commit("a", b"config", 0);
        let (l1, l2, sig) = (
            db.commit("a", b"l1", 0),
            db.commit("a", b"l2", 0),
            db.commit("a", b"sig", 0),
        );
        let orphan = db.commit("a", b"orphan", 0);
        let fresh = db.commit("a", b"fresh", 9_500);
        let (amd64, _) = db.push("a", None, (&[&config, &l1], &[], None), 0);
        let (arm64, _) = db.push("a", None, (&[&config, &l2], &[], None), 0);
        let (index, _) = db.push("a", Some("latest"), (&[], &[&amd64, &arm64], None), 0);
        let (signature, _) = db.push("a", None, (&[&sig], &[], Some(&index)), 0);
        // An untagged image and its own signature, and a pushed manifest whose tag moved on.
        let (old, _) = db.push("a", Some("old"), (&[&config, &orphan], &[], None), 0);
        let (old_sig, _) = db.push("a", None, (&[&sig], &[], Some(&old)), 0);
        db.ok(Command::Untag {
            repo: "a".parse().unwrap(),
            tag: "old".parse().unwrap(),
        });
        let view = db.reader().view().unwrap();
        let keep_all = plan(&view, &options(1_000, false), 10_000).unwrap();
        assert!(keep_all.untag.is_empty() && keep_all.manifests.is_empty());
        assert!(keep_all.blobs.is_empty(), "{:?}", names(&keep_all.blobs));

        let p = plan(&view, &options(1_000, true), 10_000).unwrap();
        // The signature of the untagged image goes after it; the fresh upload stays.
        let old_first = vec![
            format!("manifest a@{}", &old.hex()[..6]),
            format!("manifest a@{}", &old_sig.hex()[..6]),
        ];
        assert_eq!(names(&p.manifests), old_first);
        assert_eq!(names(&p.blobs), vec![format!("unlink a@{}", &orphan.hex()[..6])]);
        assert_eq!((p.tally.blobs_removed, p.tally.bytes_removed), (1, 6));
        let _ = (signature, fresh);

        // Applied, the plan leaves every tag whole.
        db.begin("r", 10_000);
        let steps = [p.untag, p.manifests, p.blobs].concat();
        let t = db.collect("r", 10_000, options(1_000, true), steps);
        assert_eq!((t.refused, t.blobs_removed), (0, 1));
        let reader = db.reader();
        for d in [&config, &l1, &l2, &sig] {
            assert!(reader.blob(&"a".parse().unwrap(), d).unwrap().is_some());
        }
        let again = plan(&reader.view().unwrap(), &options(1_000, true), 10_000).unwrap();
        assert!(again.manifests.is_empty() && again.blobs.is_empty());
    }

    #[test]
    fn retention_untags_and_the_untagged_go_in_the_same_collection() {
        let db = db();
        let mut images = Vec::new();
        for i in 0..4u64 {
            let layer = db.commit("ci/app", format!("layer{i}").as_bytes(), 0);
            let (m, _) = db.push(
                "ci/app",
                Some(&format!("build-{i}")),
                (&[&layer], &[], None),
                i * 100,
            );
            images.push((m, layer));
        }
        let mut o = options(0, true);
        o.retention = vec![RetentionPolicy {
            repositories: vec!["ci/**".into()],
            keep_newest: Some(2),
            ..Default::default()
        }];
        o.retention_dry_run = true;
        let view = db.reader().view().unwrap();
        let dry = plan(&view, &o, 1_000).unwrap();
        assert!(dry.untag.is_empty() && dry.manifests.is_empty());
        assert_eq!(dry.tally.repositories["ci/app"].tags, 2);
        o.retention_dry_run = false;
        let p = plan(&view, &o, 1_000).unwrap();
        assert_eq!(
            names(&p.untag),
            vec!["untag ci/app:build-0", "untag ci/app:build-1"]
        );
        assert_eq!(
            (p.manifests.len(), p.blobs.len(), p.tally.blobs_removed),
            (2, 2, 2)
        );
    }
}
