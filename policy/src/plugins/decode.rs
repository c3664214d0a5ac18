//! Reading `[[plugins]]`: `name` picks the type `config` is decoded into.
//!
//! The TOML reader hands a table's keys over sorted, so `config` arrives before `name` and has
//! to wait as a `serde_json::Value`; by then TOML line numbers are gone (and the one TOML
//! reports for anything inside `[[plugins]]` is the first `[[plugins]]` header anyway). So
//! every error here carries its own path instead, `plugins[i].config.minute: …`, like the
//! errors of validation.

use super::rate_limiting::RawRateLimiting;
use super::{Plugin, PluginConfig, PluginKind, Plugins};
use serde::Deserialize;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor,
};
use serde_json::Value;
use std::fmt;

const FIELDS: &[&str] = &["name", "service", "route", "consumer", "enabled", "config"];

impl<'de> Deserialize<'de> for Plugins {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct List;

        impl<'de> Visitor<'de> for List {
            type Value = Vec<Plugin>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of [[plugins]] tables")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Plugin>, A::Error> {
                let mut list = Vec::new();
                while let Some(plugin) = seq.next_element_seed(Entry { index: list.len() })? {
                    list.push(plugin);
                }
                Ok(list)
            }
        }

        deserializer.deserialize_seq(List).map(Plugins::new)
    }
}

/// `plugins[index]`.
struct Entry {
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Entry {
    type Value = Plugin;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Plugin, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Entry {
    type Value = Plugin;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a [[plugins]] table (plugins[{}])", self.index)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Plugin, A::Error> {
        let index = self.index;
        let mut name: Option<String> = None;
        let mut config: Option<Value> = None;
        let mut service: Option<Option<String>> = None;
        let mut route: Option<Option<String>> = None;
        let mut consumer: Option<Option<String>> = None;
        let mut enabled: Option<bool> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "name" => once(&mut map, &mut name, index, &key)?,
                "config" => once(&mut map, &mut config, index, &key)?,
                "service" => once(&mut map, &mut service, index, &key)?,
                "route" => once(&mut map, &mut route, index, &key)?,
                "consumer" => once(&mut map, &mut consumer, index, &key)?,
                "enabled" => once(&mut map, &mut enabled, index, &key)?,
                other => {
                    return Err(de::Error::custom(format!(
                        "plugins[{index}]: unknown field `{other}`, expected one of {}",
                        quoted(FIELDS)
                    )));
                }
            }
        }
        let known = PluginKind::ALL.map(PluginKind::name);
        let name = name.ok_or_else(|| {
            de::Error::custom(format!(
                "plugins[{index}]: missing field `name` (known plugins: {})",
                known.join(", ")
            ))
        })?;
        let kind = PluginKind::from_name(&name).ok_or_else(|| {
            de::Error::custom(format!(
                "plugins[{index}].name: unknown plugin {name:?}; known: {}",
                known.join(", ")
            ))
        })?;
        // Kong fills an absent config with its defaults; the plugin's own rules then say what
        // is missing (rate-limiting: at least one limit).
        let config = config.unwrap_or_else(|| Value::Object(Default::default()));
        let config = decode_config(kind, &config, &format!("plugins[{index}].config"))
            .map_err(de::Error::custom)?;
        Ok(Plugin {
            service: service.flatten(),
            route: route.flatten(),
            consumer: consumer.flatten(),
            enabled: enabled.unwrap_or(true),
            config,
        })
    }
}

/// The value of `plugins[index].<key>`, which may be given once.
fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
    index: usize,
    key: &str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::custom(format!(
            "plugins[{index}].{key}: given twice"
        )));
    }
    let value = map.next_value().map_err(|err| {
        // The TOML reader appends "in `key`" lines: the path says it already.
        let message = err.to_string();
        let first_line = message.lines().next().unwrap_or_default();
        de::Error::custom(format!("plugins[{index}].{key}: {first_line}"))
    })?;
    *slot = Some(value);
    Ok(())
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decode_config(kind: PluginKind, config: &Value, path: &str) -> Result<PluginConfig, String> {
    match kind {
        PluginKind::RateLimiting => decode::<RawRateLimiting>(config, path)?
            .into_config(path)
            .map(PluginConfig::RateLimiting),
        PluginKind::Prometheus => {
            decode::<super::Prometheus>(config, path).map(PluginConfig::Prometheus)
        }
        PluginKind::Cors => decode::<super::Cors>(config, path).map(PluginConfig::Cors),
        PluginKind::KeyAuth => {
            decode::<crate::config::KeyAuth>(config, path).map(PluginConfig::KeyAuth)
        }
        PluginKind::IpRestriction => {
            decode::<super::IpRestriction>(config, path).map(PluginConfig::IpRestriction)
        }
        PluginKind::RequestTermination => {
            decode::<super::RequestTermination>(config, path).map(PluginConfig::RequestTermination)
        }
    }
}

