//! The OCI Distribution API over HTTP: the only module that knows HTTP.
//!
//! Every request under `/v2` goes through [`dispatch`]: the router turns it into a typed
//! [`router::Endpoint`] and a handler named after the OCI operation extracts what it needs,
//! calls `registry` or `upload`, and builds the response. This single entry point is where
//! access is checked ([`access`]), before any handler runs.

pub mod access;
pub mod body;
pub mod cluster;
pub mod error;
pub mod metrics;
pub mod router;

pub mod blobs;
mod listing;
mod manifests;
mod ops;
mod uploads;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{DefaultHeaders, Next, from_fn};
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, web};
use tracing::Instrument;

use crate::health::Health;
use crate::registry::Registry;
use error::ApiError;
use router::Endpoint;

/// Everything handlers share.
pub struct ApiState {
    /// The registry service.
    pub registry: Registry,
    /// Backend health, for `/debug/health`.
    pub health: Health,
    /// `http.bodytimeout`: how long a request body may stall.
    pub body_timeout: std::time::Duration,
    /// Access control (`auth:`); `None`: open to everyone.
    pub auth: Option<std::sync::Arc<ipcr_auth::Auth>>,
    /// Pull-through caches (`proxy:`); `None`: no repository is one.
    pub proxy: Option<std::sync::Arc<crate::proxy::Proxy>>,
}

/// Response settings from the configuration.
#[derive(Clone, Default)]
pub struct HttpSettings {
    /// `http.headers`: added to every response.
    pub headers: Vec<(String, String)>,
    /// Log one line per request.
    pub access_log: bool,
    /// Requests' metrics (`http.debug.prometheus.enabled`); `None`: nothing is recorded.
    pub metrics: Option<metrics::HttpMetrics>,
}

impl HttpSettings {
    /// The settings a configuration asks for.
    pub fn from_config(config: &crate::config::Config) -> HttpSettings {
        HttpSettings {
            headers: config
                .http
                .headers
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone())))
                .collect(),
            access_log: !config.log.accesslog.disabled,
            metrics: config.http.debug.metrics().then(metrics::HttpMetrics::new),
        }
    }
}

/// The whole application: headers, request spans and the API. Used by the server and by
/// in-process tests alike.
pub fn app(
    state: web::Data<ApiState>,
    settings: HttpSettings,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let access_log = settings.access_log;
    let metrics = settings.metrics.clone();
    App::new()
        .wrap(default_headers(&settings))
        .wrap(from_fn(move |req, next| {
            request_span(access_log, metrics.clone(), req, next)
        }))
        .configure(|cfg| configure(cfg, state))
}

/// Register the API on an actix-web app.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<ApiState>) {
    if let Some(path) = state.auth.as_ref().and_then(|a| a.token_path()) {
        cfg.route(&path, web::get().to(access::token))
            .route(&path, web::post().to(access::token));
    }
    cfg.app_data(state)
        .route("/debug/health", web::get().to(ops::health))
        .route("/ready", web::get().to(ops::ready))
        .configure(crate::ui::configure)
        .default_service(web::to(dispatch));
}

/// Headers every response carries: the API version and `http.headers`.
pub fn default_headers(settings: &HttpSettings) -> DefaultHeaders {
    let mut headers = DefaultHeaders::new().add(("Docker-Distribution-API-Version", "registry/2.0"));
    for (name, value) in &settings.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
            headers = headers.add((n, v));
        }
    }
    headers
}

/// A span per request, with an id that every response carries in [`error::REQUEST_ID_HEADER`]
/// (so a client's report can be matched with the log); the error's details, logged in the span;
/// an access log line unless disabled; and the request's metrics when they are on.
pub async fn request_span(
    access_log: bool,
    metrics: Option<metrics::HttpMetrics>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let is_probe = matches!(req.path(), "/ready" | "/debug/health");
    let span = tracing::info_span!("request", id = %id, method = %req.method(), path = %req.path());
    let started = Instant::now();
    let record = metrics.as_ref().map(|_| {
        let record = metrics::Recorder::default();
        req.extensions_mut().insert(record.clone());
        (
            record,
            metrics::method_index(req.method()),
            metrics::path_operation(req.path()),
        )
    });
    // Handlers' and extractors' errors arrive as responses (actix turns them into one, keeping
    // the error); only a failure of actix itself arrives as `Err`, with no response to mark.
    let mut res = match next.call(req).instrument(span.clone()).await {
        Ok(r) => r,
        Err(e) => {
            let _enter = span.enter();
            tracing::error!(error = %e, "request failed");
            return Err(e);
        }
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(error::REQUEST_ID_HEADER), v);
    }
    if let (Some(m), Some((record, method, fallback))) = (&metrics, &record) {
        let sent = match res.response().body().size() {
            actix_web::body::BodySize::Sized(n) => n,
            _ => 0,
        };
        m.record(
            record.operation(*fallback),
            *method,
            res.status().as_str(),
            started.elapsed(),
            record.received_bytes(),
            sent,
        );
    }
    let _enter = span.enter();
    if let Some(e) = res.response().error() {
        match e.as_error::<ApiError>() {
            Some(api) => api.log(),
            None if res.status().is_server_error() => tracing::error!(error = %e, "request failed"),
            None => tracing::debug!(error = %e, "request refused"),
        }
    }
    // Health checks every second or two would drown the log.
    if access_log && !is_probe {
        tracing::info!(
            status = res.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "served"
        );
    }
    Ok(res)
}

