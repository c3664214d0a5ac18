//! Scenarios: a route's `max_body_size` (nginx's `client_max_body_size`). A declared length
//! over it is answered 413 before anything reaches the origin; a body without one that grows
//! past it aborts the origin's request and gets the 413; within it (or without a limit) bodies
//! stream as always.

use super::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `/api` route with a 1 KiB limit.
const LIMITED_ROUTE: &str =
    "[[services.routes]]\nname = \"api\"\npaths = [\"/api\"]\nmax_body_size = \"1k\"\n";
const KEY: (&str, &str) = ("apikey", "alice-key");
const LIMIT: usize = 1024;

fn assert_payload_too_large(reply: &Reply) {
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(message(reply), "Payload too large");
    let id = reply.header("x-request-id").expect("a request id");
    assert!(is_hex_id(id), "{id}");
    assert_eq!(reply.json()["request_id"], id);
    assert_eq!(reply.header("server"), Some("keygate"));
    let latency = reply
        .header("x-keygate-response-latency")
        .unwrap_or_default();
    assert!(latency.parse::<u64>().is_ok(), "{latency:?}");
}

#[tokio::test]
async fn a_declared_length_over_max_body_size_is_413_and_never_forwarded() {
    let (origin, gw) = gateway_with_routes("", LIMITED_ROUTE).await;
    let body = vec![b'x'; LIMIT + 1];
    let reply = send_body(gw.addr, "POST", "/api/x", &[KEY], body.clone()).await;
    assert_payload_too_large(&reply);
    // Negotiated like every error of the gateway's error handler: Accept, then Content-Type.
    let reply = send_body(
        gw.addr,
        "PUT",
        "/api/x",
        &[KEY, ("accept", "text/plain")],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, 413);
    let id = reply.header("x-request-id").unwrap();
    assert_eq!(
        reply.text(),
        format!("Payload too large\nrequest_id: {id}\n")
    );
    // nginx checks the length before any plugin runs: no key is asked for.
    let reply = send_body(gw.addr, "POST", "/api/x", &[], body).await;
    assert_payload_too_large(&reply);
    assert_eq!(
        origin.hits(),
        0,
        "nothing of a refused request is forwarded"
    );
}

#[tokio::test]
async fn a_declared_length_over_max_body_size_is_answered_unread_and_the_connection_closed() {
    let (origin, gw) = gateway_with_routes("", LIMITED_ROUTE).await;
    // Only the head is sent: the answer must not wait for a body the gateway will not read.
    let mut client = RawClient::connect(gw.addr).await;
    client
        .write(
            format!(
                "POST /api/x HTTP/1.1\r\nhost: gw\r\napikey: alice-key\r\ncontent-length: {}\r\n\r\n",
                100 * LIMIT
            )
            .as_bytes(),
        )
        .await;
    let reply = client.response().await;
    assert_payload_too_large(&reply);
    if matches!(crate::HOST, Host::FastPath | Host::Portable) {
        assert!(
            client.closed().await,
            "keygate closes a connection whose body it did not read"
        );
    }
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn bodies_up_to_max_body_size_are_forwarded_whole() {
    let (origin, gw) = gateway_with_routes("", LIMITED_ROUTE).await;
    let body = vec![b'y'; LIMIT];
    let reply = send_body(gw.addr, "POST", "/api/x", &[KEY], body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        origin.last().body,
        body,
        "a body of exactly the limit passes"
    );
    let text = "z".repeat(LIMIT);
    let reply = send_chunked(gw.addr, "/api/x", &[KEY], &text).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().body_text(), text, "chunked, within the limit");
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn without_max_body_size_a_large_body_passes() {
    let (origin, gw) = gateway("").await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let reply = send_body(gw.addr, "POST", "/api/x", &[KEY], body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().body_bytes, body.len() as u64);
    assert!(origin.last().body == body);
    let text = "w".repeat(1_000_000);
    let reply = send_chunked(gw.addr, "/api/x", &[KEY], &text).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().body_bytes, 1_000_000);
}

/// What an origin made of one request's body.
#[derive(Debug, Clone, Default)]
struct Received {
    bytes: usize,
    /// Ended cleanly (false: the body errored, i.e. the request was cut off).
    complete: Option<bool>,
}

/// An origin that records how far each request's body got and whether it ended whole.
async fn recording_origin() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::clone(&log);
    let listening = support::servers::serve(move |request| {
        let log = Arc::clone(&seen);
        async move {
            let index = {
                let mut log = log.lock().unwrap();
                log.push(Received::default());
                log.len() - 1
            };
            let mut body = request.into_body();
            let complete = loop {
                match body.frame().await {
                    None => break true,
                    Some(Err(_)) => break false,
                    Some(Ok(frame)) => {
                        let n = frame.data_ref().map_or(0, |data| data.len());
                        log.lock().unwrap()[index].bytes += n;
                    }
                }
            };
            log.lock().unwrap()[index].complete = Some(complete);
            hyper::Response::new(Full::new(Bytes::from_static(b"{}")).boxed())
        }
    })
    .await;
    (listening.addr, log)
}

