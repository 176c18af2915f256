//! Property tests for the parsers of an HTTP request that run before any handler: the router
//! (method, path and query into an `Endpoint`), `Content-Range` of an upload chunk and `Range`
//! of a blob read.
//!
//! Arbitrary input must give an answer, never a panic, and the router's refusals must be
//! client errors. Valid names, tags and digests formatted into a URL the way the
//! distribution-spec writes it, with any of their characters percent-encoded, must route to the
//! endpoint holding those same values. Bounded to [`CASES`] cases a property so the file runs
//! in the normal `cargo test`; `cargo fuzz run router` / `content_range` explore further
//! (docs/fuzzing.md).

use std::sync::LazyLock;

use actix_web::ResponseError;
use actix_web::http::Method;
use ipcr_node::api::blobs::{RangeAsk, range_ask};
use ipcr_node::api::body::parse_content_range;
use ipcr_node::api::router::{Endpoint, MAX_PAGE, route};
use ipcr_proto::{Algorithm, Digest, ErrorCode, Reference, RepoName, Tag};
use proptest::prelude::*;
use regex::Regex;

/// Cases per property: the router's branches are few, and 512 cases of each property run in
/// about a second in a debug build.
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

fn valid_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}(/[a-z0-9]{1,8}((\\.|_|__|-{1,3})[a-z0-9]{1,8}){0,3}){0,4}"
}

/// Names that end with the router's keywords, where recognising routes from the end of the
/// path could go wrong.
fn tricky_name() -> impl Strategy<Value = String> {
    let keyword = prop::sample::select(vec![
        "blobs",
        "uploads",
        "manifests",
        "tags",
        "list",
        "referrers",
        "v2",
    ]);
    (valid_name(), prop::collection::vec(keyword, 1..4)).prop_map(|(n, ks)| format!("{n}/{}", ks.join("/")))
}

fn name() -> impl Strategy<Value = RepoName> {
    prop_oneof![3 => valid_name(), 1 => tricky_name()].prop_filter_map("longer than 255", |s| s.parse().ok())
}

fn tag() -> impl Strategy<Value = Tag> {
    "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}".prop_map(|s| s.parse().unwrap())
}

fn digest() -> impl Strategy<Value = Digest> {
    prop_oneof!["sha256:[a-f0-9]{64}", "sha512:[a-f0-9]{128}"].prop_map(|s| s.parse().unwrap())
}

fn reference() -> impl Strategy<Value = Reference> {
    prop_oneof![
        tag().prop_map(Reference::Tag),
        digest().prop_map(Reference::Digest)
    ]
}

/// Session ids are opaque to the router and handed over as they are in the URL.
fn upload_id() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9-]{1,40}"
}

/// Which characters a client percent-encodes: none, as most do, or any of them.
#[derive(Clone, Debug)]
struct Encoding(Vec<bool>);

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Vec::new()), prop::collection::vec(any::<bool>(), 0..64)].prop_map(Encoding)
}

