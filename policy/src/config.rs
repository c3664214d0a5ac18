//! `keygate.toml`: the schema, its defaults (Kong's where Kong has one) and its validation.

use crate::{ByteSize, Compat, Duration, IpNet, Plugins, RoutePath, ServiceUrl};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration the gateway refuses, with the field (and for TOML, the line) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or does not fit the schema; the message names line and field.
    #[error("{0}")]
    Parse(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The whole `keygate.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub guest: Guest,
    #[serde(default)]
    pub key_auth: KeyAuth,
    pub auth_api: Option<AuthApi>,
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Kong's Upstreams: a service whose URL host names one is balanced across its targets.
    #[serde(default)]
    pub upstreams: Vec<crate::upstream::Upstream>,
    #[serde(default)]
    pub proxy: Proxy,
    #[serde(default)]
    pub compat: Compat,
    /// `[[plugins]]`, Kong's plugin model (see [`crate::plugins`]).
    #[serde(default)]
    pub plugins: Plugins,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub log: Log,
}

/// `[log]`: the access log (one line per request) and the process log's format (host only).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// One line per request: `off` (default), `text` or `json`.
    pub access: AccessLog,
    /// Where access lines go (appended; reopened on SIGUSR1, as logrotate expects); stdout
    /// when unset. `keygate serve --access-log PATH` overrides it.
    pub access_file: Option<PathBuf>,
    /// Keep the query string in the access log's `path` (values of the `key_auth.key_names`
    /// parameters replaced by `REDACTED`). Off by default: keys travel there.
    pub access_query: bool,
    /// The process log (stderr): `text` (default) or `json`, so one collector reads both.
    /// `keygate --log-format` overrides it.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLog {
    #[default]
    Off,
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[cluster]`: what the nodes of a fleet share beyond their own memory (host only).
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// `redis://[user[:password]@]host[:port][/database]`: a key revoked through one node's
    /// admin API (`DELETE /admin/keys/...`) is dropped by every node subscribed to it, within
    /// a second, instead of living on until its `cache_ttl`. Only key fingerprints travel.
    /// Read at startup: changing it takes a restart.
    pub redis: Option<String>,
}

/// The URL may hold a password.
impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis", &self.redis.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the gateway treats what clients say about themselves (Kong's `trusted_ips`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-*` and `X-Real-IP` headers are
    /// passed on instead of replaced. None by default: every client's values are replaced.
    pub trusted_ips: Vec<IpNet>,
}

/// Listeners and connection handling (host only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    /// Metrics and status; off when absent.
    pub admin_listen: Option<SocketAddr>,
    /// How long a shutdown waits for in-flight requests before closing them.
    pub drain_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Bearer token for the admin listener; required when it binds a non-loopback address.
    pub admin_token: Option<String>,
    /// Threads serving requests; absent = one per CPU. Fewer than the CPUs is faster when a
    /// load generator or the origin shares the machine (fewer cross-thread wake-ups).
    pub workers: Option<usize>,
    /// The TLS listener (HTTP/1.1 and HTTP/2 by ALPN); none when absent. Changing the address
    /// takes a restart; the certificate and key are re-read by every reload.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) the TLS listener presents; relative to the config
    /// file's directory.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`; relative to the config file's
    /// directory.
    pub tls_key: Option<PathBuf>,
    /// HTTP/2 with prior knowledge (h2c) on the plain listener. Off by default: a plain
    /// listener usually sits behind something that speaks HTTP/1.1 to it.
    pub h2c: bool,
    /// Longest a client may take to send a request head, from the connection's start (or, on
    /// a kept-alive connection, from the head's first byte) to its end; past it the connection
    /// is closed without an answer (nginx's `client_header_timeout`, which answers nothing
    /// either).
    pub header_read_timeout: Duration,
    /// Longest a kept-alive connection may wait for the next request's first byte after the
    /// previous response (nginx's `keepalive_timeout`); then it is closed. A request in
    /// progress (a slow upload, download or origin) is never cut by it.
    pub keepalive_timeout: Duration,
    /// Client connections one IP address may hold at once; more are closed as they are
    /// accepted, before anything is read. 0 = no limit.
    pub max_connections_per_ip: usize,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            drain_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            admin_token: None,
            workers: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            h2c: false,
            header_read_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            max_connections_per_ip: 0,
        }
    }
}

