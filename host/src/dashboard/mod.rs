//! The admin listener's live dashboard: `GET /` serves one page built into the binary (no
//! network access besides its own `GET /admin/stats`), which polls [`stats()`] every second and
//! draws the rates from the difference of two successive answers.
//!
//! The page holds no data, so it is served without the admin token; the stats need it. With
//! `server.admin_token` set, the stats answer the page 401 and it asks for the token once (a
//! form in its header; or it reads it from the URL fragment, `/#token=…`, which never reaches
//! a server), keeps it in the tab's `sessionStorage`, and sends it as `Authorization: Bearer …`.

pub mod stats;

use crate::metrics::histogram::Tally;
use crate::metrics::{Latencies, Metrics};
use crate::responses::{ResponseBody, full_body};
use crate::runtime::Gateway;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The page: HTML, CSS and script in one file, no build step.
pub const PAGE: &str = include_str!("page.html");

/// How many consumers the stats list.
const TOP_CONSUMERS: usize = 10;

/// The shortest interval the recent latency quantiles cover (but on the first seconds): a
/// second viewer polling between the first one's requests does not shrink the window.
const MIN_WINDOW: Duration = Duration::from_secs(1);

/// `GET /`: the page. It may be framed by nothing, runs no script but its own, and talks to
/// nothing but this listener.
pub fn page() -> hyper::Response<ResponseBody> {
    hyper::Response::builder()
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .header(
            http::header::CONTENT_SECURITY_POLICY,
            content_security_policy(),
        )
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::REFERRER_POLICY, "no-referrer")
        .body(full_body(PAGE))
        .expect("static parts form a valid response")
}

/// The page's one inline script is allowed by its hash, so nothing else can run in the tab
/// that holds the admin token. (Styles are inline too, and the script sets some.)
fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            base64(&Sha256::digest(script.as_bytes()))
        )
    })
}

/// Standard base64, padded (a CSP hash source).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The latency histograms as a stats answer found them.
struct Snapshot {
    at: Instant,
    latencies: Latencies,
}

/// Snapshots kept per gateway, at least [`MIN_WINDOW`] apart: the newest one at least that old
/// starts the window of the next answer, which so covers one to two windows however many
/// viewers poll.
const SNAPSHOTS: usize = 3;

/// The snapshots of each running gateway (a process may run several, as the tests do); an
/// entry goes with its gateway.
static SNAPSHOTS_BY_GATEWAY: Mutex<Vec<(Weak<Gateway>, VecDeque<Snapshot>)>> =
    Mutex::new(Vec::new());

/// `GET /admin/stats`: everything counted since the start, for the page to diff, plus latency
/// quantiles over the whole run and over the last window. `status` is what
/// `GET /admin/status` answers; its component, entry, config, reload and cluster parts are
/// passed on as they are.
///
/// ```json
/// {
///   "at_unix_ms": 1764495600123,
///   "requests": {"total": 9, "in_flight": 0,
///                "classes": {"2xx": 6, "3xx": 0, "4xx": 3, "5xx": 0, "error": 0},
///                "codes": {"200": 6, "401": 3},
///                "routes": [{"route": "api-route", "total": 9, "classes": {…}, "codes": {…}}]},
///   "upstream": {"total": 6, "classes": {…}, "codes": {…},
///                "services": [{"service": "api", "total": 6, "classes": {…}, "codes": {…}}]},
///   "auth_api": {"total": 2, "classes": {…}, "codes": {"200": 1, "error": 1},
///                "shed": 0, "skipped": 0, "down": false},
///   "key_cache": {"entries": 1, "hit_ratio": 0.8,
///                 "lookups": {"fresh": 4, "stale": 0, "miss": 1, "coalesced": 0}},
///   "rate_limit": {"allowed": 5, "limited": 2, "counters_unavailable": 0,
///                  "routes": [{"route": "api-route", "allowed": 5, "limited": 2,
///                              "counters_unavailable": 0}]},
///   "latency_ms": {"window_s": 1.02,
///                  "routes": [{"route": "api-route",
///                              "gateway": {"p50": 0.4, "p99": 2.1,
///                                          "recent_p50": 0.4, "recent_p99": 0.9},
///                              "upstream": {…}}],
///                  "auth_api": {…}},
///   "top_consumers": [{"consumer": "alice", "requests": 6}],
///   "guest_failures": {"trap": 1},
///   "component": {"source": "…", "sha256": "…", "loaded_at_unix": 1764495500,
///                 "loaded_from": "compiled", "exports_policy": true},
///   "entry": "policy",
///   "config": {"revision": "…", "file": "/etc/keygate.toml", "services": ["api"]},
///   "reload": {"reloads": 1, "rejected": 0, "last_trigger": "file change",
///              "last_attempt_unix": 1764495590, "last_duration_ms": 80, "last_error": null},
///   "cluster": null
/// }
/// ```
///
/// Every count is cumulative since the start (rates are the page's business); a quantile is
/// `null` without observations. The `recent_` quantiles cover the last `window_s` seconds:
/// one to two seconds once answers have been asked for a while, at least once a second (the
/// page does), however many viewers ask; `null` on the first call.
pub fn stats(gateway: &Arc<Gateway>, status: &Value) -> Value {
    let metrics: &Metrics = &gateway.metrics;
    let counts = stats::Counts::from_exposition(&metrics.render(gateway.key_cache().len()));
    let latencies = metrics.latencies();
    let top_consumers: Vec<Value> = metrics
        .top_consumers(TOP_CONSUMERS)
        .into_iter()
        .map(|(consumer, requests)| json!({"consumer": consumer, "requests": requests}))
        .collect();
    let latency = latency_json(gateway, latencies);
    let at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    json!({
        "at_unix_ms": at_unix_ms,
        "requests": counts.requests(),
        "upstream": counts.upstream(),
        "auth_api": counts.auth_api(),
        "key_cache": counts.key_cache(),
        "rate_limit": counts.rate_limit(),
        "latency_ms": latency,
        "top_consumers": top_consumers,
        "guest_failures": counts.guest_failures(),
        "component": status["component"],
        "entry": status["entry"],
        "config": status["config"],
        "reload": status["reload"],
        "cluster": status["cluster"],
    })
}

