//! Scenarios for the `keygate` binary: config checking, serving, draining, memory.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::io::Write;
use std::time::Duration;
use support::client::get;
use support::process::{Served, run};
use support::servers::download_sum;
use support::{AuthApi, Origin, basic_config};

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn check(text: &str) -> (bool, String) {
    let file = write_config(text);
    let output = run(&["check", "--config", file.path().to_str().unwrap()]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), all)
}

#[test]
fn check_accepts_the_shipped_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/keygate.toml");
    let output = run(&["check", "--config", example]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("OK"));
}

#[test]
fn bad_config_names_the_field() {
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nlisn = 1\n", "lisn"),
        (
            "[auth_api]\nurl = \"http://a/{key}\"\ncache_ttl = \"5 fortnights\"\n",
            "cache_ttl",
        ),
        ("[auth_api]\nurl = \"http://a/validate\"\n", "auth_api.url"),
        (
            "[[services]]\nname = \"s\"\nurl = \"127.0.0.1:9\"\n",
            "line 3",
        ),
        (
            "[[services]]\nname = \"s\"\nurl = \"http://a\"\n[[services.routes]]\npaths = [\"~/x(\"]\n",
            "invalid regex",
        ),
        (
            "[[services]]\nname = \"s\"\nurl = \"http://a\"\n[[services.routes]]\nname = \"r\"\n",
            "services[0].routes[0]",
        ),
        ("[server\n", "TOML parse error"),
    ];
    for (config, expected) in cases {
        let (ok, output) = check(config);
        assert!(!ok, "accepted a bad config:\n{config}");
        assert!(
            output.contains(expected),
            "message for\n{config}\nlacks {expected:?}:\n{output}"
        );
    }
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let output = run(&["check", "--config", "/nonexistent/keygate.toml"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reading config file /nonexistent/keygate.toml"),
        "{stderr}"
    );
}

#[test]
fn broken_component_file_is_refused_with_its_name() {
    let mut component = tempfile::Builder::new().suffix(".wasm").tempfile().unwrap();
    component.write_all(b"\0asm not really").unwrap();
    let config = format!("[guest]\ncomponent = \"{}\"\n", component.path().display());
    let (ok, output) = check(&config);
    assert!(!ok);
    assert!(
        output.contains(&component.path().display().to_string()),
        "{output}"
    );
    assert!(
        output.contains("not a valid WebAssembly component"),
        "{output}"
    );
}

#[test]
fn component_with_an_import_the_host_lacks_is_refused() {
    // A component importing an interface keygate does not provide.
    let wasm = wat::parse_str(
        r#"(component (import "acme:missing/thing@1.0.0" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    let mut component = tempfile::Builder::new().suffix(".wasm").tempfile().unwrap();
    component.write_all(&wasm).unwrap();
    let config = format!("[guest]\ncomponent = \"{}\"\n", component.path().display());
    let (ok, output) = check(&config);
    assert!(!ok, "{output}");
    assert!(
        output.contains("cannot be linked against keygate's host"),
        "{output}"
    );
    assert!(output.contains("acme:missing/thing"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_drains_in_flight_requests_on_sigterm() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let config = support::basic_config_with_admin(&origin, &auth);
    let file = write_config(&config);
    let served = Served::start(file.path());
    let addr = served.addr;
    let slow = tokio::spawn(async move {
        get(
            addr,
            "/api/x",
            &[("apikey", "static-key"), ("x-test-delay-ms", "1500")],
        )
        .await
    });
    wait_for_in_flight(&served).await;
    served.signal(libc::SIGTERM);
    let reply = slow.await.unwrap();
    assert_eq!(
        reply.status,
        200,
        "the in-flight request finished: {}",
        reply.text()
    );
    let mut served = served;
    let status = tokio::task::spawn_blocking(move || served.child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "keygate exited cleanly after draining: {status}"
    );
}

/// Poll the gateway's metrics until a request is in flight: a readiness check, not a sleep.
async fn wait_for_in_flight(served: &Served) {
    let admin = served.admin.expect("the test config has an admin listener");
    for _ in 0..500 {
        let metrics = get(admin, "/metrics", &[]).await.text();
        if metrics.contains("keygate_requests_in_flight 1") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the slow request never reached the gateway");
}

#[tokio::test(flavor = "multi_thread")]
async fn large_upload_and_download_stream_with_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let file = write_config(&basic_config(&origin, &auth));
    let served = Served::start(file.path());
    // Only streaming counts: compiling the component (a cold cache) peaks higher than that.
    served.reset_peak_rss();
    let start_kib = served.peak_rss_kib();

    // Upload 200 MiB, generated as it is sent.
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let frames =
        (0..SIZE >> 20).map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())));
    let request = support::request("POST", served.addr, "/api/upload")
        .header("apikey", "static-key")
        .header("content-length", SIZE.to_string())
        .body(StreamBody::new(futures::stream::iter(frames)))
        .unwrap();
    let response = support::client::open(served.addr, request).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["bytes"], SIZE);
    assert_eq!(json["sum"], SIZE * 7);
    println!("after upload: peak {} MiB", served.peak_rss_kib() / 1024);

    // Download 200 MiB, counted as it arrives.
    let request = support::request("GET", served.addr, &format!("/api/download/{SIZE}"))
        .header("apikey", "static-key")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = support::client::open(served.addr, request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut received, mut sum) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            received += data.len() as u64;
            sum = data.iter().fold(sum, |s, b| s.wrapping_add(u64::from(*b)));
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(sum, download_sum(SIZE));

    let peak_mib = served.peak_rss_kib() / 1024;
    let start_mib = start_kib / 1024;
    println!(
        "keygate peak RSS after 200 MiB up + 200 MiB down: {peak_mib} MiB (after start-up: {start_mib} MiB)"
    );
    // Streaming must not hold the bodies: hyper's `pipeline_flush` once held 64 MiB of this
    // download. What start-up keeps (the compiled component, allocator caches) is not at issue.
    assert!(
        peak_mib - start_mib < 48,
        "streaming grew the gateway from {start_mib} to {peak_mib} MiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_without_restarting() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let config = support::basic_config_with_admin(&origin, &auth);
    let file = write_config(&config);
    let served = Served::start(file.path());
    let admin = served.admin.unwrap();
    served.signal(libc::SIGHUP);
    for _ in 0..1000 {
        let status = get(admin, "/admin/status", &[]).await.json();
        if status["reload"]["last_trigger"] == "SIGHUP" {
            assert_eq!(status["reload"]["reloads"], 1, "{status}");
            assert_eq!(
                get(served.addr, "/api/x", &[("apikey", "static-key")])
                    .await
                    .status,
                200
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("SIGHUP did not reload");
}
