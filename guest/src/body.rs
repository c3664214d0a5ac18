//! The client's request body, for `key_in_body`: read into memory only when a key must be
//! looked for in it (and only up to `key_auth.body_buffer_size`, as Kong only parses bodies
//! that fit its `client_body_buffer_size`), parsed the way Kong's `kong.request.get_body()`
//! parses form-urlencoded, JSON and multipart bodies, and forwarded afterwards: the bytes
//! already read first, then the rest streamed.

use crate::outbound::BodyReader;
use crate::percent::percent_decode;
use crate::request::RequestInfo;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use wasip2::http::types::IncomingRequest;
use wasip2::io::streams::StreamError;

/// What `body[name]` is in Kong's parsed body.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyValue {
    Absent,
    /// A string: the key (or an empty key).
    Text(String),
    /// A Lua table: a repeated form field, a JSON array or object.
    Table,
    /// Anything else (a bare form name, a JSON number, boolean or null): not a key.
    Other,
}

/// How a body is parsed, from its `Content-Type` (Kong compares the start of the lowercased
/// type without parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    Form,
    Json,
    Multipart { boundary: Option<String> },
}

impl BodyKind {
    pub fn of(content_type: &str) -> Option<Self> {
        let lower = content_type.to_ascii_lowercase();
        let mime = lower.split(';').next().unwrap_or("");
        if mime.starts_with("application/x-www-form-urlencoded") {
            Some(Self::Form)
        } else if mime.starts_with("application/json") {
            Some(Self::Json)
        } else if mime.starts_with("multipart/form-data") {
            Some(Self::Multipart {
                boundary: multipart_boundary(content_type),
            })
        } else {
            None
        }
    }

    /// `body[name]` in a whole body of this kind (the buffered bytes, as the client sent them).
    pub fn value(&self, body: &[u8], name: &str) -> BodyValue {
        match self {
            Self::Form => form_value(&String::from_utf8_lossy(body), name),
            Self::Json => json_value(&String::from_utf8_lossy(body), name),
            Self::Multipart { boundary } => boundary
                .as_deref()
                .map_or(BodyValue::Absent, |b| multipart_value(body, b, name)),
        }
    }

    /// The body without the field `name`; `None` when there is nothing to remove.
    pub fn remove(&self, body: &[u8], name: &str) -> Option<Vec<u8>> {
        match self {
            Self::Form => form_remove(&String::from_utf8_lossy(body), name).map(String::into_bytes),
            // Read as `value` reads it: a key found in a body that is not UTF-8 must go too
            // (its invalid bytes are forwarded as U+FFFD then, as a rewritten form's are).
            Self::Json => json_remove(&String::from_utf8_lossy(body), name).map(String::into_bytes),
            Self::Multipart { boundary } => boundary
                .as_deref()
                .and_then(|b| multipart_remove(body, b, name)),
        }
    }
}

pub struct RequestBody {
    /// Opened on first use; dropped before `request`, its parent.
    reader: Option<BodyReader>,
    request: IncomingRequest,
    /// `Content-Length` as the client declared it.
    declared: Option<u64>,
    kind: Option<BodyKind>,
    limit: usize,
    /// Bytes read so far: the start of the body, or all of it once `ended`.
    buffered: Vec<u8>,
    ended: bool,
    /// Reading failed or stopped past `limit`: the body is not parsed.
    unparsable: bool,
    /// `buffered` replaces the client's body (a hidden key was removed from it).
    rewritten: bool,
}

impl RequestBody {
    pub fn new(request: IncomingRequest, info: &RequestInfo, limit: u64) -> Self {
        Self {
            reader: None,
            request,
            declared: info
                .header("content-length")
                .and_then(|v| v.trim().parse().ok()),
            kind: info.header("content-type").and_then(|ct| BodyKind::of(&ct)),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            buffered: Vec::new(),
            ended: false,
            unparsable: false,
            rewritten: false,
        }
    }

    /// `body[name]` in Kong's parsed body; `Absent` for bodies Kong cannot parse (no or
    /// another content type, invalid, or larger than the buffer), which is not an error.
    pub fn value(&mut self, name: &str) -> BodyValue {
        let Some(kind) = self.kind.clone() else {
            return BodyValue::Absent;
        };
        if !self.load() {
            return BodyValue::Absent;
        }
        kind.value(&self.buffered, name)
    }

    /// `hide_credentials`: take the field `name` out of the body, if it is there.
    pub fn remove(&mut self, name: &str) {
        let Some(kind) = self.kind.clone() else {
            return;
        };
        if !self.load() {
            return;
        }
        if let Some(bytes) = kind.remove(&self.buffered, name) {
            self.buffered = bytes;
            self.rewritten = true;
        }
    }

