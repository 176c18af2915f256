//! Fuzz target: the `Authorization` header. Whatever the bytes, parsing never panics, and
//! `Basic` credentials that parse print back to a value that parses the same.

#![no_main]

use ipcr_auth::header::{Credentials, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Credentials::Basic { user, password }) = parse(data) {
        use base64::Engine;
        let again = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        assert_eq!(
            parse(again.as_bytes()),
            Some(Credentials::Basic { user, password })
        );
    }
});
