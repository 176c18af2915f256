//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/...`), built and read
//! by the tests themselves so that every byte a client pushes is known in advance.
//!
//! Layers are tar archives written here (ustar, fixed owner and mtime), plain or gzip'd; an
//! image is a config, its layers and a manifest; an index points at one manifest per platform.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::sha256_digest;

/// `application/vnd.oci.image.manifest.v1+json`.
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.index.v1+json`.
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.config.v1+json`.
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// An uncompressed tar layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// A gzip'd tar layer.
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A ustar archive built in memory.
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    /// An empty archive.
    pub fn new() -> Tar {
        Tar::default()
    }

    /// Add a directory entry (`path` without trailing slash).
    pub fn dir(mut self, path: &str) -> Tar {
        self.header(&format!("{path}/"), 0, 0o755, b'5');
        self
    }

    /// Add a regular file.
    pub fn file(mut self, path: &str, contents: &[u8], mode: u32) -> Tar {
        self.header(path, contents.len() as u64, mode, b'0');
        self.buf.extend_from_slice(contents);
        self.pad();
        self
    }

    /// The archive with its two closing zero blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 1024, 0);
        self.buf
    }

    fn pad(&mut self) {
        let rem = self.buf.len() % 512;
        if rem != 0 {
            self.buf.resize(self.buf.len() + 512 - rem, 0);
        }
    }

    fn header(&mut self, path: &str, size: u64, mode: u32, kind: u8) {
        assert!(path.len() <= 100, "tar path too long: {path}");
        let mut h = [0u8; 512];
        let field = |h: &mut [u8; 512], at: usize, bytes: &[u8]| {
            h[at..at + bytes.len()].copy_from_slice(bytes);
        };
        field(&mut h, 0, path.as_bytes());
        field(&mut h, 100, format!("{mode:07o}\0").as_bytes());
        field(&mut h, 108, b"0000000\0");
        field(&mut h, 116, b"0000000\0");
        field(&mut h, 124, format!("{size:011o}\0").as_bytes());
        field(&mut h, 136, b"00000000000\0");
        field(&mut h, 148, b"        ");
        h[156] = kind;
        field(&mut h, 257, b"ustar\0");
        field(&mut h, 263, b"00");
        field(&mut h, 265, b"root");
        field(&mut h, 297, b"root");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        field(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
        self.buf.extend_from_slice(&h);
    }
}

/// Gzip `bytes` deterministically (no name, mtime 0).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// Deterministic pseudo-random bytes (xorshift), so layers do not compress away.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// `mediaType`.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// `(os, architecture)` in an index.
    pub platform: Option<(String, String)>,
}

impl Descriptor {
    /// The descriptor's JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        });
        if let Some((os, arch)) = &self.platform {
            v["platform"] = json!({ "architecture": arch, "os": os });
        }
        v
    }

    /// Parse a descriptor's JSON.
    pub fn from_json(v: &Value) -> Descriptor {
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("descriptor without {k}: {v}"))
        };
        Descriptor {
            media_type: s("mediaType").to_string(),
            digest: s("digest").to_string(),
            size: v["size"]
                .as_u64()
                .unwrap_or_else(|| panic!("descriptor without size: {v}")),
            platform: v.get("platform").map(|p| {
                let f = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                (f("os"), f("architecture"))
            }),
        }
    }
}

/// A layer to put in an image: its uncompressed tar and whether to gzip it.
pub struct Layer {
    /// The tar archive.
    pub tar: Vec<u8>,
    /// Store it gzip'd (`+gzip`) rather than plain.
    pub gzip: bool,
}

