//! Kong 3.9's `ip-restriction` plugin configuration (`kong/plugins/ip-restriction/schema.lua`):
//! `allow` and `deny` lists of IPs and CIDR blocks (at least one of them), the refusal's
//! `status` and `message`. The check itself is the guest's (`guest/src/ip_restriction.rs`).

use crate::config::{ConfigError, invalid};
use crate::net::IpNet;
use serde::{Deserialize, Serialize};

/// Kong's message when none is configured, followed by the client's address.
pub const DEFAULT_MESSAGE_PREFIX: &str = "IP address not allowed: ";

/// An `ip-restriction` instance's `[plugins.config]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a table of ip-restriction settings"
)]
pub struct IpRestriction {
    /// Only these addresses get through (checked after `deny`). Absent = no allow list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<IpNet>>,
    /// These addresses are refused (checked first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<IpNet>>,
    /// The refusal's status; 403 when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The refusal's message; `IP address not allowed: <client ip>` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl IpRestriction {
    /// The refusal's status.
    pub fn status(&self) -> u16 {
        self.status.unwrap_or(403)
    }

    /// Kong's rules; `field` is `plugins[i].config`.
    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.allow.is_none() && self.deny.is_none() {
            return Err(invalid(
                field,
                "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
            ));
        }
        // Kong's schema takes any number, but `kong.response.error` raises a Lua error (so
        // the client gets a 500) outside 400–599: refused here instead.
        if let Some(status) = self.status
            && !(400..=599).contains(&status)
        {
            return Err(invalid(
                format!("{field}.status"),
                "must be an HTTP status from 400 to 599 (Kong's kong.response.error takes no \
                 other)",
            ));
        }
        if let Some(message) = &self.message
            && message.chars().any(|c| c.is_control())
        {
            return Err(invalid(
                format!("{field}.message"),
                "cannot hold control characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<IpRestriction, String> {
        crate::plugins::decode::decode(&serde_json::from_str(json).unwrap(), "p.config")
    }

    #[test]
    fn lists_hold_ips_and_blocks() {
        let config = decode(r#"{"allow":["10.0.0.0/8","::1"],"deny":["10.1.2.3"]}"#).unwrap();
        assert_eq!(config.allow.as_ref().unwrap().len(), 2);
        assert_eq!(config.status(), 403);
        config.validate("p.config").unwrap();
        let err = decode(r#"{"allow":["10.0.0.0/8","example.com"]}"#).unwrap_err();
        assert!(
            err.starts_with("p.config.allow: invalid value") || err.contains("example.com"),
            "{err}"
        );
        assert!(err.starts_with("p.config.allow: "), "{err}");
    }

    #[test]
    fn one_list_is_required_and_the_status_is_an_error_status() {
        assert_eq!(
            IpRestriction::default()
                .validate("p.config")
                .unwrap_err()
                .to_string(),
            "p.config: at least one of these fields must be non-empty: 'config.allow', \
             'config.deny'"
        );
        let config = IpRestriction {
            deny: Some(Vec::new()),
            status: Some(302),
            ..IpRestriction::default()
        };
        assert!(
            config
                .validate("p.config")
                .unwrap_err()
                .to_string()
                .starts_with("p.config.status: ")
        );
        let config = IpRestriction {
            status: Some(451),
            ..config
        };
        config.validate("p.config").unwrap();
    }
}
