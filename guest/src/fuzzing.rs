//! The bodies of the fuzz targets that reach the guest's parsers (`fuzz/`, cargo-fuzz), and of
//! their corpus replay in the workspace's tests (`tests/fuzz_corpus.rs`): one function per
//! target, so the two never drift apart. Native builds only; not part of any API.
//!
//! Each takes the fuzzer's bytes and splits them into the pieces of a request with [`Input`]:
//! a flag byte, then fields separated by NUL bytes (the last field takes the rest). Besides
//! "does not panic", each checks what must hold whatever the client sent.

use crate::body::{BodyKind, BodyValue};
use crate::credentials::{self, Credential, Extracted};
use crate::request::{RequestInfo, method_of};
use crate::router::{RouteTable, normalize_path};
use keygate_policy::{GuestConfig, KeyAuth, Service};
use std::sync::OnceLock;
use wasip2::http::types::Scheme;

/// The fuzzer's bytes as a flag byte and NUL-separated fields.
pub struct Input<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: Some(data) }
    }

    /// The first byte (0 when there is none).
    pub fn flags(&mut self) -> u8 {
        let rest = self.rest.unwrap_or_default();
        match rest.split_first() {
            Some((&flags, tail)) => {
                self.rest = Some(tail);
                flags
            }
            None => 0,
        }
    }

    /// The bytes up to the next NUL; `None` once the input is used up.
    pub fn field(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        match rest.iter().position(|&b| b == 0) {
            Some(at) => {
                self.rest = Some(&rest[at + 1..]);
                Some(&rest[..at])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }

    pub fn text(&mut self) -> Option<String> {
        self.field()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }

    /// Everything not read yet, NULs included.
    pub fn rest(&mut self) -> &'a [u8] {
        self.rest.take().unwrap_or_default()
    }
}

/// `name: value` lines; names lower-cased as the guest's request head has them.
fn headers(block: &[u8]) -> Vec<(String, Vec<u8>)> {
    block
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(at) => (&line[..at], &line[at + 1..]),
                None => (line, &b""[..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            (
                String::from_utf8_lossy(name).to_ascii_lowercase(),
                value.to_vec(),
            )
        })
        .collect()
}

/// A request as [`RequestInfo::from_head`] builds it, without the host calls (clock, random)
/// that only a component can make.
fn request(
    method: String,
    path_with_query: &str,
    authority: String,
    headers: Vec<(String, Vec<u8>)>,
) -> RequestInfo {
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (path_with_query.to_string(), None),
    };
    let method = method_of(method);
    RequestInfo {
        id: "0".repeat(32),
        method_name: crate::request::method_name(&method),
        method_is_head: matches!(method, wasip2::http::types::Method::Head),
        method,
        path: if path.is_empty() { "/".into() } else { path },
        query,
        scheme: Scheme::Http,
        host: crate::request::host_of(&authority),
        authority,
        headers,
        client_ip: None,
        local_port: None,
        started: 0,
    }
}

/// Credential extraction end to end: key names and sources from the flags, then headers, the
/// query string and a body (form, JSON or multipart, by its `Content-Type`).
///
/// Input: flags (bit 0 `key_in_header`, 1 `key_in_query`, 2 `key_in_body`, 3 no query
/// string), key names (comma-separated; empty: `apikey`), the query, header lines, the
/// `Content-Type`, then the body.
pub fn credentials(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.flags();
    let names = input.text().unwrap_or_default();
    let query = input.text();
    let header_block = input.field().unwrap_or_default();
    let content_type = input.text().unwrap_or_default();
    let body = input.rest();
    let key_auth = KeyAuth {
        key_names: if names.is_empty() {
            vec!["apikey".into()]
        } else {
            names.split(',').map(str::to_string).collect()
        },
        key_in_header: flags & 1 != 0,
        key_in_query: flags & 2 != 0,
        key_in_body: flags & 4 != 0,
        ..KeyAuth::default()
    };
    let mut info = request(
        "POST".into(),
        "/",
        "api.example.com".into(),
        headers(header_block),
    );
    info.query = if flags & 8 != 0 { None } else { query };
    let kind = BodyKind::of(&content_type);
    let mut lookup = |name: &str| {
        kind.as_ref()
            .map_or(BodyValue::Absent, |kind| kind.value(body, name))
    };
    let extracted = credentials::search(&key_auth, &info, Some(&mut lookup));
    let Extracted::Done(credential) = extracted else {
        panic!("a search with the body at hand asked for the body");
    };
    // The fast path (no body) agrees with the full search unless it had to stop for the body.
    match credentials::search(&key_auth, &info, None) {
        Extracted::Done(without_body) => assert_eq!(without_body, credential),
        Extracted::NeedsBody => assert!(key_auth.key_in_body),
    }
    if let Credential::Found { key, name } = &credential {
        assert!(!key.is_empty(), "an empty key is `Empty`, not `Found`");
        assert!(key_auth.key_names.iter().any(|known| known == name));
    }
    // `hide_credentials`: whatever the key was found under is gone from the body forwarded.
    if let (Some(name), Some(kind)) = (credential.name(), &kind) {
        for header in credentials::header_names(name) {
            assert_eq!(header, header.to_ascii_lowercase());
        }
        hidden_from_body(kind, body, name);
    }
}

/// The body forwarded with `hide_credentials` holds nothing under `name`.
fn hidden_from_body(kind: &BodyKind, body: &[u8], name: &str) {
    let forwarded = kind.remove(body, name);
    let forwarded = forwarded.as_deref().unwrap_or(body);
    assert_eq!(
        kind.value(forwarded, name),
        BodyValue::Absent,
        "{name:?} is still in the body forwarded with hide_credentials: {:?}",
        String::from_utf8_lossy(forwarded)
    );
}

