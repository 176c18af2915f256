//! The registry's web page, served by every node on the registry port beside the OCI API:
//!
//! | path | shows |
//! |---|---|
//! | `GET /` (`?q=`, `?last=`) | repositories: tag count, size, last push; a filter box |
//! | `GET /ui/repo/<name>` | a repository's tags: digest, type, platforms, size, pushed, pull command |
//! | `GET /ui/repo/<name>/manifest/<digest>` | a manifest: config, layers, CIDs, index entries, annotations, referrers |
//! | `GET /ui/cluster` | members, roles, leader, indexes and lag, health, under-replicated blobs, GC |
//! | `GET /ui/ipfs` | the IPFS backend: pinned, pending, failed (with reasons), the queue |
//!
//! Server-rendered HTML (maud, which escapes every value), inline style and a little inline
//! script, nothing loaded from elsewhere. Nothing on it changes state: every route is a `GET`
//! and the only form is the search. Reads go through `registry` the way the `/v2` handlers
//! read ([`read`]); access control asks `ipcr_auth` the API's questions ([`visitor`]).
//!
//! Registered by `api::configure` (before its default service, so `/v2/`, `/ready`,
//! `/debug/health` and the token path keep their handlers); nothing else calls this module.

mod layout;
mod oci;
mod pages;
mod read;
mod status;
mod visitor;

use actix_web::http::StatusCode;
use actix_web::http::header::WWW_AUTHENTICATE;
use actix_web::{HttpRequest, HttpResponse, web};
use ipcr_proto::{Digest, RepoName};
use maud::Markup;

use crate::api::ApiState;
use crate::registry::RegistryError;
use layout::Chrome;
use visitor::Visitor;

/// Register the page's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(repositories))
        .route("/ui/repo/{path:.+}", web::get().to(repository))
        .route("/ui/cluster", web::get().to(cluster))
        .route("/ui/ipfs", web::get().to(ipfs));
}

/// An HTML response with the page's security headers. Pages depend on who asks: never cached.
fn html(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", layout::CSP.as_str()))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "same-origin"))
        .insert_header(("Cache-Control", "no-store"))
        .body(markup.into_string())
}

/// A visitor let in, and the header their pages show.
struct Entered {
    visitor: Visitor,
    chrome: Chrome,
}

/// Let the visitor in, or answer `401` so that the browser asks for credentials.
async fn enter(req: &HttpRequest, state: &ApiState) -> Result<Entered, HttpResponse> {
    let node = state.registry.raft().id();
    let Some(visitor) = Visitor::identify(req, state).await else {
        let chrome = Chrome {
            user: None,
            operator: false,
            node,
        };
        let page = pages::message(
            &chrome,
            "Log in",
            "This registry needs a user name and password: the ones you use with docker login.",
        );
        let mut resp = html(StatusCode::UNAUTHORIZED, page);
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static(visitor::CHALLENGE),
        );
        return Err(resp);
    };
    let chrome = Chrome {
        user: visitor.name().map(str::to_string),
        operator: visitor.may_operate(),
        node,
    };
    Ok(Entered { visitor, chrome })
}

/// The same page for what does not exist and what the visitor may not see.
fn not_found(chrome: &Chrome) -> HttpResponse {
    html(
        StatusCode::NOT_FOUND,
        pages::message(
            chrome,
            "Not found",
            "There is no repository or manifest here that you may see.",
        ),
    )
}

/// A read that failed: `404` for what is missing, `503` (logged) when the cluster cannot answer.
fn failed(chrome: &Chrome, e: RegistryError) -> HttpResponse {
    match e {
        RegistryError::NameUnknown | RegistryError::ManifestUnknown => not_found(chrome),
        e => {
            tracing::warn!(error = %e, "web page: read failed");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message(
                    chrome,
                    "Unavailable",
                    "The registry cannot answer right now (no leader with a quorum, or storage failing). Try again shortly.",
                ),
            )
        }
    }
}

/// A query parameter (the last one of that name).
fn query(req: &HttpRequest, key: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .last()
        .filter(|v| !v.is_empty())
}

/// The registry's host as the visitor reached it, for pull commands.
fn host(req: &HttpRequest) -> String {
    req.connection_info().host().to_string()
}

