//! Per-repository policies (`auth.access`): which caller may pull, push or delete where.
//!
//! Evaluated for htpasswd users, anonymous callers, and the subjects of IPCR's own tokens.
//! The rules are the configuration's alone (no Raft), so any node answers while the cluster
//! has no leader.

use std::collections::{BTreeMap, BTreeSet};

use globset::{GlobBuilder, GlobMatcher};

use crate::Action;
use crate::config::AccessConfig;

/// A repository glob: `*` and `?` stay within one path segment, `**` spans segments.
#[derive(Clone, Debug)]
pub struct Pattern(GlobMatcher);

impl Pattern {
    /// Compile a glob, or say why it is not one.
    pub fn new(glob: &str) -> Result<Pattern, String> {
        GlobBuilder::new(glob)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map(|g| Pattern(g.compile_matcher()))
            .map_err(|e| format!("`{glob}` is not a glob: {}", e.kind()))
    }

    /// Whether `repo` matches.
    pub fn matches(&self, repo: &str) -> bool {
        self.0.is_match(repo)
    }
}

/// Who asks, for the policies.
#[derive(Clone, Copy, Debug)]
pub enum Who<'a> {
    /// No credentials.
    Anonymous,
    /// An authenticated user.
    User(&'a str),
}

struct Policy {
    repositories: Vec<Pattern>,
    users: BTreeSet<String>,
    anonymous: bool,
    actions: BTreeSet<Action>,
}

/// The compiled policies.
pub struct Policies {
    /// `None`: no `auth.access` (users may do everything, anonymous callers nothing).
    rules: Option<Rules>,
}

struct Rules {
    admins: BTreeSet<String>,
    policies: Vec<Policy>,
}

impl Policies {
    /// Compile `auth.access` (already validated).
    pub fn new(access: Option<&AccessConfig>) -> Result<Policies, String> {
        let Some(a) = access else {
            return Ok(Policies { rules: None });
        };
        let groups: &BTreeMap<String, Vec<String>> = &a.groups;
        let mut policies = Vec::new();
        for p in &a.policies {
            let mut users: BTreeSet<String> = p.users.iter().cloned().collect();
            for g in &p.groups {
                users.extend(groups.get(g).into_iter().flatten().cloned());
            }
            policies.push(Policy {
                repositories: p
                    .repositories
                    .iter()
                    .map(|g| Pattern::new(g))
                    .collect::<Result<_, _>>()?,
                users,
                anonymous: p.anonymous,
                actions: p.actions.iter().copied().collect(),
            });
        }
        Ok(Policies {
            rules: Some(Rules {
                admins: a.admins.iter().cloned().collect(),
                policies,
            }),
        })
    }

    /// Whether `who` may do `action` on `repo`.
    pub fn allows(&self, who: Who<'_>, repo: &str, action: Action) -> bool {
        let Some(rules) = &self.rules else {
            return matches!(who, Who::User(_));
        };
        if let Who::User(u) = who
            && rules.admins.contains(u)
        {
            return true;
        }
        rules.policies.iter().any(|p| {
            p.actions.contains(&action)
                && (p.anonymous || matches!(who, Who::User(u) if p.users.contains(u)))
                && p.repositories.iter().any(|r| r.matches(repo))
        })
    }

    /// Whether `who` is an administrator: a user in `auth.access.admins`, or any user when
    /// there are no policies (users may then do everything).
    pub fn is_admin(&self, who: Who<'_>) -> bool {
        match (&self.rules, who) {
            (None, Who::User(_)) => true,
            (Some(rules), Who::User(u)) => rules.admins.contains(u),
            _ => false,
        }
    }

    /// Whether `who` may list the catalog: any authenticated user (the list is filtered to
    /// what they may pull), not anonymous callers.
    pub fn may_list(&self, who: Who<'_>) -> bool {
        matches!(who, Who::User(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;

    fn policies() -> Policies {
        Policies::new(Some(&AccessConfig {
            admins: vec!["root".into()],
            groups: [("team-a".to_string(), vec!["bob".to_string(), "carol".to_string()])].into(),
            policies: vec![
                PolicyConfig {
                    repositories: vec!["team-a/**".into()],
                    groups: vec!["team-a".into()],
                    actions: vec![Action::Pull, Action::Push],
                    ..Default::default()
                },
                PolicyConfig {
                    repositories: vec!["library/*".into()],
                    users: vec!["dave".into()],
                    actions: vec![Action::Pull, Action::Push, Action::Delete],
                    ..Default::default()
                },
                PolicyConfig {
                    repositories: vec!["public/**".into()],
                    anonymous: true,
                    actions: vec![Action::Pull],
                    ..Default::default()
                },
            ],
        }))
        .unwrap()
    }

    #[test]
    fn administrators_are_the_listed_users_or_every_user_without_policies() {
        let p = policies();
        assert!(p.is_admin(Who::User("root")));
        assert!(!p.is_admin(Who::User("bob")));
        assert!(!p.is_admin(Who::Anonymous));
        let open = Policies::new(None).unwrap();
        assert!(open.is_admin(Who::User("anyone")));
        assert!(!open.is_admin(Who::Anonymous));
    }

    #[test]
    fn policies_grant_exactly_what_they_name() {
        let p = policies();
        use Action::*;
        use Who::*;
        assert!(p.allows(User("bob"), "team-a/app", Push));
        assert!(p.allows(User("carol"), "team-a/deep/app", Pull));
        assert!(!p.allows(User("bob"), "team-a/app", Delete));
        assert!(!p.allows(User("bob"), "team-b/app", Pull));
        assert!(
            !p.allows(User("bob"), "team-a", Pull),
            "`team-a/**` is below team-a"
        );
        assert!(p.allows(User("dave"), "library/alpine", Delete));
        assert!(
            !p.allows(User("dave"), "library/x/alpine", Pull),
            "`*` stays in one segment"
        );
        assert!(p.allows(Anonymous, "public/x", Pull));
        assert!(
            p.allows(User("bob"), "public/x", Pull),
            "public is public for users too"
        );
        assert!(!p.allows(Anonymous, "public/x", Push));
        assert!(!p.allows(Anonymous, "team-a/app", Pull));
        assert!(p.allows(User("root"), "anything/at/all", Delete));
        assert!(!p.allows(User("eve"), "team-a/app", Pull));
    }

    #[test]
    fn without_policies_users_may_do_everything_and_anonymous_nothing() {
        let p = Policies::new(None).unwrap();
        assert!(p.allows(Who::User("x"), "a/b", Action::Delete));
        assert!(!p.allows(Who::Anonymous, "a/b", Action::Pull));
        assert!(!p.may_list(Who::Anonymous));
    }
}
