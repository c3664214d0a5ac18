//! Kong 3.9's `rate-limiting` plugin (`kong/plugins/rate-limiting/handler.lua`), run after key
//! auth: the instance that applies (Kong's precedence), whose requests share a counter
//! (`limit_by`, falling back to the client IP), one `counters.hit` for every window, and
//! Kong's headers and refusal. The host keeps the numbers; this module holds the rule.

use crate::auth::Identity;
use crate::bindings::keygate::gateway::counters::{
    self, CounterError, Period as WitPeriod, Window,
};
use crate::config::Policy;
use crate::errors::GatewayError;
use crate::request::RequestInfo;
use crate::router::{Match, normalize_path};
use keygate_policy::errors::INTERNAL;
use keygate_policy::net::is_trusted;
use keygate_policy::plugins::{
    ConsumerIdentity, LimitBy, Period, PluginKind, Policy as CounterPolicy, RateLimiting,
};

/// What rate limiting made of a request, for the `rate-limit` label (none: no instance applied).
pub fn outcome(limited: &Limited) -> Option<&'static str> {
    match limited {
        Limited::NotApplied => None,
        Limited::Pass(_) => Some("allowed"),
        Limited::Failed(_) => Some("counters-unavailable"),
        Limited::Refuse(_) => Some("limited"),
        Limited::Unavailable => Some("counters-unavailable"),
    }
}

/// What rate limiting makes of a request.
pub enum Limited {
    /// No rate-limiting instance applies.
    NotApplied,
    /// The counters failed and the instance is `fault_tolerant`: forward without headers.
    Unavailable,
    /// The counters failed and the instance is not `fault_tolerant`: answer this 500.
    Failed(GatewayError),
    /// Forward it, adding these response headers (lower-case names; none when no instance
    /// applies, `hide_client_headers` is set, or the counters failed and `fault_tolerant`).
    Pass(Vec<(String, String)>),
    /// Answer this instead (the limit's refusal, or a 500 when the counters failed).
    Refuse(GatewayError),
}

/// Rate-limit `info`, which matched `matched` and authenticated as `identity` (if anyone).
pub fn check(
    policy: &'static Policy,
    info: &RequestInfo,
    matched: &Match,
    identity: Option<&Identity>,
) -> Limited {
    let plugins = &policy.config.plugins;
    if plugins.is_empty() {
        return Limited::NotApplied;
    }
    let consumer = identity.map(|identity| ConsumerIdentity {
        id: identity.consumer.id.as_deref(),
        username: identity.consumer.username.as_deref(),
    });
    let scope = plugins.scope(
        matched.route.name.as_deref(),
        Some(&matched.service.name),
        consumer,
    );
    let Some(applicable) = plugins.applicable(PluginKind::RateLimiting, &scope) else {
        return Limited::NotApplied;
    };
    let plugin = applicable.plugin;
    let Some(config) = plugin.rate_limiting() else {
        return Limited::NotApplied;
    };
    let namespace = plugin.counter_namespace();
    let identifier = identifier(policy, config, info, matched, identity);
    let windows: Vec<Window> = config
        .limits()
        .map(|(period, limit)| Window {
            period: wit_period(period),
            limit,
        })
        .collect();
    let count_refused = config.policy == CounterPolicy::Redis;
    match counters::hit(&namespace, &identifier, &windows, count_refused) {
        Ok(usage) => decide(config, &usage.before, usage.now),
        Err(CounterError::Unavailable(reason)) => {
            eprintln!("rate-limiting: the counters are unavailable: {reason}");
            if config.fault_tolerant {
                Limited::Unavailable
            } else {
                // Kong raises a Lua error: its error handler answers.
                Limited::Failed(GatewayError::from_error_handler(500, INTERNAL))
            }
        }
    }
}

