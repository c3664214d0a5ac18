//! Responses the gateway makes itself (never the origin's): Kong's wording, its templates
//! chosen from `Accept`, and the gateway's own headers.

use crate::bindings::exports::keygate::gateway::block_policy::{Labels, Reply};
use crate::field_block;
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
        self.reply_with_message(self.message, request, compat)
    }

    /// [`Self::reply`] with a message made for this request (ip-restriction's default names
    /// the client's address) instead of `self.message`.
    pub fn reply_message(&self, message: &str, request: &RequestInfo, compat: &Compat) -> Reply {
        let accept = request.header("accept");
        let content_type = request.header("content-type");
        self.reply_with_message(
            message,
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

    /// [`Self::reply_to`] with `message` in the template.
    pub fn reply_with_message(
        &self,
        message: &str,
        request: &ErrorRequest,
        compat: &Compat,
    ) -> Reply {
        let format = self.format(request, compat);
        let body = format.body(message, request.id);
        exit_reply(
            self.status,
            Some(format.content_type()),
            &self.headers,
            body.into_bytes(),
            request,
            compat,
        )
    }
}

/// A reply made the way Kong's `kong.response.exit` makes one (request-termination, the cors
/// preflight): `status`, `headers` and `body` as given (a `Content-Type` only when
/// `content_type` is set), plus the gateway's headers, as on its errors; no body for HEAD.
/// The gateway's own errors are made the same way (`GatewayError::reply_with_message`).
pub fn exit_reply(
    status: u16,
    content_type: Option<&str>,
    headers: &[(String, String)],
    body: Vec<u8>,
    request: &ErrorRequest,
    compat: &Compat,
) -> Reply {
    let names = compat.headers.names();
    let mut all = Vec::with_capacity(200);
    if let Some(content_type) = content_type {
        field_block::push(&mut all, "content-type", content_type.as_bytes());
    }
    field_block::push(
        &mut all,
        "content-length",
        body.len().to_string().as_bytes(),
    );
    field_block::push(&mut all, names.request_id, request.id.as_bytes());
    field_block::push(&mut all, "server", names.server.as_bytes());
    field_block::push(
        &mut all,
        names.response_latency,
        request.elapsed_ms.to_string().as_bytes(),
    );
    for (name, value) in headers {
        field_block::push(&mut all, name, value.as_bytes());
    }
    Reply {
        status,
        headers: all,
        body: if request.is_head { Vec::new() } else { body },
        labels: Labels::none(),
    }
}

/// [`exit_reply`] for `request`.
pub fn exit_reply_for(
    status: u16,
    content_type: Option<&str>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    request: &RequestInfo,
    compat: &Compat,
) -> Reply {
    exit_reply(
        status,
        content_type,
        &headers,
        body,
        &ErrorRequest {
            id: &request.id,
            accept: None,
            content_type: None,
            is_head: request.method_is_head,
            elapsed_ms: request.elapsed_ms(),
        },
        compat,
    )
}

/// What an error's wording depends on from the request it answers.
pub struct ErrorRequest<'a> {
    pub id: &'a str,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub is_head: bool,
    pub elapsed_ms: u64,
}

/// The labels as the keygate host reads them on the portable path.
pub fn annotation_of(labels: &Labels) -> keygate_policy::annotation::Annotation {
    keygate_policy::annotation::Annotation {
        route: labels.route.clone(),
        service: labels.service.clone(),
        consumer: labels
            .consumer
            .as_ref()
            .and_then(|consumer| consumer.username.clone().or_else(|| consumer.id.clone())),
        key_lookup: labels.key_lookup.clone(),
        auth_ms: labels.auth_call_ms,
        rate_limit: labels.rate_limit.clone(),
        ..Default::default()
    }
}

/// Send a reply through `wasi:http` (the portable path). With `route_header`, the route label
/// travels to the keygate host in its internal header.
pub fn send_reply(reply: Reply, out: ResponseOutparam, route_header: bool) {
    let headers = HeaderList::default();
    for (name, value) in field_block::headers(&reply.headers) {
        headers.append(&String::from_utf8_lossy(name), value);
    }
    if route_header {
        let annotation = annotation_of(&reply.labels);
        headers.append(internal_headers::LABELS, annotation.to_header().as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(is_head: bool) -> ErrorRequest<'static> {
        ErrorRequest {
            id: "0123456789abcdef0123456789abcdef",
            accept: None,
            content_type: None,
            is_head,
            elapsed_ms: 3,
        }
    }

    fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a [u8]> {
        field_block::get(&reply.headers, name)
    }

    #[test]
    fn exit_replies_carry_only_the_given_content_type() {
        let compat = Compat::default();
        let empty = exit_reply(200, None, &[], Vec::new(), &request(false), &compat);
        assert_eq!(empty.status, 200);
        assert_eq!(header(&empty, "content-type"), None);
        assert_eq!(header(&empty, "content-length"), Some(&b"0"[..]));
        assert!(header(&empty, "server").is_some());
        let raw = exit_reply(
            503,
            Some("text/html"),
            &[("x-a".into(), "1".into())],
            b"<h1>down</h1>".to_vec(),
            &request(true),
            &compat,
        );
        assert_eq!(header(&raw, "content-type"), Some(&b"text/html"[..]));
        assert_eq!(header(&raw, "content-length"), Some(&b"13"[..]));
        assert_eq!(header(&raw, "x-a"), Some(&b"1"[..]));
        assert!(raw.body.is_empty(), "HEAD gets no body");
    }

    #[test]
    fn a_message_made_per_request_fills_the_template() {
        let error = GatewayError::new(403, "");
        let reply = error.reply_with_message(
            "IP address not allowed: 10.0.0.1",
            &request(false),
            &Compat::default(),
        );
        let body = String::from_utf8(reply.body).unwrap();
        assert_eq!(
            body,
            "{\n  \"message\":\"IP address not allowed: 10.0.0.1\",\n  \"request_id\":\"0123456789abcdef0123456789abcdef\"\n}"
        );
    }
}
