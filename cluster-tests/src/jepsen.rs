//! A Jepsen-style test of the cluster's tag reads: concurrent clients write unique manifests to
//! a few tags and read them back through random nodes while a nemesis pauses (`SIGSTOP`),
//! kills (`kill -9`) and restarts nodes and partitions them off (network namespaces); then
//! every tag's history is checked for linearizability ([`crate::linearizability`]).
//!
//! What is checked is the promise of docs/architecture.md (Consistency): a tag read through any
//! node returns the value of the latest write that completed before the read began, or of a
//! write concurrent with it, and once any client has seen a value no later read returns an
//! older one. A write whose answer was lost (a timeout, a `5xx`) may or may not have happened;
//! a read that failed tells nothing. A `4xx` to a write means it did not happen.
//!
//! Called by `tests/cluster_linearizable.rs` (bounded) and by the `jepsen` binary (as long and
//! as often as asked). Needs root for the namespaces; see [`crate::netns`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;

use crate::linearizability::{self, Nanos, Op, Operation, Violation};
use crate::netns::NsCluster;

/// The repository every manifest goes to.
const REPO: &str = "jepsen/register";
/// How long a client waits for one answer before counting it as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a status query of the nemesis may take (a paused node never answers).
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `SIGSTOP` the leader for 4 to 6 s (it is deposed meanwhile and resumes as a stale
    /// leader), then `SIGCONT`.
    PauseLeader,
    /// `SIGSTOP` a follower for 2 to 4 s.
    PauseFollower,
    /// `kill -9` the leader; restart it 1 to 3 s later.
    KillLeader,
    /// `kill -9` any node; restart it 1 to 3 s later.
    KillAny,
    /// Cut the leader off from the other nodes for 3 to 5 s (clients still reach it).
    PartitionLeader,
    /// Cut a random node off for 3 to 5 s.
    PartitionAny,
}

impl Fault {
    /// Every fault.
    pub const ALL: [Fault; 6] = [
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::KillLeader,
        Fault::KillAny,
        Fault::PartitionLeader,
        Fault::PartitionAny,
    ];
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Concurrent clients.
    pub clients: usize,
    /// Tags (independent registers).
    pub tags: usize,
    /// How long the clients and the nemesis run.
    pub duration: Duration,
    /// Seed of every random choice (printed, so that a run can be repeated in spirit: the
    /// timing of a real cluster never repeats exactly).
    pub seed: u64,
    /// The faults to choose from.
    pub faults: Vec<Fault>,
    /// `REGISTRY_*` settings of every node.
    pub env: Vec<(String, String)>,
}

impl Config {
    /// Six clients on three tags with every fault, as in issue 9; `duration` and `seed` given.
    pub fn standard(duration: Duration, seed: u64) -> Config {
        Config {
            clients: 6,
            tags: 3,
            duration,
            seed,
            faults: Fault::ALL.to_vec(),
            env: vec![
                // Snapshots every few hundred entries: restarted and lagging nodes install them.
                ("REGISTRY_CLUSTER_SNAPSHOT_LOGS".into(), "100".into()),
                ("REGISTRY_LOG_LEVEL".into(), "info".into()),
            ],
        }
    }
}

/// What a run found.
pub struct Outcome {
    /// Every tag's operations.
    pub histories: BTreeMap<String, Vec<Operation>>,
    /// What the nemesis did, with times.
    pub nemesis: Vec<String>,
    /// The first violation of each tag that has one.
    pub violations: BTreeMap<String, Box<Violation>>,
    /// Counts, for the report.
    pub stats: Stats,
}

/// Operation counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Writes acknowledged with `201`.
    pub writes_ok: u64,
    /// Writes whose answer was lost or was a `5xx`.
    pub writes_unknown: u64,
    /// Writes refused with a `4xx`.
    pub writes_refused: u64,
    /// Reads that returned a value or `404`.
    pub reads_ok: u64,
    /// Reads that failed.
    pub reads_failed: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writes: {} acknowledged, {} indeterminate, {} refused; reads: {} answered, {} failed",
            self.writes_ok, self.writes_unknown, self.writes_refused, self.reads_ok, self.reads_failed
        )
    }
}

