//! The collected entities and plugins as keygate.toml: scopes, key-auth, services and routes,
//! and the warnings or refusals for what keygate cannot carry over. Each other plugin's
//! translation is in `plugins.rs`.

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
        // With --fallback, routes carrying a plugin keygate cannot enforce stay with Kong.
        let left_to_kong = self.left_to_kong(&plugins);
        let plugins: Vec<(Scope, Map<String, Value>)> = plugins
            .into_iter()
            .filter(|(scope, _)| !self.scope_left_to_kong(scope, &left_to_kong))
            .collect();
        let mut refused = Vec::new();
        let mut key_auth: Vec<(Scope, Map<String, Value>)> = Vec::new();
        let mut written_plugins: Vec<toml::Value> = Vec::new();
        // request-size-limiting instances, as routes' `max_body_size` (bytes).
        let mut size_limits: Vec<(Scope, u64)> = Vec::new();
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
                "prometheus" => {
                    let table = self.prometheus(&scope, &where_, config);
                    written_plugins.push(table.into());
                }
                "cors" => {
                    if let Some(table) = self.cors(&scope, &where_, config) {
                        written_plugins.push(table.into());
                    }
                }
                "ip-restriction" => {
                    let table = self.ip_restriction(&scope, &where_, config)?;
                    written_plugins.push(table.into());
                }
                "request-termination" => {
                    let table = self.request_termination(&scope, &where_, config)?;
                    written_plugins.push(table.into());
                }
                "request-size-limiting" => {
                    if let Some(bytes) = self.request_size_limiting(&scope, &where_, config) {
                        size_limits.push((scope, bytes));
                    }
                }
                // With --fallback its routes were left to Kong above.
                refused_name if REFUSED_PLUGINS.contains(&refused_name) => {
                    if self.fallback.is_none() {
                        refused.push(format!("plugin {name} ({where_})"));
                    }
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
        // key-auth: the global instance is [key_auth]; a service's or route's is a
        // [[plugins]] name = "key-auth" with its own fields; a route none covers is public.
        let global = key_auth
            .iter()
            .any(|(s, _)| s.service.is_none() && s.route.is_none());
        if key_auth.is_empty() {
            self.warn("no key-auth plugin: every route is imported with auth = false (public)");
        }
        for (scope, config) in &key_auth {
            let where_ = self.scope_label(scope);
            let mut fields = toml::Table::new();
            for (key, value) in config {
                if KEY_AUTH_FIELDS.contains(&key.as_str()) {
                    if let Some(value) = to_toml(value) {
                        fields.insert(key.clone(), value);
                    }
                } else {
                    self.warn(format!(
                        "plugin key-auth ({where_}): config.{key} ignored (keygate has no such field)"
                    ));
                }
            }
            if scope.service.is_none() && scope.route.is_none() {
                if !fields.is_empty() {
                    root.insert("key_auth".into(), fields.into());
                }
            } else {
                let mut table = self.plugin_table("key-auth", scope, &where_);
                table.insert("config".into(), fields.into());
                written_plugins.push(table.into());
            }
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
                let keys: Vec<toml::Value> = c
                    .keys
                    .iter()
                    .map(|(key, id)| match id {
                        None => key.clone().into(),
                        // Kept, so X-Credential-Identifier does not change.
                        Some(id) => {
                            let mut entry = toml::map::Map::new();
                            entry.insert("key".into(), key.clone().into());
                            entry.insert("id".into(), id.clone().into());
                            toml::Value::Table(entry)
                        }
                    })
                    .collect();
                t.insert("keys".into(), keys.into());
            }
            consumers.push(toml::Value::Table(t));
        }
        let mut services = Vec::new();
        for (s, service) in self.services.iter().enumerate() {
            let mut table = service.table.clone();
            let mut routes = Vec::new();
            let mut kept_any = service.routes.is_empty();
            for (r, route) in service.routes.iter().enumerate() {
                if left_to_kong.contains(&(s, r)) {
                    continue;
                }
                kept_any = true;
                let mut t = route.table.clone();
                let covered = global
                    || key_auth
                        .iter()
                        .any(|(scope, _)| scope.service == Some(s) || scope.route == Some((s, r)));
                if !covered {
                    t.insert("auth".into(), false.into());
                }
                if let Some(bytes) = size_limit_of(&size_limits, s, r) {
                    t.insert("max_body_size".into(), size_value(bytes));
                }
                routes.push(toml::Value::Table(t));
            }
            if !kept_any {
                continue;
            }
            if !routes.is_empty() {
                table.insert("routes".into(), routes.into());
            }
            services.push(toml::Value::Table(table));
        }
        if let Some(url) = self.fallback.clone() {
            services.push(self.fallback_service(&url, &left_to_kong)?);
        }
        if !consumers.is_empty() {
            root.insert("consumers".into(), consumers.into());
        }
        if !services.is_empty() {
            root.insert("services".into(), services.into());
        }
        let mut upstreams: Vec<toml::Value> = Vec::new();
        for (name, _, table) in std::mem::take(&mut self.upstreams) {
            if table
                .get("targets")
                .and_then(toml::Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                self.warn(format!(
                    "upstream {name:?}: has no targets (Kong answers 503 for its services); not imported, so its services resolve {name:?} with DNS"
                ));
                continue;
            }
            upstreams.push(toml::Value::Table(table));
        }
        if !upstreams.is_empty() {
            root.insert("upstreams".into(), upstreams.into());
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

    /// With `--fallback`: the routes (service index, route index) that carry a plugin keygate
    /// cannot enforce, which stay with Kong. A service's plugin covers its routes; a global or
    /// consumer one every route (a consumer may call any of them).
    fn left_to_kong(
        &mut self,
        plugins: &[(Scope, Map<String, Value>)],
    ) -> BTreeSet<(usize, usize)> {
        let mut left = BTreeSet::new();
        if self.fallback.is_none() {
            return left;
        }
        for (scope, plugin) in plugins {
            let name = str_of(plugin.get("name")).unwrap_or_default();
            if !REFUSED_PLUGINS.contains(&name.as_str())
                || plugin.get("enabled") == Some(&Value::Bool(false))
            {
                continue;
            }
            let routes: Vec<(usize, usize)> = match (scope.route, scope.service) {
                (Some(route), _) => vec![route],
                (None, Some(s)) => (0..self.services[s].routes.len()).map(|r| (s, r)).collect(),
                (None, None) => self
                    .services
                    .iter()
                    .enumerate()
                    .flat_map(|(s, service)| (0..service.routes.len()).map(move |r| (s, r)))
                    .collect(),
            };
            let where_ = self.scope_label(scope);
            for (s, r) in routes {
                if left.insert((s, r)) {
                    let route = &self.services[s].routes[r];
                    let label = route.name.clone().or(route.id.clone()).unwrap_or_else(|| {
                        format!("#{} of service {:?}", r + 1, self.services[s].name)
                    });
                    self.warn(format!(
                        "route {label:?} left to Kong (not imported; --fallback serves it): plugin {name} ({where_}) cannot be enforced by keygate"
                    ));
                }
            }
        }
        left
    }

    /// Whether a plugin's scope names a route or service that stays with Kong.
    fn scope_left_to_kong(&self, scope: &Scope, left: &BTreeSet<(usize, usize)>) -> bool {
        match (scope.route, scope.service) {
            (Some(route), _) => left.contains(&route),
            (None, Some(s)) => {
                let routes = self.services[s].routes.len();
                routes > 0 && (0..routes).all(|r| left.contains(&(s, r)))
            }
            (None, None) => false,
        }
    }

    /// `--fallback URL`: the last, catch-all route to the old Kong. Public here (Kong checks
    /// the key itself), with the client's Host, so the routes keygate does not serve yet keep
    /// working as before.
    fn fallback_service(
        &mut self,
        url: &str,
        left: &BTreeSet<(usize, usize)>,
    ) -> anyhow::Result<toml::Value> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!(
                "--fallback {url:?}: expected an http:// or https:// URL of the old Kong's proxy"
            );
        }
        let taken = |name: &str| {
            self.services.iter().any(|service| {
                service.name == name
                    || service
                        .routes
                        .iter()
                        .any(|route| route.name.as_deref() == Some(name))
            })
        };
        let mut name = "kong-fallback".to_string();
        let mut n = 1;
        while taken(&name) {
            n += 1;
            name = format!("kong-fallback-{n}");
        }
        let mut route = toml::Table::new();
        route.insert("name".into(), name.clone().into());
        route.insert("paths".into(), vec!["/".to_string()].into());
        route.insert("strip_path".into(), false.into());
        route.insert("preserve_host".into(), true.into());
        route.insert("auth".into(), false.into());
        let mut service = toml::Table::new();
        service.insert("name".into(), name.clone().into());
        service.insert("url".into(), url.to_string().into());
        service.insert("routes".into(), vec![toml::Value::Table(route)].into());
        self.warn(format!(
            "--fallback: requests that no imported route matches ({} route(s) left to Kong included) go to {url} with their Host and key, and Kong answers them as today; add keygate's address to Kong's trusted_ips so Kong keeps seeing each client's address. Cut a route over by adding it to keygate (hot reload); move it back by removing it",
            left.len()
        ));
        Ok(toml::Value::Table(service))
    }

    /// A `[[plugins]]` entry's name and scope fields (an unnamed route gets a name, since a
    /// plugin names its route).
    pub(super) fn plugin_table(&mut self, name: &str, scope: &Scope, where_: &str) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("name".into(), name.into());
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
                        "{where_}: the route has no name; named {name:?} so the {} plugin can name it",
                        table["name"].as_str().unwrap_or_default()
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
        table
    }
}

/// The request-size-limiting instance that applies to route `r` of service `s` (Kong's
/// precedence: the route's, else its service's, else the global one), in bytes.
fn size_limit_of(limits: &[(Scope, u64)], s: usize, r: usize) -> Option<u64> {
    let route = limits.iter().find(|(scope, _)| scope.route == Some((s, r)));
    let service = || {
        limits
            .iter()
            .find(|(scope, _)| scope.route.is_none() && scope.service == Some(s))
    };
    let global = || {
        limits
            .iter()
            .find(|(scope, _)| scope.route.is_none() && scope.service.is_none())
    };
    route
        .or_else(service)
        .or_else(global)
        .map(|(_, bytes)| *bytes)
}

/// A size as it is best read: `"128m"`, `"64k"`, else the number of bytes.
fn size_value(bytes: u64) -> toml::Value {
    const KIB: u64 = 1024;
    match bytes {
        b if b % (KIB * KIB) == 0 => format!("{}m", b / (KIB * KIB)).into(),
        b if b % KIB == 0 => format!("{}k", b / KIB).into(),
        b => i64::try_from(b).map_or_else(|_| format!("{b}").into(), toml::Value::from),
    }
}
