//! `keygate import-kong`: a Kong declarative file (kong.yml, a decK dump, JSON) to a
//! keygate.toml, with a report of what was mapped, what was dropped and why, and a refusal when
//! dropping something would widen access (kong-plugins.md §3).

use anyhow::{Context, bail};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The written TOML and the report lines (warnings, one per dropped or changed thing).
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub warnings: Vec<String>,
}

/// Plugins whose absence would let through requests Kong refuses: importing without them
/// widens access, so the import is refused.
const REFUSED_PLUGINS: &[&str] = &[
    "acl",
    "basic-auth",
    "jwt",
    "oauth2",
    "hmac-auth",
    "openid-connect",
    "ldap-auth",
    "ldap-auth-advanced",
    "key-auth-enc",
    "mtls-auth",
    "vault-auth",
    "rate-limiting-advanced",
    "ip-restriction",
    "request-termination",
    "bot-detection",
    "opa",
];

/// `[key_auth]` fields keygate has, by Kong's names.
const KEY_AUTH_FIELDS: &[&str] = &[
    "key_names",
    "key_in_header",
    "key_in_query",
    "key_in_body",
    "hide_credentials",
    "run_on_preflight",
    "realm",
    "anonymous",
];

/// rate-limiting `config` fields keygate reads.
const RATE_LIMITING_FIELDS: &[&str] = &[
    "second",
    "minute",
    "hour",
    "day",
    "month",
    "year",
    "limit_by",
    "header_name",
    "path",
    "policy",
    "fault_tolerant",
    "hide_client_headers",
    "error_code",
    "error_message",
    "sync_rate",
    "redis",
    "redis_host",
    "redis_port",
    "redis_timeout",
    "redis_username",
    "redis_password",
    "redis_database",
    "redis_ssl",
    "redis_ssl_verify",
    "redis_server_name",
];

/// `keygate import-kong`: read, convert, write (or print), report on stderr.
pub fn run(input: &Path, out: Option<&Path>, force: bool) -> anyhow::Result<()> {
    if let Some(out) = out
        && out.exists()
        && !force
    {
        bail!(
            "{} already exists; pass --force to overwrite it",
            out.display()
        );
    }
    let text =
        std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let imported = convert(&text, |name| std::env::var(name).ok())
        .with_context(|| format!("importing {}", input.display()))?;
    // What is written must be a config keygate reads.
    keygate_policy::Config::from_toml(&imported.toml)
        .map_err(|err| anyhow::anyhow!("the imported config is invalid (a keygate bug): {err}"))?;
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    match out {
        Some(out) => {
            std::fs::write(out, &imported.toml)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "wrote {} ({} warnings); check it with `keygate check --config {}`",
                out.display(),
                imported.warnings.len(),
                out.display()
            );
        }
        None => print!("{}", imported.toml),
    }
    Ok(())
}

/// Convert a Kong declarative file's text; `env` looks up `DECK_` variables.
pub fn convert(text: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Imported> {
    let text = substitute_env(text, env)?;
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).context("parsing JSON")?
    } else {
        serde_yaml::from_str(&text).context("parsing YAML")?
    };
    let Value::Object(doc) = doc else {
        bail!("the file is not a Kong declarative config (expected a mapping at the top)");
    };
    Importer::default().import(doc)
}

/// decK's `${{ env "DECK_X" }}` templating, before parsing.
fn substitute_env(text: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .with_context(|| format!("unterminated \"${{{{\" template at byte {start}"))?;
        let inner = after[..end].trim();
        let name = inner
            .strip_prefix("env")
            .map(str::trim)
            .and_then(|n| n.strip_prefix('"'))
            .and_then(|n| n.strip_suffix('"'))
            .with_context(|| {
                format!(
                    "unsupported template \"${{{{ {inner} }}}}\": only ${{{{ env \"DECK_…\" }}}} is"
                )
            })?;
        if !name.starts_with("DECK_") {
            bail!(
                "environment variable {name} in a template must start with DECK_ (as decK requires)"
            );
        }
        let value = env(name).with_context(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Default)]
