//! API tests of the ways a manifest push or pull fails, written from the OCI distribution-spec
//! ("Pushing Manifests", "Pulling manifests", the error codes table).

mod common;

use actix_web::test::TestRequest;
use common::*;

const REPO: &str = "merr/repo";

/// An OCI image manifest referencing config `c` and layers `ls` (digest, size).
fn oci(c: (&str, usize), ls: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<String> = ls.iter().map(|(d, s)| descriptor(OCI_LAYER, d, *s)).collect();
    image_manifest(OCI_MANIFEST, &descriptor(OCI_CONFIG, c.0, c.1), &layers, "").into_bytes()
}

#[actix_web::test]
async fn schema1_is_refused() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let schema1 = br#"{"schemaVersion":1,"name":"merr/repo","tag":"v1","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#;
    for content_type in [
        Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
        Some("application/vnd.docker.distribution.manifest.v1+json"),
        None,
    ] {
        let resp = put_manifest(&api, REPO, "v1", content_type, schema1).await;
        must_fail(resp, 400, "MANIFEST_INVALID").await;
    }
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/v1")).await,
        404,
        "NAME_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn malformed_manifests_are_manifest_invalid() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "ok", "malformed").await;
    let config = descriptor(OCI_CONFIG, &image.config, image.config_size);
    let layer = descriptor(OCI_LAYER, &image.layer, image.layer_size);
    let bodies: Vec<(String, Vec<u8>)> = vec![
        ("not JSON".into(), b"this is not json".to_vec()),
        ("empty body".into(), Vec::new()),
        ("truncated".into(), image.bytes[..image.bytes.len() / 2].to_vec()),
        ("a JSON array".into(), b"[1,2,3]".to_vec()),
        ("an empty object".into(), b"{}".to_vec()),
        (
            "no schemaVersion".into(),
            format!(r#"{{"mediaType":"{OCI_MANIFEST}","config":{config},"layers":[]}}"#).into_bytes(),
        ),
        (
            "schemaVersion 3".into(),
            format!(r#"{{"schemaVersion":3,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":[]}}"#)
                .into_bytes(),
        ),
        (
            "no config".into(),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[{layer}]}}"#).into_bytes(),
        ),
        (
            "no layers".into(),
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config}}}"#).into_bytes(),
        ),
        (
            "invalid layer digest".into(),
            oci((&image.config, 2), &[("sha256:1234", 3)]),
        ),
        (
            "negative size".into(),
            image_manifest(
                OCI_MANIFEST,
                &config,
                &[layer.replace(&format!("\"size\":{}", image.layer_size), "\"size\":-1")],
                "",
            )
            .into_bytes(),
        ),
        (
            "deeply nested".into(),
            format!(
                r#"{{"schemaVersion":2,"x":{}1{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
        ),
    ];
    for (case, bytes) in bodies {
        let resp = put_manifest(&api, REPO, "bad", Some(OCI_MANIFEST), &bytes).await;
        eprintln!("case: {case}");
        must_fail(resp, 400, "MANIFEST_INVALID").await;
    }
    // An index's media type with an image manifest's body, and the reverse.
    let resp = put_manifest(&api, REPO, "bad", Some(OCI_INDEX), &image.bytes).await;
    must_fail(resp, 400, "MANIFEST_INVALID").await;
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/bad")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn media_type_disagreeing_with_content_type_is_manifest_invalid() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "ok", "mismatch").await;
    // The body says OCI image manifest; "If a manifest includes a mediaType field, clients MUST
    // set the Content-Type header to the value specified by the mediaType field."
    for content_type in [DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST] {
        let resp = put_manifest(&api, REPO, "mismatch", Some(content_type), &image.bytes).await;
        must_fail(resp, 400, "MANIFEST_INVALID").await;
    }
}