/// Wait (at most 10 s) until `log`'s first request satisfies `ready`.
async fn wait_for(log: &Mutex<Vec<Received>>, ready: impl Fn(&Received) -> bool) -> Received {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(first) = log.lock().unwrap().first().filter(|r| ready(r)) {
            return first.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the origin never got there: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_chunked_body_growing_past_max_body_size_is_413_and_the_origins_request_aborted() {
    let (origin, log) = recording_origin().await;
    let toml = GatewayConfig::new()
        .consumer("alice", Some("cust-alice"), &["alice-key"])
        .service("api", format_args!("http://{origin}/base"))
        .service_tables(LIMITED_ROUTE)
        .to_string();
    let gw = start_gateway(&toml).await;
    let mut client = RawClient::connect(gw.addr).await;
    let chunk = |n: usize| {
        let mut chunk = format!("{n:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b'c', n));
        chunk.extend_from_slice(b"\r\n");
        chunk
    };
    client
        .write(b"POST /api/upload HTTP/1.1\r\nhost: gw\r\napikey: alice-key\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    client.write(&chunk(600)).await;
    // The request is on its way to the origin before the body is over the limit.
    wait_for(&log, |r| r.bytes >= 600).await;
    client.write(&chunk(600)).await;
    let reply = client.response().await;
    assert_payload_too_large(&reply);
    let received = wait_for(&log, |r| r.complete.is_some()).await;
    assert_eq!(
        received.complete,
        Some(false),
        "the origin's request must end in an error, not look whole: {received:?}"
    );
    assert!(
        received.bytes <= LIMIT,
        "no more than the limit reaches the origin: {received:?}"
    );
    assert_eq!(log.lock().unwrap().len(), 1);
}

/// An origin that answers at once and reads the body afterwards (as a streaming API may): on
/// the fast path its answer is already the client's when the body passes the limit, so no 413
/// can follow; the origin's request is still aborted and the client's connection closed. The
/// wasi:http path reads the origin's answer only once the body is sent, so there the client
/// gets the 413 as before.
#[tokio::test]
async fn a_body_passing_max_body_size_after_the_origin_answered_ends_the_connection() {
    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::clone(&log);
    let origin = support::servers::serve(move |request| {
        let log = Arc::clone(&seen);
        async move {
            let index = {
                let mut log = log.lock().unwrap();
                log.push(Received::default());
                log.len() - 1
            };
            tokio::spawn(async move {
                let mut body = request.into_body();
                let complete = loop {
                    match body.frame().await {
                        None => break true,
                        Some(Err(_)) => break false,
                        Some(Ok(frame)) => {
                            let n = frame.data_ref().map_or(0, |data| data.len());
                            log.lock().unwrap()[index].bytes += n;
                        }
                    }
                };
                log.lock().unwrap()[index].complete = Some(complete);
            });
            hyper::Response::new(Full::new(Bytes::from_static(b"{\"early\":true}")).boxed())
        }
    })
    .await;
    let toml = GatewayConfig::new()
        .consumer("alice", Some("cust-alice"), &["alice-key"])
        .service("api", format_args!("http://{}/base", origin.addr))
        .service_tables(LIMITED_ROUTE)
        .to_string();
    let gw = start_gateway(&toml).await;
    let mut client = RawClient::connect(gw.addr).await;
    client
        .write(b"POST /api/upload HTTP/1.1\r\nhost: gw\r\napikey: alice-key\r\ntransfer-encoding: chunked\r\n\r\n")
        .await;
    let chunk = format!("258\r\n{}\r\n", "e".repeat(600));
    client.write(chunk.as_bytes()).await;
    wait_for(&log, |r| r.bytes >= 600).await;
    if crate::HOST == Host::FastPath {
        let reply = client.response().await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["early"], true);
        // The client goes on sending; the write may already fail once the gateway closes.
        let _ = client.stream.write_all(chunk.as_bytes()).await;
        assert!(
            client.closed().await,
            "the connection ends after the answer"
        );
    } else {
        client.write(chunk.as_bytes()).await;
        assert_payload_too_large(&client.response().await);
    }
    let received = wait_for(&log, |r| r.complete.is_some()).await;
    assert_eq!(received.complete, Some(false), "{received:?}");
    assert!(received.bytes <= LIMIT, "{received:?}");
}

#[tokio::test]
async fn an_http2_body_without_length_growing_past_max_body_size_is_413_and_aborted() {
    excluded_on_wasmtime_serve!("HTTP/2 (h2c) is keygate's own listener");
    let (origin, log) = recording_origin().await;
    let toml = GatewayConfig::new()
        .server("h2c = true")
        .consumer("alice", Some("cust-alice"), &["alice-key"])
        .service("api", format_args!("http://{origin}/base"))
        .service_tables(LIMITED_ROUTE)
        .to_string();
    let gw = start_gateway(&toml).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(connection);
    // The body's frames are sent as the test says: no `content-length`, no end.
    let (frames, body) =
        futures::channel::mpsc::unbounded::<Result<hyper::body::Frame<Bytes>, Infallible>>();
    let request = support::request("POST", gw.addr, "/api/upload")
        .header(KEY.0, KEY.1)
        .body(StreamBody::new(body))
        .unwrap();
    let response = tokio::spawn(sender.send_request(request));
    let frame = || Ok(hyper::body::Frame::data(Bytes::from(vec![b'h'; 600])));
    frames.unbounded_send(frame()).unwrap();
    wait_for(&log, |r| r.bytes >= 600).await;
    frames.unbounded_send(frame()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer within 10 s")
        .unwrap()
        .expect("a response");
    let (parts, body) = response.into_parts();
    let reply = Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    };
    assert_payload_too_large(&reply);
    let received = wait_for(&log, |r| r.complete.is_some()).await;
    assert_eq!(received.complete, Some(false), "{received:?}");
    assert!(received.bytes <= LIMIT, "{received:?}");
}

#[tokio::test]
async fn key_in_body_reads_within_both_limits() {
    let routes =
        "[[services.routes]]\nname = \"api\"\npaths = [\"/api\"]\nmax_body_size = \"1k\"\n";
    let (origin, gw) = gateway_with_routes(BODY_KEYS, routes).await;
    let large = format!("apikey=alice-key&pad={}", "p".repeat(2 * LIMIT));
    // Within `body_buffer_size` (8k) but over `max_body_size`: refused, declared or not,
    // before the origin sees anything.
    let reply = send_body(gw.addr, "POST", "/api/x", &[FORM], large.clone()).await;
    assert_payload_too_large(&reply);
    let reply = send_chunked(gw.addr, "/api/x", &[FORM], &large).await;
    assert_payload_too_large(&reply);
    assert_eq!(origin.hits(), 0);
    // Within both: the key is read from the body and the body forwarded.
    let small = format!("apikey=alice-key&pad={}", "p".repeat(100));
    let reply = send_chunked(gw.addr, "/api/x", &[FORM], &small).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().header("x-consumer-username"), Some("alice"));
    assert_eq!(origin.last().body_text(), small);
}

#[tokio::test]
async fn a_413_is_counted_as_the_gateways_answer_on_its_route() {
    excluded_on_wasmtime_serve!("keygate's metrics");
    let tables =
        "[[plugins]]\nname = \"prometheus\"\n[plugins.config]\nstatus_code_metrics = true\n";
    let (_origin, gw) = gateway_with_routes(tables, LIMITED_ROUTE).await;
    let reply = send_body(gw.addr, "POST", "/api/x", &[KEY], vec![0u8; 2 * LIMIT]).await;
    assert_eq!(reply.status, 413);
    let text = "c".repeat(2 * LIMIT);
    let reply = send_chunked(gw.addr, "/api/upload", &[KEY], &text).await;
    assert_eq!(reply.status, 413);
    let metrics = gw.keygate().gateway.metrics.render(0);
    let line = "kong_http_requests_total{service=\"api\",route=\"api\",code=\"413\",source=\"kong\",workspace=\"default\",consumer=\"\"} 2";
    assert!(metrics.contains(line), "{metrics}");
}

/// A client that writes HTTP/1.1 by hand, to control when each part of a request is sent.
struct RawClient {
    stream: TcpStream,
    read: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Read more, at most 10 s; 0 at the end of the stream (or a reset).
    async fn read_more(&mut self) -> usize {
        let mut buf = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf)).await {
            Err(_) => panic!("no answer within 10 s; read so far: {:?}", self.text()),
            Ok(Err(_)) => 0,
            Ok(Ok(n)) => {
                self.read.extend_from_slice(&buf[..n]);
                n
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.read).into_owned()
    }

    /// One response with a `Content-Length` body.
    async fn response(&mut self) -> Reply {
        let head_end = loop {
            if let Some(at) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(
                self.read_more().await > 0,
                "closed early: {:?}",
                self.text()
            );
        };
        let head = String::from_utf8_lossy(&self.read[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let mut headers = http::HeaderMap::new();
        for line in lines.filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(':').unwrap();
            headers.append(
                http::HeaderName::try_from(name.trim()).unwrap(),
                http::HeaderValue::try_from(value.trim()).unwrap(),
            );
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or_else(|| panic!("no content-length: {head:?}"));
        while self.read.len() < head_end + length {
            assert!(
                self.read_more().await > 0,
                "closed early: {:?}",
                self.text()
            );
        }
        let body = Bytes::copy_from_slice(&self.read[head_end..head_end + length]);
        self.read.drain(..head_end + length);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Whether the gateway closes the connection (within 10 s) without sending more.
    async fn closed(&mut self) -> bool {
        self.read_more().await == 0 && self.read.is_empty()
    }
}