/// An OCI image layout directory.
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Create an empty layout at `root`.
    pub fn create(root: &Path) -> Layout {
        std::fs::create_dir_all(root.join("blobs/sha256")).expect("creating the layout");
        std::fs::write(root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("writing oci-layout");
        let layout = Layout::open(root);
        layout.set_refs(&[]);
        layout
    }

    /// A layout some tool wrote at `root`.
    pub fn open(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.root.join("blobs/sha256").join(hex)
    }

    /// Store `bytes` as a blob.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = sha256_digest(bytes);
        std::fs::write(self.blob_path(&digest), bytes).expect("writing a blob");
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
            platform: None,
        }
    }

    /// A blob's bytes, checked against its digest.
    pub fn must_blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert_eq!(
            sha256_digest(&bytes),
            digest,
            "{} does not match its name",
            path.display()
        );
        bytes
    }

    /// Every blob file present.
    pub fn blob_digests(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.root.join("blobs/sha256"))
            .expect("listing blobs")
            .map(|e| format!("sha256:{}", e.expect("dir entry").file_name().to_string_lossy()))
            .collect()
    }

    /// Write `index.json` naming each descriptor by its tag.
    pub fn set_refs(&self, refs: &[(&str, &Descriptor)]) {
        let manifests: Vec<Value> = refs
            .iter()
            .map(|(tag, d)| {
                let mut v = d.to_json();
                v["annotations"] = json!({ REF_NAME: tag });
                v
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "manifests": manifests });
        std::fs::write(
            self.root.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("writing index.json");
    }

    /// The descriptor `index.json` names `tag`.
    pub fn must_resolve(&self, tag: &str) -> Descriptor {
        let text = std::fs::read(self.root.join("index.json")).expect("reading index.json");
        let index: Value = serde_json::from_slice(&text).expect("index.json is JSON");
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        let found = entries
            .iter()
            .find(|m| m["annotations"][REF_NAME].as_str() == Some(tag))
            .unwrap_or_else(|| panic!("no {tag} in {}/index.json: {index}", self.root.display()));
        Descriptor::from_json(found)
    }

    /// Store an image (config, layers, manifest) for `os`/`arch`; the manifest's descriptor,
    /// with its platform.
    pub fn put_image(&self, os: &str, arch: &str, layers: &[Layer], cmd: &[&str]) -> Descriptor {
        let mut diff_ids = Vec::new();
        let mut layer_descs = Vec::new();
        for layer in layers {
            diff_ids.push(sha256_digest(&layer.tar));
            layer_descs.push(if layer.gzip {
                self.put_blob(LAYER_TAR_GZIP, &gzip(&layer.tar))
            } else {
                self.put_blob(LAYER_TAR, &layer.tar)
            });
        }
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": { "Cmd": cmd },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = self.put_blob(CONFIG, &serde_json::to_vec(&config).expect("json"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.to_json(),
            "layers": layer_descs.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        let mut desc = self.put_blob(MANIFEST, &serde_json::to_vec_pretty(&manifest).expect("json"));
        desc.platform = Some((os.to_string(), arch.to_string()));
        desc
    }

    /// Store an image index of `manifests`.
    pub fn put_index(&self, manifests: &[Descriptor]) -> Descriptor {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": manifests.iter().map(Descriptor::to_json).collect::<Vec<_>>(),
        });
        self.put_blob(INDEX, &serde_json::to_vec_pretty(&index).expect("json"))
    }

    /// Every blob reachable from `root` (itself included): index → manifests → config and
    /// layers. Each is read and checked against its digest.
    pub fn must_reachable(&self, root: &Descriptor) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![root.clone()];
        while let Some(d) = todo.pop() {
            if out.contains_key(&d.digest) {
                continue;
            }
            let bytes = self.must_blob(&d.digest);
            assert_eq!(bytes.len() as u64, d.size, "size of {}", d.digest);
            if d.media_type == INDEX || d.media_type == MANIFEST {
                let v: Value = serde_json::from_slice(&bytes).expect("manifest is JSON");
                for key in ["manifests", "layers"] {
                    for child in v[key].as_array().into_iter().flatten() {
                        todo.push(Descriptor::from_json(child));
                    }
                }
                if v.get("config").is_some() {
                    todo.push(Descriptor::from_json(&v["config"]));
                }
            }
            out.insert(d.digest.clone(), bytes);
        }
        out
    }
}

/// Assert that `dst`'s `dst_tag` is byte for byte `src`'s `src_tag`: the same root descriptor
/// and every reachable blob identical. Returns how many blobs were compared.
pub fn must_be_identical(src: &Layout, src_tag: &str, dst: &Layout, dst_tag: &str) -> usize {
    let a = src.must_resolve(src_tag);
    let b = dst.must_resolve(dst_tag);
    assert_eq!(
        (&a.media_type, &a.digest, a.size),
        (&b.media_type, &b.digest, b.size),
        "root descriptor of {src_tag} changed on the way"
    );
    let blobs_a = src.must_reachable(&a);
    let blobs_b = dst.must_reachable(&b);
    assert_eq!(
        blobs_a.keys().collect::<Vec<_>>(),
        blobs_b.keys().collect::<Vec<_>>(),
        "reachable blobs differ"
    );
    for (digest, bytes) in &blobs_a {
        assert!(blobs_b[digest] == *bytes, "blob {digest} differs");
    }
    blobs_a.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_have_valid_checksums_and_sizes() {
        let tar = Tar::new()
            .dir("etc")
            .file("etc/hello", b"hello\n", 0o644)
            .finish();
        assert_eq!(tar.len(), 512 * 3 + 1024);
        let h = &tar[512..1024];
        assert_eq!(&h[..9], b"etc/hello");
        assert_eq!(&h[124..136], b"00000000006\0");
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h.to_vec();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&b| u32::from(b)).sum::<u32>());
        assert_eq!(&tar[1024..1030], b"hello\n");
    }

    #[test]
    fn gzip_is_deterministic() {
        let data = noise(7, 10_000);
        assert_eq!(gzip(&data), gzip(&data));
        assert_eq!(&gzip(&data)[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn an_index_reaches_every_blob() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::create(dir.path());
        let shared = Layer {
            tar: Tar::new().file("a", b"a", 0o644).finish(),
            gzip: true,
        };
        let own = Layer {
            tar: Tar::new().file("b", b"b", 0o644).finish(),
            gzip: false,
        };
        let amd = layout.put_image("linux", "amd64", &[shared, own], &["/a"]);
        let index = layout.put_index(std::slice::from_ref(&amd));
        layout.set_refs(&[("v1", &index)]);
        assert_eq!(layout.must_resolve("v1").digest, index.digest);
        // index, manifest, config and two layers
        assert_eq!(layout.must_reachable(&index).len(), 5);
        assert_eq!(must_be_identical(&layout, "v1", &layout, "v1"), 5);
    }
}