/// `value` as a `T`, or the error placed at the field at fault, found by decoding each field
/// alone (every field of the raw config types has a default, so one field decodes by itself).
pub(super) fn decode<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T, String> {
    T::deserialize(value).map_err(|err| {
        if let Value::Object(fields) = value {
            for (key, field) in fields {
                let alone = Value::Object([(key.clone(), field.clone())].into_iter().collect());
                if let Err(err) = T::deserialize(&alone) {
                    return format!("{path}.{key}: {err}");
                }
            }
        }
        format!("{path}: {err}")
    })
}

#[cfg(all(test, feature = "toml"))]
mod tests {
    use crate::plugins::{ConsumerIdentity, LimitBy, PluginKind, Policy};
    use crate::{Config, GuestConfig, Plugins};

    fn error_of(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    /// The issue's example, with the route it names.
    const EXAMPLE: &str = r#"
[[services]]
name = "measurements"
url = "http://127.0.0.1:9001/v1"
[[services.routes]]
name = "results"
paths = ["/results"]

[[plugins]]
name = "rate-limiting"       # this issue; later issues add more plugin names
route = "results"            # optional scope: service = "...", route = "...", consumer = "..."
enabled = true
[plugins.config]
minute = 2000
hour = 50000
limit_by = "ip"              # consumer (default) | credential | ip | service | header | path
policy = "local"             # local (default) | redis
fault_tolerant = true
hide_client_headers = false
error_code = 429
error_message = "API rate limit exceeded"
[plugins.config.redis]       # for policy = "redis"; Kong's fields (host, port, username,
host = "127.0.0.1"           # password, database, timeout, ssl) plus, optionally,
port = 6379                  # a url = "redis://..." form
password = "s3cret-redis-pw"
"#;

    #[test]
    fn the_issue_example_loads() {
        let config = Config::from_toml(EXAMPLE).unwrap();
        let plugin = &config.plugins[0];
        assert_eq!(plugin.kind(), PluginKind::RateLimiting);
        assert_eq!(plugin.name(), "rate-limiting");
        assert_eq!(plugin.route.as_deref(), Some("results"));
        assert!(plugin.enabled && plugin.service.is_none() && plugin.consumer.is_none());
        let rl = plugin.rate_limiting().unwrap();
        assert_eq!(
            (rl.minute, rl.hour, rl.limit_by),
            (Some(2000.0), Some(50000.0), LimitBy::Ip)
        );
        let scope = config
            .plugins
            .scope(Some("results"), Some("measurements"), None);
        let found = config
            .plugins
            .applicable(PluginKind::RateLimiting, &scope)
            .unwrap();
        assert_eq!(found.position, 0);
    }

    #[test]
    fn kongs_scoped_example_consumer_outranks_route() {
        // kong.md §3: a consumer-only instance (minute 1000) beats a route-only one (minute 60).
        let config = Config::from_toml(
            r#"
[[consumers]]
id = "6f1c2a9e-0000-4000-8000-000000000001"
username = "alice"
custom_id = "cust-001"
[[services]]
name = "orders-api"
url = "http://orders.internal:8080/v1"
[[services.routes]]
name = "order-by-id"
paths = ["~/orders/\\d+$"]
[[plugins]]
name = "rate-limiting"
route = "order-by-id"
config = { minute = 60, policy = "local", limit_by = "consumer" }
[[plugins]]
name = "rate-limiting"
consumer = "alice"
config = { minute = 1000, policy = "local" }
"#,
        )
        .unwrap();
        let minute = |consumer| {
            let scope = config
                .plugins
                .scope(Some("order-by-id"), Some("orders-api"), consumer);
            let found = config
                .plugins
                .applicable(PluginKind::RateLimiting, &scope)
                .unwrap();
            found.plugin.rate_limiting().unwrap().minute.unwrap()
        };
        let alice = ConsumerIdentity {
            id: Some("6f1c2a9e-0000-4000-8000-000000000001"),
            username: Some("alice"),
        };
        assert_eq!(minute(Some(alice)), 1000.0);
        assert_eq!(minute(None), 60.0);
    }

    #[test]
    fn unknown_plugins_and_fields_are_named() {
        let known = PluginKind::ALL.map(PluginKind::name).join(", ");
        assert!(known.starts_with("rate-limiting, prometheus, cors, ip-restriction"));
        assert_eq!(
            error_of("[[plugins]]\nname = \"x\"\n"),
            format!("plugins[0].name: unknown plugin \"x\"; known: {known}")
        );
        assert_eq!(
            error_of(
                "[[plugins]]\nname = \"rate-limiting\"\nconfig = { second = 1 }\n[[plugins]]\nname = \"acl\"\n"
            ),
            format!("plugins[1].name: unknown plugin \"acl\"; known: {known}")
        );
        assert_eq!(
            error_of("[[plugins]]\nroute = \"a\"\n"),
            format!("plugins[0]: missing field `name` (known plugins: {known})")
        );
        assert_eq!(
            error_of("[[plugins]]\nname = \"rate-limiting\"\ninstance_name = \"a\"\n"),
            "plugins[0]: unknown field `instance_name`, expected one of `name`, `service`, `route`, \
             `consumer`, `enabled`, `config`"
        );
        assert_eq!(
            error_of("[[plugins]]\nname = \"rate-limiting\"\nenabled = \"yes\"\n"),
            "plugins[0].enabled: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            error_of("[[plugins]]\nname = \"rate-limiting\"\nconfig = 5\n"),
            "plugins[0].config: invalid type: integer `5`, expected a table of rate-limiting settings"
        );
        let err =
            error_of("[[plugins]]\nname = \"rate-limiting\"\n[plugins.config]\nminutes = 5\n");
        assert!(
            err.starts_with("plugins[0].config.minutes: unknown field `minutes`"),
            "{err}"
        );
        assert!(
            error_of("plugins = 5\n").contains("line 1"),
            "outside the entries, TOML's line"
        );
    }

