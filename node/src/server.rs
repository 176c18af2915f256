//! Wiring a node together (data directory, identity, Raft member, stores, services) and
//! running its HTTP server and background jobs.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::ArbiterHandle;
use actix_web::{HttpServer, web};
use ipcr_proto::NodeId;
use rand::Rng;
use tokio::runtime::Handle;

use crate::api::cluster::ClusterApi;
use crate::api::{self, ApiState, HttpSettings};
use crate::backend::Backend;
use crate::backend::cache::{self, Cache};
use crate::backend::pinner::{self, Pinner};
use crate::cluster::Peers;
use crate::cluster::repair::Repair;
use crate::cluster::transfer::Transfers;
use crate::config::Config;
use crate::health::{self, Health};
use crate::raft::{Bootstrap, RaftNode};
use crate::registry::Registry;
use crate::registry::gc::{self, Collector, Janitor};
use crate::store::FsStore;
use crate::upload::Uploads;

/// The node's services, ready to serve.
#[derive(Clone)]
pub struct NodeParts {
    /// The Raft member.
    pub raft: RaftNode,
    /// The registry service.
    pub registry: Registry,
    /// Backend health.
    pub health: Health,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The secret of the cluster port.
    pub secret: String,
    /// This node's cluster URL, as peers reach it.
    pub advertise: String,
}

/// This node's Raft id: from the configuration, else from `<data>/node-id`, else a new random
/// id written there (ids are never reused, so a wiped node comes back as a new member).
pub fn node_id(config: &Config, data_dir: &Path) -> io::Result<NodeId> {
    let file = data_dir.join("node-id");
    if let Some(id) = config.cluster.id {
        return Ok(id);
    }
    match std::fs::read_to_string(&file) {
        Ok(s) => s.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a node id", file.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = rand::rng().random_range(1..(1u64 << 53));
            let tmp = data_dir.join("node-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &file)?;
            crate::store::fs::sync_dir(data_dir)?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Open the data directory and start the node's services. Raft runs on `raft_rt`; upload
/// session actors on `arbiter`.
pub async fn start(config: &Config, raft_rt: Handle, arbiter: ArbiterHandle) -> io::Result<NodeParts> {
    let data_dir = config.data_dir();
    std::fs::create_dir_all(&data_dir)?;
    let id = node_id(config, &data_dir)?;
    let store = FsStore::open(&data_dir)?;
    let advertise = config.cluster.advertise_url().map_err(io::Error::other)?;
    let secret = match &config.cluster.secret {
        Some(s) => s.clone(),
        None => {
            tracing::info!(
                "no cluster.secret configured: this node uses a random one, so no other node can join it"
            );
            uuid::Uuid::new_v4().simple().to_string()
        }
    };
    let bootstrap = if config.cluster.join.is_some() {
        Bootstrap::Join
    } else {
        Bootstrap::Alone
    };
    let raft = RaftNode::start(
        id,
        advertise.clone(),
        &data_dir,
        &config.cluster,
        secret.clone(),
        bootstrap,
        raft_rt,
    )
    .await?;
    let uploads = Uploads::new(
        raft.clone(),
        store.clone(),
        config.storage.replicas,
        config.storage.cid_links(),
        arbiter,
    );
    let mut registry = Registry::new(
        raft.clone(),
        store,
        uploads,
        config.storage.delete.enabled,
        config.storage.replicas,
    );
    let backend = Backend::from_config(&config.storage, raft.runtime().clone());
    if let Some(b) = &backend {
        tracing::info!(
            backend = b.name(),
            links = b.links(),
            "blobs go to IPFS once durable here"
        );
        registry = registry.with_backend(b.clone(), !config.storage.redirect.disable);
    }
    let health = Health::new(
        backend.as_ref().map(|b| b.name()),
        config.health.storagedriver.threshold,
    );
    tracing::info!(node = id, data = %data_dir.display(), "node started");
    Ok(NodeParts {
        raft,
        registry,
        health,
        data_dir,
        secret,
        advertise,
    })
}

/// How often actors of sessions that ended elsewhere are let go.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Purge abandoned upload sessions every `interval` (`storage.maintenance.uploadpurging`), and
/// sweep the actors of ended sessions every minute.
fn spawn_upload_maintenance(registry: Registry, config: &Config) {
    let uploads = registry.uploads().clone();
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            if let Err(e) = uploads.sweep() {
                tracing::warn!(error = %e, "upload actor sweep failed");
            }
        }
    });
    let p = config.storage.maintenance.uploadpurging.clone();
    if !p.enabled {
        return;
    }
    actix_web::rt::spawn(async move {
        loop {
            tokio::time::sleep(p.interval.0.max(Duration::from_secs(1))).await;
            match registry.uploads().purge(p.age.0, p.dryrun).await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "purged abandoned uploads"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "upload purge failed"),
            }
        }
    });
}

