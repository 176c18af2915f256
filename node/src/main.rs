//! `ipcr-node`: the one binary of IPCR. `serve` runs a node; `join`, `leave`, `status` and
//! `gc` are the operator's tools, talking to nodes' cluster ports; `migrate` copies images
//! from another registry (ipcr-client does the work).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use reqwest::blocking::Response;
use std::io::{BufRead, IsTerminal};

use ipcr_node::config::{Config, GoDuration};
use ipcr_proto::admin::{ClusterStatus, JoinRequest, LeaveRequest};
use ipcr_proto::gc::{GcEvent, GcReport, GcRequest};

#[derive(Parser)]
#[command(
    name = "ipcr-node",
    version,
    about = "IPCR: a clustered OCI container registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node. Without a config file: a single node on :5005 with data in ./data.
    Serve {
        /// The seed's config.yml format; REGISTRY_* variables override any key.
        config: Option<PathBuf>,
        /// Cluster URL of any member to join (cluster.join), when this node has no Raft state.
        #[arg(long)]
        join: Option<String>,
    },
    /// Add a running node to a cluster: as learner, then, once caught up, as voter.
    Join {
        /// Cluster URL of any member of the cluster.
        member: String,
        /// Cluster URL of the node to add.
        #[arg(long)]
        node: String,
        #[command(flatten)]
        access: Access,
    },
    /// Remove a node from its cluster.
    Leave {
        /// Cluster URL of the node to remove.
        #[arg(long, default_value = "http://127.0.0.1:5006")]
        node: String,
        #[command(flatten)]
        access: Access,
    },
    /// Run one garbage collection now and print what it removed (or, with --dry-run, would).
    Gc {
        /// Cluster URL of the node to run it from (any member).
        #[arg(long, default_value = "http://127.0.0.1:5006")]
        node: String,
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete manifests no tag reaches (default: the node's
        /// storage.maintenance.gc.delete-untagged).
        #[arg(long)]
        delete_untagged: bool,
        /// Keep blobs uploaded and manifests pushed less than this long ago, e.g. 1h, 30m, 0s
        /// (default: the node's storage.maintenance.gc.grace).
        #[arg(long)]
        grace: Option<GoDuration>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: Access,
    },
    /// Copy every tag of a repository (or of a whole registry, --catalog) from another
    /// registry, digests unchanged: `ipcr-node migrate alpine 127.0.0.1:5005`.
    Migrate(ipcr_client::migrate::MigrateArgs),
    /// Show a node's view of the cluster: members, roles, leader, term, log and applied index.
    Status {
        /// Cluster URL of the node to ask.
        #[arg(long, default_value = "http://127.0.0.1:5006")]
        node: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        access: Access,
    },
}

/// How the operator's tools prove they may talk to the cluster port.
#[derive(Args)]
struct Access {
    /// The cluster secret (else REGISTRY_CLUSTER_SECRET, else cluster.secret of --config).
    #[arg(long, env = "REGISTRY_CLUSTER_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A node configuration file to read cluster.secret (and cluster.tls) from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The CA of the cluster port's certificates (cluster.tls.ca), for https:// node URLs.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// The client certificate the cluster port asks for with cluster.tls (any node's will do).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

impl Access {
    fn client(&self) -> anyhow::Result<Admin> {
        let config = match &self.config {
            Some(path) => Some(Config::load(Some(path), std::env::vars())?),
            None => None,
        };
        let secret = match (&self.secret, &config) {
            (Some(s), _) => s.clone(),
            (None, Some(c)) => c
                .cluster
                .secret
                .clone()
                .context("the configuration has no cluster.secret")?,
            (None, None) => bail!("give the cluster secret: --secret, REGISTRY_CLUSTER_SECRET or --config"),
        };
        let mut http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(900));
        // Flags first, else the node configuration's own cluster.tls.
        let tls = match (&self.cacert, config.as_ref().map(|c| &c.cluster.tls)) {
            (Some(ca), _) => {
                let identity = self.cert.as_deref().zip(self.key.as_deref());
                Some(ipcr_node::tls::client(
                    ca,
                    identity,
                    ["--cacert", "--cert", "--key"],
                )?)
            }
            (None, Some(t)) if t.enabled() => Some(ipcr_node::tls::cluster_client(t)?),
            _ => None,
        };
        // Without a CA the cluster port is plain HTTP: no system CA store is needed (a
        // container built FROM scratch has none).
        http = http.tls_backend_preconfigured(tls.unwrap_or_else(ipcr_node::tls::trust_nobody));
        Ok(Admin {
            http: http.build()?,
            secret,
        })
    }
}

