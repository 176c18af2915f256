//! Realistic content put in a source registry ([`crate::upstream::Upstream`]) by a real client,
//! and a record of it exact enough to check a copy byte for byte: tags whose layers overlap,
//! Docker schema 2 and OCI manifests side by side, a multi-platform index, and a signature
//! stored as a referrer of a tagged manifest (with the referrers tag schema's fallback tag,
//! since distribution 2.8.2 has no referrers API).
//!
//! Everything is built here, byte for byte, then pushed with `skopeo copy --preserve-digests`:
//! OCI manifests and indexes from an OCI layout, Docker ones from skopeo's `dir:` transport
//! (skopeo 1.9.3 does not read Docker media types from an OCI layout). The fallback index
//! goes up as a plain HTTP `PUT`: skopeo 1.9.3 refuses to copy an index whose descriptors
//! carry `artifactType` with `--preserve-digests` (it would drop the field).
//!
//! [`UpstreamClient`] reads an upstream back (and writes what skopeo cannot), answering Basic
//! and Bearer challenges as a client does. Only the test binaries that copy from an upstream
//! call this module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

use crate::clients::SKOPEO_TIMEOUT;
use crate::oci::{CONFIG, Descriptor, INDEX, LAYER_TAR, LAYER_TAR_GZIP, Layout, MANIFEST, Tar};
use crate::tools::must_run;
use crate::upstream::Upstream;

/// Layer size of small seeds: a few pages of noise.
pub const SMALL_LAYER: usize = 16 * 1024;
/// Layers up to this size are gzip'd (a registry's usual content); larger ones are plain tar,
/// since gzip of noise gains nothing and is slow in a debug build.
pub const GZIP_UP_TO: usize = 1 << 20;
/// Tags per group sharing a middle layer in [`Seeder::seed_tags`].
pub const GROUP: usize = 3;
/// `application/vnd.docker.distribution.manifest.v2+json`.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2's image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker schema 2's gzip'd layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema 2's uncompressed layer.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// The OCI empty descriptor's media type: the config of an artifact.
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The digest of `{}`, the empty descriptor's content.
pub const EMPTY_DIGEST: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// cosign's signature artifact type.
pub const COSIGN_SIGNATURE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// Notation's signature artifact type.
pub const NOTARY_SIGNATURE: &str = "application/vnd.cncf.notary.signature";

/// Everything pushed into one repository. `tags` and `manifests` carry digest, media type and
/// size; a copy is identical when every tag names the same digest and media type, every
/// manifest hashes to its digest, and every blob is there with its size
/// ([`Seeded::must_be_held_by`]).
#[derive(Clone, Debug, Default)]
pub struct Seeded {
    /// The repository (`team/app`).
    pub repo: String,
    /// Every tag and the manifest (or index) it names, fallback tags included.
    pub tags: BTreeMap<String, Descriptor>,
    /// Every manifest and index by digest, tagged or not.
    pub manifests: BTreeMap<String, Descriptor>,
    /// Every blob (configs and layers) by digest, and its size.
    pub blobs: BTreeMap<String, u64>,
    /// The multi-platform indexes pushed.
    pub indexes: Vec<SeededIndex>,
    /// The signatures pushed.
    pub signatures: Vec<SeededSignature>,
}

/// A multi-platform OCI index under a tag.
#[derive(Clone, Debug)]
pub struct SeededIndex {
    /// Its tag.
    pub tag: String,
    /// The index.
    pub index: Descriptor,
    /// Each platform (`linux/arm/v7`) and its image manifest.
    pub platforms: Vec<(String, Descriptor)>,
}

/// A signature stored as a referrer of a tagged manifest.
#[derive(Clone, Debug)]
pub struct SeededSignature {
    /// The signed manifest.
    pub subject: Descriptor,
    /// Its `artifactType`.
    pub artifact_type: String,
    /// The signature manifest (untagged; its `subject` is [`SeededSignature::subject`]).
    pub manifest: Descriptor,
    /// `sha256-<hex of the subject's digest>`: the referrers tag schema's fallback tag.
    pub fallback_tag: String,
    /// The index under the fallback tag when this signature was pushed, listing every signature
    /// of the subject so far.
    pub fallback: Descriptor,
}

