//! Scenarios: `[[upstreams]]`, Kong's Upstream entity — a service whose URL host names an
//! upstream is balanced across its targets (weighted round-robin), a target that refuses
//! connections is skipped and the request goes to another one, on both the fast path and the
//! portable one.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use support::client::get;
use support::{GatewayConfig, Origin, start_gateway};

/// A closed port on 127.0.0.1: connecting is refused.
fn refusing() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// One service `api` on `http://billing.upstream/v1` and the upstream `billing.upstream` with
/// these `(target, weight)`s; `extra` goes into the tables (e.g. `[guest]`).
async fn gateway(targets: &[(String, u32)], extra: &str) -> keygate::RunningGateway {
    let targets: Vec<String> = targets
        .iter()
        .map(|(target, weight)| format!("{{ target = \"{target}\", weight = {weight} }}"))
        .collect();
    let config = GatewayConfig::new()
        .admin()
        .tables(format_args!(
            "{extra}\n[[plugins]]\nname = \"prometheus\"\n[plugins.config]\nupstream_health_metrics = true\n[[upstreams]]\nname = \"billing.upstream\"\ntargets = [{}]\ndown_for = \"1h\"",
            targets.join(", ")
        ))
        .consumer("alice", None, &["alice-key"])
        .service("api", "http://billing.upstream/v1")
        .service_setting("connect_timeout = \"2s\"")
        .route("name = \"billing\"\npaths = [\"/billing\"]");
    start_gateway(&config.to_string()).await
}

const KEY: (&str, &str) = ("apikey", "alice-key");

#[tokio::test]
async fn weights_share_requests_between_targets_and_zero_drains() {
    let (a, b, drained) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("drained").await,
    );
    let gw = gateway(
        &[
            (a.addr.to_string(), 300),
            (b.addr.to_string(), 100),
            (drained.addr.to_string(), 0),
        ],
        "",
    )
    .await;
    for _ in 0..8 {
        let reply = get(gw.addr, "/billing/invoices", &[KEY]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!((a.hits(), b.hits(), drained.hits()), (6, 2, 0));
    let seen = a.last();
    assert_eq!(seen.uri, "/v1/invoices");
    assert_eq!(
        seen.header("host"),
        Some("billing.upstream"),
        "the upstream's name, as Kong sends it"
    );
}

#[tokio::test]
async fn a_refusing_target_is_skipped_and_the_request_goes_to_another() {
    let live = Origin::start("live").await;
    let dead = refusing();
    let gw = gateway(&[(dead.clone(), 100), (live.addr.to_string(), 100)], "").await;
    // A POST with a body: nothing of it was sent to the dead target, so it goes whole to the
    // live one.
    for i in 0..4 {
        let body = format!("invoice {i}");
        let request = support::request("POST", gw.addr, "/billing/invoices")
            .header(KEY.0, KEY.1)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let reply = support::send(gw.addr, request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(live.last().body_text(), body);
    }
    assert_eq!(live.hits(), 4);
    let metrics = gw.gateway.render_metrics();
    let labels = format!("{{upstream=\"billing.upstream\",target=\"{dead}\"}}");
    assert!(
        metrics.contains(&format!(
            "keygate_upstream_target_failures_total{labels} 1\n"
        )),
        "one failure, then skipped for down_for:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!("keygate_upstream_target_down{labels} 1\n")),
        "{metrics}"
    );
    // Kong's target health, as its prometheus plugin's upstream_health_metrics exports it.
    let health = |target: &str, state: &str| {
        format!(
            "kong_upstream_target_health{{upstream=\"billing.upstream\",target=\"{target}\",address=\"{target}\",state=\"{state}\",subsystem=\"http\"}} 1\n"
        )
    };
    assert!(metrics.contains(&health(&dead, "unhealthy")), "{metrics}");
    assert!(
        metrics.contains(&health(&live.addr.to_string(), "healthy")),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_every_target_down_the_answer_is_kongs_503_at_once() {
    let gw = gateway(&[(refusing(), 100), (refusing(), 100)], "").await;
    let first = get(gw.addr, "/billing/x", &[KEY]).await;
    assert_eq!(first.status, 502, "both refused: {}", first.text());
    let next = get(gw.addr, "/billing/x", &[KEY]).await;
    assert_eq!(next.status, 503, "{}", next.text());
    assert!(
        next.text()
            .contains("failure to get a peer from the ring-balancer"),
        "{}",
        next.text()
    );
}

#[tokio::test]
async fn the_portable_path_balances_too() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let dead = refusing();
    let gw = gateway(
        &[
            (a.addr.to_string(), 100),
            (dead, 100),
            (b.addr.to_string(), 100),
        ],
        "[guest]\nentry = \"wasi-http\"",
    )
    .await;
    for _ in 0..6 {
        let reply = get(gw.addr, "/billing/x", &[KEY]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(a.hits() + b.hits(), 6);
    assert!(
        a.hits() >= 2 && b.hits() >= 2,
        "{} / {}",
        a.hits(),
        b.hits()
    );
}
