//! Load-time checks of `[[plugins]]` against the rest of the config: every scope names
//! something that exists, and no two instances of a plugin share a scope (Kong refuses that
//! too; with both loaded, which one applied would depend on file order).

use super::{Plugin, PluginConfig, PluginKind};
use crate::config::{Config, ConfigError, invalid};
use std::collections::HashMap;

/// A consumer as a scope: a `[[consumers]]` entry (by position, however it was named), or a
/// name only the auth API can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ConsumerRef<'a> {
    Static(usize),
    Named(&'a str),
}

type ScopeKey<'a> = (
    PluginKind,
    Option<&'a str>,
    Option<&'a str>,
    Option<ConsumerRef<'a>>,
);

impl Config {
    pub(crate) fn validate_plugins(&self) -> Result<(), ConfigError> {
        let route_services: HashMap<&str, &str> = self
            .services
            .iter()
            .flat_map(|service| {
                service.routes.iter().filter_map(|route| {
                    route
                        .name
                        .as_deref()
                        .map(|name| (name, service.name.as_str()))
                })
            })
            .collect();
        let mut seen: HashMap<ScopeKey<'_>, usize> = HashMap::new();
        for (i, plugin) in self.plugins.iter().enumerate() {
            let field = format!("plugins[{i}]");
            for (name, value) in [
                ("service", &plugin.service),
                ("route", &plugin.route),
                ("consumer", &plugin.consumer),
            ] {
                if value.as_deref() == Some("") {
                    return Err(invalid(
                        format!("{field}.{name}"),
                        "cannot be empty (leave it out for no scope)",
                    ));
                }
            }
            if let Some(service) = &plugin.service
                && !self.services.iter().any(|s| &s.name == service)
            {
                return Err(invalid(
                    format!("{field}.service"),
                    format!("no [[services]] entry is named {service:?}"),
                ));
            }
            if let Some(route) = &plugin.route {
                let Some(owner) = route_services.get(route.as_str()) else {
                    return Err(invalid(
                        format!("{field}.route"),
                        format!("no route is named {route:?} (a scope names a route by its name)"),
                    ));
                };
                if let Some(service) = &plugin.service
                    && owner != service
                {
                    return Err(invalid(
                        format!("{field}.route"),
                        format!(
                            "route {route:?} belongs to service {owner:?}, not {service:?}: this \
                             instance could never apply"
                        ),
                    ));
                }
            }
            if plugin.consumer.is_some() && !plugin.kind().consumer_scope_allowed() {
                return Err(invalid(
                    format!("{field}.consumer"),
                    format!(
                        "{} cannot be scoped to a consumer (as in Kong: it runs before \
                         authentication)",
                        plugin.name()
                    ),
                ));
            }
            let consumer = match &plugin.consumer {
                None => None,
                Some(name) => Some(self.consumer_ref(name).ok_or_else(|| {
                    invalid(
                        format!("{field}.consumer"),
                        format!(
                            "{name:?} is not the username or id of any [[consumers]] entry (with \
                             an [auth_api], consumers it returns can be named too)"
                        ),
                    )
                })?),
            };
            match &plugin.config {
                PluginConfig::RateLimiting(config) => {
                    config.validate(&format!("{field}.config"))?
                }
                PluginConfig::Prometheus(_) => {}
                PluginConfig::KeyAuth(config) => {
                    config.validate_at(&format!("{field}.config"))?;
                    if config.body_buffer_size != crate::config::KeyAuth::default().body_buffer_size
                    {
                        return Err(invalid(
                            format!("{field}.config.body_buffer_size"),
                            "is a [key_auth] setting (how much of a body any route reads), not a key-auth plugin field",
                        ));
                    }
                    if let Some(anonymous) = &config.anonymous
                        && self.anonymous_consumer(anonymous).is_none()
                    {
                        return Err(invalid(
                            format!("{field}.config.anonymous"),
                            format!(
                                "{anonymous:?} is not the username or id of any [[consumers]] entry"
                            ),
                        ));
                    }
                    if plugin.route.is_none() && plugin.service.is_none() {
                        return Err(invalid(
                            field.clone(),
                            "a global key-auth is [key_auth]: put these fields there",
                        ));
                    }
                }
                PluginConfig::Cors(config) => config.validate(&format!("{field}.config"))?,
                PluginConfig::IpRestriction(config) => {
                    config.validate(&format!("{field}.config"))?
                }
                PluginConfig::RequestTermination(config) => {
                    config.validate(&format!("{field}.config"))?
                }
            }
            let key = (
                plugin.kind(),
                plugin.route.as_deref(),
                plugin.service.as_deref(),
                consumer,
            );
            if let Some(first) = seen.insert(key, i) {
                return Err(duplicate(&field, plugin, first));
            }
        }
        Ok(())
    }

