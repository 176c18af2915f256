//! API tests of the referrers API (end-12a/12b), written from the OCI distribution-spec
//! ("Listing Referrers", "Pushing Manifests with Subject").

mod common;

use actix_web::test::TestRequest;
use common::*;
use serde_json::{Value, json};

const REPO: &str = "ref/repo";
const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG_CONFIG: &str = "application/vnd.example.signature.config.v1+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// GET the referrers of `subject` in `repo` (with `query`); assert the index shape and answer
/// its descriptors and the response's `OCI-Filters-Applied`.
async fn referrers(api: &Api, repo: &str, subject: &str, query: &str) -> (Vec<Value>, Option<String>) {
    let resp = api.get(&format!("/v2/{repo}/referrers/{subject}{query}")).await;
    // "the registry MUST NOT return a 404 Not Found to a referrers API request."
    must_status(&resp, 200);
    // "The Content-Type header MUST be set to application/vnd.oci.image.index.v1+json."
    assert_eq!(header(&resp, "Content-Type").as_deref(), Some(OCI_INDEX));
    let filters = header(&resp, "OCI-Filters-Applied");
    let index = json(resp).await;
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], OCI_INDEX);
    let manifests = index["manifests"].as_array().expect("manifests array").clone();
    (manifests, filters)
}

fn find<'a>(list: &'a [Value], digest: &str) -> &'a Value {
    list.iter()
        .find(|d| d["digest"] == digest)
        .unwrap_or_else(|| panic!("{digest} not among the referrers: {list:?}"))
}

/// An artifact: an image manifest with an empty config of `config_type`, `subject`, and
/// `extra` members; answers its bytes.
async fn artifact(api: &Api, repo: &str, config_type: &str, subject: &str, extra: &str) -> Vec<u8> {
    let empty = must_push_blob(api, repo, b"{}").await;
    image_manifest(
        OCI_MANIFEST,
        &descriptor(config_type, &empty, 2),
        &[],
        &format!(r#",{extra}"subject":{}"#, descriptor(OCI_MANIFEST, subject, 100)),
    )
    .into_bytes()
}

#[actix_web::test]
async fn without_referrers_the_answer_is_an_empty_index() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let image = must_push_image(&api, REPO, "v1", "subject").await;
    let unknown = sha256(b"unknown subject");
    // "If a query results in no matching referrers, an empty manifest list MUST be returned",
    // also for a subject or repository that does not exist.
    for (repo, subject) in [
        (REPO, image.digest.as_str()),
        (REPO, unknown.as_str()),
        ("ref/never", unknown.as_str()),
    ] {
        let (list, filters) = referrers(&api, repo, subject, "").await;
        assert!(list.is_empty(), "{repo} {subject}: {list:?}");
        assert_eq!(filters, None);
    }
}

#[actix_web::test]
async fn referrers_are_described_by_their_manifests() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let subject = must_push_image(&api, REPO, "v1", "subject").await;
    let s = subject.digest.as_str();

    let sbom = artifact(
        &api,
        REPO,
        EMPTY_TYPE,
        s,
        &format!(
            r#""artifactType":"{SBOM}","annotations":{{"org.example.sbom.format":"json","org.opencontainers.image.created":"2022-01-01T14:42:55Z"}},"#
        ),
    )
    .await;
    let sbom_digest = must_put_manifest(&api, REPO, &sha256(&sbom), OCI_MANIFEST, &sbom).await;
    // No artifactType: the config's media type stands in.
    let sig = artifact(&api, REPO, SIG_CONFIG, s, "").await;
    let sig_digest = must_put_manifest(&api, REPO, "sig", OCI_MANIFEST, &sig).await;
    // An index without artifactType: omitted. With one: given.
    let child = descriptor(OCI_MANIFEST, s, subject.bytes.len());
    let subject_desc = descriptor(OCI_MANIFEST, s, subject.bytes.len());
    let plain_index = index_manifest(
        OCI_INDEX,
        std::slice::from_ref(&child),
        &format!(r#","annotations":{{"org.opencontainers.image.created":"2023-01-01T07:21:33Z"}},"subject":{subject_desc}"#),
    )
    .into_bytes();
    let plain_digest = must_put_manifest(&api, REPO, &sha256(&plain_index), OCI_INDEX, &plain_index).await;
    let typed_index = index_manifest(
        OCI_INDEX,
        &[child],
        &format!(r#","artifactType":"application/vnd.example.bundle","subject":{subject_desc}"#),
    )
    .into_bytes();
    let typed_digest = must_put_manifest(&api, REPO, &sha256(&typed_index), OCI_INDEX, &typed_index).await;

    let (list, filters) = referrers(&api, REPO, s, "").await;
    assert_eq!(list.len(), 4, "{list:?}");
    assert_eq!(filters, None);

    let d = find(&list, &sbom_digest);
    assert_eq!(d["mediaType"], OCI_MANIFEST);
    assert_eq!(d["size"], sbom.len());
    assert_eq!(d["artifactType"], SBOM);
    assert_eq!(
        d["annotations"],
        json!({"org.example.sbom.format": "json", "org.opencontainers.image.created": "2022-01-01T14:42:55Z"})
    );

    let d = find(&list, &sig_digest);
    assert_eq!(d["mediaType"], OCI_MANIFEST);
    assert_eq!(d["size"], sig.len());
    assert_eq!(d["artifactType"], SIG_CONFIG);

    let d = find(&list, &plain_digest);
    assert_eq!(d["mediaType"], OCI_INDEX);
    assert_eq!(d["size"], plain_index.len());
    assert!(
        d.get("artifactType").is_none(),
        "an index without artifactType has none: {d}"
    );
    assert_eq!(
        d["annotations"],
        json!({"org.opencontainers.image.created": "2023-01-01T07:21:33Z"})
    );

    let d = find(&list, &typed_digest);
    assert_eq!(d["mediaType"], OCI_INDEX);
    assert_eq!(d["artifactType"], "application/vnd.example.bundle");

    // The subject itself has no subject, so it lists nothing, and referrers list their own
    // (none).
    let (list, _) = referrers(&api, REPO, &sbom_digest, "").await;
    assert!(list.is_empty());
}

#[actix_web::test]
async fn artifact_type_filter() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let subject = must_push_image(&api, REPO, "v1", "filter").await;
    let s = subject.digest.as_str();
    let sbom = artifact(&api, REPO, EMPTY_TYPE, s, &format!(r#""artifactType":"{SBOM}","#)).await;
    let sbom_digest = must_put_manifest(&api, REPO, "sbom", OCI_MANIFEST, &sbom).await;
    let sig = artifact(&api, REPO, SIG_CONFIG, s, "").await;
    let sig_digest = must_put_manifest(&api, REPO, "sig", OCI_MANIFEST, &sig).await;

    // "If filtering is requested and applied, the response MUST include a header
    // OCI-Filters-Applied: artifactType."
    for query in [
        format!("?artifactType={SBOM}"),
        "?artifactType=application%2Fvnd.example.sbom.v1".into(),
    ] {
        let (list, filters) = referrers(&api, REPO, s, &query).await;
        assert_eq!(filters.as_deref(), Some("artifactType"), "{query}");
        assert_eq!(list.len(), 1, "{query}: {list:?}");
        assert_eq!(list[0]["digest"], sbom_digest);
    }
    // A `+` in a query is a space (as Go's url.ParseQuery reads it), so clients encode it.
    let query = format!("?artifactType={}", SIG_CONFIG.replace('+', "%2B"));
    let (list, filters) = referrers(&api, REPO, s, &query).await;
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], sig_digest);
    let (list, filters) = referrers(&api, REPO, s, "?artifactType=application/none").await;
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert!(list.is_empty());
}

