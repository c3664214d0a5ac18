//! Sending an admitted request to its origin and streaming the answer back, with the headers a
//! Kong-fronted origin expects.

use crate::auth::Identity;
use crate::config::Policy;
use crate::credentials::Location;
use crate::errors::GatewayError;
use crate::outbound::{self, BodyReader, CallError};
use crate::request::RequestInfo;
use crate::router::Match;
use keygate_policy::errors::{BAD_GATEWAY, TIMEOUT};
use keygate_policy::internal_headers;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
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

/// Set by the gateway only: a client's copy is never forwarded.
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

pub fn forward(
    policy: &Policy,
    info: &RequestInfo,
    incoming: IncomingRequest,
    out: ResponseOutparam,
    matched: &Match,
    identity: Option<&Identity>,
) {
    let service = matched.service;
    let hidden = if policy.config.key_auth.hide_credentials {
        identity.map(|id| &id.location)
    } else {
        None
    };
    let headers = upstream_headers(policy, info, matched, identity, hidden);
    // Hosts hide `transfer-encoding` from guests, so without a length the body's first bytes
    // tell whether there is one (GETs must not reach the origin with an empty chunked body).
    let content_length = info
        .headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_slice() != b"0");
    let mut source = None;
    let mut first_chunk = Vec::new();
    let has_body = match content_length {
        Some(has_body) => has_body,
        None => {
            source = incoming.consume().ok().and_then(BodyReader::open);
            if let Some(reader) = &source {
                first_chunk = outbound::read_some(&reader.stream);
            }
            !first_chunk.is_empty()
        }
    };

    let request = OutgoingRequest::new(headers);
    let _ = request.set_method(&info.method);
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

    let future = match outbound::start(request, options) {
        Ok(future) => future,
        Err(err) => {
            return upstream_failed(err, matched, out, info, policy.config.host_annotations);
        }
    };
    if let Some(outgoing_body) = outgoing_body {
        let source = source.or_else(|| incoming.consume().ok().and_then(BodyReader::open));
        let sent = match (source, outgoing_body.write()) {
            (Some(source), Ok(sink)) => {
                let result = outbound::write_all(&sink, &first_chunk)
                    .and_then(|()| outbound::pump(&source.stream, &sink));
                drop(sink);
                result
            }
            _ => Err("request body unavailable".to_string()),
        };
        match sent {
            Ok(_) => {
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
        Err(err) => {
            return upstream_failed(err, matched, out, info, policy.config.host_annotations);
        }
    };
    drop(future);

    let response_headers = Fields::new();
    let connection_tokens = connection_tokens(&response.headers().entries());
    for (name, value) in response.headers().entries() {
        if HOP_BY_HOP.contains(&name.as_str()) || connection_tokens.contains(&name) {
            continue;
        }
        let _ = response_headers.append(&name, &value);
    }
    if policy.config.host_annotations {
        let _ = response_headers.append(internal_headers::ROUTE, route_label(matched).as_bytes());
    }
    let reply = OutgoingResponse::new(response_headers);
    let _ = reply.set_status_code(response.status());
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

fn upstream_failed(
    err: CallError,
    matched: &Match,
    out: ResponseOutparam,
    info: &RequestInfo,
    annotate: bool,
) {
    let service = matched.service;
    eprintln!("service {} unreachable: {err}", service.name);
    let error = if err.is_timeout() {
        GatewayError::new(504, TIMEOUT)
    } else {
        GatewayError::new(502, BAD_GATEWAY)
    };
    let error = if annotate {
        error.with_header(internal_headers::ROUTE, route_label(matched))
    } else {
        error
    };
    error.send(out, info);
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
    hidden: Option<&Location>,
) -> Fields {
    let headers = Fields::new();
    let set = |name: &str, value: &str| {
        let _ = headers.append(name, value.as_bytes());
    };
    let tokens = connection_tokens(&info.headers);
    let client_addr_header = policy.config.client_addr_header.as_deref();
    let hidden_header = match hidden {
        Some(Location::Header(name)) => Some(name.as_str()),
        _ => None,
    };
    let mut forwarded_for: Vec<String> = Vec::new();
    for (name, value) in &info.headers {
        let name = name.as_str();
        if name == "x-forwarded-for" {
            forwarded_for.push(String::from_utf8_lossy(value).into_owned());
            continue;
        }
        if HOP_BY_HOP.contains(&name)
            || GATEWAY_SET.contains(&name)
            || tokens.iter().any(|t| t == name)
            || Some(name) == client_addr_header
            || Some(name) == hidden_header
        {
            continue;
        }
        let _ = headers.append(name, value);
    }
    // Host: the service's unless preserve_host (hosts that forbid setting it use the authority).
    if matched.route.preserve_host {
        set("host", &info.authority);
    } else {
        set("host", &matched.service.url.host_header());
    }
    if let Some(ip) = &info.client_ip {
        forwarded_for.push(ip.clone());
        set("x-real-ip", ip);
    }
    if !forwarded_for.is_empty() {
        set("x-forwarded-for", &forwarded_for.join(", "));
    }
    set("x-forwarded-proto", info.scheme_name());
    set("x-forwarded-host", &info.host());
    let port = policy.config.listen_port.unwrap_or_else(|| info.port());
    set("x-forwarded-port", &port.to_string());
    set("x-forwarded-path", &info.path);
    if !matched.stripped_prefix.is_empty() && matched.stripped_prefix != "/" {
        set("x-forwarded-prefix", &matched.stripped_prefix);
    }
    if policy.config.host_annotations {
        set(internal_headers::CALL, &matched.service.name);
    }
    if let Some(identity) = identity {
        let consumer = &identity.consumer;
        let optional = |name: &str, value: &Option<String>| {
            if let Some(value) = value {
                set(name, value);
            }
        };
        optional("x-consumer-id", &consumer.id);
        optional("x-consumer-username", &consumer.username);
        optional("x-consumer-custom-id", &consumer.custom_id);
        optional("x-credential-identifier", &consumer.credential_id);
    }
    headers
}

/// The upstream path plus the client's query string, verbatim unless the key must be hidden.
fn path_with_query(matched: &Match, info: &RequestInfo, hidden: Option<&Location>) -> String {
    let mut out = matched.upstream_path.clone();
    if let Some(query) = &info.query {
        let query = match hidden {
            Some(Location::Query(name)) => without_query_arg(query, name),
            _ => query.clone(),
        };
        out.push('?');
        out.push_str(&query);
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
    }
}
