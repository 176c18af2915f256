//! In-process test harness: a real node (Raft member, stores, upload actors) in a temporary
//! data directory, served through actix-web's test service.

#![allow(dead_code)]

use actix_web::web;
use ipcr_node::api::{ApiState, HttpSettings};
use ipcr_node::config::{Config, FilesystemConfig};
use ipcr_node::server::{self, NodeParts};

/// A node running in this process.
pub struct TestNode {
    /// The API state handed to the app.
    pub state: web::Data<ApiState>,
    /// The node's services.
    pub parts: NodeParts,
    /// Its configuration.
    pub config: Config,
    /// The data directory (removed on drop).
    pub dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
    arbiter: Option<actix::Arbiter>,
}

/// The configuration tests start from: delete enabled, quiet logs, fast Raft timing.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.storage.delete.enabled = true;
    c.log.accesslog.disabled = true;
    c.http.addr = "127.0.0.1:0".into();
    c.cluster.heartbeat = ipcr_node::config::GoDuration(std::time::Duration::from_millis(100));
    c.cluster.election_timeout = ipcr_node::config::GoDuration(std::time::Duration::from_millis(300));
    c
}

impl TestNode {
    /// Start a node with `config` in a fresh temporary directory. Call inside an actix
    /// System (`#[actix_web::test]`).
    pub async fn start(config: Config) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(config, dir).await
    }

    /// Start a node on an existing data directory (to test restarts).
    pub async fn start_in(mut config: Config, dir: tempfile::TempDir) -> TestNode {
        config.storage.filesystem = Some(FilesystemConfig {
            rootdirectory: dir.path().to_path_buf(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("raft runtime");
        let arbiter = actix::Arbiter::new();
        let parts = server::start(&config, rt.handle().clone(), arbiter.handle())
            .await
            .expect("node starts");
        assert!(
            parts.raft.wait_ready(std::time::Duration::from_secs(20)).await,
            "node did not become ready"
        );
        let state = web::Data::new(ApiState {
            registry: parts.registry.clone(),
            health: parts.health.clone(),
            body_timeout: config.http.bodytimeout.0,
            auth: ipcr_auth::Auth::load(&config.auth)
                .expect("auth configuration loads")
                .map(std::sync::Arc::new),
            proxy: ipcr_node::proxy::Proxy::from_config(&config.proxy)
                .expect("proxy configuration loads")
                .map(std::sync::Arc::new),
        });
        TestNode {
            state,
            parts,
            config,
            dir,
            rt: Some(rt),
            arbiter: Some(arbiter),
        }
    }

    /// The app to hand to `actix_web::test::init_service`.
    pub fn app(
        &self,
    ) -> actix_web::App<
        impl actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody + use<>>,
            Error = actix_web::Error,
            InitError = (),
        > + use<>,
    > {
        ipcr_node::api::app(self.state.clone(), HttpSettings::from_config(&self.config))
    }

    /// Stop the node and hand back its data directory, with every file of it closed.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.parts.raft.shutdown().await;
        // Upload actors hold the metadata database open: stop their arbiter and wait for it.
        if let Some(arbiter) = self.arbiter.take() {
            arbiter.stop();
            let _ = actix_web::rt::task::spawn_blocking(move || arbiter.join()).await;
        }
        if let Some(rt) = self.rt.take() {
            let _ = actix_web::rt::task::spawn_blocking(move || {
                rt.shutdown_timeout(std::time::Duration::from_secs(10))
            })
            .await;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(arbiter) = self.arbiter.take() {
            arbiter.stop();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API test helpers, shared by the `api_*` suites: a type-erased handle on the test service, OCI
// request builders, and assertions on the spec's error envelope.
// ---------------------------------------------------------------------------------------------

use std::rc::Rc;

use actix_web::HttpMessage as _;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::test::{self, TestRequest};
use futures::future::LocalBoxFuture;
use sha2::Digest as _;

/// The API version header every response carries.
pub const API_VERSION: &str = "Docker-Distribution-API-Version";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The digest of zero bytes.
pub const EMPTY_DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

type Call = Box<dyn Fn(TestRequest, bool) -> LocalBoxFuture<'static, ServiceResponse<BoxBody>>>;

/// The node's API as an in-process service, with its body type erased so helpers can take it.
pub struct Api {
    call: Call,
}

impl Api {
    /// Initialise the test service of `node`.
    pub async fn new(node: &TestNode) -> Api {
        Api::new_as(node, None).await
    }

    /// Initialise the test service of `node`, sending `authorization` with every request that
    /// has no `Authorization` header of its own.
    pub async fn new_as(node: &TestNode, authorization: Option<String>) -> Api {
        Api::with(node, authorization, HttpSettings::from_config(&node.config)).await
    }

    /// Initialise the test service of `node` with `settings` (the test keeps a handle on
    /// their metrics).
    pub async fn with(node: &TestNode, authorization: Option<String>, settings: HttpSettings) -> Api {
        let app = Rc::new(test::init_service(ipcr_node::api::app(node.state.clone(), settings)).await);
        let call: Call = Box::new(move |req: TestRequest, streamed: bool| {
            let app = app.clone();
            let authorization = authorization.clone();
            Box::pin(async move {
                let mut req = req.to_request();
                if let Some(a) = authorization
                    && !req.headers().contains_key(header::AUTHORIZATION)
                {
                    req.headers_mut()
                        .insert(header::AUTHORIZATION, a.parse().expect("header value"));
                }
                if streamed {
                    // A body sent with chunked transfer-encoding has no Content-Length.
                    req.headers_mut().remove(header::CONTENT_LENGTH);
                }
                test::call_service(&*app, req).await.map_into_boxed_body()
            })
        });
        Api { call }
    }

    /// Send a request.
    pub async fn send(&self, req: TestRequest) -> ServiceResponse<BoxBody> {
        (self.call)(req, false).await
    }

    /// Send a request whose body has no `Content-Length` (as with chunked transfer-encoding).
    pub async fn send_streamed(&self, req: TestRequest) -> ServiceResponse<BoxBody> {
        (self.call)(req, true).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> ServiceResponse<BoxBody> {
        self.send(TestRequest::get().uri(path)).await
    }

    /// `HEAD path`.
    pub async fn head(&self, path: &str) -> ServiceResponse<BoxBody> {
        self.send(
            TestRequest::default()
                .method(actix_web::http::Method::HEAD)
                .uri(path),
        )
        .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> ServiceResponse<BoxBody> {
        self.send(TestRequest::delete().uri(path)).await
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `sha512:<hex>` of `data`.
pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// `len` bytes of deterministic, non-repeating-looking content.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8)
        .collect()
}

/// A response header as a string.
pub fn header<B>(resp: &ServiceResponse<B>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

/// Every value of a response header.
pub fn headers<B>(resp: &ServiceResponse<B>, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
        .collect()
}

/// The `Content-Length` the server writes: the header when the handler set one, otherwise the
/// body's known size (what actix-web's encoder turns into the header, for `HEAD` too).
pub fn content_length(resp: &ServiceResponse<BoxBody>) -> Option<u64> {
    if let Some(v) = header(resp, "Content-Length") {
        return Some(v.parse().expect("numeric Content-Length"));
    }
    match resp.response().body().size() {
        actix_web::body::BodySize::Sized(n) => Some(n),
        _ => None,
    }
}

/// The response body.
pub async fn body(resp: ServiceResponse<BoxBody>) -> bytes::Bytes {
    test::read_body(resp).await
}

/// The response body as JSON.
pub async fn json(resp: ServiceResponse<BoxBody>) -> serde_json::Value {
    let b = body(resp).await;
    serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&b)))
}

/// Assert the response has `status` and carries the API version header.
#[track_caller]
pub fn must_status<B>(resp: &ServiceResponse<B>, status: u16) {
    assert_eq!(
        resp.status().as_u16(),
        status,
        "{} {}: unexpected status",
        resp.request().method(),
        resp.request().uri()
    );
    assert_eq!(
        header(resp, API_VERSION).as_deref(),
        Some("registry/2.0"),
        "{} lacks {API_VERSION}",
        resp.request().uri()
    );
}

/// Assert the response is the spec's error envelope with `status` and first error `code`;
/// answers the envelope.
pub async fn must_fail(resp: ServiceResponse<BoxBody>, status: u16, code: &str) -> serde_json::Value {
    let what = format!("{} {}", resp.request().method(), resp.request().uri());
    let got = resp.status().as_u16();
    let ct = header(&resp, "Content-Type");
    let version = header(&resp, API_VERSION);
    let raw = body(resp).await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(got, status, "{what}: status (body {text})");
    assert_eq!(version.as_deref(), Some("registry/2.0"), "{what}: {API_VERSION}");
    assert!(
        ct.as_deref().is_some_and(|c| c.starts_with("application/json")),
        "{what}: error Content-Type {ct:?}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{what}: error body not JSON ({e}): {text}"));
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no errors array: {text}"));
    assert!(!errors.is_empty(), "{what}: empty errors array");
    for e in errors {
        let c = e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: error without code: {text}"));
        assert!(
            c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
            "{what}: code {c} is not uppercase letters and underscores"
        );
    }
    assert_eq!(errors[0]["code"], code, "{what}: error code (body {text})");
    v
}

/// Assert the response is not a server error (the node handled the input as a client error or
/// success); answers the status.
#[track_caller]
pub fn must_not_be_5xx<B>(resp: &ServiceResponse<B>) -> u16 {
    let s = resp.status().as_u16();
    assert!(
        s < 500,
        "{} {} answered {s}",
        resp.request().method(),
        resp.request().uri()
    );
    s
}

/// Push `data` to `repo` with a single `POST ?digest=`; answers its digest.
pub async fn must_push_blob(api: &Api, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let resp = api
        .send(
            TestRequest::post()
                .uri(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
                .insert_header(("Content-Type", "application/octet-stream"))
                .set_payload(data.to_vec()),
        )
        .await;
    must_status(&resp, 201);
    digest
}

/// Open an upload session in `repo`; answers its `Location`.
pub async fn must_start_upload(api: &Api, repo: &str) -> String {
    let resp = api
        .send(TestRequest::post().uri(&format!("/v2/{repo}/blobs/uploads/")))
        .await;
    must_status(&resp, 202);
    header(&resp, "Location").expect("upload Location")
}

/// `PATCH` a chunk to an upload location with its `Content-Range`.
pub async fn patch_chunk(api: &Api, location: &str, start: u64, data: &[u8]) -> ServiceResponse<BoxBody> {
    let end = start + data.len() as u64 - 1;
    api.send(
        TestRequest::patch()
            .uri(location)
            .insert_header(("Content-Type", "application/octet-stream"))
            .insert_header(("Content-Range", format!("{start}-{end}")))
            .set_payload(data.to_vec()),
    )
    .await
}

/// A location with `?digest=` (or `&digest=` when it already has a query).
pub fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// `PUT` a manifest; answers the response.
pub async fn put_manifest(
    api: &Api,
    repo: &str,
    reference: &str,
    media_type: Option<&str>,
    body: &[u8],
) -> ServiceResponse<BoxBody> {
    let mut req = TestRequest::put()
        .uri(&format!("/v2/{repo}/manifests/{reference}"))
        .set_payload(body.to_vec());
    if let Some(mt) = media_type {
        req = req.insert_header(("Content-Type", mt));
    }
    api.send(req).await
}

/// `PUT` a manifest and assert `201`; answers its digest.
pub async fn must_put_manifest(
    api: &Api,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let resp = put_manifest(api, repo, reference, Some(media_type), body).await;
    let what = format!("PUT /v2/{repo}/manifests/{reference}");
    if resp.status() != 201 {
        let status = resp.status();
        let b = body_text(resp).await;
        panic!("{what}: {status}: {b}");
    }
    must_status(&resp, 201);
    let digest = sha256(body);
    if !reference.starts_with("sha512:") {
        assert_eq!(
            header(&resp, "Docker-Content-Digest").as_deref(),
            Some(digest.as_str()),
            "{what}"
        );
    }
    header(&resp, "Docker-Content-Digest").expect("Docker-Content-Digest")
}

async fn body_text(resp: ServiceResponse<BoxBody>) -> String {
    String::from_utf8_lossy(&body(resp).await).into_owned()
}

/// A descriptor as JSON text.
pub fn descriptor(media_type: &str, digest: &str, size: usize) -> String {
    format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size}}}"#)
}

/// An image manifest (OCI or Docker schema 2 by `media_type`) with `extra` JSON members
/// (each starting with a comma) appended.
pub fn image_manifest(media_type: &str, config: &str, layers: &[String], extra: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{config},"layers":[{}]{extra}}}"#,
        layers.join(",")
    )
}

