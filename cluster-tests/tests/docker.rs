//! `docker push`, `docker pull` and `docker run` through one node, with an image built here
//! `FROM scratch` around a static busybox (the engine has no images and cannot pull any).
//!
//! Docker treats `127.0.0.0/8` registries as plain-HTTP ones, so tags name `127.0.0.1:<port>`.
//! Every image and container the test creates is removed when it ends, also on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::Node;
use cluster_tests::client::Registry;
use cluster_tests::tools::{Output, must_run, require_docker, require_static_busybox, run};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

const DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
CMD [\"/bin/busybox\",\"echo\",\"hello from ipcr\"]\n";

/// The docker CLI and what the test created, removed on drop.
struct Docker {
    bin: PathBuf,
    images: Vec<String>,
    containers: Vec<String>,
}

impl Docker {
    fn cmd(&self) -> Command {
        Command::new(&self.bin)
    }

    fn must(&self, args: &[&str]) -> Output {
        must_run(self.cmd().args(args), DOCKER_TIMEOUT)
    }

    /// Whether the engine knows `image` (a tag or an id).
    fn has_image(&self, image: &str) -> bool {
        run(self.cmd().args(["image", "inspect", image]), DOCKER_TIMEOUT)
            .status
            .success()
    }

    /// `docker build -t <tag>` of `context`: BuildKit when the CLI has it, else the legacy
    /// builder (this engine may have no buildx plugin).
    fn must_build(&mut self, context: &Path, tag: &str) {
        self.images.push(tag.to_string());
        let context = context.to_str().expect("utf-8 path");
        let build = |buildkit: Option<&str>| {
            let mut cmd = self.cmd();
            if let Some(v) = buildkit {
                cmd.env("DOCKER_BUILDKIT", v);
            }
            run(cmd.args(["build", "-t", tag, context]), DOCKER_TIMEOUT)
        };
        let first = build(None);
        if first.status.success() {
            return;
        }
        let legacy = build(Some("0"));
        assert!(
            legacy.status.success(),
            "docker build failed both ways:\n{}\n{}",
            first.describe(),
            legacy.describe()
        );
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run(self.cmd().args(["rm", "-f", c]), DOCKER_TIMEOUT);
        }
        for i in &self.images {
            let _ = run(self.cmd().args(["rmi", "-f", i]), DOCKER_TIMEOUT);
        }
    }
}

/// `sha256:...` from the `<tag>: digest: sha256:... size: N` line of `docker push`.
fn pushed_digest(push: &Output) -> String {
    let text = push.stdout_text();
    text.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{text}"))
        .to_string()
}

#[test]
fn docker_pushes_pulls_and_runs_an_image_through_a_node() {
    let Some(docker_bin) = require_docker() else {
        return;
    };
    let Some(busybox) = require_static_busybox() else {
        return;
    };
    let node = Node::start("docker");
    let mut docker = Docker {
        bin: docker_bin,
        images: Vec::new(),
        containers: Vec::new(),
    };

    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&busybox, context.path().join("busybox")).expect("copying busybox");
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE).expect("writing Dockerfile");
    let repo = format!("{}/docker/busybox", node.host());
    let (v1, latest) = (format!("{repo}:v1"), format!("{repo}:latest"));
    docker.must_build(context.path(), &v1);
    docker.images.push(latest.clone());
    docker.must(&["tag", &v1, &latest]);
    let image_id = docker
        .must(&["image", "inspect", "--format", "{{.Id}}", &v1])
        .stdout_text()
        .trim()
        .to_string();
    docker.images.push(image_id.clone());

    let digest_v1 = pushed_digest(&docker.must(&["push", &v1]));
    let digest_latest = pushed_digest(&docker.must(&["push", &latest]));
    assert_eq!(digest_v1, digest_latest, "two tags of one image");

    // The registry serves what docker says it pushed.
    let reg = Registry::new(&node.base_url());
    for tag in ["v1", "latest"] {
        let got = reg
            .get_manifest("docker/busybox", tag)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.digest.as_deref(), Some(digest_v1.as_str()), "digest of {tag}");
        assert_eq!(
            cluster_tests::sha256_digest(&got.bytes),
            digest_v1,
            "bytes of {tag}"
        );
    }

    docker.must(&["rmi", &v1, &latest]);
    assert!(!docker.has_image(&v1), "{v1} still present after rmi");
    assert!(
        !docker.has_image(&image_id),
        "image {image_id} still present after rmi"
    );

    docker.must(&["pull", &v1]);
    let repo_digests = docker
        .must(&["image", "inspect", "--format", "{{json .RepoDigests}}", &v1])
        .stdout_text();
    assert!(
        repo_digests.contains(&format!("{repo}@{digest_v1}")),
        "pulled image has RepoDigests {repo_digests}, expected {repo}@{digest_v1}"
    );
    let pulled_id = docker
        .must(&["image", "inspect", "--format", "{{.Id}}", &v1])
        .stdout_text()
        .trim()
        .to_string();
    assert_eq!(pulled_id, image_id, "the pulled image is the built one");

    let container = format!("ipcr-test-{}", node.port());
    docker.containers.push(container.clone());
    let out = docker.must(&["run", "--name", &container, &v1]);
    assert!(
        out.stdout_text().contains("hello from ipcr"),
        "docker run printed:\n{}",
        out.describe()
    );
}
