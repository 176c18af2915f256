//! Background maintenance: purging abandoned upload sessions (cluster-wide, through Raft),
//! letting the actors of ended sessions go, and the health and readiness endpoints.

mod common;

use std::time::Duration;

use actix_web::test::{self, TestRequest};
use common::{Api, TestNode, json, must_start_upload, must_status, patch_chunk, test_config};

#[actix_web::test]
async fn purging_drops_abandoned_sessions_and_their_actors() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let uploads = node.parts.registry.uploads().clone();
    let kept = must_start_upload(&api, "purge/me").await;
    must_status(&patch_chunk(&api, &kept, 0, b"hello").await, 202);
    let other = must_start_upload(&api, "purge/me").await;

    // Sessions touched a moment ago are younger than a one-hour age: nothing to purge.
    assert_eq!(uploads.purge(Duration::from_secs(3600), false).await.unwrap(), 0);
    must_status(&api.send(TestRequest::get().uri(&kept)).await, 204);

    // A dry run counts without purging.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(uploads.purge(Duration::from_millis(1), true).await.unwrap(), 2);
    must_status(&api.send(TestRequest::get().uri(&kept)).await, 204);

    // A real run purges both, through Raft, and the sessions are gone for every request.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(uploads.purge(Duration::from_millis(1), false).await.unwrap(), 2);
    for location in [&kept, &other] {
        let resp = api.send(TestRequest::get().uri(location)).await;
        must_status(&resp, 404);
        let resp = patch_chunk(&api, location, 0, b"late").await;
        must_status(&resp, 404);
    }
    assert!(node.parts.raft.reader().uploads().unwrap().is_empty());
    // The requests found their sessions gone and ended the actors: nothing left to sweep.
    assert_eq!(uploads.sweep().unwrap(), 0);
}

#[actix_web::test]
async fn sweep_lets_go_of_actors_whose_session_ended_elsewhere() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let uploads = node.parts.registry.uploads().clone();
    let location = must_start_upload(&api, "sweep/me").await;
    must_status(&patch_chunk(&api, &location, 0, b"abc").await, 202);
    // Cancel through Raft directly, as another node would: this node's actor does not know.
    let id = location.rsplit('/').next().unwrap().to_string();
    let result = node
        .parts
        .raft
        .propose(ipcr_proto::Command::CancelUpload { id })
        .await
        .unwrap();
    assert_eq!(result, ipcr_proto::CommandResult::Ok);
    assert_eq!(uploads.sweep().unwrap(), 1);
    assert_eq!(uploads.sweep().unwrap(), 0);
    must_status(&api.send(TestRequest::get().uri(&location)).await, 404);
}

#[actix_web::test]
async fn health_reports_the_disk_after_threshold_failures() {
    let node = TestNode::start(test_config()).await;
    let app = test::init_service(node.app()).await;
    let get = |uri: &'static str| TestRequest::get().uri(uri).to_request();

    let resp = test::call_service(&app, get("/debug/health")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(test::read_body(resp).await, "{}");
    assert_eq!(test::call_service(&app, get("/ready")).await.status(), 200);

    let threshold = ipcr_node::health::DISK_THRESHOLD;
    for _ in 0..threshold - 1 {
        node.parts.health.record_disk(Err("disk on fire".into()));
    }
    assert_eq!(test::call_service(&app, get("/debug/health")).await.status(), 200);
    node.parts.health.record_disk(Err("disk on fire".into()));
    let resp = test::call_service(&app, get("/debug/health")).await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = test::read_body_json(resp).await;
    assert_eq!(body["storagedriver_filesystem"], "disk on fire");
    assert_eq!(test::call_service(&app, get("/ready")).await.status(), 503);

    node.parts.health.record_disk(Ok(()));
    assert_eq!(test::call_service(&app, get("/debug/health")).await.status(), 200);
    assert_eq!(test::call_service(&app, get("/ready")).await.status(), 200);
}

/// Poll `uri` until it answers `status`, for at most 10 s.
async fn wait_status(api: &Api, uri: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = api.get(uri).await.status();
        if got.as_u16() == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{uri} never answered {status} (last {got})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn a_node_whose_uploads_dir_is_broken_is_unready_until_it_is_back() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    // The probe the server runs, faster; `health.storagedriver` is off, as by default.
    assert!(!node.config.health.storagedriver.enabled);
    ipcr_node::health::spawn_disk_probe(
        node.parts.health.clone(),
        node.parts.registry.store().dirs(),
        Duration::from_millis(20),
    );
    wait_status(&api, "/ready", 200).await;

    let uploads = node.dir.path().join("uploads");
    std::fs::remove_dir_all(&uploads).unwrap();
    std::fs::write(&uploads, b"a file where the directory was").unwrap();
    wait_status(&api, "/ready", 503).await;
    let body = json(api.get("/ready").await).await;
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("storagedriver_filesystem: uploads: "),
        "{body}"
    );
    let resp = api.get("/debug/health").await;
    assert_eq!(resp.status(), 503);
    let body = json(resp).await;
    assert!(
        body["storagedriver_filesystem"]
            .as_str()
            .unwrap()
            .starts_with("uploads: "),
        "{body}"
    );

    std::fs::remove_file(&uploads).unwrap();
    std::fs::create_dir(&uploads).unwrap();
    wait_status(&api, "/ready", 200).await;
    wait_status(&api, "/debug/health", 200).await;
}
