//! Answers every request with 200 and `x-guest-version: v1`. The version is a marker in the
//! component's data (`keygate-test-version=v1`) that tests patch to make a "v2" component:
//! two components that differ observably, from one build.

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

static MARKER: &[u8] = b"keygate-test-version=v1";

struct Tagged;

impl wasip2::exports::http::incoming_handler::Guest for Tagged {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let marker = std::hint::black_box(MARKER);
        let version = &marker[marker.len() - 2..];
        let headers = Fields::new();
        headers
            .append("x-guest-version", version)
            .expect("valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("fresh response has a body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("fresh body has a stream");
        stream.blocking_write_and_flush(version).expect("write");
        drop(stream);
        OutgoingBody::finish(body, None).expect("finish");
    }
}

#[cfg(target_arch = "wasm32")]
wasip2::http::proxy::export!(Tagged);
