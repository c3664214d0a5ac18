//! Prometheus metrics: what operators watch during a migration (calls per route and status,
//! origin and auth-API status codes, cache behaviour, guest failures).
//!
//! What every request counts (its route and status, its origin's or the auth API's answer, its
//! key-cache lookup, requests in flight) goes to a tally of the counting thread's own, merged
//! into the exported families when `/metrics` is scraped: a shared counter would bounce its
//! cache line between request threads, and a label lookup would allocate, on every request.

mod exposition;
pub mod histogram;
mod kong;
mod registration;
mod tally;

pub use exposition::CONTENT_TYPE;

use crate::request_record::RequestRecord;
use histogram::{KEYGATE_LATENCY, Merged, Tally as Histogram};
use keygate_policy::plugins::Prometheus;
use kong::KongFamilies;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tally::{Shard, Tally};

/// Consumers the dashboard's top list keeps at most; later ones are summed as `(others)`.
const TRACKED_CONSUMERS: usize = 10_000;

type Labels = Vec<(&'static str, String)>;

/// Client connections: accepted since the start (one shared count: keep-alive makes accepting
/// rare), and the request threads' own counts of those they serve now.
#[derive(Default)]
pub struct Connections {
    pub accepted: std::sync::atomic::AtomicU64,
    serving: Mutex<Vec<Arc<AtomicUsize>>>,
    /// `keygate_connections_refused_total{reason}`: closed as accepted (`per_ip`: over
    /// `server.max_connections_per_ip`).
    refused: Family<Labels, Counter>,
}

impl Connections {
    /// A connection closed as it was accepted, for `reason`.
    pub fn refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// Add a request thread's count of the connections it serves.
    pub fn watch(&self, serving: Arc<AtomicUsize>) {
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(serving);
    }

    pub fn active(&self) -> u64 {
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|n| n.load(Ordering::Relaxed) as u64)
            .sum()
    }
}

/// One upstream target's counts (see [`Metrics::upstream_target`]).
pub struct TargetMetrics {
    pub requests: Counter,
    pub failures: Counter,
    pub down: Gauge,
}

/// One Redis server's counts (see [`Metrics::redis`]).
#[derive(Clone)]
pub struct RedisMetrics {
    pub ok: Counter,
    pub error: Counter,
    pub timeout: Counter,
    pub skipped: Counter,
    pub down: Gauge,
}

/// Tallies to spread request threads over; a thread keeps its shard for life.
const SHARDS: usize = 64;

pub struct Metrics {
    shards: Box<[Shard]>,
    registry: Registry,
    requests: Family<Labels, Counter>,
    upstream_responses: Family<Labels, Counter>,
    auth_api_responses: Family<Labels, Counter>,
    key_cache_lookups: Family<Labels, Counter>,
    rate_limit_decisions: Family<Labels, Counter>,
    auth_calls_shed: Counter,
    auth_calls_skipped: Counter,
    auth_api_down: Gauge,
    redis_calls: Family<Labels, Counter>,
    redis_down: Family<Labels, Gauge>,
    guest_failures: Family<Labels, Counter>,
    guest_instances: Counter,
    decisions_reused: Counter,
    component_loads: Family<Labels, Counter>,
    key_cache_entries: Gauge,
    guest_instances_alive: Gauge,
    in_flight: Gauge,
    request_latency: Family<Labels, Merged>,
    upstream_latency: Family<Labels, Merged>,
    auth_api_latency: Merged,
    access_log_dropped: Counter,
    target_requests: Family<Labels, Counter>,
    target_failures: Family<Labels, Counter>,
    target_down: Family<Labels, Gauge>,
    /// Client connections, for Kong's `kong_nginx_connections_total`.
    pub connections: Arc<Connections>,
    /// Kong's families, exported while a `prometheus` plugin is configured.
    kong: KongFamilies,
    kong_enabled: AtomicBool,
    /// Requests by consumer, for the dashboard (not exported: consumers are unbounded).
    consumers: Mutex<HashMap<Box<str>, u64>>,
    /// The latency histograms of each route (shared with the families), for the dashboard.
    latency_routes: Mutex<HashMap<String, [Merged; 2]>>,
}