    /// A `[[consumers]]` entry by id or username (as `key_auth.anonymous` is looked up); with
    /// an auth API, any other name is taken on trust, since the identity may come from there.
    fn consumer_ref<'a>(&'a self, name: &'a str) -> Option<ConsumerRef<'a>> {
        match self.find_consumer(name) {
            Some(found) => self
                .consumers
                .iter()
                .position(|consumer| std::ptr::eq(consumer, found))
                .map(ConsumerRef::Static),
            None if self.auth_api.is_some() => Some(ConsumerRef::Named(name)),
            None => None,
        }
    }
}

fn duplicate(field: &str, plugin: &Plugin, first: usize) -> ConfigError {
    invalid(
        field,
        format!(
            "plugins[{first}] already configures {} for the same scope ({}); Kong allows one \
             instance per plugin and scope",
            plugin.name(),
            plugin.scope_description()
        ),
    )
}

#[cfg(all(test, feature = "toml"))]
mod tests {
    use crate::Config;

    const BASE: &str = r#"
[[consumers]]
username = "alice"
[[consumers]]
id = "bob-id"
username = "bob"
[[services]]
name = "orders"
url = "http://orders"
[[services.routes]]
name = "orders-list"
paths = ["/orders"]
[[services.routes]]
paths = ["/unnamed"]
[[services]]
name = "search"
url = "http://search"
[[services.routes]]
name = "search"
paths = ["/search"]
"#;

    /// BASE plus rate-limiting instances, each given by its scope lines.
    fn with(scopes: &[&str]) -> String {
        let mut toml = BASE.to_string();
        for scope in scopes {
            toml.push_str(&format!(
                "[[plugins]]\nname = \"rate-limiting\"\n{scope}\n[plugins.config]\nminute = 5\n"
            ));
        }
        toml
    }

    fn error_of(scopes: &[&str]) -> String {
        Config::from_toml(&with(scopes)).unwrap_err().to_string()
    }

    #[test]
    fn scopes_name_configured_entities() {
        let config = Config::from_toml(&with(&[
            "",
            "service = \"orders\"",
            "route = \"orders-list\"",
            "route = \"search\"\nservice = \"search\"",
            "consumer = \"alice\"",
            "consumer = \"bob-id\"\nroute = \"orders-list\"",
            &format!(
                "consumer = \"{}\"\nservice = \"search\"",
                crate::fingerprint::consumer_uuid("alice")
            ),
        ]))
        .unwrap();
        assert_eq!(config.plugins.len(), 7);
        assert_eq!(
            config.plugins[5].scope_description(),
            "route \"orders-list\" + consumer \"bob-id\""
        );
    }

    #[test]
    fn unknown_scopes_are_named() {
        assert_eq!(
            error_of(&["service = \"billing\""]),
            "plugins[0].service: no [[services]] entry is named \"billing\""
        );
        assert_eq!(
            error_of(&["", "route = \"orders\""]),
            "plugins[1].route: no route is named \"orders\" (a scope names a route by its name)"
        );
        assert_eq!(
            error_of(&["route = \"search\"\nservice = \"orders\""]),
            "plugins[0].route: route \"search\" belongs to service \"search\", not \"orders\": \
             this instance could never apply"
        );
        assert_eq!(
            error_of(&["consumer = \"carol\""]),
            "plugins[0].consumer: \"carol\" is not the username or id of any [[consumers]] entry \
             (with an [auth_api], consumers it returns can be named too)"
        );
        assert_eq!(
            error_of(&["route = \"\""]),
            "plugins[0].route: cannot be empty (leave it out for no scope)"
        );
    }

    #[test]
    fn with_an_auth_api_any_consumer_may_be_named() {
        let toml = format!(
            "[auth_api]\nurl = \"http://auth/{{key}}\"\n{}",
            with(&["consumer = \"carol\"", "consumer = \"alice\""])
        );
        let config = Config::from_toml(&toml).unwrap();
        assert_eq!(config.plugins[0].consumer.as_deref(), Some("carol"));
        // Names are still checked where they can be.
        let toml = format!(
            "[auth_api]\nurl = \"http://auth/{{key}}\"\n{}",
            with(&["route = \"nope\""])
        );
        assert!(
            Config::from_toml(&toml)
                .unwrap_err()
                .to_string()
                .starts_with("plugins[0].route")
        );
    }

