//! Kong 3.9 compatibility, one test per behaviour a client or an origin can observe
//! (`shared/reference/kong.md`; the README's "Kong compatibility" table points here).
//!
//! Every test runs the real host and guest against real servers on 127.0.0.1: an echo origin
//! (below) that records exactly what reached it, body included, and for the auth API the
//! shared test server.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keygate_policy::fingerprint::{consumer_uuid, credential_uuid, fingerprint};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::client::{Reply, get};
use support::{AuthApi, start_gateway};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------
// Test servers and helpers
// ---------------------------------------------------------------------------------------

/// What the origin received.
#[derive(Debug, Clone)]
struct Received {
    uri: String,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An origin that records every request whole and answers 200 `{"ok":true}`. Request headers
/// steer the answer: `x-echo-via` / `x-echo-server` / `x-echo-request-id` are sent back as
/// `Via` / `Server` / `X-Request-Id`, `x-echo-delay-ms` delays it.
#[derive(Clone)]
struct Echo {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Echo {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo = Self {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
        };
        let state = echo.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(request).await) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        echo
    }

    async fn answer(&self, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let steer = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(delay) = steer("x-echo-delay-ms").and_then(|d| d.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut response = hyper::Response::builder().header("content-type", "application/json");
        for (from, to) in [
            ("x-echo-via", "via"),
            ("x-echo-server", "server"),
            ("x-echo-request-id", "x-request-id"),
        ] {
            if let Some(value) = steer(from) {
                response = response.header(to, value);
            }
        }
        self.seen.lock().unwrap().push(Received {
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body,
        });
        response
            .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
            .unwrap()
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Received {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the origin saw a request")
    }
}

/// A gateway in front of `origin` (service `http://origin/base`) with three static consumers
/// (alice with a custom_id, bob without, and the key-less "anonymous-user"), `sections`
/// (whole TOML tables such as `[key_auth]`) and `routes` (`[[services.routes]]` tables).
fn config(origin: &Echo, sections: &str, routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

{sections}

[[consumers]]
username = "alice"
custom_id = "cust-alice"
keys = ["alice-key"]

[[consumers]]
username = "bob"
keys = ["bob-key"]

[[consumers]]
username = "anonymous-user"
custom_id = "anon"

[[services]]
name = "api"
url = "http://{origin}/base"

{routes}
"#,
        origin = origin.addr,
    )
}

const API_ROUTE: &str = "[[services.routes]]\nname = \"api\"\npaths = [\"/api\"]\n";

/// The echo origin and a gateway with `sections` and the `/api` route.
async fn gateway(sections: &str) -> (Echo, keygate::RunningGateway) {
    let origin = Echo::start().await;
    let gw = start_gateway(&config(&origin, sections, API_ROUTE)).await;
    (origin, gw)
}

/// The echo origin and a gateway with `sections` and `routes`.
async fn gateway_with_routes(sections: &str, routes: &str) -> (Echo, keygate::RunningGateway) {
    let origin = Echo::start().await;
    let gw = start_gateway(&config(&origin, sections, routes)).await;
    (origin, gw)
}

/// A request with a body and headers.
async fn send_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut builder = support::request(method, addr, path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    support::send(addr, builder.body(Full::new(body.into())).unwrap()).await
}

/// A request whose body is sent chunked, without `Content-Length`.
async fn send_chunked(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = body
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let mut builder = support::request("POST", addr, path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(StreamBody::new(futures::stream::iter(chunks)))
        .unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn message(reply: &Reply) -> String {
    reply.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_refused(reply: &Reply, status: u16, text: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(message(reply), text);
}

fn is_hex_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A loopback port nobody listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

const BODY_KEYS: &str = "[key_auth]\nkey_in_body = true\n";
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("content-type", "application/json");

// ---------------------------------------------------------------------------------------
// §1 key-auth: where the key is found
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn key_names_are_tried_in_order() {
    let (origin, gw) = gateway("[key_auth]\nkey_names = [\"x-api-key\", \"apikey\"]\n").await;
    let both = [("apikey", "alice-key"), ("x-api-key", "bob-key")];
    assert_eq!(get(gw.addr, "/api/x", &both).await.status, 200);
    assert_eq!(
        origin.last().header("x-consumer-username"),
        Some("bob"),
        "the first name decides"
    );
    let reply = get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await;
    assert_eq!(
        reply.status, 200,
        "the second name is tried when the first is absent"
    );
    assert_eq!(origin.last().header("x-consumer-username"), Some("alice"));
}

#[tokio::test]
async fn each_name_is_looked_up_in_header_then_query_then_body_before_the_next_name() {
    let (origin, gw) =
        gateway("[key_auth]\nkey_names = [\"first\", \"second\"]\nkey_in_body = true\n").await;
    // Header beats query beats body for one name.
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x?first=bob-key",
        &[("first", "alice-key"), FORM],
        "first=nobody",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().header("x-consumer-username"), Some("alice"));
    let reply = send_body(gw.addr, "POST", "/api/x?first=bob-key", &[FORM], "first=x").await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().header("x-consumer-username"), Some("bob"));
    // The first name's body field beats the second name's header.
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[("second", "alice-key"), FORM],
        "first=not-a-key",
    )
    .await;
    assert_refused(&reply, 401, "Unauthorized");
}

#[tokio::test]
async fn a_key_in_two_different_places_is_not_a_duplicate() {
    let (_origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/api/x?apikey=bob-key", &[("apikey", "alice-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn first_string_wins_and_a_bare_query_name_is_skipped() {
    let (origin, gw) = gateway("[key_auth]\nkey_names = [\"k1\", \"k2\"]\n").await;
    // `?k1` without `=` is a boolean, not a key: the lookup goes on to k2.
    let reply = get(gw.addr, "/api/x?k1&k2=bob-key", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().header("x-consumer-username"), Some("bob"));
}

#[tokio::test]
async fn duplicate_key_in_header_is_401_duplicate_api_key_found() {
    let (origin, gw) = gateway("").await;
    let reply = get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("apikey", "alice-key")],
    )
    .await;
    assert_refused(&reply, 401, "Duplicate API key found");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn duplicate_key_in_query_is_401_duplicate_api_key_found() {
    let (_origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/api/x?apikey=alice-key&apikey=bob-key", &[]).await;
    assert_refused(&reply, 401, "Duplicate API key found");
}

#[tokio::test]
async fn duplicate_key_in_form_body_is_401_duplicate_api_key_found() {
    let (_origin, gw) = gateway(BODY_KEYS).await;
    let reply = send_body(gw.addr, "POST", "/api/x", &[FORM], "apikey=a&apikey=b").await;
    assert_refused(&reply, 401, "Duplicate API key found");
}

#[tokio::test]
async fn json_array_or_object_key_is_401_duplicate_api_key_found() {
    let (_origin, gw) = gateway(BODY_KEYS).await;
    for body in [
        r#"{"apikey":["alice-key"]}"#,
        r#"{"apikey":{"k":"alice-key"}}"#,
    ] {
        let reply = send_body(gw.addr, "POST", "/api/x", &[JSON], body).await;
        assert_refused(&reply, 401, "Duplicate API key found");
    }
}

#[tokio::test]
async fn empty_key_is_401_no_api_key_found_even_with_a_valid_key_elsewhere() {
    let (origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/api/x?apikey=alice-key", &[("apikey", "")]).await;
    assert_refused(&reply, 401, "No API key found in request");
    let reply = get(gw.addr, "/api/x?apikey=", &[]).await;
    assert_refused(&reply, 401, "No API key found in request");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn missing_key_is_401_no_api_key_found() {
    let (_origin, gw) = gateway("").await;
    assert_refused(
        &get(gw.addr, "/api/x", &[]).await,
        401,
        "No API key found in request",
    );
}

#[tokio::test]
async fn unknown_key_is_401_unauthorized() {
    let origin = Echo::start().await;
    let auth = AuthApi::start().await;
    let sections = format!(
        "[auth_api]\nurl = \"http://{}/validate?apikey={{key}}\"\n",
        auth.addr
    );
    let gw = start_gateway(&config(&origin, &sections, API_ROUTE)).await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "nobody-knows-me")]).await;
    assert_refused(&reply, 401, "Unauthorized");
    assert_eq!((auth.calls(), origin.hits()), (1, 0));
}

#[tokio::test]
async fn header_names_are_case_insensitive_and_underscore_matches_dash() {
    let (_origin, gw) = gateway("[key_auth]\nkey_names = [\"api_key\"]\n").await;
    for header in ["api_key", "API_KEY", "api-key", "Api-Key"] {
        let reply = get(gw.addr, "/api/x", &[(header, "alice-key")]).await;
        assert_eq!(reply.status, 200, "{header}: {}", reply.text());
    }
    let (_origin, gw) = gateway("[key_auth]\nkey_names = [\"api-key\"]\n").await;
    let reply = get(gw.addr, "/api/x", &[("api_key", "alice-key")]).await;
    assert_refused(&reply, 401, "No API key found in request");
}

#[tokio::test]
async fn query_names_are_case_sensitive() {
    let (_origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/api/x?APIKEY=alice-key", &[]).await;
    assert_refused(&reply, 401, "No API key found in request");
    assert_eq!(
        get(gw.addr, "/api/x?apikey=alice-key", &[]).await.status,
        200
    );
}

#[tokio::test]
async fn key_in_header_and_key_in_query_switch_their_source_off() {
    let (_origin, gw) = gateway("[key_auth]\nkey_in_header = false\n").await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await;
    assert_refused(&reply, 401, "No API key found in request");
    assert_eq!(
        get(gw.addr, "/api/x?apikey=alice-key", &[]).await.status,
        200
    );
    let (_origin, gw) = gateway("[key_auth]\nkey_in_query = false\n").await;
    let reply = get(gw.addr, "/api/x?apikey=alice-key", &[]).await;
    assert_refused(&reply, 401, "No API key found in request");
}

#[tokio::test]
async fn key_in_body_is_off_by_default() {
    let (_origin, gw) = gateway("").await;
    let reply = send_body(gw.addr, "POST", "/api/x", &[FORM], "apikey=alice-key").await;
    assert_refused(&reply, 401, "No API key found in request");
}

#[tokio::test]
async fn key_in_form_body_is_found() {
    let (origin, gw) = gateway(BODY_KEYS).await;
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[FORM],
        "a=1&apikey=alice-key&b=2",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(
        seen.body_text(),
        "a=1&apikey=alice-key&b=2",
        "body forwarded as sent"
    );
    assert_eq!(seen.header("x-consumer-username"), Some("alice"));
}

#[tokio::test]
async fn key_in_json_body_is_found() {
    let (origin, gw) = gateway(BODY_KEYS).await;
    let body = r#"{"apikey": "alice-key", "n": 1}"#;
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[("content-type", "application/json; charset=utf-8")],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().body_text(), body);
}

#[tokio::test]
async fn key_in_multipart_body_is_found() {
    let (origin, gw) = gateway(BODY_KEYS).await;
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nalice-key\r\n--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b0undary--\r\n";
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[("content-type", "multipart/form-data; boundary=b0undary")],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().body_text(), body);
}

#[tokio::test]
async fn key_in_chunked_body_is_found_and_forwarded_with_its_length() {
    let (origin, gw) = gateway(BODY_KEYS).await;
    let body = "apikey=alice-key&message=sent+in+several+chunks";
    let reply = send_chunked(gw.addr, "/api/x", &[FORM], body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(seen.body_text(), body);
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn unparsable_body_means_no_key_not_an_error() {
    let (_origin, gw) = gateway(BODY_KEYS).await;
    for (content_type, body) in [
        ("application/json", "{\"apikey\": \"alice-key\""),
        ("text/plain", "apikey=alice-key"),
        ("multipart/form-data", "apikey=alice-key"),
    ] {
        let reply = send_body(
            gw.addr,
            "POST",
            "/api/x",
            &[("content-type", content_type)],
            body,
        )
        .await;
        assert_refused(&reply, 401, "No API key found in request");
    }
}

#[tokio::test]
async fn body_larger_than_body_buffer_size_holds_no_key_and_is_forwarded_whole() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nbody_buffer_size = \"1k\"\n").await;
    let big = format!("apikey=alice-key&pad={}", "x".repeat(2000));
    let reply = send_body(gw.addr, "POST", "/api/x", &[FORM], big.clone()).await;
    assert_refused(&reply, 401, "No API key found in request");
    let reply = send_chunked(gw.addr, "/api/x", &[FORM], &big).await;
    assert_refused(&reply, 401, "No API key found in request");
    // With the key elsewhere, a large body streams through untouched.
    let reply = send_chunked(gw.addr, "/api/x", &[FORM, ("apikey", "bob-key")], &big).await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().body_text(), big);
}

