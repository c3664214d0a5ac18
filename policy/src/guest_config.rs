//! The part of the configuration the guest receives: JSON in one environment variable,
//! the only channel that works the same on keygate, `wasmtime serve` and Spin.

use crate::config::{Config, ConfigError, KeyAuth, Service};
use crate::{Compat, Duration, IpNet, Plugins};
use serde::{Deserialize, Serialize};

impl Config {
    /// What the guest needs, with static keys already fingerprinted so raw keys never reach
    /// the guest's environment (and from there an exported `spin.toml`).
    pub fn guest_config(&self) -> GuestConfig {
        GuestConfig {
            client_addr_header: None,
            listen_port: Some(self.server.listen.port()),
            host_annotations: false,
            annotate_key: false,
            trusted_ips: self.proxy.trusted_ips.clone(),
            compat: self.compat.clone(),
            key_auth: self.key_auth.clone(),
            auth_api: self.auth_api.as_ref().map(|api| GuestAuthApi {
                url: api.url.clone(),
                timeout: api.timeout,
                cache_ttl: api.cache_ttl,
                negative_ttl: api.negative_ttl,
                stale_if_error: api.stale_if_error,
            }),
            consumers: self
                .consumers
                .iter()
                .map(|consumer| GuestConsumer {
                    id: consumer.effective_id(),
                    username: consumer.username.clone(),
                    custom_id: consumer.custom_id.clone(),
                    key_fingerprints: consumer
                        .keys
                        .iter()
                        .map(|key| crate::fingerprint::fingerprint(key.key()))
                        .collect(),
                    key_ids: consumer
                        .keys
                        .iter()
                        .map(|key| key.id().map(str::to_string))
                        .collect(),
                })
                .collect(),
            services: self.services.clone(),
            plugins: self.plugins.for_guest(),
        }
    }
}

/// The part of the configuration the guest acts on, passed as JSON in [`crate::GUEST_CONFIG_ENV`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// A request header the host fills with the client's IP (and removes when clients send it):
    /// `keygate-client-addr` on keygate, `spin-client-addr` on Spin, none on `wasmtime serve`.
    pub client_addr_header: Option<String>,
    /// The port clients connect to, for `X-Forwarded-Port` (else the port in `Host`).
    pub listen_port: Option<u16>,
    /// Tell the host which route answered and what each outgoing call is for, in
    /// `keygate-labels` / `keygate-call` headers the host strips: keygate's metrics labels.
    #[serde(default)]
    pub host_annotations: bool,
    /// Also tell the host each key's fingerprint prefix (`keygate-key`): only while its access
    /// log is on, so requests do not carry it for nothing.
    #[serde(default)]
    pub annotate_key: bool,
    /// `proxy.trusted_ips`.
    #[serde(default)]
    pub trusted_ips: Vec<IpNet>,
    #[serde(default)]
    pub compat: Compat,
    pub key_auth: KeyAuth,
    pub auth_api: Option<GuestAuthApi>,
    pub consumers: Vec<GuestConsumer>,
    pub services: Vec<Service>,
    /// `[[plugins]]` at the same positions as in [`Config`], minus what the host keeps to
    /// itself (Redis addresses and passwords: the host owns the counter store).
    #[serde(default)]
    pub plugins: Plugins,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestAuthApi {
    pub url: String,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_if_error: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestConsumer {
    pub id: Option<String>,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    pub key_fingerprints: Vec<String>,
    /// The credential id of each key, where the config gives one (by position).
    #[serde(default)]
    pub key_ids: Vec<Option<String>>,
}

impl GuestConfig {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("the guest config is plain data")
    }

    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|err| ConfigError::Parse(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    /// Found by `cargo fuzz run config`: a rate limit of `minute = 1.5666666666666669` reached
    /// the guest as 1.5666666666666667, serde_json's default float parsing being one bit off
    /// at times; its `float_roundtrip` feature reads back exactly what it wrote.
    #[test]
    fn numbers_reach_the_guest_bit_for_bit() {
        for limit in [
            1.5666666666666669_f64,
            0.1,
            2.0000000000000004,
            1e300,
            5e-324,
        ] {
            let json = serde_json::to_string(&limit).unwrap();
            let read: f64 = serde_json::from_str(&json).unwrap();
            assert_eq!(read.to_bits(), limit.to_bits(), "{json}");
        }
    }
}
