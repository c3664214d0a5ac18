//! The portable path's forwarding: a decided request sent to its origin through `wasi:http`
//! and the answer streamed back, with the plan's header edits applied both ways.

use crate::bindings::exports::keygate::gateway::block_policy::{
    FailureContext, ForwardPlan, UpstreamFailure,
};
use crate::body::RequestBody;
use crate::config::Policy;
use crate::decide;
use crate::errors::send_reply;
use crate::fields::HeaderList;
use crate::outbound::{self, BodyReader, CallError};
use crate::plan;
use crate::request::{RequestInfo, millis_between};
use keygate_policy::internal_headers;
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{
    ErrorCode, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

/// Send `plan` through `wasi:http` (the portable path): the client's headers with the plan's
/// edits, its body (the bytes the policy already read first, then the rest spliced), and the
/// origin's answer back with the plan's response edits, bodies streamed both ways.
pub fn forward(
    policy: &Policy,
    info: &RequestInfo,
    mut body: RequestBody,
    out: ResponseOutparam,
    plan: ForwardPlan,
) {
    let annotate = policy.config.host_annotations;
    let has_body = body.has_body();
    let mut request_headers = info.headers.clone();
    plan::apply_edits(&mut request_headers, &plan.request_headers);
    let headers = HeaderList::default();
    for (name, value) in &request_headers {
        headers.append(name, value);
    }
    if annotate {
        headers.append(internal_headers::CALL, plan.service.as_bytes());
    }

    let request = OutgoingRequest::new(headers.into_fields());
    // GET is an outgoing request's method unless set: one host call fewer for most requests.
    if !matches!(info.method, Method::Get) {
        let _ = request.set_method(&info.method);
    }
    let _ = request.set_scheme(Some(if plan.scheme == "https" {
        &Scheme::Https
    } else {
        &Scheme::Http
    }));
    let _ = request.set_authority(Some(&plan.authority));
    let _ = request.set_path_with_query(Some(&plan.path_with_query));
    let outgoing_body = if has_body { request.body().ok() } else { None };
    let nanos = |ms: u64| std::time::Duration::from_millis(ms);
    let options = outbound::options(
        nanos(plan.timeouts.connect_ms),
        nanos(plan.timeouts.first_byte_ms),
        nanos(plan.timeouts.between_bytes_ms),
    );

    // The route's `max_body_size`: what the policy already read of the body counts first (a
    // body read whole and over the limit never leaves), the rest as it streams.
    let parts = has_body.then(|| body.into_parts());
    let limit = plan.max_request_body;
    if let (Some(limit), Some((first, _))) = (limit, &parts)
        && first.len() as u64 > limit
    {
        return too_large(policy, info, out, plan);
    }
    let sent_at = monotonic_clock::now();
    let future = match outbound::start(request, options) {
        Ok(future) => future,
        Err(err) => return upstream_failed(policy, info, out, plan, &err),
    };
    if let (Some(outgoing_body), Some((first, rest))) = (outgoing_body, parts) {
        let sent = match outgoing_body.write() {
            Ok(sink) => {
                let result = outbound::write_all(&sink, &first).and_then(|()| {
                    match (rest.as_ref(), limit) {
                        (None, _) => Ok(true),
                        (Some(rest), None) => outbound::pump(&rest.stream, &sink).map(|_| true),
                        (Some(rest), Some(limit)) => {
                            outbound::pump_at_most(&rest.stream, &sink, limit - first.len() as u64)
                        }
                    }
                });
                drop(sink);
                result
            }
            Err(()) => Err("request body unavailable".to_string()),
        };
        match sent {
            Ok(true) => {
                let _ = OutgoingBody::finish(outgoing_body, None);
            }
            // Over the limit: the body is dropped unfinished, which aborts the origin's
            // request (it sees an incomplete body), and so is the call. No response has
            // been sent yet (the origin's is only read once the body is sent): a 413.
            Ok(false) => {
                drop(outgoing_body);
                drop(rest);
                drop(future);
                return too_large(policy, info, out, plan);
            }
            Err(reason) => {
                eprintln!("request body to service {} failed: {reason}", plan.service);
                drop(outgoing_body);
            }
        }
    }
    let response = match outbound::wait(&future, None) {
        Ok(response) => response,
        Err(err) => return upstream_failed(policy, info, out, plan, &err),
    };
    let received_at = monotonic_clock::now();
    drop(future);

    let mut entries = response.headers().entries();
    let edits = &plan.response;
    let tokens = plan::connection_tokens(&entries);
    // Hop-by-hop headers and the plan's removals go, and so do an origin's copies of keygate's
    // internal headers (the route label the keygate host reads must be this guest's); `Via`
    // values are gathered to be joined with ours.
    let mut via: Vec<String> = Vec::new();
    entries.retain(|(name, value)| {
        if plan::HOP_BY_HOP.contains(&name.as_str())
            || tokens.contains(name)
            || edits.headers.remove.iter().any(|r| r == name)
            || internal_headers::ALL.contains(&name.as_str())
        {
            return false;
        }
        if name == "via" {
            via.push(String::from_utf8_lossy(value).into_owned());
            return false;
        }
        true
    });
    let has_server = entries.iter().any(|(name, _)| name == "server");
    let response_headers = HeaderList::default();
    for (name, value) in &entries {
        response_headers.append(name, value);
    }
    let set = |name: &str, value: &str| {
        response_headers.append(name, value.as_bytes());
    };
    if let Some(ours) = &edits.via {
        via.push(ours.clone());
    }
    if !via.is_empty() {
        set("via", &via.join(", "));
    }
    if !has_server && let Some(server) = &edits.server_if_absent {
        set("server", server);
    }
    if let Some(name) = &edits.upstream_latency_header {
        set(name, &millis_between(sent_at, received_at).to_string());
    }
    if let Some(name) = &edits.proxy_latency_header {
        set(name, &millis_between(info.started, sent_at).to_string());
    }
    for (name, value) in crate::field_block::headers(&edits.headers.append) {
        response_headers.append(&String::from_utf8_lossy(name), value);
    }
    if annotate {
        let annotation = keygate_policy::annotation::Annotation {
            request_id: Some(plan.request_id.clone()),
            from_origin: true,
            upstream_ms: Some(millis_between(sent_at, received_at)),
            gateway_ms: Some(millis_between(info.started, sent_at)),
            ..crate::errors::annotation_of(&plan.labels)
        };
        set(internal_headers::LABELS, &annotation.to_header());
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
            plan.service
        ),
    }
}

