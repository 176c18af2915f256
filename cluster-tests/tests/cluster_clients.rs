//! Real clients against a three-node cluster behind haproxy (round-robin over the nodes, so
//! consecutive requests of one client land on different nodes):
//! - `skopeo copy` of a multi-layer image and of a two-platform index in through the balancer
//!   and back out through it, byte for byte; every blob and manifest then served by each node;
//! - `docker push` of a two-layer image through the balancer, `docker pull` through it and from
//!   each node directly (each pull starting from an engine without the image), `docker run`;
//! - a chunked upload whose every request (`POST`, each `PATCH`, `GET` of its status, `PUT`)
//!   goes to a different node than the one before.
//!
//! Docker treats `127.0.0.0/8` registries as plain-HTTP ones, so tags name `127.0.0.1:<port>`.
//! Every image and container the test creates is removed when it ends, also on failure.

use cluster_tests::client::Registry;
use cluster_tests::clients::{Docker, must_skopeo_copy, pushed_digest};
use cluster_tests::oci::{self, Descriptor, Layer, Layout, Tar};
use cluster_tests::tools::{require_docker, require_static_busybox, require_tool};
use cluster_tests::{Balancer, Cluster, sha256_digest};

/// Every descriptor reachable from `root` (itself included), each once.
fn descriptors(layout: &Layout, root: &Descriptor) -> Vec<Descriptor> {
    let mut out: Vec<Descriptor> = Vec::new();
    let mut todo = vec![root.clone()];
    while let Some(d) = todo.pop() {
        if out.iter().any(|o| o.digest == d.digest) {
            continue;
        }
        if d.media_type == oci::MANIFEST || d.media_type == oci::INDEX {
            let v: serde_json::Value =
                serde_json::from_slice(&layout.must_blob(&d.digest)).expect("manifest is JSON");
            for key in ["manifests", "layers"] {
                for child in v[key].as_array().into_iter().flatten() {
                    todo.push(Descriptor::from_json(child));
                }
            }
            if v.get("config").is_some() {
                todo.push(Descriptor::from_json(&v["config"]));
            }
        }
        out.push(d);
    }
    out
}

/// Every node serves `repo:tag` as `layout` has it, and everything reachable from it byte for
/// byte (manifests by digest, blobs as blobs). Returns how many were checked per node.
fn must_serve_everywhere(cluster: &mut Cluster, layout: &Layout, repo: &str, tag: &str) -> usize {
    let root = layout.must_resolve(tag);
    let all = descriptors(layout, &root);
    for host in cluster.hosts() {
        let reg = Registry::new(&format!("http://{host}"));
        let got = reg
            .get_manifest(repo, tag)
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(
            got.digest.as_deref(),
            Some(root.digest.as_str()),
            "{host}: {repo}:{tag}"
        );
        assert!(
            got.bytes == layout.must_blob(&root.digest),
            "{host}: bytes of {repo}:{tag}"
        );
        for d in &all {
            let got = if d.media_type == oci::MANIFEST || d.media_type == oci::INDEX {
                reg.get_manifest(repo, &d.digest)
            } else {
                reg.get_blob(repo, &d.digest)
            }
            .unwrap_or_else(|e| panic!("{host}: {e}"));
            assert!(
                got.bytes == layout.must_blob(&d.digest),
                "{host} served different bytes for {}",
                d.digest
            );
        }
    }
    all.len()
}

