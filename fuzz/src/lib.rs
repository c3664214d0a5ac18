//! The fuzz targets' bodies, one function per target: `fuzz_targets/<name>.rs` calls it under
//! libFuzzer (nightly, `cargo fuzz run <name>`), and `tests/fuzz_corpus.rs` includes this file
//! to feed it every input of `fuzz/corpus/<name>/` on the pinned stable toolchain, so a crash
//! found once stays fixed. The guest's parsers are reached through `keygate_guest::fuzzing`
//! (crate-private code), the rest through the public APIs of `keygate` and `keygate_policy`.
//!
//! Inputs are bytes; a target that needs several pieces splits them with
//! [`keygate_guest::fuzzing::Input`]: a flag byte, then NUL-separated fields.

use keygate_guest::fuzzing::Input;
use keygate_policy::errors::ErrorFormat;

/// A fuzz target's body: the fuzzer's bytes in, a panic when a property breaks.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/corpus/<name>/` and `cargo fuzz run <name>` call it.
pub const TARGETS: &[(&str, Target)] = &[
    ("credentials", credentials),
    ("body", body),
    ("route", route),
    ("accept", accept),
    ("auth_answer", auth_answer),
    ("config", config),
    ("plan", plan),
    ("framing", framing),
];

/// Credential extraction: headers, query string, form, JSON and multipart bodies, and
/// `hide_credentials` taking the key out of the body.
pub fn credentials(data: &[u8]) {
    keygate_guest::fuzzing::credentials(data);
}

/// Form, JSON and multipart bodies alone: field lookup and removal.
pub fn body(data: &[u8]) {
    keygate_guest::fuzzing::body(data);
}

/// Path normalisation and route matching (prefix, regex, hosts, methods, headers,
/// `strip_path` joining).
pub fn route(data: &[u8]) {
    keygate_guest::fuzzing::route(data);
}

/// The auth API's answer to a valid key, and the URL a key is sent to.
pub fn auth_answer(data: &[u8]) {
    keygate_guest::fuzzing::auth_answer(data);
}

/// `Accept` (and `Content-Type`) negotiation of the gateway's own error bodies. Input: a flag
/// byte (the configured default type, and whether `Accept` is absent), `Accept`, then
/// `Content-Type`.
pub fn accept(data: &[u8]) {
    const FORMATS: [ErrorFormat; 4] = [
        ErrorFormat::Json,
        ErrorFormat::Html,
        ErrorFormat::Xml,
        ErrorFormat::Plain,
    ];
    let mut input = Input::new(data);
    let flags = input.flags();
    let accept = input.text();
    let content_type = input.text();
    let default = FORMATS[usize::from(flags & 3)];
    let accept = if flags & 4 != 0 { None } else { accept };
    let format =
        ErrorFormat::negotiate_with_fallback(accept.as_deref(), content_type.as_deref(), default);
    if accept.is_none() && content_type.is_none() {
        assert_eq!(format, default, "no header: the configured default");
    }
    if let Some(accept) = &accept {
        assert_eq!(format, ErrorFormat::negotiate(accept), "Accept decides");
    }
    let body = format.body(keygate_policy::errors::NO_KEY, &"0".repeat(32));
    assert!(body.contains(keygate_policy::errors::NO_KEY));
    assert!(format.content_type().ends_with("; charset=utf-8"));
}

/// The configuration file, as the host reads it (`keygate::config::parse`): TOML, serde's
/// checks, then the cross-field validation. What the host accepts, the guest must accept too
/// (its JSON copy parses and compiles, regexes included), or every request would be a 500.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = keygate::config::parse(text, None) else {
        return;
    };
    let json = config.guest_config().to_json();
    if let Err(reason) = keygate_guest::fuzzing::load_guest_config(&json) {
        panic!("the host accepted a config its guest refuses: {reason}\n{text}\n{json}");
    }
    let again = keygate_policy::GuestConfig::from_json(&json)
        .expect("checked above")
        .to_json();
    assert_eq!(
        again, json,
        "the guest config does not survive its JSON round trip"
    );
}

/// The configuration the fuzzed forward plans are checked against: an http origin with a
/// path, one on the default port, and an https one (which native forwarding refuses).
const PLAN_CONFIG: &str = r#"
[[services]]
name = "api"
url = "http://127.0.0.1:9000/v1"
[[services.routes]]
paths = ["/api"]

[[services]]
name = "plain"
url = "http://origin.internal"

[[services]]
name = "tls"
url = "https://secure.internal:8443"
"#;

fn plan_config() -> &'static keygate_policy::Config {
    static CONFIG: std::sync::OnceLock<keygate_policy::Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| keygate_policy::Config::from_toml(PLAN_CONFIG).expect("PLAN_CONFIG"))
}

