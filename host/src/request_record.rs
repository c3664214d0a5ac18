//! What one answered request was: made when its response has been sent (or the client went
//! away), and read by the metrics and the access log. It holds no key: at most the first
//! characters of the key's SHA-256 fingerprint.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A label a record shares with the plan it was forwarded on, and with every other request
/// forwarded on that plan: a counted reference, not a copy per request.
pub type Label = Arc<str>;

/// Who made the response the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The origin (a forwarded request, whatever its status).
    Origin,
    /// The gateway itself: 401, 404, 429, a 502 for an origin that failed, …
    Gateway,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::Gateway => "gateway",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When the request arrived.
    pub at: SystemTime,
    pub request_id: Option<Label>,
    pub client_ip: IpAddr,
    pub method: http::Method,
    /// As the client sent it; the access log strips or redacts its query.
    pub uri: http::Uri,
    pub route: Option<Label>,
    pub service: Option<Label>,
    /// The consumer's username, else its id.
    pub consumer: Option<Label>,
    pub status: u16,
    pub source: Source,
    /// Request line, headers and body, as received (Kong's `$request_length`).
    pub bytes_in: u64,
    /// Status line, headers and body, as sent (Kong's `$bytes_sent`).
    pub bytes_out: u64,
    /// From arrival to the response's last byte (or the client leaving).
    pub total: Duration,
    /// From sending to the origin to its response head, when the origin answered.
    pub upstream: Option<Duration>,
    /// The gateway's own time: until the request went to the origin, or until its own answer
    /// was ready (Kong's `kong_latency`).
    pub gateway: Duration,
    /// The auth API call this request made, if any.
    pub auth_ms: Option<u64>,
    /// Where the key's verdict came from: `fresh`, `stale`, `miss`, `static`, `none`.
    pub key_lookup: Option<Label>,
    /// The first characters of the key's fingerprint, to follow one key through the log.
    pub key: Option<String>,
}
