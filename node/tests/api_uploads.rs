//! API tests of pushing blobs (end-4a/4b/4c, end-5, end-6, end-11, end-13, end-14), written
//! from the OCI distribution-spec ("Pushing blobs", "Pushing a blob in chunks", "Cancel a blob
//! upload", "Mounting a blob from another repository").

mod common;

use actix_web::dev::ServiceResponse;
use actix_web::test::TestRequest;
use common::*;

const REPO: &str = "up/repo";

/// Assert a session answer: `status`, `Location` equal to `location` (when given), `Range` and
/// a `Docker-Upload-UUID` that names the session in the `Location`.
#[track_caller]
fn must_be_session(resp: &ServiceResponse, status: u16, location: Option<&str>, range: &str) -> String {
    must_status(resp, status);
    let loc = header(resp, "Location").expect("Location");
    if let Some(l) = location {
        assert_eq!(loc, l, "Location");
    }
    assert!(loc.starts_with(&format!("/v2/{REPO}/blobs/uploads/")), "{loc}");
    assert_eq!(header(resp, "Range").as_deref(), Some(range), "Range");
    let id = header(resp, "Docker-Upload-UUID").expect("Docker-Upload-UUID");
    assert!(loc.ends_with(&id), "{loc} does not name {id}");
    loc
}

/// Assert a `201` for `digest` whose Location is a pullable URL serving `data`.
async fn must_be_created(api: &Api, resp: ServiceResponse, digest: &str, data: &[u8]) {
    must_status(&resp, 201);
    assert_eq!(header(&resp, "Docker-Content-Digest").as_deref(), Some(digest));
    let location = header(&resp, "Location").expect("Location");
    let pulled = api.get(&location).await;
    must_status(&pulled, 200);
    assert_eq!(&body(pulled).await[..], data);
}

#[actix_web::test]
async fn monolithic_post_creates_the_blob() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(5000, 1);
    let digest = sha256(&data);
    let resp = api
        .send(
            TestRequest::post()
                .uri(&format!("/v2/{REPO}/blobs/uploads/?digest={digest}"))
                .insert_header(("Content-Type", "application/octet-stream"))
                .set_payload(data.clone()),
        )
        .await;
    assert_eq!(
        header(&resp, "Location"),
        Some(format!("/v2/{REPO}/blobs/{digest}"))
    );
    must_be_created(&api, resp, &digest, &data).await;
}

#[actix_web::test]
async fn post_then_put_with_the_whole_body() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let resp = api
        .send(
            TestRequest::post()
                .uri(&format!("/v2/{REPO}/blobs/uploads/"))
                .insert_header(("Content-Length", "0")),
        )
        .await;
    // An empty session's Range is `0-0` (distribution's convention).
    let location = must_be_session(&resp, 202, None, "0-0");

    let data = pattern(3000, 2);
    let digest = sha256(&data);
    let resp = api
        .send(
            TestRequest::put()
                .uri(&with_digest(&location, &digest))
                .insert_header(("Content-Type", "application/octet-stream"))
                .set_payload(data.clone()),
        )
        .await;
    must_be_created(&api, resp, &digest, &data).await;
}

#[actix_web::test]
async fn chunked_upload_with_content_range() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(3000, 3);
    let digest = sha256(&data);
    let location = must_start_upload(&api, REPO).await;

    let resp = patch_chunk(&api, &location, 0, &data[..1000]).await;
    let location = must_be_session(&resp, 202, Some(&location), "0-999");
    let resp = patch_chunk(&api, &location, 1000, &data[1000..2500]).await;
    let location = must_be_session(&resp, 202, Some(&location), "0-2499");

    // The status agrees with the last chunk.
    let resp = api.get(&location).await;
    must_be_session(&resp, 204, Some(&location), "0-2499");

    // The last chunk travels in the closing PUT.
    let resp = api
        .send(
            TestRequest::put()
                .uri(&with_digest(&location, &digest))
                .insert_header(("Content-Type", "application/octet-stream"))
                .insert_header(("Content-Range", "2500-2999"))
                .set_payload(data[2500..].to_vec()),
        )
        .await;
    must_be_created(&api, resp, &digest, &data).await;
}

