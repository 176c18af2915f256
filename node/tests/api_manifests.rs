//! API tests of pushing, pulling and deleting manifests (end-3, end-7a/7b, end-9), written from
//! the OCI distribution-spec ("Pulling manifests", "Pushing Manifests", "Deleting tags",
//! "Deleting Manifests") and content-negotiation.md.

mod common;

use actix_web::test::TestRequest;
use common::*;

const REPO: &str = "man/repo";

/// Assert a manifest answer (`GET` when `get`, else `HEAD`): 200, its media type, digest and
/// length, and for a `GET` exactly the pushed bytes.
async fn must_serve(api: &Api, path: &str, get: bool, media_type: &str, bytes: &[u8]) {
    let resp = if get {
        api.get(path).await
    } else {
        api.head(path).await
    };
    must_status(&resp, 200);
    assert_eq!(
        header(&resp, "Content-Type").as_deref(),
        Some(media_type),
        "{path}"
    );
    assert_eq!(
        header(&resp, "Docker-Content-Digest"),
        Some(sha256(bytes)),
        "{path}"
    );
    assert_eq!(content_length(&resp), Some(bytes.len() as u64), "{path}");
    let b = body(resp).await;
    if get {
        assert_eq!(&b[..], bytes, "{path}: bytes differ from what was pushed");
    } else {
        assert!(b.is_empty(), "{path}: HEAD with a body");
    }
}

/// A Docker schema 2 image with its blobs pushed; answers the manifest bytes.
async fn docker_image(api: &Api, repo: &str, seed: &str) -> Vec<u8> {
    let config = format!(r#"{{"os":"linux","seed":"{seed}"}}"#);
    let layer = format!("docker layer {seed}");
    let c = must_push_blob(api, repo, config.as_bytes()).await;
    let l = must_push_blob(api, repo, layer.as_bytes()).await;
    image_manifest(
        DOCKER_MANIFEST,
        &descriptor(DOCKER_CONFIG, &c, config.len()),
        &[descriptor(DOCKER_LAYER, &l, layer.len())],
        "",
    )
    .into_bytes()
}

#[actix_web::test]
async fn oci_manifest_is_stored_and_served_byte_for_byte() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let config = br#"{"os":"linux"}"#;
    let layer = b"a layer";
    let c = must_push_blob(&api, REPO, config).await;
    let l = must_push_blob(&api, REPO, layer).await;
    // Odd whitespace, unusual key order and a trailing newline: "The registry MUST store the
    // manifest in the exact byte representation provided by the client."
    let bytes = format!(
        "{{\n   \"layers\" : [ {{ \"size\": {}, \"digest\":\"{l}\",\n \"mediaType\": \"{OCI_LAYER}\" }} ],\n\t\"config\": {{\"size\":{},\"mediaType\":\"{OCI_CONFIG}\",\"digest\":\"{c}\"}},\n  \"mediaType\":\"{OCI_MANIFEST}\",   \"schemaVersion\" : 2\n}}\n",
        layer.len(),
        config.len()
    )
    .into_bytes();
    let digest = sha256(&bytes);

    let resp = put_manifest(&api, REPO, "v1", Some(OCI_MANIFEST), &bytes).await;
    must_status(&resp, 201);
    assert_eq!(header(&resp, "Docker-Content-Digest"), Some(digest.clone()));
    let location = header(&resp, "Location").expect("Location");
    assert_eq!(location, format!("/v2/{REPO}/manifests/{digest}"));
    // No subject, no OCI-Subject.
    assert_eq!(header(&resp, "OCI-Subject"), None);

    for path in [
        format!("/v2/{REPO}/manifests/v1"),
        format!("/v2/{REPO}/manifests/{digest}"),
        location,
    ] {
        must_serve(&api, &path, true, OCI_MANIFEST, &bytes).await;
        must_serve(&api, &path, false, OCI_MANIFEST, &bytes).await;
    }
}

#[actix_web::test]
async fn put_by_digest() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "by-digest").await;
    // The same bytes pushed by digest into another repository with its blobs.
    let other = "man/other";
    for blob in [&image.config, &image.layer] {
        let resp = api
            .send(TestRequest::post().uri(&format!("/v2/{other}/blobs/uploads/?mount={blob}&from={REPO}")))
            .await;
        must_status(&resp, 201);
    }
    let resp = put_manifest(&api, other, &image.digest, Some(OCI_MANIFEST), &image.bytes).await;
    must_status(&resp, 201);
    assert_eq!(header(&resp, "Docker-Content-Digest"), Some(image.digest.clone()));
    assert_eq!(
        header(&resp, "Location"),
        Some(format!("/v2/{other}/manifests/{}", image.digest))
    );
    must_serve(
        &api,
        &format!("/v2/{other}/manifests/{}", image.digest),
        true,
        OCI_MANIFEST,
        &image.bytes,
    )
    .await;
    // Pushed by digest, it has no tag.
    let resp = api.get(&format!("/v2/{other}/tags/list")).await;
    assert_eq!(json(resp).await["tags"], serde_json::json!([]));
    // Pushing it again is harmless.
    must_put_manifest(&api, other, &image.digest, OCI_MANIFEST, &image.bytes).await;
}

