//! The policy, once for both entry points: from what the client sent to a decision (forward
//! with a plan, answer with a reply, or ask for the body). The fast path hands the decision to
//! the host; the portable path applies it itself through `wasi:http`.

use crate::auth::{self, AuthTrace, Identity};
use crate::bindings::exports::keygate::gateway::block_policy::{
    Decision, FailureContext, Labels, Reply, UpstreamFailure,
};
use crate::bindings::exports::keygate::gateway::reusable_policy::Reuse;
use crate::body::RequestBody;
use crate::config::Policy;
use crate::credentials::{self, Extracted};
use crate::errors::GatewayError;
use crate::field_block;
use crate::plan;
use crate::rate_limit::{self, Limited};
use crate::request::RequestInfo;
use crate::router::Match;
use crate::{cors, ip_restriction, request_termination};
use keygate_policy::Compat;
use keygate_policy::errors::{
    BAD_GATEWAY, NAME_RESOLUTION, NO_ROUTE, PAYLOAD_TOO_LARGE, TIMEOUT, UNAVAILABLE,
};
use wasip2::http::types::Method;

/// Decide `info`. `body` is the client's body where this entry point has it (the portable
/// path); without it, a policy that must read the body answers [`Decision::UseHandler`].
pub fn decide(
    policy: &'static Policy,
    info: &RequestInfo,
    body: Option<&mut RequestBody>,
) -> Decision {
    let mut key = None;
    let decision = decide_noting_key(policy, info, body, &mut key);
    match key {
        Some(key) if policy.config.host_annotations && policy.config.annotate_key => {
            annotate(decision, key)
        }
        _ => decision,
    }
}

/// The longest a host may answer identical requests with one decision. The host also ends
/// reuse when a key verdict it rests on stops being fresh; this bounds anything else.
const REUSE_FOR_MS: u32 = 60_000;

/// Whether a host may answer requests identical to this one with `decision`
/// (`reusable-policy`): a forward whose plan follows from the head, the configuration and
/// verdicts the key cache held fresh. Not when a rate limit counted the request (each request
/// must count), nor when the verdict came from the auth API or a stale entry (the call and its
/// fill belong to one request). The request id is the plan's only random part, and the host
/// replaces it in every reuse.
pub fn reuse_of(decision: &Decision) -> Option<Reuse> {
    let Decision::Forward(plan) = decision else {
        return None;
    };
    reusable(&plan.labels).then_some(Reuse {
        for_ms: REUSE_FOR_MS,
    })
}

fn reusable(labels: &Labels) -> bool {
    let verdict_from_cache_or_config = matches!(
        labels.key_lookup.as_deref(),
        None | Some("none" | "static" | "fresh")
    );
    verdict_from_cache_or_config && labels.auth_call_ms.is_none() && labels.rate_limit.is_none()
}

/// The keygate host's access log follows a key by its fingerprint prefix, which the WIT
/// `labels` have no field for: it travels in the answer's internal `keygate-key` header (the
/// host reads and strips it; an origin's copy is stripped before).
fn annotate(decision: Decision, key: String) -> Decision {
    let name = keygate_policy::internal_headers::KEY;
    match decision {
        Decision::Respond(mut reply) => {
            field_block::push(&mut reply.headers, name, key.as_bytes());
            Decision::Respond(reply)
        }
        Decision::Forward(mut plan) => {
            field_block::push(&mut plan.response.headers.append, name, key.as_bytes());
            Decision::Forward(plan)
        }
        Decision::UseHandler => Decision::UseHandler,
    }
}