/// Run a node until the HTTP server stops (SIGINT/SIGTERM). Must be called inside an actix
/// `System`.
pub async fn run(config: Config, raft_rt: Handle) -> io::Result<()> {
    let arbiter = actix::Arbiter::new().handle();
    let parts = start(&config, raft_rt.clone(), arbiter).await?;
    {
        let _guard = raft_rt.enter();
        health::spawn_disk_probe(
            parts.health.clone(),
            parts.registry.store().dirs(),
            health::DISK_PROBE_INTERVAL,
        );
        if let Some(backend) = parts.registry.backend() {
            health::spawn_backend_probe(
                parts.health.clone(),
                backend.clone(),
                &config.health.storagedriver,
            );
        }
    }
    spawn_upload_maintenance(parts.registry.clone(), &config);
    let proxy = crate::proxy::Proxy::from_config(&config.proxy)
        .map_err(io::Error::other)?
        .map(std::sync::Arc::new);
    let auth = ipcr_auth::Auth::load(&config.auth)
        .map_err(io::Error::other)?
        .map(std::sync::Arc::new);
    if auth.is_none() {
        tracing::warn!("no auth configured: anyone who reaches the registry port may push and delete");
    }
    let state = web::Data::new(ApiState {
        registry: parts.registry.clone(),
        health: parts.health.clone(),
        body_timeout: config.http.bodytimeout.0,
        auth,
        proxy: proxy.clone(),
    });
    let settings = HttpSettings::from_config(&config);
    let http_metrics = settings.metrics.clone();
    let addr = config.http.socket_addr().map_err(io::Error::other)?;
    let mut server = HttpServer::new(move || api::app(state.clone(), settings.clone()))
        // A write buffer the size of one blob read lets actix reuse it for every chunk of a
        // pull instead of reallocating (and page-faulting) a buffer per chunk.
        .h1_write_buffer_size(crate::store::read::READ_CHUNK)
        // Signals are ours (`stop_on_signal`): leadership is handed off before the drain.
        .disable_signals()
        // Whole seconds (actix's unit), rounded up: `500ms` still drains.
        .shutdown_timeout(config.http.draintimeout.0.as_millis().div_ceil(1000) as u64);
    if let Some(n) = config.http.workers {
        server = server.workers(n);
    }
    let server = if config.http.tls.enabled() {
        let tls = crate::tls::registry_server(&config.http.tls).map_err(io::Error::other)?;
        tracing::info!("TLS on the registry port");
        server.bind_rustls_0_23(addr, tls)?
    } else {
        server.bind(addr)?
    };
    let server = server.run();
    actix_web::rt::spawn(stop_on_signal(
        server.handle(),
        parts.raft.clone(),
        parts.health.clone(),
    ));
    tracing::info!(%addr, "listening");
    let cluster_addr = config.cluster.socket_addr().map_err(io::Error::other)?;
    let repair = Repair::new(
        Peers::new(parts.raft.clone(), config.storage.replicas),
        Transfers::new(parts.raft.clone()),
        parts.registry.store().clone(),
    );
    spawn_repair(parts.raft.clone(), repair.clone());
    let pinner = parts.registry.backend().map(|b| {
        Pinner::new(
            parts.raft.clone(),
            b.clone(),
            parts.registry.store().clone(),
            Transfers::new(parts.raft.clone()),
        )
    });
    if let Some(p) = &pinner {
        pinner::spawn(p.clone());
        if let Some(limit) = config.storage.cache.maxsize {
            cache::spawn(Cache::new(
                parts.raft.clone(),
                parts.registry.store().clone(),
                p.backend().clone(),
                limit.as_u64(),
            ));
        }
    }
    let gc_config = config.storage.maintenance.gc.clone();
    let collector = Collector::new(parts.raft.clone(), gc_config.clone());
    gc::spawn_schedule(collector.clone());
    gc::spawn_janitor(Janitor::new(
        parts.raft.clone(),
        parts.registry.store().clone(),
        gc_config.grace.0,
    ));
    let cluster_state = web::Data::new(ClusterApi {
        node: parts.raft.clone(),
        registry: parts.registry.clone(),
        secret: parts.secret.clone(),
        transfers: Transfers::new(parts.raft.clone()),
        repair: repair.clone(),
        pinner,
        collector,
        proxy,
    });
    // The cluster port stays up until the registry server has finished its in-flight
    // requests: they may need the cluster (forwarded writes, read indexes, peer reads).
    let cluster_server = HttpServer::new(move || api::cluster::app(cluster_state.clone()))
        .workers(2)
        .disable_signals();
    // With `cluster.tls`, only peers with a certificate of the cluster's CA get in; plaintext
    // connections fail their handshake.
    let cluster_server = if config.cluster.tls.enabled() {
        let tls = crate::tls::cluster_server(&config.cluster.tls).map_err(io::Error::other)?;
        cluster_server.bind_rustls_0_23(cluster_addr, tls)?
    } else {
        cluster_server.bind(cluster_addr)?
    };
    let cluster_server = cluster_server.run();
    tracing::info!(addr = %cluster_addr, advertise = %parts.advertise, "cluster port listening");
    if let Some(target) = config.cluster.join.clone() {
        spawn_join(&parts, target);
    }
    let debug = match config.http.debug.socket_addr().map_err(io::Error::other)? {
        Some(debug_addr) => {
            let mut collectors = parts.raft.raft_metrics().collectors();
            collectors.extend(repair.collectors());
            if let Some(b) = parts.registry.backend() {
                collectors.extend(b.metrics().collectors());
            }
            if let Some(m) = &http_metrics {
                collectors.extend(m.collectors());
            }
            let exporter = web::Data::new(crate::metrics::Exporter::new(
                parts.registry.clone(),
                parts.health.clone(),
                collectors,
            ));
            let path = config
                .http
                .debug
                .metrics()
                .then(|| config.http.debug.prometheus.path.clone());
            let server = HttpServer::new(move || api::metrics::debug_app(exporter.clone(), path.clone()))
                .workers(1)
                .disable_signals()
                .bind(debug_addr)?
                .run();
            tracing::info!(addr = %debug_addr, metrics = config.http.debug.metrics(), "debug listener");
            let handle = server.handle();
            Some((handle, actix_web::rt::spawn(server)))
        }
        None => None,
    };
    let cluster_handle = cluster_server.handle();
    let cluster_task = actix_web::rt::spawn(cluster_server);
    let result = server.await;
    if let Some((handle, task)) = debug {
        handle.stop(true).await;
        let _ = task.await;
    }
    cluster_handle.stop(true).await;
    let _ = cluster_task.await;
    parts.raft.shutdown().await;
    result
}