impl Seeded {
    /// Nothing pushed to `repo` yet.
    pub fn new(repo: &str) -> Seeded {
        Seeded {
            repo: repo.to_string(),
            ..Seeded::default()
        }
    }

    /// Bytes stored: every distinct manifest and blob once.
    pub fn total_bytes(&self) -> u64 {
        self.manifests.values().map(|d| d.size).sum::<u64>() + self.blobs.values().sum::<u64>()
    }

    /// What a copy into a registry with the referrers API holds: everything but the fallback
    /// tags and the indexes under them (that registry lists the referrers itself).
    pub fn without_fallback_tags(&self) -> Seeded {
        let mut out = self.clone();
        for s in &self.signatures {
            if let Some(index) = out.tags.remove(&s.fallback_tag) {
                out.manifests.remove(&index.digest);
            }
        }
        out
    }

    /// The tags a copy into a registry with the referrers API lists: the fallback tags left out.
    pub fn plain_tags(&self) -> Vec<String> {
        self.without_fallback_tags().tags.into_keys().collect()
    }

    fn record_tag(&mut self, tag: &str, manifest: &Descriptor) {
        self.tags.insert(tag.to_string(), manifest.clone());
        self.record_manifest(manifest);
    }

    fn record_manifest(&mut self, manifest: &Descriptor) {
        self.manifests.insert(manifest.digest.clone(), manifest.clone());
    }

    fn record_blob(&mut self, blob: &Descriptor) {
        self.blobs.insert(blob.digest.clone(), blob.size);
    }

    /// Assert that `client`'s `repo` holds all of this content: each tag naming the same digest
    /// and media type, each manifest (by digest) with bytes hashing to that digest, each blob
    /// with its size.
    /// Answers how many objects were checked.
    pub fn must_be_held_by(&self, client: &UpstreamClient, repo: &str) -> usize {
        for (tag, want) in &self.tags {
            let got = client
                .get_manifest(repo, tag)
                .unwrap_or_else(|s| panic!("{repo}:{tag}: status {s}"));
            assert_eq!(
                (crate::sha256_digest(&got.bytes), got.media_type.as_str()),
                (want.digest.clone(), want.media_type.as_str()),
                "{repo}:{tag}"
            );
        }
        for (digest, want) in &self.manifests {
            let got = client
                .get_manifest(repo, digest)
                .unwrap_or_else(|s| panic!("{repo}@{digest}: status {s}"));
            assert_eq!(crate::sha256_digest(&got.bytes), *digest, "{repo}@{digest} bytes");
            assert_eq!(got.media_type, want.media_type, "{repo}@{digest} media type");
        }
        for (digest, size) in &self.blobs {
            let got = client.blob_size(repo, digest);
            assert_eq!(got, Ok(*size), "{repo} blob {digest}");
        }
        self.tags.len() + self.manifests.len() + self.blobs.len()
    }
}

/// A blob in the layout, for images to name.
#[derive(Clone)]
struct LayerBlob {
    /// The digest of the uncompressed tar (`rootfs.diff_ids`).
    diff_id: String,
    digest: String,
    size: u64,
    gzip: bool,
}

impl LayerBlob {
    fn descriptor(&self, docker: bool) -> Descriptor {
        let media_type = match (docker, self.gzip) {
            (true, true) => DOCKER_LAYER_GZIP,
            (true, false) => DOCKER_LAYER,
            (false, true) => LAYER_TAR_GZIP,
            (false, false) => LAYER_TAR,
        };
        Descriptor {
            media_type: media_type.to_string(),
            digest: self.digest.clone(),
            size: self.size,
            platform: None,
        }
    }
}

/// An image built in the layout: its manifest, config and layers.
struct Image {
    manifest: Descriptor,
    blobs: Vec<Descriptor>,
}

