//! Kong §6 headers to the origin and to the client.

use super::super::*;

#[tokio::test]
async fn forwarded_headers_of_untrusted_clients_are_replaced() {
    excluded_on_wasmtime_serve!(
        "needs the client's address, which wasmtime serve does not give a component"
    );
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
    excluded_on_wasmtime_serve!(
        "needs the client's address, which wasmtime serve does not give a component"
    );
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
        ("x-test-respond-with", "via=1.1 origin-cache"),
        ("x-test-respond-with", "server=origin/1.0"),
        ("x-test-respond-with", "x-request-id=origin-id"),
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
