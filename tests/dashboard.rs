//! The admin listener's dashboard in a real headless browser (Debian's `chromium`, which
//! `tests/run.sh` installs when missing): the page is loaded against a gateway under a little
//! traffic, and the DOM after its scripts ran must show the numbers `/admin/stats` counted, the
//! running component and the charts. Screenshots are kept under `target/` as test artefacts.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::client::get;
use support::{AuthApi, GatewayConfig, Origin, start_gateway};

/// Debian's `chromium` (or `KEYGATE_CHROMIUM`).
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYGATE_CHROMIUM") {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .expect("chromium is not installed: run tests/run.sh, or apt-get install chromium")
}

/// Where cargo writes: the test binary runs from `target/<profile>/deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps/<binary>")
        .to_path_buf()
}

/// Load `url` in headless chromium, letting the page's scripts run for 5 s of virtual time
/// (its timers fire without waiting; its fetches are waited for); `extra` adds switches. An
/// uncaught script error or a content-security-policy refusal fails the test.
async fn chromium_run(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("a chromium profile dir");
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless=new",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            // The page's console on stderr: its errors fail the test.
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), command.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let console = String::from_utf8_lossy(&output.stderr);
    for error in ["\"Uncaught ", "Content Security Policy", "Refused to "] {
        assert!(
            !console.contains(error),
            "the page failed ({error}):\n{console}"
        );
    }
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

async fn dump_dom(url: &str) -> String {
    chromium_run(url, &["--dump-dom".to_string()]).await
}

/// A screenshot of `url` at `width`x`height`, written to `target/<name>`.
async fn screenshot(url: &str, name: &str, (width, height): (u32, u32)) -> PathBuf {
    let path = target_dir().join(name);
    let _ = std::fs::remove_file(&path);
    chromium_run(
        url,
        &[
            format!("--screenshot={}", path.display()),
            format!("--window-size={width},{height}"),
        ],
    )
    .await;
    let png = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    println!("dashboard screenshot: {}", path.display());
    path
}

