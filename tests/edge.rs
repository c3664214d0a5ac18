//! Scenarios: hostile request heads get a clear 4xx before the guest or the origin sees them,
//! cost little, and a guest failure is one log line.
//!
//! The limits (host/src/server.rs, the README's "Limits" table): a head over 32 KiB, one with
//! more than 100 header lines, or one header line over 8 KiB → 400 `Request header or cookie
//! too large` in Kong's error format (nginx's 494 through Kong's error handler), the connection
//! closed; a request target over 8 KiB → 414; smuggling shapes (`Content-Length` with
//! `Transfer-Encoding`, two `Content-Length`s) → 400. None is
//! forwarded. And for connections (`[server]`, the README's "Limits on connections"): a head
//! not complete within `header_read_timeout` or an idle kept-alive connection past
//! `keepalive_timeout` is closed without an answer, a request in flight or an upgraded
//! connection never is; connections over `max_connections_per_ip` are closed as accepted and
//! counted; `keygate serve` raises its open-file soft limit. The client is a raw `TcpStream`:
//! the wire is the point.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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

/// `wire` is the 400 `Request header or cookie too large` in Kong's JSON format, with the
/// gateway's headers, closing the connection.
fn assert_head_too_large_json(wire: &str) {
    assert_eq!(status_of(wire), 400, "{wire}");
    assert_eq!(header_of(wire, "connection"), Some("close"), "{wire}");
    assert_eq!(
        header_of(wire, "content-type"),
        Some("application/json; charset=utf-8"),
        "{wire}"
    );
    assert_eq!(header_of(wire, "server"), Some("keygate"), "{wire}");
    assert!(
        header_of(wire, "x-keygate-response-latency").is_some(),
        "{wire}"
    );
    let body: serde_json::Value = serde_json::from_str(body_of(wire)).expect("a JSON body");
    assert_eq!(body["message"], "Request header or cookie too large");
    let id = header_of(wire, "x-request-id").expect("a request id");
    assert_eq!(body["request_id"].as_str(), Some(id), "{wire}");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(
        header_of(wire, "content-length").and_then(|n| n.parse().ok()),
        Some(body_of(wire).len()),
        "{wire}"
    );
}

