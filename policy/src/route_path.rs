//! Route paths as Kong writes them: `/prefix` (plain string prefix) or `~/regex` (anchored at
//! the start only).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RoutePath {
    Prefix(String),
    /// The pattern without the leading `~`, not yet anchored.
    Regex(String),
}

impl RoutePath {
    /// A path that this route matches, when one can be named without reading a regex: the
    /// prefix itself.
    pub fn literal_prefix(&self) -> Option<&str> {
        match self {
            Self::Prefix(prefix) => Some(prefix),
            Self::Regex(_) => None,
        }
    }

    /// The regex as it must be compiled: anchored at the start, Kong's `(?<name>)` accepted.
    pub fn anchored_regex(pattern: &str) -> String {
        format!("^(?:{})", pattern.replace("(?<", "(?P<"))
    }
}

impl TryFrom<String> for RoutePath {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if let Some(pattern) = text.strip_prefix('~') {
            if !pattern.starts_with('/') {
                return Err(format!("regex path {text:?} must start with \"~/\""));
            }
            regex_lite::Regex::new(&Self::anchored_regex(pattern))
                .map_err(|err| format!("invalid regex in path {text:?}: {err}"))?;
            Ok(Self::Regex(pattern.to_string()))
        } else if !text.starts_with('/') {
            Err(format!(
                "path {text:?} must start with \"/\" (prefix) or \"~/\" (regex)"
            ))
        } else if text.contains("//") {
            Err(format!("path {text:?} must not contain \"//\""))
        } else {
            Ok(Self::Prefix(text))
        }
    }
}

impl From<RoutePath> for String {
    fn from(path: RoutePath) -> Self {
        match path {
            RoutePath::Prefix(prefix) => prefix,
            RoutePath::Regex(pattern) => format!("~{pattern}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_regex_paths_parse() {
        assert_eq!(
            RoutePath::try_from("/results".to_string()),
            Ok(RoutePath::Prefix("/results".into()))
        );
        assert_eq!(
            RoutePath::try_from(r"~/orders/\d+$".to_string()),
            Ok(RoutePath::Regex(r"/orders/\d+$".into()))
        );
    }

    #[test]
    fn bad_paths_are_refused_with_the_reason() {
        assert!(
            RoutePath::try_from("results".to_string())
                .unwrap_err()
                .contains("must start")
        );
        assert!(
            RoutePath::try_from("/a//b".to_string())
                .unwrap_err()
                .contains("//")
        );
        assert!(
            RoutePath::try_from("~/orders/(".to_string())
                .unwrap_err()
                .contains("invalid regex")
        );
    }
}
