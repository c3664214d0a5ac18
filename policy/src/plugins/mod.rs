//! `[[plugins]]`: Kong's plugin model (a plugin `name`, an optional scope of `service`,
//! `route` and/or `consumer`, `enabled`, and a plugin-specific `config`), so a Kong user can
//! read a keygate.toml next to their kong.yml.
//!
//! Each plugin's `config` is decoded into its own type, chosen by `name`, while the file is
//! read: a typo in a field is reported with its line, and the guest never holds an untyped
//! config. Adding a plugin = a [`PluginKind`] variant, a [`PluginConfig`] variant and its
//! module; decoding, scopes, precedence and duplicate checks are shared.
//!
//! Positions in [`Plugins`] are the same in the host's [`crate::Config`] and in the guest's
//! [`crate::GuestConfig`]: a position names one instance on both sides (e.g. whose Redis a
//! counter lives in).

pub mod cors;
mod decode;
pub mod ip_restriction;
mod precedence;
pub mod prometheus;
pub mod rate_limiting;
pub mod redis;
pub mod request_termination;
mod validate;

pub use cors::Cors;
pub use ip_restriction::IpRestriction;
pub use precedence::{Applicable, ConsumerIdentity, RequestScope};
pub use prometheus::Prometheus;
pub use rate_limiting::{LimitBy, Period, Policy, RateLimiting};
pub use redis::{Redis, RedisTarget};
pub use request_termination::RequestTermination;

use serde::{Serialize, Serializer};
use std::fmt;

/// The plugins keygate knows. Names are Kong's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    RateLimiting,
    Prometheus,
    Cors,
    IpRestriction,
    RequestTermination,
    KeyAuth,
}

impl PluginKind {
    pub const ALL: [Self; 6] = [
        Self::RateLimiting,
        Self::Prometheus,
        Self::Cors,
        Self::IpRestriction,
        Self::RequestTermination,
        Self::KeyAuth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::RateLimiting => "rate-limiting",
            Self::Prometheus => "prometheus",
            Self::Cors => "cors",
            Self::IpRestriction => "ip-restriction",
            Self::RequestTermination => "request-termination",
            Self::KeyAuth => "key-auth",
        }
    }

    /// Kong's `PRIORITY` (higher runs first): cors 2000, key-auth 1250, ip-restriction 990,
    /// rate-limiting 910, request-termination 2, prometheus 13 (log phase only).
    pub fn priority(self) -> u16 {
        match self {
            Self::Cors => 2000,
            Self::IpRestriction => 990,
            Self::RateLimiting => 910,
            Self::Prometheus => 13,
            Self::RequestTermination => 2,
            Self::KeyAuth => 1250,
        }
    }

    /// Whether Kong's schema lets an instance be scoped to a consumer
    /// (`consumer = typedefs.no_consumer`).
    pub fn consumer_scope_allowed(self) -> bool {
        !matches!(self, Self::Cors | Self::KeyAuth)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// A dense number for per-kind tables.
    const fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A plugin's `config`, typed by its name.
// A config holds a handful of these, built once per load: boxing the larger ones would save
// nothing worth an indirection on every request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    RateLimiting(RateLimiting),
    Prometheus(Prometheus),
    Cors(Cors),
    IpRestriction(IpRestriction),
    RequestTermination(RequestTermination),
    /// Kong's key-auth at a service or route: `[key_auth]`'s fields (but `body_buffer_size`,
    /// which stays a `[key_auth]` setting).
    KeyAuth(crate::config::KeyAuth),
}

impl PluginConfig {
    pub fn kind(&self) -> PluginKind {
        match self {
            Self::RateLimiting(_) => PluginKind::RateLimiting,
            Self::Prometheus(_) => PluginKind::Prometheus,
            Self::Cors(_) => PluginKind::Cors,
            Self::IpRestriction(_) => PluginKind::IpRestriction,
            Self::RequestTermination(_) => PluginKind::RequestTermination,
            Self::KeyAuth(_) => PluginKind::KeyAuth,
        }
    }

    /// Only the fields the guest acts on (secrets and connection settings stay with the host).
    fn for_guest(&self) -> Self {
        match self {
            Self::RateLimiting(config) => Self::RateLimiting(RateLimiting {
                redis: None,
                ..config.clone()
            }),
            Self::Prometheus(_)
            | Self::Cors(_)
            | Self::IpRestriction(_)
            | Self::RequestTermination(_)
            | Self::KeyAuth(_) => self.clone(),
        }
    }
}

