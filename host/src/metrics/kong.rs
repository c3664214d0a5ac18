//! Kong's metric families (Kong 3.9's `prometheus` plugin: names, types, labels, buckets), so a
//! Kong dashboard or alert reads keygate unchanged. Per-request series are recorded only for
//! requests that matched a route and that a `[[plugins]] name = "prometheus"` instance applies
//! to, with that instance's flags; `kong_node_info`, `kong_datastore_reachable` and the
//! `kong_nginx_*` gauges are exported once any instance is configured.

use super::Labels;
use super::histogram::{KONG_LATENCY, KONG_UPSTREAM, Merged, Tally as Histogram};
use crate::request_record::{RequestRecord, Source};
use keygate_policy::plugins::Prometheus;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;

/// Kong's families, registered without keygate's prefix.
pub struct KongFamilies {
    pub registry: Registry,
    http_requests: Family<Labels, Counter>,
    kong_latency: Family<Labels, Merged>,
    upstream_latency: Family<Labels, Merged>,
    request_latency: Family<Labels, Merged>,
    bandwidth: Family<Labels, Counter>,
    nginx_requests: Gauge,
    nginx_connections: Family<Labels, Gauge>,
    target_health: Family<Labels, Gauge>,
    node_id: String,
}

impl Default for KongFamilies {
    fn default() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::default();
        let kong_latency =
            Family::new_with_constructor((|| Merged::new(KONG_LATENCY)) as fn() -> Merged);
        let upstream_latency =
            Family::new_with_constructor((|| Merged::new(KONG_UPSTREAM)) as fn() -> Merged);
        let request_latency =
            Family::new_with_constructor((|| Merged::new(KONG_UPSTREAM)) as fn() -> Merged);
        let bandwidth = Family::default();
        let nginx_requests = Gauge::default();
        let nginx_connections = Family::<Labels, Gauge>::default();
        let target_health = Family::<Labels, Gauge>::default();
        let node_id = node_id();
        let node_info = Family::<Labels, Gauge>::default();
        node_info
            .get_or_create(&vec![
                ("node_id", node_id.clone()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ])
            .set(1);
        let datastore_reachable = Gauge::<i64>::default();
        datastore_reachable.set(1);
        registry.register(
            "kong_http_requests",
            "HTTP status codes per consumer/service/route in Kong",
            http_requests.clone(),
        );
        registry.register(
            "kong_kong_latency_ms",
            "Latency added by Kong and enabled plugins for each service/route in Kong",
            kong_latency.clone(),
        );
        registry.register(
            "kong_upstream_latency_ms",
            "Latency added by upstream response for each service/route in Kong",
            upstream_latency.clone(),
        );
        registry.register(
            "kong_request_latency_ms",
            "Total latency incurred during requests for each service/route in Kong",
            request_latency.clone(),
        );
        registry.register(
            "kong_bandwidth_bytes",
            "Total bandwidth (ingress/egress) throughput in bytes",
            bandwidth.clone(),
        );
        registry.register(
            "kong_nginx_requests_total",
            "Number of requests total",
            nginx_requests.clone(),
        );
        registry.register(
            "kong_nginx_connections_total",
            "Number of connections by subsystem",
            nginx_connections.clone(),
        );
        registry.register(
            "kong_upstream_target_health",
            "Health status of targets of upstream. States = healthchecks_off|healthy|unhealthy|dns_error, value is 1 when state is populated",
            target_health.clone(),
        );
        registry.register(
            "kong_node_info",
            "Kong Node metadata information",
            node_info,
        );
        registry.register(
            "kong_datastore_reachable",
            "Datastore reachable from Kong, 0 is unreachable",
            datastore_reachable,
        );
        Self {
            registry,
            http_requests,
            kong_latency,
            upstream_latency,
            request_latency,
            bandwidth,
            nginx_requests,
            nginx_connections,
            target_health,
            node_id,
        }
    }
}

impl KongFamilies {
    /// `kong_upstream_target_health`: one series per state, 1 for the current one (keygate's
    /// health is passive: `healthy`, or `unhealthy` while a target is skipped).
    pub fn target_health(&self, upstream: &str, address: &str, healthy: bool) {
        for state in ["healthchecks_off", "healthy", "unhealthy", "dns_error"] {
            let current = match state {
                "healthy" => healthy,
                "unhealthy" => !healthy,
                _ => false,
            };
            self.target_health
                .get_or_create(&vec![
                    ("upstream", upstream.to_string()),
                    ("target", address.to_string()),
                    ("address", address.to_string()),
                    ("state", state.to_string()),
                    ("subsystem", "http".to_string()),
                ])
                .set(i64::from(current));
        }
    }

