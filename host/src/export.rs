//! `keygate export`: the gateway component and what another wasi:http host needs to run it.
//!
//! The guest imports `keygate:gateway/key-cache`, which only keygate implements. For the other
//! hosts a small adapter component provides it: an in-instance map for `wasmtime serve`
//! (plugged in here, with wac-graph, so `gateway.wasm` imports only WASI), and one on
//! `wasi:keyvalue@0.2.0-draft2` store `default` for Spin 3.x (named as a component dependency
//! in `spin.toml`; Spin plugs it in at load). The configuration travels as JSON in the
//! `KEYGATE_CONFIG` environment variable on every host.
//!
//! The guest also imports `keygate:gateway/counters` (rate limiting), and here too an adapter
//! is plugged in: on `wasmtime serve`, whose key-value store keeps no writes, an in-instance
//! one (counts live per component instance); on Spin, one over `wasi:keyvalue@0.2.0-draft2`
//! store `default` and its atomics, so every instance of the app shares the counts (see the
//! README's "Run it anywhere"). Plugged in here rather than named as a dependency, so the
//! gateway itself imports wasi:keyvalue and gets the store from `key_value_stores`.
//!
//! Node.js and workerd (Cloudflare's Workers runtime) run the component transpiled to
//! JavaScript by jco, with WASI from `@bytecodealliance/preview2-shim`: see [`js`].

use crate::runtime::GuestSource;
use anyhow::{Context, bail};
use keygate_policy::{Config, GUEST_CONFIG_ENV, GuestConfig, ServiceUrl};
use std::io::Write;
use std::path::{Path, PathBuf};
use wac_graph::types::{Package, Types, are_semver_compatible};
use wac_graph::{CompositionGraph, EncodeOptions};

pub mod js;

/// `keygate:gateway/key-cache` over the instance's memory (wasmtime serve).
pub const KEY_CACHE_MEMORY: &[u8] = include_bytes!(env!("KEYGATE_KEY_CACHE_MEMORY_WASM"));
/// `keygate:gateway/key-cache` over `wasi:keyvalue@0.2.0-draft2` store `default` (Spin 3.x).
pub const KEY_CACHE_KEYVALUE: &[u8] = include_bytes!(env!("KEYGATE_KEY_CACHE_KEYVALUE_WASM"));

/// `keygate:gateway/counters` over the instance's memory (wasmtime serve).
pub const COUNTERS_MEMORY: &[u8] = include_bytes!(env!("KEYGATE_COUNTERS_MEMORY_WASM"));
/// `keygate:gateway/counters` over `wasi:keyvalue@0.2.0-draft2` store `default` and its
/// atomics (Spin 3.x).
pub const COUNTERS_KEYVALUE: &[u8] = include_bytes!(env!("KEYGATE_COUNTERS_KEYVALUE_WASM"));

/// The import the key-cache adapters satisfy.
pub const KEY_CACHE_INTERFACE: &str = "keygate:gateway/key-cache@0.1.4";
/// The import the counters adapters satisfy.
pub const COUNTERS_INTERFACE: &str = "keygate:gateway/counters@0.1.4";
/// The request header in which Spin passes the client's address to components.
pub const SPIN_CLIENT_ADDR_HEADER: &str = "spin-client-addr";
/// The key-value store the Spin adapters use (Spin gives every app one named so).
pub const SPIN_KEY_VALUE_STORE: &str = "default";

/// Output file names.
pub const GATEWAY_WASM: &str = "gateway.wasm";
pub const SERVE_SCRIPT: &str = "serve.sh";
pub const SPIN_MANIFEST: &str = "spin.toml";
pub const SPIN_KEY_CACHE_WASM: &str = "key-cache-keyvalue.wasm";

/// Requests one `wasmtime serve` instance handles in a row before a fresh one replaces it:
/// what lets the in-instance key cache remember verdicts (wasmtime's WASIp2 default is 1).
pub const WASMTIME_INSTANCE_REUSE: u32 = 128;

