//! The web page, in process: content pushed through the API, then every page fetched and its
//! HTML checked: repositories with tag counts and sizes, tags with platforms and the pull
//! command, a manifest's layers and referrers, the cluster and IPFS pages; hostile manifest
//! content escaped; `404` pages; and access control (login prompt, filtered repositories,
//! other users' repositories indistinguishable from missing ones).

mod common;

use std::path::Path;

use actix_web::test::TestRequest;
use base64::Engine;
use common::*;
use ipcr_auth::{AccessConfig, Action, AuthConfig, HtpasswdConfig, PolicyConfig, TokenConfig};

const HOST: &str = "registry.example:5005";
const COSIGN: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const EVIL: &str = r#"<script>alert(1)</script>"'&"#;

/// `GET path` as a browser at [`HOST`]; answers status, headers' `Content-Type` and the body.
async fn page(api: &Api, path: &str) -> (u16, Option<String>, String) {
    let resp = api
        .send(TestRequest::get().uri(path).insert_header(("Host", HOST)))
        .await;
    let status = resp.status().as_u16();
    let ct = header(&resp, "Content-Type");
    let text = String::from_utf8(body(resp).await.to_vec()).expect("UTF-8 page");
    (status, ct, text)
}

/// `GET path`, which must be a `200` HTML page; answers the body.
async fn must_page(api: &Api, path: &str) -> String {
    let (status, ct, text) = page(api, path).await;
    assert_eq!(status, 200, "GET {path}: {text}");
    assert_eq!(ct.as_deref(), Some("text/html; charset=utf-8"), "GET {path}");
    assert!(text.starts_with("<!DOCTYPE html>"), "GET {path}");
    text
}

/// The table row of `name` on a page with `data-name` rows.
fn row<'a>(page: &'a str, name: &str) -> &'a str {
    let start = page
        .find(&format!("data-name=\"{name}\""))
        .unwrap_or_else(|| panic!("no row {name} in {page}"));
    let end = page[start..].find("</tr>").expect("row end") + start;
    &page[start..end]
}

/// A descriptor with a platform.
fn child(digest: &str, size: usize, platform: &str) -> String {
    format!(r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{size},"platform":{platform}}}"#)
}

/// Push two images and an index of them to `repo:tag`; answers the index's digest and size,
/// and the images.
async fn must_push_index(api: &Api, repo: &str, tag: &str) -> (String, usize, Image, Image) {
    let amd64 = must_push_image(api, repo, &format!("{tag}-amd64"), &format!("{repo} amd64")).await;
    let arm64 = must_push_image(api, repo, &format!("{tag}-arm64"), &format!("{repo} arm64")).await;
    let index = index_manifest(
        OCI_INDEX,
        &[
            child(
                &amd64.digest,
                amd64.bytes.len(),
                r#"{"os":"linux","architecture":"amd64"}"#,
            ),
            child(
                &arm64.digest,
                arm64.bytes.len(),
                r#"{"os":"linux","architecture":"arm64","variant":"v8"}"#,
            ),
        ],
        "",
    );
    let digest = must_put_manifest(api, repo, tag, OCI_INDEX, index.as_bytes()).await;
    (digest, index.len(), amd64, arm64)
}

/// A cosign-style signature of `subject` in `repo`; answers its digest and its blobs' bytes.
async fn must_push_signature(api: &Api, repo: &str, subject: &Image) -> (String, usize) {
    let config = must_push_blob(api, repo, b"{}").await;
    let sig = b"signature payload";
    let layer = must_push_blob(api, repo, sig).await;
    let manifest = image_manifest(
        OCI_MANIFEST,
        &descriptor(EMPTY_CONFIG, &config, 2),
        &[format!(
            r#"{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"{layer}","size":{},"annotations":{{"dev.cosignproject.cosign/signature":"MEUCIQ"}}}}"#,
            sig.len()
        )],
        &format!(
            r#","artifactType":"{COSIGN}","subject":{},"annotations":{{"org.opencontainers.image.created":"2026-11-05T10:00:00Z"}}"#,
            descriptor(OCI_MANIFEST, &subject.digest, subject.bytes.len())
        ),
    );
    let digest = sha256(manifest.as_bytes());
    must_put_manifest(api, repo, &digest, OCI_MANIFEST, manifest.as_bytes()).await;
    (digest, 2 + sig.len())
}

