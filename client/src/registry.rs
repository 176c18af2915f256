//! One registry as a client sees it: its base URL (HTTPS, or plain HTTP where Docker allows
//! it), the credentials for it, the tokens its token endpoint issued per scope, and requests
//! sent with authentication answered and transient failures retried.
//!
//! [`crate::api`] builds the OCI operations on [`Registry::send`]; migrate and the node's
//! pull-through cache call those.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};

use crate::auth::{Challenge, Credentials, Token, parse_challenges, parse_token_answer};
use crate::error::Error;
use crate::image::{RegistryAddr, Scheme};
use crate::retry::Retry;

/// How to reach and authenticate to one registry.
#[derive(Clone, Debug)]
pub struct Access {
    /// Credentials for the registry (or its token endpoint); `None` is anonymous.
    pub creds: Option<Credentials>,
    /// Verify TLS certificates and refuse plain HTTP to anything but loopback.
    pub tls_verify: bool,
    /// A directory of extra CA certificates (`*.crt`), as skopeo's `--cert-dir`.
    pub cert_dir: Option<PathBuf>,
    /// Retries of failed requests.
    pub retry: Retry,
}

impl Default for Access {
    fn default() -> Access {
        Access {
            creds: None,
            tls_verify: true,
            cert_dir: None,
            retry: Retry::default(),
        }
    }
}

/// What one request needs: the token scopes of the Bearer flow
/// (`repository:<name>:pull,push`, `registry:catalog:*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(Vec<String>);

impl Scope {
    /// Read `repo`.
    pub fn pull(repo: &str) -> Scope {
        Scope(vec![format!("repository:{repo}:pull")])
    }

    /// Read and write `repo`.
    pub fn push(repo: &str) -> Scope {
        Scope(vec![format!("repository:{repo}:pull,push")])
    }

    /// Write `to`, mounting a blob from `from`.
    pub fn mount(to: &str, from: &str) -> Scope {
        Scope(vec![
            format!("repository:{to}:pull,push"),
            format!("repository:{from}:pull"),
        ])
    }

    /// List the catalog.
    pub fn catalog() -> Scope {
        Scope(vec!["registry:catalog:*".into()])
    }

    fn key(&self) -> String {
        self.0.join(" ")
    }
}

/// Where a registry's tokens come from, learnt from its `Bearer` challenge.
#[derive(Clone, Debug)]
struct TokenEndpoint {
    realm: String,
    service: Option<String>,
}

#[derive(Default)]
struct AuthState {
    /// The registry challenged with `Basic`: send the credentials with every request.
    basic: bool,
    bearer: Option<TokenEndpoint>,
    tokens: HashMap<String, (String, Instant)>,
}

/// A connection to one registry. Cheap to share behind an `Arc`; requests run concurrently.
pub struct Registry {
    addr: RegistryAddr,
    base: Url,
    http: Client,
    creds: Option<Credentials>,
    retry: Retry,
    auth: std::sync::Mutex<AuthState>,
    /// One token request at a time, so that concurrent requests for one scope share it.
    token_fetch: tokio::sync::Mutex<()>,
}

/// A CA certificate directory's `*.crt` files.
fn certificates(dir: &Path) -> Result<Vec<reqwest::Certificate>, Error> {
    let bad = |why: String| Error::Setup(format!("{}: {why}", dir.display()));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))? {
        let path = entry.map_err(|e| bad(e.to_string()))?.path();
        if path.extension().is_some_and(|e| e == "crt") {
            let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
            out.extend(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?,
            );
        }
    }
    Ok(out)
}