/// The hosts `keygate export` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `wasmtime serve` (wasmtime-cli 48): `gateway.wasm` with the key cache plugged in, and
    /// `serve.sh ADDR`.
    Wasmtime,
    /// Spin 3.x: `spin.toml`, `gateway.wasm` (with the key-value counters plugged in) and the
    /// key-value key-cache adapter.
    Spin,
    /// Node.js 20.19+: `gateway.wasm` (adapters plugged in) transpiled by jco, `server.mjs`, the
    /// pinned npm packages (`package.json`, `package-lock.json`) and `serve.sh ADDR`. Needs
    /// node and npm on PATH.
    Node,
    /// workerd (Cloudflare's Workers runtime, from npm), experimental: the component
    /// transpiled by jco with JSPI, `worker.mjs`, `config.capnp` and `serve.sh ADDR`. Needs
    /// node and npm on PATH.
    Workerd,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Wasmtime => "wasmtime serve",
            Self::Spin => "Spin",
            Self::Node => "Node.js",
            Self::Workerd => "workerd",
        })
    }
}

/// What an export wrote, and how to run it.
#[derive(Debug)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub run: String,
}

/// Export the gateway described by the config file at `config_path` into `out` (created if
/// missing; files of the same names are replaced).
pub fn export(target: Target, config_path: &Path, out: &Path) -> anyhow::Result<Exported> {
    let config = crate::config::load(config_path)?;
    let source = GuestSource::from_config(config.guest.component.as_deref());
    let guest = source.read()?;
    let world = ComponentWorld::read(&guest).with_context(|| format!("reading {source}"))?;
    world.check_is_gateway(&source)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating the output directory {}", out.display()))?;
    match target {
        Target::Wasmtime => export_wasmtime(&config, &source, &guest, &world, out),
        Target::Spin => export_spin(&config, &guest, &world, out),
        Target::Node => js::export_node(&config, &guest, &world, out),
        Target::Workerd => js::export_workerd(&config, &guest, &world, out),
    }
}

/// The guest configuration a host other than keygate passes in `KEYGATE_CONFIG`.
pub fn guest_config(config: &Config, target: Target) -> GuestConfig {
    let mut guest = config.guest_config();
    // The port clients connect to is the host's business: the guest takes it from `Host`.
    guest.listen_port = None;
    guest.host_annotations = false;
    guest.client_addr_header = match target {
        // Neither wasmtime serve nor preview2-shim (Node, workerd) tells the component.
        Target::Wasmtime | Target::Node | Target::Workerd => None,
        Target::Spin => Some(SPIN_CLIENT_ADDR_HEADER.to_string()),
    };
    guest
}

fn export_wasmtime(
    config: &Config,
    source: &GuestSource,
    guest: &[u8],
    world: &ComponentWorld,
    out: &Path,
) -> anyhow::Result<Exported> {
    let composed = compose_memory_adapters(guest, world, "wasmtime serve")
        .with_context(|| format!("composing {source}"))?;
    let wasm = out.join(GATEWAY_WASM);
    write_file(&wasm, &composed, 0o644)?;
    let json = guest_config(config, Target::Wasmtime).to_json();
    let script = out.join(SERVE_SCRIPT);
    write_file(
        &script,
        serve_script(&json, config.guest.memory_limit_mb).as_bytes(),
        0o755,
    )?;
    Ok(Exported {
        run: format!(
            "{} {}   (needs wasmtime-cli 48 on PATH)",
            script.display(),
            config.server.listen
        ),
        files: vec![wasm, script],
    })
}

