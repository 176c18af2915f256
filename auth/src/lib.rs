//! IPCR access control: who a caller is, and what they may do.
//!
//! Identities come from `Basic` credentials checked against an htpasswd file, or from `Bearer`
//! tokens (Docker's token authentication) signed by an external token server or by IPCR
//! itself. What an identity may do comes from the policies of `auth.access`, or, for external
//! tokens, from the token's `access` claim. Everything is read from the configuration and the
//! files it names, never from Raft: any node answers while the cluster has no leader, and a
//! token one node issued is accepted by every node holding the same signing key.
//!
//! The HTTP layer asks [`Auth::authenticate`] who the caller is and [`Auth::authorize`] whether
//! it may do what the request needs, and turns a [`Refusal`] into `401` / `403`. It holds none
//! of the rules. This crate knows no HTTP framework.

pub mod config;
pub mod header;
mod htpasswd;
pub mod policy;
pub mod throttle;
pub mod token;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub use config::{AccessConfig, AuthConfig, ConfigError, HtpasswdConfig, PolicyConfig, TokenConfig};
use header::Credentials;
use htpasswd::Htpasswd;
use policy::{Policies, Who};
use throttle::Throttle;
pub use token::{Issued, ResourceActions, TokenError, Tokens, Verified};

/// What may be done to a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags, referrers.
    Pull,
    /// Upload blobs, put manifests and tags.
    Push,
    /// Delete manifests, tags and blobs.
    Delete,
}

impl Action {
    /// The name used in scopes and tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// Who a caller is.
#[derive(Clone, Debug)]
pub enum Identity {
    /// No credentials.
    Anonymous,
    /// An htpasswd user, by `Basic` credentials.
    User(String),
    /// A verified Bearer token.
    Token(std::sync::Arc<Verified>),
}

/// What a request needs.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// `GET /v2/`: any authenticated caller.
    Base,
    /// The catalog (filtered afterwards with [`Auth::may_pull`]).
    Catalog,
    /// These actions on this repository.
    Repository(&'a str, &'a [Action]),
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `401`: no, bad or insufficient credentials; the `WWW-Authenticate` value to send.
    Unauthorized(String),
    /// `403`: authenticated, but the policies do not allow it.
    Denied,
    /// `400`: a token request that cannot be answered.
    BadRequest(&'static str),
}

/// The configured access control. Shared by every request of a node.
pub struct Auth {
    htpasswd: Option<Htpasswd>,
    basic_realm: String,
    tokens: Option<Tokens>,
    token_config: Option<TokenConfig>,
    policies: Policies,
    /// Failed logins per address and user (cleared by that user's success).
    per_user: Throttle<(IpAddr, String)>,
    /// Failed logins per address (only time clears it).
    per_address: Throttle<IpAddr>,
}

/// Why the configured files could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

impl Auth {
    /// Load the files `auth` names; `None` when no authentication is configured.
    pub fn load(auth: &AuthConfig) -> Result<Option<Auth>, LoadError> {
        if !auth.enabled() {
            return Ok(None);
        }
        auth.validate().map_err(|e| LoadError(e.to_string()))?;
        let htpasswd = match &auth.htpasswd {
            Some(h) => {
                Some(Htpasswd::open(&h.path).map_err(|e| LoadError(format!("auth.htpasswd.path: {e}")))?)
            }
            None => None,
        };
        let tokens = match &auth.token {
            Some(t) => Some(Tokens::load(t).map_err(LoadError)?),
            None => None,
        };
        Ok(Some(Auth {
            htpasswd,
            basic_realm: auth
                .htpasswd
                .as_ref()
                .map(|h| h.realm.clone())
                .unwrap_or_default(),
            tokens,
            token_config: auth.token.clone(),
            policies: Policies::new(auth.access.as_ref()).map_err(LoadError)?,
            per_user: Throttle::new(throttle::FREE),
            per_address: Throttle::new(throttle::FREE_PER_ADDRESS),
        }))
    }

    /// The path of the token endpoint this node serves, when it issues tokens.
    pub fn token_path(&self) -> Option<String> {
        let t = self.token_config.as_ref()?;
        if !self.tokens.as_ref()?.issues() {
            return None;
        }
        let after_scheme = t.realm.split_once("://")?.1;
        Some(
            after_scheme
                .find('/')
                .map_or("/".to_string(), |i| after_scheme[i..].to_string()),
        )
    }

