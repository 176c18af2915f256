//! `ipcr-node migrate`: copy every tag of a repository (or of every repository a registry
//! lists) from another registry into IPCR, or between any two registries. The original
//! project's `script/migrateimages alpine 127.0.0.1:5005`, grown up: whole indexes, digests
//! unchanged, referrers, resumable, retried, with progress.
//!
//! `plan` reads what to copy, `copy` copies it, `progress` reports it. The node's `main.rs`
//! parses [`MigrateArgs`] and calls [`run`].

pub mod copy;
pub mod plan;
pub mod progress;

use std::fmt;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::StreamExt as _;
use ipcr_proto::names::{Reference, RepoName};
use regex::Regex;

use crate::auth::{Credentials, docker_config_path, from_docker_config};
use crate::error::Error;
use crate::image::{Destination, RegistryAddr, Source};
use crate::registry::{Access, Registry};
use crate::retry::Retry;
use copy::{Copier, Pair, TagOutcome};
use plan::{Node, Planner, is_fallback_tag};
use progress::{Progress, human_bytes};

/// The command line of `ipcr-node migrate`; flag names follow skopeo's where it has one.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrateArgs {
    /// `[registry[:port]/]repository[:tag|@digest]`: Docker Hub when no registry is named
    /// (`alpine` is `library/alpine`), every tag when no tag is. With --catalog, a registry.
    pub source: String,
    /// `host[:port][/repository]`: the source's repository name when none is given (with
    /// --catalog, a prefix for every name).
    pub destination: String,
    /// Only the tags this regular expression matches (anywhere in the tag, as Go's
    /// MatchString: anchor it with ^...$).
    #[arg(long, value_name = "REGEX")]
    pub tags: Option<Regex>,
    /// Migrate every repository the source lists in /v2/_catalog.
    #[arg(long)]
    pub catalog: bool,
    /// Blob transfers (and tags worked on) at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// List what would be copied; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Credentials for the source (else those `docker login` stored for it).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub src_creds: Option<String>,
    /// Credentials for the destination (else those `docker login` stored for it).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub dest_creds: Option<String>,
    /// Verify the source's TLS certificate and use HTTPS (plain HTTP is only tried for
    /// loopback addresses); `--src-tls-verify=false` allows both for any host.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub src_tls_verify: bool,
    /// As --src-tls-verify, for the destination.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dest_tls_verify: bool,
    /// A directory of CA certificates (`*.crt`) trusted for the source, beside the system's.
    #[arg(long, value_name = "DIR")]
    pub src_cert_dir: Option<PathBuf>,
    /// As --src-cert-dir, for the destination.
    #[arg(long, value_name = "DIR")]
    pub dest_cert_dir: Option<PathBuf>,
    /// The Docker client config to read credentials from (default: $DOCKER_CONFIG/config.json,
    /// else ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Attempts of each request and blob copy before it counts as failed (429 and 5xx answers,
    /// broken connections), with exponential backoff or the server's Retry-After.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub retries: u32,
    /// Log lines instead of progress bars, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// A failure that stops the run before any tag is tried.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// An argument could not be read.
    #[error("{0}")]
    Usage(String),
    /// A registry could not be reached or listed.
    #[error(transparent)]
    Registry(#[from] Error),
}

/// How a run ended: what it copied, and each tag that failed with why.
#[derive(Debug, Default)]
pub struct Summary {
    /// Tags written.
    pub tags_copied: u64,
    /// Tags already identical at the destination.
    pub tags_up_to_date: u64,
    /// `repository:tag` and why it failed.
    pub failed: Vec<(String, String)>,
    /// Blobs streamed from the source (in a dry run: that would be).
    pub blobs_copied: u64,
    /// Blobs the destination had.
    pub blobs_present: u64,
    /// Blobs the destination mounted from another of its repositories.
    pub blobs_mounted: u64,
    /// Bytes streamed (in a dry run: bytes that would be).
    pub bytes: u64,
    /// Manifests written, referrers and fallback indexes included.
    pub manifests_written: u64,
    /// Referrers written.
    pub referrers_written: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Nothing was written.
    pub dry_run: bool,
}