/// The fast path's decision applier: a forward plan from an untrusted guest, checked by
/// `keygate::proxy::plan::validate` before anything leaves the gateway.
///
/// Input: flags (bits 0-1: a configured service and its origin, or the fields as given; bit 2:
/// a via; bit 3: a server; bits 4-5: latency headers), then fields: service, scheme,
/// authority, path with query, request headers to append (`name: value` lines), request
/// headers to remove (lines), response headers to append, response headers to remove, via,
/// server, upstream-latency header, proxy-latency header.
pub fn plan(data: &[u8]) {
    use keygate::runtime::component::policy_api::{
        ForwardPlan, HeaderEdits, Labels, ResponseEdits, Timeouts,
    };
    let config = plan_config();
    let mut input = Input::new(data);
    let flags = input.flags();
    let mut service = input.text().unwrap_or_default();
    let mut scheme = input.text().unwrap_or_default();
    let mut authority = input.text().unwrap_or_default();
    if let Some(known) = config.services.get(usize::from(flags & 3)) {
        service = known.name.clone();
        scheme = known.url.scheme().to_string();
        authority = known.url.authority.clone();
    }
    let path_with_query = input.text().unwrap_or_default();
    let lines = |block: Option<&[u8]>| -> Vec<Vec<u8>> {
        block
            .unwrap_or_default()
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let name_list = |block: Option<&[u8]>| -> Vec<String> {
        lines(block)
            .into_iter()
            .map(|line| String::from_utf8_lossy(&line).into_owned())
            .collect()
    };
    // A field block as the guest sends it, lines and all: the host's reader is fuzzed too.
    let request_headers = HeaderEdits {
        append: input.field().unwrap_or_default().to_vec(),
        remove: name_list(input.field()),
    };
    let response_headers = HeaderEdits {
        append: input.field().unwrap_or_default().to_vec(),
        remove: name_list(input.field()),
    };
    let mut optional = |bit: u8| {
        let text = input.text();
        (flags & bit != 0).then(|| text.unwrap_or_default())
    };
    let via = optional(4);
    let server_if_absent = optional(8);
    let upstream_latency_header = optional(16);
    let proxy_latency_header = optional(32);
    let plan = ForwardPlan {
        service: service.clone(),
        scheme: scheme.clone(),
        authority: authority.clone(),
        path_with_query: path_with_query.clone(),
        request_headers,
        response: ResponseEdits {
            headers: response_headers,
            via,
            server_if_absent,
            upstream_latency_header,
            proxy_latency_header,
        },
        timeouts: Timeouts {
            connect_ms: 1000,
            first_byte_ms: 1000,
            between_bytes_ms: 1000,
        },
        max_request_body: (flags & 64 != 0).then_some(1024),
        request_id: "0".repeat(32),
        labels: Labels {
            route: None,
            service: None,
            consumer: None,
            key_lookup: None,
            auth_call_ms: None,
            rate_limit: None,
        },
    };
    let Ok(valid) = keygate::proxy::plan::validate(plan, config) else {
        return;
    };
    // Accepted: it goes exactly where the configuration says, as written, over the service's
    // scheme (an https service is never reached in clear).
    let origin = config
        .services
        .iter()
        .find(|s| s.name == service)
        .expect("accepted plans name a configured service");
    let service_scheme = if origin.url.https { "https" } else { "http" };
    assert_eq!(
        (scheme.as_str(), authority.as_str()),
        (service_scheme, origin.url.authority.as_str())
    );
    assert_eq!(valid.uri.scheme_str(), Some(service_scheme));
    assert_eq!(
        valid.uri.authority().map(|a| a.as_str()),
        Some(origin.url.authority.as_str()),
        "the plan's URI leaves the service's origin"
    );
    // `http` drops a fragment (`#...`): what the origin gets is the rest, as planned.
    let without_fragment = path_with_query.split('#').next().unwrap_or_default();
    assert_eq!(
        valid.uri.path_and_query().map(|p| p.as_str()),
        Some(without_fragment),
        "the path is not sent as planned"
    );
    for (name, _) in valid
        .request
        .append
        .iter()
        .chain(&valid.response.headers.append)
    {
        assert!(
            !keygate::proxy::plan::is_hop_by_hop(name),
            "{name} is the host's to set"
        );
    }
}

/// The HTTP/1 stream follower (request smuggling shapes, the whole head's limits), on the
/// raw bytes a client sends. Layout: the first byte is the piece size (1–256) the bytes are
/// fed in, the rest is the wire. How the bytes arrive must change nothing: the verdicts,
/// whether the connection is still followed and where a head over the limits is cut are the
/// same as when the wire arrives whole; a cut is within the wire, and within the limits.
pub fn framing(data: &[u8]) {
    let Some((&piece, wire)) = data.split_first() else {
        return;
    };
    let whole = keygate::server::fuzzing::follow(wire, wire.len().max(1));
    let pieces = keygate::server::fuzzing::follow(wire, usize::from(piece) + 1);
    assert_eq!(
        whole, pieces,
        "the follower depends on how the bytes arrive"
    );
    if let Some((cut, _)) = whole.2 {
        assert!(cut <= wire.len(), "cut past the wire");
    }
}
