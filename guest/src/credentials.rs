//! Finding the API key in a request, exactly as Kong's key-auth does: for each configured name
//! in order, header then query string; the first value found decides.

use crate::percent::percent_decode;
use crate::request::RequestInfo;
use keygate_policy::KeyAuth;

#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    /// A key, and where it was found (so `hide_credentials` can remove it).
    Found { key: String, location: Location },
    /// No key anywhere, or an empty one (Kong stops at an empty value too).
    Missing,
    /// The same name twice within one source.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The header's lower-case name as the client sent it.
    Header(String),
    /// The query argument's name.
    Query(String),
}

pub fn extract(key_auth: &KeyAuth, request: &RequestInfo) -> Credential {
    for name in &key_auth.key_names {
        if key_auth.key_in_header
            && let Some(found) = from_headers(name, &request.headers)
        {
            return found;
        }
        if key_auth.key_in_query
            && let Some(query) = &request.query
            && let Some(found) = from_query(name, query)
        {
            return found;
        }
    }
    Credential::Missing
}

/// OpenResty's header lookup: the name lower-cased, and if nothing has that name, with `_`
/// turned into `-`. So `api_key` finds `API_KEY` and `api-key`, but `api-key` never finds `api_key`.
fn from_headers(name: &str, headers: &[(String, Vec<u8>)]) -> Option<Credential> {
    let exact = name.to_ascii_lowercase();
    let dashed = exact.replace('_', "-");
    for candidate in [&exact, &dashed] {
        let mut values = headers.iter().filter(|(n, _)| n == candidate);
        if let Some((header, value)) = values.next() {
            if values.next().is_some() {
                return Some(Credential::Duplicate);
            }
            return Some(found(
                String::from_utf8_lossy(value).into_owned(),
                Location::Header(header.clone()),
            ));
        }
    }
    None
}

/// `ngx.req.get_uri_args`: names are case-sensitive and decoded, `+` is a space, and a bare
/// `?apikey` (no `=`) is a boolean that does not count as a key.
fn from_query(name: &str, query: &str) -> Option<Credential> {
    let mut result = None;
    for pair in query.split('&') {
        let Some((raw_name, raw_value)) = pair.split_once('=') else {
            continue;
        };
        if percent_decode(raw_name) != name {
            continue;
        }
        if result.is_some() {
            return Some(Credential::Duplicate);
        }
        result = Some(found(
            percent_decode(raw_value),
            Location::Query(name.to_string()),
        ));
    }
    result
}

fn found(key: String, location: Location) -> Credential {
    if key.is_empty() {
        Credential::Missing
    } else {
        Credential::Found { key, location }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn key(k: &str, location: Location) -> Option<Credential> {
        Some(Credential::Found {
            key: k.into(),
            location,
        })
    }

    #[test]
    fn header_names_match_case_insensitively_and_underscore_matches_dash() {
        let h = headers(&[("api-key", "k1")]);
        assert_eq!(
            from_headers("API_KEY", &h),
            key("k1", Location::Header("api-key".into()))
        );
        let h = headers(&[("api_key", "k1")]);
        assert_eq!(
            from_headers("api-key", &h),
            None,
            "a dashed name never matches an underscore"
        );
    }

    #[test]
    fn repeated_header_is_a_duplicate_and_empty_is_missing() {
        assert_eq!(
            from_headers("apikey", &headers(&[("apikey", "a"), ("apikey", "b")])),
            Some(Credential::Duplicate)
        );
        assert_eq!(
            from_headers("apikey", &headers(&[("apikey", "")])),
            Some(Credential::Missing)
        );
    }

    #[test]
    fn query_arguments_follow_ngx_rules() {
        assert_eq!(
            from_query("apikey", "x=1&apikey=a%2Bb+c"),
            key("a+b c", Location::Query("apikey".into()))
        );
        assert_eq!(
            from_query("apikey", "apikey"),
            None,
            "bare name is a boolean"
        );
        assert_eq!(
            from_query("apikey", "APIKEY=a"),
            None,
            "query names are case-sensitive"
        );
        assert_eq!(
            from_query("apikey", "apikey=a&apikey=b"),
            Some(Credential::Duplicate)
        );
        assert_eq!(from_query("apikey", "apikey="), Some(Credential::Missing));
    }
}