    /// `kong_nginx_connections_total` (a gauge, as in Kong) for the states keygate knows:
    /// `accepted` = `handled` = `total` (keygate refuses none it accepted), and `active`.
    pub fn connections(&self, accepted: u64, active: u64) {
        for (state, value) in [
            ("accepted", accepted),
            ("handled", accepted),
            ("total", accepted),
            ("active", active),
        ] {
            self.nginx_connections
                .get_or_create(&vec![
                    ("node_id", self.node_id.clone()),
                    ("subsystem", "http".to_string()),
                    ("state", state.to_string()),
                ])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }

    /// Move a thread's counts into the families.
    pub fn take(&self, tally: &mut KongTally) {
        for ((service, route), counts) in tally.routes.iter_mut().flat_map(|(service, routes)| {
            routes
                .iter_mut()
                .map(move |(route, c)| ((service, route), c))
        }) {
            let scope = |extra: &[(&'static str, String)]| -> Labels {
                let mut labels = vec![
                    ("service", service.to_string()),
                    ("route", route.to_string()),
                ];
                labels.extend_from_slice(extra);
                labels
            };
            for (consumer, codes) in &mut counts.requests {
                for (code, source, n) in codes.iter_mut().filter(|(_, _, n)| *n > 0) {
                    self.http_requests
                        .get_or_create(&scope(&[
                            ("code", code.to_string()),
                            ("source", source.to_string()),
                            ("workspace", "default".into()),
                            ("consumer", consumer.to_string()),
                        ]))
                        .inc_by(std::mem::take(n));
                }
            }
            for (consumer, [ingress, egress]) in &mut counts.bandwidth {
                for (direction, bytes) in [("ingress", ingress), ("egress", egress)] {
                    if *bytes > 0 {
                        self.bandwidth
                            .get_or_create(&scope(&[
                                ("direction", direction.into()),
                                ("workspace", "default".into()),
                                ("consumer", consumer.to_string()),
                            ]))
                            .inc_by(std::mem::take(bytes));
                    }
                }
            }
            // Named consumers are unbounded (`per_consumer`): their entries go once counted;
            // the unnamed one stays, so the usual request allocates nothing.
            counts.requests.retain(|consumer, _| consumer.is_empty());
            counts.bandwidth.retain(|consumer, _| consumer.is_empty());
            let labels = scope(&[("workspace", "default".into())]);
            for (family, histogram) in [
                (&self.kong_latency, &mut counts.kong_latency),
                (&self.upstream_latency, &mut counts.upstream_latency),
                (&self.request_latency, &mut counts.request_latency),
            ] {
                if let Some(histogram) = histogram {
                    family.get_or_create(&labels).take(histogram);
                }
            }
        }
        self.nginx_requests
            .inc_by(i64::try_from(std::mem::take(&mut tally.requests)).unwrap_or(i64::MAX));
    }
}

/// One thread's counts for Kong's families since the last scrape.
#[derive(Default)]
pub struct KongTally {
    /// service → route → counts (two levels, so a lookup borrows the names: no allocation
    /// once a thread has seen them).
    routes: HashMap<Box<str>, HashMap<Box<str>, RouteCounts>>,
    /// Every request, as `kong_nginx_requests_total` counts them.
    requests: u64,
}

#[derive(Default)]
struct RouteCounts {
    /// consumer → (code, source, requests).
    requests: HashMap<Box<str>, Vec<(u16, &'static str, u64)>>,
    /// consumer → [ingress, egress] bytes.
    bandwidth: HashMap<Box<str>, [u64; 2]>,
    kong_latency: Option<Histogram>,
    upstream_latency: Option<Histogram>,
    request_latency: Option<Histogram>,
}

impl KongTally {
    /// Count `record` as an instance with `flags` asks.
    pub fn record(&mut self, record: &RequestRecord, flags: &Prometheus) {
        self.requests += 1;
        // Kong records nothing for a request that matched no route.
        let Some(route) = record.route.as_deref() else {
            return;
        };
        let service = record.service.as_deref().unwrap_or("");
        let routes = match self.routes.get_mut(service) {
            Some(routes) => routes,
            None => self.routes.entry(service.into()).or_default(),
        };
        let counts = match routes.get_mut(route) {
            Some(counts) => counts,
            None => routes.entry(route.into()).or_default(),
        };
        let consumer = match (&record.consumer, flags.per_consumer) {
            (Some(consumer), true) => &**consumer,
            _ => "",
        };
        if flags.status_code_metrics {
            let source = match record.source {
                Source::Origin => "service",
                Source::Gateway => "kong",
            };
            let codes = match counts.requests.get_mut(consumer) {
                Some(codes) => codes,
                None => counts.requests.entry(consumer.into()).or_default(),
            };
            match codes
                .iter_mut()
                .find(|(code, from, _)| *code == record.status && *from == source)
            {
                Some((_, _, n)) => *n += 1,
                None => codes.push((record.status, source, 1)),
            }
        }
        if flags.bandwidth_metrics {
            let bytes = match counts.bandwidth.get_mut(consumer) {
                Some(bytes) => bytes,
                None => counts.bandwidth.entry(consumer.into()).or_default(),
            };
            bytes[0] += record.bytes_in;
            bytes[1] += record.bytes_out;
        }
        if flags.latency_metrics {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            counts
                .kong_latency
                .get_or_insert_with(|| Histogram::new(KONG_LATENCY))
                .observe(ms(record.gateway));
            if let Some(upstream) = record.upstream {
                counts
                    .upstream_latency
                    .get_or_insert_with(|| Histogram::new(KONG_UPSTREAM))
                    .observe(ms(upstream));
            }
            counts
                .request_latency
                .get_or_insert_with(|| Histogram::new(KONG_UPSTREAM))
                .observe(ms(record.total));
        }
    }
}

/// This process's `node_id`: a random UUID, as Kong makes one per node.
fn node_id() -> String {
    let bytes: [u8; 16] = rand_bytes();
    let hex = crate::http_util::hex(&bytes);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (bytes[8] & 0x3),
        &hex[17..20],
        &hex[20..32]
    )
}

fn rand_bytes() -> [u8; 16] {
    let id = crate::http_util::request_id();
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    bytes
}
