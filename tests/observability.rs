//! Scenarios: what operators watch during a migration — health probes a load balancer can
//! use, metrics in the format Kong's dashboards read, and an access log that never holds a key.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::get;
use support::{GatewayConfig, Origin, start_gateway};

/// A gateway in front of `origin` with an admin listener (and `admin_token`, when given).
async fn gateway(origin: &Origin, extra: &str) -> keygate::RunningGateway {
    let config = GatewayConfig::new()
        .admin()
        .server(extra)
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://{}", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/\"]");
    start_gateway(&config.to_string()).await
}

#[tokio::test]
async fn probes_answer_without_the_admin_token_and_readiness_fails_while_draining() {
    // An origin that holds its answer until the test has seen the gateway drain.
    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (seen, gate) = (Arc::clone(&arrived), Arc::clone(&release));
    let origin = support::servers::serve(move |_| {
        let (seen, gate) = (Arc::clone(&seen), Arc::clone(&gate));
        async move {
            seen.notify_one();
            gate.notified().await;
            hyper::Response::new(http_body_util::BodyExt::boxed(http_body_util::Full::new(
                bytes::Bytes::from("done"),
            )))
        }
    })
    .await;
    let config = GatewayConfig::new()
        .admin()
        .server("admin_token = \"s3cret\"")
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://{}", origin.addr))
        .route("paths = [\"/\"]");
    let gw = start_gateway(&config.to_string()).await;
    let admin = gw.admin_addr.unwrap();
    assert_eq!(
        get(admin, "/admin/status", &[]).await.status,
        401,
        "the rest needs the token"
    );
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200);
    assert_eq!(get(admin, "/readyz", &[]).await.status, 200);
    let kong = get(admin, "/status/ready", &[]).await;
    assert_eq!(
        (kong.status, kong.json()["message"].clone()),
        (200, "ready".into())
    );

    // A request in flight keeps the gateway draining once shutdown begins.
    let addr = gw.addr;
    let held = tokio::spawn(async move { get(addr, "/x", &[("apikey", "alice-key")]).await });
    arrived.notified().await;
    let shutdown = tokio::spawn(gw.shutdown());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = get(admin, "/readyz", &[]).await;
        if ready.status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never failed while draining"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kong = get(admin, "/status/ready", &[]).await;
    assert_eq!(kong.status, 503, "{}", kong.text());
    assert_eq!(get(admin, "/healthz", &[]).await.status, 200, "still alive");
    release.notify_one();
    assert_eq!(
        held.await.unwrap().status,
        200,
        "the in-flight request finished"
    );
    shutdown.await.unwrap();
}

/// `/metrics` from the admin listener.
async fn scrape(gw: &keygate::RunningGateway) -> (String, String) {
    let reply = get(gw.admin_addr.unwrap(), "/metrics", &[]).await;
    assert_eq!(reply.status, 200);
    (
        reply.header("content-type").unwrap_or_default().to_string(),
        reply.text(),
    )
}

fn lines_of<'a>(metrics: &'a str, family: &str) -> Vec<&'a str> {
    metrics
        .lines()
        .filter(|line| line.starts_with(family))
        .collect()
}

const EVERY_FLAG: &str = "[[plugins]]\nname = \"prometheus\"\n[plugins.config]\nper_consumer = true\n\
    status_code_metrics = true\nlatency_metrics = true\nbandwidth_metrics = true\n\
    upstream_health_metrics = true\n";

