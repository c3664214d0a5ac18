//! Kong's shared Redis settings (`kong/tools/redis/schema.lua`), plus a `url` form
//! (`redis://[user[:password]@]host[:port][/database]`, `rediss://` for TLS), because that is
//! how most Redis clients and operators write an address.
//!
//! `url` and the fields it spells out (`host`, `port`, `username`, `password`, `database`,
//! `ssl`) exclude each other: with both, one of them would silently lose. `timeout`,
//! `ssl_verify` and `server_name` have no place in a URL and combine with either form.

use crate::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Kong's default `timeout`, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u32 = 2_000;
pub const DEFAULT_PORT: u16 = 6379;
/// The largest `timeout` Kong's `typedefs.timeout` takes.
const MAX_TIMEOUT_MS: u32 = (1 << 31) - 2;

/// `[plugins.config.redis]`. Fields the URL can also give are optional here so that writing
/// both is detectable; [`Redis::target`] applies Kong's defaults.
#[derive(Clone, PartialEq, Serialize)]
pub struct Redis {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default 6379.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Milliseconds, an integer as in Kong (not a duration string): connect, send and read
    /// each get this long.
    pub timeout: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Default 0; `SELECT` is only sent for another one, as Kong does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<u32>,
    /// Default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssl: Option<bool>,
    /// Kong's default is false: with `ssl` the certificate is then not checked.
    pub ssl_verify: bool,
    /// SNI and the name checked with `ssl_verify`; default the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The password (also inside `url`) never shows in logs of a config.
impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("timeout", &self.timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("ssl", &self.ssl)
            .field("ssl_verify", &self.ssl_verify)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Where and how to connect, with the URL parsed and Kong's defaults applied: what the host's
/// Redis client needs.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: u32,
    pub ssl: bool,
    pub ssl_verify: bool,
    pub server_name: Option<String>,
    pub timeout_ms: u32,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("ssl", &self.ssl)
            .field("ssl_verify", &self.ssl_verify)
            .field("server_name", &self.server_name)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl Redis {
    /// Where `url` (`redis://…` or `rediss://…`) points, with Kong's defaults for the rest.
    pub fn from_url(url: &str) -> Result<RedisTarget, String> {
        Self {
            url: Some(url.to_string()),
            host: None,
            port: None,
            timeout: DEFAULT_TIMEOUT_MS,
            username: None,
            password: None,
            database: None,
            ssl: None,
            ssl_verify: false,
            server_name: None,
        }
        .target()
    }

    /// The connection to open. Errors only for what validation refuses (no host, a bad URL).
    pub fn target(&self) -> Result<RedisTarget, String> {
        let (host, port, username, password, database, ssl) = match &self.url {
            Some(url) => {
                let url = UrlParts::parse(url)?;
                (
                    url.host,
                    url.port,
                    url.username,
                    url.password,
                    url.database,
                    url.ssl,
                )
            }
            None => (
                self.host.clone().ok_or("no redis host")?,
                self.port,
                self.username.clone(),
                self.password.clone(),
                self.database,
                self.ssl.unwrap_or(false),
            ),
        };
        Ok(RedisTarget {
            host,
            port: port.unwrap_or(DEFAULT_PORT),
            username,
            password,
            database: database.unwrap_or(0),
            ssl,
            ssl_verify: self.ssl_verify,
            server_name: self.server_name.clone(),
            timeout_ms: self.timeout,
        })
    }

    /// `field` is `plugins[i].config.redis`.
    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            let spelled_out = [
                ("host", self.host.is_some()),
                ("port", self.port.is_some()),
                ("username", self.username.is_some()),
                ("password", self.password.is_some()),
                ("database", self.database.is_some()),
                ("ssl", self.ssl.is_some()),
            ];
            if let Some((name, _)) = spelled_out.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    format!("{field}.{name}"),
                    "cannot be combined with redis.url, which already gives it: keep one form",
                ));
            }
            UrlParts::parse(url).map_err(|err| invalid(format!("{field}.url"), err))?;
        }
        if let Some(host) = &self.host
            && !is_host(host)
        {
            return Err(invalid(
                format!("{field}.host"),
                format!(
                    "{host:?} is not a host name or IP address (a port goes in redis.port, a URL \
                     in redis.url)"
                ),
            ));
        }
        if self.port == Some(0) {
            return Err(invalid(format!("{field}.port"), "must be from 1 to 65535"));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout) {
            return Err(invalid(
                format!("{field}.timeout"),
                format!("must be from 1 to {MAX_TIMEOUT_MS} (milliseconds)"),
            ));
        }
        if let Some(name) = &self.server_name
            && !is_host(name)
        {
            return Err(invalid(
                format!("{field}.server_name"),
                format!("{name:?} is not a host name"),
            ));
        }
        Ok(())
    }
}

