//! The floor of forwarding through `wasi:http`: copy the request's headers on the host side
//! (`fields.clone`, no list crossing the boundary), send it to the bench rig's origin
//! (127.0.0.1:18080), hand back the response with its headers cloned the same way, and splice
//! the body. No key check, no routing, no header rules: whatever a host spends on this is
//! spent by every wasi:http gateway, keygate's policy included. Not a gateway; see
//! bench/README.md.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};
use wasip2::io::streams::StreamError;

const ORIGIN: &str = "127.0.0.1:18080";

struct Forwarder;

impl wasip2::exports::http::incoming_handler::Guest for Forwarder {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let upstream = OutgoingRequest::new(request.headers().clone());
        let _ = upstream.set_method(&request.method());
        let _ = upstream.set_scheme(Some(&Scheme::Http));
        let _ = upstream.set_authority(Some(ORIGIN));
        let _ = upstream.set_path_with_query(request.path_with_query().as_deref());
        let response = match outgoing_handler::handle(upstream, None) {
            Ok(future) => {
                future.subscribe().block();
                future.get().and_then(|r| r.ok()).and_then(|r| r.ok())
            }
            Err(_) => None,
        };
        let Some(response) = response else {
            let reply = OutgoingResponse::new(wasip2::http::types::Fields::new());
            let _ = reply.set_status_code(502);
            let body = reply.body().expect("fresh response has a body");
            ResponseOutparam::set(out, Ok(reply));
            let _ = OutgoingBody::finish(body, None);
            return;
        };
        let reply = OutgoingResponse::new(response.headers().clone());
        let _ = reply.set_status_code(response.status());
        let body = reply.body().expect("fresh response has a body");
        ResponseOutparam::set(out, Ok(reply));
        let source = response.consume().expect("body taken once");
        let from = source.stream().expect("stream taken once");
        let to = body.write().expect("stream taken once");
        let complete = loop {
            match to.blocking_splice(&from, 1 << 20) {
                Ok(_) => continue,
                Err(StreamError::Closed) => break true,
                Err(StreamError::LastOperationFailed(_)) => break false,
            }
        };
        drop((to, from, source));
        if complete {
            let _ = OutgoingBody::finish(body, None);
        }
    }
}

#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(Forwarder);
