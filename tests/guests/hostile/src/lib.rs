//! A policy that decides what the request's `x-hostile` header asks for, to prove the host
//! treats decisions as untrusted: `foreign-authority` forwards to `x-target` (not the
//! service's origin), `unknown-service` names a service the config lacks, `header-injection`
//! appends a value with a line break, `absolute-path` sends an absolute URL as the path,
//! `informational-reply` answers with status 101; anything else forwards to the `api`
//! service's origin `x-target`, the plan a good guest makes. Its `wasi:http` handler answers
//! 200 `handler`.

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "keygate:gateway/gateway",
        with: {
            "wasi:http/types@0.2.12": wasip2::http::types,
            "wasi:http/outgoing-handler@0.2.12": wasip2::http::outgoing_handler,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:clocks/monotonic-clock@0.2.12": wasip2::clocks::monotonic_clock,
            "wasi:clocks/wall-clock@0.2.12": wasip2::clocks::wall_clock,
            "wasi:random/random@0.2.12": wasip2::random::random,
            "wasi:cli/stdout@0.2.12": wasip2::cli::stdout,
            "wasi:cli/stderr@0.2.12": wasip2::cli::stderr,
            "wasi:cli/stdin@0.2.12": wasip2::cli::stdin,
            "keygate:gateway/key-cache@0.1.4": generate,
            "keygate:gateway/counters@0.1.4": generate,
        },
        pub_export_macro: true,
    });
}

use bindings::exports::keygate::gateway::block_policy::{
    Decision, FailureContext, ForwardPlan, HeaderEdits, Labels, Reply, RequestHead, ResponseEdits,
    Timeouts,
};
use bindings::exports::keygate::gateway::policy as policy_0_1_1;
use bindings::exports::keygate::gateway::reusable_policy::Reuse;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hostile;

fn labels() -> Labels {
    Labels {
        route: None,
        service: None,
        consumer: None,
        key_lookup: None,
        auth_call_ms: None,
        rate_limit: None,
    }
}

/// The value of `name` in the head's field block.
fn header(head: &RequestHead, name: &str) -> String {
    String::from_utf8_lossy(&head.headers)
        .split("\r\n")
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_default()
        .to_string()
}

impl bindings::exports::keygate::gateway::block_policy::Guest for Hostile {
    fn decide(head: RequestHead) -> Decision {
        let target = header(&head, "x-target");
        let mut plan = ForwardPlan {
            service: "api".into(),
            scheme: "http".into(),
            authority: target.clone(),
            path_with_query: "/".into(),
            request_headers: HeaderEdits {
                remove: vec![],
                append: format!("host: {target}\r\n").into_bytes(),
            },
            response: ResponseEdits {
                headers: HeaderEdits {
                    remove: vec![],
                    append: Vec::new(),
                },
                via: None,
                server_if_absent: None,
                upstream_latency_header: None,
                proxy_latency_header: None,
            },
            timeouts: Timeouts {
                connect_ms: 2000,
                first_byte_ms: 2000,
                between_bytes_ms: 2000,
            },
            max_request_body: None,
            request_id: "0".repeat(32),
            labels: labels(),
        };
        match header(&head, "x-hostile").as_str() {
            // The target is then not the configured origin: the test points it elsewhere.
            "foreign-authority" => {}
            "unknown-service" => plan.service = "not-configured".into(),
            // A CR inside a value: a line ends only at LF, so this is one invalid value.
            "header-injection" => plan
                .request_headers
                .append
                .extend_from_slice(b"x-a: 1\rx-injected: yes\r\n"),
            "absolute-path" => plan.path_with_query = format!("http://{}/", plan.authority),
            "informational-reply" => {
                return Decision::Respond(Reply {
                    status: 101,
                    headers: Vec::new(),
                    body: vec![],
                    labels: labels(),
                });
            }
            _ => {}
        }
        Decision::Forward(plan)
    }

    fn upstream_failed(_context: FailureContext) -> Reply {
        Reply {
            status: 502,
            headers: Vec::new(),
            body: b"upstream failed".to_vec(),
            labels: labels(),
        }
    }
}

/// keygate hosts from 0.1.4 on call `reusable-policy`: the same decisions, offered for reuse
/// only when `x-reuse` asks (`offer`; `count-and-offer` first counts the request in a rate
/// limit, which no host may then reuse), so every other request meets its own.
impl bindings::exports::keygate::gateway::reusable_policy::Guest for Hostile {
    fn decide(head: RequestHead) -> (Decision, Option<Reuse>) {
        let reuse = header(&head, "x-reuse");
        if reuse == "count-and-offer" {
            use bindings::keygate::gateway::counters::{Period, Window, hit};
            let minute = Window {
                period: Period::Minute,
                limit: 1000.0,
            };
            let _ = hit("hostile", "everyone", &[minute], false);
        }
        let decision =
            <Hostile as bindings::exports::keygate::gateway::block_policy::Guest>::decide(head);
        let offer = matches!(reuse.as_str(), "offer" | "count-and-offer");
        (decision, offer.then_some(Reuse { for_ms: 60_000 }))
    }
}

/// keygate hosts of 0.1.3 call `block-policy`; older ones get the portable path.
impl policy_0_1_1::Guest for Hostile {
    fn decide(_head: policy_0_1_1::RequestHead) -> policy_0_1_1::Decision {
        policy_0_1_1::Decision::UseHandler
    }

    fn upstream_failed(_context: policy_0_1_1::FailureContext) -> policy_0_1_1::Reply {
        policy_0_1_1::Reply {
            status: 502,
            headers: vec![],
            body: b"upstream failed".to_vec(),
            labels: policy_0_1_1::Labels {
                route: None,
                service: None,
                consumer: None,
                key_lookup: None,
                auth_call_ms: None,
                rate_limit: None,
            },
        }
    }
}

impl bindings::exports::wasi::http::incoming_handler::Guest for Hostile {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("fresh response has a body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("fresh body has a stream");
        stream.blocking_write_and_flush(b"handler").expect("write");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish");
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(Hostile with_types_in bindings);
