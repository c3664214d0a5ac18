//! `[[upstreams]]`: Kong's Upstream entity, several targets behind one name. A service whose
//! URL's host names an upstream is balanced across its targets by the host (weighted
//! round-robin, Kong's default), with passive health: a target that refuses connections or
//! times out connecting is skipped for `down_for`, then tried again.

use crate::Duration;
use crate::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

/// Kong's default target port.
pub const DEFAULT_TARGET_PORT: u16 = 8000;
/// Kong's default target weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Kong's largest target weight.
pub const MAX_WEIGHT: u32 = 65_535;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// What a service's URL host names to be balanced here.
    pub name: String,
    pub targets: Vec<Target>,
    /// `round-robin`, Kong's default and the only one keygate has.
    #[serde(default = "Upstream::default_algorithm")]
    pub algorithm: String,
    /// How long a target that failed to connect is skipped before it is tried again.
    #[serde(default = "Upstream::default_down_for")]
    pub down_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `host:port` (`host` alone: port 8000, as in Kong).
    pub target: String,
    /// 0 drains the target (it gets no new requests).
    #[serde(default = "Target::default_weight")]
    pub weight: u32,
}

impl Upstream {
    fn default_algorithm() -> String {
        "round-robin".into()
    }

    fn default_down_for() -> Duration {
        Duration::from_secs(10)
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(invalid(format!("{field}.name"), "cannot be empty"));
        }
        if self.algorithm != "round-robin" {
            return Err(invalid(
                format!("{field}.algorithm"),
                format!(
                    "{:?} is not supported: keygate balances round-robin (Kong's default) only",
                    self.algorithm
                ),
            ));
        }
        if self.targets.is_empty() {
            return Err(invalid(
                format!("{field}.targets"),
                "needs at least one target",
            ));
        }
        for (t, target) in self.targets.iter().enumerate() {
            let field = format!("{field}.targets[{t}]");
            target
                .address()
                .map_err(|err| invalid(format!("{field}.target"), err))?;
            if target.weight > MAX_WEIGHT {
                return Err(invalid(
                    format!("{field}.weight"),
                    format!("at most {MAX_WEIGHT}, as in Kong"),
                ));
            }
        }
        Ok(())
    }
}

impl Target {
    fn default_weight() -> u32 {
        DEFAULT_WEIGHT
    }

    /// `host:port` to connect to, with Kong's default port.
    pub fn address(&self) -> Result<String, String> {
        let target = self.target.trim();
        if target.is_empty() || target.contains('/') || target.contains(char::is_whitespace) {
            return Err(format!("{:?} is not host:port", self.target));
        }
        let (host, port) = match target.rsplit_once(':') {
            // An IPv6 literal is written in brackets: [::1]:8080.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("{:?}: the port is not a number", self.target))?;
                (host, port)
            }
            _ => (target, DEFAULT_TARGET_PORT),
        };
        if host.is_empty() {
            return Err(format!("{:?} has no host", self.target));
        }
        Ok(format!("{host}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Result<String, String> {
        Target {
            target: text.into(),
            weight: 100,
        }
        .address()
    }

    #[test]
    fn targets_take_kongs_default_port() {
        assert_eq!(target("10.0.0.1").unwrap(), "10.0.0.1:8000");
        assert_eq!(target("b.internal:9000").unwrap(), "b.internal:9000");
        assert_eq!(target("[::1]:8080").unwrap(), "[::1]:8080");
        assert!(target("http://x").is_err());
        assert!(target("x:port").is_err());
        assert!(target(":80").is_err());
    }
}