#[actix_web::test]
async fn chunked_upload_closed_by_an_empty_put() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(2000, 4);
    let digest = sha256(&data);
    let location = must_start_upload(&api, REPO).await;
    for (i, chunk) in data.chunks(700).enumerate() {
        let resp = patch_chunk(&api, &location, i as u64 * 700, chunk).await;
        must_status(&resp, 202);
    }
    let resp = api
        .send(TestRequest::put().uri(&with_digest(&location, &digest)))
        .await;
    must_be_created(&api, resp, &digest, &data).await;
    // The closed session is gone.
    must_fail(api.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[actix_web::test]
async fn streamed_patches_without_content_range() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(4096, 5);
    let digest = sha256(&data);
    let location = must_start_upload(&api, REPO).await;

    // Without Content-Range or Content-Length (chunked transfer-encoding), each body is
    // appended to the session.
    let resp = api
        .send_streamed(
            TestRequest::patch()
                .uri(&location)
                .insert_header(("Content-Type", "application/octet-stream"))
                .set_payload(data[..1500].to_vec()),
        )
        .await;
    let location = must_be_session(&resp, 202, Some(&location), "0-1499");
    // And with only a Content-Length.
    let resp = api
        .send(
            TestRequest::patch()
                .uri(&location)
                .insert_header(("Content-Type", "application/octet-stream"))
                .set_payload(data[1500..].to_vec()),
        )
        .await;
    let location = must_be_session(&resp, 202, Some(&location), "0-4095");
    let resp = api
        .send(TestRequest::put().uri(&with_digest(&location, &digest)))
        .await;
    must_be_created(&api, resp, &digest, &data).await;
}

#[actix_web::test]
async fn out_of_order_and_repeated_chunks_are_416_with_the_current_range() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(30, 6);
    let digest = sha256(&data);
    let location = must_start_upload(&api, REPO).await;

    // "The first chunk's range MUST begin with 0."
    let resp = patch_chunk(&api, &location, 5, &data[5..10]).await;
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-0"));
    // The spec requires 416 and names no code; BLOB_UPLOAD_INVALID is the node's choice.
    must_fail(resp, 416, "BLOB_UPLOAD_INVALID").await;

    must_status(&patch_chunk(&api, &location, 0, &data[..10]).await, 202);
    // A gap, a repeat and an overlap: each is out of order, and the answer says where the
    // upload stands.
    for (start, end) in [(20usize, 30usize), (0, 10), (5, 15)] {
        let resp = patch_chunk(&api, &location, start as u64, &data[start..end]).await;
        assert_eq!(header(&resp, "Range").as_deref(), Some("0-9"), "{start}-{end}");
        must_fail(resp, 416, "BLOB_UPLOAD_INVALID").await;
    }
    // "If the final chunk is uploaded out of order, the registry MUST respond with 416."
    let resp = api
        .send(
            TestRequest::put()
                .uri(&with_digest(&location, &digest))
                .insert_header(("Content-Range", "20-29"))
                .set_payload(data[20..].to_vec()),
        )
        .await;
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-9"));
    must_fail(resp, 416, "BLOB_UPLOAD_INVALID").await;

    // Refused chunks left nothing behind: the upload completes with the right bytes.
    let resp = api.get(&location).await;
    must_be_session(&resp, 204, Some(&location), "0-9");
    must_status(&patch_chunk(&api, &location, 10, &data[10..]).await, 202);
    let resp = api
        .send(TestRequest::put().uri(&with_digest(&location, &digest)))
        .await;
    must_be_created(&api, resp, &digest, &data).await;
}

