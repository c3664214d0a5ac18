//! The wasmtime flavour on `wasmtime serve` 48.0.8, started by the exported `serve.sh`.

use crate::export;
use crate::support::client::get;
use crate::support::wasmtime_serve::WasmtimeServe;
use crate::support::{AuthApi, Origin, basic_config};
use crate::two_origin_config;
use serde_json::json;

/// The configuration reaches the component intact through `serve.sh`'s shell quoting (a
/// consumer named with quotes, `$` and backticks), and the component serves both origins. The
/// scenarios themselves run on `wasmtime serve` in the `scenarios_wasmtime_serve` suite.
#[tokio::test]
async fn serve_sh_carries_the_configuration_through_shell_quoting() {
    let origin = Origin::start("api").await;
    let other = Origin::start("other").await;
    let auth = AuthApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = export(
        "wasmtime",
        &two_origin_config(&origin, &other, &auth),
        dir.path(),
    );
    let serve = WasmtimeServe::start(&out.join("serve.sh"));

    let reply = get(serve.addr, "/api/x", &[("apikey", "quote-key")]).await;
    assert_eq!(
        reply.status,
        200,
        "{}\n{}",
        reply.text(),
        serve.log().join("\n")
    );
    assert_eq!(
        origin.last().header("x-consumer-username"),
        Some(r#"o'brien "$HOME" `id`"#)
    );
    let reply = get(serve.addr, "/other/y", &[("apikey", "quote-key")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(other.last().uri, "/v2/y");
    assert_eq!(auth.calls(), 0, "a static key needs no auth API call");
}

/// `serve.sh` lets one instance serve requests in a row, so the in-instance key cache saves
/// auth calls for back-to-back requests; correctness does not depend on it.
#[tokio::test]
async fn wasmtime_serve_instances_remember_verdicts() {
    let origin = Origin::start("api").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({"consumer": {"username": "ann"}}));
    let dir = tempfile::tempdir().unwrap();
    let out = export("wasmtime", &basic_config(&origin, &auth), dir.path());
    let serve = WasmtimeServe::start(&out.join("serve.sh"));
    const REQUESTS: usize = 10;
    for _ in 0..REQUESTS {
        let reply = get(serve.addr, "/api/x", &[("apikey", "good-key")]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(origin.hits(), REQUESTS);
    // Sequential requests land on the idle instance (unless it idled out: then a new one asks
    // again), so most are answered from its cache.
    assert!(
        auth.calls() < REQUESTS / 2,
        "{} auth calls for {REQUESTS} sequential requests",
        auth.calls()
    );
}