#[actix_web::test]
async fn pages_show_repositories_tags_platforms_manifests_and_referrers() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let v1 = must_push_image(&api, "team/app", "v1", "app one").await;
    let v2 = must_push_image(&api, "team/app", "v2", "app two").await;
    let (sig, sig_bytes) = must_push_signature(&api, "team/app", &v1).await;
    let (index, index_len, amd64, arm64) = must_push_index(&api, "team/multi", "1.0").await;
    must_push_image(&api, "library/tool", "latest", "tool").await;

    // The repository list: every repository, its tags and the bytes of its blobs.
    let home = must_page(&api, "/").await;
    assert!(home.contains("<title>Repositories · IPCR</title>"));
    let app = row(&home, "team/app");
    assert!(
        app.contains(r#"<a href="/ui/repo/team/app">team/app</a>"#),
        "{app}"
    );
    assert!(app.contains(r#"<td class="num">2</td>"#), "two tags: {app}");
    let app_size = v1.config_size + v1.layer_size + v2.config_size + v2.layer_size + sig_bytes;
    assert!(
        app.contains(&format!(r#"title="{app_size} bytes""#)),
        "{app_size} bytes: {app}"
    );
    let multi = row(&home, "team/multi");
    assert!(multi.contains(r#"<td class="num">3</td>"#), "three tags: {multi}");
    let multi_size = amd64.config_size + amd64.layer_size + arm64.config_size + arm64.layer_size;
    assert!(
        multi.contains(&format!(r#"title="{multi_size} bytes""#)),
        "{multi}"
    );
    row(&home, "library/tool");
    assert!(home.contains(r#"id="filter""#), "the filter box");

    // `?q=` filters on the server.
    let found = must_page(&api, "/?q=MULTI").await;
    row(&found, "team/multi");
    assert!(!found.contains("data-name=\"team/app\""));
    let none = must_page(&api, "/?q=nothing-like-this").await;
    assert!(none.contains("No repository matches."));

    // A repository's tags: digests, platforms, sizes, pull commands.
    let tags = must_page(&api, "/ui/repo/team/multi").await;
    let tag = row(&tags, "1.0");
    assert!(tag.contains(&format!(r#"title="{index}""#)), "full digest: {tag}");
    assert!(
        tag.contains(">linux/amd64<") && tag.contains(">linux/arm64/v8<"),
        "{tag}"
    );
    assert!(tag.contains(">index<"), "{tag}");
    assert!(
        tag.contains(&format!("docker pull {HOST}/team/multi:1.0")),
        "{tag}"
    );
    assert!(
        tag.contains(&format!(r#"data-copy="docker pull {HOST}/team/multi:1.0""#)),
        "{tag}"
    );
    let index_total = index_len + amd64.bytes.len() + arm64.bytes.len() + multi_size;
    assert!(
        tag.contains(&format!(r#"title="{index_total} bytes""#)),
        "{index_total}: {tag}"
    );
    let single = row(&tags, "1.0-amd64");
    assert!(
        single.contains(">image<") && single.contains(">OCI image<"),
        "{single}"
    );

    // A manifest: config and layers with sizes and media types, tags, referrers.
    let m = must_page(&api, &format!("/ui/repo/team/app/manifest/{}", v1.digest)).await;
    for (digest, size) in [(&v1.config, v1.config_size), (&v1.layer, v1.layer_size)] {
        assert!(m.contains(&format!(r#"title="{digest}""#)), "{digest}");
        assert!(
            m.contains(&format!(r#"title="{size} bytes">{size} B<"#)),
            "{size}"
        );
    }
    assert!(m.contains(OCI_CONFIG) && m.contains(OCI_LAYER));
    assert!(m.contains(&format!("docker pull {HOST}/team/app@{}", v1.digest)));
    assert!(m.contains("Referrers (1)") && m.contains(COSIGN), "{m}");
    assert!(m.contains(&format!(r#"href="/ui/repo/team/app/manifest/{sig}""#)));
    assert!(m.contains("org.opencontainers.image.created"));
    assert!(m.contains(r#"<span class="pill" title="pushed"#), "its tag: {m}");
    // No IPFS backend: no CID to show.
    assert!(!m.contains("pinned"));

    // The signature: its subject linked back, its artifact type, its layer's annotation.
    let s = must_page(&api, &format!("/ui/repo/team/app/manifest/{sig}")).await;
    assert!(s.contains(&format!(r#"href="/ui/repo/team/app/manifest/{}""#, v1.digest)));
    assert!(s.contains(">artifact<") && s.contains("dev.cosignproject.cosign/signature"));

    // An index: its entries with platforms, linked.
    let i = must_page(&api, &format!("/ui/repo/team/multi/manifest/{index}")).await;
    assert!(i.contains("Manifests (2)"));
    assert!(i.contains(&format!(
        r#"href="/ui/repo/team/multi/manifest/{}""#,
        arm64.digest
    )));
    assert!(i.contains(">linux/arm64/v8<"));

    // What is not there: a page saying so, with 404.
    let unknown = sha256(b"no such manifest");
    for path in [
        "/ui/repo/team/nope".to_string(),
        "/ui/repo/Not%20A%20Name".to_string(),
        format!("/ui/repo/team/app/manifest/{unknown}"),
        format!("/ui/repo/team/multi/manifest/{}", v1.digest),
        "/ui/repo/team/app/manifest/not-a-digest".to_string(),
    ] {
        let (status, ct, text) = page(&api, &path).await;
        assert_eq!(status, 404, "{path}: {text}");
        assert_eq!(ct.as_deref(), Some("text/html; charset=utf-8"));
        assert!(text.contains("Not found"), "{path}");
    }

    // The cluster and IPFS pages.
    let cluster = must_page(&api, "/ui/cluster").await;
    let id = node.parts.raft.id();
    assert!(
        cluster.contains("Members") && cluster.contains(">leader<"),
        "{cluster}"
    );
    assert!(
        cluster.contains(&format!(r#"<td class="mono">{id}</td>"#)),
        "{cluster}"
    );
    assert!(cluster.contains("Under-replicated") && cluster.contains("Garbage collection"));
    let ipfs = must_page(&api, "/ui/ipfs").await;
    assert!(ipfs.contains("No IPFS backend configured."));

    // The API and the probes keep their handlers.
    let resp = api.get("/v2/").await;
    must_status(&resp, 200);
    assert_eq!(&body(resp).await[..], b"{}");
    must_status(&api.get("/ready").await, 200);
    must_status(&api.get("/v2/_catalog").await, 200);
}

#[actix_web::test]
async fn hostile_manifest_content_is_escaped() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let evil = serde_json::to_string(EVIL).unwrap();
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config = must_push_blob(&api, "evil/app", config_bytes).await;
    let layer = must_push_blob(&api, "evil/app", b"layer").await;
    let manifest = image_manifest(
        OCI_MANIFEST,
        &descriptor(OCI_CONFIG, &config, config_bytes.len()),
        &[format!(
            r#"{{"mediaType":{evil},"digest":"{layer}","size":5,"annotations":{{{evil}:{evil}}}}}"#
        )],
        &format!(r#","annotations":{{{evil}:{evil},"quote":"\"'"}}"#),
    );
    let image = must_put_manifest(&api, "evil/app", "v1", OCI_MANIFEST, manifest.as_bytes()).await;
    let index = index_manifest(
        OCI_INDEX,
        &[format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{image}","size":{},"platform":{{"os":{evil},"architecture":"\"><img src=x onerror=alert(2)>","variant":5}},"annotations":{{"a":{evil}}}}}"#,
            manifest.len()
        )],
        &format!(r#","annotations":{{"b":{evil}}}"#),
    );
    let index_digest = must_put_manifest(&api, "evil/app", "multi", OCI_INDEX, index.as_bytes()).await;

    for path in [
        "/".to_string(),
        "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E%22".to_string(),
        "/ui/repo/evil/app".to_string(),
        format!("/ui/repo/evil/app/manifest/{image}"),
        format!("/ui/repo/evil/app/manifest/{index_digest}"),
    ] {
        let text = must_page(&api, &path).await;
        assert!(!text.contains("<script>alert"), "{path}: {text}");
        assert!(!text.contains("<img"), "{path}: {text}");
        assert_eq!(
            text.matches("<script").count(),
            1,
            "{path}: only the page's own script"
        );
    }
    let m = must_page(&api, &format!("/ui/repo/evil/app/manifest/{image}")).await;
    assert!(
        m.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"),
        "{m}"
    );
    let i = must_page(&api, &format!("/ui/repo/evil/app/manifest/{index_digest}")).await;
    assert!(
        i.contains(
            "&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;/&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"
        ),
        "{i}"
    );
    let tags = must_page(&api, "/ui/repo/evil/app").await;
    assert!(
        tags.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "the platform, escaped: {tags}"
    );
    let resp = api
        .send(
            TestRequest::get()
                .uri("/ui/repo/evil/app")
                .insert_header(("Host", HOST)),
        )
        .await;
    let csp = header(&resp, "Content-Security-Policy").expect("a Content-Security-Policy");
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("script-src 'sha256-"),
        "{csp}"
    );
    assert_eq!(
        header(&resp, "X-Content-Type-Options").as_deref(),
        Some("nosniff")
    );
}

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// alice and bob (password `<user>-pw`), each pulling and pushing their own team's
/// repositories, and root, an administrator; IPCR issues tokens too.
fn auth_config(dir: &Path) -> ipcr_node::config::Config {
    let htpasswd = dir.join("htpasswd");
    let lines: String = ["alice", "bob", "root"]
        .iter()
        .map(|u| format!("{u}:{}\n", bcrypt::hash(format!("{u}-pw"), 4).unwrap()))
        .collect();
    std::fs::write(&htpasswd, lines).unwrap();
    let policy = |repo: &str, user: &str| PolicyConfig {
        repositories: vec![repo.into()],
        users: vec![user.into()],
        actions: vec![Action::Pull, Action::Push],
        ..Default::default()
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let key_path = dir.join("signing.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let mut c = test_config();
    c.auth = AuthConfig {
        htpasswd: Some(HtpasswdConfig {
            realm: "IPCR test".into(),
            path: htpasswd,
        }),
        token: Some(TokenConfig {
            realm: "https://registry.test/auth/token".into(),
            service: "registry.test".into(),
            issuer: "ipcr-test".into(),
            signingkey: Some(key_path),
            ..TokenConfig::default()
        }),
        access: Some(AccessConfig {
            admins: vec!["root".into()],
            policies: vec![policy("team-a/**", "alice"), policy("team-b/**", "bob")],
            ..Default::default()
        }),
    };
    c
}

#[actix_web::test]
async fn visitors_log_in_and_see_only_what_they_may_pull() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(auth_config(dir.path())).await;
    let anonymous = Api::new(&node).await;
    let alice = Api::new_as(&node, Some(basic("alice", "alice-pw"))).await;
    let bob = Api::new_as(&node, Some(basic("bob", "bob-pw"))).await;
    let a = must_push_image(&alice, "team-a/app", "v1", "a").await;
    let b = must_push_image(&bob, "team-b/app", "v1", "b").await;

    // No credentials, or wrong ones: the browser's login prompt, on every page.
    let wrong = Api::new_as(&node, Some(basic("alice", "nope"))).await;
    for api in [&anonymous, &wrong] {
        for path in ["/", "/ui/repo/team-a/app", "/ui/cluster", "/ui/ipfs"] {
            let resp = api
                .send(TestRequest::get().uri(path).insert_header(("Host", HOST)))
                .await;
            assert_eq!(resp.status().as_u16(), 401, "{path}");
            assert_eq!(
                header(&resp, "WWW-Authenticate").as_deref(),
                Some(r#"Basic realm="IPCR""#),
                "{path}"
            );
            let text = String::from_utf8(body(resp).await.to_vec()).unwrap();
            assert!(
                !text.contains("team-a") && !text.contains("team-b"),
                "{path}: {text}"
            );
        }
    }

    // Each user sees their own repository only.
    let home = must_page(&alice, "/").await;
    assert!(home.contains("Signed in as <b>alice</b>"));
    row(&home, "team-a/app");
    assert!(!home.contains("team-b"), "{home}");
    must_page(&alice, "/ui/repo/team-a/app").await;
    must_page(&alice, &format!("/ui/repo/team-a/app/manifest/{}", a.digest)).await;
    let bobs = must_page(&bob, "/").await;
    row(&bobs, "team-b/app");
    assert!(!bobs.contains("team-a"));

    // Another user's repository and manifest look exactly like missing ones.
    let (status, _, hidden) = page(&alice, "/ui/repo/team-b/app").await;
    let (missing_status, _, missing) = page(&alice, "/ui/repo/team-b/missing").await;
    assert_eq!((status, missing_status), (404, 404));
    assert_eq!(hidden, missing);
    let (status, _, hidden) = page(&alice, &format!("/ui/repo/team-b/app/manifest/{}", b.digest)).await;
    let (_, _, missing) = page(
        &alice,
        &format!("/ui/repo/team-b/app/manifest/{}", sha256(b"none")),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(hidden, missing);

    // Administrators see the cluster and the IPFS backend; other users and tokens do not.
    let root = Api::new_as(&node, Some(basic("root", "root-pw"))).await;
    let cluster = must_page(&root, "/ui/cluster").await;
    assert!(cluster.contains(r#"href="/ui/ipfs""#));
    must_page(&root, "/ui/ipfs").await;
    let roots = must_page(&root, "/").await;
    row(&roots, "team-a/app");
    row(&roots, "team-b/app");
    let home = must_page(&alice, "/").await;
    assert!(!home.contains(r#"href="/ui/cluster""#), "{home}");
    for path in ["/ui/cluster", "/ui/ipfs"] {
        let (status, _, text) = page(&alice, path).await;
        assert_eq!(status, 403, "{path}: {text}");
        assert!(!text.contains("127.0.0.1"), "{path}: {text}");
    }
    let resp = alice
        .get("/auth/token?service=registry.test&scope=repository:team-a/app:pull")
        .await;
    must_status(&resp, 200);
    let token = json(resp).await["token"].as_str().unwrap().to_string();
    let bearer = Api::new_as(&node, Some(format!("Bearer {token}"))).await;
    let home = must_page(&bearer, "/").await;
    row(&home, "team-a/app");
    assert!(!home.contains("team-b") && !home.contains(r#"href="/ui/cluster""#));
    for path in ["/ui/cluster", "/ui/ipfs"] {
        let (status, _, text) = page(&bearer, path).await;
        assert_eq!(status, 403, "{path}: {text}");
    }
}
