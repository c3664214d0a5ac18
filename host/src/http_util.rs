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
    let found = HeaderScan::of(headers, &[]);
    found.remove_hop_by_hop(headers, keep_upgrade);
}

/// What one pass over a message's header names found: everything the gateway removes from
/// or adds to a message, so that each removal (a hashed lookup) is made only for a name that
/// is there. Most messages carry one of them at most (an origin's `Connection: keep-alive`);
/// a hashed removal per name cost ~3 % of a cached-key request's instructions, a pass per
/// kind of removal ~1 %.
pub struct HeaderScan {
    hop_by_hop: [bool; 8],
    upgrade: bool,
    /// Any of keygate's internal headers ([`remove_internal_headers`]).
    pub internal: bool,
    /// Any of the names the scan was asked about.
    pub named: bool,
    pub via: bool,
    pub server: bool,
}

impl HeaderScan {
    /// Scan `headers`, also for any of `names`.
    pub fn of(headers: &http::HeaderMap, names: &[http::HeaderName]) -> Self {
        let mut found = Self {
            hop_by_hop: [false; 8],
            upgrade: false,
            internal: false,
            named: false,
            via: false,
            server: false,
        };
        for name in headers.keys() {
            if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
                found.hop_by_hop[i] = true;
            } else if name == http::header::UPGRADE {
                found.upgrade = true;
            } else if name == http::header::VIA {
                found.via = true;
            } else if name == http::header::SERVER {
                found.server = true;
            } else if name
                .as_str()
                .starts_with(keygate_policy::internal_headers::PREFIX)
            {
                found.internal = true;
            }
            if !names.is_empty() && names.contains(name) {
                found.named = true;
            }
        }
        found
    }

    /// [`remove_hop_by_hop`] of the scanned `headers`.
    pub fn remove_hop_by_hop(&self, headers: &mut http::HeaderMap, keep_upgrade: bool) {
        if self.hop_by_hop[0] {
            remove_named(headers, keep_upgrade, true);
        }
        for (name, present) in HOP_BY_HOP.iter().zip(self.hop_by_hop) {
            if present {
                headers.remove(name);
            }
        }
        if self.upgrade && !keep_upgrade {
            headers.remove(http::header::UPGRADE);
        }
    }

    /// Remove every value of each of `names` (those the scan was asked about), when it found
    /// any: an origin seldom sends what a plan removes.
    pub fn remove_named(&self, headers: &mut http::HeaderMap, names: &[http::HeaderName]) {
        if self.named {
            for name in names {
                headers.remove(name);
            }
        }
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
    remove_named(headers, keep_upgrade, false);
}