/// See [`Metrics::latencies`].
pub struct Latencies {
    /// (route, total, upstream).
    pub routes: Vec<(String, Histogram, Histogram)>,
    pub auth_api: Histogram,
}

impl Metrics {
    /// A request is over (its response sent, or the client gone): its latencies, its
    /// consumer, and Kong's families when a `prometheus` instance (`kong`) applies to it.
    pub fn completed(&self, record: &RequestRecord, kong: Option<&Prometheus>) {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let mut tally = self.shard();
        let route = record.route.as_deref().unwrap_or("(none)");
        let latencies = match tally.latency.get_mut(route) {
            Some(latencies) => latencies,
            None => tally.latency.entry(route.into()).or_insert_with(|| {
                [
                    Histogram::new(KEYGATE_LATENCY),
                    Histogram::new(KEYGATE_LATENCY),
                ]
            }),
        };
        latencies[0].observe(ms(record.total));
        if let Some(upstream) = record.upstream {
            latencies[1].observe(ms(upstream));
        }
        if let Some(auth) = record.auth_ms {
            tally.auth_latency.observe(auth as f64);
        } else if matches!(record.key_lookup.as_deref(), Some("miss" | "stale")) {
            // The guest needed the auth API and did not ask it (its host had just said it is
            // down): a call that was made always has its time.
            self.auth_call_skipped();
        }
        if let Some(consumer) = record.consumer.as_deref() {
            match tally.consumers.get_mut(consumer) {
                Some(n) => *n += 1,
                None => {
                    tally.consumers.insert(consumer.into(), 1);
                }
            }
        }
        if let Some(flags) = kong {
            tally.kong.record(record, flags);
        }
    }

    /// Kong's `kong_upstream_target_health` for one target (see [`KongFamilies::target_health`]).
    pub fn upstream_target_health(&self, upstream: &str, address: &str, healthy: bool) {
        self.kong.target_health(upstream, address, healthy);
    }

    /// Whether Kong's families are exported (a `prometheus` plugin is configured).
    pub fn set_kong_families(&self, enabled: bool) {
        self.kong_enabled.store(enabled, Ordering::Relaxed);
    }

