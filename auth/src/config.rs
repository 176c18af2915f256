//! The `auth:` section of the configuration file: distribution's `htpasswd` and `token` keys,
//! IPCR's own token issuing (`token.signingkey`), and per-repository policies (`access`).
//!
//! The node's configuration embeds [`AuthConfig`]; [`AuthConfig::validate`] checks everything
//! that can be checked without reading files, and names the key at fault.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Action;
use crate::policy::Pattern;

/// `auth:`. Without `htpasswd` and `token` the registry is open to everyone (the embedded
/// default, as distribution's).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Users from an Apache htpasswd file (bcrypt entries), Basic authentication.
    pub htpasswd: Option<HtpasswdConfig>,
    /// Bearer tokens (Docker's token authentication), from an external token server and/or
    /// issued by IPCR itself (`signingkey`).
    pub token: Option<TokenConfig>,
    /// Who may do what, per repository. Without it, every authenticated user may do
    /// everything and anonymous callers nothing.
    pub access: Option<AccessConfig>,
}

/// `auth.htpasswd:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HtpasswdConfig {
    /// The realm of the `Basic` challenge.
    pub realm: String,
    /// The htpasswd file (`htpasswd -B`); re-read when it changes.
    pub path: PathBuf,
}

impl Default for HtpasswdConfig {
    fn default() -> Self {
        HtpasswdConfig {
            realm: "Registry Realm".into(),
            path: PathBuf::new(),
        }
    }
}

/// `auth.token:`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// The token endpoint clients are sent to (`WWW-Authenticate: Bearer realm=...`). With
    /// `signingkey`, every node serves this URL's path itself.
    pub realm: String,
    /// The service name: the tokens' audience (`aud`) and the challenge's `service`.
    pub service: String,
    /// The tokens' issuer (`iss`).
    pub issuer: String,
    /// PEM certificates whose keys sign tokens: trusted by key id (`kid`, libtrust form) or as
    /// the root of the token's `x5c` chain.
    pub rootcertbundle: Option<PathBuf>,
    /// A JSON Web Key Set file of signing keys, trusted by `kid`.
    pub jwks: Option<PathBuf>,
    /// IPCR's own signing key (PKCS#8 PEM, P-256 or RSA): every node issues tokens to the
    /// `htpasswd` users at `realm` and trusts its own tokens. All nodes share the same key.
    pub signingkey: Option<PathBuf>,
    /// Lifetime of the tokens IPCR issues, in seconds (docker_auth's key).
    pub expiration: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            realm: String::new(),
            service: String::new(),
            issuer: String::new(),
            rootcertbundle: None,
            jwks: None,
            signingkey: None,
            expiration: 300,
        }
    }
}

/// `auth.access:`: policies. Any matching policy grants its actions; nothing else is granted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Users who may do everything everywhere (catalog included).
    pub admins: Vec<String>,
    /// Named groups of users, for policies.
    pub groups: BTreeMap<String, Vec<String>>,
    /// The policies.
    pub policies: Vec<PolicyConfig>,
}

/// One entry of `auth.access.policies`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Repository globs: `*` within one path segment, `**` across segments (`team-a/**`).
    pub repositories: Vec<String>,
    /// Users granted the actions.
    pub users: Vec<String>,
    /// Groups (from `auth.access.groups`) granted the actions.
    pub groups: Vec<String>,
    /// Everyone, without credentials too (public repositories).
    pub anonymous: bool,
    /// `pull`, `push`, `delete`.
    pub actions: Vec<Action>,
}

/// A configuration that cannot work, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// The key at fault, e.g. `auth.access.policies[2].groups`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl AuthConfig {
    /// Whether any authentication is configured.
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.token.is_some()
    }

    /// Check the section without reading any file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(h) = &self.htpasswd
            && h.path.as_os_str().is_empty()
        {
            return Err(err("auth.htpasswd.path", "the htpasswd file is required"));
        }
        if let Some(t) = &self.token {
            for (key, value) in [
                ("realm", &t.realm),
                ("service", &t.service),
                ("issuer", &t.issuer),
            ] {
                if value.is_empty() {
                    return Err(err(format!("auth.token.{key}"), "required"));
                }
            }
            if !(t.realm.starts_with("https://") || t.realm.starts_with("http://")) {
                return Err(err(
                    "auth.token.realm",
                    "must be the token endpoint's http(s) URL",
                ));
            }
            if t.rootcertbundle.is_none() && t.jwks.is_none() && t.signingkey.is_none() {
                return Err(err(
                    "auth.token",
                    "needs rootcertbundle or jwks (an external token server's keys), or signingkey (IPCR issues tokens)",
                ));
            }
            if t.signingkey.is_some() && self.htpasswd.is_none() {
                return Err(err(
                    "auth.token.signingkey",
                    "needs auth.htpasswd: the users IPCR issues tokens to",
                ));
            }
            if t.signingkey.is_none() && self.htpasswd.is_some() {
                return Err(err(
                    "auth",
                    "configure auth.htpasswd or auth.token, not both (or auth.token.signingkey to issue tokens to the htpasswd users)",
                ));
            }
            if t.expiration == 0 || t.expiration > 24 * 3600 {
                return Err(err("auth.token.expiration", "seconds, from 1 to 86400"));
            }
        }
        if let Some(a) = &self.access {
            if !self.enabled() {
                return Err(err("auth.access", "needs auth.htpasswd or auth.token"));
            }
            a.validate()?;
        }
        Ok(())
    }
}

