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
