//! `docker push`, `docker pull` and `docker run` through one node, with an image built here
//! `FROM scratch` around a static busybox (the engine has no images and cannot pull any).
//!
//! Docker treats `127.0.0.0/8` registries as plain-HTTP ones, so tags name `127.0.0.1:<port>`.
//! Every image and container the test creates is removed when it ends, also on failure.

use cluster_tests::Node;
use cluster_tests::client::Registry;
use cluster_tests::clients::{Docker, pushed_digest};
use cluster_tests::tools::{require_docker, require_static_busybox};

const DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
CMD [\"/bin/busybox\",\"echo\",\"hello from ipcr\"]\n";

#[test]
fn docker_pushes_pulls_and_runs_an_image_through_a_node() {
    let Some(docker_bin) = require_docker() else {
        return;
    };
    let Some(busybox) = require_static_busybox() else {
        return;
    };
    let node = Node::start("docker");
    let mut docker = Docker::new(docker_bin);

    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&busybox, context.path().join("busybox")).expect("copying busybox");
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE).expect("writing Dockerfile");
    let repo = format!("{}/docker/busybox", node.host());
    let (v1, latest) = (format!("{repo}:v1"), format!("{repo}:latest"));
    docker.must_build(context.path(), &v1);
    docker.images.push(latest.clone());
    docker.must(&["tag", &v1, &latest]);
    let image_id = docker.must_image_id(&v1);
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

    // Pulled into an engine without the image: the built image, under the digest pushed.
    docker.must_pull_fresh(&v1, &repo, &digest_v1, &image_id, |docker| {
        let container = format!("ipcr-test-{}", node.port());
        docker.containers.push(container.clone());
        let out = docker.must(&["run", "--name", &container, &v1]);
        assert!(
            out.stdout_text().contains("hello from ipcr"),
            "docker run printed:\n{}",
            out.describe()
        );
        docker.must(&["rm", &container]);
    });
}
