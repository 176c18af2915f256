//! TLS for the registry port (`http.tls`) and mutual TLS for the cluster port (`cluster.tls`),
//! with rustls (TLS 1.2 and 1.3, the `ring` provider).
//!
//! Certificates and keys are re-read when their files change (looked at, at most once a
//! second, when a handshake needs them): a rotated certificate is served to new connections
//! while open ones carry on. A half-written pair (a certificate whose key does not match yet)
//! is not taken; the previous pair is kept until the files agree.
//!
//! Called by `server` (listeners), `raft::network` (the cluster client) and the CLI.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ClusterTlsConfig, TlsConfig};

/// How often the files are looked at for changes.
const RECHECK: Duration = Duration::from_secs(1);

/// The crypto provider of every IPCR TLS endpoint: ring's, with AES-128-GCM preferred (as
/// strong as needed, and cheaper than AES-256 on the bytes of every push and pull).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        _ => 1,
    };
    // Stable: otherwise ring's order (AES-256-GCM, then ChaCha20) is kept.
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
}

/// A TLS setup that cannot work, naming the key and file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsError {
    key: &'static str,
    message: String,
}

fn tls_err(key: &'static str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError {
        key,
        message: format!("{}: {e}", path.display()),
    }
}

type Stamp = [(u64, Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok(), m.ino()))
    };
    Some([one(cert)?, one(key)?])
}

fn load_pair(cert: &Path, key: &Path, keys: (&'static str, &'static str)) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(keys.0, cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(keys.0, cert, e))?;
    if chain.is_empty() {
        return Err(tls_err(keys.0, cert, "no PEM certificate"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(keys.1, key, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| tls_err(keys.1, key, e))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match()
        .map_err(|e| tls_err(keys.1, key, format!("does not match the certificate: {e}")))?;
    Ok(pair)
}

/// A certificate and key that follow their files.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    keys: (&'static str, &'static str),
    state: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    pair: Arc<CertifiedKey>,
    stamp: Option<Stamp>,
    checked: Instant,
}

impl Reloading {
    /// Load the pair now; `keys` name the configuration keys for errors.
    pub fn load(
        cert: &Path,
        key: &Path,
        keys: (&'static str, &'static str),
    ) -> Result<Arc<Reloading>, TlsError> {
        let stamp = stamp(cert, key);
        let pair = load_pair(cert, key, keys)?;
        Ok(Arc::new(Reloading {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            keys,
            state: Mutex::new(Current {
                pair: Arc::new(pair),
                stamp,
                checked: Instant::now(),
            }),
        }))
    }

    /// The pair to use now, re-read if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut s = self.state.lock().expect("tls state lock");
        if s.checked.elapsed() >= RECHECK {
            s.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now.is_some() && now != s.stamp {
                match load_pair(&self.cert, &self.key, self.keys) {
                    Ok(pair) => {
                        tracing::info!(certificate = %self.cert.display(), "TLS certificate reloaded");
                        s.pair = Arc::new(pair);
                        s.stamp = now;
                    }
                    // Kept unrecorded: the next look tries again (the other file may be
                    // still on its way).
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; serving the previous one")
                    }
                }
            }
        }
        s.pair.clone()
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Reloading {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn roots(paths: &[PathBuf], key: &'static str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for path in paths {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| tls_err(key, path, e))?;
        for cert in certs {
            store
                .add(cert.map_err(|e| tls_err(key, path, e))?)
                .map_err(|e| tls_err(key, path, e))?;
        }
    }
    if store.is_empty() {
        return Err(TlsError {
            key,
            message: "no CA certificate".into(),
        });
    }
    Ok(store)
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(minimum: Option<&str>) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match minimum {
        Some("tls1.3") => &TLS13_ONLY,
        _ => rustls::ALL_VERSIONS,
    }
}

/// The registry port's server configuration (`http.tls`).
pub fn registry_server(c: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let pair = Reloading::load(&c.certificate, &c.key, ("http.tls.certificate", "http.tls.key"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(c.minimumtls.as_deref()))
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let builder = if c.clientcas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = roots(&c.clientcas, "http.tls.clientcas")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError {
                key: "http.tls.clientcas",
                message: e.to_string(),
            })?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_cert_resolver(pair);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// The cluster port's server configuration: peers must show a certificate of `cluster.tls.ca`.
pub fn cluster_server(c: &ClusterTlsConfig) -> Result<ServerConfig, TlsError> {
    let pair = Reloading::load(
        &c.certificate,
        &c.key,
        ("cluster.tls.certificate", "cluster.tls.key"),
    )?;
    let roots = roots(std::slice::from_ref(&c.ca), "cluster.tls.ca")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError {
            key: "cluster.tls.ca",
            message: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(pair);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// A client configuration trusting `ca`, showing `cert`/`key` when given (the cluster port
/// wants them).
pub fn client(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    keys: [&'static str; 3],
) -> Result<ClientConfig, TlsError> {
    let roots = roots(&[ca.to_path_buf()], keys[0])?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    Ok(match identity {
        Some((cert, key)) => {
            builder.with_client_cert_resolver(Reloading::load(cert, key, (keys[1], keys[2]))?)
        }
        None => builder.with_no_client_auth(),
    })
}

/// A client configuration trusting no certificate, for a client that speaks plain HTTP only
/// (the cluster port without `cluster.tls`): an `https://` URL fails its handshake. Unlike
/// reqwest's default it needs no system CA store, which a container image built `FROM
/// scratch` does not have.
pub fn trust_nobody() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth()
}

/// An HTTP client for services outside the cluster (an IPFS backend): it trusts the system's
/// CA store, or, where there is none (a `FROM scratch` image without a CA bundle), no
/// certificate at all, so that plain-HTTP services still work and `https://` ones fail with
/// a clear error instead of the node failing to start.
pub fn outside_client(builder: impl Fn() -> reqwest::ClientBuilder) -> reqwest::Client {
    match builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no system CA certificates: https:// backends will not be trusted");
            builder()
                .tls_backend_preconfigured(trust_nobody())
                .build()
                .expect("an HTTP client with a preconfigured TLS backend")
        }
    }
}

/// The client configuration nodes use towards each other's cluster ports.
pub fn cluster_client(c: &ClusterTlsConfig) -> Result<ClientConfig, TlsError> {
    client(
        &c.ca,
        Some((&c.certificate, &c.key)),
        ["cluster.tls.ca", "cluster.tls.certificate", "cluster.tls.key"],
    )
}
