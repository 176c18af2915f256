//! Nothing that stops sending may hold a request, a session or a read (issue 9's hostile probe):
//! - a `PATCH` whose body stops half-way (`Content-Length: 2000000`, 1 MB sent) is cut off
//!   after `http.bodytimeout`; meanwhile `GET` of the session answers at once with the size
//!   acknowledged before it, and afterwards too (the cut chunk is discarded as if it never
//!   started); the upload then continues and completes; `DELETE` of a session with a stalled
//!   chunk answers at once;
//! - connections trickling a body at one byte a second are closed after `http.bodytimeout`;
//! - a blob read through a node that holds no copy, while one of the two holders is stopped
//!   (`SIGSTOP`), answers within a second, byte for byte; and a read whose holder is stopped
//!   mid-stream resumes from the other holder at the same offset.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cluster_tests::client::{Registry, range_size};
use cluster_tests::oci::noise;
use cluster_tests::{Cluster, Node, sha256_digest};

const REPO: &str = "stall/app";
/// The body timeout the node under test runs with.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// The path of an upload's location (an absolute URL).
fn path_of(location: &str) -> &str {
    let rest = location.split_once("://").map_or(location, |(_, r)| r);
    &rest[rest.find('/').unwrap_or(0)..]
}

/// Open a raw connection and send a `PATCH` of `location` claiming `claimed` bytes from
/// `offset`, then `sent` of them; the connection stays open, sending nothing more.
fn stalled_patch(host: &str, location: &str, offset: u64, claimed: usize, sent: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(host).expect("connect");
    let location = path_of(location);
    write!(
        conn,
        "PATCH {location} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {claimed}\r\nContent-Range: {offset}-{}\r\n\r\n",
        offset + claimed as u64 - 1
    )
    .expect("headers");
    conn.write_all(sent).expect("body");
    conn
}

/// Wait until the server closes `conn` (reading answers 0 bytes or fails); how long it took.
fn wait_closed(mut conn: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            }
            Err(_) => return started.elapsed(),
        }
        assert!(
            started.elapsed() < within,
            "the connection is still open after {within:?}"
        );
    }
}

/// `GET <location>`: the session's size, and how long the answer took.
fn upload_size(location: &str) -> (u64, Duration) {
    let started = Instant::now();
    let r = http().get(location).send().expect("GET upload");
    let took = started.elapsed();
    assert_eq!(r.status().as_u16(), 204, "GET {location}");
    let range = r.headers()["Range"].to_str().expect("Range").to_string();
    (range_size(&range).expect("Range"), took)
}

#[test]
fn a_stalled_body_is_cut_off_and_never_blocks_its_session() {
    let timeout = format!("{}s", BODY_TIMEOUT.as_secs());
    let node = Node::start_with_env("stall", &[("REGISTRY_HTTP_BODYTIMEOUT", &timeout)]);
    let base = node.base_url();
    let reg = Registry::new(&base);
    let blob = noise(9, 2_100_000);
    let location = reg.start_upload(REPO).expect("start");
    let size = reg.patch(&location, 0, &blob[..100_000]).expect("first chunk");
    assert_eq!(size, 100_000);

    // 2,000,000 bytes claimed, 1,000,000 sent, then nothing.
    let conn = stalled_patch(
        &node.host(),
        &location,
        100_000,
        2_000_000,
        &blob[100_000..1_100_000],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (size, took) = upload_size(&location);
    assert_eq!(size, 100_000, "the status counts only acknowledged chunks");
    assert!(
        took < Duration::from_secs(1),
        "GET of the session waited {took:?} behind the stalled chunk"
    );
    let closed = wait_closed(conn, BODY_TIMEOUT + Duration::from_secs(5));
    eprintln!("stalled body cut off {closed:?} after the status check");
    let (size, _) = upload_size(&location);
    assert_eq!(size, 100_000, "the cut chunk is discarded");
    // The upload goes on where it was, and completes.
    let size = reg.patch(&location, 100_000, &blob[100_000..]).expect("the rest");
    assert_eq!(size, blob.len() as u64);
    let digest = sha256_digest(&blob);
    reg.finish(&location, &digest).expect("close");
    assert_eq!(reg.get_blob(REPO, &digest).expect("pull").bytes, blob);

    // DELETE of a session whose chunk is stalled answers at once, and the session is gone.
    let location = reg.start_upload(REPO).expect("start");
    let conn = stalled_patch(&node.host(), &location, 0, 2_000_000, &blob[..1_000_000]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let r = http().delete(&location).send().expect("DELETE");
    assert_eq!(r.status().as_u16(), 204);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "DELETE waited {:?}",
        started.elapsed()
    );
    let r = http().get(&location).send().expect("GET");
    assert_eq!(r.status().as_u16(), 404, "a cancelled session is unknown");
    wait_closed(conn, BODY_TIMEOUT + Duration::from_secs(5));
}

#[test]
fn bodies_trickling_a_byte_a_second_are_closed() {
    let timeout = format!("{}s", BODY_TIMEOUT.as_secs());
    let node = Node::start_with_env("trickle", &[("REGISTRY_HTTP_BODYTIMEOUT", &timeout)]);
    let reg = Registry::new(&node.base_url());
    let trickles: Vec<_> = (0..10)
        .map(|_| {
            let location = reg.start_upload(REPO).expect("start");
            let host = node.host();
            std::thread::spawn(move || {
                let mut conn = stalled_patch(&host, &location, 0, 2_000_000, b"x");
                let started = Instant::now();
                // One byte a second until the server hangs up.
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    if conn.write_all(b"x").is_err() || conn.flush().is_err() {
                        break;
                    }
                    assert!(
                        started.elapsed() < BODY_TIMEOUT + Duration::from_secs(8),
                        "a trickling body was never cut off"
                    );
                }
                started.elapsed()
            })
        })
        .collect();
    for t in trickles {
        let lasted = t.join().expect("trickler");
        assert!(
            lasted >= BODY_TIMEOUT - Duration::from_millis(500),
            "cut off too early: {lasted:?}"
        );
    }
    // The node still serves.
    let blob = noise(3, 1000);
    reg.push_blob_chunked(REPO, &blob, &[])
        .expect("a push after the trickles");
}

