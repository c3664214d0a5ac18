//! Scenarios: `https://` origins and an `https://` auth API. Certificates are checked against
//! a service's `ca_file` (else the system's roots, which never trust the test's own CA), or
//! not at all with `tls_verify = false`; a failed handshake is Kong's 502, nothing is ever
//! sent in clear, and TLS connections are pooled like plain ones. Each origin scenario runs on
//! the fast path (the host forwards) and the portable one (the guest's `wasi:http` handler).

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use support::client::{get, open, request};
use support::servers::download_sum;
use support::tls::TestPki;
use support::{AuthApi, GatewayConfig, Origin, start_gateway};

const KEY: (&str, &str) = ("apikey", "alice-key");

/// Kong's words for an origin that gave no valid answer.
const BAD_GATEWAY: &str = "An invalid response was received from the upstream server";

#[derive(Debug, Clone, Copy)]
enum Path {
    /// The guest decides, the host forwards.
    Fast,
    /// `[guest] entry = "wasi-http"`: the guest forwards through the host's outgoing HTTP.
    Portable,
}

const BOTH: [Path; 2] = [Path::Fast, Path::Portable];

/// One service `api` on `url` with `settings`, route `/api`, consumer `alice` (`alice-key`);
/// one request thread, so pooled connections are counted exactly.
fn config(path: Path, url: &str, settings: &[String]) -> GatewayConfig {
    let mut config = GatewayConfig::new()
        .server("workers = 1")
        .consumer("alice", None, &["alice-key"])
        .service("api", url);
    for setting in settings {
        config = config.service_setting(setting);
    }
    config = config.route("name = \"api-route\"\npaths = [\"/api\"]");
    match path {
        Path::Fast => config,
        Path::Portable => config.tables("[guest]\nentry = \"wasi-http\""),
    }
}

fn ca_file(pki: &TestPki) -> String {
    format!("ca_file = {:?}", pki.ca_cert.display().to_string())
}

fn https_url(origin: &Origin) -> String {
    format!("https://{}/v1", origin.addr)
}

#[tokio::test]
async fn a_valid_key_gets_the_https_origins_answer_with_ca_file() {
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    for path in BOTH {
        let origin = Origin::start_tls("secure", &cert).await;
        let gw =
            start_gateway(&config(path, &https_url(&origin), &[ca_file(&pki)]).to_string()).await;
        let reply = get(gw.addr, "/api/items?page=2", &[KEY]).await;
        assert_eq!(reply.status, 200, "{path:?}: {}", reply.text());
        assert_eq!(reply.json()["origin"], "secure", "{path:?}");
        let seen = origin.last();
        assert_eq!(seen.uri, "/v1/items?page=2", "{path:?}");
        // The Host header is the service's, as for an http origin.
        assert_eq!(
            seen.header("host"),
            Some(origin.addr.to_string().as_str()),
            "{path:?}"
        );
        assert_eq!(seen.header("apikey"), Some("alice-key"), "{path:?}");
        assert_eq!(origin.listening().handshakes(), 1, "{path:?}");
        assert_eq!(origin.listening().plaintext(), 0, "{path:?}");
        let no_names: [&str; 0] = [];
        assert_eq!(
            origin.listening().server_names(),
            no_names,
            "{path:?}: no SNI for an IP address"
        );
    }
}

#[tokio::test]
async fn an_origin_the_system_roots_do_not_trust_is_a_502_never_sent_in_clear() {
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    for path in BOTH {
        let origin = Origin::start_tls("untrusted", &cert).await;
        let gw = start_gateway(&config(path, &https_url(&origin), &[]).to_string()).await;
        let captured = Captured::default();
        let _guard = captured.install();
        let reply = get(
            gw.addr,
            "/api/items",
            &[KEY, ("accept", "application/json")],
        )
        .await;
        assert_eq!(reply.status, 502, "{path:?}: {}", reply.text());
        assert_eq!(reply.json()["message"], BAD_GATEWAY, "{path:?}");
        assert_eq!(origin.hits(), 0, "{path:?}");
        assert_eq!(origin.listening().handshakes(), 0, "{path:?}");
        assert_eq!(
            origin.listening().plaintext(),
            0,
            "{path:?}: nothing may be sent in clear"
        );
        assert!(
            origin.connections() >= 1,
            "{path:?}: the gateway did connect"
        );
        // Logged, naming the service and why the certificate was refused.
        let lines = captured.lines();
        assert!(
            lines.iter().any(|line| line.contains(" WARN ")
                && line.contains("TLS handshake with service \"api\"")
                && line.contains("UnknownIssuer")),
            "{path:?}: {lines:#?}"
        );
        // Counted as an origin that gave no answer.
        let metrics = gw.gateway.render_metrics();
        assert!(
            metrics.contains("keygate_upstream_responses_total{service=\"api\",code=\"error\"} 1"),
            "{path:?}: {metrics}"
        );
    }
}

