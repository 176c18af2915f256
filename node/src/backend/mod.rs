//! The IPFS side of blob storage: an Estuary pinning service (the original project's storage)
//! or a Kubo node's RPC API. The nodes' disks stay the first tier; the backend receives every
//! committed blob once it is durable on them, and serves blobs no node holds any more.
//!
//! IPCR computes each blob's CID itself while the blob is written (`upload::leaves`), with the
//! backend's import settings, so every answer of the backend is checked: an add that reports
//! another CID is a failure, and bytes fetched back are verified against the blob's digest
//! before anyone is served them.
//!
//! Every call runs on the Raft runtime, where this module's HTTP client lives.

pub mod cache;
pub mod pinner;
pub mod range;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use ipcr_proto::cid::{KUBO_LINKS, canonical};
use serde::Deserialize;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::config::StorageConfig;

/// How long one fetch of blob bytes may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(3600);
/// A backend silent this long on a connection is taken as hung.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest upload a backend is given time for, in bytes per second (beyond
/// [`STALL_TIMEOUT`]): a backend that takes a 1 GiB blob slower than this has failed.
const MIN_UPLOAD_RATE: u64 = 1 << 20;
/// How long a metadata call or a probe may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks buffered from a fetch.
const FETCH_CHANNEL: usize = 32;

/// Why a backend call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Unreachable, timed out, or answered with an error.
    #[error("{0}")]
    Failed(String),
    /// Answered a CID other than the one IPCR computed: the backend imported other bytes or
    /// with other settings.
    #[error("backend answered CID {got} for a blob whose CID is {expected}")]
    WrongCid {
        /// What IPCR computed.
        expected: String,
        /// What the backend said.
        got: String,
    },
}

fn failed(context: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(format!("{context}: {e}"))
}

#[derive(Clone)]
enum Kind {
    /// `storage.estuary`: uploads to the shuttle, reads from the gateway.
    Estuary {
        api: String,
        shuttle: String,
        token: String,
    },
    /// `storage.ipfs`: a Kubo node's RPC API.
    Kubo { api: String },
}

/// A place the backend serves a CID's content from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A gateway URL.
    Get(String),
    /// An RPC call (Kubo's `cat`).
    Post(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Get(url) | Source::Post(url) => f.write_str(url),
        }
    }
}

/// A configured backend. Cheap to clone.
#[derive(Clone)]
pub struct Backend {
    kind: Kind,
    /// Links per DAG node of the backend's import settings.
    links: u32,
    /// Base URL of the public gateway, `{gateway}/{cid}` serving a blob.
    gateway: Option<String>,
    client: reqwest::Client,
    runtime: Handle,
    metrics: BackendMetrics,
}

/// The uploads to the backend: how long they took and how many bytes they carried, by result.
#[derive(Clone)]
pub struct BackendMetrics {
    duration: prometheus::HistogramVec,
    bytes: prometheus::IntCounterVec,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        let buckets = prometheus::exponential_buckets(0.05, 2.0, 14).expect("valid buckets");
        BackendMetrics {
            duration: prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(
                    "ipcr_ipfs_upload_duration_seconds",
                    "Time to upload a blob to the IPFS backend until it confirmed the CID, by result.",
                )
                .buckets(buckets),
                &["result"],
            )
            .expect("a valid metric"),
            bytes: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "ipcr_ipfs_uploaded_bytes_total",
                    "Bytes of blobs uploaded to the IPFS backend, by result.",
                ),
                &["result"],
            )
            .expect("a valid metric"),
        }
    }
}

impl BackendMetrics {
    /// Everything to export.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.duration.clone()), Box::new(self.bytes.clone())]
    }

    fn uploaded(&self, ok: bool, took: Duration, size: u64) {
        let result = if ok { "ok" } else { "failed" };
        self.duration
            .with_label_values(&[result])
            .observe(took.as_secs_f64());
        self.bytes.with_label_values(&[result]).inc_by(size);
    }
}

/// Estuary's answer to `POST /content/add`.
#[derive(Deserialize)]
struct EstuaryAdded {
    cid: String,
}

