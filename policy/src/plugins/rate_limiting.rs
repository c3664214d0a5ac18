//! Kong 3.9's `rate-limiting` configuration (`kong/plugins/rate-limiting/schema.lua`): the same
//! field names, types, units and defaults, so a Kong user's `config` block means the same here.
//! What keygate cannot reproduce (the database-backed `cluster` policy, `sync_rate` batching) is
//! refused with the reason instead of being silently ignored: a limit must do what it says.

use super::redis::{RawRedis, Redis};
use crate::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

/// One of Kong's fixed windows, aligned to UTC boundaries (the 1st of the month, Jan 1): the
/// counters' own type, so the rule and the numbers cannot disagree on a window.
pub use keygate_counters_core::Period;

/// Whose requests share a counter (Kong's `limit_by`). Every identity that is missing for a
/// request (no consumer, no such header, another path) falls back to the client IP, as Kong's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitBy {
    /// Consumer id, else credential id.
    #[default]
    Consumer,
    Credential,
    Ip,
    Service,
    /// The first value of `header_name`.
    Header,
    /// The normalized request path, only when it equals `path` exactly.
    Path,
}

/// Where counters live. Kong's third policy, `cluster`, keeps them in Kong's database; keygate
/// has none, so it is refused at load (with `redis` suggested) rather than mapped to something
/// that counts differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Per gateway node, in the host's memory. Only allowed requests are counted.
    #[default]
    Local,
    /// Shared by every node using the same Redis. Every request is counted, rejected ones
    /// included (Kong ≥ 3.4), so a request refused by one window still uses the others.
    Redis,
}

/// A `rate-limiting` instance's `[plugins.config]`, after the deprecated flat `redis_*` fields
/// are folded into `redis`. Limits are numbers as in Kong, fractions included: Kong refuses
/// once `limit - usage <= 0`, so `minute = 2.5` lets a third request through (2.5 - 2 > 0),
/// refuses the fourth, and headers print `2.5`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimiting {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minute: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub month: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub year: Option<f64>,
    pub limit_by: LimitBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub policy: Policy,
    /// When the counter store fails: `true` lets the request through without limit headers,
    /// `false` answers 500.
    pub fault_tolerant: bool,
    pub hide_client_headers: bool,
    pub error_code: u16,
    pub error_message: String,
    /// Always Kong's default, -1 (validation refuses anything else); kept so a Kong config
    /// that spells the default out still loads.
    pub sync_rate: f64,
    /// Connection settings for `policy = "redis"`. `None` in the guest's copy: the host owns
    /// the Redis connection, so its address and password never reach the guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
}

impl Default for RateLimiting {
    /// Kong's defaults, with no limit yet (which validation refuses: at least one is needed).
    fn default() -> Self {
        Self {
            second: None,
            minute: None,
            hour: None,
            day: None,
            month: None,
            year: None,
            limit_by: LimitBy::Consumer,
            header_name: None,
            path: None,
            policy: Policy::Local,
            fault_tolerant: true,
            hide_client_headers: false,
            error_code: 429,
            error_message: crate::errors::RATE_LIMITED.to_string(),
            sync_rate: -1.0,
            redis: None,
        }
    }
}

impl RateLimiting {
    /// The limit configured for `period`, if any.
    pub fn limit(&self, period: Period) -> Option<f64> {
        match period {
            Period::Second => self.second,
            Period::Minute => self.minute,
            Period::Hour => self.hour,
            Period::Day => self.day,
            Period::Month => self.month,
            Period::Year => self.year,
        }
    }

    /// The configured limits, shortest window first (the order of Kong's headers).
    pub fn limits(&self) -> impl Iterator<Item = (Period, f64)> + '_ {
        Period::ALL
            .into_iter()
            .filter_map(|period| self.limit(period).map(|limit| (period, limit)))
    }

    /// Kong's schema rules plus keygate's refusals; `field` is `plugins[i].config`.
    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        for period in Period::ALL {
            if let Some(limit) = self.limit(period)
                && !(limit.is_finite() && limit > 0.0)
            {
                return Err(invalid(
                    format!("{field}.{}", period.name()),
                    "must be a number greater than 0",
                ));
            }
        }
        if self.limits().next().is_none() {
            return Err(invalid(
                field,
                "at least one of second, minute, hour, day, month or year is required",
            ));
        }
        // Kong's `validate_periods_order`, with its wording (operators search for it).
        for (i, lower) in Period::ALL.into_iter().enumerate() {
            let Some(lower_limit) = self.limit(lower) else {
                continue;
            };
            for upper in Period::ALL.into_iter().skip(i + 1) {
                if let Some(upper_limit) = self.limit(upper)
                    && upper_limit < lower_limit
                {
                    return Err(invalid(
                        format!("{field}.{}", upper.name()),
                        format!(
                            "The limit for {}({upper_limit:.1}) cannot be lower than the limit for {}({lower_limit:.1})",
                            upper.name(),
                            lower.name()
                        ),
                    ));
                }
            }
        }
        if let Some(name) = &self.header_name
            && !is_header_name(name)
        {
            return Err(invalid(
                format!("{field}.header_name"),
                format!("{name:?} is not a header name"),
            ));
        }
        if self.limit_by == LimitBy::Header && self.header_name.is_none() {
            return Err(invalid(
                format!("{field}.header_name"),
                "required when limit_by = \"header\"",
            ));
        }
        if let Some(path) = &self.path
            && !is_path(path)
        {
            return Err(invalid(
                format!("{field}.path"),
                format!("{path:?} is not a path (it starts with \"/\", without query or spaces)"),
            ));
        }
        if self.limit_by == LimitBy::Path && self.path.is_none() {
            return Err(invalid(
                format!("{field}.path"),
                "required when limit_by = \"path\"",
            ));
        }
        if !(200..=599).contains(&self.error_code) {
            return Err(invalid(
                format!("{field}.error_code"),
                "must be an HTTP status from 200 to 599 (a 1xx cannot end a request)",
            ));
        }
        if self.sync_rate != -1.0 {
            return Err(invalid(
                format!("{field}.sync_rate"),
                "keygate supports only -1, Kong's default: with policy = \"redis\" every request \
                 is counted in Redis as it happens; Kong's periodic sync (sync_rate > 0) is not \
                 reproduced",
            ));
        }
        if let Some(redis) = &self.redis {
            redis.validate(&format!("{field}.redis"))?;
        }
        if self.policy == Policy::Redis
            && self
                .redis
                .as_ref()
                .is_none_or(|redis| redis.host.is_none() && redis.url.is_none())
        {
            return Err(invalid(
                format!("{field}.redis.host"),
                "required when policy = \"redis\" (or give redis.url)",
            ));
        }
        Ok(())
    }
}

