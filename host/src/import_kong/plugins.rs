//! Kong's plugins that keygate carries over, each translated to its keygate.toml table (same
//! names and fields), or refused with the reason.

use super::*;

impl Importer {
    /// Kong's prometheus plugin: the same flags.
    pub(super) fn prometheus(
        &mut self,
        scope: &Scope,
        where_: &str,
        config: Map<String, Value>,
    ) -> toml::Table {
        let mut table = self.plugin_table("prometheus", scope, where_);
        let mut out = toml::Table::new();
        for (key, value) in config {
            if PROMETHEUS_FIELDS.contains(&key.as_str()) {
                if let Some(value) = to_toml(&value) {
                    out.insert(key, value);
                }
            } else {
                self.warn(format!(
                    "plugin prometheus ({where_}): config.{key} ignored (keygate has no such field)"
                ));
            }
        }
        table.insert("config".into(), out.into());
        table
    }

    pub(super) fn rate_limiting(
        &mut self,
        scope: &Scope,
        where_: &str,
        config: Map<String, Value>,
    ) -> toml::Table {
        let mut table = self.plugin_table("rate-limiting", scope, where_);
        let mut out = toml::Table::new();
        let mut config: BTreeMap<String, Value> = config.into_iter().collect();
        match config.get("policy").and_then(Value::as_str) {
            Some("cluster") => {
                self.warn(format!(
                    "plugin rate-limiting ({where_}): policy \"cluster\" mapped to \"local\" (counters per keygate node, not shared)"
                ));
                config.insert("policy".into(), Value::String("local".into()));
            }
            Some("redis") => {
                if config
                    .get("sync_rate")
                    .and_then(Value::as_f64)
                    .is_some_and(|r| r > 0.0)
                {
                    self.warn(format!(
                        "plugin rate-limiting ({where_}): sync_rate dropped: keygate counts every request in Redis as it happens (Kong's sync_rate = -1), not in batches"
                    ));
                    config.remove("sync_rate");
                }
                let server_name = |config: &BTreeMap<String, Value>| {
                    config
                        .get("redis_server_name")
                        .or_else(|| {
                            config
                                .get("redis")
                                .and_then(|redis| redis.get("server_name"))
                        })
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                if let Some(name) = server_name(&config) {
                    self.warn(format!(
                        "plugin rate-limiting ({where_}): redis server_name {name:?} kept; keygate checks only the host's own name, so `keygate check` refuses a different one: connect to that name as the host"
                    ));
                }
            }
            _ => {}
        }
        for (key, value) in config {
            if RATE_LIMITING_FIELDS.contains(&key.as_str()) {
                if let Some(value) = to_toml(&value) {
                    out.insert(key, value);
                }
            } else {
                self.warn(format!(
                    "plugin rate-limiting ({where_}): config.{key} ignored (keygate has no such field)"
                ));
            }
        }
        table.insert("config".into(), out.into());
        table
    }

    /// Kong's cors plugin: the same fields. An origin regex keygate's engine cannot compile
    /// (PCRE look-arounds, back-references) is dropped with a warning: a browser then refuses
    /// that origin, which narrows access, never widens it.
    pub(super) fn cors(
        &mut self,
        scope: &Scope,
        where_: &str,
        config: Map<String, Value>,
    ) -> Option<toml::Table> {
        use keygate_policy::plugins::cors::origin_compiles;
        if scope.consumer.is_some() {
            self.warn(format!(
                "plugin cors ({where_}): Kong does not apply cors per consumer; ignored"
            ));
            return None;
        }
        let mut table = self.plugin_table("cors", scope, where_);
        let mut out = toml::Table::new();
        for (key, value) in config {
            match key.as_str() {
                "origins" => {
                    let entries = list_of_strings(&value);
                    let written = entries.len();
                    let kept: Vec<String> = entries
                        .into_iter()
                        .filter(|origin| {
                            let compiles = origin_compiles(origin);
                            if !compiles {
                                self.warn(format!(
                                    "plugin cors ({where_}): origin {origin:?} dropped: keygate's regex engine cannot compile it (no look-around or back-references); browsers from it get no Access-Control-Allow-Origin"
                                ));
                            }
                            compiles
                        })
                        .collect();
                    if written > 0 && kept.is_empty() {
                        self.warn(format!(
                            "plugin cors ({where_}): no origin left that keygate can match; the plugin is not imported (browsers get no CORS headers)"
                        ));
                        return None;
                    }
                    out.insert(key, kept.into());
                }
                "allow_origin_absent" => {
                    if value == Value::Bool(false) {
                        self.warn(format!(
                            "plugin cors ({where_}): config.allow_origin_absent = false ignored (Kong 3.10+; keygate follows 3.9 and adds the headers whether or not the request has an Origin)"
                        ));
                    }
                }
                _ if CORS_FIELDS.contains(&key.as_str()) => {
                    // db_export writes an empty array as `{}`.
                    if value.as_object().is_some_and(Map::is_empty) {
                        continue;
                    }
                    if let Some(value) = to_toml(&value) {
                        out.insert(key, value);
                    }
                }
                _ => self.warn(format!(
                    "plugin cors ({where_}): config.{key} ignored (keygate has no such field)"
                )),
            }
        }
        table.insert("config".into(), out.into());
        Some(table)
    }

    /// Kong's ip-restriction plugin: the same fields (2.x's `whitelist` / `blacklist` read as
    /// `allow` / `deny`). An address keygate cannot read refuses the import: dropping a
    /// `deny` entry would widen access.
    pub(super) fn ip_restriction(
        &mut self,
        scope: &Scope,
        where_: &str,
        config: Map<String, Value>,
    ) -> anyhow::Result<toml::Table> {
        let mut table = self.plugin_table("ip-restriction", scope, where_);
        let mut out = toml::Table::new();
        for (key, value) in config {
            let list = match key.as_str() {
                "whitelist" | "blacklist" => {
                    let new = if key == "whitelist" { "allow" } else { "deny" };
                    self.warn(format!(
                        "plugin ip-restriction ({where_}): config.{key} read as config.{new} (its name since Kong 2.x)"
                    ));
                    Some(new)
                }
                "allow" | "deny" => Some(if key == "allow" { "allow" } else { "deny" }),
                _ => None,
            };
            if let Some(list) = list {
                if value.as_object().is_some_and(Map::is_empty) {
                    continue;
                }
                let entries = list_of_strings(&value);
                for entry in &entries {
                    if keygate_policy::net::IpNet::try_from(entry.clone()).is_err() {
                        bail!(
                            "refused: plugin ip-restriction ({where_}): config.{key} entry {entry:?} is not an IP address or CIDR block keygate reads; nothing was written"
                        );
                    }
                }
                let merged = match out.remove(list) {
                    Some(toml::Value::Array(mut before)) => {
                        before.extend(entries.into_iter().map(toml::Value::from));
                        toml::Value::Array(before)
                    }
                    _ => entries.into(),
                };
                out.insert(list.into(), merged);
                continue;
            }
            match key.as_str() {
                "status" => match value.as_f64() {
                    Some(status) if (400.0..=599.0).contains(&status) && status.fract() == 0.0 => {
                        out.insert(key, toml::Value::Integer(status as i64));
                    }
                    _ => self.warn(format!(
                        "plugin ip-restriction ({where_}): config.status {value} dropped (Kong answers 500 for a status outside 400-599); refused requests get 403"
                    )),
                },
                _ if IP_RESTRICTION_FIELDS.contains(&key.as_str()) => {
                    if let Some(value) = to_toml(&value) {
                        out.insert(key, value);
                    }
                }
                _ => self.warn(format!(
                    "plugin ip-restriction ({where_}): config.{key} ignored (keygate has no such field)"
                )),
            }
        }
        table.insert("config".into(), out.into());
        Ok(table)
    }

    /// Kong's request-size-limiting: its limit in bytes, which becomes the `max_body_size` of
    /// the routes it covers (`None`, with the reason in the report, when it cannot).
    pub(super) fn request_size_limiting(
        &mut self,
        scope: &Scope,
        where_: &str,
        config: Map<String, Value>,
    ) -> Option<u64> {
        let label = format!("plugin request-size-limiting ({where_})");
        if scope.consumer.is_some() {
            self.warn(format!(
                "{label}: not imported: keygate's body limit is a route's (max_body_size), not a consumer's"
            ));
            return None;
        }
        let size = match config.get("allowed_payload_size") {
            None => Some(128),
            Some(value) => value.as_u64(),
        };
        let unit = match config.get("size_unit").and_then(Value::as_str) {
            None | Some("megabytes") => Some(1024 * 1024),
            Some("kilobytes") => Some(1024),
            Some("bytes") => Some(1),
            Some(_) => None,
        };
        let Some(bytes) = size
            .zip(unit)
            .and_then(|(size, unit)| size.checked_mul(unit))
        else {
            self.warn(format!(
                "{label}: not imported: allowed_payload_size {:?} in size_unit {:?} is not a size",
                config.get("allowed_payload_size"),
                config.get("size_unit")
            ));
            return None;
        };
        if bytes == 0 {
            self.warn(format!(
                "{label}: not imported: allowed_payload_size 0 refuses every body in Kong; keygate's max_body_size is at least 1 byte"
            ));
            return None;
        }
        for (key, value) in &config {
            match key.as_str() {
                "allowed_payload_size" | "size_unit" => {}
                "require_content_length" if value == &Value::Bool(true) => self.warn(format!(
                    "{label}: require_content_length ignored: a body without Content-Length is not refused with 411 but counted as it streams and cut off at the limit (413)"
                )),
                "require_content_length" => {}
                other => self.warn(format!(
                    "{label}: config.{other} ignored (keygate has no such field)"
                )),
            }
        }
        let routes = match (scope.route, scope.service) {
            (Some(_), _) => "its route",
            (None, Some(_)) => "its service's routes without one of their own",
            (None, None) => "every route without a route's or service's instance",
        };
        self.warn(format!(
            "{label}: imported as max_body_size = {bytes} bytes on {routes}; the 413 says \"Payload too large\" (nginx's words) instead of \"Request size limit exceeded\", with Expect: 100-continue too (Kong: 417), and comes before key-auth"
        ));
        Some(bytes)
    }

    /// Kong's request-termination plugin: the same fields.
    pub(super) fn request_termination(
        &mut self,
        scope: &Scope,
        where_: &str,
        config: Map<String, Value>,
    ) -> anyhow::Result<toml::Table> {
        let mut table = self.plugin_table("request-termination", scope, where_);
        let mut out = toml::Table::new();
        for (key, value) in config {
            if key == "status_code"
                && value
                    .as_f64()
                    .is_some_and(|status| (100.0..200.0).contains(&status))
            {
                bail!(
                    "refused: plugin request-termination ({where_}): status_code {value} cannot end a response in keygate (a 1xx is not a final status); nothing was written"
                );
            }
            if REQUEST_TERMINATION_FIELDS.contains(&key.as_str()) {
                if let Some(value) = to_toml(&value) {
                    out.insert(key, value);
                }
            } else {
                self.warn(format!(
                    "plugin request-termination ({where_}): config.{key} ignored (keygate has no such field)"
                ));
            }
        }
        table.insert("config".into(), out.into());
        Ok(table)
    }
}

/// A list of strings (a lone string counts as a list of one, as Kong's schema coerces it).
fn list_of_strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(|v| str_of(Some(v))).collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}