struct Importer {
    warnings: Vec<String>,
    old_format: bool,
    service_defaults: Map<String, Value>,
    route_defaults: Map<String, Value>,
    /// Services as written: name, id, TOML table, routes.
    services: Vec<ServiceOut>,
    consumers: Vec<ConsumerOut>,
    /// (scope, plugin object).
    plugins: Vec<(Scope, Map<String, Value>)>,
    unnamed_routes: usize,
}

struct ServiceOut {
    name: String,
    id: Option<String>,
    table: toml::Table,
    routes: Vec<RouteOut>,
}

struct RouteOut {
    name: Option<String>,
    id: Option<String>,
    table: toml::Table,
}

struct ConsumerOut {
    username: Option<String>,
    id: Option<String>,
    custom_id: Option<String>,
    keys: Vec<String>,
}

#[derive(Clone, Default, Debug)]
struct Scope {
    service: Option<usize>,
    /// (service index, route index)
    route: Option<(usize, usize)>,
    consumer: Option<usize>,
}

fn str_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A reference in any of Kong's forms: `name`, `id`, `{name: …}`, `{id: …}`, `{username: …}`.
fn reference(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => ["name", "id", "username"]
            .into_iter()
            .find_map(|k| str_of(map.get(k))),
        _ => None,
    }
}

fn objects(value: Option<&Value>, what: &str) -> anyhow::Result<Vec<Map<String, Value>>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::Object(map) => Ok(map.clone()),
                _ => bail!("{what}: every entry must be a mapping"),
            })
            .collect(),
        Some(_) => bail!("{what}: expected a list"),
    }
}

/// The fields a mapping sets, without Kong's `~` nulls.
fn non_null(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter().filter(|(_, v)| !v.is_null()).collect()
}

fn with_defaults(map: Map<String, Value>, defaults: &Map<String, Value>) -> Map<String, Value> {
    let mut map = non_null(map);
    for (k, v) in defaults {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
    map
}

fn to_toml(value: &Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(items.iter().filter_map(to_toml).collect()),
        Value::Object(map) => toml::Value::Table(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect(),
        ),
    })
}

/// Kong 1.1/2.x paths that "look like regex" (a character outside the unreserved set, `/` and
/// `%`) became `~`-prefixed regexes in 3.0 (`kong/db/declarative/migrations/route_path.lua`).
fn migrate_path(path: &str) -> String {
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_~/%".contains(c));
    if plain || path.starts_with('~') {
        path.to_string()
    } else {
        format!("~{path}")
    }
}