impl Encoding {
    /// `s` with the characters this encoding picks (and those that must be) percent-encoded;
    /// `reserved` are the characters that may not appear as they are.
    fn apply(&self, s: &str, reserved: &str) -> String {
        let mut out = String::new();
        let mut buf = [0u8; 4];
        for (i, c) in s.chars().enumerate() {
            let pick = self.0.get(i % self.0.len().max(1)).copied().unwrap_or(false);
            if pick || !c.is_ascii() || c.is_ascii_control() || reserved.contains(c) {
                for b in c.encode_utf8(&mut buf).bytes() {
                    // Both hex cases are valid; a client may use either.
                    if i % 2 == 0 {
                        out.push_str(&format!("%{b:02X}"));
                    } else {
                        out.push_str(&format!("%{b:02x}"));
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// For a path segment (or a name, whose `/` may be encoded too).
    fn path(&self, s: &str) -> String {
        self.apply(s, "%?#")
    }

    /// For a query value.
    fn query(&self, s: &str) -> String {
        self.apply(s, "%?#&=+ ")
    }
}

/// A request a client could send and the endpoint it must route to.
type Case = (Method, String, String, Endpoint);

fn manifest_case() -> impl Strategy<Value = Case> {
    (
        name(),
        reference(),
        prop::collection::vec(tag(), 0..3),
        0..4u8,
        encoding(),
    )
        .prop_map(|(repo, reference, tags, verb, e)| {
            let path = format!(
                "/v2/{}/manifests/{}",
                e.path(repo.as_str()),
                e.path(&reference.to_string())
            );
            match verb {
                0 | 1 => {
                    let head = verb == 1;
                    let m = if head { Method::HEAD } else { Method::GET };
                    (
                        m,
                        path,
                        String::new(),
                        Endpoint::GetManifest {
                            repo,
                            reference,
                            head,
                        },
                    )
                }
                2 => {
                    let query = tags
                        .iter()
                        .map(|t| format!("tag={}", e.query(t.as_str())))
                        .collect::<Vec<_>>()
                        .join("&");
                    (
                        Method::PUT,
                        path,
                        query,
                        Endpoint::PutManifest {
                            repo,
                            reference,
                            tags,
                        },
                    )
                }
                _ => (
                    Method::DELETE,
                    path,
                    String::new(),
                    Endpoint::DeleteManifest { repo, reference },
                ),
            }
        })
}

fn blob_case() -> impl Strategy<Value = Case> {
    (name(), digest(), 0..3u8, encoding()).prop_map(|(repo, digest, verb, e)| {
        let path = format!(
            "/v2/{}/blobs/{}",
            e.path(repo.as_str()),
            e.path(&digest.to_string())
        );
        match verb {
            0 => (
                Method::GET,
                path,
                String::new(),
                Endpoint::GetBlob {
                    repo,
                    digest,
                    head: false,
                },
            ),
            1 => (
                Method::HEAD,
                path,
                String::new(),
                Endpoint::GetBlob {
                    repo,
                    digest,
                    head: true,
                },
            ),
            _ => (
                Method::DELETE,
                path,
                String::new(),
                Endpoint::DeleteBlob { repo, digest },
            ),
        }
    })
}

fn start_upload_case() -> impl Strategy<Value = Case> {
    (
        name(),
        prop::option::of(digest()),
        prop::option::of((digest(), prop::option::of(name()))),
        prop::option::of(prop::sample::select(vec![Algorithm::Sha256, Algorithm::Sha512])),
        any::<bool>(),
        encoding(),
    )
        .prop_map(|(repo, digest, mount, algorithm, slash, e)| {
            let path = format!(
                "/v2/{}/blobs/uploads{}",
                e.path(repo.as_str()),
                if slash { "/" } else { "" }
            );
            let mut query = Vec::new();
            if let Some(d) = &digest {
                query.push(format!("digest={}", e.query(&d.to_string())));
            }
            if let Some((d, from)) = &mount {
                query.push(format!("mount={}", e.query(&d.to_string())));
                if let Some(f) = from {
                    query.push(format!("from={}", e.query(f.as_str())));
                }
            }
            if let Some(a) = algorithm {
                query.push(format!("digest-algorithm={}", a.name()));
            }
            let algorithm = algorithm
                .or(digest.as_ref().map(Digest::algorithm))
                .unwrap_or(Algorithm::Sha256);
            let expected = Endpoint::StartUpload {
                repo,
                digest,
                mount,
                algorithm,
            };
            (Method::POST, path, query.join("&"), expected)
        })
}

fn session_case() -> impl Strategy<Value = Case> {
    (name(), upload_id(), digest(), 0..4u8, encoding()).prop_map(|(repo, id, digest, verb, e)| {
        let path = format!("/v2/{}/blobs/uploads/{id}", e.path(repo.as_str()));
        match verb {
            0 => (
                Method::PATCH,
                path,
                String::new(),
                Endpoint::PatchUpload { repo, id },
            ),
            1 => (Method::GET, path, String::new(), Endpoint::GetUpload { repo, id }),
            2 => (
                Method::DELETE,
                path,
                String::new(),
                Endpoint::DeleteUpload { repo, id },
            ),
            _ => {
                let query = format!("digest={}", e.query(&digest.to_string()));
                (Method::PUT, path, query, Endpoint::PutUpload { repo, id, digest })
            }
        }
    })
}

fn listing_case() -> impl Strategy<Value = Case> {
    (
        name(),
        digest(),
        prop::option::of(0..2 * MAX_PAGE),
        prop::option::of("\\PC{1,12}"),
        0..3u8,
        encoding(),
    )
        .prop_map(|(repo, subject, n, last, kind, e)| {
            let mut query = Vec::new();
            if let Some(n) = n {
                query.push(format!("n={n}"));
            }
            if let Some(l) = &last {
                query.push(format!("last={}", e.query(l)));
            }
            let query = query.join("&");
            let n = n.map_or(MAX_PAGE, |n| n.min(MAX_PAGE));
            match kind {
                0 => {
                    let path = format!("/v2/{}/tags/list", e.path(repo.as_str()));
                    (Method::GET, path, query, Endpoint::ListTags { repo, n, last })
                }
                1 => (
                    Method::GET,
                    "/v2/_catalog".into(),
                    query,
                    Endpoint::Catalog { n, last },
                ),
                _ => {
                    let path = format!(
                        "/v2/{}/referrers/{}",
                        e.path(repo.as_str()),
                        e.path(&subject.to_string())
                    );
                    // `last` stands in for any artifact type here: a free-form string.
                    let query = last
                        .as_ref()
                        .map_or(String::new(), |a| format!("artifactType={}", e.query(a)));
                    (
                        Method::GET,
                        path,
                        query,
                        Endpoint::Referrers {
                            repo,
                            subject,
                            artifact_type: last,
                        },
                    )
                }
            }
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        prop::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ]),
        "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// Paths made of the router's own words, where its branches are, and anything at all.
fn any_path() -> impl Strategy<Value = String> {
    let segment = prop::sample::select(vec![
        "v2",
        "",
        "a",
        "a%2Fb",
        "..",
        "%2E%2E",
        "%FF",
        "%",
        "%C3%A4",
        "blobs",
        "uploads",
        "manifests",
        "tags",
        "list",
        "referrers",
        "_catalog",
        "latest",
        "sha256:abc",
        "sha256%3A",
        "UPPER",
        "a b",
        "\u{0}",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]);
    prop_oneof![
        prop::collection::vec(segment, 0..10).prop_map(|s| format!("/v2/{}", s.join("/"))),
        "\\PC{0,64}",
        "/v2/\\PC{0,64}",
    ]
}

fn any_query() -> impl Strategy<Value = String> {
    let pair = (
        prop::sample::select(vec![
            "n",
            "last",
            "digest",
            "mount",
            "from",
            "digest-algorithm",
            "tag",
            "artifactType",
            "x",
        ]),
        prop_oneof![
            "\\PC{0,12}",
            "[%0-9A-Fa-f]{0,8}",
            prop::sample::select(vec![
                "sha256%3Ae3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "-1",
                "18446744073709551616",
            ])
            .prop_map(String::from),
        ],
    );
    prop_oneof![
        prop::collection::vec(pair, 0..5).prop_map(|ps| ps
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")),
        "\\PC{0,64}",
    ]
}

/// A `?digest=` value: a digest, something close to one, or anything.
fn digest_value() -> impl Strategy<Value = String> {
    prop_oneof![
        digest().prop_map(|d| d.to_string()),
        // Already percent-encoded once: what the client means is this text, `%` and all.
        digest().prop_map(|d| d.to_string().replace(':', "%3A")),
        "%[0-9A-F]{2}",
        "\\PC{0,16}",
    ]
}

static CONTENT_RANGE: LazyLock<Regex> = LazyLock::new(|| {
    // The spec's `<start>-<end>`, with the `bytes ` unit and `/<size>` of RFC 9110 tolerated.
    Regex::new(r"(?s)^\s*(?:bytes )?\s*([0-9]+)\s*-\s*([0-9]+)\s*(?:/.*)?$").unwrap()
});

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_request_gets_an_answer(m in method(), path in any_path(), query in any_query()) {
        match route(&m, &path, &query) {
            Ok(_) => prop_assert!(path.starts_with("/v2")),
            Err(e) => {
                // The router only reads the URL: whatever it refuses is the client's doing.
                prop_assert!(e.status.is_client_error(), "{} {} ?{}: {}", m, path, query, e);
                let _ = e.error_response();
            }
        }
    }

    #[test]
    fn manifest_urls_route_to_their_values((m, path, query, expected) in manifest_case()) {
        prop_assert_eq!(route(&m, &path, &query).ok(), Some(expected), "{} {} ?{}", m, path, query);
    }

    #[test]
    fn blob_urls_route_to_their_values((m, path, query, expected) in blob_case()) {
        prop_assert_eq!(route(&m, &path, &query).ok(), Some(expected), "{} {} ?{}", m, path, query);
    }

    #[test]
    fn upload_urls_route_to_their_values((m, path, query, expected) in prop_oneof![start_upload_case(), session_case()]) {
        prop_assert_eq!(route(&m, &path, &query).ok(), Some(expected), "{} {} ?{}", m, path, query);
    }

    #[test]
    fn listing_urls_route_to_their_values((m, path, query, expected) in listing_case()) {
        prop_assert_eq!(route(&m, &path, &query).ok(), Some(expected), "{} {} ?{}", m, path, query);
    }

    #[test]
    fn query_digests_are_decoded_once(value in digest_value(), e in encoding(), id in upload_id()) {
        // Whatever the encoding, the router must read the value the client encoded: a digest
        // exactly when that value is one, and a bad one reported as a digest error.
        let encoded = e.query(&value);
        let requests = [
            (Method::POST, "/v2/r/blobs/uploads/".to_string(), format!("digest={encoded}")),
            (Method::POST, "/v2/r/blobs/uploads/".to_string(), format!("mount={encoded}")),
            (Method::PUT, format!("/v2/r/blobs/uploads/{id}"), format!("digest={encoded}")),
        ];
        for (m, path, query) in requests {
            let got = match route(&m, &path, &query) {
                Ok(Endpoint::StartUpload { digest: Some(d), .. }) => d,
                Ok(Endpoint::StartUpload { mount: Some((d, _)), .. }) => d,
                Ok(Endpoint::PutUpload { digest, .. }) => digest,
                Ok(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
                Err(err) => {
                    prop_assert_eq!(err.code, ErrorCode::DigestInvalid, "{} ?{}: {}", m, query, err);
                    prop_assert!(value.parse::<Digest>().is_err(), "{} ?{} refused", m, query);
                    continue;
                }
            };
            prop_assert_eq!(got.to_string(), value.clone(), "{} ?{}", m, query);
        }
    }

    #[test]
    fn content_range_is_the_spec_form(s in prop_oneof![
        "\\PC{0,24}",
        "[ 0-9+/*-]{0,24}",
        "(bytes )?[0-9]{1,21}-[0-9]{1,21}(/[0-9*]{1,4})?",
        "[ \t]{0,2}(bytes|bytes=|Bytes)?[ +-]{0,2}[0-9]{1,3} ?[ +-]{1,2} ?[0-9]{1,3}[ /*0-9]{0,3}",
    ]) {
        let expected = CONTENT_RANGE
            .captures(&s)
            .and_then(|c| Some((c[1].parse::<u64>().ok()?, c[2].parse::<u64>().ok()?)));
        prop_assert_eq!(parse_content_range(&s), expected, "{:?}", s);
    }

    #[test]
    fn content_ranges_round_trip(start in any::<u64>(), end in any::<u64>(), form in 0..4u8, total in any::<u64>()) {
        let value = match form {
            0 => format!("{start}-{end}"),
            1 => format!("bytes {start}-{end}"),
            2 => format!("bytes {start}-{end}/{total}"),
            _ => format!("{start}-{end}/*"),
        };
        prop_assert_eq!(parse_content_range(&value), Some((start, end)));
    }

    #[test]
    fn ranges_stay_inside_the_blob(value in prop::option::of(prop_oneof!["\\PC{0,24}", "bytes=[0-9]{0,4}-[0-9]{0,4}", "bytes= ?-?[0-9]{1,21} ?-? ?[0-9]{0,21}"]), size in prop_oneof![Just(0u64), 0..5000u64, any::<u64>()]) {
        match range_ask(value.as_deref(), size) {
            RangeAsk::Part(s, e) => prop_assert!(s <= e && e < size, "{:?} of {}: {}-{}", value, size, s, e),
            RangeAsk::Full => {}
            RangeAsk::Unsatisfiable => prop_assert!(value.is_some()),
        }
    }

    #[test]
    fn satisfiable_ranges_are_served(size in 1..u64::MAX, a in any::<u64>(), b in any::<u64>()) {
        let (start, end) = (a.min(b) % size, a.max(b));
        prop_assert_eq!(range_ask(Some(&format!("bytes={start}-{end}")), size), RangeAsk::Part(start, end.min(size - 1)));
        prop_assert_eq!(range_ask(Some(&format!("bytes={start}-")), size), RangeAsk::Part(start, size - 1));
        let n = a.max(1);
        prop_assert_eq!(range_ask(Some(&format!("bytes=-{n}")), size), RangeAsk::Part(size.saturating_sub(n), size - 1));
    }
}

// Regressions: each case a property above found, pinned so it stays fixed whatever the
// generators draw.

/// `?digest=` was percent-decoded twice (once as a query, once more as if it were a path
/// segment): `sha256%253A<hex>` was taken for the digest `sha256:<hex>`, and `%25FF` was
/// refused as an invalid repository name instead of an invalid digest.
#[test]
fn query_digest_is_not_decoded_twice() {
    let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for (m, path) in [
        (Method::POST, "/v2/r/blobs/uploads/"),
        (Method::PUT, "/v2/r/blobs/uploads/6a6b2b1e"),
    ] {
        for query in [format!("digest=sha256%253A{hex}"), "digest=%25FF".to_string()] {
            let err = route(&m, path, &query).unwrap_err();
            assert_eq!(err.code, ErrorCode::DigestInvalid, "{m} {path}?{query}");
        }
        let ok = route(&m, path, &format!("digest=sha256%3A{hex}")).unwrap();
        assert!(format!("{ok:?}").contains(hex), "{ok:?}");
    }
}
