//! The web page in a real browser: three node processes (with the Estuary emulator as their
//! IPFS backend) take pushes of a three-platform index and of single images from `skopeo`, and a
//! signature over HTTP; headless Chromium then loads every page. The DOM (after the page's
//! script ran) must hold the repositories, tag counts, sizes, tags, platforms, CIDs with
//! gateway links, the referrer, the cluster's members and the backend's failures. A screenshot
//! of every page is written under the test's directory and copied to
//! `/tmp/ipcr-ui-screenshots/` for a person to look at.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use cluster_tests::browser::{self, Browser};
use cluster_tests::client::Registry;
use cluster_tests::clients::must_skopeo_copy;
use cluster_tests::cluster::status_of;
use cluster_tests::emulator::{Emulator, TOKEN};
use cluster_tests::oci::{self, CONFIG, Descriptor, INDEX, Layer, Layout, MANIFEST, Tar};
use cluster_tests::tools::require_tool;
use cluster_tests::{Cluster, Node, sha256_digest};
use ipcr_proto::admin::IpfsStatus;
use serde_json::json;

const COSIGN: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// A layer of `len` bytes of noise under `path`.
fn layer(path: &str, seed: u64, len: usize) -> Layer {
    Layer {
        tar: Tar::new()
            .dir("opt")
            .file(&format!("opt/{path}"), &oci::noise(seed, len), 0o644)
            .finish(),
        gzip: true,
    }
}

/// The base layer every image shares.
fn base() -> Layer {
    Layer {
        tar: Tar::new()
            .dir("etc")
            .file("etc/os-release", b"NAME=ipcr-ui-test\n", 0o644)
            .finish(),
        gzip: true,
    }
}

/// Blobs (configs and layers) reachable from `roots`, with their sizes: what a repository
/// holding them links.
fn blobs_of(layout: &Layout, roots: &[&Descriptor]) -> BTreeMap<String, u64> {
    roots
        .iter()
        .flat_map(|root| layout.must_reachable(root))
        .filter(|(_, bytes)| !is_manifest(bytes))
        .map(|(digest, bytes)| (digest, bytes.len() as u64))
        .collect()
}

/// Manifests and indexes are blobs of a layout, not of a registry.
fn is_manifest(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v.get("schemaVersion").is_some())
}

/// An index of `images` with the given platform objects, stored in the layout.
fn put_index(layout: &Layout, images: &[(&Descriptor, serde_json::Value)]) -> Descriptor {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": images.iter().map(|(d, platform)| json!({
            "mediaType": d.media_type, "digest": d.digest, "size": d.size, "platform": platform,
        })).collect::<Vec<_>>(),
        "annotations": { "org.opencontainers.image.source": "https://example.org/ipcr/ui-test" },
    });
    layout.put_blob(INDEX, &serde_json::to_vec_pretty(&index).expect("json"))
}

/// The node's view of the IPFS backend.
fn ipfs_status(node: &Node) -> IpfsStatus {
    status_of(&node.cluster_url())
        .expect("cluster status")
        .ipfs
        .expect("an IPFS backend")
}

/// Wait until `done` holds of the backend's progress.
fn wait_ipfs(node: &Node, what: &str, done: impl Fn(&IpfsStatus) -> bool) -> IpfsStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ipfs_status(node);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} within 60 s: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The DOM of `path` on `node`.
fn dom(browser: &Browser, node: &Node, path: &str) -> String {
    browser.dump_dom(&format!("{}{path}", node.base_url()))
}

/// The table row of `name` in a DOM.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("data-name=\"{name}\""))
        .unwrap_or_else(|| panic!("no row {name} in {dom}"));
    let end = dom[start..].find("</tr>").expect("row end") + start;
    &dom[start..end]
}

/// Screenshots of `pages` (`name`, path) on `node` into `dir`, then shared.
fn screenshots(browser: &Browser, node: &Node, dir: &Path, pages: &[(&str, String)]) {
    for (name, path) in pages {
        browser.screenshot(
            &format!("{}{path}", node.base_url()),
            &dir.join(format!("{name}.png")),
        );
    }
    match browser::share_screenshots(dir) {
        Some(shared) => eprintln!("screenshots: {} (and {})", dir.display(), shared.display()),
        None => eprintln!(
            "screenshots: {} ({} not writable)",
            dir.display(),
            browser::SHARED_SCREENSHOTS
        ),
    }
}