/// Estuary's error envelope.
#[derive(Deserialize)]
struct EstuaryError {
    error: EstuaryErrorBody,
}

#[derive(Deserialize)]
struct EstuaryErrorBody {
    reason: String,
    #[serde(default)]
    details: String,
}

/// One line of Kubo's `add` answer.
#[derive(Deserialize)]
struct KuboAdded {
    #[serde(rename = "Hash")]
    hash: String,
}

/// `GET /pinning/pins`: how many pins match, and (up to the limit) their request ids.
#[derive(Deserialize)]
struct PinList {
    count: u64,
    results: Vec<PinId>,
}

#[derive(Deserialize)]
struct PinId {
    requestid: String,
}

fn trim(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// An error answer's text, with Estuary's reason and details when it sent its envelope.
async fn describe(resp: reqwest::Response) -> String {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<EstuaryError>(&text) {
        Ok(e) => format!("HTTP {status} {}: {}", e.error.reason, e.error.details),
        Err(_) => format!("HTTP {status} {}", text.chars().take(200).collect::<String>()),
    }
}

impl Backend {
    /// The backend `storage` configures, if any; its calls run on `runtime`.
    pub fn from_config(storage: &StorageConfig, runtime: Handle) -> Option<Backend> {
        let client = crate::tls::outside_client(|| {
            reqwest::Client::builder()
                .connect_timeout(CALL_TIMEOUT)
                .read_timeout(STALL_TIMEOUT)
        });
        if let Some(e) = &storage.estuary {
            let api = trim(&e.url);
            let shuttle = if e.shuttle_url.is_empty() {
                api.clone()
            } else {
                trim(&e.shuttle_url)
            };
            let gateway = Some(trim(e.gateway.as_deref().unwrap_or(&format!("{api}/gw/ipfs"))));
            return Some(Backend {
                kind: Kind::Estuary {
                    api,
                    shuttle,
                    token: e.auth_token.clone(),
                },
                links: ipcr_proto::cid::ESTUARY_LINKS,
                gateway,
                client,
                runtime,
                metrics: BackendMetrics::default(),
            });
        }
        storage.ipfs.as_ref().map(|i| Backend {
            kind: Kind::Kubo { api: trim(&i.api) },
            links: i.links,
            gateway: i.gateway.as_deref().map(|g| format!("{}/ipfs", trim(g))),
            client,
            runtime,
            metrics: BackendMetrics::default(),
        })
    }

    /// `estuary` or `ipfs`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Estuary { .. } => "estuary",
            Kind::Kubo { .. } => "ipfs",
        }
    }

    /// Links per DAG node of the backend's import settings.
    pub fn links(&self) -> u32 {
        self.links
    }

    /// The public gateway URL of a CID, when the backend has a gateway.
    pub fn gateway_url(&self, cid: &str) -> Option<String> {
        self.gateway.as_ref().map(|g| format!("{g}/{cid}"))
    }

    /// Run `fut` on the runtime the client belongs to.
    async fn on_runtime<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
    ) -> Result<T, BackendError> {
        self.runtime
            .spawn(fut)
            .await
            .unwrap_or_else(|e| Err(failed("backend task", e)))
    }

    /// Upload the `size` bytes of the file at `path`, named `name`, streamed; answers once
    /// the backend confirmed exactly `expected` as its CID.
    pub async fn add(
        &self,
        path: PathBuf,
        size: u64,
        name: String,
        expected: String,
    ) -> Result<(), BackendError> {
        let started = std::time::Instant::now();
        let added = self.upload(path, size, name, expected).await;
        self.metrics.uploaded(added.is_ok(), started.elapsed(), size);
        added
    }

    /// This backend's upload metrics.
    pub fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }

    async fn upload(
        &self,
        path: PathBuf,
        size: u64,
        name: String,
        expected: String,
    ) -> Result<(), BackendError> {
        let this = self.clone();
        // A backend that stops reading the body never trips the read timeout: bound the whole
        // upload by its size.
        let limit = STALL_TIMEOUT + Duration::from_secs(size / MIN_UPLOAD_RATE);
        self.on_runtime(async move {
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| failed("opening the blob", e))?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
            let part = reqwest::multipart::Part::stream_with_length(body, size)
                .file_name(name)
                .mime_str("application/octet-stream")
                .map_err(|e| failed("multipart", e))?;
            let got = match &this.kind {
                Kind::Estuary { shuttle, token, .. } => {
                    let form = reqwest::multipart::Form::new().part("data", part);
                    let resp = this
                        .client
                        .post(format!("{shuttle}/content/add"))
                        .bearer_auth(token)
                        .multipart(form)
                        .timeout(limit)
                        .send()
                        .await
                        .map_err(|e| failed("estuary add", e))?;
                    if !resp.status().is_success() {
                        return Err(failed("estuary add", describe(resp).await));
                    }
                    let added: EstuaryAdded = resp.json().await.map_err(|e| failed("estuary add answer", e))?;
                    added.cid
                }
                Kind::Kubo { api } => {
                    let form = reqwest::multipart::Form::new().part("file", part);
                    let mut url = format!(
                        "{api}/api/v0/add?cid-version=1&raw-leaves=true&chunker=size-1048576&pin=true&progress=false"
                    );
                    if this.links != KUBO_LINKS {
                        url.push_str(&format!("&max-file-links={}", this.links));
                    }
                    let resp = this
                        .client
                        .post(url)
                        .multipart(form)
                        .timeout(limit)
                        .send()
                        .await
                        .map_err(|e| failed("ipfs add", e))?;
                    if !resp.status().is_success() {
                        return Err(failed("ipfs add", describe(resp).await));
                    }
                    let text = resp.text().await.map_err(|e| failed("ipfs add answer", e))?;
                    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                    let added: KuboAdded = serde_json::from_str(last).map_err(|e| failed("ipfs add answer", e))?;
                    added.hash
                }
            };
            if canonical(&got).as_deref() != Some(expected.as_str()) {
                return Err(BackendError::WrongCid { expected, got });
            }
            Ok(())
        })
        .await
    }

    /// Where the content of `cid` can be read, in order of preference: for Estuary the
    /// configured gateway, then the shuttle's own gateway; for Kubo `cat`, then the gateway.
    pub fn sources(&self, cid: &str) -> Vec<Source> {
        let gateway = self.gateway_url(cid).map(Source::Get);
        let mut out: Vec<Source> = match &self.kind {
            Kind::Estuary { shuttle, .. } => {
                let own = Source::Get(format!("{shuttle}/gw/ipfs/{cid}"));
                gateway.into_iter().chain([own]).collect()
            }
            Kind::Kubo { api } => std::iter::once(Source::Post(format!("{api}/api/v0/cat?arg={cid}")))
                .chain(gateway)
                .collect(),
        };
        out.dedup();
        out
    }

    /// Stream the whole content at `source`. The bytes are not verified here: the caller
    /// checks them against the blob's digest.
    pub fn fetch(&self, source: &Source) -> mpsc::Receiver<Result<Bytes, String>> {
        self.fetch_part(source, None)
    }

    /// Read `len` bytes from `offset` of the content at `source` (a gateway `Range`, or `cat`
    /// with `offset` and `length`) into memory; for single leaves, which the caller verifies.
    pub async fn fetch_range(&self, source: &Source, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut rx = self.fetch_part(source, Some((offset, len)));
        let mut out = Vec::with_capacity(len as usize);
        while let Some(item) = rx.recv().await {
            out.extend_from_slice(&item?);
            if out.len() as u64 > len {
                return Err(format!("{source} sent more than the {len} bytes asked"));
            }
        }
        Ok(out)
    }

    fn fetch_part(&self, source: &Source, part: Option<(u64, u64)>) -> mpsc::Receiver<Result<Bytes, String>> {
        let (tx, rx) = mpsc::channel(FETCH_CHANNEL);
        let what = source.to_string();
        let request = match (source, part) {
            (Source::Get(url), None) => self.client.get(url),
            (Source::Get(url), Some((offset, len))) => self
                .client
                .get(url)
                .header("Range", format!("bytes={offset}-{}", offset + len.max(1) - 1)),
            (Source::Post(url), None) => self.client.post(url),
            (Source::Post(url), Some((offset, len))) => {
                self.client.post(format!("{url}&offset={offset}&length={len}"))
            }
        };
        self.runtime.spawn(async move {
            let resp = match request.timeout(TRANSFER_TIMEOUT).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    let _ = tx.send(Err(format!("{what}: HTTP {}", r.status()))).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{what}: {e}"))).await;
                    return;
                }
            };
            let mut stream = resp.bytes_stream();
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| format!("{what}: {e}"));
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        rx
    }

    /// Estuary's `GET /pinning/pins?<query>`.
    async fn estuary_pins(&self, api: &str, token: &str, query: &str) -> Result<PinList, BackendError> {
        let resp = self
            .client
            .get(format!("{api}/pinning/pins?{query}"))
            .bearer_auth(token)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| failed("estuary pins", e))?;
        if !resp.status().is_success() {
            return Err(failed("estuary pins", describe(resp).await));
        }
        resp.json().await.map_err(|e| failed("estuary pins answer", e))
    }

    /// Does the backend confirm it holds `cid` (pinned)?
    pub async fn confirms(&self, cid: &str) -> Result<bool, BackendError> {
        let this = self.clone();
        let cid = cid.to_string();
        self.on_runtime(async move {
            match &this.kind {
                Kind::Estuary { api, token, .. } => {
                    let list = this
                        .estuary_pins(api, token, &format!("cid={cid}&status=pinned&limit=1"))
                        .await?;
                    Ok(list.count > 0)
                }
                Kind::Kubo { api } => {
                    let resp = this
                        .client
                        .post(format!("{api}/api/v0/pin/ls?arg={cid}&type=recursive"))
                        .timeout(CALL_TIMEOUT)
                        .send()
                        .await
                        .map_err(|e| failed("ipfs pin/ls", e))?;
                    Ok(resp.status().is_success())
                }
            }
        })
        .await
    }

    /// Drop the backend's pin of `cid` (every pin of it, on Estuary). Nothing pinned is fine.
    pub async fn unpin(&self, cid: &str) -> Result<(), BackendError> {
        let this = self.clone();
        let cid = cid.to_string();
        self.on_runtime(async move {
            match &this.kind {
                Kind::Estuary { api, token, .. } => {
                    let list = this
                        .estuary_pins(api, token, &format!("cid={cid}&limit=1000"))
                        .await?;
                    for pin in list.results {
                        let resp = this
                            .client
                            .delete(format!("{api}/pinning/pins/{}", pin.requestid))
                            .bearer_auth(token)
                            .timeout(CALL_TIMEOUT)
                            .send()
                            .await
                            .map_err(|e| failed("estuary unpin", e))?;
                        if !resp.status().is_success() && resp.status() != reqwest::StatusCode::NOT_FOUND {
                            return Err(failed("estuary unpin", describe(resp).await));
                        }
                    }
                    Ok(())
                }
                Kind::Kubo { api } => {
                    let resp = this
                        .client
                        .post(format!("{api}/api/v0/pin/rm?arg={cid}"))
                        .timeout(CALL_TIMEOUT)
                        .send()
                        .await
                        .map_err(|e| failed("ipfs pin/rm", e))?;
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() || text.contains("not pinned") {
                        Ok(())
                    } else {
                        Err(failed("ipfs pin/rm", format!("HTTP {status} {text}")))
                    }
                }
            }
        })
        .await
    }

    /// One health probe: an authenticated call that touches no content.
    pub async fn probe(&self) -> Result<(), BackendError> {
        let this = self.clone();
        self.on_runtime(async move {
            let request = match &this.kind {
                Kind::Estuary { api, token, .. } => {
                    this.client.get(format!("{api}/viewer")).bearer_auth(token)
                }
                Kind::Kubo { api } => this.client.post(format!("{api}/api/v0/version")),
            };
            let resp = request
                .timeout(CALL_TIMEOUT)
                .send()
                .await
                .map_err(|e| failed(this.name(), e))?;
            if !resp.status().is_success() {
                return Err(failed(this.name(), describe(resp).await));
            }
            Ok(())
        })
        .await
    }
}