/// Kong's headers and verdict from each window's usage before this request (`before`, in the
/// order of `config.limits()`) at `now` (seconds since the epoch).
pub fn decide(config: &'static RateLimiting, before: &[u64], now: u64) -> Limited {
    let limits: Vec<(Period, f64, f64)> = config
        .limits()
        .zip(before)
        .map(|((period, limit), &usage)| (period, limit, limit - usage as f64))
        .collect();
    // Kong's `stop`: a window with nothing left. Which one, when several, changes no value.
    let stop = limits
        .iter()
        .rev()
        .find(|(_, _, remaining)| *remaining <= 0.0)
        .map(|(period, _, _)| *period);
    let mut headers = Vec::new();
    let mut reset = None;
    if !config.hide_client_headers {
        // The window with the least left (a tie goes to the longer one) speaks for all.
        let mut chosen: Option<(f64, f64, Period)> = None;
        for &(period, limit, remaining) in &limits {
            let remaining = if stop.is_none() || stop == Some(period) {
                remaining - 1.0
            } else {
                remaining
            }
            .max(0.0);
            let better = match chosen {
                None => true,
                Some((_, least, longest)) => {
                    remaining < least || (remaining == least && period > longest)
                }
            };
            if better {
                chosen = Some((limit, remaining, period));
            }
            let suffix = period.header_suffix().to_ascii_lowercase();
            headers.push((format!("x-ratelimit-limit-{suffix}"), lua_number(limit)));
            headers.push((
                format!("x-ratelimit-remaining-{suffix}"),
                lua_number(remaining),
            ));
        }
        if let Some((limit, remaining, period)) = chosen {
            let seconds = period.reset(now);
            headers.push(("ratelimit-limit".into(), lua_number(limit)));
            headers.push(("ratelimit-remaining".into(), lua_number(remaining)));
            headers.push(("ratelimit-reset".into(), seconds.to_string()));
            reset = Some(seconds);
        }
    }
    if stop.is_none() {
        return Limited::Pass(headers);
    }
    let mut error = GatewayError::new(config.error_code, &config.error_message);
    // With hidden headers Kong's `Retry-After` is nil, so it is not sent either.
    if let Some(reset) = reset {
        headers.push(("retry-after".into(), reset.to_string()));
    }
    error.headers = headers;
    Limited::Refuse(error)
}

/// Whose requests share a counter: Kong's identifier for `limit_by`, else the client IP.
fn identifier(
    policy: &Policy,
    config: &RateLimiting,
    info: &RequestInfo,
    matched: &Match,
    identity: Option<&Identity>,
) -> String {
    let consumer = identity.map(|identity| &identity.consumer);
    let found = match config.limit_by {
        // Kong's consumers always have an id; keygate's (the auth API's, static ones) may
        // not, and then the username stands in before the credential.
        LimitBy::Consumer => consumer.and_then(|consumer| {
            consumer
                .id
                .clone()
                .or_else(|| consumer.username.clone())
                .or_else(|| consumer.credential_id.clone())
        }),
        LimitBy::Credential => consumer.and_then(|consumer| consumer.credential_id.clone()),
        LimitBy::Ip => None,
        LimitBy::Service => Some(matched.service.name.clone()),
        LimitBy::Header => config.header_name.as_deref().and_then(|name| {
            info.headers
                .iter()
                .find(|(header, _)| header.eq_ignore_ascii_case(name))
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        }),
        LimitBy::Path => {
            let path = normalize_path(&info.path);
            (config.path.as_deref() == Some(&*path)).then(|| path.into_owned())
        }
    };
    found.unwrap_or_else(|| client_ip(policy, info))
}

/// Kong's `get_forwarded_ip`: the peer's address, or the `X-Real-IP` it sends when it is in
/// `proxy.trusted_ips` (nginx's realip, as the forward plan's `X-Real-IP`). A client the host
/// tells nothing about (wasmtime serve) shares one identity with every other such client.
pub fn client_ip(policy: &Policy, info: &RequestInfo) -> String {
    let Some(peer) = info.client_ip.as_deref() else {
        return String::new();
    };
    if is_trusted(&policy.config.trusted_ips, peer)
        && let Some((_, value)) = info.headers.iter().find(|(name, _)| name == "x-real-ip")
        && let Ok(value) = std::str::from_utf8(value)
        && let Ok(ip) = value.trim().parse::<std::net::IpAddr>()
    {
        return ip.to_string();
    }
    peer.to_string()
}

fn wit_period(period: Period) -> WitPeriod {
    match period {
        Period::Second => WitPeriod::Second,
        Period::Minute => WitPeriod::Minute,
        Period::Hour => WitPeriod::Hour,
        Period::Day => WitPeriod::Day,
        Period::Month => WitPeriod::Month,
        Period::Year => WitPeriod::Year,
    }
}

