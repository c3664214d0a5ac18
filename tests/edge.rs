//! Scenarios: hostile request heads get a clear 4xx before the guest or the origin sees them,
//! cost little, and a guest failure is one log line.
//!
//! The limits (host/src/server.rs, the README's "Limits" table): a head over 32 KiB or with more
//! than 100 header lines → hyper's 431 (empty body) and the connection closed; one header line
//! over 8 KiB → 431, a request target over 8 KiB → 414, both in Kong's error format; smuggling
//! shapes (`Content-Length` with `Transfer-Encoding`, two `Content-Length`s) → 400. None is
//! forwarded. The client is a raw `TcpStream`: the wire is the point.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{GatewayConfig, Origin, start_gateway};
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

/// The gateway in front of `origin`: route `/api`, the static consumer key.
async fn gateway(origin: &Origin, server: &[&str]) -> keygate::RunningGateway {
    let mut config = GatewayConfig::new()
        .consumer("static-user", None, &[KEY])
        .service("api", format_args!("http://{}/v1", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/api\"]");
    for line in server {
        config = config.server(line);
    }
    start_gateway(&config.to_string()).await
}

/// A request head to `/api/x` with the key, `extra` header lines (each ending in CRLF) and no
/// body unless `extra` announces one; `body` follows the head.
fn raw_request(addr: SocketAddr, extra: &str, body: &str) -> Vec<u8> {
    format!("GET /api/x HTTP/1.1\r\nhost: {addr}\r\napikey: {KEY}\r\n{extra}\r\n{body}")
        .into_bytes()
}

/// [`raw_request`] as `POST /api/upload`: the origin reads the whole body (an unread body
/// would end the kept-alive connection).
fn raw_upload(addr: SocketAddr, extra: &str, body: &str) -> Vec<u8> {
    format!("POST /api/upload HTTP/1.1\r\nhost: {addr}\r\napikey: {KEY}\r\n{extra}\r\n{body}")
        .into_bytes()
}

/// Send `request` on a fresh connection and read until the gateway closes it (every refusal
/// closes): the whole wire answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to gateway");
    // The gateway may answer and close before reading everything: a failed write is fine, the
    // answer is what is checked.
    let _ = stream.write_all(request).await;
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut wire = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match within("the answer and the close", stream.read(&mut chunk)).await {
            Ok(0) => break,
            Ok(n) => wire.extend_from_slice(&chunk[..n]),
            Err(err) => panic!(
                "reading the answer failed ({err}) after {:?}",
                String::from_utf8_lossy(&wire)
            ),
        }
    }
    String::from_utf8(wire).expect("answer is text")
}

fn status_of(wire: &str) -> u16 {
    wire.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {wire:?}"))
}

fn body_of(wire: &str) -> &str {
    wire.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// The value of header `name` in a raw response.
fn header_of<'a>(wire: &'a str, name: &str) -> Option<&'a str> {
    let head = wire.split_once("\r\n\r\n").map_or(wire, |(head, _)| head);
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// No guest failure was counted: the refused heads never reached the guest.
fn assert_no_guest_failure(gw: &keygate::RunningGateway) {
    let metrics = gw.gateway.metrics.render(0);
    assert!(
        !metrics.contains("keygate_guest_failures_total{"),
        "a refused head reached the guest: {metrics}"
    );
}

/// `x-big: aaa…` with a value of `n` bytes.
fn big_header(n: usize) -> String {
    format!("x-big: {}\r\n", "a".repeat(n))
}

#[tokio::test]
async fn a_header_line_over_8k_is_refused_431_in_kongs_format_and_not_forwarded() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let wire = exchange(gw.addr, &raw_request(gw.addr, &big_header(10 * 1024), "")).await;
    assert_eq!(status_of(&wire), 431, "{wire}");
    assert_eq!(header_of(&wire, "connection"), Some("close"), "{wire}");
    let body: serde_json::Value = serde_json::from_str(body_of(&wire)).expect("a JSON body");
    assert_eq!(body["message"], "Request header or cookie too large");
    assert_eq!(
        body["request_id"].as_str(),
        header_of(&wire, "x-request-id"),
        "{wire}"
    );
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
    assert_no_guest_failure(&gw);
}

