//! Sending an admitted request to its origin and streaming the answer back, with the headers a
//! Kong-fronted origin expects and the ones Kong adds to its answers.

use crate::auth::Identity;
use crate::body::RequestBody;
use crate::config::Policy;
use crate::credentials;
use crate::errors::GatewayError;
use crate::fields::HeaderList;
use crate::outbound::{self, BodyReader, CallError};
use crate::request::{RequestInfo, millis_between};
use crate::router::Match;
use keygate_policy::errors::{BAD_GATEWAY, NAME_RESOLUTION, TIMEOUT, UNAVAILABLE};
use keygate_policy::internal_headers;
use keygate_policy::net::is_trusted;
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
/// gateway itself sets and so never passes through from the client.
const HOP_BY_HOP: &[&str] = &[
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

/// Set by the gateway only: a client's copy is never forwarded (Kong overwrites or clears
/// them whenever key-auth runs; keygate does on every route).
const GATEWAY_SET: &[&str] = &[
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-credential-identifier",
    "x-anonymous-consumer",
];

/// What a client in `proxy.trusted_ips` may tell the origin itself.
const TRUSTED_FORWARDED: &[&str] = &[
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// `hidden`: with `hide_credentials`, the key name whose header and query argument the origin
/// must not see (the body field is already gone from `body`).
pub fn forward(
    policy: &Policy,
    info: &RequestInfo,
    mut body: RequestBody,
    out: ResponseOutparam,
    matched: &Match,
    identity: Option<&Identity>,
    hidden: Option<&str>,
) {
    let service = matched.service;
    let compat = &policy.config.compat;
    let has_body = body.has_body();
    let headers = upstream_headers(policy, info, matched, identity, hidden, body.new_length());

    let request = OutgoingRequest::new(headers);
    // GET is an outgoing request's method unless set: one host call fewer for most requests.
    if !matches!(info.method, Method::Get) {
        let _ = request.set_method(&info.method);
    }
    let _ = request.set_scheme(Some(if service.url.https {
        &Scheme::Https
    } else {
        &Scheme::Http
    }));
    let _ = request.set_authority(Some(&service.url.authority));
    let _ = request.set_path_with_query(Some(&path_with_query(matched, info, hidden)));
    let outgoing_body = if has_body { request.body().ok() } else { None };
    let options = outbound::options(
        service.connect_timeout.get(),
        service.read_timeout.get(),
        service.read_timeout.get(),
    );

    let sent_at = monotonic_clock::now();
    let future = match outbound::start(request, options) {
        Ok(future) => future,
        Err(err) => return upstream_failed(err, matched, out, info, policy),
    };
    if let Some(outgoing_body) = outgoing_body {
        let (first, rest) = body.into_parts();
        let sent = match outgoing_body.write() {
            Ok(sink) => {
                let result = outbound::write_all(&sink, &first).and_then(|()| {
                    rest.as_ref()
                        .map_or(Ok(0), |rest: &BodyReader| {
                            outbound::pump(&rest.stream, &sink)
                        })
                        .map(drop)
                });
                drop(sink);
                result
            }
            Err(()) => Err("request body unavailable".to_string()),
        };
        match sent {
            Ok(()) => {
                let _ = OutgoingBody::finish(outgoing_body, None);
            }
            Err(reason) => {
                eprintln!("request body to service {} failed: {reason}", service.name);
                drop(outgoing_body);
            }
        }
    }
    let response = match outbound::wait(&future, None) {
        Ok(response) => response,
        Err(err) => return upstream_failed(err, matched, out, info, policy),
    };
    let received_at = monotonic_clock::now();
    drop(future);

    let names = compat.headers.names();
    let response_headers = HeaderList::default();
    let entries = response.headers().entries();
    let connection_tokens = connection_tokens(&entries);
    let mut via = Vec::new();
    let mut has_server = false;
    for (name, value) in entries {
        if HOP_BY_HOP.contains(&name.as_str())
            || connection_tokens.contains(&name)
            || [
                names.request_id,
                names.upstream_latency,
                names.proxy_latency,
            ]
            .contains(&name.as_str())
        {
            continue;
        }
        if name == "via" {
            via.push(String::from_utf8_lossy(&value).into_owned());
            continue;
        }
        has_server |= name == "server";
        response_headers.append(&name, &value);
    }
    let set = |name: &str, value: &str| {
        response_headers.append(name, value.as_bytes());
    };
    via.push(names.via.to_string());
    set("via", &via.join(", "));
    if !has_server {
        set("server", names.server);
    }
    set(
        names.upstream_latency,
        &millis_between(sent_at, received_at).to_string(),
    );
    set(
        names.proxy_latency,
        &millis_between(info.started, sent_at).to_string(),
    );
    set(names.request_id, &info.id);
    if policy.config.host_annotations {
        set(internal_headers::ROUTE, &route_label(matched));
    }
    let reply = OutgoingResponse::new(response_headers.into_fields());
    // 200 is a new response's status unless set.
    let status = response.status();
    if status != 200 {
        let _ = reply.set_status_code(status);
    }
    let Ok(reply_body) = reply.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(reply));
    let copied = match (
        response.consume().ok().and_then(BodyReader::open),
        reply_body.write(),
    ) {
        (Some(source), Ok(sink)) => {
            let result = outbound::pump(&source.stream, &sink);
            drop(sink);
            result
        }
        _ => Err("response body unavailable".to_string()),
    };
    match copied {
        Ok(_) => {
            let _ = OutgoingBody::finish(reply_body, None);
        }
        // Dropping the body unfinished tells the host the response is incomplete, so the
        // client sees a cut connection rather than a truncated body that looks whole.
        Err(reason) => eprintln!(
            "response body from service {} failed: {reason}",
            service.name
        ),
    }
}

/// The route's name, else its service's: how metrics and logs name a route.
pub fn route_label(matched: &Match) -> String {
    matched
        .route
        .name
        .clone()
        .unwrap_or_else(|| matched.service.name.clone())
}

/// What the client gets when the origin gave no response, in Kong's words: nginx's 502 and
/// 504 (through Kong's error handler), the balancer's 503 for a name that does not resolve.
pub fn upstream_error(err: &CallError) -> GatewayError {
    match err {
        CallError::Http(ErrorCode::DnsError(_) | ErrorCode::DnsTimeout) => {
            GatewayError::new(503, NAME_RESOLUTION)
        }
        CallError::Http(ErrorCode::ConnectionLimitReached) => {
            GatewayError::from_error_handler(503, UNAVAILABLE)
        }
        err if err.is_timeout() => GatewayError::from_error_handler(504, TIMEOUT),
        _ => GatewayError::from_error_handler(502, BAD_GATEWAY),
    }
}

fn upstream_failed(
    err: CallError,
    matched: &Match,
    out: ResponseOutparam,
    info: &RequestInfo,
    policy: &Policy,
) {
    eprintln!("service {} unreachable: {err}", matched.service.name);
    let error = upstream_error(&err);
    let error = if policy.config.host_annotations {
        error.with_header(internal_headers::ROUTE, route_label(matched))
    } else {
        error
    };
    error.send(out, info, &policy.config.compat);
}

/// Header names listed in `Connection`, which are hop-by-hop too.
fn connection_tokens(headers: &[(String, Vec<u8>)]) -> Vec<String> {
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

fn upstream_headers(
    policy: &Policy,
    info: &RequestInfo,
    matched: &Match,
    identity: Option<&Identity>,
    hidden: Option<&str>,
    new_length: Option<usize>,
) -> Fields {
    let names = policy.config.compat.headers.names();
    let headers = HeaderList::default();
    let set = |name: &str, value: &str| {
        headers.append(name, value.as_bytes());
    };
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
    let mut forwarded_for: Vec<String> = Vec::new();
    let mut via: Vec<String> = Vec::new();
    let mut claimed: Vec<(&str, String)> = Vec::new();
    for (name, value) in &info.headers {
        let name = name.as_str();
        match name {
            "x-forwarded-for" => {
                forwarded_for.push(String::from_utf8_lossy(value).into_owned());
                continue;
            }
            "via" => {
                via.push(String::from_utf8_lossy(value).into_owned());
                continue;
            }
            _ => {}
        }
        if trusted && TRUSTED_FORWARDED.contains(&name) {
            if !claimed.iter().any(|(n, _)| *n == name) {
                claimed.push((name, String::from_utf8_lossy(value).into_owned()));
            }
            continue;
        }
        if HOP_BY_HOP.contains(&name)
            || GATEWAY_SET.contains(&name)
            || name == names.request_id
            || tokens.iter().any(|t| t == name)
            || Some(name) == client_addr_header
            || on_spin && name.starts_with("spin-")
            || hidden_headers
                .as_ref()
                .is_some_and(|hidden| hidden.iter().any(|h| h == name))
            || (new_length.is_some() && name == "content-length")
        {
            continue;
        }
        headers.append(name, value);
    }
    let claim = |name: &str| {
        claimed
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    // Host: the service's unless preserve_host (hosts that forbid setting it use the authority).
    if matched.route.preserve_host {
        set("host", &info.authority);
    } else {
        set("host", &matched.service.url.host_header());
    }
    // nginx's realip module: a trusted peer's X-Real-IP becomes the client address.
    if let Some(peer) = &info.client_ip {
        let remote_addr = claim("x-real-ip")
            .filter(|ip| ip.trim().parse::<std::net::IpAddr>().is_ok())
            .map_or_else(|| peer.clone(), |ip| ip.trim().to_string());
        if forwarded_for.is_empty() {
            set("x-forwarded-for", &remote_addr);
        } else {
            set(
                "x-forwarded-for",
                &format!("{}, {peer}", forwarded_for.join(", ")),
            );
        }
        set("x-real-ip", &remote_addr);
    } else if !forwarded_for.is_empty() {
        set("x-forwarded-for", &forwarded_for.join(", "));
    }
    let port = policy.config.listen_port.unwrap_or_else(|| info.port());
    set(
        "x-forwarded-proto",
        &claim("x-forwarded-proto").unwrap_or_else(|| info.scheme_name().to_string()),
    );
    set(
        "x-forwarded-host",
        &claim("x-forwarded-host").unwrap_or_else(|| info.host()),
    );
    set(
        "x-forwarded-port",
        &claim("x-forwarded-port").unwrap_or_else(|| port.to_string()),
    );
    set(
        "x-forwarded-path",
        &claim("x-forwarded-path").unwrap_or_else(|| info.path.clone()),
    );
    let prefix = claim("x-forwarded-prefix").or_else(|| {
        (!matched.stripped_prefix.is_empty() && matched.stripped_prefix != "/")
            .then(|| matched.stripped_prefix.clone())
    });
    if let Some(prefix) = prefix {
        set("x-forwarded-prefix", &prefix);
    }
    via.push(names.via.to_string());
    set("via", &via.join(", "));
    set(names.request_id, &info.id);
    if let Some(length) = new_length {
        set("content-length", &length.to_string());
    }
    if policy.config.host_annotations {
        set(internal_headers::CALL, &matched.service.name);
    }
    // Kong's `set_consumer`: every consumer header set, or absent when there is no value.
    if let Some(identity) = identity {
        let consumer = &identity.consumer;
        let optional = |name: &str, value: &Option<String>| {
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
    headers.into_fields()
}

/// The upstream path plus the client's query string, verbatim unless the key must be hidden.
fn path_with_query(matched: &Match, info: &RequestInfo, hidden: Option<&str>) -> String {
    let mut out = matched.upstream_path.clone();
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
    fn upstream_failures_get_kongs_status_and_words() {
        let cases = [
            (
                CallError::Http(ErrorCode::ConnectionRefused),
                502,
                BAD_GATEWAY,
            ),
            (
                CallError::Http(ErrorCode::ConnectionTerminated),
                502,
                BAD_GATEWAY,
            ),
            (
                CallError::Http(ErrorCode::ConnectionReadTimeout),
                504,
                TIMEOUT,
            ),
            (CallError::Deadline, 504, TIMEOUT),
            (CallError::Http(ErrorCode::DnsTimeout), 503, NAME_RESOLUTION),
            (
                CallError::Http(ErrorCode::ConnectionLimitReached),
                503,
                UNAVAILABLE,
            ),
        ];
        for (err, status, message) in cases {
            let error = upstream_error(&err);
            assert_eq!((error.status, error.message), (status, message), "{err}");
        }
    }
}
