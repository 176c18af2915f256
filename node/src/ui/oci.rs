//! Manifests and indexes as the web page reads them: the fields worth showing (image-spec's
//! `mediaType`, `artifactType`, `config`, `layers`, `manifests[].platform`, `subject`,
//! `annotations`), parsed from the stored bytes with serde_json.
//!
//! Everything here is client-supplied content. Parsing never fails loudly: bytes that are not
//! a manifest are [`Parsed::NotParsed`], and a `platform` of any JSON shape gives a string or
//! nothing. Only `ui` calls this module.

use std::collections::BTreeMap;

use ipcr_proto::Digest;
use serde::Deserialize;

/// A content descriptor, as much of it as the page shows.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Desc {
    /// `mediaType`.
    #[serde(default)]
    pub media_type: String,
    /// `digest`, as written (it may not parse as one).
    pub digest: String,
    /// `size` in bytes.
    #[serde(default)]
    pub size: u64,
    /// `platform` of an index entry, in whatever shape the client wrote it.
    #[serde(default)]
    pub platform: Option<serde_json::Value>,
    /// `artifactType`.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// `annotations`.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// `urls` of a foreign layer.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
}

impl Desc {
    /// The digest, when it is one.
    pub fn digest(&self) -> Option<Digest> {
        self.digest.parse().ok()
    }

    /// `os/architecture[/variant]` of an index entry, when it names one.
    pub fn platform(&self) -> Option<String> {
        self.platform.as_ref().and_then(platform_string)
    }
}

/// An image manifest or an index.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// `artifactType`.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// `config` of an image manifest.
    #[serde(default)]
    pub config: Option<Desc>,
    /// `layers` of an image manifest.
    #[serde(default)]
    pub layers: Vec<Desc>,
    /// `manifests` of an index.
    #[serde(default)]
    pub manifests: Vec<Desc>,
    /// `subject`: the manifest this one refers to.
    #[serde(default)]
    pub subject: Option<Desc>,
    /// Top-level `annotations`.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What the stored bytes turned out to be.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A manifest or index.
    Manifest(Box<Manifest>),
    /// Not a manifest this page can read.
    NotParsed,
}

/// Read stored manifest bytes.
pub fn parse(bytes: &[u8]) -> Parsed {
    match serde_json::from_slice::<Manifest>(bytes) {
        Ok(m) => Parsed::Manifest(Box::new(m)),
        Err(_) => Parsed::NotParsed,
    }
}

/// `os/architecture[/variant]` (and ` (os.version)`) of a `platform` object; `None` for any
/// other shape, or one naming neither os nor architecture.
pub fn platform_string(v: &serde_json::Value) -> Option<String> {
    let field = |k: &str| v.get(k).and_then(|s| s.as_str()).filter(|s| !s.is_empty());
    let (os, arch) = (field("os"), field("architecture"));
    if os.is_none() && arch.is_none() {
        return None;
    }
    let mut out = format!("{}/{}", os.unwrap_or("?"), arch.unwrap_or("?"));
    if let Some(variant) = field("variant") {
        out.push('/');
        out.push_str(variant);
    }
    if let Some(version) = field("os.version") {
        out.push_str(&format!(" ({version})"));
    }
    Some(out)
}

/// Whether a platform is the placeholder that build tools give attestation manifests
/// (`unknown/unknown`): not a platform anyone pulls.
pub fn is_placeholder_platform(p: &str) -> bool {
    p.starts_with("unknown/unknown")
}

/// A short name for a media type: `OCI index`, `Docker image`, or the type itself.
pub fn media_label(media_type: &str) -> &str {
    match media_type {
        ipcr_proto::media::OCI_MANIFEST => "OCI image",
        ipcr_proto::media::OCI_INDEX => "OCI index",
        ipcr_proto::media::DOCKER_MANIFEST => "Docker image",
        ipcr_proto::media::DOCKER_MANIFEST_LIST => "Docker manifest list",
        other => other,
    }
}

/// Image configs: a manifest with another config media type (and no `artifactType`) is an
/// artifact.
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// What a manifest is, for the tag list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An index or manifest list.
    Index,
    /// A container image.
    Image,
    /// An artifact (signature, SBOM, ...), with its type.
    Artifact(String),
    /// Bytes that do not parse.
    NotParsed,
}

impl Kind {
    /// Classify a stored manifest by its media type and parsed content.
    pub fn of(media_type: &str, parsed: &Parsed) -> Kind {
        let Parsed::Manifest(m) = parsed else {
            return Kind::NotParsed;
        };
        if ipcr_proto::media::is_index(media_type) {
            return Kind::Index;
        }
        if let Some(t) = &m.artifact_type {
            return Kind::Artifact(t.clone());
        }
        match &m.config {
            Some(c) if !IMAGE_CONFIGS.contains(&c.media_type.as_str()) => {
                Kind::Artifact(c.media_type.clone())
            }
            _ => Kind::Image,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn platforms_of_any_shape() {
        let p = |v| platform_string(&v);
        assert_eq!(
            p(json!({"os": "linux", "architecture": "arm64", "variant": "v8"})).as_deref(),
            Some("linux/arm64/v8")
        );
        assert_eq!(
            p(json!({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"})).as_deref(),
            Some("windows/amd64 (10.0.17763.1)")
        );
        assert_eq!(
            p(json!({"architecture": "riscv64"})).as_deref(),
            Some("?/riscv64")
        );
        assert_eq!(p(json!({"os": 5, "architecture": ["x"]})), None);
        assert_eq!(p(json!("linux/amd64")), None);
        assert_eq!(p(json!(null)), None);
    }

    #[test]
    fn garbage_is_not_parsed() {
        for bytes in [
            &b"not json"[..],
            b"",
            b"[1,2]",
            b"{\"layers\": 5}",
            b"{\"config\": {\"size\": -1}}",
        ] {
            assert!(
                matches!(parse(bytes), Parsed::NotParsed),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(Kind::of("x", &parse(bytes)), Kind::NotParsed);
        }
    }

    #[test]
    fn kinds() {
        let image = parse(br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":2},"layers":[]}"#);
        assert_eq!(Kind::of(ipcr_proto::media::OCI_MANIFEST, &image), Kind::Image);
        let sig = parse(br#"{"artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:00","size":2},"layers":[]}"#);
        assert_eq!(
            Kind::of(ipcr_proto::media::OCI_MANIFEST, &sig),
            Kind::Artifact("application/vnd.dev.cosign.artifact.sig.v1+json".into())
        );
        let index = parse(br#"{"manifests":[{"mediaType":"m","digest":"sha256:00","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#);
        assert_eq!(Kind::of(ipcr_proto::media::OCI_INDEX, &index), Kind::Index);
        let Parsed::Manifest(m) = index else { panic!() };
        assert_eq!(m.manifests[0].platform().as_deref(), Some("linux/amd64"));
        assert_eq!(m.manifests[0].digest(), None);
    }
}