fn export_spin(
    config: &Config,
    guest: &[u8],
    world: &ComponentWorld,
    out: &Path,
) -> anyhow::Result<Exported> {
    let needs_adapter = world.imports_key_cache();
    // Counters in the app's key-value store, shared by its instances.
    let counters_in_store = world.imports_counters();
    let guest = &plug_counters(guest, world, COUNTERS_KEYVALUE)?;
    let mut files = Vec::new();
    let wasm = out.join(GATEWAY_WASM);
    write_file(&wasm, guest, 0o644)?;
    files.push(wasm);
    if needs_adapter {
        // Spin does this composition itself at load; doing it here too makes a guest the
        // adapter does not fit fail now rather than at `spin up`.
        plug(guest, KEY_CACHE_KEYVALUE)
            .context("checking that the key-cache adapter fits the guest")?;
        let adapter = out.join(SPIN_KEY_CACHE_WASM);
        write_file(&adapter, KEY_CACHE_KEYVALUE, 0o644)?;
        files.push(adapter);
    }
    let json = guest_config(config, Target::Spin).to_json();
    let manifest = out.join(SPIN_MANIFEST);
    write_file(
        &manifest,
        spin_manifest(config, &json, needs_adapter, counters_in_store)?.as_bytes(),
        0o644,
    )?;
    files.insert(0, manifest.clone());
    Ok(Exported {
        run: format!(
            "spin up --from {} --listen {}   (Spin 3.x)",
            manifest.display(),
            config.server.listen
        ),
        files,
    })
}

/// The guest with the in-memory counters and key-cache adapters plugged in (those it
/// imports), checked to import WASI only: what `host` (wasmtime serve, Node) can run.
fn compose_memory_adapters(
    guest: &[u8],
    world: &ComponentWorld,
    host: &str,
) -> anyhow::Result<Vec<u8>> {
    let guest = plug_counters(guest, world, COUNTERS_MEMORY)?;
    let composed = if world.imports_key_cache() {
        plug(&guest, KEY_CACHE_MEMORY).context("plugging the key-cache adapter into the guest")?
    } else {
        guest
    };
    let composed_world =
        ComponentWorld::read(&composed).context("reading the composed component")?;
    let foreign: Vec<&String> = composed_world
        .imports
        .iter()
        .filter(|name| !name.starts_with("wasi:"))
        .collect();
    if !foreign.is_empty() {
        bail!(
            "the guest imports {foreign:?}, which {host} does not provide (it provides wasi:* \
             only, and keygate's adapters cover {KEY_CACHE_INTERFACE} and {COUNTERS_INTERFACE})"
        );
    }
    Ok(composed)
}

/// The guest with the counters adapter `adapter` plugged in, when it imports counters.
fn plug_counters(guest: &[u8], world: &ComponentWorld, adapter: &[u8]) -> anyhow::Result<Vec<u8>> {
    if world.imports_counters() {
        plug(guest, adapter).context("plugging the counters adapter into the guest")
    } else {
        Ok(guest.to_vec())
    }
}

/// Plug `plug`'s exports into the same-named imports of `socket` (`wac plug`), and encode the
/// composition as one component whose imports are the rest of both.
pub fn plug(socket: &[u8], plug: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let socket = Package::from_bytes("keygate:socket", None, socket.to_vec(), graph.types_mut())
        .context("decoding the gateway component")?;
    let socket = graph.register_package(socket)?;
    let plug = Package::from_bytes("keygate:plug", None, plug.to_vec(), graph.types_mut())
        .context("decoding the adapter component")?;
    let plug = graph.register_package(plug)?;
    wac_graph::plug(&mut graph, vec![plug], socket).map_err(|err| {
        // The interesting part of a graph error is its source.
        let source = std::error::Error::source(&err).map(ToString::to_string);
        anyhow::anyhow!(
            "{err}{}",
            source.map(|s| format!(": {s}")).unwrap_or_default()
        )
    })?;
    graph
        .encode(EncodeOptions::default())
        .context("encoding the composed component")
}

/// The names a component imports and exports.
#[derive(Debug, Clone)]
pub struct ComponentWorld {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

impl ComponentWorld {
    pub fn read(component: &[u8]) -> anyhow::Result<Self> {
        let mut types = Types::default();
        let package = Package::from_bytes("component", None, component.to_vec(), &mut types)?;
        let world = &types[package.ty()];
        Ok(Self {
            imports: world.imports.keys().cloned().collect(),
            exports: world.exports.keys().cloned().collect(),
        })
    }

    /// Imports the key-cache interface (any 0.1.x: semver-compatible with ours).
    pub fn imports_key_cache(&self) -> bool {
        self.imports
            .iter()
            .any(|name| are_semver_compatible(name, KEY_CACHE_INTERFACE))
    }

