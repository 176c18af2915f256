//! Tokens made by the tests rather than by a token server: a JWT's parts read without
//! verification, claims signed with any key and algorithm (the node's own key too, as the
//! control that shows the forger itself works), unsigned (`alg: none`) and tampered tokens.
//!
//! Only the access-control tests call it.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The header and claims of `token`, unverified.
pub fn parts(token: &str) -> (Value, Value) {
    let part = |i: usize| {
        let raw = token.split('.').nth(i).expect("a JWT has three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(raw)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (part(0), part(1))
}

/// `claims` signed with `key` under `alg`, the header naming `kid`.
pub fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).expect("signing a token")
}

/// `claims` with `alg: none` and an empty signature.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// `token` with its claims replaced by `claims`, its header and signature kept.
pub fn tampered(token: &str, claims: &Value) -> String {
    let mut it = token.split('.');
    let (header, _, signature) = (it.next(), it.next(), it.next());
    format!(
        "{}.{}.{}",
        header.expect("a header"),
        b64url(claims.to_string().as_bytes()),
        signature.expect("a signature")
    )
}

/// `claims` with the keys of `changes` set.
pub fn with(claims: &Value, changes: &[(&str, Value)]) -> Value {
    let mut c = claims.clone();
    for (k, v) in changes {
        c[*k] = v.clone();
    }
    c
}

/// Seconds since the Unix epoch, as JWT times count.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64
}