/// The policy component and the limits each of its instances runs under (host only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Guest {
    /// A `.wasm` component; absent = the component built into the keygate binary.
    pub component: Option<PathBuf>,
    /// Longest stretch the guest may compute without calling the host before its request is
    /// ended with an error: catches runaway loops without limiting slow uploads or downloads.
    pub busy_timeout: Duration,
    /// Linear memory one guest instance may grow to, in MiB.
    pub memory_limit_mb: u32,
    /// Guest instances alive at once (the pooling allocator's size); more requests wait.
    pub max_instances: u32,
    /// Requests one guest instance serves, one after another, before it is replaced by a
    /// fresh one (1 = a fresh instance per request). A trap always retires the instance.
    pub instance_reuse: u32,
    /// Keep compiled components on disk so restarts and swaps back are fast.
    pub precompiled_cache: bool,
    /// Where; absent = `$XDG_CACHE_HOME/keygate` or `~/.cache/keygate`. Must be owned by the
    /// user keygate runs as and writable by nobody else, or the cache is not used.
    pub cache_dir: Option<PathBuf>,
    /// Which export of the component serves requests on the keygate host.
    pub entry: GuestEntry,
    /// Decisions each request thread keeps for reuse (0 = none): with a component that
    /// exports `keygate:gateway/reusable-policy`, a request identical to one decided before
    /// (same method, authority, path and query, headers, client address) is forwarded on the
    /// earlier decision without calling the guest, for as long as the guest allows and the key
    /// verdicts it rests on stay fresh. Heads over 4 KiB are never kept, so a thread holds at
    /// most about `reuse_decisions` × 5 KiB.
    pub reuse_decisions: u32,
}

/// `[guest] entry`: `auto` takes the fast path (the guest decides from the head, the host
/// forwards natively) when the component exports `keygate:gateway/policy`; `wasi-http`
/// always runs the component's `wasi:http/incoming-handler`, as other hosts do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestEntry {
    #[default]
    Auto,
    WasiHttp,
}

impl Default for Guest {
    fn default() -> Self {
        Self {
            entry: GuestEntry::Auto,
            component: None,
            busy_timeout: Duration::from_secs(1),
            memory_limit_mb: 64,
            max_instances: 1000,
            instance_reuse: 1000,
            precompiled_cache: true,
            cache_dir: None,
            reuse_decisions: 4096,
        }
    }
}

/// Kong's key-auth plugin configuration, with Kong's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyAuth {
    pub key_names: Vec<String>,
    pub key_in_header: bool,
    pub key_in_query: bool,
    pub key_in_body: bool,
    pub hide_credentials: bool,
    pub run_on_preflight: bool,
    pub realm: Option<String>,
    /// Username or id of a `[[consumers]]` entry: requests without a valid key are forwarded
    /// as this consumer (with `X-Anonymous-Consumer: true`) instead of getting a 401.
    pub anonymous: Option<String>,
    /// The largest request body `key_in_body` reads (Kong's `client_body_buffer_size`, 8k):
    /// a larger body holds no key and is forwarded untouched. A route's `max_body_size`
    /// applies on its own: a body over it is refused whether it fits this buffer or not.
    pub body_buffer_size: ByteSize,
}

impl Default for KeyAuth {
    fn default() -> Self {
        Self {
            key_names: vec!["apikey".to_string()],
            key_in_header: true,
            key_in_query: true,
            key_in_body: false,
            hide_credentials: false,
            run_on_preflight: true,
            realm: None,
            anonymous: None,
            body_buffer_size: ByteSize(8 * 1024),
        }
    }
}

/// The provider's API that says whether a key is valid (contract in the README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthApi {
    /// URL template; `{key}` is replaced by the percent-encoded key.
    pub url: String,
    #[serde(default = "AuthApi::default_timeout")]
    pub timeout: Duration,
    /// How long a valid verdict is trusted.
    #[serde(default = "AuthApi::default_cache_ttl")]
    pub cache_ttl: Duration,
    /// How long an invalid verdict is trusted.
    #[serde(default = "AuthApi::default_negative_ttl")]
    pub negative_ttl: Duration,
    /// How long past its TTL a verdict may still be served while the auth API is down.
    #[serde(default)]
    pub stale_if_error: Option<Duration>,
    /// Verdicts the host keeps (least recently used are dropped first). Host only.
    #[serde(default = "AuthApi::default_cache_capacity")]
    pub cache_capacity: usize,
    /// Auth calls in flight at once; a miss beyond it gets an immediate 503 instead of
    /// queueing (a flood of random keys must not pile up on the auth API). Host only.
    #[serde(default = "AuthApi::default_max_in_flight")]
    pub max_in_flight: usize,
    /// An `https://` URL's certificate is checked (Kong's `tls_verify`); `false` accepts any,
    /// for a test auth API with a self-signed one. Host only.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tls_verify: bool,
    /// PEM certificates trusted for an `https://` URL instead of the system's roots (a
    /// private CA). Host only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl AuthApi {
    fn default_timeout() -> Duration {
        Duration::from_secs(2)
    }
    fn default_cache_ttl() -> Duration {
        Duration::from_secs(300)
    }
    fn default_negative_ttl() -> Duration {
        Duration::from_secs(30)
    }
    fn default_cache_capacity() -> usize {
        1_000_000
    }
    fn default_max_in_flight() -> usize {
        256
    }

    /// The path of the URL up to `{key}` or the query: every auth call's path starts with it.
    pub fn url_path_prefix(&self) -> String {
        let after_scheme = self.url.split_once("://").map_or("", |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
        let end = path.find(['{', '?']).unwrap_or(path.len());
        path[..end].to_string()
    }

    /// The parsed URL with `{key}` replaced by a placeholder, for validation and allow-lists.
    pub fn origin(&self) -> Result<ServiceUrl, String> {
        let (base, _) = self.url.split_once('?').unwrap_or((&self.url, ""));
        ServiceUrl::try_from(base.replace("{key}", "key"))
    }
}

