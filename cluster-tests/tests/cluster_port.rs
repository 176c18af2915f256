//! The cluster port: no request is served without the cluster secret, and the connections
//! followers keep to their leader for read indexes stay open between calls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cluster_tests::Cluster;
use cluster_tests::node::CLUSTER_SECRET;

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn nothing_is_served_without_the_cluster_secret() {
    let cluster = Cluster::start(1, &[]);
    let url = cluster.nodes[0].cluster_url();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let join = r#"{"id":77,"addr":"http://127.0.0.1:1"}"#;
    let routes = [
        ("POST", "/raft/append".to_string()),
        ("POST", "/raft/vote".to_string()),
        ("POST", "/raft/pre-vote".to_string()),
        ("POST", "/raft/transfer-leader".to_string()),
        ("POST", "/raft/snapshot".to_string()),
        ("POST", "/cluster/write".to_string()),
        ("POST", "/cluster/read-index".to_string()),
        ("POST", "/cluster/join".to_string()),
        ("POST", "/cluster/leave".to_string()),
        ("GET", "/cluster/status".to_string()),
        ("PUT", "/cluster/uploads/x/chunk".to_string()),
        ("GET", format!("/cluster/blobs/{DIGEST}")),
        ("PUT", format!("/cluster/blobs/{DIGEST}")),
        ("POST", format!("/cluster/blobs/{DIGEST}/pin")),
    ];
    let wrong = [
        None,
        Some("Bearer not-the-secret".to_string()),
        Some(CLUSTER_SECRET.to_string()),
        Some(format!("Basic {CLUSTER_SECRET}")),
    ];
    for (method, path) in &routes {
        for auth in &wrong {
            let mut req = client
                .request(method.parse().unwrap(), format!("{url}{path}"))
                .body(join);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let status = req.send().expect("the cluster port answers").status();
            assert_eq!(status.as_u16(), 401, "{method} {path} with {auth:?}");
        }
    }
    // The refused join changed nothing.
    let status = cluster.status(0).expect("status with the secret");
    assert_eq!(status.members.len(), 1, "{status:?}");
}

/// One HTTP/1.1 request on `stream`; answers the status and the body.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, Vec<u8>) {
    stream.write_all(request).expect("request sent");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}: the connection was closed"));
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            assert!(
                !(k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")),
                "the answer closes the connection"
            );
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().expect("content-length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (status, body)
}

#[test]
fn read_index_calls_share_one_connection() {
    let cluster = Cluster::start(1, &[]);
    let addr = cluster.nodes[0]
        .cluster_url()
        .trim_start_matches("http://")
        .to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect to the cluster port");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The body is the encoded unit value: the format version byte alone (2, node::raft::FORMAT).
    let mut request = format!(
        "POST /cluster/read-index HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {CLUSTER_SECRET}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1\r\n\r\n"
    )
    .into_bytes();
    request.push(2);
    for call in 0..3 {
        let (status, body) = exchange(&mut stream, &request);
        assert_eq!(status, 200, "call {call}: {}", String::from_utf8_lossy(&body));
        // Format version 2, then `Ok` (variant 0) and the index.
        assert!(body.starts_with(&[2, 0]), "call {call}: {body:?}");
    }
    // A body in an unknown format is refused, not ignored.
    let mut bad = request.clone();
    *bad.last_mut().unwrap() = 9;
    let (status, _) = exchange(&mut stream, &bad);
    assert_eq!(status, 400);
}
