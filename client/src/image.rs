//! Where images are: a registry's address, and the SOURCE and DESTINATION arguments of
//! `ipcr-node migrate` read as Docker reads image names (`alpine` is `library/alpine` on
//! Docker Hub; a first component with a `.` or a `:`, or `localhost`, names a registry).
//!
//! Pure parsing, no I/O; the rest of the crate and the CLI call it.

use std::fmt;
use std::net::IpAddr;

use ipcr_proto::digest::Digest;
use ipcr_proto::names::{Reference, RepoName};

/// The host Docker Hub's registry API answers on.
pub const DOCKER_HUB: &str = "registry-1.docker.io";
/// The key `docker login` files Docker Hub's credentials under in `config.json`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A malformed image or registry argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {input:?}: {why}")]
pub struct ParseError {
    /// Which argument it was (source, destination).
    pub what: &'static str,
    /// The argument as given.
    pub input: String,
    /// What is wrong with it.
    pub why: String,
}

/// How to reach a registry: the URL scheme when the argument named one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http://` given explicitly.
    Http,
    /// `https://` given explicitly.
    Https,
}

/// A registry: `host[:port]` as it appears in URLs, and a scheme when one was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryAddr {
    /// `host[:port]`, IPv6 hosts in brackets.
    pub host: String,
    /// `Some` when the argument began with `http://` or `https://`.
    pub scheme: Option<Scheme>,
}

impl RegistryAddr {
    /// `host[:port]`, optionally prefixed with `http://` or `https://`; Docker Hub's names
    /// (`docker.io`, `index.docker.io`) become its API host.
    pub fn parse(s: &str) -> Result<RegistryAddr, String> {
        let (scheme, host) = match s.split_once("://") {
            Some(("http", rest)) => (Some(Scheme::Http), rest),
            Some(("https", rest)) => (Some(Scheme::Https), rest),
            Some((other, _)) => return Err(format!("unknown scheme {other}://")),
            None => (None, s),
        };
        let host = host.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
            return Err("a registry is host[:port]".into());
        }
        let host = match host {
            "docker.io" | "index.docker.io" => DOCKER_HUB.to_string(),
            h => h.to_ascii_lowercase(),
        };
        Ok(RegistryAddr { host, scheme })
    }

    /// Docker Hub's registry.
    pub fn docker_hub() -> RegistryAddr {
        RegistryAddr {
            host: DOCKER_HUB.into(),
            scheme: None,
        }
    }

    /// Whether this is Docker Hub.
    pub fn is_docker_hub(&self) -> bool {
        self.host == DOCKER_HUB
    }

    /// The host without its port (and without IPv6 brackets).
    pub fn hostname(&self) -> &str {
        let h = &self.host;
        if let Some(rest) = h.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        h.rsplit_once(':').map_or(h.as_str(), |(name, _)| name)
    }

    /// Docker's rule for plain HTTP: `localhost` and loopback addresses only.
    pub fn is_loopback(&self) -> bool {
        let name = self.hostname();
        name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for RegistryAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

/// `[registry[:port]/]repository[:tag|@digest]`: what to copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Where it is (Docker Hub when the argument names no registry).
    pub registry: RegistryAddr,
    /// The repository (`library/alpine` for `alpine` on Docker Hub).
    pub repository: RepoName,
    /// One tag or digest; `None` means every tag.
    pub reference: Option<Reference>,
}

/// `host[:port][/repository]`: where to copy to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The registry written to.
    pub registry: RegistryAddr,
    /// The repository (or, with `--catalog`, the prefix); `None` keeps the source's names.
    pub repository: Option<RepoName>,
}

/// Whether the first path component of an image name is a registry, as Docker decides.
fn names_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.contains("://")
}

fn err(what: &'static str, input: &str, why: impl Into<String>) -> ParseError {
    ParseError {
        what,
        input: input.to_string(),
        why: why.into(),
    }
}

fn repo(what: &'static str, input: &str, name: &str) -> Result<RepoName, ParseError> {
    name.parse()
        .map_err(|e| err(what, input, format!("repository {name:?}: {e}")))
}

impl Source {
    /// Parse the SOURCE argument; a `docker://` prefix (skopeo's transport) is accepted.
    pub fn parse(input: &str) -> Result<Source, ParseError> {
        const WHAT: &str = "source";
        let s = input.strip_prefix("docker://").unwrap_or(input);
        let s = s.strip_prefix("//").unwrap_or(s);
        let (registry, rest) = split_registry(s);
        let registry = match registry {
            Some(r) => RegistryAddr::parse(r).map_err(|e| err(WHAT, input, e))?,
            None => RegistryAddr::docker_hub(),
        };
        let (name, reference) = if let Some((name, digest)) = rest.split_once('@') {
            let d: Digest = digest
                .parse()
                .map_err(|e| err(WHAT, input, format!("digest: {e}")))?;
            (name, Some(Reference::Digest(d)))
        } else {
            match rest.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => {
                    let t = tag
                        .parse()
                        .map_err(|e| err(WHAT, input, format!("tag {tag:?}: {e}")))?;
                    (name, Some(Reference::Tag(t)))
                }
                _ => (rest, None),
            }
        };
        if name.is_empty() {
            return Err(err(WHAT, input, "no repository"));
        }
        let name = if registry.is_docker_hub() && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_string()
        };
        Ok(Source {
            registry,
            repository: repo(WHAT, input, &name)?,
            reference,
        })
    }
}