#[tokio::test]
async fn heads_over_32k_are_refused_431_by_the_listener_and_not_forwarded() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    // One 64 KB header (forwarded before), one of 200 KB (made the guest trap and log a
    // backtrace before), and many small lines adding up to 40 KB.
    let many: String = (0..40)
        .map(|i| format!("x-line-{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    for extra in [big_header(64 * 1024), big_header(200 * 1024), many] {
        let wire = exchange(gw.addr, &raw_request(gw.addr, &extra, "")).await;
        assert_eq!(status_of(&wire), 431, "{wire}");
    }
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
    assert_no_guest_failure(&gw);
}

#[tokio::test]
async fn more_than_100_header_lines_are_refused_431() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let lines = |n: usize| -> String { (0..n).map(|i| format!("x-h{i}: v\r\n")).collect() };
    // host and apikey are two of the 100.
    let wire = exchange(gw.addr, &raw_request(gw.addr, &lines(99), "")).await;
    assert_eq!(status_of(&wire), 431, "{wire}");
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
    // 60 lines: the gateway adds its forwarding headers (x-forwarded-*, via…) and the test
    // origin, a hyper server too, allows 100 in all.
    let wire = exchange(
        gw.addr,
        &raw_request(gw.addr, &format!("{}connection: close\r\n", lines(57)), ""),
    )
    .await;
    assert_eq!(status_of(&wire), 200, "60 lines are allowed: {wire}");
    assert_eq!(origin.hits(), 1);
    assert_no_guest_failure(&gw);
}

#[tokio::test]
async fn a_request_target_over_8k_is_refused_414() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let request = format!(
        "GET /api/{} HTTP/1.1\r\nhost: {}\r\napikey: {KEY}\r\n\r\n",
        "p".repeat(9 * 1024),
        gw.addr
    );
    let wire = exchange(gw.addr, request.as_bytes()).await;
    assert_eq!(status_of(&wire), 414, "{wire}");
    let body: serde_json::Value = serde_json::from_str(body_of(&wire)).expect("a JSON body");
    assert_eq!(body["message"], "Request-URI too large");
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
}

#[tokio::test]
async fn heads_just_under_the_limits_are_forwarded_on_a_kept_alive_connection() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Two requests on one connection: 8000-byte header values, then a plain request closing.
    let value = "c".repeat(8000);
    let first = raw_request(gw.addr, &format!("x-big: {value}\r\n"), "");
    let second = raw_request(gw.addr, "connection: close\r\n", "");
    stream.write_all(&first).await.unwrap();
    stream.write_all(&second).await.unwrap();
    let wire = read_to_close(&mut stream).await;
    assert_eq!(wire.matches("HTTP/1.1 200 OK").count(), 2, "{wire}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-big"), Some(value.as_str()));
}

/// A request with `content_lengths` (its body `abcde`) gets a 400 and reaches no origin.
async fn assert_content_lengths_refused(content_lengths: &str) {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let wire = exchange(gw.addr, &raw_request(gw.addr, content_lengths, "abcde")).await;
    assert_eq!(status_of(&wire), 400, "{wire}");
    assert_eq!(origin.hits(), 0, "a smuggling shape was forwarded");
}

