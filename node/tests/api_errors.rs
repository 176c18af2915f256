//! API tests of names, digests and methods across every endpoint, and of adversarial input,
//! written from the OCI distribution-spec (the `<name>` grammar, the error codes table, "API")
//! and RFC 9110.

mod common;

use actix_web::http::Method;
use actix_web::test::TestRequest;
use common::*;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const UUID: &str = "6a6b2b1e-2b9b-4b7e-9d55-7a0a7c3a8f10";

/// One request of each kind against repository path `name` (as it appears in the URL).
fn every_endpoint(name: &str) -> Vec<TestRequest> {
    vec![
        TestRequest::get().uri(&format!("/v2/{name}/tags/list")),
        TestRequest::get().uri(&format!("/v2/{name}/manifests/latest")),
        TestRequest::default()
            .method(Method::HEAD)
            .uri(&format!("/v2/{name}/manifests/{D}")),
        TestRequest::put()
            .uri(&format!("/v2/{name}/manifests/latest"))
            .insert_header(("Content-Type", OCI_MANIFEST))
            .set_payload("{}"),
        TestRequest::delete().uri(&format!("/v2/{name}/manifests/latest")),
        TestRequest::get().uri(&format!("/v2/{name}/blobs/{D}")),
        TestRequest::delete().uri(&format!("/v2/{name}/blobs/{D}")),
        TestRequest::post().uri(&format!("/v2/{name}/blobs/uploads/")),
        TestRequest::post()
            .uri(&format!("/v2/{name}/blobs/uploads/?digest={D}"))
            .set_payload(""),
        TestRequest::get().uri(&format!("/v2/{name}/blobs/uploads/{UUID}")),
        TestRequest::patch()
            .uri(&format!("/v2/{name}/blobs/uploads/{UUID}"))
            .set_payload("x"),
        TestRequest::get().uri(&format!("/v2/{name}/referrers/{D}")),
    ]
}

#[actix_web::test]
async fn nested_and_keyword_names_work_everywhere() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    // Components that are also route keywords must not confuse the router.
    let names = [
        "a/b/c/d",
        "x/blobs/y",
        "org/manifests",
        "a/tags/list",
        "b/blobs/uploads",
        "c/referrers",
        "0/1.2_3--4__5",
    ];
    for name in names {
        let data = format!("content of {name}").into_bytes();
        let location = must_start_upload(&api, name).await;
        assert!(
            location.starts_with(&format!("/v2/{name}/blobs/uploads/")),
            "{location}"
        );
        must_status(&patch_chunk(&api, &location, 0, &data).await, 202);
        let digest = sha256(&data);
        must_status(
            &api.send(TestRequest::put().uri(&with_digest(&location, &digest)))
                .await,
            201,
        );
        let resp = api.get(&format!("/v2/{name}/blobs/{digest}")).await;
        must_status(&resp, 200);
        assert_eq!(&body(resp).await[..], &data[..]);

        let image = must_push_image(&api, name, "latest", name).await;
        let resp = api.get(&format!("/v2/{name}/manifests/latest")).await;
        must_status(&resp, 200);
        assert_eq!(&body(resp).await[..], &image.bytes[..]);
        let resp = api.get(&format!("/v2/{name}/tags/list")).await;
        must_status(&resp, 200);
        assert_eq!(
            json(resp).await,
            serde_json::json!({ "name": name, "tags": ["latest"] })
        );
        let resp = api.get(&format!("/v2/{name}/referrers/{}", image.digest)).await;
        must_status(&resp, 200);
    }
    let resp = api.get("/v2/_catalog").await;
    let mut sorted = names.to_vec();
    sorted.sort();
    assert_eq!(json(resp).await["repositories"], serde_json::json!(sorted));
}

#[actix_web::test]
async fn invalid_names_are_name_invalid() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let too_long = format!("{}/{}", "a".repeat(200), "b".repeat(55));
    assert_eq!(too_long.len(), 256);
    let names = [
        "Upper",
        "a/B",
        "a/../b",
        "a/%2E%2E/b",
        "..",
        "a//b",
        "-a",
        "a-",
        "a_-b",
        "a...b",
        "a___b",
        "a%20b",
        "a:b",
        "%FF",
        "%C3%A4",
        too_long.as_str(),
    ];
    for name in names {
        for req in every_endpoint(name) {
            must_fail(api.send(req).await, 400, "NAME_INVALID").await;
        }
    }
    // 255 characters is the longest name: valid, merely unknown.
    let longest = format!("{}/{}", "a".repeat(200), "b".repeat(54));
    must_fail(
        api.get(&format!("/v2/{longest}/tags/list")).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
    must_push_blob(&api, &longest, b"fits").await;
}

