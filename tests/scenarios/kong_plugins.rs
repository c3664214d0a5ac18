//! Kong 3.9's plugins that ride with key-auth, against real origins
//! (`shared/reference/kong-plugins.md` §4): `cors` (the preflight answered before key-auth,
//! its headers on forwarded answers and on the gateway's own), `ip-restriction` (deny first,
//! then allow, on the address after `trusted_ips`) and `request-termination`, in Kong's
//! order: cors → key-auth → ip-restriction → rate-limiting → request-termination.

use super::*;

const ALICE: (&str, &str) = ("apikey", "alice-key");
const BOB: (&str, &str) = ("apikey", "bob-key");
const APP: &str = "https://app.example.com";

fn plugin(name: &str, scope: &str, config: &str) -> String {
    format!("[[plugins]]\nname = \"{name}\"\n{scope}\n[plugins.config]\n{config}\n")
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", reply.headers))
}

fn all<'a>(reply: &'a Reply, name: &str) -> Vec<&'a str> {
    reply
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

async fn options(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    send_body(gw.addr, "OPTIONS", path, headers, "").await
}

// ---------------------------------------------------------------------------------------
// cors
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn cors_preflight_is_answered_without_a_key_and_never_reaches_the_origin() {
    let cors = plugin(
        "cors",
        "service = \"api\"",
        "origins = [\"https://app.example.com\", \"https://.*\\\\.example\\\\.org\"]\n\
         credentials = true\nmax_age = 600\nexposed_headers = [\"x-total\"]",
    );
    let (origin, gw) = gateway(&cors).await;
    let reply = options(
        &gw,
        "/api/items",
        &[
            ("origin", APP),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "apikey,content-type"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.body.is_empty());
    assert_eq!(header(&reply, "content-length"), "0");
    assert_eq!(reply.header("content-type"), None);
    assert_eq!(header(&reply, "access-control-allow-origin"), APP);
    assert_eq!(header(&reply, "access-control-allow-credentials"), "true");
    assert_eq!(
        header(&reply, "access-control-allow-headers"),
        "apikey,content-type"
    );
    assert_eq!(
        header(&reply, "access-control-allow-methods"),
        "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    );
    assert_eq!(header(&reply, "access-control-max-age"), "600");
    assert_eq!(header(&reply, "vary"), "Origin");
    assert_eq!(reply.header("access-control-expose-headers"), None);
    assert!(is_hex_id(header(&reply, "x-request-id")));
    // A regex entry matches the host of the normalized origin (default port dropped).
    let reply = options(
        &gw,
        "/api/items",
        &[
            ("origin", "https://shop.example.org:443"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        "https://shop.example.org"
    );
    assert_eq!(reply.header("access-control-allow-headers"), None);
    // An origin that matches nothing: still answered, without Allow-Origin.
    let reply = options(
        &gw,
        "/api/items",
        &[
            ("origin", "https://evil.example.net"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    assert_eq!(origin.hits(), 0, "no preflight reached the origin");
    // Without Access-Control-Request-Method it is no preflight: key-auth answers.
    let reply = options(&gw, "/api/items", &[("origin", APP)]).await;
    assert_refused(&reply, 401, "No API key found in request");
    assert_eq!(header(&reply, "access-control-allow-origin"), APP);
}

#[tokio::test]
async fn cors_headers_go_on_forwarded_answers_and_on_the_gateways_own() {
    let cors = plugin(
        "cors",
        "",
        "origins = [\"https://app.example.com\", \"http://localhost:3000\"]\n\
         credentials = true\nexposed_headers = [\"x-ratelimit-remaining-minute\", \"x-kong-request-id\"]",
    );
    let limit = plugin("rate-limiting", "", "minute = 1000");
    let (origin, gw) = gateway(&format!("{cors}{limit}")).await;
    let reply = get(
        gw.addr,
        "/api/x",
        &[
            ALICE,
            ("origin", APP),
            // The origin's own CORS answer is replaced; its Vary is kept.
            ("x-test-respond-with", "access-control-allow-origin=*"),
            ("x-test-respond-with", "vary=Accept-Encoding"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.hits(), 1);
    assert_eq!(all(&reply, "access-control-allow-origin"), [APP]);
    assert_eq!(header(&reply, "access-control-allow-credentials"), "true");
    assert_eq!(
        header(&reply, "access-control-expose-headers"),
        "x-ratelimit-remaining-minute,x-kong-request-id"
    );
    assert_eq!(all(&reply, "vary"), ["Accept-Encoding", "Origin"]);
    assert_eq!(header(&reply, "x-ratelimit-limit-minute"), "1000");
    // Another allowed origin, written with its default port: normalized.
    let reply = get(
        gw.addr,
        "/api/x",
        &[ALICE, ("origin", "http://localhost:3000")],
    )
    .await;
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        "http://localhost:3000"
    );
    // Not allowed: no Allow-Origin at all, even if the origin sent one.
    let reply = get(
        gw.addr,
        "/api/x",
        &[
            ALICE,
            ("origin", "https://evil.example.net"),
            ("x-test-respond-with", "access-control-allow-origin=*"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    assert_eq!(header(&reply, "access-control-allow-credentials"), "true");
    // The gateway's own 401 carries them too (cors runs before key-auth).
    let reply = get(gw.addr, "/api/x", &[("origin", APP)]).await;
    assert_refused(&reply, 401, "No API key found in request");
    assert_eq!(header(&reply, "access-control-allow-origin"), APP);
    assert_eq!(header(&reply, "access-control-allow-credentials"), "true");
    assert_eq!(header(&reply, "vary"), "Origin");
}

#[tokio::test]
async fn cors_defaults_and_credentials_with_any_origin() {
    let (_origin, gw) = gateway(&plugin("cors", "", "")).await;
    let reply = get(gw.addr, "/api/x", &[ALICE, ("origin", APP)]).await;
    assert_eq!(header(&reply, "access-control-allow-origin"), "*");
    assert_eq!(reply.header("vary"), None);
    assert_eq!(reply.header("access-control-allow-credentials"), None);
    // `*` with credentials: the request's own Origin, as sent, since browsers refuse `*`.
    let (_origin, gw) = gateway(&plugin("cors", "", "credentials = true")).await;
    let reply = get(
        gw.addr,
        "/api/x",
        &[ALICE, ("origin", "HTTPS://App.Example.com:443")],
    )
    .await;
    assert_eq!(
        header(&reply, "access-control-allow-origin"),
        "HTTPS://App.Example.com:443"
    );
    assert_eq!(header(&reply, "access-control-allow-credentials"), "true");
    assert_eq!(header(&reply, "vary"), "Origin");
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(header(&reply, "access-control-allow-origin"), "*");
    assert_eq!(reply.header("access-control-allow-credentials"), None);
}

#[tokio::test]
async fn cors_preflight_continue_leaves_the_preflight_to_key_auth_and_the_origin() {
    let cors = plugin("cors", "", "preflight_continue = true");
    let (origin, gw) = gateway(&cors).await;
    let preflight = [("origin", APP), ("access-control-request-method", "GET")];
    let reply = options(&gw, "/api/x", &preflight).await;
    assert_refused(&reply, 401, "No API key found in request");
    let reply = options(&gw, "/api/x", &[preflight[0], preflight[1], ALICE]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().method, "OPTIONS");
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

// ---------------------------------------------------------------------------------------
// ip-restriction
// ---------------------------------------------------------------------------------------

/// Why address scenarios stop on `wasmtime serve`.
macro_rules! needs_the_client_address {
    () => {
        excluded_on_wasmtime_serve!("wasmtime serve does not tell a component the client's address")
    };
}

#[tokio::test]
async fn ip_restriction_deny_comes_first_and_answers_in_the_error_template() {
    needs_the_client_address!();
    let rules = plugin(
        "ip-restriction",
        "",
        "allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1\"]",
    );
    let (origin, gw) = gateway(&rules).await;
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(&reply, 403, "IP address not allowed: 127.0.0.1");
    assert!(is_hex_id(reply.json()["request_id"].as_str().unwrap()));
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    // key-auth runs first: no key, 401.
    let reply = get(gw.addr, "/api/x", &[]).await;
    assert_refused(&reply, 401, "No API key found in request");
    // Negotiated like every error of the gateway.
    let reply = get(gw.addr, "/api/x", &[ALICE, ("accept", "text/plain")]).await;
    assert_eq!(reply.status, 403);
    assert!(
        reply
            .text()
            .starts_with("IP address not allowed: 127.0.0.1\n")
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn ip_restriction_allow_lists_with_cidrs_status_and_message() {
    needs_the_client_address!();
    let rules = plugin(
        "ip-restriction",
        "route = \"api\"",
        "allow = [\"10.0.0.0/8\", \"::1\"]\nstatus = 401\nmessage = \"Not from here\"",
    );
    let (origin, gw) = gateway(&rules).await;
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(&reply, 401, "Not from here");
    // A client that is not a trusted proxy cannot claim another address.
    let forged = get(
        gw.addr,
        "/api/x",
        &[
            ALICE,
            ("x-forwarded-for", "10.1.2.3"),
            ("x-real-ip", "10.1.2.3"),
        ],
    )
    .await;
    assert_refused(&forged, 401, "Not from here");
    assert_eq!(origin.hits(), 0);

    // An allowed block lets it through.
    let rules = plugin("ip-restriction", "", "allow = [\"127.0.0.0/8\"]");
    let (origin, gw) = gateway(&rules).await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn ip_restriction_reads_the_address_a_trusted_proxy_gives() {
    needs_the_client_address!();
    let sections = format!(
        "[proxy]\ntrusted_ips = [\"127.0.0.1\"]\n{}",
        plugin(
            "ip-restriction",
            "",
            "allow = [\"10.0.0.0/8\"]\ndeny = [\"10.6.6.0/24\"]"
        )
    );
    let (origin, gw) = gateway(&sections).await;
    let from = |ip| ("x-real-ip", ip);
    assert_eq!(
        get(gw.addr, "/api/x", &[ALICE, from("10.1.2.3")])
            .await
            .status,
        200
    );
    let reply = get(gw.addr, "/api/x", &[ALICE, from("10.6.6.6")]).await;
    assert_refused(&reply, 403, "IP address not allowed: 10.6.6.6");
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(&reply, 403, "IP address not allowed: 127.0.0.1");
    assert_eq!(origin.hits(), 1);
}

/// A host that does not say who the client is: Kong's answer for a unix-socket client.
#[tokio::test]
async fn ip_restriction_without_the_client_address_refuses() {
    if crate::HOST != crate::suite::Host::WasmtimeServe {
        return;
    }
    let rules = plugin("ip-restriction", "", "deny = [\"10.0.0.0/8\"]");
    let (origin, gw) = gateway(&rules).await;
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_refused(
        &reply,
        403,
        "Cannot identify the client IP address, unix domain sockets are not supported.",
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn ip_restriction_scoped_to_a_consumer() {
    needs_the_client_address!();
    let rules = plugin(
        "ip-restriction",
        "consumer = \"bob\"",
        "deny = [\"0.0.0.0/0\", \"::/0\"]",
    );
    let (_origin, gw) = gateway(&rules).await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    assert_eq!(get(gw.addr, "/api/x", &[BOB]).await.status, 403);
}

// ---------------------------------------------------------------------------------------
// request-termination
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn request_termination_with_a_message_after_key_auth() {
    let rules = plugin(
        "request-termination",
        "",
        "status_code = 403\nmessage = \"Access is forbidden.\"",
    );
    let (origin, gw) = gateway(&rules).await;
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(reply.status, 403);
    // `kong.response.exit`: compact JSON, no request_id.
    assert_eq!(reply.text(), r#"{"message":"Access is forbidden."}"#);
    assert_eq!(
        header(&reply, "content-type"),
        "application/json; charset=utf-8"
    );
    assert!(is_hex_id(header(&reply, "x-request-id")));
    // No key: key-auth's 401 comes first.
    let reply = get(gw.addr, "/api/x", &[]).await;
    assert_refused(&reply, 401, "No API key found in request");
    assert_eq!(origin.hits(), 0);

    // Kong's default: 503 "Service unavailable".
    let (_origin, gw) = gateway(&plugin("request-termination", "", "")).await;
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), r#"{"message":"Service unavailable"}"#);
}

#[tokio::test]
async fn request_termination_sends_a_body_raw_with_its_content_type() {
    let rules = plugin(
        "request-termination",
        "route = \"api\"",
        "status_code = 503\nbody = \"<h1>Down for maintenance</h1>\"\ncontent_type = \"text/html\"",
    );
    let (origin, gw) = gateway(&rules).await;
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "<h1>Down for maintenance</h1>");
    assert_eq!(header(&reply, "content-type"), "text/html");
    assert_eq!(origin.hits(), 0);
    // A status with no default message and none configured: an empty body.
    let (_origin, gw) = gateway(&plugin("request-termination", "", "status_code = 410")).await;
    let reply = get(gw.addr, "/api/x", &[ALICE]).await;
    assert_eq!(reply.status, 410);
    assert!(reply.body.is_empty());
    assert_eq!(header(&reply, "content-length"), "0");
    assert_eq!(reply.header("content-type"), None);
}

#[tokio::test]
async fn request_termination_with_a_trigger_ends_only_the_requests_that_carry_it() {
    let rules = plugin(
        "request-termination",
        "",
        "status_code = 418\nmessage = \"stopped\"\ntrigger = \"x-stop\"",
    );
    let (origin, gw) = gateway(&rules).await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    let reply = get(gw.addr, "/api/x", &[ALICE, ("x-stop", "1")]).await;
    assert_eq!(
        (reply.status, reply.text()),
        (418, r#"{"message":"stopped"}"#.to_string())
    );
    let reply = get(gw.addr, "/api/x?a=1&x-stop", &[ALICE]).await;
    assert_eq!(reply.status, 418);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn request_termination_for_one_consumer_with_cors_and_limits_on_its_reply() {
    let sections = format!(
        "{}{}{}",
        plugin("cors", "", "origins = [\"https://app.example.com\"]"),
        plugin("rate-limiting", "", "minute = 1000"),
        plugin(
            "request-termination",
            "consumer = \"bob\"",
            "status_code = 403\nmessage = \"Suspended\""
        ),
    );
    let (origin, gw) = gateway(&sections).await;
    assert_eq!(get(gw.addr, "/api/x", &[ALICE]).await.status, 200);
    let reply = get(gw.addr, "/api/x", &[BOB, ("origin", APP)]).await;
    assert_eq!(
        (reply.status, reply.text()),
        (403, r#"{"message":"Suspended"}"#.to_string())
    );
    assert_eq!(header(&reply, "access-control-allow-origin"), APP);
    assert_eq!(header(&reply, "x-ratelimit-limit-minute"), "1000");
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn request_termination_echo_describes_the_request() {
    let rules = plugin("request-termination", "", "status_code = 200\necho = true");
    let (origin, gw) = gateway(&rules).await;
    let reply = get(gw.addr, "/api/echo?x=1&x=2", &[ALICE, ("x-a", "b")]).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["request"]["method"], "GET");
    assert_eq!(echo["request"]["path"], "/api/echo");
    assert_eq!(echo["request"]["headers"]["x-a"], "b");
    assert_eq!(echo["request"]["query"]["x"], json!(["1", "2"]));
    assert_eq!(echo["matched_route"]["name"], "api");
    assert_eq!(echo["matched_service"]["name"], "api");
    assert_eq!(origin.hits(), 0);
}