    #[test]
    fn json_in_any_key_order_decodes() {
        let json = r#"[{"config":{"minute":5,"redis":{"host":"r"}},"enabled":false,"name":"rate-limiting","consumer":"c"}]"#;
        let plugins: Plugins = serde_json::from_str(json).unwrap();
        assert!(!plugins[0].enabled);
        assert_eq!(plugins[0].consumer.as_deref(), Some("c"));
        assert_eq!(plugins[0].rate_limiting().unwrap().minute, Some(5.0));
        let err = serde_json::from_str::<Plugins>(r#"[{"name":"rate-limiting","name":"x"}]"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("plugins[0].name: given twice"), "{err}");
    }

    #[test]
    fn the_guest_gets_every_instance_in_place_without_redis_settings() {
        let mut toml = EXAMPLE.replace("policy = \"local\"", "policy = \"redis\"");
        toml.push_str("[[plugins]]\nname = \"rate-limiting\"\nconfig = { second = 1 }\n");
        let config = Config::from_toml(&toml).unwrap();
        let guest = config.guest_config();
        let json = guest.to_json();
        assert!(
            !json.contains("s3cret-redis-pw") && !json.contains("6379"),
            "{json}"
        );
        let back = GuestConfig::from_json(&json).unwrap();
        assert_eq!(back, guest);
        assert_eq!(back.plugins.len(), 2);
        let rl = back.plugins[0].rate_limiting().unwrap();
        assert_eq!((rl.policy, rl.redis.as_ref()), (Policy::Redis, None));
        assert_eq!(back.plugins[0].route.as_deref(), Some("results"));
        // The guest's index finds the instance at the host's position.
        let scope = back
            .plugins
            .scope(Some("results"), Some("measurements"), None);
        let found = back
            .plugins
            .applicable(PluginKind::RateLimiting, &scope)
            .unwrap();
        assert_eq!(found.position, 0);
        assert!(
            config.plugins[found.position]
                .rate_limiting()
                .unwrap()
                .redis
                .is_some()
        );
        // A guest config written before plugins existed still loads.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old.as_object_mut().unwrap().remove("plugins");
        assert!(
            GuestConfig::from_json(&old.to_string())
                .unwrap()
                .plugins
                .is_empty()
        );
    }
}
