//! Scenarios: a request forwarded through the gateway keeps the HTTP/1.1 behaviours a client
//! and an origin rely on: HEAD, repeated headers, streaming, bodiless statuses,
//! `Expect: 100-continue`, percent-escapes kept, untouched encodings, large bodies and
//! protocol upgrades.
//!
//! Each test runs the real gateway (`config_to`: service `http://origin/v1`,
//! route `/api`, `strip_path`) in front of an origin of its own: a hyper server on an
//! ephemeral loopback port that does the one thing the scenario needs. Where the wire itself
//! matters (100 Continue, bodiless responses, upgrades) the client is a raw `TcpStream`.

mod support;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{GatewayConfig, Origin, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: (&str, &str) = ("apikey", "static-key");

/// How long a step may take before the test fails instead of hanging: only a bound on waits
/// that never end when the gateway misbehaves, never a way to order events.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, step: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, step)
        .await
        .unwrap_or_else(|_| panic!("no progress within {PATIENCE:?}: {what}"))
}

// ---------------------------------------------------------------------------------------
// Origins, gateway and raw-wire helpers
// ---------------------------------------------------------------------------------------

type OriginBody = BoxBody<Bytes, Infallible>;
type OriginResponse = hyper::Response<OriginBody>;

/// An origin answering every request with `handler`, for the scenarios where the answer or
/// the wire is the point (connections may be upgraded).
async fn origin<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = OriginResponse> + Send + 'static,
{
    support::servers::serve(handler).await.addr
}

fn full(body: impl Into<Bytes>) -> OriginBody {
    Full::new(body.into()).boxed()
}

fn empty() -> OriginBody {
    Empty::new().boxed()
}

/// A request carrying the consumer's key.
fn keyed(method: &str, addr: SocketAddr, path: &str) -> http::request::Builder {
    support::request(method, addr, path).header(KEY.0, KEY.1)
}

/// The gateway's config for scenarios with an origin of their own: service `http://ORIGIN/v1`,
/// route `/api` (strip_path), the static consumer key `static-key`.
fn config_to(origin: SocketAddr) -> String {
    GatewayConfig::new()
        .consumer("static-user", None, &[KEY.1])
        .service("api", format_args!("http://{origin}/v1"))
        .route("name = \"api-route\"\npaths = [\"/api\"]")
        .to_string()
}

/// A gateway of [`config_to`] `origin`.
async fn gateway_to(origin: SocketAddr) -> keygate::RunningGateway {
    start_gateway(&config_to(origin)).await
}

/// Read one response head (through its blank line); returns it and any bytes read past it.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            let head = String::from_utf8(buf).expect("response head is text");
            return (head, rest);
        }
        let n = stream.read(&mut chunk).await.expect("read from gateway");
        assert!(
            n > 0,
            "connection closed before a whole response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Split a whole `Connection: close` response into its head and body bytes.
fn split_response(wire: &[u8]) -> (String, &[u8]) {
    let end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(wire)));
    let head = String::from_utf8(wire[..end + 4].to_vec()).expect("response head is text");
    (head, &wire[end + 4..])
}

