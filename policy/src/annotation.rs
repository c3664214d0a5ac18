//! What the guest tells the keygate host about an answer it made on the portable path (the
//! `wasi:http` handler), in the internal `keygate-labels` header the host strips: the fast
//! path's `labels`, plus what the host cannot see from outside the guest there (who answered,
//! the origin's latency). Other hosts never get it (`host_annotations` is off for them).

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Annotation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The consumer's username, else its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_lookup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The origin's response is the answer (else the guest made it).
    pub from_origin: bool,
    /// Milliseconds from sending to the origin until its response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<u64>,
    /// Milliseconds the gateway spent before sending to the origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_ms: Option<u64>,
}

impl Annotation {
    /// The header value (JSON: names and consumers may hold any character).
    pub fn to_header(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    /// `None` for a value that is not one (a forged header is stripped before this is read,
    /// but the host never trusts it further than a label).
    pub fn from_header(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }
}
