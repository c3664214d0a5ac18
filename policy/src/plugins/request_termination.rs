//! Kong 3.9's `request-termination` plugin configuration
//! (`kong/plugins/request-termination/schema.lua`): the same fields, defaults and entity
//! checks. The reply itself is the guest's (`guest/src/request_termination.rs`).

use crate::config::{ConfigError, invalid};
use serde::{Deserialize, Serialize};

/// A `request-termination` instance's `[plugins.config]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a table of request-termination settings"
)]
pub struct RequestTermination {
    pub status_code: u16,
    /// Sent as `{"message":"…"}`; without it, Kong's default for the status (if any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `Content-Type` of `body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Sent as is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Answer with a JSON description of the request instead.
    pub echo: bool,
    /// Terminate only requests with this header or query argument; others pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

impl Default for RequestTermination {
    fn default() -> Self {
        Self {
            status_code: 503,
            message: None,
            content_type: None,
            body: None,
            echo: false,
            trigger: None,
        }
    }
}

/// Kong's `DEFAULT_RESPONSE` messages (`kong/plugins/request-termination/handler.lua`).
pub fn default_message(status: u16) -> Option<&'static str> {
    Some(match status {
        401 => "Unauthorized",
        404 => "Not found",
        405 => "Method not allowed",
        500 => "An unexpected error occurred",
        502 => "Bad Gateway",
        503 => "Service unavailable",
        _ => return None,
    })
}

impl RequestTermination {
    /// The message sent (or echoed): `message`, else the status's default.
    pub fn message(&self) -> Option<&str> {
        self.message
            .as_deref()
            .or_else(|| default_message(self.status_code))
    }

    /// Kong's entity checks, in its order and words; `field` is `plugins[i].config`.
    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if !(100..=599).contains(&self.status_code) {
            return Err(invalid(
                format!("{field}.status_code"),
                "status_code must be between 100 .. 599",
            ));
        }
        // Kong accepts 1xx, but no HTTP response can end with one: nothing would be sent.
        if self.status_code < 200 {
            return Err(invalid(
                format!("{field}.status_code"),
                "must be from 200 to 599 here: Kong accepts 100 .. 599, but a 1xx status cannot \
                 end a response",
            ));
        }
        if self.message.is_some() && self.body.is_some() {
            return Err(invalid(field, "message and body are mutually exclusive"));
        }
        if self.content_type.is_some() && self.body.is_none() {
            return Err(invalid(field, "content_type requires a body"));
        }
        if self.echo && self.content_type.is_some() {
            return Err(invalid(
                field,
                "echo and content_type are mutually exclusive",
            ));
        }
        if self.echo && self.body.is_some() {
            return Err(invalid(field, "echo and body are mutually exclusive"));
        }
        if let Some(trigger) = &self.trigger
            && !super::rate_limiting::is_header_name(trigger)
        {
            return Err(invalid(
                format!("{field}.trigger"),
                format!("{trigger:?} is not a header name"),
            ));
        }
        if let Some(content_type) = &self.content_type
            && content_type.chars().any(|c| c.is_control())
        {
            return Err(invalid(
                format!("{field}.content_type"),
                "cannot hold control characters (it is sent in a header)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(config: RequestTermination) -> String {
        config.validate("p").unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_messages_are_kongs() {
        let config = RequestTermination::default();
        assert_eq!(config.status_code, 503);
        assert_eq!(config.message(), Some("Service unavailable"));
        config.validate("p").unwrap();
        let config = RequestTermination {
            status_code: 403,
            ..config
        };
        assert_eq!(config.message(), None);
        let config = RequestTermination {
            message: Some("Access is forbidden.".into()),
            ..config
        };
        assert_eq!(config.message(), Some("Access is forbidden."));
    }

    #[test]
    fn kongs_entity_checks() {
        let base = RequestTermination::default;
        assert_eq!(
            error(RequestTermination {
                status_code: 600,
                ..base()
            }),
            "p.status_code: status_code must be between 100 .. 599"
        );
        assert!(
            error(RequestTermination {
                status_code: 101,
                ..base()
            })
            .starts_with("p.status_code: must be from 200 to 599")
        );
        assert_eq!(
            error(RequestTermination {
                message: Some("m".into()),
                body: Some("b".into()),
                ..base()
            }),
            "p: message and body are mutually exclusive"
        );
        assert_eq!(
            error(RequestTermination {
                message: Some("m".into()),
                content_type: Some("text/plain".into()),
                ..base()
            }),
            "p: content_type requires a body"
        );
        assert_eq!(
            error(RequestTermination {
                echo: true,
                body: Some("b".into()),
                ..base()
            }),
            "p: echo and body are mutually exclusive"
        );
        assert_eq!(
            error(RequestTermination {
                echo: true,
                body: Some("b".into()),
                content_type: Some("text/plain".into()),
                ..base()
            }),
            "p: echo and content_type are mutually exclusive"
        );
        assert_eq!(
            error(RequestTermination {
                trigger: Some("x y".into()),
                ..base()
            }),
            "p.trigger: \"x y\" is not a header name"
        );
        RequestTermination {
            body: Some("<h1>down</h1>".into()),
            content_type: Some("text/html".into()),
            trigger: Some("x-terminate".into()),
            ..base()
        }
        .validate("p")
        .unwrap();
    }
}