#[tokio::test]
async fn kong_families_read_as_kongs_dashboards_expect_them() {
    let origin = Origin::start("origin").await;
    let config = GatewayConfig::new()
        .admin()
        .tables(EVERY_FLAG)
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://{}", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/api\"]");
    let gw = start_gateway(&config.to_string()).await;
    assert_eq!(
        get(gw.addr, "/api/x", &[("apikey", "alice-key")])
            .await
            .status,
        200
    );
    assert_eq!(get(gw.addr, "/api/x", &[]).await.status, 401);
    assert_eq!(get(gw.addr, "/elsewhere", &[]).await.status, 404);
    let (content_type, metrics) = scrape(&gw).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        !metrics.contains("# EOF") && !metrics.contains("# UNIT"),
        "{metrics}"
    );

    let mut requests = lines_of(&metrics, "kong_http_requests_total{");
    requests.sort_unstable();
    assert_eq!(
        requests,
        [
            "kong_http_requests_total{service=\"api\",route=\"api-route\",code=\"200\",source=\"service\",workspace=\"default\",consumer=\"alice\"} 1",
            "kong_http_requests_total{service=\"api\",route=\"api-route\",code=\"401\",source=\"kong\",workspace=\"default\",consumer=\"\"} 1",
        ],
        "the 404 matched no route: Kong records nothing for it\n{metrics}"
    );
    assert!(
        metrics.contains("# TYPE kong_http_requests_total counter\n"),
        "{metrics}"
    );
    for family in ["kong_kong_latency_ms", "kong_request_latency_ms"] {
        assert!(
            metrics.contains(&format!("# TYPE {family} histogram\n")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!(
                "{family}_count{{service=\"api\",route=\"api-route\",workspace=\"default\"}} 2\n"
            )),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "kong_kong_latency_ms_bucket{service=\"api\",route=\"api-route\",workspace=\"default\",le=\"1\"}"
        ),
        "Kong's buckets, written as Kong writes them\n{metrics}"
    );
    assert!(metrics.contains(
        "kong_upstream_latency_ms_count{service=\"api\",route=\"api-route\",workspace=\"default\"} 1\n"
    ), "{metrics}");
    let bandwidth = lines_of(&metrics, "kong_bandwidth_bytes{");
    for direction in ["ingress", "egress"] {
        assert!(
            bandwidth.iter().any(|line| line.starts_with(&format!(
                "kong_bandwidth_bytes{{service=\"api\",route=\"api-route\",direction=\"{direction}\",workspace=\"default\",consumer=\"alice\"}} "
            ))),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("# TYPE kong_bandwidth_bytes counter\n"),
        "{metrics}"
    );
    let info = lines_of(&metrics, "kong_node_info{");
    assert_eq!(info.len(), 1, "{metrics}");
    assert!(
        info[0].contains(",version=\"") && info[0].ends_with("} 1"),
        "{info:?}"
    );
    assert!(
        metrics.contains("kong_datastore_reachable 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kong_nginx_requests_total 3\n"),
        "{metrics}"
    );
    let connections = lines_of(&metrics, "kong_nginx_connections_total{");
    assert!(
        connections.iter().any(
            |line| line.contains(",subsystem=\"http\",state=\"accepted\"}")
                && !line.ends_with(" 0")
        ),
        "{metrics}"
    );

    // keygate's own families stay, with latency histograms.
    assert!(
        metrics.contains("keygate_http_requests_total{route=\"api-route\",code=\"200\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_request_latency_ms_count{route=\"api-route\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keygate_upstream_latency_ms_count{route=\"api-route\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_a_prometheus_plugin_no_kong_family_is_exported() {
    let origin = Origin::start("origin").await;
    let gw = gateway(&origin, "").await;
    assert_eq!(
        get(gw.addr, "/x", &[("apikey", "alice-key")]).await.status,
        200
    );
    let (_, metrics) = scrape(&gw).await;
    assert!(!metrics.contains("kong_"), "{metrics}");
    assert!(
        metrics.contains("keygate_request_latency_ms_count{route=\"api-route\"} 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_per_consumer_the_consumer_label_is_empty() {
    let origin = Origin::start("origin").await;
    let config = GatewayConfig::new()
        .admin()
        .tables(
            "[[plugins]]\nname = \"prometheus\"\n[plugins.config]\nstatus_code_metrics = true\n",
        )
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://{}", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/\"]");
    let gw = start_gateway(&config.to_string()).await;
    assert_eq!(
        get(gw.addr, "/x", &[("apikey", "alice-key")]).await.status,
        200
    );
    let (_, metrics) = scrape(&gw).await;
    assert_eq!(
        lines_of(&metrics, "kong_http_requests_total{"),
        [
            "kong_http_requests_total{service=\"api\",route=\"api-route\",code=\"200\",source=\"service\",workspace=\"default\",consumer=\"\"} 1"
        ]
    );
    assert!(
        !metrics.contains("kong_kong_latency_ms_count"),
        "latency_metrics is off\n{metrics}"
    );
    assert!(!metrics.contains("kong_bandwidth_bytes{"), "{metrics}");
}

/// The non-empty lines of a file that may not exist yet.
fn lines_in(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until `path` has `n` lines (the writer flushes at least every second).
async fn until_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = lines_in(path);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, not {n}: {lines:?}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn no_log_line_holds_a_key_wherever_the_key_travels() {
    const STATIC_KEY: &str = "static-secret-key-0123456789";
    const API_KEY: &str = "auth-api-secret-key-9876543210";
    const WRONG_KEY: &str = "wrong-secret-key-5555555555";
    let origin = Origin::start("origin").await;
    let auth = support::AuthApi::start().await;
    auth.allow(
        API_KEY,
        serde_json::json!({"consumer": {"username": "bob"}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let config = GatewayConfig::new()
        .auth_api(&auth)
        .tables(format_args!(
            "[key_auth]\nkey_in_body = true\n[log]\naccess = \"json\"\naccess_file = \"{}\"\naccess_query = true",
            access.display()
        ))
        .consumer("alice", None, &[STATIC_KEY])
        .service("api", format_args!("http://{}", origin.addr))
        .route("name = \"api-route\"\npaths = [\"/\"]");
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, config.to_string()).unwrap();
    let served = support::process::Served::start_logging(&file, "debug");
    let addr = served.addr;

    let form = |key: &str| {
        support::request("POST", addr, "/form")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "apikey={key}&a=1"
            ))))
            .unwrap()
    };
    let statuses = [
        get(addr, "/header", &[("apikey", STATIC_KEY)]).await.status,
        get(addr, &format!("/query?apikey={API_KEY}&page=2"), &[])
            .await
            .status,
        support::send(addr, form(API_KEY)).await.status,
        get(addr, "/wrong", &[("apikey", WRONG_KEY)]).await.status,
        get(addr, &format!("/wrong?apikey={WRONG_KEY}"), &[])
            .await
            .status,
    ];
    assert_eq!(statuses, [200, 200, 200, 401, 401]);

    let lines = until_lines(&access, 5).await;
    let mut process_log = Vec::new();
    while let Ok(line) = served.log.try_recv() {
        process_log.push(line);
    }
    for line in lines.iter().chain(&process_log) {
        for key in [STATIC_KEY, API_KEY, WRONG_KEY] {
            assert!(!line.contains(key), "a key in a log line: {line}");
        }
    }
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let field = |name: &str| -> Vec<serde_json::Value> {
        entries.iter().map(|entry| entry[name].clone()).collect()
    };
    assert_eq!(
        field("path"),
        [
            "/header",
            "/query?apikey=REDACTED&page=2",
            "/form",
            "/wrong",
            "/wrong?apikey=REDACTED"
        ]
    );
    assert_eq!(field("status"), [200, 200, 200, 401, 401]);
    assert_eq!(
        field("source"),
        ["origin", "origin", "origin", "gateway", "gateway"]
    );
    assert_eq!(field("consumer")[..3], ["alice", "bob", "bob"]);
    assert_eq!(field("route"), ["api-route"; 5]);
    assert_eq!(field("service"), ["api"; 5]);
    for entry in &entries {
        for name in [
            "time",
            "request_id",
            "client_ip",
            "method",
            "bytes_in",
            "bytes_out",
            "latency_ms",
        ] {
            assert!(!entry[name].is_null(), "{name} in {entry}");
        }
        assert_eq!(entry["client_ip"], "127.0.0.1");
    }
    assert!(
        entries[1]["auth_ms"].is_u64(),
        "the first use of an auth-API key made a call: {}",
        entries[1]
    );
    assert!(entries[0]["upstream_ms"].is_f64(), "{}", entries[0]);
    // Each key is followed by its fingerprint's first 12 hex characters, whatever path the
    // request took (the form's went through the portable path).
    let prefix = |key: &str| {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..12]
            .to_string()
    };
    assert_eq!(
        field("key"),
        [
            prefix(STATIC_KEY),
            prefix(API_KEY),
            prefix(API_KEY),
            prefix(WRONG_KEY),
            prefix(WRONG_KEY)
        ]
    );
    assert!(entries[3]["upstream_ms"].is_null(), "{}", entries[3]);
}

#[tokio::test]
async fn sigusr1_reopens_the_access_log_for_logrotate() {
    let origin = Origin::start("origin").await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.log");
    let config = GatewayConfig::new()
        .tables(format_args!(
            "[log]\naccess = \"text\"\naccess_file = \"{}\"",
            access.display()
        ))
        .consumer("alice", None, &["alice-key"])
        .service("api", format_args!("http://{}", origin.addr))
        .route("paths = [\"/\"]");
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, config.to_string()).unwrap();
    let served = support::process::Served::start(&file);
    assert_eq!(
        get(served.addr, "/before", &[("apikey", "alice-key")])
            .await
            .status,
        200
    );
    let before = until_lines(&access, 1).await;
    assert!(
        before[0].contains(" GET /before status=200 source=origin "),
        "{before:?}"
    );

    // logrotate moves the file, then signals.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&access, &rotated).unwrap();
    served.signal(libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while lines_in(&access).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the access log was never reopened"
        );
        assert_eq!(
            get(served.addr, "/after", &[("apikey", "alice-key")])
                .await
                .status,
            200
        );
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = lines_in(&access);
    assert!(after[0].contains(" GET /after "), "{after:?}");
    let old = lines_in(&rotated);
    assert!(old[0].contains(" GET /before "), "{old:?}");
    assert!(sent >= 1);
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(support::process::KEYGATE)
        .args(["serve", "--config"])
        .arg(&file)
        .env("KEYGATE_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut serving = None;
    for line in stderr.lines().map_while(Result::ok) {
        let entry: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{entry}"
        );
        if entry["message"] == "keygate is serving" {
            serving = Some(entry);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let serving = serving.expect("the ready line");
    assert!(
        serving["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{serving}"
    );
}