impl Summary {
    /// The process's exit code: 0, or 1 when any tag failed.
    pub fn exit_code(&self) -> i32 {
        i32::from(!self.failed.is_empty())
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let verb = if self.dry_run { "would copy" } else { "copied" };
        writeln!(
            f,
            "{verb} {} tags, {} up to date, {} failed, in {secs:.1} s",
            self.tags_copied,
            self.tags_up_to_date,
            self.failed.len()
        )?;
        let rate = if secs > 0.0 && !self.dry_run {
            format!(", {}/s", human_bytes((self.bytes as f64 / secs) as u64))
        } else {
            String::new()
        };
        writeln!(
            f,
            "blobs: {} {verb} ({}{rate}), {} already there, {} mounted; manifests: {} written, {} of them referrers",
            self.blobs_copied,
            human_bytes(self.bytes),
            self.blobs_present,
            self.blobs_mounted,
            self.manifests_written,
            self.referrers_written
        )?;
        for (tag, why) in &self.failed {
            writeln!(f, "FAILED {tag}: {why}")?;
        }
        Ok(())
    }
}

/// The credentials for `registry`: the flag's, else `docker login`'s.
fn credentials(
    flag: &Option<String>,
    authfile: &Option<PathBuf>,
    registry: &RegistryAddr,
) -> Result<Option<Credentials>, MigrateError> {
    if let Some(c) = flag {
        return Credentials::parse(c)
            .map(Some)
            .map_err(|e| MigrateError::Usage(e.to_string()));
    }
    match authfile.clone().or_else(docker_config_path) {
        Some(path) => from_docker_config(&path, registry).map_err(|e| MigrateError::Usage(e.to_string())),
        None => Ok(None),
    }
}

/// One tag (or digest) to copy.
struct Job {
    pair: (RepoName, RepoName),
    tag: Option<String>,
    root: Arc<Node>,
}

impl Job {
    fn name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}:{t}", self.pair.0),
            None => format!("{}@{}", self.pair.0, self.root.manifest.digest),
        }
    }
}

