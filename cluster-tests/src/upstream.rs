//! Source registries for the tests that copy from one: a real distribution 2.8.2 (Debian's
//! `docker-registry`) on a loopback port, open, behind htpasswd, or behind Docker's token flow,
//! and the token server that flow needs, speaking it as docker_auth does.
//!
//! Only the test binaries that read from an upstream call it; [`crate::seed`] puts content in
//! one through a real client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::node::free_port;
use crate::process::Process;
use crate::tools::require_tool;

/// What distribution 2.8.2 adds to `exp` (and takes from `nbf`) before it refuses a token
/// (`registry/auth/token/token.go`, `Leeway`): a token is accepted until `exp + 60 s`.
pub const DISTRIBUTION_LEEWAY: Duration = Duration::from_secs(60);
/// How long an upstream may take from spawn to answering `/v2/`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The `service` (token audience) every [`TokenServer`] serves.
pub const SERVICE: &str = "upstream.cluster-tests";
/// The `iss` of every token a [`TokenServer`] signs.
pub const ISSUER: &str = "cluster-tests-token-server";

/// What a [`TokenServer`] grants, and for how long.
///
/// distribution 2.8.2 accepts a token until [`DISTRIBUTION_LEEWAY`] (60 s) after its `exp`:
/// with `backdate_exp` zero, a test that wants a token refused waits `lifetime + 60 s`. Setting
/// `backdate_exp` to [`DISTRIBUTION_LEEWAY`] makes distribution refuse a token just when the
/// client was told it expires (`expires_in`), which keeps such tests short.
#[derive(Clone, Debug)]
pub struct TokenConfig {
    /// Users and their passwords; they get every action they ask for.
    pub users: Vec<(String, String)>,
    /// Whether a request without credentials gets `pull` (and only `pull`); otherwise it gets
    /// no action at all, and distribution refuses its token.
    pub anonymous_pull: bool,
    /// `expires_in` of every answer, and `exp - iat` of every token before `backdate_exp`.
    pub lifetime: Duration,
    /// Taken from `exp` only (not from `expires_in`, `nbf` nor `iat`).
    pub backdate_exp: Duration,
}

impl Default for TokenConfig {
    fn default() -> TokenConfig {
        TokenConfig {
            users: Vec::new(),
            anonymous_pull: false,
            lifetime: Duration::from_secs(300),
            backdate_exp: Duration::ZERO,
        }
    }
}

impl TokenConfig {
    /// Only `users` (`(name, password)`), the other fields at their defaults.
    pub fn users(users: &[(&str, &str)]) -> TokenConfig {
        TokenConfig {
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            ..TokenConfig::default()
        }
    }
}

#[derive(Default)]
struct Counters {
    issued: AtomicUsize,
    refused: AtomicUsize,
}

/// What every request handler shares.
struct Signer {
    config: Arc<std::sync::RwLock<TokenConfig>>,
    key: EncodingKey,
    kid: String,
    counters: Arc<Counters>,
}

