//! The two forms of the fast path's contract. The policy decides in `block-policy`'s types
//! (header lists as field blocks), which keygate hosts from 0.1.3 on call; `policy`, as hosts
//! of 0.1.1 and 0.1.2 call it, gets the same decision with its header lists as pairs.

use crate::bindings::exports::keygate::gateway::{block_policy as blocks, policy};
use crate::field_block;

/// A `block-policy` head as the request reader takes it.
pub fn head(head: blocks::RequestHead) -> policy::RequestHead {
    policy::RequestHead {
        method: head.method,
        scheme: head.scheme,
        authority: head.authority,
        path_with_query: head.path_with_query,
        headers: field_block::to_pairs(&head.headers),
        client_ip: head.client_ip,
        local_port: head.local_port,
    }
}

/// A decision as `policy` returns it.
pub fn decision(decision: blocks::Decision) -> policy::Decision {
    match decision {
        blocks::Decision::Forward(plan) => policy::Decision::Forward(forward_plan(plan)),
        blocks::Decision::Respond(reply) => policy::Decision::Respond(self::reply(reply)),
        blocks::Decision::UseHandler => policy::Decision::UseHandler,
    }
}

fn forward_plan(plan: blocks::ForwardPlan) -> policy::ForwardPlan {
    let response = plan.response;
    policy::ForwardPlan {
        service: plan.service,
        scheme: plan.scheme,
        authority: plan.authority,
        path_with_query: plan.path_with_query,
        request_headers: edits(plan.request_headers),
        response: policy::ResponseEdits {
            headers: edits(response.headers),
            via: response.via,
            server_if_absent: response.server_if_absent,
            upstream_latency_header: response.upstream_latency_header,
            proxy_latency_header: response.proxy_latency_header,
        },
        timeouts: policy::Timeouts {
            connect_ms: plan.timeouts.connect_ms,
            first_byte_ms: plan.timeouts.first_byte_ms,
            between_bytes_ms: plan.timeouts.between_bytes_ms,
        },
        max_request_body: plan.max_request_body,
        request_id: plan.request_id,
        labels: labels(plan.labels),
    }
}

fn edits(edits: blocks::HeaderEdits) -> policy::HeaderEdits {
    policy::HeaderEdits {
        append: field_block::to_pairs(&edits.append),
        remove: edits.remove,
    }
}

/// A reply as `policy` returns it.
pub fn reply(reply: blocks::Reply) -> policy::Reply {
    policy::Reply {
        status: reply.status,
        headers: field_block::to_pairs(&reply.headers),
        body: reply.body,
        labels: labels(reply.labels),
    }
}

fn labels(labels: blocks::Labels) -> policy::Labels {
    policy::Labels {
        route: labels.route,
        service: labels.service,
        consumer: labels.consumer,
        key_lookup: labels.key_lookup,
        auth_call_ms: labels.auth_call_ms,
        rate_limit: labels.rate_limit,
    }
}