fn decide_noting_key(
    policy: &'static Policy,
    info: &RequestInfo,
    mut body: Option<&mut RequestBody>,
    key: &mut Option<String>,
) -> Decision {
    let compat = &policy.config.compat;
    let listen_port = info.listen_port(policy.config.listen_port);
    let Some(matched) = policy
        .routes
        .find(&policy.config.services, info, listen_port)
    else {
        return Decision::Respond(GatewayError::new(404, NO_ROUTE).reply(info, compat));
    };
    // nginx checks `client_max_body_size` against the declared length right after choosing
    // the location, before any plugin runs: no key is looked for, nothing is forwarded, and
    // the body is never read.
    if declared_over_limit(info, &matched) {
        let reply = too_large(info, compat);
        return Decision::Respond(with_labels(reply, route_labels(&matched)));
    }
    // The route's key-auth instance (Kong's precedence: route, then service), else
    // `[key_auth]`.
    let key_auth = policy.key_auth_for(&matched);
    let preflight = matches!(info.method, Method::Options) && !key_auth.run_on_preflight;
    let mut labels = route_labels(&matched);
    // Kong's cors (priority 2000) runs before key-auth: it answers preflights itself, and its
    // headers go on every other answer of the route, the gateway's own included.
    let cors = match cors::access(policy, info, &matched) {
        cors::Access::Answer(reply) => return Decision::Respond(with_labels(*reply, labels)),
        cors::Access::Proceed(headers) => headers,
    };
    let mut hidden = None;
    let identity = if matched.route.auth && !preflight {
        // `hide_credentials` with `key_in_body` rewrites the body whichever source the key
        // came from: only the entry point that holds the body can do that.
        if key_auth.hide_credentials && key_auth.key_in_body && body.is_none() {
            return Decision::UseHandler;
        }
        let credential = match credentials::extract(key_auth, info, body.as_deref_mut()) {
            Extracted::Done(credential) => credential,
            Extracted::NeedsBody => return Decision::UseHandler,
        };
        if key_auth.hide_credentials {
            hidden = credential.name().map(str::to_string);
        }
        let mut trace = AuthTrace::default();
        let outcome = auth::authenticate(policy, key_auth, credential, &mut trace);
        labels.key_lookup = Some(trace.key_lookup.to_string());
        labels.auth_call_ms = trace.auth_call_ms;
        *key = trace.key_fingerprint;
        match outcome {
            Ok(identity) => Some(identity),
            // Kong's logical OR: a failed authentication proceeds as the anonymous
            // consumer. An auth API that cannot answer is not a failed authentication.
            Err(refusal) if refusal.status == 401 && key_auth.anonymous.is_some() => {
                policy.anonymous_consumer(key_auth).map(Identity::anonymous)
            }
            Err(refusal) => {
                let reply = cors.decorate(refusal.reply(info, compat));
                return Decision::Respond(with_labels(reply, labels));
            }
        }
    } else {
        None
    };
    if let Some(identity) = &identity {
        labels.consumer = Some(identity.consumer.clone());
    }
    // Kong's ip-restriction (990) runs after key-auth, before rate limiting.
    if let Some(reply) = ip_restriction::check(policy, info, &matched, identity.as_ref()) {
        return Decision::Respond(with_labels(cors.decorate(reply), labels));
    }
    // Kong's rate-limiting runs after key-auth: a request without a valid key never counts.
    let limited = rate_limit::check(policy, info, &matched, identity.as_ref());
    labels.rate_limit = rate_limit::outcome(&limited).map(str::to_string);
    let limit_headers = match limited {
        Limited::Pass(headers) => headers,
        Limited::NotApplied | Limited::Unavailable => Vec::new(),
        Limited::Refuse(error) | Limited::Failed(error) => {
            let reply = cors.decorate(error.reply(info, compat));
            return Decision::Respond(with_labels(reply, labels));
        }
    };
    // Kong's request-termination (2) runs last: a terminated request passed all the others,
    // and the limit headers of a request that passed go on whatever answers it.
    if let Some(reply) = request_termination::check(policy, info, &matched, identity.as_ref()) {
        let mut reply = cors.decorate(reply);
        for (name, value) in &limit_headers {
            field_block::push(&mut reply.headers, name, value.as_bytes());
        }
        return Decision::Respond(with_labels(reply, labels));
    }
    let mut new_length = None;
    if let Some(body) = body {
        if let Some(name) = &hidden
            && key_auth.key_in_body
        {
            body.remove(name);
        }
        // Settles whether a body without a declared length has any bytes.
        body.has_body();
        new_length = body.new_length();
    }
    let mut plan = plan::forward_plan(
        policy,
        info,
        matched,
        identity.as_ref(),
        hidden.as_deref(),
        new_length,
        limit_headers,
        labels,
    );
    cors.edit(&mut plan.response.headers);
    Decision::Forward(plan)
}

/// Whether the request declares a `Content-Length` over its route's `max_body_size`.
fn declared_over_limit(info: &RequestInfo, matched: &Match) -> bool {
    let Some(limit) = matched.route.max_body_size else {
        return false;
    };
    info.header("content-length")
        .and_then(|length| length.trim().parse::<u64>().ok())
        .is_some_and(|length| length > limit.bytes())
}

