//! keygate's policy: API-key authentication and routing as a `wasi:http` component.
//!
//! Each request: match a route (404 if none), find and check the key (401/503, or the
//! anonymous consumer), then forward to the route's origin with bodies streamed both ways
//! (502/503/504 if the origin fails).

mod auth;
mod bindings;
mod body;
mod config;
mod credentials;
mod errors;
mod fields;
mod forward;
mod outbound;
mod percent;
mod request;
mod router;

use auth::Identity;
use body::RequestBody;
use errors::GatewayError;
use keygate_policy::errors::{INTERNAL, NO_ROUTE};
use keygate_policy::{Compat, internal_headers};
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
                return GatewayError::from_error_handler(500, INTERNAL).send(
                    out,
                    &info,
                    &Compat::default(),
                );
            }
        };
        let compat = &policy.config.compat;
        let info = RequestInfo::read(&request, policy.config.client_addr_header.as_deref());
        let Some(matched) =
            policy
                .routes
                .find(&policy.config.services, &info, policy.config.listen_port)
        else {
            return GatewayError::new(404, NO_ROUTE).send(out, &info, compat);
        };
        let key_auth = &policy.config.key_auth;
        let mut body = RequestBody::new(request, &info, key_auth.body_buffer_size.bytes());
        let preflight = matches!(info.method, Method::Options) && !key_auth.run_on_preflight;
        let mut hidden = None;
        let identity = if matched.route.auth && !preflight {
            let credential = credentials::extract(key_auth, &info, &mut body);
            if key_auth.hide_credentials {
                hidden = credential.name().map(str::to_string);
            }
            match auth::authenticate(policy, credential) {
                Ok(identity) => Some(identity),
                // Kong's logical OR: a failed authentication proceeds as the anonymous
                // consumer. An auth API that cannot answer is not a failed authentication.
                Err(refusal) if refusal.status == 401 && policy.anonymous.is_some() => {
                    policy.anonymous_consumer().map(Identity::anonymous)
                }
                Err(refusal) if policy.config.host_annotations => {
                    let label = forward::route_label(&matched);
                    return refusal
                        .with_header(internal_headers::ROUTE, label)
                        .send(out, &info, compat);
                }
                Err(refusal) => return refusal.send(out, &info, compat),
            }
        } else {
            None
        };
        if let Some(name) = &hidden
            && key_auth.key_in_body
        {
            body.remove(name);
        }
        forward::forward(
            policy,
            &info,
            body,
            out,
            &matched,
            identity.as_ref(),
            hidden.as_deref(),
        );
    }
}

// Only the wasm build exports the handler: native builds exist to run the unit tests.
#[cfg(target_arch = "wasm32")]
bindings::export!(Gateway with_types_in bindings);