// ---------------------------------------------------------------------------------------
// §1 key-auth: hide_credentials, preflight, realm, anonymous, consumer headers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn hide_credentials_removes_the_header_and_the_query_argument() {
    let (origin, gw) = gateway("[key_auth]\nhide_credentials = true\n").await;
    let reply = get(gw.addr, "/api/x?a=1&apikey=alice-key&b=2", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().uri, "/base/x?a=1&b=2");
    // Kong clears both places for the name that matched, wherever the key was.
    get(gw.addr, "/api/x?apikey=other", &[("apikey", "alice-key")]).await;
    let seen = origin.last();
    assert_eq!(seen.uri, "/base/x", "no argument left, no `?`");
    assert_eq!(seen.header("apikey"), None);
    let (origin, gw) =
        gateway("[key_auth]\nhide_credentials = true\nkey_names = [\"api_key\"]\n").await;
    get(
        gw.addr,
        "/api/x",
        &[("api-key", "alice-key"), ("x-other", "1")],
    )
    .await;
    let seen = origin.last();
    assert_eq!(
        seen.header("api-key"),
        None,
        "the dashed spelling is hidden too"
    );
    assert_eq!(seen.header("x-other"), Some("1"));
}

#[tokio::test]
async fn hide_credentials_removes_the_form_field_and_fixes_the_length() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[FORM],
        "a=1&apikey=alice-key&b=%20",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(seen.body_text(), "a=1&b=%20");
    assert_eq!(seen.header("content-length"), Some("9"));
}

