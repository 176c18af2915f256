//! What a migration will copy, read from the source before any byte moves: each tag's
//! manifest and, through indexes, every platform's manifest, the blobs each references, and
//! the referrers (signatures, SBOMs, attestations) of each, through the referrers API or the
//! referrers tag schema when the source has no API.
//!
//! Manifests are small (4 MiB at most) and kept in memory; blobs are only named here.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use ipcr_proto::digest::Digest;
use ipcr_proto::manifest::Descriptor;
use ipcr_proto::names::RepoName;

use crate::api::{Manifest, index_entries};
use crate::error::Error;
use crate::registry::Registry;

/// Referrers of referrers are followed this deep (a signature of an SBOM of an image).
const REFERRER_DEPTH: usize = 3;

/// A manifest and everything it needs at the destination before it can be written there.
#[derive(Debug)]
pub struct Node {
    /// The manifest, bytes as the source serves them.
    pub manifest: Manifest,
    /// Its config and layers (foreign layers left out, as registries do), with their sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// The manifests an index lists.
    pub children: Vec<Arc<Node>>,
    /// The manifests whose `subject` is this one.
    pub referrers: Vec<Arc<Node>>,
    /// How the source's index or referrers list describes it.
    pub descriptor: Descriptor,
}

impl Node {
    /// Every blob this manifest, its children and its referrers need, with sizes.
    pub fn all_blobs(&self, out: &mut BTreeMap<Digest, u64>) {
        out.extend(self.blobs.iter().cloned());
        for n in self.children.iter().chain(&self.referrers) {
            n.all_blobs(out);
        }
    }
}

/// The source's name for the referrers fallback tag of `digest` (`sha256-<hex>`).
pub fn fallback_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().name(), digest.hex())
}

/// Whether `tag` is a referrers fallback tag: migrated as the referrers it lists, not as a tag.
pub fn is_fallback_tag(tag: &str) -> bool {
    tag.split_once('-').is_some_and(|(alg, hex)| {
        matches!((alg, hex.len()), ("sha256", 64) | ("sha512", 128))
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// Reads manifest trees of one source repository, each manifest once.
pub struct Planner<'a> {
    src: &'a Registry,
    repo: &'a RepoName,
    seen: Mutex<HashMap<Digest, Arc<Node>>>,
}

type Fetch<'a> = Pin<Box<dyn Future<Output = Result<Arc<Node>, Error>> + Send + 'a>>;

impl<'a> Planner<'a> {
    /// A planner reading `repo` of `src`.
    pub fn new(src: &'a Registry, repo: &'a RepoName) -> Planner<'a> {
        Planner {
            src,
            repo,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The tree of the manifest `reference` (a tag or a digest) names.
    pub async fn tree(&self, reference: &str) -> Result<Arc<Node>, Error> {
        let m = self.src.get_manifest(self.repo, reference).await?;
        self.node(m, REFERRER_DEPTH).await
    }

    fn by_digest(&self, d: &Digest, depth: usize) -> Fetch<'_> {
        let d = d.clone();
        Box::pin(async move {
            if let Some(n) = self.seen.lock().expect("planner memo").get(&d) {
                return Ok(n.clone());
            }
            let m = self.src.get_manifest(self.repo, &d.to_string()).await?;
            self.node(m, depth).await
        })
    }

    fn node(&self, manifest: Manifest, depth: usize) -> Fetch<'_> {
        Box::pin(async move {
            let invalid = |detail: String| Error::Protocol {
                registry: self.src.addr().to_string(),
                detail: format!("{}@{}: {detail}", self.repo, manifest.digest),
            };
            let info = manifest.info().map_err(|e| invalid(e.to_string()))?;
            let mut children = Vec::new();
            for c in &info.children {
                children.push(self.by_digest(c, depth).await?);
            }
            let mut referrers = Vec::new();
            if depth > 0 {
                for r in self.referrer_list(&manifest.digest).await? {
                    referrers.push(self.by_digest(&r.digest, depth - 1).await?);
                }
            }
            let blobs = info
                .blobs
                .iter()
                .map(|d| (d.clone(), info.sizes.get(d).copied().unwrap_or(0)))
                .collect();
            let node = Arc::new(Node {
                descriptor: manifest.descriptor(&info),
                manifest,
                blobs,
                children,
                referrers,
            });
            self.seen
                .lock()
                .expect("planner memo")
                .insert(node.manifest.digest.clone(), node.clone());
            Ok(node)
        })
    }

    /// The referrers of `digest`: the API's answer, else the fallback tag's index, else none.
    async fn referrer_list(&self, digest: &Digest) -> Result<Vec<Descriptor>, Error> {
        if let Some(list) = self.src.referrers(self.repo, digest).await? {
            return Ok(list);
        }
        match self.src.get_manifest(self.repo, &fallback_tag(digest)).await {
            Ok(m) => index_entries(&m.bytes).map_err(|detail| Error::Protocol {
                registry: self.src.addr().to_string(),
                detail: format!("{}:{}: {detail}", self.repo, fallback_tag(digest)),
            }),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tags_are_recognised_exactly() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(fallback_tag(&d), format!("sha256-{}", "ab".repeat(32)));
        assert!(is_fallback_tag(&fallback_tag(&d)));
        assert!(is_fallback_tag(&format!("sha512-{}", "0".repeat(128))));
        for not in [
            "latest",
            "sha256-abc",
            &format!("sha256-{}", "AB".repeat(32)),
            &format!("sha256-{}x", "a".repeat(63)),
            &format!("md5-{}", "a".repeat(64)),
        ] {
            assert!(!is_fallback_tag(not), "{not}");
        }
    }
}
