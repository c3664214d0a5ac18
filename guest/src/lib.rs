//! keygate's policy: API-key authentication and routing as a WASI 0.2 component.
//!
//! Each request: match a route (404 if none), find and check the key (401/503, or the
//! anonymous consumer), then forward to the route's origin. Two entry points share that
//! decision (`decide`): `keygate:gateway/reusable-policy` (and `block-policy`), where the keygate
//! host forwards natively and bodies never enter wasm, and `wasi:http/incoming-handler`, which runs anywhere
//! (wasmtime serve, Spin) and forwards through `wasi:http` with bodies streamed both ways.

mod alloc;
mod auth;
mod bindings;
mod block_policy;
mod body;
mod config;
mod cors;
mod credentials;
mod decide;
mod errors;
mod field_block;
mod fields;
mod forward;
mod ip_restriction;
// The fuzz targets' bodies (fuzz/, tests/fuzz_corpus.rs): native builds only.
#[cfg(not(target_family = "wasm"))]
#[doc(hidden)]
pub mod fuzzing;
mod outbound;
mod percent;
mod plan;
mod rate_limit;
mod request;
mod request_termination;
mod router;

use bindings::exports::keygate::gateway::block_policy::{
    Decision, FailureContext, Reply, RequestHead,
};
use bindings::exports::keygate::gateway::policy as policy_0_1_1;
use bindings::exports::keygate::gateway::reusable_policy::Reuse;
use body::RequestBody;
use errors::{GatewayError, send_reply};
use keygate_policy::Compat;
use keygate_policy::errors::INTERNAL;
use request::RequestInfo;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

// Single-threaded by design: only in the component (native unit tests run threads).
#[cfg(target_family = "wasm")]
#[global_allocator]
static ALLOCATOR: alloc::Pooled = alloc::Pooled::new();

struct Gateway;

/// The fast path: the keygate host asks, and applies the decision itself.
impl bindings::exports::keygate::gateway::block_policy::Guest for Gateway {
    fn decide(head: RequestHead) -> Decision {
        let _call = alloc::InCall::enter();
        decide_head(block_policy::head(head))
    }

    fn upstream_failed(context: FailureContext) -> Reply {
        let _call = alloc::InCall::enter();
        upstream_failed(context)
    }
}

/// The fast path as keygate hosts from 0.1.4 on call it: the decision, and whether the host may
/// answer identical requests with it.
impl bindings::exports::keygate::gateway::reusable_policy::Guest for Gateway {
    fn decide(head: RequestHead) -> (Decision, Option<Reuse>) {
        let _call = alloc::InCall::enter();
        let decision = decide_head(block_policy::head(head));
        let reuse = decide::reuse_of(&decision);
        (decision, reuse)
    }
}

/// The fast path as keygate hosts of 0.1.1 and 0.1.2 call it.
impl bindings::exports::keygate::gateway::policy::Guest for Gateway {
    fn decide(head: policy_0_1_1::RequestHead) -> policy_0_1_1::Decision {
        let _call = alloc::InCall::enter();
        block_policy::decision(decide_head(head))
    }

    fn upstream_failed(context: policy_0_1_1::FailureContext) -> policy_0_1_1::Reply {
        let _call = alloc::InCall::enter();
        block_policy::reply(upstream_failed(block_policy::failure_context(context)))
    }
}

fn decide_head(head: policy_0_1_1::RequestHead) -> Decision {
    let info = RequestInfo::from_head(head);
    match config::policy() {
        Ok(policy) => decide::decide(policy, &info, None),
        Err(reason) => Decision::Respond(no_policy(reason, &info)),
    }
}

fn upstream_failed(context: FailureContext) -> Reply {
    // Without a usable configuration the words are still Kong's, in the default format.
    let default = Compat::default();
    let compat = config::policy().map_or(&default, |policy| &policy.config.compat);
    decide::upstream_failed(compat, context)
}

/// The portable path: any `wasi:http` host.
impl bindings::exports::wasi::http::incoming_handler::Guest for Gateway {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let _call = alloc::InCall::enter();
        let policy = match config::policy() {
            Ok(policy) => policy,
            Err(reason) => {
                let info = RequestInfo::from_incoming(&request, None);
                return send_reply(no_policy(reason, &info), out, false);
            }
        };
        let info =
            RequestInfo::from_incoming(&request, policy.config.client_addr_header.as_deref());
        let mut body = RequestBody::new(
            request,
            &info,
            policy.config.key_auth.body_buffer_size.bytes(),
        );
        match decide::decide(policy, &info, Some(&mut body)) {
            Decision::Forward(plan) => forward::forward(policy, &info, body, out, plan),
            Decision::Respond(reply) => send_reply(reply, out, policy.config.host_annotations),
            // Only asked for when the body is missing, and here it is not.
            Decision::UseHandler => send_reply(
                GatewayError::from_error_handler(500, INTERNAL).reply(&info, &policy.config.compat),
                out,
                false,
            ),
        }
    }
}

/// Every request of an instance without a usable configuration gets a 500; the reason goes
/// to stderr, where the host logs it.
fn no_policy(reason: &str, info: &RequestInfo) -> Reply {
    eprintln!("keygate guest has no usable configuration: {reason}");
    GatewayError::from_error_handler(500, INTERNAL).reply(info, &Compat::default())
}

// Only the wasm build exports the handler: native builds exist to run the unit tests.
#[cfg(target_arch = "wasm32")]
bindings::export!(Gateway with_types_in bindings);