#[tokio::test]
async fn hide_credentials_removes_the_json_field() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let body = r#"{"z": [1, 2.50], "apikey": "alice-key", "a": {"b": null}}"#;
    let reply = send_body(gw.addr, "POST", "/api/x", &[JSON], body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(seen.body_text(), r#"{"z":[1, 2.50],"a":{"b": null}}"#);
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn hide_credentials_removes_the_multipart_part() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let keep = "--xx\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n";
    let body = format!(
        "{keep}--xx\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nalice-key\r\n--xx--\r\n"
    );
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[("content-type", "multipart/form-data; boundary=xx")],
        body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().body_text(), format!("{keep}--xx--\r\n"));
}

#[tokio::test]
async fn hide_credentials_also_removes_a_body_field_when_the_key_was_in_a_header() {
    let (origin, gw) = gateway("[key_auth]\nkey_in_body = true\nhide_credentials = true\n").await;
    let reply = send_body(
        gw.addr,
        "POST",
        "/api/x",
        &[FORM, ("apikey", "alice-key")],
        "apikey=second-copy&x=1",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().body_text(), "x=1");
}

#[tokio::test]
async fn run_on_preflight_false_lets_options_through_without_a_key() {
    let (origin, gw) = gateway("").await;
    let reply = send_body(gw.addr, "OPTIONS", "/api/x", &[], "").await;
    assert_refused(&reply, 401, "No API key found in request");
    let (origin2, gw) = gateway("[key_auth]\nrun_on_preflight = false\n").await;
    let forged = [
        ("x-consumer-id", "forged"),
        ("x-anonymous-consumer", "true"),
    ];
    let reply = send_body(gw.addr, "OPTIONS", "/api/x", &forged, "").await;
    assert_eq!(reply.status, 200);
    let seen = origin2.last();
    assert_eq!(
        seen.header("x-consumer-id"),
        None,
        "client copies never pass"
    );
    assert_eq!(seen.header("x-anonymous-consumer"), None);
    assert_eq!(origin.hits(), 0);
    let reply = send_body(gw.addr, "GET", "/api/x", &[], "").await;
    assert_eq!(reply.status, 401, "only OPTIONS skips the key");
}

