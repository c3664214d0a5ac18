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
pub mod process_limits;
pub mod proxy;
pub mod request_record;
pub mod responses;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod tls_client;
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
    /// The TLS listener's address, when `[server] tls_listen` is set.
    pub tls_addr: Option<SocketAddr>,
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
    // Before the first descriptor is spent on a connection.
    process_limits::raise_open_files(config.server.max_connections);
    let listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let tls = match config.server.tls_listen {
        Some(tls_addr) => {
            let listener = std::net::TcpListener::bind(tls_addr)
                .with_context(|| format!("binding server.tls_listen {tls_addr}"))?;
            let certificates = server::tls::Certificates::for_settings(&config.server)?
                .context("server.tls_listen is set without a certificate")?;
            Some(server::TlsListener {
                listener,
                certificates,
            })
        }
        None => None,
    };
    let tls_addr = tls
        .as_ref()
        .map(|tls| tls.listener.local_addr())
        .transpose()
        .context("reading the TLS listen address")?;
    let certificates = tls.as_ref().map(|tls| Arc::clone(&tls.certificates));
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
        // A renewed certificate is picked up like an edited config (only with a config file:
        // the certificate's reload re-reads the paths the file names).
        .chain(
            [&config.server.tls_cert, &config.server.tls_key]
                .into_iter()
                .flatten()
                .filter(|_| config_path.is_some() && tls_addr.is_some())
                .cloned(),
        )
        .collect();
    let gateway =
        tokio::task::spawn_blocking(move || Gateway::new(config, addr.port(), access_log))
            .await
            .context("compiling the guest component")??;
    let cluster = cluster_redis
        .map(|url| Cluster::start(&url, gateway.key_cache_handle()))
        .transpose()?;
    let reloader =
        Arc::new(Reloader::new(Arc::clone(&gateway), config_path).with_certificates(certificates));
    let watch = if watched.is_empty() {
        None
    } else {
        Some(watch::watch(Arc::clone(&reloader), &watched)?)
    };
    let requests =
        server::RequestThreads::start(listener, tls, Arc::clone(&gateway), &listener_settings)
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
    tracing::info!(%addr, tls = ?tls_addr, admin = ?admin_addr, workers = requests.workers(), "keygate is serving");
    Ok(RunningGateway {
        addr,
        admin_addr,
        tls_addr,
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
