//! `wasmtime serve` (wasmtime-cli, on PATH) running an exported gateway through its `serve.sh`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The wasmtime-cli version the export targets and CI installs.
pub const VERSION: &str = "48.0.8";

/// Panics with the install command unless `wasmtime --version` on PATH is [`VERSION`].
pub fn require_wasmtime() {
    let install = format!(
        "install it with `cargo install wasmtime-cli --version {VERSION} --locked` \
         (.ci/run does this when it is missing)"
    );
    match Command::new("wasmtime").arg("--version").output() {
        Ok(output) if output.status.success() => {
            let text = String::from_utf8_lossy(&output.stdout);
            let found = text.split_whitespace().nth(1).unwrap_or_default();
            assert_eq!(
                found,
                VERSION,
                "`wasmtime --version` says {:?}; these tests need wasmtime-cli {VERSION}: {install}",
                text.trim()
            );
        }
        Ok(output) => panic!(
            "`wasmtime --version` failed ({}); these tests need wasmtime-cli {VERSION}: {install}",
            output.status
        ),
        Err(err) => panic!(
            "wasmtime is not on PATH ({err}); these tests need wasmtime-cli {VERSION}: {install}"
        ),
    }
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
