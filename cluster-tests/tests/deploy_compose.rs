//! The deployment in `deploy/`, end to end: `deploy/build-images` builds the node and haproxy
//! images `FROM scratch`, `deploy/docker-compose.yml` starts three nodes (node1 bootstraps, the
//! others join it) behind haproxy, and `docker` pushes and pulls through the balancer, then
//! stops the leader's container and pushes and pulls again.
//!
//! The test owns a compose project, an image tag and a host port of its own. The project
//! (containers, network, volumes) and every image are removed when it ends, also on failure,
//! after the containers' logs are printed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::clients::{DOCKER_TIMEOUT, pushed_digest};
use cluster_tests::node::free_port;
use cluster_tests::prometheus::query_at;
use cluster_tests::tools::{
    Output, find_on_path, must_run, require, require_docker, require_static_busybox, run,
};
use ipcr_proto::admin::ClusterStatus;

/// `deploy/build-images` may compile the release binary first (about 5 minutes on 2 cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Forming the cluster, electing a new leader, the balancer answering.
const WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// The cluster secret the test's nodes share.
const SECRET: &str = "deploy-compose-test-secret";
const SERVICES: [&str; 3] = ["node1", "node2", "node3"];

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The command line that runs compose here: `docker compose` (the v2 plugin), else the
/// standalone `docker-compose`; `None` after [`require`] skipped (or failed) the test.
fn require_compose(docker: &Path) -> Option<Vec<OsString>> {
    let plugin = Some(vec![docker.into(), "compose".into()]);
    let standalone = find_on_path("docker-compose").map(|p| vec![p.into_os_string()]);
    let found = [plugin, standalone].into_iter().flatten().find(|argv| {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).arg("version");
        run(&mut cmd, Duration::from_secs(60)).status.success()
    });
    require("docker compose or docker-compose", found.is_some()).then(|| found.expect("checked"))
}

/// One compose project of `deploy/docker-compose.yml` and the images the test made; all of it
/// is removed on drop.
struct Deployment {
    compose: Vec<OsString>,
    docker: PathBuf,
    /// Compose project name, also the tag of the node and haproxy images.
    project: String,
    /// The balancer's port on 127.0.0.1.
    port: u16,
    /// Prometheus' port on 127.0.0.1.
    prometheus_port: u16,
    images: Vec<String>,
    started: Instant,
}

