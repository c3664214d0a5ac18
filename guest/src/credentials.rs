//! Finding the API key in a request, exactly as Kong's key-auth does: for each configured name
//! in order, header, then query string, then body; the first value found decides.

use crate::body::{BodyValue, RequestBody};
use crate::field_block;
use crate::percent::percent_decode;
use crate::request::RequestInfo;
use keygate_policy::KeyAuth;

/// The names are borrowed from the key-auth configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A key, and the name it was found under.
    Found { key: String, name: &'a str },
    /// An empty value (`apikey:`, `?apikey=`): Kong stops there with "No API key found".
    Empty { name: &'a str },
    /// No value under any name.
    Missing,
    /// The same name twice within one source.
    Duplicate,
}

impl Credential<'_> {
    /// The name a (possibly empty) key was found under: what `hide_credentials` removes.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Found { name, .. } | Self::Empty { name } => Some(name),
            Self::Missing | Self::Duplicate => None,
        }
    }
}

/// What one source holds under a name, in Kong's terms.
#[derive(Debug, PartialEq, Eq)]
enum Value {
    Absent,
    Text(String),
    /// Repeated: a Lua table.
    Table,
    /// Present but not a string (a bare `?apikey`, a JSON number): skipped.
    Other,
}

impl From<BodyValue> for Value {
    fn from(value: BodyValue) -> Self {
        match value {
            BodyValue::Absent => Self::Absent,
            BodyValue::Text(text) => Self::Text(text),
            BodyValue::Table => Self::Table,
            BodyValue::Other => Self::Other,
        }
    }
}

/// The outcome of looking for a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted<'a> {
    Done(Credential<'a>),
    /// Kong would look in the body next, and this entry point has none (the fast path).
    NeedsBody,
}

/// Kong's search. `body` is `None` where the entry point does not hold the body: a search that
/// reaches the body then stops with [`Extracted::NeedsBody`].
pub fn extract<'a>(
    key_auth: &'a KeyAuth,
    request: &RequestInfo,
    body: Option<&mut RequestBody>,
) -> Extracted<'a> {
    match body {
        Some(body) => search(key_auth, request, Some(&mut |name: &str| body.value(name))),
        None => search(key_auth, request, None),
    }
}

/// [`extract`] with the body as a lookup of `body[name]` (the fuzz targets use a body held in
/// memory).
pub(crate) fn search<'a>(
    key_auth: &'a KeyAuth,
    request: &RequestInfo,
    mut body: Option<&mut dyn FnMut(&str) -> BodyValue>,
) -> Extracted<'a> {
    for name in key_auth.key_names.iter().map(String::as_str) {
        let mut value = Value::Absent;
        if key_auth.key_in_header {
            value = from_headers(name, &request.headers);
        }
        if value == Value::Absent
            && key_auth.key_in_query
            && let Some(query) = &request.query
        {
            value = from_query(name, query);
        }
        if value == Value::Absent && key_auth.key_in_body {
            match body.as_deref_mut() {
                Some(body) => value = body(name).into(),
                None => return Extracted::NeedsBody,
            }
        }
        let found = match value {
            Value::Text(key) if key.is_empty() => Credential::Empty { name },
            Value::Text(key) => Credential::Found { key, name },
            Value::Table => Credential::Duplicate,
            Value::Absent | Value::Other => continue,
        };
        return Extracted::Done(found);
    }
    Extracted::Done(Credential::Missing)
}

/// OpenResty's `ngx.req.get_headers()[name]`: the table's keys are the lower-cased header
/// names; a name not found as written is looked up again lower-cased with `_` turned into
/// `-`. So `api_key` finds `API_KEY` and `api-key`, but `api-key` never finds `api_key`.
fn from_headers(name: &str, headers: &[(String, Vec<u8>)]) -> Value {
    // The usual key name (`apikey`) is its own normalized form: looked up once, and no
    // string is made for the second spelling.
    let normalized = name
        .bytes()
        .any(|b| b.is_ascii_uppercase() || b == b'_')
        .then(|| name.to_ascii_lowercase().replace('_', "-"));
    let second = normalized
        .as_deref()
        .filter(|normalized| *normalized != name);
    for candidate in std::iter::once(name).chain(second) {
        let mut values = headers.iter().filter(|(n, _)| n == candidate);
        if let Some((_, value)) = values.next() {
            if values.next().is_some() {
                return Value::Table;
            }
            return Value::Text(field_block::text(value));
        }
    }
    Value::Absent
}