#[tokio::test]
async fn www_authenticate_is_on_every_401() {
    let (_origin, gw) = gateway("").await;
    let dup = [("apikey", "a"), ("apikey", "b")];
    for reply in [
        get(gw.addr, "/api/x", &[]).await,
        get(gw.addr, "/api/x", &[("apikey", "wrong")]).await,
        get(gw.addr, "/api/x", &dup).await,
    ] {
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Key"),
            "{}",
            reply.text()
        );
    }
}

#[tokio::test]
async fn realm_is_sent_in_www_authenticate() {
    let (_origin, gw) = gateway("[key_auth]\nrealm = \"orders\"\n").await;
    for reply in [
        get(gw.addr, "/api/x", &[]).await,
        get(gw.addr, "/api/x", &[("apikey", "wrong")]).await,
    ] {
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Key realm=\"orders\"")
        );
    }
}

#[tokio::test]
async fn anonymous_consumer_is_used_when_the_key_is_missing_or_invalid() {
    let (origin, gw) =
        gateway("[key_auth]\nanonymous = \"anonymous-user\"\nhide_credentials = true\n").await;
    let forged = [
        ("x-credential-identifier", "forged"),
        ("x-anonymous-consumer", "false"),
    ];
    for headers in [
        forged.to_vec(),
        [&forged[..], &[("apikey", "a"), ("apikey", "b")]].concat(),
        [&forged[..], &[("apikey", "wrong")]].concat(),
    ] {
        let reply = get(gw.addr, "/api/x", &headers).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let seen = origin.last();
        assert_eq!(seen.header_all("x-anonymous-consumer"), vec!["true"]);
        assert_eq!(
            seen.header("x-consumer-id"),
            Some(consumer_uuid("anonymous-user").as_str())
        );
        assert_eq!(seen.header("x-consumer-username"), Some("anonymous-user"));
        assert_eq!(seen.header("x-consumer-custom-id"), Some("anon"));
        assert_eq!(seen.header("x-credential-identifier"), None);
    }
    assert_eq!(
        origin.last().header("apikey"),
        None,
        "hide_credentials applies to the invalid key too"
    );
    get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("x-anonymous-consumer", "true")],
    )
    .await;
    let seen = origin.last();
    assert_eq!(seen.header("x-anonymous-consumer"), None);
    assert_eq!(seen.header("x-consumer-username"), Some("alice"));
}

#[tokio::test]
async fn anonymous_consumer_can_be_named_by_id() {
    let id = consumer_uuid("anonymous-user");
    let (origin, gw) = gateway(&format!("[key_auth]\nanonymous = \"{id}\"\n")).await;
    assert_eq!(get(gw.addr, "/api/x", &[]).await.status, 200);
    assert_eq!(origin.last().header("x-consumer-id"), Some(id.as_str()));
}

#[tokio::test]
async fn anonymous_is_not_used_when_the_auth_api_cannot_answer() {
    let origin = Echo::start().await;
    let auth = AuthApi::start().await;
    auth.set_down(true);
    let sections = format!(
        "[key_auth]\nanonymous = \"anonymous-user\"\n[auth_api]\nurl = \"http://{}/validate?apikey={{key}}\"\n",
        auth.addr
    );
    let gw = start_gateway(&config(&origin, &sections, API_ROUTE)).await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "maybe-valid")]).await;
    assert_refused(
        &reply,
        503,
        "The authentication service is currently unavailable",
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn anonymous_must_name_a_configured_consumer() {
    let origin = Echo::start().await;
    let toml = config(&origin, "[key_auth]\nanonymous = \"ghost\"\n", API_ROUTE);
    let err = keygate::config::parse(&toml, None).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("key_auth.anonymous") && err.contains("ghost"),
        "{err}"
    );
}

#[tokio::test]
async fn consumer_headers_are_set_or_removed_exactly() {
    let origin = Echo::start().await;
    let auth = AuthApi::start().await;
    auth.allow("api-key-1", json!({"consumer": {"username": "carol"}}));
    let sections = format!(
        "[auth_api]\nurl = \"http://{}/validate?apikey={{key}}\"\n",
        auth.addr
    );
    let gw = start_gateway(&config(&origin, &sections, API_ROUTE)).await;
    let forged = [
        ("x-consumer-id", "forged"),
        ("x-consumer-custom-id", "forged"),
        ("x-consumer-username", "forged"),
        ("x-credential-identifier", "forged"),
        ("x-anonymous-consumer", "true"),
    ];
    get(
        gw.addr,
        "/api/x",
        &[&forged[..], &[("apikey", "bob-key")]].concat(),
    )
    .await;
    let seen = origin.last();
    assert_eq!(
        seen.header_all("x-consumer-id"),
        vec![consumer_uuid("bob").as_str()]
    );
    assert_eq!(seen.header_all("x-consumer-username"), vec!["bob"]);
    assert_eq!(
        seen.header("x-consumer-custom-id"),
        None,
        "bob has none: removed"
    );
    assert_eq!(
        seen.header_all("x-credential-identifier"),
        vec![credential_uuid(&fingerprint("bob-key")).as_str()],
        "static keys have a stable credential id"
    );
    assert_eq!(seen.header("x-anonymous-consumer"), None);
    // An auth API answer without id or credential: those headers are removed.
    get(
        gw.addr,
        "/api/x",
        &[&forged[..], &[("apikey", "api-key-1")]].concat(),
    )
    .await;
    let seen = origin.last();
    assert_eq!(seen.header_all("x-consumer-username"), vec!["carol"]);
    for name in [
        "x-consumer-id",
        "x-consumer-custom-id",
        "x-credential-identifier",
    ] {
        assert_eq!(seen.header(name), None, "{name}");
    }
}

