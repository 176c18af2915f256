//! The registry port's metrics, recorded by a real node and rendered as Prometheus scrapes
//! them: requests by operation (never by repository or digest), status and method, body bytes
//! both ways, and the state gauges. A real Prometheus scraping three nodes is in cluster-tests
//! (`metrics.rs`); `promtool check metrics` runs there too.

mod common;

use actix_web::test::TestRequest;
use common::*;
use ipcr_node::api::HttpSettings;
use ipcr_node::metrics::Exporter;

/// A node with `http.debug.prometheus` on.
fn metrics_config() -> ipcr_node::config::Config {
    let mut c = test_config();
    c.http.debug.addr = "127.0.0.1:0".into();
    c.http.debug.prometheus.enabled = true;
    c
}

/// The value of the sample `line` names (everything before the value), or `None`.
fn sample(text: &str, line: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[actix_web::test]
async fn requests_are_counted_by_operation_with_their_bytes() {
    let node = TestNode::start(metrics_config()).await;
    let settings = HttpSettings::from_config(&node.config);
    let http = settings.metrics.clone().expect("metrics are on");
    let api = Api::with(&node, None, settings).await;

    let blob = pattern(70_000, 3);
    let digest = must_push_blob(&api, "secret-team/app", &blob).await;
    let location = must_start_upload(&api, "secret-team/app").await;
    let chunk = pattern(5_000, 4);
    let resp = api
        .send_streamed(
            TestRequest::patch()
                .uri(&location)
                .insert_header(("Content-Type", "application/octet-stream"))
                .set_payload(chunk.clone()),
        )
        .await;
    must_status(&resp, 202);
    let resp = api.get(&format!("/v2/secret-team/app/blobs/{digest}")).await;
    must_status(&resp, 200);
    must_status(&api.get("/v2/secret-team/app/manifests/latest").await, 404);
    must_status(&api.get("/v2/secret-team/app/manifests/latest").await, 404);
    must_status(&api.get("/v2/Not_A_Name!/manifests/x").await, 400);
    must_status(&api.get("/v2/").await, 200);

    let mut collectors = http.collectors();
    collectors.extend(node.parts.raft.raft_metrics().collectors());
    let exporter = Exporter::new(node.parts.registry.clone(), node.parts.health.clone(), collectors);
    let text = exporter.render();
    let requests = |op: &str, method: &str, code: u16| {
        sample(
            &text,
            &format!(r#"ipcr_http_requests_total{{code="{code}",method="{method}",operation="{op}"}}"#),
        )
    };
    assert_eq!(requests("upload_start", "POST", 201), Some(1.0), "{text}");
    assert_eq!(requests("upload_start", "POST", 202), Some(1.0));
    assert_eq!(requests("upload_patch", "PATCH", 202), Some(1.0));
    assert_eq!(requests("blob_get", "GET", 200), Some(1.0));
    assert_eq!(requests("manifest_get", "GET", 404), Some(2.0));
    assert_eq!(requests("unknown", "GET", 400), Some(1.0));
    assert_eq!(requests("base", "GET", 200), Some(1.0));
    // Bodies: the monolithic push and the chunk without a Content-Length, both read; the pull.
    let bytes = |dir: &str, op: &str| {
        sample(
            &text,
            &format!(r#"ipcr_http_{dir}_bytes_total{{operation="{op}"}}"#),
        )
    };
    assert_eq!(bytes("received", "upload_start"), Some(blob.len() as f64));
    assert_eq!(bytes("received", "upload_patch"), Some(chunk.len() as f64));
    assert_eq!(bytes("sent", "blob_get"), Some(blob.len() as f64));
    assert_eq!(
        sample(
            &text,
            r#"ipcr_http_request_duration_seconds_count{method="GET",operation="manifest_get"}"#
        ),
        Some(2.0)
    );
    assert!(
        !text.contains("secret-team"),
        "a repository name became a label:\n{text}"
    );
    assert!(!text.contains(&digest[7..]), "a digest became a label");

    // The state, read when scraped.
    assert_eq!(sample(&text, "ipcr_raft_is_leader"), Some(1.0));
    assert_eq!(sample(&text, r#"ipcr_raft_state{state="leader"}"#), Some(1.0));
    assert_eq!(sample(&text, r#"ipcr_raft_state{state="follower"}"#), Some(0.0));
    assert_eq!(
        sample(&text, "ipcr_raft_leader_id"),
        Some(node.parts.raft.id() as f64)
    );
    assert_eq!(sample(&text, "ipcr_raft_voters"), Some(1.0));
    assert_eq!(sample(&text, "ipcr_store_blobs"), Some(1.0));
    assert_eq!(sample(&text, "ipcr_store_bytes"), Some(blob.len() as f64));
    assert_eq!(sample(&text, "ipcr_upload_sessions"), Some(1.0));
    assert_eq!(sample(&text, "ipcr_blobs_under_replicated"), Some(0.0));
    assert_eq!(
        sample(&text, r#"ipcr_health_check_up{check="storagedriver_filesystem"}"#),
        Some(1.0)
    );
    assert!(sample(&text, "ipcr_raft_leader_changes_total") >= Some(1.0));
    let proposals = sample(&text, r#"ipcr_raft_proposal_duration_seconds_count{result="ok"}"#);
    assert!(proposals >= Some(3.0), "{proposals:?}");
    let applied = sample(&text, "ipcr_raft_applied_index").unwrap();
    assert_eq!(sample(&text, "ipcr_raft_commit_index"), Some(applied));
    assert_eq!(sample(&text, "ipcr_raft_apply_lag_entries"), Some(0.0));
    // No IPFS backend: no pin gauges.
    assert!(!text.contains("ipcr_ipfs_blobs{"));

    // Metrics are off unless asked for: nothing is recorded.
    assert!(HttpSettings::from_config(&test_config()).metrics.is_none());
}
