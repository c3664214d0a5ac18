//! Answers the host makes itself (guest failed, overloaded, malformed request, the admin
//! listener), in Kong's error format, and the body type every response shares.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keygate_policy::Compat;
use keygate_policy::errors::{ErrorFormat, INTERNAL, JSON_CONTENT_TYPE, OVERLOADED, json_body};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Response bodies as the guest produces them; the host's own answers and proxied bodies use
/// the same type.
pub type ResponseBody = HyperOutgoingBody;

/// Why the host answered instead of the guest.
pub enum HostFailure {
    BadRequest(String),
    Overloaded,
    GuestFailed(String),
    Internal(String),
    /// The request's body is over the route's `max_body_size`.
    BodyTooLarge,
    /// An upgrade (WebSocket) request on the portable path, which `wasi:http` 0.2 cannot carry.
    UpgradeUnsupported,
    /// A header line over the per-line limit (see `crate::server::MAX_HEADER_LINE_BYTES`), or
    /// a whole head over its limits (`crate::server::MAX_HEAD_BYTES`, `MAX_HEADERS`): 400.
    HeaderTooLarge,
    /// A request target over the per-line limit.
    UriTooLong,
    /// Every target of the service's upstream is drained or marked down.
    NoPeer,
    /// The origin failed its last requests (refused, or timed out) and is not tried for a
    /// moment.
    OriginDown {
        timed_out: bool,
    },
}

impl HostFailure {
    pub fn describe(&self) -> String {
        match self {
            Self::BadRequest(reason) => format!("bad request: {reason}"),
            Self::Overloaded => "no guest instance available".into(),
            Self::GuestFailed(reason) => format!("guest failed: {reason}"),
            Self::Internal(reason) => format!("internal error: {reason}"),
            Self::UpgradeUnsupported => "upgrade requested on the wasi:http path".into(),
            Self::BodyTooLarge => "request body over its size limit".into(),
            Self::HeaderTooLarge => "a request header line or head over its size limit".into(),
            Self::UriTooLong => "request target over its size limit".into(),
            Self::NoPeer => "no target of the upstream is up".into(),
            Self::OriginDown { .. } => "the origin failed its last requests".into(),
        }
    }

    /// Answered as Kong's error handler would: the format from `Accept`, else the request's
    /// `Content-Type`, else `compat.error_default_type`; header names from `compat.headers`.
    pub fn into_response(
        self,
        asked: &ErrorContext,
        compat: &Compat,
        started: std::time::Instant,
    ) -> hyper::Response<ResponseBody> {
        self.into_response_as(crate::http_util::request_id(), asked, compat, started)
    }

