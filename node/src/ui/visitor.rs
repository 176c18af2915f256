//! Who is looking at the page, and what they may see: the API's access control asked the
//! same questions a registry client's requests ask.
//!
//! With `auth:` configured, every page needs a logged-in visitor: the credentials are checked
//! exactly as `GET /v2/` checks them ([`crate::api::access::check`]: the same htpasswd users,
//! tokens, and throttling of failed logins), and a visitor without them gets `401` with
//! `WWW-Authenticate: Basic realm="IPCR"`, so that a browser asks for a user and password.
//! A visitor sees the repositories `/v2/_catalog` would list to them ([`ipcr_auth::Auth::may_pull`])
//! and may pull from (the same answer for a user or IPCR's own token; an external token granted
//! the catalog lists everything but pulls only what it grants); the cluster and IPFS pages
//! (members and their addresses, pin failures) are for administrators
//! ([`ipcr_auth::Auth::is_admin`]: users in `auth.access.admins`, or every user when there are
//! no policies).

use std::sync::Arc;

use actix_web::HttpRequest;
use ipcr_auth::{Action, Auth, Identity};

use crate::api::ApiState;
use crate::api::router::Endpoint;

/// The `WWW-Authenticate` challenge that makes a browser ask for a user and password.
pub const CHALLENGE: &str = "Basic realm=\"IPCR\"";

/// A visitor the API's access control let in.
pub struct Visitor {
    /// `None`: no access control configured, everything is open.
    gate: Option<(Arc<Auth>, Identity)>,
}

impl Visitor {
    /// Check the request's credentials; `None` when they are missing or wrong (answer `401`).
    pub async fn identify(req: &HttpRequest, state: &ApiState) -> Option<Visitor> {
        let Some(auth) = &state.auth else {
            return Some(Visitor { gate: None });
        };
        // `/v2/`'s check: authenticated, whoever it is.
        let id = crate::api::access::check(req, auth, &mut Endpoint::Base)
            .await
            .ok()?;
        Some(Visitor {
            gate: Some((auth.clone(), id)),
        })
    }

    /// The logged-in user's name, for the page header.
    pub fn name(&self) -> Option<&str> {
        match &self.gate {
            Some((_, Identity::User(u))) => Some(u),
            Some((_, Identity::Token(t))) if !t.subject.is_empty() => Some(&t.subject),
            _ => None,
        }
    }

    /// Whether the visitor sees `repo`: in the repository list (their `/v2/_catalog` lists it)
    /// and on its pages (they may pull from it). Both, so that every listed repository opens.
    pub fn sees(&self, repo: &str) -> bool {
        self.gate
            .as_ref()
            .is_none_or(|(auth, id)| auth.may_pull(id, repo) && auth.allows(id, repo, Action::Pull))
    }

    /// Whether the visitor may see the cluster's and the IPFS backend's state.
    pub fn may_operate(&self) -> bool {
        self.gate.as_ref().is_none_or(|(auth, id)| auth.is_admin(id))
    }
}