/// On `SIGTERM` or `SIGINT`: report unready, hand leadership to a caught-up voter (writes
/// stall for one hand-off, not an election), then stop accepting connections and let the
/// requests in flight finish (`http.draintimeout`). A second signal stops at once.
async fn stop_on_signal(server: actix_web::dev::ServerHandle, raft: RaftNode, health: Health) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; the node stops only when killed");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: handing leadership over, then draining requests in flight");
    health.set_draining();
    let graceful = async {
        if !raft.hand_off(crate::raft::membership::HAND_OFF).await {
            tracing::warn!(
                "leadership not handed over; the others elect a leader after the election timeout"
            );
        }
        server.stop(true).await;
    };
    tokio::select! {
        () = graceful => {}
        _ = term.recv() => server.stop(false).await,
        _ = int.recv() => server.stop(false).await,
    }
}

/// How often the leader looks for under-replicated blobs.
const REPAIR_INTERVAL: Duration = Duration::from_secs(10);
/// Copies made per repair pass, at most.
const REPAIR_BATCH: usize = 200;

/// On the leader, give under-replicated blobs more copies every few seconds.
fn spawn_repair(node: RaftNode, repair: Repair) {
    node.runtime().clone().spawn(async move {
        loop {
            tokio::time::sleep(REPAIR_INTERVAL).await;
            if node.raft().is_leader() {
                repair.run_once(REPAIR_BATCH).await;
            }
        }
    });
}

/// A node with a join target that is not a member asks the cluster to add it, retrying until
/// a member answers (the cluster may still be starting). A node that already is a member skips;
/// a refusal that no retry can change (`422`: this node cannot be reached at its advertised
/// address, or did not catch up, or a leave cancelled the join) ends the attempts.
fn spawn_join(parts: &NodeParts, target: String) {
    let (node, addr) = (parts.raft.clone(), parts.advertise.clone());
    parts.raft.runtime().clone().spawn(async move {
        // A member skips; a node that was added once but is no member now (its join was
        // refused, cancelled, or it left) asks again.
        if node.members().iter().any(|(id, _, _)| *id == node.id()) {
            return;
        }
        let req = ipcr_proto::admin::JoinRequest { id: node.id(), addr };
        let url = format!("{}/cluster/join", target.trim_end_matches('/'));
        let mut pause = Duration::from_millis(200);
        loop {
            let sent = node
                .client()
                .http()
                .post(&url)
                .header("Authorization", node.client().bearer())
                .json(&req)
                .timeout(Duration::from_secs(600))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(%url, "joined the cluster");
                    return;
                }
                Ok(r) if r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY => {
                    let text = r.text().await.unwrap_or_default();
                    tracing::error!(%url, %text, "join refused; not retrying (fix the cause, then restart this node)");
                    return;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    tracing::warn!(%url, %status, %text, "join refused; retrying");
                }
                Err(e) => tracing::warn!(%url, error = %e, "join failed; retrying"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    });
}