/// The 413 of a body over its route's `max_body_size`: nginx's, through Kong's error handler.
pub fn too_large(info: &RequestInfo, compat: &Compat) -> Reply {
    GatewayError::from_error_handler(413, PAYLOAD_TOO_LARGE).reply(info, compat)
}

/// What the client gets when the origin gave no response, in Kong's words: nginx's 502 and
/// 504 (through Kong's error handler), the balancer's 503 for a name that does not resolve.
pub fn upstream_error(failure: UpstreamFailure) -> GatewayError {
    match failure {
        UpstreamFailure::NameUnresolved => GatewayError::new(503, NAME_RESOLUTION),
        UpstreamFailure::LimitReached => GatewayError::from_error_handler(503, UNAVAILABLE),
        UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout => {
            GatewayError::from_error_handler(504, TIMEOUT)
        }
        UpstreamFailure::ConnectionRefused
        | UpstreamFailure::ConnectionReset
        | UpstreamFailure::ProtocolError => GatewayError::from_error_handler(502, BAD_GATEWAY),
    }
}

/// The reply to a forwarded request whose origin failed: the same words and negotiation on
/// both paths.
pub fn upstream_failed(compat: &Compat, context: FailureContext) -> Reply {
    let error = upstream_error(context.failure);
    let request = crate::errors::ErrorRequest {
        id: &context.request_id,
        accept: context.accept.as_deref(),
        content_type: context.content_type.as_deref(),
        is_head: context.method.eq_ignore_ascii_case("HEAD"),
        elapsed_ms: context.elapsed_ms,
    };
    with_labels(error.reply_to(&request, compat), context.labels)
}

fn with_labels(mut reply: Reply, labels: Labels) -> Reply {
    reply.labels = labels;
    reply
}

impl Labels {
    pub fn none() -> Self {
        Self {
            route: None,
            service: None,
            consumer: None,
            key_lookup: None,
            auth_call_ms: None,
            rate_limit: None,
        }
    }
}

fn route_labels(matched: &Match) -> Labels {
    Labels {
        route: Some(route_label(matched)),
        service: Some(matched.service.name.clone()),
        ..Labels::none()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_get_kongs_status_and_words() {
        let cases = [
            (UpstreamFailure::ConnectionRefused, 502, BAD_GATEWAY),
            (UpstreamFailure::ConnectionReset, 502, BAD_GATEWAY),
            (UpstreamFailure::ProtocolError, 502, BAD_GATEWAY),
            (UpstreamFailure::ResponseTimeout, 504, TIMEOUT),
            (UpstreamFailure::ConnectTimeout, 504, TIMEOUT),
            (UpstreamFailure::NameUnresolved, 503, NAME_RESOLUTION),
            (UpstreamFailure::LimitReached, 503, UNAVAILABLE),
        ];
        for (failure, status, message) in cases {
            let error = upstream_error(failure);
            assert_eq!(
                (error.status, error.message),
                (status, message),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn only_decisions_from_cached_or_configured_verdicts_without_limits_are_reusable() {
        let labels =
            |key_lookup: Option<&str>, auth_call_ms: Option<u64>, rate_limit: Option<&str>| {
                Labels {
                    key_lookup: key_lookup.map(str::to_string),
                    auth_call_ms,
                    rate_limit: rate_limit.map(str::to_string),
                    ..Labels::none()
                }
            };
        for key_lookup in [None, Some("none"), Some("static"), Some("fresh")] {
            assert!(reusable(&labels(key_lookup, None, None)), "{key_lookup:?}");
        }
        // The auth API answered (or will be asked again): that fill is this request's.
        for key_lookup in ["miss", "stale"] {
            assert!(
                !reusable(&labels(Some(key_lookup), None, None)),
                "{key_lookup}"
            );
        }
        assert!(!reusable(&labels(Some("fresh"), Some(3), None)));
        // Every request counts against its limit, allowed or not.
        for outcome in ["allowed", "limited", "counters-unavailable"] {
            assert!(
                !reusable(&labels(Some("fresh"), None, Some(outcome))),
                "{outcome}"
            );
        }
        assert!(reuse_of(&Decision::UseHandler).is_none());
    }
}