/// A host name or an IP address (IPv6 without brackets), never `host:port`.
fn is_host(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)))
}

/// `[plugins.config.redis]` (or the flat `redis_*` fields) as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table of redis settings")]
pub(super) struct RawRedis {
    pub(super) url: Option<String>,
    pub(super) host: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) timeout: Option<u32>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) database: Option<u32>,
    pub(super) ssl: Option<bool>,
    pub(super) ssl_verify: Option<bool>,
    pub(super) server_name: Option<String>,
}

impl RawRedis {
    /// Kong 3.9 still loads the deprecated flat `redis_host` … `redis_server_name`; a field
    /// given both ways is refused rather than one copy silently winning.
    /// `path` is `plugins[i].config`.
    pub(super) fn merge(
        nested: Option<RawRedis>,
        flat: RawRedis,
        path: &str,
    ) -> Result<Option<Redis>, String> {
        let flat_given = flat.host.is_some()
            || flat.port.is_some()
            || flat.timeout.is_some()
            || flat.username.is_some()
            || flat.password.is_some()
            || flat.database.is_some()
            || flat.ssl.is_some()
            || flat.ssl_verify.is_some()
            || flat.server_name.is_some();
        if nested.is_none() && !flat_given {
            return Ok(None);
        }
        let nested = nested.unwrap_or_default();
        Ok(Some(Redis {
            url: nested.url,
            host: pick(path, nested.host, flat.host, "host")?,
            port: pick(path, nested.port, flat.port, "port")?,
            timeout: pick(path, nested.timeout, flat.timeout, "timeout")?
                .unwrap_or(DEFAULT_TIMEOUT_MS),
            username: pick(path, nested.username, flat.username, "username")?,
            password: pick(path, nested.password, flat.password, "password")?,
            database: pick(path, nested.database, flat.database, "database")?,
            ssl: pick(path, nested.ssl, flat.ssl, "ssl")?,
            ssl_verify: pick(path, nested.ssl_verify, flat.ssl_verify, "ssl_verify")?
                .unwrap_or(false),
            server_name: pick(path, nested.server_name, flat.server_name, "server_name")?,
        }))
    }
}

fn pick<T>(
    path: &str,
    nested: Option<T>,
    flat: Option<T>,
    name: &str,
) -> Result<Option<T>, String> {
    match (nested, flat) {
        (Some(_), Some(_)) => Err(format!(
            "{path}.redis_{name}: also given as redis.{name}: write it once (redis_{name} is \
             Kong's deprecated spelling of redis.{name})"
        )),
        (nested, flat) => Ok(nested.or(flat)),
    }
}

/// A parsed `redis://` / `rediss://` URL. Errors never repeat the URL: it may hold a password.
struct UrlParts {
    ssl: bool,
    host: String,
    port: Option<u16>,
    username: Option<String>,
    password: Option<String>,
    database: Option<u32>,
}

impl UrlParts {
    fn parse(url: &str) -> Result<Self, String> {
        let (ssl, rest) = if let Some(rest) = url.strip_prefix("redis://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else {
            return Err("must start with redis:// (or rediss:// for TLS)".into());
        };
        if rest.contains(['?', '#']) {
            return Err("takes no query or fragment: use the other redis fields".into());
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(percent_decode(password)?)),
                    None => (userinfo, None),
                };
                let user = Some(percent_decode(user)?).filter(|user| !user.is_empty());
                (user, password)
            }
        };
        let (host, port) = split_host_port(host_port)?;
        let database = match path {
            "" | "/" => None,
            db => Some(db[1..].parse::<u32>().map_err(|_| {
                "the path must be a database number, e.g. redis://host:6379/0".to_string()
            })?),
        };
        Ok(Self {
            ssl,
            host,
            port,
            username,
            password,
            database,
        })
    }
}

