//! Responses the gateway makes itself (never the origin's): Kong's wording and JSON template.

use crate::request::RequestInfo;
use keygate_policy::errors::{JSON_CONTENT_TYPE, json_body};
use wasip2::http::types::{Fields, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// A refusal or failure to send instead of the origin's answer.
pub struct GatewayError {
    pub status: u16,
    pub message: &'static str,
    pub headers: Vec<(String, String)>,
}

impl GatewayError {
    pub fn new(status: u16, message: &'static str) -> Self {
        Self {
            status,
            message,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.to_string(), value));
        self
    }

    pub fn send(self, out: ResponseOutparam, request: &RequestInfo) {
        let body = json_body(self.message, &request.id);
        let headers = Fields::new();
        let set = |name: &str, value: &[u8]| {
            let _ = headers.append(name, value);
        };
        set("content-type", JSON_CONTENT_TYPE.as_bytes());
        set("content-length", body.len().to_string().as_bytes());
        set("x-request-id", request.id.as_bytes());
        set("server", b"keygate");
        for (name, value) in &self.headers {
            set(name, value.as_bytes());
        }
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(self.status);
        let Ok(outgoing_body) = response.body() else {
            return;
        };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = outgoing_body.write() {
            if request.method_is_head {
                drop(stream);
            } else {
                let _ = stream.blocking_write_and_flush(body.as_bytes());
                drop(stream);
            }
        }
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
}
