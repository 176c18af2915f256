//! IPCR nodes serving TLS (`http.tls`, `cluster.tls`) and access control, as processes: their
//! readiness over https, the cluster's status over mutual TLS, and haproxy passing TLS through
//! to them (TCP mode), so that clients verify the nodes' own certificates.
//!
//! [`SecuredNode`] is the common single-node setup: a CA of its own, htpasswd users, and
//! optionally IPCR's own tokens.
//!
//! A [`SecureNode`] is configured by `REGISTRY_*` variables and, for what the environment
//! cannot spell (lists such as `http.tls.clientcas`), a YAML file. [`crate::Node`] probes
//! `/ready` in plain HTTP, which a TLS port does not answer, hence this sibling. Only the TLS
//! tests call this module; helpers that wait are `wait_*`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ipcr_proto::admin::ClusterStatus;

use crate::credentials::must_htpasswd;
use crate::pki::{Ca, signing_key_pem};
use crate::tls::{client_config, https_client};

use crate::node::{CLUSTER_SECRET, READY_TIMEOUT, node_binary, serve};
use crate::process::Process;

/// How long a cluster of TLS nodes may take to form.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A port on `ip` that the OS just handed out (see [`crate::node::free_port`]).
pub fn free_port_on(ip: &str) -> u16 {
    TcpListener::bind(format!("{ip}:0"))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("binding {ip}:0: {e}"))
        .port()
}

/// A node process whose registry port (and possibly cluster port) speaks TLS.
pub struct SecureNode {
    process: Process,
    bin: PathBuf,
    ip: String,
    port: u16,
    cluster_port: u16,
    env: Vec<(String, String)>,
    config: Option<PathBuf>,
}

impl SecureNode {
    /// A node not started yet, its registry port on `ip` and its cluster port on 127.0.0.1,
    /// so that a test can name its addresses (a token realm, certificates) before it starts.
    pub fn new(name: &str, ip: &str) -> SecureNode {
        SecureNode {
            process: Process::new(name, "ipcr-tls-"),
            bin: node_binary(),
            ip: ip.to_string(),
            port: free_port_on(ip),
            cluster_port: free_port_on("127.0.0.1"),
            env: Vec::new(),
            config: None,
        }
    }

    /// Set `REGISTRY_<key>` for every start.
    pub fn env(&mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        let value = value.as_ref().to_string_lossy().into_owned();
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value));
        self
    }

    /// Start with this YAML configuration file (the environment still overrides it).
    pub fn config_yaml(&mut self, yaml: &str) -> &mut Self {
        let path = self.process.root().join("config.yml");
        std::fs::write(&path, yaml).expect("writing config.yml");
        self.config = Some(path);
        self
    }

    /// Spawn the process and return at once.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        let data = self.process.data_dir();
        serve(&mut cmd, &self.host(), &self.cluster_addr(), &data, &self.env);
        if let Some(config) = &self.config {
            cmd.arg(config);
        }
        let place = format!("on {} (cluster {})", self.host(), self.cluster_addr());
        self.process.spawn(cmd, &place);
    }

    /// Spawn the process and wait until `/ready` answers 200 to `probe`.
    pub fn start(&mut self, probe: &reqwest::blocking::Client) {
        self.spawn();
        self.wait_ready(probe, READY_TIMEOUT);
    }

    /// Wait until `GET https://<host>/ready` answers 200 to `probe` (a client trusting the
    /// node's CA, with a client certificate when the node asks for one). Panics, and so prints
    /// the log, when the process exits first or `timeout` passes.
    pub fn wait_ready(&mut self, probe: &reqwest::blocking::Client, timeout: Duration) {
        let url = format!("{}/ready", self.base_url());
        let deadline = Instant::now() + timeout;
        loop {
            assert!(
                self.process.is_running(),
                "{} exited before it was ready",
                self.name()
            );
            let last = match probe.get(&url).send() {
                Ok(r) if r.status() == reqwest::StatusCode::OK => return,
                Ok(r) => format!("status {}", r.status()),
                Err(e) => format!("error: {}", crate::secure::chain(&e)),
            };
            assert!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}; last {url}: {last}",
                self.name()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The name in messages.
    pub fn name(&self) -> &str {
        self.process.name()
    }

    /// `<ip>:<port>` of the registry port, as clients name it.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `https://<ip>:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.host())
    }

    /// The registry port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<cluster port>`.
    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    /// `https://127.0.0.1:<cluster port>`: the URL the node advertises with `cluster.tls`.
    pub fn cluster_url(&self) -> String {
        format!("https://{}", self.cluster_addr())
    }

    /// The process: its log, signals, directory.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// An error with its causes, one after the other (`reqwest` hides the TLS reason in them).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `GET <cluster url>/cluster/status` with the cluster secret, over `client` (mutual TLS).
