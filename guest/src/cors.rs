//! Kong 3.9's `cors` plugin (`kong/plugins/cors/handler.lua`, PRIORITY 2000, so before
//! key-auth): a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
//! answered by the gateway, 200 with an empty body, without a key; every other response of
//! the route (the origin's, and the gateway's own 401/403/429/termination replies) gets
//! `Access-Control-Allow-Origin`, `-Allow-Credentials` and `-Expose-Headers`.
//!
//! Kong's header operations are kept as a list of [`Op`]s (set, clear, add), applied as they
//! are to a reply the gateway makes, or turned into the forward plan's response edits for a
//! forwarded request.

use crate::bindings::exports::keygate::gateway::policy::{HeaderEdits, Reply};
use crate::config::Policy;
use crate::errors::exit_reply_for;
use crate::request::RequestInfo;
use crate::router::Match;
use keygate_policy::plugins::cors::{is_regex_origin, origin_regex};
use keygate_policy::plugins::{Cors, PluginKind};
use regex_lite::Regex;
use std::collections::HashMap;
use std::rc::Rc;
use wasip2::http::types::Method;

pub const ALLOW_ORIGIN: &str = "access-control-allow-origin";
pub const ALLOW_CREDENTIALS: &str = "access-control-allow-credentials";
pub const ALLOW_HEADERS: &str = "access-control-allow-headers";
pub const ALLOW_METHODS: &str = "access-control-allow-methods";
pub const MAX_AGE: &str = "access-control-max-age";
pub const ALLOW_PRIVATE_NETWORK: &str = "access-control-allow-private-network";
pub const EXPOSE_HEADERS: &str = "access-control-expose-headers";

/// One of Kong's response header calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `kong.response.set_header`: replaces every value.
    Set(&'static str, String),
    /// `kong.response.clear_header`.
    Clear(&'static str),
    /// `kong.response.add_header`: kept beside the others.
    Add(&'static str, String),
}

/// What cors needs from the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorsRequest<'a> {
    pub is_options: bool,
    pub origin: Option<&'a str>,
    pub request_method: Option<&'a str>,
    pub request_headers: Option<&'a str>,
    pub request_private_network: Option<&'a str>,
}

impl CorsRequest<'_> {
    /// Kong's test: `OPTIONS` with both `Origin` and `Access-Control-Request-Method` (an empty
    /// value counts: Lua's empty string is true).
    pub fn is_preflight(&self) -> bool {
        self.is_options && self.origin.is_some() && self.request_method.is_some()
    }
}

/// What the cors step makes of a request.
pub enum Access {
    /// A preflight the gateway answers itself.
    Answer(Box<Reply>),
    /// Go on; these header operations apply to the response (none when no instance applies or
    /// a preflight goes on to the origin, which Kong leaves alone).
    Proceed(ResponseHeaders),
}

/// The cors header operations for a request's response.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResponseHeaders(pub Vec<Op>);

impl ResponseHeaders {
    /// A reply the gateway makes (401, 403, 429, a termination): Kong's header filter runs on
    /// it too.
    pub fn decorate(&self, mut reply: Reply) -> Reply {
        apply(&mut reply.headers, &self.0);
        reply
    }

    /// The forward plan's response edits: every name set or cleared is removed from the
    /// origin's response, then the resulting values appended (`Vary` is only added to).
    pub fn edit(&self, edits: &mut HeaderEdits) {
        let (remove, append) = as_edits(&self.0);
        for name in remove {
            if !edits.remove.iter().any(|r| r.eq_ignore_ascii_case(&name)) {
                edits.remove.push(name);
            }
        }
        edits.append.extend(append);
    }
}