#[actix_web::test]
async fn cancel_ends_the_session() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let location = must_start_upload(&api, REPO).await;
    must_status(&patch_chunk(&api, &location, 0, b"partial").await, 202);

    let resp = api
        .send(
            TestRequest::delete()
                .uri(&location)
                .insert_header(("Content-Length", "0")),
        )
        .await;
    must_status(&resp, 204);

    must_fail(api.get(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    must_fail(
        patch_chunk(&api, &location, 7, b"more").await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    must_fail(
        api.send(TestRequest::put().uri(&with_digest(&location, &sha256(b"partial"))))
            .await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    must_fail(api.delete(&location).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[actix_web::test]
async fn mount_from_a_repository_holding_the_blob_is_201() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = b"mount me".to_vec();
    let digest = must_push_blob(&api, "source/repo", &data).await;
    // Not served in the target before the mount.
    must_push_blob(&api, REPO, b"target exists").await;
    must_fail(
        api.get(&format!("/v2/{REPO}/blobs/{digest}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;

    let resp = api
        .send(TestRequest::post().uri(&format!(
            "/v2/{REPO}/blobs/uploads/?mount={digest}&from=source/repo"
        )))
        .await;
    assert_eq!(
        header(&resp, "Location"),
        Some(format!("/v2/{REPO}/blobs/{digest}"))
    );
    must_be_created(&api, resp, &digest, &data).await;
}

#[actix_web::test]
async fn mount_of_a_blob_not_in_from_starts_an_upload() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = b"not where you look".to_vec();
    let digest = sha256(&data);
    must_push_blob(&api, "source/repo", b"other content").await;
    // The blob exists in a third repository: the node mounts only from `from` (the spec lets
    // it look elsewhere; not doing so keeps repositories isolated).
    must_push_blob(&api, "third", &data).await;

    for query in [
        format!("mount={digest}&from=source/repo"),
        format!("mount={digest}&from=never/pushed"),
        // Without `from` the node does not mount (the spec makes it optional): a new upload.
        format!("mount={digest}"),
    ] {
        let resp = api
            .send(TestRequest::post().uri(&format!("/v2/{REPO}/blobs/uploads/?{query}")))
            .await;
        let location = must_be_session(&resp, 202, None, "0-0");
        // The session is a normal upload.
        let resp = api
            .send(
                TestRequest::put()
                    .uri(&with_digest(&location, &digest))
                    .set_payload(data.clone()),
            )
            .await;
        must_be_created(&api, resp, &digest, &data).await;
        must_status(&api.delete(&format!("/v2/{REPO}/blobs/{digest}")).await, 202);
    }
}

#[actix_web::test]
async fn sha512_uploads() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(2500, 7);
    let digest = sha512(&data);

    // A session opened for sha512, filled in chunks, closed with the sha512 digest.
    let resp = api
        .send(TestRequest::post().uri(&format!("/v2/{REPO}/blobs/uploads/?digest-algorithm=sha512")))
        .await;
    let location = must_be_session(&resp, 202, None, "0-0");
    must_status(&patch_chunk(&api, &location, 0, &data[..1000]).await, 202);
    must_status(&patch_chunk(&api, &location, 1000, &data[1000..]).await, 202);
    let resp = api
        .send(TestRequest::put().uri(&with_digest(&location, &digest)))
        .await;
    must_be_created(&api, resp, &digest, &data).await;
    let resp = api.head(&format!("/v2/{REPO}/blobs/{digest}")).await;
    must_status(&resp, 200);
    assert_eq!(content_length(&resp), Some(2500));

    // Monolithic.
    let data = pattern(100, 8);
    let digest = sha512(&data);
    let resp = api
        .send(
            TestRequest::post()
                .uri(&format!("/v2/{REPO}/blobs/uploads/?digest={digest}"))
                .set_payload(data.clone()),
        )
        .await;
    must_be_created(&api, resp, &digest, &data).await;
}

#[actix_web::test]
async fn the_empty_blob() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    assert_eq!(sha256(b""), EMPTY_DIGEST);

    let resp = api
        .send(
            TestRequest::post()
                .uri(&format!("/v2/{REPO}/blobs/uploads/?digest={EMPTY_DIGEST}"))
                .set_payload(Vec::new()),
        )
        .await;
    must_be_created(&api, resp, EMPTY_DIGEST, b"").await;

    // Through a session closed with no chunk at all.
    let location = must_start_upload(&api, "up/other").await;
    let resp = api
        .send(TestRequest::put().uri(&with_digest(&location, EMPTY_DIGEST)))
        .await;
    must_be_created(&api, resp, EMPTY_DIGEST, b"").await;

    let resp = api.head(&format!("/v2/up/other/blobs/{EMPTY_DIGEST}")).await;
    must_status(&resp, 200);
    assert_eq!(content_length(&resp), Some(0));
    let resp = api.get(&format!("/v2/up/other/blobs/{EMPTY_DIGEST}")).await;
    must_status(&resp, 200);
    assert_eq!(content_length(&resp), Some(0));
    // No byte range of an empty blob can be satisfied (RFC 9110 14.1.1).
    let resp = api
        .send(
            TestRequest::get()
                .uri(&format!("/v2/up/other/blobs/{EMPTY_DIGEST}"))
                .insert_header(("Range", "bytes=0-0")),
        )
        .await;
    assert_eq!(resp.status(), 416);
}

#[actix_web::test]
async fn upload_resumes_after_a_restart() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let data = pattern(3000, 9);
    let digest = sha256(&data);
    let location = must_start_upload(&api, REPO).await;
    must_status(&patch_chunk(&api, &location, 0, &data[..1000]).await, 202);
    must_status(&patch_chunk(&api, &location, 1000, &data[1000..2000]).await, 202);
    drop(api);

    let node = restart(node).await;
    let api = Api::new(&node).await;
    let resp = api.get(&location).await;
    must_be_session(&resp, 204, Some(&location), "0-1999");
    let resp = patch_chunk(&api, &location, 1500, &data[1500..]).await;
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-1999"));
    must_fail(resp, 416, "BLOB_UPLOAD_INVALID").await;
    let resp = patch_chunk(&api, &location, 2000, &data[2000..]).await;
    must_be_session(&resp, 202, Some(&location), "0-2999");
    let resp = api
        .send(TestRequest::put().uri(&with_digest(&location, &digest)))
        .await;
    must_be_created(&api, resp, &digest, &data).await;
}
