//! Access control at the API's door: what each endpoint needs, asked of `ipcr_auth`, and the
//! token endpoint of IPCR's own token server. The rules are `ipcr_auth`'s; this module only
//! names the scope of a request and turns refusals into the spec's `401` / `403`.

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::{HttpRequest, HttpResponse, web};
use ipcr_auth::{Action, Auth, Identity, Need, Refusal};
use ipcr_proto::ErrorCode;
use serde::Serialize;

use super::ApiState;
use super::error::ApiError;
use super::router::Endpoint;

const PULL: &[Action] = &[Action::Pull];
/// Docker's clients ask for `pull,push` on every step of a push; distribution requires both.
const PUSH: &[Action] = &[Action::Pull, Action::Push];
const DELETE: &[Action] = &[Action::Delete];

/// What an endpoint needs.
pub fn need(endpoint: &Endpoint) -> Need<'_> {
    use Endpoint::*;
    match endpoint {
        Base => Need::Base,
        Catalog { .. } => Need::Catalog,
        ListTags { repo, .. } | Referrers { repo, .. } | GetManifest { repo, .. } | GetBlob { repo, .. } => {
            Need::Repository(repo.as_str(), PULL)
        }
        PutManifest { repo, .. }
        | StartUpload { repo, .. }
        | PatchUpload { repo, .. }
        | PutUpload { repo, .. }
        | GetUpload { repo, .. }
        | DeleteUpload { repo, .. } => Need::Repository(repo.as_str(), PUSH),
        DeleteManifest { repo, .. } | DeleteBlob { repo, .. } => Need::Repository(repo.as_str(), DELETE),
    }
}

/// The address failed logins are counted against: the TCP peer (behind a load balancer that
/// is the balancer; configure it to limit clients itself, see docs/security.md).
fn peer(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Unauthorized(challenge) => ApiError::new(ErrorCode::Unauthorized, "authentication required")
            .with_header(WWW_AUTHENTICATE, challenge),
        Refusal::Denied => ApiError::new(ErrorCode::Denied, "requested access to the resource is denied"),
        Refusal::BadRequest(m) => {
            ApiError::new(ErrorCode::Unsupported, m).with_status(StatusCode::BAD_REQUEST)
        }
    }
}

/// Who the caller is and whether it may call `endpoint`. A cross-repository mount from a
/// repository the caller may not pull is dropped (the client uploads the blob instead, as
/// with distribution).
pub async fn check(req: &HttpRequest, auth: &Auth, endpoint: &mut Endpoint) -> Result<Identity, ApiError> {
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let id = auth.authenticate(header, peer(req)).await.map_err(refused)?;
    auth.authorize(&id, need(endpoint)).map_err(refused)?;
    if let Endpoint::StartUpload { mount, .. } = endpoint
        && let Some((_, Some(from))) = mount
        && !auth.allows(&id, from.as_str(), Action::Pull)
    {
        *mount = None;
    }
    Ok(id)
}

#[derive(Serialize)]
struct TokenReply {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
}

/// The token endpoint (`GET`, Docker's token flow, and `POST`, OAuth2's password grant):
/// a token holding the requested scopes the caller is granted.
pub async fn token(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(record) = actix_web::HttpMessage::extensions(&req).get::<super::metrics::Recorder>() {
        record.set(super::metrics::Operation::Token);
    }
    let Some(auth) = &state.auth else {
        return Err(ApiError::not_found());
    };
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(req.query_string().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes().to_vec());
    if req.method() == actix_web::http::Method::POST {
        pairs.extend(form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())));
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        match get("grant_type").as_deref() {
            Some("password") => {
                let (user, password) = (
                    get("username").unwrap_or_default(),
                    get("password").unwrap_or_default(),
                );
                use base64::Engine;
                let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                authorization = Some(format!("Basic {encoded}").into_bytes());
            }
            // Refresh tokens are not issued; clients fall back to the password grant or GET.
            _ => return Err(ApiError::new(ErrorCode::Unsupported, "unsupported grant_type")),
        }
    }
    let service = pairs
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str());
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let issued = auth
        .issue(authorization.as_deref(), peer(&req), service, &scopes)
        .await
        .map_err(refused)?;
    let issued_at = chrono::DateTime::from_timestamp(issued.issued_at as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(TokenReply {
            access_token: issued.token.clone(),
            token: issued.token,
            expires_in: issued.expires_in,
            issued_at,
        }))
}
