//! Scenarios: bodies stream both ways, origin failures become Kong's errors, connections are
//! pooled.

use super::*;
use support::basic_config;
use support::servers::download_sum;

async fn setup() -> (Origin, TestGateway) {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let gateway = start_gateway(&basic_config(&origin, &auth)).await;
    (origin, gateway)
}

const KEY: (&str, &str) = ("apikey", "static-key");

#[tokio::test]
async fn post_body_streams_to_origin() {
    let (origin, gw) = setup().await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    let sum = body.iter().fold(0u64, |s, b| s + u64::from(*b));
    let request = support::request("POST", gw.addr, "/api/upload")
        .header(KEY.0, KEY.1)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = support::send(gw.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["bytes"], 300_000);
    assert_eq!(reply.json()["sum"], sum);
    assert_eq!(origin.last().method, "POST");
}

#[tokio::test]
async fn chunked_upload_without_length_streams_to_origin() {
    let (_origin, gw) = setup().await;
    let chunks = (0..64).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![
            1u8;
            16 * 1024
        ])))
    });
    let body = StreamBody::new(futures::stream::iter(chunks));
    let request = support::request("PUT", gw.addr, "/api/upload")
        .header(KEY.0, KEY.1)
        .body(body)
        .unwrap();
    let response = support::client::open(gw.addr, request).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["bytes"], 64 * 16 * 1024);
}

#[tokio::test]
async fn download_streams_back_whole() {
    let (_origin, gw) = setup().await;
    let n = 3_000_000u64;
    let reply = get(gw.addr, &format!("/api/download/{n}"), &[KEY]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len() as u64, n);
    let sum = reply
        .body
        .iter()
        .fold(0u64, |s, b| s.wrapping_add(u64::from(*b)));
    assert_eq!(sum, download_sum(n));
}

#[tokio::test]
async fn origin_refusing_connections_gets_502() {
    let auth = AuthApi::start().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let origin = Origin::start("unused").await;
    let config = basic_config(&origin, &auth).replace(&origin.addr.to_string(), &dead.to_string());
    let gw = start_gateway(&config).await;
    let reply = get(gw.addr, "/api/x", &[KEY]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.json()["message"],
        "An invalid response was received from the upstream server"
    );
}

#[tokio::test]
async fn origin_slower_than_read_timeout_gets_504() {
    let origin = Origin::start("slow").await;
    let auth = AuthApi::start().await;
    let config = GatewayConfig::new()
        .auth_api(&auth)
        .consumer("static-user", None, &[KEY.1])
        .service("api", format_args!("http://{}/v1", origin.addr))
        .service_setting("read_timeout = \"200ms\"")
        .route("paths = [\"/api\"]")
        .to_string();
    let gw = start_gateway(&config).await;
    let reply = get(gw.addr, "/api/x", &[KEY, ("x-test-delay-ms", "3000")]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["message"], "The upstream server is timing out");
}

/// An origin that answers with a 10-byte body but sends 5 bytes and then goes quiet until
/// `release` fires.
async fn origin_stalling_mid_body(
    release: tokio::sync::oneshot::Receiver<()>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "gateway closed before sending the request");
            request.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
            .await
            .unwrap();
        let _ = release.await;
    });
    addr
}

#[tokio::test]
async fn origin_going_quiet_mid_body_cuts_the_response_after_read_timeout() {
    let (release, stalled) = tokio::sync::oneshot::channel();
    let origin = origin_stalling_mid_body(stalled).await;
    let config = GatewayConfig::new()
        .consumer("alice", None, &[KEY.1])
        .service("stalling", format_args!("http://{origin}"))
        .service_setting("read_timeout = \"300ms\"")
        .route("name = \"all\"\npaths = [\"/\"]")
        .to_string();
    let gw = start_gateway(&config).await;
    let request = support::request("GET", gw.addr, "/file")
        .header(KEY.0, KEY.1)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = support::client::open(gw.addr, request).await;
    assert_eq!(response.status(), 200);
    // The gateway must end the response as incomplete (not hang until the origin resumes,
    // and not end it cleanly with 5 of 10 bytes).
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        response.into_body().collect(),
    )
    .await
    .expect("the gateway gave up on the quiet origin");
    assert!(body.is_err(), "a cut body must not look complete");
    drop(release);
}

#[tokio::test]
async fn several_request_threads_serve_concurrent_clients_and_drain_on_shutdown() {
    excluded_on_wasmtime_serve!("keygate's request threads and shutdown");
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let config = basic_config(&origin, &auth).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nworkers = 4",
    );
    let gw = start_gateway(&config).await;
    let clients = (0..32).map(|_| {
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..5 {
                statuses.push(get(addr, "/api/x", &[KEY]).await.status);
            }
            statuses
        })
    });
    for client in clients {
        assert_eq!(client.await.unwrap(), vec![200; 5]);
    }
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        gw.into_keygate().shutdown(),
    )
    .await
    .expect("every request thread stops and drains");
}

#[tokio::test]
async fn sequential_requests_reuse_pooled_origin_connections() {
    excluded_on_wasmtime_serve!("wasmtime serve opens a connection for each outgoing request");
    let (origin, gw) = setup().await;
    for _ in 0..50 {
        assert_eq!(get(gw.addr, "/api/x", &[KEY]).await.status, 200);
    }
    assert_eq!(origin.hits(), 50);
    assert!(
        origin.connections() <= 2,
        "50 requests used {} origin connections",
        origin.connections()
    );
}

#[tokio::test]
async fn sequential_requests_reuse_one_guest_instance() {
    excluded_on_wasmtime_serve!("keygate's metrics");
    let (_origin, gw) = setup().await;
    for _ in 0..20 {
        assert_eq!(get(gw.addr, "/api/x", &[KEY]).await.status, 200);
    }
    assert_eq!(
        get(gw.addr, "/api/x", &[("apikey", "unknown")])
            .await
            .status,
        401
    );
    let metrics = gw.keygate().gateway.metrics.render(0);
    assert!(
        metrics.contains("keygate_guest_instances_created_total 1\n"),
        "one instance served all 21 requests:\n{metrics}"
    );
}

#[tokio::test]
async fn origin_errors_pass_through_untouched() {
    let (_origin, gw) = setup().await;
    // The test origin answers 200 for everything but its own routes; a HEAD must carry no body.
    let request = support::request("HEAD", gw.addr, "/api/x")
        .header(KEY.0, KEY.1)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = support::send(gw.addr, request).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_empty());
}