impl AccessConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (name, members) in &self.groups {
            if members.is_empty() {
                return Err(err(format!("auth.access.groups.{name}"), "a group needs members"));
            }
        }
        for (i, p) in self.policies.iter().enumerate() {
            let key = |k: &str| format!("auth.access.policies[{i}].{k}");
            if p.repositories.is_empty() {
                return Err(err(key("repositories"), "name at least one repository glob"));
            }
            for glob in &p.repositories {
                Pattern::new(glob).map_err(|m| err(key("repositories"), m))?;
            }
            if p.actions.is_empty() {
                return Err(err(key("actions"), "name at least one of pull, push, delete"));
            }
            if p.users.is_empty() && p.groups.is_empty() && !p.anonymous {
                return Err(err(
                    format!("auth.access.policies[{i}]"),
                    "grants nobody: name users, groups, or set anonymous: true",
                ));
            }
            if let Some(g) = p.groups.iter().find(|g| !self.groups.contains_key(*g)) {
                return Err(err(
                    key("groups"),
                    format!("no group `{g}` in auth.access.groups"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> TokenConfig {
        TokenConfig {
            realm: "https://r.example/auth/token".into(),
            service: "r.example".into(),
            issuer: "issuer".into(),
            rootcertbundle: Some("/x.pem".into()),
            ..TokenConfig::default()
        }
    }

    fn htpasswd() -> Option<HtpasswdConfig> {
        Some(HtpasswdConfig {
            path: "/h".into(),
            ..HtpasswdConfig::default()
        })
    }

    fn key_of(c: AuthConfig) -> String {
        c.validate().unwrap_err().key
    }

    #[test]
    fn impossible_configurations_name_their_key() {
        assert!(AuthConfig::default().validate().is_ok());
        let mut t = token();
        t.service.clear();
        assert_eq!(
            key_of(AuthConfig {
                token: Some(t),
                ..Default::default()
            }),
            "auth.token.service"
        );
        let mut t = token();
        t.realm = "/auth/token".into();
        assert_eq!(
            key_of(AuthConfig {
                token: Some(t),
                ..Default::default()
            }),
            "auth.token.realm"
        );
        let mut t = token();
        t.rootcertbundle = None;
        assert_eq!(
            key_of(AuthConfig {
                token: Some(t),
                ..Default::default()
            }),
            "auth.token"
        );
        let mut t = token();
        t.signingkey = Some("/k.pem".into());
        assert_eq!(
            key_of(AuthConfig {
                token: Some(t),
                ..Default::default()
            }),
            "auth.token.signingkey"
        );
        assert_eq!(
            key_of(AuthConfig {
                token: Some(token()),
                htpasswd: htpasswd(),
                access: None
            }),
            "auth"
        );
        assert_eq!(
            key_of(AuthConfig {
                access: Some(AccessConfig::default()),
                ..Default::default()
            }),
            "auth.access"
        );
        assert_eq!(
            key_of(AuthConfig {
                htpasswd: Some(HtpasswdConfig::default()),
                ..Default::default()
            }),
            "auth.htpasswd.path"
        );
    }

    fn with_policy(p: PolicyConfig) -> AuthConfig {
        AuthConfig {
            htpasswd: htpasswd(),
            token: None,
            access: Some(AccessConfig {
                admins: vec![],
                groups: [("team".to_string(), vec!["bob".to_string()])].into(),
                policies: vec![p],
            }),
        }
    }

    #[test]
    fn impossible_policies_name_their_key() {
        let good = PolicyConfig {
            repositories: vec!["team-a/**".into()],
            groups: vec!["team".into()],
            actions: vec![Action::Pull],
            ..Default::default()
        };
        assert!(with_policy(good.clone()).validate().is_ok());
        let cases = [
            (
                PolicyConfig {
                    repositories: vec![],
                    ..good.clone()
                },
                "auth.access.policies[0].repositories",
            ),
            (
                PolicyConfig {
                    repositories: vec!["a/[".into()],
                    ..good.clone()
                },
                "auth.access.policies[0].repositories",
            ),
            (
                PolicyConfig {
                    actions: vec![],
                    ..good.clone()
                },
                "auth.access.policies[0].actions",
            ),
            (
                PolicyConfig {
                    groups: vec![],
                    ..good.clone()
                },
                "auth.access.policies[0]",
            ),
            (
                PolicyConfig {
                    groups: vec!["nope".into()],
                    ..good.clone()
                },
                "auth.access.policies[0].groups",
            ),
        ];
        for (p, key) in cases {
            assert_eq!(key_of(with_policy(p)), key);
        }
    }
}
