//! The one place that decides an error's HTTP status and OCI error code.
//!
//! Every failure reaching a client goes through [`ApiError`], whose response is the spec's JSON
//! envelope. What a client is told is short and fixed where it could leak the node's insides:
//! 5xx and 503 answers carry only the code's message, never a cause chain, a peer's address or
//! a URL; client input is quoted at most [`ECHO_LIMIT`] characters long ([`echo`]) and every
//! message is cut at [`MESSAGE_LIMIT`]. The details go to [`ApiError::cause`], which the request
//! middleware (`api::request_span`) logs with the request id that the response carries in
//! [`REQUEST_ID_HEADER`].

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use ipcr_proto::{ErrorCode, ErrorEnvelope};
use serde_json::Value;

use crate::raft::RaftError;
use crate::registry::RegistryError;
use crate::upload::UploadError;

/// The response header (`X-Request-Id`) carrying the id of the request, which every log line
/// of the request (and the one describing its error) carries too. Lower case, as
/// `HeaderName::from_static` wants it.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The most characters of one piece of client input an error message quotes. Echoing input
/// whole lets a client make the node send (and log) anything it likes, 10 kB at a time.
pub const ECHO_LIMIT: usize = 64;

/// The longest message an error envelope carries, whatever built it (a lower layer's message
/// may quote input too, such as a JSON parser's).
pub const MESSAGE_LIMIT: usize = 256;

/// The message of every `500`: the cause is in the log, under the request id.
const INTERNAL_MESSAGE: &str = "internal error; the registry's log has the details under the request id";

/// The message of every `503`: which node or peer could not be reached is the operator's
/// business, not the client's.
const UNAVAILABLE_MESSAGE: &str = "service unavailable; retry later";

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI error code.
    pub code: ErrorCode,
    /// Message for the envelope (at most [`MESSAGE_LIMIT`] characters).
    pub message: String,
    /// Detail for the envelope.
    pub detail: Value,
    /// Extra response headers (`Range` on 416, `Retry-After` on 503, ...).
    pub headers: Vec<(HeaderName, String)>,
    /// What went wrong underneath (a cause chain, a peer's error), for the log only: never sent.
    pub cause: Option<String>,
}

/// `input` as an error message may quote it: its first [`ECHO_LIMIT`] characters, with an
/// ellipsis when it was longer.
pub fn echo(input: &str) -> String {
    cut(input, ECHO_LIMIT)
}

/// At most `limit` characters of `s` (on a character boundary), `…` marking a cut.
fn cut(s: &str, limit: usize) -> String {
    match s.char_indices().nth(limit) {
        None => s.to_string(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// The status each code gets when nothing more specific applies.
fn default_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BlobUnknown
        | ErrorCode::BlobUploadUnknown
        | ErrorCode::ManifestUnknown
        | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Denied => StatusCode::FORBIDDEN,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl ApiError {
    /// An error with the code's usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: default_status(code),
            code,
            message: cut(&message.into(), MESSAGE_LIMIT),
            detail: Value::Null,
            headers: Vec::new(),
            cause: None,
        }
    }

    /// Override the status.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Add a response header.
    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    /// Set the envelope's detail.
    pub fn with_detail(mut self, detail: Value) -> ApiError {
        self.detail = detail;
        self
    }

    /// Record what went wrong underneath, for the log.
    pub fn with_cause(mut self, cause: impl Into<String>) -> ApiError {
        self.cause = Some(cause.into());
        self
    }

    /// No API endpoint at this path.
    pub fn not_found() -> ApiError {
        ApiError::new(ErrorCode::Unsupported, "no such API endpoint").with_status(StatusCode::NOT_FOUND)
    }

    /// The endpoint exists but not with this method; `allow` lists the methods it takes.
    pub fn method_not_allowed(allow: &str) -> ApiError {
        ApiError::new(ErrorCode::Unsupported, "method not allowed")
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
            .with_header(actix_web::http::header::ALLOW, allow)
    }

    /// A failure of the node itself (`500 UNKNOWN`): the client gets a fixed message, the log
    /// the whole cause chain.
    pub fn internal(cause: &dyn std::error::Error) -> ApiError {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        ApiError::new(ErrorCode::Unknown, INTERNAL_MESSAGE).with_cause(chain)
    }

    /// The cluster cannot serve the request now (`503 UNAVAILABLE` with `Retry-After`); `why`
    /// (which names peers and their URLs) goes to the log only.
    pub fn unavailable(why: String) -> ApiError {
        ApiError::new(ErrorCode::Unavailable, UNAVAILABLE_MESSAGE)
            .with_header(actix_web::http::header::RETRY_AFTER, "1")
            .with_cause(why)
    }

    /// Log this error, in the request's span (so with its id): 5xx as errors with their cause,
    /// 503 as a warning (the cluster, not this node, is at fault), refusals of bad input at
    /// debug level (the access log already has their status).
    pub fn log(&self) {
        let (status, code) = (self.status.as_u16(), self.code);
        let cause = self.cause.as_deref().unwrap_or("");
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(status, ?code, cause, "request failed: unavailable");
        } else if self.status.is_server_error() {
            tracing::error!(status, ?code, cause, "request failed: internal error");
        } else {
            tracing::debug!(status, ?code, message = %self.message, cause, "request refused");
        }
    }
}

