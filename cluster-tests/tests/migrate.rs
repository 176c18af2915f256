//! `ipcr-node migrate` as an operator runs it: the real binary, from a real distribution 2.8.2
//! seeded by skopeo ([`cluster_tests::seed`]) into a real IPCR node, every copy checked digest
//! for digest against what was pushed:
//!
//! - behind htpasswd, every tag, index and blob arrives with its digest and media type; the
//!   signature is listed by IPCR's referrers API and the fallback tag is not copied as a tag; a
//!   second run copies nothing; `--tags` copies exactly its tags, `--dry-run` writes nothing;
//! - credentials from a Docker `config.json`, and a wrong password refused as unauthorized;
//! - Docker's token flow, with tokens that distribution refuses mid-run, and anonymous callers;
//! - `kill -9` of the migration halfway: every tag at IPCR is complete, and a second run
//!   finishes the rest, counting what was done as up to date;
//! - `429` with `Retry-After`, `503`, bodies cut off (through [`cluster_tests::faults`]), and
//!   the source killed and restarted mid-run: retried, and the copies are byte-exact;
//! - `--catalog` into a prefix;
//! - IPCR serving TLS with its own token endpoint as the destination: refused without the CA
//!   (no fall back to plain HTTP), accepted with `--dest-cert-dir` or `--dest-tls-verify=false`.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cluster_tests::Node;
use cluster_tests::faults::{Fault, FaultProxy, Rule, When};
use cluster_tests::node::node_binary;
use cluster_tests::secure::{self, Access, SecuredNode};
use cluster_tests::seed::{COSIGN_SIGNATURE, SMALL_LAYER, Seeded, Seeder, UpstreamClient};
use cluster_tests::tools::{Output, require_tool, run};
use cluster_tests::upstream::{DISTRIBUTION_LEEWAY, TokenConfig, TokenServer, Upstream};
use serde_json::Value;

const ALICE: (&str, &str) = ("alice", "alice-pw");
const ALICE_CREDS: &str = "alice:alice-pw";
const REPO: &str = "team/app";
/// The longest a migration in these tests may run.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(180);
/// The OCI image manifest media type.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `ipcr-node migrate --no-progress <args>`, with `DOCKER_CONFIG` set to `docker_config` (an
/// empty directory unless a test wrote a `config.json` there): no run reads the user's own.
fn migrate_command(docker_config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(node_binary());
    cmd.arg("migrate")
        .arg("--no-progress")
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("IPCR_LOG");
    cmd
}

/// Run a migration to its end with an empty Docker config.
fn migrate(args: &[&str]) -> Output {
    let config = tempfile::tempdir().expect("tempdir");
    run(&mut migrate_command(config.path(), args), MIGRATE_TIMEOUT)
}

/// Run a migration that must exit 0; its summary.
fn must_migrate(args: &[&str]) -> (Output, Summary) {
    let out = migrate(args);
    assert!(out.status.success(), "{}", out.describe());
    let s = Summary::of(&out);
    (out, s)
}

/// What a run's closing summary (stdout) says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Summary {
    tags_copied: u64,
    up_to_date: u64,
    failed: u64,
    blobs_copied: u64,
    blobs_present: u64,
    blobs_mounted: u64,
    manifests_written: u64,
    referrers_written: u64,
}

/// The number just before `suffix` in `line`.
fn number_before(line: &str, suffix: &str) -> u64 {
    let end = line
        .find(suffix)
        .unwrap_or_else(|| panic!("no {suffix:?} in {line:?}"));
    let digits: String = line[..end]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before {suffix:?} in {line:?}"))
}

impl Summary {
    fn of(out: &Output) -> Summary {
        let text = out.stdout_text();
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no summary line {start:?}:\n{}", out.describe()))
                .to_string()
        };
        let dry = text.starts_with("would copy");
        let tags = line(if dry { "would copy " } else { "copied " });
        let blobs = line("blobs: ");
        Summary {
            tags_copied: number_before(&tags, " tags, "),
            up_to_date: number_before(&tags, " up to date"),
            failed: number_before(&tags, " failed"),
            blobs_copied: number_before(&blobs, if dry { " would copy (" } else { " copied (" }),
            blobs_present: number_before(&blobs, " already there"),
            blobs_mounted: number_before(&blobs, " mounted"),
            manifests_written: number_before(&blobs, " written"),
            referrers_written: number_before(&blobs, " of them referrers"),
        }
    }
}

