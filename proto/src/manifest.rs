//! Parsing and validating pushed manifests (OCI image manifest and index, Docker schema 2
//! manifest and manifest list), and the referrer descriptor a manifest with a `subject` yields.
//!
//! The bytes a client pushed are stored and served untouched; this module only reads them to
//! learn what they reference and which size each reference declares, so the registry can
//! refuse a manifest whose blobs are missing or of another size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media;

/// The largest manifest accepted, as distribution and the spec recommend.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not the shape its media type requires.
    #[error("manifest invalid: {0}")]
    Invalid(String),
    /// Docker schema 1, which IPCR does not store.
    #[error("Docker schema 1 manifests are not supported; push schema 2 or OCI")]
    Schema1,
}

/// A content descriptor as it appears inside manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Alternate locations (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Artifact type (referrers and indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Platform of an index entry, kept as the client wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The fields of a manifest or index that validation needs. JSON only, never bincode.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry learns from a valid manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestInfo {
    /// The media type it is stored and served with.
    pub media_type: String,
    /// Blobs it references (config and layers) that must exist in the repository.
    pub blobs: Vec<Digest>,
    /// Child manifests (index entries) that must exist in the repository.
    pub children: Vec<Digest>,
    /// The size the manifest declares for each digest in `blobs` and `children`.
    pub sizes: BTreeMap<Digest, u64>,
    /// The manifest it refers to, when it is an artifact attached to another.
    pub subject: Option<Digest>,
    /// `artifactType`, or for an image manifest without one, its config's media type.
    pub artifact_type: Option<String>,
    /// Top-level annotations, copied into the referrers index.
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Foreign (non-distributable) layers are not pushed to registries, so they are not required.
fn is_foreign(d: &Descriptor) -> bool {
    d.urls.as_ref().is_some_and(|u| !u.is_empty())
        && (d.media_type.contains("foreign") || d.media_type.contains("nondistributable"))
}

/// Record the size `d` declares for its digest: one digest is one content, so a manifest that
/// gives it two sizes contradicts itself.
fn declare(sizes: &mut BTreeMap<Digest, u64>, d: &Descriptor) -> Result<(), ManifestError> {
    match sizes.insert(d.digest.clone(), d.size) {
        Some(other) if other != d.size => Err(ManifestError::Invalid(format!(
            "{} is declared with two sizes, {other} and {}",
            d.digest, d.size
        ))),
        _ => Ok(()),
    }
}

/// Strip parameters (`; charset=...`) from a Content-Type.
fn bare(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Validate a pushed manifest. `content_type` is the request's Content-Type, if any.
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<ManifestInfo, ManifestError> {
    let ct = content_type.map(bare).filter(|c| !c.is_empty());
    if ct.is_some_and(media::is_schema1) {
        return Err(ManifestError::Schema1);
    }
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Invalid(format!("not a manifest: {e}")))?;
    if raw.schema_version == Some(1) || raw.media_type.as_deref().is_some_and(media::is_schema1) {
        return Err(ManifestError::Schema1);
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::Invalid("schemaVersion must be 2".into()));
    }
    let media_type = match (
        ct.filter(|c| media::MANIFEST_TYPES.contains(c)),
        raw.media_type.as_deref(),
    ) {
        (Some(ct), Some(body_mt)) if ct != body_mt => {
            return Err(ManifestError::Invalid(format!(
                "mediaType {body_mt} does not match Content-Type {ct}"
            )));
        }
        (Some(ct), _) => ct.to_string(),
        (None, Some(body_mt)) if media::MANIFEST_TYPES.contains(&body_mt) => body_mt.to_string(),
        (None, Some(other)) => {
            return Err(ManifestError::Invalid(format!(
                "unsupported manifest media type {other}"
            )));
        }
        (None, None) if raw.manifests.is_some() => media::OCI_INDEX.to_string(),
        (None, None) => media::OCI_MANIFEST.to_string(),
    };

    let mut info = ManifestInfo {
        media_type,
        blobs: Vec::new(),
        children: Vec::new(),
        sizes: BTreeMap::new(),
        subject: raw.subject.map(|s| s.digest),
        artifact_type: raw.artifact_type.clone(),
        annotations: raw.annotations,
    };
    if media::is_index(&info.media_type) {
        let manifests = raw
            .manifests
            .ok_or_else(|| ManifestError::Invalid("an index needs a manifests array".into()))?;
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Invalid("an index has no config or layers".into()));
        }
        for child in manifests {
            declare(&mut info.sizes, &child)?;
            info.children.push(child.digest);
        }
    } else {
        let config = raw
            .config
            .ok_or_else(|| ManifestError::Invalid("an image manifest needs a config".into()))?;
        let layers = raw
            .layers
            .ok_or_else(|| ManifestError::Invalid("an image manifest needs a layers array".into()))?;
        if raw.manifests.is_some() {
            return Err(ManifestError::Invalid(
                "an image manifest has no manifests array".into(),
            ));
        }
        if info.artifact_type.is_none() {
            info.artifact_type = Some(config.media_type.clone());
        }
        for blob in std::iter::once(config).chain(layers.into_iter().filter(|l| !is_foreign(l))) {
            declare(&mut info.sizes, &blob)?;
            info.blobs.push(blob.digest);
        }
    }
    info.blobs.sort();
    info.blobs.dedup();
    info.children.sort();
    info.children.dedup();
    Ok(info)
}

