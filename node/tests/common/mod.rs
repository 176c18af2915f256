//! In-process test harness: a real node (Raft member, stores, upload actors) in a temporary
//! data directory, served through actix-web's test service.

#![allow(dead_code)]

use actix_web::web;
use ipcr_node::api::{ApiState, HttpSettings};
use ipcr_node::config::{Config, FilesystemConfig};
use ipcr_node::server::{self, NodeParts};

/// A node running in this process.
pub struct TestNode {
    /// The API state handed to the app.
    pub state: web::Data<ApiState>,
    /// The node's services.
    pub parts: NodeParts,
    /// Its configuration.
    pub config: Config,
    /// The data directory (removed on drop).
    pub dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
}

/// The configuration tests start from: delete enabled, quiet logs, fast Raft timing.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.storage.delete.enabled = true;
    c.log.accesslog.disabled = true;
    c.http.addr = "127.0.0.1:0".into();
    c.cluster.heartbeat = ipcr_node::config::GoDuration(std::time::Duration::from_millis(100));
    c.cluster.election_timeout = ipcr_node::config::GoDuration(std::time::Duration::from_millis(300));
    c
}

impl TestNode {
    /// Start a node with `config` in a fresh temporary directory. Call inside an actix
    /// System (`#[actix_web::test]`).
    pub async fn start(config: Config) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(config, dir).await
    }

    /// Start a node on an existing data directory (to test restarts).
    pub async fn start_in(mut config: Config, dir: tempfile::TempDir) -> TestNode {
        config.storage.filesystem = Some(FilesystemConfig {
            rootdirectory: dir.path().to_path_buf(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("raft runtime");
        let arbiter = actix::Arbiter::new().handle();
        let parts = server::start(&config, rt.handle().clone(), arbiter)
            .await
            .expect("node starts");
        let state = web::Data::new(ApiState {
            registry: parts.registry.clone(),
            health: parts.health.clone(),
        });
        TestNode {
            state,
            parts,
            config,
            dir,
            rt: Some(rt),
        }
    }

    /// The app to hand to `actix_web::test::init_service`.
    pub fn app(
        &self,
    ) -> actix_web::App<
        impl actix_web::dev::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody + use<>>,
            Error = actix_web::Error,
            InitError = (),
        > + use<>,
    > {
        ipcr_node::api::app(self.state.clone(), HttpSettings::from_config(&self.config))
    }

    /// Stop the node and hand back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.parts.raft.shutdown().await;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
