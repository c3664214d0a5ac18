//! Rate-limit counters on Redis: Kong's `redis` policy, one count shared by every keygate node
//! that uses the same Redis, so a fleet allows what the operator wrote, not that times the
//! number of nodes.
//!
//! - One round trip per request for all of a limit's windows: a Lua script `INCR`s each
//!   window's key, sets its expiry when it is new, and returns every count before the request
//!   (Kong's redis policy counts every request, refused ones included, and runs one `EVAL` per
//!   window; keygate runs one for all).
//! - Keys are Kong's: `ratelimit:<route>:<service>:<identifier>:<window start ms>:<period>`,
//!   with the plugin scope's route and service names where Kong has their ids. A key expires
//!   when its window ends, so Redis holds only live windows.
//! - Pooled: a few multiplexed connections (each pipelines every caller's commands), opened on
//!   first use and reopened after a failure, so a Redis that is down at startup does not stop
//!   the gateway.
//! - Bounded: a call waits at most the plugin's `redis.timeout`; after
//!   [`FAILURES_TO_OPEN`] failures in a row the breaker opens and calls fail at once (the
//!   limit then passes or fails as its `fault_tolerant` says) while a probe `PING`s every
//!   [`PROBE_EVERY`] until Redis answers.

use super::breaker::{Breaker, FAILURES_TO_OPEN, PROBE_EVERY};
use crate::metrics::{Metrics, RedisMetrics};
use keygate_counters_core::Period;
use keygate_policy::plugins::RedisTarget;
use redis::aio::ConnectionManager;
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Script,
    aio::ConnectionManagerConfig,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connections per Redis server: each one pipelines, so a few keep both cores busy without
/// queueing every request behind one socket.
const CONNECTIONS: usize = 4;

/// `KEYS`: one per window; `ARGV`: each window's seconds to live. Returns each window's count
/// before this request.
const HIT_SCRIPT: &str = r"
local before = {}
for i = 1, #KEYS do
  local count = redis.call('INCR', KEYS[i])
  if count == 1 then
    redis.call('EXPIRE', KEYS[i], ARGV[i])
  end
  before[i] = count - 1
end
return before
";

/// Why a call got no counts.
#[derive(Debug, thiserror::Error)]
pub enum RedisCountersError {
    #[error("redis {server} did not answer within {timeout_ms} ms")]
    Timeout { server: String, timeout_ms: u128 },
    #[error("redis {server}: {reason}")]
    Failed { server: String, reason: String },
    #[error("redis {server} is down (it failed the last calls); not waiting for it")]
    Down { server: String },
}

/// One Redis server's counters, shared by every request (and kept across hot swaps while the
/// configuration still names the same server).
pub struct RedisCounters {
    target: RedisTarget,
    /// `host:port/db`, without credentials: for logs and metrics.
    server: String,
    connections: Box<[ConnectionManager]>,
    next: AtomicUsize,
    script: Script,
    timeout: Duration,
    breaker: Breaker,
    metrics: RedisMetrics,
}