    /// [`Self::into_response`] for a request that already has its id (a forward plan's, which
    /// the origin may have seen).
    pub fn into_response_as(
        self,
        id: String,
        asked: &ErrorContext,
        compat: &Compat,
        started: std::time::Instant,
    ) -> hyper::Response<ResponseBody> {
        let (status, format, body) = self.render(&id, asked, compat);
        let names = compat.headers.names();
        hyper::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, format.content_type())
            .header(names.request_id, id)
            .header(http::header::SERVER, names.server)
            .header(
                names.response_latency,
                started.elapsed().as_millis().to_string(),
            )
            .body(full_body(body))
            .expect("static parts form a valid response")
    }

    /// [`Self::into_response`] as a whole HTTP/1.1 response on the wire, closing the
    /// connection, for an answer written below hyper (a head hyper never finished reading);
    /// no body when `asked.method` is `HEAD`, as hyper would send it.
    pub fn into_wire(
        self,
        asked: &ErrorContext,
        compat: &Compat,
        started: std::time::Instant,
    ) -> Vec<u8> {
        let id = crate::http_util::request_id();
        let (status, format, body) = self.render(&id, asked, compat);
        let names = compat.headers.names();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("");
        let mut wire = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {}\r\n{}: {id}\r\nserver: {}\r\n\
             {}: {}\r\nconnection: close\r\ncontent-length: {}\r\ndate: {}\r\n\r\n",
            format.content_type(),
            names.request_id,
            names.server,
            names.response_latency,
            started.elapsed().as_millis(),
            body.len(),
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )
        .into_bytes();
        if asked.method != http::Method::HEAD {
            wire.extend_from_slice(body.as_bytes());
        }
        wire
    }

    /// The status, format and body of the answer.
    fn render(self, id: &str, asked: &ErrorContext, compat: &Compat) -> (u16, ErrorFormat, String) {
        let (status, message) = match self {
            Self::BadRequest(reason) => {
                tracing::debug!(request_id = %id, "refused a malformed request: {reason}");
                (400, "Bad request")
            }
            Self::Overloaded => (503, OVERLOADED),
            // The one line a guest failure logs (the wasm backtrace is at debug level, logged
            // where the failure was caught): the reason and the id the client was answered with.
            Self::GuestFailed(reason) => {
                tracing::warn!(request_id = %id, "guest failed the request: {reason}");
                (500, INTERNAL)
            }
            Self::UpgradeUnsupported => (501, UPGRADE_UNSUPPORTED),
            // nginx's 413 through Kong's error handler, as the guest words a declared length
            // over the route's `max_body_size`.
            Self::BodyTooLarge => (413, keygate_policy::errors::PAYLOAD_TOO_LARGE),
            // nginx's 494 through Kong's error handler: 400, Kong's (nginx's) words.
            Self::HeaderTooLarge => (400, HEADER_TOO_LARGE),
            Self::UriTooLong => (414, URI_TOO_LONG),
            // Kong's balancer words.
            Self::NoPeer => (503, "failure to get a peer from the ring-balancer"),
            // The 502 the guest words for a refused connection, made here without asking it.
            Self::OriginDown { timed_out: false } => (502, keygate_policy::errors::BAD_GATEWAY),
            Self::OriginDown { timed_out: true } => (504, keygate_policy::errors::TIMEOUT),
            Self::Internal(reason) => {
                tracing::error!(request_id = %id, "internal error: {reason}");
                (500, INTERNAL)
            }
        };
        let format = ErrorFormat::negotiate_with_fallback(
            asked.accept().as_deref(),
            asked.content_type().as_deref(),
            compat.error_default_type,
        );
        (status, format, format.body(message, id))
    }
}

/// Why an upgrade request is refused where the guest's `wasi:http` handler serves.
pub const UPGRADE_UNSUPPORTED: &str =
    "Connection upgrades (WebSocket) are not supported on the wasi:http path";

/// The message of the 400 for a header line or a head over its limits (nginx's and Kong's words).
pub const HEADER_TOO_LARGE: &str = "Request header or cookie too large";

/// The message of a 414 for a request target over its limit (Kong's error page words).
pub const URI_TOO_LONG: &str = "URI too long";

/// What the client asked for that shapes an error the host makes itself.
pub struct ErrorContext {
    pub method: http::Method,
    pub accept: Option<http::HeaderValue>,
    pub content_type: Option<http::HeaderValue>,
}

impl ErrorContext {
    pub fn accept(&self) -> Option<String> {
        text(self.accept.as_ref())
    }

    pub fn content_type(&self) -> Option<String> {
        text(self.content_type.as_ref())
    }
}

fn text(value: Option<&http::HeaderValue>) -> Option<String> {
    value.and_then(|v| v.to_str().ok().map(str::to_string))
}

/// A gateway-made JSON error in Kong's format (the admin listener's).
pub fn error_response(status: u16, message: &str) -> hyper::Response<ResponseBody> {
    let id = crate::http_util::request_id();
    let body = json_body(message, &id);
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, JSON_CONTENT_TYPE)
        .header("x-request-id", id)
        .header(http::header::SERVER, "keygate")
        .body(full_body(body))
        .expect("static parts form a valid response")
}

pub fn full_body(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into())
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync()
}