/// The values of header `name` in a raw response head.
fn head_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// `n` deterministic, non-repeating-looking bytes (xorshift), so a reordered, dropped or
/// duplicated chunk changes the content.
fn pattern(n: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A gzip stream (of "hello, gzip\n" three times): not UTF-8 from its second byte on.
const GZIP: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xff, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xd7,
    0x51, 0x48, 0xaf, 0xca, 0x2c, 0xe0, 0xca, 0xc0, 0xc1, 0x06, 0x00, 0x26, 0x21, 0x07, 0x11, 0x24,
    0x00, 0x00, 0x00,
];

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn head_is_answered_with_the_origins_content_length_and_no_body() {
    let origin = origin(|request: hyper::Request<Incoming>| async move {
        if request.method() == http::Method::HEAD {
            // What a GET would carry, announced and not sent.
            hyper::Response::builder()
                .header("content-type", "application/octet-stream")
                .header("content-length", "1234")
                .body(empty())
                .unwrap()
        } else {
            hyper::Response::builder()
                .body(full("after the HEAD"))
                .unwrap()
        }
    })
    .await;
    let gw = gateway_to(origin).await;

    // HEAD and then GET on one connection: a body sent after the HEAD's head (or a wait for
    // the 1234 announced bytes) would break the second exchange.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let head = keyed("HEAD", gw.addr, "/api/file")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within("HEAD answer", sender.send_request(head))
        .await
        .expect("HEAD answer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("content-length").unwrap(),
        "1234",
        "{:?}",
        response.headers()
    );
    let body = within("HEAD body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(body.is_empty(), "a HEAD answer has no body: {body:?}");

    within("connection ready after HEAD", sender.ready())
        .await
        .expect("the connection stays usable after a HEAD");
    let get = keyed("GET", gw.addr, "/api/file")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within("GET after HEAD", sender.send_request(get))
        .await
        .expect("GET after HEAD on the same connection");
    assert_eq!(response.status(), 200);
    let body = within("GET body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "after the HEAD");
}

#[tokio::test]
async fn several_set_cookie_headers_all_reach_the_client_in_order() {
    const COOKIES: [&str; 4] = [
        "session=abc123; Path=/; HttpOnly",
        // A comma inside the value: folding the headers into one line would corrupt it.
        "theme=dark; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Secure",
        "lang=en-US; Max-Age=3600; SameSite=Lax",
        "session=overridden; Path=/admin",
    ];
    let origin = origin(|_request| async move {
        let mut response = hyper::Response::builder().header("content-type", "text/plain");
        for cookie in COOKIES {
            response = response.header("set-cookie", cookie);
        }
        response.body(full("cookies")).unwrap()
    })
    .await;
    let gw = gateway_to(origin).await;

    let reply = support::client::get(gw.addr, "/api/login", &[KEY]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let cookies: Vec<&str> = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, COOKIES);
    assert_eq!(reply.body, "cookies");
}

#[tokio::test]
async fn chunked_origin_response_streams_to_the_client_before_the_origin_finishes() {
    const FIRST: &[u8] = b"first chunk, sent at once\n";
    const REST: &[u8] = b"the rest, sent only once the client has the first chunk\n";
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(Mutex::new(Some(released)));
    let origin = origin(move |_request| {
        let released = released.lock().unwrap().take();
        async move {
            let released = released.expect("one streamed request");
            // No length: hyper sends it chunked, FIRST at once, REST when released.
            let first = futures::stream::once(async { Ok(Frame::data(Bytes::from_static(FIRST))) });
            let rest = futures::stream::once(async move {
                let _ = released.await;
                Ok(Frame::data(Bytes::from_static(REST)))
            });
            hyper::Response::builder()
                .header("content-type", "text/plain")
                .body(BodyExt::boxed(StreamBody::new(futures::StreamExt::chain(
                    first, rest,
                ))))
                .unwrap()
        }
    })
    .await;
    let gw = gateway_to(origin).await;

    let request = keyed("GET", gw.addr, "/api/stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within("response head", support::client::open(gw.addr, request)).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "the gateway cannot know the length without buffering: {:?}",
        response.headers()
    );
    let mut body = response.into_body();
    // The origin is still holding REST back, so a gateway that buffers the whole body never
    // delivers FIRST and this times out.
    let mut received = Vec::new();
    within("first chunk while the origin is still sending", async {
        while received.len() < FIRST.len() {
            let frame = body
                .frame()
                .await
                .expect("body ended before the first chunk")
                .expect("body error before the first chunk");
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
    })
    .await;
    assert_eq!(received, FIRST);

    release.send(()).expect("the origin is waiting to finish");
    let rest = within("rest of the body", body.collect())
        .await
        .expect("rest of the body")
        .to_bytes();
    assert_eq!(rest, REST);
}

/// However a response ends (a length, chunks, no body at all), reading it to the end hands
/// its origin connection back: sequential requests on one request thread share one.
#[tokio::test]
async fn every_kind_of_response_end_hands_the_origin_connection_back() {
    let origin = support::servers::serve(|request: hyper::Request<Incoming>| async move {
        match request.uri().path() {
            // No length: hyper sends it chunked.
            "/v1/chunked" => {
                let chunks =
                    ["one ", "two"].map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))));
                hyper::Response::new(BodyExt::boxed(StreamBody::new(futures::stream::iter(
                    chunks,
                ))))
            }
            "/v1/empty" => hyper::Response::builder()
                .status(204)
                .body(empty())
                .unwrap(),
            _ => hyper::Response::new(full("sized")),
        }
    })
    .await;
    let config = GatewayConfig::new()
        .server("workers = 1")
        .consumer("static-user", None, &[KEY.1])
        .service("api", format_args!("http://{}/v1", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/api\"]")
        .to_string();
    let gw = start_gateway(&config).await;
    for _ in 0..3 {
        for (method, path, status, body) in [
            ("GET", "/api/sized", 200, "sized"),
            ("GET", "/api/chunked", 200, "one two"),
            ("GET", "/api/empty", 204, ""),
            ("HEAD", "/api/sized", 200, ""),
        ] {
            let request = keyed(method, gw.addr, path)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let reply = within("a reply", support::client::send(gw.addr, request)).await;
            assert_eq!(
                (reply.status, reply.text().as_str()),
                (status, body),
                "{method} {path}"
            );
        }
    }
    assert_eq!(
        origin.connections(),
        1,
        "12 sequential requests on one request thread used {} origin connections",
        origin.connections()
    );
}

