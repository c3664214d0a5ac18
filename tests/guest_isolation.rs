//! Scenarios: a guest that traps, spins or hogs memory loses that request only.

mod support;

use support::client::get;
use support::start_gateway;

async fn misbehaving_gateway() -> keygate::RunningGateway {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[guest]
component = "{}"
busy_timeout = "200ms"
memory_limit_mb = 32
"#,
        env!("KEYGATE_TEST_MISBEHAVING_WASM")
    );
    start_gateway(&config).await
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
async fn guest_loop_is_stopped_by_the_busy_timeout() {
    let gw = misbehaving_gateway().await;
    let reply = get(gw.addr, "/loop", &[]).await;
    assert_eq!(reply.status, 500);
    assert_eq!(get(gw.addr, "/ok", &[]).await.status, 200);
    let metrics = gw.gateway.metrics.render(0);
    assert!(
        metrics.contains("keygate_guest_failures_total{reason=\"busy_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn guest_memory_hog_hits_the_limit() {
    let gw = misbehaving_gateway().await;
    assert_eq!(get(gw.addr, "/grow", &[]).await.status, 500);
    assert_eq!(get(gw.addr, "/ok", &[]).await.status, 200);
}

#[tokio::test]
async fn many_concurrent_requests_share_the_instance_pool() {
    let gw = misbehaving_gateway().await;
    let requests = (0..200).map(|_| {
        let addr = gw.addr;
        tokio::spawn(async move { get(addr, "/ok", &[]).await.status })
    });
    for status in futures::future::join_all(requests).await {
        assert_eq!(status.unwrap(), 200);
    }
}
