//! The registry port's metrics: requests by API operation (never by repository, tag or digest:
//! their number is unbounded), method and status; how long each took until its response's head
//! was ready (a pull's bytes stream after); and the bytes of request and response bodies.
//!
//! The middleware ([`super::request_span`]) puts a [`RequestRecord`] in each request's
//! extensions; [`super::dispatch`] names the operation there and the request body
//! ([`super::body::RequestBody`]) counts what it reads; the middleware records it all once the
//! response is ready.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use actix_web::{HttpResponse, web};

use super::router::Endpoint;
use crate::metrics::Exporter;

/// Latency buckets, in seconds: from a manifest served from memory to a large chunk written.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The registry port's counters and histograms (cheap to clone: they are shared).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    received: IntCounterVec,
    sent: IntCounterVec,
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
        }
    }

    /// Everything to export.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.received.clone()),
            Box::new(self.sent.clone()),
        ]
    }

    /// Record one finished request.
    pub fn record(&self, operation: &str, method: &str, code: u16, took: Duration, received: u64, sent: u64) {
        let code = code.to_string();
        self.requests
            .with_label_values(&[operation, method, code.as_str()])
            .inc();
        self.duration
            .with_label_values(&[operation, method])
            .observe(took.as_secs_f64());
        if received > 0 {
            self.received.with_label_values(&[operation]).inc_by(received);
        }
        if sent > 0 {
            self.sent.with_label_values(&[operation]).inc_by(sent);
        }
    }
}

/// What one request did, filled in while it runs.
#[derive(Default)]
pub struct RequestRecord {
    operation: OnceLock<&'static str>,
    received: AtomicU64,
}

impl RequestRecord {
    /// The operation the request turned out to be (the first name given stays).
    pub fn set(&self, operation: &'static str) {
        let _ = self.operation.set(operation);
    }

    /// `n` more bytes of the request body were read.
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The operation, or what the path says when no API operation was named.
    pub fn operation(&self, path: &str) -> &'static str {
        if let Some(op) = self.operation.get() {
            return op;
        }
        match path {
            "/ready" => "ready",
            "/debug/health" => "health",
            p if p == "/v2" || p.starts_with("/v2/") => "unknown",
            "/" => "ui",
            p if p.starts_with("/ui/") => "ui",
            _ => "other",
        }
    }

    /// Bytes of the request body read.
    pub fn received_bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// The shared handle a request's extensions hold.
pub type Recorder = Arc<RequestRecord>;

/// The method as a label: the API's methods by name, anything else as `other` (a client
/// cannot make up label values).
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The operation's label: distribution's and the spec's names for the endpoints.
pub fn operation(endpoint: &Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Base => "base",
        Endpoint::Catalog { .. } => "catalog",
        Endpoint::ListTags { .. } => "tags_list",
        Endpoint::Referrers { .. } => "referrers",
        Endpoint::GetManifest { head: false, .. } => "manifest_get",
        Endpoint::GetManifest { head: true, .. } => "manifest_head",
        Endpoint::PutManifest { .. } => "manifest_put",
        Endpoint::DeleteManifest { .. } => "manifest_delete",
        Endpoint::GetBlob { head: false, .. } => "blob_get",
        Endpoint::GetBlob { head: true, .. } => "blob_head",
        Endpoint::DeleteBlob { .. } => "blob_delete",
        Endpoint::StartUpload { .. } => "upload_start",
        Endpoint::PatchUpload { .. } => "upload_patch",
        Endpoint::PutUpload { .. } => "upload_put",
        Endpoint::GetUpload { .. } => "upload_status",
        Endpoint::DeleteUpload { .. } => "upload_cancel",
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
            m.record(
                r.operation("/ignored"),
                "GET",
                200,
                Duration::from_millis(2),
                0,
                10,
            );
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
        assert!(!text.contains("b/c"), "a repository name became a label: {text}");
    }

    #[test]
    fn requests_outside_the_api_are_named_by_path() {
        let r = RequestRecord::default();
        assert_eq!(r.operation("/ready"), "ready");
        assert_eq!(r.operation("/v2/%%%/nothing"), "unknown");
        assert_eq!(r.operation("/ui/repo/x"), "ui");
        assert_eq!(r.operation("/wp-admin"), "other");
        r.set("token");
        r.set("other");
        assert_eq!(r.operation("/auth/token"), "token");
        assert_eq!(
            method_label(&actix_web::http::Method::from_bytes(b"BREW").unwrap()),
            "other"
        );
    }
}
