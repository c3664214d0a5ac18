//! Builds the guest component (and the test fixtures' components) for `wasm32-wasip2`, so the
//! `keygate` binary can embed its default policy and a plain `cargo build` is all it takes.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, wasm file name, env var the host code reads the path from)
const COMPONENTS: &[(&str, &str, &str)] = &[
    ("keygate-guest", "keygate_guest.wasm", "KEYGATE_GUEST_WASM"),
    (
        "keygate-test-misbehaving-guest",
        "keygate_test_misbehaving_guest.wasm",
        "KEYGATE_TEST_MISBEHAVING_WASM",
    ),
    (
        "keygate-test-tagged-guest",
        "keygate_test_tagged_guest.wasm",
        "KEYGATE_TEST_TAGGED_WASM",
    ),
    (
        "keygate-test-hostile-guest",
        "keygate_test_hostile_guest.wasm",
        "KEYGATE_TEST_HOSTILE_WASM",
    ),
    // Key-cache adapters that `keygate export` plugs into the guest for other hosts.
    (
        "keygate-key-cache-memory",
        "keygate_key_cache_memory.wasm",
        "KEYGATE_KEY_CACHE_MEMORY_WASM",
    ),
    (
        "keygate-key-cache-keyvalue",
        "keygate_key_cache_keyvalue.wasm",
        "KEYGATE_KEY_CACHE_KEYVALUE_WASM",
    ),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root");
    for watched in [
        "guest",
        "policy",
        "wit",
        "tests/guests",
        "adapters",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // A target directory of its own: the outer cargo holds the lock on the main one.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm-components");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _, _) in COMPONENTS {
        command.args(["-p", package]);
    }
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|err| panic!("could not run cargo to build the guest component: {err}"));
    if !status.success() {
        panic!(
            "building the guest component failed ({status}); is the wasm32-wasip2 target installed? \
             (`rustup target add wasm32-wasip2`, which rust-toolchain.toml requests)"
        );
    }
    let built = target_dir.join("wasm32-wasip2").join("guest");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    for (_, file, var) in COMPONENTS {
        let path = copy(&built.join(file), &out_dir.join(file));
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::copy(from, to)
        .unwrap_or_else(|err| panic!("copying {} to {}: {err}", from.display(), to.display()));
    to.to_path_buf()
}
