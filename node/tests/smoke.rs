//! A first in-process check that a node answers the base endpoint and survives a restart.

mod common;

use actix_web::test;
use common::{TestNode, test_config};

#[actix_web::test]
async fn base_endpoint_and_restart() {
    let node = TestNode::start(test_config()).await;
    let app = test::init_service(node.app()).await;
    let resp = test::call_service(&app, test::TestRequest::get().uri("/v2/").to_request()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("Docker-Distribution-API-Version").unwrap(),
        "registry/2.0"
    );
    let body = test::read_body(resp).await;
    assert_eq!(&body[..], b"{}");

    let digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let req = test::TestRequest::post()
        .uri(&format!("/v2/a/b/blobs/uploads/?digest={digest}"))
        .set_payload("hello")
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 201);
    drop(app);
    let config = node.config.clone();
    let dir = node.stop().await;

    let node = TestNode::start_in(config, dir).await;
    let app = test::init_service(node.app()).await;
    let resp = test::call_service(
        &app,
        test::TestRequest::get()
            .uri(&format!("/v2/a/b/blobs/{digest}"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&test::read_body(resp).await[..], b"hello");
}