    /// Check `user`'s password, slowing down guesses from an address: of one user's password,
    /// or of many users' passwords.
    async fn check_password(&self, user: &str, password: &str, peer: Option<IpAddr>) -> bool {
        let Some(h) = &self.htpasswd else { return false };
        // Bounded keys: a megabyte of user name costs no more memory than 64 characters.
        let key = peer.map(|ip| (ip, truncated(user).to_string()));
        if let Some(key) = &key {
            let wait = self.per_user.delay(key).max(self.per_address.delay(&key.0));
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let ok = h.verify(user, password).await;
        if let Some(key) = key {
            if ok {
                self.per_user.succeeded(&key);
            } else {
                tracing::info!(ip = %key.0, user = %key.1, "failed login");
                self.per_address.failed(key.0);
                self.per_user.failed(key);
            }
        }
        ok
    }

    /// Who the caller is, from its `Authorization` header (`None`: anonymous). Bad credentials
    /// are refused even where anonymous callers would be allowed.
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<IpAddr>,
    ) -> Result<Identity, Refusal> {
        let Some(value) = authorization else {
            return Ok(Identity::Anonymous);
        };
        match header::parse(value) {
            Some(Credentials::Basic { user, password }) if self.htpasswd.is_some() => {
                if self.check_password(&user, &password, peer).await {
                    Ok(Identity::User(user))
                } else {
                    Err(self.challenge(None, Some("invalid_token")))
                }
            }
            Some(Credentials::Bearer(token)) if self.tokens.is_some() => {
                match self.tokens.as_ref().expect("checked").verify(token) {
                    Ok(v) => Ok(Identity::Token(v)),
                    Err(e) => {
                        tracing::debug!(error = %e, "token refused");
                        Err(self.challenge(None, Some("invalid_token")))
                    }
                }
            }
            _ => Err(self.challenge(None, Some("invalid_request"))),
        }
    }

    /// Whether `id` may do `action` on `repo`.
    pub fn allows(&self, id: &Identity, repo: &str, action: Action) -> bool {
        match id {
            Identity::Anonymous => self.policies.allows(Who::Anonymous, repo, action),
            Identity::User(u) => self.policies.allows(Who::User(u), repo, action),
            // A token grants what its access claim says, and public repositories stay public.
            Identity::Token(t) => {
                t.access.iter().any(|a| a.grants(repo, action))
                    || self.policies.allows(Who::Anonymous, repo, action)
            }
        }
    }

    /// Whether `repo` appears in `id`'s catalog: the repositories it may pull, or all of them
    /// for an external token granted the catalog (its token server decided).
    pub fn may_pull(&self, id: &Identity, repo: &str) -> bool {
        match id {
            Identity::Token(t) if t.own => self.policies.allows(Who::User(&t.subject), repo, Action::Pull),
            Identity::Token(t) => {
                t.access.iter().any(|a| a.grants_catalog()) || self.allows(id, repo, Action::Pull)
            }
            _ => self.allows(id, repo, Action::Pull),
        }
    }

    /// Whether `id` may see how the cluster runs (members, addresses, the IPFS backend's
    /// failures): an administrator (`auth.access.admins`; any user when there are no policies),
    /// logged in as a user. Tokens name no administrator.
    pub fn is_admin(&self, id: &Identity) -> bool {
        match id {
            Identity::User(u) => self.policies.is_admin(Who::User(u)),
            _ => false,
        }
    }

    /// Whether `id` may do what a request needs; the refusal says how to answer.
    pub fn authorize(&self, id: &Identity, need: Need<'_>) -> Result<(), Refusal> {
        let ok = match (need, id) {
            (Need::Base, Identity::Anonymous) => false,
            (Need::Base, _) => true,
            (Need::Catalog, Identity::User(u)) => self.policies.may_list(Who::User(u)),
            (Need::Catalog, Identity::Token(t)) => t.access.iter().any(|a| a.grants_catalog()),
            (Need::Catalog, Identity::Anonymous) => false,
            (Need::Repository(repo, actions), id) => actions.iter().all(|a| self.allows(id, repo, *a)),
        };
        if ok {
            return Ok(());
        }
        let scope = match need {
            Need::Base => None,
            Need::Catalog => Some("registry:catalog:*".to_string()),
            Need::Repository(repo, actions) => Some(scope(repo, actions)),
        };
        match id {
            Identity::Anonymous => Err(self.challenge(scope.as_deref(), None)),
            // Basic users cannot get more by asking again.
            Identity::User(_) if self.tokens.is_none() => Err(Refusal::Denied),
            // A token, or a user who can ask the token endpoint: ask for the scope.
            _ => Err(self.challenge(scope.as_deref(), Some("insufficient_scope"))),
        }
    }

