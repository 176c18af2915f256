//! The pull-through cache: repositories that are caches of other registries (`proxy:`).
//! A manifest or blob such a repository lacks is fetched from its upstream and stored like
//! anything pushed (replicated, on IPFS when configured); tags are asked upstream again
//! after `ttl`, and cached content is served while the upstream is down or rate-limits.
//!
//! `api` asks it which repositories are proxied and hands it the reads the registry could not
//! answer; it calls `registry` (reads, `put_whole` through the upload path) and `raft`
//! (`CacheManifest`, the cluster-wide fetch claim), and `ipcr-client` for the upstream.

mod blobs;
mod manifests;
pub mod tail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipcr_client::retry::Retry;
use ipcr_client::{Access, auth::Credentials};
use ipcr_proto::RepoName;

pub use blobs::Fetched;
pub use manifests::missing;

use crate::config::ProxyConfig;

/// One upstream registry and the repositories under its prefix.
pub struct Upstream {
    prefix: String,
    remote: ipcr_client::Registry,
    ttl: Duration,
    /// When this node last had each `(repository, tag)` confirmed upstream.
    checked: Mutex<HashMap<(RepoName, String), Instant>>,
}

impl Upstream {
    /// Whether `tag` of `repo` was confirmed upstream less than `ttl` ago.
    fn fresh(&self, repo: &RepoName, tag: &str) -> bool {
        self.checked
            .lock()
            .expect("proxy tag times")
            .get(&(repo.clone(), tag.to_string()))
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn confirmed(&self, repo: &RepoName, tag: &str) {
        self.checked
            .lock()
            .expect("proxy tag times")
            .insert((repo.clone(), tag.to_string()), Instant::now());
    }
}

/// A proxied repository: its upstream, and its name there.
pub struct Route {
    upstream: Arc<Upstream>,
    remote_repo: RepoName,
}

impl Route {
    /// The upstream's address, for logs.
    pub fn upstream(&self) -> String {
        self.upstream.remote.addr().to_string()
    }
}

/// Every configured upstream.
pub struct Proxy {
    upstreams: Vec<Arc<Upstream>>,
    /// Blobs this node is fetching now, with the fetch once its size is known: other pulls of
    /// one read along (the Raft claim is the node's, not the pull's, so it cannot tell them).
    fetching: Arc<Mutex<HashMap<ipcr_proto::Digest, Option<tail::InFlight>>>>,
}

/// A cache waits for its upstream only briefly: a client is waiting, and cached content can
/// be served instead. A `Retry-After` is never waited for.
fn cache_retry() -> Retry {
    Retry {
        attempts: 2,
        base: Duration::from_millis(200),
        max: Duration::from_secs(1),
        max_retry_after: Duration::ZERO,
    }
}

impl Proxy {
    /// The caches `config` asks for, `None` without any.
    pub fn from_config(config: &ProxyConfig) -> Result<Option<Proxy>, ipcr_client::Error> {
        let mut upstreams = Vec::new();
        for u in config.upstreams() {
            let access = Access {
                creds: (!u.username.is_empty()).then(|| Credentials::Password {
                    username: u.username.clone(),
                    password: u.password.clone(),
                }),
                retry: cache_retry(),
                ..Access::default()
            };
            if u.remoteurl.starts_with("http://") {
                tracing::warn!(
                    prefix = %u.prefix,
                    remoteurl = %u.remoteurl,
                    "a cache's upstream speaks plain HTTP: digests still check its blobs, not its tags"
                );
            }
            upstreams.push(Arc::new(Upstream {
                prefix: u.prefix,
                remote: ipcr_client::Registry::lazy(&u.remoteurl, access)?,
                ttl: u.ttl.unwrap_or(config.ttl).0,
                checked: Mutex::default(),
            }));
        }
        Ok((!upstreams.is_empty()).then_some(Proxy {
            upstreams,
            fetching: Arc::default(),
        }))
    }

    /// The upstream `repo` is a cache of, if any (the longest matching prefix).
    pub fn route(&self, repo: &RepoName) -> Option<Route> {
        let name = repo.as_str();
        self.upstreams.iter().find_map(|u| {
            let rest = if u.prefix.is_empty() {
                name
            } else {
                name.strip_prefix(u.prefix.as_str())?.strip_prefix('/')?
            };
            // Docker Hub's official images live under `library/`, which clients add.
            let remote = if u.remote.addr().is_docker_hub() && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_string()
            };
            Some(Route {
                upstream: u.clone(),
                remote_repo: remote.parse().ok()?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn proxy(yaml: &str) -> Proxy {
        let c = Config::from_yaml(yaml, std::iter::empty()).unwrap();
        Proxy::from_config(&c.proxy).unwrap().unwrap()
    }

    fn routed(p: &Proxy, repo: &str) -> Option<(String, String)> {
        p.route(&repo.parse().unwrap())
            .map(|r| (r.upstream(), r.remote_repo.to_string()))
    }

    #[test]
    fn repositories_map_to_their_upstream_by_prefix() {
        let p = proxy(
            "proxy:\n  upstreams:\n    - {prefix: dockerhub, remoteurl: 'https://registry-1.docker.io'}\n    - {prefix: ghcr, remoteurl: 'https://ghcr.io'}\n    - {prefix: ghcr/team, remoteurl: 'http://127.0.0.1:5000'}\n",
        );
        let hub = "registry-1.docker.io".to_string();
        assert_eq!(
            routed(&p, "dockerhub/alpine"),
            Some((hub.clone(), "library/alpine".into()))
        );
        assert_eq!(
            routed(&p, "dockerhub/bitnami/redis"),
            Some((hub, "bitnami/redis".into()))
        );
        assert_eq!(
            routed(&p, "ghcr/org/tool"),
            Some(("ghcr.io".into(), "org/tool".into()))
        );
        assert_eq!(
            routed(&p, "ghcr/team/x"),
            Some(("127.0.0.1:5000".into(), "x".into()))
        );
        assert_eq!(routed(&p, "ghcrx/a"), None);
        assert_eq!(routed(&p, "dockerhub"), None);
        assert_eq!(routed(&p, "local/app"), None);
    }

    #[test]
    fn remoteurl_alone_makes_every_repository_a_cache() {
        let p = proxy("proxy:\n  remoteurl: https://registry-1.docker.io\n  ttl: 1m\n");
        let hub = "registry-1.docker.io".to_string();
        assert_eq!(routed(&p, "alpine"), Some((hub.clone(), "library/alpine".into())));
        assert_eq!(routed(&p, "a/b"), Some((hub, "a/b".into())));
        assert_eq!(p.upstreams[0].ttl, Duration::from_secs(60));
        let none = Config::from_yaml("", std::iter::empty()).unwrap();
        assert!(Proxy::from_config(&none.proxy).unwrap().is_none());
    }

    #[test]
    fn tags_stay_fresh_for_the_ttl() {
        let p = proxy("proxy:\n  remoteurl: http://127.0.0.1:9\n  ttl: 1h\n");
        let u = &p.upstreams[0];
        let repo: RepoName = "a".parse().unwrap();
        assert!(!u.fresh(&repo, "v1"));
        u.confirmed(&repo, "v1");
        assert!(u.fresh(&repo, "v1"));
        assert!(!u.fresh(&repo, "v2"));
        let zero = proxy("proxy:\n  remoteurl: http://127.0.0.1:9\n  ttl: 0s\n");
        zero.upstreams[0].confirmed(&repo, "v1");
        assert!(!zero.upstreams[0].fresh(&repo, "v1"));
    }
}
