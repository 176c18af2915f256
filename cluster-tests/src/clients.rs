//! The `docker` and `skopeo` command-line clients as the tests drive them.
//!
//! Docker treats `127.0.0.0/8` registries as plain-HTTP ones, so tags name `127.0.0.1:<port>`.
//! Every image and container a test creates through [`Docker`] is removed when it is dropped,
//! also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::tools::{Output, must_run, run};

/// How long one `skopeo` command may take.
pub const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `docker` command may take.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

/// `skopeo copy` keeping every manifest as is, over plain HTTP; `all` copies every platform of
/// an index.
pub fn must_skopeo_copy(skopeo: &Path, all: bool, src: &str, dst: &str) {
    let mut cmd = Command::new(skopeo);
    cmd.args([
        "--insecure-policy",
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    if all {
        cmd.arg("--all");
    }
    cmd.args([src, dst]);
    must_run(&mut cmd, SKOPEO_TIMEOUT);
}

/// `sha256:...` from the `<tag>: digest: sha256:... size: N` line of `docker push`.
pub fn pushed_digest(push: &Output) -> String {
    let text = push.stdout_text();
    text.split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{text}"))
        .to_string()
}

/// The docker CLI and what the test created, removed on drop.
pub struct Docker {
    bin: PathBuf,
    /// Images (tags or ids) to remove, newest last.
    pub images: Vec<String>,
    /// Containers to remove.
    pub containers: Vec<String>,
}

impl Docker {
    /// The CLI at `bin`, nothing created yet.
    pub fn new(bin: PathBuf) -> Docker {
        Docker {
            bin,
            images: Vec::new(),
            containers: Vec::new(),
        }
    }

    fn cmd(&self) -> Command {
        Command::new(&self.bin)
    }

    /// `docker <args>`, which must succeed.
    pub fn must(&self, args: &[&str]) -> Output {
        must_run(self.cmd().args(args), DOCKER_TIMEOUT)
    }

    /// Whether the engine knows `image` (a tag or an id).
    pub fn has_image(&self, image: &str) -> bool {
        run(self.cmd().args(["image", "inspect", image]), DOCKER_TIMEOUT)
            .status
            .success()
    }

    /// The id of `image`.
    pub fn must_image_id(&self, image: &str) -> String {
        self.must(&["image", "inspect", "--format", "{{.Id}}", image])
            .stdout_text()
            .trim()
            .to_string()
    }

    /// `docker build -t <tag>` of `context`: BuildKit when the CLI has it, else the legacy
    /// builder (this engine may have no buildx plugin).
    pub fn must_build(&mut self, context: &Path, tag: &str) {
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

    /// `docker pull <reference>` into an engine that does not have the image, then check it is
    /// the built image (`id`) with `digest` among its repo digests; removes it again after
    /// `and_then` ran.
    pub fn must_pull_fresh(
        &mut self,
        reference: &str,
        repo: &str,
        digest: &str,
        id: &str,
        and_then: impl FnOnce(&mut Docker),
    ) {
        assert!(
            !self.has_image(id),
            "image {id} still present before pulling {reference}"
        );
        self.images.push(reference.to_string());
        self.must(&["pull", reference]);
        let repo_digests = self
            .must(&["image", "inspect", "--format", "{{json .RepoDigests}}", reference])
            .stdout_text();
        assert!(
            repo_digests.contains(&format!("{repo}@{digest}")),
            "{reference} has RepoDigests {repo_digests}, expected {repo}@{digest}"
        );
        assert_eq!(
            self.must_image_id(reference),
            id,
            "{reference} is the built image"
        );
        and_then(self);
        self.must(&["rmi", reference]);
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run(self.cmd().args(["rm", "-f", c]), DOCKER_TIMEOUT);
        }
        for i in self.images.iter().rev() {
            let _ = run(self.cmd().args(["rmi", "-f", i]), DOCKER_TIMEOUT);
        }
    }
}
