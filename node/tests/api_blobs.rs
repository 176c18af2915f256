//! API tests of pulling, checking and deleting blobs (end-2, end-10), written from the OCI
//! distribution-spec ("Pulling blobs", "Checking if content exists", "Deleting Blobs") and
//! RFC 9110 section 14 for ranges.

mod common;

use actix_web::test::TestRequest;
use common::*;
use ipcr_node::api::HttpSettings;

const REPO: &str = "blobs/repo";

async fn ranged(api: &Api, digest: &str, range: &str) -> actix_web::dev::ServiceResponse {
    api.send(
        TestRequest::get()
            .uri(&format!("/v2/{REPO}/blobs/{digest}"))
            .insert_header(("Range", range)),
    )
    .await
}

#[actix_web::test]
async fn get_and_head_serve_the_blob_with_digest_and_length() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(2048, 1);
    let digest = must_push_blob(&api, REPO, &data).await;

    let resp = api.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    must_status(&resp, 200);
    assert_eq!(
        header(&resp, "Docker-Content-Digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(content_length(&resp), Some(2048));
    assert_eq!(&body(resp).await[..], &data[..]);

    // A HEAD answer MUST carry the digest and the size in Content-Length, and no body.
    let resp = api.head(&format!("/v2/{REPO}/blobs/{digest}")).await;
    must_status(&resp, 200);
    assert_eq!(
        header(&resp, "Docker-Content-Digest").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(content_length(&resp), Some(2048));
    assert!(body(resp).await.is_empty());
}

#[actix_web::test]
async fn content_length_reaches_the_wire_for_get_and_head() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(3000, 2);
    let digest = must_push_blob(&api, REPO, &data).await;
    let manifest = must_push_image(&api, REPO, "v1", "wire").await;

    let state = node.state.clone();
    let settings = HttpSettings::from_config(&node.config);
    let server = actix_web::HttpServer::new(move || ipcr_node::api::app(state.clone(), settings.clone()))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let client = reqwest::Client::new();
    let length = |r: &reqwest::Response| {
        r.headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let blob = format!("http://{addr}/v2/{REPO}/blobs/{digest}");
    let r = client.head(&blob).send().await.expect("HEAD blob");
    assert_eq!(r.status(), 200);
    assert_eq!(length(&r).as_deref(), Some("3000"));
    assert_eq!(
        r.headers()
            .get("docker-content-digest")
            .unwrap()
            .to_str()
            .unwrap(),
        digest
    );
    let r = client.get(&blob).send().await.expect("GET blob");
    assert_eq!(length(&r).as_deref(), Some("3000"));
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);

    let m = format!("http://{addr}/v2/{REPO}/manifests/v1");
    let r = client.head(&m).send().await.expect("HEAD manifest");
    assert_eq!(r.status(), 200);
    let expected = manifest.bytes.len().to_string();
    assert_eq!(length(&r).as_deref(), Some(expected.as_str()));
    handle.stop(false).await;
}

#[actix_web::test]
async fn range_requests_answer_206_with_content_range() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(2048, 3);
    let digest = must_push_blob(&api, REPO, &data).await;

    // (Range, first byte, last byte): a closed range, an open one, a suffix, and an end past
    // the size, which RFC 9110 (14.1.2) clamps to the last byte.
    let cases = [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, 2047),
        ("bytes=-500", 1548, 2047),
        ("bytes=2000-5000", 2000, 2047),
        ("bytes=0-0", 0, 0),
        ("bytes=-5000", 0, 2047),
    ];
    for (range, first, last) in cases {
        let resp = ranged(&api, &digest, range).await;
        must_status(&resp, 206);
        assert_eq!(
            header(&resp, "Content-Range").as_deref(),
            Some(format!("bytes {first}-{last}/2048").as_str()),
            "{range}"
        );
        assert_eq!(content_length(&resp), Some(last - first + 1), "{range}");
        assert_eq!(
            &body(resp).await[..],
            &data[first as usize..=last as usize],
            "{range}"
        );
    }
}

