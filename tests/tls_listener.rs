//! Scenarios: the TLS listener (`[server] tls_listen`, `tls_cert`, `tls_key`) and HTTP/2.
//!
//! curl (HTTP/2 by ALPN, HTTP/1.1, h2c with prior knowledge) and a rustls client talk to the
//! real gateway on 127.0.0.1; certificates come from a test PKI made with openssl. The HTTP/2
//! floods (rapid reset, an HPACK header-list bomb) are written as raw frames, so the test and
//! not a client library decides what goes on the wire.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::h2_frames::*;
use support::tls::{ServerCert, TestPki};
use support::{AuthApi, GatewayConfig, Origin, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "static-key";

/// A bound on waits that never end when the gateway misbehaves, never a way to order events.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, step: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, step)
        .await
        .unwrap_or_else(|_| panic!("no progress within {PATIENCE:?}: {what}"))
}

/// A test PKI and the two files the gateway's config names, which a test may overwrite with
/// another certificate (as a renewal does) before a reload.
struct Certs {
    pki: TestPki,
    dir: tempfile::TempDir,
    first: ServerCert,
}

impl Certs {
    fn new() -> Self {
        let mut pki = TestPki::new();
        let first = pki.issue(&["api.example"]);
        let dir = tempfile::tempdir().unwrap();
        let certs = Self { pki, dir, first };
        certs.install(&certs.first.clone());
        certs
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Put `cert` where the config points (each file replaced by a rename, as tools do).
    fn install(&self, cert: &ServerCert) {
        replace(&self.cert_path(), &std::fs::read(&cert.cert).unwrap());
        replace(&self.key_path(), &std::fs::read(&cert.key).unwrap());
    }

    /// The `[server]` lines of a TLS listener presenting these files.
    fn server_lines(&self) -> [String; 3] {
        [
            "tls_listen = \"127.0.0.1:0\"".to_string(),
            format!("tls_cert = {:?}", self.cert_path().to_str().unwrap()),
            format!("tls_key = {:?}", self.key_path().to_str().unwrap()),
        ]
    }
}

fn replace(path: &Path, contents: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// The gateway with a TLS listener in front of `origin`: route `/api` (and hosts-routed
/// `/hosted` for `api.example`), the static key, `extra` lines of `[server]`.
async fn gateway(certs: &Certs, origin: &Origin, extra: &[&str]) -> keygate::RunningGateway {
    gateway_with(certs, origin, extra, &[]).await
}

/// [`gateway`] with whole tables (e.g. `[guest]`) added.
async fn gateway_with(
    certs: &Certs,
    origin: &Origin,
    extra: &[&str],
    tables: &[&str],
) -> keygate::RunningGateway {
    let mut config = GatewayConfig::new()
        .consumer("static-user", None, &[KEY])
        .service("api", format_args!("http://{}/v1", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/api\"]")
        .route("name = \"hosted\"\nhosts = [\"api.example\"]\npaths = [\"/hosted\"]\npreserve_host = true");
    for line in certs.server_lines() {
        config = config.server(line);
    }
    for line in extra {
        config = config.server(line);
    }
    for table in tables {
        config = config.tables(table);
    }
    start_gateway(&config.to_string()).await
}

fn tls_addr(gateway: &keygate::RunningGateway) -> SocketAddr {
    gateway.tls_addr.expect("the gateway has a TLS listener")
}

/// What curl made of one request: status, body, the HTTP version it spoke.
#[derive(Debug)]
struct Curled {
    status: u16,
    body: String,
    version: String,
    ok: bool,
    /// Printed by the assertions (`{reply:?}`).
    #[allow(dead_code)]
    stderr: String,
}

const MARK: &str = "\n--curl--";

/// Run `curl -sS ARGS…` (with the test CA trusted) and split out status and version.
async fn curl(ca: &Path, args: &[&str]) -> Curled {
    let output = within(
        "curl",
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(ca)
            .args(["-w", &format!("{MARK}%{{http_code}} %{{http_version}}")])
            .args(args)
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, tail) = stdout.rsplit_once(MARK).unwrap_or((&stdout, "0 0"));
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    Curled {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        version: version.trim().to_string(),
        ok: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{path}", addr.port())
}

// ---- a rustls client of our own: certificates seen, connections held open ----

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(ca: &Path, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream {
    let tcp = within("connect", TcpStream::connect(addr)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, alpn));
    within(
        "TLS handshake",
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake with the gateway")
}

/// The leaf certificate the server presented, as [`fingerprint`].
fn presented(stream: &TlsStream) -> String {
    fingerprint(
        &stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("a certificate")[0],
    )
}

fn leaf_of(cert: &ServerCert) -> String {
    fingerprint(&CertificateDer::from_pem_file(&cert.leaf).unwrap())
}

/// Which certificate, in a form an assertion can print: its SHA-256, shortened. Each issued
/// certificate has its own serial and key, so its own fingerprint.
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(cert.as_ref())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An HTTP/2 connection over `stream` (ALPN h2), driven in the background.
async fn h2_client(stream: TlsStream) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    sender
}

async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> (u16, String) {
    let request = hyper::Request::get(format!("https://localhost:{}{path}", addr.port()))
        .header("apikey", KEY)
        .body(Empty::new())
        .unwrap();
    let response = within("an HTTP/2 answer", sender.send_request(request))
        .await
        .expect("an HTTP/2 response");
    let status = response.status().as_u16();
    let body = within("the body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn raw_h2(ca: &Path, addr: SocketAddr) -> TlsStream {
    let mut stream = tls_connect(ca, addr, &[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    stream
}

// ---- the tests ----

#[tokio::test]
async fn curl_over_http2_with_tls_gets_the_origins_answer() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let reply = curl(
        &certs.pki.ca_cert,
        &[
            "--http2",
            "-H",
            "apikey: static-key",
            &https(addr, "/api/x"),
        ],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (200, "2"),
        "{reply:?}"
    );
    assert!(
        reply.body.contains("\"origin\":\"tls-origin\""),
        "{reply:?}"
    );
    assert_eq!(origin.last().uri, "/v1/x");
}

#[tokio::test]
async fn curl_over_http11_with_tls_gets_the_origins_answer() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let reply = curl(
        &certs.pki.ca_cert,
        &[
            "--http1.1",
            "-H",
            "apikey: static-key",
            &https(addr, "/api/x"),
        ],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (200, "1.1"),
        "{reply:?}"
    );
    assert!(
        reply.body.contains("\"origin\":\"tls-origin\""),
        "{reply:?}"
    );
}

#[tokio::test]
async fn smuggling_shapes_over_tls_are_refused_as_on_the_plain_listener() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    // The sniffer reads the decrypted stream: both shapes it alone catches.
    for framing in [
        ["content-length: 3", "transfer-encoding: chunked"],
        ["content-length: 3", "content-length: 3"],
    ] {
        let mut stream = tls_connect(&certs.pki.ca_cert, addr, &[b"http/1.1"]).await;
        let head = format!(
            "POST /api/upload HTTP/1.1\r\nhost: localhost\r\napikey: {KEY}\r\n{}\r\n{}\r\n\r\n",
            framing[0], framing[1]
        );
        let body = if framing[1].contains("chunked") {
            "3\r\nabc\r\n0\r\n\r\n"
        } else {
            "abc"
        };
        stream
            .write_all(format!("{head}{body}").as_bytes())
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = within("the refusal", stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{framing:?}: {answer}");
        assert!(answer.contains("Bad request"), "{framing:?}: {answer}");
    }
    assert_eq!(origin.hits(), 0, "a smuggling shape reached the origin");
}

/// The stream follower answers a head over 32 KiB itself, under TLS too: on the decrypted
/// stream, then `close_notify`.
#[tokio::test]
async fn a_head_over_32k_over_tls_is_refused_400_in_kongs_format() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let mut stream = tls_connect(&certs.pki.ca_cert, addr, &[b"http/1.1"]).await;
    let lines: String = (0..10)
        .map(|i| format!("x-line-{i}: {}\r\n", "b".repeat(4096)))
        .collect();
    let head = format!(
        "GET /api/x HTTP/1.1\r\nhost: localhost\r\naccept: text/plain\r\napikey: {KEY}\r\n{lines}\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    within("the refusal", stream.read_to_end(&mut answer))
        .await
        .expect("the answer, then close_notify");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains("\r\n\r\nRequest header or cookie too large\nrequest_id: "),
        "{answer}"
    );
    assert_eq!(origin.hits(), 0, "a refused head reached the origin");
}

#[tokio::test]
async fn the_plain_listener_speaks_h2c_with_prior_knowledge_only_when_enabled() {
    let certs = Certs::new();
    let origin = Origin::start("plain-origin").await;
    let url = |gateway: &keygate::RunningGateway| format!("http://{}/api/x", gateway.addr);

    let with = gateway(&certs, &origin, &["h2c = true"]).await;
    let reply = curl(
        &certs.pki.ca_cert,
        &[
            "--http2-prior-knowledge",
            "-H",
            "apikey: static-key",
            &url(&with),
        ],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (200, "2"),
        "{reply:?}"
    );
    assert!(
        reply.body.contains("\"origin\":\"plain-origin\""),
        "{reply:?}"
    );
    // HTTP/1.1 keeps working on the same listener, smuggling checks included.
    let reply = curl(
        &certs.pki.ca_cert,
        &["-H", "apikey: static-key", &url(&with)],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (200, "1.1"),
        "{reply:?}"
    );
    let hits = origin.hits();
    let smuggled = curl(
        &certs.pki.ca_cert,
        &[
            "-H",
            "apikey: static-key",
            "-H",
            "content-length: 3",
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            "abc",
            &url(&with),
        ],
    )
    .await;
    assert_eq!(smuggled.status, 400, "{smuggled:?}");
    assert_eq!(origin.hits(), hits, "a smuggling shape reached the origin");

    let without = gateway(&certs, &origin, &[]).await;
    let reply = curl(
        &certs.pki.ca_cert,
        &[
            "--http2-prior-knowledge",
            "-H",
            "apikey: static-key",
            &url(&without),
        ],
    )
    .await;
    assert!(
        !reply.ok && reply.version != "2",
        "h2c served with h2c off: {reply:?}"
    );
    assert_eq!(
        origin.hits(),
        hits,
        "an h2c request reached the origin with h2c off"
    );
}

#[tokio::test]
async fn the_origin_sees_https_and_the_tls_port_and_the_clients_host() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    for version in ["--http2", "--http1.1"] {
        // Routed by host: HTTP/2 names it in `:authority`, HTTP/1.1 in `Host`.
        let reply = curl(
            &certs.pki.ca_cert,
            &[
                version,
                "--resolve",
                &format!("api.example:{}:127.0.0.1", addr.port()),
                "-H",
                "apikey: static-key",
                &format!("https://api.example:{}/hosted/y", addr.port()),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{version}: {reply:?}");
        let seen = origin.last();
        assert_eq!(
            seen.uri, "/v1/y",
            "{version}: routed to `hosted`, its path stripped"
        );
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{version}");
        assert_eq!(
            seen.header("x-forwarded-port"),
            Some(addr.port().to_string().as_str()),
            "{version}"
        );
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some("api.example"),
            "{version}"
        );
        assert_eq!(
            seen.header("host"),
            Some(format!("api.example:{}", addr.port()).as_str()),
            "{version}: preserve_host forwards the client's authority"
        );
    }
    // The plain listener still says http and its own port.
    let reply = curl(
        &certs.pki.ca_cert,
        &[
            "-H",
            "apikey: static-key",
            &format!("http://{}/api/x", gateway.addr),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(gateway.addr.port().to_string().as_str())
    );
}

#[tokio::test]
async fn the_wasi_http_path_sees_https_and_the_tls_port_too() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway_with(&certs, &origin, &[], &["[guest]\nentry = \"wasi-http\""]).await;
    let addr = tls_addr(&gateway);
    for version in ["--http2", "--http1.1"] {
        let reply = curl(
            &certs.pki.ca_cert,
            &[
                version,
                "-H",
                "apikey: static-key",
                // A client's claim of the port is not the gateway's word.
                "-H",
                "keygate-local-port: 1",
                &https(addr, "/api/x"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{version}: {reply:?}");
        let seen = origin.last();
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{version}");
        assert_eq!(
            seen.header("x-forwarded-port"),
            Some(addr.port().to_string().as_str()),
            "{version}"
        );
        assert_eq!(seen.header("keygate-local-port"), None, "{version}");
    }
    let reply = curl(
        &certs.pki.ca_cert,
        &[
            "-H",
            "apikey: static-key",
            &format!("http://{}/api/x", gateway.addr),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(gateway.addr.port().to_string().as_str())
    );
}

#[tokio::test]
async fn an_invalid_key_over_http2_gets_kongs_401() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let reply = curl(
        &certs.pki.ca_cert,
        &["--http2", "-H", "apikey: not-a-key", &https(addr, "/api/x")],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (401, "2"),
        "{reply:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("a JSON body");
    assert_eq!(body["message"], "Unauthorized", "{reply:?}");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn a_post_body_streams_over_http2() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let file = certs.dir.path().join("upload.bin");
    std::fs::write(&file, &body).unwrap();
    let reply = curl(
        &certs.pki.ca_cert,
        &[
            "--http2",
            "-H",
            "apikey: static-key",
            "--data-binary",
            &format!("@{}", file.display()),
            &https(addr, "/api/upload"),
        ],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (200, "2"),
        "{reply:?}"
    );
    let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(answer["bytes"], body.len() as u64, "{reply:?}");
    assert_eq!(answer["sum"], sum, "{reply:?}");
}

#[tokio::test]
async fn a_reloaded_certificate_reaches_new_connections_while_an_open_http2_one_keeps_working() {
    let mut certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let ca = certs.pki.ca_cert.clone();

    let open = tls_connect(&ca, addr, &[b"h2"]).await;
    assert_eq!(presented(&open), leaf_of(&certs.first));
    let mut open = h2_client(open).await;
    assert_eq!(h2_get(&mut open, addr, "/api/x").await.0, 200);

    let second = certs.pki.issue(&[]);
    assert_ne!(leaf_of(&second), leaf_of(&certs.first));
    certs.install(&second);
    let report = gateway
        .reloader
        .reload("test")
        .await
        .expect("the reload passes");
    assert!(report.certificate_reloaded, "{report:?}");
    assert!(report.needs_restart.is_empty(), "{report:?}");

    let fresh = tls_connect(&ca, addr, &[b"h2"]).await;
    assert_eq!(
        presented(&fresh),
        leaf_of(&second),
        "a new connection got the old certificate"
    );
    let mut fresh = h2_client(fresh).await;
    assert_eq!(h2_get(&mut fresh, addr, "/api/x").await.0, 200);
    // The connection opened before the swap goes on, on its own session.
    for _ in 0..3 {
        assert_eq!(h2_get(&mut open, addr, "/api/x").await.0, 200);
    }
    let reply = curl(
        &ca,
        &[
            "--http2",
            "-H",
            "apikey: static-key",
            &https(addr, "/api/x"),
        ],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (200, "2"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_broken_certificate_is_refused_and_the_old_one_keeps_serving() {
    let mut certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let ca = certs.pki.ca_cert.clone();

    // A renewal half done: the new certificate, the old key.
    let second = certs.pki.issue(&[]);
    replace(&certs.cert_path(), &std::fs::read(&second.cert).unwrap());
    let refused = gateway.reloader.reload("test").await.unwrap_err();
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("server.tls_key") && refused.contains("is not the key of the certificate"),
        "{refused}"
    );
    assert_eq!(
        presented(&tls_connect(&ca, addr, &[b"h2"]).await),
        leaf_of(&certs.first)
    );
    // Not PEM at all.
    replace(
        &certs.cert_path(),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    let refused = format!("{:#}", gateway.reloader.reload("test").await.unwrap_err());
    assert!(refused.contains("server.tls_cert"), "{refused}");
    let status = gateway.reloader.status();
    assert_eq!(status.rejected, 2);
    assert!(status.last_error.unwrap().contains("server.tls_cert"));
    let stream = tls_connect(&ca, addr, &[b"h2"]).await;
    assert_eq!(presented(&stream), leaf_of(&certs.first));
    assert_eq!(
        h2_get(&mut h2_client(stream).await, addr, "/api/x").await.0,
        200
    );
}

#[tokio::test]
async fn a_rapid_reset_flood_gets_goaway_and_others_are_still_served() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let ca = certs.pki.ca_cert.clone();

    let mut flood = raw_h2(&ca, addr).await;
    let authority = format!("localhost:{}", addr.port());
    let block = request_block(&authority, KEY);
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        burst.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    // The gateway may hang up before it has read everything.
    let _ = flood.write_all(&burst).await;
    let _ = flood.flush().await;
    let ended = ending(&mut flood, Duration::from_secs(10)).await;
    assert_eq!(ended, Ending::GoAway(ENHANCE_YOUR_CALM));
    assert!(
        origin.hits() < 2000,
        "every reset request was forwarded: {}",
        origin.hits()
    );

    let reply = curl(
        &ca,
        &[
            "--http2",
            "-H",
            "apikey: static-key",
            &https(addr, "/api/x"),
        ],
    )
    .await;
    assert_eq!(
        (reply.status, reply.version.as_str()),
        (200, "2"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn a_body_that_disagrees_with_its_content_length_over_http2_resets_the_stream() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let ca = certs.pki.ca_cert.clone();
    let authority = format!("localhost:{}", addr.port());
    for (declared, sent) in [(10usize, &b"abc"[..]), (2, &b"abc"[..])] {
        let mut stream = raw_h2(&ca, addr).await;
        let mut block = vec![0x83, 0x87, 0x04]; // :method POST, :scheme https, :path
        hpack_string(&mut block, b"/api/upload");
        block.push(0x01);
        hpack_string(&mut block, authority.as_bytes());
        block.push(0x00);
        hpack_string(&mut block, b"apikey");
        hpack_string(&mut block, KEY.as_bytes());
        hpack_int(&mut block, 0x00, 4, 28); // content-length (static name), not indexed
        hpack_string(&mut block, declared.to_string().as_bytes());
        let mut frames = frame(HEADERS, END_HEADERS, 1, &block);
        frames.extend(frame(DATA, END_STREAM, 1, sent));
        stream.write_all(&frames).await.unwrap();
        let answer = within("the stream's answer", stream_answer(&mut stream, 1)).await;
        assert_eq!(
            answer,
            Some((RST_STREAM, PROTOCOL_ERROR)),
            "content-length {declared} with {} bytes",
            sent.len()
        );
    }
    // Whatever reached the origin never carried a body that matched its declared length.
    for seen in origin.seen() {
        assert_ne!(
            seen.header("content-length")
                .and_then(|l| l.parse::<u64>().ok()),
            Some(seen.body_bytes),
            "a mismatched body was forwarded as a whole request: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_header_list_bomb_gets_goaway_and_others_are_still_served() {
    let certs = Certs::new();
    let origin = Origin::start("tls-origin").await;
    let gateway = gateway(&certs, &origin, &[]).await;
    let addr = tls_addr(&gateway);
    let ca = certs.pki.ca_cert.clone();

    // One 4000-byte header put in the HPACK table, then referred to 300 times by its index:
    // ~1.2 MB of header list out of ~5 KB on the wire.
    let mut bomb = raw_h2(&ca, addr).await;
    let mut block = request_block(&format!("localhost:{}", addr.port()), KEY);
    block.push(0x40); // a new name, added to the dynamic table (index 62)
    hpack_string(&mut block, b"x-bomb");
    hpack_string(&mut block, &[b'a'; 4000]);
    block.extend(std::iter::repeat_n(0x80 | 62, 300));
    let _ = bomb
        .write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let ended = ending(&mut bomb, Duration::from_secs(10)).await;
    assert_eq!(ended, Ending::GoAway(ENHANCE_YOUR_CALM));
    assert_eq!(origin.hits(), 0);

    // Over the limit but not a bomb: that stream alone is refused with 431.
    let mut sender = h2_client(tls_connect(&ca, addr, &[b"h2"]).await).await;
    let request = hyper::Request::get(format!("https://localhost:{}/api/x", addr.port()))
        .header("apikey", KEY)
        .header("x-large", "b".repeat(6000))
        .header("x-large-2", "c".repeat(6000))
        .header("x-large-3", "d".repeat(6000))
        .header("x-large-4", "e".repeat(6000))
        .header("x-large-5", "f".repeat(6000))
        .header("x-large-6", "g".repeat(6000))
        .body(Empty::new())
        .unwrap();
    let response = within("431", sender.send_request(request)).await.unwrap();
    assert_eq!(response.status(), 431);
    assert_eq!(h2_get(&mut sender, addr, "/api/x").await.0, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn tls_settings_are_checked_with_clear_reasons() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let auth = AuthApi::start().await;
    let origin = Origin::start("o").await;
    let check = |server: &str| {
        let config = dir.path().join("keygate.toml");
        let toml = format!(
            "{}",
            GatewayConfig::basic(&origin, &auth).server(server.trim())
        );
        std::fs::write(&config, toml).unwrap();
        let output = support::process::run(&["check", "--config", config.to_str().unwrap()]);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned()
                + &String::from_utf8_lossy(&output.stdout),
        )
    };
    // Relative paths are the config file's neighbours.
    std::fs::copy(certs.cert_path(), dir.path().join("cert.pem")).unwrap();
    std::fs::copy(certs.key_path(), dir.path().join("key.pem")).unwrap();
    let (ok, out) =
        check("tls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"");
    assert!(ok, "{out}");

    let cases = [
        (
            "tls_listen = \"127.0.0.1:0\"\ntls_key = \"key.pem\"",
            "server.tls_cert: required when tls_listen is set",
        ),
        (
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"",
            "server.tls_key: required when tls_listen is set",
        ),
        (
            "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"",
            "server.tls_listen: required when tls_cert or tls_key is set",
        ),
        (
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"missing.pem\"\ntls_key = \"key.pem\"",
            "server.tls_cert: reading",
        ),
        (
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"cert.pem\"",
            "holds no private key",
        ),
    ];
    for (server, expected) in cases {
        let (ok, out) = check(server);
        assert!(!ok && out.contains(expected), "{server}: {out}");
    }
    let mut pki = TestPki::new();
    let other = pki.issue(&[]);
    std::fs::copy(&other.key, dir.path().join("other-key.pem")).unwrap();
    let (ok, out) =
        check("tls_listen = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"other-key.pem\"");
    assert!(
        !ok && out.contains("is not the key of the certificate in"),
        "{out}"
    );
}

#[tokio::test]
async fn certificate_files_are_watched_and_tls_listen_changes_need_a_restart() {
    let mut certs = Certs::new();
    let auth = AuthApi::start().await;
    let origin = Origin::start("o").await;
    let dir = certs.dir.path().to_path_buf();
    let config_path = dir.join("keygate.toml");
    let write_config = |tls_listen: &str| {
        let toml = GatewayConfig::basic(&origin, &auth)
            .server(format!("tls_listen = \"{tls_listen}\""))
            .server("tls_cert = \"cert.pem\"")
            .server("tls_key = \"key.pem\"")
            .tables(format!(
                "[guest]\ncache_dir = {:?}",
                support::cache_dir().to_str().unwrap()
            ));
        replace(&config_path, toml.to_string().as_bytes());
    };
    write_config("127.0.0.1:0");
    support::init_logging();
    let gateway = keygate::start_from_file(&config_path).await.unwrap();
    let addr = tls_addr(&gateway);
    let ca = certs.pki.ca_cert.clone();
    assert_eq!(
        presented(&tls_connect(&ca, addr, &[b"h2"]).await),
        leaf_of(&certs.first)
    );

    // A renewal: the files replaced, nothing else.
    let second = certs.pki.issue(&[]);
    certs.install(&second);
    within("the watched certificate to be presented", async {
        while presented(&tls_connect(&ca, addr, &[b"h2"]).await) != leaf_of(&second) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let report = gateway.reloader.reload("test").await.unwrap();
    assert!(report.needs_restart.is_empty(), "{report:?}");
    write_config("127.0.0.1:1");
    let report = gateway.reloader.reload("test").await.unwrap();
    assert_eq!(
        report.needs_restart,
        vec!["server.tls_listen"],
        "{report:?}"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_an_http2_request_in_flight_finish_and_says_goaway() {
    let certs = Certs::new();
    let origin = Origin::start("slow-origin").await;
    let gateway = gateway(&certs, &origin, &["drain_timeout = \"10s\""]).await;
    let addr = tls_addr(&gateway);
    let mut sender = h2_client(tls_connect(&certs.pki.ca_cert, addr, &[b"h2"]).await).await;
    let request = hyper::Request::get(format!("https://localhost:{}/api/slow", addr.port()))
        .header("apikey", KEY)
        .header("x-test-delay-ms", "700")
        .body(Empty::new())
        .unwrap();
    let in_flight = tokio::spawn(sender.send_request(request));
    // The request has reached the origin once the gateway has connected to it.
    within("the request to reach the origin", async {
        while origin.connections() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let shutdown = tokio::spawn(gateway.shutdown());
    let response = within("the request in flight", in_flight)
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    let body = within("its body", response.into_body().collect())
        .await
        .expect("the whole body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("slow-origin"));
    within("the drain", shutdown).await.unwrap();
    // Told to go away: no new stream is taken.
    within("the connection to close", sender.ready())
        .await
        .expect_err("the drained connection takes no new request");
}
