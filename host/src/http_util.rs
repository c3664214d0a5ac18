//! Small HTTP helpers shared by the request paths: hop-by-hop headers, ids.

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1). A proxy never
/// forwards them, whatever a decision says. `Connection` first (`remove_hop_by_hop`).
pub static HOP_BY_HOP: [http::HeaderName; 8] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
];

/// Remove the hop-by-hop headers and those `Connection` names. `Upgrade` stays when an
/// upgrade is being passed through (the caller then sets `Connection: upgrade` itself).
pub fn remove_hop_by_hop(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    // One pass over the names the message has, then a removal only for those present: a
    // hashed removal per hop-by-hop name cost ~3 % of a cached-key request's instructions,
    // and most messages carry one of them at most (an origin's `Connection: keep-alive`).
    let mut present = [false; 8];
    let mut upgrade = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        } else if name == http::header::UPGRADE {
            upgrade = true;
        }
    }
    if present[0] {
        remove_connection_tokens(headers, keep_upgrade);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if upgrade && !keep_upgrade {
        headers.remove(http::header::UPGRADE);
    }
}

/// Whether `name` is one of [`HOP_BY_HOP`] (without building the list).
pub fn is_hop_by_hop_name(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
    )
}

/// The tokens the `Connection` headers list.
pub fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
}

/// Headers named in `Connection` are hop-by-hop (RFC 9110 §7.6.1). wasi:http hides
/// `Connection` from guests, so the host drops what it names, both ways.
pub fn remove_connection_tokens(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    let named: Vec<http::HeaderName> = connection_tokens(headers)
        .filter_map(|token| http::HeaderName::try_from(token).ok())
        .filter(|name| !(keep_upgrade && name == http::header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// keygate's internal headers are a channel between the host and its guest: a copy sent by an
/// origin (or left by a guest) would leak to clients and, on the portable path, could name
/// the route in metrics.
pub fn remove_internal_headers(headers: &mut http::HeaderMap) {
    take_internal_headers(headers, None);
}

/// [`remove_internal_headers`], returning the value of `keep` (one of them) if present. Every
/// name shares the `keygate-` prefix: one pass over the names finds whether there is anything
/// to do, which there almost never is (removing each name blindly costs a hash per name).
pub fn take_internal_headers(
    headers: &mut http::HeaderMap,
    keep: Option<&'static str>,
) -> Option<http::HeaderValue> {
    let any = headers.keys().any(|name| {
        name.as_str()
            .starts_with(keygate_policy::internal_headers::PREFIX)
    });
    if !any {
        return None;
    }
    let kept = keep.and_then(|name| headers.remove(name));
    for name in keygate_policy::internal_headers::ALL {
        headers.remove(name);
    }
    kept
}

/// The client's IP as the guest is told it on either path (an IPv4 client of a dual-stack
/// listener as IPv4, not `::ffff:a.b.c.d`). The last one formatted is kept per thread: a
/// keep-alive connection asks for the same address request after request.
pub fn client_ip(client: std::net::SocketAddr) -> String {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(std::net::IpAddr, String)>> = const { RefCell::new(None) };
    }
    let ip = client.ip();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((seen, text)) if *seen == ip => text.clone(),
            _ => {
                let text = ip.to_canonical().to_string();
                *last = Some((ip, text.clone()));
                text
            }
        }
    })
}

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// A 32-hex-character id for a response the host makes itself.
pub fn request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut id = [0u8; 16];
    for half in id.chunks_mut(8) {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    hex(&id)
}

/// `%XX` escapes decoded (an invalid one is kept as is); invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_headers_all_share_the_prefix_the_fast_check_looks_for() {
        for name in keygate_policy::internal_headers::ALL {
            assert!(
                name.starts_with(keygate_policy::internal_headers::PREFIX),
                "{name}"
            );
        }
        let mut headers = http::HeaderMap::new();
        headers.insert("keygate-key", "abc".parse().unwrap());
        headers.insert("keygate-call", "x".parse().unwrap());
        headers.insert("x-kept", "y".parse().unwrap());
        let key = take_internal_headers(&mut headers, Some("keygate-key"));
        assert_eq!(key.unwrap(), "abc");
        assert_eq!(headers.len(), 1);
    }
}
