//! keygate's policy: API-key authentication and routing as a `wasi:http` component.
//!
//! Each request: match a route (404 if none), find and check the key (401/503), then forward
//! to the route's origin with bodies streamed both ways (502/504 if the origin fails).

mod auth;
mod bindings;
mod config;
mod credentials;
mod errors;
mod forward;
mod outbound;
mod percent;
mod request;
mod router;

use errors::GatewayError;
use keygate_policy::errors::{INTERNAL, NO_ROUTE};
use keygate_policy::internal_headers;
use request::RequestInfo;
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

struct Gateway;

impl bindings::exports::wasi::http::incoming_handler::Guest for Gateway {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let policy = match config::policy() {
            Ok(policy) => policy,
            Err(reason) => {
                eprintln!("keygate guest has no usable configuration: {reason}");
                let info = RequestInfo::read(&request, None);
                return GatewayError::new(500, INTERNAL).send(out, &info);
            }
        };
        let info = RequestInfo::read(&request, policy.config.client_addr_header.as_deref());
        let Some(matched) = policy.routes.find(&policy.config.services, &info) else {
            return GatewayError::new(404, NO_ROUTE).send(out, &info);
        };
        let preflight =
            matches!(info.method, Method::Options) && !policy.config.key_auth.run_on_preflight;
        let identity = if matched.route.auth && !preflight {
            let credential = credentials::extract(&policy.config.key_auth, &info);
            match auth::authenticate(policy, credential) {
                Ok(identity) => Some(identity),
                Err(refusal) if policy.config.host_annotations => {
                    let label = forward::route_label(&matched);
                    return refusal
                        .with_header(internal_headers::ROUTE, label)
                        .send(out, &info);
                }
                Err(refusal) => return refusal.send(out, &info),
            }
        } else {
            None
        };
        forward::forward(policy, &info, request, out, &matched, identity.as_ref());
    }
}

// Only the wasm build exports the handler: native builds exist to run the unit tests.
#[cfg(target_arch = "wasm32")]
bindings::export!(Gateway with_types_in bindings);