#[actix_web::test]
async fn referenced_blobs_must_be_in_the_repository() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let config = must_push_blob(&api, REPO, b"config").await;
    let layer = must_push_blob(&api, REPO, b"layer").await;
    let missing = sha256(b"never pushed");
    let elsewhere = must_push_blob(&api, "merr/elsewhere", b"only elsewhere").await;
    let deleted = must_push_blob(&api, REPO, b"deleted").await;
    must_status(&api.delete(&format!("/v2/{REPO}/blobs/{deleted}")).await, 202);

    let cases = [
        ("missing config", oci((&missing, 1), &[(&layer, 5)]), &missing),
        (
            "missing layer",
            oci((&config, 6), &[(&layer, 5), (&missing, 1)]),
            &missing,
        ),
        (
            "blob only in another repository",
            oci((&config, 6), &[(&elsewhere, 14)]),
            &elsewhere,
        ),
        (
            "config only in another repository",
            oci((&elsewhere, 14), &[]),
            &elsewhere,
        ),
        ("deleted blob", oci((&config, 6), &[(&deleted, 7)]), &deleted),
    ];
    for (what, bytes, digest) in cases {
        let resp = put_manifest(&api, REPO, "t", Some(OCI_MANIFEST), &bytes).await;
        let envelope = must_fail(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
        // The detail names the missing digest (the node's choice of detail).
        assert_eq!(envelope["errors"][0]["detail"]["digest"], **digest, "{what}");
    }
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/t")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn index_children_must_be_in_the_repository() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let here = must_push_image(&api, REPO, "here", "child").await;
    let there = must_push_image(&api, "merr/elsewhere", "there", "other child").await;
    let missing = sha256(b"no such manifest");
    for (media_type, child_type) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)] {
        for (child, size) in [(&missing, 100), (&there.digest, there.bytes.len())] {
            let bytes = index_manifest(
                media_type,
                &[
                    descriptor(child_type, &here.digest, here.bytes.len()),
                    descriptor(child_type, child, size),
                ],
                "",
            )
            .into_bytes();
            let resp = put_manifest(&api, REPO, "idx", Some(media_type), &bytes).await;
            let envelope = must_fail(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
            assert_eq!(envelope["errors"][0]["detail"]["digest"], **child);
        }
    }
}

#[actix_web::test]
async fn manifests_over_4_mib_are_413() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "small", "large").await;
    let config = descriptor(OCI_CONFIG, &image.config, image.config_size);
    let base = image_manifest(OCI_MANIFEST, &config, &[], r#","annotations":{"pad":""}"#);
    let pad = "x".repeat(4 * 1024 * 1024 + 1 - base.len());
    let bytes = base
        .replace(r#""pad":"""#, &format!(r#""pad":"{pad}""#))
        .into_bytes();
    assert_eq!(bytes.len(), 4 * 1024 * 1024 + 1);
    // "SHOULD respond ... with a response code 413 Payload Too Large"; SIZE_INVALID is the
    // node's code.
    let resp = put_manifest(&api, REPO, "large", Some(OCI_MANIFEST), &bytes).await;
    must_fail(resp, 413, "SIZE_INVALID").await;
    // Without a Content-Length, the body is cut off at the limit.
    let resp = api
        .send_streamed(
            TestRequest::put()
                .uri(&format!("/v2/{REPO}/manifests/large"))
                .insert_header(("Content-Type", OCI_MANIFEST))
                .set_payload(bytes.clone()),
        )
        .await;
    must_fail(resp, 413, "SIZE_INVALID").await;
    // A huge declared length is refused before reading.
    let resp = api
        .send(
            TestRequest::put()
                .uri(&format!("/v2/{REPO}/manifests/large"))
                .insert_header(("Content-Type", OCI_MANIFEST))
                .set_payload(image.bytes.clone())
                .insert_header(("Content-Length", "1099511627776")),
        )
        .await;
    must_fail(resp, 413, "SIZE_INVALID").await;
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/large")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn digest_in_url_must_match_the_body() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "url digest").await;
    let mut other = image.bytes.clone();
    other.push(b'\n');
    for wrong in [sha256(&other), sha512(&other), sha256(b"")] {
        let resp = put_manifest(&api, REPO, &wrong, Some(OCI_MANIFEST), &image.bytes).await;
        must_fail(resp, 400, "DIGEST_INVALID").await;
        must_fail(
            api.get(&format!("/v2/{REPO}/manifests/{wrong}")).await,
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }
}

#[actix_web::test]
async fn invalid_tags_in_a_push() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "bad tags").await;
    // Tags must match `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`; the node answers MANIFEST_INVALID
    // (the spec has no TAG_INVALID code any more).
    let long = "a".repeat(129);
    for tag in [".hidden", "-dash", "with%20space", "a%2Fb", long.as_str()] {
        let resp = put_manifest(&api, REPO, tag, Some(OCI_MANIFEST), &image.bytes).await;
        must_fail(resp, 400, "MANIFEST_INVALID").await;
    }
    let resp = api
        .send(
            TestRequest::put()
                .uri(&format!("/v2/{REPO}/manifests/{}?tag=ok&tag=.bad", image.digest))
                .insert_header(("Content-Type", OCI_MANIFEST))
                .set_payload(image.bytes.clone()),
        )
        .await;
    must_fail(resp, 400, "MANIFEST_INVALID").await;
    // Nothing was tagged by the refused request.
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/ok")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // The longest valid tag works.
    let max = "b".repeat(128);
    must_put_manifest(&api, REPO, &max, OCI_MANIFEST, &image.bytes).await;
}

