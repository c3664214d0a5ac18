//! Scenarios: a dependency's outage stays its own. The auth API down costs neither a guest
//! instance per request nor a timeout per cache miss.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::client::get;
use support::{GatewayConfig, start_gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An auth API on a loopback port that, while `down`, accepts connections and never answers
/// (a blackholed dependency), and otherwise accepts every key.
#[derive(Clone)]
struct SwitchableAuthApi {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    /// Requests that reached it while down (each on its own connection: none is answered).
    unanswered: Arc<AtomicUsize>,
}

impl SwitchableAuthApi {
    async fn start_down() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Self {
            addr: listener.local_addr().unwrap(),
            down: Arc::new(AtomicBool::new(true)),
            unanswered: Arc::default(),
        };
        let state = api.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if state.down.load(Ordering::SeqCst) {
                        state.unanswered.fetch_add(1, Ordering::SeqCst);
                        // Hold the connection open, never answering.
                        let _ = stream.read(&mut buf).await;
                        return;
                    }
                    let body = r#"{"consumer":{"username":"ann"}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        api
    }
}

/// A gateway whose auth API is `auth` (300 ms timeout), in front of `origin`.
async fn gateway(auth: std::net::SocketAddr, origin: &support::Origin) -> keygate::RunningGateway {
    let config = GatewayConfig::new()
        .tables(format_args!(
            "[auth_api]\nurl = \"http://{auth}/validate?apikey={{key}}\"\ntimeout = \"300ms\""
        ))
        .service("api", format_args!("http://{}", origin.addr))
        .route("paths = [\"/\"]");
    start_gateway(&config.to_string()).await
}

fn sample(metrics: &str, family: &str) -> Option<String> {
    metrics
        .lines()
        .find(|line| line.starts_with(family))
        .map(str::to_string)
}

/// An auth API that refuses connections: each request gets its 503, and the instance that
/// asked (and logged the failure) serves the next one. A logged line once retired it, so an
/// outage of a dependency cost a fresh instance per request.
#[tokio::test]
async fn failed_auth_calls_do_not_retire_the_instance() {
    let origin = support::Origin::start("origin").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let gw = gateway(dead, &origin).await;
    for i in 0..20 {
        let key = format!("key-{i}");
        let reply = get(gw.addr, "/x", &[("apikey", key.as_str())]).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
    }
    let metrics = gw.gateway.metrics.render(0);
    assert_eq!(
        sample(&metrics, "keygate_guest_instances_created_total").as_deref(),
        Some("keygate_guest_instances_created_total 1"),
        "one instance answered all 20 requests:\n{metrics}"
    );
    assert_eq!(origin.hits(), 0);
}

/// A blackholed auth API: after a few calls time out, misses are answered at once without
/// asking it, and when it answers again (a probe finds out) keys are checked again.
#[tokio::test]
async fn an_auth_api_that_stopped_answering_is_not_waited_for() {
    use keygate::capabilities::breaker::FAILURES_TO_OPEN;
    let origin = support::Origin::start("origin").await;
    let auth = SwitchableAuthApi::start_down().await;
    let gw = gateway(auth.addr, &origin).await;
    let opened = FAILURES_TO_OPEN as usize;
    for i in 0..opened {
        let key = format!("key-{i}");
        let reply = get(gw.addr, "/x", &[("apikey", key.as_str())]).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
    }
    assert_eq!(auth.unanswered.load(Ordering::SeqCst), opened);
    // The last of them marks it down once the gateway gives up on it (readiness, not timing).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .gateway
        .metrics
        .render(0)
        .contains("keygate_auth_api_down 1\n")
    {
        assert!(
            Instant::now() < deadline,
            "the auth API is never marked down"
        );
        tokio::task::yield_now().await;
    }

    // Known down: 20 more misses are not sent to it (a probe may be, every 500 ms).
    for i in 0..20 {
        let key = format!("other-{i}");
        let reply = get(gw.addr, "/x", &[("apikey", key.as_str())]).await;
        assert_eq!(reply.status, 503, "{}", reply.text());
    }
    let metrics = gw.gateway.metrics.render(0);
    assert_eq!(
        sample(&metrics, "keygate_auth_api_calls_skipped_total").as_deref(),
        Some("keygate_auth_api_calls_skipped_total 20"),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "keygate_auth_api_responses_total").as_deref(),
        Some(format!("keygate_auth_api_responses_total{{code=\"error\"}} {opened}").as_str()),
        "{metrics}"
    );

    // Back up: a probe closes the breaker and keys are checked again.
    assert!(metrics.contains("keygate_auth_api_down 1\n"), "{metrics}");
    auth.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = get(gw.addr, "/x", &[("apikey", "good-key")]).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert!(
            Instant::now() < deadline,
            "the auth API answers again, but the gateway still does not ask it"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(origin.hits(), 1);
    let metrics = gw.gateway.metrics.render(0);
    assert!(metrics.contains("keygate_auth_api_down 0\n"), "{metrics}");
}