    #[test]
    fn one_instance_per_plugin_and_scope() {
        assert_eq!(
            error_of(&["route = \"orders-list\"", "route = \"orders-list\""]),
            "plugins[1]: plugins[0] already configures rate-limiting for the same scope (route \
             \"orders-list\"); Kong allows one instance per plugin and scope"
        );
        assert!(error_of(&["", ""]).starts_with("plugins[1]: plugins[0] already configures"));
        // A disabled copy is a duplicate too (Kong's uniqueness ignores `enabled`).
        assert!(error_of(&["", "enabled = false"]).starts_with("plugins[1]: "));
        // One consumer named two ways is one scope.
        let err = error_of(&["consumer = \"bob\"", "consumer = \"bob-id\""]);
        assert!(
            err.starts_with("plugins[1]: plugins[0] already configures"),
            "{err}"
        );
        // Same consumer, other route: a different scope.
        Config::from_toml(&with(&[
            "consumer = \"bob\"",
            "consumer = \"bob\"\nroute = \"search\"",
            "route = \"search\"",
            "service = \"search\"",
            "route = \"search\"\nservice = \"search\"",
        ]))
        .unwrap();
    }

    #[test]
    fn kongs_companion_plugins_load_and_validate() {
        let toml = format!(
            r#"{BASE}
[[plugins]]
name = "cors"
service = "orders"
[plugins.config]
origins = ["https://app.example.com", "https://.*\\.example\\.org"]
credentials = true
max_age = 3600
[[plugins]]
name = "ip-restriction"
route = "orders-list"
consumer = "alice"
config = {{ allow = ["10.0.0.0/8", "::1"], deny = ["10.9.9.9"], status = 451 }}
[[plugins]]
name = "request-termination"
route = "search"
config = {{ status_code = 403, message = "Access is forbidden.", trigger = "x-stop" }}
"#
        );
        let config = Config::from_toml(&toml).unwrap();
        let cors = config.plugins[0].cors().unwrap();
        assert_eq!(cors.origins.len(), 2);
        assert!(cors.credentials && cors.max_age == Some(3600.0));
        let ip = config.plugins[1].ip_restriction().unwrap();
        assert_eq!((ip.status(), ip.deny.as_ref().unwrap().len()), (451, 1));
        let rt = config.plugins[2].request_termination().unwrap();
        assert_eq!(rt.message(), Some("Access is forbidden."));
        assert_eq!(rt.trigger.as_deref(), Some("x-stop"));
        // The guest's copy round-trips.
        let guest = config.guest_config();
        let back = crate::GuestConfig::from_json(&guest.to_json()).unwrap();
        assert_eq!(back.plugins, guest.plugins);
    }

    #[test]
    fn companion_plugin_errors_are_named() {
        let error = |plugin: &str| {
            Config::from_toml(&format!("{BASE}\n[[plugins]]\n{plugin}\n"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("name = \"cors\"\nconsumer = \"alice\""),
            "plugins[0].consumer: cors cannot be scoped to a consumer (as in Kong: it runs \
             before authentication)"
        );
        assert_eq!(
            error("name = \"ip-restriction\""),
            "plugins[0].config: at least one of these fields must be non-empty: 'config.allow', \
             'config.deny'"
        );
        let err = error("name = \"ip-restriction\"\nconfig = { deny = [\"10.0.0.0/33\"] }");
        assert!(err.starts_with("plugins[0].config.deny: "), "{err}");
        assert_eq!(
            error("name = \"request-termination\"\nconfig = { message = \"m\", body = \"b\" }"),
            "plugins[0].config: message and body are mutually exclusive"
        );
        assert_eq!(
            error("name = \"request-termination\"\nconfig = { status_code = 700 }"),
            "plugins[0].config.status_code: status_code must be between 100 .. 599"
        );
        let err = error("name = \"request-termination\"\nconfig = { code = 403 }");
        assert!(
            err.starts_with("plugins[0].config.code: unknown field `code`"),
            "{err}"
        );
        let err = error("name = \"cors\"\nconfig = { origins = [\"(\"] }");
        assert_eq!(
            err,
            "plugins[0].config.origins[0]: '(' is not a valid regex"
        );
    }
}
