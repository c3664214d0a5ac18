//! The scenario suite: what a client or an origin can observe of the gateway, run against
//! every host of the guest. The gateway's own scenarios (`key_auth`, `routing`, `forwarding`)
//! and Kong 3.9 compatibility, one test per behaviour (`kong/`, from
//! `shared/reference/kong.md`; the README's "Kong compatibility" table points there).
//!
//! Every test runs the real host and guest against real servers on 127.0.0.1 (the shared test
//! origin, which records exactly what reached it, body included, and the test auth API). The
//! suite is one module run by several test binaries, one per host of the guest
//! (`fast_path.rs`, `portable.rs`, `wasmtime_serve.rs`), so the appliers of a decision cannot
//! drift apart: each binary names its host in `crate::HOST`. Tests that need what a host
//! cannot give a component (the client's address on `wasmtime serve`), or that look inside
//! keygate (its metrics), say so with `excluded_on_wasmtime_serve!`.

#[path = "../support/js_export.rs"]
#[allow(dead_code)]
mod js_export;
#[path = "../support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};

use hyper_util::rt::TokioIo;
use keygate_policy::fingerprint::{consumer_uuid, credential_uuid, fingerprint};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;

use support::client::{Reply, get};
use support::{AuthApi, GatewayConfig, Origin};
use tokio::net::TcpListener;

mod body_size;
mod forwarding;
mod key_auth;
mod kong;
mod kong_plugins;
mod rate_limiting;
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
    /// The exported component on Node.js through jco (`keygate export --for node`).
    Node,
    /// The exported component on workerd through jco (`keygate export --for workerd`).
    Workerd,
}

/// A gateway under test, on whichever host; stopped when dropped.
struct TestGateway {
    addr: SocketAddr,
    _running: Running,
}

impl TestGateway {
    /// The keygate gateway itself, for scenarios that look inside it (metrics); those are
    /// `excluded_on_wasmtime_serve!`.
    fn keygate(&self) -> &keygate::RunningGateway {
        match &self._running {
            Running::Keygate(gateway) => gateway,
            Running::Wasmtime(..) => {
                panic!("this scenario needs keygate: exclude it on wasmtime serve")
            }
            Running::Js(..) => {
                panic!("this scenario needs keygate: exclude it on Node and workerd")
            }
        }
    }

    /// [`TestGateway::keygate`], to stop it.
    fn into_keygate(self) -> keygate::RunningGateway {
        match self._running {
            Running::Keygate(gateway) => gateway,
            Running::Wasmtime(..) => {
                panic!("this scenario needs keygate: exclude it on wasmtime serve")
            }
            Running::Js(..) => {
                panic!("this scenario needs keygate: exclude it on Node and workerd")
            }
        }
    }
}

#[allow(dead_code)] // held, never read: dropping it stops the gateway
enum Running {
    Keygate(keygate::RunningGateway),
    Wasmtime(support::wasmtime_serve::WasmtimeServe, tempfile::TempDir),
    Js(js_export::JsServe, tempfile::TempDir),
}

/// Start the gateway of `toml` on the host this binary tests, and check it is really there.
async fn start_gateway(toml: &str) -> TestGateway {
    let entry = match crate::HOST {
        Host::FastPath => keygate_policy::GuestEntry::Auto,
        Host::Portable => keygate_policy::GuestEntry::WasiHttp,
        Host::WasmtimeServe => return start_on_wasmtime_serve(toml).await,
        Host::Node | Host::Workerd => match js_host_exclusion() {
            Some(why) => {
                let host = js_host_name().unwrap_or_default();
                eprintln!("excluded on {host}: {why}; run on keygate's wasi:http path instead");
                keygate_policy::GuestEntry::WasiHttp
            }
            None if crate::HOST == Host::Node => {
                return start_on_js(toml, js_export::JsHost::Node).await;
            }
            None => return start_on_js(toml, js_export::JsHost::Workerd).await,
        },
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

/// `keygate export --for node | workerd` of `toml` (the pinned npm packages linked from the
/// tests' one install), served by its `serve.sh`.
async fn start_on_js(toml: &str, host: js_export::JsHost) -> TestGateway {
    let toml = toml.to_string();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("keygate.toml");
        std::fs::write(&config, toml).unwrap();
        let out = dir.path().join("export");
        js_export::export(host, &config, &out);
        let serve = js_export::JsServe::start(host, &out.join("serve.sh"));
        TestGateway {
            addr: serve.addr,
            _running: Running::Js(serve, dir),
        }
    })
    .await
    .unwrap()
}

