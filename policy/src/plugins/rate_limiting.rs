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
mod tests {
    use super::*;
    use crate::Config;
    use crate::plugins::RedisTarget;

    /// One global rate-limiting instance with these `[plugins.config]` lines.
    fn load(config: &str) -> Result<RateLimiting, String> {
        let toml = format!("[[plugins]]\nname = \"rate-limiting\"\n[plugins.config]\n{config}\n");
        let config = Config::from_toml(&toml).map_err(|err| err.to_string())?;
        Ok(config.plugins[0].rate_limiting().unwrap().clone())
    }

    fn error_of(config: &str) -> String {
        load(config).expect_err(config)
    }

    #[test]
    fn the_issue_example_loads_with_kong_types() {
        let config = load(
            "minute = 2000\nhour = 50000\nlimit_by = \"ip\"\npolicy = \"local\"\nfault_tolerant = true\n\
             hide_client_headers = false\nerror_code = 429\nerror_message = \"API rate limit exceeded\"\n\
             [plugins.config.redis]\nhost = \"127.0.0.1\"\nport = 6379\n",
        )
        .unwrap();
        assert_eq!(
            config.limits().collect::<Vec<_>>(),
            vec![(Period::Minute, 2000.0), (Period::Hour, 50000.0)]
        );
        assert_eq!(config.limit_by, LimitBy::Ip);
        let redis = config.redis.unwrap().target().unwrap();
        assert_eq!((redis.host.as_str(), redis.port), ("127.0.0.1", 6379));
        assert_eq!(redis.timeout_ms, 2000, "Kong's default, in ms");
    }

    #[test]
    fn defaults_are_kongs() {
        let config = load("second = 1").unwrap();
        assert_eq!(
            config,
            RateLimiting {
                second: Some(1.0),
                ..RateLimiting::default()
            }
        );
        assert_eq!(config.limit_by, LimitBy::Consumer);
        assert_eq!(config.policy, Policy::Local);
        assert!(config.fault_tolerant && !config.hide_client_headers);
        assert_eq!(config.error_code, 429);
        assert_eq!(config.error_message, "API rate limit exceeded");
        assert_eq!(config.sync_rate, -1.0);
        assert_eq!(config.redis, None);
    }

    #[test]
    fn limits_are_numbers_and_may_be_fractional() {
        let config = load("minute = 2.5\nday = 2.5\nyear = 1e6").unwrap();
        assert_eq!(config.limit(Period::Minute), Some(2.5));
        assert_eq!(config.limit(Period::Year), Some(1_000_000.0));
        assert_eq!(config.limit(Period::Hour), None);
    }

    #[test]
    fn every_period_is_a_field_with_kongs_window() {
        let all = load("second = 1\nminute = 2\nhour = 3\nday = 4\nmonth = 5\nyear = 6").unwrap();
        let periods: Vec<_> = all.limits().map(|(period, _)| period).collect();
        assert_eq!(periods, Period::ALL);
        let windows: Vec<_> = Period::ALL.map(Period::seconds).to_vec();
        assert_eq!(windows, [1, 60, 3600, 86400, 2592000, 31536000]);
        assert_eq!(Period::Month.header_suffix(), "Month");
    }

    #[test]
    fn limits_must_be_positive_and_one_is_required() {
        for bad in ["minute = 0", "minute = -1", "minute = nan", "minute = inf"] {
            assert_eq!(
                error_of(bad),
                "plugins[0].config.minute: must be a number greater than 0",
                "{bad}"
            );
        }
        assert_eq!(
            error_of("limit_by = \"ip\""),
            "plugins[0].config: at least one of second, minute, hour, day, month or year is required"
        );
        let no_config = Config::from_toml("[[plugins]]\nname = \"rate-limiting\"\n").unwrap_err();
        assert!(
            no_config.to_string().contains("at least one of second"),
            "{no_config}"
        );
        assert_eq!(
            error_of("minute = \"5\""),
            "plugins[0].config.minute: invalid type: string \"5\", expected f64"
        );
    }

    #[test]
    fn a_longer_period_may_not_have_a_lower_limit() {
        assert_eq!(
            error_of("minute = 10\nhour = 5"),
            "plugins[0].config.hour: The limit for hour(5.0) cannot be lower than the limit for minute(10.0)"
        );
        assert_eq!(
            error_of("second = 2\nyear = 1.5"),
            "plugins[0].config.year: The limit for year(1.5) cannot be lower than the limit for second(2.0)"
        );
        assert!(load("minute = 10\nhour = 10").is_ok(), "equal is allowed");
    }