#[actix_web::test]
async fn put_by_sha512_digest() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "sha512").await;
    let digest = sha512(&image.bytes);
    let resp = put_manifest(&api, REPO, &digest, Some(OCI_MANIFEST), &image.bytes).await;
    must_status(&resp, 201);
    // "The Docker-Content-Digest header ... MUST be equal to the client provided digest."
    assert_eq!(header(&resp, "Docker-Content-Digest"), Some(digest.clone()));
    let resp = api.get(&format!("/v2/{REPO}/manifests/{digest}")).await;
    must_status(&resp, 200);
    assert_eq!(header(&resp, "Docker-Content-Digest"), Some(digest));
    assert_eq!(&body(resp).await[..], &image.bytes[..]);
}

#[actix_web::test]
async fn every_stored_kind_round_trips_with_its_media_type() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "img", "kinds").await;
    let docker = docker_image(&api, REPO, "kinds").await;
    must_put_manifest(&api, REPO, "docker", DOCKER_MANIFEST, &docker).await;

    let index = index_manifest(
        OCI_INDEX,
        &[descriptor(OCI_MANIFEST, &image.digest, image.bytes.len())],
        r#","annotations":{"kind":"index"}"#,
    )
    .into_bytes();
    must_put_manifest(&api, REPO, "index", OCI_INDEX, &index).await;
    let list = index_manifest(
        DOCKER_LIST,
        &[format!(
            r#"{{"mediaType":"{DOCKER_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}"#,
            sha256(&docker),
            docker.len()
        )],
        "",
    )
    .into_bytes();
    must_put_manifest(&api, REPO, "list", DOCKER_LIST, &list).await;

    for (tag, media_type, bytes) in [
        ("img", OCI_MANIFEST, &image.bytes),
        ("docker", DOCKER_MANIFEST, &docker),
        ("index", OCI_INDEX, &index),
        ("list", DOCKER_LIST, &list),
    ] {
        for reference in [tag.to_string(), sha256(bytes)] {
            let path = format!("/v2/{REPO}/manifests/{reference}");
            must_serve(&api, &path, true, media_type, bytes).await;
            must_serve(&api, &path, false, media_type, bytes).await;
        }
    }
}

#[actix_web::test]
async fn content_type_parameters_are_ignored_and_media_type_can_come_from_the_body() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "params").await;
    // "The registry SHOULD ignore parameters on the Content-Type header", and "SHOULD NOT
    // include parameters" when serving.
    let resp = put_manifest(
        &api,
        REPO,
        "with-params",
        Some(&format!("{OCI_MANIFEST}; charset=utf-8")),
        &image.bytes,
    )
    .await;
    must_status(&resp, 201);
    must_serve(
        &api,
        &format!("/v2/{REPO}/manifests/with-params"),
        true,
        OCI_MANIFEST,
        &image.bytes,
    )
    .await;
    // Without a Content-Type the body's mediaType decides (the node's documented choice).
    let docker = docker_image(&api, REPO, "params").await;
    let resp = put_manifest(&api, REPO, "no-type", None, &docker).await;
    must_status(&resp, 201);
    must_serve(
        &api,
        &format!("/v2/{REPO}/manifests/no-type"),
        true,
        DOCKER_MANIFEST,
        &docker,
    )
    .await;
}