/// Ends a test that cannot run on `wasmtime serve`, saying why (the README lists them). The
/// exports for Node and workerd share most of these limits (the client's address, keygate's
/// metrics, its connection handling), so it ends them there too, except those in
/// [`JS_HOST_RUNS_ANYWAY`].
macro_rules! excluded_on_wasmtime_serve {
    ($why:literal) => {
        if crate::HOST == crate::suite::Host::WasmtimeServe {
            eprintln!("excluded on wasmtime serve: {}", $why);
            return;
        }
        if let Some(host) = crate::suite::js_host_name()
            && !crate::suite::runs_on_this_js_host()
        {
            eprintln!("excluded on {host} (as on wasmtime serve): {}", $why);
            return;
        }
    };
}

/// "Node.js" or "workerd" when this binary tests one of them.
fn js_host_name() -> Option<&'static str> {
    match crate::HOST {
        Host::Node => Some("Node.js"),
        Host::Workerd => Some("workerd"),
        _ => None,
    }
}

/// Scenarios that end early on `wasmtime serve` (`excluded_on_wasmtime_serve!`) but run whole
/// on these hosts: on both, the key cache and the rate-limit counters outlive a request (one
/// instance for the process on Node; adapters in the isolate's module scope on workerd); on
/// Node requests are served one at a time, so concurrent misses make one auth call; workerd's
/// `fetch` drops the headers `Connection` names and pools origin connections.
const JS_HOST_RUNS_ANYWAY: &[(&str, &[Host])] = &[
    (
        "a_custom_error_code_and_message",
        &[Host::Node, Host::Workerd],
    ),
    (
        "a_fractional_limit_as_kong_counts_and_prints_it",
        &[Host::Node, Host::Workerd],
    ),
    (
        "a_request_without_a_key_gets_401_never_429",
        &[Host::Node, Host::Workerd],
    ),
    (
        "a_route_instance_beats_the_global_one",
        &[Host::Node, Host::Workerd],
    ),
    (
        "auth_api_down_serves_cached_key",
        &[Host::Node, Host::Workerd],
    ),
    (
        "body_larger_than_body_buffer_size_holds_no_key_and_is_forwarded_whole",
        &[Host::Node, Host::Workerd],
    ),
    (
        "hide_client_headers_hides_every_limit_header",
        &[Host::Node, Host::Workerd],
    ),
    (
        "invalid_verdict_is_cached_too",
        &[Host::Node, Host::Workerd],
    ),
    (
        "limit_by_consumer_counts_each_consumer",
        &[Host::Node, Host::Workerd],
    ),
    (
        "limit_by_header_and_path_fall_back_to_the_ip",
        &[Host::Node, Host::Workerd],
    ),
    (
        "limit_by_ip_shares_one_counter_across_consumers",
        &[Host::Node, Host::Workerd],
    ),
    (
        "limit_by_service_and_credential",
        &[Host::Node, Host::Workerd],
    ),
    (
        "second_request_with_same_key_does_not_call_auth_api",
        &[Host::Node, Host::Workerd],
    ),
    (
        "concurrent_misses_for_one_key_call_auth_api_once",
        &[Host::Node],
    ),
    ("headers_named_in_connection_are_dropped", &[Host::Workerd]),
    (
        "sequential_requests_reuse_pooled_origin_connections",
        &[Host::Workerd],
    ),
];

/// The running test's name (libtest names each test's thread after it).
fn current_test() -> Option<String> {
    let thread = std::thread::current();
    Some(thread.name()?.rsplit("::").next()?.to_string())
}

/// Whether the running test is in [`JS_HOST_RUNS_ANYWAY`] for this binary's host.
fn runs_on_this_js_host() -> bool {
    let Some(test) = current_test() else {
        return false;
    };
    JS_HOST_RUNS_ANYWAY
        .iter()
        .any(|(name, hosts)| *name == test && hosts.contains(&crate::HOST))
}

