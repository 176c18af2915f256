//! Property tests for manifest validation ([`parse_manifest`]), the only reader of a pushed
//! manifest body before it is stored: the registry adds just the size limit and the digest
//! check around it.
//!
//! Arbitrary bytes and arbitrary JSON must be refused with an error, never a panic; manifests
//! and indexes built the way the image-spec describes them must be accepted, and what the
//! registry learns from them (blobs, children, subject, media type) must be what they say.
//! Bounded to [`CASES`] cases a property so the file runs in the normal `cargo test`.

use ipcr_proto::manifest::{ManifestError, parse_manifest};
use ipcr_proto::{Digest, media};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Cases per property: generated manifests are a few kilobytes of JSON, and 256 of each kind
/// run in well under a second in a debug build.
const CASES: u32 = 256;

/// [`CASES`] cases a property, unless `PROPTEST_CASES` asks for more (or fewer) in a longer
/// run; `ProptestConfig::with_cases` alone would ignore the variable.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

/// Content-Types a client may send, including none, parameters and ones we refuse.
fn content_type() -> impl Strategy<Value = Option<String>> {
    let known = prop::sample::select(vec![
        media::OCI_MANIFEST,
        media::OCI_INDEX,
        media::DOCKER_MANIFEST,
        media::DOCKER_MANIFEST_LIST,
        media::DOCKER_SCHEMA1,
        media::DOCKER_SCHEMA1_SIGNED,
        "application/json",
        "",
    ]);
    prop::option::of((known, prop::option::of(" ?; ?charset=utf-8")))
        .prop_map(|ct| ct.map(|(t, params)| format!("{t}{}", params.unwrap_or_default())))
}

fn digest() -> impl Strategy<Value = Digest> {
    prop_oneof![
        4 => "[a-f0-9]{64}".prop_map(|h| format!("sha256:{h}")),
        1 => "[a-f0-9]{128}".prop_map(|h| format!("sha512:{h}")),
        // A small pool so duplicates (a layer that is also the config) happen.
        2 => prop::sample::select(vec!['0', '1', '2']).prop_map(|c| format!("sha256:{}", c.to_string().repeat(64))),
    ]
    .prop_map(|s| s.parse().unwrap())
}

fn annotations() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(prop::collection::btree_map("[a-z.]{1,12}", "\\PC{0,12}", 0..3).prop_map(|m| json!(m)))
}

/// A descriptor as the image-spec defines it, with the optional fields sometimes present.
fn descriptor(media_types: &'static [&'static str]) -> impl Strategy<Value = (Value, Digest)> {
    (
        prop::sample::select(media_types),
        digest(),
        annotations(),
        prop::option::of("[a-z/.+]{3,20}"),
        any::<bool>(),
    )
        .prop_map(|(mt, d, ann, artifact_type, platform)| {
            // A size is the content's: the same digest always comes with the same size (a
            // manifest declaring two sizes for one digest is refused).
            let encoded = d.to_string();
            let hex = encoded.split_once(':').map_or("0", |(_, h)| h);
            let size = u64::from_str_radix(&hex[..12.min(hex.len())], 16).unwrap_or(0);
            let mut v = json!({ "mediaType": mt, "digest": encoded, "size": size });
            if let Some(a) = ann {
                v["annotations"] = a;
            }
            if let Some(t) = artifact_type {
                v["artifactType"] = json!(t);
            }
            if platform {
                v["platform"] = json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
            }
            (v, d)
        })
}

const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
    media::OCI_EMPTY,
    "application/vnd.example.sbom+json",
];
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.example.signature",
];
const CHILD_TYPES: &[&str] = &[media::OCI_MANIFEST, media::DOCKER_MANIFEST, media::OCI_INDEX];

/// The top-level fields shared by manifests and indexes.
#[derive(Clone, Debug)]
struct Common {
    /// `subject`: its descriptor and digest.
    subject: Option<(Value, Digest)>,
    artifact_type: Option<String>,
    annotations: Option<Value>,
    /// Add a field the spec does not know, which must be ignored.
    unknown: bool,
}

fn common_fields() -> impl Strategy<Value = Common> {
    (
        prop::option::of(descriptor(CHILD_TYPES)),
        prop::option::of("application/vnd\\.[a-z]{1,8}\\+json"),
        annotations(),
        any::<bool>(),
    )
        .prop_map(|(subject, artifact_type, annotations, unknown)| Common {
            subject,
            artifact_type,
            annotations,
            unknown,
        })
}

