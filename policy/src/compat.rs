//! `[compat]`: how the gateway names itself to clients and origins. By default keygate uses
//! its own header names; `headers = "kong"` uses Kong 3.9's, for clients, origins and
//! dashboards that read them.

use crate::errors::ErrorFormat;
use serde::{Deserialize, Serialize};

/// The Kong release whose names and `Server`/`Via` values `headers = "kong"` reproduces.
pub const KONG_VERSION: &str = "3.9.1";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Compat {
    /// Which names the headers the gateway adds carry.
    pub headers: HeaderStyle,
    /// Format of the errors Kong makes in its nginx error handler (502, 503, 504, 500) when
    /// the request has neither `Accept` nor `Content-Type`. Kong's default is `text/plain`;
    /// keygate's is JSON, like every other error it makes.
    pub error_default_type: ErrorFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderStyle {
    #[default]
    Keygate,
    Kong,
}

/// The headers the gateway adds, by name, and its own `Server` / `Via` tokens.
#[derive(Debug, PartialEq, Eq)]
pub struct GatewayHeaders {
    /// Sent to the origin and to the client: the request's 32-hex id.
    pub request_id: &'static str,
    /// Proxied responses: ms from sending to the origin until its response head arrived.
    pub upstream_latency: &'static str,
    /// Proxied responses: ms the gateway spent before sending to the origin.
    pub proxy_latency: &'static str,
    /// Gateway-made responses: ms from the request's arrival to the answer.
    pub response_latency: &'static str,
    /// `Server` on gateway-made responses (and proxied ones whose origin sent none).
    pub server: &'static str,
    /// Appended to `Via`, both ways.
    pub via: &'static str,
}

const KEYGATE: GatewayHeaders = GatewayHeaders {
    request_id: "x-request-id",
    upstream_latency: "x-keygate-upstream-latency",
    proxy_latency: "x-keygate-proxy-latency",
    response_latency: "x-keygate-response-latency",
    server: "keygate",
    via: "1.1 keygate",
};

const KONG: GatewayHeaders = GatewayHeaders {
    request_id: "x-kong-request-id",
    upstream_latency: "x-kong-upstream-latency",
    proxy_latency: "x-kong-proxy-latency",
    response_latency: "x-kong-response-latency",
    server: "kong/3.9.1",
    via: "1.1 kong/3.9.1",
};

impl HeaderStyle {
    pub fn names(self) -> &'static GatewayHeaders {
        match self {
            Self::Keygate => &KEYGATE,
            Self::Kong => &KONG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_names_carry_the_pinned_version() {
        assert!(HeaderStyle::Kong.names().server.ends_with(KONG_VERSION));
        assert!(HeaderStyle::Kong.names().via.ends_with(KONG_VERSION));
        let compat: Compat =
            serde_json::from_str(r#"{"headers":"kong","error_default_type":"text/plain"}"#)
                .unwrap();
        assert_eq!(compat.headers, HeaderStyle::Kong);
        assert_eq!(compat.error_default_type, ErrorFormat::Plain);
    }
}