#[actix_web::test]
async fn unknown_manifests_and_repositories_are_404() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "unknown").await;
    let unknown = sha256(b"unknown manifest");

    for reference in ["nope", unknown.as_str()] {
        let path = format!("/v2/{REPO}/manifests/{reference}");
        must_fail(api.get(&path).await, 404, "MANIFEST_UNKNOWN").await;
        must_status(&api.head(&path).await, 404);
        must_fail(api.delete(&path).await, 404, "MANIFEST_UNKNOWN").await;
    }
    // A manifest of another repository is not served here.
    must_push_blob(&api, "merr/other", b"exists").await;
    let path = format!("/v2/merr/other/manifests/{}", image.digest);
    must_fail(api.get(&path).await, 404, "MANIFEST_UNKNOWN").await;
    // "An attempt to pull a nonexistent repository MUST return response code 404 Not Found."
    for reference in ["v1", image.digest.as_str()] {
        let path = format!("/v2/merr/never/manifests/{reference}");
        must_fail(api.get(&path).await, 404, "NAME_UNKNOWN").await;
        must_status(&api.head(&path).await, 404);
        must_fail(api.delete(&path).await, 404, "NAME_UNKNOWN").await;
    }
    // A tag that breaks the grammar cannot exist: the node answers MANIFEST_UNKNOWN to reads.
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/-bad")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn index_children_must_be_manifests() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "kinds").await;

    // A child of an index is pulled with `GET /v2/<name>/manifests/<digest>`: bytes present
    // only as a blob do not make it a manifest of the repository.
    let as_blob = image_manifest(
        OCI_MANIFEST,
        &descriptor(OCI_CONFIG, &image.config, image.config_size),
        &[],
        r#","annotations":{"only":"a blob"}"#,
    )
    .into_bytes();
    let blob_digest = must_push_blob(&api, REPO, &as_blob).await;
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/{blob_digest}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let index = index_manifest(
        OCI_INDEX,
        &[descriptor(OCI_MANIFEST, &blob_digest, as_blob.len())],
        "",
    )
    .into_bytes();
    let resp = put_manifest(&api, REPO, "idx", Some(OCI_INDEX), &index).await;
    must_fail(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[actix_web::test]
async fn config_and_layers_must_be_blobs() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "kinds").await;

    // A config or layer is pulled with `GET /v2/<name>/blobs/<digest>`: a manifest of the
    // repository is not such a blob.
    must_fail(
        api.get(&format!("/v2/{REPO}/blobs/{}", image.digest)).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    for bytes in [
        oci((&image.digest, image.bytes.len()), &[]),
        oci(
            (&image.config, image.config_size),
            &[(&image.digest, image.bytes.len())],
        ),
    ] {
        let resp = put_manifest(&api, REPO, "img", Some(OCI_MANIFEST), &bytes).await;
        must_fail(resp, 400, "MANIFEST_BLOB_UNKNOWN").await;
    }
}

