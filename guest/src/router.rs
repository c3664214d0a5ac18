//! The route table: which service a request goes to and the path the origin sees, with Kong's
//! matching rules, priority order and `strip_path` joining (v0).

use crate::request::{RequestInfo, split_host_port};
use keygate_policy::{RoutePath, Service};
use regex_lite::Regex;

pub struct RouteTable {
    /// Sorted by Kong's priority, highest first; config order breaks ties (Kong: oldest first).
    entries: Vec<Entry>,
}

/// One route path (Kong splits a route with several paths so each competes on its own).
struct Entry {
    service: usize,
    route: usize,
    path: Option<PathMatcher>,
    methods: Vec<String>,
    hosts: Vec<HostMatcher>,
    priority: (u8, bool, bool, usize),
}

enum PathMatcher {
    Prefix(String),
    Regex(Regex),
}

enum HostMatcher {
    Exact(String, Option<u16>),
    /// `*.example.com` → `.example.com`
    Suffix(String, Option<u16>),
    /// `example.*` → `example.`
    Prefix(String, Option<u16>),
}

/// A request matched to a route.
pub struct Match<'p> {
    pub service: &'p Service,
    pub route: &'p keygate_policy::Route,
    /// The path the origin receives (before the query).
    pub upstream_path: String,
    /// The part of the path that `strip_path` removed ("" when nothing was stripped).
    pub stripped_prefix: String,
}

impl RouteTable {
    pub fn compile(services: &[Service]) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (s, service) in services.iter().enumerate() {
            for (r, route) in service.routes.iter().enumerate() {
                let hosts: Vec<HostMatcher> =
                    route.hosts.iter().map(|h| HostMatcher::parse(h)).collect();
                let categories = u8::from(!route.paths.is_empty())
                    + u8::from(!route.methods.is_empty())
                    + u8::from(!route.hosts.is_empty());
                let plain_hosts =
                    !hosts.is_empty() && hosts.iter().all(|h| matches!(h, HostMatcher::Exact(..)));
                let paths: Vec<Option<PathMatcher>> = if route.paths.is_empty() {
                    vec![None]
                } else {
                    route
                        .paths
                        .iter()
                        .map(|p| PathMatcher::compile(p).map(Some))
                        .collect::<Result<_, _>>()?
                };
                for path in paths {
                    let (is_regex, prefix_len) = match &path {
                        Some(PathMatcher::Regex(_)) => (true, 0),
                        Some(PathMatcher::Prefix(p)) => (false, p.len()),
                        None => (false, 0),
                    };
                    entries.push(Entry {
                        service: s,
                        route: r,
                        path,
                        methods: route.methods.clone(),
                        hosts: hosts.iter().map(HostMatcher::clone_matcher).collect(),
                        priority: (categories, plain_hosts, is_regex, prefix_len),
                    });
                }
            }
        }
        // Stable: equal priorities keep config order.
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.priority));
        Ok(Self { entries })
    }

    pub fn find<'p>(&self, services: &'p [Service], request: &RequestInfo) -> Option<Match<'p>> {
        let path = normalize_path(&request.path);
        let host = request.host();
        let port = request.port();
        for entry in &self.entries {
            if !entry.methods.is_empty() && !entry.methods.contains(&request.method_name) {
                continue;
            }
            if !entry.hosts.is_empty() && !entry.hosts.iter().any(|h| h.matches(&host, port)) {
                continue;
            }
            let matched_len = match &entry.path {
                None => 0,
                Some(PathMatcher::Prefix(prefix)) if path.starts_with(prefix.as_str()) => {
                    prefix.len()
                }
                Some(PathMatcher::Regex(regex)) => match regex.find(&path) {
                    Some(m) if m.start() == 0 => m.end(),
                    _ => continue,
                },
                Some(PathMatcher::Prefix(_)) => continue,
            };
            let service = &services[entry.service];
            let route = &service.routes[entry.route];
            let (stripped_prefix, postfix) = if route.strip_path {
                path.split_at(matched_len)
            } else {
                ("", path.as_str())
            };
            return Some(Match {
                upstream_path: upstream_path(
                    route.strip_path,
                    postfix,
                    &path,
                    service.url.path.as_deref().unwrap_or("/"),
                ),
                stripped_prefix: stripped_prefix.to_string(),
                service,
                route,
            });
        }
        None
    }
}

