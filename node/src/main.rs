//! `ipcr-node`: the one binary of IPCR. `serve` runs a node; `join`, `leave` and `status` are
//! the operator's tools, talking to nodes' cluster ports.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ipcr_node::config::Config;
use ipcr_proto::admin::{ClusterStatus, JoinRequest, LeaveRequest};

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
    fn status(&self, node: &str) -> anyhow::Result<ClusterStatus> {
        let url = format!("{}/cluster/status", node.trim_end_matches('/'));
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.secret)
            .send()
            .with_context(|| url.clone())?;
        if !resp.status().is_success() {
            bail!("{url}: {} {}", resp.status(), resp.text().unwrap_or_default());
        }
        Ok(resp.json()?)
    }

    fn post<T: serde::Serialize>(&self, node: &str, path: &str, body: &T) -> anyhow::Result<()> {
        let url = format!("{}{path}", node.trim_end_matches('/'));
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .json(body)
            .send()
            .with_context(|| url.clone())?;
        if !resp.status().is_success() {
            bail!("{url}: {} {}", resp.status(), resp.text().unwrap_or_default());
        }
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
