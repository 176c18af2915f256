//! Fuzz target: Bearer tokens. The input is the token; verification against a trusted key
//! (named by its libtrust kid, also in the dictionary) never panics and never accepts: no
//! input the fuzzer can make carries a valid ES256 signature by that key.
//!
//! Seeds worth giving it: `<base64url header>.<base64url claims>.<base64url signature>` with
//! `"alg":"none"`, `"alg":"HS256"` and the kid below.

#![no_main]

use std::sync::OnceLock;

use ipcr_auth::{TokenConfig, Tokens};
use libfuzzer_sys::fuzz_target;

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<(Tokens, tempfile::TempDir)> = OnceLock::new();
    &TOKENS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["signer".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let bundle = dir.path().join("bundle.pem");
            std::fs::write(&bundle, cert.pem()).unwrap();
            let tokens = Tokens::load(&TokenConfig {
                realm: "https://a.test/token".into(),
                service: "svc".into(),
                issuer: "iss".into(),
                rootcertbundle: Some(bundle),
                ..TokenConfig::default()
            })
            .unwrap();
            (tokens, dir)
        })
        .0
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    assert!(tokens().verify(token).is_err(), "accepted {token:?}");
});
