//! The policy model that the keygate host and guest share.
//!
//! The host reads `keygate.toml` into [`Config`], validates it (with errors that name the field
//! and, for TOML, the line) and hands the guest a [`GuestConfig`] as JSON in one environment
//! variable: the only configuration channel that works the same on keygate, `wasmtime serve`
//! and Spin. Both sides use these types, so the two can never disagree on the format.

pub mod annotation;
pub mod compat;
pub mod config;
pub mod duration;
pub mod errors;
pub mod fingerprint;
pub mod guest_config;
pub mod net;
pub mod plugins;
pub mod route_path;
pub mod service_url;
pub mod size;
pub mod upstream;
mod validate;

pub use compat::{Compat, HeaderStyle};
pub use config::*;
pub use duration::Duration;
pub use guest_config::*;
pub use net::IpNet;
pub use plugins::{Plugin, PluginConfig, PluginKind, Plugins};
pub use route_path::RoutePath;
pub use service_url::ServiceUrl;
pub use size::ByteSize;

/// The environment variable that carries the [`GuestConfig`] JSON to the guest.
pub const GUEST_CONFIG_ENV: &str = "KEYGATE_CONFIG";

/// Headers only the keygate host and its guest exchange; the host strips them at the edge.
pub mod internal_headers {
    /// On incoming requests: the client's IP, set by the host (a client's copy is replaced).
    pub const CLIENT_ADDR: &str = "keygate-client-addr";
    /// On incoming requests on the `wasi:http` path: the gateway port the client connected to
    /// (the TLS listener's or the plain one's), for `X-Forwarded-Port`. Read only when
    /// `client_addr_header` is [`CLIENT_ADDR`] (the keygate host, which replaces a client's
    /// copy); the fast path has it in the request head.
    pub const LOCAL_PORT: &str = "keygate-local-port";
    /// On guest responses: the [`crate::annotation::Annotation`] of the answer (route,
    /// consumer, who answered, …) for the host's metrics and access log.
    pub const LABELS: &str = "keygate-labels";
    /// On outgoing requests: `auth` or the service name (metrics label).
    pub const CALL: &str = "keygate-call";
    /// On guest answers: the first characters of the key's fingerprint, for the access log
    /// (a plain value: it travels with every keyed request, on the fast path too).
    pub const KEY: &str = "keygate-key";
    /// What a client must never be sent, whoever set it (an origin, a guest).
    pub const ALL: [&str; 5] = [CLIENT_ADDR, LOCAL_PORT, LABELS, CALL, KEY];
    /// Every internal header's name starts with it.
    pub const PREFIX: &str = "keygate-";
}