/// Pushes content into one upstream as a real client: `skopeo` with the upstream's
/// credentials, from an OCI layout (and `dir:` directories) in a temporary directory.
pub struct Seeder {
    skopeo: PathBuf,
    host: String,
    creds: Option<(String, String)>,
    client: UpstreamClient,
    work: tempfile::TempDir,
    layout: Layout,
}

impl Seeder {
    /// A seeder of `upstream` through the `skopeo` at `skopeo`, as `creds` (`(user, password)`)
    /// or anonymously.
    pub fn new(skopeo: &Path, upstream: &Upstream, creds: Option<(&str, &str)>) -> Seeder {
        let work = tempfile::Builder::new()
            .prefix("ipcr-seed-")
            .tempdir()
            .expect("seed directory");
        let layout = Layout::create(&work.path().join("layout"));
        Seeder {
            skopeo: skopeo.to_path_buf(),
            host: upstream.host(),
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            client: UpstreamClient::new(upstream, creds),
            work,
            layout,
        }
    }

    /// The HTTP client this seeder checks and writes with (same credentials).
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Push `n_tags` single-platform images as tags `v0`, `v1`, ...: each has a base layer
    /// shared by all, a middle layer shared by its group of [`GROUP`] tags, and a layer of its
    /// own, each `layer_size` bytes of noise: 30 tags of 26 MiB layers store 41 distinct layers,
    /// over 1 GiB (about 30 s in a debug build). Even tags are Docker schema 2, odd tags OCI. The
    /// same repository and size give the same digests.
    pub fn seed_tags(&self, seeded: &mut Seeded, n_tags: usize, layer_size: usize) {
        let mut cache = BTreeMap::new();
        for i in 0..n_tags {
            let keys = [
                "base".to_string(),
                format!("group-{}", i / GROUP),
                format!("own-{i}"),
            ];
            let layers: Vec<LayerBlob> = keys
                .iter()
                .map(|k| self.layer(&mut cache, &seeded.repo, k, layer_size))
                .collect();
            let tag = format!("v{i}");
            let docker = i % 2 == 0;
            let image = self.put_image(docker, ("amd64", None), &layers, &tag);
            if docker {
                self.must_push_dir(&seeded.repo, &tag, &image);
            } else {
                self.must_push_layout(&tag, &image.manifest, &format!("{}:{tag}", seeded.repo), false);
            }
            seeded.record_tag(&tag, &image.manifest);
            image.blobs.iter().for_each(|b| seeded.record_blob(b));
        }
    }