impl Serialize for PluginConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::RateLimiting(config) => config.serialize(serializer),
            Self::Prometheus(config) => config.serialize(serializer),
            Self::Cors(config) => config.serialize(serializer),
            Self::IpRestriction(config) => config.serialize(serializer),
            Self::RequestTermination(config) => config.serialize(serializer),
            Self::KeyAuth(config) => config.serialize(serializer),
        }
    }
}

/// One `[[plugins]]` entry. The scope fields name entities as Kong's do: `service` a
/// `[[services]]` name, `route` a route name, `consumer` a consumer's username or id. No scope
/// field = global.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub service: Option<String>,
    pub route: Option<String>,
    pub consumer: Option<String>,
    /// A disabled instance is skipped as if absent (Kong does not load it), so a less
    /// specific instance applies in its place.
    pub enabled: bool,
    pub config: PluginConfig,
}

impl Plugin {
    pub fn kind(&self) -> PluginKind {
        self.config.kind()
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    pub fn rate_limiting(&self) -> Option<&RateLimiting> {
        match &self.config {
            PluginConfig::RateLimiting(config) => Some(config),
            _ => None,
        }
    }

    pub fn key_auth(&self) -> Option<&crate::config::KeyAuth> {
        match &self.config {
            PluginConfig::KeyAuth(config) => Some(config),
            _ => None,
        }
    }

    pub fn prometheus(&self) -> Option<&Prometheus> {
        match &self.config {
            PluginConfig::Prometheus(config) => Some(config),
            _ => None,
        }
    }

    pub fn cors(&self) -> Option<&Cors> {
        match &self.config {
            PluginConfig::Cors(config) => Some(config),
            _ => None,
        }
    }

    pub fn ip_restriction(&self) -> Option<&IpRestriction> {
        match &self.config {
            PluginConfig::IpRestriction(config) => Some(config),
            _ => None,
        }
    }

    pub fn request_termination(&self) -> Option<&RequestTermination> {
        match &self.config {
            PluginConfig::RequestTermination(config) => Some(config),
            _ => None,
        }
    }

    /// The rate-limit counters this instance counts in, as `route:service` of its scope (an
    /// unset one empty): Kong's counter key holds the ids of the plugin's scope, not of the
    /// matched route, so a global or consumer-only instance counts across every route. The
    /// guest passes it to `counters.hit`; the host finds by it which Redis a `redis` limit
    /// lives in, so both sides must build it here.
    pub fn counter_namespace(&self) -> String {
        format!(
            "{}:{}",
            self.route.as_deref().unwrap_or(""),
            self.service.as_deref().unwrap_or("")
        )
    }

    /// `global`, or e.g. `route "results" + consumer "acme"`, for messages.
    pub fn scope_description(&self) -> String {
        let parts: Vec<String> = [
            ("route", &self.route),
            ("service", &self.service),
            ("consumer", &self.consumer),
        ]
        .into_iter()
        .filter_map(|(what, name)| name.as_ref().map(|name| format!("{what} {name:?}")))
        .collect();
        if parts.is_empty() {
            "global".into()
        } else {
            parts.join(" + ")
        }
    }
}

impl Serialize for Plugin {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            name: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            service: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            route: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            consumer: &'a Option<String>,
            enabled: bool,
            config: &'a PluginConfig,
        }
        Written {
            name: self.name(),
            service: &self.service,
            route: &self.route,
            consumer: &self.consumer,
            enabled: self.enabled,
            config: &self.config,
        }
        .serialize(serializer)
    }
}

/// The `[[plugins]]` list with its precedence index, built once when the list is made so
/// that finding the instance for a request allocates nothing. Read-only: the index can never
/// fall out of step with the list.
#[derive(Clone, Default)]
pub struct Plugins {
    list: Vec<Plugin>,
    index: precedence::Index,
}

impl Plugins {
    pub fn new(list: Vec<Plugin>) -> Self {
        let index = precedence::Index::new(&list);
        Self { list, index }
    }

    pub fn as_slice(&self) -> &[Plugin] {
        &self.list
    }

    /// The guest's copy: same instances at the same positions, without the host-side
    /// connection settings (Redis address and password).
    pub fn for_guest(&self) -> Self {
        Self::new(
            self.list
                .iter()
                .map(|plugin| Plugin {
                    config: plugin.config.for_guest(),
                    ..plugin.clone()
                })
                .collect(),
        )
    }
}

impl std::ops::Deref for Plugins {
    type Target = [Plugin];

    fn deref(&self) -> &[Plugin] {
        &self.list
    }
}

impl PartialEq for Plugins {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.list.fmt(f)
    }
}

impl Serialize for Plugins {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.list.serialize(serializer)
    }
}