/// The cors step, before key-auth: the instance that applies to the matched route (cors
/// cannot be scoped to a consumer), then Kong's `access` handler.
pub fn access(policy: &'static Policy, info: &RequestInfo, matched: &Match) -> Access {
    let plugins = &policy.config.plugins;
    if plugins.is_empty() {
        return Access::Proceed(ResponseHeaders::default());
    }
    let scope = plugins.scope(
        matched.route.name.as_deref(),
        Some(&matched.service.name),
        None,
    );
    let Some(config) = plugins
        .applicable(PluginKind::Cors, &scope)
        .and_then(|found| found.plugin.cors())
    else {
        return Access::Proceed(ResponseHeaders::default());
    };
    let origin = info.header("origin");
    let request_method = info.header("access-control-request-method");
    let request_headers = info.header("access-control-request-headers");
    let private_network = info.header("access-control-request-private-network");
    let request = CorsRequest {
        is_options: matches!(info.method, Method::Options),
        origin: origin.as_deref(),
        request_method: request_method.as_deref(),
        request_headers: request_headers.as_deref(),
        request_private_network: private_network.as_deref(),
    };
    let origins = compiled(config);
    match decide(config, &origins, &request) {
        Step::Preflight(ops) => {
            let mut headers = Vec::new();
            apply(&mut headers, &ops);
            let headers = headers
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                .collect();
            Access::Answer(Box::new(exit_reply_for(
                200,
                None,
                headers,
                Vec::new(),
                info,
                &policy.config.compat,
            )))
        }
        Step::Continue => Access::Proceed(ResponseHeaders::default()),
        Step::Response(ops) => Access::Proceed(ResponseHeaders(ops)),
    }
}

/// Kong's decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer the preflight with these headers.
    Preflight(Vec<Op>),
    /// A preflight with `preflight_continue`: proxied, no headers added.
    Continue,
    /// Not a preflight: these operations on the response.
    Response(Vec<Op>),
}

pub fn decide(config: &Cors, origins: &[Origin], request: &CorsRequest) -> Step {
    if !request.is_preflight() {
        return Step::Response(response_ops(config, origins, request.origin));
    }
    if config.preflight_continue {
        return Step::Continue;
    }
    let mut ops = Vec::new();
    let allow_all = configure_origin(config, origins, false, request.origin, &mut ops);
    configure_credentials(config, allow_all, false, request.origin, &mut ops);
    if !config.headers.is_empty() {
        ops.push(Op::Set(ALLOW_HEADERS, config.headers.join(",")));
    } else if let Some(requested) = request.request_headers {
        ops.push(Op::Set(ALLOW_HEADERS, requested.to_string()));
    } else {
        ops.push(Op::Clear(ALLOW_HEADERS));
    }
    ops.push(Op::Set(ALLOW_METHODS, config.methods.join(",")));
    if let Some(max_age) = config.max_age {
        ops.push(Op::Set(MAX_AGE, crate::rate_limit::lua_number(max_age)));
    }
    if config.private_network && request.request_private_network == Some("true") {
        ops.push(Op::Set(ALLOW_PRIVATE_NETWORK, "true".into()));
    }
    Step::Preflight(ops)
}

/// Kong's `header_filter` (3.9: whether or not the request has an `Origin`).
pub fn response_ops(config: &Cors, origins: &[Origin], origin: Option<&str>) -> Vec<Op> {
    let mut ops = Vec::new();
    let allow_all = configure_origin(config, origins, true, origin, &mut ops);
    configure_credentials(config, allow_all, true, origin, &mut ops);
    if !config.exposed_headers.is_empty() {
        ops.push(Op::Set(EXPOSE_HEADERS, config.exposed_headers.join(",")));
    }
    ops
}

fn vary(header_filter: bool, ops: &mut Vec<Op>) {
    // Kong adds to the origin's Vary on responses, and sets it on its preflight answer.
    ops.push(if header_filter {
        Op::Add("vary", "Origin".into())
    } else {
        Op::Set("vary", "Origin".into())
    });
}

