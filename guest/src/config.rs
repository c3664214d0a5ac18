//! The policy as this instance runs it: parsed from the environment once per instance and
//! compiled (route order, regexes, key index) so that requests only look things up.

use crate::router::RouteTable;
use keygate_policy::fingerprint::credential_uuid;
use keygate_policy::{GUEST_CONFIG_ENV, GuestConfig, GuestConsumer};
use std::collections::HashMap;
use std::sync::OnceLock;

pub struct Policy {
    pub config: GuestConfig,
    pub routes: RouteTable,
    /// Key fingerprint → (index into `config.consumers`, the credential's id).
    pub static_keys: HashMap<String, (usize, String)>,
    /// Index into `config.consumers` of `key_auth.anonymous`.
    pub anonymous: Option<usize>,
}

impl Policy {
    pub fn from_config(config: GuestConfig) -> Result<Self, String> {
        let routes = RouteTable::compile(&config.services)?;
        let static_keys = config
            .consumers
            .iter()
            .enumerate()
            .flat_map(|(i, consumer)| {
                consumer
                    .key_fingerprints
                    .iter()
                    .map(move |fp| (fp.clone(), (i, credential_uuid(fp))))
            })
            .collect();
        let anonymous = match &config.key_auth.anonymous {
            None => None,
            Some(name) => Some(
                anonymous_index(&config.consumers, name)
                    .ok_or_else(|| format!("key_auth.anonymous: no consumer {name:?}"))?,
            ),
        };
        Ok(Self {
            config,
            routes,
            static_keys,
            anonymous,
        })
    }

    /// The consumer a static key belongs to, and the key's credential id.
    pub fn static_consumer(&self, fingerprint: &str) -> Option<(&GuestConsumer, &str)> {
        self.static_keys
            .get(fingerprint)
            .map(|(i, credential)| (&self.config.consumers[*i], credential.as_str()))
    }

    pub fn anonymous_consumer(&self) -> Option<&GuestConsumer> {
        self.anonymous.map(|i| &self.config.consumers[i])
    }
}

/// Kong's lookup of the anonymous consumer: by id first, then by username.
fn anonymous_index(consumers: &[GuestConsumer], name: &str) -> Option<usize> {
    consumers
        .iter()
        .position(|c| c.id.as_deref() == Some(name))
        .or_else(|| {
            consumers
                .iter()
                .position(|c| c.username.as_deref() == Some(name))
        })
}

/// The instance's policy, or why there is none (every request then gets a 500 and the reason
/// is written to stderr, where the host logs it).
pub fn policy() -> Result<&'static Policy, &'static str> {
    static POLICY: OnceLock<Result<Policy, String>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            let json = std::env::var(GUEST_CONFIG_ENV)
                .map_err(|_| format!("environment variable {GUEST_CONFIG_ENV} is not set"))?;
            let config = GuestConfig::from_json(&json).map_err(|err| {
                format!("{GUEST_CONFIG_ENV} is not a keygate guest config: {err}")
            })?;
            Policy::from_config(config)
        })
        .as_ref()
        .map_err(String::as_str)
}
