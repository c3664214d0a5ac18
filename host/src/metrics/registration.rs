//! Every family keygate exports, made and registered once: the registry's names and help
//! texts in one place, apart from the counting.

use super::histogram::{KEYGATE_LATENCY, Merged};
use super::kong::KongFamilies;
use super::tally::Shard;
use super::{Connections, Metrics, SHARDS};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keygate");
        let requests = Family::default();
        let upstream_responses = Family::default();
        let auth_api_responses = Family::default();
        let key_cache_lookups = Family::default();
        let rate_limit_decisions = Family::default();
        let auth_calls_shed = Counter::default();
        let auth_calls_skipped = Counter::default();
        let auth_api_down = Gauge::default();
        let redis_calls = Family::default();
        let redis_down = Family::default();
        let guest_failures = Family::default();
        let component_loads = Family::default();
        let key_cache_entries = Gauge::default();
        let guest_instances_alive = Gauge::default();
        let in_flight = Gauge::default();
        let guest_instances = Counter::default();
        let decisions_reused = Counter::default();
        let request_latency =
            Family::new_with_constructor((|| Merged::new(KEYGATE_LATENCY)) as fn() -> Merged);
        let upstream_latency =
            Family::new_with_constructor((|| Merged::new(KEYGATE_LATENCY)) as fn() -> Merged);
        let auth_api_latency = Merged::new(KEYGATE_LATENCY);
        let access_log_dropped = Counter::default();
        let target_requests = Family::default();
        let target_failures = Family::default();
        let target_down = Family::default();
        registry.register(
            "upstream_target_requests",
            "Requests sent to each target of an upstream",
            target_requests.clone(),
        );
        registry.register(
            "upstream_target_failures",
            "Connections a target of an upstream refused or did not accept in time (each marks it down for the upstream's down_for)",
            target_failures.clone(),
        );
        registry.register(
            "upstream_target_down",
            "1 while a target of an upstream is skipped after a failed connection",
            target_down.clone(),
        );
        registry.register(
            "request_latency_ms",
            "Time from a request's arrival to its response's last byte, by route",
            request_latency.clone(),
        );
        registry.register(
            "upstream_latency_ms",
            "Time from sending a request to its origin until the response head, by route",
            upstream_latency.clone(),
        );
        registry.register(
            "auth_api_latency_ms",
            "Duration of the auth API calls requests made (whole milliseconds)",
            auth_api_latency.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the log sink did not keep up (requests never wait for it)",
            access_log_dropped.clone(),
        );
        registry.register(
            "http_requests",
            "Client requests answered, by route and status code",
            requests.clone(),
        );
        registry.register(
            "upstream_responses",
            "Origin answers by service and status code (code=\"error\": no answer)",
            upstream_responses.clone(),
        );
        registry.register(
            "auth_api_responses",
            "Auth API answers by status code (code=\"error\": no answer)",
            auth_api_responses.clone(),
        );
        registry.register(
            "key_cache_lookups",
            "Key cache lookups by result (fresh, stale, miss, coalesced); a reused decision counts its key as fresh",
            key_cache_lookups.clone(),
        );
        registry.register(
            "decisions_reused",
            "Requests forwarded on a decision the guest made for an identical request and offered for reuse, without calling it",
            decisions_reused.clone(),
        );
        registry.register(
            "rate_limit_decisions",
            "Requests a rate-limiting instance applied to, by route and outcome (allowed, limited, counters_unavailable)",
            rate_limit_decisions.clone(),
        );
        registry.register(
            "auth_api_calls_shed",
            "Auth API calls not made because auth_api.max_in_flight calls were running (the request got a 503)",
            auth_calls_shed.clone(),
        );
        registry.register(
            "auth_api_calls_skipped",
            "Auth API calls not made because it did not answer the last calls and has not answered a probe since (the guest served a stale verdict or a 503 at once)",
            auth_calls_skipped.clone(),
        );
        registry.register(
            "auth_api_down",
            "1 while the auth API is known to be down (it did not answer the last calls nor a probe since): misses are answered without asking it",
            auth_api_down.clone(),
        );
        registry.register(
            "redis_calls",
            "Calls to a rate limit's Redis (policy = \"redis\"; one round trip counts every window of a request), by server and outcome (ok, error, timeout, skipped: not made because that Redis is known to be down)",
            redis_calls.clone(),
        );
        registry.register(
            "redis_down",
            "1 while a rate limit's Redis is known to be down (it failed the last calls and has not answered a probe since): its limits are applied as fault_tolerant says without waiting for it",
            redis_down.clone(),
        );
        registry.register(
            "guest_failures",
            "Requests the guest failed, by reason (trap, busy_timeout, memory_limit, instantiate, panic)",
            guest_failures.clone(),
        );
        registry.register(
            "guest_instances_created",
            "Guest instances created (each serves up to guest.instance_reuse requests)",
            guest_instances.clone(),
        );
        registry.register(
            "component_loads",
            "Components loaded (at start and by reloads that change it), by where their native code came from (compiled, precompiled_cache)",
            component_loads.clone(),
        );
        registry.register(
            "key_cache_entries",
            "Verdicts held in the key cache",
            key_cache_entries.clone(),
        );
        registry.register(
            "guest_instances_alive",
            "Guest instances alive now (serving a request or idle between requests), at most guest.max_instances",
            guest_instances_alive.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Client requests being handled now",
            in_flight.clone(),
        );
        let connections = Arc::<Connections>::default();
        registry.register(
            "connections_refused",
            "Client connections closed as they were accepted, by reason (per_ip: the address held server.max_connections_per_ip already)",
            connections.refused.clone(),
        );
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            registry,
            requests,
            upstream_responses,
            auth_api_responses,
            key_cache_lookups,
            rate_limit_decisions,
            auth_calls_shed,
            auth_calls_skipped,
            auth_api_down,
            redis_calls,
            redis_down,
            guest_failures,
            guest_instances,
            decisions_reused,
            component_loads,
            key_cache_entries,
            guest_instances_alive,
            in_flight,
            request_latency,
            upstream_latency,
            auth_api_latency,
            access_log_dropped,
            target_requests,
            target_failures,
            target_down,
            kong: KongFamilies::default(),
            connections,
            kong_enabled: AtomicBool::new(false),
            consumers: Mutex::default(),
            latency_routes: Mutex::default(),
        }
    }
}