#[actix_web::test]
async fn invalid_digests_in_urls_are_digest_invalid() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_push_image(&api, "dig/repo", "v1", "digests").await;
    let upper = D.to_uppercase().replace("SHA256", "sha256");
    let digests = [
        "sha256:abc".to_string(),
        "sha256:".to_string(),
        format!("{}0", D),
        D[..D.len() - 1].to_string(),
        upper,
        format!("sha512:{}", &D[7..]),
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
        "notadigest".to_string(),
        "sha256:..%2F..%2Fetc%2Fpasswd".to_string(),
        "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_string(),
    ];
    for d in &digests {
        let mut reqs = vec![
            TestRequest::get().uri(&format!("/v2/dig/repo/blobs/{d}")),
            TestRequest::default()
                .method(Method::HEAD)
                .uri(&format!("/v2/dig/repo/blobs/{d}")),
            TestRequest::delete().uri(&format!("/v2/dig/repo/blobs/{d}")),
            TestRequest::get().uri(&format!("/v2/dig/repo/referrers/{d}")),
            TestRequest::post()
                .uri(&format!("/v2/dig/repo/blobs/uploads/?digest={d}"))
                .set_payload("x"),
        ];
        // A manifest reference with a colon is a digest (tags cannot hold one).
        if d.contains(':') || d.contains("%3A") {
            reqs.push(TestRequest::get().uri(&format!("/v2/dig/repo/manifests/{d}")));
            reqs.push(TestRequest::delete().uri(&format!("/v2/dig/repo/manifests/{d}")));
            reqs.push(
                TestRequest::put()
                    .uri(&format!("/v2/dig/repo/manifests/{d}"))
                    .set_payload("{}"),
            );
        }
        for req in reqs {
            must_fail(api.send(req).await, 400, "DIGEST_INVALID").await;
        }
    }
}

/// Requests with a method their endpoint does not have, with the methods it has.
fn wrong_methods() -> Vec<(TestRequest, &'static [&'static str])> {
    let m = |method: Method, uri: String| TestRequest::default().method(method).uri(&uri);
    vec![
        (m(Method::POST, "/v2/".into()), &["GET"]),
        (
            m(Method::POST, "/v2/r/manifests/v1".into()),
            &["GET", "PUT", "DELETE"],
        ),
        (
            m(Method::PATCH, "/v2/r/manifests/v1".into()),
            &["GET", "PUT", "DELETE"],
        ),
        (m(Method::PUT, format!("/v2/r/blobs/{D}")), &["GET", "DELETE"]),
        (m(Method::POST, format!("/v2/r/blobs/{D}")), &["GET", "DELETE"]),
        (m(Method::PATCH, format!("/v2/r/blobs/{D}")), &["GET", "DELETE"]),
        (m(Method::GET, "/v2/r/blobs/uploads/".into()), &["POST"]),
        (m(Method::PUT, "/v2/r/blobs/uploads/".into()), &["POST"]),
        (m(Method::DELETE, "/v2/r/blobs/uploads/".into()), &["POST"]),
        (
            m(Method::POST, format!("/v2/r/blobs/uploads/{UUID}")),
            &["GET", "PATCH", "PUT", "DELETE"],
        ),
        (m(Method::PUT, "/v2/r/tags/list".into()), &["GET"]),
        (m(Method::POST, "/v2/_catalog".into()), &["GET"]),
        (m(Method::PUT, format!("/v2/r/referrers/{D}")), &["GET"]),
    ]
}

#[actix_web::test]
async fn wrong_methods_are_405() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_push_image(&api, "r", "v1", "methods").await;
    for (req, _) in wrong_methods() {
        // The spec names no code for a wrong method; UNSUPPORTED is the node's choice.
        must_fail(api.send(req).await, 405, "UNSUPPORTED").await;
    }
}

#[actix_web::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    // The spec defers to RFC 9110 where it is silent, and RFC 9110 15.5.6: "The origin server
    // MUST generate an Allow header field in a 405 response containing a list of the target
    // resource's currently supported methods."
    for (req, allowed) in wrong_methods() {
        let resp = api.send(req).await;
        let what = format!("{} {}", resp.request().method(), resp.request().uri());
        must_status(&resp, 405);
        let allow: Vec<String> = headers(&resp, "Allow")
            .iter()
            .flat_map(|v| v.split(',').map(|m| m.trim().to_string()))
            .collect();
        for m in allowed {
            assert!(allow.iter().any(|a| a == m), "{what}: Allow {allow:?} lacks {m}");
        }
        let refused = resp.request().method().to_string();
        assert!(!allow.contains(&refused), "{what}: Allow {allow:?}");
    }
}

