//! `keygate export --for node | workerd`: the gateway component on JavaScript hosts.
//!
//! Neither Node.js nor workerd runs WASI 0.2 components itself. The Bytecode Alliance's jco
//! transpiles a component into an ES module plus its core Wasm modules, and
//! `@bytecodealliance/preview2-shim` implements WASI 0.2 in JavaScript (on Node: node:http and
//! a worker thread for blocking calls; on the Web: fetch and Web streams). The npm packages are
//! pinned by the `package.json` and `package-lock.json` below, shipped inside keygate, so the
//! export installs exactly them (`npm ci`) from the registry npm is configured with.
//!
//! - **Node**: `gateway.wasm` is the guest with the in-memory key-cache and counters adapters
//!   plugged in (as for `wasmtime serve`), transpiled into `gateway/`; `server.mjs` serves it
//!   with preview2-shim's `HTTPServer`, one instance for the process.
//! - **workerd**: `gateway.wasm` is the guest as it is, transpiled with JSPI (its blocking WASI
//!   calls suspend on promises); `worker.mjs` instantiates it per request and passes it the
//!   key-cache and counters adapters (`key-cache.wasm`, `counters.wasm`, transpiled too),
//!   instantiated once per isolate, so verdicts and counts outlive a request. `config.capnp`
//!   is a plain workerd config (no wrangler): the socket, the Worker and its modules, and an
//!   outbound network limited to the config's origins and auth API.
//!
//! The transpiling runs `node build.mjs` in the output folder at export time, so `node` and
//! `npm` are needed then; `serve.sh` needs them (`npm` only to install missing packages).

use super::{
    COUNTERS_INTERFACE, COUNTERS_MEMORY, ComponentWorld, Exported, GATEWAY_WASM,
    KEY_CACHE_INTERFACE, KEY_CACHE_MEMORY, SERVE_SCRIPT, Target, allowed_outbound_hosts,
    compose_memory_adapters, guest_config, plug, shell_quote, write_file,
};
use anyhow::{Context, bail};
use keygate_policy::{Config, GUEST_CONFIG_ENV};
use std::path::{Path, PathBuf};
use std::process::Command;
use wac_graph::types::are_semver_compatible;

/// The Node export's npm packages: preview2-shim to run, jco-transpile to transpile.
pub const NODE_PACKAGE_JSON: &str = include_str!("js/node/package.json");
pub const NODE_PACKAGE_LOCK: &str = include_str!("js/node/package-lock.json");
/// The workerd export's npm packages: workerd to run; jco-transpile and preview2-shim (whose
/// Web shims are copied into the export) to transpile.
pub const WORKERD_PACKAGE_JSON: &str = include_str!("js/workerd/package.json");
pub const WORKERD_PACKAGE_LOCK: &str = include_str!("js/workerd/package-lock.json");
/// `node build.mjs node|workerd`: the transpiling, with jco-transpile's API.
pub const BUILD_SCRIPT: &str = include_str!("js/build.mjs");
/// `node server.mjs ADDR`: the Node server.
pub const NODE_SERVER: &str = include_str!("js/server.mjs");
/// The workerd module Worker.
pub const WORKERD_WORKER: &str = include_str!("js/worker.mjs");

/// The pinned versions (README, messages).
pub const JCO_TRANSPILE_VERSION: &str = "0.15.0";
pub const PREVIEW2_SHIM_VERSION: &str = "0.26.1";
pub const WORKERD_VERSION: &str = "1.20261117.1";

