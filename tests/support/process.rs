//! The real `keygate` binary as a child process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const KEYGATE: &str = env!("CARGO_BIN_EXE_keygate");

/// `keygate ARGS…` run to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(KEYGATE)
        .args(args)
        .output()
        .expect("run keygate")
}

/// A `keygate serve` process, killed when dropped.
pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config has one.
    pub admin: Option<SocketAddr>,
    /// Log lines after the ready line, as they come.
    pub log: mpsc::Receiver<String>,
}

impl Served {
    /// Start `keygate serve --config PATH` and wait until it logs that it is serving.
    pub fn start(config: &Path) -> Self {
        Self::start_logging(config, "info")
    }

    /// [`Served::start`] with the log filter `level` (`KEYGATE_LOG`).
    pub fn start_logging(config: &Path, level: &str) -> Self {
        let mut child = Command::new(KEYGATE)
            .args(["serve", "--config"])
            .arg(config)
            .env("KEYGATE_LOG", level)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keygate serve");
        let stderr = child.stderr.take().unwrap();
        let (lines, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let (addr, admin) = loop {
            let line = log
                .recv_timeout(Duration::from_secs(60))
                .expect("keygate serve logs its address or exits");
            if let Some(rest) = line.split("keygate is serving addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                let admin = rest
                    .split("admin=Some(")
                    .nth(1)
                    .and_then(|a| a.split(')').next())
                    .map(|a| a.parse().expect("an admin socket address"));
                break (addr.parse().expect("a socket address"), admin);
            }
        };
        Self {
            child,
            addr,
            admin,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Start counting the peak afresh (Linux: "5" to /proc/PID/clear_refs resets VmHWM), so
    /// what start-up used (compiling the component when the cache is cold) is not counted.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
            .expect("resetting the peak RSS through /proc/PID/clear_refs");
    }

    /// Send a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.pid()).expect("pids fit in i32");
        // SAFETY: kill(2) has no memory-safety preconditions.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}) failed");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
