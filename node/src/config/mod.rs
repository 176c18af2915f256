//! Node configuration: the seed's `config.yml` format, `REGISTRY_*` environment overrides, and
//! the defaults that let `ipcr-node serve` run with no file at all.
//!
//! Loading goes YAML → JSON value tree → environment overrides → typed [`Config`], so that an
//! unknown key, whether in the file or in the environment, is an error that names its path.
//! Tests build a [`Config`] in code and never go through this parser.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

mod env;
mod proxy;
mod sections;

use env::{apply_env, merge};
pub use proxy::{ProxyConfig, UpstreamConfig};
pub use sections::*;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML does not parse.
    #[error("parsing configuration: {0}")]
    Yaml(String),
    /// A key is unknown or a value has the wrong type.
    #[error("configuration key `{path}`: {message}")]
    Key {
        /// Dotted path of the offending key.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `REGISTRY_*` variable names no configuration key.
    #[error("environment variable {0} does not name a configuration key")]
    UnknownEnv(String),
    /// The values parse but do not make sense together.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A duration written the Go way (`10s`, `1h30m`, `500ms`), as distribution's config uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Parse `[0-9]+(ns|us|µs|ms|s|m|h)` repeated, or a bare number of seconds.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(GoDuration(Duration::from_secs(secs)));
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        if rest.is_empty() {
            return Err("empty duration".into());
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("missing unit in duration `{s}`"))?;
            let value: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration `{s}`"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let nanos_per = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                other => return Err(format!("unknown unit `{other}` in duration `{s}`")),
            };
            total += Duration::from_nanos((value * nanos_per) as u64);
            rest = &rest[unit_len..];
        }
        Ok(GoDuration(total))
    }
}

impl std::str::FromStr for GoDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<GoDuration, String> {
        GoDuration::parse(s).map_err(|e| e.to_string())
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => GoDuration::parse(&s).map_err(serde::de::Error::custom),
            Value::Number(n) => n
                .as_u64()
                .map(|secs| GoDuration(Duration::from_secs(secs)))
                .ok_or_else(|| serde::de::Error::custom("duration must be a non-negative number of seconds")),
            _ => Err(serde::de::Error::custom("expected a duration such as `10s`")),
        }
    }
}

/// `version: 0.1` in YAML is a float; accept it as a string either way.
fn version_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("version must be a string such as 0.1")),
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Configuration format version (the seed uses `0.1`).
    #[serde(deserialize_with = "version_string")]
    pub version: String,
    /// Logging.
    pub log: LogConfig,
    /// Blob and metadata storage.
    pub storage: StorageConfig,
    /// The registry's HTTP listener.
    pub http: HttpConfig,
    /// Health checks.
    pub health: HealthConfig,
    /// This node's identity in the Raft cluster.
    pub cluster: ClusterConfig,
    /// Authentication and per-repository policies (off by default).
    pub auth: ipcr_auth::AuthConfig,
    /// Pull-through caches of other registries (off by default).
    pub proxy: ProxyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: "0.1".into(),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            http: HttpConfig::default(),
            health: HealthConfig::default(),
            cluster: ClusterConfig::default(),
            auth: ipcr_auth::AuthConfig::default(),
            proxy: ProxyConfig::default(),
        }
    }
}

