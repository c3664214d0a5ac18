//! Prometheus metrics: what operators watch during a migration (calls per route and status,
//! origin and auth-API status codes, cache behaviour, guest failures).
//!
//! What every request counts (its route and status, its origin's or the auth API's answer, its
//! key-cache lookup, requests in flight) goes to a tally of the counting thread's own, merged
//! into the exported families when `/metrics` is scraped: a shared counter would bounce its
//! cache line between request threads, and a label lookup would allocate, on every request.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

type Labels = Vec<(&'static str, String)>;

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
    component_loads: Family<Labels, Counter>,
    key_cache_entries: Gauge,
    in_flight: Gauge,
}

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
        let in_flight = Gauge::default();
        let guest_instances = Counter::default();
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
            "Key cache lookups by result (fresh, stale, miss, coalesced)",
            key_cache_lookups.clone(),
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
            "requests_in_flight",
            "Client requests being handled now",
            in_flight.clone(),
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
            component_loads,
            key_cache_entries,
            in_flight,
        }
    }
}

impl Metrics {
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
    pub fn render(&self, key_cache_entries: usize) -> String {
        self.key_cache_entries
            .set(i64::try_from(key_cache_entries).unwrap_or(i64::MAX));
        self.merge_tallies();
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
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

/// One tally, on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Tally>);

/// What the threads of one shard counted since the last scrape.
#[derive(Default)]
struct Tally {
    requests: LabelledCounts,
    upstream_responses: LabelledCounts,
    auth_api_responses: LabelledCounts,
    /// By route, then [`RateLimitOutcome`].
    rate_limit_decisions: HashMap<Box<str>, [u64; 3]>,
    key_cache_lookups: [u64; 4],
    /// Requests started minus answered by these threads (a request may end on another
    /// thread than it started on, so one shard can go negative; the sum cannot).
    in_flight: i64,
}

/// Counts by a name (route, service) and a status code. A name is allocated the first time a
/// thread sees it, never again.
#[derive(Default)]
struct LabelledCounts(HashMap<Box<str>, Vec<(Option<u16>, u64)>>);

impl LabelledCounts {
    fn count(&mut self, name: &str, code: Option<u16>) {
        let codes = match self.0.get_mut(name) {
            Some(codes) => codes,
            None => self.0.entry(name.into()).or_default(),
        };
        match codes.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => codes.push((code, 1)),
        }
    }

    /// Every non-zero count, reset to zero (names and codes stay, so counting stays
    /// allocation-free).
    fn drain(&mut self) -> impl Iterator<Item = (String, Option<u16>, u64)> + '_ {
        self.0.iter_mut().flat_map(|(name, codes)| {
            codes
                .iter_mut()
                .filter(|(_, n)| *n > 0)
                .map(|(code, n)| (name.to_string(), *code, std::mem::take(n)))
        })
    }
}
