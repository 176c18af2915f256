//! Three real nodes secured end to end, behind haproxy passing TLS through to them:
//!
//! - the nodes talk to each other over mutual TLS (`cluster.tls`: one CA, a certificate per
//!   node for 127.0.0.1), serve TLS on their registry ports (another CA), authenticate
//!   htpasswd users and issue IPCR's own tokens, all with one signing key;
//! - `docker login`, `push`, `pull`, `run` and `logout` through the balancer, the token realm
//!   on the balancer, the CA trusted through the Engine's `certs.d`; `skopeo` through it too;
//! - a token from node 1's token endpoint is accepted by nodes 2 and 3 directly, for manifests
//!   and for blobs they may have to fetch from a peer over the cluster port;
//! - the cluster port refuses plaintext HTTP (no answer at all), TLS clients without a
//!   certificate, and certificates of another CA; the secret is still required with TLS;
//! - `ipcr-node status --node https://... --cacert --cert --key --secret` lists the three
//!   members at their https:// addresses.
//!
//! Certificates and keys are generated here; nothing secret is committed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster_tests::clients::{Docker, SKOPEO_TIMEOUT};
use cluster_tests::credentials::{
    DockerSession, docker_verified_ip, fetch_token, must_build_and_push, must_docker_login, must_fail_saying,
    must_htpasswd, must_pull_and_run,
};
use cluster_tests::node::{CLUSTER_SECRET, node_binary};
use cluster_tests::oci::{self, Layer, Layout, Tar};
use cluster_tests::pki::{Ca, Leaf, signing_key_pem};
use cluster_tests::secure::{
    ALICE, BOB, ISSUER, MANIFEST_TYPES, SERVICE, SecureNode, TlsPassthrough, chain, cluster_status,
    free_port_on, wait_voters,
};
use cluster_tests::tls::{self, client_config, https_client};
use cluster_tests::tools::{must_run, require_docker, require_static_busybox, require_tool, run};

/// Three TLS nodes with auth, the balancer, and the PKI they were given.
struct Secured {
    nodes: Vec<SecureNode>,
    balancer: TlsPassthrough,
    registry_ca: Ca,
    cluster_ca: Ca,
    /// The operator's client certificate for the cluster port (issued by the cluster CA).
    operator: Leaf,
    files: tempfile::TempDir,
    /// Trusts the registry CA only.
    client: reqwest::blocking::Client,
    /// Trusts the cluster CA, shows the operator's certificate.
    cluster_client: reqwest::blocking::Client,
}