struct Admin {
    http: reqwest::blocking::Client,
    secret: String,
}

impl Admin {
    /// Send `req` (to `url`) with the cluster secret; an answer other than 2xx is an error
    /// naming the URL, the status and the body.
    fn send(&self, url: &str, req: reqwest::blocking::RequestBuilder) -> anyhow::Result<Response> {
        let resp = req
            .bearer_auth(&self.secret)
            .send()
            .with_context(|| url.to_string())?;
        if !resp.status().is_success() {
            bail!("{url}: {} {}", resp.status(), resp.text().unwrap_or_default());
        }
        Ok(resp)
    }

    fn status(&self, node: &str) -> anyhow::Result<ClusterStatus> {
        let url = format!("{}/cluster/status", node.trim_end_matches('/'));
        Ok(self.send(&url, self.http.get(&url))?.json()?)
    }

    /// Run a collection on `node`, showing progress on `progress`.
    fn gc(
        &self,
        node: &str,
        req: &GcRequest,
        mut progress: impl FnMut(&str, u64, u64),
    ) -> anyhow::Result<GcReport> {
        let url = format!("{}/cluster/gc", node.trim_end_matches('/'));
        let resp = self.send(&url, self.http.post(&url).json(req))?;
        for line in std::io::BufReader::new(resp).lines() {
            let line = line.with_context(|| format!("{url}: the answer broke off"))?;
            match serde_json::from_str::<GcEvent>(&line).with_context(|| format!("{url}: {line}"))? {
                GcEvent::Progress { phase, done, total } => progress(&phase, done, total),
                GcEvent::Done(report) => return Ok(report),
                GcEvent::Failed(why) => bail!("garbage collection failed: {why}"),
            }
        }
        bail!("{url}: the answer ended without a report")
    }

    fn post<T: serde::Serialize>(&self, node: &str, path: &str, body: &T) -> anyhow::Result<()> {
        let url = format!("{}{path}", node.trim_end_matches('/'));
        self.send(&url, self.http.post(&url).json(body))?;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, join } => serve(config, join),
        Command::Join { member, node, access } => {
            let admin = access.client()?;
            let id = admin.status(&node)?.id;
            admin.post(
                &member,
                "/cluster/join",
                &JoinRequest {
                    id,
                    addr: node.clone(),
                },
            )?;
            println!("node {id} ({node}) joined");
            Ok(())
        }
        Command::Leave { node, access } => {
            let admin = access.client()?;
            let id = admin.status(&node)?.id;
            admin.post(&node, "/cluster/leave", &LeaveRequest { id })?;
            println!("node {id} ({node}) left the cluster");
            Ok(())
        }
        Command::Gc {
            node,
            dry_run,
            delete_untagged,
            grace,
            json,
            access,
        } => {
            let req = GcRequest {
                dry_run,
                delete_untagged: delete_untagged.then_some(true),
                grace_ms: grace.map(|g| g.0.as_millis() as u64),
            };
            let terminal = std::io::stderr().is_terminal();
            let report = access.client()?.gc(&node, &req, |phase, done, total| {
                if terminal {
                    eprint!("\r\x1b[2K{phase}: {done}/{total} steps");
                }
            })?;
            if terminal {
                eprint!("\r\x1b[2K");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", gc_table(&report));
            }
            Ok(())
        }
        Command::Migrate(args) => migrate(args),
        Command::Status { node, json, access } => {
            let status = access.client()?.status(&node)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", table(&status));
            }
            Ok(())
        }
    }
}

