//! The counts `GET /admin/stats` reports, read back from the Prometheus text exposition
//! ([`crate::metrics::Metrics::render`]): the one place where every thread's tally is merged,
//! so the dashboard and a Prometheus scrape always agree.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The status classes every count by code is summed into (`error`: no answer at all).
const CLASSES: [&str; 5] = ["2xx", "3xx", "4xx", "5xx", "error"];

/// One sample line: `name{label="value",…} value`.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Counters are whole numbers; a gauge that went negative reads as 0.
    fn count(&self) -> u64 {
        if self.value.is_finite() && self.value > 0.0 {
            self.value as u64
        } else {
            0
        }
    }
}

/// The samples of a Prometheus text exposition (comments and malformed lines skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, mut rest) = line.split_at(line.find(['{', ' '])?);
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_string(), value));
            inner = &after[end + 1..];
            if let Some(next) = inner.strip_prefix(',') {
                inner = next;
            } else if !inner.starts_with('}') {
                return None;
            }
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `200` → `2xx`; `error` stays `error`.
fn class_of(code: &str) -> &'static str {
    match code.as_bytes().first() {
        Some(b'2') => "2xx",
        Some(b'3') => "3xx",
        Some(b'4') => "4xx",
        Some(b'5') => "5xx",
        _ => "error",
    }
}

/// Counts by status code, with their classes and total.
#[derive(Default)]
struct ByCode(BTreeMap<String, u64>);

impl ByCode {
    fn add(&mut self, code: &str, n: u64) {
        *self.0.entry(code.to_string()).or_default() += n;
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    fn classes(&self) -> Value {
        let mut classes: BTreeMap<&str, u64> = CLASSES.iter().map(|c| (*c, 0)).collect();
        for (code, n) in &self.0 {
            *classes.entry(class_of(code)).or_default() += n;
        }
        json!(classes)
    }

    /// `{"total", "classes", "codes"}`, plus `key: name` when it is one of several.
    fn to_json(&self, key: Option<(&str, &str)>) -> Value {
        let mut object = Map::new();
        if let Some((key, name)) = key {
            object.insert(key.into(), name.into());
        }
        object.insert("total".into(), self.total().into());
        object.insert("classes".into(), self.classes());
        object.insert("codes".into(), json!(self.0));
        Value::Object(object)
    }
}

/// What one scrape counted since the start, grouped as `/admin/stats` reports it.
#[derive(Default)]
pub struct Counts {
    requests: BTreeMap<String, ByCode>,
    upstream: BTreeMap<String, ByCode>,
    auth_api: ByCode,
    auth_shed: u64,
    auth_skipped: u64,
    auth_down: bool,
    lookups: BTreeMap<String, u64>,
    rate_limit: BTreeMap<String, BTreeMap<String, u64>>,
    guest_failures: BTreeMap<String, u64>,
    in_flight: u64,
    key_cache_entries: u64,
}

const LOOKUP_RESULTS: [&str; 4] = ["fresh", "stale", "miss", "coalesced"];
const RATE_LIMIT_OUTCOMES: [&str; 3] = ["allowed", "limited", "counters_unavailable"];

impl Counts {
    /// Group the keygate families of a text exposition (the rest is ignored).
    pub fn from_exposition(text: &str) -> Self {
        let mut counts = Self::default();
        for sample in parse(text) {
            let n = sample.count();
            match sample.name.as_str() {
                "keygate_http_requests_total" => counts
                    .requests
                    .entry(sample.label("route").to_string())
                    .or_default()
                    .add(sample.label("code"), n),
                "keygate_upstream_responses_total" => counts
                    .upstream
                    .entry(sample.label("service").to_string())
                    .or_default()
                    .add(sample.label("code"), n),
                "keygate_auth_api_responses_total" => counts.auth_api.add(sample.label("code"), n),
                "keygate_auth_api_calls_shed_total" => counts.auth_shed += n,
                "keygate_auth_api_calls_skipped_total" => counts.auth_skipped += n,
                "keygate_auth_api_down" => counts.auth_down = n > 0,
                "keygate_key_cache_lookups_total" => {
                    *counts
                        .lookups
                        .entry(sample.label("result").to_string())
                        .or_default() += n;
                }
                "keygate_rate_limit_decisions_total" => {
                    *counts
                        .rate_limit
                        .entry(sample.label("route").to_string())
                        .or_default()
                        .entry(sample.label("outcome").to_string())
                        .or_default() += n;
                }
                "keygate_guest_failures_total" => {
                    *counts
                        .guest_failures
                        .entry(sample.label("reason").to_string())
                        .or_default() += n;
                }
                "keygate_requests_in_flight" => counts.in_flight = n,
                "keygate_key_cache_entries" => counts.key_cache_entries = n,
                _ => {}
            }
        }
        counts
    }

    /// `requests`: client requests answered, by route (`(none)`: no route matched).
    pub fn requests(&self) -> Value {
        let mut all = ByCode::default();
        for by_code in self.requests.values() {
            for (code, n) in &by_code.0 {
                all.add(code, *n);
            }
        }
        let mut value = all.to_json(None);
        value["in_flight"] = self.in_flight.into();
        value["routes"] = self
            .requests
            .iter()
            .map(|(route, by_code)| by_code.to_json(Some(("route", route))))
            .collect();
        value
    }

