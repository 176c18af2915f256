//! The registry port's metrics: requests by API operation (never by repository, tag or digest:
//! their number is unbounded), method and status; how long each took until its response's head
//! was ready (a pull's bytes stream after); and the bytes of request and response bodies.
//!
//! The middleware ([`super::request_span`]) puts a [`RequestRecord`] in each request's
//! extensions; [`super::dispatch`] names the operation there and the request body
//! ([`super::body::RequestBody`]) counts what it reads; the middleware records it all once the
//! response is ready.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

use actix_web::{HttpResponse, web};

use super::router::Endpoint;
use crate::metrics::Exporter;

/// Latency buckets, in seconds: from a manifest served from memory to a large chunk written.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Declares [`Operation`], its labels and the list of all of them from one table.
macro_rules! operations {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)*) => {
        /// What a request is counted as: an API operation, or what its path says outside the
        /// API.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Operation {
            $($(#[$doc])* $variant,)*
        }

        /// Every operation, in index order.
        const OPERATIONS: &[Operation] = &[$(Operation::$variant,)*];

        impl Operation {
            /// Its label: distribution's and the spec's names for the endpoints.
            pub fn name(self) -> &'static str {
                match self {
                    $(Operation::$variant => $label,)*
                }
            }
        }
    };
}

operations! {
    Base => "base",
    Catalog => "catalog",
    TagsList => "tags_list",
    Referrers => "referrers",
    ManifestGet => "manifest_get",
    ManifestHead => "manifest_head",
    ManifestPut => "manifest_put",
    ManifestDelete => "manifest_delete",
    BlobGet => "blob_get",
    BlobHead => "blob_head",
    BlobDelete => "blob_delete",
    UploadStart => "upload_start",
    UploadPatch => "upload_patch",
    UploadPut => "upload_put",
    UploadStatus => "upload_status",
    UploadCancel => "upload_cancel",
    Token => "token",
    Ready => "ready",
    Health => "health",
    Ui => "ui",
    /// A `/v2/` path that is no endpoint.
    Unknown => "unknown",
    Other => "other",
}

/// The methods counted by name; anything else is `other` (a client cannot make up label
/// values).
const METHODS: [&str; 8] = [
    "GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "other",
];

/// The method's index in [`METHODS`].
pub fn method_index(method: &actix_web::http::Method) -> usize {
    use actix_web::http::Method;
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::PUT => 2,
        Method::POST => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The registry port's counters and histograms (cheap to clone: they are shared).
#[derive(Clone)]
pub struct HttpMetrics {
    inner: Arc<Series>,
}

struct Series {
    requests: IntCounterVec,
    duration: HistogramVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    /// The children of the vectors above, looked up once per label set: a request then costs
    /// one lookup by status code, not one per metric.
    durations: Vec<OnceLock<Histogram>>,
    received_by: Vec<OnceLock<IntCounter>>,
    sent_by: Vec<OnceLock<IntCounter>>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics::new()
    }
}

impl HttpMetrics {
    /// Fresh metrics, all at zero.
    pub fn new() -> HttpMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric")
        };
        HttpMetrics {
            inner: Arc::new(Series {
                requests: counter(
                    "ipcr_http_requests_total",
                    "Requests to the registry port, by API operation, method and status code.",
                    &["operation", "method", "code"],
                ),
                duration: HistogramVec::new(
                    HistogramOpts::new(
                        "ipcr_http_request_duration_seconds",
                        "Time from a request's arrival until its response's head was ready, by API operation and method.",
                    )
                    .buckets(BUCKETS.to_vec()),
                    &["operation", "method"],
                )
                .expect("a valid metric"),
                received: counter(
                    "ipcr_http_received_bytes_total",
                    "Bytes of request bodies read, by API operation.",
                    &["operation"],
                ),
                sent: counter(
                    "ipcr_http_sent_bytes_total",
                    "Bytes of response bodies, by API operation (as declared by their length).",
                    &["operation"],
                ),
                durations: slots(OPERATIONS.len() * METHODS.len()),
                received_by: slots(OPERATIONS.len()),
                sent_by: slots(OPERATIONS.len()),
            }),
        }
    }

    /// Everything to export.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        let s = &self.inner;
        vec![
            Box::new(s.requests.clone()),
            Box::new(s.duration.clone()),
            Box::new(s.received.clone()),
            Box::new(s.sent.clone()),
        ]
    }

    /// Record one finished request (`method`: an index from [`method_index`]).
    pub fn record(
        &self,
        operation: Operation,
        method: usize,
        code: &str,
        took: Duration,
        received: u64,
        sent: u64,
    ) {
        let s = &self.inner;
        let (op, name, method) = (
            operation as usize,
            operation.name(),
            method.min(METHODS.len() - 1),
        );
        s.requests.with_label_values(&[name, METHODS[method], code]).inc();
        s.durations[op * METHODS.len() + method]
            .get_or_init(|| s.duration.with_label_values(&[name, METHODS[method]]))
            .observe(took.as_secs_f64());
        if received > 0 {
            s.received_by[op]
                .get_or_init(|| s.received.with_label_values(&[name]))
                .inc_by(received);
        }
        if sent > 0 {
            s.sent_by[op]
                .get_or_init(|| s.sent.with_label_values(&[name]))
                .inc_by(sent);
        }
    }
}

/// `n` empty slots.
fn slots<T>(n: usize) -> Vec<OnceLock<T>> {
    (0..n).map(|_| OnceLock::new()).collect()
}

