//! Scenarios: Kong's `redis` rate-limiting policy on a real `redis-server` — one limit shared by
//! a fleet of gateway processes, refused requests counted, Kong's keys, and a Redis outage
//! that stays its own (`fault_tolerant`, the breaker).

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::client::{Reply, get};
use support::process::Served;
use support::redis::RedisServer;
use support::{GatewayConfig, Origin, start_gateway};

const ALICE: (&str, &str) = ("apikey", "alice-key");

/// A gateway config: consumer `alice` (key `alice-key`), service `api` on `origin` with route
/// `api-route` on `/`, and one global `rate-limiting` instance with `policy = "redis"`, these
/// `[plugins.config]` lines and `redis` settings.
fn config(origin: &Origin, limits: &str, redis: &str) -> String {
    GatewayConfig::new()
        .tables(format_args!(
            "[[plugins]]\nname = \"rate-limiting\"\n[plugins.config]\n{limits}\npolicy = \"redis\"\n\
             redis = {{ {redis} }}\n"
        ))
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://{}", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/\"]")
        .to_string()
}

fn redis_at(redis: &RedisServer) -> String {
    format!("url = \"{}\", timeout = 500", redis.url())
}

/// Wait out the last seconds of a minute, so a scenario's requests share one minute window.
async fn within_one_minute() {
    let into_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute >= 50 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|reply| reply.status).collect()
}

#[tokio::test]
async fn two_gateway_processes_on_one_redis_share_one_limit() {
    let redis = RedisServer::start();
    let origin = Origin::start("origin").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        config(&origin, "minute = 5", &redis_at(&redis)),
    )
    .unwrap();
    let first = Served::start(file.path());
    let second = Served::start(file.path());
    within_one_minute().await;
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(get(first.addr, "/x", &[ALICE]).await);
        replies.push(get(second.addr, "/x", &[ALICE]).await);
    }
    let allowed = replies.iter().filter(|reply| reply.status == 200).count();
    assert_eq!(
        allowed,
        5,
        "5 allowed in total, not 5 per node: {:?}",
        statuses(&replies)
    );
    assert_eq!(origin.hits(), 5);
    let remaining: Vec<&str> = replies[..5]
        .iter()
        .map(|reply| reply.header("x-ratelimit-remaining-minute").unwrap())
        .collect();
    assert_eq!(
        remaining,
        ["4", "3", "2", "1", "0"],
        "one count, whichever node answers"
    );
    assert!(replies[5..].iter().all(|reply| reply.status == 429));
}

#[tokio::test]
async fn refused_requests_are_counted_in_redis_as_kong_does() {
    let redis = RedisServer::start();
    let origin = Origin::start("origin").await;
    let gw = start_gateway(&config(&origin, "minute = 2\nhour = 10", &redis_at(&redis))).await;
    within_one_minute().await;
    let replies = [
        get(gw.addr, "/x", &[ALICE]).await,
        get(gw.addr, "/x", &[ALICE]).await,
        get(gw.addr, "/x", &[ALICE]).await,
    ];
    assert_eq!(statuses(&replies), [200, 200, 429]);
    // Kong's key: ratelimit:<route>:<service>:<identifier>:<window start ms>:<period>, with
    // the plugin's scope (global: both empty); the refused third request used hour quota too.
    let hour_keys = redis.keys("ratelimit:*:hour");
    assert_eq!(hour_keys.len(), 1, "{hour_keys:?}");
    let parts: Vec<&str> = hour_keys[0].split(':').collect();
    assert_eq!(parts.len(), 6, "{parts:?}");
    assert_eq!(
        (parts[0], parts[1], parts[2], parts[5]),
        ("ratelimit", "", "", "hour")
    );
    let start: u64 = parts[4].parse().unwrap();
    assert_eq!(start % 3_600_000, 0, "the window starts on the hour, in ms");
    assert_eq!(redis.get(&hour_keys[0]).as_deref(), Some("3"));
    let ttl: u64 = redis.command(&["TTL", &hour_keys[0]]).unwrap()[1..]
        .parse()
        .unwrap();
    assert!(
        (1..=3600).contains(&ttl),
        "expires when its window ends: {ttl}"
    );
    let minute_key = redis.keys("ratelimit:*:minute");
    assert_eq!(redis.get(&minute_key[0]).as_deref(), Some("3"));
}