/// How many requests were answered `code` without a route (refused heads).
fn unrouted(gw: &keygate::RunningGateway, code: u16) -> u64 {
    let metrics = gw.gateway.metrics.render(0);
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("keygate_http_requests_total{")
                && line.contains("route=\"(none)\"")
                && line.contains(&format!("code=\"{code}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_header_line_over_8k_is_refused_400_in_kongs_format_and_not_forwarded() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let wire = exchange(gw.addr, &raw_request(gw.addr, &big_header(10 * 1024), "")).await;
    assert_head_too_large_json(&wire);
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
    assert_no_guest_failure(&gw);
}

#[tokio::test]
async fn heads_over_32k_are_refused_400_in_kongs_format_closed_and_not_forwarded() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    // Ten 4 KiB lines (40 KiB, each line under 8 KiB); one 64 KB header (forwarded before
    // there were limits), one of 200 KB (made the guest trap before).
    let many: String = (0..10)
        .map(|i| format!("x-line-{i}: {}\r\n", "b".repeat(4096)))
        .collect();
    for extra in [many, big_header(64 * 1024), big_header(200 * 1024)] {
        // `exchange` reads until the gateway closes the connection.
        let wire = exchange(gw.addr, &raw_request(gw.addr, &extra, "")).await;
        assert_head_too_large_json(&wire);
    }
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
    assert_no_guest_failure(&gw);
    assert_eq!(unrouted(&gw, 400), 3, "{}", gw.gateway.metrics.render(0));
    all_connections_closed(&gw).await;
}

/// Wait until the gateway serves no connection: the ones it refused are closed on its side
/// too, not only shut down for writing.
async fn all_connections_closed(gw: &keygate::RunningGateway) {
    within("the gateway closing its connections", async {
        while gw.gateway.metrics.connections.active() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn more_than_100_header_lines_are_refused_400_closed_and_100_are_forwarded() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let lines = |n: usize| -> String { (0..n).map(|i| format!("x-h{i}: v\r\n")).collect() };
    // host and apikey are two of the lines: 101.
    let wire = exchange(gw.addr, &raw_request(gw.addr, &lines(99), "")).await;
    assert_head_too_large_json(&wire);
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
    all_connections_closed(&gw).await;
    // 100 (the test origin takes more than hyper's 100: the gateway adds its forwarding
    // headers).
    let wire = exchange(
        gw.addr,
        &raw_request(gw.addr, &format!("{}connection: close\r\n", lines(97)), ""),
    )
    .await;
    assert_eq!(status_of(&wire), 200, "100 lines are allowed: {wire}");
    assert_eq!(origin.hits(), 1);
    assert_eq!(origin.seen()[0].header("x-h96"), Some("v"));
    assert_no_guest_failure(&gw);
}

/// The answer to a head over the limits, made before hyper has the head, still follows what
/// the head said: `Accept`, else `Content-Type`, else `compat.error_default_type`; no body for
/// `HEAD`; Kong's header names.
#[tokio::test]
async fn a_head_over_the_limits_is_answered_in_the_format_its_accept_asks_for() {
    let origin = Origin::start("edge").await;
    let config = GatewayConfig::new()
        .tables("[compat]\nheaders = \"kong\"\nerror_default_type = \"text/plain\"")
        .consumer("static-user", None, &[KEY])
        .service("api", format_args!("http://{}/v1", origin.addr))
        .route("paths = [\"/api\"]");
    let gw = start_gateway(&config.to_string()).await;
    let over = format!("{}{}", big_header(7000).repeat(5), big_header(7000));
    let plain = exchange(gw.addr, &raw_request(gw.addr, &over, "")).await;
    assert_eq!(status_of(&plain), 400, "{plain}");
    let id = header_of(&plain, "x-kong-request-id").expect("Kong's request id header");
    assert_eq!(
        body_of(&plain),
        format!("Request header or cookie too large\nrequest_id: {id}\n"),
        "{plain}"
    );
    assert_eq!(header_of(&plain, "server"), Some("kong/3.9.1"), "{plain}");
    assert!(
        header_of(&plain, "x-kong-response-latency").is_some(),
        "{plain}"
    );
    let json = exchange(
        gw.addr,
        &raw_request(gw.addr, &format!("Accept: application/json\r\n{over}"), ""),
    )
    .await;
    assert_eq!(status_of(&json), 400, "{json}");
    let body: serde_json::Value = serde_json::from_str(body_of(&json)).expect("a JSON body");
    assert_eq!(body["message"], "Request header or cookie too large");
    assert_eq!(
        body["request_id"].as_str(),
        header_of(&json, "x-kong-request-id")
    );
    let xml = exchange(
        gw.addr,
        &raw_request(
            gw.addr,
            &format!("content-type: application/xml\r\n{over}"),
            "",
        ),
    )
    .await;
    assert!(
        body_of(&xml).contains("<message>Request header or cookie too large</message>"),
        "{xml}"
    );
    let head = format!(
        "HEAD /api/x HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\n{over}\r\n",
        gw.addr
    );
    let head = exchange(gw.addr, head.as_bytes()).await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head}");
    assert_eq!(origin.hits(), 0, "a refused head was forwarded");
}

/// Requests pipelined before a head over the limits are answered first, as usual: whether the
/// head passes its limits after hyper took the request before it (42 KB: hyper reads 8 KiB at
/// first) or in the same read (101 short lines).
#[tokio::test]
async fn a_pipelined_request_before_a_head_over_the_limits_is_answered_then_the_400() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &[]).await;
    let many_lines: String = (0..99).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (i, over) in [big_header(7000).repeat(6), many_lines].iter().enumerate() {
        let mut wire = raw_upload(gw.addr, "content-length: 5\r\n", "hello");
        wire.extend(raw_request(gw.addr, over, ""));
        let answer = exchange(gw.addr, &wire).await;
        let (first, second) = answer
            .split_once("HTTP/1.1 400 ")
            .unwrap_or_else(|| panic!("a 400 after the first answer: {answer}"));
        assert_eq!(status_of(first), 200, "{answer}");
        assert_eq!(first.matches("HTTP/1.1 ").count(), 1, "{answer}");
        assert_head_too_large_json(&format!("HTTP/1.1 400 {second}"));
        assert_eq!(origin.hits(), i + 1, "only the first request is forwarded");
    }
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
    assert_eq!(body["message"], "URI too long");
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

// Hostile connections: slow heads, idle connections, floods from one address, descriptors.
// (`[server] header_read_timeout`, `keepalive_timeout`, `max_connections_per_ip`; the README's
// "Limits" table.)

/// Read one response (with a `Content-Length`) from a kept-alive connection: its head and body.
async fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut wire = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = wire.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = within("a response head", stream.read(&mut chunk))
            .await
            .expect("read a response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&wire)
        );
        wire.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(wire[..head_end].to_vec()).expect("a text head");
    let length: usize = header_of(&head, "content-length")
        .unwrap_or_else(|| panic!("a content-length in {head}"))
        .parse()
        .unwrap();
    let mut body = wire[head_end..].to_vec();
    while body.len() < length {
        let n = within("a response body", stream.read(&mut chunk))
            .await
            .expect("read a body");
        assert!(n > 0, "closed {} bytes into a body", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body)
}

/// Send `head` one byte every `every` until the gateway closes the connection: what it sent
/// back (nothing, expected), how many bytes went, and when the close came.
async fn drip(stream: &mut TcpStream, head: &[u8], every: Duration) -> (Vec<u8>, usize, Instant) {
    let mut answer = Vec::new();
    let mut sent = 0;
    let mut chunk = [0u8; 4096];
    let mut tick = tokio::time::interval(every);
    within("the gateway closing a slow head", async {
        loop {
            tokio::select! {
                read = stream.read(&mut chunk) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                },
                _ = tick.tick() => {
                    if sent < head.len() {
                        // A failed write: the gateway closed.
                        if stream.write_all(&head[sent..=sent]).await.is_err() {
                            break;
                        }
                        sent += 1;
                    }
                }
            }
        }
    })
    .await;
    (answer, sent, Instant::now())
}

