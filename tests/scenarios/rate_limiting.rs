//! Kong 3.9's rate-limiting plugin (`local` policy): Kong's worked example header by header,
//! key auth first, hidden headers, a custom refusal, `limit_by`, and scope precedence
//! (`shared/reference/kong-plugins.md` §1).
//!
//! On `wasmtime serve` the counters live in each component instance (the export's memory
//! adapter), so what a first request shows runs there too; what needs a count carried from
//! one request to the next is excluded there.

use super::*;

/// Why counting scenarios stop on `wasmtime serve`.
macro_rules! counts_are_per_instance_there {
    () => {
        excluded_on_wasmtime_serve!(
            "its counters live in each component instance (the export's memory adapter): a count is not carried to the next request's instance"
        )
    };
}

const ALICE: (&str, &str) = ("apikey", "alice-key");
const BOB: (&str, &str) = ("apikey", "bob-key");

/// One global rate-limiting instance with these `[plugins.config]` lines.
fn limit(config: &str) -> String {
    format!("[[plugins]]\nname = \"rate-limiting\"\n[plugins.config]\n{config}\n")
}

/// Wait out the last seconds of a minute, so a scenario's requests share one minute window.
async fn within_one_minute() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let into_minute = now % 60;
    if into_minute >= 55 {
        tokio::time::sleep(std::time::Duration::from_secs(61 - into_minute)).await;
    }
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", reply.headers))
}

/// `RateLimit-Reset` for a minute window: the seconds left in it, 1 to 60.
fn minute_reset(reply: &Reply) -> u64 {
    let reset: u64 = header(reply, "ratelimit-reset").parse().unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    reset
}

const LIMIT_HEADERS: [&str; 8] = [
    "x-ratelimit-limit-minute",
    "x-ratelimit-remaining-minute",
    "x-ratelimit-limit-hour",
    "x-ratelimit-remaining-hour",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
];

#[tokio::test]
async fn kongs_worked_example_minute_and_hour() {
    let (origin, gw) = gateway(&limit("minute = 2\nhour = 10")).await;
    within_one_minute().await;
    let first = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    for (name, value) in [
        ("x-ratelimit-limit-minute", "2"),
        ("x-ratelimit-remaining-minute", "1"),
        ("x-ratelimit-limit-hour", "10"),
        ("x-ratelimit-remaining-hour", "9"),
        ("ratelimit-limit", "2"),
        ("ratelimit-remaining", "1"),
    ] {
        assert_eq!(header(&first, name), value, "{name}");
    }
    minute_reset(&first);
    assert_eq!(first.header("retry-after"), None);
    counts_are_per_instance_there!();

    let second = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(second.status, 200, "{}", second.text());
    for (name, value) in [
        ("x-ratelimit-remaining-minute", "0"),
        ("x-ratelimit-remaining-hour", "8"),
        ("ratelimit-limit", "2"),
        ("ratelimit-remaining", "0"),
    ] {
        assert_eq!(header(&second, name), value, "{name}");
    }

    let third = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(&third, 429, "API rate limit exceeded");
    assert!(is_hex_id(third.json()["request_id"].as_str().unwrap()));
    assert_eq!(
        third.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    for (name, value) in [
        ("x-ratelimit-limit-minute", "2"),
        ("x-ratelimit-remaining-minute", "0"),
        ("x-ratelimit-limit-hour", "10"),
        ("x-ratelimit-remaining-hour", "8"),
        ("ratelimit-limit", "2"),
        ("ratelimit-remaining", "0"),
    ] {
        assert_eq!(header(&third, name), value, "{name}");
    }
    let reset = minute_reset(&third);
    assert_eq!(header(&third, "retry-after"), reset.to_string());
    assert_eq!(
        origin.hits(),
        2,
        "the refused request never reached the origin"
    );

    // A refusal uses no quota (local policy): the hour still has 8 left.
    let fourth = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(fourth.status, 429);
    assert_eq!(header(&fourth, "x-ratelimit-remaining-hour"), "8");

    // Counted per route and outcome, whichever path answered.
    let metrics = gw.keygate().gateway.metrics.render(0);
    let mut decisions: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("keygate_rate_limit_decisions_total"))
        .collect();
    decisions.sort_unstable();
    assert_eq!(
        decisions,
        [
            "keygate_rate_limit_decisions_total{route=\"api\",outcome=\"allowed\"} 2",
            "keygate_rate_limit_decisions_total{route=\"api\",outcome=\"limited\"} 2",
        ],
        "{metrics}"
    );
}

