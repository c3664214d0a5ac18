//! Kong 3.9's `cors` plugin configuration (`kong/plugins/cors/schema.lua`): the same field
//! names, types and defaults. The behaviour (preflight answered before key-auth, the
//! `Access-Control-*` headers) is the guest's (`guest/src/cors.rs`).

use crate::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

/// Kong's `methods` default, and the only values it accepts.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// A `cors` instance's `[plugins.config]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of cors settings")]
pub struct Cors {
    /// Allowed origins: `*`, literal origins (`https://example.com`, compared after
    /// normalization) or regexes (anything with a character outside `[A-Za-z0-9.:/-]`,
    /// anchored at both ends; matched against the host only when it contains no `:`).
    /// Empty = every origin (`*`).
    pub origins: Vec<String>,
    /// `Access-Control-Allow-Headers` of a preflight; empty = echo the request's
    /// `Access-Control-Request-Headers`.
    pub headers: Vec<String>,
    /// `Access-Control-Expose-Headers` of other responses; empty = none.
    pub exposed_headers: Vec<String>,
    /// `Access-Control-Allow-Methods` of a preflight.
    pub methods: Vec<String>,
    /// `Access-Control-Max-Age` of a preflight (seconds), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<f64>,
    /// `Access-Control-Allow-Credentials: true` (with `*`, the request's origin is sent
    /// instead, since browsers refuse credentials with `*`).
    pub credentials: bool,
    /// `Access-Control-Allow-Private-Network: true` on preflights that ask for it.
    pub private_network: bool,
    /// Preflights go to the origin (and get no headers from the gateway) instead of being
    /// answered by the gateway.
    pub preflight_continue: bool,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            origins: Vec::new(),
            headers: Vec::new(),
            exposed_headers: Vec::new(),
            methods: METHODS.iter().map(|m| m.to_string()).collect(),
            max_age: None,
            credentials: false,
            private_network: false,
            preflight_continue: false,
        }
    }
}

/// Whether an `origins` entry is a regex for Kong (a character outside `[A-Za-z0-9.:/-]`).
pub fn is_regex_origin(entry: &str) -> bool {
    entry
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b"./:-".contains(&b)))
}

/// The regex an `origins` entry is matched with: Kong's adjustments (a `$` appended unless
/// it ends with one, a leading `^` dropped) and its anchored search (`ngx.re.find` with
/// `a`), so it must match from the subject's first character.
pub fn origin_regex(entry: &str) -> String {
    let mut entry = entry.to_string();
    if !entry.ends_with('$') {
        entry.push('$');
    }
    let entry = entry.strip_prefix('^').unwrap_or(&entry);
    format!("^(?:{entry})")
}

/// Whether keygate can use an `origins` entry: `*`, a literal, or a regex its engine
/// compiles (Kong's PCRE takes a few more: look-arounds, back-references).
pub fn origin_compiles(entry: &str) -> bool {
    entry == "*" || regex_lite::Regex::new(&origin_regex(entry)).is_ok()
}

impl Cors {
    /// Kong's schema rules; `field` is `plugins[i].config`.
    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        for (i, origin) in self.origins.iter().enumerate() {
            // Kong's `validate_asterisk_or_regex`: `*`, or anything its regex engine compiles.
            if !origin_compiles(origin) {
                return Err(invalid(
                    format!("{field}.origins[{i}]"),
                    format!("'{origin}' is not a valid regex"),
                ));
            }
        }
        for (i, method) in self.methods.iter().enumerate() {
            if !METHODS.contains(&method.as_str()) {
                return Err(invalid(
                    format!("{field}.methods[{i}]"),
                    format!("expected one of: {}", METHODS.join(", ")),
                ));
            }
        }
        if let Some(max_age) = self.max_age
            && !max_age.is_finite()
        {
            return Err(invalid(format!("{field}.max_age"), "must be a number"));
        }
        for (what, list) in [
            ("headers", &self.headers),
            ("exposed_headers", &self.exposed_headers),
        ] {
            for (i, value) in list.iter().enumerate() {
                if value.chars().any(|c| c.is_control()) {
                    return Err(invalid(
                        format!("{field}.{what}[{i}]"),
                        "cannot hold control characters (it is sent in a header)",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kongs() {
        let cors: Cors = serde_json::from_str("{}").unwrap();
        assert_eq!(
            cors.methods.join(","),
            "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
        );
        assert!(cors.origins.is_empty() && cors.headers.is_empty());
        assert!(!cors.credentials && !cors.private_network && !cors.preflight_continue);
        assert_eq!(cors.max_age, None);
        cors.validate("c").unwrap();
    }

    #[test]
    fn origins_are_literal_or_regex() {
        assert!(!is_regex_origin("https://example.com:8443"));
        assert!(is_regex_origin("https://.*\\.example\\.com"));
        assert!(is_regex_origin("*"));
        assert_eq!(origin_regex("^a\\.com"), "^(?:a\\.com$)");
        assert_eq!(origin_regex("a|b$"), "^(?:a|b$)");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = Cors {
            origins: vec!["*".into(), "http://(".into()],
            ..Cors::default()
        };
        assert_eq!(
            bad.validate("plugins[0].config").unwrap_err().to_string(),
            "plugins[0].config.origins[1]: 'http://(' is not a valid regex"
        );
        let bad = Cors {
            methods: vec!["GET".into(), "get".into()],
            ..Cors::default()
        };
        assert_eq!(
            bad.validate("plugins[0].config").unwrap_err().to_string(),
            "plugins[0].config.methods[1]: expected one of: GET, HEAD, PUT, PATCH, POST, DELETE, \
             OPTIONS, TRACE, CONNECT"
        );
        let bad = Cors {
            max_age: Some(f64::INFINITY),
            ..Cors::default()
        };
        assert!(bad.validate("c").is_err());
    }
}