#[tokio::test]
async fn no_content_and_not_modified_arrive_without_a_body() {
    let origin = origin(|request: hyper::Request<Incoming>| async move {
        let status = if request.uri().path().ends_with("/no-content") {
            204
        } else {
            304
        };
        hyper::Response::builder()
            .status(status)
            .header("etag", "\"v1\"")
            .body(empty())
            .unwrap()
    })
    .await;
    let gw = gateway_to(origin).await;

    for (path, status) in [("/api/no-content", 204), ("/api/not-modified", 304)] {
        // Raw wire with `Connection: close`: everything after the head, up to the close, is
        // what the gateway sent as a body (a chunked terminator `0\r\n\r\n` included).
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\napikey: {}\r\nif-none-match: \"v1\"\r\n\
             connection: close\r\n\r\n",
            gw.addr, KEY.1
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut wire = Vec::new();
        within("response up to the close", stream.read_to_end(&mut wire))
            .await
            .expect("read the response");
        let (head, body) = split_response(&wire);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {head}"
        );
        assert!(
            body.is_empty(),
            "{path}: a {status} has no body, got {:?} after\n{head}",
            String::from_utf8_lossy(body)
        );
        assert!(
            head_values(&head, "transfer-encoding").is_empty(),
            "{path}: a {status} has no transfer-encoding:\n{head}"
        );
        assert_eq!(head_values(&head, "etag"), ["\"v1\""], "{path}:\n{head}");
        if status == 204 {
            assert!(
                head_values(&head, "content-length").is_empty(),
                "{path}: a 204 carries no content-length:\n{head}"
            );
        }
    }
}

#[tokio::test]
async fn expect_100_continue_gets_continue_before_the_body_and_then_the_origins_answer() {
    let origin = Origin::answering(|seen| {
        hyper::Response::builder()
            .status(201)
            .body(full(format!("stored {} bytes", seen.body.len())))
            .unwrap()
    })
    .await;
    let gw = gateway_to(origin.addr).await;

    let body = pattern(100_000);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nhost: {}\r\napikey: {}\r\n\
         content-type: application/octet-stream\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\nconnection: close\r\n\r\n",
        gw.addr,
        KEY.1,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Nothing of the body is sent until the gateway says to go on.
    let (interim, extra) = within("100 Continue", read_head(&mut stream)).await;
    assert!(
        interim.starts_with("HTTP/1.1 100 "),
        "expected 100 Continue before sending the body, got:\n{interim}"
    );
    assert!(
        extra.is_empty(),
        "nothing follows the 100 until the body is sent: {:?}",
        String::from_utf8_lossy(&extra)
    );

    stream.write_all(&body).await.unwrap();
    let mut wire = Vec::new();
    within("final answer", stream.read_to_end(&mut wire))
        .await
        .expect("read the final answer");
    let (head, answer) = split_response(&wire);
    assert!(head.starts_with("HTTP/1.1 201 "), "{head}");
    assert_eq!(answer, format!("stored {} bytes", body.len()).as_bytes());

    let seen = origin.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "the origin got other bytes than sent");
}

