//! Kong's services, routes, consumers and their key-auth credentials, as keygate's.

use super::*;

impl Importer {
    pub(super) fn service(&mut self, service: Map<String, Value>) -> anyhow::Result<()> {
        let mut service = with_defaults(service, &self.service_defaults);
        let id = str_of(service.get("id"));
        let name = match str_of(service.get("name")).or_else(|| id.clone()) {
            Some(name) => name,
            None => {
                let name = format!("service-{}", self.services.len() + 1);
                self.warn(format!(
                    "service #{}: has no name or id; named {name:?}",
                    self.services.len() + 1
                ));
                name
            }
        };
        let label = format!("service {name:?}");
        let nested_routes = objects(
            service.remove("routes").as_ref(),
            &format!("{label}.routes"),
        )?;
        let nested_plugins = objects(
            service.remove("plugins").as_ref(),
            &format!("{label}.plugins"),
        )?;
        if service.get("enabled") == Some(&Value::Bool(false)) {
            self.warn(format!(
                "{label}: disabled in Kong; not imported, nor its routes"
            ));
            return Ok(());
        }
        let url = match str_of(service.get("url")) {
            Some(url) => url,
            None => {
                let protocol = str_of(service.get("protocol")).unwrap_or_else(|| "http".into());
                let host = str_of(service.get("host"))
                    .with_context(|| format!("{label}: has neither url nor host"))?;
                let port = str_of(service.get("port")).unwrap_or_else(|| "80".into());
                let path = str_of(service.get("path")).unwrap_or_default();
                format!("{protocol}://{host}:{port}{path}")
            }
        };
        let scheme = url
            .split("://")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            bail!("{label}: protocol {scheme:?} is not supported (keygate proxies http and https)");
        }
        let mut table = toml::Table::new();
        table.insert("name".into(), name.clone().into());
        table.insert("url".into(), url.into());
        for (kong, ours) in [
            ("connect_timeout", "connect_timeout"),
            ("read_timeout", "read_timeout"),
            ("write_timeout", "write_timeout"),
        ] {
            if let Some(ms) = service.get(kong).and_then(Value::as_u64)
                && ms != 60_000
            {
                table.insert(ours.into(), format!("{ms}ms").into());
            }
        }
        for (key, value) in &service {
            match key.as_str() {
                "id" | "name" | "url" | "protocol" | "host" | "port" | "path"
                | "connect_timeout" | "read_timeout" | "write_timeout" | "enabled" | "tags"
                | "created_at" | "updated_at" => {}
                "retries" => {
                    if value.as_u64() != Some(5) {
                        self.warn(format!("{label}: retries ignored (keygate does not retry)"));
                    }
                }
                "tls_verify" => match value {
                    Value::Bool(verify) => {
                        if scheme == "https" {
                            table.insert("tls_verify".into(), (*verify).into());
                        }
                    }
                    Value::Null => {}
                    other => bail!("{label}: tls_verify {other} is not a boolean"),
                },
                "tls_verify_depth" if !value.is_null() => self.warn(format!(
                    "{label}: tls_verify_depth ignored (keygate accepts any chain length to a trusted root)"
                )),
                "ca_certificates" if value.as_array().is_some_and(|ids| !ids.is_empty()) => {
                    self.warn(format!(
                        "{label}: ca_certificates ignored: keygate reads trusted CAs from a PEM file; set ca_file to those certificates (else the system's roots are trusted)"
                    ))
                }
                "client_certificate" if !value.is_null() => self.warn(format!(
                    "{label}: client_certificate ignored: keygate presents no client certificate to origins"
                )),
                "tls_verify_depth" | "ca_certificates" | "client_certificate" => {}
                other => self.warn(format!(
                    "{label}: field {other} ignored (keygate has no equivalent)"
                )),
            }
        }
        if scheme == "https" && !matches!(service.get("tls_verify"), Some(Value::Bool(_))) {
            self.warn(format!(
                "{label}: Kong does not check an https origin's certificate unless tls_verify is set; keygate does (tls_verify = true, against the system's roots): set ca_file for a private CA, or tls_verify = false"
            ));
        }
        self.services.push(ServiceOut {
            name,
            id,
            table,
            routes: Vec::new(),
        });
        let index = self.services.len() - 1;
        for plugin in nested_plugins {
            self.plugins.push((
                Scope {
                    service: Some(index),
                    ..Scope::default()
                },
                plugin,
            ));
        }
        for route in nested_routes {
            self.route(index, route)?;
        }
        Ok(())
    }

    pub(super) fn route(
        &mut self,
        service: usize,
        route: Map<String, Value>,
    ) -> anyhow::Result<()> {
        let mut route = with_defaults(route, &self.route_defaults);
        let name = str_of(route.get("name"));
        let id = str_of(route.get("id"));
        let label = match (&name, &id) {
            (Some(name), _) => format!("route {name:?}"),
            (None, Some(id)) => format!("route {id:?}"),
            (None, None) => {
                self.unnamed_routes += 1;
                format!(
                    "route #{} of service {:?}",
                    self.unnamed_routes, self.services[service].name
                )
            }
        };
        let nested_plugins = objects(
            route.remove("plugins").as_ref(),
            &format!("{label}.plugins"),
        )?;
        let mut table = toml::Table::new();
        if let Some(name) = &name {
            table.insert("name".into(), name.clone().into());
        }
        let mut paths = Vec::new();
        for path in route
            .get("paths")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path =
                str_of(Some(path)).with_context(|| format!("{label}: paths must be strings"))?;
            let path = if self.old_format {
                migrate_path(&path)
            } else {
                path
            };
            paths.push(toml::Value::String(path));
        }
        if !paths.is_empty() {
            table.insert("paths".into(), paths.into());
        }
        for field in ["methods", "hosts"] {
            if let Some(values) = route.get(field).and_then(to_toml)
                && values.as_array().is_some_and(|a| !a.is_empty())
            {
                table.insert(field.into(), values);
            }
        }
        if let Some(Value::Object(headers)) = route.get("headers")
            && !headers.is_empty()
        {
            table.insert(
                "headers".into(),
                to_toml(&Value::Object(headers.clone())).unwrap(),
            );
        }
        if let Some(p) = route.get("regex_priority").and_then(Value::as_i64)
            && p != 0
        {
            table.insert("regex_priority".into(), p.into());
        }
        if route.get("strip_path") == Some(&Value::Bool(false)) {
            table.insert("strip_path".into(), false.into());
        }
        if route.get("preserve_host") == Some(&Value::Bool(true)) {
            table.insert("preserve_host".into(), true.into());
        }
        for (key, value) in &route {
            match key.as_str() {
                "id"
                | "name"
                | "service"
                | "paths"
                | "methods"
                | "hosts"
                | "headers"
                | "regex_priority"
                | "strip_path"
                | "preserve_host"
                | "tags"
                | "created_at"
                | "updated_at"
                | "https_redirect_status_code" => {}
                "protocols" => {
                    let protocols: Vec<&str> = value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if protocols.iter().any(|p| *p != "http" && *p != "https") {
                        self.warn(format!(
                            "{label}: protocols {protocols:?}: keygate serves the route over http only"
                        ));
                    } else if !protocols.contains(&"http") {
                        self.warn(format!(
                            "{label}: protocols [\"https\"]: keygate serves it over http and does not redirect to https"
                        ));
                    }
                }
                "path_handling" => {
                    if value.as_str() != Some("v0") {
                        self.warn(format!(
                            "{label}: path_handling {value}: keygate joins paths as Kong's v0"
                        ));
                    }
                }
                "request_buffering" | "response_buffering" => {
                    if value == &Value::Bool(false) {
                        self.warn(format!("{label}: {key} false ignored"));
                    }
                }
                "snis" | "sources" | "destinations" | "expression" | "priority" => {
                    if value.as_array().is_none_or(|a| !a.is_empty()) {
                        self.warn(format!("{label}: {key} ignored (keygate cannot match on it): the route matches more requests"));
                    }
                }
                other => self.warn(format!(
                    "{label}: field {other} ignored (keygate has no equivalent)"
                )),
            }
        }
        self.services[service]
            .routes
            .push(RouteOut { name, id, table });
        let index = (service, self.services[service].routes.len() - 1);
        for plugin in nested_plugins {
            self.plugins.push((
                Scope {
                    route: Some(index),
                    ..Scope::default()
                },
                plugin,
            ));
        }
        Ok(())
    }

    pub(super) fn consumer(&mut self, consumer: Map<String, Value>) -> anyhow::Result<()> {
        let mut consumer = non_null(consumer);
        let username = str_of(consumer.get("username"));
        let custom_id = str_of(consumer.get("custom_id"));
        let id = str_of(consumer.get("id"));
        let label = format!(
            "consumer {:?}",
            username
                .as_deref()
                .or(custom_id.as_deref())
                .or(id.as_deref())
                .unwrap_or("?")
        );
        if username.is_none() && custom_id.is_none() {
            bail!("{label}: a consumer needs a username or a custom_id");
        }
        if id.is_none() {
            self.warn(format!(
                "{label}: has no id (decK dumps drop them unless --with-id): X-Consumer-ID will be keygate's derived id, not Kong's"
            ));
        }
        let credentials = objects(
            consumer.remove("keyauth_credentials").as_ref(),
            &format!("{label}.keyauth_credentials"),
        )?;
        let plugins = objects(
            consumer.remove("plugins").as_ref(),
            &format!("{label}.plugins"),
        )?;
        for (key, _) in &consumer {
            match key.as_str() {
                "id" | "username" | "custom_id" | "tags" | "created_at" | "updated_at" => {}
                other => self.warn(format!(
                    "{label}: {other} ignored (keygate has no plugin that uses it)"
                )),
            }
        }
        self.consumers.push(ConsumerOut {
            username,
            id,
            custom_id,
            keys: Vec::new(),
        });
        let index = self.consumers.len() - 1;
        for credential in credentials {
            self.credential(index, credential);
        }
        for plugin in plugins {
            self.plugins.push((
                Scope {
                    consumer: Some(index),
                    ..Scope::default()
                },
                plugin,
            ));
        }
        Ok(())
    }

    pub(super) fn consumer_label(&self, index: usize) -> String {
        let c = &self.consumers[index];
        format!(
            "consumer {:?}",
            c.username
                .as_deref()
                .or(c.custom_id.as_deref())
                .or(c.id.as_deref())
                .unwrap_or("?")
        )
    }

    pub(super) fn credential(&mut self, consumer: usize, credential: Map<String, Value>) {
        let credential = non_null(credential);
        let label = format!(
            "key-auth credential {}of {}",
            str_of(credential.get("id"))
                .map(|id| format!("{id:?} "))
                .unwrap_or_default(),
            self.consumer_label(consumer)
        );
        let Some(key) = str_of(credential.get("key")) else {
            self.warn(format!(
                "{label}: has no key (Kong would generate one); not imported"
            ));
            return;
        };
        if credential.contains_key("ttl") {
            self.warn(format!(
                "{label}: ttl ignored; the key does not expire in keygate"
            ));
        }
        let id = str_of(credential.get("id"));
        if id.is_none() {
            self.warn(format!(
                "{label}: has no id (decK dumps drop them unless --with-id): X-Credential-Identifier will be keygate's derived id, not Kong's"
            ));
        }
        self.consumers[consumer].keys.push((key, id));
    }

    /// Kong's Upstream: name, round-robin, targets (nested here or top-level).
    pub(super) fn upstream(&mut self, upstream: Map<String, Value>) -> anyhow::Result<()> {
        let upstream = non_null(upstream);
        let name = str_of(upstream.get("name")).context("an upstream has no name")?;
        let label = format!("upstream {name:?}");
        let mut table = toml::Table::new();
        table.insert("name".into(), name.clone().into());
        table.insert("targets".into(), toml::Value::Array(Vec::new()));
        for (key, value) in &upstream {
            match key.as_str() {
                "name" | "id" | "targets" | "tags" => {}
                "algorithm" if value.as_str() == Some("round-robin") => {}
                "algorithm" => self.warn(format!(
                    "{label}: algorithm {value} becomes round-robin (keygate balances round-robin only); requests spread differently"
                )),
                "healthchecks" => self.warn(format!(
                    "{label}: healthchecks ignored; keygate skips a target that refuses connections for 10 s (down_for)"
                )),
                other => self.warn(format!("{label}: {other} ignored (keygate has no such field)")),
            }
        }
        self.upstreams
            .push((name, str_of(upstream.get("id")), table));
        let index = self.upstreams.len() - 1;
        for target in objects(upstream.get("targets"), &format!("{label}.targets"))? {
            self.target(index, target);
        }
        Ok(())
    }

    /// One target of upstream `index`.
    pub(super) fn target(&mut self, index: usize, target: Map<String, Value>) {
        let target = non_null(target);
        let Some(address) = str_of(target.get("target")) else {
            let name = self.upstreams[index].0.clone();
            self.warn(format!(
                "upstream {name:?}: a target without `target`; not imported"
            ));
            return;
        };
        let mut entry = toml::Table::new();
        entry.insert("target".into(), address.into());
        if let Some(weight) = target.get("weight").and_then(Value::as_i64) {
            entry.insert("weight".into(), weight.into());
        }
        if let Some(toml::Value::Array(targets)) = self.upstreams[index].2.get_mut("targets") {
            targets.push(entry.into());
        }
    }
}