    #[test]
    fn limit_by_header_and_path_need_their_field() {
        assert_eq!(
            error_of("minute = 1\nlimit_by = \"header\""),
            "plugins[0].config.header_name: required when limit_by = \"header\""
        );
        assert_eq!(
            error_of("minute = 1\nlimit_by = \"header\"\nheader_name = \"x tenant\""),
            "plugins[0].config.header_name: \"x tenant\" is not a header name"
        );
        let config = load("minute = 1\nlimit_by = \"header\"\nheader_name = \"x-tenant\"").unwrap();
        assert_eq!(config.header_name.as_deref(), Some("x-tenant"));
        assert_eq!(
            error_of("minute = 1\nlimit_by = \"path\""),
            "plugins[0].config.path: required when limit_by = \"path\""
        );
        let err = error_of("minute = 1\nlimit_by = \"path\"\npath = \"results\"");
        assert!(
            err.starts_with("plugins[0].config.path: \"results\" is not a path"),
            "{err}"
        );
        assert!(load("minute = 1\nlimit_by = \"path\"\npath = \"/results\"").is_ok());
        for by in ["consumer", "credential", "ip", "service"] {
            assert!(
                load(&format!("minute = 1\nlimit_by = \"{by}\"")).is_ok(),
                "{by}"
            );
        }
        let err = error_of("minute = 1\nlimit_by = \"consumer-group\"");
        assert!(
            err.starts_with("plugins[0].config.limit_by: unknown variant `consumer-group`"),
            "{err}"
        );
    }

    #[test]
    fn cluster_policy_is_refused_with_the_alternative() {
        let err = error_of("minute = 1\npolicy = \"cluster\"");
        assert!(
            err.starts_with("plugins[0].config.policy: \"cluster\""),
            "{err}"
        );
        assert!(
            err.contains("database") && err.contains("use \"redis\""),
            "{err}"
        );
    }

    #[test]
    fn redis_policy_needs_a_redis() {
        assert_eq!(
            error_of("minute = 1\npolicy = \"redis\""),
            "plugins[0].config.redis.host: required when policy = \"redis\" (or give redis.url)"
        );
        assert_eq!(
            error_of("minute = 1\npolicy = \"redis\"\n[plugins.config.redis]\nport = 6380"),
            "plugins[0].config.redis.host: required when policy = \"redis\" (or give redis.url)"
        );
        let config = load(
            "minute = 1\npolicy = \"redis\"\nredis = { url = \"redis://r:6380/1\", timeout = 50 }",
        )
        .unwrap();
        assert_eq!(config.policy, Policy::Redis);
        let target = config.redis.unwrap().target().unwrap();
        assert_eq!(
            (target.port, target.database, target.timeout_ms),
            (6380, 1, 50)
        );
        assert_eq!(
            error_of("minute = 1\n[plugins.config.redis]\nhost = \"r\"\ntimeout = \"2s\""),
            "plugins[0].config.redis.timeout: invalid type: string \"2s\", expected u32"
        );
        assert_eq!(
            error_of("minute = 1\n[plugins.config.redis]\nhost = \"r\"\ntimeout = 0"),
            "plugins[0].config.redis.timeout: must be from 1 to 2147483646 (milliseconds)"
        );
        assert_eq!(
            error_of("minute = 1\n[plugins.config.redis]\nhots = \"r\""),
            "plugins[0].config.redis.hots: unknown field `hots`, expected one of `url`, `host`, \
             `port`, `timeout`, `username`, `password`, `database`, `ssl`, `ssl_verify`, `server_name`"
        );
    }

    #[test]
    fn kongs_deprecated_flat_redis_fields_still_load() {
        let config = load(
            "minute = 1\npolicy = \"redis\"\nredis_host = \"r\"\nredis_port = 6380\nredis_password = \"pw\"\n\
             redis_timeout = 100\nredis_database = 2\nredis_ssl = true\nredis_ssl_verify = true\n\
             redis_server_name = \"r.example\"\nredis_username = \"u\"",
        )
        .unwrap();
        let redis = config.redis.unwrap();
        assert_eq!(
            redis.target().unwrap(),
            RedisTarget {
                host: "r".into(),
                port: 6380,
                username: Some("u".into()),
                password: Some("pw".into()),
                database: 2,
                ssl: true,
                ssl_verify: true,
                server_name: Some("r.example".into()),
                timeout_ms: 100,
            }
        );
        assert_eq!(
            error_of("minute = 1\nredis_port = 1\n[plugins.config.redis]\nport = 2"),
            "plugins[0].config.redis_port: also given as redis.port: write it once (redis_port is \
             Kong's deprecated spelling of redis.port)"
        );
        let merged =
            load("minute = 1\nredis_timeout = 10\n[plugins.config.redis]\nhost = \"r\"").unwrap();
        assert_eq!(merged.redis.unwrap().target().unwrap().timeout_ms, 10);
    }

    #[test]
    fn error_code_and_sync_rate() {
        let config = load("minute = 1\nerror_code = 503\nerror_message = \"slow down\"").unwrap();
        assert_eq!(
            (config.error_code, config.error_message.as_str()),
            (503, "slow down")
        );
        for code in [100, 600] {
            assert_eq!(
                error_of(&format!("minute = 1\nerror_code = {code}")),
                "plugins[0].config.error_code: must be an HTTP status from 200 to 599 (a 1xx cannot end a request)"
            );
        }
        assert!(
            load("minute = 1\nsync_rate = -1").is_ok(),
            "Kong's default spelled out"
        );
        for config in [
            "minute = 1\nsync_rate = 0.5",
            "minute = 1\nsync_rate = 10\npolicy = \"redis\"\nredis = { host = \"r\" }",
        ] {
            let err = error_of(config);
            assert!(
                err.starts_with("plugins[0].config.sync_rate: keygate supports only -1"),
                "{err}"
            );
        }
    }
}
