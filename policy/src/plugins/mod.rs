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

mod decode;
mod precedence;
pub mod rate_limiting;
pub mod redis;
mod validate;

pub use precedence::{Applicable, ConsumerIdentity, RequestScope};
pub use rate_limiting::{LimitBy, Period, Policy, RateLimiting};
pub use redis::{Redis, RedisTarget};

use serde::{Serialize, Serializer};
use std::fmt;

/// The plugins keygate knows. Names are Kong's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    RateLimiting,
}

impl PluginKind {
    pub const ALL: [Self; 1] = [Self::RateLimiting];

    pub fn name(self) -> &'static str {
        match self {
            Self::RateLimiting => "rate-limiting",
        }
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
#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    RateLimiting(RateLimiting),
}

impl PluginConfig {
    pub fn kind(&self) -> PluginKind {
        match self {
            Self::RateLimiting(_) => PluginKind::RateLimiting,
        }
    }

    /// Only the fields the guest acts on (secrets and connection settings stay with the host).
    fn for_guest(&self) -> Self {
        match self {
            Self::RateLimiting(config) => Self::RateLimiting(RateLimiting {
                redis: None,
                ..config.clone()
            }),
        }
    }
}

impl Serialize for PluginConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::RateLimiting(config) => config.serialize(serializer),
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