    /// Read the whole body into memory if it fits the limit; whether it did.
    fn load(&mut self) -> bool {
        if self.ended || self.unparsable {
            return self.ended && !self.unparsable;
        }
        if self.declared.is_some_and(|len| len > self.limit as u64) {
            self.unparsable = true;
            return false;
        }
        if self.reader().is_none() {
            self.unparsable = true;
            return false;
        }
        let Some(reader) = &self.reader else {
            return false;
        };
        loop {
            let room = (self.limit + 1).saturating_sub(self.buffered.len());
            if room == 0 {
                self.unparsable = true;
                return false;
            }
            let want = u64::try_from(room.min(64 * 1024)).unwrap_or(64 * 1024);
            match reader.stream.blocking_read(want) {
                Ok(chunk) => self.buffered.extend_from_slice(&chunk),
                Err(StreamError::Closed) => {
                    self.ended = true;
                    return true;
                }
                Err(StreamError::LastOperationFailed(err)) => {
                    eprintln!("reading the request body failed: {}", err.to_debug_string());
                    self.unparsable = true;
                    return false;
                }
            }
        }
    }

    fn reader(&mut self) -> Option<&BodyReader> {
        if self.reader.is_none() {
            self.reader = self.request.consume().ok().and_then(BodyReader::open);
        }
        self.reader.as_ref()
    }

    /// Whether there is a body to forward (hosts hide `Transfer-Encoding` from guests, so
    /// without a length the first bytes tell: a GET must not reach the origin with an empty
    /// chunked body).
    pub fn has_body(&mut self) -> bool {
        if self.rewritten || self.ended {
            return !self.buffered.is_empty();
        }
        if let Some(len) = self.declared {
            return len > 0;
        }
        if self.buffered.is_empty() {
            let first = match self.reader() {
                Some(reader) => crate::outbound::read_some(&reader.stream),
                None => Vec::new(),
            };
            if first.is_empty() {
                self.ended = true;
            }
            self.buffered = first;
        }
        !self.buffered.is_empty()
    }

    /// The `Content-Length` to send when it differs from the client's (a rewritten body) or
    /// the client sent none but the whole body is known.
    pub fn new_length(&self) -> Option<usize> {
        if self.rewritten || (self.ended && self.declared.is_none() && !self.buffered.is_empty()) {
            Some(self.buffered.len())
        } else {
            None
        }
    }

    /// The bytes to send first, and the stream of the rest (none once the body has ended).
    pub fn into_parts(mut self) -> (Vec<u8>, Option<BodyReader>) {
        if self.rewritten || self.ended {
            return (self.buffered, None);
        }
        self.reader();
        (self.buffered, self.reader.take())
    }
}

/// `ngx.req.get_post_args()` (its first 100 arguments): `+` and `%XX` decoded, a repeated
/// name is a table, a bare name is `true`.
fn form_value(body: &str, name: &str) -> BodyValue {
    let mut found = BodyValue::Absent;
    for pair in body.split('&').filter(|p| !p.is_empty()).take(100) {
        let (raw_name, raw_value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        if percent_decode(raw_name) != name {
            continue;
        }
        found = match (found, raw_value) {
            (BodyValue::Absent, Some(value)) => BodyValue::Text(percent_decode(value)),
            (BodyValue::Absent, None) => BodyValue::Other,
            _ => BodyValue::Table,
        };
    }
    found
}

/// The body without the arguments named `name`, the others byte for byte; `None` when there
/// were none.
fn form_remove(body: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = body
        .split('&')
        .filter(|pair| percent_decode(pair.split_once('=').map_or(*pair, |(n, _)| n)) != name)
        .collect();
    let removed = body.split('&').count() != kept.len();
    removed.then(|| kept.join("&"))
}

/// A JSON object's members in order, values as written.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// `cjson.decode(body)[name]`: only top-level members; the last of repeated names wins.
fn json_value(body: &str, name: &str) -> BodyValue {
    let Ok(Members(members)) = serde_json::from_str::<Members>(body) else {
        return BodyValue::Absent;
    };
    let Some((_, raw)) = members.iter().rev().find(|(n, _)| n == name) else {
        return BodyValue::Absent;
    };
    match raw.get().as_bytes().first() {
        Some(b'"') => {
            serde_json::from_str::<String>(raw.get()).map_or(BodyValue::Other, BodyValue::Text)
        }
        Some(b'[' | b'{') => BodyValue::Table,
        _ => BodyValue::Other,
    }
}

/// The object without the members named `name`, the others' values as written.
fn json_remove(body: &str, name: &str) -> Option<String> {
    let Members(members) = serde_json::from_str::<Members>(body).ok()?;
    if !members.iter().any(|(n, _)| n == name) {
        return None;
    }
    let mut out = String::from("{");
    for (member, raw) in members.iter().filter(|(n, _)| n != name) {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(member).expect("a string always serializes"));
        out.push(':');
        out.push_str(raw.get());
    }
    out.push('}');
    Some(out)
}

