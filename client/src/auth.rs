//! The registries' own authentication, as Docker's clients speak it: credentials given on the
//! command line or found where `docker login` wrote them (`config.json`, its credential
//! helpers), `WWW-Authenticate` challenges, and the token endpoint of the Bearer flow.
//!
//! [`crate::registry`] calls it; nothing here retries or caches.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::image::{DOCKER_HUB_AUTH_KEY, RegistryAddr};

/// What a client presents to a registry or its token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password (or personal access token).
    Password {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token `docker login` stored as `identitytoken`.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { username, .. } => write!(f, "Password({username}, ***)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

/// Credentials that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// `--src-creds` / `--dest-creds` without a colon.
    #[error("credentials must be USER:PASSWORD")]
    Malformed,
    /// The Docker config file exists but is not what `docker login` writes.
    #[error("{path}: {why}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A credential helper failed.
    #[error("docker-credential-{helper}: {why}")]
    Helper {
        /// The helper's name (`pass`, `secretservice`, ...).
        helper: String,
        /// What went wrong.
        why: String,
    },
}

impl Credentials {
    /// `USER:PASSWORD`, as skopeo's `--creds` takes it.
    pub fn parse(s: &str) -> Result<Credentials, CredentialsError> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::Password {
                username: u.into(),
                password: p.into(),
            }),
            _ => Err(CredentialsError::Malformed),
        }
    }

    /// The `Authorization` header value for Basic authentication, if these are a password.
    pub fn basic(&self) -> Option<String> {
        match self {
            Credentials::Password { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credentials::IdentityToken(_) => None,
        }
    }
}

/// The Docker client configuration: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The host an `auths` key names: keys are written as `host`, `https://host` or
/// `https://host/v1/` depending on the client's age.
fn key_host(key: &str) -> &str {
    let k = key.split_once("://").map_or(key, |(_, rest)| rest);
    k.split('/').next().unwrap_or(k)
}

/// The credentials `docker login` stored for `registry` in the file at `path`, if any.
pub fn from_docker_config(
    path: &Path,
    registry: &RegistryAddr,
) -> Result<Option<Credentials>, CredentialsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredentialsError::Config {
                path: path.into(),
                why: e.to_string(),
            });
        }
    };
    let config: DockerConfig = serde_json::from_str(&text).map_err(|e| CredentialsError::Config {
        path: path.into(),
        why: e.to_string(),
    })?;
    // Docker Hub is filed under its v1 index URL; every other registry under its host.
    let server = if registry.is_docker_hub() {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.host.clone()
    };
    let wanted = |key: &str| {
        if registry.is_docker_hub() {
            matches!(
                key_host(key),
                "index.docker.io" | "docker.io" | "registry-1.docker.io"
            )
        } else {
            key_host(key).eq_ignore_ascii_case(&registry.host)
        }
    };
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| wanted(k))
        .map(|(_, h)| h.clone())
        .or(config.creds_store);
    if let Some(helper) = helper {
        return from_helper(&helper, &server);
    }
    let Some(entry) = config.auths.iter().find(|(k, _)| wanted(k)).map(|(_, e)| e) else {
        return Ok(None);
    };
    entry_credentials(entry).map_err(|why| CredentialsError::Config {
        path: path.into(),
        why,
    })
}

fn entry_credentials(entry: &AuthEntry) -> Result<Option<Credentials>, String> {
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auth is not base64: {e}"))?;
        let text = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
        return Credentials::parse(&text)
            .map(Some)
            .map_err(|_| "auth is not base64 of USER:PASSWORD".into());
    }
    Ok(match (&entry.username, &entry.password) {
        (Some(u), Some(p)) if !u.is_empty() => Some(Credentials::Password {
            username: u.clone(),
            password: p.clone(),
        }),
        _ => None,
    })
}

