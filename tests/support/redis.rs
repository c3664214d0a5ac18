//! A real `redis-server` (Debian's package; `tests/run.sh` installs it when missing) on a free
//! port of 127.0.0.1, with nothing saved to disk, killed when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// With [`RedisServer::start_tls`]: the TLS port (the plain one stays for the tests).
    pub tls_port: Option<u16>,
    /// The self-signed certificate and key of the TLS port.
    tls_dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Start one on a free port and wait until it answers `PING`.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self {
            child: None,
            port,
            tls_port: None,
            tls_dir: None,
        };
        server.restart();
        server
    }

    /// [`RedisServer::start`], also listening with TLS on another port, with a self-signed
    /// certificate for `127.0.0.1` made by `openssl`.
    pub fn start_tls() -> Self {
        let free = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port()
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(made.success(), "openssl could not make a certificate");
        let mut server = Self {
            child: None,
            port: free(),
            tls_port: Some(free()),
            tls_dir: Some(dir),
        };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kill it (as an outage would) and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port (empty: nothing was saved) and wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let binary = which("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server is not installed: run the README's test command (tests/run.sh \
                 installs it) or `apt-get install redis-server`"
            )
        });
        let mut command = Command::new(binary);
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        if let (Some(port), Some(dir)) = (self.tls_port, &self.tls_dir) {
            command
                .arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(dir.path().join("cert.pem"))
                .arg("--tls-key-file")
                .arg(dir.path().join("key.pem"))
                .arg("--tls-ca-cert-file")
                .arg(dir.path().join("cert.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send one command (RESP), return the first line of the answer; `None` when it cannot be
    /// reached.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(self.addr()).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).ok()?;
        Some(line.trim_end().to_string())
    }

    /// `GET key`: the value, `None` when it is not set.
    pub fn get(&self, key: &str) -> Option<String> {
        let mut stream = TcpStream::connect(self.addr()).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        stream.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut length = String::new();
        reader.read_line(&mut length).ok()?;
        if length.starts_with("$-1") {
            return None;
        }
        let mut value = String::new();
        reader.read_line(&mut value).ok()?;
        Some(value.trim_end().to_string())
    }

    /// The keys matching `pattern` (first line of each bulk string skipped: names only).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let Ok(mut stream) = TcpStream::connect(self.addr()) else {
            return Vec::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("*2\r\n$4\r\nKEYS\r\n${}\r\n{pattern}\r\n", pattern.len());
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let count: usize = line.trim_end().trim_start_matches('*').parse().unwrap();
        (0..count)
            .map(|_| {
                let mut length = String::new();
                reader.read_line(&mut length).unwrap();
                let mut name = String::new();
                reader.read_line(&mut name).unwrap();
                name.trim_end().to_string()
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