/// Body parsing alone: the `Content-Type` (boundary included), the field name looked up, then
/// the body. Every field a body holds can be hidden.
pub fn body(data: &[u8]) {
    let mut input = Input::new(data);
    let content_type = input.text().unwrap_or_default();
    let name = input.text().unwrap_or_default();
    let body = input.rest();
    let Some(kind) = BodyKind::of(&content_type) else {
        return;
    };
    if let BodyKind::Multipart {
        boundary: Some(boundary),
    } = &kind
    {
        assert!(!boundary.is_empty());
    }
    let _ = kind.value(body, &name);
    hidden_from_body(&kind, body, &name);
}

/// Routes the fuzzed requests are matched against: every kind of matcher Kong has.
const ROUTES: &str = r#"[
  {"name":"api","url":"http://origin:9000/v1","routes":[
    {"name":"prefix","paths":["/api","/a/b/c"]},
    {"name":"kept","paths":["/keep"],"strip_path":false},
    {"name":"regex","paths":["~/users/\\d+/(orders|items)$"],"regex_priority":3},
    {"name":"methods","paths":["/m"],"methods":["POST","PATCH"]},
    {"name":"hosts","hosts":["*.example.com","example.*","exact.test:8443"]},
    {"name":"headers","paths":["/h"],"headers":{"x_version":["v1","~*^beta-\\d"]}}
  ]},
  {"name":"root","url":"http://root-origin","routes":[
    {"name":"catch-all","paths":["/"]},
    {"name":"slash-base","paths":["/s/"],"strip_path":true}
  ]},
  {"name":"trailing","url":"http://t:81/base/","routes":[
    {"name":"trailing","paths":["/t"]},
    {"name":"trailing-kept","paths":["~/tk"],"strip_path":false}
  ]}
]"#;

fn route_table() -> &'static (Vec<Service>, RouteTable) {
    static TABLE: OnceLock<(Vec<Service>, RouteTable)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let services: Vec<Service> = serde_json::from_str(ROUTES).expect("ROUTES parses");
        let table = RouteTable::compile(&services).expect("ROUTES compiles");
        (services, table)
    })
}

/// Path normalisation and routing. Input: flags (bit 0: the client connected to port 8443,
/// else the port in the authority is used; bit 1: the routes are the JSON in the first field
/// instead of the built-in table), the method, the authority, the path with its query, then
/// header lines.
pub fn route(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.flags();
    let own_table = if flags & 2 != 0 {
        let json = input.field().unwrap_or_default();
        let Ok(services) = serde_json::from_slice::<Vec<Service>>(json) else {
            return;
        };
        let Ok(table) = RouteTable::compile(&services) else {
            return;
        };
        Some((services, table))
    } else {
        None
    };
    let (services, table) = own_table.as_ref().unwrap_or_else(|| route_table());
    let method = input.text().unwrap_or_default();
    let authority = input.text().unwrap_or_default();
    let path_with_query = input.text().unwrap_or_default();
    let info = request(method, &path_with_query, authority, headers(input.rest()));

    let normalized = normalize_path(&info.path);
    assert!(normalized.starts_with('/'), "{normalized:?}");
    assert!(!normalized.contains("//"), "{normalized:?}");
    assert!(
        !normalized.split('/').any(|s| s == "." || s == ".."),
        "{normalized:?}"
    );
    assert_eq!(normalize_path(&normalized), normalized, "not idempotent");

    let listen_port = (flags & 1 != 0).then_some(8443);
    let Some(found) = table.find(services, &info, listen_port) else {
        return;
    };
    assert!(
        found.upstream_path.starts_with('/'),
        "{:?}",
        found.upstream_path
    );
    assert!(
        normalized.starts_with(&found.stripped_prefix),
        "{:?} is not a prefix of {normalized:?}",
        found.stripped_prefix
    );
    if !found.route.strip_path {
        assert!(found.stripped_prefix.is_empty());
    }
}

/// The auth API's answer to a valid key, and the URL a key is sent to. Input: the key, then
/// the body of a 2xx answer.
pub fn auth_answer(data: &[u8]) {
    let mut input = Input::new(data);
    let key = input.text().unwrap_or_default();
    let body = input.rest();

    const CACHE_TTL_MS: u64 = 300_000;
    let (_consumer, ttl) = crate::auth::valid_answer(body, CACHE_TTL_MS);
    assert!(ttl <= CACHE_TTL_MS, "an answer's ttl outlived cache_ttl");

    // A key cannot steer the call elsewhere: it lands, encoded, where `{key}` is.
    let url = crate::auth::auth_url("http://auth.internal:9000/check?k={key}&again={key}", &key);
    let (https, authority, path) = crate::auth::split_url(&url).expect("an http:// URL");
    assert!(!https);
    assert_eq!(authority, "auth.internal:9000");
    let encoded = path
        .strip_prefix("/check?k=")
        .and_then(|rest| rest.split_once("&again="))
        .map(|(first, second)| {
            assert_eq!(first, second);
            first
        })
        .unwrap_or_else(|| panic!("{key:?} escaped its place in {url:?}"));
    assert!(
        !encoded.contains(['&', '#', '?', '/', '=', '+', ' ']),
        "{encoded:?}"
    );
    assert_eq!(crate::percent::percent_decode(encoded), key);
}

/// What a configuration the host accepted looks like to the guest: the JSON it is handed
/// must parse and compile (routes, regexes, consumers), or every request would be a 500.
pub fn load_guest_config(json: &str) -> Result<(), String> {
    let config = GuestConfig::from_json(json).map_err(|err| err.to_string())?;
    crate::config::Policy::from_config(config).map(drop)
}
