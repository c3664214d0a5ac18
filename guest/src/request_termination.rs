//! Kong 3.9's `request-termination` plugin (`kong/plugins/request-termination/handler.lua`,
//! PRIORITY 2: after key-auth, ip-restriction and rate limiting, so a request without a key
//! still gets its 401 and a terminated request still counts against its limits). The reply
//! is `kong.response.exit`, not the error template: `{"message":"…"}` (no request id), the raw
//! `body` with its `content_type`, an empty body, or with `echo` a JSON description of the
//! request. With `trigger`, only requests carrying that header or query argument end here.

use crate::auth::Identity;
use crate::bindings::exports::keygate::gateway::block_policy::Reply;
use crate::config::Policy;
use crate::errors::exit_reply_for;
use crate::percent::percent_decode;
use crate::request::RequestInfo;
use crate::router::Match;
use keygate_policy::errors::JSON_CONTENT_TYPE;
use keygate_policy::plugins::{PluginKind, RequestTermination};
use keygate_policy::{Route, Service};
use serde_json::{Map, Value, json};

/// The reply for `info`, if the instance that applies terminates it.
pub fn check(
    policy: &'static Policy,
    info: &RequestInfo,
    matched: &Match,
    identity: Option<&Identity>,
) -> Option<Reply> {
    let plugins = &policy.config.plugins;
    if plugins.is_empty() {
        return None;
    }
    let scope = crate::ip_restriction::request_scope(policy, matched, identity);
    let config = plugins
        .applicable(PluginKind::RequestTermination, &scope)?
        .plugin
        .request_termination()?;
    if let Some(trigger) = &config.trigger
        && !triggered(trigger, &info.headers, info.query.as_deref())
    {
        return None;
    }
    let echo = config.echo.then(|| {
        let port = info
            .listen_port(policy.config.listen_port)
            .unwrap_or_else(|| info.port());
        echo_document(
            config.message(),
            &EchoRequest {
                scheme: info.scheme_name(),
                host: &info.host,
                port,
                headers: &info.headers,
                query: info.query.as_deref(),
                method: &info.method_name,
                path: &info.path,
            },
            matched.route,
            matched.service,
        )
    });
    let (content_type, body) = response(config, echo);
    Some(exit_reply_for(
        config.status_code,
        content_type,
        Vec::new(),
        body,
        info,
        &policy.config.compat,
    ))
}

/// Kong's test: `kong.request.get_headers()[trigger]` (a header name is found lower-cased
/// and with `_` read as `-`) or `kong.request.get_query()[trigger]` (exact name, any value,
/// a bare `?trigger` included).
pub fn triggered(trigger: &str, headers: &[(String, Vec<u8>)], query: Option<&str>) -> bool {
    let normalized = trigger.to_ascii_lowercase().replace('_', "-");
    headers
        .iter()
        .any(|(name, _)| name == trigger || *name == normalized)
        || query.is_some_and(|query| query_args(query).iter().any(|(name, _)| name == trigger))
}

/// The reply's `Content-Type` and body.
pub fn response(config: &RequestTermination, echo: Option<Value>) -> (Option<&str>, Vec<u8>) {
    if let Some(echo) = echo {
        return (Some(JSON_CONTENT_TYPE), echo.to_string().into_bytes());
    }
    if let Some(body) = &config.body {
        return (config.content_type.as_deref(), body.clone().into_bytes());
    }
    match config.message() {
        Some(message) => (
            Some(JSON_CONTENT_TYPE),
            format!("{{\"message\":{}}}", cjson_string(message)).into_bytes(),
        ),
        None => (None, Vec::new()),
    }
}

/// A string as lua-cjson encodes it: `"`, `\` and `/` escaped, control characters as
/// `\b \f \n \r \t` or `\u00XX`, everything else as is.
pub fn cjson_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The query as `ngx.req.get_uri_args` reads it: names and values decoded (`+` is a space),
/// a bare name is `true`, empty names skipped.
fn query_args(query: &str) -> Vec<(String, Value)> {
    let decode = |text: &str| percent_decode(&text.replace('+', " "));
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (name, value) = match pair.split_once('=') {
                Some((name, value)) => (decode(name), Value::String(decode(value))),
                None => (decode(pair), Value::Bool(true)),
            };
            (!name.is_empty()).then_some((name, value))
        })
        .collect()
}

/// What `echo` describes of the request.
pub struct EchoRequest<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub headers: &'a [(String, Vec<u8>)],
    pub query: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
}

/// Kong's echo document: `message`, `kong`, `request` and the matched route and service.
/// keygate has no Kong node id, worker pid or hostname to report (`kong` is empty), and the
/// request body is not read (`body` and `raw_body` are left out).
pub fn echo_document(
    message: Option<&str>,
    request: &EchoRequest,
    route: &Route,
    service: &Service,
) -> Value {
    let mut document = Map::new();
    if let Some(message) = message {
        document.insert("message".into(), Value::String(message.to_string()));
    }
    document.insert("kong".into(), Value::Object(Map::new()));
    let mut headers = Map::new();
    for (name, value) in request.headers {
        if keygate_policy::internal_headers::ALL.contains(&name.as_str()) {
            continue;
        }
        multi_insert(
            &mut headers,
            name.clone(),
            Value::String(String::from_utf8_lossy(value).into_owned()),
        );
    }
    let mut query = Map::new();
    for (name, value) in request.query.map(query_args).unwrap_or_default() {
        multi_insert(&mut query, name, value);
    }
    document.insert(
        "request".into(),
        json!({
            "scheme": request.scheme,
            "host": request.host,
            "port": request.port,
            "headers": headers,
            "query": query,
            "method": request.method,
            "path": request.path,
            "uri_captures": { "named": {}, "unnamed": {} },
        }),
    );
    document.insert(
        "matched_route".into(),
        serde_json::to_value(route).unwrap_or(Value::Null),
    );
    document.insert(
        "matched_service".into(),
        json!({
            "name": service.name,
            "protocol": service.url.scheme(),
            "host": service.url.host,
            "port": service.url.port,
            "path": service.url.path,
        }),
    );
    Value::Object(document)
}

