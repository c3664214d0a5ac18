//! The route table: which service a request goes to and the path the origin sees, with Kong's
//! matching rules, priority order and `strip_path` joining (v0).

use crate::request::{RequestInfo, split_host_port};
use keygate_policy::{RoutePath, Service};
use regex_lite::Regex;
use std::borrow::Cow;

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
    headers: Vec<HeaderMatcher>,
    priority: Priority,
    /// The service's `Host` (`ServiceUrl::host_header`), spelled once here instead of per
    /// request.
    host_header: String,
}

/// Kong's route priority (`get_priority` in `kong/router/transform.lua`), compared field by
/// field in this order, highest first: how many of methods/hosts/headers/paths the route
/// sets; hosts all without wildcard; how many headers; a regex path; `regex_priority` (regex
/// paths only); the plain path's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Priority {
    categories: u8,
    plain_hosts: bool,
    headers: usize,
    regex: bool,
    regex_priority: i64,
    prefix_len: usize,
}

/// A route's `headers` entry: any of the values must match one of the request's values.
struct HeaderMatcher {
    /// Lower case, `_` written as `-`.
    name: String,
    values: Vec<ValueMatcher>,
}

enum ValueMatcher {
    /// Lower case; compared with the lower-cased request value.
    Exact(String),
    /// `~*regex`: case-insensitive, unanchored.
    Regex(Regex),
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
    /// The `Host` the origin gets unless the route has `preserve_host`.
    pub host_header: &'p str,
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
                    + u8::from(!route.hosts.is_empty())
                    + u8::from(!route.headers.is_empty());
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
                        headers: HeaderMatcher::compile_all(&route.headers)?,
                        priority: Priority {
                            categories,
                            plain_hosts,
                            headers: route.headers.len(),
                            regex: is_regex,
                            regex_priority: if is_regex { route.regex_priority } else { 0 },
                            prefix_len,
                        },
                        host_header: service.url.host_header(),
                    });
                }
            }
        }
        // Stable: equal priorities keep config order.
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.priority));
        Ok(Self { entries })
    }

    /// The best route for `request`. `listen_port` is the port the client connected to (a
    /// host's `:port` is matched against it, Kong's `net.dst.port`); without it, the port
    /// the client addressed.
    pub fn find<'p>(
        &'p self,
        services: &'p [Service],
        request: &RequestInfo,
        listen_port: Option<u16>,
    ) -> Option<Match<'p>> {
        let path = normalize_path(&request.path);
        let host = &request.host;
        let port = listen_port.unwrap_or_else(|| request.port());
        for entry in &self.entries {
            if !entry.methods.is_empty() && !entry.methods.contains(&request.method_name) {
                continue;
            }
            if !entry.hosts.is_empty() && !entry.hosts.iter().any(|h| h.matches(host, port)) {
                continue;
            }
            if !entry.headers.iter().all(|h| h.matches(&request.headers)) {
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
                ("", &*path)
            };
            return Some(Match {
                upstream_path: upstream_path(
                    route.strip_path,
                    postfix,
                    &path,
                    service.url.path.as_deref().unwrap_or("/"),
                ),
                stripped_prefix: stripped_prefix.to_string(),
                host_header: &entry.host_header,
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

impl HeaderMatcher {
    fn compile_all(
        headers: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<Self>, String> {
        headers
            .iter()
            .map(|(name, values)| {
                let values = values
                    .iter()
                    .map(|value| match value.strip_prefix("~*") {
                        Some(pattern) => Regex::new(&format!("(?i){pattern}"))
                            .map(ValueMatcher::Regex)
                            .map_err(|err| format!("route header {name} {value:?}: {err}")),
                        None => Ok(ValueMatcher::Exact(value.to_ascii_lowercase())),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Self {
                    name: header_key(name),
                    values,
                })
            })
            .collect()
    }

    fn matches(&self, headers: &[(String, Vec<u8>)]) -> bool {
        headers
            .iter()
            .filter(|(name, _)| header_key(name) == self.name)
            .any(|(_, value)| {
                let value = String::from_utf8_lossy(value);
                self.values.iter().any(|matcher| match matcher {
                    ValueMatcher::Exact(want) => value.eq_ignore_ascii_case(want),
                    ValueMatcher::Regex(regex) => regex.is_match(&value),
                })
            })
    }
}

/// How Kong's router compares header names: lower case, `_` and `-` alike.
fn header_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
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
/// decoded, `//` merged and dot-segments removed. Most paths are normalized already, and are
/// returned as they are.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if is_normalized(path) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normalized(path))
    }
}

/// A path `normalized` leaves as it is (not every such path): it starts with `/` and has no
/// escape, no empty segment but the last, and no dot-segment.
fn is_normalized(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.as_bytes().contains(&b'%') {
        return false;
    }
    let mut segments = rest.as_bytes().split(|&byte| byte == b'/');
    let last = segments.next_back().unwrap_or_default();
    segments.all(|segment| !matches!(segment, b"" | b"." | b"..")) && !matches!(last, b"." | b"..")
}

fn normalized(path: &str) -> String {
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
    fn a_path_taken_as_it_is_is_one_normalization_keeps() {
        for path in [
            "", "/", "//", "/a", "/a/", "/a//", "/a/b/c", "/a/./b", "/a/../b", "/.", "/..", "/a/.",
            "/a/..", "/./", "/../", "/.a/..b/", "/a%20b", "a/b", "/a/b/.c/", "/~x-y_z",
        ] {
            if is_normalized(path) {
                assert_eq!(normalized(path), path, "{path:?}");
            }
            assert_eq!(normalize_path(path), normalized(path), "{path:?}");
        }
        assert!(
            ["/", "/a", "/a/b/", "/.a/..b/"]
                .into_iter()
                .all(is_normalized)
        );
    }

    /// Found by `cargo fuzz run route`: normalizing a normalized path changed it again.
    #[test]
    fn normalized_paths_are_their_own_normalization() {
        for path in [
            "/keep/%%61b%2fc",
            "/%%32%65%%32%65/admin",
            "/a/%%2e%2e/b",
            "/x%",
        ] {
            let once = normalize_path(path);
            assert_eq!(normalize_path(&once), once, "{path}");
        }
        assert_eq!(normalize_path("/%%32%65%%32%65/admin"), "/%252e%252e/admin");
    }

    fn table(routes: &str) -> (Vec<Service>, RouteTable) {
        let services: Vec<Service> = serde_json::from_str(&format!(
            r#"[{{"name":"s","url":"http://origin","routes":{routes}}}]"#
        ))
        .unwrap();
        let table = RouteTable::compile(&services).unwrap();
        (services, table)
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestInfo {
        RequestInfo {
            id: String::new(),
            method: wasip2::http::types::Method::Other(method.into()),
            method_name: method.into(),
            method_is_head: false,
            path: path.into(),
            query: None,
            scheme: wasip2::http::types::Scheme::Http,
            authority: "api.example.com:8000".into(),
            host: "api.example.com".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            client_ip: None,
            local_port: None,
            started: 0,
        }
    }

    fn route_name(table: &(Vec<Service>, RouteTable), request: &RequestInfo) -> Option<String> {
        table
            .1
            .find(&table.0, request, Some(8000))
            .and_then(|m| m.route.name.clone())
    }

    #[test]
    fn priority_follows_kong_field_order() {
        let t = table(
            r#"[
            {"name":"long-prefix","paths":["/a/b/c/d"]},
            {"name":"regex","paths":["~/a/b"]},
            {"name":"regex-high","paths":["~/a/b/c"],"regex_priority":5},
            {"name":"method","paths":["/a"],"methods":["POST"]},
            {"name":"header","paths":["/a"],"headers":{"X_Version":["v1","~*^beta"]}},
            {"name":"two-headers","paths":["/a"],"headers":{"x-a":["1"],"x-b":["2"]}},
            {"name":"wild-host","paths":["/a"],"hosts":["*.example.com"]},
            {"name":"plain-host","paths":["/a"],"hosts":["api.example.com"]},
            {"name":"host-port","hosts":["api.example.com:8000"],"methods":["PUT"],"paths":["/a"]}
        ]"#,
        );
        let name = |method, path, headers: &[(&str, &str)]| {
            route_name(&t, &request(method, path, headers))
        };
        assert_eq!(
            name("GET", "/a/b/c/d/e", &[]).as_deref(),
            Some("plain-host")
        );
        assert_eq!(
            name("PUT", "/a", &[]).as_deref(),
            Some("host-port"),
            "more fields win"
        );
        assert_eq!(
            name("POST", "/a", &[]).as_deref(),
            Some("plain-host"),
            "with as many fields, plain hosts win"
        );
        assert_eq!(
            name("GET", "/a", &[("x-version", "V1")]).as_deref(),
            Some("plain-host"),
            "plain hosts outrank headers"
        );
        let no_host = table(
            r#"[
            {"name":"long-prefix","paths":["/a/b/c/d"]},
            {"name":"regex","paths":["~/a/b"]},
            {"name":"regex-high","paths":["~/a/b/c"],"regex_priority":5},
            {"name":"header","paths":["/a"],"headers":{"X_Version":["v1","~*^beta"]}},
            {"name":"two-headers","paths":["/a"],"headers":{"x-a":["1"],"x-b":["2"]}}
        ]"#,
        );
        let name =
            |path, headers: &[(&str, &str)]| route_name(&no_host, &request("GET", path, headers));
        assert_eq!(
            name("/a/b/c/d", &[]).as_deref(),
            Some("regex-high"),
            "regex, then regex_priority"
        );
        assert_eq!(name("/a/b/x", &[]).as_deref(), Some("regex"));
        assert_eq!(
            name("/a", &[("x-version", "V1")]).as_deref(),
            Some("header")
        );
        assert_eq!(
            name("/a", &[("x_version", "Beta-2")]).as_deref(),
            Some("header")
        );
        assert_eq!(name("/a", &[("x-version", "v3")]), None);
        assert_eq!(
            name("/a/b/c", &[("x-a", "1"), ("x-b", "2"), ("x-version", "v1")]).as_deref(),
            Some("two-headers"),
            "more headers win over fewer, and over a regex path"
        );
    }

    #[test]
    fn host_ports_match_the_listening_port() {
        let t = table(r#"[{"name":"p","hosts":["api.example.com:8000"]}]"#);
        assert_eq!(
            route_name(&t, &request("GET", "/", &[])).as_deref(),
            Some("p")
        );
        assert_eq!(
            t.1.find(&t.0, &request("GET", "/", &[]), Some(8001))
                .map(|m| m.route.name.clone()),
            None
        );
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
