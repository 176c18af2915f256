//! The configuration's sections below the top level, with their defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, GoDuration};

/// `log:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (overridden by `RUST_LOG` when set).
    pub level: String,
    /// `text` or `json`.
    pub formatter: String,
    /// Fields added to every log line (the seed sets `service: registry`).
    pub fields: BTreeMap<String, String>,
    /// Access log settings.
    pub accesslog: AccessLogConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            formatter: "text".into(),
            fields: BTreeMap::new(),
            accesslog: AccessLogConfig::default(),
        }
    }
}

/// `log.accesslog:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Turn off the per-request access log line.
    pub disabled: bool,
}

/// `storage:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Blobs on the local filesystem (the default driver).
    pub filesystem: Option<FilesystemConfig>,
    /// Blobs pinned on IPFS through an Estuary service, with local disk as first tier.
    pub estuary: Option<EstuaryConfig>,
    /// Blobs added to a Kubo node, with local disk as first tier.
    pub ipfs: Option<IpfsConfig>,
    /// How much local disk blobs that are safely on IPFS may use.
    pub cache: CacheConfig,
    /// Whether `DELETE` of blobs and manifests is allowed.
    pub delete: DeleteConfig,
    /// Redirects of blob pulls to the backend's gateway.
    pub redirect: RedirectConfig,
    /// Background maintenance.
    pub maintenance: MaintenanceConfig,
    /// Nodes whose disks must hold a blob (fsynced) before its upload is acknowledged; the
    /// cluster's size when smaller.
    pub replicas: usize,
}

impl StorageConfig {
    /// Links per DAG node of the CIDs the configured IPFS backend computes (none without one).
    pub fn cid_links(&self) -> Option<u32> {
        match (&self.estuary, &self.ipfs) {
            (Some(_), _) => Some(ipcr_proto::cid::ESTUARY_LINKS),
            (None, Some(i)) => Some(i.links),
            (None, None) => None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            filesystem: None,
            estuary: None,
            ipfs: None,
            cache: CacheConfig::default(),
            delete: DeleteConfig::default(),
            redirect: RedirectConfig::default(),
            maintenance: MaintenanceConfig::default(),
            replicas: 2,
        }
    }
}

/// `storage.filesystem:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemConfig {
    /// The node's data directory: blobs, upload sessions and Raft state live under it.
    pub rootdirectory: PathBuf,
}

impl Default for FilesystemConfig {
    fn default() -> Self {
        FilesystemConfig {
            rootdirectory: PathBuf::from("./data"),
        }
    }
}

/// `storage.estuary:` (the seed's keys).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EstuaryConfig {
    /// Estuary API URL.
    pub url: String,
    /// Shuttle URL that takes uploads.
    #[serde(rename = "shuttle-url")]
    pub shuttle_url: String,
    /// Bearer token.
    #[serde(rename = "auth-token")]
    pub auth_token: String,
    /// Local first tier: the node's data directory.
    pub rootdirectory: PathBuf,
    /// Gateway base URL, `{gateway}/<cid>` serving a blob (default `{url}/gw/ipfs`).
    pub gateway: Option<String>,
}

/// `storage.ipfs:` (a Kubo node).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpfsConfig {
    /// The node's RPC API URL (`http://127.0.0.1:5001`).
    pub api: String,
    /// A gateway URL (`http://127.0.0.1:8080`) for redirects; without one, blobs that no
    /// node holds are read through the RPC API.
    pub gateway: Option<String>,
    /// Links per DAG node the Kubo node imports with: its default 174, or 1024 where it
    /// supports `max-file-links`.
    pub links: u32,
    /// Local first tier: the node's data directory.
    pub rootdirectory: PathBuf,
}

impl Default for IpfsConfig {
    fn default() -> Self {
        IpfsConfig {
            api: "http://127.0.0.1:5001".into(),
            gateway: None,
            links: ipcr_proto::cid::KUBO_LINKS,
            rootdirectory: PathBuf::new(),
        }
    }
}

/// `storage.cache:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Local disk that blobs confirmed by the IPFS backend may use (`20GiB`, `500MB`, or
    /// bytes); least recently used ones beyond it are evicted. No limit when absent.
    pub maxsize: Option<bytesize::ByteSize>,
}

/// `storage.delete:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeleteConfig {
    /// Allow deleting blobs, manifests and tags.
    pub enabled: bool,
}