/// A `policy` failure context as the policy reads it.
pub fn failure_context(context: policy::FailureContext) -> blocks::FailureContext {
    use blocks::UpstreamFailure as New;
    use policy::UpstreamFailure as Old;
    let labels = context.labels;
    blocks::FailureContext {
        failure: match context.failure {
            Old::ConnectionRefused => New::ConnectionRefused,
            Old::ConnectionReset => New::ConnectionReset,
            Old::ConnectTimeout => New::ConnectTimeout,
            Old::ResponseTimeout => New::ResponseTimeout,
            Old::NameUnresolved => New::NameUnresolved,
            Old::ProtocolError => New::ProtocolError,
            Old::LimitReached => New::LimitReached,
        },
        request_id: context.request_id,
        service: context.service,
        labels: blocks::Labels {
            route: labels.route,
            service: labels.service,
            consumer: labels.consumer,
            key_lookup: labels.key_lookup,
            auth_call_ms: labels.auth_call_ms,
            rate_limit: labels.rate_limit,
        },
        accept: context.accept,
        content_type: context.content_type,
        method: context.method,
        elapsed_ms: context.elapsed_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> blocks::Labels {
        blocks::Labels {
            route: Some("r".into()),
            service: Some("s".into()),
            consumer: None,
            key_lookup: Some("fresh".into()),
            auth_call_ms: Some(3),
            rate_limit: None,
        }
    }

    #[test]
    fn an_older_host_gets_the_same_plan_with_its_header_lists_as_pairs() {
        let plan = blocks::ForwardPlan {
            service: "s".into(),
            scheme: "http".into(),
            authority: "o:1".into(),
            path_with_query: "/x?a=1".into(),
            request_headers: blocks::HeaderEdits {
                remove: vec!["apikey".into()],
                append: b"host: o:1\r\nx-consumer-id: c\r\nx-consumer-id: d\r\n".to_vec(),
            },
            response: blocks::ResponseEdits {
                headers: blocks::HeaderEdits {
                    remove: vec![],
                    append: b"x-kong-request-id: 00\r\n".to_vec(),
                },
                via: Some("1.1 kong".into()),
                server_if_absent: None,
                upstream_latency_header: Some("x-kong-upstream-latency".into()),
                proxy_latency_header: None,
            },
            timeouts: blocks::Timeouts {
                connect_ms: 1,
                first_byte_ms: 2,
                between_bytes_ms: 3,
            },
            max_request_body: Some(9),
            request_id: "00".into(),
            labels: labels(),
        };
        let policy::Decision::Forward(old) = decision(blocks::Decision::Forward(plan)) else {
            panic!("a forward stays a forward");
        };
        let pair = |n: &str, v: &str| (n.to_string(), v.as_bytes().to_vec());
        assert_eq!(
            old.request_headers.append,
            vec![
                pair("host", "o:1"),
                pair("x-consumer-id", "c"),
                pair("x-consumer-id", "d")
            ]
        );
        assert_eq!(old.request_headers.remove, vec!["apikey".to_string()]);
        assert_eq!(
            old.response.headers.append,
            vec![pair("x-kong-request-id", "00")]
        );
        assert_eq!(old.path_with_query, "/x?a=1");
        assert_eq!(old.timeouts.between_bytes_ms, 3);
        assert_eq!(old.max_request_body, Some(9));
        assert_eq!(old.labels.key_lookup.as_deref(), Some("fresh"));
        assert_eq!(old.labels.auth_call_ms, Some(3));
    }

    #[test]
    fn an_older_host_gets_the_same_reply_and_its_failures_are_read_alike() {
        let reply = reply(blocks::Reply {
            status: 401,
            headers: b"content-type: application/json\r\nwww-authenticate: Key\r\n".to_vec(),
            body: b"{}".to_vec(),
            labels: labels(),
        });
        assert_eq!(reply.status, 401);
        assert_eq!(reply.headers.len(), 2);
        assert_eq!(reply.headers[1].0, "www-authenticate");
        let context = failure_context(policy::FailureContext {
            failure: policy::UpstreamFailure::ResponseTimeout,
            request_id: "00".into(),
            service: "s".into(),
            labels: policy::Labels {
                route: None,
                service: None,
                consumer: None,
                key_lookup: None,
                auth_call_ms: None,
                rate_limit: Some("allowed".into()),
            },
            accept: Some("text/html".into()),
            content_type: None,
            method: "HEAD".into(),
            elapsed_ms: 7,
        });
        assert!(matches!(
            context.failure,
            blocks::UpstreamFailure::ResponseTimeout
        ));
        assert_eq!(context.labels.rate_limit.as_deref(), Some("allowed"));
        assert_eq!(context.accept.as_deref(), Some("text/html"));
        assert_eq!(context.elapsed_ms, 7);
    }

    #[test]
    fn a_block_head_is_read_as_the_same_header_list() {
        let old = head(blocks::RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "gw".into(),
            path_with_query: "/".into(),
            headers: b"apikey: k\r\naccept: */*\r\n".to_vec(),
            client_ip: Some("127.0.0.1".into()),
            local_port: 8000,
        });
        assert_eq!(
            old.headers,
            vec![
                ("apikey".to_string(), b"k".to_vec()),
                ("accept".to_string(), b"*/*".to_vec())
            ]
        );
        assert_eq!(old.local_port, 8000);
    }
}
