//! API tests of listing tags (end-8a/8b) and the catalog, written from the OCI
//! distribution-spec ("Listing Tags") and Docker's `_catalog` extension, which pages the same
//! way.

mod common;

use actix_web::test::TestRequest;
use common::*;
use serde_json::json;

const REPO: &str = "list/repo";

/// Tags pushed in this order...
const TAGS: [&str; 15] = [
    "b", "A", "a", "B", "1", "_x", "a.b", "a-b", "Z", "a_b", "10", "9", "latest", "v1.0", "V1.0",
];
/// ...and listed in Go's `sort.Strings` (byte-wise) order.
const SORTED: [&str; 15] = [
    "1", "10", "9", "A", "B", "V1.0", "Z", "_x", "a", "a-b", "a.b", "a_b", "b", "latest", "v1.0",
];

async fn with_tags(api: &Api) {
    let image = must_push_image(api, REPO, TAGS[0], "listing").await;
    for tag in &TAGS[1..] {
        must_put_manifest(api, REPO, tag, OCI_MANIFEST, &image.bytes).await;
    }
}

/// The URL of a `Link: <url>; rel="next"` header.
fn next_url(link: &str) -> String {
    assert!(link.ends_with(r#"; rel="next""#), "{link}");
    let start = link.find('<').expect("<") + 1;
    let end = link.find('>').expect(">");
    link[start..end].to_string()
}

/// GET `path`, assert 200 JSON; answers the body and the `Link` header.
async fn page(api: &Api, path: &str) -> (serde_json::Value, Option<String>) {
    let resp = api.get(path).await;
    must_status(&resp, 200);
    assert!(
        header(&resp, "Content-Type").is_some_and(|c| c.starts_with("application/json")),
        "{path}"
    );
    let link = header(&resp, "Link");
    (json(resp).await, link)
}

#[actix_web::test]
async fn tags_are_listed_in_byte_order() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    with_tags(&api).await;
    let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list")).await;
    assert_eq!(body, json!({ "name": REPO, "tags": SORTED }));
    assert_eq!(link, None);
}

#[actix_web::test]
async fn tags_are_paged_with_n_last_and_link() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    with_tags(&api).await;

    let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list?n=4")).await;
    assert_eq!(body["tags"], json!(SORTED[..4]));
    assert_eq!(
        link.as_deref(),
        Some(format!(r#"</v2/{REPO}/tags/list?n=4&last=A>; rel="next""#).as_str())
    );
    // Following the links walks the whole list, n at a time, with no Link on the last page.
    let mut seen: Vec<String> = serde_json::from_value(body["tags"].clone()).unwrap();
    let mut link = link;
    let mut pages = 1;
    while let Some(l) = link {
        let (body, next) = page(&api, &next_url(&l)).await;
        let tags: Vec<String> = serde_json::from_value(body["tags"].clone()).unwrap();
        // Fewer than n only on the last page.
        assert!(tags.len() == 4 || next.is_none(), "page {pages}: {tags:?}");
        seen.extend(tags);
        link = next;
        pages += 1;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, SORTED);

    // `last` alone: everything after it, exclusive.
    let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list?last=a")).await;
    assert_eq!(body["tags"], json!(SORTED[9..]));
    assert_eq!(link, None);
    let (body, _) = page(&api, &format!("/v2/{REPO}/tags/list?n=2&last=a")).await;
    assert_eq!(body["tags"], json!(["a-b", "a.b"]));
    // `last` need not be an existing tag.
    let (body, _) = page(&api, &format!("/v2/{REPO}/tags/list?last=c")).await;
    assert_eq!(body["tags"], json!(["latest", "v1.0"]));
    let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list?last=zzz")).await;
    assert_eq!(body["tags"], json!([]));
    assert_eq!(link, None);
}

#[actix_web::test]
async fn page_sizes_at_and_beyond_the_end() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    with_tags(&api).await;
    for n in [15, 16, 1000] {
        let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list?n={n}")).await;
        assert_eq!(body["tags"], json!(SORTED), "n={n}");
        assert_eq!(link, None, "n={n}: nothing remains");
    }
    let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list?n=14")).await;
    assert_eq!(body["tags"], json!(SORTED[..14]));
    assert!(link.is_some());
    // "When n is zero, this endpoint MUST return an empty list, and MUST NOT include a Link
    // header."
    let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list?n=0")).await;
    assert_eq!(body, json!({ "name": REPO, "tags": [] }));
    assert_eq!(link, None);
    let (body, link) = page(&api, &format!("/v2/{REPO}/tags/list?n=0&last=a")).await;
    assert_eq!(body["tags"], json!([]));
    assert_eq!(link, None);
}

#[actix_web::test]
async fn tags_of_unknown_and_untagged_repositories() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    must_fail(api.get("/v2/list/never/tags/list").await, 404, "NAME_UNKNOWN").await;
    // A repository holding only blobs has an empty list ("MAY be empty").
    must_push_blob(&api, "list/blobs", b"just a blob").await;
    let (body, link) = page(&api, "/v2/list/blobs/tags/list").await;
    assert_eq!(body, json!({ "name": "list/blobs", "tags": [] }));
    assert_eq!(link, None);
}

