//! Manifests of proxied repositories: by digest, what is stored or else the upstream's
//! (immutable, so never asked again); by tag, what the upstream names now, asked with a
//! `HEAD` at most once per `ttl` on each node, and what is cached when the upstream cannot
//! answer.

use ipcr_proto::manifest::parse_manifest;
use ipcr_proto::{Command, Digest, ManifestRecord, Reference, RepoName, Tag};

use super::{Proxy, Route};
use crate::registry::{Registry, RegistryError, ServedManifest};

fn upstream_error(route: &Route, e: ipcr_client::Error) -> RegistryError {
    RegistryError::Upstream(format!("{}: {e}", route.upstream()))
}

/// Whether a registry error means "not here" (so the upstream is asked).
pub fn missing(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::ManifestUnknown | RegistryError::BlobUnknown | RegistryError::NameUnknown
    )
}

impl Proxy {
    /// The manifest `reference` names in the proxied `repo`.
    pub async fn manifest(
        &self,
        reg: &Registry,
        route: &Route,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ServedManifest, RegistryError> {
        let local = match reg.manifest(repo, reference).await {
            Ok(m) => Some(m),
            Err(e) if missing(&e) => None,
            Err(e) => return Err(e),
        };
        match reference {
            Reference::Digest(_) if local.is_some() => Ok(local.expect("checked")),
            Reference::Digest(d) => self.fetch(reg, route, repo, d, None).await,
            Reference::Tag(tag) => {
                if let Some(m) = &local
                    && route.upstream.fresh(repo, tag.as_str())
                {
                    return Ok(m.clone());
                }
                match route
                    .upstream
                    .remote
                    .head_manifest(&route.remote_repo, tag.as_str())
                    .await
                {
                    Ok(Some(digest)) => {
                        route.upstream.confirmed(repo, tag.as_str());
                        match local {
                            Some(m) if m.digest == digest => Ok(m),
                            _ => self.fetch(reg, route, repo, &digest, Some(tag.clone())).await,
                        }
                    }
                    Ok(None) => Err(RegistryError::ManifestUnknown),
                    Err(e) => match local {
                        Some(m) => {
                            tracing::warn!(%repo, %tag, upstream = %route.upstream(), error = %e, "upstream unavailable: serving the cached tag");
                            Ok(m)
                        }
                        None => Err(upstream_error(route, e)),
                    },
                }
            }
        }
    }

    /// Store manifest `digest` in `repo`, tagged `tag` when the upstream named it by that tag:
    /// then the copy another repository of the cluster holds will do (the upstream confirmed
    /// the digest for this repository); else the upstream's, checked against the digest.
    async fn fetch(
        &self,
        reg: &Registry,
        route: &Route,
        repo: &RepoName,
        digest: &Digest,
        tag: Option<Tag>,
    ) -> Result<ServedManifest, RegistryError> {
        let held = match tag {
            Some(_) => reg.raft().reader().manifest_any(digest)?,
            None => None,
        };
        let (media_type, bytes) = match held {
            Some(r) => (r.media_type, bytes::Bytes::from(r.bytes)),
            None => {
                let m = route
                    .upstream
                    .remote
                    .get_manifest(&route.remote_repo, &digest.to_string())
                    .await
                    .map_err(|e| match e.status() {
                        Some(404) => RegistryError::ManifestUnknown,
                        _ => upstream_error(route, e),
                    })?;
                (m.media_type, m.bytes)
            }
        };
        let info = parse_manifest(Some(&media_type), &bytes)?;
        let record = ManifestRecord {
            media_type: info.media_type,
            bytes: bytes.to_vec(),
            blobs: info.blobs,
            children: info.children,
            subject: info.subject,
            artifact_type: info.artifact_type,
            annotations: info.annotations.unwrap_or_default(),
        };
        let cmd = Command::CacheManifest {
            repo: repo.clone(),
            digest: digest.clone(),
            tags: tag.into_iter().collect(),
            record: record.clone(),
            now_ms: crate::raft::now_ms(),
        };
        reg.raft()
            .propose(cmd)
            .await?
            .into_result()
            .map_err(|r| RegistryError::Internal(r.to_string()))?;
        tracing::info!(%repo, %digest, upstream = %route.upstream(), "cached a manifest");
        Ok(ServedManifest {
            digest: digest.clone(),
            record,
        })
    }
}