/// The query string is forwarded byte for byte, and escapes that carry meaning in a path
/// (`%2F`, `%25`, `%3F`) stay escaped. The one rewrite is Kong's path normalization
/// (`shared/reference/kong.md`, "Upstream URI": the upstream path is built from the normalized
/// request path): an escaped unreserved character such as `%7E` reaches the origin as `~`,
/// the same URI by RFC 3986.
#[tokio::test]
async fn percent_encoded_paths_and_queries_keep_their_escapes_at_the_origin() {
    let origin = Origin::answering(|_| hyper::Response::builder().body(full("ok")).unwrap()).await;
    let gw = gateway_to(origin.addr).await;

    for (sent, expected) in [
        (
            "/api/a%2Fb/%7Euser?q=a%20b&x=%2B&y=1+2",
            "/v1/a%2Fb/~user?q=a%20b&x=%2B&y=1+2",
        ),
        // An encoded `%` and `?`: decoding them (once or twice) would change the meaning.
        (
            "/api/100%25/%3Fnot-a-query?next=%26a%3Db%25&tilde=%7E",
            "/v1/100%25/%3Fnot-a-query?next=%26a%3Db%25&tilde=%7E",
        ),
    ] {
        let reply = support::client::get(gw.addr, sent, &[KEY]).await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.text());
        assert_eq!(origin.last().uri, expected, "sent {sent}");
    }
}

#[tokio::test]
async fn compressed_bodies_pass_through_untouched() {
    let origin = Origin::answering(|seen| {
        if seen.method == "POST" {
            return hyper::Response::builder().body(full("stored")).unwrap();
        }
        hyper::Response::builder()
            .header("content-type", "text/plain")
            .header("content-encoding", "gzip")
            .header("vary", "accept-encoding")
            .body(full(GZIP))
            .unwrap()
    })
    .await;
    let gw = gateway_to(origin.addr).await;

    // Download: the gzip bytes and their header as the origin sent them, not inflated.
    let reply = support::client::get(
        gw.addr,
        "/api/greeting",
        &[KEY, ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(reply.body.as_ref(), GZIP);
    if let Some(length) = reply.header("content-length") {
        assert_eq!(length, GZIP.len().to_string());
    }

    // Upload: a gzip request body reaches the origin as sent.
    let request = keyed("POST", gw.addr, "/api/greeting")
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from_static(GZIP)))
        .unwrap();
    let reply = support::send(gw.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(seen.header_all("content-encoding"), ["gzip"]);
    assert_eq!(seen.body.as_ref(), GZIP);
}

#[tokio::test]
async fn large_upload_and_download_stream_through_unchanged() {
    const SIZE: usize = 8 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let data = Bytes::from(pattern(SIZE));
    let origin = origin({
        let data = data.clone();
        move |request: hyper::Request<Incoming>| {
            let data = data.clone();
            async move {
                if request.method() == http::Method::POST {
                    // Hash as it streams in: the origin never holds the whole upload.
                    let mut body = request.into_body();
                    let (mut hasher, mut bytes) = (Sha256::new(), 0usize);
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame.expect("upload body").into_data() {
                            hasher.update(&data);
                            bytes += data.len();
                        }
                    }
                    let json =
                        serde_json::json!({"bytes": bytes, "sha256": hex(&hasher.finalize())});
                    return hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(full(json.to_string()))
                        .unwrap();
                }
                let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..SIZE)
                    .step_by(CHUNK)
                    .map(|at| Ok(Frame::data(data.slice(at..(at + CHUNK).min(SIZE)))))
                    .collect();
                hyper::Response::builder()
                    .header("content-type", "application/octet-stream")
                    .header("content-length", SIZE.to_string())
                    .body(BodyExt::boxed(StreamBody::new(futures::stream::iter(
                        chunks,
                    ))))
                    .unwrap()
            }
        }
    })
    .await;
    let gw = gateway_to(origin).await;

    let request = keyed("POST", gw.addr, "/api/upload")
        .header("content-type", "application/octet-stream")
        .body(Full::new(data.clone()))
        .unwrap();
    let reply = within("upload", support::send(gw.addr, request)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["bytes"], SIZE);
    assert_eq!(reply.json()["sha256"], sha256_hex(&data));

    let reply = within(
        "download",
        support::client::get(gw.addr, "/api/download", &[KEY]),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), SIZE);
    let first_difference = reply.body.iter().zip(data.iter()).position(|(a, b)| a != b);
    assert_eq!(
        first_difference, None,
        "download differs from what was sent"
    );
}