#[actix_web::test]
async fn bad_page_sizes_are_400() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    with_tags(&api).await;
    // The spec defines no answer to a malformed `n`; 400 UNSUPPORTED is the node's choice.
    for n in ["-1", "abc", "1.5", "99999999999999999999999"] {
        must_fail(
            api.get(&format!("/v2/{REPO}/tags/list?n={n}")).await,
            400,
            "UNSUPPORTED",
        )
        .await;
        must_fail(api.get(&format!("/v2/_catalog?n={n}")).await, 400, "UNSUPPORTED").await;
    }
}

#[actix_web::test]
async fn catalog_lists_repositories_in_byte_order_with_paging() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let (body, link) = page(&api, "/v2/_catalog").await;
    assert_eq!(body, json!({ "repositories": [] }));
    assert_eq!(link, None);

    let repos = ["b", "a/b", "a", "a-b", "c/d/e", "a.b", "a/a"];
    let sorted = ["a", "a-b", "a.b", "a/a", "a/b", "b", "c/d/e"];
    for (i, repo) in repos.iter().enumerate() {
        must_push_blob(&api, repo, format!("blob {i}").as_bytes()).await;
    }
    let (body, link) = page(&api, "/v2/_catalog").await;
    assert_eq!(body, json!({ "repositories": sorted }));
    assert_eq!(link, None);

    let (body, link) = page(&api, "/v2/_catalog?n=2").await;
    assert_eq!(body["repositories"], json!(sorted[..2]));
    assert_eq!(
        link.as_deref(),
        Some(r#"</v2/_catalog?n=2&last=a-b>; rel="next""#)
    );
    let mut seen: Vec<String> = serde_json::from_value(body["repositories"].clone()).unwrap();
    let mut link = link;
    while let Some(l) = link {
        let (body, next) = page(&api, &next_url(&l)).await;
        let names: Vec<String> = serde_json::from_value(body["repositories"].clone()).unwrap();
        assert!(names.len() == 2 || next.is_none(), "{names:?}");
        seen.extend(names);
        link = next;
    }
    assert_eq!(seen, sorted);

    let (body, _) = page(&api, "/v2/_catalog?last=a%2Fa").await;
    assert_eq!(body["repositories"], json!(["a/b", "b", "c/d/e"]));
    let (body, link) = page(&api, "/v2/_catalog?n=0").await;
    assert_eq!(body, json!({ "repositories": [] }));
    assert_eq!(link, None);
    let (body, link) = page(&api, "/v2/_catalog?n=7").await;
    assert_eq!(body["repositories"], json!(sorted));
    assert_eq!(link, None);
}

#[actix_web::test]
async fn listing_refuses_other_methods() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    with_tags(&api).await;
    for req in [
        TestRequest::post().uri(&format!("/v2/{REPO}/tags/list")),
        TestRequest::delete().uri(&format!("/v2/{REPO}/tags/list")),
        TestRequest::put().uri("/v2/_catalog"),
        TestRequest::delete().uri("/v2/_catalog"),
    ] {
        must_fail(api.send(req).await, 405, "UNSUPPORTED").await;
    }
}
