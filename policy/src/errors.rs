//! What the gateway says when it answers instead of the origin: Kong 3.9's wording, its error
//! templates and its choice of template from `Accept`, so clients that parse Kong's errors
//! keep working.

use serde::{Deserialize, Serialize};

pub const NO_KEY: &str = "No API key found in request";
pub const INVALID_KEY: &str = "Unauthorized";
pub const DUPLICATE_KEY: &str = "Duplicate API key found";
pub const NO_ROUTE: &str = "no Route matched with those values";
pub const BAD_GATEWAY: &str = "An invalid response was received from the upstream server";
pub const UNAVAILABLE: &str = "The upstream server is currently unavailable";
pub const TIMEOUT: &str = "The upstream server is timing out";
pub const INTERNAL: &str = "An unexpected error occurred";
/// Kong's balancer when the service host does not resolve (503).
pub const NAME_RESOLUTION: &str = "name resolution failed";
/// nginx's 400, through Kong's error handler.
pub const BAD_REQUEST: &str = "Bad request";
pub const AUTH_UNAVAILABLE: &str = "The authentication service is currently unavailable";
pub const OVERLOADED: &str = "The gateway is at capacity, try again later";
/// rate-limiting's default `error_message`.
pub const RATE_LIMITED: &str = "API rate limit exceeded";
/// nginx's 413 (`client_max_body_size`, keygate's route `max_body_size`) through Kong's error
/// handler (`kong/error_handlers.lua`).
pub const PAYLOAD_TOO_LARGE: &str = "Payload too large";

/// Kong's JSON error body (3.5+), byte for byte.
pub fn json_body(message: &str, request_id: &str) -> String {
    ErrorFormat::Json.body(message, request_id)
}

pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// The four formats of a gateway-made error (`kong/tools/http.lua` `ERROR_TEMPLATES`).
/// In config (`compat.error_default_type`) they are written as their MIME types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ErrorFormat {
    #[default]
    #[serde(rename = "application/json")]
    Json,
    #[serde(rename = "text/html")]
    Html,
    #[serde(rename = "application/xml")]
    Xml,
    #[serde(rename = "text/plain")]
    Plain,
}

impl ErrorFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON_CONTENT_TYPE,
            Self::Html => "text/html; charset=utf-8",
            Self::Xml => "application/xml; charset=utf-8",
            Self::Plain => "text/plain; charset=utf-8",
        }
    }

    fn mime(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Html => "text/html",
            Self::Xml => "application/xml",
            Self::Plain => "text/plain",
        }
    }

    /// Kong's template for this format filled in. Kong pastes the message in unescaped; ours
    /// are fixed ASCII sentences, escaped anyway so the body always parses.
    pub fn body(self, message: &str, request_id: &str) -> String {
        match self {
            Self::Json => {
                let message = serde_json::to_string(message).expect("a string always serializes");
                format!("{{\n  \"message\":{message},\n  \"request_id\":\"{request_id}\"\n}}")
            }
            Self::Plain => format!("{message}\nrequest_id: {request_id}\n"),
            Self::Html => format!(
                "<!doctype html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n    <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n    <p>{}.</p>\n    <p>request_id: {request_id}</p>\n  </body>\n</html>\n",
                markup_escape(message)
            ),
            Self::Xml => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>{}</message>\n  <requestid>{request_id}</requestid>\n</error>\n",
                markup_escape(message)
            ),
        }
    }

    /// Kong's `get_response_type(accept)`: of the media ranges, the first with the highest
    /// q-value (q=0 never) decides; `*/*`, `application/*`, unknown types and no usable range
    /// mean JSON, `text/*` means text/plain. Type names are compared case-sensitively, as Kong
    /// looks them up.
    pub fn negotiate(accept: &str) -> Self {
        let mut best = Self::Json;
        let mut best_q = 0u16;
        for range in accept.split(',') {
            let Some((media, params)) = media_range(range.trim()) else {
                continue;
            };
            let q = quality(params);
            if q > best_q {
                best_q = q;
                best = Self::of_media_type(media);
            }
        }
        best
    }

    /// Kong's error handler (upstream failures, nginx-level errors): `Accept`, else the
    /// request's `Content-Type`, else the configured default type.
    pub fn negotiate_with_fallback(
        accept: Option<&str>,
        content_type: Option<&str>,
        default: Self,
    ) -> Self {
        match accept.or(content_type) {
            Some(header) => Self::negotiate(header),
            None => Self::negotiate(default.mime()),
        }
    }

    /// Kong's `get_mime_type`.
    fn of_media_type(media: &str) -> Self {
        let (kind, sub) = media.split_once('/').unwrap_or((media, ""));
        let key = if sub == "*" {
            if kind == "*" {
                return Self::Json;
            }
            kind
        } else {
            media
        };
        match key {
            "text/html" => Self::Html,
            "application/xml" => Self::Xml,
            "text/plain" | "text" => Self::Plain,
            _ => Self::Json,
        }
    }
}

