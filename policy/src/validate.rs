//! The rules serde cannot express: cross-field checks, names, uniqueness. Every error
//! names the field at fault.

use crate::config::*;
use std::collections::HashSet;

/// `guest.reuse_decisions` above this would let one thread keep gigabytes of decisions.
const MAX_REUSE_DECISIONS: u32 = 1_000_000;

impl Server {
    /// A TLS listener needs both files, and the files need a listener (a certificate set
    /// without `tls_listen` would silently serve nothing over TLS).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        match (self.tls_listen, &self.tls_cert, &self.tls_key) {
            (Some(_), None, _) => Err(invalid(
                "server.tls_cert",
                "required when tls_listen is set (a PEM certificate chain)",
            )),
            (Some(_), _, None) => Err(invalid(
                "server.tls_key",
                "required when tls_listen is set (the PEM private key of tls_cert)",
            )),
            (None, Some(_), _) | (None, _, Some(_)) => Err(invalid(
                "server.tls_listen",
                "required when tls_cert or tls_key is set (the address of the TLS listener)",
            )),
            _ => Ok(()),
        }
    }
}

impl Config {
    /// Parse and validate a TOML document.
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|err| {
            // `[[plugins]]` errors name their field themselves; the line TOML would add is the
            // first `[[plugins]]` header, whichever entry is at fault.
            if err.message().starts_with("plugins[") {
                ConfigError::Parse(err.message().to_string())
            } else {
                ConfigError::Parse(err.to_string())
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that serde cannot express: cross-field rules, names, uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.key_auth.validate()?;
        if let Some(anonymous) = &self.key_auth.anonymous
            && self.anonymous_consumer(anonymous).is_none()
        {
            return Err(invalid(
                "key_auth.anonymous",
                format!("{anonymous:?} is not the username or id of any [[consumers]] entry"),
            ));
        }
        if let Some(auth_api) = &self.auth_api {
            auth_api.validate()?;
        }
        if let Some(url) = &self.cluster.redis {
            crate::plugins::Redis::from_url(url).map_err(|err| invalid("cluster.redis", err))?;
        }
        if self.guest.memory_limit_mb == 0 {
            return Err(invalid("guest.memory_limit_mb", "must be at least 1"));
        }
        if self.guest.max_instances == 0 {
            return Err(invalid("guest.max_instances", "must be at least 1"));
        }
        if self.guest.instance_reuse == 0 {
            return Err(invalid("guest.instance_reuse", "must be at least 1"));
        }
        if self.guest.reuse_decisions > MAX_REUSE_DECISIONS {
            return Err(invalid(
                "guest.reuse_decisions",
                format!("must be at most {MAX_REUSE_DECISIONS}"),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.server.workers == Some(0) {
            return Err(invalid("server.workers", "must be at least 1"));
        }
        for (field, timeout) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.keepalive_timeout", self.server.keepalive_timeout),
        ] {
            if timeout.get().is_zero() {
                return Err(invalid(field, "must be more than 0s"));
            }
        }
        self.server.validate_tls()?;
        if let Some(admin) = self.server.admin_listen
            && !admin.ip().is_loopback()
            && self.server.admin_token.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "server.admin_token",
                format!("required when admin_listen ({admin}) is not a loopback address"),
            ));
        }
        let mut keys = HashSet::new();
        for (i, consumer) in self.consumers.iter().enumerate() {
            let field = format!("consumers[{i}]");
            if consumer.username.is_none() && consumer.custom_id.is_none() {
                return Err(invalid(field, "needs a username or a custom_id"));
            }
            for (k, key) in consumer.keys.iter().enumerate() {
                if key.id().is_some_and(str::is_empty) {
                    return Err(invalid(
                        format!("{field}.keys[{k}].id"),
                        "a credential id cannot be empty",
                    ));
                }
                let key = key.key();
                if key.is_empty() {
                    return Err(invalid(
                        format!("{field}.keys[{k}]"),
                        "a key cannot be empty",
                    ));
                }
                if !keys.insert(key) {
                    return Err(invalid(
                        format!("{field}.keys[{k}]"),
                        "this key already belongs to another consumer",
                    ));
                }
            }
        }
        let mut service_names = HashSet::new();
        let mut route_names = HashSet::new();
        for (s, service) in self.services.iter().enumerate() {
            let field = format!("services[{s}]");
            if service.name.is_empty() {
                return Err(invalid(format!("{field}.name"), "cannot be empty"));
            }
            if !service_names.insert(service.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("a service named {:?} already exists", service.name),
                ));
            }
            for (r, route) in service.routes.iter().enumerate() {
                let field = format!("{field}.routes[{r}]");
                if let Some(name) = &route.name
                    && !route_names.insert(name.as_str())
                {
                    return Err(invalid(
                        format!("{field}.name"),
                        format!("a route named {name:?} already exists"),
                    ));
                }
                route.validate(&field)?;
            }
        }
        let mut upstream_names = HashSet::new();
        for (u, upstream) in self.upstreams.iter().enumerate() {
            let field = format!("upstreams[{u}]");
            upstream.validate(&field)?;
            if !upstream_names.insert(upstream.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("an upstream named {:?} already exists", upstream.name),
                ));
            }
        }
        self.validate_plugins()?;
        Ok(())
    }
}