/// Read until the gateway closes `stream`: the bytes it sent before.
/// A connection to the gateway with one request served (200) on it: kept alive, now idle.
async fn served_once(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&raw_request(addr, "", "")).await.unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert_eq!(status_of(&head), 200, "{head}");
    stream
}

async fn until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match within(what, stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => return wire,
            Ok(n) => wire.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn a_head_sent_byte_by_byte_is_closed_at_header_read_timeout_without_an_answer() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let origin = Origin::start("edge").await;
    // keepalive_timeout stays 60 s: what closes here is the head's clock.
    let gw = gateway(&origin, &["header_read_timeout = \"1s\""]).await;
    // 100 bytes of padding a byte every 100 ms: never complete before the timeout.
    let head = raw_request(gw.addr, &format!("x-pad: {}\r\n", "p".repeat(100)), "");
    let every = Duration::from_millis(100);

    // A new connection: the clock starts when it is accepted (after `connect` returns).
    let fresh = async {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let connected = Instant::now();
        let (answer, sent, closed) = drip(&mut stream, &head, every).await;
        (answer, sent, closed - connected)
    };
    // A kept-alive connection after a served request: from the next head's first byte.
    let kept_alive = async {
        let mut stream = served_once(gw.addr).await;
        let first_byte = Instant::now();
        let (answer, sent, closed) = drip(&mut stream, &head, every).await;
        (answer, sent, closed - first_byte)
    };
    // After an idle wait longer than the head timeout, a head that stops halfway: the clock's
    // timer was set for the idle deadline, later than the head's, and only the timer (no
    // byte arriving) can close this one.
    let idle_then_silent = async {
        let mut stream = served_once(gw.addr).await;
        // Idle for a head timeout and a half (the time is what is tested).
        tokio::time::sleep(TIMEOUT * 3 / 2).await;
        let half = head.len() / 2;
        stream.write_all(&head[..half]).await.unwrap();
        let first_byte = Instant::now();
        let answer = until_closed(&mut stream, "the gateway closing a half-sent head").await;
        (answer, half, first_byte.elapsed())
    };
    // A connection that never sends a byte.
    let silent = async {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let connected = Instant::now();
        let answer = until_closed(&mut stream, "the gateway closing a silent connection").await;
        (answer, 0, connected.elapsed())
    };
    let (fresh, kept_alive, idle_then_silent, silent) =
        tokio::join!(fresh, kept_alive, idle_then_silent, silent);
    for (name, (answer, sent, after)) in [
        ("new connection", fresh),
        ("kept-alive connection", kept_alive),
        ("half a head after an idle wait", idle_then_silent),
        ("silent connection", silent),
    ] {
        assert!(
            answer.is_empty(),
            "{name}: closed without an answer, got {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            after >= TIMEOUT - Duration::from_millis(50) && after < TIMEOUT * 5,
            "{name}: closed {after:?} after its head started; header_read_timeout is {TIMEOUT:?}"
        );
        assert!(sent < head.len(), "{name}: the head was never complete");
    }
    assert_eq!(
        origin.hits(),
        2,
        "only the complete requests were forwarded"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_keepalive_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    let origin = Origin::start("edge").await;
    // header_read_timeout stays 30 s: what closes here is the idle clock.
    let gw = gateway(&origin, &["keepalive_timeout = \"1s\""]).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(&raw_request(gw.addr, "", ""))
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_ne!(header_of(&head, "connection"), Some("close"), "{head}");
    let idle = Instant::now();
    let more = until_closed(&mut stream, "the gateway closing an idle connection").await;
    let after = idle.elapsed();
    assert!(more.is_empty(), "{:?}", String::from_utf8_lossy(&more));
    // The gateway's clock starts as the response ends, a moment before the client has read it.
    assert!(
        after >= TIMEOUT - Duration::from_millis(100) && after < TIMEOUT * 5,
        "closed {after:?} after going idle; keepalive_timeout is {TIMEOUT:?}"
    );
}

/// hyper's own header timer runs from the end of a response, so on its own it would close an
/// idle connection at the head timeout: keygate's idle wait is `keepalive_timeout`'s.
#[tokio::test]
async fn an_idle_wait_past_header_read_timeout_is_allowed_until_keepalive_timeout() {
    let origin = Origin::start("edge").await;
    let gw = gateway(
        &origin,
        &[
            "header_read_timeout = \"500ms\"",
            "keepalive_timeout = \"10s\"",
        ],
    )
    .await;
    let mut stream = served_once(gw.addr).await;
    // Idle for three head timeouts (the time is what is tested).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(&raw_request(gw.addr, "", ""))
        .await
        .expect("the idle connection is still open");
    let (head, _) = read_response(&mut stream).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_slow_download_and_a_slow_upload_are_not_cut_by_either_timeout() {
    const SHORT: Duration = Duration::from_millis(300);
    const PAUSE: Duration = Duration::from_millis(1200);
    let origin = Origin::start("edge").await;
    let gw = gateway(
        &origin,
        &[
            "header_read_timeout = \"300ms\"",
            "keepalive_timeout = \"300ms\"",
        ],
    )
    .await;
    assert!(PAUSE > SHORT * 3);
    // More than every socket buffer on the way holds: the gateway is mid-response while the
    // client pauses.
    let size: u64 = 48 * 1024 * 1024;
    let download = async {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "GET /api/download/{size} HTTP/1.1\r\nhost: {}\r\napikey: {KEY}\r\n\r\n",
            gw.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut chunk = vec![0u8; 64 * 1024];
        let n = within("the download's first bytes", stream.read(&mut chunk))
            .await
            .unwrap();
        assert!(n > 0);
        // Stop reading for a while, twice.
        let mut received = chunk[..n].to_vec();
        for _ in 0..2 {
            tokio::time::sleep(PAUSE).await;
            let n = within("the download, after a pause", stream.read(&mut chunk))
                .await
                .expect("still open after a pause");
            assert!(n > 0, "closed after {} bytes", received.len());
            received.extend_from_slice(&chunk[..n]);
        }
        let head_end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head in the first bytes")
            + 4;
        let head = String::from_utf8_lossy(&received[..head_end]).to_string();
        assert_eq!(status_of(&head), 200, "{head}");
        let mut bytes = (received.len() - head_end) as u64;
        let mut sum = received[head_end..]
            .iter()
            .fold(0u64, |s, b| s.wrapping_add(u64::from(*b)));
        while bytes < size {
            let n = within("the rest of the download", stream.read(&mut chunk))
                .await
                .unwrap();
            assert!(n > 0, "the download was cut at {bytes} of {size} bytes");
            bytes += n as u64;
            sum = chunk[..n]
                .iter()
                .fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
        }
        assert_eq!(bytes, size);
        assert_eq!(sum, support::servers::download_sum(size));
    };
    let upload = async {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let part = "u".repeat(1000);
        stream
            .write_all(&raw_upload(gw.addr, "content-length: 3000\r\n", &part))
            .await
            .unwrap();
        for _ in 0..2 {
            tokio::time::sleep(PAUSE).await;
            stream
                .write_all(part.as_bytes())
                .await
                .expect("still open after a pause");
        }
        let (head, body) = read_response(&mut stream).await;
        assert_eq!(status_of(&head), 200, "{head}");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("the origin's JSON");
        assert_eq!(body["bytes"], 3000, "{body}");
    };
    tokio::join!(download, upload);
}

/// `keygate_connections_refused_total{reason="per_ip"}` as rendered, 0 when absent.
fn refused_per_ip(gw: &keygate::RunningGateway) -> u64 {
    let metrics = gw.gateway.metrics.render(0);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("keygate_connections_refused_total{reason=\"per_ip\"} "))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test]
async fn connections_over_max_connections_per_ip_are_closed_at_once_and_counted() {
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &["max_connections_per_ip = 2"]).await;
    // Two connections, each served (so each is counted by the gateway).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(served_once(gw.addr).await);
    }
    assert_eq!(refused_per_ip(&gw), 0);
    // A third from the same address: closed before anything is read, no answer.
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let _ = third.write_all(&raw_request(gw.addr, "", "")).await;
    let answer = until_closed(
        &mut third,
        "the gateway closing a connection over the limit",
    )
    .await;
    assert!(
        answer.is_empty(),
        "closed without an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        origin.hits(),
        2,
        "the refused connection's request was forwarded"
    );
    assert_eq!(refused_per_ip(&gw), 1);
    // The held ones still work.
    held[0]
        .write_all(&raw_request(gw.addr, "", ""))
        .await
        .unwrap();
    let (head, _) = read_response(&mut held[0]).await;
    assert_eq!(status_of(&head), 200, "{head}");
    // One closes: a new connection is served again once the gateway has seen it go.
    drop(held.pop());
    let mut attempts = 0;
    within("a connection served after one closed", async {
        loop {
            attempts += 1;
            let mut stream = TcpStream::connect(gw.addr).await.unwrap();
            let _ = stream.write_all(&raw_request(gw.addr, "", "")).await;
            let wire = until_closed_or_answered(&mut stream).await;
            if !wire.is_empty() {
                assert_eq!(status_of(&wire), 200, "{wire}");
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        refused_per_ip(&gw),
        attempts,
        "every attempt before the close was seen is refused and counted"
    );
}

/// The first answer on `stream` (its head), or nothing when it is closed first.
async fn until_closed_or_answered(stream: &mut TcpStream) -> String {
    let mut wire = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&wire).into_owned(),
            Ok(n) => wire.extend_from_slice(&chunk[..n]),
        }
        if wire.windows(4).any(|w| w == b"\r\n\r\n") {
            return String::from_utf8_lossy(&wire).into_owned();
        }
    }
}