#[actix_web::test]
async fn accept_negotiation() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "img", "accept").await;
    let index = index_manifest(
        OCI_INDEX,
        &[descriptor(OCI_MANIFEST, &image.digest, image.bytes.len())],
        "",
    )
    .into_bytes();
    must_put_manifest(&api, REPO, "idx", OCI_INDEX, &index).await;
    let docker = docker_image(&api, REPO, "accept").await;
    must_put_manifest(&api, REPO, "dkr", DOCKER_MANIFEST, &docker).await;

    let get = |tag: &str, accept: &[&str]| {
        let mut req = TestRequest::get().uri(&format!("/v2/{REPO}/manifests/{tag}"));
        for a in accept {
            req = req.append_header(("Accept", a.to_string()));
        }
        req
    };
    let both = format!("{OCI_INDEX}, {OCI_MANIFEST};q=0.9");
    // (tag, Accept headers, served?)
    let cases: Vec<(&str, Vec<&str>, bool)> = vec![
        ("img", vec![], true),
        ("idx", vec!["*/*"], true),
        ("img", vec![OCI_MANIFEST], true),
        ("idx", vec![OCI_MANIFEST], false),
        ("img", vec![OCI_INDEX], false),
        ("idx", vec![&both], true),
        ("img", vec![&both], true),
        ("idx", vec![OCI_MANIFEST, OCI_INDEX], true),
        ("img", vec![DOCKER_MANIFEST, DOCKER_LIST], false),
        // Docker schema 2 manifests are served whatever the client accepts, as distribution
        // does (the node's documented choice).
        ("dkr", vec![OCI_INDEX], true),
        ("dkr", vec![DOCKER_MANIFEST], true),
    ];
    for (tag, accept, served) in cases {
        let resp = api.send(get(tag, &accept)).await;
        if served {
            must_status(&resp, 200);
        } else {
            must_fail(resp, 404, "MANIFEST_UNKNOWN").await;
        }
        let head = get(tag, &accept).method(actix_web::http::Method::HEAD);
        let resp = api.send(head).await;
        assert_eq!(resp.status() == 200, served, "HEAD {tag} {accept:?}");
    }
}

#[actix_web::test]
async fn tag_query_parameters_create_tags() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "first", "tags").await;
    let resp = api
        .send(
            TestRequest::put()
                .uri(&format!(
                    "/v2/{REPO}/manifests/{}?tag=a&tag=b&tag=1.2.3",
                    image.digest
                ))
                .insert_header(("Content-Type", OCI_MANIFEST))
                .set_payload(image.bytes.clone()),
        )
        .await;
    must_status(&resp, 201);
    // "MUST include an OCI-Tag response header ... for each accepted tag" (values may be
    // comma-separated, RFC 9110 section 5).
    let mut tags: Vec<String> = headers(&resp, "OCI-Tag")
        .iter()
        .flat_map(|v| v.split(',').map(|t| t.trim().to_string()))
        .collect();
    tags.sort();
    assert_eq!(tags, ["1.2.3", "a", "b"]);
    for tag in ["a", "b", "1.2.3", "first"] {
        let resp = api.get(&format!("/v2/{REPO}/manifests/{tag}")).await;
        must_status(&resp, 200);
        assert_eq!(header(&resp, "Docker-Content-Digest"), Some(image.digest.clone()));
    }
    let resp = api.get(&format!("/v2/{REPO}/tags/list")).await;
    assert_eq!(
        json(resp).await["tags"],
        serde_json::json!(["1.2.3", "a", "b", "first"])
    );
}

#[actix_web::test]
async fn subject_is_acknowledged_with_oci_subject() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    // "A registry MUST initially accept an otherwise valid manifest with a subject field that
    // references a manifest that does not exist."
    let absent = sha256(b"a manifest pushed later");
    let config = must_push_blob(&api, REPO, b"{}").await;
    let bytes = image_manifest(
        OCI_MANIFEST,
        &descriptor("application/vnd.oci.empty.v1+json", &config, 2),
        &[],
        &format!(
            r#","artifactType":"application/x-sig","subject":{}"#,
            descriptor(OCI_MANIFEST, &absent, 123)
        ),
    )
    .into_bytes();
    let resp = put_manifest(&api, REPO, &sha256(&bytes), Some(OCI_MANIFEST), &bytes).await;
    must_status(&resp, 201);
    assert_eq!(header(&resp, "OCI-Subject"), Some(absent));
}

#[actix_web::test]
async fn pushing_a_tag_again_moves_it() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let first = must_push_image(&api, REPO, "latest", "one").await;
    let second = must_push_image(&api, REPO, "latest", "two").await;
    let resp = api.get(&format!("/v2/{REPO}/manifests/latest")).await;
    assert_eq!(header(&resp, "Docker-Content-Digest"), Some(second.digest));
    assert_eq!(&body(resp).await[..], &second.bytes[..]);
    // The first manifest is still there by digest.
    must_serve(
        &api,
        &format!("/v2/{REPO}/manifests/{}", first.digest),
        true,
        OCI_MANIFEST,
        &first.bytes,
    )
    .await;
}

