//! Scenarios: which origin a request reaches, at which path, with which headers.

use super::*;
use keygate_policy::internal_headers;

/// Two origins: `/orders` → orders (strip_path), `/users` → users (no strip), a public
/// `/status` route without auth, and a GET-only regex route.
async fn two_origins() -> (Origin, Origin, TestGateway) {
    let orders = Origin::start("orders").await;
    let users = Origin::start("users").await;
    let auth = AuthApi::start().await;
    let config = GatewayConfig::new()
        .auth_api(&auth)
        .consumer("tester", None, &["k"])
        .service("orders", format_args!("http://{}/v1", orders.addr))
        .route("name = \"orders\"\npaths = [\"/orders\"]\nmethods = [\"GET\", \"POST\"]")
        .route(
            "name = \"order-by-id\"\npaths = ['~/orders/\\d+$']\nmethods = [\"GET\"]\nstrip_path = false",
        )
        .service("users", format_args!("http://{}", users.addr))
        .route("name = \"users\"\npaths = [\"/users\"]\nstrip_path = false")
        .route("name = \"status\"\npaths = [\"/status\"]\nauth = false");
    let gateway = start_gateway(&config.to_string()).await;
    (orders, users, gateway)
}

const KEY: &[(&str, &str)] = &[("apikey", "k")];

#[tokio::test]
async fn route_picks_the_right_origin() {
    let (orders, users, gw) = two_origins().await;
    let reply = get(gw.addr, "/orders/list", KEY).await;
    assert_eq!(reply.header("x-origin"), Some("orders"));
    let reply = get(gw.addr, "/users/7", KEY).await;
    assert_eq!(reply.header("x-origin"), Some("users"));
    assert_eq!((orders.hits(), users.hits()), (1, 1));
}

#[tokio::test]
async fn strip_path_joins_the_service_path() {
    let (orders, users, gw) = two_origins().await;
    get(gw.addr, "/orders/list?x=1&y=%20", KEY).await;
    assert_eq!(orders.last().uri, "/v1/list?x=1&y=%20");
    get(gw.addr, "/orders", KEY).await;
    assert_eq!(orders.last().uri, "/v1");
    get(gw.addr, "/users/7", KEY).await;
    assert_eq!(
        users.last().uri,
        "/users/7",
        "strip_path = false keeps the path"
    );
}

#[tokio::test]
async fn regex_route_outranks_prefix_route() {
    let (orders, _users, gw) = two_origins().await;
    get(gw.addr, "/orders/42", KEY).await;
    assert_eq!(
        orders.last().uri,
        "/v1/orders/42",
        "the regex route (strip_path=false) won"
    );
    get(gw.addr, "/orders/42/items", KEY).await;
    assert_eq!(
        orders.last().uri,
        "/v1/42/items",
        "regex is anchored at the end here: prefix route"
    );
}

#[tokio::test]
async fn unmatched_path_gets_404_and_reaches_no_origin() {
    let (orders, users, gw) = two_origins().await;
    let reply = get(gw.addr, "/elsewhere", KEY).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json()["message"],
        "no Route matched with those values"
    );
    assert_eq!(orders.hits() + users.hits(), 0);
}