/// The `keygate` binary started under a low soft open-file limit (as many service managers
/// start processes) raises it to the hard limit and says so.
#[tokio::test]
async fn serve_raises_its_open_file_soft_limit_to_the_hard_limit() {
    use std::io::{BufRead, BufReader};
    let origin = Origin::start("edge").await;
    let config = GatewayConfig::new()
        .tables(format_args!(
            "[guest]\ncache_dir = {:?}",
            support::cache_dir()
        ))
        .consumer("static-user", None, &[KEY])
        .service("api", format_args!("http://{}/v1", origin.addr))
        .route("paths = [\"/api\"]");
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::io::Write::write_all(&mut file, config.to_string().as_bytes()).unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\""])
        .arg(support::process::KEYGATE)
        .arg(file.path())
        .env("KEYGATE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keygate serve");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (log, serving) = tokio::task::spawn_blocking(move || {
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ready = line.contains("keygate is serving");
            log.push(line);
            if ready {
                return (log, true);
            }
        }
        (log, false)
    })
    .await
    .unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "keygate serve did not start: {log:#?}");
    let limits = limits.expect("/proc/PID/limits");
    let open_files: Vec<u64> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line")
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let [soft, hard] = open_files[..] else {
        panic!("soft and hard limits in {limits}")
    };
    assert!(
        hard > 256,
        "the test needs a hard limit above 256: {limits}"
    );
    assert_eq!(soft, hard, "the soft limit was not raised: {limits}");
    assert!(
        log.iter()
            .any(|line| line.contains("open-file limit")
                && line.contains(&format!("open_files={hard}"))),
        "the limit is logged: {log:#?}"
    );
}