#[test]
fn skopeo_copies_an_image_and_an_index_through_the_balancer() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    if require_tool("haproxy").is_none() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let lb = Balancer::start(&cluster.hosts());
    let work = tempfile::tempdir().expect("tempdir");
    let src = Layout::create(&work.path().join("src"));

    let image = src.put_image(
        "linux",
        "amd64",
        &[
            Layer {
                tar: Tar::new()
                    .dir("etc")
                    .file("etc/hello.txt", b"hello from the ipcr cluster\n", 0o644)
                    .finish(),
                gzip: true,
            },
            Layer {
                tar: Tar::new()
                    .dir("data")
                    .file("data/noise.bin", &oci::noise(21, 700_000), 0o644)
                    .finish(),
                gzip: false,
            },
            Layer {
                tar: Tar::new()
                    .dir("opt")
                    .file("opt/more.bin", &oci::noise(22, 250_000), 0o600)
                    .finish(),
                gzip: true,
            },
        ],
        &["/bin/true"],
    );
    let shared = || Layer {
        tar: Tar::new()
            .dir("etc")
            .file("etc/os-release", b"NAME=ipcr-cluster-test\n", 0o644)
            .finish(),
        gzip: true,
    };
    let own = |arch: &str, seed: u64| Layer {
        tar: Tar::new()
            .dir("bin")
            .file(&format!("bin/tool-{arch}"), &oci::noise(seed, 400_000), 0o755)
            .finish(),
        gzip: true,
    };
    let amd64 = src.put_image(
        "linux",
        "amd64",
        &[shared(), own("amd64", 23)],
        &["/bin/tool-amd64"],
    );
    let arm64 = src.put_image(
        "linux",
        "arm64",
        &[shared(), own("arm64", 24)],
        &["/bin/tool-arm64"],
    );
    let index = src.put_index(&[amd64, arm64]);
    src.set_refs(&[("v1", &image), ("multi", &index)]);

    let oci_ref = |tag: &str| format!("oci:{}:{tag}", src.root().display());
    let image_remote = format!("docker://{}/clients/image:v1", lb.host());
    let index_remote = format!("docker://{}/clients/multi:multi", lb.host());
    must_skopeo_copy(&skopeo, false, &oci_ref("v1"), &image_remote);
    must_skopeo_copy(&skopeo, true, &oci_ref("multi"), &index_remote);

    // Pulls through the balancer.
    let dst = Layout::create(&work.path().join("dst"));
    let dst_ref = |tag: &str| format!("oci:{}:{tag}", dst.root().display());
    must_skopeo_copy(&skopeo, false, &image_remote, &dst_ref("v1"));
    must_skopeo_copy(&skopeo, true, &index_remote, &dst_ref("multi"));
    // manifest, config and three layers
    assert_eq!(oci::must_be_identical(&src, "v1", &dst, "v1"), 5);
    // index, two manifests, two configs, the shared layer and two own layers
    assert_eq!(oci::must_be_identical(&src, "multi", &dst, "multi"), 8);

    // And every node, asked directly, serves all of it.
    assert_eq!(
        must_serve_everywhere(&mut cluster, &src, "clients/image", "v1"),
        5
    );
    assert_eq!(
        must_serve_everywhere(&mut cluster, &src, "clients/multi", "multi"),
        8
    );
}