/// The body grew past the route's `max_body_size`: the 413 a declared length gets.
fn too_large(policy: &Policy, info: &RequestInfo, out: ResponseOutparam, plan: ForwardPlan) {
    let mut reply = decide::too_large(info, &policy.config.compat);
    reply.labels = plan.labels;
    send_reply(reply, out, policy.config.host_annotations);
}

/// The origin gave no response: the policy's words for it, sent from here.
fn upstream_failed(
    policy: &Policy,
    info: &RequestInfo,
    out: ResponseOutparam,
    plan: ForwardPlan,
    err: &CallError,
) {
    eprintln!("service {} unreachable: {err}", plan.service);
    let context = FailureContext {
        failure: failure_of(err),
        request_id: plan.request_id,
        service: plan.service,
        labels: plan.labels,
        accept: info.header("accept"),
        content_type: info.header("content-type"),
        method: info.method_name.clone(),
        elapsed_ms: info.elapsed_ms(),
    };
    let reply = decide::upstream_failed(&policy.config.compat, context);
    send_reply(reply, out, policy.config.host_annotations);
}

/// A `wasi:http` error code in the policy's terms.
pub fn failure_of(err: &CallError) -> UpstreamFailure {
    match err {
        CallError::Http(ErrorCode::DnsError(_) | ErrorCode::DnsTimeout) => {
            UpstreamFailure::NameUnresolved
        }
        CallError::Http(ErrorCode::ConnectionLimitReached) => UpstreamFailure::LimitReached,
        CallError::Http(ErrorCode::ConnectionTimeout) => UpstreamFailure::ConnectTimeout,
        err if err.is_timeout() => UpstreamFailure::ResponseTimeout,
        CallError::Http(ErrorCode::ConnectionRefused) => UpstreamFailure::ConnectionRefused,
        CallError::Http(ErrorCode::ConnectionTerminated) => UpstreamFailure::ConnectionReset,
        _ => UpstreamFailure::ProtocolError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasi_http_errors_map_to_the_failures_kong_words() {
        assert_eq!(
            failure_of(&CallError::Http(ErrorCode::ConnectionRefused)),
            UpstreamFailure::ConnectionRefused
        );
        assert_eq!(
            failure_of(&CallError::Http(ErrorCode::ConnectionReadTimeout)),
            UpstreamFailure::ResponseTimeout
        );
        assert_eq!(
            failure_of(&CallError::Deadline),
            UpstreamFailure::ResponseTimeout
        );
        assert_eq!(
            failure_of(&CallError::Http(ErrorCode::DnsTimeout)),
            UpstreamFailure::NameUnresolved
        );
        assert_eq!(
            failure_of(&CallError::Http(ErrorCode::ConnectionLimitReached)),
            UpstreamFailure::LimitReached
        );
    }
}