    /// The `WWW-Authenticate` value of a refusal.
    fn challenge(&self, scope: Option<&str>, error: Option<&str>) -> Refusal {
        let value = match &self.token_config {
            Some(t) => {
                let mut v = format!("Bearer realm=\"{}\",service=\"{}\"", t.realm, t.service);
                if let Some(s) = scope {
                    v.push_str(&format!(",scope=\"{s}\""));
                }
                if let Some(e) = error {
                    v.push_str(&format!(",error=\"{e}\""));
                }
                v
            }
            None => format!("Basic realm=\"{}\"", self.basic_realm),
        };
        Refusal::Unauthorized(value)
    }

    /// The token endpoint: a token for the caller (`Basic` credentials, or anonymous) holding
    /// the requested scopes it is granted, and nothing more. Scopes are Docker's
    /// `repository:<name>:<actions>` and `registry:catalog:*`, several per value separated by
    /// spaces.
    pub async fn issue(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<IpAddr>,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Issued, Refusal> {
        let (Some(tokens), Some(cfg)) = (&self.tokens, &self.token_config) else {
            return Err(Refusal::BadRequest("this registry issues no tokens"));
        };
        if service.is_some_and(|s| s != cfg.service) {
            return Err(Refusal::BadRequest("unknown service"));
        }
        let id = match authorization.map(header::parse) {
            None => Identity::Anonymous,
            Some(Some(Credentials::Basic { user, password })) => {
                if !self.check_password(&user, &password, peer).await {
                    return Err(self
                        .challenge(None, Some("invalid_token"))
                        .basic(&self.basic_realm));
                }
                Identity::User(user)
            }
            Some(_) => {
                return Err(self
                    .challenge(None, Some("invalid_request"))
                    .basic(&self.basic_realm));
            }
        };
        let who = match &id {
            Identity::User(u) => Who::User(u),
            _ => Who::Anonymous,
        };
        let mut access: Vec<ResourceActions> = Vec::new();
        for s in scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter(|s| !s.is_empty())
            .take(MAX_SCOPES)
        {
            let Some((kind, rest)) = s.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let granted: Vec<String> = match kind {
                "registry" if name == "catalog" && self.policies.may_list(who) => vec!["*".into()],
                "repository" => {
                    let mut wanted: Vec<Action> = if actions.split(',').any(|a| a == "*") {
                        vec![Action::Pull, Action::Push, Action::Delete]
                    } else {
                        actions.split(',').filter_map(Action::parse).collect()
                    };
                    wanted.sort();
                    wanted.dedup();
                    wanted
                        .into_iter()
                        .filter(|a| self.policies.allows(who, name, *a))
                        .map(|a| a.as_str().to_string())
                        .collect()
                }
                _ => Vec::new(),
            };
            if !granted.is_empty() {
                access.push(ResourceActions {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    actions: granted,
                });
            }
        }
        let subject = match &id {
            Identity::User(u) => u.as_str(),
            _ => "",
        };
        tokens
            .issue(subject, access)
            .ok_or(Refusal::BadRequest("token signing failed"))
    }
}

/// Scopes looked at per token request, at most.
const MAX_SCOPES: usize = 32;

impl Refusal {
    /// The token endpoint asks for `Basic` credentials, not for a token.
    fn basic(self, realm: &str) -> Refusal {
        match self {
            Refusal::Unauthorized(_) => Refusal::Unauthorized(format!("Basic realm=\"{realm}\"")),
            other => other,
        }
    }
}

/// The scope a request on `repo` needs, as Docker's clients ask for it.
pub fn scope(repo: &str, actions: &[Action]) -> String {
    let names: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
    format!("repository:{repo}:{}", names.join(","))
}

/// A user name as logged: at most 64 characters.
fn truncated(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
