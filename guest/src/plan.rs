//! The forward plan of an admitted request: where it goes and which headers change, both ways,
//! as Kong-fronted origins and Kong's clients expect them. Expressed as edits of the client's
//! (and later the origin's) header list, so the fast path never lowers a whole list back to the
//! host; the portable path applies the very same edits (`forward.rs`).

use crate::auth::Identity;
use crate::bindings::exports::keygate::gateway::block_policy::{
    ForwardPlan, HeaderEdits, Labels, ResponseEdits, Timeouts,
};
use crate::config::Policy;
use crate::credentials;
use crate::field_block;
use crate::request::RequestInfo;
use crate::router::Match;
use keygate_policy::net::is_trusted;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `Host`,
/// which the plan always sets itself.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Set by the gateway: a client's copy is never forwarded (Kong overwrites or clears them
/// whenever key-auth runs; keygate does on every route), except that a client in
/// `proxy.trusted_ips` may tell the origin these itself.
const FORWARDED: &[&str] = &[
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// Set by the gateway only, from the consumer a key belongs to.
const CONSUMER: &[&str] = &[
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-credential-identifier",
    "x-anonymous-consumer",
];

/// `matched` is taken whole: its upstream path becomes the plan's, without a copy. `hidden`:
/// with `hide_credentials`, the key name whose header and query argument the origin must not
/// see. `new_length`: the body's length when the gateway changed or measured it.
/// `limit_headers`: rate limiting's headers for the client, which replace any the origin sent.
#[allow(clippy::too_many_arguments)]
pub fn forward_plan(
    policy: &Policy,
    info: &RequestInfo,
    matched: Match,
    identity: Option<&Identity>,
    hidden: Option<&str>,
    new_length: Option<usize>,
    limit_headers: Vec<(String, String)>,
    labels: Labels,
) -> ForwardPlan {
    let service = matched.service;
    let names = policy.config.compat.headers.names();
    let millis = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ForwardPlan {
        service: service.name.clone(),
        scheme: service.url.scheme().to_string(),
        authority: service.url.authority.clone(),
        request_headers: request_edits(policy, info, &matched, identity, hidden, new_length),
        path_with_query: path_with_query(matched.upstream_path, info, hidden),
        response: ResponseEdits {
            headers: HeaderEdits {
                // The origin's own copies of the gateway's headers are replaced.
                remove: [
                    names.request_id,
                    names.upstream_latency,
                    names.proxy_latency,
                ]
                .into_iter()
                .map(str::to_string)
                .chain(limit_headers.iter().map(|(name, _)| name.clone()))
                .collect(),
                append: {
                    // Room for the request id and the `keygate-key` annotation (`decide`).
                    let mut append = Vec::with_capacity(128);
                    field_block::push(&mut append, names.request_id, info.id.as_bytes());
                    for (name, value) in &limit_headers {
                        field_block::push(&mut append, name, value.as_bytes());
                    }
                    append
                },
            },
            via: Some(names.via.to_string()),
            server_if_absent: Some(names.server.to_string()),
            upstream_latency_header: Some(names.upstream_latency.to_string()),
            proxy_latency_header: Some(names.proxy_latency.to_string()),
        },
        timeouts: Timeouts {
            connect_ms: millis(service.connect_timeout.get()),
            first_byte_ms: millis(service.read_timeout.get()),
            between_bytes_ms: millis(service.read_timeout.get()),
        },
        max_request_body: matched
            .route
            .max_body_size
            .map(keygate_policy::ByteSize::bytes),
        request_id: info.id.clone(),
        labels,
    }
}

/// Header names listed in `Connection`, which are hop-by-hop too.
pub fn connection_tokens(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == "connection")
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The client's headers as the origin gets them: which names go (every value of each) and
/// what is added after them.
fn request_edits(
    policy: &Policy,
    info: &RequestInfo,
    matched: &Match,
    identity: Option<&Identity>,
    hidden: Option<&str>,
    new_length: Option<usize>,
) -> HeaderEdits {
    let names = policy.config.compat.headers.names();
    let mut append = Vec::with_capacity(512);
    let tokens = connection_tokens(&info.headers);
    let client_addr_header = policy.config.client_addr_header.as_deref();
    // Spin describes the request to the component in `spin-*` headers; they are not the
    // client's and must not reach the origin.
    let on_spin = client_addr_header.is_some_and(|h| h.starts_with("spin-"));
    let hidden_headers = hidden.map(credentials::header_names);
    let trusted = info
        .client_ip
        .as_deref()
        .is_some_and(|ip| is_trusted(&policy.config.trusted_ips, ip));
    // Room for `host`, which every HTTP/1.1 request has, and a few more without regrowing.
    let mut remove: Vec<String> = Vec::with_capacity(4);
    let mut forwarded_for: Vec<String> = Vec::new();
    let mut via: Vec<String> = Vec::new();
    let mut claimed: Vec<(&str, String)> = Vec::new();
    for (name, value) in &info.headers {
        let name = name.as_str();
        let keep = match name {
            "x-forwarded-for" => {
                forwarded_for.push(String::from_utf8_lossy(value).into_owned());
                false
            }
            "via" => {
                via.push(String::from_utf8_lossy(value).into_owned());
                false
            }
            _ if trusted && FORWARDED.contains(&name) => {
                if !claimed.iter().any(|(n, _)| *n == name) {
                    claimed.push((name, String::from_utf8_lossy(value).into_owned()));
                }
                false
            }
            _ => {
                !(HOP_BY_HOP.contains(&name)
                    || FORWARDED.contains(&name)
                    || CONSUMER.contains(&name)
                    || name == names.request_id
                    || tokens.iter().any(|t| t == name)
                    || Some(name) == client_addr_header
                    || name == keygate_policy::internal_headers::LOCAL_PORT
                    || on_spin && name.starts_with("spin-")
                    || hidden_headers
                        .as_ref()
                        .is_some_and(|hidden| hidden.iter().any(|h| h == name))
                    || (new_length.is_some() && name == "content-length"))
            }
        };
        if !keep && !remove.iter().any(|r| r == name) {
            remove.push(name.to_string());
        }
    }
    let claim = |name: &str| {
        claimed
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    // Values are written into the block where they lie (the client's head, the config, the
    // consumer): no string is made for a header that only copies one.
    let mut set = |name: &str, value: &str| field_block::push(&mut append, name, value.as_bytes());
    // Host: the service's unless preserve_host.
    if matched.route.preserve_host {
        set("host", &info.authority);
    } else {
        set("host", matched.host_header);
    }
    // nginx's realip module: a trusted peer's X-Real-IP becomes the client address.
    if let Some(peer) = &info.client_ip {
        let remote_addr = claim("x-real-ip")
            .map(str::trim)
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            .unwrap_or(peer);
        if forwarded_for.is_empty() {
            set("x-forwarded-for", remote_addr);
        } else {
            set(
                "x-forwarded-for",
                &format!("{}, {peer}", forwarded_for.join(", ")),
            );
        }
        set("x-real-ip", remote_addr);
    } else if !forwarded_for.is_empty() {
        set("x-forwarded-for", &forwarded_for.join(", "));
    }
    let port = info
        .listen_port(policy.config.listen_port)
        .unwrap_or_else(|| info.port());
    set(
        "x-forwarded-proto",
        claim("x-forwarded-proto").unwrap_or(info.scheme_name()),
    );
    match claim("x-forwarded-host") {
        Some(host) => set("x-forwarded-host", host),
        None => set("x-forwarded-host", &info.host),
    }
    match claim("x-forwarded-port") {
        Some(claimed) => set("x-forwarded-port", claimed),
        None => set("x-forwarded-port", itoa::Buffer::new().format(port)),
    }
    set(
        "x-forwarded-path",
        claim("x-forwarded-path").unwrap_or(&info.path),
    );
    let prefix = claim("x-forwarded-prefix").or_else(|| {
        (!matched.stripped_prefix.is_empty() && matched.stripped_prefix != "/")
            .then_some(matched.stripped_prefix.as_str())
    });
    if let Some(prefix) = prefix {
        set("x-forwarded-prefix", prefix);
    }
    if via.is_empty() {
        set("via", names.via);
    } else {
        via.push(names.via.to_string());
        set("via", &via.join(", "));
    }
    set(names.request_id, &info.id);
    if let Some(length) = new_length {
        set("content-length", itoa::Buffer::new().format(length));
    }
    // Kong's `set_consumer`: every consumer header set, or absent when there is no value.
    if let Some(identity) = identity {
        let consumer = &identity.consumer;
        let mut optional = |name: &str, value: &Option<String>| {
            if let Some(value) = value {
                set(name, value);
            }
        };
        optional("x-consumer-id", &consumer.id);
        optional("x-consumer-custom-id", &consumer.custom_id);
        optional("x-consumer-username", &consumer.username);
        optional("x-credential-identifier", &consumer.credential_id);
        if identity.anonymous {
            set("x-anonymous-consumer", "true");
        }
    }
    HeaderEdits { remove, append }
}

/// The upstream path plus the client's query string, verbatim unless the key must be hidden.
fn path_with_query(upstream_path: String, info: &RequestInfo, hidden: Option<&str>) -> String {
    let mut out = upstream_path;
    if let Some(query) = &info.query {
        match hidden {
            Some(name) => {
                let kept = without_query_arg(query, name);
                // Kong keeps a `?` only while arguments remain (or the client ended with one).
                if !kept.is_empty() || query.is_empty() {
                    out.push('?');
                    out.push_str(&kept);
                }
            }
            None => {
                out.push('?');
                out.push_str(query);
            }
        }
    }
    out
}

fn without_query_arg(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let raw_name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            crate::percent::percent_decode(raw_name) != name
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Apply `edits` to a header list: what both the portable path here and the keygate host do.
pub fn apply_edits(headers: &mut Vec<(String, Vec<u8>)>, edits: &HeaderEdits) {
    headers.retain(|(name, _)| !edits.remove.iter().any(|r| r.eq_ignore_ascii_case(name)));
    headers.extend(field_block::to_pairs(&edits.append));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hiding_a_query_key_keeps_the_other_arguments() {
        assert_eq!(without_query_arg("a=1&apikey=k&b=2", "apikey"), "a=1&b=2");
        assert_eq!(without_query_arg("apikey=k", "apikey"), "");
        assert_eq!(without_query_arg("apikey&x=1", "apikey"), "x=1");
    }

    #[test]
    fn edits_remove_every_value_then_append_in_order() {
        let mut headers = vec![
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
            ("a".to_string(), b"3".to_vec()),
        ];
        apply_edits(
            &mut headers,
            &HeaderEdits {
                remove: vec!["a".into()],
                append: b"c: 4\r\na: 5\r\n".to_vec(),
            },
        );
        assert_eq!(
            headers,
            vec![
                ("b".to_string(), b"2".to_vec()),
                ("c".to_string(), b"4".to_vec()),
                ("a".to_string(), b"5".to_vec()),
            ]
        );
    }
}