    /// Push an OCI index for linux/amd64, linux/arm64 and linux/arm/v7 under `tag` (`--all`);
    /// the images share a base layer.
    pub fn seed_index(&self, seeded: &mut Seeded, tag: &str) -> SeededIndex {
        let mut cache = BTreeMap::new();
        let base = self.layer(&mut cache, &seeded.repo, &format!("{tag}-base"), SMALL_LAYER);
        let mut platforms = Vec::new();
        let mut entries = Vec::new();
        for (arch, variant) in [("amd64", None), ("arm64", None), ("arm", Some("v7"))] {
            let name = format!(
                "linux/{arch}{}",
                variant.map(|v| format!("/{v}")).unwrap_or_default()
            );
            let own = self.layer(&mut cache, &seeded.repo, &format!("{tag}-{name}"), SMALL_LAYER);
            let image = self.put_image(false, (arch, variant), &[base.clone(), own], &name);
            let mut entry = image.manifest.to_json();
            entry["platform"] = json!({"architecture": arch, "os": "linux"});
            if let Some(v) = variant {
                entry["platform"]["variant"] = json!(v);
            }
            entries.push(entry);
            seeded.record_manifest(&image.manifest);
            image.blobs.iter().for_each(|b| seeded.record_blob(b));
            platforms.push((name, image.manifest));
        }
        let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries});
        let index = self
            .layout
            .put_blob(INDEX, &serde_json::to_vec_pretty(&index).expect("json"));
        self.must_push_layout(tag, &index, &format!("{}:{tag}", seeded.repo), true);
        seeded.record_tag(tag, &index);
        let seeded_index = SeededIndex {
            tag: tag.to_string(),
            index,
            platforms,
        };
        seeded.indexes.push(seeded_index.clone());
        seeded_index
    }

    /// Sign the manifest under `subject_tag`: an OCI manifest with `artifact_type`
    /// ([`COSIGN_SIGNATURE`] or [`NOTARY_SIGNATURE`]), the empty config, one small layer and
    /// `subject`, pushed untagged by digest; then the fallback tag `sha256-<hex>` holding an
    /// index of every signature of that subject seeded so far (a plain HTTP `PUT`).
    pub fn seed_signature(
        &self,
        seeded: &mut Seeded,
        subject_tag: &str,
        artifact_type: &str,
    ) -> SeededSignature {
        let subject = seeded
            .tags
            .get(subject_tag)
            .unwrap_or_else(|| panic!("no seeded tag {subject_tag} to sign"))
            .clone();
        let empty = self.layout.put_blob(EMPTY, b"{}");
        assert_eq!(empty.digest, EMPTY_DIGEST, "the empty descriptor's digest");
        let n = seeded.signatures.len();
        let (layer_type, payload) = signature_payload(&self.host, &seeded.repo, &subject, artifact_type, n);
        let layer = self.layout.put_blob(layer_type, &payload);
        let mut layer_json = layer.to_json();
        layer_json["annotations"] = json!({
            "dev.cosignproject.cosign/signature":
                base64::engine::general_purpose::STANDARD.encode(crate::oci::noise(n as u64, 64)),
        });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": artifact_type,
            "config": empty.to_json(),
            "layers": [layer_json],
            "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        });
        let manifest = self
            .layout
            .put_blob(MANIFEST, &serde_json::to_vec(&manifest).expect("json"));
        let by_digest = format!("{}@{}", seeded.repo, manifest.digest);
        self.must_push_layout("signature", &manifest, &by_digest, false);
        seeded.record_manifest(&manifest);
        seeded.record_blob(&empty);
        seeded.record_blob(&layer);

        let fallback_tag = subject.digest.replace(':', "-");
        let mut referrers: Vec<Value> = seeded
            .signatures
            .iter()
            .filter(|s| s.subject.digest == subject.digest)
            .map(|s| referrer(&s.manifest, &s.artifact_type))
            .collect();
        referrers.push(referrer(&manifest, artifact_type));
        let fallback = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": referrers});
        let fallback = serde_json::to_vec(&fallback).expect("json");
        let digest = self
            .client
            .must_put_manifest(&seeded.repo, &fallback_tag, INDEX, &fallback);
        let fallback = self.layout.put_blob(INDEX, &fallback);
        assert_eq!(digest, fallback.digest, "the fallback index's digest");
        // The index it replaces is no longer reachable from any tag: a copy need not hold it.
        if let Some(old) = seeded.tags.get(&fallback_tag) {
            seeded.manifests.remove(&old.digest);
        }
        seeded.record_tag(&fallback_tag, &fallback);
        let signature = SeededSignature {
            subject,
            artifact_type: artifact_type.to_string(),
            manifest,
            fallback_tag,
            fallback,
        };
        seeded.signatures.push(signature.clone());
        signature
    }

    /// The layer `key` of `repo`: a tar of one file of noise, built and stored once.
    fn layer(
        &self,
        cache: &mut BTreeMap<String, LayerBlob>,
        repo: &str,
        key: &str,
        size: usize,
    ) -> LayerBlob {
        if let Some(blob) = cache.get(key) {
            return blob.clone();
        }
        let seed_digest = crate::sha256_digest(format!("{repo}/{key}").as_bytes());
        let seed =
            u64::from_str_radix(&seed_digest["sha256:".len().."sha256:".len() + 16], 16).expect("hex digits");
        let path = format!("layer/{}.bin", key.replace('/', "-"));
        let tar = Tar::new()
            .file(&path, &crate::oci::noise(seed, size), 0o644)
            .finish();
        let gzip = size <= GZIP_UP_TO;
        let stored = if gzip {
            self.layout.put_blob(LAYER_TAR_GZIP, &crate::oci::gzip(&tar))
        } else {
            self.layout.put_blob(LAYER_TAR, &tar)
        };
        let blob = LayerBlob {
            diff_id: crate::sha256_digest(&tar),
            digest: stored.digest,
            size: stored.size,
            gzip,
        };
        cache.insert(key.to_string(), blob.clone());
        blob
    }

    /// Store a config and manifest naming `layers`, Docker schema 2 or OCI; `label` makes the
    /// config (and so the manifest) unique.
    fn put_image(
        &self,
        docker: bool,
        (arch, variant): (&str, Option<&str>),
        layers: &[LayerBlob],
        label: &str,
    ) -> Image {
        let mut config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"], "Labels": {"cluster-tests.seed": label}},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let (manifest_type, config_type) = if docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (MANIFEST, CONFIG)
        };
        let config = self
            .layout
            .put_blob(config_type, &serde_json::to_vec(&config).expect("json"));
        let layers: Vec<Descriptor> = layers.iter().map(|l| l.descriptor(docker)).collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.to_json(),
            "layers": layers.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let manifest = self.layout.put_blob(
            manifest_type,
            &serde_json::to_vec_pretty(&manifest).expect("json"),
        );
        let mut blobs = vec![config];
        blobs.extend(layers);
        Image { manifest, blobs }
    }

    /// `skopeo copy` of the layout's `manifest` (named `name` in `index.json`) to
    /// `docker://<host>/<dest>` (`repo:tag` or `repo@digest`).
    fn must_push_layout(&self, name: &str, manifest: &Descriptor, dest: &str, all: bool) {
        self.layout.set_refs(&[(name, manifest)]);
        let src = format!("oci:{}:{name}", self.layout.root().display());
        self.must_copy(&src, dest, all);
    }

    /// `skopeo copy` of a Docker schema 2 image through the `dir:` transport: `manifest.json`,
    /// `version` and each blob named by its hex digest (linked from the layout).
    fn must_push_dir(&self, repo: &str, tag: &str, image: &Image) {
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        let dir = self
            .work
            .path()
            .join(format!("dir-{}", hex(&image.manifest.digest)));
        std::fs::create_dir_all(&dir).expect("creating a dir: image");
        std::fs::write(dir.join("version"), "Directory Transport Version: 1.1\n").expect("version");
        std::fs::write(
            dir.join("manifest.json"),
            self.layout.must_blob(&image.manifest.digest),
        )
        .expect("manifest.json");
        for blob in &image.blobs {
            let from = self.layout.root().join("blobs/sha256").join(hex(&blob.digest));
            let to = dir.join(hex(&blob.digest));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).expect("copying a blob into a dir: image");
            }
        }
        self.must_copy(&format!("dir:{}", dir.display()), &format!("{repo}:{tag}"), false);
        std::fs::remove_dir_all(&dir).expect("removing a dir: image");
    }

    fn must_copy(&self, src: &str, dest: &str, all: bool) {
        let mut cmd = Command::new(&self.skopeo);
        cmd.args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if all {
            cmd.arg("--all");
        }
        if let Some((user, password)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg(src).arg(format!("docker://{}/{dest}", self.host));
        must_run(&mut cmd, SKOPEO_TIMEOUT);
    }
}

