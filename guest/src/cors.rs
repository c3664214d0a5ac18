//! Kong 3.9's `cors` plugin (`kong/plugins/cors/handler.lua`, PRIORITY 2000, so before
//! key-auth): a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
//! answered by the gateway, 200 with an empty body, without a key; every other response of
//! the route (the origin's, and the gateway's own 401/403/429/termination replies) gets
//! `Access-Control-Allow-Origin`, `-Allow-Credentials` and `-Expose-Headers`.
//!
//! Kong's header operations are kept as a list of [`Op`]s (set, clear, add), applied as they
//! are to a reply the gateway makes, or turned into the forward plan's response edits for a
//! forwarded request.

use crate::bindings::exports::keygate::gateway::block_policy::{HeaderEdits, Reply};
use crate::config::Policy;
use crate::errors::exit_reply_for;
use crate::field_block;
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
        // No cors instance applies (or a preflight goes on): nothing to edit.
        if self.0.is_empty() {
            return;
        }
        let (remove, append) = as_edits(&self.0);
        for name in remove {
            if !edits.remove.iter().any(|r| r.eq_ignore_ascii_case(&name)) {
                edits.remove.push(name);
            }
        }
        edits.append.extend_from_slice(&append);
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
            let headers = field_block::headers(&headers)
                .map(|(name, value)| {
                    (
                        String::from_utf8_lossy(name).into_owned(),
                        String::from_utf8_lossy(value).into_owned(),
                    )
                })
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

/// Kong's calls on a header list (a field block), in order.
pub fn apply(headers: &mut Vec<u8>, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Set(name, value) => {
                field_block::remove(headers, name);
                field_block::push(headers, name, value.as_bytes());
            }
            Op::Clear(name) => field_block::remove(headers, name),
            Op::Add(name, value) => field_block::push(headers, name, value.as_bytes()),
        }
    }
}

/// The names the origin's copies are removed of, and what is appended after (a field block).
fn as_edits(ops: &[Op]) -> (Vec<String>, Vec<u8>) {
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
mod tests;