/// Scenarios of other files that cannot pass on Node or workerd, and do not end early there
/// by themselves (they test what these hosts cannot give, through checks written for keygate
/// or wasmtime serve): `start_gateway` runs them on keygate's wasi:http path instead, saying
/// so. (test name, hosts, why)
const JS_HOST_EXCLUSIONS: &[(&str, &[Host], &str)] = &[
    (
        "a_body_passing_max_body_size_after_the_origin_answered_ends_the_connection",
        &[Host::Node, Host::Workerd],
        "as the next one: the shim neither stops at the limit nor aborts the origin's request",
    ),
    (
        "a_chunked_body_growing_past_max_body_size_is_413_and_the_origins_request_aborted",
        &[Host::Node, Host::Workerd],
        "the client gets its 413, but jco's preview2-shim 0.26.1 splices more than asked (the \
         origin gets bytes past the limit) and dropping an outgoing body unfinished does not \
         abort its fetch (the origin's request neither ends nor fails)",
    ),
    (
        "a_declared_length_over_max_body_size_is_answered_unread_and_the_connection_closed",
        &[Host::Workerd],
        "workerd gives no answer before the declared body has arrived (a head alone waits); \
         with the body sent the 413 is the same (a_declared_length_over_max_body_size_is_413_\
         and_never_forwarded runs there)",
    ),
    (
        "cors_headers_go_on_forwarded_answers_and_on_the_gateways_own",
        &[Host::Node, Host::Workerd],
        "it checks a response header sent twice (the origin's `Vary` and keygate's), and the \
         JavaScript hosts' response bridges keep one line of a repeated header",
    ),
    (
        "key_auth_keygate_headers_are_stripped_from_responses",
        &[Host::Node, Host::Workerd],
        "its last part reads keygate's metrics",
    ),
    (
        "methods_must_match_exactly",
        &[Host::Node],
        "a POST without Content-Length or Transfer-Encoding: preview2-shim 0.26.1's Node server \
         never ends that (empty) request body, so the origin never gets the end of it (504)",
    ),
    (
        "duplicate_key_in_header_is_401_duplicate_api_key_found",
        &[Host::Workerd],
        "workerd hands the Worker a Fetch Request, whose Headers join a repeated header into \
         one comma-separated value",
    ),
    (
        "proxied_responses_carry_via_server_latencies_and_request_id",
        &[Host::Workerd],
        "it steers the origin with a repeated request header, which workerd's Fetch Headers \
         join into one",
    ),
    (
        "strip_path_joins_with_the_service_path_like_kong_v0",
        &[Host::Workerd],
        "the Fetch Request's URL drops an empty query's `?` (`/api/x?` arrives as `/api/x`)",
    ),
];

/// Why the running test is in [`JS_HOST_EXCLUSIONS`] for this binary's host.
fn js_host_exclusion() -> Option<&'static str> {
    let test = current_test()?;
    JS_HOST_EXCLUSIONS
        .iter()
        .find(|(name, hosts, _)| *name == test && hosts.contains(&crate::HOST))
        .map(|(_, _, why)| *why)
}
use excluded_on_wasmtime_serve;

// ---------------------------------------------------------------------------------------
// Test servers and helpers
// ---------------------------------------------------------------------------------------

/// A gateway in front of `origin` (service `http://origin/base`) with three static consumers
/// (alice with a custom_id, bob without, and the key-less "anonymous-user"), `tables` (whole
/// TOML tables such as `[key_auth]`) and `routes` (`[[services.routes]]` tables).
fn config(origin: &Origin, tables: &str, routes: &str) -> String {
    GatewayConfig::new()
        .tables(tables)
        .consumer("alice", Some("cust-alice"), &["alice-key"])
        .consumer("bob", None, &["bob-key"])
        .consumer("anonymous-user", Some("anon"), &[])
        .service("api", format_args!("http://{}/base", origin.addr))
        .service_tables(routes)
        .to_string()
}

const API_ROUTE: &str = "[[services.routes]]\nname = \"api\"\npaths = [\"/api\"]\n";

/// The test origin and a gateway with `sections` and the `/api` route.
async fn gateway(sections: &str) -> (Origin, TestGateway) {
    let origin = Origin::start("api").await;
    let gw = start_gateway(&config(&origin, sections, API_ROUTE)).await;
    (origin, gw)
}

/// The test origin and a gateway with `sections` and `routes`.
async fn gateway_with_routes(sections: &str, routes: &str) -> (Origin, TestGateway) {
    let origin = Origin::start("api").await;
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