/// A signature layer: cosign's simple-signing payload (under Notation's JWS media type for a
/// Notation signature; nobody verifies it).
fn signature_payload(
    host: &str,
    repo: &str,
    subject: &Descriptor,
    artifact_type: &str,
    n: usize,
) -> (&'static str, Vec<u8>) {
    let claim = json!({
        "critical": {
            "identity": {"docker-reference": format!("{host}/{repo}")},
            "image": {"docker-manifest-digest": subject.digest},
            "type": "cosign container image signature",
        },
        "optional": {"cluster-tests.signature": n},
    });
    let media_type = if artifact_type == NOTARY_SIGNATURE {
        "application/jose+json"
    } else {
        "application/vnd.dev.cosign.simplesigning.v1+json"
    };
    (media_type, serde_json::to_vec(&claim).expect("json"))
}

/// A referrer's descriptor in a fallback index: the manifest and its `artifactType`.
fn referrer(manifest: &Descriptor, artifact_type: &str) -> Value {
    let mut v = manifest.to_json();
    v["artifactType"] = json!(artifact_type);
    v
}

/// The manifest media types [`UpstreamClient::get_manifest`] accepts.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// A manifest as an upstream served it.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The body.
    pub bytes: Vec<u8>,
    /// `Content-Type`.
    pub media_type: String,
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<String>,
}