/// `storage.redirect:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Never redirect; always proxy bytes through the node.
    pub disable: bool,
}

/// `storage.maintenance:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Purging of abandoned upload sessions.
    pub uploadpurging: UploadPurgingConfig,
    /// Online garbage collection.
    pub gc: GcConfig,
}

/// `storage.maintenance.gc:`: scheduled online garbage collection, and the defaults of
/// `ipcr-node gc`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Collect on a schedule (the Raft leader does, one collection at a time).
    pub enabled: bool,
    /// Time between the end of one scheduled collection and the start of the next.
    pub interval: GoDuration,
    /// Blobs uploaded (or mounted) and manifests pushed less than this long ago are kept, and
    /// so are the nodes' copies written less than this long ago: a push uploads its layers
    /// before its manifest. Longer than the clocks of the nodes may differ.
    pub grace: GoDuration,
    /// Delete manifests no tag reaches (distribution's `--delete-untagged`).
    #[serde(rename = "delete-untagged")]
    pub delete_untagged: bool,
    /// Tag retention.
    pub retention: RetentionConfig,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            interval: GoDuration(Duration::from_secs(24 * 3600)),
            grace: GoDuration(Duration::from_secs(3600)),
            delete_untagged: false,
            retention: RetentionConfig::default(),
        }
    }
}

/// `storage.maintenance.gc.retention:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Report the tags the policies would remove, remove none.
    pub dryrun: bool,
    /// The policies; a repository follows the first that names it, none when none does.
    pub policies: Vec<RetentionPolicyConfig>,
}

/// One retention policy. A tag of a covered repository is removed unless it is among the
/// `keep-newest`, or matches one of `keep-tags`, or was pushed less than `drop-older-than` ago.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicyConfig {
    /// Repository name globs (`*` within a path segment, `**` across segments).
    pub repositories: Vec<String>,
    /// Keep this many of the most recently pushed tags.
    #[serde(rename = "keep-newest")]
    pub keep_newest: Option<u32>,
    /// Keep tags matching any of these regular expressions (each matches the whole tag).
    #[serde(rename = "keep-tags")]
    pub keep_tags: Vec<String>,
    /// Remove only tags pushed longer ago than this.
    #[serde(rename = "drop-older-than")]
    pub drop_older_than: Option<GoDuration>,
}

impl GcConfig {
    /// The options of a collection, with this configuration's defaults.
    pub fn options(&self, dry_run: bool) -> ipcr_proto::gc::GcOptions {
        ipcr_proto::gc::GcOptions {
            dry_run,
            delete_untagged: self.delete_untagged,
            grace_ms: self.grace.0.as_millis() as u64,
            retention: self
                .retention
                .policies
                .iter()
                .map(|p| ipcr_proto::gc::RetentionPolicy {
                    repositories: p.repositories.clone(),
                    keep_newest: p.keep_newest,
                    keep_tags: p.keep_tags.clone(),
                    drop_older_than_ms: p.drop_older_than.as_ref().map(|d| d.0.as_millis() as u64),
                })
                .collect(),
            retention_dry_run: self.retention.dryrun,
        }
    }

    /// Check intervals, globs and patterns.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(format!("storage.maintenance.gc.{m}")));
        if self.enabled && self.interval.0.is_zero() {
            return invalid("interval must be longer than 0s".into());
        }
        for (i, p) in self.retention.policies.iter().enumerate() {
            if p.repositories.is_empty() {
                return invalid(format!(
                    "retention.policies[{i}].repositories names no repository"
                ));
            }
            if p.keep_newest.is_none() && p.keep_tags.is_empty() && p.drop_older_than.is_none() {
                return invalid(format!(
                    "retention.policies[{i}] would remove every tag: give keep-newest, keep-tags or drop-older-than"
                ));
            }
        }
        if let Err(e) = crate::registry::retention::Retention::compile(&self.options(false).retention) {
            return invalid(format!("retention.{e}"));
        }
        Ok(())
    }
}

/// `storage.maintenance.uploadpurging:` (distribution's keys and defaults).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadPurgingConfig {
    /// Run the purger.
    pub enabled: bool,
    /// Sessions untouched for this long are purged.
    pub age: GoDuration,
    /// How often the purger runs.
    pub interval: GoDuration,
    /// Log what would be purged without purging.
    pub dryrun: bool,
}

