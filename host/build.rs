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
    // The counters adapters `keygate export` plugs in where the host keeps no counters.
    (
        "keygate-counters-memory",
        "keygate_counters_memory.wasm",
        "KEYGATE_COUNTERS_MEMORY_WASM",
    ),
    (
        "keygate-counters-keyvalue",
        "keygate_counters_keyvalue.wasm",
        "KEYGATE_COUNTERS_KEYVALUE_WASM",
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
    ensure_wasm_target();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--target",
            WASM_TARGET,
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
            "building the guest component failed ({status}); is the {WASM_TARGET} target installed? \
             (`rustup target add {WASM_TARGET}`, which rust-toolchain.toml requests)"
        );
    }
    let built = target_dir.join(WASM_TARGET).join("guest");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    for (_, file, var) in COMPONENTS {
        let path = copy(&built.join(file), &out_dir.join(file));
        println!("cargo:rustc-env={var}={}", path.display());
    }
}

const WASM_TARGET: &str = "wasm32-wasip2";

/// rustup installs a toolchain file's `targets` only when it installs the toolchain, so a
/// machine that already had 1.95.0 lacks the wasm target: add it here rather than ask the user
/// for a third command. Without rustup, the build fails below with the message saying what to
/// install.
fn ensure_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let installed = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .is_some_and(|libdir| has_rlibs(&libdir));
    if installed {
        return;
    }
    // Set by rustup's proxies: the toolchain this build runs on (rust-toolchain.toml's).
    let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") else {
        println!(
            "cargo:warning=the {WASM_TARGET} target is missing and rustup is not in use; \
             install the Rust standard library for {WASM_TARGET} to build the guest component"
        );
        return;
    };
    println!(
        "cargo:warning=installing the {WASM_TARGET} target for toolchain {} \
         (`rustup target add {WASM_TARGET}`): the guest component is built for it",
        toolchain.to_string_lossy()
    );
    let added = Command::new("rustup")
        .args(["target", "add", WASM_TARGET, "--toolchain"])
        .arg(&toolchain)
        .status();
    match added {
        Ok(status) if status.success() => {}
        Ok(status) => println!("cargo:warning=`rustup target add {WASM_TARGET}` failed ({status})"),
        Err(err) => println!("cargo:warning=could not run rustup: {err}"),
    }
}

/// Whether a target's library directory holds the standard library (file names carry a hash).
fn has_rlibs(libdir: &Path) -> bool {
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    })
}

fn copy(from: &Path, to: &Path) -> PathBuf {
    std::fs::copy(from, to)
        .unwrap_or_else(|err| panic!("copying {} to {}: {err}", from.display(), to.display()));
    to.to_path_buf()
}