/// Kong's `configure_origin`; true when every origin is allowed (`*`).
fn configure_origin(
    config: &Cors,
    origins: &[Origin],
    header_filter: bool,
    request_origin: Option<&str>,
    ops: &mut Vec<Op>,
) -> bool {
    let entries = &config.origins;
    if entries.is_empty() || (entries.len() == 1 && entries[0] == "*") {
        ops.push(Op::Set(ALLOW_ORIGIN, "*".into()));
        return true;
    }
    vary(header_filter, ops);
    if entries.len() == 1 && !entries[0].is_empty() && !is_regex_origin(&entries[0]) {
        ops.push(Op::Set(ALLOW_ORIGIN, entries[0].clone()));
        return false;
    }
    if let Some(request_origin) = request_origin {
        let normalized = normalize_origin(request_origin);
        for origin in origins {
            let found = match origin {
                // Kong returns as soon as it reaches a `*` entry while reading the list, so
                // entries before it are never compared.
                Origin::Any => {
                    ops.push(Op::Set(ALLOW_ORIGIN, "*".into()));
                    return true;
                }
                Origin::Literal(domain) => normalized.domain == *domain,
                Origin::Regex { regex, by_host } => regex.is_match(if *by_host {
                    &normalized.host
                } else {
                    &normalized.domain
                }),
            };
            if found {
                ops.push(Op::Set(ALLOW_ORIGIN, normalized.domain));
                return false;
            }
        }
    }
    ops.push(Op::Clear(ALLOW_ORIGIN));
    false
}

/// Kong's `configure_credentials`: with `*`, the request's own origin instead (browsers
/// refuse credentials with `*`).
fn configure_credentials(
    config: &Cors,
    allow_all: bool,
    header_filter: bool,
    request_origin: Option<&str>,
    ops: &mut Vec<Op>,
) {
    if !config.credentials {
        return;
    }
    if !allow_all {
        ops.push(Op::Set(ALLOW_CREDENTIALS, "true".into()));
        return;
    }
    if let Some(origin) = request_origin {
        vary(header_filter, ops);
        ops.push(Op::Set(ALLOW_ORIGIN, origin.to_string()));
        ops.push(Op::Set(ALLOW_CREDENTIALS, "true".into()));
    }
}

/// An `origins` entry, as Kong caches it.
#[derive(Debug)]
pub enum Origin {
    Any,
    /// A normalized origin, compared by equality.
    Literal(String),
    /// Matched from the first character, against the host only when the entry has no `:`.
    Regex {
        regex: Regex,
        by_host: bool,
    },
}

pub fn compile(entries: &[String]) -> Vec<Origin> {
    entries
        .iter()
        .map(|entry| {
            if entry == "*" {
                Origin::Any
            } else if is_regex_origin(entry) {
                match Regex::new(&origin_regex(entry)) {
                    Ok(regex) => Origin::Regex {
                        regex,
                        by_host: !entry.contains(':'),
                    },
                    // Validation refuses these; an unvalidated one never matches (Kong logs
                    // the error and goes on).
                    Err(_) => Origin::Literal(String::from('\u{0}')),
                }
            } else {
                Origin::Literal(normalize_origin(entry).domain)
            }
        })
        .collect()
}

/// An instance's compiled origins, kept for the life of the instance (the policy is never
/// freed, so its address names it).
fn compiled(config: &'static Cors) -> Rc<Vec<Origin>> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<usize, Rc<Vec<Origin>>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    let key = std::ptr::from_ref(config) as usize;
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| Rc::new(compile(&config.origins)))
            .clone()
    })
}

/// `scheme://host[:port]` and the host of an origin, as Kong's `normalize_origin` (LuaSocket's
/// `url.parse`) makes them: the default port of http/https dropped, IPv6 brackets too, no
/// change of case; without a host, the text itself.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized {
    pub domain: String,
    pub host: String,
}