#[actix_web::test]
async fn unsatisfiable_ranges_answer_416() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(2048, 4);
    let digest = must_push_blob(&api, REPO, &data).await;

    for range in ["bytes=500-0", "bytes=5000-6000", "bytes=2048-", "bytes=4096-"] {
        let resp = ranged(&api, &digest, range).await;
        // RFC 9110 15.5.17: a 416 to a byte range SHOULD carry `Content-Range: bytes */<size>`.
        assert_eq!(
            header(&resp, "Content-Range").as_deref(),
            Some("bytes */2048"),
            "{range}"
        );
        // The spec names no code for a 416 pull; SIZE_INVALID is the node's choice.
        must_fail(resp, 416, "SIZE_INVALID").await;
    }
}

#[actix_web::test]
async fn delete_unlinks_the_blob() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = b"to be deleted".to_vec();
    let digest = must_push_blob(&api, REPO, &data).await;
    let keep = must_push_blob(&api, REPO, b"kept").await;

    let resp = api.delete(&format!("/v2/{REPO}/blobs/{digest}")).await;
    must_status(&resp, 202);

    must_fail(
        api.get(&format!("/v2/{REPO}/blobs/{digest}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let resp = api.head(&format!("/v2/{REPO}/blobs/{digest}")).await;
    must_status(&resp, 404);
    // Deleting again: the blob is not found.
    must_fail(
        api.delete(&format!("/v2/{REPO}/blobs/{digest}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    // Other blobs of the repository are untouched.
    must_status(&api.get(&format!("/v2/{REPO}/blobs/{keep}")).await, 200);
}

#[actix_web::test]
async fn delete_in_one_repository_leaves_the_others() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = b"shared bytes".to_vec();
    let digest = must_push_blob(&api, "one", &data).await;
    must_push_blob(&api, "two", &data).await;

    must_status(&api.delete(&format!("/v2/one/blobs/{digest}")).await, 202);
    must_fail(
        api.get(&format!("/v2/one/blobs/{digest}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let resp = api.get(&format!("/v2/two/blobs/{digest}")).await;
    must_status(&resp, 200);
    assert_eq!(&body(resp).await[..], &data[..]);
}

#[actix_web::test]
async fn delete_when_disabled_is_405() {
    let node = TestNode::start(delete_disabled_config()).await;
    let api = Api::new(&node).await;
    let digest = must_push_blob(&api, REPO, b"undeletable").await;

    // "If blob deletion is disabled, the registry MUST respond with either a 400 Bad Request or
    // a 405 Method Not Allowed."
    must_fail(
        api.delete(&format!("/v2/{REPO}/blobs/{digest}")).await,
        405,
        "UNSUPPORTED",
    )
    .await;
    let resp = api.get(&format!("/v2/{REPO}/blobs/{digest}")).await;
    must_status(&resp, 200);
    assert_eq!(&body(resp).await[..], b"undeletable");
}

#[actix_web::test]
async fn missing_blobs_are_404() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let digest = must_push_blob(&api, "owner", b"only in owner").await;
    must_push_blob(&api, "other", b"something else").await;
    let unknown = sha256(b"never pushed");

    // A blob pushed to another repository is not served here until mounted.
    must_fail(
        api.get(&format!("/v2/other/blobs/{digest}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    must_status(&api.head(&format!("/v2/other/blobs/{digest}")).await, 404);
    must_fail(
        api.get(&format!("/v2/other/blobs/{unknown}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    must_fail(
        api.delete(&format!("/v2/other/blobs/{digest}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    // A repository that never received content is unknown as a whole.
    must_fail(
        api.get(&format!("/v2/never/blobs/{digest}")).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
    must_status(&api.head(&format!("/v2/never/blobs/{digest}")).await, 404);
}