/// A number as Kong's LuaJIT `tostring` prints it (`%.14g`): `5`, `2.5`, `1e+14`.
pub fn lua_number(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    // Whole numbers below 10^14 (every usual limit and remainder) print as integers under
    // `%.14g`: skip the exact scientific formatting, which costs thousands of instructions.
    if value.fract() == 0.0 && value.abs() < 1e14 {
        return (value as i64).to_string();
    }
    let scientific = format!("{value:.13e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always writes an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` writes an integer exponent");
    let trim = |digits: &str| {
        if digits.contains('.') {
            digits
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        } else {
            digits.to_string()
        }
    };
    if (-4..14).contains(&exponent) {
        let decimals = usize::try_from(13 - exponent).unwrap_or(0);
        trim(&format!("{value:.decimals$}"))
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(minute: f64, hour: f64) -> &'static RateLimiting {
        Box::leak(Box::new(RateLimiting {
            minute: Some(minute),
            hour: Some(hour),
            ..RateLimiting::default()
        }))
    }

    fn pass(limited: Limited) -> Vec<(String, String)> {
        match limited {
            Limited::Pass(headers) => headers,
            Limited::Refuse(error) => panic!("refused with {}", error.status),
            Limited::NotApplied | Limited::Unavailable | Limited::Failed(_) => {
                panic!("decide always decides")
            }
        }
    }

    fn pairs(headers: &[(&str, &str)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    /// 2024-02-29 13:45:30 UTC: 30 s left in the minute, 14 min 30 s in the hour.
    const NOW: u64 = 1_709_214_330;

    #[test]
    fn kongs_worked_example() {
        let config = config(2.0, 10.0);
        assert_eq!(
            pass(decide(config, &[0, 0], NOW)),
            pairs(&[
                ("x-ratelimit-limit-minute", "2"),
                ("x-ratelimit-remaining-minute", "1"),
                ("x-ratelimit-limit-hour", "10"),
                ("x-ratelimit-remaining-hour", "9"),
                ("ratelimit-limit", "2"),
                ("ratelimit-remaining", "1"),
                ("ratelimit-reset", "30"),
            ])
        );
        assert_eq!(
            pass(decide(config, &[1, 1], NOW))[5..],
            pairs(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "30")])[..]
        );
        let Limited::Refuse(error) = decide(config, &[2, 2], NOW) else {
            panic!("the third request passed");
        };
        assert_eq!(
            (error.status, error.message),
            (429, "API rate limit exceeded")
        );
        assert_eq!(
            error.headers,
            pairs(&[
                ("x-ratelimit-limit-minute", "2"),
                ("x-ratelimit-remaining-minute", "0"),
                ("x-ratelimit-limit-hour", "10"),
                ("x-ratelimit-remaining-hour", "8"),
                ("ratelimit-limit", "2"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "30"),
                ("retry-after", "30"),
            ])
        );
    }

    #[test]
    fn a_tie_goes_to_the_longer_window() {
        let headers = pass(decide(config(5.0, 5.0), &[0, 0], NOW));
        assert_eq!(
            headers[4..],
            pairs(&[
                ("ratelimit-limit", "5"),
                ("ratelimit-remaining", "4"),
                ("ratelimit-reset", "870"),
            ])[..]
        );
    }

    #[test]
    fn hidden_headers_hide_retry_after_too() {
        let config = Box::leak(Box::new(RateLimiting {
            hide_client_headers: true,
            ..config(1.0, 1.0).clone()
        }));
        assert!(pass(decide(config, &[0, 0], NOW)).is_empty());
        let Limited::Refuse(error) = decide(config, &[1, 1], NOW) else {
            panic!("passed");
        };
        assert!(error.headers.is_empty());
    }

    #[test]
    fn numbers_print_as_lua_does() {
        assert_eq!(lua_number(5.0), "5");
        assert_eq!(lua_number(2.5), "2.5");
        assert_eq!(lua_number(0.0), "0");
        assert_eq!(lua_number(1.5 - 1.0), "0.5");
        assert_eq!(lua_number(1e14), "1e+14");
        assert_eq!(lua_number(99_999_999_999_999.0), "99999999999999");
        assert_eq!(lua_number(0.1 + 0.2), "0.3");
        assert_eq!(lua_number(1e-5), "1e-05");
    }
}