#[actix_web::test]
async fn adversarial_requests_never_get_a_server_error() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, "adv/repo", "v1", "adversarial").await;
    let location = must_start_upload(&api, "adv/repo").await;
    let blob = format!("/v2/adv/repo/blobs/{}", image.layer);
    let hex64 = &D[7..];
    let mut reqs: Vec<TestRequest> = [
        format!("/v2/../../etc/passwd/blobs/{D}"),
        "/v2/adv/repo/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd".into(),
        format!("/v2/adv/repo/blobs/sha256%3A{hex64}"),
        format!("/v2/adv/repo/blobs/..%2F..%2Fsha256:{hex64}"),
        "/v2/adv/repo/manifests/..%2F..%2Fetc%2Fpasswd".into(),
        "/v2/adv/repo/blobs/uploads/..%2F..%2F..%2Ftmp%2Fx".into(),
        "/v2/adv/repo/blobs/uploads/../../../tmp/x".into(),
        "/v2/%00/tags/list".into(),
        "/v2/a%00b/tags/list".into(),
        "/v2/adv/repo/tags/list?n=18446744073709551616".into(),
        "/v2/adv/repo/tags/list?last=%FF%FE%00".into(),
        "/v2/_catalog?last=%00%FF&n=1".into(),
        format!("/v2/adv/repo/referrers/{}?artifactType=%00%FF", image.digest),
        format!("/v2/adv/repo/manifests/{}", "x".repeat(10_000)),
        format!("/v2/{}/tags/list", "a/".repeat(2000)),
        "/v2/adv/repo/blobs/uploads/%E2%80%AE".into(),
    ]
    .iter()
    .map(|uri| TestRequest::get().uri(uri))
    .collect();
    for range in [
        "bytes=18446744073709551615-18446744073709551615",
        "bytes=0-18446744073709551616",
        "bytes=-0",
        "bytes=--1",
        "bytes=-18446744073709551615",
        "bytes=5-4",
        "bytes=",
        "bytes=-",
    ] {
        reqs.push(TestRequest::get().uri(&blob).insert_header(("Range", range)));
    }
    for (name, value) in [
        ("Content-Range", "18446744073709551615-18446744073709551615"),
        ("Content-Range", "5-0"),
        ("Content-Length", "-1"),
        ("Content-Length", "abc"),
        ("Content-Length", "18446744073709551616"),
    ] {
        reqs.push(
            TestRequest::patch()
                .uri(&location)
                .set_payload("abc")
                .insert_header((name, value)),
        );
        reqs.push(
            TestRequest::put()
                .uri(&with_digest(&location, D))
                .set_payload("abc")
                .insert_header((name, value)),
        );
    }
    for value in ["-1", "abc", "18446744073709551616"] {
        reqs.push(
            TestRequest::post()
                .uri(&format!("/v2/adv/repo/blobs/uploads/?digest={D}"))
                .set_payload("")
                .insert_header(("Content-Length", value)),
        );
        reqs.push(
            TestRequest::put()
                .uri("/v2/adv/repo/manifests/x")
                .insert_header(("Content-Type", OCI_MANIFEST))
                .set_payload(image.bytes.clone())
                .insert_header(("Content-Length", value)),
        );
    }
    reqs.push(
        TestRequest::put()
            .uri("/v2/adv/repo/manifests/..%2F..%2Fx")
            .insert_header(("Content-Type", OCI_MANIFEST))
            .set_payload(image.bytes.clone()),
    );
    reqs.push(
        TestRequest::post()
            .uri("/v2/adv/repo/blobs/uploads/?mount=sha256:..%2F..&from=..%2F..")
            .set_payload(""),
    );
    reqs.push(
        TestRequest::put()
            .uri(&format!(
                "/v2/adv/repo/manifests/{}?tag=..%2F..%2Fx",
                image.digest
            ))
            .insert_header(("Content-Type", OCI_MANIFEST))
            .set_payload(image.bytes.clone()),
    );
    for req in reqs {
        let resp = api.send(req).await;
        let what = format!("{} {}", resp.request().method(), resp.request().uri());
        let status = must_not_be_5xx(&resp);
        if status >= 400 {
            // Every refusal is still the spec's envelope.
            let v = json(resp).await;
            assert!(v["errors"][0]["code"].is_string(), "{what}: {v}");
        }
    }

    // The node is unharmed: the session and the content are as they were.
    let resp = api.get(&location).await;
    must_status(&resp, 204);
    assert_eq!(header(&resp, "Range").as_deref(), Some("0-0"));
    let resp = api.get("/v2/adv/repo/manifests/v1").await;
    must_status(&resp, 200);
    assert_eq!(&body(resp).await[..], &image.bytes[..]);
    let resp = api.get("/v2/adv/repo/tags/list").await;
    assert_eq!(json(resp).await["tags"], serde_json::json!(["v1"]));
}