// ---------------------------------------------------------------------------------------
// §6 error responses
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn error_body_is_kongs_json_template_byte_for_byte() {
    let (_origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/api/x", &[]).await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert!(is_hex_id(&id), "{id}");
    assert_eq!(
        reply.text(),
        format!(
            "{{\n  \"message\":\"No API key found in request\",\n  \"request_id\":\"{id}\"\n}}"
        )
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn errors_negotiate_their_format_from_accept() {
    let (_origin, gw) = gateway("").await;
    let addr = gw.addr;
    let ask =
        |accept: &'static str| async move { get(addr, "/api/x", &[("accept", accept)]).await };
    let reply = ask("text/plain").await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(
        reply.text(),
        format!("No API key found in request\nrequest_id: {id}\n")
    );
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let reply = ask("text/html").await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        reply.text().starts_with("<!doctype html>\n<html>\n"),
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains(&format!(
            "<p>No API key found in request.</p>\n    <p>request_id: {id}</p>"
        )),
        "{}",
        reply.text()
    );

    let reply = ask("application/xml").await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(
        reply.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    assert_eq!(
        reply.text(),
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>No API key found in request</message>\n  <requestid>{id}</requestid>\n</error>\n"
        )
    );

    for (accept, content_type) in [
        (
            "text/html;q=0.5, application/xml;q=0.9",
            "application/xml; charset=utf-8",
        ),
        (
            "text/html;q=0, text/plain;q=0.1",
            "text/plain; charset=utf-8",
        ),
        ("text/*", "text/plain; charset=utf-8"),
        ("*/*", "application/json; charset=utf-8"),
        ("image/png, text/html", "application/json; charset=utf-8"),
    ] {
        let reply = ask(accept).await;
        assert_eq!(reply.header("content-type"), Some(content_type), "{accept}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_header() {
    let (origin, gw) = gateway("").await;
    for reply in [
        get(gw.addr, "/api/x", &[]).await,
        get(gw.addr, "/nowhere", &[]).await,
        get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await,
    ] {
        let id = reply.header("x-request-id").unwrap_or_default();
        assert!(is_hex_id(id), "{} {id:?}", reply.status);
    }
    let reply = get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await;
    assert_eq!(
        origin.last().header("x-request-id"),
        reply.header("x-request-id"),
        "the origin sees the id the client gets"
    );
}

#[tokio::test]
async fn unmatched_request_is_404_no_route_matched_with_those_values() {
    let (origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/elsewhere", &[("apikey", "alice-key")]).await;
    assert_refused(&reply, 404, "no Route matched with those values");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn refused_origin_is_502_in_kongs_words() {
    let origin = Echo::start().await;
    let dead = closed_port().await;
    let toml = config(&origin, "", API_ROUTE).replace(&origin.addr.to_string(), &dead.to_string());
    let gw = start_gateway(&toml).await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await;
    assert_refused(
        &reply,
        502,
        "An invalid response was received from the upstream server",
    );
}

#[tokio::test]
async fn slow_origin_is_504_in_kongs_words() {
    let origin = Echo::start().await;
    let toml =
        config(&origin, "", API_ROUTE).replace("/base\"\n", "/base\"\nread_timeout = \"150ms\"\n");
    let gw = start_gateway(&toml).await;
    let reply = get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("x-echo-delay-ms", "2000")],
    )
    .await;
    assert_refused(&reply, 504, "The upstream server is timing out");
}

#[tokio::test]
async fn upstream_errors_use_accept_then_content_type_then_error_default_type() {
    let origin = Echo::start().await;
    let dead = closed_port().await;
    let toml = config(
        &origin,
        "[compat]\nerror_default_type = \"text/plain\"\n",
        API_ROUTE,
    )
    .replace(&origin.addr.to_string(), &dead.to_string());
    let gw = start_gateway(&toml).await;
    let key = ("apikey", "alice-key");
    let reply = get(gw.addr, "/api/x", &[key]).await;
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.text(),
        format!("An invalid response was received from the upstream server\nrequest_id: {id}\n")
    );
    let reply = send_body(gw.addr, "POST", "/api/x", &[key, JSON], "{}").await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let reply = get(gw.addr, "/api/x", &[key, ("accept", "application/xml")]).await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    // A plugin's error (401) ignores Content-Type and the default: JSON.
    let reply = get(gw.addr, "/api/x", &[]).await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
}

// ---------------------------------------------------------------------------------------
// §2 routing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn prefix_paths_are_plain_string_prefixes() {
    let (origin, gw) = gateway("").await;
    assert_eq!(
        get(gw.addr, "/apifoo", &[("apikey", "alice-key")])
            .await
            .status,
        200
    );
    assert_eq!(origin.last().uri, "/base/foo");
    assert_eq!(
        get(gw.addr, "/ap", &[("apikey", "alice-key")]).await.status,
        404
    );
}

#[tokio::test]
async fn regex_paths_are_anchored_at_the_start_only() {
    let routes = r#"
[[services.routes]]
name = "by-id"
paths = ["~/orders/(?<id>\\d+)"]
strip_path = false
"#;
    let (origin, gw) = gateway_with_routes("", routes).await;
    let key = [("apikey", "alice-key")];
    assert_eq!(get(gw.addr, "/orders/42/items", &key).await.status, 200);
    assert_eq!(origin.last().uri, "/base/orders/42/items");
    assert_eq!(get(gw.addr, "/v2/orders/42", &key).await.status, 404);
    assert_eq!(
        get(gw.addr, "/ORDERS/42", &key).await.status,
        404,
        "case-sensitive"
    );
}

#[tokio::test]
async fn paths_are_normalized_before_matching() {
    let (origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/x/..//%61pi/./y%2fz", &[("apikey", "alice-key")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(origin.last().uri, "/base/y%2Fz");
}

#[tokio::test]
async fn wildcard_hosts_match_the_leftmost_or_rightmost_label() {
    let routes = r#"
[[services.routes]]
name = "suffix"
hosts = ["*.example.com"]
[[services.routes]]
name = "prefix"
hosts = ["example.*"]
strip_path = false
"#;
    let (origin, gw) = gateway_with_routes("", routes).await;
    let key = ("apikey", "alice-key");
    assert_eq!(
        get(gw.addr, "/a", &[key, ("host", "api.example.com")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(gw.addr, "/b", &[key, ("host", "example.org:8080")])
            .await
            .status,
        200
    );
    assert_eq!(origin.hits(), 2);
    assert_eq!(
        get(gw.addr, "/c", &[key, ("host", "api.example.company")])
            .await
            .status,
        404
    );
    assert_eq!(
        get(gw.addr, "/c", &[key, ("host", "www.example.net")])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn host_with_port_matches_the_port_the_client_connected_to() {
    let origin = Echo::start().await;
    // The gateway's port is part of the route, so pick it before starting.
    let port = closed_port().await.port();
    let routes =
        format!("[[services.routes]]\nname = \"p\"\nhosts = [\"api.example.com:{port}\"]\n");
    let toml = config(&origin, "", &routes).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let gw = start_gateway(&toml).await;
    let key = ("apikey", "alice-key");
    assert_eq!(
        get(gw.addr, "/", &[key, ("host", "api.example.com")])
            .await
            .status,
        200
    );
    let other = [key, ("host", "api.example.com:1")];
    assert_eq!(
        get(gw.addr, "/", &other).await.status,
        200,
        "Kong compares the listening port, not the one in Host"
    );
    let routes = "[[services.routes]]\nname = \"p\"\nhosts = [\"api.example.com:1\"]\n";
    let gw = start_gateway(&config(&origin, "", routes)).await;
    assert_eq!(get(gw.addr, "/", &other).await.status, 404);
}

#[tokio::test]
async fn header_matching_is_case_insensitive_with_regex_values() {
    let routes = r#"
[[services.routes]]
name = "v1"
paths = ["/api"]
headers = { X_Version = ["v1", "~*^beta-\\d+$"] }
"#;
    let (_origin, gw) = gateway_with_routes("", routes).await;
    let key = ("apikey", "alice-key");
    for value in ["v1", "V1", "BETA-7"] {
        let reply = get(gw.addr, "/api", &[key, ("x-version", value)]).await;
        assert_eq!(reply.status, 200, "{value}");
    }
    assert_eq!(
        get(gw.addr, "/api", &[key, ("x_version", "v1")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(gw.addr, "/api", &[key, ("x-version", "v2")])
            .await
            .status,
        404
    );
    assert_eq!(get(gw.addr, "/api", &[key]).await.status, 404);
}

#[tokio::test]
async fn methods_must_match_exactly() {
    let routes = "[[services.routes]]\nname = \"r\"\npaths = [\"/api\"]\nmethods = [\"POST\"]\n";
    let (_origin, gw) = gateway_with_routes("", routes).await;
    let key = ("apikey", "alice-key");
    assert_eq!(
        send_body(gw.addr, "POST", "/api", &[key], "").await.status,
        200
    );
    assert_eq!(get(gw.addr, "/api", &[key]).await.status, 404);
}

#[tokio::test]
async fn route_priority_follows_kong_order() {
    let origin = Echo::start().await;
    // One service per route, its path the route's name: the upstream path tells which won.
    let routes: String = [
        ("long-prefix", "paths = [\"/p/long/prefix\"]"),
        ("short-prefix", "paths = [\"/p\"]"),
        ("regex", "paths = [\"~/p/r\\\\d\"]"),
        ("regex-priority", "paths = [\"~/p/r\\\\d/x\"]\nregex_priority = 10"),
        ("with-header", "paths = [\"/p\"]\nheaders = { x-tier = [\"gold\"] }"),
        ("two-headers", "paths = [\"/p\"]\nheaders = { x-tier = [\"gold\"], x-zone = [\"eu\"] }"),
        ("plain-host", "paths = [\"/p\"]\nhosts = [\"api.example.com\"]"),
        ("three-fields", "paths = [\"/p\"]\nhosts = [\"*.example.org\"]\nmethods = [\"GET\"]"),
    ]
    .iter()
    .map(|(name, route)| {
        format!(
            "[[services]]\nname = \"{name}\"\nurl = \"http://{}/{name}\"\n[[services.routes]]\n{route}\n",
            origin.addr
        )
    })
    .collect();
    let gw = start_gateway(&config(&origin, "", &routes)).await;
    let winner = |path: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let origin = origin.clone();
        let addr = gw.addr;
        async move {
            let headers = [&[("apikey", "alice-key")][..], extra].concat();
            assert_eq!(get(addr, path, &headers).await.status, 200, "{path}");
            let uri = origin.last().uri;
            uri.split('/').nth(1).unwrap_or_default().to_string()
        }
    };
    assert_eq!(winner("/p/x", &[]).await, "short-prefix");
    assert_eq!(
        winner("/p/long/prefix/y", &[]).await,
        "long-prefix",
        "longer prefix first"
    );
    assert_eq!(
        winner("/p/r1/long/prefix", &[]).await,
        "regex",
        "regex before prefixes"
    );
    assert_eq!(
        winner("/p/r1/x/1", &[]).await,
        "regex-priority",
        "higher regex_priority"
    );
    let gold = &[("x-tier", "GOLD")];
    assert_eq!(
        winner("/p/r1/x/1", gold).await,
        "with-header",
        "two fields before one"
    );
    let gold_eu = &[("x-tier", "gold"), ("x-zone", "eu")];
    assert_eq!(
        winner("/p/x", gold_eu).await,
        "two-headers",
        "more headers first"
    );
    let gold_eu_host = &[
        ("x-tier", "gold"),
        ("x-zone", "eu"),
        ("host", "api.example.com"),
    ];
    assert_eq!(
        winner("/p/x", gold_eu_host).await,
        "plain-host",
        "plain hosts before headers"
    );
    let org = &[("x-tier", "gold"), ("host", "www.example.org")];
    assert_eq!(
        winner("/p/x", org).await,
        "three-fields",
        "three fields before two"
    );
}

#[tokio::test]
async fn strip_path_joins_with_the_service_path_like_kong_v0() {
    let origin = Echo::start().await;
    let cases = [
        // (service path, strip_path, request, upstream)
        ("", true, "/api/users?x=1", "/users?x=1"),
        ("", true, "/api", "/"),
        ("", true, "/api/", "/"),
        ("/v1", true, "/api/users", "/v1/users"),
        ("/v1", true, "/api", "/v1"),
        ("/v1", true, "/api/", "/v1/"),
        ("/v1", true, "/apifoo", "/v1/foo"),
        ("/v1/", true, "/api", "/v1"),
        ("/v1/", true, "/api/", "/v1/"),
        ("/v1", false, "/api/users", "/v1/api/users"),
        ("/", false, "/api/users", "/api/users"),
        ("/v1", true, "/api/x?", "/v1/x?"),
    ];
    for (base, strip, request, want) in cases {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[key_auth]\n[[services]]\nname = \"s\"\nurl = \"http://{}{base}\"\n[[services.routes]]\npaths = [\"/api\"]\nstrip_path = {strip}\nauth = false\n",
            origin.addr
        );
        let gw = start_gateway(&toml).await;
        assert_eq!(get(gw.addr, request, &[]).await.status, 200);
        assert_eq!(origin.last().uri, want, "{base:?} strip={strip} {request}");
    }
}

#[tokio::test]
async fn regex_strip_removes_the_whole_matched_part() {
    let routes = "[[services.routes]]\nname = \"r\"\npaths = [\"~/v\\\\d+/orders\"]\n";
    let (origin, gw) = gateway_with_routes("", routes).await;
    get(gw.addr, "/v12/orders/7?a=b", &[("apikey", "alice-key")]).await;
    let seen = origin.last();
    assert_eq!(seen.uri, "/base/7?a=b");
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/v12/orders"));
}

#[tokio::test]
async fn preserve_host_forwards_the_client_host_else_the_service_host_and_port() {
    let routes = r#"
[[services.routes]]
name = "keep"
paths = ["/keep"]
preserve_host = true
[[services.routes]]
name = "service"
paths = ["/service"]
"#;
    let (origin, gw) = gateway_with_routes("", routes).await;
    let headers = [("apikey", "alice-key"), ("host", "client.example:8443")];
    get(gw.addr, "/keep", &headers).await;
    assert_eq!(origin.last().header("host"), Some("client.example:8443"));
    get(gw.addr, "/service", &headers).await;
    assert_eq!(
        origin.last().header("host"),
        Some(origin.addr.to_string().as_str()),
        "service host with its non-default port"
    );
}

// ---------------------------------------------------------------------------------------
// §6 headers to the origin and to the client
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_headers_of_untrusted_clients_are_replaced() {
    let (origin, gw) = gateway("").await;
    let claims = [
        ("apikey", "alice-key"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "forged.example"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-path", "/forged"),
        ("x-forwarded-prefix", "/forged"),
        ("x-real-ip", "6.6.6.6"),
        ("host", "API.Example.com:9000"),
    ];
    get(gw.addr, "/api/v?q=1", &claims).await;
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("10.0.0.1, 127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example.com"));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(gw.addr.port().to_string().as_str())
    );
    assert_eq!(seen.header("x-forwarded-path"), Some("/api/v"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/api"));
}

#[tokio::test]
async fn forwarded_headers_of_trusted_clients_are_kept() {
    let (origin, gw) = gateway("[proxy]\ntrusted_ips = [\"127.0.0.0/8\"]\n").await;
    let claims = [
        ("apikey", "alice-key"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "shop.example"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-path", "/shop/api/v"),
        ("x-forwarded-prefix", "/shop"),
        ("x-real-ip", "203.0.113.7"),
    ];
    get(gw.addr, "/api/v", &claims).await;
    let seen = origin.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1"),
        "always appended"
    );
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example"));
    assert_eq!(seen.header("x-forwarded-port"), Some("443"));
    assert_eq!(seen.header("x-forwarded-path"), Some("/shop/api/v"));
    assert_eq!(seen.header_all("x-forwarded-prefix"), vec!["/shop"]);
    // Without claims, a trusted client gets the computed values.
    get(gw.addr, "/api/v", &[("apikey", "alice-key")]).await;
    let seen = origin.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/api"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn via_and_request_id_are_sent_upstream() {
    let (origin, gw) = gateway("").await;
    let reply = get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("x-request-id", "mine")],
    )
    .await;
    let seen = origin.last();
    assert_eq!(seen.header("via"), Some("1.1 keygate"));
    assert_eq!(
        seen.header_all("x-request-id"),
        vec![reply.header("x-request-id").unwrap()]
    );
    get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("via", "1.0 corporate-proxy")],
    )
    .await;
    assert_eq!(
        origin.last().header("via"),
        Some("1.0 corporate-proxy, 1.1 keygate")
    );
}

#[tokio::test]
async fn proxied_responses_carry_via_server_latencies_and_request_id() {
    let (_origin, gw) = gateway("").await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "alice-key")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("via"), Some("1.1 keygate"));
    assert_eq!(
        reply.header("server"),
        Some("keygate"),
        "the origin sent none"
    );
    for name in ["x-keygate-upstream-latency", "x-keygate-proxy-latency"] {
        let value = reply.header(name).unwrap_or_default();
        assert!(value.parse::<u64>().is_ok(), "{name}: {value:?}");
    }
    assert!(is_hex_id(reply.header("x-request-id").unwrap()));
    let steer = [
        ("apikey", "alice-key"),
        ("x-echo-via", "1.1 origin-cache"),
        ("x-echo-server", "origin/1.0"),
        ("x-echo-request-id", "origin-id"),
    ];
    let reply = get(gw.addr, "/api/x", &steer).await;
    assert_eq!(reply.header("via"), Some("1.1 origin-cache, 1.1 keygate"));
    assert_eq!(
        reply.header("server"),
        Some("origin/1.0"),
        "the origin's Server is kept"
    );
    let ids: Vec<_> = reply.headers.get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "the gateway's id replaces the origin's");
}

#[tokio::test]
async fn gateway_responses_carry_server_response_latency_and_request_id() {
    let (_origin, gw) = gateway("").await;
    for reply in [
        get(gw.addr, "/api/x", &[]).await,
        get(gw.addr, "/none", &[]).await,
    ] {
        assert_eq!(reply.header("server"), Some("keygate"));
        let latency = reply
            .header("x-keygate-response-latency")
            .unwrap_or_default();
        assert!(latency.parse::<u64>().is_ok(), "{latency:?}");
        assert!(is_hex_id(reply.header("x-request-id").unwrap()));
        assert_eq!(reply.header("via"), None);
    }
}

#[tokio::test]
async fn compat_headers_kong_uses_kongs_header_names() {
    let (origin, gw) = gateway("[compat]\nheaders = \"kong\"\n").await;
    let reply = get(
        gw.addr,
        "/api/x",
        &[("apikey", "alice-key"), ("x-request-id", "client-id")],
    )
    .await;
    let id = reply.header("x-kong-request-id").unwrap().to_string();
    assert!(is_hex_id(&id));
    assert_eq!(reply.header("via"), Some("1.1 kong/3.9.1"));
    assert_eq!(reply.header("server"), Some("kong/3.9.1"));
    for name in ["x-kong-upstream-latency", "x-kong-proxy-latency"] {
        assert!(
            reply
                .header(name)
                .unwrap_or_default()
                .parse::<u64>()
                .is_ok(),
            "{name}"
        );
    }
    assert_eq!(reply.header("x-keygate-upstream-latency"), None);
    let seen = origin.last();
    assert_eq!(seen.header("x-kong-request-id"), Some(id.as_str()));
    assert_eq!(
        seen.header("x-request-id"),
        Some("client-id"),
        "Kong leaves X-Request-Id alone"
    );
    assert_eq!(seen.header("via"), Some("1.1 kong/3.9.1"));

    let reply = get(gw.addr, "/api/x", &[]).await;
    assert_eq!(reply.header("server"), Some("kong/3.9.1"));
    assert!(
        reply
            .header("x-kong-response-latency")
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    let id = reply.header("x-kong-request-id").unwrap();
    assert_eq!(reply.json()["request_id"], id);
    assert_eq!(reply.header("x-request-id"), None);
}