impl Default for UploadPurgingConfig {
    fn default() -> Self {
        UploadPurgingConfig {
            enabled: true,
            age: GoDuration(Duration::from_secs(168 * 3600)),
            interval: GoDuration(Duration::from_secs(24 * 3600)),
            dryrun: false,
        }
    }
}

/// `http:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address, Go style: `:5005` (all interfaces) or `host:port`.
    pub addr: String,
    /// Distribution signs upload state with it; IPCR replicates upload state instead, so it is
    /// accepted for compatibility and not needed behind a load balancer.
    pub secret: Option<String>,
    /// Headers added to every response.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Threads serving the registry port; none means one per CPU core.
    pub workers: Option<usize>,
    /// After `SIGTERM`, how long requests in flight may take to finish before the node exits.
    pub draintimeout: GoDuration,
    /// A request body that delivers less than 16 KiB (and does not end) within this time is
    /// cut off, its chunk discarded as if it never started.
    pub bodytimeout: GoDuration,
    /// TLS on the registry port (on when `certificate` is set).
    pub tls: TlsConfig,
    /// The operators' listener: Prometheus metrics.
    pub debug: DebugConfig,
}

/// `http.debug:` (distribution's keys): a second, plain-HTTP listener for operators.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Listen address, Go style (`:5007`, `127.0.0.1:5007`); empty: no debug listener.
    pub addr: String,
    /// Metrics in Prometheus' text format.
    pub prometheus: PrometheusConfig,
}

/// `http.debug.prometheus:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Serve the metrics (and record them: off, nothing is counted).
    pub enabled: bool,
    /// Where on the debug listener.
    pub path: String,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: false,
            path: "/metrics".into(),
        }
    }
}

impl DebugConfig {
    /// The debug listener's address, when one is configured.
    pub fn socket_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.addr.is_empty() {
            return Ok(None);
        }
        socket_addr("http.debug.addr", &self.addr).map(Some)
    }

    /// Whether metrics are recorded and served.
    pub fn metrics(&self) -> bool {
        self.prometheus.enabled && !self.addr.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.socket_addr()?;
        if self.prometheus.enabled && self.addr.is_empty() {
            return Err(ConfigError::Invalid(
                "http.debug.prometheus.enabled needs http.debug.addr: metrics are served there".into(),
            ));
        }
        if !self.prometheus.path.starts_with('/') {
            return Err(ConfigError::Invalid(format!(
                "http.debug.prometheus.path `{}` must start with /",
                self.prometheus.path
            )));
        }
        Ok(())
    }
}

/// `http.tls:` (distribution's keys).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; re-read when the file changes.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); re-read when the file changes.
    pub key: PathBuf,
    /// PEM CA bundles: when given, clients must show a certificate one of them issued.
    pub clientcas: Vec<PathBuf>,
    /// `tls1.2` (the default) or `tls1.3`.
    pub minimumtls: Option<String>,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.certificate.as_os_str().is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return if self.key.as_os_str().is_empty()
                && self.clientcas.is_empty()
                && self.minimumtls.is_none()
            {
                Ok(())
            } else {
                Err(ConfigError::Invalid("http.tls needs certificate".into()))
            };
        }
        if self.key.as_os_str().is_empty() {
            return Err(ConfigError::Invalid(
                "http.tls.key is required with http.tls.certificate".into(),
            ));
        }
        match self.minimumtls.as_deref() {
            None | Some("tls1.2") | Some("tls1.3") => Ok(()),
            Some(v) => Err(ConfigError::Invalid(format!(
                "http.tls.minimumtls `{v}`: tls1.2 or tls1.3 (older versions are not offered)"
            ))),
        }
    }
}

/// `cluster.tls:`: mutual TLS between nodes, in addition to the shared secret.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTlsConfig {
    /// This node's PEM certificate, valid for the host of its advertised URL; shown as server
    /// and as client.
    pub certificate: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// The PEM CA that issued every node's certificate: the only one trusted, both ways.
    pub ca: PathBuf,
}

impl ClusterTlsConfig {
    /// Whether mutual TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.certificate.as_os_str().is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let set = [&self.certificate, &self.key, &self.ca].map(|p| !p.as_os_str().is_empty());
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return Err(ConfigError::Invalid(
                "cluster.tls needs certificate, key and ca together".into(),
            ));
        }
        Ok(())
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: ":5005".into(),
            secret: None,
            headers: BTreeMap::new(),
            workers: None,
            draintimeout: GoDuration(Duration::from_secs(30)),
            bodytimeout: GoDuration(Duration::from_secs(30)),
            tls: TlsConfig::default(),
            debug: DebugConfig::default(),
        }
    }
}