/// [`remove_connection_tokens`]; with `hop_by_hop_go_anyway` (the caller removes every
/// [`HOP_BY_HOP`] name itself) the usual `keep-alive` costs neither an allocation nor a lookup.
fn remove_named(headers: &mut http::HeaderMap, keep_upgrade: bool, hop_by_hop_go_anyway: bool) {
    let mut values = headers.get_all(http::header::CONNECTION).iter();
    if hop_by_hop_go_anyway
        && values.all(|value| value.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
    {
        return;
    }
    let named: Vec<http::HeaderName> = connection_tokens(headers)
        .filter(|token| !(hop_by_hop_go_anyway && is_hop_by_hop_token(token)))
        .filter_map(|token| http::HeaderName::try_from(token).ok())
        .filter(|name| !(keep_upgrade && name == http::header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Whether a `Connection` token names one of [`HOP_BY_HOP`], in any case.
fn is_hop_by_hop_token(token: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|name| name.as_str().eq_ignore_ascii_case(token))
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
    ip_text(client.ip())
}

/// [`client_ip`] of an address.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(std::net::IpAddr, String)>> = const { RefCell::new(None) };
    }
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
    let mut out = vec![0; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Digits only: always UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// [`hex`] written into `out` (twice the length of `bytes`).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

/// `n` as a header value. The numbers below 1000 (the latency headers' milliseconds, mostly)
/// are made once per process and shared without a count: a new value is an allocation, and
/// two of them per forwarded request cost ~0.3 k instructions.
pub fn number_value(n: u128) -> http::HeaderValue {
    use std::sync::LazyLock;
    const SMALL: usize = 1000;
    static SMALL_VALUES: LazyLock<Vec<http::HeaderValue>> = LazyLock::new(|| {
        (0..SMALL)
            .map(|n| http::HeaderValue::from_static(n.to_string().leak()))
            .collect()
    });
    match usize::try_from(n) {
        Ok(small) if small < SMALL => SMALL_VALUES[small].clone(),
        _ => http::HeaderValue::from(u64::try_from(n).unwrap_or(u64::MAX)),
    }
}

/// Each byte's two lower-case hex digits: one load per byte (a request id is made per
/// reused decision; digit by digit into a growing vector cost 0.4 k instructions).
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

/// A request id of the host's own (for a response it makes, or a reused decision): 128
/// random bits as 32 lower-case hex characters, like the guest's. SplitMix64 (Steele, Lea,
/// Flood 2014), seeded once per thread from the standard library's randomly keyed hasher: an
/// id must be unique, not secret.
pub fn request_id() -> String {
    let id = request_id_digits();
    // Digits only: always UTF-8.
    String::from_utf8(id.to_vec()).unwrap_or_default()
}

/// [`request_id`]'s characters, not yet in a string.
pub fn request_id_digits() -> [u8; 32] {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()),
        );
    }
    STATE.with(|state| {
        let next = || {
            let advanced = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(advanced);
            let mut z = advanced;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut random = [0u8; 16];
        random[..8].copy_from_slice(&next().to_le_bytes());
        random[8..].copy_from_slice(&next().to_le_bytes());
        let mut digits = [0u8; 32];
        hex_into(&random, &mut digits);
        digits
    })
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
    fn hop_by_hop_headers_and_those_connection_names_go_and_nothing_else() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "Keep-Alive, X-Private , close"),
            ("connection", "TE"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-private", "1"),
            ("close", "named too"),
            ("upgrade", "websocket"),
            ("x-kept", "2"),
            ("transfer-encoding", "chunked"),
        ] {
            headers.append(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let mut kept_upgrade = headers.clone();
        remove_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        remove_hop_by_hop(&mut kept_upgrade, true);
        let names: Vec<&str> = kept_upgrade.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["upgrade", "x-kept"]);

        // The usual origin's pair.
        let mut headers = http::HeaderMap::new();
        headers.insert("connection", http::HeaderValue::from_static("Keep-Alive"));
        headers.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
        headers.insert("x-kept", http::HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);

        // Alone, the tokens name everything they list, hop-by-hop names included.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "connection",
            http::HeaderValue::from_static("keep-alive, te"),
        );
        headers.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
        headers.insert("te", http::HeaderValue::from_static("trailers"));
        remove_connection_tokens(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["connection"]);
    }

    #[test]
    fn one_scan_finds_what_the_gateway_removes_and_adds() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-a", http::HeaderValue::from_static("1"));
        headers.append("x-b", http::HeaderValue::from_static("2"));
        headers.append("x-a", http::HeaderValue::from_static("3"));
        headers.append("via", http::HeaderValue::from_static("1.1 cache"));
        headers.append("keygate-labels", http::HeaderValue::from_static("{}"));
        let names = [
            http::HeaderName::from_static("x-a"),
            http::HeaderName::from_static("x-c"),
        ];
        let found = HeaderScan::of(&headers, &names);
        assert!(found.named && found.via && found.internal && !found.server);
        found.remove_named(&mut headers, &names);
        let mut left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["keygate-labels", "via", "x-b"]);
        let found = HeaderScan::of(&headers, &names);
        assert!(!found.named);
        found.remove_named(&mut headers, &names);
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn numbers_are_their_decimal_digits_below_and_above_the_shared_ones() {
        for n in [
            0u128,
            7,
            10,
            99,
            100,
            999,
            1000,
            65_535,
            u128::from(u64::MAX) + 1,
        ] {
            let expected = u64::try_from(n).unwrap_or(u64::MAX).to_string();
            assert_eq!(number_value(n).to_str().unwrap(), expected);
        }
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn request_ids_are_32_hex_characters_and_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "{id}"
            );
        }
        let other_thread = std::thread::spawn(request_id).join().unwrap();
        assert!(!ids.contains(&other_thread));
    }

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
