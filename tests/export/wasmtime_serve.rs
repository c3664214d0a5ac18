//! The wasmtime flavour on `wasmtime serve` 48.0.8, started by the exported `serve.sh`.

use crate::export;
use crate::support::client::{get, request, send};
use crate::support::wasmtime_serve::WasmtimeServe;
use crate::support::{AuthApi, Origin, basic_config};
use crate::two_origin_config;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;

/// The scenario suite of tests/key_auth.rs, routing.rs and forwarding.rs, against the exported
/// component on `wasmtime serve` 48 started by the exported `serve.sh`.
#[tokio::test]
async fn wasmtime_serve_runs_the_gateway_scenarios() {
    let origin = Origin::start("api").await;
    let other = Origin::start("other").await;
    let auth = AuthApi::start().await;
    auth.allow(
        "good-key",
        json!({"consumer": {"id": "c-1", "username": "ann", "custom_id": "cust-1"}, "credential_id": "cred-1"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = export(
        "wasmtime",
        &two_origin_config(&origin, &other, &auth),
        dir.path(),
    );
    let serve = WasmtimeServe::start(&out.join("serve.sh"));
    let addr = serve.addr;
    let log = || serve.log().join("\n");

    // Missing key: Kong's 401, never forwarded, auth API not asked.
    let reply = get(addr, "/api/x", &[]).await;
    assert_eq!(reply.status, 401, "{}\n{}", reply.text(), log());
    assert_eq!(reply.json()["message"], "No API key found in request");
    assert_eq!(reply.header("www-authenticate"), Some("Key"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let id = reply.json()["request_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(reply.header("x-request-id"), Some(id.as_str()));
    assert_eq!((origin.hits(), auth.calls()), (0, 0));

    // Bad key: the auth API says no, the client gets 401, the origin sees nothing.
    let reply = get(addr, "/api/x", &[("apikey", "bad-key")]).await;
    assert_eq!(reply.status, 401, "{}\n{}", reply.text(), log());
    assert_eq!(reply.json()["message"], "Unauthorized");
    assert_eq!(
        auth.calls(),
        1,
        "the auth API is consulted for an unknown key"
    );
    assert_eq!(origin.hits(), 0);

    // Good key: the auth API is consulted and the origin answers, with the consumer headers.
    let reply = get(addr, "/api/x?page=2", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), log());
    assert_eq!(reply.header("x-origin"), Some("api"));
    assert_eq!(reply.json()["origin"], "api");
    assert_eq!(auth.calls(), 2);
    let seen = origin.last();
    assert_eq!(seen.uri, "/v1/x?page=2");
    assert_eq!(seen.header("x-consumer-id"), Some("c-1"));
    assert_eq!(seen.header("x-consumer-username"), Some("ann"));
    assert_eq!(seen.header("x-consumer-custom-id"), Some("cust-1"));
    assert_eq!(seen.header("x-credential-identifier"), Some("cred-1"));

    // A key in the query string works the same and is passed on verbatim.
    let reply = get(addr, "/api/q?apikey=good-key", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.last().uri, "/v1/q?apikey=good-key");

    // A static consumer's key needs no auth API call.
    let calls = auth.calls();
    let reply = get(addr, "/api/x", &[("apikey", "static-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(auth.calls(), calls);
    assert_eq!(
        origin.last().header("x-consumer-username"),
        Some("static-user")
    );

    // The configuration survives the trip through serve.sh's quoting.
    let reply = get(addr, "/api/x", &[("apikey", "quote-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        origin.last().header("x-consumer-username"),
        Some(r#"o'brien "$HOME" `id`"#)
    );

    // Routing: two origins by path prefix, 404 for no route.
    let reply = get(addr, "/other/y", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-origin"), Some("other"));
    assert_eq!(other.last().uri, "/v2/y");
    let reply = get(addr, "/api/z", &[("apikey", "good-key")]).await;
    assert_eq!(reply.header("x-origin"), Some("api"));
    assert_eq!(origin.last().uri, "/v1/z");
    let reply = get(addr, "/nowhere", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json()["message"],
        "no Route matched with those values"
    );
    assert_eq!(other.hits(), 1);

    // POST: the body reaches the origin whole (it answers with its length and byte sum).
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sum = body.iter().map(|&b| u64::from(b)).sum::<u64>();
    let post = request("POST", addr, "/api/upload")
        .header("apikey", "good-key")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = send(addr, post).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), log());
    assert_eq!(reply.json(), json!({"bytes": body.len(), "sum": sum}));
    let seen = origin.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/v1/upload")
    );
    assert_eq!(seen.body_bytes, body.len() as u64);

    // Nothing unverified ever reached an origin.
    assert!(
        origin
            .seen()
            .iter()
            .chain(other.seen().iter())
            .all(|seen| seen.header("x-consumer-username").is_some()),
        "every forwarded request carries a consumer"
    );
}

/// `serve.sh` lets one instance serve requests in a row, so the in-instance key cache saves
/// auth calls for back-to-back requests; correctness does not depend on it.
#[tokio::test]
async fn wasmtime_serve_instances_remember_verdicts() {
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({"consumer": {"username": "ann"}}));
    let dir = tempfile::tempdir().unwrap();
    let out = export("wasmtime", &basic_config(&origin, &auth), dir.path());
    let serve = WasmtimeServe::start(&out.join("serve.sh"));
    const REQUESTS: usize = 10;
    for _ in 0..REQUESTS {
        let reply = get(serve.addr, "/api/x", &[("apikey", "good-key")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(origin.hits(), REQUESTS);
    // Sequential requests land on the idle instance (unless it idled out: then a new one asks
    // again), so most are answered from its cache.
    assert!(
        auth.calls() < REQUESTS / 2,
        "{} auth calls for {REQUESTS} sequential requests",
        auth.calls()
    );
}
