//! `[cluster] redis`: a key revoked on one node is dropped on every node within a second.
//!
//! Nodes stay stateless and share nothing but a Redis channel: `DELETE /admin/keys/{key}`
//! drops the verdict here and publishes the key's fingerprint (never the key) on
//! [`CHANNEL`]; every node subscribed to it drops the same fingerprint. A node cut off from
//! Redis may have missed revocations, so when it subscribes again it marks every cached
//! verdict stale: each key is checked with the auth API on its next use (one call per key), and
//! `stale_if_error` still serves it while the auth API is down, instead of a flush that would
//! send every client's next request to the auth API at once.

use crate::capabilities::key_cache::{KeyCache, parse_fingerprint};
use crate::capabilities::redis_counters::connection_info;
use futures::StreamExt;
use keygate_policy::plugins::Redis;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The channel revocations travel on.
pub const CHANNEL: &str = "keygate:key-revocations";

/// A message dropping every cached verdict (`DELETE /admin/keys`).
const ALL: &str = "all";

/// A message dropping one: `key <fingerprint hex>`.
const KEY_PREFIX: &str = "key ";

/// How long a publish or a subscription's ping may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How often the subscription proves it is alive: a connection that died without a word
/// (a partition) would otherwise hide missed revocations forever.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Wait between attempts to subscribe again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

pub struct Cluster {
    server: String,
    publisher: ConnectionManager,
    subscribed: Arc<AtomicBool>,
}

impl Cluster {
    /// Subscribe (in the background, retrying while Redis is away) and get ready to publish.
    pub fn start(url: &str, key_cache: Arc<KeyCache>) -> anyhow::Result<Arc<Self>> {
        let mut target =
            Redis::from_url(url).map_err(|err| anyhow::anyhow!("cluster.redis: {err}"))?;
        // Not a Kong setting: `rediss://` checks the certificate, as URLs promise.
        target.ssl_verify = true;
        let server = format!("{}:{}/{}", target.host, target.port, target.database);
        let client = redis::Client::open(connection_info(&target).map_err(anyhow::Error::msg)?)
            .map_err(|err| anyhow::anyhow!("cluster.redis {server}: {err}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(0);
        let publisher = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|err| anyhow::anyhow!("cluster.redis {server}: {err}"))?;
        let subscribed = Arc::new(AtomicBool::new(false));
        tokio::spawn(subscribe_forever(
            client,
            server.clone(),
            key_cache,
            Arc::clone(&subscribed),
        ));
        Ok(Arc::new(Self {
            server,
            publisher,
            subscribed,
        }))
    }

    /// `host:port/db`, without credentials.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Whether this node hears revocations now.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// Tell every node to drop `fingerprint` (SHA-256 hex of a key); how many nodes heard it.
    pub async fn revoke(&self, fingerprint: &str) -> Result<u64, String> {
        self.publish(format!("{KEY_PREFIX}{fingerprint}")).await
    }

    /// Tell every node to drop every cached verdict; how many nodes heard it.
    pub async fn revoke_all(&self) -> Result<u64, String> {
        self.publish(ALL.to_string()).await
    }

    async fn publish(&self, message: String) -> Result<u64, String> {
        let mut connection = self.publisher.clone();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(CHANNEL).arg(message);
        match tokio::time::timeout(TIMEOUT, publish.query_async::<u64>(&mut connection)).await {
            Ok(Ok(receivers)) => Ok(receivers),
            Ok(Err(err)) => Err(format!("redis {}: {err}", self.server)),
            Err(_) => Err(format!(
                "redis {} did not answer within {} s",
                self.server,
                TIMEOUT.as_secs()
            )),
        }
    }
}

/// Hold a subscription to [`CHANNEL`] for the life of the process.
async fn subscribe_forever(
    client: redis::Client,
    server: String,
    key_cache: Arc<KeyCache>,
    subscribed: Arc<AtomicBool>,
) {
    let mut logged_down = false;
    loop {
        match subscribe(&client).await {
            Ok(pubsub) => {
                // Whatever was revoked while this node was not listening, it did not hear.
                let marked = key_cache.mark_all_stale();
                subscribed.store(true, Ordering::SeqCst);
                tracing::info!(
                    redis = %server,
                    marked_stale = marked,
                    "listening for key revocations"
                );
                logged_down = false;
                listen(pubsub, &key_cache).await;
                subscribed.store(false, Ordering::SeqCst);
                tracing::warn!(
                    redis = %server,
                    "lost the key-revocation channel; cached verdicts are marked stale when it is back"
                );
            }
            Err(err) if !logged_down => {
                tracing::warn!(redis = %server, "cannot subscribe to key revocations: {err}; retrying");
                logged_down = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

async fn subscribe(client: &redis::Client) -> Result<redis::aio::PubSub, String> {
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(TIMEOUT, connect).await {
        Ok(result) => result.map_err(|err| err.to_string()),
        Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
    }
}

/// Apply revocations until the connection ends or stops answering pings.
async fn listen(pubsub: redis::aio::PubSub, key_cache: &KeyCache) {
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return;
                };
                apply(message.get_payload_bytes(), key_cache);
            }
            _ = ping.tick() => {
                let alive = tokio::time::timeout(TIMEOUT, sink.ping::<String>()).await;
                if !matches!(alive, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// One message: drop what it names. Anything else on the channel is ignored.
fn apply(payload: &[u8], key_cache: &KeyCache) {
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    if text == ALL {
        key_cache.clear();
        tracing::info!("every cached verdict revoked through the cluster");
    } else if let Some(fingerprint) = text.strip_prefix(KEY_PREFIX)
        && fingerprint.len() == 64
        && fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
    {
        let removed = key_cache.invalidate(parse_fingerprint(fingerprint));
        tracing::info!(
            fingerprint = &fingerprint[..12],
            removed,
            "key revoked through the cluster"
        );
    }
}