#[test]
fn docker_pushes_through_the_balancer_and_pulls_from_every_node() {
    let Some(docker_bin) = require_docker() else {
        return;
    };
    let Some(busybox) = require_static_busybox() else {
        return;
    };
    if require_tool("haproxy").is_none() {
        return;
    }
    let mut cluster = Cluster::start(3, &[]);
    let lb = Balancer::start(&cluster.hosts());
    let mut docker = Docker::new(docker_bin);

    // Two layers: busybox, and a generated file whose checksum the container prints.
    let payload = oci::noise(31, 3_000_000);
    let payload_sum = sha256_digest(&payload);
    let payload_hex = payload_sum.strip_prefix("sha256:").expect("sha256");
    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&busybox, context.path().join("busybox")).expect("copying busybox");
    std::fs::write(context.path().join("payload.bin"), &payload).expect("writing payload");
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         COPY payload.bin /data/payload.bin\n\
         CMD [\"/bin/busybox\",\"sha256sum\",\"/data/payload.bin\"]\n",
    )
    .expect("writing Dockerfile");

    let lb_repo = format!("{}/clients/busybox", lb.host());
    let lb_tag = format!("{lb_repo}:v1");
    docker.must_build(context.path(), &lb_tag);
    let id = docker.must_image_id(&lb_tag);
    docker.images.push(id.clone());
    let layers = docker
        .must(&["image", "inspect", "--format", "{{len .RootFS.Layers}}", &lb_tag])
        .stdout_text();
    assert_eq!(layers.trim(), "2", "the built image has two layers");

    let digest = pushed_digest(&docker.must(&["push", &lb_tag]));
    docker.must(&["rmi", &lb_tag]);
    assert!(!docker.has_image(&id), "image {id} still present after rmi");

    // Through the balancer, then from each node directly; each pull starts from scratch.
    docker.must_pull_fresh(&lb_tag, &lb_repo, &digest, &id, |_| {});
    let hosts = cluster.hosts();
    assert_eq!(hosts.len(), 3);
    for (i, host) in hosts.iter().enumerate() {
        let repo = format!("{host}/clients/busybox");
        let reference = format!("{repo}:v1");
        docker.must_pull_fresh(&reference, &repo, &digest, &id, |docker| {
            let container = format!("ipcr-cluster-clients-{}-{i}", lb.host().replace([':', '.'], "-"));
            docker.containers.push(container.clone());
            let out = docker.must(&["run", "--name", &container, &reference]);
            assert!(
                out.stdout_text().contains(payload_hex),
                "docker run of {reference} printed:\n{}",
                out.describe()
            );
            docker.must(&["rm", &container]);
        });
        // The manifest by digest, straight from the node.
        let got = Registry::new(&format!("http://{host}"))
            .get_manifest("clients/busybox", &digest)
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(sha256_digest(&got.bytes), digest, "{host}: manifest bytes");
    }
}

/// The path (`/v2/...`) of an absolute upload location, to send it to another node.
fn path_of(location: &str) -> String {
    let rest = location
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {location}"));
    rest[rest.find('/').unwrap_or(rest.len())..].to_string()
}

#[test]
fn a_chunked_upload_hops_to_a_different_node_on_every_request() {
    let mut cluster = Cluster::start(3, &[]);
    let nodes: Vec<Registry> = cluster
        .hosts()
        .iter()
        .map(|h| Registry::new(&format!("http://{h}")))
        .collect();
    assert_eq!(nodes.len(), 3);
    // Request number `k` goes to node `k % 3`: never the node of the request before. Three
    // uploads, so that each starts on a different node.
    let mut k = 0;
    let mut next = || {
        k += 1;
        &nodes[(k - 1) % nodes.len()]
    };
    let repo = "clients/hops";
    for round in 0..3u64 {
        let blob = oci::noise(41 + round, 1_500_000);
        let cuts = [0, 200_000, 500_000, 800_000, 1_100_000, blob.len()];
        let location = path_of(&next().start_upload(repo).expect("POST"));
        for (i, w) in cuts.windows(2).enumerate() {
            let (from, to) = (w[0], w[1]);
            let acked = next()
                .patch(&location, from as u64, &blob[from..to])
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(acked, to as u64);
            // A status after every second chunk: PATCH follows PATCH and PUT follows PATCH
            // too, so no node gets to learn the session's progress from a read of its own.
            if i % 2 == 1 {
                let status = next()
                    .upload_status(&location)
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(
                    status,
                    to as u64,
                    "round {round}: status after bytes 0-{}",
                    to - 1
                );
            }
        }
        let digest = sha256_digest(&blob);
        next()
            .finish(&location, &digest)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));

        for (i, reg) in nodes.iter().enumerate() {
            let got = reg
                .get_blob(repo, &digest)
                .unwrap_or_else(|e| panic!("round {round}: node{i}: {e}"));
            assert!(got.bytes == blob, "round {round}: node{i} served different bytes");
            assert_eq!(got.digest.as_deref(), Some(digest.as_str()), "node{i}: digest");
        }
    }
    // POST, five PATCHes, two status requests and PUT per upload.
    assert_eq!(k, 3 * 9, "requests sent");
    let status = cluster.status(0).expect("status");
    assert_eq!(status.members.len(), 3);
}