impl Config {
    /// Load a YAML file (or the embedded defaults when `path` is `None`), then apply
    /// `REGISTRY_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        Config::from_yaml(&text, env)
    }

    /// Parse YAML text and apply overrides (empty text means all defaults).
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let file: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        // The defaults give every known key a place in the tree, so an environment variable
        // can be matched against the schema even when the file does not mention its section.
        let mut tree = serde_json::to_value(Config::default()).expect("defaults serialize");
        merge(&mut tree, file);
        for (key, value) in env {
            if let Some(rest) = key.strip_prefix("REGISTRY_") {
                apply_env(&mut tree, rest, &value).ok_or(ConfigError::UnknownEnv(key.clone()))?;
            }
        }
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| ConfigError::Key {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check that the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.socket_addr()?;
        self.http.validate_tls()?;
        self.http.validate_debug()?;
        self.cluster.validate_tls()?;
        self.auth
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.http.workers == Some(0) {
            return Err(ConfigError::Invalid("http.workers must be at least 1".into()));
        }
        if self.http.bodytimeout.0.is_zero() {
            return Err(ConfigError::Invalid(
                "http.bodytimeout must be longer than 0s".into(),
            ));
        }
        if self.cluster.heartbeat.0.is_zero()
            || self.cluster.election_timeout.0 < self.cluster.heartbeat.0 * 2
        {
            return Err(ConfigError::Invalid(
                "cluster.election-timeout must be at least twice cluster.heartbeat".into(),
            ));
        }
        // The local disk is always the first tier (`filesystem`, or the backend section's own
        // `rootdirectory`); at most one IPFS backend goes behind it.
        if self.storage.estuary.is_some() && self.storage.ipfs.is_some() {
            return Err(ConfigError::Invalid(
                "configure one IPFS backend: storage.estuary or storage.ipfs, not both".into(),
            ));
        }
        if let Some(e) = &self.storage.estuary
            && !e.url.starts_with("http")
        {
            return Err(ConfigError::Invalid(
                "storage.estuary.url must be the Estuary API's http(s) URL".into(),
            ));
        }
        if let Some(i) = &self.storage.ipfs
            && (!i.api.starts_with("http") || i.links < 2)
        {
            return Err(ConfigError::Invalid(
                "storage.ipfs needs an http(s) api URL and links of at least 2".into(),
            ));
        }
        if !["text", "json"].contains(&self.log.formatter.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "log.formatter `{}` must be text or json",
                self.log.formatter
            )));
        }
        if self.storage.replicas == 0 {
            return Err(ConfigError::Invalid("storage.replicas must be at least 1".into()));
        }
        socket_addr("cluster.addr", &self.cluster.addr)?;
        if self.cluster.join.is_some() && self.cluster.secret.is_none() {
            return Err(ConfigError::Invalid(
                "cluster.join needs cluster.secret (the secret the cluster's members share)".into(),
            ));
        }
        self.storage.maintenance.gc.validate()?;
        self.proxy.validate()?;
        if self.health.storagedriver.threshold == 0 {
            return Err(ConfigError::Invalid(
                "health.storagedriver.threshold must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        let s = &self.storage;
        let tier = s
            .estuary
            .as_ref()
            .map(|e| &e.rootdirectory)
            .or(s.ipfs.as_ref().map(|i| &i.rootdirectory))
            .filter(|d| !d.as_os_str().is_empty());
        match (tier, &s.filesystem) {
            (Some(dir), _) => dir.clone(),
            (None, Some(fs)) => fs.rootdirectory.clone(),
            (None, None) => FilesystemConfig::default().rootdirectory,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
version: 0.1
log:
  fields:
    service: registry

storage:
  redirect:
    disable: false
  
  estuary:
    url: https://api.estuary.tech
    shuttle-url: https://shuttle-4.estuary.tech
    auth-token: TOKEN_GOES_HERE
    rootdirectory: /Users/satoshi/registries/estuary-prod

http:
  addr: :5005
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn the_seed_config_loads() {
        let c = Config::from_yaml(SEED, no_env()).unwrap();
        assert_eq!(c.version, "0.1");
        assert_eq!(c.log.fields["service"], "registry");
        let e = c.storage.estuary.as_ref().unwrap();
        assert_eq!(e.shuttle_url, "https://shuttle-4.estuary.tech");
        assert_eq!(e.auth_token, "TOKEN_GOES_HERE");
        assert_eq!(
            c.data_dir(),
            PathBuf::from("/Users/satoshi/registries/estuary-prod")
        );
        assert_eq!(c.http.headers["X-Content-Type-Options"], vec!["nosniff"]);
        assert!(c.health.storagedriver.enabled);
        assert_eq!(c.health.storagedriver.interval.0, Duration::from_secs(10));
        assert_eq!(c.http.socket_addr().unwrap().port(), 5005);
    }

    #[test]
    fn no_file_means_defaults() {
        let c = Config::from_yaml("", no_env()).unwrap();
        assert_eq!(c.http.addr, ":5005");
        assert_eq!(c.data_dir(), PathBuf::from("./data"));
        assert!(!c.storage.delete.enabled);
        assert!(c.storage.maintenance.uploadpurging.enabled);
        assert_eq!(c.http.workers, None);
    }

    #[test]
    fn debug_listener_keys_are_distributions() {
        let off = Config::from_yaml("", no_env()).unwrap();
        assert!(!off.http.debug.metrics());
        assert_eq!(off.http.debug.socket_addr().unwrap(), None);
        assert_eq!(off.http.debug.prometheus.path, "/metrics");
        let yaml = "http:\n  debug:\n    addr: 127.0.0.1:5007\n    prometheus:\n      enabled: true\n      path: /m\n";
        let c = Config::from_yaml(yaml, no_env()).unwrap();
        assert!(c.http.debug.metrics());
        assert_eq!(c.http.debug.socket_addr().unwrap().unwrap().port(), 5007);
        assert_eq!(c.http.debug.prometheus.path, "/m");
        let env = [
            ("REGISTRY_HTTP_DEBUG_ADDR", ":5008"),
            ("REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::from_yaml("", env).unwrap();
        assert!(c.http.debug.metrics());
        assert_eq!(c.http.debug.socket_addr().unwrap().unwrap().port(), 5008);
        for (yaml, says) in [
            (
                "http:\n  debug:\n    prometheus:\n      enabled: true\n",
                "needs http.debug.addr",
            ),
            ("http:\n  debug:\n    addr: nowhere\n", "http.debug.addr"),
            (
                "http:\n  debug:\n    addr: :5007\n    prometheus:\n      path: metrics\n",
                "must start with /",
            ),
            ("http:\n  debug:\n    pprof: {}\n", "pprof"),
        ] {
            let e = Config::from_yaml(yaml, no_env()).unwrap_err().to_string();
            assert!(e.contains(says), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn garbage_collection_keys() {
        let yaml = r#"
storage:
  maintenance:
    gc:
      interval: 12h
      grace: 30m
      delete-untagged: true
      retention:
        dryrun: true
        policies:
          - repositories: ["ci/**"]
            keep-newest: 10
            keep-tags: ["v[0-9]+"]
            drop-older-than: 720h
"#;
        let env = vec![(
            "REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED".to_string(),
            "false".to_string(),
        )];
        let gc = Config::from_yaml(yaml, env).unwrap().storage.maintenance.gc;
        assert!(!gc.enabled && gc.delete_untagged && gc.retention.dryrun);
        let o = gc.options(false);
        assert_eq!(o.grace_ms, 1_800_000);
        assert_eq!(o.retention[0].keep_newest, Some(10));
        assert_eq!(o.retention[0].drop_older_than_ms, Some(720 * 3_600_000));
        let defaults = Config::from_yaml("", no_env()).unwrap().storage.maintenance.gc;
        assert!(defaults.enabled && !defaults.delete_untagged);
        assert_eq!(defaults.grace.0, Duration::from_secs(3600));
        for (bad, says) in [
            (
                "      - repositories: []\n        keep-newest: 1\n",
                "names no repository",
            ),
            ("      - repositories: [a]\n", "would remove every tag"),
            (
                "      - repositories: [a]\n        keep-tags: [\"(\"]\n",
                "keep-tags",
            ),
        ] {
            let yaml =
                format!("storage:\n  maintenance:\n    gc:\n      retention:\n        policies:\n{bad}");
            let yaml = yaml
                .replace("      - ", "          - ")
                .replace("        keep", "            keep");
            let err = Config::from_yaml(&yaml, no_env()).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_yaml("storage:\n  delete:\n    enabeld: true\n", no_env()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("storage.delete"), "{text}");
        assert!(text.contains("enabeld"), "{text}");
        let err = Config::from_yaml("htp:\n  addr: :1\n", no_env()).unwrap_err();
        assert!(err.to_string().contains("htp"), "{err}");
    }

    #[test]
    fn environment_overrides() {
        let env = vec![
            ("REGISTRY_HTTP_ADDR".to_string(), "127.0.0.1:6000".to_string()),
            ("REGISTRY_STORAGE_DELETE_ENABLED".to_string(), "true".to_string()),
            (
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".to_string(),
                "/tmp/x".to_string(),
            ),
            (
                "REGISTRY_HEALTH_STORAGEDRIVER_THRESHOLD".to_string(),
                "5".to_string(),
            ),
            ("REGISTRY_HTTP_SECRET".to_string(), "s3cret".to_string()),
            ("REGISTRY_HTTP_WORKERS".to_string(), "1".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::from_yaml("", env).unwrap();
        assert_eq!(c.http.addr, "127.0.0.1:6000");
        assert!(c.storage.delete.enabled);
        assert_eq!(c.data_dir(), PathBuf::from("/tmp/x"));
        assert_eq!(c.health.storagedriver.threshold, 5);
        assert_eq!(c.http.secret.as_deref(), Some("s3cret"));
        assert_eq!(c.http.workers, Some(1));

        let env = vec![(
            "REGISTRY_STORAGE_ESTUARY_SHUTTLE_URL".to_string(),
            "http://s".to_string(),
        )];
        let c = Config::from_yaml(SEED, env).unwrap();
        assert_eq!(c.storage.estuary.unwrap().shuttle_url, "http://s");

        let env = vec![("REGISTRY_HTTP_NOPE".to_string(), "1".to_string())];
        let err = Config::from_yaml("", env).unwrap_err();
        assert!(err.to_string().contains("REGISTRY_HTTP_NOPE"), "{err}");
    }

    #[test]
    fn environment_sets_tls_and_auth_keys_lists_included() {
        let pairs = [
            ("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"),
            ("REGISTRY_HTTP_TLS_KEY", "/k.pem"),
            ("REGISTRY_HTTP_TLS_CLIENTCAS", "[/ca1.pem, /ca2.pem]"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", "/htpasswd"),
            ("REGISTRY_CLUSTER_TLS_CA", "/ca.pem"),
            ("REGISTRY_CLUSTER_TLS_CERTIFICATE", "/n.pem"),
            ("REGISTRY_CLUSTER_TLS_KEY", "/n.key"),
        ];
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::from_yaml("", env).unwrap();
        assert_eq!(
            c.http.tls.clientcas,
            [PathBuf::from("/ca1.pem"), PathBuf::from("/ca2.pem")]
        );
        assert_eq!(c.auth.htpasswd.unwrap().path, PathBuf::from("/htpasswd"));
        assert!(c.cluster.advertise_url().unwrap().starts_with("https://"));
        // One value for a list key is a list of one.
        let env = [
            ("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"),
            ("REGISTRY_HTTP_TLS_KEY", "/k.pem"),
            ("REGISTRY_HTTP_TLS_CLIENTCAS", "/ca.pem"),
        ];
        let c = Config::from_yaml("", env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        assert_eq!(c.http.tls.clientcas, [PathBuf::from("/ca.pem")]);
        // Half a TLS setup is an error naming the key.
        let env = [("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem")];
        let err = Config::from_yaml("", env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap_err();
        assert!(err.to_string().contains("http.tls.key"), "{err}");
        let env = [("REGISTRY_CLUSTER_TLS_CA", "/ca.pem")];
        let err = Config::from_yaml("", env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap_err();
        assert!(err.to_string().contains("cluster.tls"), "{err}");
    }

    #[test]
    fn ipfs_backends_and_cache_load_and_override() {
        let c = Config::from_yaml(SEED, no_env()).unwrap();
        assert_eq!(c.storage.cid_links(), Some(1024));
        assert_eq!(c.storage.estuary.as_ref().unwrap().gateway, None);
        let yaml = "storage:\n  ipfs:\n    api: http://kubo:5001\n    gateway: http://kubo:8080\n  cache:\n    maxsize: 2GiB\n";
        let c = Config::from_yaml(yaml, no_env()).unwrap();
        let i = c.storage.ipfs.as_ref().unwrap();
        assert_eq!((i.api.as_str(), i.links), ("http://kubo:5001", 174));
        assert_eq!(c.storage.cid_links(), Some(174));
        assert_eq!(c.storage.cache.maxsize.unwrap().as_u64(), 2 << 30);
        assert_eq!(c.data_dir(), PathBuf::from("./data"));

        let env = vec![
            (
                "REGISTRY_STORAGE_IPFS_API".to_string(),
                "http://k:5001".to_string(),
            ),
            ("REGISTRY_STORAGE_IPFS_LINKS".to_string(), "1024".to_string()),
            (
                "REGISTRY_STORAGE_IPFS_ROOTDIRECTORY".to_string(),
                "/srv/ipcr".to_string(),
            ),
            ("REGISTRY_STORAGE_CACHE_MAXSIZE".to_string(), "500MB".to_string()),
        ];
        let c = Config::from_yaml("", env).unwrap();
        assert_eq!(c.storage.cid_links(), Some(1024));
        assert_eq!(c.data_dir(), PathBuf::from("/srv/ipcr"));
        assert_eq!(c.storage.cache.maxsize.unwrap().as_u64(), 500_000_000);
        assert_eq!(Config::from_yaml("", no_env()).unwrap().storage.cid_links(), None);

        let both = "storage:\n  ipfs:\n    api: http://k\n  estuary:\n    url: http://e\n";
        let err = Config::from_yaml(both, no_env()).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err = Config::from_yaml("storage:\n  ipfs:\n    links: 1\n", no_env()).unwrap_err();
        assert!(err.to_string().contains("links"), "{err}");
        let err = Config::from_yaml("storage:\n  cache:\n    maxsize: lots\n", no_env()).unwrap_err();
        assert!(err.to_string().contains("storage.cache.maxsize"), "{err}");
    }

    #[test]
    fn cluster_keys_load_and_override() {
        let yaml = "cluster:\n  addr: 10.0.0.5:7000\n  secret: s\nstorage:\n  replicas: 3\n";
        let c = Config::from_yaml(yaml, no_env()).unwrap();
        assert_eq!(c.cluster.socket_addr().unwrap().port(), 7000);
        assert_eq!(c.cluster.advertise_url().unwrap(), "http://10.0.0.5:7000");
        assert_eq!(c.storage.replicas, 3);

        let env = vec![
            (
                "REGISTRY_CLUSTER_JOIN".to_string(),
                "http://node1:5006".to_string(),
            ),
            ("REGISTRY_CLUSTER_SECRET".to_string(), "t0p".to_string()),
            (
                "REGISTRY_CLUSTER_ADVERTISE".to_string(),
                "http://me:5006/".to_string(),
            ),
            ("REGISTRY_CLUSTER_ADDR".to_string(), ":5106".to_string()),
            ("REGISTRY_CLUSTER_ID".to_string(), "42".to_string()),
            ("REGISTRY_STORAGE_REPLICAS".to_string(), "1".to_string()),
        ];
        let c = Config::from_yaml("", env).unwrap();
        assert_eq!(c.cluster.join.as_deref(), Some("http://node1:5006"));
        assert_eq!(c.cluster.secret.as_deref(), Some("t0p"));
        assert_eq!(c.cluster.advertise_url().unwrap(), "http://me:5006");
        assert_eq!(c.cluster.socket_addr().unwrap().port(), 5106);
        assert_eq!(c.cluster.id, Some(42));
        assert_eq!(c.storage.replicas, 1);

        // Defaults: the cluster port on every interface, advertised under the hostname.
        let c = Config::from_yaml("", no_env()).unwrap();
        assert_eq!(c.cluster.addr, ":5006");
        assert!(c.cluster.advertise_url().unwrap().ends_with(":5006"));
        assert_eq!(c.storage.replicas, 2);
    }

    #[test]
    fn cluster_keys_are_checked() {
        let join_without_secret = vec![("REGISTRY_CLUSTER_JOIN".to_string(), "http://x:1".to_string())];
        assert!(Config::from_yaml("", join_without_secret).is_err());
        assert!(Config::from_yaml("storage:\n  replicas: 0\n", no_env()).is_err());
        assert!(Config::from_yaml("cluster:\n  addr: nowhere\n", no_env()).is_err());
        assert!(Config::from_yaml("cluster:\n  peers: []\n", no_env()).is_err());
    }

    #[test]
    fn durations_parse_go_style() {
        assert_eq!(GoDuration::parse("10s").unwrap().0, Duration::from_secs(10));
        assert_eq!(GoDuration::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(GoDuration::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert_eq!(GoDuration::parse("17m0s").unwrap().0, Duration::from_secs(1020));
        assert!(GoDuration::parse("10 parsecs").is_err());
        assert!(GoDuration::parse("").is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(Config::from_yaml("http:\n  addr: nonsense\n", no_env()).is_err());
        assert!(Config::from_yaml("http:\n  workers: 0\n", no_env()).is_err());
        assert!(Config::from_yaml("log:\n  formatter: xml\n", no_env()).is_err());
        assert!(Config::from_yaml("storage:\n  delete:\n    enabled: maybe\n", no_env()).is_err());
        assert!(Config::from_yaml(": : :\n  - [", no_env()).is_err());
    }
}
