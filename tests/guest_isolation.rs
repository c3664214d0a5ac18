//! Scenarios: a guest that traps, spins or hogs memory loses that request only; a policy whose
//! decisions try to leave the configuration gets nothing forwarded.

mod support;

use std::time::{Duration, Instant};
use support::client::get;
use support::{GatewayConfig, start_gateway};

async fn misbehaving_gateway() -> keygate::RunningGateway {
    misbehaving_gateway_with("").await
}

async fn misbehaving_gateway_reusing(reuse: u32) -> keygate::RunningGateway {
    misbehaving_gateway_with(&format!("instance_reuse = {reuse}")).await
}

/// `guest_settings`: more `[guest]` lines.
async fn misbehaving_gateway_with(guest_settings: &str) -> keygate::RunningGateway {
    let config = GatewayConfig::new().tables(format_args!(
        "[guest]\ncomponent = {:?}\nbusy_timeout = \"200ms\"\nmemory_limit_mb = 32\n{guest_settings}",
        env!("KEYGATE_TEST_MISBEHAVING_WASM")
    ));
    start_gateway(&config.to_string()).await
}

#[tokio::test]
async fn guest_trap_returns_500_and_next_request_succeeds() {
    let gw = misbehaving_gateway().await;
    let reply = get(gw.addr, "/trap", &[]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["message"], "An unexpected error occurred");
    let reply = get(gw.addr, "/ok", &[]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
}

#[tokio::test]
async fn guest_failure_answer_follows_accept_like_kongs_error_handler() {
    let gw = misbehaving_gateway().await;
    let reply = get(gw.addr, "/trap", &[("accept", "text/plain")]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    let id = reply.header("x-request-id").unwrap().to_string();
    assert_eq!(
        reply.text(),
        format!("An unexpected error occurred\nrequest_id: {id}\n")
    );
    assert!(reply.header("x-keygate-response-latency").is_some());
}

/// `path` makes the guest spin; the busy timeout must end that request (500, counted) and the
/// next request must be served.
async fn assert_stopped_by_the_busy_timeout(path: &str) {
    let gw = misbehaving_gateway().await;
    let reply = get(gw.addr, path, &[]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(get(gw.addr, "/ok", &[]).await.status, 200);
    let metrics = gw.gateway.metrics.render(0);
    assert!(
        metrics.contains("keygate_guest_failures_total{reason=\"busy_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn guest_loop_is_stopped_by_the_busy_timeout() {
    assert_stopped_by_the_busy_timeout("/loop").await;
}

#[tokio::test]
async fn guest_loop_calling_the_host_is_still_stopped_by_the_busy_timeout() {
    assert_stopped_by_the_busy_timeout("/loop-on-host").await;
}

#[tokio::test]
async fn guest_waiting_longer_than_the_busy_timeout_is_not_busy() {
    let gw = misbehaving_gateway().await;
    let reply = get(gw.addr, "/wait", &[]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "waited"));
    let metrics = gw.gateway.metrics.render(0);
    assert!(!metrics.contains("busy_timeout"), "{metrics}");
}

#[tokio::test]
async fn guest_memory_hog_hits_the_limit() {
    let gw = misbehaving_gateway().await;
    assert_eq!(get(gw.addr, "/grow", &[]).await.status, 500);
    assert_eq!(get(gw.addr, "/ok", &[]).await.status, 200);
    let metrics = gw.gateway.metrics.render(0);
    assert!(
        metrics.contains("keygate_guest_failures_total{reason=\"memory_limit\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("reason=\"trap\""),
        "the memory limit is told apart from other traps: {metrics}"
    );
}

#[tokio::test]
async fn many_concurrent_requests_share_the_instance_pool() {
    const INSTANCES: usize = 2;
    const REQUESTS: usize = 40;
    const HOLD_MS: u64 = 50;
    let gw = misbehaving_gateway_with(&format!("max_instances = {INSTANCES}")).await;
    let started = Instant::now();
    // Each request keeps its instance for HOLD_MS: they overlap, so most must wait for one.
    let requests = (0..REQUESTS).map(|_| {
        let addr = gw.addr;
        tokio::spawn(async move {
            let reply = get(addr, &format!("/wait?ms={HOLD_MS}"), &[]).await;
            (reply.status, reply.text())
        })
    });
    let answers =
        tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(requests))
            .await
            .expect("every queued request got an instance");
    for answer in answers {
        assert_eq!(answer.unwrap(), (200, "waited".to_string()));
    }
    let elapsed = started.elapsed();
    let metrics = gw.gateway.metrics.render(0);
    assert!(
        metrics.contains(&format!(
            "keygate_guest_instances_created_total {INSTANCES}\n"
        )),
        "{REQUESTS} requests were served by exactly {INSTANCES} instances: {metrics}"
    );
    // Neither was retired: both are alive, idle in the pool (or finishing their request).
    let metrics = gw.gateway.render_metrics();
    assert!(
        metrics.contains(&format!("keygate_guest_instances_alive {INSTANCES}\n")),
        "{metrics}"
    );
    let rounds = u32::try_from(REQUESTS / INSTANCES).unwrap();
    assert!(
        elapsed >= Duration::from_millis(HOLD_MS) * rounds,
        "no more than {INSTANCES} requests ran at once, so the rest queued: {elapsed:?}"
    );
}

#[tokio::test]
async fn instances_are_reused_and_a_trap_retires_one() {
    let gw = misbehaving_gateway().await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(get(gw.addr, "/count", &[]).await.text());
    }
    assert_eq!(
        seen,
        ["1", "2", "3"],
        "one instance served the sequential requests"
    );
    assert_eq!(get(gw.addr, "/trap", &[]).await.status, 500);
    assert_eq!(
        get(gw.addr, "/count", &[]).await.text(),
        "1",
        "a fresh instance after the trap"
    );
}

#[tokio::test]
async fn instance_reuse_of_one_means_a_fresh_instance_per_request() {
    let gw = misbehaving_gateway_reusing(1).await;
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/count", &[]).await.text(), "1");
    }
}

/// A gateway running the hostile policy, with service `api` on `origin`.
async fn hostile_gateway(origin: std::net::SocketAddr) -> keygate::RunningGateway {
    let config = GatewayConfig::new()
        .tables(format_args!(
            "[guest]\ncomponent = {:?}",
            env!("KEYGATE_TEST_HOSTILE_WASM")
        ))
        .service("api", format_args!("http://{origin}"))
        .route("paths = [\"/\"]")
        // One request thread: a decision kept for reuse meets every repeat.
        .server("workers = 1");
    start_gateway(&config.to_string()).await
}

/// The host reuses a decision only when the guest offers it, and never one whose call counted
/// a request in a rate limit, whatever the guest offers.
#[tokio::test]
async fn decisions_are_reused_only_when_offered_and_never_after_counting_a_rate_limit() {
    let origin = support::Origin::start("origin").await;
    let gw = hostile_gateway(origin.addr).await;
    let target = origin.addr.to_string();
    let reused = || {
        let metrics = gw.gateway.metrics.render(0);
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("keygate_decisions_reused_total "))
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    for (asked, expected) in [("offer", 2), ("count-and-offer", 2), ("none", 2)] {
        for _ in 0..3 {
            let headers = [("x-target", target.as_str()), ("x-reuse", asked)];
            assert_eq!(get(gw.addr, "/", &headers).await.status, 200, "{asked}");
        }
        assert_eq!(
            reused(),
            expected,
            "after three requests with x-reuse: {asked}"
        );
    }
    assert_eq!(origin.hits(), 9, "every request reached the origin");
}

#[tokio::test]
async fn decisions_that_leave_the_configuration_are_refused_and_never_forwarded() {
    let origin = support::Origin::start("origin").await;
    let elsewhere = support::Origin::start("elsewhere").await;
    let gw = hostile_gateway(origin.addr).await;
    assert!(gw.gateway.active().fast_path, "the policy decides");
    let origin_target = origin.addr.to_string();
    let elsewhere_target = elsewhere.addr.to_string();

    // The plan a good guest makes is carried out: the setup itself works.
    let reply = get(gw.addr, "/", &[("x-target", &origin_target)]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(origin.hits(), 1);

    for (hostile, target) in [
        ("foreign-authority", &elsewhere_target),
        ("unknown-service", &origin_target),
        ("header-injection", &origin_target),
        ("absolute-path", &origin_target),
        ("informational-reply", &origin_target),
    ] {
        let reply = get(
            gw.addr,
            "/",
            &[("x-hostile", hostile), ("x-target", target)],
        )
        .await;
        assert_eq!(reply.status, 500, "{hostile}: {}", reply.text());
        assert_eq!(reply.json()["message"], "An unexpected error occurred");
    }
    assert_eq!(origin.hits(), 1, "no refused plan reached the origin");
    assert_eq!(
        elsewhere.hits(),
        0,
        "nothing reached a host the config does not name"
    );
}