/// A repeated name becomes a list of its values, as in Kong's tables.
fn multi_insert(map: &mut Map<String, Value>, name: String, value: Value) {
    match map.get_mut(&name) {
        None => {
            map.insert(name, value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(first) => {
            let first = first.take();
            map.insert(name, Value::Array(vec![first, value]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> Vec<(String, Vec<u8>)> {
        names
            .iter()
            .map(|n| (n.to_string(), b"v".to_vec()))
            .collect()
    }

    #[test]
    fn triggers_are_headers_or_query_arguments() {
        assert!(triggered("x-stop", &headers(&["x-stop"]), None));
        assert!(triggered("X-Stop", &headers(&["x-stop"]), None));
        assert!(triggered("x_stop", &headers(&["x-stop"]), None));
        assert!(triggered("x_stop", &headers(&["x_stop"]), None));
        assert!(!triggered("x-stop", &headers(&["x_stop"]), None));
        assert!(!triggered("x-stop", &headers(&["x-go"]), Some("a=1")));
        assert!(triggered("x-stop", &[], Some("a=1&x-stop")));
        assert!(triggered("x-stop", &[], Some("x-stop=")));
        assert!(triggered("x stop", &[], Some("x+stop=1")));
        assert!(
            !triggered("X-Stop", &[], Some("x-stop=1")),
            "query names are exact"
        );
    }

    fn config(status: u16) -> RequestTermination {
        RequestTermination {
            status_code: status,
            ..RequestTermination::default()
        }
    }

    #[test]
    fn messages_are_compact_json_without_request_id() {
        let unavailable = config(503);
        let (content_type, body) = response(&unavailable, None);
        assert_eq!(content_type, Some(JSON_CONTENT_TYPE));
        assert_eq!(body, br#"{"message":"Service unavailable"}"#);
        let config403 = RequestTermination {
            message: Some("Access is \"forbidden\" / go".into()),
            ..config(403)
        };
        assert_eq!(
            response(&config403, None).1,
            br#"{"message":"Access is \"forbidden\" \/ go"}"#
        );
        for (status, message) in [
            (401, "Unauthorized"),
            (404, "Not found"),
            (405, "Method not allowed"),
            (500, "An unexpected error occurred"),
            (502, "Bad Gateway"),
        ] {
            assert_eq!(
                response(&config(status), None).1,
                format!("{{\"message\":\"{message}\"}}").into_bytes()
            );
        }
        // Other statuses without a message: no body, no Content-Type.
        assert_eq!(response(&config(418), None), (None, Vec::new()));
    }

    #[test]
    fn a_body_is_sent_raw_with_its_content_type_only() {
        let with_type = RequestTermination {
            body: Some("<h1>Maintenance</h1>".into()),
            content_type: Some("text/html; charset=utf-8".into()),
            ..config(503)
        };
        assert_eq!(
            response(&with_type, None),
            (
                Some("text/html; charset=utf-8"),
                b"<h1>Maintenance</h1>".to_vec()
            )
        );
        let without = RequestTermination {
            content_type: None,
            ..with_type
        };
        assert_eq!(response(&without, None).0, None);
    }

    #[test]
    fn echo_describes_the_request() {
        let route: Route =
            serde_json::from_value(json!({"name": "r", "paths": ["/echo"]})).unwrap();
        let service: Service =
            serde_json::from_value(json!({"name": "s", "url": "http://127.0.0.1:9000/v1"}))
                .unwrap();
        let request_headers = vec![
            ("host".to_string(), b"api.example.com".to_vec()),
            ("x-a".to_string(), b"1".to_vec()),
            ("x-a".to_string(), b"2".to_vec()),
        ];
        let document = echo_document(
            Some("Service unavailable"),
            &EchoRequest {
                scheme: "http",
                host: "api.example.com",
                port: 8000,
                headers: &request_headers,
                query: Some("q=a+b&flag&q=c"),
                method: "GET",
                path: "/echo/x",
            },
            &route,
            &service,
        );
        assert_eq!(document["message"], "Service unavailable");
        assert_eq!(document["request"]["headers"]["x-a"], json!(["1", "2"]));
        assert_eq!(
            document["request"]["query"],
            json!({"q": ["a b", "c"], "flag": true})
        );
        assert_eq!(document["request"]["port"], 8000);
        assert_eq!(document["matched_route"]["name"], "r");
        assert_eq!(document["matched_service"]["port"], 9000);
        let unavailable = config(503);
        let (content_type, _) = response(&unavailable, Some(document));
        assert_eq!(content_type, Some(JSON_CONTENT_TYPE));
    }
}