/// The HTTP client for one registry: system CAs plus `cert_dir`'s (only `cert_dir`'s where
/// the system has none), certificates unchecked when `tls_verify` is off.
fn http_client(access: &Access) -> Result<Client, Error> {
    let extra = match &access.cert_dir {
        Some(dir) => certificates(dir)?,
        None => Vec::new(),
    };
    let builder = || {
        Client::builder()
            .user_agent(concat!("ipcr/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(64)
            .tls_danger_accept_invalid_certs(!access.tls_verify)
    };
    match builder().tls_certs_merge(extra.clone()).build() {
        Ok(c) => Ok(c),
        Err(_) if !extra.is_empty() => builder()
            .tls_certs_only(extra)
            .build()
            .map_err(|e| Error::Setup(e.to_string())),
        Err(e) => Err(Error::Setup(format!(
            "no TLS trust store ({e}); give a CA directory with --*-cert-dir"
        ))),
    }
}

/// The schemes to try for `addr`, in order: the one it names, else HTTPS, then plain HTTP
/// where Docker allows it (loopback hosts) or TLS is not verified. Naming `http://` elsewhere
/// is an error.
fn schemes(addr: &RegistryAddr, tls_verify: bool) -> Result<&'static [&'static str], Error> {
    let plain_ok = addr.is_loopback() || !tls_verify;
    Ok(match addr.scheme {
        Some(Scheme::Http) if !plain_ok => {
            return Err(Error::Setup(format!(
                "{addr}: plain HTTP is only used for loopback registries or without TLS verification (--*-tls-verify=false)"
            )));
        }
        Some(Scheme::Http) => &["http"],
        Some(Scheme::Https) => &["https"],
        None if plain_ok => &["https", "http"],
        None => &["https"],
    })
}

/// Whether `e` failed because the server's certificate is not trusted (rather than because
/// nothing speaks TLS there).
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        // io::Error's source() skips the error it wraps; look inside.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && is_certificate_error(inner)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

impl Registry {
    /// Reach `addr`: HTTPS, verified unless `access.tls_verify` is off; plain HTTP after a
    /// failed HTTPS attempt only for loopback or unverified registries (Docker's rule), or
    /// when the address says `http://` (allowed only there too). Pings `/v2/` to learn how it
    /// authenticates.
    pub async fn connect(addr: RegistryAddr, access: Access) -> Result<Registry, Error> {
        let http = http_client(&access)?;
        let schemes = schemes(&addr, access.tls_verify)?;
        let mut last = None;
        for (i, scheme) in schemes.iter().enumerate() {
            // A probe with a fallback after it is sent once: a plain-HTTP port fails every TLS
            // handshake alike, and retrying it only delays the fallback by the whole backoff.
            let probe = if i + 1 < schemes.len() {
                Retry {
                    attempts: 1,
                    ..access.retry.clone()
                }
            } else {
                access.retry.clone()
            };
            let mut reg = Registry::at(&addr, scheme, http.clone(), &access, probe)?;
            match reg.ping().await {
                Ok(()) => {
                    reg.retry = access.retry.clone();
                    return Ok(reg);
                }
                Err(Error::Http { error: source, .. })
                    if i + 1 < schemes.len() && !is_certificate_error(&source) =>
                {
                    tracing::debug!(registry = %addr, error = %source, "no HTTPS; trying plain HTTP");
                    last = Some(source);
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Http {
            registry: addr.to_string(),
            error: last.expect("at least one scheme was tried"),
        })
    }

    /// A registry at `url` (`https://host[:port]`), not contacted until the first request:
    /// how it authenticates is learnt from its first challenge. For a long-lived client (the
    /// pull-through cache) whose upstream may be down when it starts. The scheme must be
    /// given, and is used as given: an operator's `http://` in a configuration is a choice
    /// (distribution's `proxy.remoteurl` takes it too), not a fallback.
    pub fn lazy(url: &str, access: Access) -> Result<Registry, Error> {
        let addr = RegistryAddr::parse(url).map_err(|e| Error::Setup(format!("{url}: {e}")))?;
        let scheme = match addr.scheme {
            Some(Scheme::Https) => "https",
            Some(Scheme::Http) => "http",
            None => return Err(Error::Setup(format!("{url}: give the scheme, https://"))),
        };
        Registry::at(
            &addr,
            scheme,
            http_client(&access)?,
            &access,
            access.retry.clone(),
        )
    }

    /// A registry at `scheme://addr`, not contacted yet.
    fn at(
        addr: &RegistryAddr,
        scheme: &str,
        http: Client,
        access: &Access,
        retry: Retry,
    ) -> Result<Registry, Error> {
        let base = Url::parse(&format!("{scheme}://{}/", addr.host))
            .map_err(|e| Error::Setup(format!("{addr}: {e}")))?;
        Ok(Registry {
            addr: addr.clone(),
            base,
            http,
            creds: access.creds.clone(),
            retry,
            auth: Default::default(),
            token_fetch: Default::default(),
        })
    }

    /// `GET /v2/`: the registry is there; remember how it wants to be authenticated.
    async fn ping(&self) -> Result<(), Error> {
        let resp = self.send_raw(|c| c.get(self.url("v2/"))).await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => {
                self.learn(&challenges(resp.headers()));
                Ok(())
            }
            _ => Err(Error::from_response(&self.addr, "GET /v2/", resp).await),
        }
    }

    /// The HTTP client, for requests [`Registry::send`] cannot resend (streamed bodies).
    pub(crate) fn http(&self) -> &Client {
        &self.http
    }

    /// How this registry's requests are retried, for those read past [`Registry::send`].
    pub(crate) fn retry(&self) -> &Retry {
        &self.retry
    }

    /// The registry's address.
    pub fn addr(&self) -> &RegistryAddr {
        &self.addr
    }

    /// `path` (relative, no leading `/`) on this registry; an absolute `Location` as it is.
    pub fn url(&self, path: &str) -> Url {
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    /// Send a request without authentication, retrying transient failures.
    async fn send_raw(&self, build: impl Fn(&Client) -> RequestBuilder) -> Result<Response, Error> {
        let mut attempt = 0;
        loop {
            let outcome = build(&self.http).send().await;
            let wait = match &outcome {
                Err(e) if Retry::retryable_error(e) => self.retry.backoff(attempt),
                Ok(r) if Retry::retryable_status(r.status()) => self.retry.wait_for(attempt, r.headers()),
                _ => None,
            };
            match (wait, outcome) {
                (Some(wait), outcome) => {
                    tracing::debug!(registry = %self.addr, attempt, ?wait, status = ?outcome.as_ref().ok().map(|r| r.status()), "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                (None, Ok(r)) => return Ok(r),
                (None, Err(error)) => {
                    return Err(Error::Http {
                        registry: self.addr.to_string(),
                        error,
                    });
                }
            }
        }
    }

    /// Send a request needing `scope`: authenticated as the registry asked (a token for the
    /// scope, fetched again when refused as expired, or Basic), and retried after `429`, `5xx`
    /// and connection failures with backoff, honouring `Retry-After`. `build` makes the
    /// request again for each attempt.
    pub async fn send(
        &self,
        scope: &Scope,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let mut answered = false;
        loop {
            let header = self.authorization(scope).await?;
            let resp = self
                .send_raw(|c| match &header {
                    Some(h) => build(c).header(AUTHORIZATION, h),
                    None => build(c),
                })
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let found = challenges(resp.headers());
            if answered || found.is_empty() {
                return Err(Error::from_response(&self.addr, "authorization", resp).await);
            }
            answered = true;
            self.forget_token(scope);
            self.learn(&found);
        }
    }

    /// The `Authorization` header for `scope`: a cached token, a new one from the token
    /// endpoint, Basic credentials, or nothing until the registry asks.
    pub async fn authorization(&self, scope: &Scope) -> Result<Option<String>, Error> {
        let endpoint = {
            let state = self.auth.lock().expect("auth state");
            if let Some(ep) = &state.bearer {
                match state.tokens.get(&scope.key()) {
                    Some((t, until)) if *until > Instant::now() => return Ok(Some(format!("Bearer {t}"))),
                    _ => ep.clone(),
                }
            } else {
                return Ok(if state.basic {
                    self.creds.as_ref().and_then(Credentials::basic)
                } else {
                    None
                });
            }
        };
        let _one = self.token_fetch.lock().await;
        if let Some((t, until)) = self.auth.lock().expect("auth state").tokens.get(&scope.key())
            && *until > Instant::now()
        {
            return Ok(Some(format!("Bearer {t}")));
        }
        let token = self.fetch_token(&endpoint, scope).await?;
        // Renew before the registry would refuse it: a tenth of its life early, at most 10 s.
        let margin = (token.lifetime / 10).min(Duration::from_secs(10));
        let until = Instant::now() + token.lifetime.saturating_sub(margin);
        let header = format!("Bearer {}", token.value);
        self.auth
            .lock()
            .expect("auth state")
            .tokens
            .insert(scope.key(), (token.value, until));
        Ok(Some(header))
    }

    fn forget_token(&self, scope: &Scope) {
        self.auth.lock().expect("auth state").tokens.remove(&scope.key());
    }

    /// Take in what a `401` asked for: a token endpoint, or Basic.
    fn learn(&self, found: &[Challenge]) {
        let mut state = self.auth.lock().expect("auth state");
        if let Some(b) = found.iter().find(|c| c.scheme == "bearer") {
            if let Some(realm) = b.params.get("realm") {
                state.bearer = Some(TokenEndpoint {
                    realm: realm.clone(),
                    service: b.params.get("service").cloned(),
                });
            }
        } else if found.iter().any(|c| c.scheme == "basic") {
            state.basic = true;
        }
    }

    /// Ask the token endpoint for `scope`: `GET` with Basic credentials (or anonymously), or
    /// the OAuth2 refresh-token `POST` for an identity token.
    async fn fetch_token(&self, ep: &TokenEndpoint, scope: &Scope) -> Result<Token, Error> {
        let realm = Url::parse(&ep.realm).map_err(|e| Error::Protocol {
            registry: self.addr.to_string(),
            detail: format!("token realm {:?}: {e}", ep.realm),
        })?;
        let resp = self
            .send_raw(|c| match &self.creds {
                Some(Credentials::IdentityToken(refresh)) => {
                    let mut form = form_urlencoded::Serializer::new(String::new());
                    form.append_pair("grant_type", "refresh_token")
                        .append_pair("refresh_token", refresh)
                        .append_pair("client_id", "ipcr")
                        .append_pair("scope", &scope.0.join(" "));
                    if let Some(s) = &ep.service {
                        form.append_pair("service", s);
                    }
                    c.post(realm.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(form.finish())
                }
                creds => {
                    let mut url = realm.clone();
                    {
                        let mut q = url.query_pairs_mut();
                        for s in &scope.0 {
                            q.append_pair("scope", s);
                        }
                        if let Some(s) = &ep.service {
                            q.append_pair("service", s);
                        }
                        if let Some(Credentials::Password { username, .. }) = creds {
                            q.append_pair("account", username);
                        }
                    }
                    let req = c.get(url);
                    match creds {
                        Some(Credentials::Password { username, password }) => {
                            req.basic_auth(username, Some(password))
                        }
                        _ => req,
                    }
                }
            })
            .await?;
        if !resp.status().is_success() {
            return Err(Error::from_response(&self.addr, "token endpoint", resp).await);
        }
        let body = resp.bytes().await.map_err(|error| Error::Http {
            registry: self.addr.to_string(),
            error,
        })?;
        parse_token_answer(&body).map_err(|detail| Error::Protocol {
            registry: self.addr.to_string(),
            detail,
        })
    }
}

fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A loopback registry speaking plain HTTP is reached at once: the HTTPS probe before it
    /// is not retried through the whole backoff (it was: 17 s per registry).
    #[tokio::test]
    async fn a_plain_http_loopback_registry_is_reached_without_backoff() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Whatever arrives (an HTTP request, a TLS ClientHello) gets an HTTP answer.
                    if conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                });
            }
        });
        let started = Instant::now();
        let reg = Registry::connect(RegistryAddr::parse(&host).unwrap(), Access::default())
            .await
            .unwrap();
        assert_eq!(reg.url("v2/").scheme(), "http");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
