//! One real node with TLS on its registry port and access control, driven by real clients:
//!
//! - `skopeo` pushes and pulls with htpasswd users (made by Apache's `htpasswd -B`), verifying
//!   the node's certificate against the test CA; a wrong password, no credentials and an
//!   untrusted certificate all fail.
//! - `docker login`, `push`, `pull`, `run`, `logout` through the Engine's own `certs.d`
//!   trust, once with Basic authentication and once with IPCR's own tokens.
//! - Hostile input (a 1 MB header, thousands of headers, bytes that are no ClientHello, a
//!   stalled handshake) gets a 4xx or a closed connection, never a 5xx, while a concurrent
//!   client is served throughout; forged, tampered and expired tokens get `401`.
//! - A certificate rotated on disk reaches new connections within seconds while a keep-alive
//!   connection opened before keeps working; a half-written pair is not taken.
//! - With `http.tls.clientcas`, a client without a certificate of those CAs is refused at the
//!   handshake, and `minimumtls: tls1.3` refuses TLS 1.2.
//!
//! Certificates and keys are generated here; nothing secret is committed.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_tests::clients::{Docker, SKOPEO_TIMEOUT};
use cluster_tests::credentials::{
    DockerSession, UNAUTHORIZED, docker_verified_ip, fetch_token, must_build_and_push, must_docker_login,
    must_fail_saying, must_pull_and_run,
};
use cluster_tests::jwt;
use cluster_tests::oci::{self, Layer, Layout, Tar};
use cluster_tests::pki::{Ca, signing_key_pem};
use cluster_tests::secure::{ALICE, Access, BOB, SERVICE, SecureNode, SecuredNode, basic, chain};
use cluster_tests::tls::{self, client_config, https_client};
use cluster_tests::tools::{Output, require_docker, require_static_busybox, require_tool, run};

fn skopeo(bin: &Path, args: &[&str]) -> Output {
    run(
        Command::new(bin).arg("--insecure-policy").args(args),
        SKOPEO_TIMEOUT,
    )
}

#[test]
fn skopeo_pushes_and_pulls_over_tls_as_an_htpasswd_user() {
    let (Some(skopeo_bin), Some(htpasswd)) = (require_tool("skopeo"), require_tool("htpasswd")) else {
        return;
    };
    let s = SecuredNode::start("skopeo-tls", "127.0.0.1", Access::Basic, Some(&htpasswd));
    let certs = s.cert_dir();
    let certs = certs.to_str().expect("utf-8 path");
    let work = tempfile::tempdir().expect("tempdir");
    let src = Layout::create(&work.path().join("src"));
    let layer = Layer {
        tar: Tar::new()
            .dir("etc")
            .file("etc/motd", b"over TLS, with a password\n", 0o644)
            .file("etc/noise.bin", &oci::noise(7, 200_000), 0o644)
            .finish(),
        gzip: true,
    };
    let manifest = src.put_image("linux", "amd64", &[layer], &["/bin/true"]);
    src.set_refs(&[("v1", &manifest)]);
    let from = format!("oci:{}:v1", src.root().display());
    let remote = format!("docker://{}/tls/skopeo:v1", s.node.host());
    let good = format!("{}:{}", ALICE.0, ALICE.1);

    let wrong = skopeo(
        &skopeo_bin,
        &[
            "copy",
            "--dest-cert-dir",
            certs,
            "--dest-creds",
            "alice:not-her-password",
            &from,
            &remote,
        ],
    );
    must_fail_saying(&wrong, "a push with a wrong password", UNAUTHORIZED);
    let untrusted = skopeo(&skopeo_bin, &["copy", "--dest-creds", &good, &from, &remote]);
    must_fail_saying(
        &untrusted,
        "a push without the CA",
        &["x509", "certificate", "unknown authority"],
    );

    let pushed = skopeo(
        &skopeo_bin,
        &[
            "copy",
            "--preserve-digests",
            "--dest-cert-dir",
            certs,
            "--dest-creds",
            &good,
            &from,
            &remote,
        ],
    );
    assert!(pushed.status.success(), "{}", pushed.describe());
    let path = format!("/v2/tls/skopeo/manifests/{}", manifest.digest);
    assert_eq!(s.status(&path, Some(&basic(ALICE))), 200, "a GET as alice");
    assert_eq!(
        s.status(&path, Some(&basic(BOB))),
        200,
        "without policies, every user pulls"
    );
    assert_eq!(s.status(&path, None), 401, "an anonymous GET");

    let dst = Layout::create(&work.path().join("dst"));
    let to = format!("oci:{}:v1", dst.root().display());
    let anonymous = skopeo(
        &skopeo_bin,
        &["copy", "--src-cert-dir", certs, "--src-no-creds", &remote, &to],
    );
    must_fail_saying(&anonymous, "a pull without credentials", UNAUTHORIZED);
    let wrong = skopeo(
        &skopeo_bin,
        &[
            "copy",
            "--src-cert-dir",
            certs,
            "--src-creds",
            "bob:alice-Secret-9",
            &remote,
            &to,
        ],
    );
    must_fail_saying(&wrong, "a pull with another user's password", UNAUTHORIZED);
    let bob = format!("{}:{}", BOB.0, BOB.1);
    let pulled = skopeo(
        &skopeo_bin,
        &["copy", "--src-cert-dir", certs, "--src-creds", &bob, &remote, &to],
    );
    assert!(pulled.status.success(), "{}", pulled.describe());
    // manifest, config, one layer
    assert_eq!(oci::must_be_identical(&src, "v1", &dst, "v1"), 3);
}

const DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
COPY marker /marker\n\
CMD [\"/bin/busybox\",\"echo\",\"hello from ipcr over tls\"]\n";

/// `docker login`, `push`, `pull`, `run`, `logout` against a TLS node authenticating with
/// `auth`, the CA trusted through `/etc/docker/certs.d`.
fn docker_round_trip(auth: Access) {
    let (Some(docker_bin), Some(busybox), Some(htpasswd)) = (
        require_docker(),
        require_static_busybox(),
        require_tool("htpasswd"),
    ) else {
        return;
    };
    let verified = docker_verified_ip();
    if verified.is_none() {
        eprintln!(
            "no docker0 bridge: the registry is on 127.0.0.1, which the Engine treats as insecure (it does not verify the certificate there)"
        );
    }
    let ip = verified.clone().unwrap_or_else(|| "127.0.0.1".into());
    let name = format!("docker-{auth:?}").to_lowercase();
    let mut s = SecuredNode::start(&name, &ip, auth, Some(&htpasswd));
    let host = s.node.host();
    let session = DockerSession::new(&docker_bin);

    let Some(_trust) = must_docker_login(&session, &host, &s.ca.cert_pem, verified.is_some(), ALICE) else {
        return;
    };
    assert!(
        session.stored().contains(&host),
        "docker login stored nothing for {host}"
    );

    let mut docker = Docker::new(docker_bin);
    let tag = format!("{host}/tls/{name}:v1");
    let marker = format!("{name} {host}\n");
    let (id, digest) = must_build_and_push(&mut docker, &session, &busybox, DOCKERFILE, &marker, &tag);
    if auth == Access::Tokens {
        let log = s.node.process().log();
        assert!(
            log.contains("path=/auth/token"),
            "docker never asked the node's token endpoint:\n{log}"
        );
    }
    let path = format!("/v2/tls/{name}/manifests/{digest}");
    assert_eq!(s.status(&path, Some(&basic(ALICE))), 200, "the pushed manifest");

    let container = format!("ipcr-tls-{}", s.node.port());
    must_pull_and_run(
        &mut docker,
        &session,
        &tag,
        &id,
        &container,
        "hello from ipcr over tls",
    );

    session.must(&["logout", &host]);
    assert!(
        !session.stored().contains(&host),
        "docker logout left {host}'s credentials"
    );
    docker.must(&["rmi", &tag]);
    let anonymous = session.run(&["pull", &tag]);
    must_fail_saying(
        &anonymous,
        "a pull after docker logout",
        &[
            "unauthorized",
            "authentication required",
            "no basic auth credentials",
            "denied",
        ],
    );
}

#[test]
fn docker_logs_in_pushes_pulls_and_runs_over_tls_with_basic_auth() {
    docker_round_trip(Access::Basic);
}

#[test]
fn docker_logs_in_pushes_pulls_and_runs_over_tls_with_ipcr_tokens() {
    docker_round_trip(Access::Tokens);
}

#[test]
fn hostile_input_gets_a_4xx_or_a_closed_connection_while_others_are_served() {
    let Some(htpasswd) = require_tool("htpasswd") else {
        return;
    };
    let mut s = SecuredNode::start("hostile", "127.0.0.1", Access::Basic, Some(&htpasswd));
    let addr = s.node.host();
    let config = Arc::new(client_config(&[&s.ca.cert_pem], None));
    let watcher = tls::Watcher::start(
        client_config(&[&s.ca.cert_pem], None),
        format!("{}/v2/", s.node.base_url()),
        Some(basic(ALICE)),
    );

    let mb = "a".repeat(1 << 20);
    let head = |extra: &str| format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n").into_bytes();
    tls::must_refuse_politely(
        "a 1 MB header",
        tls::try_request(&addr, &config, &head(&format!("X-Filler: {mb}\r\n"))),
    );
    tls::must_refuse_politely(
        "a 1 MB Authorization header",
        tls::try_request(&addr, &config, &head(&format!("Authorization: Basic {mb}\r\n"))),
    );
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    tls::must_refuse_politely("10,000 headers", tls::try_request(&addr, &config, &head(&many)));
    let long_path = format!("GET /v2/{mb}/manifests/x HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tls::must_refuse_politely(
        "a 1 MB request line",
        tls::try_request(&addr, &config, long_path.as_bytes()),
    );

    // Bytes that are no ClientHello: noise, a handshake record full of noise, plain HTTP.
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.extend(oci::noise(2, 0x4000));
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("noise", oci::noise(1, 16 * 1024)),
        ("a handshake record of noise", record),
        (
            "plain HTTP",
            format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes(),
        ),
    ];
    for round in 0..8 {
        for (what, bytes) in &garbage {
            let mut tcp = tls::plain_connect(&addr).expect("connecting");
            let _ = std::io::Write::write_all(&mut tcp, bytes);
            let answer = tls::read_until_closed(&mut tcp)
                .unwrap_or_else(|e| panic!("{what} (round {round}): not closed: {e}"));
            assert!(
                !answer.starts_with(b"HTTP/"),
                "{what} got an HTTP answer: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    }

    // Handshakes that stall after five bytes: closed by the server, others served meanwhile.
    let mut stalled: Vec<_> = (0..64)
        .map(|_| {
            let mut tcp = tls::plain_connect(&addr).expect("connecting");
            std::io::Write::write_all(&mut tcp, &[0x16, 0x03, 0x01, 0x02, 0x00]).expect("writing");
            tcp.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            tcp
        })
        .collect();
    let opened = Instant::now();
    for (i, tcp) in stalled.iter_mut().enumerate() {
        let answer = tls::read_until_closed(tcp).unwrap_or_else(|e| {
            panic!(
                "stalled handshake {i} still open after {:?}: {e}",
                opened.elapsed()
            )
        });
        assert!(
            !answer.starts_with(b"HTTP/"),
            "a stalled handshake got an HTTP answer"
        );
    }
    eprintln!("64 stalled handshakes closed within {:?}", opened.elapsed());

    let tls::Watched {
        served,
        failures,
        slowest,
    } = watcher.finish();
    assert!(
        failures.is_empty(),
        "the well-behaved client failed {} times (of {}): {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 20, "only {served} requests served meanwhile");
    assert!(
        slowest < Duration::from_secs(5),
        "a well-behaved request took {slowest:?}"
    );
    assert!(s.node.is_running(), "the node died");
    assert_eq!(s.status("/v2/", Some(&basic(ALICE))), 200);
    let log = s.node.process().log();
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn forged_tampered_and_expired_tokens_get_401_from_the_real_server() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;
    let Some(htpasswd) = require_tool("htpasswd") else {
        return;
    };
    let s = SecuredNode::start("tokens", "127.0.0.1", Access::Tokens, Some(&htpasswd));
    let scope = "repository:tls/forged:pull,push";
    let real = fetch_token(&s.client, &s.realm(), Some(ALICE), SERVICE, scope).expect("a token");
    let wrong = fetch_token(&s.client, &s.realm(), Some((ALICE.0, "nope")), SERVICE, scope);
    assert_eq!(wrong.err(), Some(401), "a token for a wrong password");
    let path = "/v2/tls/forged/tags/list";
    // Granted, and nothing there yet: 404, not 401.
    assert_eq!(s.status(path, Some(&bearer(&real))), 404, "the issued token");

    let (header, claims) = jwt::parts(&real);
    let kid = header["kid"].as_str().expect("a kid").to_string();
    let pem = std::fs::read_to_string(&s.signing_key).expect("the signing key");
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("a P-256 key");
    let now = jwt::unix_now();
    let fresh = jwt::with(
        &claims,
        &[
            ("exp", json!(now + 300)),
            ("iat", json!(now)),
            ("nbf", json!(now)),
        ],
    );
    // The forger works: what it signs with the node's key is accepted, so each forgery below
    // is refused for what it breaks.
    let ours = jwt::sign(Algorithm::ES256, &kid, &key, &fresh);
    assert_eq!(
        s.status(path, Some(&bearer(&ours))),
        404,
        "a token signed here with the node's key"
    );

    let public = rcgen::KeyPair::from_pem(&pem).expect("the key pair");
    let spki = rcgen::PublicKeyData::subject_public_key_info(&public);
    let public_pem = EncodingKey::from_secret(public.public_key_pem().as_bytes());
    let other = EncodingKey::from_ec_pem(signing_key_pem().as_bytes()).expect("another key");
    let expired = [
        ("exp", json!(now - 3600)),
        ("iat", json!(now - 7200)),
        ("nbf", json!(now - 7200)),
    ];
    let early = [("exp", json!(now + 7200)), ("nbf", json!(now + 3600))];
    let all = json!([{"type": "repository", "name": "tls/forged", "actions": ["*"]}]);
    let forgeries = [
        (
            "expired an hour ago",
            jwt::sign(Algorithm::ES256, &kid, &key, &jwt::with(&fresh, &expired)),
        ),
        (
            "valid only in an hour",
            jwt::sign(Algorithm::ES256, &kid, &key, &jwt::with(&fresh, &early)),
        ),
        (
            "for another service",
            jwt::sign(
                Algorithm::ES256,
                &kid,
                &key,
                &jwt::with(&fresh, &[("aud", json!("other"))]),
            ),
        ),
        ("alg none", jwt::unsigned(&kid, &fresh)),
        (
            "HS256 keyed with the public key's PEM",
            jwt::sign(Algorithm::HS256, &kid, &public_pem, &fresh),
        ),
        (
            "HS256 keyed with the public key's DER",
            jwt::sign(Algorithm::HS256, &kid, &EncodingKey::from_secret(&spki), &fresh),
        ),
        (
            "signed by another key under the node's kid",
            jwt::sign(Algorithm::ES256, &kid, &other, &fresh),
        ),
        (
            "claiming more access than issued",
            jwt::tampered(&real, &jwt::with(&claims, &[("access", all)])),
        ),
    ];
    for (what, token) in &forgeries {
        for p in [path, "/v2/"] {
            let resp = s.get(p, Some(&bearer(token)));
            let challenge = resp
                .headers()
                .get("WWW-Authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert_eq!(resp.status().as_u16(), 401, "a token {what}, GET {p}");
            assert!(
                challenge.starts_with("Bearer realm=") && challenge.contains("invalid_token"),
                "a token {what}: challenge {challenge:?}"
            );
        }
    }
}

/// Keep `kept` busy (a request every pass, which must succeed) while waiting until a new
/// connection trusting only `config`'s CA is shown `expected`; returns how long that took.
fn wait_new_certificate(
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
    expected: &[u8],
    kept: &mut tls::TlsStream,
) -> Duration {
    let ready = tls::get_request(addr, "/ready");
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(15) {
        let r = tls::exchange(kept, &ready).expect("the connection opened before the rotation");
        assert_eq!(r.status, 200, "the connection opened before the rotation");
        match tls::connect(addr, "127.0.0.1", config) {
            Ok(mut fresh) if tls::peer_leaf(&fresh) == expected => {
                let r = tls::exchange(&mut fresh, &ready).expect("a request on a new connection");
                assert_eq!(r.status, 200);
                return started.elapsed();
            }
            Ok(_) => last = "the previous certificate".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("new connections did not get the rotated certificate within 15 s; last: {last}");
}

#[test]
fn a_rotated_certificate_reaches_new_connections_while_an_open_one_carries_on() {
    let mut s = SecuredNode::start("rotation", "127.0.0.1", Access::Open, None);
    let addr = s.node.host();
    let ready = tls::get_request(&addr, "/ready");
    let old = Arc::new(client_config(&[&s.ca.cert_pem], None));
    let mut kept = tls::connect(&addr, "127.0.0.1", &old).expect("a connection before the rotation");
    assert_eq!(tls::exchange(&mut kept, &ready).expect("GET /ready").status, 200);
    let mut requests_on_kept = 1;

    // A new CA: new connections must trust it, and only it.
    let ca2 = Ca::new("IPCR rotated CA");
    let new = Arc::new(client_config(&[&ca2.cert_pem], None));
    assert!(
        tls::connect(&addr, "127.0.0.1", &new).is_err(),
        "the new CA is trusted before the rotation"
    );
    let second = ca2.issue("ipcr node, second", &["127.0.0.1", "localhost"]);
    second.write(&s.cert, &s.key);
    let took = wait_new_certificate(&addr, &new, &second.der, &mut kept);
    eprintln!("new CA served to new connections {took:?} after the files changed");
    assert!(took < Duration::from_secs(5), "the rotation took {took:?}");
    let refused = tls::connect(&addr, "127.0.0.1", &old);
    assert!(
        refused.is_err(),
        "a client trusting only the old CA still connects"
    );

    // Same CA, new serial; the key lands first. A key that does not match the certificate is
    // not taken: for longer than the node's recheck interval, new connections still get the
    // second certificate.
    let third = ca2.issue("ipcr node, third", &["127.0.0.1", "localhost"]);
    cluster_tests::pki::write_atomically(&s.key, third.key_pem.as_bytes());
    let half = Instant::now();
    while half.elapsed() < Duration::from_millis(2500) {
        let mut fresh = tls::connect(&addr, "127.0.0.1", &new)
            .unwrap_or_else(|e| panic!("a new connection while only the key changed: {e}"));
        assert!(
            tls::peer_leaf(&fresh) == second.der,
            "a certificate whose key is not on disk yet was served (or the old pair dropped)"
        );
        assert_eq!(tls::exchange(&mut fresh, &ready).expect("GET /ready").status, 200);
        assert_eq!(
            tls::exchange(&mut kept, &ready).expect("kept connection").status,
            200
        );
        requests_on_kept += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster_tests::pki::write_atomically(&s.cert, third.cert_pem.as_bytes());
    let took = wait_new_certificate(&addr, &new, &third.der, &mut kept);
    eprintln!("new serial served to new connections {took:?} after the pair was complete");

    // The connection opened first carried on through both rotations, on its own certificate.
    assert_eq!(
        tls::exchange(&mut kept, &ready).expect("kept connection").status,
        200
    );
    requests_on_kept += 1;
    assert!(tls::peer_leaf(&kept) != second.der);
    assert!(
        requests_on_kept > 10,
        "only {requests_on_kept} requests on the kept connection"
    );
    let log = s.node.process().log();
    assert!(
        log.contains("TLS certificate reloaded"),
        "no reload logged:\n{log}"
    );
}

#[test]
fn with_clientcas_a_client_without_a_certificate_of_those_cas_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_ca = Ca::new("IPCR server CA");
    let client_ca = Ca::new("IPCR client CA");
    let (cert, key) = (dir.path().join("node.crt"), dir.path().join("node.key"));
    server_ca
        .issue("ipcr node", &["127.0.0.1", "localhost"])
        .write(&cert, &key);
    let clients = client_ca.write(&dir.path().join("clients.pem"));
    let mut node = SecureNode::new("clientcas", "127.0.0.1");
    // A list: the environment cannot spell it, the YAML file can.
    node.config_yaml(&format!(
        "http:\n  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n    minimumtls: tls1.3\n",
        cert.display(),
        key.display(),
        clients.display()
    ));
    let alice = client_ca.issue("alice", &["alice.clients.test"]);
    let with_cert = || client_config(&[&server_ca.cert_pem], Some(&alice));
    let client = https_client(with_cert());
    node.start(&client);
    let addr = node.host();

    let ok = client
        .get(format!("{}/v2/", node.base_url()))
        .send()
        .unwrap_or_else(|e| panic!("GET /v2/ with a client certificate: {}", chain(&e)));
    assert_eq!(ok.status().as_u16(), 200);

    let none = client_config(&[&server_ca.cert_pem], None);
    let err = https_client(none.clone())
        .get(format!("{}/v2/", node.base_url()))
        .send()
        .expect_err("a request without a client certificate was answered");
    eprintln!("reqwest without a client certificate: {}", chain(&err));
    let raw = tls::must_be_refused(&addr, none, "no client certificate");
    assert!(
        raw.to_lowercase().contains("certificate"),
        "not a certificate refusal: {raw}"
    );

    // A certificate, but from a CA the node does not list.
    let stranger = server_ca.issue("mallory", &["mallory.clients.test"]);
    tls::must_be_refused(
        &addr,
        client_config(&[&server_ca.cert_pem], Some(&stranger)),
        "a certificate of another CA",
    );

    // minimumtls: tls1.3 refuses TLS 1.2, even with a good certificate.
    let tls12 = tls::client_config_with(&[&rustls::version::TLS12], &[&server_ca.cert_pem], Some(&alice));
    tls::must_be_refused(&addr, tls12, "TLS 1.2 under minimumtls tls1.3");
    // And the good client still gets in afterwards.
    let again = https_client(with_cert())
        .get(format!("{}/v2/", node.base_url()))
        .send()
        .unwrap_or_else(|e| panic!("GET /v2/ again: {}", chain(&e)));
    assert_eq!(again.status().as_u16(), 200);
}