#[tokio::test]
async fn redis_down_with_fault_tolerance_passes_unlimited_and_counting_resumes() {
    let mut redis = RedisServer::start();
    let origin = Origin::start("origin").await;
    let gw = start_gateway(&config(&origin, "minute = 100", &redis_at(&redis))).await;
    within_one_minute().await;
    let counted = get(gw.addr, "/x", &[ALICE]).await;
    assert_eq!(counted.header("x-ratelimit-remaining-minute"), Some("99"));

    redis.kill();
    for _ in 0..3 {
        let reply = get(gw.addr, "/x", &[ALICE]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.header("x-ratelimit-limit-minute"),
            None,
            "no limit headers"
        );
        assert_eq!(reply.header("ratelimit-remaining"), None);
    }
    let metrics = gw.gateway.metrics.render(0);
    assert!(
        metrics.contains("keygate_rate_limit_decisions_total{route=\"api-route\",outcome=\"counters_unavailable\"} 3"),
        "{metrics}"
    );

    // Back, empty (nothing was saved): the next requests are counted again from zero.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed = loop {
        let reply = get(gw.addr, "/x", &[ALICE]).await;
        if reply.header("x-ratelimit-remaining-minute").is_some() {
            break reply;
        }
        assert!(Instant::now() < deadline, "counting never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(resumed.header("x-ratelimit-remaining-minute"), Some("99"));
}

#[tokio::test]
async fn redis_down_without_fault_tolerance_answers_500() {
    let mut redis = RedisServer::start();
    let origin = Origin::start("origin").await;
    let limits = "minute = 100\nfault_tolerant = false";
    let gw = start_gateway(&config(&origin, limits, &redis_at(&redis))).await;
    redis.kill();
    let reply = get(gw.addr, "/x", &[ALICE]).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.text().contains("An unexpected error occurred"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.header("x-ratelimit-limit-minute"), None);
    assert_eq!(origin.hits(), 0);
}

/// A Redis that accepts connections and never answers: after a few calls time out, the breaker
/// answers at once (no `timeout` added to each request) and counts what it skipped.
#[tokio::test]
async fn a_blackholed_redis_is_not_waited_for() {
    use keygate::capabilities::breaker::FAILURES_TO_OPEN;
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = blackhole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = blackhole.accept().await {
            held.push(stream);
        }
    });
    let origin = Origin::start("origin").await;
    let redis = format!(
        "host = \"127.0.0.1\", port = {}, timeout = 100",
        addr.port()
    );
    let gw = start_gateway(&config(&origin, "minute = 100", &redis)).await;
    for _ in 0..FAILURES_TO_OPEN + 10 {
        let reply = get(gw.addr, "/x", &[ALICE]).await;
        assert_eq!(reply.status, 200, "fault_tolerant by default");
        assert_eq!(reply.header("x-ratelimit-limit-minute"), None);
    }
    let metrics = gw.gateway.metrics.render(0);
    let server = format!("127.0.0.1:{}/0", addr.port());
    assert!(
        metrics.contains(&format!(
            "keygate_redis_calls_total{{redis=\"{server}\",outcome=\"timeout\"}} {FAILURES_TO_OPEN}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "keygate_redis_calls_total{{redis=\"{server}\",outcome=\"skipped\"}} 10"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("keygate_redis_down{{redis=\"{server}\"}} 1")),
        "{metrics}"
    );
}

/// `ssl = true`: counts go over TLS; the certificate is checked unless `ssl_verify = false`
/// (Kong's default), so a self-signed one is refused when it is checked.
#[tokio::test]
async fn a_redis_over_tls_counts_and_its_certificate_is_checked_when_asked() {
    let redis = RedisServer::start_tls();
    let tls_port = redis.tls_port.unwrap();
    let origin = Origin::start("origin").await;
    let unverified = format!(
        "host = \"127.0.0.1\", port = {tls_port}, ssl = true, ssl_verify = false, timeout = 2000"
    );
    let gw = start_gateway(&config(&origin, "minute = 100", &unverified)).await;
    within_one_minute().await;
    let first = get(gw.addr, "/x", &[ALICE]).await;
    assert_eq!(
        first.header("x-ratelimit-remaining-minute"),
        Some("99"),
        "{:?}",
        first.headers
    );
    let second = get(gw.addr, "/x", &[ALICE]).await;
    assert_eq!(second.header("x-ratelimit-remaining-minute"), Some("98"));
    let minute_key = redis.keys("ratelimit:*:minute");
    assert_eq!(
        redis.get(&minute_key[0]).as_deref(),
        Some("2"),
        "counted in this Redis"
    );

    let verified = format!(
        "host = \"127.0.0.1\", port = {tls_port}, ssl = true, ssl_verify = true, timeout = 2000"
    );
    let checking = start_gateway(&config(&origin, "minute = 100", &verified)).await;
    let refused = get(checking.addr, "/x", &[ALICE]).await;
    assert_eq!(refused.status, 200, "fault_tolerant: passes");
    assert_eq!(
        refused.header("x-ratelimit-remaining-minute"),
        None,
        "not counted"
    );
    assert_eq!(redis.get(&minute_key[0]).as_deref(), Some("2"));
}