fn split_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("an unclosed [ in the host")?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or("garbage after the ]")?),
        };
        (host, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || !is_host(host) {
        return Err("needs a host, e.g. redis://127.0.0.1:6379".into());
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => return Err("the port must be from 1 to 65535".into()),
        },
    };
    Ok((host.to_string(), port))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("a bad %-escape in the user or password")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user or password is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis() -> Redis {
        Redis {
            url: None,
            host: None,
            port: None,
            timeout: DEFAULT_TIMEOUT_MS,
            username: None,
            password: None,
            database: None,
            ssl: None,
            ssl_verify: false,
            server_name: None,
        }
    }

    fn url(url: &str) -> Result<RedisTarget, String> {
        let redis = Redis {
            url: Some(url.into()),
            ..redis()
        };
        redis
            .validate("redis")
            .map_err(|err| err.to_string())
            .and_then(|()| redis.target())
    }

    #[test]
    fn urls_give_host_port_credentials_database_and_tls() {
        let target = url("redis://r.internal").unwrap();
        assert_eq!(
            (
                target.host.as_str(),
                target.port,
                target.database,
                target.ssl
            ),
            ("r.internal", 6379, 0, false)
        );
        assert_eq!((target.username, target.password), (None, None));
        let target = url("rediss://app:p%40ss:w@10.0.0.5:6380/3").unwrap();
        assert_eq!(
            (
                target.host.as_str(),
                target.port,
                target.database,
                target.ssl
            ),
            ("10.0.0.5", 6380, 3, true)
        );
        assert_eq!(target.username.as_deref(), Some("app"));
        assert_eq!(target.password.as_deref(), Some("p@ss:w"));
        let target = url("redis://:secret@[::1]:7000/").unwrap();
        assert_eq!((target.host.as_str(), target.port), ("::1", 7000));
        assert_eq!(
            (target.username, target.password.as_deref()),
            (None, Some("secret"))
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for (bad, why) in [
            ("http://:pw@r", "must start with redis://"),
            ("redis://:pw@r?db=1", "no query"),
            ("redis://:pw@r:0", "port"),
            ("redis://:pw@r:99999", "port"),
            ("redis://:pw@r/zero", "database number"),
            ("redis://:pw@", "needs a host"),
            ("redis://:p%zw@r", "%-escape"),
        ] {
            let err = url(bad).unwrap_err();
            assert!(
                err.starts_with("redis.url: ") && err.contains(why),
                "{bad}: {err}"
            );
            assert!(!err.contains("pw") && !err.contains("p%z"), "{bad}: {err}");
        }
    }

    #[test]
    fn url_excludes_the_fields_it_spells_out() {
        let with = |redis: Redis| redis.validate("redis").unwrap_err().to_string();
        let base = || Redis {
            url: Some("redis://r".into()),
            ..redis()
        };
        assert_eq!(
            with(Redis {
                host: Some("r".into()),
                ..base()
            }),
            "redis.host: cannot be combined with redis.url, which already gives it: keep one form"
        );
        assert!(
            with(Redis {
                ssl: Some(false),
                ..base()
            })
            .starts_with("redis.ssl: ")
        );
        assert!(
            with(Redis {
                database: Some(0),
                ..base()
            })
            .starts_with("redis.database: ")
        );
        let combined = Redis {
            timeout: 10,
            ssl_verify: true,
            server_name: Some("r.example".into()),
            ..base()
        };
        assert!(
            combined.validate("redis").is_ok(),
            "no place for these in a URL"
        );
    }

    #[test]
    fn fields_are_checked() {
        let err = |redis: Redis| redis.validate("redis").unwrap_err().to_string();
        let host = |host: &str| Redis {
            host: Some(host.into()),
            ..redis()
        };
        assert!(host("10.0.0.1").validate("redis").is_ok());
        assert!(host("::1").validate("redis").is_ok());
        assert!(err(host("redis://r")).contains("a URL in redis.url"));
        assert!(err(host("r:6379")).contains("a port goes in redis.port"));
        assert_eq!(
            err(Redis {
                port: Some(0),
                ..host("r")
            }),
            "redis.port: must be from 1 to 65535"
        );
        assert!(
            err(Redis {
                server_name: Some(String::new()),
                ..host("r")
            })
            .starts_with("redis.server_name")
        );
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        let redis = Redis {
            url: Some("redis://:hunter2@r".into()),
            ..redis()
        };
        let shown = format!("{redis:?} {:?}", redis.target().unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!(
            "{:?}",
            Redis {
                host: Some("r".into()),
                password: Some("hunter2".into()),
                ..redis
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