#[actix_web::test]
async fn too_many_tags_in_one_push_are_refused_before_the_body() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "many tags").await;
    let tags = |n: usize| (0..n).map(|i| format!("tag={i}")).collect::<Vec<_>>().join("&");
    let push = |query: String, body: Vec<u8>| {
        TestRequest::put()
            .uri(&format!("/v2/{REPO}/manifests/{}?{query}", image.digest))
            .insert_header(("Content-Type", OCI_MANIFEST))
            .set_payload(body)
    };

    // The probe's push: refused whatever the body (here none worth reading), no tag created.
    let resp = api.send(push(tags(6_000), b"not even json".to_vec())).await;
    let envelope = must_fail(resp, 400, "MANIFEST_INVALID").await;
    let limit = ipcr_node::api::router::MAX_PUSH_TAGS;
    assert_eq!(envelope["errors"][0]["detail"]["limit"], limit);
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/0")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // At the cap: every tag is created and answered.
    let resp = api.send(push(tags(limit), image.bytes.clone())).await;
    must_status(&resp, 201);
    assert_eq!(headers(&resp, "OCI-Tag").len(), limit);
    must_status(
        &api.head(&format!("/v2/{REPO}/manifests/{}", limit - 1)).await,
        200,
    );
}

#[actix_web::test]
async fn descriptor_sizes_must_match_the_content() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let config = must_push_blob(&api, REPO, b"config").await;
    let layer = must_push_blob(&api, REPO, b"eleven byte").await;

    let cases = [
        (
            "layer",
            oci((&config, 6), &[(&layer, 999_999)]),
            &layer,
            999_999,
            11,
        ),
        ("short layer", oci((&config, 6), &[(&layer, 10)]), &layer, 10, 11),
        ("config", oci((&config, 0), &[(&layer, 11)]), &config, 0, 6),
    ];
    for (what, bytes, digest, declared, expected) in cases {
        let resp = put_manifest(&api, REPO, "sized", Some(OCI_MANIFEST), &bytes).await;
        let envelope = must_fail(resp, 400, "MANIFEST_INVALID").await;
        let error = &envelope["errors"][0];
        assert!(
            error["message"].as_str().unwrap().contains(digest.as_str()),
            "{what}: {error}"
        );
        assert_eq!(error["detail"]["digest"], **digest, "{what}");
        assert_eq!(error["detail"]["declared"], declared, "{what}");
        assert_eq!(error["detail"]["expected"], expected, "{what}");
    }
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/sized")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;

    // The true sizes are accepted; an index must give its children's lengths too.
    let image = oci((&config, 6), &[(&layer, 11)]);
    let child = must_put_manifest(&api, REPO, "sized", OCI_MANIFEST, &image).await;
    let d: ipcr_proto::Digest = child.parse().unwrap();
    let repo: ipcr_proto::RepoName = REPO.parse().unwrap();
    assert_eq!(
        node.parts.raft.reader().manifest_len(&repo, &d).unwrap(),
        Some(image.len() as u64)
    );
    for (media_type, child_type) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)] {
        let index = |size: usize| {
            index_manifest(media_type, &[descriptor(child_type, &child, size)], "").into_bytes()
        };
        let resp = put_manifest(&api, REPO, "idx", Some(media_type), &index(image.len() + 1)).await;
        let envelope = must_fail(resp, 400, "MANIFEST_INVALID").await;
        assert_eq!(envelope["errors"][0]["detail"]["digest"], child);
        assert_eq!(envelope["errors"][0]["detail"]["expected"], image.len());
        must_put_manifest(&api, REPO, "idx", media_type, &index(image.len())).await;
    }
}