pub fn cluster_status(
    client: &reqwest::blocking::Client,
    cluster_url: &str,
) -> Result<ClusterStatus, String> {
    let resp = client
        .get(format!("{cluster_url}/cluster/status"))
        .bearer_auth(CLUSTER_SECRET)
        .timeout(Duration::from_secs(5))
        .send()
        .map_err(|e| chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.json().map_err(|e| e.to_string())
}

/// Wait until every node of `cluster_urls` reports `n` voters and the same leader.
pub fn wait_voters(client: &reqwest::blocking::Client, cluster_urls: &[String], n: usize) -> ClusterStatus {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    loop {
        let agreed = (|| {
            let mut seen: Option<ClusterStatus> = None;
            for url in cluster_urls {
                let s = cluster_status(client, url)?;
                let voters = s.members.iter().filter(|m| m.voter).count();
                if s.leader.is_none() || voters != n {
                    return Err(format!("{url}: {voters} voters, leader {:?}", s.leader));
                }
                if seen.as_ref().is_some_and(|p| p.leader != s.leader) {
                    return Err("nodes disagree on the leader".to_string());
                }
                seen = Some(s);
            }
            seen.ok_or_else(|| "no node".to_string())
        })();
        match agreed {
            Ok(s) => return s,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the cluster did not reach {n} voters within {CLUSTER_TIMEOUT:?}: {e}"
            ),
        }
        std::thread::sleep(POLL);
    }
}

/// haproxy in TCP mode in front of TLS registry ports: it passes the TLS bytes through, so a
/// client verifies the node's own certificate (valid for the balancer's address too) and the
/// node sees the client's credentials. Health checks ask `/ready` over TLS, verifying the
/// nodes' certificates against the test CA.
pub struct TlsPassthrough {
    host: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl TlsPassthrough {
    /// Start haproxy on `host` (`ip:port`, e.g. from [`free_port_on`]: the nodes' token realm
    /// names it before it starts) in front of `backends` (`ip:port` each), checking them with
    /// `ca_file`, and wait until `probe` gets an HTTP answer through it.
    pub fn start(
        host: &str,
        backends: &[String],
        ca_file: &Path,
        probe: &reqwest::blocking::Client,
    ) -> TlsPassthrough {
        let dir = tempfile::Builder::new()
            .prefix("ipcr-haproxy-tls-")
            .tempdir()
            .expect("tempdir");
        let host = host.to_string();
        let mut config = format!(
            "global\n  maxconn 2000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 600s\n  timeout server 600s\n  option redispatch\n  retries 2\n\nfrontend registry\n  bind {host}\n  default_backend nodes\n\nbackend nodes\n  balance roundrobin\n  option httpchk GET /ready\n  http-check expect status 200\n  default-server inter 300ms fall 2 rise 2 check-ssl verify required ca-file {}\n",
            ca_file.display()
        );
        for (i, b) in backends.iter().enumerate() {
            config.push_str(&format!("  server n{i} {b} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("writing haproxy.cfg");
        let log = File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting haproxy (apt-get install haproxy)");
        let b = TlsPassthrough {
            host,
            child: Some(child),
            dir,
        };
        b.wait_answering(probe);
        b
    }

    fn wait_answering(&self, probe: &reqwest::blocking::Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/v2/", self.base_url());
        loop {
            let last = match probe.get(&url).send() {
                // With auth on, `/v2/` asks for credentials: an answer all the same.
                Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    return;
                }
                Ok(r) => format!("status {}", r.status()),
                Err(e) => chain(&e),
            };
            assert!(
                Instant::now() < deadline,
                "haproxy did not answer {url} within 20 s: {last}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// `<ip>:<port>`.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// `https://<ip>:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://{}", self.host)
    }

    /// What haproxy printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for TlsPassthrough {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- haproxy log ----\n{}---- end of haproxy log ----",
                self.log()
            );
        }
    }
}

/// An htpasswd user of every [`SecuredNode`].
pub const ALICE: (&str, &str) = ("alice", "alice-Secret-9");
/// Another htpasswd user of every [`SecuredNode`].
pub const BOB: (&str, &str) = ("bob", "bob-Secret-7");
/// The token service (audience) of the nodes' tokens.
pub const SERVICE: &str = "ipcr-tls-test";
/// The issuer of the nodes' tokens.
pub const ISSUER: &str = "ipcr-tls-test-issuer";
/// The manifest media types the tests accept.
pub const MANIFEST_TYPES: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// How a [`SecuredNode`] authenticates callers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// None at all.
    Open,
    /// htpasswd users, Basic authentication.
    Basic,
    /// htpasswd users, Bearer tokens from the node's own token endpoint.
    Tokens,
}