/// Split `registry/rest` when the first component names a registry.
fn split_registry(s: &str) -> (Option<&str>, &str) {
    // An explicit scheme's `//` is part of the registry, not a path separator.
    let start = s.find("://").map_or(0, |i| i + 3);
    match s[start..].find('/') {
        Some(i) if names_registry(&s[..start + i]) => (Some(&s[..start + i]), &s[start + i + 1..]),
        _ => (None, s),
    }
}

impl Destination {
    /// Parse the DESTINATION argument: always a registry first, then an optional repository.
    pub fn parse(input: &str) -> Result<Destination, ParseError> {
        const WHAT: &str = "destination";
        let s = input.strip_prefix("docker://").unwrap_or(input);
        let start = s.find("://").map_or(0, |i| i + 3);
        let (host, path) = match s[start..].find('/') {
            Some(i) => (&s[..start + i], &s[start + i + 1..]),
            None => (s, ""),
        };
        let registry = RegistryAddr::parse(host).map_err(|e| err(WHAT, input, e))?;
        let path = path.trim_end_matches('/');
        if path.contains('@') || path.rsplit('/').next().is_some_and(|last| last.contains(':')) {
            return Err(err(
                WHAT,
                input,
                "names a tag or digest; the source's tags are kept",
            ));
        }
        let repository = if path.is_empty() {
            None
        } else {
            Some(repo(WHAT, input, path)?)
        };
        Ok(Destination { registry, repository })
    }

    /// The repository `source_repo` is copied to: the named one, or the same name. With
    /// `prefix` (`--catalog`), the named repository is a prefix of the source's names.
    pub fn repository_for(&self, source_repo: &RepoName, prefix: bool) -> Result<RepoName, ParseError> {
        let name = match (&self.repository, prefix) {
            (None, _) => return Ok(source_repo.clone()),
            (Some(r), false) => return Ok(r.clone()),
            (Some(r), true) => format!("{r}/{source_repo}"),
        };
        repo("destination", &name, &name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> (String, String, Option<String>) {
        let p = Source::parse(s).unwrap();
        (
            p.registry.host,
            p.repository.to_string(),
            p.reference.map(|r| r.to_string()),
        )
    }

    #[test]
    fn sources_read_like_docker_image_names() {
        let hub = DOCKER_HUB.to_string();
        assert_eq!(src("alpine"), (hub.clone(), "library/alpine".into(), None));
        assert_eq!(
            src("alpine:3.20"),
            (hub.clone(), "library/alpine".into(), Some("3.20".into()))
        );
        assert_eq!(src("bitnami/redis"), (hub.clone(), "bitnami/redis".into(), None));
        assert_eq!(
            src("docker.io/alpine"),
            (hub.clone(), "library/alpine".into(), None)
        );
        assert_eq!(src("docker://alpine"), (hub, "library/alpine".into(), None));
        assert_eq!(
            src("quay.io/prometheus/node-exporter:v1"),
            (
                "quay.io".into(),
                "prometheus/node-exporter".into(),
                Some("v1".into())
            )
        );
        assert_eq!(
            src("localhost:5000/a/b"),
            ("localhost:5000".into(), "a/b".into(), None)
        );
        assert_eq!(src("localhost/a"), ("localhost".into(), "a".into(), None));
        assert_eq!(
            src("127.0.0.1:5005/alpine"),
            ("127.0.0.1:5005".into(), "alpine".into(), None)
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            src(&format!("ghcr.io/o/r@{d}")),
            ("ghcr.io".into(), "o/r".into(), Some(d))
        );
        let p = Source::parse("http://127.0.0.1:80/x:1").unwrap();
        assert_eq!(p.registry.scheme, Some(Scheme::Http));
        assert_eq!(
            (p.registry.host.as_str(), p.repository.as_str()),
            ("127.0.0.1:80", "x")
        );
    }

    #[test]
    fn bad_sources_are_refused_with_the_reason() {
        for bad in [
            "",
            "quay.io/",
            "Alpine",
            "alpine:",
            "alpine@sha256:12",
            "ftp://h/x",
            "a:b:c",
        ] {
            assert!(Source::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn destinations_name_a_registry_then_a_repository() {
        let d = Destination::parse("127.0.0.1:5005").unwrap();
        assert_eq!((d.registry.host.as_str(), d.repository), ("127.0.0.1:5005", None));
        let d = Destination::parse("reg.example.com/mirror/alpine").unwrap();
        assert_eq!(d.registry.host, "reg.example.com");
        assert_eq!(d.repository.unwrap().as_str(), "mirror/alpine");
        // A destination's first component is always the registry, dots or not.
        assert_eq!(Destination::parse("ipcr/x").unwrap().registry.host, "ipcr");
        assert!(Destination::parse("h:5005/x:tag").is_err());
        assert!(Destination::parse("h:5005/x@sha256:aa").is_err());
        assert!(Destination::parse("/x").is_err());
        let named = Destination::parse("h/mirror").unwrap();
        let src: RepoName = "library/alpine".parse().unwrap();
        assert_eq!(
            named.repository_for(&src, true).unwrap().as_str(),
            "mirror/library/alpine"
        );
        assert_eq!(named.repository_for(&src, false).unwrap().as_str(), "mirror");
        let same = Destination::parse("h").unwrap();
        assert_eq!(same.repository_for(&src, true).unwrap(), src);
    }

    #[test]
    fn plain_http_is_for_loopback_only() {
        for host in [
            "localhost:5005",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(RegistryAddr::parse(host).unwrap().is_loopback(), "{host}");
        }
        for host in [
            "10.0.0.1:5000",
            "example.com",
            "[fe80::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!RegistryAddr::parse(host).unwrap().is_loopback(), "{host}");
        }
        assert_eq!(RegistryAddr::parse("[::1]:5000").unwrap().hostname(), "::1");
    }
}
