//! Kong 3.9's `prometheus` plugin configuration (`kong/plugins/prometheus/schema.lua`): which
//! of Kong's metric families the gateway exports besides its own, so dashboards and alerts
//! built on Kong's names keep working the day traffic moves. Every flag defaults to false, as
//! in Kong.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prometheus {
    /// `consumer` label values (the username); else the label is present and empty.
    pub per_consumer: bool,
    /// `kong_http_requests_total{service,route,code,source,workspace,consumer}`.
    pub status_code_metrics: bool,
    /// `kong_kong_latency_ms`, `kong_upstream_latency_ms`, `kong_request_latency_ms`.
    pub latency_metrics: bool,
    /// `kong_bandwidth_bytes{direction="ingress"|"egress"}`.
    pub bandwidth_metrics: bool,
    /// `kong_upstream_target_health`: keygate has no upstream health checks, so nothing is
    /// exported for it (as Kong exports nothing for services without upstreams).
    pub upstream_health_metrics: bool,
    /// Kong's AI proxy metrics: keygate proxies no AI provider, so nothing is exported.
    pub ai_metrics: bool,
}
