//! Scenarios: who gets through, who does not, and how often the auth API is asked.

use super::*;
use support::basic_config;

/// Why the key-cache scenarios are not run on `wasmtime serve`.
macro_rules! cache_is_per_instance_there {
    () => {
        excluded_on_wasmtime_serve!(
            "its key cache lives in each instance (the export's memory adapter), without single-flight; tests/export/wasmtime_serve.rs checks that instances remember verdicts"
        )
    };
}

async fn setup() -> (Origin, AuthApi, TestGateway) {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow(
        "good-key",
        json!({"consumer": {"id": "c-1", "username": "ann", "custom_id": "cust-1"}, "credential_id": "cred-1"}),
    );
    let gateway = start_gateway(&basic_config(&origin, &auth)).await;
    (origin, auth, gateway)
}

#[tokio::test]
async fn missing_key_gets_401_and_never_reaches_origin() {
    let (origin, _auth, gw) = setup().await;
    let reply = get(gw.addr, "/api/x", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "No API key found in request");
    assert_eq!(reply.header("www-authenticate"), Some("Key"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let id = reply.json()["request_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(reply.header("x-request-id"), Some(id.as_str()));
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn invalid_key_never_reaches_origin() {
    let (origin, auth, gw) = setup().await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "bad-key")]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "Unauthorized");
    assert_eq!(
        auth.calls(),
        1,
        "an unknown key is checked with the auth API"
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn empty_key_counts_as_missing() {
    let (origin, auth, gw) = setup().await;
    let reply = get(gw.addr, "/api/x?apikey=", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "No API key found in request");
    assert_eq!((auth.calls(), origin.hits()), (0, 0));
}

#[tokio::test]
async fn duplicate_key_is_refused() {
    let (origin, _auth, gw) = setup().await;
    let reply = get(gw.addr, "/api/x?apikey=good-key&apikey=good-key", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["message"], "Duplicate API key found");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn valid_key_in_header_reaches_origin_with_consumer_headers() {
    let (origin, _auth, gw) = setup().await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = origin.last();
    assert_eq!(seen.header("x-consumer-id"), Some("c-1"));
    assert_eq!(seen.header("x-consumer-username"), Some("ann"));
    assert_eq!(seen.header("x-consumer-custom-id"), Some("cust-1"));
    assert_eq!(seen.header("x-credential-identifier"), Some("cred-1"));
}

#[tokio::test]
async fn valid_key_in_query_string_is_accepted() {
    let (origin, _auth, gw) = setup().await;
    let reply = get(gw.addr, "/api/x?apikey=good-key&page=2", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        origin.last().uri,
        "/v1/x?apikey=good-key&page=2",
        "query passed verbatim"
    );
}

#[tokio::test]
async fn header_key_names_match_case_insensitively() {
    let (_origin, _auth, gw) = setup().await;
    assert_eq!(
        get(gw.addr, "/api/x", &[("APIKEY", "good-key")])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn static_consumer_key_needs_no_auth_api() {
    let (origin, auth, gw) = setup().await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "static-key")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(auth.calls(), 0);
    let seen = origin.last();
    assert_eq!(seen.header("x-consumer-username"), Some("static-user"));
    assert_eq!(seen.header("x-consumer-custom-id"), Some("static-custom"));
    // Kong DB-less derives the id from the username (UUIDv5), so origins keep seeing it.
    assert_eq!(seen.header("x-consumer-id").map(str::len), Some(36));
}

#[tokio::test]
async fn client_sent_consumer_headers_are_replaced() {
    let (origin, _auth, gw) = setup().await;
    let forged = [
        ("apikey", "good-key"),
        ("x-consumer-username", "admin"),
        ("x-consumer-id", "forged"),
        ("x-anonymous-consumer", "true"),
    ];
    assert_eq!(get(gw.addr, "/api/x", &forged).await.status, 200);
    let seen = origin.last();
    assert_eq!(seen.header_all("x-consumer-username"), vec!["ann"]);
    assert_eq!(seen.header_all("x-consumer-id"), vec!["c-1"]);
    assert_eq!(seen.header("x-anonymous-consumer"), None);
}

#[tokio::test]
async fn second_request_with_same_key_does_not_call_auth_api() {
    cache_is_per_instance_there!();
    let (origin, auth, gw) = setup().await;
    for _ in 0..5 {
        assert_eq!(
            get(gw.addr, "/api/x", &[("apikey", "good-key")])
                .await
                .status,
            200
        );
    }
    assert_eq!(auth.calls(), 1);
    assert_eq!(origin.hits(), 5);
}

/// Identical requests are each a request of their own, also where the gateway forwards the
/// repeats on its first decision (keygate's fast path keeps decisions the guest offers for
/// reuse): each reaches the origin with its own request id, the one its client gets back.
#[tokio::test]
async fn identical_requests_each_reach_the_origin_with_their_own_request_id() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({"consumer": {"id": "c-1"}}));
    // One request thread: each keeps decisions of its own.
    let config = GatewayConfig::basic(&origin, &auth).server("workers = 1");
    let gw = start_gateway(&config.to_string()).await;
    let mut ids = std::collections::HashSet::new();
    for n in 1..=4 {
        let reply = get(gw.addr, "/api/x", &[("apikey", "good-key")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(origin.hits(), n);
        let seen = origin.last();
        let id = seen.header("x-request-id").expect("a request id upstream");
        assert_eq!(reply.header("x-request-id"), Some(id));
        assert_eq!(seen.header("x-consumer-id"), Some("c-1"));
        assert_eq!(seen.header("apikey"), Some("good-key"));
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), 4, "{ids:?}");
    // The first request's verdict came from the auth API, which is that request's own; the
    // second's from the cache, and the last two were forwarded on it without calling the guest.
    let reused = match crate::HOST {
        Host::FastPath => 2,
        Host::Portable => 0,
        _ => return,
    };
    let metrics = gw.keygate().gateway.metrics.render(0);
    assert!(
        metrics.contains(&format!("keygate_decisions_reused_total {reused}\n")),
        "{metrics}"
    );
}

/// Reuse lasts no longer than the verdict it rests on: once the key's verdict is no longer
/// fresh, the auth API is asked again, even for a request identical to the last, and its new
/// answer holds.
#[tokio::test]
async fn an_expired_verdict_is_asked_again_even_for_a_request_identical_to_the_last() {
    cache_is_per_instance_there!();
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({"consumer": {"id": "c-1"}}));
    let config = basic_config(&origin, &auth).replace("cache_ttl = \"5m\"", "cache_ttl = \"1s\"");
    let gw = start_gateway(&config).await;
    let key = [("apikey", "good-key")];
    assert_eq!(get(gw.addr, "/api/x", &key).await.status, 200);
    auth.deny("good-key");
    // Until the verdict expires the answer is the cached one; then the auth API's new one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = get(gw.addr, "/api/x", &key).await.status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "still forwarded 9 s after the 1 s verdict expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(auth.calls(), 2);
}

#[tokio::test]
async fn invalid_verdict_is_cached_too() {
    cache_is_per_instance_there!();
    let (_origin, auth, gw) = setup().await;
    for _ in 0..5 {
        assert_eq!(
            get(gw.addr, "/api/x", &[("apikey", "bad-key")])
                .await
                .status,
            401
        );
    }
    assert_eq!(
        auth.calls(),
        1,
        "the negative cache answers repeated invalid keys"
    );
}

#[tokio::test]
async fn auth_api_down_without_cached_verdict_gets_503_and_never_reaches_origin() {
    let (origin, auth, gw) = setup().await;
    auth.set_down(true);
    let reply = get(gw.addr, "/api/x", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json()["message"],
        "The authentication service is currently unavailable"
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn auth_api_unreachable_gets_503() {
    let origin = Origin::start("origin").await;
    // An auth API address nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let auth = AuthApi::start().await;
    let config = basic_config(&origin, &auth).replace(&auth.addr.to_string(), &dead.to_string());
    let gw = start_gateway(&config).await;
    let reply = get(gw.addr, "/api/x", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn auth_api_down_serves_cached_key() {
    cache_is_per_instance_there!();
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({}));
    // Verdicts go stale at once but may be served for an hour while the auth API is down.
    let config = basic_config(&origin, &auth).replace(
        "cache_ttl = \"5m\"",
        "cache_ttl = \"0s\"\nstale_if_error = \"1h\"",
    );
    let gw = start_gateway(&config).await;
    assert_eq!(
        get(gw.addr, "/api/x", &[("apikey", "good-key")])
            .await
            .status,
        200
    );
    auth.set_down(true);
    let reply = get(gw.addr, "/api/x", &[("apikey", "good-key")]).await;
    assert_eq!(reply.status, 200, "stale verdict served: {}", reply.text());
    assert_eq!(auth.calls(), 2, "the stale verdict was refreshed first");
    // A key never seen cannot be vouched for.
    assert_eq!(
        get(gw.addr, "/api/x", &[("apikey", "other-key")])
            .await
            .status,
        503
    );
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn concurrent_misses_for_one_key_call_auth_api_once() {
    cache_is_per_instance_there!();
    let (origin, auth, gw) = setup().await;
    auth.set_delay(std::time::Duration::from_millis(200));
    let requests = (0..50).map(|_| {
        let addr = gw.addr;
        tokio::spawn(async move { get(addr, "/api/x", &[("apikey", "good-key")]).await.status })
    });
    for status in futures::future::join_all(requests).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        auth.calls(),
        1,
        "single-flight: one auth call for 50 concurrent misses"
    );
    assert_eq!(origin.hits(), 50);
}

#[tokio::test]
async fn keys_are_never_logged_in_metrics() {
    excluded_on_wasmtime_serve!("keygate's metrics");
    let (_origin, _auth, gw) = setup().await;
    get(gw.addr, "/api/x", &[("apikey", "good-key")]).await;
    let metrics = gw.keygate().gateway.metrics.render(0);
    assert!(!metrics.contains("good-key"));
    assert!(
        metrics.contains("keygate_auth_api_responses_total{code=\"200\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn auth_calls_beyond_the_cap_fail_fast_instead_of_queueing() {
    excluded_on_wasmtime_serve!("auth_api.max_in_flight is enforced by keygate's outgoing HTTP");
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.set_delay(std::time::Duration::from_millis(300));
    let config = basic_config(&origin, &auth)
        .replace("timeout = \"2s\"", "timeout = \"2s\"\nmax_in_flight = 2");
    let gw = start_gateway(&config).await;
    // Ten different unknown keys at once: two reach the auth API, the rest are shed at once.
    let requests = (0..10).map(|i| {
        let (addr, auth) = (gw.addr, auth.clone());
        tokio::spawn(async move {
            let key = format!("random-{i}");
            let status = get(addr, "/api/x", &[("apikey", key.as_str())])
                .await
                .status;
            // How many auth calls had been answered when this reply arrived.
            (status, auth.answered())
        })
    });
    let results: Vec<(u16, usize)> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let checked = results.iter().filter(|(s, _)| *s == 401).count();
    let shed: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(auth.calls(), 2, "{results:?}");
    assert_eq!(checked, 2, "{results:?}");
    assert_eq!(shed.len(), 8, "{results:?}");
    assert!(
        shed.iter().all(|(_, answered)| *answered == 0),
        "shed requests were answered before the auth API answered anyone: {results:?}"
    );
    assert_eq!(origin.hits(), 0);

    // Each request looked its key up once (a miss); a shed call is its own event, and not an
    // auth API answer.
    let metrics = gw.keygate().gateway.metrics.render(0);
    let samples = |family: &str| -> Vec<&str> {
        metrics
            .lines()
            .filter(|line| line.starts_with(family))
            .collect()
    };
    assert_eq!(
        samples("keygate_key_cache_lookups_total"),
        ["keygate_key_cache_lookups_total{result=\"miss\"} 10"],
        "{metrics}"
    );
    assert_eq!(
        samples("keygate_auth_api_calls_shed_total"),
        ["keygate_auth_api_calls_shed_total 8"],
        "{metrics}"
    );
    assert_eq!(
        samples("keygate_auth_api_responses_total"),
        ["keygate_auth_api_responses_total{code=\"401\"} 2"],
        "{metrics}"
    );
}
