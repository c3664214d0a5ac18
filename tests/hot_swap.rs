//! Scenarios: the component and the config change while traffic flows; no request fails.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::client::get;
use support::{AuthApi, Origin};

const TAGGED: &str = env!("KEYGATE_TEST_TAGGED_WASM");

/// The tagged test component, answering with `x-guest-version: {version}`.
fn tagged(version: &str) -> Vec<u8> {
    let wasm = std::fs::read(TAGGED).unwrap();
    let (from, to) = (
        b"keygate-test-version=v1",
        format!("keygate-test-version={version}"),
    );
    let at = wasm
        .windows(from.len())
        .position(|w| w == from)
        .expect("marker in the component");
    let mut patched = wasm.clone();
    patched[at..at + from.len()].copy_from_slice(to.as_bytes());
    patched
}

/// Replace a file atomically, as deploy tools do.
fn replace(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

struct Deployment {
    dir: tempfile::TempDir,
    gateway: keygate::RunningGateway,
}

impl Deployment {
    /// Point the config file's services at `new` instead of `old` and wait until the gateway
    /// runs it (its revision is no longer `first`).
    async fn move_origin(&self, old: &Origin, new: &Origin, first: &serde_json::Value) {
        let text = std::fs::read_to_string(self.path("keygate.toml")).unwrap();
        replace(
            &self.path("keygate.toml"),
            text.replace(&old.addr.to_string(), &new.addr.to_string())
                .as_bytes(),
        );
        self.wait_until("the new config", |s| s["config"]["revision"] != *first)
            .await;
    }

    async fn start(config: &str, component: Option<&[u8]>) -> Self {
        support::init_logging();
        let dir = tempfile::tempdir().unwrap();
        if let Some(bytes) = component {
            std::fs::write(dir.path().join("component.wasm"), bytes).unwrap();
        }
        let config = format!(
            "{config}\n[guest]\ncache_dir = \"{}\"\n{}",
            support::cache_dir().display(),
            if component.is_some() {
                "component = \"component.wasm\"\n"
            } else {
                ""
            }
        );
        std::fs::write(dir.path().join("keygate.toml"), config).unwrap();
        let gateway = keygate::start_from_file(&dir.path().join("keygate.toml"))
            .await
            .expect("gateway starts");
        Self { dir, gateway }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn status(&self) -> serde_json::Value {
        get(self.gateway.admin_addr.unwrap(), "/admin/status", &[])
            .await
            .json()
    }

    /// `DELETE /admin/keys/{key}` (`key` as it stands in the path); the answer's JSON.
    async fn revoke(&self, key: &str) -> serde_json::Value {
        let admin = self.gateway.admin_addr.unwrap();
        let revoke = support::request("DELETE", admin, &format!("/admin/keys/{key}"))
            .body(Default::default())
            .unwrap();
        support::send(admin, revoke).await.json()
    }

    /// A gateway asking `auth` (its `[auth_api]` with `auth_api` added) with one request
    /// thread, so that repeated requests meet the decision it keeps for reuse.
    async fn one_thread(origin: &Origin, auth: &AuthApi, auth_api: &str) -> Self {
        let config = support::GatewayConfig::basic(origin, auth)
            .admin()
            .server("workers = 1")
            .to_string()
            .replace("[auth_api]\n", &format!("[auth_api]\n{auth_api}"));
        Self::start(&config, None).await
    }

    /// Poll the status until `done` holds (a readiness check; fails after 20 s).
    async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

const ADMIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";

/// One answered request: when it started, its status and the header that tells versions apart.
struct Answer {
    started: Instant,
    status: u16,
    tag: Option<String>,
}

/// `clients` keep-alive clients sending `path` until `stop`, then everything they saw.
async fn load(
    addr: SocketAddr,
    clients: usize,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    tag: &'static str,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> Vec<Answer> {
    let tasks = (0..clients).map(|_| {
        let stop = Arc::clone(&stop);
        let count = Arc::clone(&count);
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::SeqCst) {
                let mut request = hyper::Request::get(path).header("host", addr.to_string());
                for (name, value) in headers {
                    request = request.header(*name, *value);
                }
                let started = Instant::now();
                let (status, tag) = match sender
                    .send_request(request.body(Empty::<Bytes>::new()).unwrap())
                    .await
                {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let tag = response
                            .headers()
                            .get(tag)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let ok = response.into_body().collect().await.is_ok();
                        (if ok { status } else { 0 }, tag)
                    }
                    Err(_) => (0, None),
                };
                answers.push(Answer {
                    started,
                    status,
                    tag,
                });
                count.fetch_add(1, Ordering::SeqCst);
            }
            answers
        })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect()
}

/// Traffic running in the background while a test changes the gateway.
struct Load {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    clients: tokio::task::JoinHandle<Vec<Answer>>,
}

impl Load {
    fn start(
        addr: SocketAddr,
        path: &'static str,
        headers: &'static [(&'static str, &'static str)],
        tag: &'static str,
    ) -> Self {
        let (stop, count) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let clients = tokio::spawn(load(
            addr,
            32,
            path,
            headers,
            tag,
            Arc::clone(&stop),
            Arc::clone(&count),
        ));
        Self {
            stop,
            count,
            clients,
        }
    }

    /// Wait until `more` further requests have been answered (a count, not a sleep).
    async fn answered_more(&self, more: usize) {
        let target = self.count.load(Ordering::SeqCst) + more;
        while self.count.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::SeqCst);
        self.clients.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn component_swap_under_load_fails_no_request() {
    let deployment = Deployment::start(ADMIN, Some(&tagged("v1"))).await;
    let v2 = tagged("v2");
    let v2_sha = keygate::http_util::hex(&<sha2::Sha256 as sha2::Digest>::digest(&v2));
    let load = Load::start(deployment.gateway.addr, "/x", &[], "x-guest-version");

    load.answered_more(1000).await;
    let replaced = Instant::now();
    replace(&deployment.path("component.wasm"), &v2);
    deployment
        .wait_until("v2 to serve", |s| {
            s["component"]["sha256"] == v2_sha.as_str()
        })
        .await;
    let swapped = Instant::now();
    let swap_latency = swapped - replaced;
    load.answered_more(2000).await;
    let answers = load.stop().await;

    let failed = answers.iter().filter(|a| a.status != 200).count();
    let v1 = answers
        .iter()
        .filter(|a| a.tag.as_deref() == Some("v1"))
        .count();
    let v2 = answers
        .iter()
        .filter(|a| a.tag.as_deref() == Some("v2"))
        .count();
    println!(
        "component swap: {} requests, {failed} failed, {v1} by v1, {v2} by v2, file change -> v2 serving in {swap_latency:?}",
        answers.len()
    );
    assert_eq!(failed, 0);
    assert_eq!(v1 + v2, answers.len(), "every request answered by v1 or v2");
    assert!(v1 > 0 && v2 > 0);
    let late_v1 = answers
        .iter()
        .filter(|a| a.started > swapped && a.tag.as_deref() != Some("v2"))
        .count();
    assert_eq!(
        late_v1, 0,
        "requests started after the swap completed all saw v2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_components_are_rejected_while_the_old_one_serves() {
    let deployment = Deployment::start(ADMIN, Some(&tagged("v1"))).await;
    let load = Load::start(deployment.gateway.addr, "/x", &[], "x-guest-version");
    load.answered_more(300).await;

    replace(
        &deployment.path("component.wasm"),
        b"\0asm\x0d\0\x01\0 truncated garbage",
    );
    let status = deployment
        .wait_until("the corrupt file to be rejected", |s| {
            s["reload"]["rejected"] == 1
        })
        .await;
    let error = status["reload"]["last_error"].as_str().unwrap().to_string();
    assert!(
        error.contains("not a valid WebAssembly component"),
        "{error}"
    );

    let wrong_import = wat::parse_str(
        r#"(component (import "acme:missing/thing@1.0.0" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    replace(&deployment.path("component.wasm"), &wrong_import);
    let status = deployment
        .wait_until("the unlinkable component to be rejected", |s| {
            s["reload"]["rejected"] == 2
        })
        .await;
    let error = status["reload"]["last_error"].as_str().unwrap().to_string();
    assert!(
        error.contains("cannot be linked") && error.contains("acme:missing/thing"),
        "{error}"
    );

    load.answered_more(300).await;
    let answers = load.stop().await;
    assert_eq!(answers.iter().filter(|a| a.status != 200).count(), 0);
    assert!(
        answers.iter().all(|a| a.tag.as_deref() == Some("v1")),
        "the old component kept serving"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_swap_moves_a_route_to_another_origin() {
    let old = Origin::start("old").await;
    let new = Origin::start("new").await;
    let auth = AuthApi::start().await;
    let config = support::basic_config_with_admin(&old, &auth);
    let deployment = Deployment::start(&config, None).await;
    let first = deployment.status().await["config"]["revision"].clone();
    let headers: &'static [(&str, &str)] = &[("apikey", "static-key")];
    let load = Load::start(deployment.gateway.addr, "/api/x", headers, "x-origin");
    load.answered_more(500).await;

    deployment.move_origin(&old, &new, &first).await;
    let swapped = Instant::now();
    load.answered_more(1000).await;
    let answers = load.stop().await;

    assert_eq!(answers.iter().filter(|a| a.status != 200).count(), 0);
    assert!(
        answers
            .iter()
            .filter(|a| a.started > swapped)
            .all(|a| a.tag.as_deref() == Some("new"))
    );
    assert!(old.hits() > 0 && new.hits() > 0);
}

/// A forwarded request is decided and carried out under the component + config it started
/// with: a swap that moves its route while its body streams does not cut or redirect it.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_in_flight_finishes_from_its_origin_when_a_swap_moves_the_route() {
    const SIZE: u64 = 32 << 20;
    let old = Origin::start("old").await;
    let new = Origin::start("new").await;
    let auth = AuthApi::start().await;
    let config = support::basic_config_with_admin(&old, &auth);
    let deployment = Deployment::start(&config, None).await;
    let first = deployment.status().await["config"]["revision"].clone();
    assert_eq!(deployment.status().await["entry"], "policy");

    let request = support::request(
        "GET",
        deployment.gateway.addr,
        &format!("/api/download/{SIZE}"),
    )
    .header("apikey", "static-key")
    .body(Empty::<Bytes>::new())
    .unwrap();
    let response = support::client::open(deployment.gateway.addr, request).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0u64;
    let mut sum = 0u64;
    let mut add = |data: &[u8]| {
        received += data.len() as u64;
        sum = data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
    };
    // The first bytes are here: the download is under way, most of it still at the origin.
    let first_frame = body.frame().await.expect("a first frame").unwrap();
    add(first_frame.data_ref().expect("data"));

    deployment.move_origin(&old, &new, &first).await;
    let after = get(
        deployment.gateway.addr,
        "/api/x",
        &[("apikey", "static-key")],
    )
    .await;
    assert_eq!(after.header("x-origin"), Some("new"), "the swap has landed");

    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("the download is not cut").data_ref() {
            add(data);
        }
    }
    assert_eq!(received, SIZE);
    assert_eq!(sum, support::servers::download_sum(SIZE));
    assert_eq!(
        old.hits(),
        1,
        "the download came from the origin it was decided for"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_config_is_rejected_and_the_old_one_serves() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    let config = support::basic_config_with_admin(&origin, &auth);
    let deployment = Deployment::start(&config, None).await;
    let text = std::fs::read_to_string(deployment.path("keygate.toml")).unwrap();
    replace(
        &deployment.path("keygate.toml"),
        text.replace("paths = [\"/api\"]", "paths = [\"api\"]")
            .as_bytes(),
    );
    let status = deployment
        .wait_until("the bad config to be rejected", |s| {
            s["reload"]["rejected"] == 1
        })
        .await;
    assert!(
        status["reload"]["last_error"]
            .as_str()
            .unwrap()
            .contains("must start with \"/\""),
        "{status}"
    );
    assert_eq!(
        get(
            deployment.gateway.addr,
            "/api/x",
            &[("apikey", "static-key")]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn admin_reload_and_key_cache_rules() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({}));
    let config = support::basic_config_with_admin(&origin, &auth);
    let deployment = Deployment::start(&config, None).await;
    let gw = deployment.gateway.addr;
    let admin = deployment.gateway.admin_addr.unwrap();
    assert_eq!(
        get(gw, "/api/x", &[("apikey", "good-key")]).await.status,
        200
    );

    // A reload that changes neither auth rule keeps the cache: no new auth call.
    let reply = support::send(
        admin,
        support::request("POST", admin, "/admin/reload")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["reloaded"]["key_cache_flushed"], false);
    assert_eq!(
        get(gw, "/api/x", &[("apikey", "good-key")]).await.status,
        200
    );
    assert_eq!(auth.calls(), 1);

    // Changing [auth_api] flushes it.
    let text = std::fs::read_to_string(deployment.path("keygate.toml")).unwrap();
    std::fs::write(
        deployment.path("keygate.toml"),
        text.replace("negative_ttl = \"30s\"", "negative_ttl = \"10s\""),
    )
    .unwrap();
    let reply = support::send(
        admin,
        support::request("POST", admin, "/admin/reload")
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        reply.json()["reloaded"]["key_cache_flushed"],
        true,
        "{}",
        reply.text()
    );
    assert_eq!(
        get(gw, "/api/x", &[("apikey", "good-key")]).await.status,
        200
    );
    assert_eq!(auth.calls(), 2);
}

#[tokio::test]
async fn revoked_key_gets_401_on_the_next_request() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow("key/with space", json!({}));
    let config = support::basic_config_with_admin(&origin, &auth);
    let deployment = Deployment::start(&config, None).await;
    let (gw, admin) = (
        deployment.gateway.addr,
        deployment.gateway.admin_addr.unwrap(),
    );
    let key = [("apikey", "key/with space")];
    assert_eq!(get(gw, "/api/x", &key).await.status, 200);
    auth.deny("key/with space");
    assert_eq!(
        get(gw, "/api/x", &key).await.status,
        200,
        "still cached as valid"
    );

    let revoked = deployment.revoke("key%2Fwith%20space").await;
    assert_eq!(revoked["removed"], true, "{revoked}");
    assert_eq!(get(gw, "/api/x", &key).await.status, 401);

    let purge = support::request("DELETE", admin, "/admin/keys")
        .body(Default::default())
        .unwrap();
    assert_eq!(support::send(admin, purge).await.status, 200);
    assert_eq!(deployment.status().await["key_cache_entries"], 0);
}

/// A revoked key is refused on the very next request, even one identical to requests the
/// gateway just forwarded on a kept decision: reuse ends with the verdict it rests on.
#[tokio::test]
async fn revoking_a_key_ends_the_reuse_of_decisions_resting_on_it() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({}));
    let deployment = Deployment::one_thread(&origin, &auth, "").await;
    let gw = deployment.gateway.addr;
    let key = [("apikey", "good-key")];
    for _ in 0..3 {
        assert_eq!(get(gw, "/api/x", &key).await.status, 200);
    }
    let metrics = deployment.gateway.gateway.metrics.render(0);
    assert!(
        metrics.contains("keygate_decisions_reused_total 1\n"),
        "the third request was forwarded on the second's decision: {metrics}"
    );

    auth.deny("good-key");
    assert_eq!(deployment.revoke("good-key").await["removed"], true);
    assert_eq!(get(gw, "/api/x", &key).await.status, 401);
    assert_eq!(origin.hits(), 3);
}

/// A key the cache has since evicted (room for one verdict, another key came) is still
/// revoked for the decisions kept on its verdict.
#[tokio::test]
async fn revoking_a_key_the_cache_evicted_still_ends_the_reuse_of_its_decisions() {
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow("good-key", json!({}));
    auth.allow("other-key", json!({}));
    let deployment = Deployment::one_thread(&origin, &auth, "cache_capacity = 1\n").await;
    let gw = deployment.gateway.addr;
    let key = [("apikey", "good-key")];
    // A miss, then a decision the thread keeps, then one forwarded on it.
    for _ in 0..3 {
        assert_eq!(get(gw, "/api/x", &key).await.status, 200);
    }
    assert_eq!(
        get(gw, "/api/x", &[("apikey", "other-key")]).await.status,
        200
    );
    assert_eq!(deployment.status().await["key_cache_entries"], 1);

    auth.deny("good-key");
    let revoked = deployment.revoke("good-key").await;
    assert_eq!(revoked["removed"], false, "evicted: {revoked}");
    assert_eq!(get(gw, "/api/x", &key).await.status, 401);
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let config = format!("{ADMIN}admin_token = \"s3cret\"\n");
    let deployment = Deployment::start(&config, Some(&tagged("v1"))).await;
    let admin = deployment.gateway.admin_addr.unwrap();
    assert_eq!(get(admin, "/admin/status", &[]).await.status, 401);
    assert_eq!(
        get(admin, "/admin/status", &[("authorization", "Bearer nope")])
            .await
            .status,
        401
    );
    assert_eq!(
        get(
            admin,
            "/admin/status",
            &[("authorization", "Bearer s3cret")]
        )
        .await
        .status,
        200
    );
}

#[test]
fn admin_off_loopback_without_token_is_refused() {
    let err =
        keygate::config::parse("[server]\nadmin_listen = \"0.0.0.0:8081\"\n", None).unwrap_err();
    assert!(format!("{err:#}").contains("server.admin_token"), "{err:#}");
}

#[tokio::test]
async fn restarts_load_the_precompiled_component() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{ADMIN}[guest]\ncache_dir = \"{}\"\n", dir.path().display());
    let first = Instant::now();
    let gw = support::start_gateway(&config).await;
    let cold = first.elapsed();
    assert_component_loaded_from(&gw, "compiled").await;
    gw.shutdown().await;
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(cached.len(), 1, "one compiled component in the cache");
    let second = Instant::now();
    let gw = support::start_gateway(&config).await;
    let warm = second.elapsed();
    println!("start with compile: {cold:?}; start from the precompiled cache: {warm:?}");
    assert_component_loaded_from(&gw, "precompiled_cache").await;
    assert_eq!(get(gw.addr, "/nowhere", &[]).await.status, 404);
}

/// The running component's native code came from `expected`, as status and metrics say.
async fn assert_component_loaded_from(gw: &keygate::RunningGateway, expected: &str) {
    let status = get(gw.admin_addr.unwrap(), "/admin/status", &[])
        .await
        .json();
    assert_eq!(status["component"]["loaded_from"], expected, "{status}");
    let metrics = gw.gateway.metrics.render(0);
    let loads: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("keygate_component_loads_total{"))
        .collect();
    assert_eq!(
        loads,
        [format!(
            "keygate_component_loads_total{{loaded_from=\"{expected}\"}} 1"
        )],
        "{metrics}"
    );
}