/// `latency_ms`: quantiles over the whole run and over the window since the newest snapshot
/// at least [`MIN_WINDOW`] old (or the oldest); `now` is kept as a snapshot when the newest is
/// that old.
fn latency_json(gateway: &Arc<Gateway>, now: Latencies) -> Value {
    let mut all = SNAPSHOTS_BY_GATEWAY
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.retain(|(owner, _)| owner.strong_count() > 0);
    let index = match all
        .iter()
        .position(|(owner, _)| std::ptr::eq(owner.as_ptr(), Arc::as_ptr(gateway)))
    {
        Some(index) => index,
        None => {
            all.push((Arc::downgrade(gateway), VecDeque::new()));
            all.len() - 1
        }
    };
    let snapshots = &mut all[index].1;
    let start = snapshots
        .iter()
        .rev()
        .find(|s| s.at.elapsed() >= MIN_WINDOW)
        .or_else(|| snapshots.front());
    let earlier =
        |route: &str| start.and_then(|s| s.latencies.routes.iter().find(|(r, ..)| r == route));
    let mut routes: Vec<Value> = now
        .routes
        .iter()
        .map(|(route, total, upstream)| {
            let before = earlier(route);
            json!({
                "route": route,
                "gateway": quantiles(total, start.map(|_| before.map(|(_, t, _)| t))),
                "upstream": quantiles(upstream, start.map(|_| before.map(|(_, _, u)| u))),
            })
        })
        .collect();
    routes.sort_by(|a, b| a["route"].as_str().cmp(&b["route"].as_str()));
    let value = json!({
        "window_s": start.map(|s| (s.at.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
        "routes": routes,
        "auth_api": quantiles(&now.auth_api, start.map(|s| Some(&s.latencies.auth_api))),
    });
    if snapshots
        .back()
        .is_none_or(|s| s.at.elapsed() >= MIN_WINDOW)
    {
        snapshots.push_back(Snapshot {
            at: Instant::now(),
            latencies: now,
        });
        if snapshots.len() > SNAPSHOTS {
            snapshots.pop_front();
        }
    }
    value
}

/// `{"p50", "p99", "recent_p50", "recent_p99"}` of a histogram; `earlier` is its baseline
/// (`None`: no window yet; `Some(None)`: the histogram is newer than the baseline).
fn quantiles(now: &Tally, earlier: Option<Option<&Tally>>) -> Value {
    let recent = earlier.map(|earlier| match earlier {
        Some(earlier) => now.since(earlier),
        None => now.clone(),
    });
    // Interpolated within buckets: microseconds are precision enough.
    let ms = |tally: Option<&Tally>, q: f64| {
        tally
            .and_then(|t| t.quantile(q))
            .map(|v| (v * 1000.0).round() / 1000.0)
    };
    json!({
        "p50": ms(Some(now), 0.5),
        "p99": ms(Some(now), 0.99),
        "recent_p50": ms(recent.as_ref(), 0.5),
        "recent_p99": ms(recent.as_ref(), 0.99),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads_as_csp_hashes_expect() {
        for (bytes, encoded) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (&[0xfb, 0xff], "+/8="),
        ] {
            assert_eq!(super::base64(bytes), encoded);
        }
        assert!(super::content_security_policy().contains("script-src 'sha256-"));
    }

    #[test]
    fn the_page_is_self_contained() {
        let page = super::PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(page.starts_with("<!doctype html>"));
        for remote in ["http://", "https://", "<link", " src=", "@import", "url("] {
            assert!(
                !page.contains(remote),
                "the page loads nothing else: {remote}"
            );
        }
        assert!(page.contains("/admin/stats") && page.contains("sessionStorage"));
        assert_eq!(
            page.matches("<script").count(),
            1,
            "the one script the CSP allows"
        );
    }
}