pub fn normalize_origin(origin: &str) -> Normalized {
    let whole = || Normalized {
        domain: origin.to_string(),
        host: origin.to_string(),
    };
    let mut rest = origin;
    // `^([%w][%w%+%-%.]*)%:`
    let mut scheme = None;
    if let Some(colon) = rest.find(':') {
        let candidate = &rest[..colon];
        let mut chars = candidate.chars();
        if chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            scheme = Some(candidate);
            rest = &rest[colon + 1..];
        }
    }
    // `^//([^/]*)`
    let Some(after) = rest.strip_prefix("//") else {
        return whole();
    };
    let mut authority = &after[..after.find('/').unwrap_or(after.len())];
    if let Some(at) = authority.find('@') {
        authority = &authority[at + 1..];
    }
    // `:([^:%]]*)$`
    let mut port = None;
    if let Some(colon) = authority.rfind(':')
        && !authority[colon + 1..].contains(']')
    {
        port = Some(&authority[colon + 1..]);
        authority = &authority[..colon];
    }
    if authority.is_empty() {
        return whole();
    }
    let host = authority
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .filter(|h| !h.is_empty())
        .unwrap_or(authority);
    if matches!(
        (scheme, port),
        (Some("http"), Some("80")) | (Some("https"), Some("443"))
    ) {
        port = None;
    }
    let mut domain = String::new();
    if let Some(scheme) = scheme {
        domain.push_str(scheme);
        domain.push_str("://");
    }
    domain.push_str(host);
    if let Some(port) = port {
        domain.push(':');
        domain.push_str(port);
    }
    Normalized {
        domain,
        host: host.to_string(),
    }
}

/// Kong's calls on a header list, in order.
pub fn apply(headers: &mut Vec<(String, Vec<u8>)>, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Set(name, value) => {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                headers.push((name.to_string(), value.clone().into_bytes()));
            }
            Op::Clear(name) => headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            Op::Add(name, value) => headers.push((name.to_string(), value.clone().into_bytes())),
        }
    }
}