/// The header names `hide_credentials` removes for a key name: Kong's `clear_header(name)`
/// (case-insensitive), and also the `-` spelling the lookup accepts.
pub fn header_names(name: &str) -> [String; 2] {
    let lower = name.to_ascii_lowercase();
    let dashed = lower.replace('_', "-");
    [lower, dashed]
}

/// `ngx.req.get_uri_args()` (its first 100 arguments): names are case-sensitive and decoded,
/// `+` is a space, and a bare `?apikey` (no `=`) is a boolean that does not count as a key.
fn from_query(name: &str, query: &str) -> Value {
    let mut result = Value::Absent;
    for pair in query.split('&').filter(|p| !p.is_empty()).take(100) {
        let (raw_name, raw_value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        if percent_decode(raw_name) != name {
            continue;
        }
        result = match (result, raw_value) {
            (Value::Absent, Some(value)) => Value::Text(percent_decode(value)),
            (Value::Absent, None) => Value::Other,
            _ => Value::Table,
        };
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn text(k: &str) -> Value {
        Value::Text(k.into())
    }

    #[test]
    fn header_names_match_case_insensitively_and_underscore_matches_dash() {
        assert_eq!(
            from_headers("api_key", &headers(&[("api-key", "k1")])),
            text("k1")
        );
        assert_eq!(
            from_headers("api_key", &headers(&[("api_key", "k1")])),
            text("k1")
        );
        assert_eq!(
            from_headers("API_KEY", &headers(&[("api-key", "k1")])),
            text("k1")
        );
        assert_eq!(
            from_headers("ApiKey", &headers(&[("apikey", "k1")])),
            text("k1")
        );
        assert_eq!(
            from_headers("api-key", &headers(&[("api_key", "k1")])),
            Value::Absent,
            "a dashed name never matches an underscore"
        );
        assert_eq!(
            from_headers("API_KEY", &headers(&[("api_key", "k1")])),
            Value::Absent,
            "OpenResty looks an unmatched name up only in its dashed lower-case form"
        );
        assert_eq!(
            from_headers(
                "api_key",
                &headers(&[("api-key", "dash"), ("api_key", "under")])
            ),
            text("under"),
            "the name as written is looked up first"
        );
    }

    #[test]
    fn repeated_header_is_a_duplicate_and_empty_is_text() {
        assert_eq!(
            from_headers("apikey", &headers(&[("apikey", "a"), ("apikey", "b")])),
            Value::Table
        );
        assert_eq!(
            from_headers("apikey", &headers(&[("apikey", "")])),
            text("")
        );
    }

    #[test]
    fn query_arguments_follow_ngx_rules() {
        assert_eq!(from_query("apikey", "x=1&apikey=a%2Bb+c"), text("a+b c"));
        assert_eq!(
            from_query("apikey", "apikey"),
            Value::Other,
            "bare name is a boolean"
        );
        assert_eq!(
            from_query("apikey", "APIKEY=a"),
            Value::Absent,
            "case-sensitive"
        );
        assert_eq!(from_query("apikey", "apikey=a&apikey=b"), Value::Table);
        assert_eq!(from_query("apikey", "apikey="), text(""));
        assert_eq!(from_query("apikey", "apikey&apikey=b"), Value::Table);
    }

    #[test]
    fn hidden_header_names_cover_both_spellings() {
        assert_eq!(
            header_names("API_Key"),
            ["api_key".to_string(), "api-key".to_string()]
        );
    }
}
