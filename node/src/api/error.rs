//! The one place that decides an error's HTTP status and OCI error code.
//!
//! Every failure reaching a client goes through [`ApiError`], whose response is the spec's JSON
//! envelope. 5xx answers are logged with their full cause chain.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use ipcr_proto::{ErrorCode, ErrorEnvelope};
use serde_json::Value;

use crate::raft::RaftError;
use crate::registry::RegistryError;
use crate::upload::UploadError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI error code.
    pub code: ErrorCode,
    /// Message for the envelope.
    pub message: String,
    /// Detail for the envelope.
    pub detail: Value,
    /// Extra response headers (`Range` on 416, `Retry-After` on 503, ...).
    pub headers: Vec<(HeaderName, String)>,
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
            message: message.into(),
            detail: Value::Null,
            headers: Vec::new(),
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

    fn internal(cause: &dyn std::error::Error) -> ApiError {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        ApiError::new(ErrorCode::Unknown, chain)
    }

    fn unavailable(message: String) -> ApiError {
        ApiError::new(ErrorCode::Unavailable, message).with_header(actix_web::http::header::RETRY_AFTER, "1")
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
            RegistryError::DigestInvalid(m) => ApiError::new(ErrorCode::DigestInvalid, m),
            RegistryError::DeleteDisabled => ApiError::new(ErrorCode::Unsupported, e.to_string())
                .with_status(StatusCode::METHOD_NOT_ALLOWED),
            RegistryError::Upload(u) => u.into(),
            RegistryError::Raft(r) => r.into(),
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
}