#[actix_web::test]
async fn deleting_a_referrer_removes_it_from_the_list() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let subject = must_push_image(&api, REPO, "v1", "delete").await;
    let s = subject.digest.as_str();
    let first = artifact(
        &api,
        REPO,
        EMPTY_TYPE,
        s,
        r#""artifactType":"application/x-one","#,
    )
    .await;
    let first_digest = must_put_manifest(&api, REPO, "one", OCI_MANIFEST, &first).await;
    let second = artifact(
        &api,
        REPO,
        EMPTY_TYPE,
        s,
        r#""artifactType":"application/x-two","#,
    )
    .await;
    let second_digest = must_put_manifest(&api, REPO, "two", OCI_MANIFEST, &second).await;
    assert_eq!(referrers(&api, REPO, s, "").await.0.len(), 2);
    // Pushing a referrer again (here under another tag) creates no duplicate entry.
    must_put_manifest(&api, REPO, "one-again", OCI_MANIFEST, &first).await;
    assert_eq!(referrers(&api, REPO, s, "").await.0.len(), 2);

    // Removing a tag leaves the manifest, and so the referrer.
    must_status(&api.delete(&format!("/v2/{REPO}/manifests/one")).await, 202);
    assert_eq!(referrers(&api, REPO, s, "").await.0.len(), 2);

    must_status(
        &api.delete(&format!("/v2/{REPO}/manifests/{first_digest}")).await,
        202,
    );
    let (list, _) = referrers(&api, REPO, s, "").await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], second_digest);
}

#[actix_web::test]
async fn referrers_are_scoped_to_the_repository_and_may_precede_the_subject() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    // The subject is never pushed: the referrer is still accepted and listed.
    let subject = sha256(b"a subject that is not there");
    let bytes = artifact(
        &api,
        REPO,
        EMPTY_TYPE,
        &subject,
        r#""artifactType":"application/x-early","#,
    )
    .await;
    let resp = put_manifest(&api, REPO, "early", Some(OCI_MANIFEST), &bytes).await;
    must_status(&resp, 201);
    assert_eq!(header(&resp, "OCI-Subject"), Some(subject.clone()));
    let (list, _) = referrers(&api, REPO, &subject, "").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], sha256(&bytes));

    // "Each descriptor is of an image manifest or index in the same <name> namespace."
    must_push_blob(&api, "ref/other", b"exists").await;
    let (list, _) = referrers(&api, "ref/other", &subject, "").await;
    assert!(list.is_empty(), "{list:?}");
}

#[actix_web::test]
async fn invalid_subject_digests_are_400() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_push_image(&api, REPO, "v1", "invalid").await;
    // "If the request is invalid, such as a <digest> with an invalid syntax, a 400 Bad Request
    // MUST be returned."
    for digest in [
        "sha256:abc",
        "notadigest",
        "v1",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        must_fail(
            api.get(&format!("/v2/{REPO}/referrers/{digest}")).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
    }
    for req in [
        TestRequest::post().uri(&format!("/v2/{REPO}/referrers/{EMPTY_DIGEST}")),
        TestRequest::delete().uri(&format!("/v2/{REPO}/referrers/{EMPTY_DIGEST}")),
    ] {
        must_fail(api.send(req).await, 405, "UNSUPPORTED").await;
    }
}
