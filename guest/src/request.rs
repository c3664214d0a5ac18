//! What the guest knows about the client's request, read once from the incoming request.

use crate::bindings::exports::keygate::gateway::policy::RequestHead;
use keygate_policy::internal_headers;
use wasip2::http::types::{IncomingRequest, Method, Scheme};

pub struct RequestInfo {
    /// 32 lowercase hex characters, as Kong's `$kong_request_id`.
    pub id: String,
    pub method: Method,
    pub method_name: String,
    pub method_is_head: bool,
    /// Path as sent, without the query.
    pub path: String,
    /// Everything after the first `?`, verbatim; `Some("")` for a trailing bare `?`.
    pub query: Option<String>,
    pub scheme: Scheme,
    /// `host[:port]` the client addressed.
    pub authority: String,
    /// The host the client addressed, lower case, without the port: read once here, since
    /// both the router and the forward plan want it.
    pub host: String,
    /// Lower-case names, in arrival order, repeats kept.
    pub headers: Vec<(String, Vec<u8>)>,
    pub client_ip: Option<String>,
    /// The gateway port the client connected to, when the host says (the fast path).
    pub local_port: Option<u16>,
    /// When the guest got the request (monotonic-clock nanoseconds), for the latency headers.
    pub started: u64,
}

impl RequestInfo {
    /// The portable path: read from `wasi:http`'s incoming request. The client's IP comes from
    /// `client_addr_header` when the host sets one (keygate's `keygate-client-addr`, Spin's
    /// `spin-client-addr`).
    pub fn from_incoming(request: &IncomingRequest, client_addr_header: Option<&str>) -> Self {
        let headers = request.headers().entries();
        let client_ip = client_addr_header.and_then(|name| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .map(client_ip_of)
        });
        // Only the keygate host sets it (and replaces a client's copy).
        let local_port = (client_addr_header == Some(internal_headers::CLIENT_ADDR))
            .then(|| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(internal_headers::LOCAL_PORT))
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
            })
            .flatten();
        let mut info = Self::new(
            request.method(),
            request.path_with_query(),
            request.scheme().unwrap_or(Scheme::Http),
            request.authority().unwrap_or_default(),
            headers,
            client_ip,
        );
        info.local_port = local_port;
        info
    }

    /// The fast path: the head the host lowered once. Header names are lower-cased here too,
    /// since the host is not trusted to have done it.
    pub fn from_head(head: RequestHead) -> Self {
        let mut headers = head.headers;
        for (name, _) in &mut headers {
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                name.make_ascii_lowercase();
            }
        }
        let scheme = if head.scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let mut info = Self::new(
            method_of(head.method),
            Some(head.path_with_query),
            scheme,
            head.authority,
            headers,
            head.client_ip,
        );
        info.local_port = Some(head.local_port);
        info
    }

    fn new(
        method: Method,
        path_with_query: Option<String>,
        scheme: Scheme,
        authority: String,
        headers: Vec<(String, Vec<u8>)>,
        client_ip: Option<String>,
    ) -> Self {
        let method_name = method_name(&method);
        let (path, query) = match path_with_query {
            Some(pq) => match pq.split_once('?') {
                Some((path, query)) => (path.to_string(), Some(query.to_string())),
                None => (pq, None),
            },
            None => ("/".to_string(), None),
        };
        Self {
            started: wasip2::clocks::monotonic_clock::now(),
            id: request_id(),
            method_is_head: matches!(method, Method::Head),
            method,
            method_name,
            path: if path.is_empty() {
                "/".to_string()
            } else {
                path
            },
            query,
            scheme,
            host: host_of(&authority),
            authority,
            headers,
            client_ip,
            local_port: None,
        }
    }

    /// The first value of a header (lower-case name), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The port the client connected to: the host's word, else the configured listen port.
    pub fn listen_port(&self, configured: Option<u16>) -> Option<u16> {
        self.local_port.or(configured)
    }

    /// Milliseconds since the request arrived.
    pub fn elapsed_ms(&self) -> u64 {
        millis_between(self.started, wasip2::clocks::monotonic_clock::now())
    }

    pub fn scheme_name(&self) -> &str {
        match &self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Other(other) => other,
        }
    }

    /// The port the client addressed: explicit in the authority, else the scheme's default.
    pub fn port(&self) -> u16 {
        split_host_port(&self.authority)
            .1
            .unwrap_or(if matches!(self.scheme, Scheme::Https) {
                443
            } else {
                80
            })
    }
}

/// The IP of a client address header: keygate sends a bare IP, Spin's `spin-client-addr` is
/// `ip:port` (`[v6]:port` for IPv6).
fn client_ip_of(value: &str) -> String {
    let value = value.trim();
    match value.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => value.to_string(),
    }
}

/// The host of an authority, lower case, without the port.
pub fn host_of(authority: &str) -> String {
    split_host_port(authority).0.to_ascii_lowercase()
}

pub fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    // `[v6]:port`, `[v6]`, `name:port`, `name`
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority, None),
        };
    }
    // The last `:` found bytewise (it is ASCII), which for an authority this short costs less
    // than a char search; and the port parsed once.
    let Some(colon) = authority.bytes().rposition(|b| b == b':') else {
        return (authority, None);
    };
    match authority[colon + 1..].parse::<u16>() {
        Ok(port) => (&authority[..colon], Some(port)),
        Err(_) => (authority, None),
    }
}

/// Whole milliseconds from one monotonic-clock reading to a later one.
pub fn millis_between(from: u64, to: u64) -> u64 {
    to.saturating_sub(from) / 1_000_000
}

/// A method as `wasi:http` names it, from its text.
pub fn method_of(name: String) -> Method {
    match name.as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => Method::Other(name),
    }
}

pub fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => return other.clone(),
    }
    .to_string()
}

/// 128 random bits as hex, from a generator seeded once per instance by the host's CSPRNG:
/// a host call per request saved. The id must be unique, not secret.
fn request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<Option<u64>> = const { Cell::new(None) };
    }
    STATE.with(|state| {
        let mut ids = SplitMix64(
            state
                .get()
                .unwrap_or_else(wasip2::random::random::get_random_u64),
        );
        let id = ids.next_id();
        state.set(Some(ids.0));
        id
    })
}

/// SplitMix64 (Steele, Lea, Flood 2014): a full-period 64-bit generator, two outputs per id.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_id(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        hex(&bytes)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_characters_and_differ() {
        let mut generator = SplitMix64(42);
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| generator.next_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }));
    }

    #[test]
    fn client_address_headers_lose_their_port() {
        assert_eq!(client_ip_of("127.0.0.1:54321"), "127.0.0.1");
        assert_eq!(client_ip_of("[::1]:80"), "::1");
        assert_eq!(client_ip_of("10.1.2.3"), "10.1.2.3");
    }

    #[test]
    fn authority_splits_into_host_and_port() {
        assert_eq!(
            split_host_port("api.example.com:8080"),
            ("api.example.com", Some(8080))
        );
        assert_eq!(
            split_host_port("api.example.com"),
            ("api.example.com", None)
        );
        assert_eq!(split_host_port("[::1]:80"), ("::1", Some(80)));
    }
}
