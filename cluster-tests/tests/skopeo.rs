//! `skopeo copy` of OCI layouts built here, into one node and back out: a multi-layer image
//! and a two-platform index must come back with the same digests and byte-identical blobs,
//! and `skopeo inspect --raw` must see the exact manifest bytes that were pushed.

use std::path::Path;
use std::process::Command;

use cluster_tests::Node;
use cluster_tests::client::Registry;
use cluster_tests::clients::{SKOPEO_TIMEOUT, must_skopeo_copy};
use cluster_tests::oci::{self, Descriptor, Layer, Layout, Tar};
use cluster_tests::tools::{must_run, require_tool};

/// `skopeo inspect --raw`: the manifest bytes as the registry serves them.
fn must_inspect_raw(skopeo: &Path, reference: &str) -> Vec<u8> {
    must_run(
        Command::new(skopeo).args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
            reference,
        ]),
        SKOPEO_TIMEOUT,
    )
    .stdout
}

/// The registry serves `desc` under `reference` with its exact bytes, digest and media type.
fn must_serve_manifest(reg: &Registry, repo: &str, reference: &str, desc: &Descriptor, bytes: &[u8]) {
    let got = reg
        .get_manifest(repo, reference)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        got.bytes == bytes,
        "{repo}:{reference} bytes differ from what was pushed"
    );
    assert_eq!(
        got.digest.as_deref(),
        Some(desc.digest.as_str()),
        "{repo}:{reference} digest"
    );
    assert_eq!(
        got.content_type.as_deref(),
        Some(desc.media_type.as_str()),
        "{repo}:{reference} media type"
    );
}

fn text_file(seed: u64, lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| format!("line {i} of file {seed}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn skopeo_copies_a_multi_layer_image_in_and_out_byte_for_byte() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let node = Node::start("skopeo-image");
    let work = tempfile::tempdir().expect("tempdir");
    let src = Layout::create(&work.path().join("src"));
    let layers = vec![
        Layer {
            tar: Tar::new()
                .dir("etc")
                .file("etc/hello.txt", b"hello from ipcr\n", 0o644)
                .finish(),
            gzip: true,
        },
        Layer {
            tar: Tar::new()
                .dir("data")
                .file("data/noise.bin", &oci::noise(1, 300_000), 0o644)
                .finish(),
            gzip: false,
        },
        Layer {
            tar: Tar::new()
                .dir("usr")
                .dir("usr/share")
                .file("usr/share/words.txt", &text_file(2, 5_000), 0o644)
                .file("usr/share/more.bin", &oci::noise(3, 70_000), 0o600)
                .finish(),
            gzip: true,
        },
    ];
    let manifest = src.put_image("linux", "amd64", &layers, &["/bin/true"]);
    src.set_refs(&[("v1", &manifest)]);

    let remote = format!("docker://{}/skopeo/image:v1", node.host());
    must_skopeo_copy(
        &skopeo,
        false,
        &format!("oci:{}:v1", src.root().display()),
        &remote,
    );

    let dst = Layout::create(&work.path().join("dst"));
    must_skopeo_copy(
        &skopeo,
        false,
        &remote,
        &format!("oci:{}:v1", dst.root().display()),
    );
    // manifest, config and three layers
    assert_eq!(oci::must_be_identical(&src, "v1", &dst, "v1"), 5);

    let pushed = src.must_blob(&manifest.digest);
    assert!(
        must_inspect_raw(&skopeo, &remote) == pushed,
        "inspect --raw by tag"
    );
    let by_digest = format!("docker://{}/skopeo/image@{}", node.host(), manifest.digest);
    assert!(
        must_inspect_raw(&skopeo, &by_digest) == pushed,
        "inspect --raw by digest"
    );

    let reg = Registry::new(&node.base_url());
    must_serve_manifest(&reg, "skopeo/image", "v1", &manifest, &pushed);
    must_serve_manifest(&reg, "skopeo/image", &manifest.digest, &manifest, &pushed);
}

#[test]
fn skopeo_copies_a_multi_platform_index_in_and_out_byte_for_byte() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let node = Node::start("skopeo-index");
    let work = tempfile::tempdir().expect("tempdir");
    let src = Layout::create(&work.path().join("src"));
    let shared = || Layer {
        tar: Tar::new()
            .dir("etc")
            .file("etc/os-release", b"NAME=ipcr-test\n", 0o644)
            .finish(),
        gzip: true,
    };
    let own = |arch: &str, seed: u64| Layer {
        tar: Tar::new()
            .dir("bin")
            .file(&format!("bin/tool-{arch}"), &oci::noise(seed, 150_000), 0o755)
            .finish(),
        gzip: true,
    };
    let amd64 = src.put_image(
        "linux",
        "amd64",
        &[shared(), own("amd64", 10)],
        &["/bin/tool-amd64"],
    );
    let arm64 = src.put_image(
        "linux",
        "arm64",
        &[shared(), own("arm64", 11)],
        &["/bin/tool-arm64"],
    );
    let index = src.put_index(&[amd64.clone(), arm64.clone()]);
    src.set_refs(&[("multi", &index)]);

    let remote = format!("docker://{}/skopeo/multi:multi", node.host());
    must_skopeo_copy(
        &skopeo,
        true,
        &format!("oci:{}:multi", src.root().display()),
        &remote,
    );

    let dst = Layout::create(&work.path().join("dst"));
    must_skopeo_copy(
        &skopeo,
        true,
        &remote,
        &format!("oci:{}:multi", dst.root().display()),
    );
    // index, two manifests, two configs, the shared layer and two own layers
    assert_eq!(oci::must_be_identical(&src, "multi", &dst, "multi"), 8);

    let reg = Registry::new(&node.base_url());
    let index_bytes = src.must_blob(&index.digest);
    assert!(
        must_inspect_raw(&skopeo, &remote) == index_bytes,
        "inspect --raw of the index"
    );
    must_serve_manifest(&reg, "skopeo/multi", "multi", &index, &index_bytes);
    for m in [&amd64, &arm64] {
        let bytes = src.must_blob(&m.digest);
        let by_digest = format!("docker://{}/skopeo/multi@{}", node.host(), m.digest);
        assert!(
            must_inspect_raw(&skopeo, &by_digest) == bytes,
            "inspect --raw of {:?}",
            m.platform
        );
        must_serve_manifest(&reg, "skopeo/multi", &m.digest, m, &bytes);
    }
}
