//! What `keygate export` writes for each host, and how it refuses bad input.

use crate::support::{AuthApi, Origin, basic_config};
use crate::{export, run_export, two_origin_config};
use keygate::export::{ComponentWorld, KEY_CACHE_KEYVALUE};
use std::path::Path;

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
        assert_eq!(name, "keygate:gateway/key-cache@0.1.4");
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
    // The gateway is the embedded guest with the key-value counters plugged in (they count in
    // the store the manifest grants); the key cache is Spin's to plug.
    let gateway = std::fs::read(out.join(referenced[0].as_str())).unwrap();
    assert_eq!(
        gateway,
        keygate::export::plug(
            keygate::runtime::component::EMBEDDED_GUEST,
            keygate::export::COUNTERS_KEYVALUE
        )
        .unwrap()
    );
    let world = keygate::export::ComponentWorld::read(&gateway).unwrap();
    assert!(world.imports_key_cache() && !world.imports_counters());
    assert!(
        world
            .imports
            .iter()
            .any(|name| name == "wasi:keyvalue/atomics@0.2.0-draft2"),
        "{:?}",
        world.imports
    );
}

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
    let run = |target: &str, config: &Path| run_export(target, config, &out);

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
