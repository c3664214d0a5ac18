//! `keygate import-kong`: a Kong declarative file (kong.yml, a decK dump, JSON) to a
//! keygate.toml, with a report of what was mapped, what was dropped and why, and a refusal when
//! dropping something would widen access (kong-plugins.md §3).

mod entities;
mod output;
mod plugins;

use anyhow::{Context, bail};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
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

/// prometheus `config` fields keygate reads (all of Kong 3.9's).
const PROMETHEUS_FIELDS: &[&str] = &[
    "per_consumer",
    "status_code_metrics",
    "latency_metrics",
    "bandwidth_metrics",
    "upstream_health_metrics",
    "ai_metrics",
];

/// cors `config` fields keygate reads (Kong 3.9's).
const CORS_FIELDS: &[&str] = &[
    "origins",
    "headers",
    "exposed_headers",
    "methods",
    "max_age",
    "credentials",
    "private_network",
    "preflight_continue",
];

/// ip-restriction `config` fields keygate reads.
const IP_RESTRICTION_FIELDS: &[&str] = &["allow", "deny", "status", "message"];

/// request-termination `config` fields keygate reads.
const REQUEST_TERMINATION_FIELDS: &[&str] = &[
    "status_code",
    "message",
    "content_type",
    "body",
    "echo",
    "trigger",
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
pub fn run(
    input: &Path,
    out: Option<&Path>,
    force: bool,
    fallback: Option<&str>,
) -> anyhow::Result<()> {
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
    let imported = convert(&text, |name| std::env::var(name).ok(), fallback)
        .with_context(|| format!("importing {}", input.display()))?;
    // What is written must be a config keygate reads.
    let config = keygate_policy::Config::from_toml(&imported.toml)
        .map_err(|err| anyhow::anyhow!("the imported config is invalid (a keygate bug): {err}"))?;
    for line in mapped(&config) {
        eprintln!("mapped: {line}");
    }
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

/// The report's first part: every entity that made it into the keygate.toml (key values
/// never: a consumer's keys are counted).
fn mapped(config: &keygate_policy::Config) -> Vec<String> {
    let mut lines = Vec::new();
    for service in &config.services {
        let routes: Vec<String> = service
            .routes
            .iter()
            .map(|route| {
                let name = route.name.as_deref().unwrap_or("(unnamed)");
                if route.auth {
                    name.to_string()
                } else {
                    format!("{name} (public)")
                }
            })
            .collect();
        lines.push(format!(
            "service {:?} → {} ({} route{}: {})",
            service.name,
            String::from(service.url.clone()),
            routes.len(),
            if routes.len() == 1 { "" } else { "s" },
            routes.join(", ")
        ));
    }
    for consumer in &config.consumers {
        let name = consumer
            .username
            .as_deref()
            .or(consumer.custom_id.as_deref())
            .unwrap_or("?");
        let ids = consumer
            .keys
            .iter()
            .filter(|key| key.id().is_some())
            .count();
        lines.push(format!(
            "consumer {name:?}{} ({} key{}, {ids} with its credential id)",
            consumer
                .id
                .as_deref()
                .map(|id| format!(" id {id}"))
                .unwrap_or_default(),
            consumer.keys.len(),
            if consumer.keys.len() == 1 { "" } else { "s" },
        ));
    }
    for upstream in &config.upstreams {
        lines.push(format!(
            "upstream {:?} ({} targets)",
            upstream.name,
            upstream.targets.len()
        ));
    }
    for plugin in config.plugins.iter() {
        lines.push(format!(
            "plugin {} ({})",
            plugin.name(),
            plugin.scope_description()
        ));
    }
    lines
}

/// Convert a Kong declarative file's text; `env` looks up `DECK_` variables.
/// With `fallback` (the old Kong's proxy URL), a catch-all route to it is added and routes
/// carrying a plugin keygate cannot enforce are left to it instead of refusing the import.
pub fn convert(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
    fallback: Option<&str>,
) -> anyhow::Result<Imported> {
    let text = substitute_env(text, env)?;
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).context("parsing JSON")?
    } else {
        serde_yaml::from_str(&text).context("parsing YAML")?
    };
    let Value::Object(doc) = doc else {
        bail!("the file is not a Kong declarative config (expected a mapping at the top)");
    };
    Importer {
        fallback: fallback.map(str::to_string),
        ..Importer::default()
    }
    .import(doc)
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
    /// `[[upstreams]]` as written: name, id, TOML table (targets included).
    upstreams: Vec<(String, Option<String>, toml::Table)>,
    /// Services as written: name, id, TOML table, routes.
    services: Vec<ServiceOut>,
    consumers: Vec<ConsumerOut>,
    /// (scope, plugin object).
    plugins: Vec<(Scope, Map<String, Value>)>,
    unnamed_routes: usize,
    /// `--fallback URL`.
    fallback: Option<String>,
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
    /// Each key and its credential id, when the file has one.
    keys: Vec<(String, Option<String>)>,
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
        let mut top_level_targets = Vec::new();
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
                "upstreams" => {
                    for upstream in objects(Some(&value), "upstreams")? {
                        self.upstream(upstream)?;
                    }
                }
                "targets" => top_level_targets = objects(Some(&value), "targets")?,
                "acls"
                | "basicauth_credentials"
                | "jwt_secrets"
                | "hmacauth_credentials"
                | "oauth2_credentials"
                | "mtls_auth_credentials" => self.warn(format!(
                    "{key}: ignored (keygate has no plugin that uses them)"
                )),
                other => self.warn(format!("{other}: ignored (keygate has no such entity)")),
            }
        }
        for target in top_level_targets {
            let reference = target
                .get("upstream")
                .and_then(reference)
                .context("a top-level target names no upstream")?;
            let index = self
                .upstream_index(&reference)
                .with_context(|| format!("targets: upstream {reference:?} is not in the file"))?;
            self.target(index, target);
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

    fn upstream_index(&self, reference: &str) -> Option<usize> {
        self.upstreams
            .iter()
            .position(|(name, id, _)| name == reference || id.as_deref() == Some(reference))
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
}

#[cfg(test)]
mod tests;
