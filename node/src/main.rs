//! `ipcr-node`: the one binary of IPCR.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ipcr_node::config::Config;

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
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config),
    }
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(path.as_deref(), std::env::vars()).context("loading configuration")?;
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
    raft_rt.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(())
}