/// The image index the referrers API answers with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrersIndex {
    /// Always 2.
    pub schema_version: u32,
    /// Always the OCI index media type.
    pub media_type: String,
    /// One descriptor per referrer.
    pub manifests: Vec<Descriptor>,
}

impl ReferrersIndex {
    /// An index listing `manifests`.
    pub fn new(manifests: Vec<Descriptor>) -> Self {
        ReferrersIndex {
            schema_version: 2,
            media_type: media::OCI_INDEX.to_string(),
            manifests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const D2: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":3}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn image_manifest_lists_its_blobs() {
        let info = parse_manifest(Some(media::OCI_MANIFEST), image("").as_bytes()).unwrap();
        assert_eq!(info.media_type, media::OCI_MANIFEST);
        assert_eq!(info.blobs.len(), 2);
        assert_eq!(info.sizes[&D1.parse::<Digest>().unwrap()], 2);
        assert_eq!(info.sizes[&D2.parse::<Digest>().unwrap()], 3);
        assert!(info.children.is_empty());
        assert_eq!(
            info.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn subject_and_artifact_type_are_recorded() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{}","digest":"{D1}","size":5}},"annotations":{{"a":"b"}}"#,
            media::OCI_MANIFEST
        );
        let info = parse_manifest(None, image(&extra).as_bytes()).unwrap();
        assert_eq!(info.subject.unwrap().to_string(), D1);
        assert_eq!(info.artifact_type.as_deref(), Some("application/x-sig"));
        assert_eq!(info.annotations.unwrap()["a"], "b");
    }

    #[test]
    fn index_lists_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D1}","size":7,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::OCI_MANIFEST
        );
        let info = parse_manifest(Some(media::OCI_INDEX), body.as_bytes()).unwrap();
        assert_eq!(info.children.len(), 1);
        assert_eq!(info.sizes[&D1.parse::<Digest>().unwrap()], 7);
        assert!(info.blobs.is_empty());
        let inferred = parse_manifest(None, body.as_bytes()).unwrap();
        assert_eq!(inferred.media_type, media::OCI_INDEX);
    }

    #[test]
    fn refuses_what_it_must() {
        let mismatch = parse_manifest(Some(media::DOCKER_MANIFEST), image("").as_bytes());
        assert!(matches!(mismatch, Err(ManifestError::Invalid(_))));
        assert!(matches!(
            parse_manifest(None, b"not json"),
            Err(ManifestError::Invalid(_))
        ));
        assert!(matches!(
            parse_manifest(None, b"{}"),
            Err(ManifestError::Invalid(_))
        ));
        assert!(matches!(
            parse_manifest(None, br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#),
            Err(ManifestError::Schema1)
        ));
        assert!(matches!(
            parse_manifest(Some(media::DOCKER_SCHEMA1_SIGNED), b"{}"),
            Err(ManifestError::Schema1)
        ));
        let no_config = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","layers":[]}}"#,
            media::OCI_MANIFEST
        );
        assert!(parse_manifest(None, no_config.as_bytes()).is_err());
        let bad_digest = image("").replace(D2, "sha256:1234");
        assert!(parse_manifest(None, bad_digest.as_bytes()).is_err());
        let negative = image("").replace("\"size\":3", "\"size\":-3");
        assert!(parse_manifest(None, negative.as_bytes()).is_err());
        // The config's digest again as a layer, with another size.
        let two_sizes = image("").replace(D2, D1);
        assert!(matches!(
            parse_manifest(None, two_sizes.as_bytes()),
            Err(ManifestError::Invalid(m)) if m.contains("two sizes")
        ));
        let same_size = image("").replace(D2, D1).replace("\"size\":3", "\"size\":2");
        assert_eq!(parse_manifest(None, same_size.as_bytes()).unwrap().blobs.len(), 1);
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{D2}","size":3,"urls":["https://example.com/x"]}}]}}"#,
            media::DOCKER_MANIFEST
        );
        let info = parse_manifest(Some(media::DOCKER_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(info.blobs.len(), 1);
    }
}