/// Output file names.
pub const PACKAGE_JSON: &str = "package.json";
pub const PACKAGE_LOCK: &str = "package-lock.json";
pub const BUILD_MJS: &str = "build.mjs";
pub const SERVER_MJS: &str = "server.mjs";
pub const WORKER_MJS: &str = "worker.mjs";
pub const WORKERD_CONFIG: &str = "config.capnp";
pub const KEY_CACHE_WASM: &str = "key-cache.wasm";
pub const COUNTERS_WASM: &str = "counters.wasm";
/// The guest configuration (JSON), embedded in the workerd config as binding
/// `KEYGATE_CONFIG`.
pub const WORKERD_CONFIG_JSON: &str = "keygate-config.json";
/// The origins the Worker may call (a JSON list), binding `KEYGATE_OUTBOUND`.
pub const WORKERD_OUTBOUND_JSON: &str = "outbound.json";
/// A copy of the lock file an install satisfied, kept in `node_modules/`: an install is
/// current when it equals `package-lock.json` (checked by the export and by `serve.sh`).
pub const INSTALLED_LOCK: &str = "node_modules/.keygate-package-lock.json";
/// workerd's compatibility date for the Worker (the workerd release pinned supports it).
pub const WORKERD_COMPATIBILITY_DATE: &str = "2025-09-01";

const NEEDS_NODE: &str = "needs Node.js 20.19 or later and npm on PATH (to transpile the component \
     with jco); install them, e.g. `apt-get install nodejs npm` or from https://nodejs.org";

pub(super) fn export_node(
    config: &Config,
    guest: &[u8],
    world: &ComponentWorld,
    out: &Path,
) -> anyhow::Result<Exported> {
    let composed = compose_memory_adapters(guest, world, "Node.js (jco)")?;
    let mut files = Vec::new();
    let mut write = |name: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        let path = out.join(name);
        write_file(&path, bytes, mode)?;
        files.push(path);
        Ok(())
    };
    write(GATEWAY_WASM, &composed, 0o644)?;
    write(PACKAGE_JSON, NODE_PACKAGE_JSON.as_bytes(), 0o644)?;
    write(PACKAGE_LOCK, NODE_PACKAGE_LOCK.as_bytes(), 0o644)?;
    write(BUILD_MJS, BUILD_SCRIPT.as_bytes(), 0o644)?;
    write(SERVER_MJS, NODE_SERVER.as_bytes(), 0o644)?;
    let json = guest_config(config, Target::Node).to_json();
    write(SERVE_SCRIPT, node_serve_script(&json).as_bytes(), 0o755)?;
    transpile(out, "node")?;
    files.push(out.join("gateway"));
    Ok(Exported {
        run: format!(
            "{} {}   (needs Node.js 20.19+ on PATH)",
            out.join(SERVE_SCRIPT).display(),
            config.server.listen
        ),
        files,
    })
}

pub(super) fn export_workerd(
    config: &Config,
    guest: &[u8],
    world: &ComponentWorld,
    out: &Path,
) -> anyhow::Result<Exported> {
    let foreign: Vec<&String> = world
        .imports
        .iter()
        .filter(|name| {
            !name.starts_with("wasi:")
                && !are_semver_compatible(name, KEY_CACHE_INTERFACE)
                && !are_semver_compatible(name, COUNTERS_INTERFACE)
        })
        .collect();
    if !foreign.is_empty() {
        bail!(
            "the guest imports {foreign:?}, which the workerd export does not provide (it \
             provides wasi:* through preview2-shim, and keygate's key-cache and counters \
             adapters)"
        );
    }
    // The worker passes the adapters' exports to the gateway at instantiation: check now that
    // they fit, as plugging them in would.
    if world.imports_key_cache() {
        plug(guest, KEY_CACHE_MEMORY).context("checking that the key-cache adapter fits")?;
    }
    if world.imports_counters() {
        plug(guest, COUNTERS_MEMORY).context("checking that the counters adapter fits")?;
    }
    let mut files = Vec::new();
    let mut write = |name: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        let path = out.join(name);
        write_file(&path, bytes, mode)?;
        files.push(path);
        Ok(())
    };
    write(GATEWAY_WASM, guest, 0o644)?;
    write(KEY_CACHE_WASM, KEY_CACHE_MEMORY, 0o644)?;
    write(COUNTERS_WASM, COUNTERS_MEMORY, 0o644)?;
    write(PACKAGE_JSON, WORKERD_PACKAGE_JSON.as_bytes(), 0o644)?;
    write(PACKAGE_LOCK, WORKERD_PACKAGE_LOCK.as_bytes(), 0o644)?;
    write(BUILD_MJS, BUILD_SCRIPT.as_bytes(), 0o644)?;
    write(WORKER_MJS, WORKERD_WORKER.as_bytes(), 0o644)?;
    let json = guest_config(config, Target::Workerd).to_json();
    write(WORKERD_CONFIG_JSON, json.as_bytes(), 0o644)?;
    let outbound = allowed_outbound_hosts(config)?;
    write(
        WORKERD_OUTBOUND_JSON,
        serde_json::to_string(&outbound)?.as_bytes(),
        0o644,
    )?;
    transpile(out, "workerd")?;
    let modules = workerd_modules(out)?;
    let capnp = workerd_config(&config.server.listen.to_string(), &outbound, &modules);
    write(WORKERD_CONFIG, capnp.as_bytes(), 0o644)?;
    write(SERVE_SCRIPT, workerd_serve_script().as_bytes(), 0o755)?;
    files.push(out.join("transpiled"));
    files.push(out.join("shim"));
    Ok(Exported {
        run: format!(
            "{} {}   (experimental: jco's JSPI mode; needs Node.js 20.19+)",
            out.join(SERVE_SCRIPT).display(),
            config.server.listen
        ),
        files,
    })
}