/// A proxied repository is a cache: it takes no pushes or deletes (`405 UNSUPPORTED`, as
/// distribution answers in proxy mode).
fn refuse_writes_to_caches(endpoint: &Endpoint, proxy: Option<&crate::proxy::Proxy>) -> Result<(), ApiError> {
    let Some(proxy) = proxy else { return Ok(()) };
    let repo = match endpoint {
        Endpoint::PutManifest { repo, .. }
        | Endpoint::DeleteManifest { repo, .. }
        | Endpoint::DeleteBlob { repo, .. }
        | Endpoint::StartUpload { repo, .. }
        | Endpoint::PatchUpload { repo, .. }
        | Endpoint::PutUpload { repo, .. }
        | Endpoint::DeleteUpload { repo, .. } => repo,
        _ => return Ok(()),
    };
    match proxy.route(repo) {
        Some(route) => Err(ApiError::new(
            ipcr_proto::ErrorCode::Unsupported,
            format!(
                "{repo} is a pull-through cache of {}: it takes no pushes",
                route.upstream()
            ),
        )
        .with_status(actix_web::http::StatusCode::METHOD_NOT_ALLOWED)),
        None => Ok(()),
    }
}

/// The single entry point of `/v2`.
pub async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let mut endpoint = router::route(req.method(), req.path(), req.query_string())?;
    let record = req.extensions().get::<metrics::Recorder>().cloned();
    if let Some(r) = &record {
        r.set(metrics::operation(&endpoint));
    }
    let caller = match &state.auth {
        Some(auth) => Some((auth, access::check(&req, auth, &mut endpoint).await?)),
        None => None,
    };
    let payload = body::RequestBody::new(payload, state.body_timeout).counted(record);
    let reg = &state.registry;
    let proxy = state.proxy.as_deref();
    refuse_writes_to_caches(&endpoint, proxy)?;
    match endpoint {
        Endpoint::Base => Ok(HttpResponse::Ok().content_type("application/json").body("{}")),
        Endpoint::Catalog { n, last } => {
            let visible = |name: &str| caller.as_ref().is_none_or(|(auth, id)| auth.may_pull(id, name));
            listing::get_catalog(reg, n, last, visible).await
        }
        Endpoint::ListTags { repo, n, last } => listing::list_tags(reg, repo, n, last).await,
        Endpoint::Referrers {
            repo,
            subject,
            artifact_type,
        } => listing::get_referrers(reg, repo, subject, artifact_type).await,
        Endpoint::GetManifest {
            repo,
            reference,
            head,
        } => manifests::get_manifest(&req, reg, repo, reference, head, proxy).await,
        Endpoint::PutManifest {
            repo,
            reference,
            tags,
        } => manifests::put_manifest(&req, payload, reg, repo, reference, tags).await,
        Endpoint::DeleteManifest { repo, reference } => {
            manifests::delete_manifest(reg, repo, reference).await
        }
        Endpoint::GetBlob { repo, digest, head } => {
            blobs::get_blob(&req, reg, repo, digest, head, proxy).await
        }
        Endpoint::DeleteBlob { repo, digest } => blobs::delete_blob(reg, repo, digest).await,
        Endpoint::StartUpload {
            repo,
            digest,
            mount,
            algorithm,
        } => uploads::start_upload(&req, payload, reg, repo, digest, mount, algorithm).await,
        Endpoint::PatchUpload { repo, id } => uploads::patch_upload(&req, payload, reg, repo, id).await,
        Endpoint::PutUpload { repo, id, digest } => {
            uploads::put_upload(&req, payload, reg, repo, id, digest).await
        }
        Endpoint::GetUpload { repo, id } => uploads::get_upload(reg, repo, id).await,
        Endpoint::DeleteUpload { repo, id } => uploads::delete_upload(reg, repo, id).await,
    }
}