fn with_common(mut m: Map<String, Value>, common: &Common) -> Map<String, Value> {
    if let Some((s, _)) = &common.subject {
        m.insert("subject".into(), s.clone());
    }
    if let Some(t) = &common.artifact_type {
        m.insert("artifactType".into(), json!(t));
    }
    if let Some(a) = &common.annotations {
        m.insert("annotations".into(), a.clone());
    }
    if common.unknown {
        m.insert("x-extension".into(), json!({"nested": [1, "two", null]}));
    }
    m
}

/// An image manifest: its JSON, the media type it is declared with (`None`: not in the body,
/// implied OCI), and its config and layer digests.
#[derive(Debug)]
struct Image {
    body: Value,
    declared: Option<&'static str>,
    config: (Digest, &'static str),
    layers: Vec<Digest>,
    subject: Option<Digest>,
    artifact_type: Option<String>,
}

fn image() -> impl Strategy<Value = Image> {
    (
        prop::option::of(prop::sample::select(vec![
            media::OCI_MANIFEST,
            media::DOCKER_MANIFEST,
        ])),
        descriptor(CONFIG_TYPES),
        prop::collection::vec(descriptor(LAYER_TYPES), 0..6),
        common_fields(),
    )
        .prop_map(|(declared, config, layers, common)| {
            let config_type = CONFIG_TYPES
                .iter()
                .find(|t| config.0["mediaType"] == **t)
                .copied()
                .unwrap();
            let mut m = Map::new();
            m.insert("schemaVersion".into(), json!(2));
            if let Some(mt) = declared {
                m.insert("mediaType".into(), json!(mt));
            }
            m.insert("config".into(), config.0);
            m.insert(
                "layers".into(),
                Value::Array(layers.iter().map(|(v, _)| v.clone()).collect()),
            );
            let m = with_common(m, &common);
            Image {
                body: Value::Object(m),
                declared,
                config: (config.1, config_type),
                layers: layers.into_iter().map(|(_, d)| d).collect(),
                subject: common.subject.map(|(_, d)| d),
                artifact_type: common.artifact_type,
            }
        })
}

/// An index: its JSON, declared media type and children.
#[derive(Debug)]
struct Index {
    body: Value,
    declared: Option<&'static str>,
    children: Vec<Digest>,
    subject: Option<Digest>,
}

fn index() -> impl Strategy<Value = Index> {
    (
        prop::option::of(prop::sample::select(vec![
            media::OCI_INDEX,
            media::DOCKER_MANIFEST_LIST,
        ])),
        prop::collection::vec(descriptor(CHILD_TYPES), 0..6),
        common_fields(),
    )
        .prop_map(|(declared, children, common)| {
            let mut m = Map::new();
            m.insert("schemaVersion".into(), json!(2));
            if let Some(mt) = declared {
                m.insert("mediaType".into(), json!(mt));
            }
            m.insert(
                "manifests".into(),
                Value::Array(children.iter().map(|(v, _)| v.clone()).collect()),
            );
            let m = with_common(m, &common);
            Index {
                body: Value::Object(m),
                declared,
                children: children.into_iter().map(|(_, d)| d).collect(),
                subject: common.subject.map(|(_, d)| d),
            }
        })
}

/// JSON of any shape, with the manifest's field names as keys often enough that the parser
/// gets past "not an object" and into the type checks.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(2)),
        Just(json!(1)),
        "\\PC{0,16}".prop_map(Value::String),
        prop::sample::select(vec![
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST_LIST,
            media::DOCKER_SCHEMA1,
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ])
        .prop_map(|s| json!(s)),
    ];
    let key = prop::sample::select(vec![
        "schemaVersion",
        "mediaType",
        "artifactType",
        "config",
        "layers",
        "manifests",
        "subject",
        "annotations",
        "digest",
        "size",
        "urls",
        "platform",
        "other",
    ]);
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone().prop_map(String::from), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn sorted(mut v: Vec<Digest>) -> Vec<Digest> {
    v.sort();
    v.dedup();
    v
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_are_refused_without_panic(
        ct in content_type(),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = parse_manifest(ct.as_deref(), &body);
    }

    #[test]
    fn arbitrary_json_never_panics(ct in content_type(), v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        if let Ok(info) = parse_manifest(ct.as_deref(), &body) {
            // Whatever is accepted must be storable: a type we serve, and sorted, unique lists.
            prop_assert!(media::MANIFEST_TYPES.contains(&info.media_type.as_str()));
            prop_assert_eq!(sorted(info.blobs.clone()), info.blobs);
            prop_assert_eq!(sorted(info.children.clone()), info.children);
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow(depth in 100usize..5000, open in "[\\[{]") {
        // serde_json's recursion limit must hold in every field we deserialize into, including
        // the free-form `platform` value kept as the client wrote it.
        let nest = |inner: &str| {
            let (o, c) = if open == "[" { ("[", "]") } else { ("{\"a\":", "}") };
            format!("{}{inner}{}", o.repeat(depth), c.repeat(depth))
        };
        let deep = nest("1");
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"sha256:{}","size":1,"platform":{deep}}}],"annotations":{deep}}}"#,
            "0".repeat(64)
        );
        let _ = parse_manifest(None, body.as_bytes());
        let _ = parse_manifest(None, deep.as_bytes());
    }

    #[test]
    fn generated_image_manifests_are_accepted(m in image(), ct_params in any::<bool>()) {
        let body = serde_json::to_vec(&m.body).unwrap();
        // Clients send the body's own media type as Content-Type, or none when the body has
        // none (the media type is then the OCI default).
        let ct = m.declared.map(|t| if ct_params { format!("{t}; charset=utf-8") } else { t.to_string() });
        let info = parse_manifest(ct.as_deref(), &body)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", m.body)))?;
        prop_assert_eq!(info.media_type.as_str(), m.declared.unwrap_or(media::OCI_MANIFEST));
        let mut blobs = m.layers.clone();
        blobs.push(m.config.0.clone());
        prop_assert_eq!(info.blobs, sorted(blobs));
        prop_assert!(info.children.is_empty());
        prop_assert_eq!(info.subject, m.subject);
        let expected_type = m.artifact_type.unwrap_or_else(|| m.config.1.to_string());
        prop_assert_eq!(info.artifact_type, Some(expected_type));
    }

    #[test]
    fn generated_indexes_are_accepted(ix in index()) {
        let body = serde_json::to_vec(&ix.body).unwrap();
        let info = parse_manifest(ix.declared, &body)
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", ix.body)))?;
        prop_assert_eq!(info.media_type.as_str(), ix.declared.unwrap_or(media::OCI_INDEX));
        prop_assert_eq!(info.children, sorted(ix.children));
        prop_assert!(info.blobs.is_empty());
        prop_assert_eq!(info.subject, ix.subject);
    }

    #[test]
    fn schema_1_and_mismatches_are_refused(m in image(), other in content_type()) {
        let body = serde_json::to_vec(&m.body).unwrap();
        let declared = m.declared.unwrap_or(media::OCI_MANIFEST);
        let Some(ct) = other else { return Ok(()) };
        let bare = ct.split(';').next().unwrap().trim();
        let result = parse_manifest(Some(&ct), &body);
        if media::is_schema1(bare) {
            prop_assert_eq!(result, Err(ManifestError::Schema1));
        } else if media::MANIFEST_TYPES.contains(&bare) && m.declared.is_some_and(|d| d != bare) {
            prop_assert!(matches!(result, Err(ManifestError::Invalid(_))));
        } else if media::is_index(bare) {
            // Declared an index, but the body is an image manifest.
            prop_assert!(matches!(result, Err(ManifestError::Invalid(_))));
        } else if media::MANIFEST_TYPES.contains(&bare) {
            prop_assert_eq!(result.unwrap().media_type, bare.to_string());
        } else {
            // A Content-Type that names no manifest kind defers to the body.
            prop_assert_eq!(result.unwrap().media_type, declared.to_string());
        }
    }

    #[test]
    fn a_manifest_without_schema_version_2_is_refused(m in image(), version in prop::option::of(any::<i64>())) {
        let mut body = m.body.clone();
        match version {
            Some(2) => return Ok(()),
            Some(v) => body["schemaVersion"] = json!(v),
            None => { body.as_object_mut().unwrap().remove("schemaVersion"); }
        }
        let result = parse_manifest(m.declared, &serde_json::to_vec(&body).unwrap());
        prop_assert!(result.is_err());
        if version == Some(1) {
            prop_assert_eq!(result, Err(ManifestError::Schema1));
        }
    }
}

#[test]
fn a_blob_referenced_twice_is_required_once() {
    // The small digest pool above produces such manifests now and then; this is the case pinned.
    let d: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
    let body = json!({
        "schemaVersion": 2,
        "config": {"mediaType": CONFIG_TYPES[0], "digest": d.to_string(), "size": 1},
        "layers": [{"mediaType": LAYER_TYPES[0], "digest": d.to_string(), "size": 1}],
    });
    let info = parse_manifest(None, &serde_json::to_vec(&body).unwrap()).unwrap();
    assert_eq!(info.blobs, vec![d]);
}
