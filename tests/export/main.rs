//! `keygate export`, by subject: what it writes (`output`), the wasmtime flavour run for real on
//! `wasmtime serve` 48.0.8 (`wasmtime_serve`; the whole scenario suite runs there too, as
//! `scenarios_wasmtime_serve`), the Node.js and workerd flavours run by their `serve.sh`
//! (`js`; the suite runs there too, as `scenarios_node` and `scenarios_workerd`), the Spin
//! flavour checked against a world of what Spin 3.x provides (`spin_world`), and the key-cache
//! and counters adapters that stand in for keygate's own cache and counters on those hosts, run
//! in a test host of their own (`adapters`).

#[path = "../support/js_export.rs"]
#[allow(dead_code)]
mod js_export;
#[path = "../support/mod.rs"]
mod support;

mod adapters;
mod js;
mod output;
mod spin_world;
mod wasmtime_serve;

use std::path::{Path, PathBuf};
use support::{AuthApi, GatewayConfig, Origin, process};

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace root")
}

/// `keygate export --for TARGET --config CONFIG --out OUT`, the real binary.
pub fn run_export(target: &str, config: &Path, out: &Path) -> std::process::Output {
    process::run(&[
        "export",
        "--for",
        target,
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

/// [`run_export`] of `config_toml` into a folder of `dir`; panics with its output unless it
/// succeeds.
pub fn export(target: &str, config_toml: &str, dir: &Path) -> PathBuf {
    let config = dir.join("keygate.toml");
    std::fs::write(&config, config_toml).unwrap();
    let out = dir.join(format!("{target}-export"));
    let output = run_export(target, &config, &out);
    assert!(
        output.status.success(),
        "keygate export --for {target} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// `basic_config` plus a second service, "other" on `/other` → `other`'s `/v2`, and a static
/// consumer whose name is hard to quote in a shell script.
pub fn two_origin_config(origin: &Origin, other: &Origin, auth: &AuthApi) -> String {
    GatewayConfig::basic(origin, auth)
        .consumer(r#"o'brien "$HOME" `id`"#, None, &["quote-key"])
        .service("other", format_args!("http://{}/v2", other.addr))
        .route("name = \"other-route\"\npaths = [\"/other\"]")
        .to_string()
}