/// A small deterministic generator (xorshift64*), so a run's choices follow from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration in `[lo, hi]` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// A seed from the clock, for runs that do not name one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn http() -> Client {
    Client::builder()
        .no_proxy()
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// The config blob every manifest refers to.
fn config_blob() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec()
}

/// A manifest unique to `label`.
fn manifest(label: &str) -> Vec<u8> {
    let config = config_blob();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": crate::sha256_digest(&config),
            "size": config.len(),
        },
        "layers": [],
        "annotations": { "org.ipcr.jepsen": label },
    })
    .to_string()
    .into_bytes()
}

/// Push the config blob through `base`, retrying while the cluster settles.
fn push_config(base: &str) {
    let http = http();
    let blob = config_blob();
    let url = format!(
        "{base}/v2/{REPO}/blobs/uploads/?digest={}",
        crate::sha256_digest(&blob)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http.post(&url).body(blob.clone()).send() {
            Ok(r) if r.status() == StatusCode::CREATED => return,
            Ok(r) => assert!(
                Instant::now() < deadline,
                "pushing the config blob: {}",
                r.status()
            ),
            Err(e) => assert!(Instant::now() < deadline, "pushing the config blob: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One finished operation of a client, with its tag.
struct Record {
    tag: String,
    op: Operation,
}

/// What a write's answer says about it.
enum Written {
    Done,
    Refused,
    Unknown,
}

fn write(http: &Client, base: &str, tag: &str, body: Vec<u8>) -> Written {
    let sent = http
        .put(format!("{base}/v2/{REPO}/manifests/{tag}"))
        .header("Content-Type", crate::oci::MANIFEST)
        .body(body)
        .send();
    match sent {
        Ok(r) if r.status() == StatusCode::CREATED => Written::Done,
        Ok(r) if r.status().is_client_error() => Written::Refused,
        _ => Written::Unknown,
    }
}

/// A read's answer: `Some(None)` for `404`, `None` when it failed.
fn read(http: &Client, base: &str, tag: &str) -> Option<Option<String>> {
    let r = http
        .get(format!("{base}/v2/{REPO}/manifests/{tag}"))
        .header("Accept", crate::oci::MANIFEST)
        .send()
        .ok()?;
    match r.status() {
        StatusCode::OK => {
            let digest = r
                .headers()
                .get("Docker-Content-Digest")?
                .to_str()
                .ok()?
                .to_string();
            // The body must arrive whole for the read to count.
            r.bytes().ok()?;
            Some(Some(digest))
        }
        StatusCode::NOT_FOUND => Some(None),
        _ => None,
    }
}

/// One client: until `stop`, pick a node, a tag and read or write.
fn client(
    id: usize,
    bases: Vec<String>,
    tags: Vec<String>,
    seed: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> (Vec<Record>, Stats) {
    let http = http();
    let mut rng = Rng::new(seed);
    let mut records = Vec::new();
    let mut stats = Stats::default();
    let now = || epoch.elapsed().as_nanos() as Nanos;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let base = &bases[rng.below(bases.len() as u64) as usize];
        let tag = tags[rng.below(tags.len() as u64) as usize].clone();
        if rng.below(2) == 0 {
            seq += 1;
            let body = manifest(&format!("client{id}-{seq}"));
            let value = crate::sha256_digest(&body);
            let call = now();
            let answer = write(&http, base, &tag, body);
            let ret = now();
            let ret = match answer {
                Written::Done => {
                    stats.writes_ok += 1;
                    Some(ret)
                }
                Written::Refused => {
                    stats.writes_refused += 1;
                    continue;
                }
                Written::Unknown => {
                    stats.writes_unknown += 1;
                    None
                }
            };
            records.push(Record {
                tag,
                op: Operation {
                    client: id,
                    op: Op::Write(value),
                    call,
                    ret,
                },
            });
        } else {
            let call = now();
            let answer = read(&http, base, &tag);
            let ret = now();
            match answer {
                Some(value) => {
                    stats.reads_ok += 1;
                    records.push(Record {
                        tag,
                        op: Operation {
                            client: id,
                            op: Op::Read(value),
                            call,
                            ret: Some(ret),
                        },
                    });
                }
                None => {
                    stats.reads_failed += 1;
                    // A failing node is often failing for a while: do not hammer it.
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    (records, stats)
}

/// The leader's index, when the reachable nodes name one that is among them.
fn leader(cluster: &mut NsCluster) -> Option<usize> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
    for i in 0..cluster.nodes.len() {
        let node = &mut cluster.nodes[i];
        if !node.is_running() || node.process().is_paused() {
            continue;
        }
        if let Ok(s) = crate::cluster::status_within(&node.cluster_url(), STATUS_TIMEOUT) {
            ids.insert(s.id, i);
            if let Some(l) = s.leader {
                *votes.entry(l).or_default() += 1;
            }
        }
    }
    let (id, _) = votes.into_iter().max_by_key(|(_, n)| *n)?;
    ids.get(&id).copied()
}

/// The nemesis: faults one after another until `until`, each undone before the next.
fn nemesis(cluster: &mut NsCluster, config: &Config, epoch: Instant, until: Instant) -> Vec<String> {
    let mut rng = Rng::new(config.seed ^ 0xA5A5_5A5A);
    let mut log = Vec::new();
    let n = cluster.nodes.len();
    let stamp = |what: String| format!("{:9.3} s  {what}", epoch.elapsed().as_secs_f64());
    while Instant::now() < until {
        std::thread::sleep(rng.millis(1000, 3000));
        if Instant::now() >= until {
            break;
        }
        let fault = config.faults[rng.below(config.faults.len() as u64) as usize];
        let leader = leader(cluster);
        let any = rng.below(n as u64) as usize;
        let target = match fault {
            Fault::PauseLeader | Fault::KillLeader | Fault::PartitionLeader => match leader {
                Some(l) => l,
                None => continue,
            },
            Fault::PauseFollower => {
                match (0..n).find(|&i| Some(i) != leader && cluster.nodes[i].is_running()) {
                    Some(f) => f,
                    None => continue,
                }
            }
            Fault::KillAny | Fault::PartitionAny => any,
        };
        if !cluster.nodes[target].is_running() {
            continue;
        }
        let name = cluster.nodes[target].name().to_string();
        match fault {
            Fault::PauseLeader | Fault::PauseFollower => {
                let hold = if fault == Fault::PauseLeader {
                    rng.millis(4000, 6000)
                } else {
                    rng.millis(2000, 4000)
                };
                cluster.nodes[target].process().pause();
                log.push(stamp(format!("{fault:?}: SIGSTOP {name} for {hold:?}")));
                std::thread::sleep(hold);
                cluster.nodes[target].process().resume();
                log.push(stamp(format!("SIGCONT {name}")));
            }
            Fault::KillLeader | Fault::KillAny => {
                let down = rng.millis(1000, 3000);
                cluster.nodes[target].process().kill9();
                log.push(stamp(format!("{fault:?}: kill -9 {name}, down for {down:?}")));
                std::thread::sleep(down);
                cluster.nodes[target].restart_nowait();
                log.push(stamp(format!("restarted {name}")));
            }
            Fault::PartitionLeader | Fault::PartitionAny => {
                let hold = rng.millis(3000, 5000);
                cluster.lab.isolate(target);
                log.push(stamp(format!("{fault:?}: isolated {name} for {hold:?}")));
                std::thread::sleep(hold);
                cluster.lab.heal(target);
                log.push(stamp(format!("healed {name}")));
            }
        }
    }
    log
}

/// Run `config` on a fresh three-node cluster in network namespaces and check every tag.
pub fn run(config: &Config) -> Outcome {
    let env: Vec<(&str, &str)> = config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut cluster = NsCluster::start_with_env(3, &env);
    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.base_url()).collect();
    push_config(&bases[0]);
    let tags: Vec<String> = (0..config.tags).map(|t| format!("t{t}")).collect();
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..config.clients)
        .map(|c| {
            let (bases, tags, stop) = (bases.clone(), tags.clone(), stop.clone());
            let seed = config.seed.wrapping_add(c as u64 + 1);
            std::thread::spawn(move || client(c, bases, tags, seed, epoch, stop))
        })
        .collect();
    let until = epoch + config.duration;
    let mut nemesis_log = nemesis(&mut cluster, config, epoch, until);
    // Every fault is undone by now; let the cluster settle while the clients go on, so that the
    // history ends with reads of the healed cluster.
    let all: Vec<usize> = (0..cluster.nodes.len()).collect();
    for i in 0..cluster.nodes.len() {
        let node = &mut cluster.nodes[i];
        if !node.is_running() {
            node.restart_nowait();
        }
    }
    for i in 0..cluster.nodes.len() {
        cluster.nodes[i].wait_ready(crate::node::READY_TIMEOUT);
    }
    cluster.wait_leader_among(&all, crate::cluster::CLUSTER_TIMEOUT);
    std::thread::sleep(Duration::from_secs(3));
    nemesis_log.push(format!(
        "{:9.3} s  healed; clients stop",
        epoch.elapsed().as_secs_f64()
    ));
    stop.store(true, Ordering::Relaxed);
    let mut histories: BTreeMap<String, Vec<Operation>> =
        tags.iter().map(|t| (t.clone(), Vec::new())).collect();
    let mut stats = Stats::default();
    for w in workers {
        let (records, s) = w.join().expect("a client thread panicked");
        stats.writes_ok += s.writes_ok;
        stats.writes_unknown += s.writes_unknown;
        stats.writes_refused += s.writes_refused;
        stats.reads_ok += s.reads_ok;
        stats.reads_failed += s.reads_failed;
        for r in records {
            histories.entry(r.tag).or_default().push(r.op);
        }
    }
    let violations: BTreeMap<String, Box<Violation>> = histories
        .iter()
        .filter_map(|(tag, h)| linearizability::check(h).err().map(|v| (tag.clone(), v)))
        .collect();
    if !violations.is_empty() {
        // Keep the nodes' logs and data for the post-mortem.
        for node in &mut cluster.nodes {
            node.process().keep();
        }
    }
    Outcome {
        histories,
        nemesis: nemesis_log,
        violations,
        stats,
    }
}

impl Outcome {
    /// A report of the run: counts, what the nemesis did, and each violation.
    pub fn report(&self) -> String {
        let mut out = format!("{}\nnemesis:\n", self.stats);
        for line in &self.nemesis {
            out.push_str(&format!("  {line}\n"));
        }
        for (tag, v) in &self.violations {
            out.push_str(&format!("tag {tag}: {v}\n"));
        }
        out
    }

    /// Write every history as JSON lines (`tag`, `client`, `op`, `value`, `call`, `ret` in
    /// nanoseconds) to `path`, for a post-mortem.
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut out = String::new();
        for (tag, ops) in &self.histories {
            for o in ops {
                let (kind, value) = match &o.op {
                    Op::Write(v) => ("write", Some(v.clone())),
                    Op::Read(v) => ("read", v.clone()),
                };
                let line = serde_json::json!({
                    "tag": tag, "client": o.client, "op": kind, "value": value,
                    "call": o.call, "ret": o.ret,
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
        std::fs::write(path, out)
    }
}