/// One node with TLS on its registry port (a CA of its own) and `Access`, set up the common
/// way: what most TLS and access-control tests need.
pub struct SecuredNode {
    /// The node.
    pub node: SecureNode,
    /// The CA of its certificate.
    pub ca: Ca,
    /// Its certificate file (`http.tls.certificate`), to rotate.
    pub cert: PathBuf,
    /// Its key file (`http.tls.key`), to rotate.
    pub key: PathBuf,
    /// The token signing key file (written with [`Access::Tokens`] only).
    pub signing_key: PathBuf,
    /// A client trusting the test CA only.
    pub client: reqwest::blocking::Client,
    dir: tempfile::TempDir,
}

impl SecuredNode {
    /// A node on `ip` with a certificate for `ip`, 127.0.0.1 and localhost, and `auth`.
    /// `htpasswd` is the tool, needed unless `auth` is [`Access::Open`].
    pub fn start(name: &str, ip: &str, auth: Access, htpasswd: Option<&Path>) -> SecuredNode {
        let dir = tempfile::Builder::new()
            .prefix("ipcr-tls-files-")
            .tempdir()
            .expect("tempdir");
        let ca = Ca::new("IPCR test CA");
        let (cert, key) = (dir.path().join("node.crt"), dir.path().join("node.key"));
        ca.issue("ipcr node", &[ip, "127.0.0.1", "localhost"])
            .write(&cert, &key);
        let mut node = SecureNode::new(name, ip);
        node.env("REGISTRY_HTTP_TLS_CERTIFICATE", &cert)
            .env("REGISTRY_HTTP_TLS_KEY", &key);
        let signing_key = dir.path().join("signing.pem");
        if auth != Access::Open {
            let users = dir.path().join("htpasswd");
            must_htpasswd(htpasswd.expect("htpasswd"), &users, &[ALICE, BOB]);
            node.env("REGISTRY_AUTH_HTPASSWD_PATH", &users)
                .env("REGISTRY_AUTH_HTPASSWD_REALM", "IPCR TLS test");
        }
        if auth == Access::Tokens {
            std::fs::write(&signing_key, signing_key_pem()).expect("writing the signing key");
            let realm = format!("{}/auth/token", node.base_url());
            node.env("REGISTRY_AUTH_TOKEN_REALM", realm)
                .env("REGISTRY_AUTH_TOKEN_SERVICE", SERVICE)
                .env("REGISTRY_AUTH_TOKEN_ISSUER", ISSUER)
                .env("REGISTRY_AUTH_TOKEN_SIGNINGKEY", &signing_key);
        }
        let client = https_client(client_config(&[&ca.cert_pem], None));
        node.start(&client);
        SecuredNode {
            node,
            ca,
            cert,
            key,
            signing_key,
            client,
            dir,
        }
    }

    /// A directory holding the CA as `ca.crt` (skopeo's `--cert-dir`, docker's `certs.d`).
    pub fn cert_dir(&self) -> PathBuf {
        let d = self.dir.path().join("certs");
        std::fs::create_dir_all(&d).expect("cert dir");
        self.ca.write(&d.join("ca.crt"));
        d
    }

    /// The token realm: the node's own token endpoint.
    pub fn realm(&self) -> String {
        format!("{}/auth/token", self.node.base_url())
    }

    /// `GET <path>` with `Authorization: <authorization>` (none when `None`): the status.
    pub fn status(&self, path: &str, authorization: Option<&str>) -> u16 {
        self.get(path, authorization).status().as_u16()
    }

    /// `GET <path>` with `Authorization: <authorization>` (none when `None`).
    pub fn get(&self, path: &str, authorization: Option<&str>) -> reqwest::blocking::Response {
        let mut req = self
            .client
            .get(format!("{}{path}", self.node.base_url()))
            .header("Accept", MANIFEST_TYPES);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        req.send().unwrap_or_else(|e| panic!("GET {path}: {}", chain(&e)))
    }
}

/// A `Basic` Authorization value.
pub fn basic((user, password): (&str, &str)) -> String {
    let raw = format!("{user}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}
