//! The OCI error codes and the JSON envelope every error response carries.
//!
//! This is vocabulary only: which code and status a failure gets is decided in the node's
//! `api/error.rs`, the one place that knows HTTP.

use serde::{Deserialize, Serialize};

/// Error codes of the distribution-spec (plus `UNAVAILABLE`, which distribution also uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The blob is unknown to the registry (in this repository).
    BlobUnknown,
    /// The upload was invalid (bad range, bad state).
    BlobUploadInvalid,
    /// The upload session is unknown or was cancelled.
    BlobUploadUnknown,
    /// The provided digest did not match the uploaded content, or is malformed.
    DigestInvalid,
    /// A blob or child manifest referenced by the manifest is unknown in this repository.
    ManifestBlobUnknown,
    /// The manifest is malformed or fails validation.
    ManifestInvalid,
    /// The manifest is unknown in this repository.
    ManifestUnknown,
    /// The repository name is invalid.
    NameInvalid,
    /// The repository is not known to the registry.
    NameUnknown,
    /// The content is larger than allowed or its length disagrees with the request.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Access to the resource is denied.
    Denied,
    /// The operation is not supported.
    Unsupported,
    /// Too many requests.
    #[serde(rename = "TOOMANYREQUESTS")]
    TooManyRequests,
    /// The registry cannot serve the request right now (no quorum, store unavailable).
    Unavailable,
    /// An internal failure (distribution's code for 500s).
    Unknown,
}

impl ErrorCode {
    /// The spec's one-line description, used as the default message.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => "manifest references a manifest or blob unknown to registry",
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::Unavailable => "service unavailable",
            ErrorCode::Unknown => "unknown error",
        }
    }
}

/// One entry of the envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The error code.
    pub code: ErrorCode,
    /// A human readable message.
    pub message: String,
    /// Unstructured detail (may be null).
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// The body of every error response: `{"errors":[{code,message,detail}]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The errors, usually one.
    pub errors: Vec<ErrorInfo>,
}

impl ErrorEnvelope {
    /// An envelope with one error.
    pub fn single(code: ErrorCode, message: impl Into<String>, detail: serde_json::Value) -> Self {
        ErrorEnvelope {
            errors: vec![ErrorInfo {
                code,
                message: message.into(),
                detail,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_the_spec_spells_them() {
        let cases = [
            (ErrorCode::BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN"),
            (ErrorCode::ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN"),
            (ErrorCode::TooManyRequests, "TOOMANYREQUESTS"),
            (ErrorCode::NameInvalid, "NAME_INVALID"),
        ];
        for (code, text) in cases {
            assert_eq!(serde_json::to_value(code).unwrap(), text);
        }
        let env = ErrorEnvelope::single(ErrorCode::BlobUnknown, "nope", serde_json::Value::Null);
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"nope","detail":null}]}"#
        );
    }
}
