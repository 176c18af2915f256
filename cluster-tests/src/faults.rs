//! A fault-injecting HTTP reverse proxy in the test process, in front of one registry (or any
//! HTTP server): it forwards every request and streams the answer back, except where a rule the
//! test set says otherwise. Rules answer a status instead (`429` with `Retry-After`, `503`),
//! delay a request, slow its response body down, or cut a response body off after some bytes by
//! closing the connection;
//! each fires always, on every Nth request it matches, or on the next K. Rules can be changed
//! while a client runs through the proxy, and every exchange is recorded (method, path, status,
//! whether a fault was served, when), so that a test checks what the client went through.
//!
//! Response bodies are streamed through, never held whole; request bodies are read whole before
//! forwarding (clients under test read from the upstream; an upload through the proxy is
//! bounded by [`MAX_REQUEST_BODY`]). `Location` headers naming the upstream are rewritten to the
//! proxy; redirects are passed on, not followed.
//!
//! Only test binaries call it (migrate, the pull-through cache); it is TiKV's transport filter
//! at the HTTP level.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use futures::StreamExt as _;

/// The bytes a [`Fault::Slow`] passes between two pauses.
pub const SLOW_PIECE: usize = 64 << 10;

/// The largest request body forwarded.
pub const MAX_REQUEST_BODY: usize = 256 << 20;

/// What a rule does to a request it fires on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` (an OCI error body, and `Retry-After: <secs>` when given) without
    /// forwarding.
    Status {
        /// The status answered.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u64>,
    },
    /// Forward, then end the response body after `after` bytes by closing the connection
    /// (its `Content-Length` promised more). A body no longer than `after` passes whole, and
    /// the fault is not counted as served.
    Cut {
        /// Bytes passed before the cut.
        after: u64,
    },
    /// Forward after waiting this long.
    Delay(Duration),
    /// Forward, pausing this long before each [`SLOW_PIECE`] bytes of the response body: a
    /// slow upstream, whatever sizes of chunks the upstream's body comes in.
    Slow(Duration),
}

impl Fault {
    /// `429 Too Many Requests` with `Retry-After: <secs>`.
    pub fn too_many_requests(retry_after_secs: u64) -> Fault {
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after_secs),
        }
    }

    /// `503 Service Unavailable`, no `Retry-After`.
    pub fn unavailable() -> Fault {
        Fault::Status {
            status: 503,
            retry_after: None,
        }
    }
}

/// Which of the requests a rule matches it fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Every one.
    Always,
    /// The Nth, 2Nth, ... (counted from when the rule was set).
    Every(usize),
    /// The next K, then no more.
    Next(usize),
}

/// A fault, when it fires, and on which requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What it does.
    pub fault: Fault,
    /// On which of the matching requests.
    pub when: When,
    /// Only requests whose path (without the query) contains this.
    pub path_contains: Option<String>,
    /// Only requests of this method (`GET`, `HEAD`, ...).
    pub method: Option<String>,
}

impl Rule {
    /// `fault` on the requests `when` picks, of any path and method.
    pub fn new(fault: Fault, when: When) -> Rule {
        Rule {
            fault,
            when,
            path_contains: None,
            method: None,
        }
    }

    /// Only requests whose path contains `part` (`/blobs/`, a digest).
    pub fn on_path(mut self, part: &str) -> Rule {
        self.path_contains = Some(part.to_string());
        self
    }

    /// Only requests of `method`.
    pub fn on_method(mut self, method: &str) -> Rule {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_ref()
                .is_none_or(|p| path.contains(p.as_str()))
    }
}

impl From<Fault> for Rule {
    fn from(fault: Fault) -> Rule {
        Rule::new(fault, When::Always)
    }
}

/// A rule and how many matching requests it has seen.
struct Armed {
    rule: Rule,
    seen: usize,
}

impl Armed {
    /// Count a matching request; whether the rule fires on it.
    fn fires(&mut self) -> bool {
        self.seen += 1;
        match self.rule.when {
            When::Always => true,
            When::Every(n) => n > 0 && self.seen.is_multiple_of(n),
            When::Next(k) => self.seen <= k,
        }
    }
}

/// One request as the proxy handled it.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The status answered (the upstream's when forwarded; `502` when it could not be reached).
    pub status: u16,
    /// The fault served, if a rule fired.
    pub fault: Option<Fault>,
    /// When the request arrived.
    pub at: Instant,
}