/// The text of the element carrying `attribute` (e.g. `id="req-total"`), up to its first child.
fn text_after(dom: &str, attribute: &str) -> String {
    let at = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("no element with {attribute} in the DOM:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').expect("the tag closes") + 1;
    let end = rest[start..].find('<').expect("an element follows") + start;
    rest[start..end].to_string()
}

/// The cell `field` of the row `row` (e.g. `<tr data-route="…">`) of the table `#table`.
fn cell(dom: &str, table: &str, row: &str, field: &str) -> String {
    let table_at = dom
        .find(&format!("id=\"{table}\""))
        .unwrap_or_else(|| panic!("no table {table} in the DOM:\n{dom}"));
    let table_end = dom[table_at..].find("</table>").expect("the table closes") + table_at;
    let rows = &dom[table_at..table_end];
    let at = rows
        .find(row)
        .unwrap_or_else(|| panic!("no row {row} in {table}:\n{rows}"));
    let end = rows[at..].find("</tr>").expect("the row closes") + at;
    text_after(&rows[at..end], &format!("data-field=\"{field}\""))
}

fn number(text: &str) -> f64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

/// The gateway under test: an auth API that knows `alice-key` (consumer `alice`), the static
/// consumer `static-user`, route `api-route` (`/api`) and a rate-limited route `limited` (two a
/// minute).
async fn gateway(origin: &Origin, auth: &AuthApi, server: &str) -> keygate::RunningGateway {
    auth.allow(
        "alice-key",
        json!({"consumer": {"id": "c-alice", "username": "alice"}}),
    );
    let config = GatewayConfig::basic(origin, auth)
        .admin()
        .server(server)
        .tables(
            "[[plugins]]\nname = \"rate-limiting\"\nroute = \"limited\"\n\
             [plugins.config]\nminute = 2\n",
        )
        .route("name = \"limited\"\npaths = [\"/limited\"]");
    start_gateway(&config.to_string()).await
}

/// 6 × 200 for alice (one auth call, then cached), 2 × 200 for the static consumer, 2 × 401
/// without a key and 1 × 401 with a key the auth API refuses, on `api-route`; on `limited`,
/// 2 allowed and 2 rejected with 429; one 404 that matched no route.
async fn traffic(addr: SocketAddr) {
    for _ in 0..6 {
        assert_eq!(
            get(addr, "/api/x", &[("apikey", "alice-key")]).await.status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            get(addr, "/api/x", &[("apikey", "static-key")])
                .await
                .status,
            200
        );
        assert_eq!(get(addr, "/api/x", &[]).await.status, 401);
    }
    assert_eq!(
        get(addr, "/api/x", &[("apikey", "unknown-key")])
            .await
            .status,
        401
    );
    for expected in [200, 200, 429, 429] {
        let status = get(addr, "/limited/x", &[("apikey", "alice-key")])
            .await
            .status;
        assert_eq!(status, expected);
    }
    assert_eq!(get(addr, "/nowhere", &[]).await.status, 404);
}

/// More requests on `api-route` until dropped (four 200s for alice, then a 401 without a key),
/// so the charts show rates while the browser watches.
struct Background(Arc<AtomicBool>);

impl Background {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        tokio::spawn(async move {
            for i in 0u64.. {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let key: &[(&str, &str)] = if i % 5 == 4 {
                    &[]
                } else {
                    &[("apikey", "alice-key")]
                };
                get(addr, "/api/x", key).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self(stop)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Everything the page must show for [`traffic`]; `busy`: with [`Background`] traffic, whose
/// rates must be drawn.
fn assert_rendered(dom: &str, sha256: &str, busy: bool) {
    assert!(
        dom.contains("<body data-state=\"live\""),
        "the page got its stats:\n{dom}"
    );
    let polled = dom
        .split("data-samples=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(number)
        .expect("data-samples on the body");
    assert!(
        polled >= 2.0,
        "the page refreshed at least once ({polled} answers)"
    );

    // Requests by route and class.
    let api = "<tr data-route=\"api-route\">";
    assert!(
        number(&cell(dom, "routes", api, "2xx")) >= 8.0,
        "{}",
        cell(dom, "routes", api, "2xx")
    );
    let unauthorized = number(&cell(dom, "routes", api, "4xx"));
    assert!(if busy {
        unauthorized >= 3.0
    } else {
        unauthorized == 3.0
    });
    assert_eq!(cell(dom, "routes", api, "5xx"), "0");
    assert!(number(&cell(dom, "routes", api, "total")) >= 11.0);
    assert!(
        !cell(dom, "routes", api, "rate").contains('–'),
        "a rate once two answers came"
    );
    let limited = "<tr data-route=\"limited\">";
    assert_eq!(
        (
            cell(dom, "routes", limited, "2xx"),
            cell(dom, "routes", limited, "4xx")
        ),
        ("2".into(), "2".into())
    );
    assert_eq!(
        cell(dom, "routes", "<tr data-route=\"(none)\">", "4xx"),
        "1"
    );
    assert!(number(&text_after(dom, "id=\"req-total\"")) >= 16.0);

    // Auth API: alice's key once, the unknown key once.
    assert_eq!(
        cell(dom, "auth-codes", "<tr data-code=\"200\">", "total"),
        "1",
        "one auth call for alice, then the cache"
    );
    assert_eq!(
        cell(dom, "auth-codes", "<tr data-code=\"401\">", "total"),
        "1"
    );
    assert_eq!(text_after(dom, "id=\"auth-total\""), "2");
    assert!(text_after(dom, "id=\"auth-p50\"").parse::<f64>().is_ok());

    // Key cache: hits for alice after the first call.
    let hit = text_after(dom, "id=\"cache-hit-all\"");
    assert!(
        hit.ends_with(" %") && number(hit.trim_end_matches(" %")) > 50.0,
        "{hit}"
    );

    // Rate limiting.
    assert_eq!(text_after(dom, "id=\"rl-limited\""), "2");
    assert_eq!(
        cell(dom, "rl-routes", "<tr data-route=\"limited\">", "limited"),
        "2"
    );

    // Latency: a number for each route that answered.
    assert!(
        number(&cell(
            dom,
            "latency",
            "<tr data-route=\"api-route\">",
            "p99"
        )) > 0.0
    );

    // Top consumers: alice first.
    let consumers = dom.find("id=\"consumers\"").expect("the consumers list");
    let alice = dom[consumers..]
        .find("data-consumer=\"alice\"")
        .expect("alice is listed");
    let static_user = dom[consumers..]
        .find("data-consumer=\"static-user\"")
        .expect("the static consumer is listed");
    assert!(alice < static_user, "most requests first");

    // Running component and config.
    assert_eq!(text_after(dom, "id=\"component-sha\""), sha256);
    assert_eq!(text_after(dom, "id=\"head-sha\""), &sha256[..12]);
    assert!(!text_after(dom, "id=\"config-revision\"").contains('–'));

    // The charts: a line per status class, drawn when it had a rate; p50 and p99.
    let line = |series: &str| {
        let at = dom
            .find(&format!("<polyline data-series=\"{series}\" points=\""))
            .unwrap_or_else(|| panic!("no {series} line in the charts:\n{dom}"));
        let points = dom[at..].split("points=\"").nth(1).unwrap();
        points[..points.find('"').unwrap()].to_string()
    };
    for series in ["2xx", "3xx", "4xx", "5xx", "error", "p50", "p99"] {
        line(series);
    }
    if busy {
        for series in ["2xx", "4xx"] {
            assert!(line(series).contains(','), "the {series} rate is drawn");
        }
    }
}

#[tokio::test]
async fn the_dashboard_shows_the_gateways_numbers_in_a_real_browser() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let gw = gateway(&origin, &auth, "").await;
    let admin = gw.admin_addr.unwrap();
    traffic(gw.addr).await;
    let status = get(admin, "/admin/status", &[]).await.json();
    let sha256 = status["component"]["sha256"].as_str().unwrap().to_string();

    let page = get(admin, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let stats = get(admin, "/admin/stats", &[]).await;
    assert_eq!(stats.status, 200);
    let stats = stats.json();
    assert_eq!(stats["component"]["sha256"], sha256.as_str());
    assert_eq!(stats["rate_limit"]["limited"], 2);

    // A reload through the admin API: the page shows its result.
    let reload = support::send(
        admin,
        support::request("POST", admin, "/admin/reload")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reload.status, 200, "{}", reload.text());

    let url = format!("http://{admin}/");
    let dom = dump_dom(&url).await;
    assert_rendered(&dom, &sha256, false);
    assert_eq!(text_after(&dom, "id=\"reload-result\""), "ok");
    assert!(text_after(&dom, "id=\"reload-when\"").starts_with("(admin API, "));
    assert_eq!(text_after(&dom, "id=\"reload-count\""), "1");

    let _traffic = Background::start(gw.addr);
    let laptop = screenshot(&url, "dashboard.png", (1280, 900)).await;
    let phone = screenshot(&url, "dashboard-phone.png", (390, 844)).await;
    assert!(laptop.exists() && phone.exists());
    assert_rendered(&dump_dom(&url).await, &sha256, true);
}

#[tokio::test]
async fn with_an_admin_token_the_page_loads_and_the_stats_need_the_token() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let gw = gateway(&origin, &auth, "admin_token = \"s3cret\"").await;
    let admin = gw.admin_addr.unwrap();
    traffic(gw.addr).await;
    let bearer = [("authorization", "Bearer s3cret")];
    let status = get(admin, "/admin/status", &bearer).await.json();
    let sha256 = status["component"]["sha256"].as_str().unwrap().to_string();

    let page = get(admin, "/", &[]).await;
    assert_eq!(page.status, 200, "the page holds no data: no token needed");
    assert!(page.text().contains("<form id=\"unlock\"") && page.text().contains("sessionStorage"));
    assert_eq!(get(admin, "/admin/stats", &[]).await.status, 401);
    let wrong = [("authorization", "Bearer guess")];
    assert_eq!(get(admin, "/admin/stats", &wrong).await.status, 401);
    assert_eq!(get(admin, "/admin/stats", &bearer).await.status, 200);

    // Without the token the page loads and asks for it (the form in its header).
    let dom = dump_dom(&format!("http://{admin}/")).await;
    assert!(dom.contains("<body data-state=\"locked\""), "{dom}");
    assert_eq!(text_after(&dom, "id=\"state\""), "admin token needed");
    assert_eq!(
        text_after(&dom, "id=\"req-total\""),
        "–",
        "no numbers without the token"
    );
    screenshot(
        &format!("http://{admin}/"),
        "dashboard-locked.png",
        (390, 844),
    )
    .await;

    // The token in the URL fragment (never sent to the server) stands for the typed one.
    let dom = dump_dom(&format!("http://{admin}/#token=s3cret")).await;
    assert_rendered(&dom, &sha256, false);
    assert_eq!(text_after(&dom, "id=\"reload-result\""), "none since start");
    let path = screenshot(
        &format!("http://{admin}/#token=s3cret"),
        "dashboard-token.png",
        (1280, 900),
    )
    .await;
    assert!(path.exists());
}

#[tokio::test]
async fn recent_latencies_cover_at_least_a_second_whoever_asks() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let gw = gateway(&origin, &auth, "").await;
    let admin = gw.admin_addr.unwrap();
    let stats = || async { get(admin, "/admin/stats", &[]).await.json() };

    let first = stats().await;
    let started = tokio::time::Instant::now();
    assert_eq!(first["latency_ms"]["window_s"], serde_json::Value::Null);
    assert_eq!(first["requests"]["total"], 0);
    traffic(gw.addr).await;
    // The window's shortest length is the point here: nothing to wait for but the clock.
    tokio::time::sleep_until(started + Duration::from_secs(1)).await;

    // The first viewer, then a second one right after it: both see the traffic of the last
    // second and more, not the few milliseconds between them.
    for _ in 0..2 {
        let stats = stats().await;
        let latency = &stats["latency_ms"];
        assert!(latency["window_s"].as_f64().unwrap() >= 1.0, "{latency}");
        let api = latency["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|route| route["route"] == "api-route")
            .expect("api-route's latencies");
        for quantile in ["p50", "p99", "recent_p50", "recent_p99"] {
            assert!(api["gateway"][quantile].as_f64().unwrap() > 0.0, "{api}");
        }
        assert!(
            api["upstream"]["recent_p99"].as_f64().unwrap() > 0.0,
            "{api}"
        );
        assert_eq!(stats["requests"]["total"], 16, "counts since the start");
        assert_eq!(stats["top_consumers"][0]["consumer"], "alice");
        assert_eq!(stats["top_consumers"][0]["requests"], 10, "429s included");
    }
}
