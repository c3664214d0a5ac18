//! The Node.js and workerd exports (`keygate export --for node | workerd`) run by their
//! `serve.sh`, for the tests.
//!
//! Installing the pinned npm packages is the one step that reaches the npm registry: it runs
//! once, into `target/js-export/<target>/node_modules` (`npm ci --prefer-offline`, so a warm
//! npm cache needs no network; `tests/run.sh` does it up front), and every export the tests
//! write links its `node_modules` there. The export and `serve.sh` then find the packages
//! installed and install nothing: the tests' own traffic stays on 127.0.0.1.
//!
//! Used through `#[path]` by the files that need it (this folder's `mod.rs` does not name it).

use std::io::{BufRead, BufReader};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// A JavaScript host of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsHost {
    Node,
    Workerd,
}

impl JsHost {
    /// The `--for` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Workerd => "workerd",
        }
    }

    fn target(self) -> keygate::export::Target {
        match self {
            Self::Node => keygate::export::Target::Node,
            Self::Workerd => keygate::export::Target::Workerd,
        }
    }

    fn package_files(self) -> (&'static str, &'static str) {
        use keygate::export::js;
        match self {
            Self::Node => (js::NODE_PACKAGE_JSON, js::NODE_PACKAGE_LOCK),
            Self::Workerd => (js::WORKERD_PACKAGE_JSON, js::WORKERD_PACKAGE_LOCK),
        }
    }
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace root")
}

/// `target/js-export/<host>/node_modules` with the export's pinned packages, installed on
/// first use (once per test binary; a file lock serialises binaries running side by side).
pub fn shared_node_modules(host: JsHost) -> PathBuf {
    static NODE: OnceLock<PathBuf> = OnceLock::new();
    static WORKERD: OnceLock<PathBuf> = OnceLock::new();
    let cell = match host {
        JsHost::Node => &NODE,
        JsHost::Workerd => &WORKERD,
    };
    cell.get_or_init(|| install(host)).clone()
}

fn install(host: JsHost) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("js-export")
        .join(host.name());
    std::fs::create_dir_all(&dir).unwrap();
    let lock_file = std::fs::File::create(dir.join(".lock")).unwrap();
    lock_file.lock().expect("locking the npm install folder");
    let (package_json, package_lock) = host.package_files();
    let installed = dir.join(keygate::export::js::INSTALLED_LOCK);
    let current = std::fs::read_to_string(&installed).ok().as_deref() == Some(package_lock);
    if !current {
        std::fs::write(dir.join("package.json"), package_json).unwrap();
        std::fs::write(dir.join("package-lock.json"), package_lock).unwrap();
        let output = Command::new("npm")
            .args([
                "ci",
                "--prefer-offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|err| {
                panic!("running npm (Node.js 20+ and npm are needed; tests/run.sh installs them): {err}")
            });
        assert!(
            output.status.success(),
            "npm ci in {} failed: {}{}",
            dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::write(&installed, package_lock).unwrap();
    }
    dir.join("node_modules")
}

/// `keygate export --for HOST` of the config at `config` into `out`, through the library,
/// with `out/node_modules` linked to [`shared_node_modules`].
pub fn export(host: JsHost, config: &Path, out: &Path) -> keygate::export::Exported {
    link_node_modules(host, out);
    keygate::export::export(host.target(), config, out)
        .unwrap_or_else(|err| panic!("keygate export --for {}: {err:#}", host.name()))
}

/// `out/node_modules` → [`shared_node_modules`] (`out` is created).
pub fn link_node_modules(host: JsHost, out: &Path) {
    let modules = shared_node_modules(host);
    std::fs::create_dir_all(out).unwrap();
    let link = out.join("node_modules");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&modules, &link).unwrap();
    }
}

/// A running `serve.sh` (which execs node or workerd), killed when dropped.
pub struct JsServe {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl JsServe {
    /// Run `sh SCRIPT ADDR` and wait until it serves: on Node with ADDR `127.0.0.1:0`, until
    /// server.mjs says where it listens; on workerd with ADDR `fd=3`, a listening socket bound
    /// here and inherited (so no other test can take its port in between), until the socket
    /// answers. Through `sh`, not by executing the script (see `WasmtimeServe::start`).
    pub fn start(host: JsHost, script: &Path) -> Self {
        Self::start_with_env(host, script, &[])
    }

    /// [`JsServe::start`] with more environment variables for `serve.sh`.
    pub fn start_with_env(host: JsHost, script: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg(script)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let listener = match host {
            JsHost::Node => {
                command.arg("127.0.0.1:0");
                None
            }
            JsHost::Workerd => {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
                command.arg("fd=3");
                // SAFETY: dup2 and fcntl are async-signal-safe; the child gets the listener as
                // fd 3, without close-on-exec.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                        if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Some(listener)
            }
        };
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (announce, announced) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&log);
            let announce = announce.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addr) = line
                        .strip_prefix("Serving HTTP on http://")
                        .and_then(|rest| rest.strip_suffix('/'))
                        .and_then(|addr| addr.parse::<SocketAddr>().ok())
                    {
                        let _ = announce.send(addr);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr = listener
            .as_ref()
            .map(|l| l.local_addr().unwrap())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut serve = Self { child, addr, log };
        // Our copy of the listener goes: workerd holds its own.
        drop(listener);
        // Loading the modules comes first; allow for a busy machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!(
                    "{} exited ({status}) before serving; its log:\n{}",
                    script.display(),
                    serve.log().join("\n")
                );
            }
            match host {
                JsHost::Node => {
                    if let Ok(addr) = announced.recv_timeout(Duration::from_millis(100)) {
                        serve.addr = addr;
                        return serve;
                    }
                }
                JsHost::Workerd => {
                    if workerd_answers(serve.addr) {
                        return serve;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not serve within 60 s; its log:\n{}",
                    script.display(),
                    serve.log().join("\n")
                );
            }
        }
    }

    /// What the host and the component wrote so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for JsServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether workerd answers on `addr` (the kernel accepts connections on the inherited socket
/// before workerd has loaded the Worker; an answer means it has). The probe is not HTTP, so
/// workerd's parser answers 400 itself: nothing reaches the Worker, or an origin.
fn workerd_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"probe\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}