/// `Range` header value for an upload holding `size` bytes (distribution's convention).
pub fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::Unavailable(m) => ApiError::unavailable(m),
            fatal @ RaftError::Fatal(_) => ApiError::internal(&fatal),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Unknown => ApiError::new(ErrorCode::BlobUploadUnknown, "upload unknown"),
            UploadError::RangeMismatch { size } => ApiError::new(
                ErrorCode::BlobUploadInvalid,
                format!("chunk out of order; the upload holds {size} bytes"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_header(actix_web::http::header::RANGE, upload_range(size)),
            UploadError::SizeInvalid(m) => ApiError::new(ErrorCode::SizeInvalid, m),
            UploadError::DigestInvalid(m) => ApiError::new(ErrorCode::DigestInvalid, m),
            UploadError::Aborted(m) => ApiError::new(ErrorCode::BlobUploadInvalid, m),
            UploadError::Raft(r) => r.into(),
            other @ (UploadError::Io(_) | UploadError::Internal(_)) => ApiError::internal(&other),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NameUnknown => ApiError::new(ErrorCode::NameUnknown, e.to_string()),
            RegistryError::ManifestUnknown => ApiError::new(ErrorCode::ManifestUnknown, e.to_string()),
            RegistryError::BlobUnknown => ApiError::new(ErrorCode::BlobUnknown, e.to_string()),
            RegistryError::ManifestInvalid(m) => ApiError::new(ErrorCode::ManifestInvalid, m.to_string()),
            RegistryError::ManifestTooLarge => ApiError::new(ErrorCode::SizeInvalid, e.to_string())
                .with_status(StatusCode::PAYLOAD_TOO_LARGE),
            RegistryError::ManifestBlobUnknown(ref d) => {
                ApiError::new(ErrorCode::ManifestBlobUnknown, e.to_string())
                    .with_detail(serde_json::json!({ "digest": d.to_string() }))
            }
            RegistryError::DescriptorSize {
                ref digest,
                declared,
                expected,
            } => ApiError::new(ErrorCode::ManifestInvalid, e.to_string()).with_detail(serde_json::json!({
                "digest": digest.to_string(),
                "declared": declared,
                "expected": expected,
            })),
            RegistryError::DigestInvalid(m) => ApiError::new(ErrorCode::DigestInvalid, m),
            RegistryError::DeleteDisabled => ApiError::new(ErrorCode::Unsupported, e.to_string())
                .with_status(StatusCode::METHOD_NOT_ALLOWED),
            RegistryError::Upload(u) => u.into(),
            RegistryError::Raft(r) => r.into(),
            RegistryError::Upstream(why) => ApiError::unavailable(why),
            other @ (RegistryError::State(_) | RegistryError::Io(_) | RegistryError::Internal(_)) => {
                ApiError::internal(&other)
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}: {}", self.status, self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status);
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                resp.insert_header((name.clone(), v));
            }
        }
        resp.json(ErrorEnvelope::single(
            self.code,
            self.message.clone(),
            self.detail.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_error_gets_the_spec_code_and_status() {
        let cases: Vec<(ApiError, ErrorCode, u16)> = vec![
            (RegistryError::NameUnknown.into(), ErrorCode::NameUnknown, 404),
            (
                RegistryError::ManifestUnknown.into(),
                ErrorCode::ManifestUnknown,
                404,
            ),
            (RegistryError::BlobUnknown.into(), ErrorCode::BlobUnknown, 404),
            (
                RegistryError::ManifestTooLarge.into(),
                ErrorCode::SizeInvalid,
                413,
            ),
            (RegistryError::DeleteDisabled.into(), ErrorCode::Unsupported, 405),
            (
                RegistryError::DigestInvalid("x".into()).into(),
                ErrorCode::DigestInvalid,
                400,
            ),
            (
                RegistryError::ManifestInvalid(ipcr_proto::manifest::ManifestError::Schema1).into(),
                ErrorCode::ManifestInvalid,
                400,
            ),
            (
                RegistryError::DescriptorSize {
                    digest: "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                        .parse()
                        .unwrap(),
                    declared: 999_999,
                    expected: 11,
                }
                .into(),
                ErrorCode::ManifestInvalid,
                400,
            ),
            (UploadError::Unknown.into(), ErrorCode::BlobUploadUnknown, 404),
            (
                UploadError::RangeMismatch { size: 10 }.into(),
                ErrorCode::BlobUploadInvalid,
                416,
            ),
            (
                UploadError::SizeInvalid("x".into()).into(),
                ErrorCode::SizeInvalid,
                400,
            ),
            (
                UploadError::DigestInvalid("x".into()).into(),
                ErrorCode::DigestInvalid,
                400,
            ),
            (
                UploadError::Aborted("x".into()).into(),
                ErrorCode::BlobUploadInvalid,
                400,
            ),
            (
                RaftError::Unavailable("x".into()).into(),
                ErrorCode::Unavailable,
                503,
            ),
            (RaftError::Fatal("x".into()).into(), ErrorCode::Unknown, 500),
        ];
        for (err, code, status) in cases {
            assert_eq!((err.code, err.status.as_u16()), (code, status), "{err}");
        }
        let e: ApiError = UploadError::RangeMismatch { size: 10 }.into();
        assert!(
            e.headers
                .iter()
                .any(|(n, v)| n == actix_web::http::header::RANGE && v == "0-9")
        );
        let e: ApiError = RaftError::Unavailable("x".into()).into();
        assert!(
            e.headers
                .iter()
                .any(|(n, _)| n == actix_web::http::header::RETRY_AFTER)
        );
    }

    #[test]
    fn server_errors_tell_the_client_nothing_of_their_cause() {
        let why = "no read index within 4s: http://127.0.0.1:5236/cluster/read-index: error sending request";
        let e: ApiError = RaftError::Unavailable(why.into()).into();
        assert_eq!(e.message, UNAVAILABLE_MESSAGE);
        assert_eq!(e.cause.as_deref(), Some(why));

        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "open /data/uploads/x");
        let e: ApiError = UploadError::Io(io).into();
        assert_eq!((e.status.as_u16(), e.message.as_str()), (500, INTERNAL_MESSAGE));
        assert!(e.cause.as_deref().is_some_and(|c| c.contains("/data/uploads/x")));
        let e: ApiError = RegistryError::Internal("invariant".into()).into();
        assert_eq!(e.message, INTERNAL_MESSAGE);

        for e in [
            ApiError::unavailable(why.into()),
            ApiError::internal(&std::io::Error::other(why)),
        ] {
            let body = actix_web::body::MessageBody::try_into_bytes(e.error_response().into_body())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("127.0.0.1") && !text.contains("http"), "{text}");
        }
    }

    #[test]
    fn echoed_input_and_messages_are_cut() {
        assert_eq!(echo("short"), "short");
        let long = "a".repeat(10_000);
        let quoted = echo(&long);
        assert_eq!(quoted.chars().count(), ECHO_LIMIT + 1);
        assert!(quoted.ends_with('…'));
        // Cut on a character boundary, never inside one.
        assert_eq!(echo(&"ä".repeat(100)).chars().count(), ECHO_LIMIT + 1);
        let e = ApiError::new(ErrorCode::ManifestInvalid, long);
        assert_eq!(e.message.chars().count(), MESSAGE_LIMIT + 1);
    }
}
