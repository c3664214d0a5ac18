//! Kong §2 routing.

use super::super::*;

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
    excluded_on_wasmtime_serve!(
        "needs the port the client connected to, which wasmtime serve does not give a component"
    );
    let origin = Origin::start("api").await;
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
    let origin = Origin::start("api").await;
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
    let origin = Origin::start("api").await;
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
        let toml = GatewayConfig::new()
            .service("s", format_args!("http://{}{base}", origin.addr))
            .route(format_args!(
                "paths = [\"/api\"]\nstrip_path = {strip}\nauth = false"
            ))
            .to_string();
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
    excluded_on_wasmtime_serve!(
        "wasmtime serve sets Host from the authority and does not let a component set it"
    );
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