/// An index (OCI or Docker manifest list by `media_type`) of `children` descriptors.
pub fn index_manifest(media_type: &str, children: &[String], extra: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{}]{extra}}}"#,
        children.join(",")
    )
}

/// A pushed image: its manifest's digest and bytes.
pub struct Image {
    /// Manifest digest.
    pub digest: String,
    /// Manifest bytes as pushed.
    pub bytes: Vec<u8>,
    /// Config blob digest.
    pub config: String,
    /// Layer blob digest.
    pub layer: String,
    /// Config blob size.
    pub config_size: usize,
    /// Layer blob size.
    pub layer_size: usize,
}

/// Push a config and a layer blob and an OCI image manifest referencing them to
/// `repo:reference`; `seed` makes the content unique.
pub async fn must_push_image(api: &Api, repo: &str, reference: &str, seed: &str) -> Image {
    let config_bytes = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
    let layer_bytes = format!("layer of {seed}").into_bytes();
    let config = must_push_blob(api, repo, config_bytes.as_bytes()).await;
    let layer = must_push_blob(api, repo, &layer_bytes).await;
    let bytes = image_manifest(
        OCI_MANIFEST,
        &descriptor(OCI_CONFIG, &config, config_bytes.len()),
        &[descriptor(OCI_LAYER, &layer, layer_bytes.len())],
        "",
    )
    .into_bytes();
    let digest = must_put_manifest(api, repo, reference, OCI_MANIFEST, &bytes).await;
    Image {
        digest,
        bytes,
        config,
        layer,
        config_size: config_bytes.len(),
        layer_size: layer_bytes.len(),
    }
}

/// The configuration with deletion disabled.
pub fn delete_disabled_config() -> Config {
    let mut c = test_config();
    c.storage.delete.enabled = false;
    c
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read data dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Stop `node` and start it again on the same data directory, as a process restart would.
pub async fn restart(node: TestNode) -> TestNode {
    let config = node.config.clone();
    let dir = node.stop().await;
    TestNode::start_in(config, dir).await
}