    /// Imports the counters interface (any 0.1.x from 0.1.2 on).
    pub fn imports_counters(&self) -> bool {
        self.imports
            .iter()
            .any(|name| are_semver_compatible(name, COUNTERS_INTERFACE))
    }

    fn check_is_gateway(&self, source: &GuestSource) -> anyhow::Result<()> {
        let handler = "wasi:http/incoming-handler@0.2.0";
        if !self
            .exports
            .iter()
            .any(|name| are_semver_compatible(name, handler))
        {
            bail!(
                "{source} does not export wasi:http/incoming-handler@0.2.x (it exports {:?}): \
                 not a wasi:http component",
                self.exports
            );
        }
        Ok(())
    }
}

/// `serve.sh ADDR [wasmtime serve options…]`: `wasmtime serve` with WASI cli interfaces (the
/// environment), the config in `KEYGATE_CONFIG` and instance reuse for the key cache.
pub fn serve_script(config_json: &str, memory_limit_mb: u32) -> String {
    let memory_bytes = u64::from(memory_limit_mb) * 1024 * 1024;
    let env = shell_quote(&format!("{GUEST_CONFIG_ENV}={config_json}"));
    format!(
        r#"#!/bin/sh
# Runs the keygate gateway component (gateway.wasm, next to this script) on `wasmtime serve`.
# Written by `keygate export --for wasmtime`; export again after changing keygate.toml.
#
#   ./serve.sh ADDR [wasmtime serve options...]      e.g.  ./serve.sh 127.0.0.1:8080
#
# -S cli gives the component its environment, where KEYGATE_CONFIG carries the configuration
# (static keys only as SHA-256 fingerprints). Each instance serves up to {reuse} requests in a
# row, so the key cache inside it remembers verdicts; concurrent requests use other instances.
set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: $0 ADDR [wasmtime serve options...]   (e.g. $0 127.0.0.1:8080)" >&2
    exit 2
fi
addr=$1
shift
if ! command -v wasmtime >/dev/null 2>&1; then
    echo "$0: wasmtime is not on PATH; install it with: cargo install wasmtime-cli --version 48.0.8 --locked" >&2
    exit 127
fi
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec wasmtime serve \
    -S cli \
    -W max-memory-size={memory_bytes} \
    --max-instance-reuse-count {reuse} \
    --addr "$addr" \
    --env {env} \
    "$@" \
    "$here/{GATEWAY_WASM}"
"#,
        reuse = WASMTIME_INSTANCE_REUSE,
    )
}

/// One POSIX shell word: single-quoted, with `'` written as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The hosts the guest calls: each service's origin and the auth API, as Spin's
/// `allowed_outbound_hosts` entries (`scheme://host:port`), in config order without repeats.
pub fn allowed_outbound_hosts(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut urls: Vec<ServiceUrl> = config.services.iter().map(|s| s.url.clone()).collect();
    if let Some(api) = &config.auth_api {
        urls.push(
            api.origin()
                .map_err(|err| anyhow::anyhow!("auth_api.url: {err}"))?,
        );
    }
    let mut hosts: Vec<String> = Vec::new();
    for url in urls {
        let host = format!("{}://{}:{}", url.scheme(), url.host, url.port);
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// A Spin 3 manifest (`spin_manifest_version = 2`): one component serving every path;
/// `key_cache_adapter` names the key-cache adapter as its dependency, and it (and
/// `counters_in_store`: the gateway with the key-value counters plugged in) needs store
/// [`SPIN_KEY_VALUE_STORE`].
pub fn spin_manifest(
    config: &Config,
    config_json: &str,
    key_cache_adapter: bool,
    counters_in_store: bool,
) -> anyhow::Result<String> {
    let hosts = allowed_outbound_hosts(config)?;
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|item| toml_string(item)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut text = format!(
        r#"# keygate for Spin 3.x, written by `keygate export --for spin`; export again after changing
# keygate.toml.  Run: spin up --from spin.toml
spin_manifest_version = 2

[application]
name = "keygate"
version = {version}
description = "API-key gateway: key auth and routing in front of the configured origins"

# Every path goes to the gateway, which routes by the config's own route table.
[[trigger.http]]
route = "/..."
component = "gateway"

[component.gateway]
source = {source}
# The origins and the auth API in the config, and nothing else.
allowed_outbound_hosts = {hosts}
"#,
        version = toml_string(env!("CARGO_PKG_VERSION")),
        source = toml_string(GATEWAY_WASM),
        hosts = list(&hosts),
    );
    if key_cache_adapter || counters_in_store {
        let users = match (key_cache_adapter, counters_in_store) {
            (true, true) => {
                "The rate-limit counters (in gateway.wasm) and the key-cache adapter keep"
            }
            (true, false) => "The key-cache adapter keeps",
            _ => "The rate-limit counters (in gateway.wasm) keep",
        };
        text.push_str(&format!(
            r#"# {users}
# their state in this store, shared by every instance.
key_value_stores = {stores}
"#,
            stores = list(&[SPIN_KEY_VALUE_STORE.to_string()]),
        ));
    }
    if key_cache_adapter {
        text.push_str(
            r#"# The key-cache adapter is a dependency of the gateway and needs the gateway's
# capabilities (the store), hence dependencies_inherit_configuration.
dependencies_inherit_configuration = true
"#,
        );
    }
    text.push_str(&format!(
        r#"# The configuration, as on every host: JSON in {GUEST_CONFIG_ENV} (static keys as fingerprints).
environment = {{ {name} = {json} }}
"#,
        name = GUEST_CONFIG_ENV,
        json = toml_string(config_json),
    ));
    if key_cache_adapter {
        text.push_str(&format!(
            r#"
[component.gateway.dependencies]
{interface} = {{ path = {path} }}
"#,
            interface = toml_string(KEY_CACHE_INTERFACE),
            path = toml_string(SPIN_KEY_CACHE_WASM),
        ));
    }
    Ok(text)
}

/// A TOML string literal for any text.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode through open(2): set it explicitly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_exports_the_reusable_and_block_policies_and_keeps_the_policy_of_older_hosts() {
        let world = ComponentWorld::read(crate::runtime::component::EMBEDDED_GUEST).unwrap();
        for export in [
            "keygate:gateway/reusable-policy@0.1.4",
            "keygate:gateway/block-policy@0.1.4",
            "keygate:gateway/policy@0.1.4",
        ] {
            assert!(
                world.exports.iter().any(|name| name == export),
                "{export} missing from {:?}",
                world.exports
            );
        }
    }

    #[test]
    fn shell_quoting_survives_quotes_and_dollars() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(r#"it's $HOME "x""#), r#"'it'\''s $HOME "x"'"#);
    }

    /// The store is granted to whoever uses it; inherited configuration only for a dependency.
    #[test]
    fn spin_manifest_grants_the_store_to_its_users() {
        let config = Config::from_toml(
            "[[services]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n\
             [[services.routes]]\npaths = [\"/a\"]\n",
        )
        .unwrap();
        for (key_cache, counters) in [(true, true), (true, false), (false, true), (false, false)] {
            let text = spin_manifest(&config, "{}", key_cache, counters).unwrap();
            let manifest: toml::Table = toml::from_str(&text).unwrap();
            let gateway = manifest["component"]["gateway"].as_table().unwrap();
            assert_eq!(
                gateway.get("key_value_stores").map(|v| v.to_string()),
                (key_cache || counters).then(|| r#"["default"]"#.to_string()),
                "{key_cache} {counters}"
            );
            assert_eq!(
                gateway.contains_key("dependencies_inherit_configuration"),
                key_cache
            );
            assert_eq!(gateway.contains_key("dependencies"), key_cache);
            assert!(
                text.lines()
                    .all(|line| line.len() <= 100 || !line.starts_with('#'))
            );
        }
    }

    #[test]
    fn toml_strings_escape_what_they_must() {
        let text = r#"{"a":"b\"c",'d'}"#;
        let parsed: toml::Table = toml::from_str(&format!("x = {}", toml_string(text))).unwrap();
        assert_eq!(parsed["x"].as_str(), Some(text));
    }
}