/// Parse a Go-style listen address (`:5005` means every interface).
pub fn socket_addr(key: &str, addr: &str) -> Result<SocketAddr, ConfigError> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    full.parse()
        .map_err(|_| ConfigError::Invalid(format!("{key} `{addr}` is not host:port")))
}

impl HttpConfig {
    /// The socket address to bind.
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        socket_addr("http.addr", &self.addr)
    }

    /// Check the TLS keys.
    pub fn validate_tls(&self) -> Result<(), ConfigError> {
        self.tls.validate()
    }

    /// Check `http.debug`.
    pub fn validate_debug(&self) -> Result<(), ConfigError> {
        self.debug.validate()
    }
}

impl ClusterConfig {
    /// The socket address of the cluster port.
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        socket_addr("cluster.addr", &self.addr)
    }

    /// The URL peers use for this node: `advertise`, or one derived from `addr`.
    pub fn advertise_url(&self) -> Result<String, ConfigError> {
        if let Some(a) = &self.advertise {
            return Ok(a.trim_end_matches('/').to_string());
        }
        let addr = self.socket_addr()?;
        let host = if addr.ip().is_unspecified() {
            hostname()
        } else {
            addr.ip().to_string()
        };
        let scheme = if self.tls.enabled() { "https" } else { "http" };
        Ok(format!("{scheme}://{host}:{}", addr.port()))
    }

    /// Check the TLS keys against the advertised URL.
    pub fn validate_tls(&self) -> Result<(), ConfigError> {
        self.tls.validate()?;
        if self.tls.enabled() && !self.advertise_url()?.starts_with("https://") {
            return Err(ConfigError::Invalid(
                "cluster.advertise must be an https:// URL with cluster.tls".into(),
            ));
        }
        Ok(())
    }
}

/// The machine's hostname (what containers and peers on one network resolve).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `health:`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Probes of the storage backend.
    pub storagedriver: StorageDriverHealthConfig,
}

/// `health.storagedriver:`: the probe of the IPFS backend. The node's own disk is probed
/// whatever this says (`health::DISK_PROBE_INTERVAL`): readiness depends on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageDriverHealthConfig {
    /// Probe the IPFS backend, when one is configured.
    pub enabled: bool,
    /// Time between backend probes.
    pub interval: GoDuration,
    /// Consecutive failures before the backend is reported unhealthy.
    pub threshold: u32,
}

impl Default for StorageDriverHealthConfig {
    fn default() -> Self {
        StorageDriverHealthConfig {
            enabled: false,
            interval: GoDuration(Duration::from_secs(10)),
            threshold: 3,
        }
    }
}

/// `cluster:`: this node's identity, its cluster port, and Raft timing.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Raft node id. Chosen at random on first start and kept in the data directory when absent;
    /// ids are never reused.
    pub id: Option<u64>,
    /// Listen address of the cluster port (Raft, write forwarding, blob transfer), Go style.
    pub addr: String,
    /// The URL peers use to reach this node's cluster port. Derived from `addr` when absent
    /// (with the machine's hostname when `addr` names no host).
    pub advertise: Option<String>,
    /// Shared secret every cluster-port request must carry. Without one, a random secret is
    /// used and no other node can join.
    pub secret: Option<String>,
    /// Cluster URL of any member: a node with no Raft state asks it to be added, instead of
    /// starting a cluster of its own.
    pub join: Option<String>,
    /// Raft heartbeat interval.
    pub heartbeat: GoDuration,
    /// Minimum election timeout (the maximum is twice this).
    #[serde(rename = "election-timeout")]
    pub election_timeout: GoDuration,
    /// Applied entries kept in the log after a snapshot (for slow followers).
    #[serde(rename = "snapshot-logs")]
    pub snapshot_logs: u64,
    /// Mutual TLS on the cluster port (on when `certificate` is set): plaintext is refused.
    pub tls: ClusterTlsConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            id: None,
            addr: ":5006".into(),
            advertise: None,
            secret: None,
            join: None,
            heartbeat: GoDuration(Duration::from_millis(100)),
            election_timeout: GoDuration(Duration::from_millis(300)),
            snapshot_logs: 5000,
            tls: ClusterTlsConfig::default(),
        }
    }
}