fn markup_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `type/subtype` at the start of `text` (Kong's pattern: `*` or a token of at least two
/// characters on each side), and what follows it.
fn media_range(text: &str) -> Option<(&str, &str)> {
    let kind = token_or_star(text)?;
    let rest = text[kind..].strip_prefix('/')?;
    let sub = token_or_star(rest)?;
    let end = kind + 1 + sub;
    Some((&text[..end], &text[end..]))
}

/// Length of a `*` or of a media-type token at the start of `text`.
fn token_or_star(text: &str) -> Option<usize> {
    if text.starts_with('*') {
        return Some(1);
    }
    let len = token_len(text);
    (len >= 2).then_some(len)
}

/// Kong's `[a-z0-9][a-z0-9-!#$&^_+.]+`, case-insensitive; 0 when the first character is not
/// a letter or digit.
fn token_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_alphanumeric) {
        return 0;
    }
    1 + bytes[1..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || b"-!#$&^_+.".contains(b))
        .count()
}

/// The q-value of a media range in thousandths (1000 when absent), reading parameters the
/// way Kong's pattern does: `q=1`, `q=1.0…`, `q=0.ddd`; parsing stops at the first parameter
/// that fits neither `q=` nor `token[=value]`.
fn quality(mut params: &str) -> u16 {
    let mut q = 1000;
    loop {
        let Some(rest) = params.trim_start().strip_prefix(';') else {
            return q;
        };
        let rest = rest.trim_start();
        if let Some(value) = rest.strip_prefix("q=").or_else(|| rest.strip_prefix("Q="))
            && let Some((value_q, len)) = q_value(value)
        {
            q = value_q;
            params = &value[len..];
            continue;
        }
        let name = token_len(rest);
        if name < 2 {
            return q;
        }
        let after = &rest[name..];
        params = match after.strip_prefix('=') {
            Some(value) => &value[value.find(';').unwrap_or(value.len())..],
            None => after,
        };
    }
}

/// `1(\.0{0,3})?` or `0(\.\d{0,3})?` → (thousandths, characters used).
fn q_value(text: &str) -> Option<(u16, usize)> {
    let bytes = text.as_bytes();
    let whole = match bytes.first()? {
        b'1' => 1000,
        b'0' => 0,
        _ => return None,
    };
    if bytes.get(1) != Some(&b'.') {
        return Some((whole, 1));
    }
    let digits: Vec<u8> = bytes[2..]
        .iter()
        .take(3)
        .take_while(|b| {
            if whole == 1000 {
                **b == b'0'
            } else {
                b.is_ascii_digit()
            }
        })
        .copied()
        .collect();
    let mut value = 0u16;
    for (i, digit) in digits.iter().enumerate() {
        value += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    Some((whole + value, 2 + digits.len()))
}

#[cfg(test)]
mod tests {
    use super::ErrorFormat::{self, *};

    #[test]
    fn json_body_matches_kong_template() {
        assert_eq!(
            super::json_body("Unauthorized", "0123456789abcdef0123456789abcdef"),
            "{\n  \"message\":\"Unauthorized\",\n  \"request_id\":\"0123456789abcdef0123456789abcdef\"\n}"
        );
    }

    #[test]
    fn other_templates_match_kong() {
        assert_eq!(
            Plain.body("Unauthorized", "ab"),
            "Unauthorized\nrequest_id: ab\n"
        );
        assert!(
            Html.body("Unauthorized", "ab")
                .contains("<p>Unauthorized.</p>\n    <p>request_id: ab</p>")
        );
        assert!(
            Xml.body("Unauthorized", "ab")
                .contains("<message>Unauthorized</message>\n  <requestid>ab</requestid>")
        );
    }

    #[test]
    fn accept_negotiation_follows_kong() {
        let cases = [
            ("", Json),
            ("*/*", Json),
            ("text/html", Html),
            ("text/plain", Plain),
            ("application/xml", Xml),
            ("application/json", Json),
            ("text/*", Plain),
            ("application/*", Json),
            ("image/png", Json),
            ("text/xml", Json),
            ("TEXT/HTML", Json),
            ("text/html;q=0.5, application/xml", Xml),
            ("text/html;q=0.5, application/xml;q=0.4", Html),
            ("text/html;q=0, text/plain;q=0.001", Plain),
            ("text/html;q=0", Json),
            ("image/png, text/html", Json),
            ("text/html; level=1; q=0.2, text/plain; q=0.3", Plain),
            ("text/html; charset=utf-8", Html),
            (" application/xml ; Q=1.0 , text/html;q=0.999", Xml),
            ("a/b, text/plain", Plain),
        ];
        for (accept, want) in cases {
            assert_eq!(ErrorFormat::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn error_handler_falls_back_to_content_type_then_default() {
        let f = ErrorFormat::negotiate_with_fallback;
        assert_eq!(f(None, None, Plain), Plain);
        assert_eq!(f(None, Some("text/html"), Plain), Html);
        assert_eq!(
            f(None, Some("application/x-www-form-urlencoded"), Plain),
            Json
        );
        assert_eq!(f(Some("text/plain"), Some("application/json"), Json), Plain);
    }
}