/// A WebSocket (upgraded) connection belongs to its tunnel: neither timeout applies to it.
#[tokio::test]
async fn an_upgraded_connection_is_not_cut_by_either_timeout() {
    use http_body_util::BodyExt;
    // An origin that upgrades and echoes.
    let origin = support::servers::serve(|mut request: hyper::Request<hyper::body::Incoming>| {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(upgrade.await.expect("origin upgraded"));
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        async move {
            hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .unwrap()
        }
    })
    .await;
    let config = GatewayConfig::new()
        .server("header_read_timeout = \"300ms\"")
        .server("keepalive_timeout = \"300ms\"")
        .consumer("static-user", None, &[KEY])
        .service("api", format_args!("http://{}/v1", origin.addr))
        .route("paths = [\"/api\"]");
    let gw = start_gateway(&config.to_string()).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let upgrade = raw_request(
        gw.addr,
        "connection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "",
    );
    stream.write_all(&upgrade).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("the 101", stream.read_exact(&mut byte))
            .await
            .expect("a 101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    for message in [&b"first"[..], b"after a pause"] {
        // Silent for four times both timeouts before each message (the time is what is tested).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        stream
            .write_all(message)
            .await
            .expect("the tunnel is still open");
        let mut echoed = vec![0u8; message.len()];
        within("the echo", stream.read_exact(&mut echoed))
            .await
            .expect("the echo through the tunnel");
        assert_eq!(echoed, message);
    }
}

/// HTTP/2 (h2c here; the same clock runs under TLS): a connection with no stream open is idle,
/// and closed at `keepalive_timeout`.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_keepalive_timeout() {
    use http_body_util::BodyExt;
    const TIMEOUT: Duration = Duration::from_secs(1);
    let origin = Origin::start("edge").await;
    let gw = gateway(&origin, &["h2c = true", "keepalive_timeout = \"1s\""]).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{}/api/x", gw.addr))
        .header("apikey", KEY)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = within("an HTTP/2 answer", sender.send_request(request))
        .await
        .expect("an HTTP/2 response");
    assert_eq!(response.status(), 200);
    within("the body", response.into_body().collect())
        .await
        .unwrap();
    let idle = Instant::now();
    let _ = within("the gateway closing an idle HTTP/2 connection", connection).await;
    let after = idle.elapsed();
    assert!(
        after >= TIMEOUT - Duration::from_millis(100) && after < TIMEOUT * 5,
        "closed {after:?} after its last stream; keepalive_timeout is {TIMEOUT:?}"
    );
}