/// lua-multipart's boundary: after `;` and `boundary=`, up to white space; quotes removed.
fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut rest = content_type;
    while let Some(at) = rest.find(';') {
        rest = &rest[at + 1..];
        if let Some(value) = rest.trim_start().strip_prefix("boundary=") {
            let value = value
                .split(|c: char| c.is_ascii_whitespace() || c == ';')
                .next()
                .unwrap_or("");
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            return (!unquoted.is_empty()).then(|| unquoted.to_string());
        }
    }
    None
}

/// One part of a multipart body: its byte range (from its delimiter to the next one), its
/// field name and value.
struct Part {
    span: std::ops::Range<usize>,
    name: Option<String>,
    value: std::ops::Range<usize>,
}

fn multipart_parts(body: &[u8], boundary: &str) -> Vec<Part> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // Delimiters start the body or follow a CRLF.
    let mut starts = Vec::new();
    let mut at = 0;
    while at + delimiter.len() <= body.len() {
        if body[at..].starts_with(delimiter) && (at == 0 || body[..at].ends_with(b"\r\n")) {
            starts.push(at);
            at += delimiter.len();
        } else {
            at += 1;
        }
    }
    let mut parts = Vec::new();
    for pair in starts.windows(2) {
        let (start, next) = (pair[0], pair[1]);
        let after = start + delimiter.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let Some(line_end) = find(&body[after..next], b"\r\n").map(|i| after + i + 2) else {
            continue;
        };
        let content_end = next.saturating_sub(2).max(line_end);
        let content = &body[line_end..content_end];
        let (headers, value_start) = if content.starts_with(b"\r\n") {
            (&content[..0], line_end + 2)
        } else {
            match find(content, b"\r\n\r\n") {
                Some(i) => (&content[..i], line_end + i + 4),
                None => continue,
            }
        };
        parts.push(Part {
            span: start..next,
            name: part_name(headers),
            value: value_start.min(content_end)..content_end,
        });
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// lua-multipart's field name: in the `Content-Disposition` line, the segment starting
/// `name=`, up to any `=`, without its first and last character (the quotes).
fn part_name(headers: &[u8]) -> Option<String> {
    let headers = String::from_utf8_lossy(headers);
    let mut name = None;
    for line in headers.split("\r\n") {
        if !line
            .get(..19)
            .is_some_and(|h| h.eq_ignore_ascii_case("content-disposition"))
        {
            continue;
        }
        for segment in line.split(';') {
            if looks_like_header(segment) {
                continue;
            }
            let trimmed = segment.trim_start();
            if let Some(rest) = trimmed
                .get(..5)
                .filter(|head| head.eq_ignore_ascii_case("name="))
                .and_then(|_| trimmed.get(5..))
            {
                let value = rest.split('=').next().unwrap_or("").trim_end();
                let mut chars = value.chars();
                chars.next();
                chars.next_back();
                name = Some(chars.as_str().to_string());
            }
        }
    }
    name
}

/// Lua's `%S:%s*%S`: a colon with something before it and, after spaces, something after.
fn looks_like_header(segment: &str) -> bool {
    segment.char_indices().any(|(i, c)| {
        c == ':'
            && segment[..i]
                .chars()
                .next_back()
                .is_some_and(|p| !p.is_ascii_whitespace())
            && segment[i + 1..].trim_start().chars().next().is_some()
    })
}

/// lua-multipart's `get_all()`: the first part of that name.
fn multipart_value(body: &[u8], boundary: &str, name: &str) -> BodyValue {
    multipart_parts(body, boundary)
        .into_iter()
        .find(|part| part.name.as_deref() == Some(name))
        .map_or(BodyValue::Absent, |part| {
            BodyValue::Text(String::from_utf8_lossy(&body[part.value]).into_owned())
        })
}

/// The body without the parts named `name`, everything else byte for byte.
fn multipart_remove(body: &[u8], boundary: &str, name: &str) -> Option<Vec<u8>> {
    let parts = multipart_parts(body, boundary);
    let removed: Vec<&Part> = parts
        .iter()
        .filter(|part| part.name.as_deref() == Some(name))
        .collect();
    if removed.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for part in removed {
        out.extend_from_slice(&body[at..part.span.start]);
        at = part.span.end;
    }
    out.extend_from_slice(&body[at..]);
    Some(out)
}

#[cfg(test)]
mod tests;
