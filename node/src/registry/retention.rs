//! Tag retention (`storage.maintenance.gc.retention`): which tags of a repository a collection
//! removes.

use ipcr_auth::policy::Pattern;
use ipcr_proto::gc::RetentionPolicy;
use regex::Regex;

/// One compiled policy.
struct Compiled {
    repositories: Vec<Pattern>,
    keep_newest: Option<u32>,
    keep_tags: Vec<Regex>,
    drop_older_than_ms: Option<u64>,
}

/// The compiled policies, first match per repository.
pub struct Retention(Vec<Compiled>);

impl Retention {
    /// Compile the policies, or say which one is wrong and why.
    pub fn compile(policies: &[RetentionPolicy]) -> Result<Retention, String> {
        let mut out = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            let repositories = p
                .repositories
                .iter()
                .map(|g| Pattern::new(g))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("policies[{i}].repositories: {e}"))?;
            let keep_tags = p
                .keep_tags
                .iter()
                .map(|t| Regex::new(&format!("^(?:{t})$")).map_err(|e| format!("`{t}`: {e}")))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("policies[{i}].keep-tags: {e}"))?;
            out.push(Compiled {
                repositories,
                keep_newest: p.keep_newest,
                keep_tags,
                drop_older_than_ms: p.drop_older_than_ms,
            });
        }
        Ok(Retention(out))
    }

    /// The tags of `repo` to remove, given every tag with when it was pushed, at `now_ms`.
    /// Answers indexes into `tags`.
    pub fn expired(&self, repo: &str, tags: &[(&str, u64)], now_ms: u64) -> Vec<usize> {
        let Some(p) = self
            .0
            .iter()
            .find(|p| p.repositories.iter().any(|g| g.matches(repo)))
        else {
            return Vec::new();
        };
        // Newest first; equal times by name, so that the choice is the same on every run.
        let mut order: Vec<usize> = (0..tags.len()).collect();
        order.sort_by(|&a, &b| tags[b].1.cmp(&tags[a].1).then(tags[a].0.cmp(tags[b].0)));
        let mut out = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            let (tag, pushed) = tags[i];
            let newest = p.keep_newest.is_some_and(|n| rank < n as usize);
            let pinned = p.keep_tags.iter().any(|r| r.is_match(tag));
            let young = p
                .drop_older_than_ms
                .is_some_and(|d| now_ms.saturating_sub(pushed) < d);
            if !(newest || pinned || young) {
                out.push(i);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keep_newest: Option<u32>, keep_tags: &[&str], drop_older_than_ms: Option<u64>) -> Retention {
        Retention::compile(&[RetentionPolicy {
            repositories: vec!["ci/**".into()],
            keep_newest,
            keep_tags: keep_tags.iter().map(|s| s.to_string()).collect(),
            drop_older_than_ms,
        }])
        .unwrap()
    }

    const TAGS: [(&str, u64); 5] = [("a", 10), ("b", 50), ("v1", 20), ("c", 40), ("d", 30)];

    #[test]
    fn keeps_the_newest_the_matching_and_the_young() {
        // Newest two are b (50) and c (40); v1 matches; everything else goes.
        assert_eq!(
            policy(Some(2), &["v[0-9]+"], None).expired("ci/app", &TAGS, 100),
            vec![0, 4]
        );
        // Only tags pushed more than 65 ms before 100 (a at 10, v1 at 20, d at 30) may go.
        assert_eq!(
            policy(None, &[], Some(65)).expired("ci/app", &TAGS, 100),
            vec![0, 2, 4]
        );
        // Both: old and not among the newest three.
        assert_eq!(
            policy(Some(3), &[], Some(65)).expired("ci/app", &TAGS, 100),
            vec![0, 2]
        );
    }

    #[test]
    fn patterns_match_whole_tags_and_repositories_by_glob() {
        let r = policy(Some(0), &["v1"], None);
        assert_eq!(
            r.expired("ci/app", &[("v1", 1), ("v10", 1), ("xv1", 1)], 5),
            vec![1, 2]
        );
        assert!(r.expired("prod/app", &TAGS, 100).is_empty());
        assert!(r.expired("ci", &TAGS, 100).is_empty());
    }

    #[test]
    fn bad_patterns_are_named() {
        let bad = |repos: &str, tags: &str| {
            Retention::compile(&[RetentionPolicy {
                repositories: vec![repos.into()],
                keep_tags: vec![tags.into()],
                ..Default::default()
            }])
            .err()
            .unwrap()
        };
        assert!(bad("ci/[", "x").contains("policies[0].repositories"));
        assert!(bad("ci/*", "(").contains("policies[0].keep-tags"));
    }
}