/// `npm ci` in `out` unless its `node_modules` already holds this lock file's packages, then
/// `node build.mjs TARGET`.
fn transpile(out: &Path, target: &str) -> anyhow::Result<()> {
    for tool in ["node", "npm"] {
        if !on_path(tool) {
            bail!("`keygate export --for {target}` {NEEDS_NODE} ({tool} is not on PATH)");
        }
    }
    let lock = std::fs::read(out.join(PACKAGE_LOCK))?;
    let installed = std::fs::read(out.join(INSTALLED_LOCK)).ok();
    let has_transpiler = out
        .join("node_modules/@bytecodealliance/jco-transpile/package.json")
        .is_file();
    if installed.as_deref() != Some(&lock[..]) || !has_transpiler {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(out)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running npm ci")?;
        if !status.success() {
            bail!(
                "`npm ci` in {} failed ({status}): the pinned jco and preview2-shim packages \
                 could not be installed from the npm registry",
                out.display()
            );
        }
        std::fs::write(out.join(INSTALLED_LOCK), &lock)
            .with_context(|| format!("writing {INSTALLED_LOCK}"))?;
    }
    let output = Command::new("node")
        .arg(BUILD_MJS)
        .arg(target)
        .current_dir(out)
        .output()
        .context("running node build.mjs")?;
    if !output.status.success() {
        bail!(
            "transpiling the component with jco failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A module of the Worker: its name (its path in the export) and its workerd type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerModule {
    pub name: String,
    pub wasm: bool,
}

/// The Worker's modules after `build.mjs workerd`: `worker.mjs` first (the main module), then
/// `shim/*.js`, `transpiled/*.js|mjs` and `transpiled/*.wasm`, sorted.
fn workerd_modules(out: &Path) -> anyhow::Result<Vec<WorkerModule>> {
    let mut modules = vec![WorkerModule {
        name: WORKER_MJS.to_string(),
        wasm: false,
    }];
    for dir in ["shim", "transpiled"] {
        let mut names: Vec<PathBuf> = std::fs::read_dir(out.join(dir))
            .with_context(|| format!("reading {}", out.join(dir).display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for path in names {
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            let wasm = file.ends_with(".wasm");
            if wasm || file.ends_with(".js") || file.ends_with(".mjs") {
                modules.push(WorkerModule {
                    name: format!("{dir}/{file}"),
                    wasm,
                });
            }
        }
    }
    Ok(modules)
}

/// workerd's `allow` list for outgoing connections: each origin's address when it is an IP
/// literal; any address when one is a host name (the Worker still refuses every origin but
/// the config's).
pub fn workerd_network_allow(outbound: &[String]) -> Vec<String> {
    let mut allow: Vec<String> = Vec::new();
    for origin in outbound {
        let host = origin
            .split_once("://")
            .map_or(origin.as_str(), |(_, rest)| rest);
        let host = host.rsplit_once(':').map_or(host, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let entries: Vec<String> = match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => vec![format!("{ip}/32")],
            Ok(std::net::IpAddr::V6(ip)) => vec![format!("{ip}/128")],
            Err(_) => ["public", "private", "local"].map(String::from).to_vec(),
        };
        for entry in entries {
            if !allow.contains(&entry) {
                allow.push(entry);
            }
        }
    }
    allow
}

/// A Cap'n Proto text literal.
fn capnp_string(text: &str) -> String {
    // Cap'n Proto's text literals take C-style escapes, like JSON strings.
    serde_json::to_string(text).expect("a string serializes")
}

/// The workerd config: socket `http` on `listen` (serve.sh overrides it with
/// `--socket-addr http=ADDR`) serving the Worker, whose outgoing requests go through a network
/// service allowing the config's origins and auth API only.
pub fn workerd_config(listen: &str, outbound: &[String], modules: &[WorkerModule]) -> String {
    let list = |items: Vec<String>| items.join(", ");
    let allow = list(
        workerd_network_allow(outbound)
            .iter()
            .map(|a| capnp_string(a))
            .collect(),
    );
    let modules: Vec<String> = modules
        .iter()
        .map(|module| {
            format!(
                "    (name = {name}, {kind} = embed {name}),",
                name = capnp_string(&module.name),
                kind = if module.wasm { "wasm" } else { "esModule" },
            )
        })
        .collect();
    format!(
        r#"# keygate on workerd, written by `keygate export --for workerd`; export again after changing
# keygate.toml. Run: ./serve.sh ADDR (workerd serve config.capnp --socket-addr http=ADDR).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "keygate", worker = .gateway),
    # The config's origins and the auth API, and nothing else (worker.mjs refuses other
    # origins too).
    (name = "outbound", network = (allow = [{allow}])),
  ],
  sockets = [
    (name = "http", address = {listen}, http = (), service = "keygate"),
  ],
);

const gateway :Workerd.Worker = (
  compatibilityDate = {date},
  modules = [
{modules}
  ],
  bindings = [
    # The configuration, as on every host: JSON in {env} (static keys as fingerprints).
    (name = "{env}", text = embed {config_json}),
    (name = "KEYGATE_OUTBOUND", text = embed {outbound_json}),
  ],
  globalOutbound = "outbound",
);
"#,
        listen = capnp_string(listen),
        date = capnp_string(WORKERD_COMPATIBILITY_DATE),
        modules = modules.join("\n"),
        env = GUEST_CONFIG_ENV,
        config_json = capnp_string(WORKERD_CONFIG_JSON),
        outbound_json = capnp_string(WORKERD_OUTBOUND_JSON),
    )
}

/// The shell lines shared by both serve.sh: usage, `node`/`npm` on PATH, and `npm ci
/// --omit=dev` when `node_modules` does not hold the lock file's packages.
fn serve_script_prelude(host: &str) -> String {
    format!(
        r#"set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: $0 ADDR   (e.g. $0 127.0.0.1:8080)" >&2
    exit 2
fi
addr=$1
shift
for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$0: $tool is not on PATH; {host} needs Node.js 20.19 or later with npm: install them, e.g. apt-get install nodejs npm, or from https://nodejs.org" >&2
        exit 127
    fi
done
here=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
# The pinned packages (package-lock.json), installed when missing or from another lock file.
if ! cmp -s "$here/{lock}" "$here/{installed}"; then
    echo "$0: installing the pinned npm packages (npm ci --omit=dev)" >&2
    (cd "$here" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >&2)
    cp "$here/{lock}" "$here/{installed}"
fi
"#,
        lock = PACKAGE_LOCK,
        installed = INSTALLED_LOCK,
    )
}

/// `serve.sh ADDR` for Node: `node server.mjs ADDR` with the config in `KEYGATE_CONFIG`.
pub fn node_serve_script(config_json: &str) -> String {
    let env = shell_quote(config_json);
    format!(
        r#"#!/bin/sh
# Runs the keygate gateway component on Node.js: gateway/ (gateway.wasm transpiled by jco),
# served by server.mjs with @bytecodealliance/preview2-shim {shim}. Written by
# `keygate export --for node`; export again after changing keygate.toml.
#
#   ./serve.sh ADDR      e.g.  ./serve.sh 127.0.0.1:8080
#
# KEYGATE_CONFIG carries the configuration (static keys only as SHA-256 fingerprints).
{prelude}{env_name}={env}
export {env_name}
exec node "$here/{server}" "$addr"
"#,
        shim = PREVIEW2_SHIM_VERSION,
        prelude = serve_script_prelude("keygate on Node.js"),
        env_name = GUEST_CONFIG_ENV,
        server = SERVER_MJS,
    )
}

/// `serve.sh ADDR` for workerd: the pinned workerd binary from npm, serving config.capnp on
/// ADDR.
pub fn workerd_serve_script() -> String {
    format!(
        r#"#!/bin/sh
# Runs the keygate gateway component on workerd {version} (Cloudflare's Workers runtime, from
# npm): config.capnp serves worker.mjs, which runs gateway.wasm transpiled by jco with JSPI
# (experimental). Written by `keygate export --for workerd`; export again after changing
# keygate.toml.
#
#   ./serve.sh ADDR [workerd serve options...]   e.g.  ./serve.sh 127.0.0.1:8080
#
# ADDR may also be fd=N: a listening socket inherited as file descriptor N.
# The configuration is embedded in config.capnp (binding KEYGATE_CONFIG, from {config_json}).
{prelude}workerd=
for bin in "$here"/node_modules/@cloudflare/workerd-*/bin/workerd "$here/node_modules/.bin/workerd"; do
    if [ -x "$bin" ]; then workerd=$bin; break; fi
done
if [ -z "$workerd" ]; then
    echo "$0: the workerd binary is missing from node_modules; remove node_modules and run again" >&2
    exit 127
fi
cd "$here"
case $addr in
    # An inherited listening socket (e.g. systemd's socket activation): fd=3.
    fd=*) exec "$workerd" serve "$here/{capnp}" --socket-fd "http=${{addr#fd=}}" "$@" ;;
    *) exec "$workerd" serve "$here/{capnp}" --socket-addr "http=$addr" "$@" ;;
esac
"#,
        version = WORKERD_VERSION,
        config_json = WORKERD_CONFIG_JSON,
        prelude = serve_script_prelude("keygate on workerd"),
        capnp = WORKERD_CONFIG,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_allow_names_ip_origins_exactly() {
        let allow = workerd_network_allow(&[
            "http://127.0.0.1:9001".into(),
            "http://127.0.0.1:9000".into(),
            "http://[::1]:80".into(),
        ]);
        assert_eq!(allow, ["127.0.0.1/32", "::1/128"]);
        let allow = workerd_network_allow(&["https://api.example.com:443".into()]);
        assert_eq!(allow, ["public", "private", "local"]);
    }

    #[test]
    fn the_pinned_packages_match_the_lock_files() {
        for (json, lock) in [
            (NODE_PACKAGE_JSON, NODE_PACKAGE_LOCK),
            (WORKERD_PACKAGE_JSON, WORKERD_PACKAGE_LOCK),
        ] {
            let json: serde_json::Value = serde_json::from_str(json).unwrap();
            let lock: serde_json::Value = serde_json::from_str(lock).unwrap();
            let root = &lock["packages"][""];
            for kind in ["dependencies", "devDependencies"] {
                assert_eq!(json[kind], root[kind], "{kind}");
                for (name, version) in json[kind].as_object().unwrap() {
                    assert_eq!(
                        lock["packages"][format!("node_modules/{name}")]["version"],
                        *version,
                        "{name}"
                    );
                }
            }
        }
        assert!(NODE_PACKAGE_JSON.contains(PREVIEW2_SHIM_VERSION));
        assert!(WORKERD_PACKAGE_JSON.contains(WORKERD_VERSION));
        assert!(WORKERD_PACKAGE_JSON.contains(JCO_TRANSPILE_VERSION));
    }
}
