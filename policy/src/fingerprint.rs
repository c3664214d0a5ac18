//! Key fingerprints: what the cache, logs and metrics see instead of an API key.

/// The first characters of a key, for logs: enough to tell keys apart when debugging with the
/// key's owner, never enough to use it. Keys of 8 characters or fewer show nothing.
pub fn redact(key: &str) -> String {
    let visible: String = key.chars().take(4).collect();
    if key.chars().count() <= 8 {
        "****".to_string()
    } else {
        format!("{visible}****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_never_shows_a_whole_key() {
        assert_eq!(redact("short"), "****");
        assert_eq!(redact("demo-key-1234"), "demo****");
    }
}

/// SHA-256 hex of a key: the identity under which the key cache stores a verdict.
///
/// Remembered for the last keys seen (per thread; in the guest, per instance): a hot key's
/// request then costs a lookup instead of a SHA-256 (~5 % of a cached-key request's
/// instructions on the fast path, callgrind).
pub fn fingerprint(key: &str) -> String {
    if key.len() > MEMO_KEY_MAX {
        return sha256_hex(key);
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        if memo.is_empty() {
            memo.resize_with(MEMO_SLOTS, || None);
        }
        let slot = &mut memo[memo_slot(key)];
        if let Some((known, fingerprint)) = slot
            && known == key
        {
            return fingerprint.clone();
        }
        let fingerprint = sha256_hex(key);
        *slot = Some((key.to_string(), fingerprint.clone()));
        fingerprint
    })
}

/// Remembered fingerprints: direct-mapped, a later key taking an earlier one's slot.
const MEMO_SLOTS: usize = 1024;
/// Longer keys are not remembered (bounds the memo at a few tens of KiB).
const MEMO_KEY_MAX: usize = 128;

/// A slot of the memo: a key and its fingerprint.
type MemoSlot = Option<(String, String)>;

thread_local! {
    static MEMO: std::cell::RefCell<Vec<MemoSlot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// FNV-1a of the key, folded to a slot.
fn memo_slot(key: &str) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash ^ (hash >> 32)) as usize % MEMO_SLOTS
}

fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod fingerprint_tests {
    #[test]
    fn fingerprint_is_sha256_hex() {
        for _ in 0..2 {
            assert_eq!(
                super::fingerprint("abc"),
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            );
        }
    }

    #[test]
    fn remembered_fingerprints_stay_right_when_keys_share_a_slot() {
        let keys: Vec<String> = (0..2000).map(|i| format!("key{i:06}")).collect();
        for key in keys
            .iter()
            .chain(&keys)
            .chain(std::iter::once(&"x".repeat(200)))
        {
            assert_eq!(super::fingerprint(key), super::sha256_hex(key), "{key}");
        }
    }
}

/// The id Kong DB-less gives a consumer that has no explicit `id`: UUIDv5 of the username in
/// the namespace UUIDv5(fd02801f-0957-4a15-a55a-c8d9606f30b5, "consumers"). Matching it keeps
/// `X-Consumer-ID` stable across a migration.
pub fn consumer_uuid(username: &str) -> String {
    let consumers = uuid_v5(&KONG_NAMESPACE, "consumers");
    format_uuid(&uuid_v5(&consumers, username))
}

/// An id for a credential written in the config (Kong gives every key-auth credential one,
/// sent upstream as `X-Credential-Identifier`): UUIDv5 of the key's fingerprint in the
/// namespace UUIDv5(Kong's namespace, "keyauth_credentials"), so it stays the same across
/// restarts and never reveals the key.
pub fn credential_uuid(fingerprint: &str) -> String {
    let credentials = uuid_v5(&KONG_NAMESPACE, "keyauth_credentials");
    format_uuid(&uuid_v5(&credentials, fingerprint))
}

const KONG_NAMESPACE: [u8; 16] = [
    0xfd, 0x02, 0x80, 0x1f, 0x09, 0x57, 0x4a, 0x15, 0xa5, 0x5a, 0xc8, 0xd9, 0x60, 0x6f, 0x30, 0xb5,
];

fn uuid_v5(namespace: &[u8; 16], name: &str) -> [u8; 16] {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(namespace);
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x50;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod uuid_tests {
    #[test]
    fn uuid_v5_matches_the_rfc_example() {
        // RFC 4122 DNS namespace, "www.example.com" -> 2ed6657d-e927-568b-95e1-2665a8aea6a2
        let dns = [
            0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4,
            0x30, 0xc8,
        ];
        assert_eq!(
            super::format_uuid(&super::uuid_v5(&dns, "www.example.com")),
            "2ed6657d-e927-568b-95e1-2665a8aea6a2"
        );
    }
}