/// An RFC 9110 token, as Kong's `typedefs.header_name`.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
}

/// What `limit_by = "path"` can ever equal: a normalized path, which starts with `/` and
/// carries no query, fragment, whitespace or control characters.
fn is_path(path: &str) -> bool {
    path.starts_with('/')
        && !path
            .chars()
            .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
}

/// `policy` as written: Kong's three values, so `cluster` gets an explanation, not serde's
/// "unknown variant".
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawPolicy {
    #[default]
    Local,
    Cluster,
    Redis,
}

/// `[plugins.config]` as written, Kong's deprecated flat `redis_*` fields included.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a table of rate-limiting settings"
)]
pub(super) struct RawRateLimiting {
    #[serde(deserialize_with = "limit")]
    second: Option<f64>,
    #[serde(deserialize_with = "limit")]
    minute: Option<f64>,
    #[serde(deserialize_with = "limit")]
    hour: Option<f64>,
    #[serde(deserialize_with = "limit")]
    day: Option<f64>,
    #[serde(deserialize_with = "limit")]
    month: Option<f64>,
    #[serde(deserialize_with = "limit")]
    year: Option<f64>,
    limit_by: LimitBy,
    header_name: Option<String>,
    path: Option<String>,
    policy: RawPolicy,
    fault_tolerant: bool,
    hide_client_headers: bool,
    error_code: u16,
    error_message: String,
    sync_rate: f64,
    /// Decoded on its own, so that its errors say `redis.<field>`.
    redis: Option<serde_json::Value>,
    redis_host: Option<String>,
    redis_port: Option<u16>,
    redis_timeout: Option<u32>,
    redis_username: Option<String>,
    redis_password: Option<String>,
    redis_database: Option<u32>,
    redis_ssl: Option<bool>,
    redis_ssl_verify: Option<bool>,
    redis_server_name: Option<String>,
}

/// A limit that is present. The config waits as JSON while it is read, where `nan` and `inf`
/// become null: refused here, or a limit the operator wrote would silently vanish.
fn limit<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    match Option::<f64>::deserialize(deserializer)? {
        Some(limit) => Ok(Some(limit)),
        None => Err(serde::de::Error::custom("must be a number greater than 0")),
    }
}

impl Default for RawRateLimiting {
    fn default() -> Self {
        let kong = RateLimiting::default();
        Self {
            second: None,
            minute: None,
            hour: None,
            day: None,
            month: None,
            year: None,
            limit_by: kong.limit_by,
            header_name: None,
            path: None,
            policy: RawPolicy::Local,
            fault_tolerant: kong.fault_tolerant,
            hide_client_headers: kong.hide_client_headers,
            error_code: kong.error_code,
            error_message: kong.error_message,
            sync_rate: kong.sync_rate,
            redis: None,
            redis_host: None,
            redis_port: None,
            redis_timeout: None,
            redis_username: None,
            redis_password: None,
            redis_database: None,
            redis_ssl: None,
            redis_ssl_verify: None,
            redis_server_name: None,
        }
    }
}

impl RawRateLimiting {
    /// The canonical form, or why it cannot be represented; `path` is `plugins[i].config`.
    pub(super) fn into_config(self, path: &str) -> Result<RateLimiting, String> {
        let policy = match self.policy {
            RawPolicy::Local => Policy::Local,
            RawPolicy::Redis => Policy::Redis,
            RawPolicy::Cluster => {
                return Err(format!(
                    "{path}.policy: \"cluster\" keeps counters in Kong's database, and keygate \
                     has none: use \"redis\" to share limits across gateway nodes, or \"local\" \
                     for per-node counters"
                ));
            }
        };
        let flat = RawRedis {
            host: self.redis_host,
            port: self.redis_port,
            timeout: self.redis_timeout,
            username: self.redis_username,
            password: self.redis_password,
            database: self.redis_database,
            ssl: self.redis_ssl,
            ssl_verify: self.redis_ssl_verify,
            server_name: self.redis_server_name,
            url: None,
        };
        let nested = match &self.redis {
            Some(redis) => Some(super::decode::decode::<RawRedis>(
                redis,
                &format!("{path}.redis"),
            )?),
            None => None,
        };
        let redis = RawRedis::merge(nested, flat, path)?;
        Ok(RateLimiting {
            second: self.second,
            minute: self.minute,
            hour: self.hour,
            day: self.day,
            month: self.month,
            year: self.year,
            limit_by: self.limit_by,
            header_name: self.header_name,
            path: self.path,
            policy,
            fault_tolerant: self.fault_tolerant,
            hide_client_headers: self.hide_client_headers,
            error_code: self.error_code,
            error_message: self.error_message,
            sync_rate: self.sync_rate,
            redis,
        })
    }
}

#[cfg(all(test, feature = "toml"))]
mod tests;