#[tokio::test]
async fn two_different_content_lengths_are_refused_400_and_not_forwarded() {
    assert_content_lengths_refused("content-length: 3\r\ncontent-length: 5\r\n").await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_400_and_not_forwarded() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    for extra in [
        "content-length: 5\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
    ] {
        let wire = exchange(
            gw.addr,
            &raw_request(
                gw.addr,
                &format!("accept: text/plain\r\n{extra}"),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .await;
        assert_eq!(status_of(&wire), 400, "{wire}");
        assert_eq!(header_of(&wire, "connection"), Some("close"), "{wire}");
        assert!(
            body_of(&wire).starts_with("Bad request\nrequest_id: "),
            "{wire}"
        );
    }
    assert_eq!(origin.hits(), 0, "a smuggling shape was forwarded");
    assert_no_guest_failure(&gw);
}

#[tokio::test]
async fn two_equal_content_lengths_are_refused_400_and_not_forwarded() {
    assert_content_lengths_refused("content-length: 5\r\ncontent-length: 5\r\n").await;
}

/// The shapes hyper refuses itself: a 400 (empty body) and the connection closed.
#[tokio::test]
async fn obs_fold_bad_header_bytes_and_unknown_codings_are_refused_400() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    for extra in [
        "x-folded: a\r\n b\r\n",
        "x-bad: a\x01b\r\n",
        "bad name: x\r\n",
        "transfer-encoding: gzip\r\n",
        "transfer-encoding: chunked, gzip\r\n",
    ] {
        let wire = exchange(gw.addr, &raw_request(gw.addr, extra, "")).await;
        assert_eq!(status_of(&wire), 400, "{extra:?}: {wire}");
    }
    assert_eq!(origin.hits(), 0, "a malformed head was forwarded");
}

/// The stream follower stays in step with hyper across bodies: a body that looks like a
/// smuggling head is body, and every request of a kept-alive connection is served.
#[tokio::test]
async fn bodies_on_a_kept_alive_connection_do_not_confuse_the_smuggling_check() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let lookalike = "GET /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunked = format!(
        "{:x};ext=1\r\n{lookalike}\r\n3\r\nabc\r\n0\r\ntrailer: t\r\n\r\n",
        lookalike.len()
    );
    let first = raw_upload(gw.addr, "transfer-encoding: chunked\r\n", &chunked);
    let mut wire = first.clone();
    wire.extend(raw_upload(
        gw.addr,
        &format!("content-length: {}\r\n", lookalike.len()),
        lookalike,
    ));
    wire.extend(raw_request(gw.addr, "connection: close\r\n", ""));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Byte by byte for the first request: lines split across reads.
    for byte in &first {
        stream.write_all(std::slice::from_ref(byte)).await.unwrap();
    }
    stream.write_all(&wire[first.len()..]).await.unwrap();
    let answer = read_to_close(&mut stream).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
    assert_eq!(origin.hits(), 3);
}

/// A capture of what the gateway logs on this thread (`workers = 1`: the gateway's requests
/// run on the test's own runtime thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn a_guest_trap_is_one_warning_line_with_the_request_id_and_the_backtrace_at_debug() {
    let config = GatewayConfig::new()
        .server("workers = 1")
        .tables(format_args!(
            "[guest]\ncomponent = {:?}\nbusy_timeout = \"200ms\"\nmemory_limit_mb = 32",
            env!("KEYGATE_TEST_MISBEHAVING_WASM")
        ));
    let gw = start_gateway(&config.to_string()).await;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("keygate=debug"))
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let reply = support::client::get(gw.addr, "/trap", &[]).await;
    assert_eq!(reply.status, 500);
    let id = reply
        .header("x-request-id")
        .expect("a request id")
        .to_string();
    let lines = captured.lines();
    let loud: Vec<&String> = lines
        .iter()
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect();
    assert_eq!(
        loud.len(),
        1,
        "one warning line per guest failure: {lines:#?}"
    );
    assert!(
        loud[0].contains(&id) && loud[0].contains("trap"),
        "the reason and the request id: {}",
        loud[0]
    );
    // The wasm backtrace (hundreds of lines) is logged, at debug level only.
    let debug = lines
        .iter()
        .position(|line| line.contains(" DEBUG ") && line.contains("guest call failed"));
    assert!(debug.is_some(), "the full error at debug level: {lines:#?}");
    assert!(lines.len() > loud.len() + 1, "{lines:#?}");
}
