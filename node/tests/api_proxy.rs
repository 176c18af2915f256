//! API tests of repositories that are pull-through caches (`proxy:`), without an upstream
//! that answers: writes are refused as distribution refuses them in proxy mode, reads of
//! nothing cached are `503` (the upstream, not the client, is at fault), and repositories
//! outside every cache's prefix are ordinary ones. The fetches themselves are tested with
//! real upstreams in cluster-tests (`proxy_cache.rs`).

mod common;

use actix_web::test::TestRequest;
use common::*;

/// A node whose `cache/*` repositories are caches of a registry that is not there.
fn cache_config() -> ipcr_node::config::Config {
    let mut c = test_config();
    c.proxy.upstreams = vec![ipcr_node::config::UpstreamConfig {
        prefix: "cache".into(),
        // Port 9 (discard) on loopback: nothing listens, connections are refused at once.
        remoteurl: "http://127.0.0.1:9".into(),
        ..Default::default()
    }];
    c
}

#[actix_web::test]
async fn a_cache_takes_no_pushes_or_deletes() {
    let node = TestNode::start(cache_config()).await;
    let api = Api::new(&node).await;
    let digest = sha256(b"layer");
    for req in [
        TestRequest::post().uri("/v2/cache/app/blobs/uploads/"),
        TestRequest::post().uri(&format!("/v2/cache/app/blobs/uploads/?digest={digest}")),
        TestRequest::post().uri(&format!(
            "/v2/cache/app/blobs/uploads/?mount={digest}&from=local/app"
        )),
        TestRequest::patch().uri("/v2/cache/app/blobs/uploads/0b6b6d52-2c39-4c1b-9b4c-2a4f1a9e0c11"),
        TestRequest::put().uri(&format!(
            "/v2/cache/app/blobs/uploads/0b6b6d52-2c39-4c1b-9b4c-2a4f1a9e0c11?digest={digest}"
        )),
        TestRequest::delete().uri("/v2/cache/app/blobs/uploads/0b6b6d52-2c39-4c1b-9b4c-2a4f1a9e0c11"),
        TestRequest::put()
            .uri("/v2/cache/app/manifests/latest")
            .insert_header(("Content-Type", OCI_MANIFEST))
            .set_payload("{}"),
        TestRequest::delete().uri("/v2/cache/app/manifests/latest"),
        TestRequest::delete().uri(&format!("/v2/cache/app/blobs/{digest}")),
    ] {
        let err = must_fail(api.send(req).await, 405, "UNSUPPORTED").await;
        let message = err["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains("pull-through cache of 127.0.0.1:9"), "{message}");
    }
}

#[actix_web::test]
async fn nothing_cached_and_no_upstream_is_unavailable_not_unknown() {
    let node = TestNode::start(cache_config()).await;
    let api = Api::new(&node).await;
    let digest = sha256(b"layer");
    let resp = api.get("/v2/cache/app/manifests/latest").await;
    let retry = header(&resp, "Retry-After");
    must_fail(resp, 503, "UNAVAILABLE").await;
    assert_eq!(retry.as_deref(), Some("1"));
    must_fail(
        api.get(&format!("/v2/cache/app/manifests/{digest}")).await,
        503,
        "UNAVAILABLE",
    )
    .await;
    must_fail(
        api.get(&format!("/v2/cache/app/blobs/{digest}")).await,
        503,
        "UNAVAILABLE",
    )
    .await;
    must_fail(
        api.head(&format!("/v2/cache/app/blobs/{digest}")).await,
        503,
        "UNAVAILABLE",
    )
    .await;
}

#[actix_web::test]
async fn repositories_outside_the_prefix_are_ordinary() {
    let node = TestNode::start(cache_config()).await;
    let api = Api::new(&node).await;
    for repo in ["local/app", "cachex/app", "cache"] {
        let digest = must_push_blob(&api, repo, b"bytes").await;
        let resp = api.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        must_status(&resp, 200);
        assert_eq!(&body(resp).await[..], b"bytes");
        must_fail(
            api.get(&format!("/v2/{repo}/manifests/latest")).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }
}

/// The cache stores a fetch's bytes without hashing them again (`Check::Verified`: the stream
/// fails rather than yield bytes that do not match). A fetch whose sender goes away without an
/// error must still never be stored as the blob: the declared length tells, and without one the
/// store hashes after all.
#[actix_web::test]
async fn a_verified_fetch_cut_short_is_never_stored() {
    use ipcr_node::upload::{Check, UploadError};
    let node = TestNode::start(cache_config()).await;
    let registry = &node.parts.registry;
    let blob = vec![7u8; 3 << 20];
    let digest: ipcr_proto::Digest = sha256(&blob).parse().unwrap();
    let repo: ipcr_proto::RepoName = "cache/app".parse().unwrap();
    let body = |bytes: &[u8]| {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for piece in bytes.chunks(64 << 10) {
            tx.try_send(Ok(bytes::Bytes::copy_from_slice(piece))).unwrap();
        }
        rx // the sender goes here, with no error sent
    };
    let half = &blob[..blob.len() / 2];
    for length in [Some(blob.len() as u64), None] {
        let tmp = registry.store().temp_path();
        let put = registry
            .uploads()
            .put_whole_via(
                repo.clone(),
                digest.clone(),
                length,
                body(half),
                tmp.clone(),
                Check::Verified,
            )
            .await;
        match (length, put) {
            (Some(_), Err(UploadError::SizeInvalid(_))) | (None, Err(UploadError::DigestInvalid(_))) => {}
            (length, other) => panic!("length {length:?}: a cut fetch gave {other:?}"),
        }
        assert!(!tmp.exists(), "the temporary file stays");
    }
    assert!(
        !registry.store().blob_path(&digest).exists(),
        "a cut fetch was stored"
    );
    assert!(node.parts.raft.reader().blob_any(&digest).unwrap().is_none());

    let tmp = registry.store().temp_path();
    let stored = registry
        .uploads()
        .put_whole_via(
            repo.clone(),
            digest.clone(),
            Some(blob.len() as u64),
            body(&blob),
            tmp,
            Check::Verified,
        )
        .await
        .unwrap();
    assert_eq!(stored, blob.len() as u64);
    assert_eq!(std::fs::read(registry.store().blob_path(&digest)).unwrap(), blob);
}