impl RedisCounters {
    /// A client for `target`; connects on first use. Errors only for settings the client
    /// cannot take (checked when the configuration is loaded).
    pub fn new(target: &RedisTarget, metrics: &Metrics) -> Result<Arc<Self>, String> {
        let server = describe(target);
        let timeout = Duration::from_millis(u64::from(target.timeout_ms.max(1)));
        let client = redis::Client::open(connection_info(target)?)
            .map_err(|err| format!("redis {server}: {err}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnecting is the next call's job, behind the breaker: a background retry loop
            // would hold callers on a Redis that is down.
            .set_number_of_retries(0);
        let connections = (0..CONNECTIONS)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Box<[_]>, _>>()
            .map_err(|err| format!("redis {server}: {err}"))?;
        Ok(Arc::new(Self {
            target: target.clone(),
            metrics: metrics.redis(&server),
            server,
            connections,
            next: AtomicUsize::new(0),
            script: Script::new(HIT_SCRIPT),
            timeout,
            breaker: Breaker::default(),
        }))
    }

    /// The server this client talks to (with its credentials and timeout).
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    fn connection(&self) -> ConnectionManager {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS;
        self.connections[index].clone()
    }

    /// Count a request of `identity` in `namespace` for every window (refused or not, as Kong's
    /// redis policy does) at `now` (seconds since the epoch); each window's count before it.
    pub async fn hit(
        self: &Arc<Self>,
        namespace: &str,
        identity: &str,
        windows: &[(Period, f64)],
        now: u64,
    ) -> Result<Vec<u64>, RedisCountersError> {
        if self.breaker.is_open() {
            self.metrics.skipped.inc();
            return Err(RedisCountersError::Down {
                server: self.server.clone(),
            });
        }
        let identity = super::counters::stored_identity(identity);
        let mut invocation = self.script.prepare_invoke();
        for &(period, _) in windows {
            let start = period.window_start(now);
            invocation
                .key(format!(
                    "ratelimit:{namespace}:{identity}:{}:{}",
                    start * 1000,
                    period.name()
                ))
                .arg(period.window_end(start).saturating_sub(now).max(1));
        }
        let mut connection = self.connection();
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<Vec<u64>>(&mut connection),
        )
        .await;
        let error = match answer {
            Ok(Ok(before)) if before.len() == windows.len() => {
                self.metrics.ok.inc();
                self.breaker.answered();
                return Ok(before);
            }
            Ok(Ok(before)) => RedisCountersError::Failed {
                server: self.server.clone(),
                reason: format!(
                    "{} counts for {} windows (another program's script under our name?)",
                    before.len(),
                    windows.len()
                ),
            },
            Ok(Err(err)) if err.is_timeout() => RedisCountersError::Timeout {
                server: self.server.clone(),
                timeout_ms: self.timeout.as_millis(),
            },
            Ok(Err(err)) => RedisCountersError::Failed {
                server: self.server.clone(),
                reason: err.to_string(),
            },
            Err(_) => RedisCountersError::Timeout {
                server: self.server.clone(),
                timeout_ms: self.timeout.as_millis(),
            },
        };
        match error {
            RedisCountersError::Timeout { .. } => self.metrics.timeout.inc(),
            _ => self.metrics.error.inc(),
        };
        if self.breaker.failed() {
            self.start_probe();
        }
        Err(error)
    }

    /// Ask a Redis marked down every [`PROBE_EVERY`] until it answers; exactly one runs.
    fn start_probe(self: &Arc<Self>) {
        self.metrics.down.set(1);
        tracing::warn!(
            redis = %self.server,
            "redis failed {FAILURES_TO_OPEN} calls in a row: rate limits on it are applied as \
             their fault_tolerant says, without waiting for it, until it answers a probe"
        );
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let mut connection = this.connection();
                let pong = tokio::time::timeout(
                    this.timeout,
                    redis::cmd("PING").query_async::<String>(&mut connection),
                )
                .await;
                if matches!(pong, Ok(Ok(_))) {
                    this.breaker.answered();
                    this.metrics.down.set(0);
                    tracing::info!(redis = %this.server, "redis answers again");
                    return;
                }
            }
        });
    }
}

/// rustls needs one process-wide crypto provider: ring's (the first call installs it).
fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `host:port/db`.
pub fn describe(target: &RedisTarget) -> String {
    format!("{}:{}/{}", target.host, target.port, target.database)
}

/// How the redis client reaches `target`: over TLS with `ssl` (rustls; the system's roots,
/// and the name checked unless `ssl_verify` is off, as Kong's default), else in clear text.
pub(crate) fn connection_info(target: &RedisTarget) -> Result<ConnectionInfo, String> {
    if target
        .server_name
        .as_deref()
        .is_some_and(|name| name != target.host)
    {
        // Refused when the configuration is loaded too: the client checks the host's name.
        return Err(format!(
            "redis {}: a server_name other than the host is not supported",
            describe(target)
        ));
    }
    install_crypto_provider();
    let mut settings = RedisConnectionInfo::default()
        .set_db(i64::from(target.database))
        .set_skip_set_lib_name();
    if let Some(username) = &target.username {
        settings = settings.set_username(username);
    }
    if let Some(password) = &target.password {
        settings = settings.set_password(password);
    }
    let addr = if target.ssl {
        ConnectionAddr::TcpTls {
            host: target.host.clone(),
            port: target.port,
            insecure: !target.ssl_verify,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(target.host.clone(), target.port)
    };
    Ok(addr
        .into_connection_info()
        .map_err(|err| format!("redis {}: {err}", describe(target)))?
        .set_redis_settings(settings))
}
