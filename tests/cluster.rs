//! Scenarios: a fleet of nodes sharing `[cluster] redis` (a real `redis-server`). A key revoked
//! on one node is refused on every node within a second, and a node that lost Redis checks its
//! cached verdicts again when it is back, since it may have missed revocations.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::client::{Reply, get};
use support::redis::RedisServer;
use support::{AuthApi, GatewayConfig, Origin, start_gateway};

const KEY: &str = "leaked-key";

async fn node(origin: &Origin, auth: &AuthApi, redis: &RedisServer) -> keygate::RunningGateway {
    let config = GatewayConfig::new()
        .admin()
        .auth_api(auth)
        .tables(format_args!("[cluster]\nredis = \"{}\"", redis.url()))
        .service("api", format_args!("http://{}", origin.addr))
        .route("paths = [\"/\"]");
    start_gateway(&config.to_string()).await
}

fn admin(node: &keygate::RunningGateway) -> SocketAddr {
    node.admin_addr.expect("the admin listener")
}

async fn revoke(node: &keygate::RunningGateway, key: &str) -> Reply {
    let request = support::request("DELETE", admin(node), &format!("/admin/keys/{key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    support::send(admin(node), request).await
}

/// Wait until `node` says it hears revocations (or not), as `/admin/status` reports it.
async fn until_subscribed(node: &keygate::RunningGateway, subscribed: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = get(admin(node), "/admin/status", &[]).await.json();
        if status["cluster"]["subscribed"] == subscribed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster.subscribed never became {subscribed}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_key_revoked_on_one_node_is_refused_on_every_node_within_a_second() {
    let redis = RedisServer::start();
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow(KEY, serde_json::json!({"consumer": {"username": "leaky"}}));
    let (first, second) = (
        node(&origin, &auth, &redis).await,
        node(&origin, &auth, &redis).await,
    );
    until_subscribed(&first, true).await;
    until_subscribed(&second, true).await;
    for node in [&first, &second] {
        assert_eq!(get(node.addr, "/x", &[("apikey", KEY)]).await.status, 200);
    }
    assert_eq!(auth.calls(), 2, "each node cached the verdict");

    // The provider revokes the key and tells one node.
    auth.deny(KEY);
    let answer = revoke(&first, KEY).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["removed"], true);
    assert_eq!(answer.json()["nodes_notified"], 2, "both nodes listen");

    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let reply = get(second.addr, "/x", &[("apikey", KEY)]).await;
        if reply.status == 401 {
            break;
        }
        assert_eq!(reply.status, 200);
        assert!(
            Instant::now() < deadline,
            "the other node still serves the revoked key after a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(first.addr, "/x", &[("apikey", KEY)]).await.status, 401);
}

#[tokio::test]
async fn a_node_back_from_a_redis_outage_checks_its_cached_keys_again() {
    let mut redis = RedisServer::start();
    let origin = Origin::start("origin").await;
    let auth = AuthApi::start().await;
    auth.allow(KEY, serde_json::json!({"consumer": {"username": "leaky"}}));
    let gw = node(&origin, &auth, &redis).await;
    until_subscribed(&gw, true).await;
    assert_eq!(get(gw.addr, "/x", &[("apikey", KEY)]).await.status, 200);
    assert_eq!(get(gw.addr, "/x", &[("apikey", KEY)]).await.status, 200);
    assert_eq!(auth.calls(), 1, "cached");

    // While the node cannot hear revocations, the key is revoked.
    redis.kill();
    until_subscribed(&gw, false).await;
    let unheard = revoke(&gw, "some-other-key").await;
    assert_eq!(unheard.status, 503, "{}", unheard.text());
    assert!(
        unheard.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("revoked on this node only"),
        "{}",
        unheard.text()
    );
    auth.deny(KEY);
    redis.restart();
    until_subscribed(&gw, true).await;

    // Its verdict is stale now: the next request asks the auth API once, which refuses it.
    assert_eq!(get(gw.addr, "/x", &[("apikey", KEY)]).await.status, 401);
    assert_eq!(auth.calls(), 2);
}
