//! Real servers and clients on 127.0.0.1 for the scenario tests: an origin API and an auth API
//! that record what reached them, a gateway started from a TOML config, and a small client.

#![allow(dead_code, unused_imports)] // each test file uses a different part

pub mod client;
pub mod config;
pub mod h2_frames;
pub mod process;
pub mod redis;
pub mod servers;
pub mod tls;
pub mod wasmtime_serve;

pub use client::{request, send};
pub use config::GatewayConfig;
pub use servers::{AuthApi, Origin};

use std::sync::Once;

/// Start keygate in this process from a config; `{origin:NAME}`-style placeholders are the
/// callers' business (they format the TOML with the servers' addresses).
pub async fn start_gateway(toml: &str) -> keygate::RunningGateway {
    start_gateway_with(toml, |_| {}).await
}

/// [`start_gateway`] with a last change to the parsed config.
pub async fn start_gateway_with(
    toml: &str,
    change: impl FnOnce(&mut keygate_policy::Config),
) -> keygate::RunningGateway {
    init_logging();
    let mut config = keygate::config::parse(toml, None).expect("test config is valid");
    change(&mut config);
    if config.guest.cache_dir.is_none() {
        config.guest.cache_dir = Some(cache_dir());
    }
    keygate::start(config).await.expect("gateway starts")
}

/// One precompiled-component cache per test binary: each component compiles once, and the
/// user's own cache is left alone.
pub fn cache_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
        .join("precompiled")
}

pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KEYGATE_TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// [`GatewayConfig::basic`] as TOML.
pub fn basic_config(origin: &Origin, auth: &AuthApi) -> String {
    GatewayConfig::basic(origin, auth).to_string()
}

/// [`basic_config`] with an admin listener on an ephemeral loopback port.
pub fn basic_config_with_admin(origin: &Origin, auth: &AuthApi) -> String {
    GatewayConfig::basic(origin, auth).admin().to_string()
}