/// Ask `docker-credential-<helper> get` for `server`'s credentials, as the Docker CLI does.
fn from_helper(helper: &str, server: &str) -> Result<Option<Credentials>, CredentialsError> {
    let fail = |why: String| CredentialsError::Helper {
        helper: helper.into(),
        why,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The helpers' own words for "nothing stored for this server".
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct HelperAnswer {
        username: String,
        secret: String,
    }
    let a: HelperAnswer = serde_json::from_str(&stdout).map_err(|e| fail(e.to_string()))?;
    Ok(Some(if a.username == "<token>" {
        Credentials::IdentityToken(a.secret)
    } else {
        Credentials::Password {
            username: a.username,
            password: a.secret,
        }
    }))
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic`, lowercased.
    pub scheme: String,
    /// Its parameters (`realm`, `service`, `scope`, `error`), keys lowercased.
    pub params: BTreeMap<String, String>,
}

/// The challenges in a `WWW-Authenticate` value (RFC 9110 §11.6.1): a scheme, then
/// `key=value` or `key="quoted, value"` parameters separated by commas; a new challenge starts
/// where a token is followed by a space instead of `=`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let (token, after) = rest.split_at(end);
        if token.is_empty() {
            break;
        }
        let after_ws = after.trim_start();
        if let (Some(value_start), Some(last)) = (after_ws.strip_prefix('='), out.last_mut()) {
            let (value, remaining) = parse_value(value_start.trim_start());
            last.params.insert(token.to_ascii_lowercase(), value);
            rest = remaining;
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
            rest = after;
        }
    }
    out
}

/// A parameter value (quoted with `\` escapes, or a bare token) and what follows it.
fn parse_value(s: &str) -> (String, &str) {
    let Some(quoted) = s.strip_prefix('"') else {
        let end = s.find(',').unwrap_or(s.len());
        return (s[..end].trim().to_string(), &s[end..]);
    };
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, e)) = chars.next() {
                    value.push(e);
                }
            }
            '"' => return (value, &quoted[i + 1..]),
            c => value.push(c),
        }
    }
    (value, "")
}

/// A token the token endpoint handed out, and for how long it is good.
#[derive(Clone, Debug)]
pub struct Token {
    /// The bearer token.
    pub value: String,
    /// `expires_in`; 60 s when the server names none, as the token spec says.
    pub lifetime: Duration,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The token spec's minimum (and default) lifetime.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// Read a token endpoint's JSON answer.
pub fn parse_token_answer(body: &[u8]) -> Result<Token, String> {
    let a: TokenAnswer = serde_json::from_slice(body).map_err(|e| format!("token answer: {e}"))?;
    let value = a
        .token
        .or(a.access_token)
        .filter(|t| !t.is_empty())
        .ok_or("the token endpoint answered without a token")?;
    Ok(Token {
        value,
        lifetime: a.expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn challenges_parse_as_registries_write_them() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(
            params(&c[0]),
            vec![
                ("realm", "https://auth.docker.io/token"),
                ("scope", "repository:library/alpine:pull,push"),
                ("service", "registry.docker.io"),
            ]
        );
        let c = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (c[0].scheme.as_str(), params(&c[0])),
            ("basic", vec![("realm", "Registry Realm")])
        );
        // Two challenges in one header, bare tokens, escapes and odd spacing.
        let c = parse_challenges(r#"Basic realm=x , Bearer realm="a\"b", error=invalid_token"#);
        assert_eq!(c.len(), 2);
        assert_eq!(params(&c[0]), vec![("realm", "x")]);
        assert_eq!(params(&c[1]), vec![("error", "invalid_token"), ("realm", "a\"b")]);
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Bearer")[0].params.len(), 0);
        // Garbage never panics.
        for junk in [
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            ",,,",
            "a=b=c",
            "Bearer ,=,",
        ] {
            let _ = parse_challenges(junk);
        }
    }

    #[test]
    fn token_answers_take_either_field_and_default_to_sixty_seconds() {
        let t = parse_token_answer(br#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!((t.value.as_str(), t.lifetime.as_secs()), ("a", 300));
        let t = parse_token_answer(br#"{"access_token":"b"}"#).unwrap();
        assert_eq!((t.value.as_str(), t.lifetime.as_secs()), ("b", 60));
        assert!(parse_token_answer(br#"{"token":""}"#).is_err());
        assert!(parse_token_answer(b"<html>").is_err());
    }

    fn write_config(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    #[test]
    fn docker_config_entries_are_found_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let p = write_config(
            dir.path(),
            &format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "127.0.0.1:5000":{{"auth":"{auth}"}},
                "https://quay.io":{{"identitytoken":"refresh"}},
                "ghcr.io":{{"username":"bob","password":"pw"}}}}}}"#
            ),
        );
        let alice = Credentials::Password {
            username: "alice".into(),
            password: "s3cr:et".into(),
        };
        let get = |h: &str| from_docker_config(&p, &RegistryAddr::parse(h).unwrap()).unwrap();
        assert_eq!(get("docker.io"), Some(alice.clone()));
        assert_eq!(get("127.0.0.1:5000"), Some(alice));
        assert_eq!(get("quay.io"), Some(Credentials::IdentityToken("refresh".into())));
        assert_eq!(
            get("ghcr.io"),
            Some(Credentials::Password {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(get("127.0.0.1:5001"), None);
        let missing = dir.path().join("nope.json");
        assert_eq!(
            from_docker_config(&missing, &RegistryAddr::docker_hub()).unwrap(),
            None
        );
        let bad = write_config(dir.path(), r#"{"auths":{"h":{"auth":"!!"}}}"#);
        let e = from_docker_config(&bad, &RegistryAddr::parse("h").unwrap()).unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
    }

    #[test]
    fn a_missing_credential_helper_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_config(dir.path(), r#"{"credsStore":"ipcr-test-none"}"#);
        let e = from_docker_config(&p, &RegistryAddr::parse("h").unwrap()).unwrap_err();
        assert!(e.to_string().contains("docker-credential-ipcr-test-none"), "{e}");
    }

    #[test]
    fn command_line_credentials_split_at_the_first_colon() {
        assert_eq!(
            Credentials::parse("u:p:q").unwrap(),
            Credentials::Password {
                username: "u".into(),
                password: "p:q".into()
            }
        );
        assert!(Credentials::parse("nocolon").is_err());
        assert!(Credentials::parse(":p").is_err());
        assert_eq!(Credentials::parse("u:p").unwrap().basic().unwrap(), "Basic dTpw");
    }
}