impl Secured {
    /// Start three nodes (node0 bootstraps, the others join it over mutual TLS) and haproxy
    /// on `ip`, and wait until the three are voters.
    fn start(ip: &str, htpasswd: &Path) -> Secured {
        let files = tempfile::Builder::new()
            .prefix("ipcr-cluster-tls-files-")
            .tempdir()
            .expect("tempdir");
        let at = |name: &str| files.path().join(name);
        let registry_ca = Ca::new("IPCR registry CA");
        let cluster_ca = Ca::new("IPCR cluster CA");
        let cluster_ca_file = cluster_ca.write(&at("cluster-ca.pem"));
        let registry_ca_file = registry_ca.write(&at("registry-ca.pem"));
        let users = at("htpasswd");
        must_htpasswd(htpasswd, &users, &[ALICE, BOB]);
        let signing = at("signing.pem");
        std::fs::write(&signing, signing_key_pem()).expect("signing key");
        let balancer_host = format!("{ip}:{}", free_port_on(ip));
        let client = https_client(client_config(&[&registry_ca.cert_pem], None));

        let mut nodes: Vec<SecureNode> = Vec::new();
        for i in 0..3 {
            let mut node = SecureNode::new(&format!("node{i}"), "127.0.0.1");
            let (cert, key) = (at(&format!("node{i}.crt")), at(&format!("node{i}.key")));
            registry_ca
                .issue(&format!("node{i}"), &[ip, "127.0.0.1", "localhost"])
                .write(&cert, &key);
            let (peer_cert, peer_key) = (at(&format!("peer{i}.crt")), at(&format!("peer{i}.key")));
            cluster_ca
                .issue(&format!("node{i} peer"), &["127.0.0.1"])
                .write(&peer_cert, &peer_key);
            node.env("REGISTRY_HTTP_TLS_CERTIFICATE", &cert)
                .env("REGISTRY_HTTP_TLS_KEY", &key)
                .env("REGISTRY_CLUSTER_TLS_CERTIFICATE", &peer_cert)
                .env("REGISTRY_CLUSTER_TLS_KEY", &peer_key)
                .env("REGISTRY_CLUSTER_TLS_CA", &cluster_ca_file)
                .env("REGISTRY_AUTH_HTPASSWD_PATH", &users)
                .env("REGISTRY_AUTH_HTPASSWD_REALM", "IPCR cluster TLS test")
                .env(
                    "REGISTRY_AUTH_TOKEN_REALM",
                    format!("https://{balancer_host}/auth/token"),
                )
                .env("REGISTRY_AUTH_TOKEN_SERVICE", SERVICE)
                .env("REGISTRY_AUTH_TOKEN_ISSUER", ISSUER)
                .env("REGISTRY_AUTH_TOKEN_SIGNINGKEY", &signing);
            if let Some(first) = nodes.first() {
                node.env("REGISTRY_CLUSTER_JOIN", first.cluster_url());
            }
            node.start(&client);
            nodes.push(node);
        }
        let operator = cluster_ca.issue("operator", &["operator.cluster.test"]);
        let cluster_client = https_client(client_config(&[&cluster_ca.cert_pem], Some(&operator)));
        let urls: Vec<String> = nodes.iter().map(|n| n.cluster_url()).collect();
        wait_voters(&cluster_client, &urls, 3);
        let backends: Vec<String> = nodes.iter().map(|n| n.host()).collect();
        let balancer = TlsPassthrough::start(&balancer_host, &backends, &registry_ca_file, &client);
        Secured {
            nodes,
            balancer,
            registry_ca,
            cluster_ca,
            operator,
            files,
            client,
            cluster_client,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    /// A directory holding the registry CA as `ca.crt`, for skopeo.
    fn cert_dir(&self) -> PathBuf {
        let d = self.file("certs");
        std::fs::create_dir_all(&d).expect("cert dir");
        self.registry_ca.write(&d.join("ca.crt"));
        d
    }

    /// `GET <base><path>` with a Bearer token: status and `Docker-Content-Digest`.
    fn get_with(&self, base: &str, path: &str, token: &str) -> (u16, Option<String>) {
        let resp = self
            .client
            .get(format!("{base}{path}"))
            .header("Accept", MANIFEST_TYPES)
            .bearer_auth(token)
            .send()
            .unwrap_or_else(|e| panic!("GET {base}{path}: {}", chain(&e)));
        let digest = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (resp.status().as_u16(), digest)
    }
}

const DOCKERFILE: &str = "FROM scratch\n\
COPY busybox /bin/busybox\n\
COPY marker /marker\n\
CMD [\"/bin/busybox\",\"echo\",\"hello from a secured ipcr cluster\"]\n";

#[test]
fn docker_logs_in_pushes_and_pulls_through_a_tls_passthrough_balancer_to_three_nodes() {
    let (Some(docker_bin), Some(busybox), Some(htpasswd), Some(_)) = (
        require_docker(),
        require_static_busybox(),
        require_tool("htpasswd"),
        require_tool("haproxy"),
    ) else {
        return;
    };
    let verified = docker_verified_ip();
    if verified.is_none() {
        eprintln!(
            "no docker0 bridge: the balancer is on 127.0.0.1, which the Engine treats as insecure (it does not verify the certificate there)"
        );
    }
    let ip = verified.clone().unwrap_or_else(|| "127.0.0.1".into());
    let s = Secured::start(&ip, &htpasswd);
    let host = s.balancer.host();
    let session = DockerSession::new(&docker_bin);
    let Some(_trust) = must_docker_login(
        &session,
        &host,
        &s.registry_ca.cert_pem,
        verified.is_some(),
        ALICE,
    ) else {
        return;
    };
    let mut docker = Docker::new(docker_bin);
    let tag = format!("{host}/cluster/busybox:v1");
    let marker = format!("cluster {host}\n");
    let (id, digest) = must_build_and_push(&mut docker, &session, &busybox, DOCKERFILE, &marker, &tag);

    // Every node serves it, to a token its own endpoint did not issue (the balancer's pick).
    let token = fetch_token(
        &s.client,
        &format!("{}/auth/token", s.balancer.base_url()),
        Some(ALICE),
        SERVICE,
        "repository:cluster/busybox:pull",
    )
    .expect("a token");
    for n in &s.nodes {
        let path = format!("/v2/cluster/busybox/manifests/{digest}");
        assert_eq!(
            s.get_with(&n.base_url(), &path, &token),
            (200, Some(digest.clone())),
            "{} serves the pushed manifest",
            n.name()
        );
    }

    let container = format!("ipcr-cluster-tls-{}", s.nodes[0].port());
    must_pull_and_run(
        &mut docker,
        &session,
        &tag,
        &id,
        &container,
        "hello from a secured ipcr cluster",
    );
    session.must(&["logout", &host]);
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

/// `ipcr-node <args>`, whatever its outcome.
fn ipcr_node(args: &[&str]) -> cluster_tests::tools::Output {
    run(
        Command::new(node_binary())
            .args(args)
            .env_remove("REGISTRY_CLUSTER_SECRET"),
        Duration::from_secs(30),
    )
}

#[test]
fn tokens_work_on_every_node_and_the_cluster_port_admits_only_peers_of_its_ca() {
    let (Some(skopeo), Some(htpasswd), Some(_)) = (
        require_tool("skopeo"),
        require_tool("htpasswd"),
        require_tool("haproxy"),
    ) else {
        return;
    };
    let s = Secured::start("127.0.0.1", &htpasswd);

    // skopeo pushes through the balancer, with the token flow.
    let work = tempfile::tempdir().expect("tempdir");
    let src = Layout::create(&work.path().join("src"));
    let layers = [1u64, 2, 3].map(|seed| Layer {
        tar: Tar::new()
            .dir("data")
            .file(&format!("data/{seed}.bin"), &oci::noise(seed, 150_000), 0o644)
            .finish(),
        gzip: true,
    });
    let manifest = src.put_image("linux", "amd64", &layers, &["/bin/true"]);
    src.set_refs(&[("v1", &manifest)]);
    let certs = s.cert_dir();
    let remote = format!("docker://{}/cluster/skopeo:v1", s.balancer.host());
    let creds = format!("{}:{}", ALICE.0, ALICE.1);
    let pushed = must_run(
        Command::new(&skopeo).args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--dest-cert-dir",
            certs.to_str().expect("utf-8"),
            "--dest-creds",
            &creds,
            &format!("oci:{}:v1", src.root().display()),
            &remote,
        ]),
        SKOPEO_TIMEOUT,
    );
    drop(pushed);

    // A token from node 0's own endpoint...
    let token = fetch_token(
        &s.client,
        &format!("{}/auth/token", s.nodes[0].base_url()),
        Some(ALICE),
        SERVICE,
        "repository:cluster/skopeo:pull",
    )
    .expect("a token from node0");
    let blobs: Vec<String> = src
        .must_reachable(&manifest)
        .into_keys()
        .filter(|d| *d != manifest.digest)
        .collect();
    assert_eq!(blobs.len(), 4, "a config and three layers");
    // ...is accepted by nodes 1 and 2, for the manifest and for every blob (which a node
    // without a copy fetches from a peer, over the cluster port's mutual TLS).
    for n in &s.nodes[1..] {
        let base = n.base_url();
        let path = format!("/v2/cluster/skopeo/manifests/{}", manifest.digest);
        assert_eq!(
            s.get_with(&base, &path, &token),
            (200, Some(manifest.digest.clone())),
            "{}: the manifest",
            n.name()
        );
        for b in &blobs {
            let (status, _) = s.get_with(&base, &format!("/v2/cluster/skopeo/blobs/{b}"), &token);
            assert_eq!(status, 200, "{}: blob {b}", n.name());
        }
        // It grants what it names, nothing more.
        let (status, _) = s.get_with(&base, "/v2/cluster/other/tags/list", &token);
        assert_eq!(status, 401, "{}: another repository", n.name());
    }

    // The cluster port: plaintext gets no answer at all.
    let ca_only = client_config(&[&s.cluster_ca.cert_pem], None);
    for n in &s.nodes {
        let addr = n.cluster_addr();
        let mut tcp = tls::plain_connect(&addr).expect("connecting");
        let request = format!(
            "GET /cluster/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {CLUSTER_SECRET}\r\n\r\n"
        );
        let _ = std::io::Write::write_all(&mut tcp, request.as_bytes());
        let answer = tls::read_until_closed(&mut tcp)
            .unwrap_or_else(|e| panic!("{}: plaintext not closed: {e}", n.name()));
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}: the cluster port answered plaintext HTTP: {}",
            n.name(),
            String::from_utf8_lossy(&answer)
        );
        let plain = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
            .get(format!("http://{addr}/cluster/status"))
            .bearer_auth(CLUSTER_SECRET)
            .send();
        assert!(plain.is_err(), "{}: plaintext HTTP answered: {plain:?}", n.name());