#[tokio::test]
async fn method_outside_the_route_gets_404() {
    let (orders, _users, gw) = two_origins().await;
    let mut builder = support::request("DELETE", gw.addr, "/orders/1");
    builder = builder.header("apikey", "k");
    let reply = support::send(gw.addr, builder.body(Default::default()).unwrap()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(orders.hits(), 0);
}

#[tokio::test]
async fn path_is_normalized_before_matching() {
    let (orders, _users, gw) = two_origins().await;
    let reply = get(gw.addr, "/x/../%6Frders/./list", KEY).await;
    assert_eq!(reply.status, 200);
    assert_eq!(orders.last().uri, "/v1/list");
}

#[tokio::test]
async fn route_without_auth_passes_without_key() {
    let (_orders, users, gw) = two_origins().await;
    let reply = get(gw.addr, "/status", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(users.last().header("x-consumer-id"), None);
}

#[tokio::test]
async fn forwarded_headers_describe_the_client() {
    excluded_on_wasmtime_serve!(
        "wasmtime serve gives a component neither the client's address nor the port it connected to"
    );
    let (orders, _users, gw) = two_origins().await;
    let headers = [
        ("apikey", "k"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "forged.example"),
        ("x-real-ip", "6.6.6.6"),
    ];
    get(gw.addr, "/orders/list?q=1", &headers).await;
    let seen = orders.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("10.0.0.1, 127.0.0.1"),
        "appended"
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("127.0.0.1"),
        "client value overridden"
    );
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(gw.addr.port().to_string().as_str())
    );
    assert_eq!(seen.header("x-forwarded-path"), Some("/orders/list"));
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/orders"));
    assert_eq!(
        seen.header("host"),
        Some(orders.addr.to_string().as_str()),
        "service host, not the client's"
    );
    assert_eq!(
        seen.header("apikey"),
        Some("k"),
        "hide_credentials is off by default"
    );
    assert_eq!(
        seen.header("keygate-client-addr"),
        None,
        "host-internal header never leaves"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped() {
    let (orders, _users, gw) = two_origins().await;
    let headers = [
        ("apikey", "k"),
        ("te", "trailers"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("x-kept", "yes"),
    ];
    get(gw.addr, "/orders/list", &headers).await;
    let seen = orders.last();
    assert_eq!(seen.header("te"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn headers_named_in_connection_are_dropped() {
    excluded_on_wasmtime_serve!(
        "wasmtime serve strips `Connection` before the component sees the request (a forbidden header in wasmtime-wasi-http), so the headers it names cannot be known there"
    );
    let (orders, _users, gw) = two_origins().await;
    let headers = [
        ("apikey", "k"),
        ("connection", "keep-alive, x-private"),
        ("x-private", "secret"),
        ("x-kept", "yes"),
    ];
    get(gw.addr, "/orders/list", &headers).await;
    let seen = orders.last();
    assert_eq!(seen.header("x-private"), None, "named in Connection");
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

/// Asks the test origin to answer with every one of keygate's internal headers, forged.
const FORGED_INTERNAL_HEADERS: &[(&str, &str)] = &[
    (
        "x-test-respond-with",
        r#"keygate-labels={"route":"forged-route","rate_limit":"limited"}"#,
    ),
    ("x-test-respond-with", "keygate-call=forged-call"),
    ("x-test-respond-with", "keygate-key=forged-key"),
    ("x-test-respond-with", "keygate-client-addr=6.6.6.6"),
    ("x-test-respond-with", "keygate-local-port=6"),
];

/// An origin that sends keygate's internal headers: the client gets none of them, and the
/// request is counted under the route that really answered it.
#[tokio::test]
async fn key_auth_keygate_headers_are_stripped_from_responses() {
    let (orders, _users, gw) = two_origins().await;
    let direct = get(orders.addr, "/v1/list", FORGED_INTERNAL_HEADERS).await;
    for name in internal_headers::ALL {
        assert!(
            direct.header(name).is_some(),
            "the origin sends {name}: {:?}",
            direct.headers
        );
    }

    let headers: Vec<(&str, &str)> = KEY.iter().chain(FORGED_INTERNAL_HEADERS).copied().collect();
    let reply = get(gw.addr, "/orders/list", &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        orders.last().header_all("x-test-respond-with").len(),
        FORGED_INTERNAL_HEADERS.len()
    );
    for name in internal_headers::ALL {
        assert_eq!(
            reply.header(name),
            None,
            "{name} reached the client: {:?}",
            reply.headers
        );
    }
    if crate::HOST == crate::suite::Host::WasmtimeServe {
        return; // no metrics to look into
    }
    let metrics = gw.keygate().gateway.metrics.render(0);
    assert!(
        metrics.contains("keygate_http_requests_total{route=\"orders\",code=\"200\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("forged"), "{metrics}");
}

/// Every answer is counted under the route that gave it: its name (not its service's), also
/// for refusals, and `(none)` when no route matched.
#[tokio::test]
async fn requests_are_counted_under_the_route_that_answered() {
    excluded_on_wasmtime_serve!("keygate's metrics");
    const NO_KEY: &[(&str, &str)] = &[];
    let (_orders, _users, gw) = two_origins().await;
    // (path, headers, the route and status it is counted under)
    let requests = [
        ("/orders/list", KEY, "orders", 200),
        ("/orders/42", KEY, "order-by-id", 200),
        ("/users/7", KEY, "users", 200),
        ("/status", NO_KEY, "status", 200),
        ("/orders/list", NO_KEY, "orders", 401),
        ("/elsewhere", KEY, "(none)", 404),
    ];
    for (path, headers, _, code) in requests {
        assert_eq!(get(gw.addr, path, headers).await.status, code, "{path}");
    }
    let mut expected: Vec<String> = requests
        .iter()
        .map(|(_, _, route, code)| {
            format!("keygate_http_requests_total{{route=\"{route}\",code=\"{code}\"}} 1")
        })
        .collect();
    expected.sort();
    let metrics = gw.keygate().gateway.metrics.render(0);
    let mut counted: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("keygate_http_requests_total{"))
        .collect();
    counted.sort_unstable();
    assert_eq!(counted, expected);
}

#[tokio::test]
async fn hosts_and_hidden_credentials() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let config = GatewayConfig::new()
        .tables("[key_auth]\nhide_credentials = true")
        .auth_api(&auth)
        .consumer("tester", None, &["k"])
        .service("tenant", format_args!("http://{}", origin.addr))
        .route("name = \"wildcard\"\nhosts = [\"*.example.com\"]")
        .to_string();
    let gw = start_gateway(&config).await;
    let reply = get(gw.addr, "/a?x=1&apikey=k", &[("host", "acme.example.com")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        origin.last().uri,
        "/a?x=1",
        "the key's query argument is hidden"
    );
    let reply = get(
        gw.addr,
        "/a",
        &[("host", "acme.example.com"), ("apikey", "k")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        origin.last().header("apikey"),
        None,
        "the key header is hidden"
    );
    let reply = get(gw.addr, "/a", &[("host", "example.org"), ("apikey", "k")]).await;
    assert_eq!(reply.status, 404, "host outside the wildcard");
}
