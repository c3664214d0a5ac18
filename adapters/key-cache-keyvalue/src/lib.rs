//! `keygate:gateway/key-cache` over the host's key-value store `default`
//! (`wasi:keyvalue/store@0.2.0-draft2`, what Spin 3.x provides to components that list
//! `key_value_stores = ["default"]`). `keygate export --for spin` names it as the gateway's
//! component dependency; Spin plugs it in at load.
//!
//! Entries are shared by every instance and outlive them (and restarts, with Spin's default
//! SQLite store). Each is stored with wall-clock deadlines, so any instance can tell fresh from
//! stale from expired; expired entries are deleted when read. The store is best effort: when
//! it fails, `get` answers `miss` and the gateway asks the auth API.

use keygate_key_cache_core::{Consumer, Entry, Freshness, Verdict};
use std::cell::OnceCell;

mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "../wit/adapters.wit"],
        world: "keygate:adapters/key-cache-keyvalue",
        generate_all,
    });
}

use bindings::exports::keygate::gateway::key_cache as wit;
use bindings::wasi::keyvalue::store;

/// The store Spin gives every app (`key_value_stores = ["default"]`).
pub const STORE: &str = "default";
/// Where keygate's entries live in the store: other components may share it.
pub const KEY_PREFIX: &str = "keygate:key-cache:";

thread_local! {
    /// The bucket, opened on first use; `None` if it could not be opened (said once).
    static BUCKET: OnceCell<Option<store::Bucket>> = const { OnceCell::new() };
}

fn with_bucket<T>(default: T, f: impl FnOnce(&store::Bucket) -> T) -> T {
    BUCKET.with(|cell| {
        let bucket = cell.get_or_init(|| match store::open(STORE) {
            Ok(bucket) => Some(bucket),
            Err(err) => {
                eprintln!(
                    "keygate key cache: cannot open key-value store {STORE:?} ({err:?}); \
                     every key is checked with the auth API"
                );
                None
            }
        });
        bucket.as_ref().map_or(default, f)
    })
}

fn key(fingerprint: &str) -> String {
    format!("{KEY_PREFIX}{fingerprint}")
}

fn now_ms() -> u64 {
    let now = wasip2::clocks::wall_clock::now();
    now.seconds
        .saturating_mul(1000)
        .saturating_add(u64::from(now.nanoseconds / 1_000_000))
}

struct KeyValueKeyCache;

impl wit::Guest for KeyValueKeyCache {
    fn get(fingerprint: String) -> wit::Lookup {
        let key = key(&fingerprint);
        with_bucket(wit::Lookup::Miss, |bucket| {
            let Ok(Some(bytes)) = bucket.get(&key) else {
                return wit::Lookup::Miss;
            };
            let Some(entry) = Entry::decode(&bytes) else {
                return wit::Lookup::Miss;
            };
            match entry.freshness(now_ms()) {
                Freshness::Fresh => wit::Lookup::Fresh(to_wit(entry.verdict)),
                Freshness::Stale => wit::Lookup::Stale(to_wit(entry.verdict)),
                Freshness::Expired => {
                    let _ = bucket.delete(&key);
                    wit::Lookup::Miss
                }
            }
        })
    }

    fn put(fingerprint: String, verdict: wit::Verdict, ttl_ms: u64, stale_ms: u64) {
        let entry = Entry::new(from_wit(verdict), now_ms(), ttl_ms, stale_ms);
        with_bucket((), |bucket| {
            let _ = bucket.set(&key(&fingerprint), &entry.encode());
        });
    }

    /// Nothing to do: the store has no notion of a filler that others wait for.
    fn release(_fingerprint: String) {}

    fn invalidate(fingerprint: String) {
        with_bucket((), |bucket| {
            let _ = bucket.delete(&key(&fingerprint));
        });
    }
}

fn to_wit(verdict: Verdict) -> wit::Verdict {
    match verdict {
        Verdict::Invalid => wit::Verdict::Invalid,
        Verdict::Valid(c) => wit::Verdict::Valid(wit::Consumer {
            id: c.id,
            username: c.username,
            custom_id: c.custom_id,
            credential_id: c.credential_id,
        }),
    }
}

fn from_wit(verdict: wit::Verdict) -> Verdict {
    match verdict {
        wit::Verdict::Invalid => Verdict::Invalid,
        wit::Verdict::Valid(c) => Verdict::Valid(Consumer {
            id: c.id,
            username: c.username,
            custom_id: c.custom_id,
            credential_id: c.credential_id,
        }),
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(KeyValueKeyCache with_types_in bindings);