#[tokio::test]
async fn tls_verify_false_accepts_a_certificate_nobody_trusts() {
    let mut pki = TestPki::new();
    let cert = pki.issue_only(&["elsewhere.example"]);
    for path in BOTH {
        let origin = Origin::start_tls("self-signed", &cert).await;
        let gw = start_gateway(
            &config(path, &https_url(&origin), &["tls_verify = false".into()]).to_string(),
        )
        .await;
        let reply = get(gw.addr, "/api/items", &[KEY]).await;
        assert_eq!(reply.status, 200, "{path:?}: {}", reply.text());
        assert_eq!(reply.json()["origin"], "self-signed", "{path:?}");
        assert_eq!(origin.listening().handshakes(), 1, "{path:?}");
    }
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_502() {
    let mut pki = TestPki::new();
    let cert = pki.issue_only(&["elsewhere.example"]);
    for path in BOTH {
        let origin = Origin::start_tls("impostor", &cert).await;
        // The CA is trusted: only the name is wrong.
        let gw =
            start_gateway(&config(path, &https_url(&origin), &[ca_file(&pki)]).to_string()).await;
        let reply = get(
            gw.addr,
            "/api/items",
            &[KEY, ("accept", "application/json")],
        )
        .await;
        assert_eq!(reply.status, 502, "{path:?}: {}", reply.text());
        assert_eq!(reply.json()["message"], BAD_GATEWAY, "{path:?}");
        assert_eq!(origin.hits(), 0, "{path:?}");
        assert_eq!(origin.listening().plaintext(), 0, "{path:?}");
    }
}

/// An https origin whose handshakes keep failing is paused like one that refuses connections:
/// after a few failures its requests get the 502 at once, without a handshake each.
#[tokio::test]
async fn an_origin_whose_handshakes_keep_failing_is_not_dialled_by_every_request() {
    use keygate::capabilities::breaker::FAILURES_TO_OPEN;
    let mut pki = TestPki::new();
    let cert = pki.issue_only(&["elsewhere.example"]);
    let origin = Origin::start_tls("impostor", &cert).await;
    let gw =
        start_gateway(&config(Path::Fast, &https_url(&origin), &[ca_file(&pki)]).to_string()).await;
    let requests = FAILURES_TO_OPEN as usize + 10;
    for _ in 0..requests {
        let reply = get(gw.addr, "/api/items", &[KEY]).await;
        assert_eq!(reply.status, 502, "{}", reply.text());
    }
    // A pause may end during the run on a slow machine: one more try each time.
    assert!(
        origin.connections() <= FAILURES_TO_OPEN as usize + 2,
        "{} connections for {requests} requests",
        origin.connections()
    );
}

#[tokio::test]
async fn the_server_name_sent_and_checked_is_the_urls_host() {
    let mut pki = TestPki::new();
    // For localhost only: a connection checked against 127.0.0.1 would be refused.
    let cert = pki.issue_only(&["localhost"]);
    for path in BOTH {
        let origin = Origin::start_tls("named", &cert).await;
        let url = format!("https://localhost:{}/v1", origin.addr.port());
        let gw = start_gateway(&config(path, &url, &[ca_file(&pki)]).to_string()).await;
        let reply = get(gw.addr, "/api/items", &[KEY]).await;
        assert_eq!(reply.status, 200, "{path:?}: {}", reply.text());
        assert_eq!(
            origin.listening().server_names(),
            ["localhost"],
            "{path:?}: SNI"
        );
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_tls_connection() {
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    for path in BOTH {
        let origin = Origin::start_tls("pooled", &cert).await;
        let gw =
            start_gateway(&config(path, &https_url(&origin), &[ca_file(&pki)]).to_string()).await;
        for _ in 0..6 {
            let reply = get(gw.addr, "/api/items", &[KEY]).await;
            assert_eq!(reply.status, 200, "{path:?}: {}", reply.text());
        }
        assert_eq!(origin.hits(), 6, "{path:?}");
        assert_eq!(
            (origin.connections(), origin.listening().handshakes()),
            (1, 1),
            "{path:?}: 6 requests, one connection"
        );
    }
}

#[tokio::test]
async fn a_reload_that_keeps_the_tls_settings_keeps_the_pooled_connection() {
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    for path in BOTH {
        let origin = Origin::start_tls("reloaded", &cert).await;
        let gw =
            start_gateway(&config(path, &https_url(&origin), &[ca_file(&pki)]).to_string()).await;
        for round in 0..3 {
            for _ in 0..2 {
                let reply = get(gw.addr, "/api/items", &[KEY]).await;
                assert_eq!(reply.status, 200, "{path:?}: {}", reply.text());
            }
            if round < 2 {
                gw.reloader.reload("test").await.expect("reloaded");
            }
        }
        assert_eq!(origin.hits(), 6, "{path:?}");
        assert_eq!(
            (origin.connections(), origin.listening().handshakes()),
            (1, 1),
            "{path:?}: two reloads, one connection"
        );
    }
}

#[tokio::test]
async fn a_post_body_is_streamed_to_the_https_origin() {
    const CHUNK: u64 = 64 * 1024;
    const CHUNKS: u64 = 24;
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    for path in BOTH {
        let origin = Origin::start_tls("upload", &cert).await;
        let gw =
            start_gateway(&config(path, &https_url(&origin), &[ca_file(&pki)]).to_string()).await;
        // The download pattern, in chunks, without Content-Length: streamed, not buffered.
        let chunks = (0..CHUNKS).map(|i| {
            let data: Vec<u8> = (i * CHUNK..(i + 1) * CHUNK)
                .map(|b| (b % 251) as u8)
                .collect();
            Ok::<_, Infallible>(Frame::data(Bytes::from(data)))
        });
        let body = StreamBody::new(futures::stream::iter(chunks));
        let upload = request("POST", gw.addr, "/api/upload")
            .header(KEY.0, KEY.1)
            .body(body)
            .unwrap();
        let response = open(gw.addr, upload).await;
        assert_eq!(response.status(), 200, "{path:?}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let n = CHUNK * CHUNKS;
        assert_eq!(
            answer,
            serde_json::json!({"bytes": n, "sum": download_sum(n)}),
            "{path:?}"
        );
        assert_eq!(origin.listening().plaintext(), 0, "{path:?}");
    }
}

/// `[auth_api]` on `auth` over https, with `settings`.
fn with_https_auth_api(config: GatewayConfig, auth: &AuthApi, settings: &str) -> GatewayConfig {
    config.tables(format_args!(
        "[auth_api]\nurl = \"https://{}/validate?apikey={{key}}\"\ntimeout = \"2s\"\n\
         cache_ttl = \"5m\"\nnegative_ttl = \"30s\"\n{settings}",
        auth.addr
    ))
}

#[tokio::test]
async fn an_https_auth_api_with_ca_file_validates_a_key_which_is_then_cached() {
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    for path in BOTH {
        let auth = AuthApi::start_tls(&cert).await;
        auth.allow(
            "remote-key",
            serde_json::json!({"consumer": {"username": "bob"}}),
        );
        let origin = Origin::start("plain").await;
        let config = with_https_auth_api(
            config(path, &format!("http://{}/v1", origin.addr), &[]),
            &auth,
            &ca_file(&pki),
        );
        let gw = start_gateway(&config.to_string()).await;
        for _ in 0..3 {
            let reply = get(gw.addr, "/api/items", &[("apikey", "remote-key")]).await;
            assert_eq!(reply.status, 200, "{path:?}: {}", reply.text());
        }
        assert_eq!(
            origin.last().header("x-consumer-username"),
            Some("bob"),
            "{path:?}"
        );
        assert_eq!(auth.calls(), 1, "{path:?}: the verdict is cached");
        let unknown = get(gw.addr, "/api/items", &[("apikey", "nobody")]).await;
        assert_eq!(unknown.status, 401, "{path:?}: {}", unknown.text());
        assert_eq!(auth.calls(), 2, "{path:?}");
    }
}

#[tokio::test]
async fn an_https_auth_api_whose_certificate_fails_is_an_unavailable_one() {
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    let auth = AuthApi::start_tls(&cert).await;
    auth.allow(
        "remote-key",
        serde_json::json!({"consumer": {"username": "bob"}}),
    );
    let origin = Origin::start("plain").await;
    // The system's roots: the test CA is not among them.
    let config = with_https_auth_api(
        config(Path::Fast, &format!("http://{}/v1", origin.addr), &[]),
        &auth,
        "",
    );
    let gw = start_gateway(&config.to_string()).await;
    let reply = get(gw.addr, "/api/items", &[("apikey", "remote-key")]).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(auth.calls(), 0, "no request reached it");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn an_https_upstream_target_is_called_over_tls() {
    let mut pki = TestPki::new();
    let cert = pki.issue(&[]);
    for path in BOTH {
        let origin = Origin::start_tls("target", &cert).await;
        let config =
            config(path, "https://billing.upstream/v1", &[ca_file(&pki)]).tables(format_args!(
                "[[upstreams]]\nname = \"billing.upstream\"\ntargets = [{{ target = \"{}\" }}]",
                origin.addr
            ));
        let gw = start_gateway(&config.to_string()).await;
        let reply = get(gw.addr, "/api/items", &[KEY]).await;
        assert_eq!(reply.status, 200, "{path:?}: {}", reply.text());
        assert_eq!(origin.last().header("host"), Some("billing.upstream"));
        assert_eq!(origin.listening().handshakes(), 1, "{path:?}");
    }
}

#[test]
fn a_ca_file_that_cannot_be_read_or_parsed_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let text = |ca_file: &std::path::Path| {
        config(Path::Fast, "https://127.0.0.1:9/v1", &[])
            .service_setting(format_args!(
                "ca_file = {:?}",
                ca_file.display().to_string()
            ))
            .to_string()
    };
    let missing = dir.path().join("missing.pem");
    let err = keygate::config::parse(&text(&missing), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("services[0].ca_file: cannot read") && err.contains("missing.pem"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let err = keygate::config::parse(&text(&garbage), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("services[0].ca_file:") && err.contains("no CERTIFICATE"),
        "{err}"
    );
    // Relative to the config file, as the component is.
    let pki = TestPki::new();
    std::fs::copy(&pki.ca_cert, dir.path().join("ca.pem")).unwrap();
    let relative = text(std::path::Path::new("ca.pem"));
    keygate::config::parse(&relative, Some(dir.path())).expect("a relative ca_file");
    assert!(keygate::config::parse(&relative, None).is_err());
    // An https service with the system's roots, and one that trusts anything, are accepted.
    keygate::config::parse(
        &config(Path::Fast, "https://example.com/v1", &[]).to_string(),
        None,
    )
    .expect("an https service");
    let auth = "[auth_api]\nurl = \"https://auth.example.com/v?k={key}\"\ntls_verify = false";
    keygate::config::parse(
        &config(Path::Fast, "https://example.com", &[])
            .tables(auth)
            .to_string(),
        None,
    )
    .expect("an https auth API");
}

/// What the gateway logs on this thread (`workers = 1`: its requests run on the test's own
/// runtime thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("keygate=warn"))
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn kong_tls_verify_is_imported_and_what_keygate_cannot_map_is_reported() {
    let kong = r#"
_format_version: "3.0"
services:
  - name: checked
    url: https://billing.example.com/v1
    tls_verify: true
    tls_verify_depth: 4
    ca_certificates: ["2a6b7c8d-0000-4000-8000-000000000001"]
    client_certificate: {id: "2a6b7c8d-0000-4000-8000-000000000002"}
    routes: [{name: checked, paths: ["/checked"]}]
  - name: unchecked
    protocol: https
    host: legacy.example.com
    port: 8443
    tls_verify: false
    routes: [{name: unchecked, paths: ["/unchecked"]}]
  - name: kong-default
    url: https://default.example.com
    routes: [{name: kong-default, paths: ["/default"]}]
  - name: plain
    url: http://plain.example.com
    tls_verify: true
    routes: [{name: plain, paths: ["/plain"]}]
"#;
    let imported = keygate::import_kong::convert(kong, |_| None, None).expect("imported");
    let config = keygate::config::parse(&imported.toml, None)
        .unwrap_or_else(|err| panic!("keygate check refuses it: {err:#}\n{}", imported.toml));
    let verify: Vec<(&str, bool)> = config
        .services
        .iter()
        .map(|service| (service.name.as_str(), service.tls_verify))
        .collect();
    assert_eq!(
        verify,
        [
            ("checked", true),
            ("unchecked", false),
            ("kong-default", true),
            ("plain", true)
        ]
    );
    let warnings = imported.warnings.join("\n");
    for expected in [
        "service \"checked\": tls_verify_depth ignored",
        "service \"checked\": ca_certificates ignored: keygate reads trusted CAs from a PEM file; set ca_file",
        "service \"checked\": client_certificate ignored",
        "service \"kong-default\": Kong does not check an https origin's certificate unless tls_verify is set",
    ] {
        assert!(warnings.contains(expected), "{expected:?} in:\n{warnings}");
    }
    assert!(
        !warnings.contains("service \"unchecked\"") && !warnings.contains("service \"plain\""),
        "{warnings}"
    );
}

#[test]
fn keygate_check_accepts_https_and_says_so_when_the_system_has_no_roots() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(
        &file,
        config(Path::Fast, "https://api.example.com/v1", &[]).to_string(),
    )
    .unwrap();
    let check = |env: &[(&str, &str)]| {
        std::process::Command::new(support::process::KEYGATE)
            .args(["check", "--config"])
            .arg(&file)
            .envs(env.iter().copied())
            .output()
            .expect("run keygate check")
    };
    let accepted = check(&[]);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    // rustls-native-certs reads only these when they are set.
    let nowhere = dir.path().join("no-roots-here");
    let nowhere = nowhere.to_str().unwrap();
    let refused = check(&[("SSL_CERT_FILE", nowhere), ("SSL_CERT_DIR", nowhere)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "services[0].url: https with the system's root certificates, but this system has none"
        ) && stderr.contains("set ca_file"),
        "{stderr}"
    );
}
