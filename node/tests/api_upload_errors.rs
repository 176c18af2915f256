//! API tests of the ways a blob push fails, written from the OCI distribution-spec ("Pushing
//! blobs", the error codes table) and RFC 9110 for lengths.

mod common;

use actix_web::test::TestRequest;
use common::*;

const REPO: &str = "err/repo";

#[actix_web::test]
async fn digest_mismatch_on_close_stores_nothing_and_ends_the_session() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_push_blob(&api, REPO, b"the repository exists").await;
    let data = b"actual content".to_vec();
    let claimed = sha256(b"other content");
    let location = must_start_upload(&api, REPO).await;
    must_status(&patch_chunk(&api, &location, 0, &data).await, 202);

    must_fail(
        api.send(TestRequest::put().uri(&with_digest(&location, &claimed)))
            .await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    for digest in [&claimed, &sha256(&data)] {
        must_fail(
            api.get(&format!("/v2/{REPO}/blobs/{digest}")).await,
            404,
            "BLOB_UNKNOWN",
        )
        .await;
    }
    must_fail(api.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[actix_web::test]
async fn digest_mismatch_with_the_last_chunk_in_the_put() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_push_blob(&api, REPO, b"the repository exists").await;
    let location = must_start_upload(&api, REPO).await;
    let claimed = sha256(b"something else");
    let resp = api
        .send(
            TestRequest::put()
                .uri(&with_digest(&location, &claimed))
                .set_payload(b"whole body".to_vec()),
        )
        .await;
    must_fail(resp, 400, "DIGEST_INVALID").await;
    must_fail(
        api.get(&format!("/v2/{REPO}/blobs/{claimed}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    must_fail(api.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[actix_web::test]
async fn monolithic_digest_mismatch_stores_nothing() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_push_blob(&api, REPO, b"the repository exists").await;
    let claimed = sha256(b"what the client says");
    let resp = api
        .send(
            TestRequest::post()
                .uri(&format!("/v2/{REPO}/blobs/uploads/?digest={claimed}"))
                .set_payload(b"what the client sends".to_vec()),
        )
        .await;
    must_fail(resp, 400, "DIGEST_INVALID").await;
    must_fail(
        api.get(&format!("/v2/{REPO}/blobs/{claimed}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let sent = sha256(b"what the client sends");
    must_fail(
        api.get(&format!("/v2/{REPO}/blobs/{sent}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn lengths_that_disagree_are_size_invalid() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let location = must_start_upload(&api, REPO).await;
    must_status(&patch_chunk(&api, &location, 0, b"0123456789").await, 202);

    // Content-Length disagreeing with Content-Range.
    let resp = api
        .send(
            TestRequest::patch()
                .uri(&location)
                .insert_header(("Content-Range", "10-19"))
                .set_payload(b"abcdefghij".to_vec())
                .insert_header(("Content-Length", "5")),
        )
        .await;
    must_fail(resp, 400, "SIZE_INVALID").await;
    // A body longer than its Content-Range, with no Content-Length.
    let resp = api
        .send_streamed(
            TestRequest::patch()
                .uri(&location)
                .insert_header(("Content-Range", "10-14"))
                .set_payload(b"abcdefghij".to_vec()),
        )
        .await;
    must_fail(resp, 400, "SIZE_INVALID").await;
    // A Content-Length far beyond the body actually sent.
    let resp = api
        .send(
            TestRequest::patch()
                .uri(&location)
                .set_payload(b"short".to_vec())
                .insert_header(("Content-Length", "1099511627776")),
        )
        .await;
    must_fail(resp, 400, "SIZE_INVALID").await;

    // None of the refused bodies was appended.
    let resp = api.get(&location).await;
    must_status(&resp, 204);
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-9"));
    let data = b"0123456789abcdefghij".to_vec();
    must_status(&patch_chunk(&api, &location, 10, &data[10..]).await, 202);
    let resp = api
        .send(TestRequest::put().uri(&with_digest(&location, &sha256(&data))))
        .await;
    must_status(&resp, 201);
    let resp = api.get(&format!("/v2/{REPO}/blobs/{}", sha256(&data))).await;
    assert_eq!(&body(resp).await[..], &data[..]);
}

#[actix_web::test]
async fn monolithic_length_mismatch_is_size_invalid() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = b"twelve bytes".to_vec();
    let digest = sha256(&data);
    // "The Content-Length header MUST match the blob's actual content length."
    for declared in ["5", "100", "1099511627776"] {
        let resp = api
            .send(
                TestRequest::post()
                    .uri(&format!("/v2/{REPO}/blobs/uploads/?digest={digest}"))
                    .set_payload(data.clone())
                    .insert_header(("Content-Length", declared)),
            )
            .await;
        must_fail(resp, 400, "SIZE_INVALID").await;
    }
    must_fail(
        api.get(&format!("/v2/{REPO}/blobs/{digest}")).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn malformed_content_range_is_refused() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let location = must_start_upload(&api, REPO).await;
    for range in ["abc", "0-", "-4", "bytes=0-4", "0_4"] {
        let resp = api
            .send(
                TestRequest::patch()
                    .uri(&location)
                    .insert_header(("Content-Range", range))
                    .set_payload(b"01234".to_vec()),
            )
            .await;
        // The range "MUST match ^[0-9]+-[0-9]+$"; BLOB_UPLOAD_INVALID is the node's code.
        must_fail(resp, 400, "BLOB_UPLOAD_INVALID").await;
    }
    let resp = api.get(&location).await;
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-0"));
}

#[actix_web::test]
async fn unknown_upload_ids_are_404() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_push_blob(&api, REPO, b"the repository exists").await;
    let digest = sha256(b"x");
    for id in [
        "6a6b2b1e-2b9b-4b7e-9d55-7a0a7c3a8f10",
        "not-a-uuid",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "00000000000000000000000000000000",
    ] {
        let location = format!("/v2/{REPO}/blobs/uploads/{id}");
        must_fail(api.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        must_fail(
            patch_chunk(&api, &location, 0, b"x").await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        must_fail(
            api.send(
                TestRequest::put()
                    .uri(&with_digest(&location, &digest))
                    .set_payload("x"),
            )
            .await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        must_fail(api.delete(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
}

#[actix_web::test]
async fn an_upload_belongs_to_its_repository() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let location = must_start_upload(&api, REPO).await;
    must_status(&patch_chunk(&api, &location, 0, b"01234").await, 202);
    let id = location.rsplit('/').next().unwrap().to_string();
    let data = b"0123456789".to_vec();
    let digest = sha256(&data);

    for other in ["err/other", "err", "err/repo/sub"] {
        let elsewhere = format!("/v2/{other}/blobs/uploads/{id}");
        must_fail(api.get(&elsewhere).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
        must_fail(
            patch_chunk(&api, &elsewhere, 5, b"56789").await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        must_fail(
            api.send(
                TestRequest::put()
                    .uri(&with_digest(&elsewhere, &digest))
                    .set_payload("56789"),
            )
            .await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        must_fail(api.delete(&elsewhere).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    }
    // The session is intact under its own name.
    let resp = api.get(&location).await;
    must_status(&resp, 204);
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-4"));
    must_status(&patch_chunk(&api, &location, 5, b"56789").await, 202);
    must_status(
        &api.send(TestRequest::put().uri(&with_digest(&location, &digest)))
            .await,
        201,
    );
    must_fail(
        api.get(&format!("/v2/err/other/blobs/{digest}")).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn closing_put_needs_a_valid_digest() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let location = must_start_upload(&api, REPO).await;
    must_status(&patch_chunk(&api, &location, 0, b"abc").await, 202);
    for uri in [
        location.clone(),
        with_digest(&location, "sha256:abc"),
        with_digest(&location, "md5:d41d8cd98f00b204e9800998ecf8427e"),
        with_digest(&location, &sha256(b"abc").to_uppercase()),
    ] {
        must_fail(
            api.send(TestRequest::put().uri(&uri)).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
    }
    // A refused close leaves the session open.
    let resp = api.get(&location).await;
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-2"));
    must_status(
        &api.send(TestRequest::put().uri(&with_digest(&location, &sha256(b"abc"))))
            .await,
        201,
    );
    // And a closed session takes no more chunks.
    must_fail(
        patch_chunk(&api, &location, 3, b"d").await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn invalid_digests_and_algorithms_on_post_are_400() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    // "If the client provided digest is invalid or uses an unsupported algorithm, the registry
    // SHOULD respond with a response code 400 Bad Request."
    for query in [
        "digest=sha256:1234",
        "digest=md5:d41d8cd98f00b204e9800998ecf8427e",
        "digest=notadigest",
        "digest-algorithm=md5",
        "digest-algorithm=SHA256",
        "mount=sha256:zz&from=other",
    ] {
        let resp = api
            .send(
                TestRequest::post()
                    .uri(&format!("/v2/{REPO}/blobs/uploads/?{query}"))
                    .set_payload("x"),
            )
            .await;
        must_fail(resp, 400, "DIGEST_INVALID").await;
    }
    let resp = api
        .send(TestRequest::post().uri(&format!(
            "/v2/{REPO}/blobs/uploads/?mount={}&from=Bad/Name",
            sha256(b"x")
        )))
        .await;
    must_fail(resp, 400, "NAME_INVALID").await;
}

#[actix_web::test]
async fn a_huge_content_range_is_a_client_error() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let location = must_start_upload(&api, REPO).await;
    // The range's length overflows 64 bits: a client error, not a crash.
    for range in ["0-18446744073709551615", "0-18446744073709551614"] {
        let resp = api
            .send(
                TestRequest::patch()
                    .uri(&location)
                    .insert_header(("Content-Range", range))
                    .set_payload(b"01234".to_vec()),
            )
            .await;
        let status = must_not_be_5xx(&resp);
        assert!(status == 400 || status == 416, "{range}: {status}");
    }
    // The session, and uploads in general, still work.
    let resp = api.get(&location).await;
    must_status(&resp, 204);
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-0"));
    must_status(&patch_chunk(&api, &location, 0, b"01234").await, 202);
    let other = must_start_upload(&api, REPO).await;
    must_status(&patch_chunk(&api, &other, 0, b"fine").await, 202);
}
