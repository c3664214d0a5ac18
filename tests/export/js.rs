//! The Node.js and workerd flavours (`keygate export --for node | workerd`), run for real by
//! their `serve.sh` (the whole scenario suite runs there too, as `scenarios_node` and
//! `scenarios_workerd`), and the pinned npm packages they install.
//!
//! The npm packages come from one install per host in `target/js-export/` (see
//! `tests/support/js_export.rs`), linked into each export: no test talks to the registry.

use crate::js_export::{JsHost, JsServe, link_node_modules, shared_node_modules};
use crate::support::client::get;
use crate::support::{AuthApi, Origin};
use crate::{run_export, two_origin_config};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `keygate export --for HOST` of `config_toml` by the real binary, with the tests' npm
/// packages linked in; panics with its output unless it succeeds.
fn export_js(host: JsHost, config_toml: &str, dir: &Path) -> PathBuf {
    let config = dir.join("keygate.toml");
    std::fs::write(&config, config_toml).unwrap();
    let out = dir.join(format!("{}-export", host.name()));
    link_node_modules(host, &out);
    let output = run_export(host.name(), &config, &out);
    assert!(
        output.status.success(),
        "keygate export --for {} failed: {}{}",
        host.name(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// The configuration reaches the component intact through each host's carrier (`serve.sh`'s
/// shell quoting on Node, config.capnp's embedded JSON on workerd), the component serves both
/// origins, and verdicts outlive a request: on Node in the one instance, on workerd in the
/// key-cache adapter instantiated in the isolate while each request gets a fresh gateway.
async fn serves_both_origins_and_remembers_verdicts(host: JsHost) {
    let origin = Origin::start("api").await;
    let other = Origin::start("other").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({"consumer": {"username": "ann"}}));
    let dir = tempfile::tempdir().unwrap();
    let out = export_js(host, &two_origin_config(&origin, &other, &auth), dir.path());
    let serve = JsServe::start(host, &out.join("serve.sh"));

    let reply = get(serve.addr, "/api/x", &[("apikey", "quote-key")]).await;
    assert_eq!(
        reply.status,
        200,
        "{}\n{}",
        reply.text(),
        serve.log().join("\n")
    );
    assert_eq!(
        origin.last().header("x-consumer-username"),
        Some(r#"o'brien "$HOME" `id`"#)
    );
    let reply = get(serve.addr, "/other/y", &[("apikey", "quote-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(other.last().uri, "/v2/y");
    assert_eq!(auth.calls(), 0, "a static key needs no auth API call");

    const REQUESTS: usize = 10;
    for _ in 0..REQUESTS {
        let reply = get(serve.addr, "/api/x", &[("apikey", "good-key")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(origin.last().header("x-consumer-username"), Some("ann"));
    }
    assert_eq!(auth.calls(), 1, "one auth call for {REQUESTS} requests");
    let reply = get(serve.addr, "/api/x", &[("apikey", "bad-key")]).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.json()["message"], "Unauthorized");
}

#[tokio::test]
async fn node_serves_both_origins_and_remembers_verdicts() {
    serves_both_origins_and_remembers_verdicts(JsHost::Node).await;
}

#[tokio::test]
async fn workerd_serves_both_origins_and_remembers_verdicts() {
    serves_both_origins_and_remembers_verdicts(JsHost::Workerd).await;
}

/// What each export writes: the component, the lock file keygate ships, and (workerd) a
/// config whose embedded files all exist and whose network allows the config's origins only.
#[test]
fn exports_write_the_pinned_packages_and_a_complete_workerd_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[[services]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/v1\"\n\
                  [[services.routes]]\npaths = [\"/a\"]\n\
                  [auth_api]\nurl = \"http://127.0.0.1:10/check?key={key}\"\n";
    use keygate::export::js;
    for (host, lock) in [
        (JsHost::Node, js::NODE_PACKAGE_LOCK),
        (JsHost::Workerd, js::WORKERD_PACKAGE_LOCK),
    ] {
        let out = export_js(host, config, dir.path());
        assert_eq!(
            std::fs::read_to_string(out.join("package-lock.json")).unwrap(),
            lock
        );
        assert!(out.join("gateway.wasm").is_file());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(out.join("serve.sh"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o111, 0o111, "serve.sh is executable");
        match host {
            JsHost::Node => assert!(out.join("gateway/gateway.js").is_file()),
            JsHost::Workerd => {
                let capnp = std::fs::read_to_string(out.join("config.capnp")).unwrap();
                let embedded: Vec<&str> = capnp
                    .split("embed \"")
                    .skip(1)
                    .map(|rest| rest.split('"').next().unwrap())
                    .collect();
                assert!(embedded.contains(&"worker.mjs"), "{capnp}");
                assert!(embedded.contains(&"transpiled/gateway.js"), "{capnp}");
                for file in &embedded {
                    assert!(out.join(file).is_file(), "{file} is embedded but missing");
                }
                assert!(
                    capnp.contains(r#"network = (allow = ["127.0.0.1/32"])"#),
                    "{capnp}"
                );
                let outbound: Vec<String> = serde_json::from_str(
                    &std::fs::read_to_string(out.join("outbound.json")).unwrap(),
                )
                .unwrap();
                assert_eq!(outbound, ["http://127.0.0.1:9", "http://127.0.0.1:10"]);
            }
        }
    }
}

/// The lock files keygate ships resolve completely from npm's cache (filled by the tests'
/// install): `npm ci --offline` in a fresh folder installs every pinned package without the
/// registry, as `serve.sh` does (`--omit=dev`).
#[test]
fn the_pinned_lock_files_install_offline_from_the_npm_cache() {
    use keygate::export::js;
    for (host, package, lock) in [
        (JsHost::Node, js::NODE_PACKAGE_JSON, js::NODE_PACKAGE_LOCK),
        (
            JsHost::Workerd,
            js::WORKERD_PACKAGE_JSON,
            js::WORKERD_PACKAGE_LOCK,
        ),
    ] {
        shared_node_modules(host); // fills the cache
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.json"), package).unwrap();
        std::fs::write(dir.path().join("package-lock.json"), lock).unwrap();
        let output = Command::new("npm")
            .args([
                "ci",
                "--offline",
                "--omit=dev",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(dir.path())
            .output()
            .expect("npm runs");
        assert!(
            output.status.success(),
            "npm ci --offline for {}: {}{}",
            host.name(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let runtime = match host {
            JsHost::Node => "node_modules/@bytecodealliance/preview2-shim/package.json",
            JsHost::Workerd => "node_modules/workerd/package.json",
        };
        assert!(dir.path().join(runtime).is_file(), "{runtime}");
    }
}

/// Without node or npm on PATH, `serve.sh` exits 127 naming what to install, and the export
/// itself (which transpiles with jco) says what it needs.
#[test]
fn without_node_serve_sh_exits_127_and_export_says_what_to_install() {
    let origin_addr = "127.0.0.1:9";
    let config = format!(
        "[[services]]\nname = \"a\"\nurl = \"http://{origin_addr}\"\n[[services.routes]]\npaths = [\"/a\"]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    for host in [JsHost::Node, JsHost::Workerd] {
        let out = export_js(host, &config, dir.path());
        let output = Command::new("/bin/sh")
            .arg(out.join("serve.sh"))
            .arg("127.0.0.1:1")
            .env("PATH", &empty)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(127), "{}", host.name());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("node is not on PATH") && stderr.contains("install"),
            "{stderr}"
        );

        let config_path = dir.path().join("keygate.toml");
        let output = Command::new(crate::support::process::KEYGATE)
            .args(["export", "--for", host.name(), "--config"])
            .arg(&config_path)
            .arg("--out")
            .arg(dir.path().join("no-node"))
            .env("PATH", &empty)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("Node.js 20.19 or later and npm"),
            "{stderr}"
        );
    }
}

/// `serve.sh` installs the runtime packages when `node_modules` is missing (`npm ci
/// --omit=dev`; here forced to npm's cache with `npm_config_offline`), then serves.
#[tokio::test]
async fn node_serve_sh_installs_missing_packages_then_serves() {
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = export_js(
        JsHost::Node,
        &crate::support::basic_config(&origin, &auth),
        dir.path(),
    );
    std::fs::remove_file(out.join("node_modules")).unwrap(); // the link to the tests' install
    let serve = JsServe::start_with_env(
        JsHost::Node,
        &out.join("serve.sh"),
        &[("npm_config_offline", "true")],
    );
    assert!(
        serve.log().iter().any(|line| line.contains("installing")),
        "{:?}",
        serve.log()
    );
    assert!(
        out.join("node_modules/@bytecodealliance/preview2-shim")
            .is_dir()
            && !out
                .join("node_modules/@bytecodealliance/jco-transpile")
                .exists(),
        "runtime packages only"
    );
    let reply = get(serve.addr, "/api/x", &[("apikey", "static-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}