/// `GET /`: the repositories the visitor sees.
async fn repositories(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    let e = match enter(&req, &state).await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let q = query(&req, "q")
        .map(|q| q.trim().to_string())
        .filter(|q| !q.is_empty());
    let last = query(&req, "last");
    let visible = |name: &str| e.visitor.sees(name);
    match read::repositories(&state.registry, visible, q.as_deref(), last.as_deref()).await {
        Ok(list) => html(
            StatusCode::OK,
            pages::repositories(&e.chrome, &list, q.as_deref(), layout::now_ms()),
        ),
        Err(err) => failed(&e.chrome, err),
    }
}

/// `GET /ui/repo/<name>` and `GET /ui/repo/<name>/manifest/<digest>`. A repository name never
/// holds a `:`, so a last segment that is a digest cannot be part of the name.
async fn repository(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    let e = match enter(&req, &state).await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let path = path.into_inner();
    let (name, digest) = match path.rsplit_once("/manifest/") {
        Some((name, d)) => match d.parse::<Digest>() {
            Ok(d) => (name, Some(d)),
            Err(_) => return not_found(&e.chrome),
        },
        None => (path.as_str(), None),
    };
    let Ok(repo) = name.parse::<RepoName>() else {
        return not_found(&e.chrome);
    };
    if !e.visitor.sees(repo.as_str()) {
        return not_found(&e.chrome);
    }
    let now = layout::now_ms();
    match digest {
        None => match read::tags(&state.registry, &repo, query(&req, "last").as_deref()).await {
            Ok(list) => html(
                StatusCode::OK,
                pages::tags(&e.chrome, &host(&req), repo.as_str(), &list, now),
            ),
            Err(err) => failed(&e.chrome, err),
        },
        Some(d) => match read::manifest(&state.registry, &repo, &d).await {
            Ok(detail) => html(
                StatusCode::OK,
                pages::manifest(&e.chrome, &host(&req), repo.as_str(), &detail, now),
            ),
            Err(err) => failed(&e.chrome, err),
        },
    }
}

/// Refuse the cluster's pages to visitors who may not see them.
fn forbidden(chrome: &Chrome) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            chrome,
            "Not for you",
            "The cluster's state is shown to administrators (auth.access.admins).",
        ),
    )
}

/// Let an administrator in; others get `401` or `403`.
async fn enter_admin(req: &HttpRequest, state: &ApiState) -> Result<Entered, HttpResponse> {
    let e = enter(req, state).await?;
    if e.chrome.operator {
        Ok(e)
    } else {
        Err(forbidden(&e.chrome))
    }
}

/// `GET /ui/cluster`.
async fn cluster(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    let e = match enter_admin(&req, &state).await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    // One pass over the blob index: off the HTTP worker.
    let registry = state.registry.clone();
    let Ok(status) = web::block(move || crate::api::cluster::cluster_status(&registry)).await else {
        return failed(&e.chrome, RegistryError::Internal("status task failed".into()));
    };
    let view = status::ClusterView {
        status,
        problems: state.health.problems(),
        draining: state.health.draining(),
        replicas: state.registry.replicas(),
    };
    html(
        StatusCode::OK,
        status::cluster(&e.chrome, &view, layout::now_ms()),
    )
}

/// Blobs of the IPFS queue shown.
const QUEUE_SHOWN: usize = 50;

/// `GET /ui/ipfs`.
async fn ipfs(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    let e = match enter_admin(&req, &state).await {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let registry = state.registry.clone();
    let gathered = web::block(move || {
        let status = crate::api::cluster::cluster_status(&registry);
        let queue = match status.ipfs {
            Some(_) => registry.raft().reader().unpinned(None, QUEUE_SHOWN),
            None => Ok(Vec::new()),
        };
        (status.ipfs, queue)
    })
    .await;
    let (ipfs, queue) = match gathered {
        Ok((ipfs, Ok(queue))) => (ipfs, queue),
        Ok((_, Err(err))) => return failed(&e.chrome, err.into()),
        Err(_) => return failed(&e.chrome, RegistryError::Internal("status task failed".into())),
    };
    let backend = state.registry.backend();
    let view = status::IpfsView {
        ipfs,
        gateway: backend.and_then(|b| b.gateway_url("<cid>")),
        queue,
        problem: backend.and_then(|b| {
            let check = format!("storagedriver_{}", b.name());
            state.health.problems().into_iter().find(|(c, _)| *c == check)
        }),
    };
    html(StatusCode::OK, status::ipfs(&e.chrome, &view))
}