/// Kong takes fractional limits (`2.5`) and prints them with Lua's `tostring`.
#[tokio::test]
async fn a_fractional_limit_as_kong_counts_and_prints_it() {
    let (_origin, gw) = gateway(&limit("minute = 2.5")).await;
    within_one_minute().await;
    let first = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(header(&first, "x-ratelimit-limit-minute"), "2.5");
    assert_eq!(header(&first, "x-ratelimit-remaining-minute"), "1.5");
    assert_eq!(header(&first, "ratelimit-limit"), "2.5");
    counts_are_per_instance_there!();
    let second = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(header(&second, "x-ratelimit-remaining-minute"), "0.5");
    // 0.5 left: a third request passes, and nothing is left to announce.
    let third = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(header(&third, "x-ratelimit-remaining-minute"), "0");
    let fourth = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(&fourth, 429, "API rate limit exceeded");
}

#[tokio::test]
async fn a_request_without_a_key_gets_401_never_429() {
    let (origin, gw) = gateway(&limit("minute = 1\nlimit_by = \"ip\"")).await;
    within_one_minute().await;
    for _ in 0..3 {
        let reply = get(gw.addr, "/api/x", &[]).await;
        assert_refused(&reply, 401, "No API key found in request");
        assert_eq!(reply.header("ratelimit-limit"), None);
    }
    let keyed = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(keyed.status, 200, "refusals by key auth did not count");
    counts_are_per_instance_there!();
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 429);
    let unkeyed = get(gw.addr, "/api/x", &[]).await;
    assert_refused(&unkeyed, 401, "No API key found in request");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn hide_client_headers_hides_every_limit_header() {
    let (_origin, gw) = gateway(&limit("minute = 1\nhour = 10\nhide_client_headers = true")).await;
    within_one_minute().await;
    let first = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(first.status, 200);
    for name in LIMIT_HEADERS {
        assert_eq!(first.header(name), None, "{name}");
    }
    counts_are_per_instance_there!();
    let refused = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(&refused, 429, "API rate limit exceeded");
    for name in LIMIT_HEADERS {
        assert_eq!(refused.header(name), None, "{name}");
    }
}

#[tokio::test]
async fn a_custom_error_code_and_message() {
    let (_origin, gw) = gateway(&limit(
        "second = 1\nminute = 1\nerror_code = 503\nerror_message = \"Slow down, \\\"friend\\\"\"",
    ))
    .await;
    within_one_minute().await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    counts_are_per_instance_there!();
    let refused = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(&refused, 503, "Slow down, \"friend\"");
    assert_eq!(header(&refused, "x-ratelimit-remaining-minute"), "0");
    // The minute (longer) wins the tie at 0 left.
    assert_eq!(
        header(&refused, "retry-after"),
        header(&refused, "ratelimit-reset")
    );
    minute_reset(&refused);
    // Negotiated like every gateway error.
    let text = get(gw.addr, "/api/x", &[ALICE, ("accept", "text/plain")]).await;
    assert_eq!(text.status, 503);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        text.headers
    );
    assert!(text.text().contains("Slow down"), "{}", text.text());
}

#[tokio::test]
async fn limit_by_ip_shares_one_counter_across_consumers() {
    let (_origin, gw) = gateway(&limit("minute = 1\nlimit_by = \"ip\"")).await;
    within_one_minute().await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    counts_are_per_instance_there!();
    assert_eq!(get(gw.addr, "/api/x", &[BOB]).await.status, 429);
    // What an untrusted client says about its address changes nothing.
    let forged = get(
        gw.addr,
        "/api/x",
        &[
            BOB,
            ("x-real-ip", "10.9.9.9"),
            ("x-forwarded-for", "10.9.9.9"),
        ],
    )
    .await;
    assert_eq!(forged.status, 429);
}

#[tokio::test]
async fn a_trusted_proxy_tells_the_client_ip() {
    let sections = format!(
        "[proxy]\ntrusted_ips = [\"127.0.0.1\"]\n{}",
        limit("minute = 1\nlimit_by = \"ip\"")
    );
    let (_origin, gw) = gateway(&sections).await;
    within_one_minute().await;
    let from = |ip| ("x-real-ip", ip);
    assert_eq!(
        get(gw.addr, "/api/x", &[ALICE, from("10.0.0.1")])
            .await
            .status,
        200
    );
    counts_are_per_instance_there!();
    assert_eq!(
        get(gw.addr, "/api/x", &[BOB, from("10.0.0.2")])
            .await
            .status,
        200
    );
    assert_eq!(
        get(gw.addr, "/api/x", &[BOB, from("10.0.0.1")])
            .await
            .status,
        429
    );
    assert_eq!(
        get(gw.addr, "/api/x", &[BOB]).await.status,
        200,
        "the proxy's own"
    );
}

