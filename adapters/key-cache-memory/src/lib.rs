//! `keygate:gateway/key-cache` kept in this component instance's memory, for hosts with no
//! store that keeps writes between requests (`wasmtime serve`). `keygate export --for
//! wasmtime` plugs it into the gateway component.
//!
//! Entries live as long as the instance: one request under `wasmtime serve`'s default, several
//! in a row with `--max-instance-reuse-count`. The gateway treats the cache as an
//! optimisation, so a miss only costs an auth API call. Deadlines are on the monotonic clock;
//! at most [`CAPACITY`] verdicts are kept.

use keygate_key_cache_core::{Consumer, Entry, Freshness, Verdict};
use std::cell::RefCell;
use std::collections::HashMap;

mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "../wit/adapters.wit"],
        world: "keygate:adapters/key-cache-memory",
        generate_all,
    });
}

use bindings::exports::keygate::gateway::key_cache as wit;

/// Verdicts kept at most; when full, expired entries go first, then the soonest to expire.
pub const CAPACITY: usize = 10_000;

thread_local! {
    static ENTRIES: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
}

fn now_ms() -> u64 {
    wasip2::clocks::monotonic_clock::now() / 1_000_000
}

struct MemoryKeyCache;

impl wit::Guest for MemoryKeyCache {
    fn get(fingerprint: String) -> wit::Lookup {
        let now = now_ms();
        ENTRIES.with_borrow_mut(|entries| {
            let Some(entry) = entries.get(&fingerprint) else {
                return wit::Lookup::Miss;
            };
            match entry.freshness(now) {
                Freshness::Fresh => wit::Lookup::Fresh(to_wit(&entry.verdict)),
                Freshness::Stale => wit::Lookup::Stale(to_wit(&entry.verdict)),
                Freshness::Expired => {
                    entries.remove(&fingerprint);
                    wit::Lookup::Miss
                }
            }
        })
    }

    fn put(fingerprint: String, verdict: wit::Verdict, ttl_ms: u64, stale_ms: u64) {
        let now = now_ms();
        let entry = Entry::new(from_wit(verdict), now, ttl_ms, stale_ms);
        ENTRIES.with_borrow_mut(|entries| {
            if entries.len() >= CAPACITY && !entries.contains_key(&fingerprint) {
                make_room(entries, now);
            }
            entries.insert(fingerprint, entry);
        });
    }

    /// Nothing to do: one instance runs one request at a time, so nobody waits on a filler.
    fn release(_fingerprint: String) {}

    fn invalidate(fingerprint: String) {
        ENTRIES.with_borrow_mut(|entries| entries.remove(&fingerprint));
    }
}

fn make_room(entries: &mut HashMap<String, Entry>, now: u64) {
    entries.retain(|_, entry| entry.freshness(now) != Freshness::Expired);
    if entries.len() >= CAPACITY
        && let Some(soonest) = entries
            .iter()
            .min_by_key(|(_, entry)| entry.deadlines.stale_until_ms)
            .map(|(fingerprint, _)| fingerprint.clone())
    {
        entries.remove(&soonest);
    }
}

fn to_wit(verdict: &Verdict) -> wit::Verdict {
    match verdict {
        Verdict::Invalid => wit::Verdict::Invalid,
        Verdict::Valid(c) => wit::Verdict::Valid(wit::Consumer {
            id: c.id.clone(),
            username: c.username.clone(),
            custom_id: c.custom_id.clone(),
            credential_id: c.credential_id.clone(),
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
bindings::export!(MemoryKeyCache with_types_in bindings);
