//! Kong 3.9 compatibility, one test per behaviour a client or an origin can observe
//! (`shared/reference/kong.md`; the README's "Kong compatibility" table points here).
//!
//! Every test runs the real host and guest against real servers on 127.0.0.1: an echo origin
//! (below) that records exactly what reached it, body included, and for the auth API the
//! shared test server. The suite is one module run by several test binaries, one per host of
//! the guest (`fast_path.rs`, `portable.rs`, `wasmtime_serve.rs`), so the appliers of a
//! decision cannot drift apart: each binary names its host in `crate::HOST`. Tests that need
//! what a host cannot give a component (the client's address on `wasmtime serve`) say so with
//! `excluded_on_wasmtime_serve!`.

#[path = "../support/mod.rs"]
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
use support::AuthApi;
use support::client::{Reply, get};
use support::servers::Received;
use tokio::net::TcpListener;

mod errors;
mod headers;
mod key_auth_options;
mod key_lookup;
mod routing;

/// Where the suite runs the gateway: each test binary names one in `crate::HOST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each binary names one
pub enum Host {
    /// keygate, the guest deciding and the host forwarding (`[guest] entry = "auto"`).
    FastPath,
    /// keygate running the guest's `wasi:http` handler (`[guest] entry = "wasi-http"`).
    Portable,
    /// The exported component on `wasmtime serve` 48 (`keygate export --for wasmtime`).
    WasmtimeServe,
}

/// A gateway under test, on whichever host; stopped when dropped.
struct TestGateway {
    addr: SocketAddr,
    _running: Running,
}

#[allow(dead_code)] // held, never read: dropping it stops the gateway
enum Running {
    Keygate(keygate::RunningGateway),
    Wasmtime(support::wasmtime_serve::WasmtimeServe, tempfile::TempDir),
}

/// Start the gateway of `toml` on the host this binary tests, and check it is really there.
async fn start_gateway(toml: &str) -> TestGateway {
    let entry = match crate::HOST {
        Host::FastPath => keygate_policy::GuestEntry::Auto,
        Host::Portable => keygate_policy::GuestEntry::WasiHttp,
        Host::WasmtimeServe => return start_on_wasmtime_serve(toml).await,
    };
    let gw = support::start_gateway_with(toml, |config| config.guest.entry = entry).await;
    assert_eq!(
        gw.gateway.active().fast_path,
        crate::HOST == Host::FastPath,
        "the suite runs on the path its binary names"
    );
    TestGateway {
        addr: gw.addr,
        _running: Running::Keygate(gw),
    }
}

/// `keygate export --for wasmtime` of `toml`, served by its `serve.sh`.
async fn start_on_wasmtime_serve(toml: &str) -> TestGateway {
    let toml = toml.to_string();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keygate.toml");
        std::fs::write(&config, toml).unwrap();
        let out = dir.path().join("export");
        keygate::export::export(keygate::export::Target::Wasmtime, &config, &out)
            .expect("the suite's config exports");
        let serve = support::wasmtime_serve::WasmtimeServe::start(&out.join("serve.sh"));
        TestGateway {
            addr: serve.addr,
            _running: Running::Wasmtime(serve, dir),
        }
    })
    .await
    .unwrap()
}

/// Ends a test that cannot run on `wasmtime serve`, saying why (the README lists them).
macro_rules! excluded_on_wasmtime_serve {
    ($why:literal) => {
        if crate::HOST == crate::suite::Host::WasmtimeServe {
            eprintln!("excluded on wasmtime serve: {}", $why);
            return;
        }
    };
}
use excluded_on_wasmtime_serve;

// ---------------------------------------------------------------------------------------
// Test servers and helpers
// ---------------------------------------------------------------------------------------

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
        self.seen.lock().unwrap().push(Received::new(parts, body));
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
async fn gateway(sections: &str) -> (Echo, TestGateway) {
    let origin = Echo::start().await;
    let gw = start_gateway(&config(&origin, sections, API_ROUTE)).await;
    (origin, gw)
}

/// The echo origin and a gateway with `sections` and `routes`.
async fn gateway_with_routes(sections: &str, routes: &str) -> (Echo, TestGateway) {
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