/// The scheme (`Bearer`) and the parameters of a `WWW-Authenticate` challenge.
pub fn challenge_params(challenge: &str) -> (String, BTreeMap<String, String>) {
    let (scheme, mut rest) = challenge.trim().split_once(' ').unwrap_or((challenge.trim(), ""));
    let mut params = BTreeMap::new();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, tail) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key.trim().to_string(), value.to_string());
        rest = tail.trim_start_matches([',', ' ']);
    }
    (scheme.to_string(), params)
}

fn header(resp: &Response, name: &str) -> Option<String> {
    Some(resp.headers().get(name)?.to_str().ok()?.to_string())
}

/// A blocking HTTP client of one upstream that answers its challenges as a client does:
/// `Basic` with its credentials, `Bearer` with a token from the challenge's realm for the
/// challenge's scope (asked with its credentials as Basic, or anonymously).
pub struct UpstreamClient {
    http: reqwest::blocking::Client,
    base: String,
    creds: Option<(String, String)>,
}

impl UpstreamClient {
    /// A client of `upstream` as `creds` (`(user, password)`), or anonymous.
    pub fn new(upstream: &Upstream, creds: Option<(&str, &str)>) -> UpstreamClient {
        UpstreamClient::at(&upstream.base_url(), creds)
    }

    /// A client of the registry at `base_url` (`http://127.0.0.1:PORT`: an IPCR node, a
    /// proxy) as `creds`, or anonymous: the same checks on a copy as on its source.
    pub fn at(base_url: &str, creds: Option<(&str, &str)>) -> UpstreamClient {
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        UpstreamClient::with_http(http, base_url, creds)
    }

    /// [`UpstreamClient::at`] through `http` (a client trusting a test CA, for `https://`).
    pub fn with_http(
        http: reqwest::blocking::Client,
        base_url: &str,
        creds: Option<(&str, &str)>,
    ) -> UpstreamClient {
        UpstreamClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    /// The `Authorization` value answering `challenge`, or the status that refused a token.
    fn authorization(&self, challenge: &str) -> Result<String, u16> {
        let (scheme, params) = challenge_params(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = self.creds.as_ref().ok_or(401u16)?;
            let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            return Ok(format!("Basic {pair}"));
        }
        let realm = params.get("realm").expect("a Bearer challenge names its realm");
        let query = ["service", "scope"].map(|k| (k, params.get(k).cloned().unwrap_or_default()));
        let url = reqwest::Url::parse_with_params(realm, &query).expect("a realm URL");
        let mut req = self.http.get(url);
        if let Some((user, password)) = &self.creds {
            req = req.basic_auth(user, Some(password));
        }
        let resp = ok(req.send().unwrap_or_else(|e| panic!("GET {realm}: {e}")))?;
        let body: Value = resp.json().expect("a JSON token answer");
        let token = body["token"].as_str().or(body["access_token"].as_str());
        Ok(format!("Bearer {}", token.expect("a token in the answer")))
    }

    /// Send the request `build` makes to `<base><path>`, then once more with credentials if it
    /// was challenged; a status other than 2xx is an error.
    pub fn send(
        &self,
        path: &str,
        build: impl Fn(&Client, String) -> RequestBuilder,
    ) -> Result<Response, u16> {
        let url = format!("{}{path}", self.base);
        let first = build(&self.http, url.clone())
            .send()
            .expect("a request to the upstream");
        if first.status() != 401 {
            return ok(first);
        }
        let challenge = header(&first, "www-authenticate").ok_or(401u16)?;
        let auth = self.authorization(&challenge)?;
        ok(build(&self.http, url)
            .header("Authorization", auth)
            .send()
            .expect("a request to the upstream"))
    }

    /// `GET /v2/<repo>/manifests/<reference>`, or the status that refused it.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<Fetched, u16> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.send(&path, |h, url| h.get(url).header("Accept", MANIFEST_ACCEPT))?;
        let (media_type, digest) = (
            header(&resp, "content-type"),
            header(&resp, "docker-content-digest"),
        );
        Ok(Fetched {
            bytes: resp.bytes().expect("a manifest body").to_vec(),
            media_type: media_type.unwrap_or_default(),
            digest,
        })
    }

