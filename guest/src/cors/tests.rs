//! The CORS rules against Kong's `cors` plugin behaviour, case by case.

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
    crate::field_block::to_pairs(&list)
        .into_iter()
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
        String::from_utf8_lossy(&edits.append),
        format!("vary: Origin\r\n{ALLOW_ORIGIN}: http://a.com\r\n")
    );
    // No match: the origin's own header is removed, nothing appended for it.
    let ops = response_ops(&config, &compile(&config.origins), Some("http://c.com"));
    let (remove, append) = as_edits(&ops);
    assert_eq!(remove, vec![ALLOW_ORIGIN]);
    assert_eq!(append, b"vary: Origin\r\n");
}

#[test]
fn decorating_a_reply_sets_over_existing_values() {
    let mut list = format!("{ALLOW_ORIGIN}: x\r\nvary: Accept\r\n").into_bytes();
    apply(
        &mut list,
        &[
            Op::Add("vary", "Origin".into()),
            Op::Set(ALLOW_ORIGIN, "*".into()),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&list),
        format!("vary: Accept\r\nvary: Origin\r\n{ALLOW_ORIGIN}: *\r\n")
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
