//! `keygate export`: the same guest component on `wasmtime serve` (run for real, through the
//! exported `serve.sh`) and on Spin 3.x (checked against a world of what Spin 3 provides), and
//! the key-cache adapters that stand in for keygate's own cache there.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use keygate::export::{ComponentWorld, KEY_CACHE_KEYVALUE, KEY_CACHE_MEMORY};
use serde_json::json;
use std::path::{Path, PathBuf};
use support::client::{get, request, send};
use support::wasmtime_serve::{WasmtimeServe, require_wasmtime};
use support::{AuthApi, Origin, basic_config, process};

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace root")
}

/// `keygate export --for TARGET --config CONFIG --out DIR` (the real binary); panics with its
/// output unless it succeeds.
fn export(target: &str, config_toml: &str, dir: &Path) -> PathBuf {
    let config = dir.join("keygate.toml");
    std::fs::write(&config, config_toml).unwrap();
    let out = dir.join(format!("{target}-export"));
    let output = process::run(&[
        "export",
        "--for",
        target,
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
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
fn two_origin_config(origin: &Origin, other: &Origin, auth: &AuthApi) -> String {
    format!(
        r#"{basic}
[[consumers]]
username = "o'brien \"$HOME\" `id`"
keys = ["quote-key"]

[[services]]
name = "other"
url = "http://{other}/v2"

[[services.routes]]
name = "other-route"
paths = ["/other"]
"#,
        basic = basic_config(origin, auth),
        other = other.addr,
    )
}

// ---------------------------------------------------------------------------------------------
// wasmtime serve

#[tokio::test]
async fn wasmtime_export_is_one_component_and_a_script() {
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = export("wasmtime", &basic_config(&origin, &auth), dir.path());

    let wasm = std::fs::read(out.join("gateway.wasm")).unwrap();
    let world = ComponentWorld::read(&wasm).unwrap();
    assert!(
        world.imports.iter().all(|name| name.starts_with("wasi:")),
        "the composed component imports only WASI: {:?}",
        world.imports
    );
    assert!(!world.imports_key_cache());
    assert!(
        world
            .exports
            .iter()
            .any(|name| name.starts_with("wasi:http/incoming-handler@0.2.")),
        "{:?}",
        world.exports
    );

    let script_path = out.join("serve.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&script_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o755, "serve.sh is executable");
    let script = std::fs::read_to_string(&script_path).unwrap();
    for expected in [
        "exec wasmtime serve",
        "-S cli",
        "--addr \"$addr\"",
        "--env 'KEYGATE_CONFIG=",
    ] {
        assert!(script.contains(expected), "{expected:?} in:\n{script}");
    }
    assert!(
        !script.contains("static-key"),
        "raw keys stay out of the export"
    );
    // The script checks its argument before anything else.
    let usage = std::process::Command::new(&script_path).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage:"));
}

/// The scenario suite of tests/key_auth.rs, routing.rs and forwarding.rs, against the exported
/// component on `wasmtime serve` 48 started by the exported `serve.sh`.
#[tokio::test]
async fn wasmtime_serve_runs_the_gateway_scenarios() {
    require_wasmtime();
    let origin = Origin::start("api").await;
    let other = Origin::start("other").await;
    let auth = AuthApi::start().await;
    auth.allow(
        "good-key",
        json!({"consumer": {"id": "c-1", "username": "ann", "custom_id": "cust-1"}, "credential_id": "cred-1"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = export(
        "wasmtime",
        &two_origin_config(&origin, &other, &auth),
        dir.path(),
    );
    let serve = WasmtimeServe::start(&out.join("serve.sh"));
    let addr = serve.addr;
    let log = || serve.log().join("\n");

    // Missing key: Kong's 401, never forwarded, auth API not asked.
    let reply = get(addr, "/api/x", &[]).await;
    assert_eq!(reply.status, 401, "{}\n{}", reply.text(), log());
    assert_eq!(reply.json()["message"], "No API key found in request");
    assert_eq!(reply.header("www-authenticate"), Some("Key"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let id = reply.json()["request_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(reply.header("x-request-id"), Some(id.as_str()));
    assert_eq!((origin.hits(), auth.calls()), (0, 0));

    // Bad key: the auth API says no, the client gets 401, the origin sees nothing.
    let reply = get(addr, "/api/x", &[("apikey", "bad-key")]).await;
    assert_eq!(reply.status, 401, "{}\n{}", reply.text(), log());
    assert_eq!(reply.json()["message"], "Unauthorized");
    assert_eq!(
        auth.calls(),
        1,
        "the auth API is consulted for an unknown key"
    );
    assert_eq!(origin.hits(), 0);

    // Good key: the auth API is consulted and the origin answers, with the consumer headers.
    let reply = get(addr, "/api/x?page=2", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), log());
    assert_eq!(reply.header("x-origin"), Some("api"));
    assert_eq!(reply.json()["origin"], "api");
    assert_eq!(auth.calls(), 2);
    let seen = origin.last();
    assert_eq!(seen.uri, "/v1/x?page=2");
    assert_eq!(seen.header("x-consumer-id"), Some("c-1"));
    assert_eq!(seen.header("x-consumer-username"), Some("ann"));
    assert_eq!(seen.header("x-consumer-custom-id"), Some("cust-1"));
    assert_eq!(seen.header("x-credential-identifier"), Some("cred-1"));

    // A key in the query string works the same and is passed on verbatim.
    let reply = get(addr, "/api/q?apikey=good-key", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().uri, "/v1/q?apikey=good-key");

    // A static consumer's key needs no auth API call.
    let calls = auth.calls();
    let reply = get(addr, "/api/x", &[("apikey", "static-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(auth.calls(), calls);
    assert_eq!(
        origin.last().header("x-consumer-username"),
        Some("static-user")
    );

    // The configuration survives the trip through serve.sh's quoting.
    let reply = get(addr, "/api/x", &[("apikey", "quote-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        origin.last().header("x-consumer-username"),
        Some(r#"o'brien "$HOME" `id`"#)
    );

    // Routing: two origins by path prefix, 404 for no route.
    let reply = get(addr, "/other/y", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-origin"), Some("other"));
    assert_eq!(other.last().uri, "/v2/y");
    let reply = get(addr, "/api/z", &[("apikey", "good-key")]).await;
    assert_eq!(reply.header("x-origin"), Some("api"));
    assert_eq!(origin.last().uri, "/v1/z");
    let reply = get(addr, "/nowhere", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json()["message"],
        "no Route matched with those values"
    );
    assert_eq!(other.hits(), 1);

    // POST: the body reaches the origin whole (it answers with its length and byte sum).
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sum = body.iter().map(|&b| u64::from(b)).sum::<u64>();
    let post = request("POST", addr, "/api/upload")
        .header("apikey", "good-key")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = send(addr, post).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), log());
    assert_eq!(reply.json(), json!({"bytes": body.len(), "sum": sum}));
    let seen = origin.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/v1/upload")
    );
    assert_eq!(seen.body_bytes, body.len() as u64);

    // Nothing unverified ever reached an origin.
    assert!(
        origin
            .seen()
            .iter()
            .chain(other.seen().iter())
            .all(|seen| seen.header("x-consumer-username").is_some()),
        "every forwarded request carries a consumer"
    );
}

/// `serve.sh` lets one instance serve requests in a row, so the in-instance key cache saves
/// auth calls for back-to-back requests; correctness does not depend on it.
#[tokio::test]
async fn wasmtime_serve_instances_remember_verdicts() {
    require_wasmtime();
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({"consumer": {"username": "ann"}}));
    let dir = tempfile::tempdir().unwrap();
    let out = export("wasmtime", &basic_config(&origin, &auth), dir.path());
    let serve = WasmtimeServe::start(&out.join("serve.sh"));
    const REQUESTS: usize = 10;
    for _ in 0..REQUESTS {
        let reply = get(serve.addr, "/api/x", &[("apikey", "good-key")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(origin.hits(), REQUESTS);
    // Sequential requests land on the idle instance (unless it idled out: then a new one asks
    // again), so most are answered from its cache.
    assert!(
        auth.calls() < REQUESTS / 2,
        "{} auth calls for {REQUESTS} sequential requests",
        auth.calls()
    );
}

// ---------------------------------------------------------------------------------------------
// Spin

#[tokio::test]
async fn spin_export_references_what_it_writes() {
    let origin = Origin::start("api").await;
    let other = Origin::start("other").await;
    let auth = AuthApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = export(
        "spin",
        &two_origin_config(&origin, &other, &auth),
        dir.path(),
    );

    let text = std::fs::read_to_string(out.join("spin.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    let triggers = manifest["trigger"]["http"].as_array().unwrap();
    assert_eq!(triggers.len(), 1);
    assert_eq!(triggers[0]["route"].as_str(), Some("/..."));
    assert_eq!(triggers[0]["component"].as_str(), Some("gateway"));
    let components = manifest["component"].as_table().unwrap();
    assert_eq!(components.len(), 1);
    let gateway = components["gateway"].as_table().unwrap();

    // Every file the manifest names exists, relative to it.
    let mut referenced = vec![gateway["source"].as_str().unwrap().to_string()];
    let dependencies = gateway["dependencies"].as_table().unwrap();
    for (name, dependency) in dependencies {
        assert_eq!(name, "keygate:gateway/key-cache@0.1.1");
        referenced.push(dependency["path"].as_str().unwrap().to_string());
    }
    for file in &referenced {
        assert!(
            out.join(file).is_file(),
            "spin.toml names {file}, not written"
        );
    }
    assert_eq!(referenced.len(), 2);

    // The adapter gets the gateway's store through inherited configuration.
    assert_eq!(
        gateway["dependencies_inherit_configuration"].as_bool(),
        Some(true)
    );
    assert_eq!(
        gateway["key_value_stores"].as_array().unwrap(),
        &vec![toml::Value::from("default")]
    );
    // Outbound: exactly the two origins and the auth API.
    let mut hosts: Vec<&str> = gateway["allowed_outbound_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    hosts.sort_unstable();
    let mut expected = vec![
        format!("http://{}", origin.addr),
        format!("http://{}", other.addr),
        format!("http://{}", auth.addr),
    ];
    expected.sort_unstable();
    assert_eq!(hosts, expected);
    // The configuration, in the environment as everywhere, with Spin's client address header.
    let environment = gateway["environment"].as_table().unwrap();
    let config =
        keygate_policy::GuestConfig::from_json(environment["KEYGATE_CONFIG"].as_str().unwrap())
            .unwrap();
    assert_eq!(
        config.client_addr_header.as_deref(),
        Some("spin-client-addr")
    );
    assert_eq!(config.services.len(), 2);
    assert_eq!(
        config.consumers[1].username.as_deref(),
        Some(r#"o'brien "$HOME" `id`"#),
        "TOML quoting keeps the JSON intact"
    );
    assert!(
        !text.contains("static-key"),
        "raw keys stay out of spin.toml"
    );

    // The component files are the embedded ones.
    assert_eq!(
        std::fs::read(out.join(referenced[1].as_str())).unwrap(),
        KEY_CACHE_KEYVALUE
    );
    assert_eq!(
        std::fs::read(out.join(referenced[0].as_str())).unwrap(),
        keygate::runtime::component::EMBEDDED_GUEST
    );
}

/// Spin composes `[component.gateway.dependencies]` into the gateway at load (with wac-graph);
/// the result must import only what Spin 3.x provides.
#[tokio::test]
async fn spin_app_imports_only_what_spin3_provides() {
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = export("spin", &basic_config(&origin, &auth), dir.path());
    let gateway = std::fs::read(out.join("gateway.wasm")).unwrap();
    let adapter = std::fs::read(out.join("key-cache-keyvalue.wasm")).unwrap();
    let app = keygate::export::plug(&gateway, &adapter).unwrap();

    let mut types = wac_graph::types::Types::default();
    let platform = spin3::platform_world(&mut types);
    let app_world = wac_graph::types::Package::from_bytes("app", None, app, &mut types).unwrap();
    if let Err(report) = wac_graph::types::validate_target(&types, platform, app_world.ty()) {
        panic!("the Spin app does not fit Spin 3.x:\n{report}");
    }

    // The check has teeth: the gateway without its dependency does not fit.
    let bare = wac_graph::types::Package::from_bytes("bare", None, gateway, &mut types).unwrap();
    let report = wac_graph::types::validate_target(&types, platform, bare.ty()).unwrap_err();
    assert_eq!(
        report.imports_not_in_target().collect::<Vec<_>>(),
        vec!["keygate:gateway/key-cache@0.1.1"]
    );
    // Nor does the wasmtime flavour's adapter world pass for anything but WASI (it imports
    // nothing Spin lacks, so the whole wasmtime export fits too).
    let memory_app = keygate::export::plug(
        keygate::runtime::component::EMBEDDED_GUEST,
        KEY_CACHE_MEMORY,
    )
    .unwrap();
    let memory_app =
        wac_graph::types::Package::from_bytes("memory", None, memory_app, &mut types).unwrap();
    if let Err(report) = wac_graph::types::validate_target(&types, platform, memory_app.ty()) {
        panic!("the wasmtime flavour should fit Spin 3.x too:\n{report}");
    }
}

/// The import-matching rules the Spin check applies, on hand-written components.
#[test]
fn spin3_world_matches_imports_like_spin_does() {
    let mut types = wac_graph::types::Types::default();
    let platform = spin3::platform_world(&mut types);
    let mut import_problems = |wat: &str| -> Vec<String> {
        let bytes = wat::parse_str(wat).unwrap();
        let package =
            wac_graph::types::Package::from_bytes("probe", None, bytes, &mut types).unwrap();
        match wac_graph::types::validate_target(&types, platform, package.ty()) {
            Ok(()) => Vec::new(),
            // The probes export nothing; only their imports are in question.
            Err(report) => report
                .imports_not_in_target()
                .map(|name| format!("not provided: {name}"))
                .chain(
                    report
                        .mismatched_types()
                        .map(|(name, _, err)| format!("mismatch: {name}: {err:#}")),
                )
                .collect(),
        }
    };
    // An older or newer 0.2.x import links to Spin's 0.2.6.
    for version in ["0.2.0", "0.2.3", "0.2.12"] {
        let wat = format!(
            r#"(component (import "wasi:cli/environment@{version}" (instance
                (export "get-environment" (func (result (list (tuple string string))))))))"#
        );
        assert_eq!(import_problems(&wat), Vec::<String>::new(), "{version}");
    }
    // ... but only for what existed in 0.2.6.
    let problems = import_problems(
        r#"(component (import "wasi:cli/exit@0.2.12" (instance
            (export "exit-with-code" (func (param "status-code" u8))))))"#,
    );
    assert!(
        problems.len() == 1 && problems[0].contains("exit-with-code"),
        "{problems:?}"
    );
    // Prerelease versions match exactly only: wasmtime serve's keyvalue draft is not Spin's.
    assert_eq!(
        import_problems(r#"(component (import "wasi:keyvalue/store@0.2.0-draft2" (instance)))"#),
        Vec::<String>::new()
    );
    assert_eq!(
        import_problems(r#"(component (import "wasi:keyvalue/store@0.2.0-draft" (instance)))"#),
        vec!["not provided: wasi:keyvalue/store@0.2.0-draft"]
    );
    // Another track is another interface.
    assert_eq!(
        import_problems(r#"(component (import "wasi:cli/environment@0.3.0" (instance)))"#),
        vec!["not provided: wasi:cli/environment@0.3.0"]
    );
}

mod spin3 {
    use super::workspace_root;
    use wac_graph::types::{ItemKind, Package, Type, Types, WorldId};

    /// The WASI version Spin 3.x hosts (it also hosts 0.2.0 and 0.2.3, which add nothing).
    const WASI: (u64, u64, u64) = (0, 2, 6);

    /// `adapters/spin3/platform.wit`'s world, with its WASI 0.2.6 dependencies made from the
    /// vendored WASI WIT: version set to 0.2.6, items `@since` a later version left out.
    pub fn platform_world(types: &mut Types) -> WorldId {
        let root = workspace_root();
        let dir = tempfile::tempdir().unwrap();
        let deps = dir.path().join("deps");
        std::fs::create_dir(&deps).unwrap();
        std::fs::copy(
            root.join("adapters/spin3/platform.wit"),
            dir.path().join("platform.wit"),
        )
        .unwrap();
        let version = format!("{}.{}.{}", WASI.0, WASI.1, WASI.2);
        for entry in std::fs::read_dir(root.join("wit/deps")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let text = gate_newer_than_wasi(&text).replace("@0.2.12", &format!("@{version}"));
            std::fs::write(deps.join(path.file_name().unwrap()), text).unwrap();
        }
        let mut resolve = wit_parser::Resolve::default();
        let (package, _) = resolve.push_dir(dir.path()).unwrap();
        let exit = resolve
            .interfaces
            .iter()
            .find(|(_, i)| i.name.as_deref() == Some("exit"))
            .map(|(_, i)| i)
            .unwrap();
        assert!(
            exit.functions.contains_key("exit") && !exit.functions.contains_key("exit-with-code"),
            "wasi:cli/exit@0.2.6 has `exit` only"
        );
        let bytes = wit_component::encode(&resolve, package).unwrap();
        let package = Package::from_bytes("spin3-platform", None, bytes, types).unwrap();
        // The encoded package exports each world as a type whose one export is a component of
        // that world (what `wac targets` reads).
        let worlds: Vec<WorldId> = types[package.ty()]
            .exports
            .values()
            .filter_map(|item| match item {
                ItemKind::Type(Type::World(world)) => Some(*world),
                _ => None,
            })
            .collect();
        assert_eq!(worlds.len(), 1, "platform.wit defines one world");
        match types[worlds[0]].exports.values().next() {
            Some(ItemKind::Component(world)) => *world,
            other => panic!("unexpected WIT package encoding: {other:?}"),
        }
    }

    /// `@since(version = X)` with X newer than [`WASI`] becomes `@unstable(feature = …)` of a
    /// feature nobody enables, which leaves the item out (wit-parser refuses a `@since` newer
    /// than its package).
    fn gate_newer_than_wasi(text: &str) -> String {
        const SINCE: &str = "@since(version = ";
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(SINCE) {
            out.push_str(&rest[..at]);
            let after = &rest[at + SINCE.len()..];
            let end = after.find(')').expect("@since(...) is closed");
            let parts: Vec<u64> = after[..end]
                .split('.')
                .map(|n| n.trim().parse().expect("a numeric version"))
                .collect();
            if (parts[0], parts[1], parts[2]) > WASI {
                out.push_str("@unstable(feature = newer-than-spin-three)");
            } else {
                out.push_str(&rest[at..at + SINCE.len() + end + 1]);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[test]
fn bad_target_and_bad_config_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        "[[services]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[services.routes]]\npaths = [\"/a\"]\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = |target: &str, config: &Path| {
        process::run(&[
            "export",
            "--for",
            target,
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };

    let output = run("docker", &config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'docker' for '--for")
            && stderr.contains("wasmtime")
            && stderr.contains("spin"),
        "{stderr}"
    );

    std::fs::write(
        &config,
        "[[services]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[services.routes]]\nmethods = [\"get\"]\n",
    )
    .unwrap();
    for target in ["wasmtime", "spin"] {
        let output = run(target, &config);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("services[0].routes[0].methods[0]"),
            "{target}: {stderr}"
        );
    }
    let output = run("wasmtime", &dir.path().join("missing.toml"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
    assert!(!out.exists(), "nothing is written for a bad config");

    // A component that is not a wasi:http handler is refused, naming it.
    let component = dir.path().join("not-http.wasm");
    std::fs::write(&component, wat::parse_str("(component)").unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[guest]\ncomponent = {:?}\n[[services]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[services.routes]]\npaths = [\"/a\"]\n",
            component.to_str().unwrap()
        ),
    )
    .unwrap();
    let output = run("spin", &config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not-http.wasm") && stderr.contains("wasi:http/incoming-handler"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// The adapters themselves, run in wasmtime with a clock the test controls and (for the Spin
// adapter) a wasi:keyvalue draft2 store the test can look into.

mod adapter_host {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
    use wasmtime::{Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

    mod bindings {
        wasmtime::component::bindgen!({
            path: ["../wit", "../adapters/wit/adapters.wit"],
            world: "keygate:adapters/key-cache-keyvalue",
            with: { "wasi:keyvalue/store.bucket": super::Bucket },
            additional_derives: [PartialEq],
        });
    }

    pub use bindings::exports::keygate::gateway::key_cache::{Consumer, Lookup, Verdict};
    use bindings::wasi::keyvalue::store;

    /// A test clock, in milliseconds since the epoch, for both WASI clocks.
    #[derive(Clone)]
    pub struct Clock(Arc<AtomicU64>);

    impl Clock {
        pub fn at(ms: u64) -> Self {
            Self(Arc::new(AtomicU64::new(ms)))
        }
        pub fn set(&self, ms: u64) {
            self.0.store(ms, Ordering::SeqCst);
        }
        fn ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl wasmtime_wasi::HostWallClock for Clock {
        fn resolution(&self) -> Duration {
            Duration::from_millis(1)
        }
        fn now(&self) -> Duration {
            Duration::from_millis(self.ms())
        }
    }

    impl wasmtime_wasi::HostMonotonicClock for Clock {
        fn resolution(&self) -> u64 {
            1_000_000
        }
        fn now(&self) -> u64 {
            self.ms() * 1_000_000
        }
    }

    /// The key-value store: bucket name → key → value, shared by instances.
    pub type Buckets = Arc<Mutex<HashMap<String, HashMap<String, Vec<u8>>>>>;

    pub struct Bucket(String);

    struct Host {
        wasi: WasiCtx,
        table: ResourceTable,
        buckets: Buckets,
    }

    impl WasiView for Host {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl store::Host for Host {
        fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, store::Error> {
            if !self.buckets.lock().unwrap().contains_key(&identifier) {
                return Err(store::Error::NoSuchStore);
            }
            self.table
                .push(Bucket(identifier))
                .map_err(|err| store::Error::Other(err.to_string()))
        }
    }

    impl Host {
        fn with_bucket<T>(
            &mut self,
            bucket: &Resource<Bucket>,
            f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> T,
        ) -> Result<T, store::Error> {
            let name = &self
                .table
                .get(bucket)
                .map_err(|err| store::Error::Other(err.to_string()))?
                .0;
            let mut buckets = self.buckets.lock().unwrap();
            let bucket = buckets.get_mut(name).ok_or(store::Error::NoSuchStore)?;
            Ok(f(bucket))
        }
    }

    impl store::HostBucket for Host {
        fn get(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
        ) -> Result<Option<Vec<u8>>, store::Error> {
            self.with_bucket(&bucket, |b| b.get(&key).cloned())
        }
        fn set(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
            value: Vec<u8>,
        ) -> Result<(), store::Error> {
            self.with_bucket(&bucket, |b| {
                b.insert(key, value);
            })
        }
        fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), store::Error> {
            self.with_bucket(&bucket, |b| {
                b.remove(&key);
            })
        }
        fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, store::Error> {
            self.with_bucket(&bucket, |b| b.contains_key(&key))
        }
        fn list_keys(
            &mut self,
            bucket: Resource<Bucket>,
            _cursor: Option<String>,
        ) -> Result<store::KeyResponse, store::Error> {
            self.with_bucket(&bucket, |b| store::KeyResponse {
                keys: b.keys().cloned().collect(),
                cursor: None,
            })
        }
        fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
            self.table.delete(bucket)?;
            Ok(())
        }
    }

    /// An adapter component, compiled once; `instance()` makes fresh instances.
    pub struct Adapter {
        engine: Engine,
        linker: Linker<Host>,
        component: Component,
    }

    pub struct Instance {
        store: Store<Host>,
        cache: bindings::KeyCacheKeyvalue,
    }

    impl Adapter {
        pub fn new(wasm: &[u8]) -> Self {
            let engine = Engine::default();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
            bindings::KeyCacheKeyvalue::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)
                .unwrap();
            let component = Component::new(&engine, wasm).unwrap();
            Self {
                engine,
                linker,
                component,
            }
        }

        pub fn instance(&self, clock: &Clock, buckets: &Buckets) -> Instance {
            let wasi = WasiCtxBuilder::new()
                .wall_clock(clock.clone())
                .monotonic_clock(clock.clone())
                .inherit_stderr()
                .build();
            let mut store = Store::new(
                &self.engine,
                Host {
                    wasi,
                    table: ResourceTable::new(),
                    buckets: Arc::clone(buckets),
                },
            );
            let cache =
                bindings::KeyCacheKeyvalue::instantiate(&mut store, &self.component, &self.linker)
                    .unwrap();
            Instance { store, cache }
        }
    }

    impl Instance {
        pub fn get(&mut self, fingerprint: &str) -> Lookup {
            self.cache
                .keygate_gateway_key_cache()
                .call_get(&mut self.store, fingerprint)
                .unwrap()
        }

        pub fn put(&mut self, fingerprint: &str, verdict: &Verdict, ttl_ms: u64, stale_ms: u64) {
            self.cache
                .keygate_gateway_key_cache()
                .call_put(&mut self.store, fingerprint, verdict, ttl_ms, stale_ms)
                .unwrap();
        }

        pub fn release(&mut self, fingerprint: &str) {
            self.cache
                .keygate_gateway_key_cache()
                .call_release(&mut self.store, fingerprint)
                .unwrap();
        }

        pub fn invalidate(&mut self, fingerprint: &str) {
            self.cache
                .keygate_gateway_key_cache()
                .call_invalidate(&mut self.store, fingerprint)
                .unwrap();
        }
    }

    pub fn ann() -> Verdict {
        Verdict::Valid(Consumer {
            id: Some("c-1".into()),
            username: Some("ann".into()),
            custom_id: None,
            credential_id: Some("cred-1".into()),
        })
    }
}

/// Both adapters: fresh for the TTL, then stale for the stale window, then gone.
#[test]
fn adapters_honour_ttl_and_stale_windows() {
    use adapter_host::{Adapter, Buckets, Clock, Lookup, Verdict, ann};
    const T0: u64 = 1_800_000_000_000;
    for (name, wasm) in [
        ("memory", KEY_CACHE_MEMORY),
        ("keyvalue", KEY_CACHE_KEYVALUE),
    ] {
        let adapter = Adapter::new(wasm);
        let clock = Clock::at(T0);
        let buckets: Buckets = Default::default();
        buckets
            .lock()
            .unwrap()
            .insert("default".into(), Default::default());
        let mut cache = adapter.instance(&clock, &buckets);

        assert_eq!(cache.get("fp-ann"), Lookup::Miss, "{name}");
        cache.put("fp-ann", &ann(), 1_000, 500);
        cache.put("fp-bad", &Verdict::Invalid, 300, 0);
        assert_eq!(cache.get("fp-ann"), Lookup::Fresh(ann()), "{name}");
        assert_eq!(
            cache.get("fp-bad"),
            Lookup::Fresh(Verdict::Invalid),
            "{name}"
        );
        clock.set(T0 + 299);
        assert_eq!(
            cache.get("fp-bad"),
            Lookup::Fresh(Verdict::Invalid),
            "{name}"
        );
        clock.set(T0 + 300);
        assert_eq!(cache.get("fp-bad"), Lookup::Miss, "{name}: no stale window");
        clock.set(T0 + 999);
        assert_eq!(cache.get("fp-ann"), Lookup::Fresh(ann()), "{name}");
        clock.set(T0 + 1_000);
        assert_eq!(cache.get("fp-ann"), Lookup::Stale(ann()), "{name}");
        cache.release("fp-ann");
        clock.set(T0 + 1_499);
        assert_eq!(cache.get("fp-ann"), Lookup::Stale(ann()), "{name}");
        clock.set(T0 + 1_500);
        assert_eq!(cache.get("fp-ann"), Lookup::Miss, "{name}");
        // A refill starts over; invalidate forgets.
        cache.put("fp-ann", &ann(), 1_000, 0);
        assert_eq!(cache.get("fp-ann"), Lookup::Fresh(ann()), "{name}");
        cache.invalidate("fp-ann");
        assert_eq!(cache.get("fp-ann"), Lookup::Miss, "{name}");
    }
}

/// The Spin adapter keeps verdicts in store `default`, where every instance sees them.
#[test]
fn keyvalue_adapter_shares_verdicts_through_the_store() {
    use adapter_host::{Adapter, Buckets, Clock, Lookup, ann};
    const T0: u64 = 1_800_000_000_000;
    let adapter = Adapter::new(KEY_CACHE_KEYVALUE);
    let clock = Clock::at(T0);
    let buckets: Buckets = Default::default();
    buckets
        .lock()
        .unwrap()
        .insert("default".into(), Default::default());

    adapter
        .instance(&clock, &buckets)
        .put("fp-ann", &ann(), 60_000, 0);
    let mut other = adapter.instance(&clock, &buckets);
    assert_eq!(other.get("fp-ann"), Lookup::Fresh(ann()));
    let keys: Vec<String> = buckets.lock().unwrap()["default"].keys().cloned().collect();
    assert_eq!(keys, vec!["keygate:key-cache:fp-ann"]);

    // An expired entry is deleted when read.
    clock.set(T0 + 60_000);
    assert_eq!(other.get("fp-ann"), Lookup::Miss);
    assert!(buckets.lock().unwrap()["default"].is_empty());

    // Whatever else is in the store under our key is a miss, not a trap.
    buckets.lock().unwrap().get_mut("default").unwrap().insert(
        "keygate:key-cache:fp-junk".into(),
        b"{\"valid\":1}".to_vec(),
    );
    assert_eq!(other.get("fp-junk"), Lookup::Miss);

    // No store "default" (e.g. `key_value_stores` left out): every lookup misses, nothing fails.
    let empty: Buckets = Default::default();
    let mut storeless = adapter.instance(&clock, &empty);
    storeless.put("fp-ann", &ann(), 60_000, 0);
    assert_eq!(storeless.get("fp-ann"), Lookup::Miss);
    storeless.invalidate("fp-ann");
}

/// The memory adapter remembers per instance only: a new instance starts empty.
#[test]
fn memory_adapter_remembers_per_instance() {
    use adapter_host::{Adapter, Buckets, Clock, Lookup, ann};
    let adapter = Adapter::new(KEY_CACHE_MEMORY);
    let clock = Clock::at(5_000);
    let buckets: Buckets = Default::default();
    let mut first = adapter.instance(&clock, &buckets);
    first.put("fp-ann", &ann(), 60_000, 0);
    assert_eq!(first.get("fp-ann"), Lookup::Fresh(ann()));
    assert_eq!(
        adapter.instance(&clock, &buckets).get("fp-ann"),
        Lookup::Miss
    );
}