#[tokio::test]
async fn limit_by_consumer_counts_each_consumer() {
    let (_origin, gw) = gateway(&limit("minute = 1")).await;
    within_one_minute().await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    counts_are_per_instance_there!();
    assert_eq!(get(gw.addr, "/api/x", &[BOB]).await.status, 200);
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 429);
    assert_eq!(get(gw.addr, "/api/x", &[BOB]).await.status, 429);
}

#[tokio::test]
async fn a_route_instance_beats_the_global_one() {
    let plugins = format!(
        "{}{}",
        limit("minute = 5"),
        "[[plugins]]\nname = \"rate-limiting\"\nroute = \"api\"\n[plugins.config]\nminute = 1\n"
    );
    let routes =
        format!("{API_ROUTE}[[services.routes]]\nname = \"other\"\npaths = [\"/other\"]\n");
    let (_origin, gw) = gateway_with_routes(&plugins, &routes).await;
    within_one_minute().await;
    let scoped = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(scoped.status, 200);
    assert_eq!(header(&scoped, "x-ratelimit-limit-minute"), "1");
    let global = get(gw.addr, "/other/x", &[ALICE]).await;
    assert_eq!(global.status, 200);
    assert_eq!(header(&global, "x-ratelimit-limit-minute"), "5");
    assert_eq!(header(&global, "x-ratelimit-remaining-minute"), "4");
    counts_are_per_instance_there!();
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 429);
    // The global instance counts apart from the route's (Kong's key holds the plugin's scope).
    let global = get(gw.addr, "/other/x", &[ALICE]).await;
    assert_eq!(header(&global, "x-ratelimit-remaining-minute"), "3");
}

#[tokio::test]
async fn limit_by_header_and_path_fall_back_to_the_ip() {
    let (_origin, gw) = gateway(&limit(
        "minute = 1\nlimit_by = \"header\"\nheader_name = \"X-Tenant\"",
    ))
    .await;
    within_one_minute().await;
    let tenant = |name| ("x-tenant", name);
    assert_eq!(
        get(gw.addr, "/api/x", &[ALICE, tenant("a")]).await.status,
        200
    );
    counts_are_per_instance_there!();
    assert_eq!(
        get(gw.addr, "/api/x", &[BOB, tenant("a")]).await.status,
        429
    );
    assert_eq!(
        get(gw.addr, "/api/x", &[BOB, tenant("b")]).await.status,
        200
    );
    // Without the header: the client IP, a counter of its own.
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    assert_eq!(get(gw.addr, "/api/x", &[BOB]).await.status, 429);

    let (_origin, gw) = gateway(&limit(
        "minute = 1\nlimit_by = \"path\"\npath = \"/api/limited\"",
    ))
    .await;
    within_one_minute().await;
    assert_eq!(get(gw.addr, "/api/limited", &[ALICE]).await.status, 200);
    // The normalized path is compared, as Kong's `kong.request.get_path()`.
    assert_eq!(get(gw.addr, "/api/./limited", &[BOB]).await.status, 429);
    assert_eq!(get(gw.addr, "/api/other", &[ALICE]).await.status, 200);
    assert_eq!(
        get(gw.addr, "/api/more", &[BOB]).await.status,
        429,
        "other paths share the IP's counter"
    );
}

#[tokio::test]
async fn limit_by_service_and_credential() {
    let origin = Origin::start("api").await;
    let two_services = GatewayConfig::new()
        .tables(limit("minute = 1\nlimit_by = \"service\""))
        .consumer("alice", None, &["alice-key"])
        .consumer("bob", None, &["bob-key"])
        .service("api", format_args!("http://{}/base", origin.addr))
        .route("paths = [\"/api\"]")
        .service("other", format_args!("http://{}/base", origin.addr))
        .route("paths = [\"/other\"]")
        .to_string();
    let gw = start_gateway(&two_services).await;
    within_one_minute().await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    counts_are_per_instance_there!();
    assert_eq!(
        get(gw.addr, "/other/x", &[ALICE]).await.status,
        200,
        "each service counts apart"
    );
    assert_eq!(get(gw.addr, "/api/x", &[BOB]).await.status, 429);

    let (_origin, gw) = gateway(&limit("minute = 1\nlimit_by = \"credential\"")).await;
    within_one_minute().await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    assert_eq!(get(gw.addr, "/api/x", &[BOB]).await.status, 200);
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 429);
}