/// No operation named yet.
const UNSET: usize = usize::MAX;

/// What one request did, filled in while it runs.
pub struct RequestRecord {
    operation: AtomicUsize,
    received: AtomicU64,
}

impl Default for RequestRecord {
    fn default() -> Self {
        RequestRecord {
            operation: AtomicUsize::new(UNSET),
            received: AtomicU64::new(0),
        }
    }
}

impl RequestRecord {
    /// The operation the request turned out to be (the first one named stays).
    pub fn set(&self, operation: Operation) {
        let _ =
            self.operation
                .compare_exchange(UNSET, operation as usize, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// `n` more bytes of the request body were read.
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The operation named, or `fallback` (what the path said: [`path_operation`]).
    pub fn operation(&self, fallback: Operation) -> Operation {
        OPERATIONS
            .get(self.operation.load(Ordering::Relaxed))
            .copied()
            .unwrap_or(fallback)
    }

    /// Bytes of the request body read.
    pub fn received_bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// The operation a path outside the API's endpoints is counted as (no handler named one).
pub fn path_operation(path: &str) -> Operation {
    match path {
        "/ready" => Operation::Ready,
        "/debug/health" => Operation::Health,
        p if p == "/v2" || p.starts_with("/v2/") => Operation::Unknown,
        "/" => Operation::Ui,
        p if p.starts_with("/ui/") => Operation::Ui,
        _ => Operation::Other,
    }
}

/// The shared handle a request's extensions hold.
pub type Recorder = Arc<RequestRecord>;

/// The operation of an API endpoint.
pub fn operation(endpoint: &Endpoint) -> Operation {
    match endpoint {
        Endpoint::Base => Operation::Base,
        Endpoint::Catalog { .. } => Operation::Catalog,
        Endpoint::ListTags { .. } => Operation::TagsList,
        Endpoint::Referrers { .. } => Operation::Referrers,
        Endpoint::GetManifest { head: false, .. } => Operation::ManifestGet,
        Endpoint::GetManifest { head: true, .. } => Operation::ManifestHead,
        Endpoint::PutManifest { .. } => Operation::ManifestPut,
        Endpoint::DeleteManifest { .. } => Operation::ManifestDelete,
        Endpoint::GetBlob { head: false, .. } => Operation::BlobGet,
        Endpoint::GetBlob { head: true, .. } => Operation::BlobHead,
        Endpoint::DeleteBlob { .. } => Operation::BlobDelete,
        Endpoint::StartUpload { .. } => Operation::UploadStart,
        Endpoint::PatchUpload { .. } => Operation::UploadPatch,
        Endpoint::PutUpload { .. } => Operation::UploadPut,
        Endpoint::GetUpload { .. } => Operation::UploadStatus,
        Endpoint::DeleteUpload { .. } => Operation::UploadCancel,
    }
}

/// The debug listener's app (`http.debug.addr`): the metrics at `path` (none without one).
pub fn debug_app(
    exporter: web::Data<Exporter>,
    path: Option<String>,
) -> actix_web::App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let app = actix_web::App::new().app_data(exporter);
    match path {
        Some(path) => app.route(&path, web::get().to(scrape)),
        None => app,
    }
}

/// `GET <path>`: the metrics, gathered on a blocking thread (the state is read from disk).
async fn scrape(exporter: web::Data<Exporter>) -> actix_web::Result<HttpResponse> {
    let text = web::block(move || exporter.render()).await?;
    Ok(HttpResponse::Ok()
        .content_type(prometheus::TEXT_FORMAT)
        .body(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_operation_not_by_name() {
        let m = HttpMetrics::new();
        let get = |repo: &str| {
            crate::api::router::route(
                &actix_web::http::Method::GET,
                &format!("/v2/{repo}/manifests/latest"),
                "",
            )
            .unwrap()
        };
        for repo in ["a", "b/c", "d"] {
            let r = RequestRecord::default();
            r.set(operation(&get(repo)));
            let op = r.operation(Operation::Other);
            m.record(op, 0, "200", Duration::from_millis(2), 0, 10);
        }
        let families = prometheus::Registry::new();
        for c in m.collectors() {
            families.register(c).unwrap();
        }
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&families.gather())
            .unwrap();
        assert!(
            text.contains(r#"ipcr_http_requests_total{code="200",method="GET",operation="manifest_get"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"ipcr_http_sent_bytes_total{operation="manifest_get"} 30"#));
        assert!(text.contains(
            r#"ipcr_http_request_duration_seconds_count{method="GET",operation="manifest_get"} 3"#
        ));
        assert!(!text.contains("b/c"), "a repository name became a label: {text}");
    }

    #[test]
    fn requests_outside_the_api_are_named_by_path() {
        assert_eq!(path_operation("/ready"), Operation::Ready);
        assert_eq!(path_operation("/v2/%%%/nothing"), Operation::Unknown);
        assert_eq!(path_operation("/ui/repo/x"), Operation::Ui);
        assert_eq!(path_operation("/"), Operation::Ui);
        assert_eq!(path_operation("/wp-admin"), Operation::Other);
        let r = RequestRecord::default();
        assert_eq!(r.operation(Operation::Other), Operation::Other);
        r.set(Operation::Token);
        r.set(Operation::Other);
        assert_eq!(r.operation(Operation::Other), Operation::Token);
        let brew = actix_web::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(METHODS[method_index(&brew)], "other");
    }

    #[test]
    fn every_operation_sits_at_its_index() {
        for (i, op) in OPERATIONS.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
    }
}
