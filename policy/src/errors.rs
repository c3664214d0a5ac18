//! What the gateway says when it answers instead of the origin: Kong 3.9's wording and JSON
//! template, so clients that parse Kong's errors keep working.

pub const NO_KEY: &str = "No API key found in request";
pub const INVALID_KEY: &str = "Unauthorized";
pub const DUPLICATE_KEY: &str = "Duplicate API key found";
pub const NO_ROUTE: &str = "no Route matched with those values";
pub const BAD_GATEWAY: &str = "An invalid response was received from the upstream server";
pub const UNAVAILABLE: &str = "The upstream server is currently unavailable";
pub const TIMEOUT: &str = "The upstream server is timing out";
pub const INTERNAL: &str = "An unexpected error occurred";
pub const AUTH_UNAVAILABLE: &str = "The authentication service is currently unavailable";
pub const OVERLOADED: &str = "The gateway is at capacity, try again later";

/// Kong's JSON error body (3.5+), byte for byte.
pub fn json_body(message: &str, request_id: &str) -> String {
    let message = serde_json::to_string(message).expect("a string always serializes");
    format!("{{\n  \"message\":{message},\n  \"request_id\":\"{request_id}\"\n}}")
}

pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

#[cfg(test)]
mod tests {
    #[test]
    fn json_body_matches_kong_template() {
        assert_eq!(
            super::json_body("Unauthorized", "0123456789abcdef0123456789abcdef"),
            "{\n  \"message\":\"Unauthorized\",\n  \"request_id\":\"0123456789abcdef0123456789abcdef\"\n}"
        );
    }
}
