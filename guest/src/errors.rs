//! Responses the gateway makes itself (never the origin's): Kong's wording, its templates
//! chosen from `Accept`, and the gateway's own headers.

use crate::bindings::exports::keygate::gateway::policy::{Labels, Reply};
use crate::fields::HeaderList;
use crate::request::RequestInfo;
use keygate_policy::errors::ErrorFormat;
use keygate_policy::{Compat, internal_headers};
use wasip2::http::types::{OutgoingBody, OutgoingResponse, ResponseOutparam};

/// A refusal or failure to send instead of the origin's answer.
pub struct GatewayError {
    pub status: u16,
    pub message: &'static str,
    pub headers: Vec<(String, String)>,
    /// Which of Kong's two error paths makes this answer.
    pub source: ErrorSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// `kong.response.error` (plugins, router): the format follows `Accept`, JSON by default.
    Kong,
    /// nginx's error pages through Kong's error handler (upstream failures, crashes): the
    /// format follows `Accept`, else `Content-Type`, else `compat.error_default_type`.
    ErrorHandler,
}

impl GatewayError {
    pub fn new(status: u16, message: &'static str) -> Self {
        Self {
            status,
            message,
            headers: Vec::new(),
            source: ErrorSource::Kong,
        }
    }

    /// An error Kong makes in its nginx error handler rather than in a plugin.
    pub fn from_error_handler(status: u16, message: &'static str) -> Self {
        Self {
            source: ErrorSource::ErrorHandler,
            ..Self::new(status, message)
        }
    }

    pub fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }

    /// The reply this error makes for `request`.
    pub fn reply(&self, request: &RequestInfo, compat: &Compat) -> Reply {
        let accept = request.header("accept");
        let content_type = request.header("content-type");
        self.reply_to(
            &ErrorRequest {
                id: &request.id,
                accept: accept.as_deref(),
                content_type: content_type.as_deref(),
                is_head: request.method_is_head,
                elapsed_ms: request.elapsed_ms(),
            },
            compat,
        )
    }

    /// The format this error takes for a request that asked for `accept`.
    pub fn format(&self, request: &ErrorRequest, compat: &Compat) -> ErrorFormat {
        match self.source {
            ErrorSource::Kong => ErrorFormat::negotiate(request.accept.unwrap_or("")),
            ErrorSource::ErrorHandler => ErrorFormat::negotiate_with_fallback(
                request.accept,
                request.content_type,
                compat.error_default_type,
            ),
        }
    }

    /// The whole reply: Kong's template in the negotiated format, the gateway's headers, and
    /// no body for HEAD (its `Content-Length` still says how long the body would be).
    pub fn reply_to(&self, request: &ErrorRequest, compat: &Compat) -> Reply {
        let format = self.format(request, compat);
        let body = format.body(self.message, request.id);
        let names = compat.headers.names();
        let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(5 + self.headers.len());
        let mut set = |name: &str, value: Vec<u8>| headers.push((name.to_string(), value));
        set("content-type", format.content_type().as_bytes().to_vec());
        set("content-length", body.len().to_string().into_bytes());
        set(names.request_id, request.id.as_bytes().to_vec());
        set("server", names.server.as_bytes().to_vec());
        set(
            names.response_latency,
            request.elapsed_ms.to_string().into_bytes(),
        );
        for (name, value) in &self.headers {
            set(name, value.as_bytes().to_vec());
        }
        Reply {
            status: self.status,
            headers,
            body: if request.is_head {
                Vec::new()
            } else {
                body.into_bytes()
            },
            labels: Labels::none(),
        }
    }
}

/// What an error's wording depends on from the request it answers.
pub struct ErrorRequest<'a> {
    pub id: &'a str,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub is_head: bool,
    pub elapsed_ms: u64,
}

/// Send a reply through `wasi:http` (the portable path). With `route_header`, the route label
/// travels to the keygate host in its internal header.
pub fn send_reply(reply: Reply, out: ResponseOutparam, route_header: bool) {
    let headers = HeaderList::default();
    for (name, value) in &reply.headers {
        headers.append(name, value);
    }
    if route_header && let Some(route) = &reply.labels.route {
        headers.append(internal_headers::ROUTE, route.as_bytes());
    }
    if route_header && let Some(outcome) = &reply.labels.rate_limit {
        headers.append(internal_headers::RATE_LIMIT, outcome.as_bytes());
    }
    let response = OutgoingResponse::new(headers.into_fields());
    let _ = response.set_status_code(reply.status);
    let Ok(outgoing_body) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing_body.write() {
        if !reply.body.is_empty() {
            let _ = crate::outbound::write_all(&stream, &reply.body);
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(outgoing_body, None);
}
