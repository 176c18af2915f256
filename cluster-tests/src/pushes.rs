//! Images pushed by tests in which requests are expected to fail on the way (a node killed,
//! members joining or leaving): every step is retried after a short pause, a bounded number of
//! times, and what the registry acknowledged is returned, to be checked afterwards against
//! every node.
//!
//! A blob is retried as a whole upload (a new session), the way `docker` retries a layer; a
//! manifest `PUT` is retried as is. Both are idempotent on the server.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::client::Registry;
use crate::oci::{self, CONFIG, LAYER_TAR, MANIFEST};
use crate::sha256_digest;

/// Pause before a retry.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Attempts of one step (a blob upload, a manifest `PUT`) before the push fails.
pub const MAX_ATTEMPTS: usize = 50;

/// An image built in memory: a config, layers, and the manifest naming them.
pub struct Image {
    /// Config and layers, in that order: `(digest, bytes)`.
    pub blobs: Vec<Blob>,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
}

/// A blob: its digest and bytes.
pub type Blob = (String, Arc<Vec<u8>>);

/// `bytes` as a [`Blob`].
pub fn blob(bytes: Vec<u8>) -> Blob {
    (sha256_digest(&bytes), Arc::new(bytes))
}

/// A deterministic image of `layers` layers of `layer_len` pseudo-random bytes each; `seed`
/// makes it unique.
pub fn image(seed: u64, layers: usize, layer_len: usize) -> Image {
    let layers: Vec<Blob> = (0..layers)
        .map(|l| blob(oci::noise(seed * 1000 + l as u64 + 1, layer_len)))
        .collect();
    image_of(seed, &layers)
}

/// An image of a config of its own (naming `seed`) and `layers`, in order (layers may be
/// shared between images): config first in its blobs.
pub fn image_of(seed: u64, layers: &[Blob]) -> Image {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": [format!("SEED={seed}")] },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        },
    }))
    .expect("json");
    let config = blob(config);
    let descriptor = |media_type: &str, (digest, bytes): &Blob| json!({ "mediaType": media_type, "digest": digest, "size": bytes.len() });
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(CONFIG, &config),
        "layers": layers.iter().map(|l| descriptor(LAYER_TAR, l)).collect::<Vec<_>>(),
    }))
    .expect("json");
    Image {
        blobs: std::iter::once(config).chain(layers.iter().cloned()).collect(),
        manifest,
    }
}

/// An image the registry acknowledged: every blob with `201`, then the manifest by tag.
#[derive(Clone)]
pub struct Pushed {
    /// Repository.
    pub repo: String,
    /// Tag of the manifest.
    pub tag: String,
    /// Digest of the manifest.
    pub digest: String,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// `(digest, bytes)` of the config and layers.
    pub blobs: Vec<Blob>,
}

/// Run `step` on the registry `pick(attempt)` until it succeeds, at most [`MAX_ATTEMPTS`]
/// times with [`RETRY_PAUSE`] in between. Every failure is appended to `failures`.
pub fn with_retries<T>(
    what: &str,
    pick: &mut dyn FnMut(usize) -> Registry,
    failures: &mut Vec<String>,
    step: &mut dyn FnMut(&Registry) -> Result<T, String>,
) -> Result<T, String> {
    for attempt in 0..MAX_ATTEMPTS {
        match step(&pick(attempt)) {
            Ok(v) => return Ok(v),
            Err(e) => failures.push(format!("{what} (attempt {}): {e}", attempt + 1)),
        }
        std::thread::sleep(RETRY_PAUSE);
    }
    let tail: Vec<&String> = failures.iter().rev().take(5).collect();
    Err(format!(
        "{what} failed {MAX_ATTEMPTS} times; last errors: {tail:#?}"
    ))
}

/// Push `image` as `repo:tag`, each blob in chunks of at most `chunk` bytes, retrying every
/// step on the registry `pick(attempt)` names. `failures` collects what went wrong on the way.
pub fn push_with_retries(
    pick: &mut dyn FnMut(usize) -> Registry,
    repo: &str,
    tag: &str,
    image: &Image,
    chunk: usize,
    failures: &mut Vec<String>,
) -> Result<Pushed, String> {
    for (digest, bytes) in &image.blobs {
        let cuts: Vec<usize> = (1..bytes.len().div_ceil(chunk)).map(|k| k * chunk).collect();
        let what = format!("blob {repo}@{digest}");
        let got = with_retries(&what, pick, failures, &mut |reg| {
            reg.push_blob_chunked(repo, bytes, &cuts)
        })?;
        assert_eq!(&got, digest, "acknowledged digest of {what}");
    }
    let what = format!("manifest {repo}:{tag}");
    let digest = with_retries(&what, pick, failures, &mut |reg| {
        reg.put_manifest(repo, tag, MANIFEST, &image.manifest)
    })?;
    Ok(Pushed {
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest,
        manifest: image.manifest.clone(),
        blobs: image.blobs.clone(),
    })
}

/// `reg` (named `name` in messages) serves `pushed` byte for byte: the manifest by tag and by
/// digest, and every blob.
pub fn must_serve(reg: &Registry, name: &str, pushed: &Pushed) {
    let (repo, tag) = (&pushed.repo, &pushed.tag);
    for reference in [tag, &pushed.digest] {
        let got = reg
            .get_manifest(repo, reference)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got.bytes == pushed.manifest,
            "{name}: {repo}:{reference} differs from the acknowledged manifest"
        );
        assert_eq!(
            got.digest.as_deref(),
            Some(pushed.digest.as_str()),
            "{name}: digest of {repo}:{reference}"
        );
    }
    for (digest, bytes) in &pushed.blobs {
        let got = reg
            .get_blob(repo, digest)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            got.bytes == **bytes,
            "{name}: {repo}@{digest} differs from the acknowledged blob"
        );
    }
}