/// An origin that refuses connections is not tried by every request: after a few refusals the
/// gateway answers its 502 at once for a moment, then tries the origin again — so an outage
/// costs no connection attempt per request, and a recovered origin is used within a second.
#[tokio::test]
async fn a_refusing_origin_is_not_dialled_by_every_request() {
    use keygate::capabilities::breaker::FAILURES_TO_OPEN;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = GatewayConfig::new()
        .server("workers = 1")
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://127.0.0.1:{port}"))
        .route("paths = [\"/\"]");
    let gw = start_gateway(&config.to_string()).await;
    for _ in 0..FAILURES_TO_OPEN {
        let reply = get(gw.addr, "/x", &[("apikey", "alice-key")]).await;
        assert_eq!(reply.status, 502, "{}", reply.text());
    }
    // The origin is back, listening and counting connections.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let skipped = get(gw.addr, "/x", &[("apikey", "alice-key")]).await;
    assert_eq!(skipped.status, 502, "known down: answered without dialling");
    assert!(
        skipped
            .text()
            .contains("An invalid response was received from the upstream server")
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection attempt");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(gw.addr, "/x", &[("apikey", "alice-key")]).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the origin is never tried again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted.load(Ordering::SeqCst) >= 1);
}

/// The same for an origin that accepts connections and never answers: after a few timeouts
/// its requests get the 504 at once instead of each holding a connection for `read_timeout`.
#[tokio::test]
async fn a_silent_origin_is_not_waited_for_by_every_request() {
    let (gw, accepted) = paused_silent_origin("100ms").await;
    let dialled = accepted.load(Ordering::SeqCst);
    let skipped = get(gw.addr, "/x", &[("apikey", "alice-key")]).await;
    assert_eq!(skipped.status, 504);
    assert!(skipped.text().contains("The upstream server is timing out"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        dialled,
        "not sent to the silent origin"
    );
}

/// When the pause is over, one request tries a silent origin again and the others are still
/// answered at once while it waits for its timeout: an origin that never answers does not get
/// every request of that moment held for `read_timeout`.
#[tokio::test]
async fn after_the_pause_one_request_tries_a_silent_origin_while_the_others_are_answered() {
    use keygate::capabilities::breaker::PROBE_EVERY;
    let (gw, accepted) = paused_silent_origin("1s").await;
    let dialled = accepted.load(Ordering::SeqCst);
    // The pause is a time by design: wait it out.
    tokio::time::sleep(PROBE_EVERY).await;
    let addr_gw = gw.addr;
    let trying = tokio::spawn(async move { get(addr_gw, "/x", &[("apikey", "alice-key")]).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) == dialled {
        assert!(
            Instant::now() < deadline,
            "no request tried the origin again"
        );
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    for _ in 0..10 {
        let reply = get(gw.addr, "/x", &[("apikey", "alice-key")]).await;
        assert_eq!(reply.status, 504, "{}", reply.text());
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the others were held while one request tried the origin"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        dialled + 1,
        "only one request tried the silent origin"
    );
    assert_eq!(trying.await.unwrap().status, 504);
}

/// An origin that accepts every connection and never answers: its address, and how many
/// connections it accepted.
async fn silent_origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted)
}

/// A gateway in front of a [`silent_origin`] with `read_timeout`, after the requests that
/// timed out and paused it (each answered 504): the gateway, and the origin's accept count.
async fn paused_silent_origin(read_timeout: &str) -> (keygate::RunningGateway, Arc<AtomicUsize>) {
    use keygate::capabilities::breaker::FAILURES_TO_OPEN;
    let (addr, accepted) = silent_origin().await;
    let config = GatewayConfig::new()
        .server("workers = 1")
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://{addr}"))
        .service_setting(format_args!("read_timeout = \"{read_timeout}\""))
        .route("paths = [\"/\"]");
    let gw = start_gateway(&config.to_string()).await;
    for _ in 0..FAILURES_TO_OPEN {
        let reply = get(gw.addr, "/x", &[("apikey", "alice-key")]).await;
        assert_eq!(reply.status, 504, "{}", reply.text());
    }
    (gw, accepted)
}