#[tokio::test]
async fn upgrade_switches_protocols_and_then_carries_bytes_both_ways() {
    let origin = origin(|mut request: hyper::Request<Incoming>| async move {
        let wants_websocket = request
            .headers()
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if !wants_websocket {
            return hyper::Response::builder()
                .status(426)
                .body(full("upgrade required"))
                .unwrap();
        }
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            // Echo until the peer closes its side, then close ours.
            let mut io = TokioIo::new(upgrade.await.expect("origin side upgraded"));
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = io
                    .read(&mut buf)
                    .await
                    .expect("read on the upgraded origin side");
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.expect("echo");
            }
            let _ = io.shutdown().await;
        });
        hyper::Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(empty())
            .unwrap()
    })
    .await;
    let gw = gateway_to(origin).await;

    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /api/socket HTTP/1.1\r\nhost: {}\r\napikey: {}\r\nconnection: Upgrade\r\n\
         upgrade: websocket\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        gw.addr, KEY.1
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, extra) = within("101 Switching Protocols", read_head(&mut stream)).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(head_values(&head, "upgrade"), ["websocket"], "{head}");
    assert!(
        head_values(&head, "connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("upgrade")),
        "{head}"
    );
    assert!(
        extra.is_empty(),
        "nothing before the client speaks: {extra:?}"
    );

    // Bytes both ways, small and larger than any one buffer.
    for message in [b"ping".to_vec(), pattern(256 * 1024)] {
        stream.write_all(&message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        within(
            "echo through the upgraded connection",
            stream.read_exact(&mut echoed),
        )
        .await
        .expect("echo through the upgraded connection");
        assert!(echoed == message, "the echo differs from what was sent");
    }

    // Closing our side reaches the origin, whose close comes back.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(
        "close after the client's close",
        stream.read_to_end(&mut rest),
    )
    .await
    .expect("clean close");
    assert!(rest.is_empty(), "no bytes after the echoes: {rest:?}");
}

#[tokio::test]
async fn upgrade_on_the_portable_path_is_refused_clearly_and_never_reaches_the_origin() {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&hits);
    let origin = origin(move |_request: hyper::Request<Incoming>| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            hyper::Response::builder()
                .status(200)
                .body(empty())
                .unwrap()
        }
    })
    .await;
    let gw = support::start_gateway_with(&config_to(origin), |config| {
        config.guest.entry = keygate_policy::GuestEntry::WasiHttp;
    })
    .await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET /api/socket HTTP/1.1\r\nhost: {}\r\napikey: {}\r\nconnection: Upgrade\r\n\
         upgrade: websocket\r\n\r\n",
        gw.addr, KEY.1
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, _) = within("the refusal", read_head(&mut stream)).await;
    assert!(head.starts_with("HTTP/1.1 501 "), "{head}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}
