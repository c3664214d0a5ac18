//! keygate: an API-key gateway whose auth and routing policy is a portable WASI 0.2 component.
//!
//! The host (this crate) owns what outlives a request: listeners, the outgoing connection
//! pool, the key cache, the compiled component, metrics. The guest owns every policy
//! decision. See DESIGN.md in the repository's shared notes and the README.

pub mod access_log;
pub mod admin;
pub mod allocator;
pub mod capabilities;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod export;
pub mod guest_log;
pub mod http_util;
pub mod import_kong;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod request_record;
pub mod responses;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod watch;

use anyhow::Context;
use cluster::Cluster;
use keygate_policy::Config;
use runtime::Gateway;
use runtime::reload::Reloader;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A gateway serving on its listeners, until [`RunningGateway::shutdown`].
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    pub reloader: Arc<Reloader>,
    requests: server::RequestThreads,
    admin: Option<JoinHandle<()>>,
    _watch: Option<watch::FileWatch>,
}

/// Serve a configuration given in memory (reloads re-read only the component file).
pub async fn start(config: Config) -> anyhow::Result<RunningGateway> {
    start_with(config, None, None).await
}

/// Serve the configuration in `path`, reloading when it or the component file changes.
pub async fn start_from_file(path: &Path) -> anyhow::Result<RunningGateway> {
    start_from_file_with(path, None).await
}

/// [`start_from_file`], with the access log going to `access_log` whatever `[log]
/// access_file` says (`keygate serve --access-log`).
pub async fn start_from_file_with(
    path: &Path,
    access_log: Option<PathBuf>,
) -> anyhow::Result<RunningGateway> {
    let config = config::load(path)?;
    start_with(config, Some(path.to_path_buf()), access_log).await
}

async fn start_with(
    config: Config,
    config_path: Option<PathBuf>,
    access_log: Option<PathBuf>,
) -> anyhow::Result<RunningGateway> {
    let listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let admin_listener = match config.server.admin_listen {
        Some(admin) => Some(
            TcpListener::bind(admin)
                .await
                .with_context(|| format!("binding server.admin_listen {admin}"))?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("reading the admin address")?;
    let listener_settings = config.server.clone();
    let admin_token = config.server.admin_token.clone();
    let cluster_redis = config.cluster.redis.clone();
    let watched: Vec<PathBuf> = config_path
        .iter()
        .cloned()
        .chain(config.guest.component.clone())
        .collect();
    let gateway =
        tokio::task::spawn_blocking(move || Gateway::new(config, addr.port(), access_log))
            .await
            .context("compiling the guest component")??;
    let cluster = cluster_redis
        .map(|url| Cluster::start(&url, gateway.key_cache_handle()))
        .transpose()?;
    let reloader = Arc::new(Reloader::new(Arc::clone(&gateway), config_path));
    let watch = if watched.is_empty() {
        None
    } else {
        Some(watch::watch(Arc::clone(&reloader), &watched)?)
    };
    let requests =
        server::RequestThreads::start(listener, Arc::clone(&gateway), &listener_settings)
            .context("starting the request threads")?;
    let admin = admin_listener.map(|listener| {
        let admin = Arc::new(admin::Admin {
            gateway: Arc::clone(&gateway),
            reloader: Arc::clone(&reloader),
            token: admin_token,
            cluster: cluster.clone(),
        });
        tokio::spawn(admin::serve(listener, admin))
    });
    tracing::info!(%addr, admin = ?admin_addr, workers = requests.workers(), "keygate is serving");
    Ok(RunningGateway {
        addr,
        admin_addr,
        gateway,
        reloader,
        requests,
        admin,
        _watch: watch,
    })
}

impl RunningGateway {
    /// Stop accepting, let in-flight requests finish (up to `server.drain_timeout`).
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        tracing::info!("no longer accepting connections; draining in-flight requests");
        self.requests.stop().await;
        tracing::info!("all request threads drained");
        if let Some(admin) = self.admin {
            admin.abort();
        }
    }
}