impl Importer {
    fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    fn import(mut self, mut doc: Map<String, Value>) -> anyhow::Result<Imported> {
        let version = str_of(doc.get("_format_version")).context(
            "_format_version is missing (Kong requires it: \"1.1\", \"2.1\" or \"3.0\")",
        )?;
        self.old_format = match version.as_str() {
            "1.1" | "2.1" => true,
            "3.0" => false,
            other => bail!("_format_version {other:?} is not one of \"1.1\", \"2.1\", \"3.0\""),
        };
        if let Some(Value::Object(info)) = doc.remove("_info") {
            if let Some(Value::Object(defaults)) = info.get("defaults") {
                for (kind, fields) in defaults {
                    match (kind.as_str(), fields) {
                        ("service", Value::Object(f)) => {
                            self.service_defaults = non_null(f.clone())
                        }
                        ("route", Value::Object(f)) => self.route_defaults = non_null(f.clone()),
                        (other, _) => self.warn(format!(
                            "_info.defaults.{other}: ignored (keygate has no {other} entity yet)"
                        )),
                    }
                }
            }
            if info.get("select_tags").is_some_and(|t| !t.is_null()) {
                self.warn("_info.select_tags: ignored; every entity in the file is imported");
            }
        }
        let services = objects(doc.remove("services").as_ref(), "services")?;
        let routes = objects(doc.remove("routes").as_ref(), "routes")?;
        let consumers = objects(doc.remove("consumers").as_ref(), "consumers")?;
        let credentials = objects(
            doc.remove("keyauth_credentials").as_ref(),
            "keyauth_credentials",
        )?;
        let plugins = objects(doc.remove("plugins").as_ref(), "plugins")?;
        for (key, value) in doc {
            match key.as_str() {
                "_format_version" | "_comment" | "_ignore" => {}
                "_transform" => {
                    if value == Value::Bool(false) {
                        self.warn("_transform: false: credential keys are imported as written (keygate hashes them itself)");
                    }
                }
                "_workspace" => {
                    if str_of(Some(&value)).as_deref() != Some("default") {
                        self.warn("_workspace: ignored (keygate has no workspaces)");
                    }
                }
                "upstreams" => self.warn(
                    "upstreams: not imported yet; a service whose host names an upstream will resolve that name with DNS",
                ),
                "acls" | "basicauth_credentials" | "jwt_secrets" | "hmacauth_credentials"
                | "oauth2_credentials" | "mtls_auth_credentials" => self.warn(format!(
                    "{key}: ignored (keygate has no plugin that uses them)"
                )),
                other => self.warn(format!("{other}: ignored (keygate has no such entity)")),
            }
        }
        for service in services {
            self.service(service)?;
        }
        for route in routes {
            let reference = route
                .get("service")
                .and_then(reference)
                .context("a top-level route names no service")?;
            let index = self.service_index(&reference).with_context(|| {
                format!(
                    "route {:?}: service {reference:?} is not in the file",
                    route.get("name").and_then(|n| n.as_str()).unwrap_or("?")
                )
            })?;
            self.route(index, route)?;
        }
        for consumer in consumers {
            self.consumer(consumer)?;
        }
        for credential in credentials {
            let reference = credential
                .get("consumer")
                .and_then(reference)
                .context("a top-level keyauth_credentials entry names no consumer")?;
            let index = self.consumer_index(&reference).with_context(|| {
                format!("keyauth_credentials: consumer {reference:?} is not in the file")
            })?;
            self.credential(index, credential);
        }
        for plugin in plugins {
            let mut scope = Scope::default();
            if let Some(r) = plugin.get("service").filter(|v| !v.is_null()) {
                let name = reference(r).unwrap_or_default();
                scope.service = Some(self.service_index(&name).with_context(|| {
                    format!(
                        "plugin {:?}: service {name:?} is not in the file",
                        plugin.get("name")
                    )
                })?);
            }
            if let Some(r) = plugin.get("route").filter(|v| !v.is_null()) {
                let name = reference(r).unwrap_or_default();
                scope.route = Some(self.route_index(&name).with_context(|| {
                    format!(
                        "plugin {:?}: route {name:?} is not in the file",
                        plugin.get("name")
                    )
                })?);
            }
            if let Some(r) = plugin.get("consumer").filter(|v| !v.is_null()) {
                let name = reference(r).unwrap_or_default();
                scope.consumer = Some(self.consumer_index(&name).with_context(|| {
                    format!(
                        "plugin {:?}: consumer {name:?} is not in the file",
                        plugin.get("name")
                    )
                })?);
            }
            self.plugins.push((scope, plugin));
        }
        self.finish()
    }