#[actix_web::test]
async fn delete_by_tag_removes_only_the_tag() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "gone", "untag").await;
    must_put_manifest(&api, REPO, "kept", OCI_MANIFEST, &image.bytes).await;

    must_status(&api.delete(&format!("/v2/{REPO}/manifests/gone")).await, 202);
    // "Once deleted, a GET to /v2/<name>/manifests/<tag> will return a 404."
    must_fail(
        api.get(&format!("/v2/{REPO}/manifests/gone")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    must_serve(
        &api,
        &format!("/v2/{REPO}/manifests/kept"),
        true,
        OCI_MANIFEST,
        &image.bytes,
    )
    .await;
    let path = format!("/v2/{REPO}/manifests/{}", image.digest);
    must_serve(&api, &path, true, OCI_MANIFEST, &image.bytes).await;
    let resp = api.get(&format!("/v2/{REPO}/tags/list")).await;
    assert_eq!(json(resp).await["tags"], serde_json::json!(["kept"]));
    must_fail(
        api.delete(&format!("/v2/{REPO}/manifests/gone")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[actix_web::test]
async fn delete_by_digest_removes_the_manifest_and_its_tags() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "t1", "delete").await;
    must_put_manifest(&api, REPO, "t2", OCI_MANIFEST, &image.bytes).await;
    let other = must_push_image(&api, REPO, "other", "survivor").await;

    let path = format!("/v2/{REPO}/manifests/{}", image.digest);
    must_status(&api.delete(&path).await, 202);
    // "Once deleted, a GET to /v2/<name>/manifests/<digest> and any tag pointing to that digest
    // will return a 404."
    for reference in ["t1", "t2", image.digest.as_str()] {
        let p = format!("/v2/{REPO}/manifests/{reference}");
        must_fail(api.get(&p).await, 404, "MANIFEST_UNKNOWN").await;
        must_status(&api.head(&p).await, 404);
    }
    let resp = api.get(&format!("/v2/{REPO}/tags/list")).await;
    assert_eq!(json(resp).await["tags"], serde_json::json!(["other"]));
    must_serve(
        &api,
        &format!("/v2/{REPO}/manifests/other"),
        true,
        OCI_MANIFEST,
        &other.bytes,
    )
    .await;
    must_fail(api.delete(&path).await, 404, "MANIFEST_UNKNOWN").await;
}

#[actix_web::test]
async fn delete_in_one_repository_leaves_the_others() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let a = must_push_image(&api, "man/a", "v1", "same").await;
    let b = must_push_image(&api, "man/b", "v1", "same").await;
    assert_eq!(a.digest, b.digest);
    must_status(
        &api.delete(&format!("/v2/man/a/manifests/{}", a.digest)).await,
        202,
    );
    must_serve(&api, "/v2/man/b/manifests/v1", true, OCI_MANIFEST, &b.bytes).await;
    must_serve(
        &api,
        &format!("/v2/man/b/manifests/{}", b.digest),
        true,
        OCI_MANIFEST,
        &b.bytes,
    )
    .await;
}

#[actix_web::test]
async fn delete_when_disabled_is_405() {
    let node = TestNode::start(delete_disabled_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "keep").await;
    // "If tag deletion is disabled, the registry MUST respond with either a 400 Bad Request or
    // a 405 Method Not Allowed" (and likewise for manifests).
    for reference in ["v1", image.digest.as_str()] {
        must_fail(
            api.delete(&format!("/v2/{REPO}/manifests/{reference}")).await,
            405,
            "UNSUPPORTED",
        )
        .await;
    }
    must_serve(
        &api,
        &format!("/v2/{REPO}/manifests/v1"),
        true,
        OCI_MANIFEST,
        &image.bytes,
    )
    .await;
}

#[actix_web::test]
async fn a_manifest_of_exactly_4_mib_is_accepted() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "small", "big").await;
    let config = descriptor(OCI_CONFIG, &image.config, image.config_size);
    let base = image_manifest(OCI_MANIFEST, &config, &[], r#","annotations":{"pad":""}"#);
    // "Client and registry implementations SHOULD expect to be able to support manifest pushes
    // of at least 4 megabytes."
    let pad = "x".repeat(4 * 1024 * 1024 - base.len());
    let bytes = base
        .replace(r#""pad":"""#, &format!(r#""pad":"{pad}""#))
        .into_bytes();
    assert_eq!(bytes.len(), 4 * 1024 * 1024);
    must_put_manifest(&api, REPO, "big", OCI_MANIFEST, &bytes).await;
    must_serve(
        &api,
        &format!("/v2/{REPO}/manifests/big"),
        true,
        OCI_MANIFEST,
        &bytes,
    )
    .await;
}