impl Deployment {
    /// A compose command on this project, with the variables the compose file reads.
    fn compose(&self) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .current_dir(workspace().join("deploy"))
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .env("IPCR_TAG", &self.project)
            .env("IPCR_BIND", "127.0.0.1")
            .env("IPCR_PORT", self.port.to_string())
            .env("IPCR_PROMETHEUS_PORT", self.prometheus_port.to_string())
            .env("IPCR_CLUSTER_SECRET", SECRET);
        cmd
    }

    fn must_compose(&self, args: &[&str]) -> Output {
        must_run(self.compose().args(args), DOCKER_TIMEOUT)
    }

    fn must_docker(&self, args: &[&str]) -> Output {
        must_run(Command::new(&self.docker).args(args), DOCKER_TIMEOUT)
    }

    /// A progress line, shown when the test fails.
    fn step(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// `deploy/build-images` with this project's tag.
    fn must_build_deployment_images(&mut self) {
        for image in ["ipcr-node", "ipcr-haproxy", "ipcr-prometheus"] {
            self.images.push(format!("{image}:{}", self.project));
        }
        let script = workspace().join("deploy/build-images");
        must_run(Command::new(script).env("IPCR_TAG", &self.project), BUILD_TIMEOUT);
    }

    /// `docker build -t <tag>` of `context`: BuildKit when the CLI has it, else the legacy
    /// builder (this engine may have no buildx plugin).
    fn must_build(&mut self, context: &Path, tag: &str) {
        self.images.push(tag.to_string());
        let buildx = run(
            Command::new(&self.docker).args(["buildx", "version"]),
            DOCKER_TIMEOUT,
        );
        let mut cmd = Command::new(&self.docker);
        if !buildx.status.success() {
            cmd.env("DOCKER_BUILDKIT", "0");
        }
        let context = context.to_str().expect("utf-8 path");
        must_run(cmd.args(["build", "-t", tag, context]), DOCKER_TIMEOUT);
        let id = self.must_docker(&["image", "inspect", "--format", "{{.Id}}", tag]);
        self.images.push(id.stdout_text().trim().to_string());
    }

    /// Wait until the compose file's Prometheus scrapes every node (its interval is 15 s) and
    /// sees exactly one leader, with deploy/alerts.yml loaded.
    fn wait_prometheus(&self) {
        let http = cluster_tests::client::http_client();
        let base = format!("http://127.0.0.1:{}", self.prometheus_port);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            let up = query_at(&http, &base, r#"up{job="ipcr"} == 1"#);
            let leaders = query_at(&http, &base, "sum(ipcr_raft_is_leader)");
            match (up, leaders) {
                (Ok(up), Ok(l)) if up.len() == 3 && l.first().map(|s| s.value()) == Some(1.0) => {
                    let rules = http
                        .get(format!("{base}/api/v1/rules"))
                        .send()
                        .and_then(|r| r.text())
                        .unwrap_or_default();
                    assert!(
                        rules.contains("IPCRNodeDown"),
                        "deploy/alerts.yml not loaded: {rules}"
                    );
                    return;
                }
                (up, l) => last = format!("up: {up:?}; leaders: {l:?}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("prometheus did not see three nodes up and one leader: {last}");
    }

    /// `service`'s view of the cluster, through `ipcr-node status` inside its container (the
    /// cluster port is not published).
    fn status(&self, service: &str) -> Result<ClusterStatus, String> {
        let node = format!("http://{service}:5006");
        let mut cmd = self.compose();
        cmd.args(["exec", "-T", service, "/ipcr-node", "status", "--json"])
            .args(["--node", &node]);
        let out = run(&mut cmd, DOCKER_TIMEOUT);
        if !out.status.success() {
            return Err(out.describe());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout_text()))
    }

    /// Wait until every one of `services` knows `voters` voters and the same leader, which is
    /// not `not_leader`. Answers that status.
    fn wait_cluster(&self, services: &[&str], voters: usize, not_leader: Option<u64>) -> ClusterStatus {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.agreed(services) {
                Ok(s) if s.leader == not_leader => last = format!("still led by {not_leader:?}"),
                Ok(s) if s.members.iter().filter(|m| m.voter).count() == voters => return s,
                Ok(s) => last = format!("members {:?}", s.members),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{services:?} did not agree on {voters} voters within {WAIT_TIMEOUT:?}: {last}");
    }

    /// The status `services` agree on (one known leader), or why not.
    fn agreed(&self, services: &[&str]) -> Result<ClusterStatus, String> {
        let mut seen: Option<ClusterStatus> = None;
        for service in services {
            let s = self.status(service)?;
            if s.leader.is_none() {
                return Err(format!("{service} knows no leader"));
            }
            if let Some(prev) = &seen
                && prev.leader != s.leader
            {
                return Err("the nodes disagree on the leader".into());
            }
            seen = Some(s);
        }
        seen.ok_or_else(|| "no service".into())
    }

    /// The service whose node has Raft id `id`.
    fn service_of(&self, id: u64, services: &[&'static str]) -> &'static str {
        services
            .iter()
            .copied()
            .find(|s| self.status(s).is_ok_and(|st| st.id == id))
            .unwrap_or_else(|| panic!("no service runs node {id}"))
    }

    /// Wait until the balancer answers `GET /v2/` with 200 several times in a row (round
    /// robin goes through every node it considers up).
    fn wait_balancer(&self) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let url = format!("http://127.0.0.1:{}/v2/", self.port);
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let (mut in_a_row, mut last) = (0, String::new());
        while Instant::now() < deadline {
            match client.get(&url).send() {
                Ok(r) if r.status().is_success() => in_a_row += 1,
                Ok(r) => (in_a_row, last) = (0, r.status().to_string()),
                Err(e) => (in_a_row, last) = (0, e.to_string()),
            }
            if in_a_row == 6 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{url} did not answer 200 within {WAIT_TIMEOUT:?}: {last}");
    }

    /// `docker rmi` then `docker pull` of `tag`; the pulled image carries `digest`.
    fn must_repull(&self, tag: &str, digest: &str) {
        self.must_docker(&["rmi", tag]);
        self.must_docker(&["pull", tag]);
        let repo = tag.rsplit_once(':').expect("a tag").0;
        let repo_digests = self
            .must_docker(&["image", "inspect", "--format", "{{json .RepoDigests}}", tag])
            .stdout_text();
        assert!(
            repo_digests.contains(&format!("{repo}@{digest}")),
            "pulled {tag} has RepoDigests {repo_digests}, expected {repo}@{digest}"
        );
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = run(
                self.compose().args(["logs", "--no-color", "--tail", "300"]),
                DOCKER_TIMEOUT,
            );
            eprintln!(
                "--- compose logs ---\n{}{}",
                logs.stdout_text(),
                logs.stderr_text()
            );
        }
        let down = run(
            self.compose()
                .args(["down", "-v", "--remove-orphans", "-t", "10"]),
            DOCKER_TIMEOUT,
        );
        if !down.status.success() {
            eprintln!("{}", down.describe());
        }
        for image in &self.images {
            let _ = run(
                Command::new(&self.docker).args(["rmi", "-f", image]),
                DOCKER_TIMEOUT,
            );
        }
    }
}

/// A `FROM scratch` image: the static busybox, and a file with `marker` that `docker run`
/// prints (a layer of its own, new in every run of the test).
fn image_context(busybox: &Path, marker: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(busybox, dir.path().join("busybox")).expect("copying busybox");
    std::fs::write(dir.path().join("marker"), marker).expect("writing marker");
    let dockerfile = "FROM scratch\n\
        COPY busybox /bin/busybox\n\
        COPY marker /marker\n\
        CMD [\"/bin/busybox\",\"cat\",\"/marker\"]\n";
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("writing Dockerfile");
    dir
}

#[test]
fn compose_deployment_serves_docker_through_haproxy_and_survives_a_stopped_node() {
    let Some(docker) = require_docker() else {
        return;
    };
    let Some(compose) = require_compose(&docker) else {
        return;
    };
    let Some(busybox) = require_static_busybox() else {
        return;
    };
    let haproxy = std::env::var_os("HAPROXY_BIN").unwrap_or_else(|| "/usr/sbin/haproxy".into());
    if !require(
        "haproxy (/usr/sbin/haproxy, packaged into the balancer image)",
        Path::new(&haproxy).is_file(),
    ) {
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let mut d = Deployment {
        compose,
        docker,
        project: format!("ipcrdeploy{}x{nanos}", std::process::id()),
        port: free_port(),
        prometheus_port: free_port(),
        images: Vec::new(),
        started: Instant::now(),
    };

    d.step("deploy/build-images");
    d.must_build_deployment_images();
    d.step("compose up");
    d.must_compose(&["up", "-d"]);
    d.wait_balancer();
    let formed = d.wait_cluster(&SERVICES, 3, None);
    d.step(&format!("3 voters, leader {:?}", formed.leader));
    d.wait_prometheus();
    d.step("prometheus scrapes 3 nodes and sees one leader");

    let repo = format!("127.0.0.1:{}/deploy/busybox", d.port);
    let (one, two) = (format!("{repo}:one"), format!("{repo}:two"));
    let (marker_one, marker_two) = (format!("one {}", d.project), format!("two {}", d.project));
    let context = image_context(&busybox, &marker_one);
    d.must_build(context.path(), &one);
    d.step("push and pull one");
    let digest_one = pushed_digest(&d.must_docker(&["push", &one]));
    d.must_repull(&one, &digest_one);

    let leader = formed.leader.expect("agreed on a leader");
    let stopped = d.service_of(leader, &SERVICES);
    d.step(&format!("stop {stopped}, the leader"));
    d.must_compose(&["stop", stopped]);
    let running: Vec<&str> = SERVICES.into_iter().filter(|s| *s != stopped).collect();
    let after = d.wait_cluster(&running, 3, Some(leader));
    d.step(&format!("new leader {:?}", after.leader));
    d.wait_balancer();

    let context = image_context(&busybox, &marker_two);
    d.must_build(context.path(), &two);
    d.step("push two, pull one and two");
    let digest_two = pushed_digest(&d.must_docker(&["push", &two]));
    d.must_repull(&one, &digest_one);
    d.must_repull(&two, &digest_two);
    for (tag, marker) in [(&one, &marker_one), (&two, &marker_two)] {
        let out = d.must_docker(&["run", "--rm", tag]);
        assert_eq!(out.stdout_text(), *marker, "docker run {tag}");
    }
    d.step("done");
}
