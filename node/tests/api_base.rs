//! API tests of the base endpoint and of what every response carries, written from the OCI
//! distribution-spec ("Determining Support", end-1) and its legacy-header note.

mod common;

use actix_web::test::TestRequest;
use common::*;

#[actix_web::test]
async fn base_endpoint_answers_200_with_the_api_version() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;

    // end-1: `GET /v2/` is `200` when the registry implements the spec.
    let resp = api.get("/v2/").await;
    must_status(&resp, 200);
    assert_eq!(&body(resp).await[..], b"{}");

    // `/v2` without the trailing slash is the same endpoint.
    let resp = api.get("/v2").await;
    must_status(&resp, 200);

    let resp = api.head("/v2/").await;
    must_status(&resp, 200);
}

#[actix_web::test]
async fn base_endpoint_refuses_other_methods() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    for req in [
        TestRequest::post().uri("/v2/"),
        TestRequest::put().uri("/v2/"),
        TestRequest::delete().uri("/v2/"),
        TestRequest::patch().uri("/v2/"),
    ] {
        // The spec names no code for a wrong method; UNSUPPORTED is the node's choice.
        must_fail(api.send(req).await, 405, "UNSUPPORTED").await;
    }
}

#[actix_web::test]
async fn paths_outside_the_api_are_404() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    // `/` is the web page (docs/ui.md).
    for path in ["/v3/", "/v2x/", "/v2/a/unknown/thing", "/v2/a/blobs", "/ui/"] {
        let resp = api.get(path).await;
        assert_eq!(resp.status(), 404, "{path}");
    }
}

#[actix_web::test]
async fn every_response_carries_the_api_version_header() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, "hdr/repo", "v1", "hdr").await;
    let location = must_start_upload(&api, "hdr/repo").await;
    let unknown = sha256(b"nothing");

    let mut responses = vec![
        api.get("/v2/").await,
        api.get("/v2/_catalog").await,
        api.get("/v2/hdr/repo/tags/list").await,
        api.get("/v2/hdr/repo/manifests/v1").await,
        api.head("/v2/hdr/repo/manifests/v1").await,
        api.get(&format!("/v2/hdr/repo/blobs/{}", image.layer)).await,
        api.head(&format!("/v2/hdr/repo/blobs/{}", image.layer)).await,
        api.get(&format!("/v2/hdr/repo/referrers/{}", image.digest)).await,
        api.get(&location).await,
        patch_chunk(&api, &location, 0, b"abc").await,
        patch_chunk(&api, &location, 0, b"abc").await, // 416
        api.get(&format!("/v2/hdr/repo/blobs/{unknown}")).await, // 404
        api.get("/v2/nope/tags/list").await,           // 404 NAME_UNKNOWN
        api.get("/v2/UPPER/tags/list").await,          // 400
        api.send(TestRequest::post().uri("/v2/hdr/repo/manifests/v1"))
            .await, // 405
        api.get("/v2/a/unknown/thing").await,          // 404
    ];
    responses.push(
        api.send(
            TestRequest::get()
                .uri(&format!("/v2/hdr/repo/blobs/{}", image.layer))
                .insert_header(("Range", "bytes=0-1")),
        )
        .await,
    );
    responses.push(api.delete(&location).await);
    responses.push(
        api.delete(&format!("/v2/hdr/repo/manifests/{}", image.digest))
            .await,
    );
    for resp in &responses {
        assert_eq!(
            header(resp, API_VERSION).as_deref(),
            Some("registry/2.0"),
            "{} {} ({}) lacks {API_VERSION}",
            resp.request().method(),
            resp.request().uri(),
            resp.status()
        );
    }
}
