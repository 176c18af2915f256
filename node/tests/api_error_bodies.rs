//! What error responses may tell a client: the spec's code and a short message, a prefix of the
//! client's input at most, never a cause chain, an OS error or a peer's address; and the request
//! id every response carries, under which the log has the details.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use actix_web::test::TestRequest;
use common::*;
use ipcr_node::api::error::ECHO_LIMIT;

/// Log lines written while a [`LogCapture`] is installed on this thread.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Capture this thread's log (where the test service runs every request) until the guard
    /// drops.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The log line with `needle` in it.
    fn line_with(&self, needle: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().find(|l| l.contains(needle)).map(str::to_string)
    }
}

/// Assert the response carries a request id, and answer it.
#[track_caller]
fn must_have_request_id<B>(resp: &actix_web::dev::ServiceResponse<B>) -> String {
    let id = header(resp, "X-Request-Id").expect("X-Request-Id");
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "request id {id}"
    );
    id
}

#[actix_web::test]
async fn every_response_carries_its_own_request_id() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let mut ids = Vec::new();
    for (path, status) in [
        ("/v2/", 200),
        ("/v2/no/such/tags/list", 404),
        ("/v2/_catalog", 200),
        ("/ready", 200),
        ("/debug/health", 200),
        ("/elsewhere", 404),
    ] {
        let resp = api.get(path).await;
        assert_eq!(resp.status().as_u16(), status, "{path}");
        ids.push(must_have_request_id(&resp));
    }
    let resp = api.send(TestRequest::post().uri("/v2/")).await;
    must_status(&resp, 405);
    ids.push(must_have_request_id(&resp));
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "ids repeat");
}

#[actix_web::test]
async fn client_input_is_quoted_as_a_short_prefix() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let long = "a".repeat(10_000);
    let requests = [
        (api.get(&format!("/v2/{long}/tags/list")).await, "NAME_INVALID"),
        (
            api.get(&format!("/v2/r/blobs/sha256:{long}")).await,
            "DIGEST_INVALID",
        ),
        (
            api.send(
                TestRequest::put()
                    .uri(&format!("/v2/r/manifests/{EMPTY_DIGEST}?tag=-{long}"))
                    .set_payload("{}"),
            )
            .await,
            "MANIFEST_INVALID",
        ),
        (
            api.send(
                TestRequest::post().uri(&format!("/v2/r/blobs/uploads/?mount={EMPTY_DIGEST}&from={long}")),
            )
            .await,
            "NAME_INVALID",
        ),
    ];
    for (resp, code) in requests {
        must_have_request_id(&resp);
        let v = must_fail(resp, 400, code).await;
        let message = v["errors"][0]["message"].as_str().unwrap().to_string();
        assert!(message.contains(&"a".repeat(ECHO_LIMIT / 2)), "{message}");
        assert!(message.contains('…'), "{message}");
        assert!(
            message.len() < 2 * ECHO_LIMIT + 40,
            "{} bytes: {message}",
            message.len()
        );
    }
}

#[actix_web::test]
async fn unavailable_reads_name_no_peer_and_log_why_under_the_request_id() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let digest = must_push_blob(&api, "lost/blob", b"eleven byte").await;
    // The index says this node holds it, the disk no longer does, and no peer can serve it.
    let d: ipcr_proto::Digest = digest.parse().unwrap();
    std::fs::remove_file(node.parts.registry.store().blob_path(&d)).unwrap();

    let log = LogCapture::default();
    let _guard = log.install();
    let resp = api.get(&format!("/v2/lost/blob/blobs/{digest}")).await;
    let id = must_have_request_id(&resp);
    assert_eq!(header(&resp, "Retry-After").as_deref(), Some("1"));
    let v = must_fail(resp, 503, "UNAVAILABLE").await;
    let text = v.to_string();
    assert!(
        !text.contains("holder") && !text.contains("http") && !text.contains("127.0.0.1"),
        "{text}"
    );
    let line = log.line_with("request failed").expect("the failure is logged");
    assert!(line.contains(&id), "no request id {id} in: {line}");
    assert!(line.contains("no holder of"), "no cause in: {line}");
}

#[actix_web::test]
async fn storage_faults_answer_500_without_os_errors() {
    let node = TestNode::start(test_config()).await;
    let api = Api::new(&node).await;
    let uploads = node.dir.path().join("uploads");
    std::fs::remove_dir_all(&uploads).unwrap();
    std::fs::write(&uploads, b"not a directory").unwrap();

    let log = LogCapture::default();
    let _guard = log.install();
    let resp = api
        .send(
            TestRequest::post()
                .uri(&format!("/v2/broken/disk/blobs/uploads/?digest={}", sha256(b"x")))
                .set_payload("x"),
        )
        .await;
    let id = must_have_request_id(&resp);
    let v = must_fail(resp, 500, "UNKNOWN").await;
    let text = v.to_string();
    let dir = node.dir.path().display().to_string();
    assert!(
        !text.contains("os error") && !text.contains("directory") && !text.contains(&dir),
        "{text}"
    );
    let line = log.line_with("request failed").expect("the failure is logged");
    assert!(line.contains(&id), "no request id {id} in: {line}");
    assert!(line.contains("os error"), "no cause chain in: {line}");
}