/// Run a migration to its end: plan every repository, copy every tag, report. Tags that
/// fail are named in the summary; the run goes on with the others.
pub async fn run(args: MigrateArgs) -> Result<Summary, MigrateError> {
    let usage = |e: crate::image::ParseError| MigrateError::Usage(e.to_string());
    let dest = Destination::parse(&args.destination).map_err(usage)?;
    let (src_addr, source) = if args.catalog {
        let addr = RegistryAddr::parse(args.source.trim_start_matches("docker://"))
            .map_err(|e| MigrateError::Usage(format!("--catalog takes a registry as SOURCE: {e}")))?;
        (addr, None)
    } else {
        let s = Source::parse(&args.source).map_err(usage)?;
        (s.registry.clone(), Some(s))
    };
    let retry = Retry {
        attempts: args.retries,
        ..Retry::default()
    };
    let src_access = Access {
        creds: credentials(&args.src_creds, &args.authfile, &src_addr)?,
        tls_verify: args.src_tls_verify,
        cert_dir: args.src_cert_dir.clone(),
        retry: retry.clone(),
    };
    let dst_access = Access {
        creds: credentials(&args.dest_creds, &args.authfile, &dest.registry)?,
        tls_verify: args.dest_tls_verify,
        cert_dir: args.dest_cert_dir.clone(),
        retry: retry.clone(),
    };
    let src = Arc::new(Registry::connect(src_addr, src_access).await?);
    let dst = Arc::new(Registry::connect(dest.registry.clone(), dst_access).await?);

    let progress = Arc::new(Progress::new(
        std::io::stderr().is_terminal() && !args.no_progress,
    ));
    let mut summary = Summary {
        dry_run: args.dry_run,
        ..Summary::default()
    };
    let repos: Vec<(RepoName, Option<Reference>)> = match &source {
        Some(s) => vec![(s.repository.clone(), s.reference.clone())],
        None => src
            .catalog()
            .await?
            .into_iter()
            .filter_map(|r| match r.parse() {
                Ok(name) => Some((name, None)),
                Err(e) => {
                    summary.failed.push((r, format!("not a repository name: {e}")));
                    None
                }
            })
            .collect(),
    };
    let concurrency = usize::from(args.concurrency);
    let mut jobs = Vec::new();
    for (repo, reference) in repos {
        let dst_repo = dest.repository_for(&repo, args.catalog).map_err(usage)?;
        match plan_repo(&src, &repo, reference, args.tags.as_ref(), concurrency).await {
            Ok((found, failed)) => {
                summary.failed.extend(failed);
                jobs.extend(found.into_iter().map(|(tag, root)| Job {
                    pair: (repo.clone(), dst_repo.clone()),
                    tag,
                    root,
                }));
            }
            Err(e) => summary.failed.push((repo.to_string(), e.to_string())),
        }
    }
    let mut blobs = std::collections::BTreeMap::new();
    for j in &jobs {
        j.root.all_blobs(&mut blobs);
    }
    progress.set_totals(jobs.len() as u64, blobs.values().sum());
    progress.line(format!(
        "{} tags from {} to {}: {} blobs, {} in all",
        jobs.len(),
        src.addr(),
        dst.addr(),
        blobs.len(),
        human_bytes(blobs.values().sum())
    ));

    let copier = Copier::new(
        src.clone(),
        dst.clone(),
        concurrency,
        retry,
        args.dry_run,
        progress.clone(),
    );
    let outcomes: Vec<(String, Result<TagOutcome, String>)> = futures::stream::iter(&jobs)
        .map(|j| {
            let copier = &copier;
            let progress = &progress;
            async move {
                let pair = Pair {
                    src: &j.pair.0,
                    dst: &j.pair.1,
                };
                let r = copier.tag(pair, j.tag.as_deref(), &j.root).await;
                let said = match &r {
                    Ok(TagOutcome::Copied) if args.dry_run => "would be copied".to_string(),
                    Ok(TagOutcome::Copied) => "copied".to_string(),
                    Ok(TagOutcome::UpToDate) => "up to date".to_string(),
                    Err(e) => format!("FAILED: {e}"),
                };
                progress.tag_finished(&j.name(), &said);
                (j.name(), r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    progress.finish();
    for (name, r) in outcomes {
        match r {
            Ok(TagOutcome::Copied) => summary.tags_copied += 1,
            Ok(TagOutcome::UpToDate) => summary.tags_up_to_date += 1,
            Err(e) => summary.failed.push((name, e)),
        }
    }
    let stats = &progress.stats;
    summary.blobs_copied = stats.blobs_copied.load(Relaxed) + copier.missing_blobs();
    summary.blobs_present = stats.blobs_present.load(Relaxed);
    summary.blobs_mounted = stats.blobs_mounted.load(Relaxed);
    summary.bytes = stats.bytes_copied.load(Relaxed) + copier.missing_bytes();
    summary.manifests_written = stats.manifests_written.load(Relaxed);
    summary.referrers_written = stats.referrers_written.load(Relaxed);
    summary.elapsed = progress.elapsed();
    Ok(summary)
}

type Planned = (Vec<(Option<String>, Arc<Node>)>, Vec<(String, String)>);

/// The tags of `repo` to copy (every tag, the regex's, or the one named) with their trees,
/// and the tags whose manifests could not be read.
async fn plan_repo(
    src: &Registry,
    repo: &RepoName,
    reference: Option<Reference>,
    filter: Option<&Regex>,
    concurrency: usize,
) -> Result<Planned, Error> {
    let planner = Planner::new(src, repo);
    let references: Vec<(Option<String>, String)> = match reference {
        Some(Reference::Tag(t)) => vec![(Some(t.to_string()), t.to_string())],
        Some(Reference::Digest(d)) => vec![(None, d.to_string())],
        None => {
            let mut tags = src.tags(repo).await?;
            tags.retain(|t| !is_fallback_tag(t) && filter.is_none_or(|re| re.is_match(t)));
            tags.sort();
            tags.into_iter().map(|t| (Some(t.clone()), t)).collect()
        }
    };
    let results: Vec<_> = futures::stream::iter(references)
        .map(|(tag, reference)| {
            let planner = &planner;
            async move { (tag, reference.clone(), planner.tree(&reference).await) }
        })
        .buffered(concurrency.max(4))
        .collect()
        .await;
    let (mut found, mut failed) = (Vec::new(), Vec::new());
    for (tag, reference, r) in results {
        match r {
            Ok(root) => found.push((tag, root)),
            Err(e) => failed.push((format!("{repo}:{reference}"), e.to_string())),
        }
    }
    Ok((found, failed))
}
