//! The policy as this instance runs it: parsed from the environment once per instance and
//! compiled (route order, regexes, key index) so that requests only look things up.

use crate::router::RouteTable;
use keygate_policy::fingerprint::credential_uuid;
use keygate_policy::{GUEST_CONFIG_ENV, GuestConfig, GuestConsumer, KeyAuth};
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
                    .enumerate()
                    .map(move |(k, fp)| {
                        let id = consumer
                            .key_ids
                            .get(k)
                            .cloned()
                            .flatten()
                            .unwrap_or_else(|| credential_uuid(fp));
                        (fp.clone(), (i, id))
                    })
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

    /// `key_auth.anonymous`'s consumer: `[key_auth]`'s was found when the config was read; a
    /// key-auth instance's is looked up the same way (checked to exist at load).
    pub fn anonymous_consumer(&self, key_auth: &KeyAuth) -> Option<&GuestConsumer> {
        if std::ptr::eq(key_auth, &self.config.key_auth) {
            return self.anonymous.map(|i| &self.config.consumers[i]);
        }
        let name = key_auth.anonymous.as_deref()?;
        anonymous_index(&self.config.consumers, name).map(|i| &self.config.consumers[i])
    }

    /// The key-auth a route runs: its own or its service's `[[plugins]] name = "key-auth"`
    /// (Kong's precedence), else `[key_auth]`.
    pub fn key_auth_for(&self, matched: &crate::router::Match) -> &KeyAuth {
        let plugins = &self.config.plugins;
        let scope = plugins.scope(
            matched.route.name.as_deref(),
            Some(&matched.service.name),
            None,
        );
        plugins
            .applicable(keygate_policy::plugins::PluginKind::KeyAuth, &scope)
            .and_then(|applicable| applicable.plugin.key_auth())
            .unwrap_or(&self.config.key_auth)
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
