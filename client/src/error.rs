//! What can go wrong talking to a registry, worded for the operator: which registry, which
//! request, the status and the OCI error code the registry gave.

use reqwest::Response;

use crate::image::RegistryAddr;
use crate::retry::Retry;

/// A failed registry operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be set up (TLS roots, a scheme not allowed) before any request.
    #[error("{0}")]
    Setup(String),
    /// The request did not complete: no connection, TLS refused, a timeout, a broken body.
    #[error("{registry}: {}", chain(error))]
    Http {
        /// The registry's address.
        registry: String,
        /// reqwest's error.
        error: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("{registry}: {what}: HTTP {status}{}{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default(), if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        /// The registry's address.
        registry: String,
        /// The request (`GET /v2/.../manifests/...`).
        what: String,
        /// The HTTP status.
        status: u16,
        /// The first OCI error code of the body, if it had one.
        code: Option<String>,
        /// The error's message, or the start of a body that was not OCI JSON.
        message: String,
    },
    /// An answer that breaks the protocol: bytes of another digest, an oversized manifest.
    #[error("{registry}: {detail}")]
    Protocol {
        /// The registry's address.
        registry: String,
        /// What was wrong.
        detail: String,
    },
}

/// An error and its causes on one line (reqwest's own Display stops at the first).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

#[derive(serde::Deserialize)]
struct Envelope {
    errors: Vec<OciError>,
}

#[derive(serde::Deserialize)]
struct OciError {
    code: String,
    #[serde(default)]
    message: String,
}

impl Error {
    /// The error an unsuccessful `resp` to `what` stands for, with the OCI code of its body.
    pub async fn from_response(registry: &RegistryAddr, what: &str, resp: Response) -> Error {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let (code, message) = match serde_json::from_slice::<Envelope>(&body) {
            Ok(env) if !env.errors.is_empty() => {
                (Some(env.errors[0].code.clone()), env.errors[0].message.clone())
            }
            _ => (
                None,
                String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_string(),
            ),
        };
        Error::Status {
            registry: registry.to_string(),
            what: what.to_string(),
            status,
            code,
            message,
        }
    }

    /// The registry's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The registry does not have it.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Worth trying again later: the connection failed or broke, or the registry was busy or
    /// failing (after the request-level retries were used up).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Http { error, .. } => Retry::retryable_error(error),
            Error::Status { status, .. } => {
                reqwest::StatusCode::from_u16(*status).is_ok_and(Retry::retryable_status)
            }
            _ => false,
        }
    }
}
