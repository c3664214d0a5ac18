//! Kong 3.9's `ip-restriction` plugin (PRIORITY 990: after key-auth, before rate limiting):
//! the client's address (the peer's, or the `X-Real-IP` of a peer in `proxy.trusted_ips`, as
//! nginx's realip gives Kong) is refused when it is in `deny`, then when `allow` is set and it
//! is not in it. The refusal is `kong.response.error`: Kong's error template with its
//! request id.

use crate::auth::Identity;
use crate::bindings::exports::keygate::gateway::block_policy::Reply;
use crate::config::Policy;
use crate::errors::GatewayError;
use crate::request::RequestInfo;
use crate::router::Match;
use keygate_policy::plugins::ip_restriction::DEFAULT_MESSAGE_PREFIX;
use keygate_policy::plugins::{ConsumerIdentity, IpRestriction, PluginKind, RequestScope};
use std::net::IpAddr;

/// Kong's answer when the connection has no IP address (a unix socket there; here, a host
/// that does not say who the client is, such as `wasmtime serve`).
pub const NO_CLIENT_IP: &str =
    "Cannot identify the client IP address, unix domain sockets are not supported.";

/// A refusal: its status and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

/// The plugins' scope of a request after authentication (ip-restriction and
/// request-termination may be scoped to a consumer).
pub fn request_scope(
    policy: &Policy,
    matched: &Match,
    identity: Option<&Identity>,
) -> RequestScope {
    let consumer = identity.map(|identity| ConsumerIdentity {
        id: identity.consumer.id.as_deref(),
        username: identity.consumer.username.as_deref(),
    });
    policy.config.plugins.scope(
        matched.route.name.as_deref(),
        Some(&matched.service.name),
        consumer,
    )
}

/// The refusal for `info`, if the instance that applies refuses it.
pub fn check(
    policy: &'static Policy,
    info: &RequestInfo,
    matched: &Match,
    identity: Option<&Identity>,
) -> Option<Reply> {
    let plugins = &policy.config.plugins;
    if plugins.is_empty() {
        return None;
    }
    let scope = request_scope(policy, matched, identity);
    let config = plugins
        .applicable(PluginKind::IpRestriction, &scope)?
        .plugin
        .ip_restriction()?;
    let client = crate::rate_limit::client_ip(policy, info);
    let refusal = verdict(config, &client)?;
    Some(GatewayError::new(refusal.status, "").reply_message(
        &refusal.message,
        info,
        &policy.config.compat,
    ))
}

/// Kong's handler on the client address `client` (text; empty when unknown).
pub fn verdict(config: &IpRestriction, client: &str) -> Option<Refusal> {
    let Ok(ip) = client.trim().parse::<IpAddr>() else {
        return Some(Refusal {
            status: 403,
            message: NO_CLIENT_IP.to_string(),
        });
    };
    let listed = |list: &Option<Vec<keygate_policy::net::IpNet>>| {
        list.as_ref()
            .filter(|list| !list.is_empty())
            .map(|list| list.iter().any(|net| net.contains(ip)))
    };
    let refused = listed(&config.deny) == Some(true) || listed(&config.allow) == Some(false);
    refused.then(|| Refusal {
        status: config.status(),
        message: config
            .message
            .clone()
            .unwrap_or_else(|| format!("{DEFAULT_MESSAGE_PREFIX}{client}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &[&str], deny: &[&str]) -> IpRestriction {
        let list = |items: &[&str]| {
            (!items.is_empty()).then(|| {
                items
                    .iter()
                    .map(|i| keygate_policy::net::IpNet::try_from(i.to_string()).unwrap())
                    .collect()
            })
        };
        IpRestriction {
            allow: list(allow),
            deny: list(deny),
            ..IpRestriction::default()
        }
    }

    fn refused(config: &IpRestriction, ip: &str) -> bool {
        verdict(config, ip).is_some()
    }

    #[test]
    fn deny_first_then_allow() {
        let config = config(&["10.0.0.0/8", "::1"], &["10.1.0.0/16"]);
        assert!(!refused(&config, "10.2.3.4"));
        assert!(refused(&config, "10.1.2.3"), "deny wins over allow");
        assert!(refused(&config, "192.168.1.1"), "not in allow");
        assert!(!refused(&config, "::1"));
        assert!(
            !refused(&config, "::ffff:10.9.9.9"),
            "a v4-mapped address is its v4"
        );
    }

    #[test]
    fn a_deny_list_alone_lets_the_rest_through() {
        let config = config(&[], &["127.0.0.1", "fd00::/8"]);
        assert!(refused(&config, "127.0.0.1"));
        assert!(refused(&config, "fd12::7"));
        assert!(!refused(&config, "127.0.0.2"));
        // Empty lists restrict nothing (Kong's `#conf.deny > 0`).
        let empty = IpRestriction {
            allow: Some(Vec::new()),
            ..IpRestriction::default()
        };
        assert!(!refused(&empty, "1.2.3.4"));
    }

    #[test]
    fn kongs_status_and_messages() {
        let mut config = config(&["10.0.0.0/8"], &[]);
        assert_eq!(
            verdict(&config, "192.0.2.7"),
            Some(Refusal {
                status: 403,
                message: "IP address not allowed: 192.0.2.7".into()
            })
        );
        config.status = Some(401);
        config.message = Some("Go away".into());
        assert_eq!(
            verdict(&config, "192.0.2.7"),
            Some(Refusal {
                status: 401,
                message: "Go away".into()
            })
        );
        // No address at all: Kong's fixed 403, whatever the config says.
        assert_eq!(
            verdict(&config, ""),
            Some(Refusal {
                status: 403,
                message: NO_CLIENT_IP.into()
            })
        );
    }
}