/// What every worker shares.
struct Shared {
    upstream: String,
    base: String,
    rules: Mutex<Vec<Armed>>,
    faults: AtomicUsize,
    forwarded: AtomicUsize,
    log: Mutex<Vec<Exchange>>,
}

impl Shared {
    /// The first rule that fires on this request (every matching rule counts it).
    fn pick(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("rules");
        let mut picked = None;
        for armed in rules.iter_mut().filter(|a| a.rule.matches(method, path)) {
            if armed.fires() && picked.is_none() {
                picked = Some(armed.rule.fault.clone());
            }
        }
        picked
    }

    fn record(&self, method: &str, path: &str, status: u16, fault: Option<Fault>, at: Instant) {
        self.log.lock().expect("log").push(Exchange {
            method: method.to_string(),
            path: path.to_string(),
            status,
            fault,
            at,
        });
    }
}

/// The proxy: an actix-web server on a thread of its own, on `127.0.0.1` and a port from the
/// OS. Stops on drop.
pub struct FaultProxy {
    shared: Arc<Shared>,
    port: u16,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy forwarding to `upstream_base` (`http://127.0.0.1:PORT`), with no rules.
    pub fn start(upstream_base: &str) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let port = listener.local_addr().expect("fault proxy address").port();
        let shared = Arc::new(Shared {
            upstream: upstream_base.trim_end_matches('/').to_string(),
            base: format!("http://127.0.0.1:{port}"),
            rules: Mutex::new(Vec::new()),
            faults: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        let data = web::Data::from(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    // A client per worker: its connections live on the worker's runtime.
                    let http = reqwest::Client::builder()
                        .no_proxy()
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .expect("the proxy's HTTP client");
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::Data::new(http))
                        .app_data(web::PayloadConfig::new(MAX_REQUEST_BODY))
                        .default_service(web::to(forward))
                })
                .workers(2)
                .disable_signals()
                .listen(listener)
                .expect("serving the fault proxy's listener")
                .run();
                tx.send(server.handle()).expect("handing back the server handle");
                if let Err(e) = server.await {
                    eprintln!("fault proxy: {e}");
                }
            });
        });
        FaultProxy {
            shared,
            port,
            handle: rx.recv().expect("the fault proxy started"),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.shared.base.clone()
    }

    /// `127.0.0.1:PORT`, as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replace every rule with `rule`.
    pub fn set(&self, rule: impl Into<Rule>) {
        let mut rules = self.shared.rules.lock().expect("rules");
        rules.clear();
        rules.push(Armed {
            rule: rule.into(),
            seen: 0,
        });
    }

    /// Add `rule` after the others: a request gets the fault of the first rule firing on it.
    pub fn add(&self, rule: impl Into<Rule>) {
        self.shared.rules.lock().expect("rules").push(Armed {
            rule: rule.into(),
            seen: 0,
        });
    }

    /// Remove every rule: forward everything untouched.
    pub fn clear(&self) {
        self.shared.rules.lock().expect("rules").clear();
    }

    /// Faults served so far (statuses answered, delays, bodies cut).
    pub fn faults_served(&self) -> usize {
        self.shared.faults.load(Ordering::SeqCst)
    }

    /// Requests forwarded to the upstream so far (delayed and cut ones included).
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Every exchange so far, in the order the requests arrived.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let mut log = self.shared.log.lock().expect("log").clone();
        log.sort_by_key(|e| e.at);
        log
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        futures::executor::block_on(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Headers that belong to one connection, not to the message: never passed on.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The OCI error code a status fault answers with.
fn oci_code(status: u16) -> &'static str {
    match status {
        429 => "TOOMANYREQUESTS",
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        _ => "UNAVAILABLE",
    }
}

/// The answer of a status fault: an OCI error body, and `Retry-After` when given.
fn injected(status: u16, retry_after: Option<u64>) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = HttpResponse::build(status);
    if let Some(secs) = retry_after {
        resp.insert_header(("Retry-After", secs.to_string()));
    }
    resp.json(serde_json::json!({"errors": [{
        "code": oci_code(status.as_u16()),
        "message": "injected by the cluster-tests fault proxy",
    }]}))
}

