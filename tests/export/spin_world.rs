//! The Spin flavour against a world of what Spin 3.x provides, matched the way Spin matches.

use crate::export;
use crate::support::{AuthApi, Origin, basic_config};
use keygate::export::{COUNTERS_MEMORY, KEY_CACHE_MEMORY};

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

    // The rate-limit counters are plugged in already, and count with Spin's key-value atomics
    // (shared by every instance), not in instance memory.
    let gateway_world = keygate::export::ComponentWorld::read(&gateway).unwrap();
    assert!(
        gateway_world
            .imports
            .iter()
            .any(|name| name == "wasi:keyvalue/atomics@0.2.0-draft2")
            && !gateway_world.imports_counters()
            && !gateway_world
                .imports
                .iter()
                .any(|name| name.starts_with("keygate:gateway/counters")),
        "the Spin gateway should import wasi:keyvalue atomics, not keygate's counters: {:?}",
        gateway_world.imports
    );
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
        vec!["keygate:gateway/key-cache@0.1.4"]
    );
    // Nor does the wasmtime flavour's adapter world pass for anything but WASI (it imports
    // nothing Spin lacks, so the whole wasmtime export fits too).
    let memory_app = keygate::export::plug(
        &keygate::export::plug(keygate::runtime::component::EMBEDDED_GUEST, COUNTERS_MEMORY)
            .unwrap(),
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
    use crate::workspace_root;
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
