//! `proxy:`: IPCR as a pull-through cache of other registries. distribution's keys
//! (`remoteurl`, `username`, `password`, `ttl`) make every repository a cache of one upstream,
//! as in distribution; `upstreams` adds caches for the repositories under a prefix
//! (`dockerhub/*` → Docker Hub, `ghcr/*` → ghcr.io), each with its own credentials, beside
//! ordinary repositories that take pushes.

use serde::{Deserialize, Serialize};

use super::{ConfigError, GoDuration};

/// How long a tag is served from the cache before it is checked upstream again.
pub const DEFAULT_TTL: GoDuration = GoDuration(std::time::Duration::from_secs(300));

/// `proxy:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The registry every repository is a cache of (distribution's key), such as
    /// `https://registry-1.docker.io`; empty for none. Pushes are then refused everywhere.
    pub remoteurl: String,
    /// The user for `remoteurl` (anonymous when empty).
    pub username: String,
    /// Its password or access token.
    pub password: String,
    /// How long a cached tag is served before the upstream is asked again (`HEAD`) what it
    /// names; cached content stays served when the upstream is down or rate-limits.
    pub ttl: GoDuration,
    /// Caches of further registries, each for the repositories under its `prefix`.
    pub upstreams: Vec<UpstreamConfig>,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            remoteurl: String::new(),
            username: String::new(),
            password: String::new(),
            ttl: DEFAULT_TTL,
            upstreams: Vec::new(),
        }
    }
}

/// One entry of `proxy.upstreams`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The repositories `prefix/<name>` are caches of `<name>` at `remoteurl` (Docker Hub's
    /// one-component names get `library/`, as the docker CLI adds it).
    pub prefix: String,
    /// The registry, `https://host[:port]` (or `http://`, used as given).
    pub remoteurl: String,
    /// Its user (anonymous when empty).
    pub username: String,
    /// Its password or access token.
    pub password: String,
    /// As `proxy.ttl`, for this upstream (default: `proxy.ttl`).
    pub ttl: Option<GoDuration>,
}

impl ProxyConfig {
    /// Every upstream, most specific prefix first, `remoteurl` last (prefix empty), each
    /// with its ttl filled in.
    pub fn upstreams(&self) -> Vec<UpstreamConfig> {
        let mut all: Vec<UpstreamConfig> = self
            .upstreams
            .iter()
            .map(|u| UpstreamConfig {
                prefix: u.prefix.trim_matches('/').to_string(),
                ttl: Some(u.ttl.unwrap_or(self.ttl)),
                ..u.clone()
            })
            .collect();
        if !self.remoteurl.is_empty() {
            all.push(UpstreamConfig {
                prefix: String::new(),
                remoteurl: self.remoteurl.clone(),
                username: self.username.clone(),
                password: self.password.clone(),
                ttl: Some(self.ttl),
            });
        }
        all.sort_by_key(|u| std::cmp::Reverse(u.prefix.len()));
        all
    }

    /// Check the URLs and prefixes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let all = self.upstreams();
        for (i, u) in all.iter().enumerate() {
            let key = if u.prefix.is_empty() {
                "proxy.remoteurl".to_string()
            } else {
                format!("proxy.upstreams[{}] ({})", i, u.prefix)
            };
            if !(u.remoteurl.starts_with("https://") || u.remoteurl.starts_with("http://")) {
                return invalid(format!("{key}: remoteurl must be an http(s):// URL"));
            }
            if let Err(e) = ipcr_client::Registry::lazy(&u.remoteurl, ipcr_client::Access::default()) {
                return invalid(format!("{key}: {e}"));
            }
            if !u.prefix.is_empty() && u.prefix.parse::<ipcr_proto::RepoName>().is_err() {
                return invalid(format!(
                    "{key}: prefix must be a repository name such as dockerhub"
                ));
            }
            if u.username.is_empty() != u.password.is_empty() {
                return invalid(format!("{key}: give both username and password, or neither"));
            }
            if all[..i].iter().any(|o| o.prefix == u.prefix) {
                return invalid(format!("{key}: two upstreams for the same prefix"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn distributions_keys_and_upstreams_by_prefix() {
        let yaml = "proxy:\n  remoteurl: https://registry-1.docker.io\n  username: u\n  password: p\n  ttl: 1h\n  upstreams:\n    - prefix: ghcr\n      remoteurl: https://ghcr.io\n    - prefix: mirror/team\n      remoteurl: http://10.0.0.5:5000\n      ttl: 10s\n";
        let c = Config::from_yaml(yaml, std::iter::empty()).unwrap();
        let all = c.proxy.upstreams();
        let view: Vec<_> = all
            .iter()
            .map(|u| {
                (
                    u.prefix.as_str(),
                    u.remoteurl.as_str(),
                    u.ttl.unwrap().0.as_secs(),
                )
            })
            .collect();
        assert_eq!(
            view,
            vec![
                // An explicit plain-HTTP upstream (a mirror inside the network) is taken.
                ("mirror/team", "http://10.0.0.5:5000", 10),
                ("ghcr", "https://ghcr.io", 3600),
                ("", "https://registry-1.docker.io", 3600),
            ]
        );
        assert_eq!((all[2].username.as_str(), all[2].password.as_str()), ("u", "p"));
        let none = Config::from_yaml("", std::iter::empty()).unwrap();
        assert!(none.proxy.upstreams().is_empty());
        assert_eq!(none.proxy.ttl, DEFAULT_TTL);
    }

    #[test]
    fn the_environment_sets_them_too() {
        let env = [
            ("REGISTRY_PROXY_REMOTEURL", "http://127.0.0.1:5000"),
            ("REGISTRY_PROXY_TTL", "0s"),
            (
                "REGISTRY_PROXY_UPSTREAMS",
                "[{prefix: hub, remoteurl: 'https://registry-1.docker.io', username: a, password: b}]",
            ),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::from_yaml("", env).unwrap();
        let all = c.proxy.upstreams();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].prefix.as_str(), all[0].username.as_str()), ("hub", "a"));
        assert_eq!(all[1].ttl.unwrap().0.as_secs(), 0);
    }

    #[test]
    fn bad_upstreams_are_refused_naming_the_key() {
        for (yaml, says) in [
            ("proxy:\n  remoteurl: registry-1.docker.io\n", "proxy.remoteurl"),
            (
                "proxy:\n  remoteurl: https://a.io\n  username: u\n",
                "both username and password",
            ),
            (
                "proxy:\n  upstreams:\n    - prefix: Bad_Prefix!\n      remoteurl: https://a.io\n",
                "prefix",
            ),
            (
                "proxy:\n  upstreams:\n    - {prefix: a, remoteurl: 'https://a.io'}\n    - {prefix: a/, remoteurl: 'https://b.io'}\n",
                "same prefix",
            ),
            (
                "proxy:\n  upstreams:\n    - {prefix: a, remote: 'https://a.io'}\n",
                "remote",
            ),
        ] {
            let e = Config::from_yaml(yaml, std::iter::empty())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }
}