/// The names the origin's copies are removed of, and what is appended after.
fn as_edits(ops: &[Op]) -> (Vec<String>, Vec<(String, Vec<u8>)>) {
    let mut remove: Vec<String> = Vec::new();
    for op in ops {
        if let Op::Set(name, _) | Op::Clear(name) = op
            && !remove.iter().any(|r| r == name)
        {
            remove.push(name.to_string());
        }
    }
    let mut append = Vec::new();
    apply(&mut append, ops);
    (remove, append)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors {
            origins: origins.iter().map(|o| o.to_string()).collect(),
            ..Cors::default()
        }
    }

    fn headers(ops: &[Op]) -> Vec<(String, String)> {
        let mut list = Vec::new();
        apply(&mut list, ops);
        list.into_iter()
            .map(|(n, v)| (n, String::from_utf8(v).unwrap()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn preflight<'a>(origin: &'a str) -> CorsRequest<'a> {
        CorsRequest {
            is_options: true,
            origin: Some(origin),
            request_method: Some("POST"),
            ..CorsRequest::default()
        }
    }

    fn answer(config: &Cors, request: &CorsRequest) -> Vec<(String, String)> {
        match decide(config, &compile(&config.origins), request) {
            Step::Preflight(ops) => headers(&ops),
            other => panic!("not answered: {other:?}"),
        }
    }

    fn response(config: &Cors, origin: Option<&str>) -> Vec<(String, String)> {
        headers(&response_ops(config, &compile(&config.origins), origin))
    }

    #[test]
    fn a_preflight_needs_options_origin_and_a_requested_method() {
        assert!(preflight("http://a").is_preflight());
        let mut request = preflight("http://a");
        request.request_method = None;
        assert!(!request.is_preflight());
        request.request_method = Some("");
        assert!(request.is_preflight());
        request.is_options = false;
        assert!(!request.is_preflight());
        let config = cors(&[]);
        assert!(matches!(decide(&config, &[], &request), Step::Response(_)));
    }

    #[test]
    fn kongs_default_preflight() {
        let config = cors(&[]);
        assert_eq!(
            answer(&config, &preflight("http://a.com")),
            pairs(&[
                (ALLOW_ORIGIN, "*"),
                (
                    ALLOW_METHODS,
                    "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
                ),
            ])
        );
        // Requested headers are echoed unless `headers` is set.
        let mut request = preflight("http://a.com");
        request.request_headers = Some("X-Api-Key, Content-Type");
        assert_eq!(
            answer(&config, &request)[1],
            (
                ALLOW_HEADERS.to_string(),
                "X-Api-Key, Content-Type".to_string()
            )
        );
        let config = Cors {
            headers: vec!["x-api-key".into(), "content-type".into()],
            methods: vec!["GET".into(), "POST".into()],
            max_age: Some(3600.0),
            private_network: true,
            ..cors(&["https://app.example.com"])
        };
        request.origin = Some("https://evil.example.net");
        request.request_private_network = Some("true");
        assert_eq!(
            answer(&config, &request),
            pairs(&[
                ("vary", "Origin"),
                (ALLOW_ORIGIN, "https://app.example.com"),
                (ALLOW_HEADERS, "x-api-key,content-type"),
                (ALLOW_METHODS, "GET,POST"),
                (MAX_AGE, "3600"),
                (ALLOW_PRIVATE_NETWORK, "true"),
            ])
        );
    }

    #[test]
    fn preflight_continue_adds_nothing() {
        let config = Cors {
            preflight_continue: true,
            ..cors(&[])
        };
        assert_eq!(decide(&config, &[], &preflight("http://a")), Step::Continue);
    }

    #[test]
    fn origins_are_matched_by_kongs_rules() {
        let config = cors(&["http://a.com", "https://b.com:8443", "(.*\\.)?c\\.org"]);
        let acao = |origin: &str| {
            response(&config, Some(origin))
                .into_iter()
                .find(|(n, _)| n == ALLOW_ORIGIN)
                .map(|(_, v)| v)
        };
        // Literal entries: normalized equality (default ports dropped, path ignored).
        assert_eq!(acao("http://a.com"), Some("http://a.com".into()));
        assert_eq!(acao("http://a.com:80"), Some("http://a.com".into()));
        assert_eq!(acao("http://a.com:8080"), None);
        assert_eq!(acao("https://a.com"), None);
        assert_eq!(
            acao("https://b.com:8443/x"),
            Some("https://b.com:8443".into())
        );
        // A regex without ":" matches the host, anchored at both ends.
        assert_eq!(acao("https://x.c.org"), Some("https://x.c.org".into()));
        assert_eq!(acao("http://c.org:9000"), Some("http://c.org:9000".into()));
        assert_eq!(acao("https://c.org.evil.com"), None);
        assert_eq!(acao("https://evilc.org"), None);
        // Vary: Origin is added whenever the origins are not just `*`.
        assert_eq!(
            response(&config, Some("https://nope")),
            pairs(&[("vary", "Origin")])
        );
        // A regex with ":" matches the whole normalized origin.
        let config = cors(&["https://.*\\.d\\.io:\\d+", "http://z"]);
        let found = response(&config, Some("https://api.d.io:444"));
        assert_eq!(found[1].1, "https://api.d.io:444");
        assert_eq!(response(&config, Some("https://api.d.io")).len(), 1);
    }

    #[test]
    fn a_single_literal_origin_is_sent_whatever_the_request() {
        let config = cors(&["https://app.example.com"]);
        assert_eq!(
            response(&config, Some("https://other.example.com")),
            pairs(&[
                ("vary", "Origin"),
                (ALLOW_ORIGIN, "https://app.example.com")
            ])
        );
        assert_eq!(
            response(&config, None),
            pairs(&[
                ("vary", "Origin"),
                (ALLOW_ORIGIN, "https://app.example.com")
            ])
        );
        // A single regex is matched.
        let config = cors(&["https://.*\\.example\\.com"]);
        assert_eq!(response(&config, None), pairs(&[("vary", "Origin")]));
    }

    #[test]
    fn a_star_entry_among_others_allows_every_origin() {
        let config = cors(&["http://a.com", "*"]);
        assert_eq!(
            response(&config, Some("http://zzz")),
            pairs(&[("vary", "Origin"), (ALLOW_ORIGIN, "*")])
        );
        // Without an Origin the list is not read: cleared.
        assert_eq!(response(&config, None), pairs(&[("vary", "Origin")]));
    }

    #[test]
    fn credentials() {
        let config = Cors {
            credentials: true,
            exposed_headers: vec![
                "x-ratelimit-remaining-minute".into(),
                "x-kong-request-id".into(),
            ],
            ..cors(&[])
        };
        // With `*`, the request's own origin (raw) is sent instead.
        assert_eq!(
            response(&config, Some("HTTP://App.example.com:80")),
            pairs(&[
                ("vary", "Origin"),
                (ALLOW_ORIGIN, "HTTP://App.example.com:80"),
                (ALLOW_CREDENTIALS, "true"),
                (
                    EXPOSE_HEADERS,
                    "x-ratelimit-remaining-minute,x-kong-request-id"
                ),
            ])
        );
        assert_eq!(
            response(&config, None),
            pairs(&[
                (ALLOW_ORIGIN, "*"),
                (
                    EXPOSE_HEADERS,
                    "x-ratelimit-remaining-minute,x-kong-request-id"
                ),
            ])
        );
        let config = Cors {
            credentials: true,
            ..cors(&["http://a.com", "http://b.com"])
        };
        assert_eq!(
            response(&config, Some("http://b.com")),
            pairs(&[
                ("vary", "Origin"),
                (ALLOW_ORIGIN, "http://b.com"),
                (ALLOW_CREDENTIALS, "true"),
            ])
        );
    }

    #[test]
    fn response_edits_replace_the_origins_copies_and_add_to_vary() {
        let config = cors(&["http://a.com", "http://b.com"]);
        let ops = response_ops(&config, &compile(&config.origins), Some("http://a.com"));
        let mut edits = HeaderEdits {
            remove: vec!["x-kong-request-id".into()],
            append: Vec::new(),
        };
        ResponseHeaders(ops).edit(&mut edits);
        assert_eq!(edits.remove, vec!["x-kong-request-id", ALLOW_ORIGIN]);
        assert_eq!(
            edits.append,
            vec![
                ("vary".to_string(), b"Origin".to_vec()),
                (ALLOW_ORIGIN.to_string(), b"http://a.com".to_vec()),
            ]
        );
        // No match: the origin's own header is removed, nothing appended for it.
        let ops = response_ops(&config, &compile(&config.origins), Some("http://c.com"));
        let (remove, append) = as_edits(&ops);
        assert_eq!(remove, vec![ALLOW_ORIGIN]);
        assert_eq!(append, vec![("vary".to_string(), b"Origin".to_vec())]);
    }

    #[test]
    fn decorating_a_reply_sets_over_existing_values() {
        let mut list = vec![
            (ALLOW_ORIGIN.to_string(), b"x".to_vec()),
            ("vary".to_string(), b"Accept".to_vec()),
        ];
        apply(
            &mut list,
            &[
                Op::Add("vary", "Origin".into()),
                Op::Set(ALLOW_ORIGIN, "*".into()),
            ],
        );
        assert_eq!(
            list,
            vec![
                ("vary".to_string(), b"Accept".to_vec()),
                ("vary".to_string(), b"Origin".to_vec()),
                (ALLOW_ORIGIN.to_string(), b"*".to_vec()),
            ]
        );
    }

    #[test]
    fn origins_normalize_like_luasocket() {
        let n = |o: &str| normalize_origin(o);
        assert_eq!(n("https://a.com:443").domain, "https://a.com");
        assert_eq!(n("http://a.com:443").domain, "http://a.com:443");
        assert_eq!(n("http://user@a.com:81/p?q").domain, "http://a.com:81");
        assert_eq!(n("http://a.com/").host, "a.com");
        assert_eq!(
            n("http://[::1]:8080"),
            Normalized {
                domain: "http://::1:8080".into(),
                host: "::1".into()
            }
        );
        assert_eq!(n("null").domain, "null");
        assert_eq!(n("a.com").host, "a.com");
        assert_eq!(n("Http://A.com").domain, "Http://A.com");
    }
}