/// The nodes whose data directory holds `digest`.
fn holders(cluster: &Cluster, digest: &str) -> Vec<usize> {
    let hex = digest.trim_start_matches("sha256:");
    (0..cluster.nodes.len())
        .filter(|&i| {
            cluster.nodes[i]
                .data_dir()
                .join("blobs/sha256")
                .join(&hex[..2])
                .join(hex)
                .is_file()
        })
        .collect()
}

/// A ranged GET of everything but the last byte (a whole-blob read would leave a copy on the
/// reading node): the bytes, and how long the headers took.
fn ranged_get(base: &str, digest: &str, size: usize, mid: Option<&mut dyn FnMut()>) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut r = http()
        .get(format!("{base}/v2/{REPO}/blobs/{digest}"))
        .header("Range", format!("bytes=0-{}", size - 2))
        .timeout(Duration::from_secs(60))
        .send()
        .expect("GET blob");
    let headers = started.elapsed();
    assert_eq!(r.status().as_u16(), 206);
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut mid = mid;
    loop {
        let n = r.read(&mut buf).expect("reading the blob");
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        if bytes.len() >= 4 << 20
            && let Some(f) = mid.take()
        {
            f();
        }
    }
    (bytes, headers)
}

#[test]
fn a_stopped_holder_never_stalls_a_blob_read() {
    let mut cluster = Cluster::start(3, &[("REGISTRY_STORAGE_REPLICAS", "2")]);
    let leader = cluster.wait_leader();
    let reg = Registry::new(&cluster.nodes[leader].base_url());
    let blob = noise(77, 48 << 20);
    let digest = reg.push_blob_chunked(REPO, &blob, &[]).expect("push");
    let held = holders(&cluster, &digest);
    assert_eq!(held.len(), 2, "two replicas: {held:?}");
    let reader = (0..3).find(|i| !held.contains(i)).expect("a node without a copy");
    let base = cluster.nodes[reader].base_url();
    let want = &blob[..blob.len() - 1];

    // Before the first byte: each holder in turn stopped.
    for &h in &held {
        cluster.nodes[h].process().pause();
        let started = Instant::now();
        let (bytes, headers) = ranged_get(&base, &digest, blob.len(), None);
        let took = started.elapsed();
        cluster.nodes[h].process().resume();
        assert!(bytes == want, "the bytes differ with node{h} stopped");
        assert!(
            headers < Duration::from_secs(1),
            "headers after {headers:?} with node{h} stopped"
        );
        eprintln!("node{h} stopped: headers after {headers:?}, whole read {took:?}");
    }
    // Mid-stream: stop each holder in turn after 4 MiB.
    for &h in &held {
        let process = cluster.nodes[h].process();
        let mut stop = || process.pause();
        let started = Instant::now();
        let (bytes, _) = ranged_get(&base, &digest, blob.len(), Some(&mut stop));
        let took = started.elapsed();
        cluster.nodes[h].process().resume();
        assert!(bytes == want, "the bytes differ when node{h} stopped mid-stream");
        assert!(took < Duration::from_secs(20), "the read took {took:?}");
        eprintln!("node{h} stopped mid-stream: read in {took:?}");
    }
    assert!(
        cluster.nodes[reader]
            .log()
            .contains("a blob read resumes from another holder"),
        "one of the two mid-stream stops hit the holder serving the read, which must resume elsewhere"
    );
}
