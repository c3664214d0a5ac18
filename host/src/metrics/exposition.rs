//! `/metrics` in the Prometheus text format 0.0.4, the one Kong serves, from what the metrics
//! library writes (OpenMetrics 1.0): a counter family is named with its `_total` in `# HELP`
//! and `# TYPE`, `le` bounds are written as Kong writes them (`"25"`, not `"25.0"`), and there
//! is no `# UNIT` or `# EOF`. Scrapers and Kong's Grafana dashboards read it unchanged.

/// Counters Kong names without `_total` (the library always appends it to counter samples).
const COUNTERS_WITHOUT_TOTAL: &[&str] = &["kong_bandwidth_bytes"];

/// The content type of the result.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrite OpenMetrics text (as `prometheus_client::encoding::text::encode_registry` writes
/// it) into the 0.0.4 text format.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    // The family whose samples lose their `_total`, while its samples run.
    let mut untotalled: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            untotalled = COUNTERS_WITHOUT_TOTAL
                .iter()
                .copied()
                .find(|family| *family == name && kind == "counter");
            let (name, kind) = match kind {
                "counter" if untotalled.is_some() => (name.to_string(), kind),
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), kind),
                "unknown" => (name.to_string(), "untyped"),
                _ => (name.to_string(), kind),
            };
            if let Some(help) = help.take() {
                let text = help.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(help) = help.take() {
            out.push_str("# HELP ");
            out.push_str(help);
            out.push('\n');
        }
        match untotalled.and_then(|family| {
            line.strip_prefix(family)
                .and_then(|rest| rest.strip_prefix("_total"))
                .map(|rest| (family, rest))
        }) {
            Some((family, rest)) => {
                out.push_str(family);
                out.push_str(rest);
            }
            None => out.push_str(&integral_le(line)),
        }
        out.push('\n');
    }
    out
}

/// A bucket's `le` label moved last (the metrics library writes it first; Kong, and
/// Prometheus' own clients, last), and written as Kong writes it: `le="25"`, not `"25.0"`
/// (`0.25` and `+Inf` as they are).
fn integral_le(sample: &str) -> std::borrow::Cow<'_, str> {
    let Some(open) = sample.find('{') else {
        return sample.into();
    };
    let Some(close) = sample.rfind('}') else {
        return sample.into();
    };
    let labels = &sample[open + 1..close];
    let Some(start) = labels
        .find("le=\"")
        .filter(|&at| at == 0 || labels[..at].ends_with(','))
    else {
        return sample.into();
    };
    let value_start = start + 4;
    let Some(length) = labels[value_start..].find('"') else {
        return sample.into();
    };
    let value = &labels[value_start..value_start + length];
    let value = match value.strip_suffix(".0") {
        Some(integral) if integral.bytes().all(|b| b.is_ascii_digit()) => integral,
        _ => value,
    };
    let before = labels[..start].trim_end_matches(',');
    let after = labels[value_start + length + 1..].trim_start_matches(',');
    let others = match (before.is_empty(), after.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("{before},"),
        (true, false) => format!("{after},"),
        (false, false) => format!("{before},{after},"),
    };
    format!(
        "{}{{{others}le=\"{value}\"}}{}",
        &sample[..open],
        &sample[close + 1..]
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_kongs_text_format() {
        let openmetrics = "\
# HELP kong_http_requests HTTP status codes per consumer/service/route in Kong.
# TYPE kong_http_requests counter
kong_http_requests_total{service=\"s\",code=\"200\"} 3
# HELP kong_kong_latency_ms Latency added by Kong.
# TYPE kong_kong_latency_ms histogram
# UNIT kong_kong_latency_ms ms
kong_kong_latency_ms_sum{service=\"s\"} 1.5
kong_kong_latency_ms_count{service=\"s\"} 1
kong_kong_latency_ms_bucket{le=\"1.0\",service=\"s\",route=\"r\"} 0
kong_kong_latency_ms_bucket{le=\"0.25\",service=\"s\"} 0
kong_kong_latency_ms_bucket{le=\"+Inf\"} 1
# HELP kong_nginx_connections_total Number of connections by subsystem.
# TYPE kong_nginx_connections_total gauge
kong_nginx_connections_total{state=\"active\"} 2
# HELP kong_bandwidth_bytes Total bandwidth (ingress/egress) throughput in bytes.
# TYPE kong_bandwidth_bytes counter
kong_bandwidth_bytes_total{direction=\"egress\"} 313
# EOF
";
        assert_eq!(
            to_text_format(openmetrics),
            "\
# HELP kong_http_requests_total HTTP status codes per consumer/service/route in Kong.
# TYPE kong_http_requests_total counter
kong_http_requests_total{service=\"s\",code=\"200\"} 3
# HELP kong_kong_latency_ms Latency added by Kong.
# TYPE kong_kong_latency_ms histogram
kong_kong_latency_ms_sum{service=\"s\"} 1.5
kong_kong_latency_ms_count{service=\"s\"} 1
kong_kong_latency_ms_bucket{service=\"s\",route=\"r\",le=\"1\"} 0
kong_kong_latency_ms_bucket{service=\"s\",le=\"0.25\"} 0
kong_kong_latency_ms_bucket{le=\"+Inf\"} 1
# HELP kong_nginx_connections_total Number of connections by subsystem.
# TYPE kong_nginx_connections_total gauge
kong_nginx_connections_total{state=\"active\"} 2
# HELP kong_bandwidth_bytes Total bandwidth (ingress/egress) throughput in bytes.
# TYPE kong_bandwidth_bytes counter
kong_bandwidth_bytes{direction=\"egress\"} 313
"
        );
    }
}