    /// `PUT /v2/<repo>/manifests/<reference>`, which must be accepted; answers the digest.
    pub fn must_put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(&path, |h, url| {
                h.put(url).header("Content-Type", media_type).body(bytes.to_vec())
            })
            .unwrap_or_else(|s| panic!("PUT {path}: status {s}"));
        header(&resp, "docker-content-digest").unwrap_or_else(|| panic!("PUT {path}: no digest"))
    }

    /// `GET /v2/<repo>/tags/list`, or the status that refused it.
    pub fn list_tags(&self, repo: &str) -> Result<Vec<String>, u16> {
        let resp = self.send(&format!("/v2/{repo}/tags/list"), |h, url| h.get(url))?;
        let body: Value = resp.json().expect("a JSON tag list");
        let tags = body["tags"].as_array().into_iter().flatten();
        Ok(tags.filter_map(|t| Some(t.as_str()?.to_string())).collect())
    }

    /// `GET /v2/<repo>/blobs/<digest>`, hashed as it streams in: `sha256:<hex>` of the bytes
    /// served, or the status that refused it.
    pub fn blob_sha256(&self, repo: &str, digest: &str) -> Result<String, u16> {
        use sha2::Digest as _;
        use std::io::Read as _;
        let mut resp = self.send(&format!("/v2/{repo}/blobs/{digest}"), |h, url| h.get(url))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = resp
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("reading blob {digest} of {repo}: {e}"));
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// `GET /v2/<repo>/referrers/<digest>`: the `manifests` of the index answered, or the
    /// status that refused it (distribution 2.8.2 has no referrers API: `404`).
    pub fn referrers(&self, repo: &str, digest: &str) -> Result<Vec<Value>, u16> {
        let resp = self.send(&format!("/v2/{repo}/referrers/{digest}"), |h, url| h.get(url))?;
        let body: Value = resp.json().expect("a JSON referrers index");
        Ok(body["manifests"].as_array().cloned().unwrap_or_default())
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: its `Content-Length`, or the status that refused it.
    pub fn blob_size(&self, repo: &str, digest: &str) -> Result<u64, u16> {
        let resp = self.send(&format!("/v2/{repo}/blobs/{digest}"), |h, url| h.head(url))?;
        let length = header(&resp, "content-length").expect("a Content-Length");
        Ok(length.parse().expect("a numeric Content-Length"))
    }
}

/// `resp` if it succeeded, else its status.
fn ok(resp: Response) -> Result<Response, u16> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(resp.status().as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_commas_inside_quotes() {
        let (scheme, p) = challenge_params(
            r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "svc");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (scheme, p) = challenge_params(r#"Basic realm="x""#);
        assert_eq!((scheme.as_str(), p["realm"].as_str()), ("Basic", "x"));
    }
}
