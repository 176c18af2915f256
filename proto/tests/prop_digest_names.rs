//! Property tests for the parsers every URL goes through: digests, repository names, tags and
//! manifest references.
//!
//! The oracle is the grammar as the OCI specs write it (distribution-spec for names and tags,
//! image-spec for digests), compiled with the `regex` crate: whatever our hand-written parsers
//! accept must match it, and whatever matches it must be accepted. Bounded to [`CASES`] cases a
//! property so the file runs in the normal `cargo test`; `cargo fuzz run digest_and_names`
//! explores the same parsers for longer (docs/fuzzing.md).

use std::sync::LazyLock;

use ipcr_proto::names::{MAX_NAME_LEN, MAX_TAG_LEN};
use ipcr_proto::{Algorithm, Digest, DigestError, NameError, Reference, RepoName, Tag};
use proptest::prelude::*;
use regex::Regex;

/// Cases per property: enough to cross every branch of these small parsers, few enough that
/// the file takes well under a second in a debug build.
const CASES: u32 = 512;

/// [`CASES`] cases a property, unless `PROPTEST_CASES` asks for more (or fewer) in a longer
/// run; `ProptestConfig::with_cases` alone would ignore the variable.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

/// distribution-spec `<name>`, anchored.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap()
});
/// distribution-spec `<reference>` as a tag, anchored.
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());
/// image-spec digest grammar (any algorithm), anchored.
static DIGEST_GRAMMAR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$").unwrap());
/// image-spec registered algorithms: the only digests IPCR can verify.
static DIGEST_REGISTERED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$").unwrap());

fn name_oracle(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && NAME.is_match(s)
}

/// A valid name: the spec's grammar with bounded repetitions, so it stays under 255 bytes.
fn valid_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}(/[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}){0,4}"
}

fn valid_tag() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
}

fn valid_digest() -> impl Strategy<Value = String> {
    prop_oneof!["sha256:[a-f0-9]{64}", "sha512:[a-f0-9]{128}"]
}

/// Strings from the alphabet the grammars are built of, where the parsers' edge cases are
/// (separator runs, case, lengths near the limits); arbitrary Unicode rarely gets there.
fn near_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._/-]{0,24}", "[a-zA-Z0-9._/ -]{0,12}", "[a-z/]{250,260}"]
}

fn near_tag() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9._:/-]{0,16}", "[a-zA-Z0-9_.-]{126,130}"]
}

fn near_digest() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9+._-]{0,12}:[a-zA-Z0-9=_:-]{0,16}",
        "(sha256|sha512|SHA256|md5|sha256\\+b64)(:|::)[a-fA-F0-9]{62,66}",
        "sha512:[a-f0-9g]{127,129}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_strings_never_panic_and_follow_the_spec(s in "\\PC{0,64}|.{0,300}") {
        prop_assert_eq!(s.parse::<RepoName>().is_ok(), name_oracle(&s));
        prop_assert_eq!(s.parse::<Tag>().is_ok(), TAG.is_match(&s));
        prop_assert_eq!(s.parse::<Digest>().is_ok(), DIGEST_REGISTERED.is_match(&s));
        let _ = s.parse::<Reference>();
        let _ = s.parse::<Algorithm>();
    }

    #[test]
    fn names_are_accepted_exactly_when_the_spec_says(s in near_name()) {
        prop_assert_eq!(s.parse::<RepoName>().is_ok(), name_oracle(&s), "{:?}", s);
    }

    #[test]
    fn tags_are_accepted_exactly_when_the_spec_says(s in near_tag()) {
        prop_assert_eq!(s.parse::<Tag>().is_ok(), TAG.is_match(&s), "{:?}", s);
        prop_assert!(s.len() <= MAX_TAG_LEN || s.parse::<Tag>().is_err());
    }

    #[test]
    fn digest_errors_say_what_is_wrong(s in near_digest()) {
        let algo = s.split_once(':').map(|(a, _)| a);
        let expected = if DIGEST_REGISTERED.is_match(&s) {
            None
        } else if !DIGEST_GRAMMAR.is_match(&s) {
            Some(DigestError::Format)
        } else if matches!(algo, Some("sha256" | "sha512")) {
            Some(DigestError::Encoding(if algo == Some("sha256") { "sha256" } else { "sha512" }))
        } else {
            Some(DigestError::Unsupported(algo.unwrap().to_string()))
        };
        prop_assert_eq!(s.parse::<Digest>().err(), expected, "{:?}", s);
    }

    #[test]
    fn valid_names_round_trip(s in valid_name()) {
        let name: RepoName = s.parse().map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(name.as_str(), s.as_str());
        prop_assert_eq!(name.to_string(), s.clone());
        let json = serde_json::to_string(&name).unwrap();
        prop_assert_eq!(serde_json::from_str::<RepoName>(&json).unwrap(), name);
    }

    #[test]
    fn valid_tags_round_trip(s in valid_tag()) {
        let tag: Tag = s.parse().map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(tag.to_string(), s.clone());
        let reference: Reference = s.parse().unwrap();
        prop_assert_eq!(&reference, &Reference::Tag(tag));
        prop_assert_eq!(reference.to_string(), s);
    }

    #[test]
    fn valid_digests_round_trip(s in valid_digest()) {
        let d: Digest = s.parse().map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
        prop_assert_eq!(d.to_string(), s.clone());
        prop_assert_eq!(d.hex().len(), d.algorithm().hex_len());
        prop_assert_eq!(Digest::from_raw(d.algorithm(), &d.raw()), d.clone());
        let json = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d.clone());
        prop_assert_eq!(s.parse::<Reference>().unwrap(), Reference::Digest(d));
    }

    #[test]
    fn computed_digests_parse_back(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let d = algorithm.digest_bytes(&bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }
    }

    #[test]
    fn references_with_a_colon_are_digests(s in near_digest()) {
        // A tag cannot hold a colon: a reference with one is a digest or nothing, so a
        // mistyped digest is reported as a bad digest, not as an unknown tag.
        match s.parse::<Reference>() {
            Ok(Reference::Digest(d)) => prop_assert_eq!(d.to_string(), s),
            Ok(Reference::Tag(t)) => prop_assert!(!s.contains(':'), "tag {:?}", t),
            Err(NameError::Digest(_)) => prop_assert!(s.contains(':')),
            Err(e) => prop_assert!(!s.contains(':'), "{:?}: {}", s, e),
        }
    }
}