    /// `upstream`: the origins' answers, by service.
    pub fn upstream(&self) -> Value {
        let mut all = ByCode::default();
        for by_code in self.upstream.values() {
            for (code, n) in &by_code.0 {
                all.add(code, *n);
            }
        }
        let mut value = all.to_json(None);
        value["services"] = self
            .upstream
            .iter()
            .map(|(service, by_code)| by_code.to_json(Some(("service", service))))
            .collect();
        value
    }

    /// `auth_api`: its answers by code, the calls shed or skipped, whether it is marked down.
    pub fn auth_api(&self) -> Value {
        let mut value = self.auth_api.to_json(None);
        value["shed"] = self.auth_shed.into();
        value["skipped"] = self.auth_skipped.into();
        value["down"] = self.auth_down.into();
        value
    }

    /// `key_cache`: entries now, lookups by result, and the hit ratio since the start.
    pub fn key_cache(&self) -> Value {
        let lookups: BTreeMap<&str, u64> = LOOKUP_RESULTS
            .iter()
            .map(|result| (*result, self.lookups.get(*result).copied().unwrap_or(0)))
            .collect();
        let all: u64 = lookups.values().sum();
        let hits = lookups["fresh"] + lookups["stale"];
        json!({
            "entries": self.key_cache_entries,
            "lookups": lookups,
            "hit_ratio": (all > 0).then(|| hits as f64 / all as f64),
        })
    }

    /// `rate_limit`: decisions by outcome, in all and by route.
    pub fn rate_limit(&self) -> Value {
        let mut all: BTreeMap<&str, u64> = RATE_LIMIT_OUTCOMES.iter().map(|o| (*o, 0)).collect();
        let routes: Vec<Value> = self
            .rate_limit
            .iter()
            .map(|(route, outcomes)| {
                let mut object = Map::new();
                object.insert("route".into(), route.as_str().into());
                for outcome in RATE_LIMIT_OUTCOMES {
                    let n = outcomes.get(outcome).copied().unwrap_or(0);
                    *all.entry(outcome).or_default() += n;
                    object.insert(outcome.into(), n.into());
                }
                Value::Object(object)
            })
            .collect();
        let mut value = json!(all);
        value["routes"] = routes.into();
        value
    }

    /// `guest_failures`: by reason.
    pub fn guest_failures(&self) -> Value {
        json!(self.guest_failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_escaped_labels_parse() {
        let samples = parse(
            "# HELP x y\n# TYPE keygate_http_requests_total counter\n\
             keygate_http_requests_total{route=\"a \\\"b\\\" \\\\ c\",code=\"200\"} 3\n\
             keygate_requests_in_flight 2\n\
             x_bucket{le=\"+Inf\",} 7\n\
             keygate_x{} 1.5e3\n\
             broken{route=\"open 1\n",
        );
        assert_eq!(
            samples,
            [
                Sample {
                    name: "keygate_http_requests_total".into(),
                    labels: vec![
                        ("route".into(), "a \"b\" \\ c".into()),
                        ("code".into(), "200".into())
                    ],
                    value: 3.0,
                },
                Sample {
                    name: "keygate_requests_in_flight".into(),
                    labels: vec![],
                    value: 2.0,
                },
                Sample {
                    name: "x_bucket".into(),
                    labels: vec![("le".into(), "+Inf".into())],
                    value: 7.0,
                },
                Sample {
                    name: "keygate_x".into(),
                    labels: vec![],
                    value: 1500.0,
                },
            ]
        );
    }

    #[test]
    fn families_are_grouped_by_route_and_class() {
        let counts = Counts::from_exposition(
            "keygate_http_requests_total{route=\"api\",code=\"200\"} 5\n\
             keygate_http_requests_total{route=\"api\",code=\"401\"} 2\n\
             keygate_http_requests_total{route=\"(none)\",code=\"404\"} 1\n\
             keygate_auth_api_responses_total{code=\"200\"} 3\n\
             keygate_auth_api_responses_total{code=\"error\"} 1\n\
             keygate_key_cache_lookups_total{result=\"fresh\"} 3\n\
             keygate_key_cache_lookups_total{result=\"miss\"} 1\n\
             keygate_rate_limit_decisions_total{route=\"api\",outcome=\"limited\"} 4\n\
             keygate_requests_in_flight 1\n",
        );
        let requests = counts.requests();
        assert_eq!(requests["total"], 8);
        assert_eq!(requests["in_flight"], 1);
        assert_eq!(requests["classes"]["4xx"], 3);
        assert_eq!(requests["routes"][1]["route"], "api");
        assert_eq!(requests["routes"][1]["codes"]["401"], 2);
        assert_eq!(requests["routes"][1]["classes"]["2xx"], 5);
        let auth = counts.auth_api();
        assert_eq!(
            (auth["total"].clone(), auth["classes"]["error"].clone()),
            (4.into(), 1.into())
        );
        assert_eq!(counts.key_cache()["hit_ratio"], 0.75);
        let limits = counts.rate_limit();
        assert_eq!(
            (limits["limited"].clone(), limits["allowed"].clone()),
            (4.into(), 0.into())
        );
        assert_eq!(limits["routes"][0]["counters_unavailable"], 0);
    }
}
