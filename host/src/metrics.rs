//! Prometheus metrics: what operators watch during a migration (calls per route and status,
//! origin and auth-API status codes, cache behaviour, guest failures).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    upstream_responses: Family<Labels, Counter>,
    auth_api_responses: Family<Labels, Counter>,
    key_cache_lookups: Family<Labels, Counter>,
    auth_calls_shed: Counter,
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
        let auth_calls_shed = Counter::default();
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
            "auth_api_calls_shed",
            "Auth API calls not made because auth_api.max_in_flight calls were running (the request got a 503)",
            auth_calls_shed.clone(),
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
            registry,
            requests,
            upstream_responses,
            auth_api_responses,
            key_cache_lookups,
            auth_calls_shed,
            guest_failures,
            guest_instances,
            component_loads,
            key_cache_entries,
            in_flight,
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, code: u16) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
    }

    /// An outgoing call finished; `call` is what the guest said it was for.
    pub fn outgoing(&self, call: &str, code: Option<u16>) {
        let code = code.map_or_else(|| "error".to_string(), |c| c.to_string());
        if call == "auth" {
            self.auth_api_responses
                .get_or_create(&vec![("code", code)])
                .inc();
        } else {
            self.upstream_responses
                .get_or_create(&vec![("service", call.to_string()), ("code", code)])
                .inc();
        }
    }

    pub fn key_cache_lookup(&self, result: &'static str) {
        self.key_cache_lookups
            .get_or_create(&vec![("result", result.to_string())])
            .inc();
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

    pub fn in_flight(&self) -> &Gauge {
        &self.in_flight
    }

    /// The Prometheus text exposition.
    pub fn render(&self, key_cache_entries: usize) -> String {
        self.key_cache_entries
            .set(i64::try_from(key_cache_entries).unwrap_or(i64::MAX));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
