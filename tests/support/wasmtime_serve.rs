//! `wasmtime serve` 48.0.8 running an exported gateway through its `serve.sh`.
//!
//! The `wasmtime` the script finds is built by the tests from `tests/wasmtime-serve/`: a
//! separate workspace whose binary runs wasmtime-cli's own `serve` command from the
//! wasmtime-cli crate, pinned to the version the export targets. So `cargo test` needs no
//! `cargo install`, and the host's dependency graph never sees wasmtime-cli.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The wasmtime-cli version the export targets (and `tests/wasmtime-serve` pins).
pub const VERSION: &str = "48.0.8";

/// `PATH` with the directory of the tests' `wasmtime` first; builds it on first use (once per
/// test binary; cargo's own lock serialises the binaries, and a built helper is a no-op build).
pub fn path_with_wasmtime() -> OsString {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let bin_dir = build_wasmtime();
        let mut dirs = vec![bin_dir];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).expect("PATH entries without separators")
    })
    .clone()
}

/// `cargo build --release` of `tests/wasmtime-serve` into a target directory of its own (the
/// cargo running these tests may hold the main one's lock); returns the directory holding
/// `wasmtime`, after checking it reports [`VERSION`].
fn build_wasmtime() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace root");
    let manifest = root.join("tests/wasmtime-serve/Cargo.toml");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasmtime-serve");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    // Only what configures cargo itself passes through: the variables cargo sets for this test
    // (package name, manifest dir, flags, coverage) would dirty the helper's build scripts'
    // fingerprints and rebuild it for every test binary.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let configures_cargo = [
            "CARGO_HOME",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTR",
            "CARGO_TERM_",
        ]
        .iter()
        .any(|kept| name.starts_with(kept));
        let for_this_build = name.starts_with("CARGO")
            || name.starts_with("RUSTC_")
            || ["RUSTFLAGS", "RUSTDOCFLAGS", "OUT_DIR", "LLVM_PROFILE_FILE"].contains(&&*name);
        if for_this_build && !configures_cargo {
            build.env_remove(&*name);
        }
    }
    let status = build
        .status()
        .unwrap_or_else(|err| panic!("running cargo to build {}: {err}", manifest.display()));
    assert!(
        status.success(),
        "building wasmtime-cli {VERSION}'s serve command from {} failed ({status})",
        manifest.display()
    );
    let bin_dir = target_dir.join("release");
    let version = Command::new(bin_dir.join("wasmtime"))
        .arg("--version")
        .output()
        .expect("the built wasmtime runs");
    let version = String::from_utf8_lossy(&version.stdout);
    assert_eq!(
        version.split_whitespace().nth(1),
        Some(VERSION),
        "the tests' wasmtime says {version:?}"
    );
    bin_dir
}

/// A running `serve.sh` (which execs `wasmtime serve`), killed when dropped.
pub struct WasmtimeServe {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl WasmtimeServe {
    /// Run `sh SCRIPT 127.0.0.1:0` and wait until wasmtime says where it is serving. Through
    /// `sh`, not by executing the script: a script written by this process can be held open
    /// for writing by another test thread's fork for a moment, and executing it then fails
    /// with "Text file busy". (`tests/export.rs` executes `serve.sh` directly once.)
    pub fn start(script: &Path) -> Self {
        let mut child = Command::new("sh")
            .arg(script)
            .env("PATH", path_with_wasmtime())
            .arg("127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (ready, announced) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .strip_prefix("Serving HTTP on http://")
                    .and_then(|rest| rest.strip_suffix('/'))
                {
                    let _ = ready.send(addr.to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut serve = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        // Compiling the component comes first; allow for a busy machine.
        match announced.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => serve.addr = addr.parse().expect("wasmtime prints a socket address"),
            Err(_) => {
                let status = serve.child.try_wait().ok().flatten();
                panic!(
                    "wasmtime serve did not start (exit status {status:?}); its log:\n{}",
                    serve.log().join("\n")
                );
            }
        }
        serve
    }

    /// What wasmtime and the component wrote to stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