/// Docker's token server, in the test process: `GET /token?service=..&scope=..` with optional
/// Basic credentials, and the OAuth2 password grant (`POST /token`). It signs ES256 JWTs named
/// by the libtrust `kid` of its key, which distribution trusts through
/// [`TokenServer::rootcertbundle`]. The `account` parameter is ignored. Stops on drop.
pub struct TokenServer {
    realm: String,
    dir: tempfile::TempDir,
    counters: Arc<Counters>,
    config: Arc<std::sync::RwLock<TokenConfig>>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Start a server on `127.0.0.1` and a port from the OS, with a fresh P-256 signing key.
    pub fn start(config: TokenConfig) -> TokenServer {
        let dir = tempfile::Builder::new()
            .prefix("ipcr-token-server-")
            .tempdir()
            .expect("token server directory");
        let key = rcgen::KeyPair::generate().expect("token signing key");
        let cert = rcgen::CertificateParams::new(vec!["cluster-tests-token-signer".to_string()])
            .expect("certificate parameters")
            .self_signed(&key)
            .expect("self-signing the token certificate");
        std::fs::write(dir.path().join("rootcertbundle.pem"), cert.pem()).expect("writing the bundle");
        let counters = Arc::new(Counters::default());
        let config = Arc::new(std::sync::RwLock::new(config));
        let signer = web::Data::new(Signer {
            config: config.clone(),
            key: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("an ES256 key"),
            kid: libtrust_kid(&rcgen::PublicKeyData::subject_public_key_info(&key)),
            counters: counters.clone(),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        let port = listener.local_addr().expect("token server address").port();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(signer.clone())
                        .route("/token", web::get().to(get_token))
                        .route("/token", web::post().to(post_token))
                })
                .workers(1)
                .disable_signals()
                .listen(listener)
                .expect("serving the token listener")
                .run();
                tx.send(server.handle()).expect("handing back the server handle");
                if let Err(e) = server.await {
                    eprintln!("token server: {e}");
                }
            });
        });
        TokenServer {
            realm: format!("http://127.0.0.1:{port}/token"),
            dir,
            counters,
            config,
            handle: rx.recv().expect("the token server started"),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`: `auth.token.realm`.
    pub fn realm(&self) -> String {
        self.realm.clone()
    }

    /// `auth.token.service`, the tokens' `aud`.
    pub fn service(&self) -> &str {
        SERVICE
    }

    /// `auth.token.issuer`, the tokens' `iss`.
    pub fn issuer(&self) -> &str {
        ISSUER
    }

    /// A self-signed certificate of the signing key: `auth.token.rootcertbundle`.
    pub fn rootcertbundle(&self) -> PathBuf {
        self.dir.path().join("rootcertbundle.pem")
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.counters.issued.load(Ordering::SeqCst)
    }

    /// Requests refused so far (unknown user, wrong password, unsupported grant).
    pub fn refused(&self) -> usize {
        self.counters.refused.load(Ordering::SeqCst)
    }

    /// Answer every later request by `config` (tokens issued before keep their claims): a test
    /// seeds with long-lived tokens, then makes them expire under the client it tests.
    pub fn reconfigure(&self, config: TokenConfig) {
        *self.config.write().expect("token config") = config;
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        futures::executor::block_on(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The libtrust key id of a public key (the `kid` distribution looks keys up by): the first
/// 240 bits of the SHA-256 of its DER SubjectPublicKeyInfo, base32, in groups of four.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    let (mut acc, mut bits, mut chars) = (0u32, 0u32, Vec::new());
    for &b in &hash[..30] {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            chars.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    let groups: Vec<String> = chars.chunks(4).map(|g| g.iter().collect()).collect();
    groups.join(":")
}

async fn get_token(signer: web::Data<Signer>, req: HttpRequest) -> HttpResponse {
    let params = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    signer.answer(basic_credentials(&req), &params)
}

/// The OAuth2 form (`grant_type=password`); the scopes come space-separated in one `scope`.
async fn post_token(signer: web::Data<Signer>, form: web::Form<Vec<(String, String)>>) -> HttpResponse {
    let params = form.into_inner();
    if param(&params, "grant_type") != Some("password") {
        signer.counters.refused.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::BadRequest().json(json!({"error": "unsupported_grant_type"}));
    }
    let credentials = param(&params, "username").map(|u| {
        (
            u.to_string(),
            param(&params, "password").unwrap_or_default().to_string(),
        )
    });
    signer.answer(credentials, &params)
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// `type:name:actions`, e.g. `repository:team/app:pull,push`.
fn parse_scope(scope: &str) -> Option<(&str, &str, Vec<&str>)> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((kind, name, actions.split(',').filter(|a| !a.is_empty()).collect()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
}

impl Signer {
    /// Authenticate, grant, sign: docker_auth's order. A wrong password is 401 whatever was
    /// asked; an anonymous request is answered, with what anonymous callers may do.
    fn answer(&self, credentials: Option<(String, String)>, params: &[(String, String)]) -> HttpResponse {
        let config = self.config.read().expect("token config").clone();
        let user = match credentials {
            None => None,
            Some((u, p)) if config.users.iter().any(|(a, b)| *a == u && *b == p) => Some(u),
            Some(_) => {
                self.counters.refused.fetch_add(1, Ordering::SeqCst);
                return HttpResponse::Unauthorized()
                    .insert_header(("WWW-Authenticate", "Basic realm=\"cluster-tests token server\""))
                    .json(json!({"details": "incorrect username or password"}));
            }
        };
        let access: Vec<Value> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split_whitespace())
            .filter_map(parse_scope)
            .map(|(kind, name, asked)| {
                let granted: Vec<&str> = match (&user, config.anonymous_pull) {
                    (Some(_), _) => asked,
                    (None, true) => asked.into_iter().filter(|a| *a == "pull").collect(),
                    (None, false) => Vec::new(),
                };
                json!({"type": kind, "name": name, "actions": granted})
            })
            .collect();
        let now = unix_now();
        let n = self.counters.issued.fetch_add(1, Ordering::SeqCst);
        let lifetime = config.lifetime.as_secs();
        let exp = (now + lifetime) as i64 - config.backdate_exp.as_secs() as i64;
        let claims = json!({
            "iss": ISSUER,
            "sub": user.unwrap_or_default(),
            "aud": SERVICE,
            "exp": exp,
            "nbf": now,
            "iat": now,
            "jti": format!("{now:x}-{n}"),
            "access": access,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key).expect("signing a token");
        let issued_at = chrono::DateTime::from_timestamp(now as i64, 0)
            .expect("a representable time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        HttpResponse::Ok().json(json!({
            "token": token,
            "access_token": token,
            "expires_in": lifetime,
            "issued_at": issued_at,
        }))
    }
}

/// How an [`Upstream`] authenticates its clients.
enum Auth {
    Open,
    /// `auth.htpasswd` with this file.
    Htpasswd(PathBuf),
    /// `auth.token` with this realm and bundle (copied next to the config).
    Token {
        realm: String,
        bundle: PathBuf,
    },
}

/// A real distribution 2.8.2 (`docker-registry serve`) on `127.0.0.1`, with its own temporary
/// directory (config, data, log), deletes enabled. Killed on drop; when the test fails its log
/// tail is printed and its directory kept (see [`Process`]).
pub struct Upstream {
    process: Process,
    bin: PathBuf,
    /// The network namespace it runs in (`None`: this one) and the address it binds there.
    netns: Option<String>,
    ip: String,
    port: u16,
    auth: Auth,
    secret: String,
}

impl Upstream {
    /// An upstream anyone may push to and pull from, or `None` when `docker-registry` is
    /// missing and the test is skipped (under `CI=true` it fails instead).
    pub fn open() -> Option<Upstream> {
        let bin = require_tool("docker-registry")?;
        Some(Upstream::start("open", bin, |_| Auth::Open))
    }

    /// An open upstream in network namespace `netns`, bound to its address `ip` there (a
    /// namespace of a [`crate::netns::NetLab`]: a registry across a link of its own), or
    /// `None` when `docker-registry` is missing.
    pub fn open_in(netns: &str, ip: &str) -> Option<Upstream> {
        let bin = require_tool("docker-registry")?;
        Some(Upstream::start_at(
            "open",
            bin,
            Some(netns.to_string()),
            ip.to_string(),
            |_| Auth::Open,
        ))
    }

    /// An upstream behind `auth.htpasswd` with `users` (`(name, password)`, bcrypt by the
    /// real `htpasswd -B`), or `None` when `docker-registry` or `htpasswd` is missing.
    pub fn htpasswd(users: &[(&str, &str)]) -> Option<Upstream> {
        let bin = require_tool("docker-registry")?;
        let htpasswd = require_tool("htpasswd")?;
        Some(Upstream::start("htpasswd", bin, |root| {
            let path = root.join("htpasswd");
            crate::credentials::must_htpasswd(&htpasswd, &path, users);
            Auth::Htpasswd(path)
        }))
    }

    /// An upstream behind `auth.token`, trusting the tokens of `server`, or `None` when
    /// `docker-registry` is missing. The bundle is copied: the upstream restarts without it.
    pub fn token(server: &TokenServer) -> Option<Upstream> {
        let bin = require_tool("docker-registry")?;
        Some(Upstream::start("token", bin, |root| {
            let bundle = root.join("rootcertbundle.pem");
            std::fs::copy(server.rootcertbundle(), &bundle).expect("copying the token bundle");
            Auth::Token {
                realm: server.realm(),
                bundle,
            }
        }))
    }

    fn start(name: &str, bin: PathBuf, auth: impl FnOnce(&Path) -> Auth) -> Upstream {
        Upstream::start_at(name, bin, None, "127.0.0.1".to_string(), auth)
    }

    fn start_at(
        name: &str,
        bin: PathBuf,
        netns: Option<String>,
        ip: String,
        auth: impl FnOnce(&Path) -> Auth,
    ) -> Upstream {
        let process = Process::new(name, "ipcr-upstream-");
        let auth = auth(process.root());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos();
        let mut up = Upstream {
            process,
            bin,
            netns,
            ip,
            port: free_port(),
            auth,
            secret: format!("cluster-tests-{nanos:x}"),
        };
        up.wait_first_ready();
        up
    }

    /// A port [`free_port`] handed out may be taken before distribution binds it: then it
    /// exits at once saying so, and it starts again on another port (nobody knows it yet).
    fn wait_first_ready(&mut self) {
        const TRIES: usize = 3;
        for attempt in 1..=TRIES {
            self.spawn();
            if self.wait_ready_or_exit() {
                return;
            }
            let clashes = self.log().matches("address already in use").count();
            assert!(
                attempt < TRIES && clashes >= attempt,
                "{} exited before answering /v2/",
                self.process.name()
            );
            self.port = free_port();
        }
    }

    fn config_path(&self) -> PathBuf {
        self.process.root().join("config.yml")
    }

    /// The YAML distribution reads. The fixed `http.secret` keeps upload sessions valid
    /// across [`Upstream::restart`].
    fn config(&self) -> String {
        let auth = match &self.auth {
            Auth::Open => String::new(),
            Auth::Htpasswd(path) => format!(
                "auth:\n  htpasswd:\n    realm: cluster-tests-upstream\n    path: {}\n",
                path.display()
            ),
            Auth::Token { realm, bundle } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                bundle.display()
            ),
        };
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {}\n  secret: {}\n{auth}",
            self.process.data_dir().display(),
            self.host(),
            self.secret,
        )
    }

    /// Start the process (reaping one that exited or was killed) with a config for its port.
    fn spawn(&mut self) {
        self.process.ensure_stopped();
        std::fs::write(self.config_path(), self.config()).expect("writing the upstream config");
        let mut cmd = match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs the program: the child is distribution itself.
                let mut cmd = std::process::Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.bin);
                cmd
            }
            None => std::process::Command::new(&self.bin),
        };
        cmd.arg("serve").arg(self.config_path());
        let place = format!("on {}", self.host());
        self.process.spawn(cmd, &place);
    }

    /// Whether `/v2/` answered (200, or 401 behind auth) before the process exited; panics
    /// after [`READY_TIMEOUT`].
    fn wait_ready_or_exit(&mut self) -> bool {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("{}/v2/", self.base_url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.process.is_running() {
                return false;
            }
            let last = match http.get(&url).send() {
                Ok(r) if r.status() == 200 || r.status() == 401 => return true,
                Ok(r) => format!("status {}", r.status()),
                Err(e) => format!("error: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "{} did not answer /v2/ within {READY_TIMEOUT:?}; last: {last}",
                self.process.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until `/v2/` answers; panics (printing the log) if the process exits first.
    pub fn wait_ready(&mut self) {
        let ready = self.wait_ready_or_exit();
        assert!(ready, "{} exited before answering /v2/", self.process.name());
    }

    /// `http://IP:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `IP:PORT` (`127.0.0.1:PORT` unless started in a namespace), as image references name
    /// it.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// Its storage root (`storage.filesystem.rootdirectory`).
    pub fn data_dir(&self) -> PathBuf {
        self.process.data_dir()
    }

    /// `kill -9` it; the data stays.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Start it again on the same port and data (killing it first if it runs), and wait
    /// until it answers.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Its log so far (every start), for failure messages.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_as_distribution_writes_them() {
        assert_eq!(
            parse_scope("repository:team/app:pull,push"),
            Some(("repository", "team/app", vec!["pull", "push"]))
        );
        assert_eq!(
            parse_scope("registry:catalog:*"),
            Some(("registry", "catalog", vec!["*"]))
        );
        assert_eq!(
            parse_scope("repository:app:"),
            Some(("repository", "app", vec![]))
        );
        assert_eq!(parse_scope("nonsense"), None);
    }

    #[test]
    fn libtrust_kids_are_twelve_groups_of_four() {
        let kid = libtrust_kid(b"any bytes");
        assert_eq!(kid.len(), 59);
        assert_eq!(kid.split(':').count(), 12);
        assert!(
            kid.chars()
                .all(|c| c == ':' || c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
    }
}
