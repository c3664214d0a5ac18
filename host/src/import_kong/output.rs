//! The collected entities and plugins as keygate.toml: scopes, key-auth, rate-limiting, and
//! the warnings or refusals for what keygate cannot carry over.

use super::*;

impl Importer {
    pub(super) fn scope_label(&self, scope: &Scope) -> String {
        let mut parts = Vec::new();
        if let Some((s, r)) = scope.route {
            let route = &self.services[s].routes[r];
            parts.push(format!(
                "route {:?}",
                route
                    .name
                    .as_deref()
                    .or(route.id.as_deref())
                    .unwrap_or("(unnamed)")
            ));
        }
        if let Some(s) = scope.service {
            parts.push(format!("service {:?}", self.services[s].name));
        }
        if let Some(c) = scope.consumer {
            parts.push(self.consumer_label(c));
        }
        if parts.is_empty() {
            "global".into()
        } else {
            parts.join(" + ")
        }
    }

    pub(super) fn finish(mut self) -> anyhow::Result<Imported> {
        let plugins = std::mem::take(&mut self.plugins);
        let mut refused = Vec::new();
        let mut key_auth: Vec<(Scope, Map<String, Value>)> = Vec::new();
        let mut written_plugins: Vec<toml::Value> = Vec::new();
        for (scope, plugin) in plugins {
            let name = str_of(plugin.get("name")).unwrap_or_default();
            let where_ = self.scope_label(&scope);
            if plugin.get("enabled") == Some(&Value::Bool(false)) {
                self.warn(format!(
                    "plugin {name} ({where_}): disabled in Kong; not imported"
                ));
                continue;
            }
            let config = match plugin.get("config") {
                Some(Value::Object(c)) => non_null(c.clone()),
                _ => Map::new(),
            };
            match name.as_str() {
                "key-auth" => {
                    if scope.consumer.is_some() {
                        self.warn(format!("plugin key-auth ({where_}): Kong does not apply key-auth per consumer; ignored"));
                    } else {
                        key_auth.push((scope, config));
                    }
                }
                "rate-limiting" => {
                    let table = self.rate_limiting(&scope, &where_, config);
                    written_plugins.push(table.into());
                }
                refused_name if REFUSED_PLUGINS.contains(&refused_name) => {
                    refused.push(format!("plugin {name} ({where_})"));
                }
                _ => self.warn(format!(
                    "plugin {name} ({where_}): keygate has no such plugin; skipped"
                )),
            }
        }
        if !refused.is_empty() {
            bail!(
                "refused: keygate cannot enforce {}; dropping it would let through requests Kong refuses. Nothing was written.",
                refused.join(", ")
            );
        }
        let mut root = toml::Table::new();
        // key-auth: keygate has one [key_auth] and a per-route on/off switch.
        let global = key_auth
            .iter()
            .any(|(s, _)| s.service.is_none() && s.route.is_none());
        if let Some((_, first)) = key_auth.first() {
            if let Some((scope, _)) = key_auth.iter().find(|(_, c)| c != first) {
                bail!(
                    "refused: key-auth is configured differently at {} and {} (keygate has one [key_auth] for every route yet); nothing was written",
                    self.scope_label(&key_auth[0].0),
                    self.scope_label(scope)
                );
            }
            let mut table = toml::Table::new();
            for (key, value) in first {
                if KEY_AUTH_FIELDS.contains(&key.as_str()) {
                    if let Some(value) = to_toml(value) {
                        table.insert(key.clone(), value);
                    }
                } else {
                    self.warn(format!(
                        "plugin key-auth ({}): config.{key} ignored (keygate has no such field)",
                        self.scope_label(&key_auth[0].0)
                    ));
                }
            }
            if !table.is_empty() {
                root.insert("key_auth".into(), table.into());
            }
        } else {
            self.warn("no key-auth plugin: every route is imported with auth = false (public)");
        }
        let mut consumers = Vec::new();
        for c in &self.consumers {
            let mut t = toml::Table::new();
            for (k, v) in [
                ("id", &c.id),
                ("username", &c.username),
                ("custom_id", &c.custom_id),
            ] {
                if let Some(v) = v {
                    t.insert(k.into(), v.clone().into());
                }
            }
            if !c.keys.is_empty() {
                t.insert("keys".into(), c.keys.clone().into());
            }
            consumers.push(toml::Value::Table(t));
        }
        let mut services = Vec::new();
        for (s, service) in self.services.iter().enumerate() {
            let mut table = service.table.clone();
            let mut routes = Vec::new();
            for (r, route) in service.routes.iter().enumerate() {
                let mut t = route.table.clone();
                let covered = global
                    || key_auth
                        .iter()
                        .any(|(scope, _)| scope.service == Some(s) || scope.route == Some((s, r)));
                if !covered {
                    t.insert("auth".into(), false.into());
                }
                routes.push(toml::Value::Table(t));
            }
            if !routes.is_empty() {
                table.insert("routes".into(), routes.into());
            }
            services.push(toml::Value::Table(table));
        }
        if !consumers.is_empty() {
            root.insert("consumers".into(), consumers.into());
        }
        if !services.is_empty() {
            root.insert("services".into(), services.into());
        }
        if !written_plugins.is_empty() {
            root.insert("plugins".into(), written_plugins.into());
        }
        let body = toml::to_string(&root).context("writing TOML")?;
        let toml =
            format!("# Imported from a Kong declarative file by `keygate import-kong`.\n\n{body}");
        Ok(Imported {
            toml,
            warnings: self.warnings,
        })
    }

    pub(super) fn rate_limiting(
        &mut self,
        scope: &Scope,
        where_: &str,
        config: Map<String, Value>,
    ) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("name".into(), "rate-limiting".into());
        if let Some(s) = scope.service {
            table.insert("service".into(), self.services[s].name.clone().into());
        }
        if let Some((s, r)) = scope.route {
            let name = match &self.services[s].routes[r].name {
                Some(name) => name.clone(),
                None => {
                    let name = self.services[s].routes[r]
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("{}-route-{}", self.services[s].name, r + 1));
                    self.warn(format!(
                        "{where_}: the route has no name; named {name:?} so the rate-limiting plugin can name it"
                    ));
                    self.services[s].routes[r].name = Some(name.clone());
                    self.services[s].routes[r]
                        .table
                        .insert("name".into(), name.clone().into());
                    name
                }
            };
            table.insert("route".into(), name.into());
        }
        if let Some(c) = scope.consumer {
            let consumer = &self.consumers[c];
            let name = consumer
                .username
                .clone()
                .or(consumer.id.clone())
                .unwrap_or_default();
            table.insert("consumer".into(), name.into());
        }
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
                let ssl = |config: &BTreeMap<String, Value>| {
                    config.get("redis_ssl").and_then(Value::as_bool) == Some(true)
                        || config
                            .get("redis")
                            .and_then(|redis| redis.get("ssl"))
                            .and_then(Value::as_bool)
                            == Some(true)
                };
                if ssl(&config) {
                    self.warn(format!(
                        "plugin rate-limiting ({where_}): redis ssl = true kept, but keygate does not speak TLS to Redis yet (`keygate check` refuses it): reach Redis through a local TLS tunnel and set ssl = false"
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
}