impl KeyAuth {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_at("key_auth")
    }

    /// `field` is where these fields are: `key_auth`, or a key-auth plugin's config.
    pub(crate) fn validate_at(&self, field: &str) -> Result<(), ConfigError> {
        if self.key_names.is_empty() {
            return Err(invalid(
                format!("{field}.key_names"),
                "needs at least one name",
            ));
        }
        for (i, name) in self.key_names.iter().enumerate() {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(invalid(
                    format!("{field}.key_names[{i}]"),
                    format!("{name:?} is not a header name (letters, digits, '-' and '_')"),
                ));
            }
        }
        if self.anonymous.as_deref() == Some("") {
            return Err(invalid(
                format!("{field}.anonymous"),
                "cannot be empty (leave it out to refuse requests without a valid key)",
            ));
        }
        if self.body_buffer_size.bytes() == 0 || self.body_buffer_size.bytes() > 16 << 20 {
            return Err(invalid(
                format!("{field}.body_buffer_size"),
                "must be between 1 byte and 16m",
            ));
        }
        if !(self.key_in_header || self.key_in_query || self.key_in_body) {
            return Err(invalid(
                field,
                "key_in_header, key_in_query and key_in_body are all false: no key could be found",
            ));
        }
        Ok(())
    }
}

impl AuthApi {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.contains("{key}") {
            return Err(invalid(
                "auth_api.url",
                "must contain {key} where the key goes",
            ));
        }
        self.origin().map_err(|err| invalid("auth_api.url", err))?;
        if self.timeout.get().is_zero() {
            return Err(invalid("auth_api.timeout", "must be longer than 0s"));
        }
        if self.cache_capacity == 0 {
            return Err(invalid("auth_api.cache_capacity", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(invalid("auth_api.max_in_flight", "must be at least 1"));
        }
        Ok(())
    }
}

impl Route {
    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        // nginx reads `client_max_body_size 0` as "no limit"; here that is the field left out,
        // and a 0 that refused every body would surprise whoever meant nginx's.
        if self.max_body_size.is_some_and(|size| size.bytes() == 0) {
            return Err(invalid(
                format!("{field}.max_body_size"),
                "must be at least 1 byte; leave the field out for no limit (nginx's 0)",
            ));
        }
        if self.paths.is_empty()
            && self.methods.is_empty()
            && self.hosts.is_empty()
            && self.headers.is_empty()
        {
            return Err(invalid(
                field,
                "a route needs at least one of paths, methods, hosts or headers",
            ));
        }
        for (name, values) in &self.headers {
            let field = format!("{field}.headers.{name}");
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
            if !token {
                return Err(invalid(field, format!("{name:?} is not a header name")));
            }
            if name.eq_ignore_ascii_case("host") {
                return Err(invalid(
                    field,
                    "match the Host header with hosts, not headers",
                ));
            }
            if values.is_empty() {
                return Err(invalid(field, "needs at least one value"));
            }
            for (i, value) in values.iter().enumerate() {
                if let Some(pattern) = value.strip_prefix("~*") {
                    regex_lite::Regex::new(&format!("(?i){pattern}")).map_err(|err| {
                        invalid(
                            format!("{field}[{i}]"),
                            format!("invalid regex {value:?}: {err}"),
                        )
                    })?;
                }
            }
        }
        for (i, method) in self.methods.iter().enumerate() {
            let ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            if !ok {
                return Err(invalid(
                    format!("{field}.methods[{i}]"),
                    format!("{method:?} is not an upper-case HTTP method"),
                ));
            }
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let name = host.rsplit_once(':').map_or(host.as_str(), |(name, port)| {
                if port.parse::<u16>().is_ok() {
                    name
                } else {
                    host
                }
            });
            let wildcards = name.matches('*').count();
            let ok = !name.is_empty()
                && (wildcards == 0
                    || (wildcards == 1 && (name.starts_with("*.") || name.ends_with(".*"))));
            if !ok {
                return Err(invalid(
                    format!("{field}.hosts[{i}]"),
                    format!(
                        "{host:?}: a host is a name with at most one leading \"*.\" or trailing \".*\""
                    ),
                ));
            }
        }
        Ok(())
    }
}