    fn service_index(&self, reference: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.name == reference || s.id.as_deref() == Some(reference))
    }

    fn route_index(&self, reference: &str) -> Option<(usize, usize)> {
        self.services.iter().enumerate().find_map(|(s, service)| {
            service
                .routes
                .iter()
                .position(|r| {
                    r.name.as_deref() == Some(reference) || r.id.as_deref() == Some(reference)
                })
                .map(|r| (s, r))
        })
    }

    fn consumer_index(&self, reference: &str) -> Option<usize> {
        self.consumers
            .iter()
            .position(|c| c.id.as_deref() == Some(reference))
            .or_else(|| {
                self.consumers
                    .iter()
                    .position(|c| c.username.as_deref() == Some(reference))
            })
    }

    fn service(&mut self, service: Map<String, Value>) -> anyhow::Result<()> {
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
                other => self.warn(format!(
                    "{label}: field {other} ignored (keygate has no equivalent)"
                )),
            }
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

    fn route(&mut self, service: usize, route: Map<String, Value>) -> anyhow::Result<()> {
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

    fn consumer(&mut self, consumer: Map<String, Value>) -> anyhow::Result<()> {
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

    fn consumer_label(&self, index: usize) -> String {
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

    fn credential(&mut self, consumer: usize, credential: Map<String, Value>) {
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
        self.warn(format!(
            "{label}: keygate keys carry no credential id yet; X-Credential-Identifier will change"
        ));
        self.consumers[consumer].keys.push(key);
    }

    fn scope_label(&self, scope: &Scope) -> String {
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

    fn finish(mut self) -> anyhow::Result<Imported> {
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

    fn rate_limiting(
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
                self.warn(format!(
                    "plugin rate-limiting ({where_}): policy \"redis\" kept, but keygate refuses policy = \"redis\" today (`keygate check` fails until it lands); change it to \"local\" to serve now"
                ));
                if config
                    .get("sync_rate")
                    .and_then(Value::as_f64)
                    .is_some_and(|r| r > 0.0)
                {
                    self.warn(format!(
                        "plugin rate-limiting ({where_}): sync_rate > 0 (batched Redis writes) is not how keygate counts"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn import(text: &str) -> Imported {
        convert(text, |_| None).unwrap()
    }

    #[test]
    fn old_format_paths_that_look_like_regex_become_regexes() {
        assert_eq!(migrate_path("/users/\\d+$"), "~/users/\\d+$");
        assert_eq!(migrate_path("/plain/path-1.2_x"), "/plain/path-1.2_x");
        let paths = |version: &str| {
            let out = import(&format!(
                "_format_version: \"{version}\"\nservices:\n- name: a\n  url: http://a\n  routes:\n  - paths: [\"/x/\\\\d+\", \"/y\"]\n"
            ));
            let config = keygate_policy::Config::from_toml(&out.toml).unwrap();
            config.services[0].routes[0]
                .paths
                .iter()
                .map(|p| String::from(p.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(paths("1.1"), ["~/x/\\d+", "/y"]);
        assert_eq!(paths("2.1"), ["~/x/\\d+", "/y"]);
        assert_eq!(paths("3.0"), ["/x/\\d+", "/y"]);
    }

    #[test]
    fn env_templates_need_deck_variables_that_are_set() {
        let env = |name: &str| (name == "DECK_HOST").then(|| "origin".to_string());
        assert_eq!(
            substitute_env("url: http://${{ env \"DECK_HOST\" }}:80", env).unwrap(),
            "url: http://origin:80"
        );
        let err = substitute_env("${{ env \"DECK_MISSING\" }}", env).unwrap_err();
        assert!(err.to_string().contains("DECK_MISSING"), "{err}");
        let err = substitute_env("${{ env \"HOME\" }}", env).unwrap_err();
        assert!(err.to_string().contains("DECK_"), "{err}");
    }

    #[test]
    fn key_values_never_reach_the_report() {
        let out = import(
            "_format_version: \"3.0\"\nconsumers:\n- username: a\n  keyauth_credentials:\n  - key: s3cret-value\n    ttl: 5\n",
        );
        assert!(out.warnings.iter().all(|w| !w.contains("s3cret-value")));
        assert!(out.toml.contains("s3cret-value"));
    }
}
