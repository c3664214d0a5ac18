//! Responses the gateway makes itself (never the origin's): Kong's wording, its templates
//! chosen from `Accept`, and the gateway's own headers.

use crate::fields::HeaderList;
use crate::request::RequestInfo;
use keygate_policy::Compat;
use keygate_policy::errors::ErrorFormat;
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

    /// The format this error takes for `request`.
    pub fn format(&self, request: &RequestInfo, compat: &Compat) -> ErrorFormat {
        let accept = request.header("accept");
        match self.source {
            ErrorSource::Kong => ErrorFormat::negotiate(accept.as_deref().unwrap_or("")),
            ErrorSource::ErrorHandler => ErrorFormat::negotiate_with_fallback(
                accept.as_deref(),
                request.header("content-type").as_deref(),
                compat.error_default_type,
            ),
        }
    }

    pub fn send(self, out: ResponseOutparam, request: &RequestInfo, compat: &Compat) {
        let format = self.format(request, compat);
        let body = format.body(self.message, &request.id);
        let names = compat.headers.names();
        let headers = HeaderList::default();
        let set = |name: &str, value: &[u8]| headers.append(name, value);
        set("content-type", format.content_type().as_bytes());
        set("content-length", body.len().to_string().as_bytes());
        set(names.request_id, request.id.as_bytes());
        set("server", names.server.as_bytes());
        set(
            names.response_latency,
            request.elapsed_ms().to_string().as_bytes(),
        );
        for (name, value) in &self.headers {
            set(name, value.as_bytes());
        }
        let response = OutgoingResponse::new(headers.into_fields());
        let _ = response.set_status_code(self.status);
        let Ok(outgoing_body) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = outgoing_body.write() {
            if !request.method_is_head {
                let _ = crate::outbound::write_all(&stream, body.as_bytes());
            }
            drop(stream);
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}