impl PathMatcher {
    fn compile(path: &RoutePath) -> Result<Self, String> {
        Ok(match path {
            RoutePath::Prefix(prefix) => Self::Prefix(prefix.clone()),
            RoutePath::Regex(pattern) => Self::Regex(
                Regex::new(&RoutePath::anchored_regex(pattern))
                    .map_err(|err| format!("route path ~{pattern}: {err}"))?,
            ),
        })
    }
}

impl HostMatcher {
    fn parse(host: &str) -> Self {
        let (name, port) = split_host_port(host);
        let name = name.to_ascii_lowercase();
        if let Some(suffix) = name.strip_prefix('*') {
            Self::Suffix(suffix.to_string(), port)
        } else if let Some(prefix) = name.strip_suffix('*') {
            Self::Prefix(prefix.to_string(), port)
        } else {
            Self::Exact(name, port)
        }
    }

    fn clone_matcher(&self) -> Self {
        match self {
            Self::Exact(n, p) => Self::Exact(n.clone(), *p),
            Self::Suffix(n, p) => Self::Suffix(n.clone(), *p),
            Self::Prefix(n, p) => Self::Prefix(n.clone(), *p),
        }
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        let (name_ok, want_port) = match self {
            Self::Exact(name, p) => (host == name, p),
            Self::Suffix(suffix, p) => (
                host.len() > suffix.len() && host.ends_with(suffix.as_str()),
                p,
            ),
            Self::Prefix(prefix, p) => (
                host.len() > prefix.len() && host.starts_with(prefix.as_str()),
                p,
            ),
        };
        name_ok && want_port.is_none_or(|p| p == port)
    }
}

/// Kong's `get_upstream_uri_v0`: join the service path and what is left of the request path.
fn upstream_path(strip_path: bool, postfix: &str, request_path: &str, base: &str) -> String {
    if !strip_path {
        return if base == "/" {
            request_path.to_string()
        } else if base.ends_with('/') {
            format!("{base}{}", &request_path[1..])
        } else {
            format!("{base}{request_path}")
        };
    }
    if postfix.is_empty() {
        return if base == "/" {
            "/".to_string()
        } else if request_path.ends_with('/') {
            format!("{}/", base.trim_end_matches('/'))
        } else {
            base.trim_end_matches('/').to_string()
        };
    }
    let postfix = postfix.strip_prefix('/').unwrap_or(postfix);
    if base.ends_with('/') {
        format!("{base}{postfix}")
    } else {
        format!("{base}/{postfix}")
    }
}

/// Kong matches on a normalized path: percent-escapes upper-cased, unreserved characters
/// decoded, `//` merged and dot-segments removed.
pub fn normalize_path(path: &str) -> String {
    let decoded = crate::percent::decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_path_joins_like_kong_v0() {
        // (strip, route prefix, service path, request path) -> upstream path
        let cases = [
            (true, "/api", "/", "/api/users", "/users"),
            (true, "/api", "/", "/api", "/"),
            (true, "/api", "/", "/api/", "/"),
            (true, "/api", "/v1", "/api/users", "/v1/users"),
            (true, "/api", "/v1", "/api", "/v1"),
            (true, "/api", "/v1", "/api/", "/v1/"),
            (true, "/api", "/v1", "/apifoo", "/v1/foo"),
            (true, "/api", "/v1/", "/api", "/v1"),
            (true, "/api", "/v1/", "/api/", "/v1/"),
            (false, "/api", "/v1", "/api/users", "/v1/api/users"),
            (false, "/api", "/", "/api/users", "/api/users"),
        ];
        for (strip, prefix, base, path, want) in cases {
            let postfix = if strip { &path[prefix.len()..] } else { path };
            assert_eq!(
                upstream_path(strip, postfix, path, base),
                want,
                "{strip} {prefix} {base} {path}"
            );
        }
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize_path("/a//b/./c/../d"), "/a/b/d");
        assert_eq!(normalize_path("/%61pi/x%2f"), "/api/x%2F");
        assert_eq!(normalize_path("/a/"), "/a/");
        assert_eq!(normalize_path(""), "/");
    }

    #[test]
    fn wildcard_hosts_match_one_side() {
        let suffix = HostMatcher::parse("*.example.com");
        assert!(suffix.matches("api.example.com", 80));
        assert!(!suffix.matches("example.com", 80));
        let prefix = HostMatcher::parse("example.*");
        assert!(prefix.matches("example.org", 80));
        let with_port = HostMatcher::parse("api.example.com:8443");
        assert!(with_port.matches("api.example.com", 8443));
        assert!(!with_port.matches("api.example.com", 80));
    }
}