/// A consumer with keys written in the config: answered without asking the auth API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub id: Option<String>,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    #[serde(default)]
    pub keys: Vec<ConsumerKey>,
}

/// A consumer's key: `"the-key"`, or `{ key = "the-key", id = "…" }` to keep the credential id
/// a Kong key-auth credential had (sent upstream as `X-Credential-Identifier`). Without an id,
/// the key's id is Kong DB-less's UUIDv5 of it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConsumerKey {
    Plain(String),
    WithId(KeyWithId),
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyWithId {
    pub key: String,
    pub id: String,
}

impl ConsumerKey {
    pub fn key(&self) -> &str {
        match self {
            Self::Plain(key) => key,
            Self::WithId(with_id) => &with_id.key,
        }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Plain(_) => None,
            Self::WithId(with_id) => Some(&with_id.id),
        }
    }
}

/// Keys never show in a config's debug output.
impl std::fmt::Debug for ConsumerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = crate::fingerprint::redact(self.key());
        match self.id() {
            None => write!(f, "{key:?}"),
            Some(id) => write!(f, "{{ key: {key:?}, id: {id:?} }}"),
        }
    }
}

impl PartialEq<&str> for ConsumerKey {
    fn eq(&self, other: &&str) -> bool {
        self.key() == *other
    }
}

impl From<&str> for ConsumerKey {
    fn from(key: &str) -> Self {
        Self::Plain(key.to_string())
    }
}

/// An origin API (Kong's Service) and the routes that lead to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub url: ServiceUrl,
    #[serde(default = "Service::default_timeout")]
    pub connect_timeout: Duration,
    #[serde(default = "Service::default_timeout")]
    pub read_timeout: Duration,
    #[serde(default = "Service::default_timeout")]
    pub write_timeout: Duration,
    /// An `https://` origin's certificate is checked (Kong's `tls_verify`); `false` accepts
    /// any certificate, for an origin with a self-signed one.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub tls_verify: bool,
    /// PEM certificates trusted for an `https://` origin instead of the system's roots (a
    /// private CA; Kong's `ca_certificates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl Service {
    /// Kong's 60 000 ms.
    fn default_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

/// Which requests go to a service (Kong's Route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Option<String>,
    #[serde(default)]
    pub paths: Vec<RoutePath>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Header name → accepted values (any one); every named header must match. Names are
    /// case-insensitive with `_` ≡ `-`; values case-insensitive, or a case-insensitive regex
    /// when written `~*regex`.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Orders regex-path routes of otherwise equal priority (higher first), as Kong's.
    #[serde(default)]
    pub regex_priority: i64,
    #[serde(default = "yes")]
    pub strip_path: bool,
    #[serde(default)]
    pub preserve_host: bool,
    /// `false` forwards without a key: for routes being migrated that were public before.
    #[serde(default = "yes")]
    pub auth: bool,
    /// The largest request body the route forwards (nginx's `client_max_body_size`, per
    /// route): `8192`, `"8k"`, `"1m"`. A declared `Content-Length` over it is answered 413
    /// before anything is forwarded; a body without one is cut off (the origin's request
    /// aborted) once it grows past it. Absent = no limit (Kong's default, nginx's `0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<ByteSize>,
}

fn yes() -> bool {
    true
}

/// Defaults left out of the serialized config, so adding such a field changes no revision.
fn is_true(value: &bool) -> bool {
    *value
}

impl Config {
    /// The consumer `key_auth.anonymous` names: by id (explicit or Kong's derived one), else
    /// by username, as Kong looks it up.
    pub fn anonymous_consumer(&self, name: &str) -> Option<&Consumer> {
        self.find_consumer(name)
    }

    /// A `[[consumers]]` entry named by id (explicit or Kong's derived one), else by username:
    /// Kong's order for a reference to a consumer.
    pub fn find_consumer(&self, name: &str) -> Option<&Consumer> {
        self.consumers
            .iter()
            .find(|c| c.effective_id().as_deref() == Some(name))
            .or_else(|| {
                self.consumers
                    .iter()
                    .find(|c| c.username.as_deref() == Some(name))
            })
    }
}

impl Consumer {
    /// The id origins see in `X-Consumer-ID`: the configured one, else Kong DB-less's UUIDv5
    /// of the username.
    pub fn effective_id(&self) -> Option<String> {
        self.id.clone().or_else(|| {
            self.username
                .as_deref()
                .map(crate::fingerprint::consumer_uuid)
        })
    }
}

#[cfg(all(test, feature = "toml"))]
mod tests;