#[test]
fn the_page_in_chromium_shows_repositories_tags_platforms_sizes_and_cids() {
    let Some(skopeo) = require_tool("skopeo") else {
        return;
    };
    let Some(browser) = Browser::require() else {
        return;
    };
    let emu = Emulator::start();
    let env = [
        ("REGISTRY_STORAGE_ESTUARY_URL", emu.url()),
        ("REGISTRY_STORAGE_ESTUARY_SHUTTLE_URL", emu.url()),
        ("REGISTRY_STORAGE_ESTUARY_AUTH_TOKEN", TOKEN.to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cluster = Cluster::start(3, &env);
    let node = &cluster.nodes[0];
    let work = tempfile::tempdir().expect("tempdir");
    let src = Layout::create(&work.path().join("src"));

    // A three-platform index, two tags of one image, and a tool.
    let amd64 = src.put_image(
        "linux",
        "amd64",
        &[base(), layer("app-amd64", 1, 180_000)],
        &["/opt/app"],
    );
    let arm64 = src.put_image(
        "linux",
        "arm64",
        &[base(), layer("app-arm64", 2, 170_000)],
        &["/opt/app"],
    );
    let armv7 = src.put_image(
        "linux",
        "arm",
        &[base(), layer("app-armv7", 3, 160_000)],
        &["/opt/app"],
    );
    let index = put_index(
        &src,
        &[
            (&amd64, json!({"os": "linux", "architecture": "amd64"})),
            (
                &arm64,
                json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
            ),
            (
                &armv7,
                json!({"os": "linux", "architecture": "arm", "variant": "v7"}),
            ),
        ],
    );
    let v1 = src.put_image(
        "linux",
        "amd64",
        &[base(), layer("web", 4, 600_000)],
        &["/opt/web"],
    );
    let v2 = src.put_image(
        "linux",
        "amd64",
        &[base(), layer("web", 4, 600_000), layer("web-assets", 5, 90_000)],
        &["/opt/web"],
    );
    let tool = src.put_image("linux", "amd64", &[layer("tool", 6, 40_000)], &["/opt/tool"]);
    src.set_refs(&[("multi", &index), ("v1", &v1), ("v2", &v2), ("tool", &tool)]);
    let host = node.host();
    let layout = |tag: &str| format!("oci:{}:{tag}", src.root().display());
    must_skopeo_copy(
        &skopeo,
        true,
        &layout("multi"),
        &format!("docker://{host}/browser/multi:1.0"),
    );
    must_skopeo_copy(
        &skopeo,
        false,
        &layout("v1"),
        &format!("docker://{host}/browser/web:v1"),
    );
    must_skopeo_copy(
        &skopeo,
        false,
        &layout("v2"),
        &format!("docker://{host}/browser/web:v2"),
    );
    must_skopeo_copy(
        &skopeo,
        false,
        &layout("tool"),
        &format!("docker://{host}/tools/tool:latest"),
    );

    // A signature of web:v1, as cosign stores one with the referrers API.
    let reg = Registry::new(&node.base_url());
    let empty = reg
        .push_blob_chunked("browser/web", b"{}", &[])
        .expect("empty config");
    let payload = br#"{"critical":{"image":{"docker-manifest-digest":"sha256:..."}}}"#;
    let sig_layer = reg
        .push_blob_chunked("browser/web", payload, &[])
        .expect("signature layer");
    let signature = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": COSIGN,
        "config": { "mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2 },
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": sig_layer, "size": payload.len(),
            "annotations": { "dev.cosignproject.cosign/signature": "MEUCIQDx..." },
        }],
        "subject": { "mediaType": MANIFEST, "digest": v1.digest, "size": v1.size },
        "annotations": { "org.opencontainers.image.created": "2026-11-05T10:00:00Z" },
    });
    let signature = serde_json::to_vec(&signature).expect("json");
    let sig = reg
        .put_manifest("browser/web", &sha256_digest(&signature), MANIFEST, &signature)
        .expect("signature");

    // Everything on IPFS first, so that the pages show pinned CIDs.
    let multi_blobs = blobs_of(&src, &[&index]);
    let web_blobs = blobs_of(&src, &[&v1, &v2]);
    let tool_blobs = blobs_of(&src, &[&tool]);
    let mut every: BTreeSet<&String> = multi_blobs
        .keys()
        .chain(web_blobs.keys())
        .chain(tool_blobs.keys())
        .collect();
    every.insert(&empty);
    every.insert(&sig_layer);
    let n = every.len() as u64;
    wait_ipfs(node, "every blob pinned", |s| {
        s.pinned >= n && s.pending == 0 && s.failed == 0
    });

    // The repository list: names, tag counts, sizes (the title holds the exact bytes).
    let home = dom(&browser, node, "/");
    let web = row(&home, "browser/web");
    let web_size: u64 = web_blobs.values().sum::<u64>() + 2 + payload.len() as u64;
    assert!(web.contains(r#"<td class="num">2</td>"#), "{web}");
    assert!(
        web.contains(&format!(r#"title="{web_size} bytes""#)) && web.contains("KiB"),
        "{web}"
    );
    let multi = row(&home, "browser/multi");
    let multi_size: u64 = multi_blobs.values().sum();
    assert!(multi.contains(r#"<td class="num">1</td>"#), "{multi}");
    assert!(
        multi.contains(&format!(r#"title="{multi_size} bytes""#)),
        "{multi}"
    );
    row(&home, "tools/tool");
    let found = dom(&browser, node, "/?q=tool");
    row(&found, "tools/tool");
    assert!(!found.contains("data-name=\"browser/web\""));

    // Tags: the index's platforms, sizes, the pull command for this host.
    let tags = dom(&browser, node, "/ui/repo/browser/multi");
    let tag = row(&tags, "1.0");
    for platform in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"] {
        assert!(tag.contains(&format!(">{platform}<")), "{platform}: {tag}");
    }
    assert!(
        tag.contains(&format!("docker pull {host}/browser/multi:1.0")),
        "{tag}"
    );
    assert!(tag.contains(&format!(r#"title="{}""#, index.digest)), "{tag}");
    let web_tags = dom(&browser, node, "/ui/repo/browser/web");
    row(&web_tags, "v1");
    row(&web_tags, "v2");

    // The image: layers with sizes, pinned CIDs linked to the gateway, the signature.
    let image = dom(
        &browser,
        node,
        &format!("/ui/repo/browser/web/manifest/{}", v1.digest),
    );
    for (digest, size) in blobs_of(&src, &[&v1]) {
        assert!(
            image.contains(&format!(r#"title="{digest}""#)),
            "{digest}: {image}"
        );
        assert!(image.contains(&format!(r#"title="{size} bytes""#)), "{size}");
    }
    assert!(
        image.contains(&format!(r#"href="{}/gw/ipfs/bafk"#, emu.url())),
        "gateway links: {image}"
    );
    assert!(image.contains(">pinned<"));
    assert!(image.contains("Referrers (1)") && image.contains(COSIGN));
    assert!(image.contains(&format!("/ui/repo/browser/web/manifest/{sig}")));
    let index_page = dom(
        &browser,
        node,
        &format!("/ui/repo/browser/multi/manifest/{}", index.digest),
    );
    assert!(index_page.contains("Manifests (3)") && index_page.contains(">linux/arm/v7<"));
    assert!(index_page.contains(&format!("/ui/repo/browser/multi/manifest/{}", armv7.digest)));

    // The cluster, after a collection that keeps everything (grace of an hour).
    let report = cluster_tests::gc::must_gc(&node.cluster_url(), &cluster_tests::gc::GcArgs::grace(3600));
    let members = dom(&browser, node, "/ui/cluster");
    assert!(
        members.contains(&format!("run {}", report.run)),
        "the last collection: {members}"
    );
    assert!(
        members.contains("3 members") && members.contains(">leader<"),
        "{members}"
    );
    for n in &cluster.nodes {
        assert!(members.contains(&n.cluster_url()), "{}: {members}", n.name());
    }

    let shots = work.path().join("screenshots");
    screenshots(
        &browser,
        node,
        &shots,
        &[
            ("01-repositories", "/".into()),
            ("02-repositories-search", "/?q=browser".into()),
            ("03-tags-index", "/ui/repo/browser/multi".into()),
            ("04-tags-images", "/ui/repo/browser/web".into()),
            (
                "05-manifest-index",
                format!("/ui/repo/browser/multi/manifest/{}", index.digest),
            ),
            (
                "06-manifest-image",
                format!("/ui/repo/browser/web/manifest/{}", v1.digest),
            ),
            (
                "07-manifest-signature",
                format!("/ui/repo/browser/web/manifest/{sig}"),
            ),
            ("08-cluster", "/ui/cluster".into()),
            ("10-not-found", "/ui/repo/no/such/repo".into()),
        ],
    );

    // The backend refuses uploads: the failure and its reason on the IPFS page.
    emu.set_mode("refuse");
    reg.push_blob_chunked("browser/broken", &oci::noise(9, 50_000), &[])
        .expect("a blob the backend refuses");
    wait_ipfs(node, "a failed pin", |s| s.failed >= 1);
    let ipfs = dom(&browser, node, "/ui/ipfs");
    assert!(ipfs.contains("estuary") && ipfs.contains("Failures"), "{ipfs}");
    let failure = ipfs_status(node).failures[0].clone();
    assert!(ipfs.contains(&format!(r#"title="{}""#, failure.digest)), "{ipfs}");
    assert!(ipfs.contains(&failure.cid), "{ipfs}");
    screenshots(&browser, node, &shots, &[("09-ipfs", "/ui/ipfs".into())]);
}

#[test]
fn without_a_backend_the_ipfs_page_says_so() {
    let Some(browser) = Browser::require() else {
        return;
    };
    let node = Node::start("ui-browser-plain");
    let reg = Registry::new(&node.base_url());
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let digest = reg.push_blob_chunked("plain/app", config, &[]).expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": { "mediaType": CONFIG, "digest": digest, "size": config.len() },
        "layers": [],
    }))
    .expect("json");
    reg.put_manifest("plain/app", "latest", MANIFEST, &manifest)
        .expect("manifest");
    let ipfs = dom(&browser, &node, "/ui/ipfs");
    assert!(ipfs.contains("No IPFS backend configured."), "{ipfs}");
    let home = dom(&browser, &node, "/");
    row(&home, "plain/app");
    let work = tempfile::tempdir().expect("tempdir");
    screenshots(
        &browser,
        &node,
        &work.path().join("screenshots"),
        &[("11-ipfs-none", "/ui/ipfs".into())],
    );
}
