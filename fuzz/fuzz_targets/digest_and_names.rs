//! Fuzz target: digests, repository names, tags and manifest references, the values every
//! URL is made of and that lower layers use as storage keys.
//!
//! Whatever parses must print back to the very string it came from (a second spelling of the
//! same value would be a second storage key), and keep the invariants lower layers rely on.

#![no_main]

use ipcr_proto::names::{MAX_NAME_LEN, MAX_TAG_LEN};
use ipcr_proto::{Algorithm, Digest, Reference, RepoName, Tag};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(name) = s.parse::<RepoName>() {
        assert_eq!(name.as_str(), s);
        assert!(s.len() <= MAX_NAME_LEN);
        assert!(s.split('/').all(|c| !c.is_empty() && c != ".." && c != "."));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        );
    }
    if let Ok(tag) = s.parse::<Tag>() {
        assert_eq!(tag.as_str(), s);
        assert!(s.len() <= MAX_TAG_LEN && !s.starts_with(['.', '-']));
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex().len(), d.algorithm().hex_len());
        assert_eq!(Digest::from_raw(d.algorithm(), &d.raw()), d);
    }
    match s.parse::<Reference>() {
        Ok(r) => assert_eq!(r.to_string(), s),
        Err(_) => assert!(s.parse::<Tag>().is_err() && s.parse::<Digest>().is_err()),
    }
    if let Ok(a) = s.parse::<Algorithm>() {
        assert_eq!(a.name(), s);
    }
    // Computed digests print and parse back to themselves too.
    let d = Algorithm::Sha256.digest_bytes(data);
    assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(&d));
});
