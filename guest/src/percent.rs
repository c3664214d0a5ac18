//! Percent-encoding, the three ways the gateway needs it.

/// Query-string decoding as `ngx.req.get_uri_args` does it: `%XX` and `+` as a space.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Percent-encode everything but RFC 3986 unreserved characters: for putting a key in a URL.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if is_unreserved(byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decode only escapes of unreserved characters and upper-case the rest: Kong's path
/// normalization, which keeps the path's meaning while giving each path one spelling.
///
/// A `%` that starts no escape is written as one, `%25`. Kept bare, it could join what follows
/// once that is decoded (`%%61` → `%a`) and make an escape the gateway never decoded: a path
/// routed as `/%2e%2e/admin` (from `/%%32%65%%32%65/admin`) reaches an origin that reads it as
/// `/admin`. So the result is its own normalization, and what the origin decodes is what the
/// route matched.
pub fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
        {
            let value = hi << 4 | lo;
            if is_unreserved(value) {
                out.push(value);
            } else {
                out.push(b'%');
                out.push(bytes[i + 1].to_ascii_uppercase());
                out.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        if bytes[i] == b'%' {
            out.extend_from_slice(b"%25");
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips() {
        let raw = "k/ey with?&=%é";
        assert_eq!(percent_decode(&percent_encode(raw)), raw);
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(decode_unreserved("/%61b%2fc%zz%"), "/ab%2Fc%25zz%25");
    }

    /// Found by `cargo fuzz run route`: a bare `%` joined the character decoded after it into
    /// a new escape (`%%61b` → `%ab`), so normalizing twice differed from once, and a
    /// double-encoded `..` survived normalization to reach the origin.
    #[test]
    fn a_bare_percent_never_joins_what_follows_into_an_escape() {
        assert_eq!(decode_unreserved("/keep/%%61b%2fc"), "/keep/%25ab%2Fc");
        assert_eq!(decode_unreserved("/keep/%25ab%2Fc"), "/keep/%25ab%2Fc");
        assert_eq!(
            decode_unreserved("/%%32%65%%32%65/admin"),
            "/%252e%252e/admin"
        );
        assert_eq!(decode_unreserved("/50%"), "/50%25");
    }
}
