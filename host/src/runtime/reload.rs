//! Hot swap: a new component and/or configuration replaces the running one without a restart
//! and without failing a request. Everything that can fail happens before the swap: reading
//! and validating the config, compiling and link-checking the component (off the request
//! path), and a trial request through the new pair. Only then is it activated, atomically;
//! in-flight requests finish on the version they started with.

use super::Gateway;
use super::component::{GuestSource, wasm_sha256};
use keygate_policy::Config;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Reloader {
    gateway: Arc<Gateway>,
    /// The file the configuration is re-read from; `None` keeps the current configuration
    /// and reloads only the component.
    config_path: Option<PathBuf>,
    /// One reload at a time: triggers that arrive together are applied in turn.
    running: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
    /// The TLS listener's certificate, re-read by every reload; `None` without a TLS listener.
    certificates: Option<Arc<crate::server::tls::Certificates>>,
}

/// What `GET /admin/status` reports about reloads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub reloads: u64,
    pub rejected: u64,
    pub last_trigger: Option<String>,
    pub last_attempt_unix: Option<u64>,
    pub last_duration_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// What a successful reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub component_sha256: String,
    pub component_changed: bool,
    pub config_revision: String,
    pub config_changed: bool,
    pub key_cache_flushed: bool,
    pub trial_status: u16,
    /// The TLS listener's certificate and key were re-read; new connections present them.
    pub certificate_reloaded: bool,
    /// Changed settings that only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    pub fn new(gateway: Arc<Gateway>, config_path: Option<PathBuf>) -> Self {
        Self {
            gateway,
            config_path,
            running: tokio::sync::Mutex::new(()),
            status: Mutex::default(),
            certificates: None,
        }
    }

    /// Re-read the TLS listener's certificate and key on every reload; a pair that cannot
    /// serve refuses the reload.
    pub fn with_certificates(
        mut self,
        certificates: Option<Arc<crate::server::tls::Certificates>>,
    ) -> Self {
        self.certificates = certificates;
        self
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read the config (if from a file) and the component, and swap them in if they pass.
    /// On failure the running version keeps serving and the reason is logged and reported.
    pub async fn reload(&self, trigger: &str) -> anyhow::Result<ReloadReport> {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let result = self.try_reload().await;
        let elapsed = started.elapsed();
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_trigger = Some(trigger.to_string());
        status.last_attempt_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs());
        status.last_duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        match &result {
            Ok(report) => {
                status.reloads += 1;
                status.last_error = None;
                tracing::info!(
                    trigger,
                    component = %report.component_sha256,
                    revision = %report.config_revision,
                    component_changed = report.component_changed,
                    config_changed = report.config_changed,
                    key_cache_flushed = report.key_cache_flushed,
                    took = ?elapsed,
                    "reloaded"
                );
                if !report.needs_restart.is_empty() {
                    tracing::warn!(fields = ?report.needs_restart, "these changes take effect only after a restart");
                }
            }
            Err(err) => {
                status.rejected += 1;
                status.last_error = Some(format!("{err:#}"));
                tracing::error!(
                    trigger,
                    "reload rejected, the running version keeps serving: {err:#}"
                );
            }
        }
        result
    }

    async fn try_reload(&self) -> anyhow::Result<ReloadReport> {
        let current = self.gateway.active();
        let config = match &self.config_path {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || crate::config::load(&path)).await??
            }
            None => (*current.config).clone(),
        };
        let needs_restart = restart_only_changes(&current.config, &config);
        // Read (and checked) before anything is swapped: a broken pair refuses the reload.
        let certificate = match &self.certificates {
            Some(_) => {
                let settings = config.server.clone();
                tokio::task::spawn_blocking(move || {
                    crate::server::tls::Certificates::prepare(&settings)
                })
                .await??
            }
            None => None,
        };
        let source = GuestSource::from_config(config.guest.component.as_deref());
        let bytes = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || source.read()).await??
        };
        let sha256 = wasm_sha256(&bytes);
        let component_changed = sha256 != current.guest.sha256;
        let guest = if component_changed {
            let gateway = Arc::clone(&self.gateway);
            Arc::new(tokio::task::spawn_blocking(move || gateway.compile(&bytes, source)).await??)
        } else {
            Arc::clone(&current.guest)
        };
        let config = Arc::new(config);
        let trial_status = self
            .gateway
            .trial(Arc::clone(&guest), Arc::clone(&config))
            .await?;
        if trial_status == 500 {
            anyhow::bail!("the trial request got 500 from the new version (see the guest's log)");
        }
        let flush = current.config.auth_api != config.auth_api
            || current.config.key_auth != config.key_auth;
        self.gateway.activate(Arc::clone(&guest), config);
        let certificate_reloaded = match (&self.certificates, certificate) {
            (Some(certificates), Some(certificate)) => {
                certificates.install(certificate);
                true
            }
            _ => false,
        };
        if flush {
            // Verdicts were given under other rules or by another auth API.
            self.gateway.key_cache().clear();
        }
        let active = self.gateway.active();
        Ok(ReloadReport {
            component_sha256: active.guest.sha256.clone(),
            component_changed,
            config_revision: active.revision.clone(),
            config_changed: active.revision != current.revision,
            key_cache_flushed: flush,
            trial_status,
            certificate_reloaded,
            needs_restart,
        })
    }
}

/// Settings fixed when the process starts (listeners, pool sizes, engine limits).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    // The certificate and key are re-read by every reload; the listeners are bound at start.
    let restart_only = |server: &keygate_policy::Server| keygate_policy::Server {
        tls_cert: None,
        tls_key: None,
        tls_listen: None,
        ..server.clone()
    };
    check(
        "server.tls_listen",
        old.server.tls_listen != new.server.tls_listen,
    );
    check(
        "server",
        restart_only(&old.server) != restart_only(&new.server),
    );
    check(
        "guest.busy_timeout",
        old.guest.busy_timeout != new.guest.busy_timeout,
    );
    check(
        "guest.memory_limit_mb",
        old.guest.memory_limit_mb != new.guest.memory_limit_mb,
    );
    check(
        "guest.max_instances",
        old.guest.max_instances != new.guest.max_instances,
    );
    check(
        "guest.precompiled_cache / cache_dir",
        old.guest.precompiled_cache != new.guest.precompiled_cache
            || old.guest.cache_dir != new.guest.cache_dir,
    );
    let capacity = |c: &Config| c.auth_api.as_ref().map(|a| a.cache_capacity);
    check("auth_api.cache_capacity", capacity(old) != capacity(new));
    let in_flight = |c: &Config| c.auth_api.as_ref().map(|a| a.max_in_flight);
    check("auth_api.max_in_flight", in_flight(old) != in_flight(new));
    check("cluster", old.cluster != new.cluster);
    changed
}

/// How long file events must be quiet before a reload: editors and `cp` write in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