/// `upstream`'s body, ended after `cut` bytes when given: up to the cut, the upstream's chunks;
/// then a pause, so that actix writes out what it holds (a body error drops the connection with
/// its unsent buffer); then the error that closes the connection short of the promised length.
fn body_cut_after(
    upstream: reqwest::Response,
    cut: Option<u64>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let passed = upstream
        .bytes_stream()
        .scan(cut.unwrap_or(u64::MAX), |left, chunk| {
            let item = match chunk {
                _ if *left == 0 => None,
                Ok(c) => {
                    let keep = c.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= keep as u64;
                    Some(Ok(c.slice(..keep)))
                }
                Err(e) => Some(Err(std::io::Error::other(e))),
            };
            std::future::ready(item)
        });
    let end = futures::stream::iter(cut).then(|_| async {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        Err(std::io::Error::other("cut off by the fault proxy"))
    });
    passed.chain(end)
}

/// Every request: the fault a rule picks, or the upstream's answer streamed back.
async fn forward(
    req: HttpRequest,
    body: Bytes,
    shared: web::Data<Shared>,
    http: web::Data<reqwest::Client>,
) -> HttpResponse {
    let at = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_string());
    let fault = shared.pick(&method, &path);
    let (mut cut, mut pause) = (None, None);
    match &fault {
        Some(Fault::Status { status, retry_after }) => {
            shared.faults.fetch_add(1, Ordering::SeqCst);
            shared.record(&method, &path_and_query, *status, fault.clone(), at);
            return injected(*status, *retry_after);
        }
        Some(Fault::Delay(d)) => {
            shared.faults.fetch_add(1, Ordering::SeqCst);
            actix_web::rt::time::sleep(*d).await;
        }
        Some(Fault::Cut { after }) => cut = Some(*after),
        Some(Fault::Slow(d)) => {
            shared.faults.fetch_add(1, Ordering::SeqCst);
            pause = Some(*d);
        }
        None => {}
    }

    let url = format!("{}{path_and_query}", shared.upstream);
    let verb = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut out = http.request(verb, &url);
    for (name, value) in req.headers() {
        if !hop_by_hop(name.as_str()) {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    if !body.is_empty() || matches!(method.as_str(), "PUT" | "POST" | "PATCH") {
        out = out.body(body);
    }
    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    let upstream = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            shared.record(&method, &path_and_query, 502, fault, at);
            return HttpResponse::BadGateway().body(format!("fault proxy: {url}: {e}"));
        }
    };
    let status = upstream.status().as_u16();
    // The header, not `content_length()`: that is the body's size, 0 for a `HEAD`.
    let length: Option<u64> = upstream
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut resp = HttpResponse::build(StatusCode::from_u16(status).expect("a status reqwest read"));
    for (name, value) in upstream.headers() {
        let name = name.as_str();
        if hop_by_hop(name) {
            continue;
        }
        match (name, value.to_str()) {
            ("location", Ok(v)) if v.starts_with(&shared.upstream) => {
                resp.append_header((name, v.replacen(&shared.upstream, &shared.base, 1)));
            }
            _ => {
                resp.append_header((name, value.as_bytes()));
            }
        }
    }
    // actix answers a stream with a `Content-Length` as exactly that many bytes.
    if let Some(len) = length {
        resp.insert_header(("content-length", len.to_string()));
    }
    let cut = cut.filter(|after| method != "HEAD" && length.is_some_and(|l| l > *after));
    if cut.is_some() {
        shared.faults.fetch_add(1, Ordering::SeqCst);
    }
    let served = fault.filter(|f| !matches!(f, Fault::Cut { .. }) || cut.is_some());
    shared.record(&method, &path_and_query, status, served, at);
    if method == "HEAD" {
        // No body follows, but the upstream's `Content-Length` must: an empty stream of that
        // size, which actix never polls for a `HEAD`.
        return resp.streaming(futures::stream::empty::<Result<Bytes, std::io::Error>>());
    }
    let body = body_cut_after(upstream, cut)
        .flat_map(move |chunk| futures::stream::iter(pieces(chunk, pause.is_some())))
        .then(move |piece| async move {
            if let Some(d) = pause {
                actix_web::rt::time::sleep(d).await;
            }
            piece
        });
    resp.streaming(body)
}

/// `chunk` in pieces of at most [`SLOW_PIECE`] bytes when `split`, else whole.
fn pieces(chunk: Result<Bytes, std::io::Error>, split: bool) -> Vec<Result<Bytes, std::io::Error>> {
    match chunk {
        Ok(bytes) if split => (0..bytes.len())
            .step_by(SLOW_PIECE)
            .map(|at| Ok(bytes.slice(at..(at + SLOW_PIECE).min(bytes.len()))))
            .collect(),
        other => vec![other],
    }
}