    /// The counters of one upstream target, held by its balancer.
    pub fn upstream_target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let labels = vec![
            ("upstream", upstream.to_string()),
            ("target", target.to_string()),
        ];
        TargetMetrics {
            requests: self.target_requests.get_or_create(&labels).clone(),
            failures: self.target_failures.get_or_create(&labels).clone(),
            down: self.target_down.get_or_create(&labels).clone(),
        }
    }

    /// Counts the access log's dropped lines.
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// The `n` consumers with the most requests since the start, most first.
    pub fn top_consumers(&self, n: usize) -> Vec<(String, u64)> {
        self.merge_tallies();
        let consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        let mut top: Vec<(String, u64)> = consumers
            .iter()
            .map(|(name, count)| (name.to_string(), *count))
            .collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }

    /// Every route's latency histograms since the start (total, upstream), and the auth
    /// API's: for the dashboard, which diffs two of them to get the last seconds' quantiles.
    pub fn latencies(&self) -> Latencies {
        self.merge_tallies();
        let routes = self
            .latency_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Latencies {
            routes: routes
                .iter()
                .map(|(route, [total, upstream])| {
                    (route.clone(), total.snapshot(), upstream.snapshot())
                })
                .collect(),
            auth_api: self.auth_api_latency.snapshot(),
        }
    }

    /// A client request was answered.
    pub fn request(&self, route: &str, code: u16) {
        self.shard().requests.count(route, Some(code));
    }

    /// An outgoing call finished; `call` is what the guest said it was for.
    pub fn outgoing(&self, call: &str, code: Option<u16>) {
        let mut tally = self.shard();
        if call == "auth" {
            tally.auth_api_responses.count("", code);
        } else {
            tally.upstream_responses.count(call, code);
        }
    }

    /// A rate-limiting instance applied to a request answered on `route`.
    pub fn rate_limit(&self, route: &str, outcome: RateLimitOutcome) {
        let mut tally = self.shard();
        let counts = match tally.rate_limit_decisions.get_mut(route) {
            Some(counts) => counts,
            None => tally.rate_limit_decisions.entry(route.into()).or_default(),
        };
        counts[outcome as usize] += 1;
    }

    pub fn key_cache_lookup(&self, result: LookupResult) {
        self.shard().key_cache_lookups[result as usize] += 1;
    }

    /// A request forwarded on a kept decision (`key_was_fresh`: the decision rests on a key
    /// verdict the cache held fresh, which counts as the fresh lookup it stands for).
    pub fn decision_reused(&self, key_was_fresh: bool) {
        let mut tally = self.shard();
        tally.decisions_reused += 1;
        if key_was_fresh {
            tally.key_cache_lookups[LookupResult::Fresh as usize] += 1;
        }
    }

    pub fn guest_failure(&self, reason: &'static str) {
        self.guest_failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// An auth call refused because `auth_api.max_in_flight` calls were already running. Its
    /// lookup was already counted as a miss, and the auth API never saw it: counted apart so
    /// neither the cache's hit rate nor the auth API's error rate is skewed by the cap.
    pub fn auth_call_shed(&self) {
        self.auth_calls_shed.inc();
    }

    /// An auth call not made because the auth API is known to be down.
    pub fn auth_call_skipped(&self) {
        self.auth_calls_skipped.inc();
    }

    /// The auth API's breaker opened (`true`) or closed.
    pub fn auth_api_down(&self, down: bool) {
        self.auth_api_down.set(i64::from(down));
    }

    /// The counters of one Redis server (`server` names it without credentials), held by its
    /// client so that a call counts without a label lookup.
    pub fn redis(&self, server: &str) -> RedisMetrics {
        let calls = |outcome: &str| {
            self.redis_calls
                .get_or_create(&vec![
                    ("redis", server.to_string()),
                    ("outcome", outcome.to_string()),
                ])
                .clone()
        };
        RedisMetrics {
            ok: calls("ok"),
            error: calls("error"),
            timeout: calls("timeout"),
            skipped: calls("skipped"),
            down: self
                .redis_down
                .get_or_create(&vec![("redis", server.to_string())])
                .clone(),
        }
    }

    /// A component was made ready to run; `loaded_from` tells whether a restart or a swap back
    /// skipped compilation.
    pub fn component_loaded(&self, loaded_from: &'static str) {
        self.component_loads
            .get_or_create(&vec![("loaded_from", loaded_from.to_string())])
            .inc();
    }

    pub fn guest_instance_created(&self) {
        self.guest_instances.inc();
    }

    /// A client request started; [`Metrics::request_done`] when it is answered.
    pub fn request_started(&self) {
        self.shard().in_flight += 1;
    }

    pub fn request_done(&self) {
        self.shard().in_flight -= 1;
    }

    /// The Prometheus text exposition.
    /// Guest instances alive now, set before a scrape (the instance slots in use).
    pub fn set_guest_instances_alive(&self, alive: usize) {
        self.guest_instances_alive
            .set(i64::try_from(alive).unwrap_or(i64::MAX));
    }

    pub fn render(&self, key_cache_entries: usize) -> String {
        self.key_cache_entries
            .set(i64::try_from(key_cache_entries).unwrap_or(i64::MAX));
        self.merge_tallies();
        let mut openmetrics = String::new();
        encode_registry(&mut openmetrics, &self.registry).expect("writing to a String cannot fail");
        if self.kong_enabled.load(Ordering::Relaxed) {
            self.kong.connections(
                self.connections.accepted.load(Ordering::Relaxed),
                self.connections.active(),
            );
            encode_registry(&mut openmetrics, &self.kong.registry)
                .expect("writing to a String cannot fail");
        }
        exposition::to_text_format(&openmetrics)
    }

    /// This thread's tally. Uncontended unless more threads than shards count at once.
    fn shard(&self) -> std::sync::MutexGuard<'_, Tally> {
        thread_local! {
            static SHARD: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            };
        }
        let index = SHARD.with(|shard| *shard) % self.shards.len();
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Move what the threads counted since the last scrape into the exported families.
    fn merge_tallies(&self) {
        let mut in_flight = 0;
        for shard in &self.shards {
            let mut tally = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            in_flight += tally.in_flight;
            self.merge_request_records(&mut tally);
            for (route, code, n) in tally.requests.drain() {
                self.requests
                    .get_or_create(&vec![("route", route), ("code", code_label(code))])
                    .inc_by(n);
            }
            for (service, code, n) in tally.upstream_responses.drain() {
                self.upstream_responses
                    .get_or_create(&vec![("service", service), ("code", code_label(code))])
                    .inc_by(n);
            }
            for (route, counts) in &mut tally.rate_limit_decisions {
                for (outcome, n) in RateLimitOutcome::ALL.iter().zip(counts.iter_mut()) {
                    if *n > 0 {
                        self.rate_limit_decisions
                            .get_or_create(&vec![
                                ("route", route.to_string()),
                                ("outcome", outcome.label().to_string()),
                            ])
                            .inc_by(std::mem::take(n));
                    }
                }
            }
            for (_, code, n) in tally.auth_api_responses.drain() {
                self.auth_api_responses
                    .get_or_create(&vec![("code", code_label(code))])
                    .inc_by(n);
            }
            self.decisions_reused
                .inc_by(std::mem::take(&mut tally.decisions_reused));
            for (result, n) in LookupResult::ALL.iter().zip(&mut tally.key_cache_lookups) {
                if *n > 0 {
                    self.key_cache_lookups
                        .get_or_create(&vec![("result", result.label().to_string())])
                        .inc_by(std::mem::take(n));
                }
            }
        }
        self.in_flight.set(in_flight);
    }

    /// The latency and consumer parts of [`Metrics::merge_tallies`].
    fn merge_request_records(&self, tally: &mut Tally) {
        if !tally.latency.is_empty() {
            let mut routes = self
                .latency_routes
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for (route, [total, upstream]) in &mut tally.latency {
                let merged = match routes.get(&**route) {
                    Some(merged) => merged,
                    None => {
                        let labels = vec![("route", route.to_string())];
                        let merged = [
                            self.request_latency.get_or_create(&labels).clone(),
                            self.upstream_latency.get_or_create(&labels).clone(),
                        ];
                        routes.entry(route.to_string()).or_insert(merged)
                    }
                };
                merged[0].take(total);
                merged[1].take(upstream);
            }
        }
        self.auth_api_latency.take(&mut tally.auth_latency);
        if !tally.consumers.is_empty() {
            let mut consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
            // Drained, not zeroed: consumers are unbounded (a new key can be a new one), so a
            // thread must not keep every name it ever counted.
            for (consumer, n) in tally.consumers.drain() {
                if let Some(count) = consumers.get_mut(&consumer) {
                    *count += n;
                } else if consumers.len() < TRACKED_CONSUMERS {
                    consumers.insert(consumer, n);
                } else {
                    *consumers.entry("(others)".into()).or_default() += n;
                }
            }
        }
        self.kong.take(&mut tally.kong);
    }
}

/// What a rate-limiting instance made of a request (the guest's `rate-limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitOutcome {
    Allowed,
    Limited,
    /// The counters failed: passed without limit (`fault_tolerant`) or a 500.
    CountersUnavailable,
}

impl RateLimitOutcome {
    const ALL: [Self; 3] = [Self::Allowed, Self::Limited, Self::CountersUnavailable];

    /// The guest's label; anything else is not counted.
    pub fn parse(label: &str) -> Option<Self> {
        match label {
            "allowed" => Some(Self::Allowed),
            "limited" => Some(Self::Limited),
            "counters-unavailable" => Some(Self::CountersUnavailable),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::CountersUnavailable => "counters_unavailable",
        }
    }
}

/// How a key-cache lookup went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    Fresh,
    Stale,
    Miss,
    /// Waited for another request's fill of the same key.
    Coalesced,
}

impl LookupResult {
    const ALL: [Self; 4] = [Self::Fresh, Self::Stale, Self::Miss, Self::Coalesced];

    fn label(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Stale => "stale",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
        }
    }
}

/// A status code label; `error` when there was no answer.
fn code_label(code: Option<u16>) -> String {
    code.map_or_else(|| "error".to_string(), |c| c.to_string())
}