        // TLS without a client certificate, or with one of another CA: refused.
        let err = tls::must_be_refused(&addr, ca_only.clone(), "no client certificate");
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        let stranger = s.registry_ca.issue("stranger", &["127.0.0.1"]);
        tls::must_be_refused(
            &addr,
            client_config(&[&s.cluster_ca.cert_pem], Some(&stranger)),
            "a certificate of the registry CA",
        );
        // The right certificate does not replace the secret.
        let wrong = s
            .cluster_client
            .get(format!("{}/cluster/status", n.cluster_url()))
            .bearer_auth("not-the-secret")
            .send()
            .unwrap_or_else(|e| panic!("{}: {}", n.name(), chain(&e)));
        assert_eq!(wrong.status().as_u16(), 401, "{}: a wrong secret", n.name());
        let status = cluster_status(&s.cluster_client, &n.cluster_url())
            .unwrap_or_else(|e| panic!("{}: {e}", n.name()));
        assert_eq!(status.members.len(), 3, "{}: members", n.name());
    }

    // The operator's tool, over mutual TLS.
    let (ca, cert, key) = (
        s.cluster_ca.write(&s.file("ca.pem")),
        s.file("operator.pem"),
        s.file("operator.key"),
    );
    s.operator.write(&cert, &key);
    let node = s.nodes[1].cluster_url();
    let path = |p: &Path| p.to_str().expect("utf-8").to_string();
    let (ca, cert, key) = (path(&ca), path(&cert), path(&key));
    let status = ipcr_node(&[
        "status",
        "--node",
        &node,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--secret",
        CLUSTER_SECRET,
    ]);
    assert!(status.status.success(), "{}", status.describe());
    let table = status.stdout_text();
    assert_eq!(
        table.lines().filter(|l| l.contains(" voter ")).count(),
        3,
        "three voters in:\n{table}"
    );
    for n in &s.nodes {
        assert!(
            table.contains(&n.cluster_url()),
            "{} ({}) missing from:\n{table}",
            n.name(),
            n.cluster_url()
        );
    }
    let json = ipcr_node(&[
        "status",
        "--json",
        "--node",
        &node,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--secret",
        CLUSTER_SECRET,
    ]);
    let parsed: ipcr_proto::admin::ClusterStatus =
        serde_json::from_slice(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.describe()));
    assert_eq!(parsed.members.len(), 3);
    assert!(
        parsed
            .members
            .iter()
            .all(|m| m.addr.starts_with("https://127.0.0.1:"))
    );
    let without_cert = ipcr_node(&[
        "status",
        "--node",
        &node,
        "--cacert",
        &ca,
        "--secret",
        CLUSTER_SECRET,
    ]);
    must_fail_saying(
        &without_cert,
        "ipcr-node status without a client certificate",
        &["certificate", "handshake", "alert"],
    );
}