/// Run `ipcr-node migrate`; exits 1 when a tag failed, 130 on Ctrl-C (a second run goes on
/// from where this one stopped).
fn migrate(args: ipcr_client::migrate::MigrateArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("IPCR_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().context("starting a runtime")?;
    let summary = rt.block_on(async {
        tokio::select! {
            s = ipcr_client::migrate::run(args) => s.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    })?;
    let Some(summary) = summary else {
        eprintln!(
            "interrupted: tags are written only after all they reference; run the same command again to go on"
        );
        std::process::exit(130);
    };
    print!("{summary}");
    std::process::exit(summary.exit_code());
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The status as a human-readable table.
fn table(s: &ClusterStatus) -> String {
    let mut out = format!(
        "node {} is {}; leader {}; term {}; log {}; committed {}; applied {}; under-replicated blobs {}\n\n",
        s.id,
        s.state,
        opt(s.leader),
        s.term,
        opt(s.last_log_index),
        opt(s.committed),
        opt(s.applied),
        s.under_replicated_blobs,
    );
    out.push_str(&format!(
        "{:<18} {:<8} {:<8} {:<10} {}\n",
        "ID", "ROLE", "LEADER", "MATCHED", "ADDRESS"
    ));
    for m in &s.members {
        out.push_str(&format!(
            "{:<18} {:<8} {:<8} {:<10} {}\n",
            m.id,
            if m.voter { "voter" } else { "learner" },
            if s.leader == Some(m.id) { "*" } else { "" },
            opt(m.matched),
            m.addr
        ));
    }
    match &s.gc.last {
        Some(r) => out.push_str(&format!(
            "\nlast garbage collection: {} on node {}, took {:.1} s: {} blobs ({}) reclaimed, {} manifests, {} tags removed\n",
            ago(r.finished_ms),
            r.node,
            r.finished_ms.saturating_sub(r.started_ms) as f64 / 1000.0,
            r.tally.blobs_removed,
            human(r.tally.bytes_removed),
            r.totals.manifests,
            r.totals.tags,
        )),
        None => out.push_str("\nno garbage collection yet\n"),
    }
    if let Some(g) = &s.gc.running {
        out.push_str(&format!(
            "garbage collection {} running on node {} since {}\n",
            g.run,
            g.node,
            ago(g.started_ms)
        ));
    }
    if let Some(i) = &s.ipfs {
        out.push_str(&format!(
            "\n{} backend: {} pinned, {} pending, {} failed\n",
            i.backend, i.pinned, i.pending, i.failed
        ));
        for f in &i.failures {
            out.push_str(&format!(
                "  {} ({}): {} attempt(s), last: {}\n",
                f.digest, f.cid, f.attempts, f.reason
            ));
        }
    }
    out
}

/// Bytes for people: `1.5 GiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A collection's report as a table: per repository, then the totals.
fn gc_table(r: &GcReport) -> String {
    let verb = if r.options.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = format!(
        "{:<40} {:>6} {:>10} {:>8} {:>12}\n",
        "REPOSITORY", "TAGS", "MANIFESTS", "BLOBS", "BYTES"
    );
    for (repo, t) in &r.tally.repositories {
        out.push_str(&format!(
            "{:<40} {:>6} {:>10} {:>8} {:>12}\n",
            repo,
            t.tags,
            t.manifests,
            t.blobs,
            human(t.bytes)
        ));
    }
    let t = &r.tally;
    out.push_str(&format!(
        "\n{verb}: {} tags, {} manifests, {} blob links ({}); {} blobs left the cluster ({}, {} on the nodes' disks)",
        r.totals.tags,
        r.totals.manifests,
        r.totals.blobs,
        human(r.totals.bytes),
        t.blobs_removed,
        human(t.bytes_removed),
        human(t.disk_bytes_removed),
    ));
    if t.refused > 0 {
        out.push_str(&format!("; {} steps kept (changed since planned)", t.refused));
    }
    out.push_str(&format!(
        "\ntook {:.1} s (grace {} s{})\n",
        r.finished_ms.saturating_sub(r.started_ms) as f64 / 1000.0,
        r.options.grace_ms / 1000,
        if r.options.delete_untagged {
            ", untagged manifests deleted"
        } else {
            ""
        }
    ));
    out
}

/// How long ago a time (ms since the epoch) was.
fn ago(ms: u64) -> String {
    let secs = ipcr_node::raft::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..120 => format!("{secs} s ago"),
        120..7200 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

fn serve(path: Option<PathBuf>, join: Option<String>) -> anyhow::Result<()> {
    let mut config = Config::load(path.as_deref(), std::env::vars()).context("loading configuration")?;
    if join.is_some() {
        config.cluster.join = join;
        config.validate().context("checking configuration")?;
    }
    ipcr_node::logging::init(&config.log).map_err(anyhow::Error::msg)?;
    let raft_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("raft")
        .enable_all()
        .build()
        .context("starting the Raft runtime")?;
    let handle = raft_rt.handle().clone();
    actix_web::rt::System::new()
        .block_on(ipcr_node::server::run(config, handle))
        .context("running the node")?;
    raft_rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