/// Stderr lines of a run starting with `prefix`.
fn lines_starting(out: &Output, prefix: &str) -> usize {
    out.stderr_text()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

/// Assert that `out` failed (exit 1) and says one of `any_of`, in lowercase.
fn must_fail_saying(out: &Output, what: &str, any_of: &[&str]) {
    assert_eq!(out.status.code(), Some(1), "{what}:\n{}", out.describe());
    let text = format!("{}{}", out.stdout_text(), out.stderr_text()).to_lowercase();
    assert!(
        any_of.iter().any(|w| text.contains(w)),
        "{what} did not say any of {any_of:?}:\n{}",
        out.describe()
    );
}

/// The tags `client` lists for `repo`, sorted; empty when the repository is unknown.
fn tags_of(client: &UpstreamClient, repo: &str) -> Vec<String> {
    match client.list_tags(repo) {
        Ok(mut t) => {
            t.sort();
            t
        }
        Err(404) => Vec::new(),
        Err(s) => panic!("tags/list of {repo}: status {s}"),
    }
}

/// Assert that `client`'s `repo` holds `reference` whole: its manifest, through an index every
/// child manifest, and every blob (config and layers) each names, with its size. Answers the
/// blobs it names.
fn must_be_complete(client: &UpstreamClient, repo: &str, reference: &str) -> BTreeSet<String> {
    let m = client
        .get_manifest(repo, reference)
        .unwrap_or_else(|s| panic!("{repo}:{reference}: status {s}"));
    let v: Value = serde_json::from_slice(&m.bytes).expect("a JSON manifest");
    let mut blobs = BTreeSet::new();
    for child in v["manifests"].as_array().into_iter().flatten() {
        let d = child["digest"].as_str().expect("a child digest");
        blobs.extend(must_be_complete(client, repo, d));
    }
    let config = v.get("config").into_iter();
    for blob in config.chain(v["layers"].as_array().into_iter().flatten()) {
        let d = blob["digest"].as_str().expect("a blob digest");
        let size = blob["size"].as_u64().expect("a blob size");
        assert_eq!(
            client.blob_size(repo, d),
            Ok(size),
            "{repo}:{reference} names blob {d}, which must be there"
        );
        blobs.insert(d.to_string());
    }
    blobs
}

/// Assert that `client`'s `repo` lists exactly `tags`, each naming the digest `seeded` pushed
/// under it and complete ([`must_be_complete`]). Answers the blobs they name.
fn must_hold_tags(client: &UpstreamClient, repo: &str, seeded: &Seeded, tags: &[String]) -> BTreeSet<String> {
    assert_eq!(tags_of(client, repo), tags, "the tags of {repo}");
    let mut blobs = BTreeSet::new();
    for tag in tags {
        let got = client.get_manifest(repo, tag).expect("a listed tag");
        assert_eq!(
            cluster_tests::sha256_digest(&got.bytes),
            seeded.tags[tag].digest,
            "{repo}:{tag}"
        );
        blobs.extend(must_be_complete(client, repo, tag));
    }
    blobs
}

/// A migration running in the background, its output going to files.
struct Running {
    child: Option<Child>,
    dir: tempfile::TempDir,
    started: Instant,
    command: String,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        Running::spawn(args, false)
    }

    /// [`Running::start`] with the client's debug log (each retry) on stderr.
    fn start_logging(args: &[&str]) -> Running {
        Running::spawn(args, true)
    }

    fn spawn(args: &[&str], debug: bool) -> Running {
        let dir = tempfile::Builder::new()
            .prefix("ipcr-migrate-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("docker")).expect("docker config dir");
        let mut cmd = migrate_command(&dir.path().join("docker"), args);
        if debug {
            cmd.env("IPCR_LOG", "ipcr_client=debug");
        }
        let command = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawning ipcr-node migrate");
        Running {
            child: Some(child),
            dir,
            started: Instant::now(),
            command,
        }
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Tags reported finished so far (`[k/n] repo:tag: ...`).
    fn tags_done(&self) -> usize {
        self.file("stderr").lines().filter(|l| l.starts_with('[')).count()
    }

    /// Wait until at least `n` tags are reported finished; panics after `timeout` or if the
    /// run ends first.
    fn wait_tags_done(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.tags_done() < n {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("polling migrate") {
                panic!(
                    "migrate exited with {status} before {n} tags were done:\n{}",
                    self.file("stderr")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} tags done after {timeout:?}, waiting for {n}:\n{}",
                self.tags_done(),
                self.file("stderr")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL to migrate");
        child.wait().expect("reaping migrate");
    }

    /// Wait for the end of the run; its output and how long it ran.
    fn finish(mut self, timeout: Duration) -> (Output, Duration) {
        let mut child = self.child.take().expect("running");
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("polling migrate") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("migrate still ran after {timeout:?}:\n{}", self.file("stderr"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = self.started.elapsed();
        let out = Output {
            command: self.command.clone(),
            status,
            stdout: self.file("stdout").into_bytes(),
            stderr: self.file("stderr").into_bytes(),
        };
        (out, took)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Seed `n_tags` tags, the index `multi` and a cosign signature of `v1` into `REPO` of `up`.
fn seed(skopeo: &Path, up: &Upstream, creds: Option<(&str, &str)>, n_tags: usize, layer: usize) -> Seeded {
    let seeder = Seeder::new(skopeo, up, creds);
    let mut seeded = Seeded::new(REPO);
    seeder.seed_tags(&mut seeded, n_tags, layer);
    seeder.seed_index(&mut seeded, "multi");
    seeder.seed_signature(&mut seeded, "v1", COSIGN_SIGNATURE);
    seeded
}

/// Assert that IPCR's referrers API lists exactly the signatures of `seeded`, each with its
/// artifact type.
fn must_list_referrers(client: &UpstreamClient, repo: &str, seeded: &Seeded) {
    for sig in &seeded.signatures {
        let listed = client
            .referrers(repo, &sig.subject.digest)
            .unwrap_or_else(|s| panic!("referrers of {} in {repo}: status {s}", sig.subject.digest));
        let got: Vec<(&str, &str, &str)> = listed
            .iter()
            .map(|d| {
                (
                    d["digest"].as_str().unwrap_or(""),
                    d["artifactType"].as_str().unwrap_or(""),
                    d["mediaType"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            got,
            [(
                sig.manifest.digest.as_str(),
                sig.artifact_type.as_str(),
                OCI_MANIFEST
            )],
            "the referrers of {repo}@{}",
            sig.subject.digest
        );
        assert_eq!(
            client.get_manifest(repo, &sig.fallback_tag).map(|_| ()),
            Err(404),
            "the fallback tag is not a tag at IPCR"
        );
    }
}

#[test]
fn htpasswd_source_arrives_whole_and_a_second_run_copies_nothing() {
    let (Some(skopeo), Some(up)) = (require_tool("skopeo"), Upstream::htpasswd(&[ALICE])) else {
        return;
    };
    let seeded = seed(&skopeo, &up, Some(ALICE), 30, SMALL_LAYER);
    let node = Node::start("migrate-htpasswd");
    let ipcr = UpstreamClient::at(&node.base_url(), None);
    let src = format!("{}/{REPO}", up.host());
    let copy = seeded.without_fallback_tags();
    let plain_tags = seeded.plain_tags();
    assert_eq!(plain_tags.len(), 31, "30 tags and the index");

    let (first, s) = must_migrate(&["--src-creds", ALICE_CREDS, &src, &node.host()]);
    assert_eq!(
        s,
        Summary {
            tags_copied: 31,
            blobs_copied: seeded.blobs.len() as u64,
            // 30 images, the index and its 3 platforms, the signature.
            manifests_written: copy.manifests.len() as u64,
            referrers_written: 1,
            ..Summary::default()
        },
        "{}",
        first.describe()
    );
    assert_eq!(copy.manifests.len(), 35);
    assert_eq!(lines_starting(&first, "copied sha256:"), seeded.blobs.len());
    assert_eq!(lines_starting(&first, "["), 31, "one line per tag");
    copy.must_be_held_by(&ipcr, REPO);
    must_list_referrers(&ipcr, REPO, &seeded);
    assert_eq!(tags_of(&ipcr, REPO), plain_tags);

    // Everything is there: every tag up to date, no blob even looked at again. Quickly: both
    // loopback registries speak plain HTTP, and the HTTPS probe before it is not retried.
    let started = Instant::now();
    let (second, s) = must_migrate(&["--src-creds", ALICE_CREDS, &src, &node.host()]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a run with nothing to copy took {:?}",
        started.elapsed()
    );
    assert_eq!(
        s,
        Summary {
            up_to_date: 31,
            ..Summary::default()
        },
        "{}",
        second.describe()
    );
    assert!(second.stdout_text().contains("blobs: 0 copied"));

    // Only the tags the expression matches; their blobs are mounted from the first copy.
    let (filtered, s) = must_migrate(&[
        "--src-creds",
        ALICE_CREDS,
        "--tags",
        "^v1[0-9]$",
        &src,
        &format!("{}/filtered", node.host()),
    ]);
    let wanted: Vec<String> = (10..20).map(|i| format!("v{i}")).collect();
    let blobs = must_hold_tags(&ipcr, "filtered", &seeded, &wanted);
    // 10 configs, 10 own layers, the base, and the middle layers of groups 3 to 6.
    assert_eq!(blobs.len(), 25);
    assert_eq!(
        (s.tags_copied, s.blobs_copied, s.blobs_mounted, s.failed),
        (10, 0, 25, 0),
        "{}",
        filtered.describe()
    );

    // A dry run names what it would copy and writes nothing.
    let (dry, s) = must_migrate(&[
        "--src-creds",
        ALICE_CREDS,
        "--dry-run",
        &src,
        &format!("{}/dry", node.host()),
    ]);
    assert_eq!(
        (s.tags_copied, s.blobs_copied, s.failed),
        (31, seeded.blobs.len() as u64, 0),
        "{}",
        dry.describe()
    );
    assert_eq!(lines_starting(&dry, "would copy sha256:"), seeded.blobs.len());
    assert_eq!(lines_starting(&dry, "copied sha256:"), 0);
    assert!(tags_of(&ipcr, "dry").is_empty(), "a dry run wrote tags");
    let some_blob = seeded.blobs.keys().next().expect("a blob");
    assert_eq!(ipcr.blob_size("dry", some_blob), Err(404));
}

/// A Docker `config.json` in `dir` holding `user:password` for `host`, as `docker login`
/// writes it.
fn write_docker_config(dir: &Path, host: &str, user_password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(user_password);
    let config = serde_json::json!({"auths": {host: {"auth": auth}}});
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config.json");
}

#[test]
fn credentials_come_from_the_docker_config() {
    let (Some(skopeo), Some(up)) = (require_tool("skopeo"), Upstream::htpasswd(&[ALICE])) else {
        return;
    };
    let seeded = seed(&skopeo, &up, Some(ALICE), 2, SMALL_LAYER);
    let node = Node::start("migrate-docker-config");
    let ipcr = UpstreamClient::at(&node.base_url(), None);
    let src = format!("{}/{REPO}", up.host());
    let config = tempfile::tempdir().expect("tempdir");

    write_docker_config(config.path(), &up.host(), ALICE_CREDS);
    let out = run(
        &mut migrate_command(config.path(), &[&src, &node.host()]),
        MIGRATE_TIMEOUT,
    );
    assert!(out.status.success(), "{}", out.describe());
    seeded.without_fallback_tags().must_be_held_by(&ipcr, REPO);

    write_docker_config(config.path(), &up.host(), "alice:not-her-password");
    let dest = format!("{}/wrong", node.host());
    let out = run(
        &mut migrate_command(config.path(), &[&src, &dest]),
        MIGRATE_TIMEOUT,
    );
    must_fail_saying(&out, "a wrong password in config.json", &["unauthorized"]);
    assert!(tags_of(&ipcr, "wrong").is_empty());
}

#[test]
fn token_flow_renews_tokens_refused_mid_run() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let server = TokenServer::start(TokenConfig::users(&[ALICE]));
    let Some(up) = Upstream::token(&server) else {
        return;
    };
    let seeded = seed(&skopeo, &up, Some(ALICE), 8, SMALL_LAYER);
    let node = Node::start("migrate-token");
    let ipcr = UpstreamClient::at(&node.base_url(), None);
    let copy = seeded.without_fallback_tags();

    let issued = server.issued();
    let src = format!("{}/{REPO}", up.host());
    let (out, s) = must_migrate(&["--src-creds", ALICE_CREDS, &src, &format!("{}/copy", node.host())]);
    assert_eq!((s.tags_copied, s.failed), (9, 0), "{}", out.describe());
    copy.must_be_held_by(&ipcr, "copy");
    must_list_referrers(&ipcr, "copy", &seeded);
    assert!(server.issued() > issued, "no token was fetched");

    // Tokens that distribution refuses 1 to 2 s after issue, while `expires_in` says 300 s:
    // the client learns it only from a 401. A delay on every request of the repository
    // through the proxy makes the run outlast several tokens.
    let window = Duration::from_secs(2);
    let lifetime = Duration::from_secs(300);
    server.reconfigure(TokenConfig {
        lifetime,
        backdate_exp: DISTRIBUTION_LEEWAY + lifetime - window,
        ..TokenConfig::users(&[ALICE])
    });
    let proxy = FaultProxy::start(&up.base_url());
    proxy.set(Rule::new(Fault::Delay(Duration::from_millis(100)), When::Always).on_path("/v2/team/app/"));
    let issued = server.issued();
    let started = Instant::now();
    let (out, s) = must_migrate(&[
        "--src-creds",
        ALICE_CREDS,
        "--concurrency",
        "1",
        &format!("{}/{REPO}", proxy.host()),
        &format!("{}/expiring", node.host()),
    ]);
    let took = started.elapsed();
    assert_eq!((s.tags_copied, s.failed), (9, 0), "{}", out.describe());
    assert_eq!(
        s.blobs_copied,
        seeded.blobs.len() as u64,
        "every blob came from the source"
    );
    copy.must_be_held_by(&ipcr, "expiring");
    must_list_referrers(&ipcr, "expiring", &seeded);
    let refused: Vec<_> = proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.status == 401 && e.path.starts_with("/v2/team/app/"))
        .collect();
    eprintln!(
        "expiring tokens: the run took {took:?}, {} requests refused, {} tokens issued",
        refused.len(),
        server.issued() - issued
    );
    assert!(
        took > 2 * window && !refused.is_empty(),
        "the run ({took:?}) saw no token refused: the test does not test renewal"
    );
    assert!(
        server.issued() - issued >= 2,
        "{} tokens for a run of {took:?} with tokens refused after {window:?}",
        server.issued() - issued
    );

    // Without credentials the token server grants nothing, and distribution refuses.
    server.reconfigure(TokenConfig::users(&[ALICE]));
    let out = migrate(&[&src, &format!("{}/anonymous", node.host())]);
    must_fail_saying(&out, "an anonymous migration", &["unauthorized"]);
    assert!(tags_of(&ipcr, "anonymous").is_empty());
}

/// The tags and blobs `client`'s `REPO` holds once it stopped changing: requests a killed
/// client had sent whole may still land after its death.
fn wait_settled(client: &UpstreamClient, seeded: &Seeded) -> (Vec<String>, BTreeSet<String>) {
    let snapshot = || {
        let held: BTreeSet<String> = seeded
            .blobs
            .keys()
            .filter(|d| client.blob_size(REPO, d).is_ok())
            .cloned()
            .collect();
        (tags_of(client, REPO), held)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = snapshot();
    let mut same = 0;
    while same < 3 {
        assert!(Instant::now() < deadline, "{REPO} kept changing for 30 s");
        std::thread::sleep(Duration::from_millis(100));
        let now = snapshot();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn a_migration_killed_halfway_resumes_where_it_stopped() {
    let (Some(skopeo), Some(up)) = (require_tool("skopeo"), Upstream::open()) else {
        return;
    };
    // Plain tar layers of 1.5 MiB (41 distinct), so that one tag takes a while.
    let seeder = Seeder::new(&skopeo, &up, None);
    let mut seeded = Seeded::new(REPO);
    seeder.seed_tags(&mut seeded, 30, 3 << 19);
    let node = Node::start("migrate-resume");
    let ipcr = UpstreamClient::at(&node.base_url(), None);
    let src = format!("{}/{REPO}", up.host());
    let dest = node.host();

    let args = ["--concurrency", "1", src.as_str(), dest.as_str()];
    let mut running = Running::start(&args);
    running.wait_tags_done(10, MIGRATE_TIMEOUT);
    running.kill9();
    let took = running.started.elapsed();
    eprintln!("killed after {took:?}, {} tags done", running.tags_done());

    // Tags are written last: every tag IPCR lists is whole.
    let (present, held) = wait_settled(&ipcr, &seeded);
    assert!(present.len() >= 10, "{present:?}");
    assert!(present.len() < 30, "the kill came after every tag: {present:?}");
    for tag in &present {
        assert_eq!(
            ipcr.get_manifest(REPO, tag)
                .map(|m| cluster_tests::sha256_digest(&m.bytes)),
            Ok(seeded.tags[tag].digest.clone())
        );
        must_be_complete(&ipcr, REPO, tag);
    }

    // What the killed run left: blobs of tags not written yet may be there already.
    let source = UpstreamClient::new(&up, None);
    let mut needed = BTreeSet::new();
    for tag in seeded.tags.keys().filter(|t| !present.contains(t)) {
        needed.extend(must_be_complete(&source, REPO, tag));
    }
    let needed_and_held = needed.intersection(&held).count() as u64;

    let (out, s) = must_migrate(&args);
    assert_eq!(
        s,
        Summary {
            tags_copied: 30 - present.len() as u64,
            up_to_date: present.len() as u64,
            blobs_copied: (seeded.blobs.len() - held.len()) as u64,
            blobs_present: needed_and_held,
            manifests_written: 30 - present.len() as u64,
            ..Summary::default()
        },
        "{}",
        out.describe()
    );
    assert!(s.blobs_copied < seeded.blobs.len() as u64);
    seeded.must_be_held_by(&ipcr, REPO);
}

#[test]
fn source_failures_are_retried_and_copies_stay_exact() {
    let (Some(skopeo), Some(mut up)) = (require_tool("skopeo"), Upstream::open()) else {
        return;
    };
    let seeded = seed(&skopeo, &up, None, 6, SMALL_LAYER);
    let node = Node::start("migrate-faults");
    let ipcr = UpstreamClient::at(&node.base_url(), None);
    let copy = seeded.without_fallback_tags();
    let proxy = FaultProxy::start(&up.base_url());
    let via_proxy = format!("{}/{REPO}", proxy.host());

    // 429 with Retry-After: 1 on the very first request (the ping), then on every 5th manifest
    // request; 503 on every 4th blob request.
    proxy.add(Rule::new(Fault::too_many_requests(1), When::Next(1)));
    proxy.add(Rule::new(Fault::too_many_requests(1), When::Every(5)).on_path("/manifests/"));
    proxy.add(Rule::new(Fault::unavailable(), When::Every(4)).on_path("/blobs/"));
    let started = Instant::now();
    let (out, s) = must_migrate(&[&via_proxy, &format!("{}/retried", node.host())]);
    let took = started.elapsed();
    assert_eq!((s.tags_copied, s.failed), (7, 0), "{}", out.describe());
    copy.must_be_held_by(&ipcr, "retried");
    must_list_referrers(&ipcr, "retried", &seeded);
    let log = proxy.exchanges();
    let faults: Vec<_> = log.iter().filter(|e| e.fault.is_some()).collect();
    let statuses = |code: u16| faults.iter().filter(|e| e.status == code).count();
    eprintln!(
        "faults: the run took {took:?}; {} requests, {} answered 429, {} answered 503",
        log.len(),
        statuses(429),
        statuses(503)
    );
    assert_eq!(faults.len(), proxy.faults_served());
    assert!(faults.len() >= 4, "{faults:#?}");
    assert!(statuses(503) > 0, "no 503 served");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    // Each 429 was asked again no sooner than its Retry-After.
    for (i, e) in log.iter().enumerate().filter(|(_, e)| e.status == 429) {
        let again = log[i + 1..]
            .iter()
            .find(|n| n.method == e.method && n.path == e.path)
            .unwrap_or_else(|| panic!("{} {} was not asked again after its 429", e.method, e.path));
        let gap = again.at - e.at;
        assert!(
            gap >= Duration::from_secs(1),
            "{} {} asked again {gap:?} after a 429 with Retry-After: 1",
            e.method,
            e.path
        );
    }

    // A blob body cut off half-way is fetched again, and IPCR holds the exact bytes.
    let victim = seeded.tags["v2"].digest.clone();
    let layer = {
        let m: Value = serde_json::from_slice(
            &UpstreamClient::new(&up, None)
                .get_manifest(REPO, &victim)
                .expect("v2")
                .bytes,
        )
        .expect("json");
        m["layers"][2]["digest"].as_str().expect("a layer").to_string()
    };
    let size = seeded.blobs[&layer];
    proxy.set(Rule::new(Fault::Cut { after: size / 2 }, When::Next(2)).on_path(&layer));
    // And the tag list and a manifest cut off as the plan reads them.
    for path in ["/tags/list", "/manifests/v3"] {
        proxy.add(
            Rule::new(Fault::Cut { after: 20 }, When::Next(1))
                .on_path(path)
                .on_method("GET"),
        );
    }
    let served = proxy.faults_served();
    let (out, s) = must_migrate(&[&via_proxy, &format!("{}/cut", node.host())]);
    assert_eq!((s.tags_copied, s.failed), (7, 0), "{}", out.describe());
    assert_eq!(proxy.faults_served() - served, 4, "four cut bodies");
    assert_eq!(ipcr.blob_sha256("cut", &layer), Ok(layer.clone()));
    copy.must_be_held_by(&ipcr, "cut");
    let gets = proxy
        .exchanges()
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains(&layer))
        .count();
    assert!(gets >= 3, "the cut blob was fetched {gets} times");

    // The source killed mid-run and back a second later: the retries' backoff covers it. The
    // migration reads the source directly (connections refused while it is down) and writes
    // through a second proxy that slows every upload, so that the run outlasts the outage.
    drop(proxy);
    let slow_dest = FaultProxy::start(&node.base_url());
    slow_dest.set(
        Rule::new(Fault::Delay(Duration::from_millis(200)), When::Always)
            .on_path("/blobs/uploads/")
            .on_method("POST"),
    );
    let mut running = Running::start_logging(&[
        "--concurrency",
        "1",
        &format!("{}/{REPO}", up.host()),
        &format!("{}/source-killed", slow_dest.host()),
    ]);
    running.wait_tags_done(2, MIGRATE_TIMEOUT);
    up.kill9();
    let done_at_kill = running.tags_done();
    std::thread::sleep(Duration::from_secs(1));
    up.restart();
    let (out, took) = running.finish(MIGRATE_TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    assert!(done_at_kill < 7, "the run ended before the source was killed");
    assert!(
        out.stderr_text().contains("retrying"),
        "nothing was retried while the source was down:\n{}",
        out.describe()
    );
    eprintln!("source killed after {done_at_kill} tags; the run took {took:?}");
    let s = Summary::of(&out);
    assert_eq!((s.tags_copied, s.failed), (7, 0), "{}", out.describe());
    copy.must_be_held_by(&ipcr, "source-killed");
    // Byte for byte, read back through the proxy too (`HEAD` keeps its `Content-Length`).
    let through = UpstreamClient::at(&slow_dest.base_url(), None);
    for (blob, size) in &seeded.blobs {
        assert_eq!(ipcr.blob_sha256("source-killed", blob).as_ref(), Ok(blob));
        assert_eq!(through.blob_sha256("source-killed", blob).as_ref(), Ok(blob));
        assert_eq!(through.blob_size("source-killed", blob), Ok(*size));
    }
}

#[test]
fn catalog_copies_every_repository_under_a_prefix() {
    let (Some(skopeo), Some(up)) = (require_tool("skopeo"), Upstream::open()) else {
        return;
    };
    let seeder = Seeder::new(&skopeo, &up, None);
    let mut app = Seeded::new(REPO);
    seeder.seed_tags(&mut app, 2, SMALL_LAYER);
    let mut tool = Seeded::new("tools/builder");
    seeder.seed_tags(&mut tool, 3, SMALL_LAYER);
    seeder.seed_index(&mut tool, "multi");
    let node = Node::start("migrate-catalog");
    let ipcr = UpstreamClient::at(&node.base_url(), None);

    let (out, s) = must_migrate(&["--catalog", &up.host(), &format!("{}/mirror", node.host())]);
    assert_eq!((s.tags_copied, s.failed), (6, 0), "{}", out.describe());
    app.must_be_held_by(&ipcr, "mirror/team/app");
    tool.must_be_held_by(&ipcr, "mirror/tools/builder");
    assert_eq!(tags_of(&ipcr, "mirror/team/app"), app.plain_tags());
    assert_eq!(tags_of(&ipcr, "mirror/tools/builder"), tool.plain_tags());
}

#[test]
fn tls_destination_needs_its_ca_and_never_falls_back_to_plain_http() {
    let (Some(skopeo), Some(htpasswd), Some(up)) =
        (require_tool("skopeo"), require_tool("htpasswd"), Upstream::open())
    else {
        return;
    };
    let seeded = seed(&skopeo, &up, None, 2, SMALL_LAYER);
    let copy = seeded.without_fallback_tags();
    let s = SecuredNode::start("migrate-tls", "127.0.0.1", Access::Tokens, Some(&htpasswd));
    let ipcr = UpstreamClient::with_http(s.client.clone(), &s.node.base_url(), Some(secure::ALICE));
    let creds = format!("{}:{}", secure::ALICE.0, secure::ALICE.1);
    let src = format!("{}/{REPO}", up.host());
    let to = |repo: &str| format!("{}/{repo}", s.node.host());

    let out = migrate(&["--dest-creds", &creds, &src, &to("untrusted")]);
    must_fail_saying(
        &out,
        "a migration to an untrusted certificate",
        &["certificate", "unknownissuer"],
    );
    let text = out.stderr_text().to_lowercase();
    assert!(
        !text.contains("http://"),
        "a TLS port was tried in plain HTTP:\n{}",
        out.describe()
    );
    assert!(tags_of(&ipcr, "untrusted").is_empty());

    let cert_dir: PathBuf = s.cert_dir();
    let cert_dir = cert_dir.to_str().expect("a UTF-8 path");
    let (out, sum) = must_migrate(&[
        "--dest-creds",
        &creds,
        "--dest-cert-dir",
        cert_dir,
        &src,
        &to("trusted"),
    ]);
    assert_eq!((sum.tags_copied, sum.failed), (3, 0), "{}", out.describe());
    copy.must_be_held_by(&ipcr, "trusted");
    must_list_referrers(&ipcr, "trusted", &seeded);

    let (out, sum) = must_migrate(&[
        "--dest-creds",
        &creds,
        "--dest-tls-verify=false",
        &src,
        &to("unverified"),
    ]);
    assert_eq!((sum.tags_copied, sum.failed), (3, 0), "{}", out.describe());
    copy.must_be_held_by(&ipcr, "unverified");
}
