//! `keygate:gateway/counters` over the host's key-value store `default`
//! (`wasi:keyvalue@0.2.0-draft2` `store` and `atomics`, what Spin 3.x provides to components
//! that list `key_value_stores = ["default"]`). `keygate export --for spin` plugs it into the
//! gateway component, so every instance of the app counts in the same store.
//!
//! Windows are Kong's fixed windows aligned to UTC ([`Period::window_start`], shared with the
//! host and the in-instance adapter through `keygate-counters-core`), on the wall clock. Each
//! (period, window, namespace, identity) has one integer key, [`window_key`], that
//! `atomics.increment` counts:
//!
//! - `count-refused = true` (Kong's `redis` policy): one `increment(key, 1)` per window; the
//!   usage before the request is the new count minus one. Each window is atomic on its own.
//! - `count-refused = false` (Kong's `local` policy): every window is read first; when one is at
//!   or over its limit (`limit - usage <= 0`) nothing is counted, else each is incremented. The
//!   reads and the increments are separate store operations, so two instances may both take a
//!   window's last request (as Kong's `local` policy may across its workers): a limit can be
//!   exceeded by the requests that race, never refuse early.
//!
//! A missing key reads as 0 without writing anything. An existing key is read with
//! `increment(key, 0)`, not `get`: how a store keeps the integers `increment` makes is its own
//! business (Spin's SQLite store keeps 8 little-endian bytes, its Redis store decimal text).
//!
//! wasi:keyvalue has no expiry: the keys of ended windows stay in the store. So that their
//! number follows the identities rather than the time, the request that opens a window (its
//! `increment` returns 1) deletes the key of the window that identity was last counted in for
//! that period, which a pointer key per (period, namespace, identity), [`last_window_key`],
//! remembers. That is best effort: its failures are ignored, and instances racing at a window
//! boundary may leave a key behind. An identity that stops coming leaves its last window's key
//! per period, and the pointer, in the store for good.
//!
//! When the store fails, `hit` answers `counter-error.unavailable` (the gateway then follows
//! the limit's `fault_tolerant`); a `hit` that fails part-way may have counted some windows.

use keygate_counters_core::Period;
use std::cell::RefCell;

mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "../wit/adapters.wit"],
        world: "keygate:adapters/counters-keyvalue",
        generate_all,
    });
}

use bindings::exports::keygate::gateway::counters as wit;
use bindings::wasi::keyvalue::{atomics, store as kv};

/// The store Spin gives every app (`key_value_stores = ["default"]`).
pub const STORE: &str = "default";
/// Where keygate's counters live in the store (the key cache's entries share it).
pub const KEY_PREFIX: &str = "keygate-rl:";
/// Identities longer than this (a `limit_by = "header"` value can be kilobytes) are keyed by
/// their SHA-256 in hex, as the keygate host keeps them.
pub const MAX_IDENTITY: usize = 128;

/// What `hit` needs from a key-value store; errors are a sentence for `unavailable`.
pub trait Store {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, key: &str) -> Result<(), String>;
    /// Add `delta` to the integer at `key` (missing: 0) and return the sum, atomically.
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String>;
}

/// The counter of `identity` in `namespace` for `period`'s window starting at `start`:
/// `keygate-rl:{period}:{start}:{namespace}:{identity}`.
pub fn window_key(period: Period, start: u64, namespace: &str, identity: &str) -> String {
    format!(
        "{KEY_PREFIX}{}:{start}:{namespace}:{identity}",
        period.name()
    )
}

/// The start of the last window of `period` counted for `identity` in `namespace`, in decimal:
/// `keygate-rl:{period}:last:{namespace}:{identity}`.
pub fn last_window_key(period: Period, namespace: &str, identity: &str) -> String {
    format!("{KEY_PREFIX}{}:last:{namespace}:{identity}", period.name())
}

/// `identity`, or its SHA-256 in lowercase hex when longer than [`MAX_IDENTITY`] bytes.
pub fn key_identity(identity: &str) -> std::borrow::Cow<'_, str> {
    if identity.len() <= MAX_IDENTITY {
        return identity.into();
    }
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(identity.as_bytes());
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex.into()
}

/// `keygate:gateway/counters.hit` on `store` at `now` (seconds since the epoch): each window's
/// usage before this request, in the order of `windows` (see the module comment for the rules).
pub fn hit(
    store: &impl Store,
    namespace: &str,
    identity: &str,
    windows: &[(Period, f64)],
    count_refused: bool,
    now: u64,
) -> Result<Vec<u64>, String> {
    let identity = key_identity(identity);
    let keys: Vec<(Period, u64, String)> = windows
        .iter()
        .map(|&(period, _)| {
            let start = period.window_start(now);
            (
                period,
                start,
                window_key(period, start, namespace, &identity),
            )
        })
        .collect();
    let mut before = Vec::with_capacity(windows.len());
    if count_refused {
        for (period, start, key) in &keys {
            let count = store.increment(key, 1)?;
            if count == 1 {
                forget_last_window(store, *period, *start, namespace, &identity);
            }
            before.push(count_to_u64(count - 1));
        }
        return Ok(before);
    }
    let mut over = false;
    for ((_, limit), (_, _, key)) in windows.iter().zip(&keys) {
        let usage = match store.get(key)? {
            None => 0,
            // The value's encoding is the store's: an increment by 0 reads it as a number.
            Some(_) => count_to_u64(store.increment(key, 0)?),
        };
        over |= limit - usage as f64 <= 0.0;
        before.push(usage);
    }
    if over {
        return Ok(before);
    }
    for (period, start, key) in &keys {
        if store.increment(key, 1)? == 1 {
            forget_last_window(store, *period, *start, namespace, &identity);
        }
    }
    Ok(before)
}

fn count_to_u64(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}

/// The first request of `period`'s window at `start` was just counted: point the identity's
/// pointer at it and delete the key of the window it pointed at before (best effort).
fn forget_last_window(
    store: &impl Store,
    period: Period,
    start: u64,
    namespace: &str,
    identity: &str,
) {
    let pointer = last_window_key(period, namespace, identity);
    let Ok(last) = store.get(&pointer) else {
        return;
    };
    let last = last.and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse::<u64>().ok());
    if last.is_some_and(|last| last >= start) {
        // Another instance is in this window already, or (its clock ahead) in a later one.
        return;
    }
    if store.set(&pointer, start.to_string().as_bytes()).is_err() {
        return;
    }
    if let Some(last) = last {
        let _ = store.delete(&window_key(period, last, namespace, identity));
    }
}

thread_local! {
    /// The bucket, opened on first use (and retried on the next `hit` if that failed).
    static BUCKET: RefCell<Option<kv::Bucket>> = const { RefCell::new(None) };
}

/// [`Store`] over the host's bucket.
struct KeyValue<'a>(&'a kv::Bucket);

impl Store for KeyValue<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get(key).map_err(describe)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.set(key, value).map_err(describe)
    }
    fn delete(&self, key: &str) -> Result<(), String> {
        self.0.delete(key).map_err(describe)
    }
    fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
        atomics::increment(self.0, key, delta).map_err(describe)
    }
}

fn describe(err: kv::Error) -> String {
    match err {
        kv::Error::NoSuchStore => format!("key-value store {STORE:?}: no such store"),
        kv::Error::AccessDenied => format!(
            "key-value store {STORE:?}: access denied (is it in the component's \
             key_value_stores?)"
        ),
        kv::Error::Other(reason) => format!("key-value store {STORE:?}: {reason}"),
    }
}

fn with_bucket<T>(f: impl FnOnce(&kv::Bucket) -> Result<T, String>) -> Result<T, String> {
    BUCKET.with_borrow_mut(|cell| {
        if cell.is_none() {
            *cell = Some(kv::open(STORE).map_err(describe)?);
        }
        f(cell.as_ref().expect("opened above"))
    })
}

fn now() -> u64 {
    wasip2::clocks::wall_clock::now().seconds
}

fn period(period: wit::Period) -> Period {
    match period {
        wit::Period::Second => Period::Second,
        wit::Period::Minute => Period::Minute,
        wit::Period::Hour => Period::Hour,
        wit::Period::Day => Period::Day,
        wit::Period::Month => Period::Month,
        wit::Period::Year => Period::Year,
    }
}

struct KeyValueCounters;

impl wit::Guest for KeyValueCounters {
    fn hit(
        namespace: String,
        identity: String,
        windows: Vec<wit::Window>,
        count_refused: bool,
    ) -> Result<wit::Usage, wit::CounterError> {
        let now = now();
        let windows: Vec<(Period, f64)> = windows
            .iter()
            .map(|window| (period(window.period), window.limit))
            .collect();
        let before = with_bucket(|bucket| {
            hit(
                &KeyValue(bucket),
                &namespace,
                &identity,
                &windows,
                count_refused,
                now,
            )
        })
        .map_err(wit::CounterError::Unavailable)?;
        Ok(wit::Usage { before, now })
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(KeyValueCounters with_types_in bindings);

#[cfg(test)]
mod tests {
    use super::*;
    use keygate_counters_core::Counters;
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    /// 2024-02-29 13:45:30 UTC.
    const LEAP: u64 = 1_709_214_330;

    /// A store like Spin's SQLite one: integers as 8 little-endian bytes.
    #[derive(Default)]
    struct Fake {
        entries: RefCell<BTreeMap<String, Vec<u8>>>,
        failing: Cell<bool>,
        operations: Cell<usize>,
    }

    impl Fake {
        fn op(&self) -> Result<(), String> {
            self.operations.set(self.operations.get() + 1);
            if self.failing.get() {
                Err("the store is down".into())
            } else {
                Ok(())
            }
        }
        fn keys(&self) -> Vec<String> {
            self.entries.borrow().keys().cloned().collect()
        }
        fn count(&self, key: &str) -> Option<i64> {
            let entries = self.entries.borrow();
            let bytes: [u8; 8] = entries.get(key)?.as_slice().try_into().unwrap();
            Some(i64::from_le_bytes(bytes))
        }
    }

    impl Store for Fake {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            self.op()?;
            Ok(self.entries.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.op()?;
            self.entries.borrow_mut().insert(key.into(), value.to_vec());
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.op()?;
            self.entries.borrow_mut().remove(key);
            Ok(())
        }
        fn increment(&self, key: &str, delta: i64) -> Result<i64, String> {
            self.op()?;
            let count = self.count(key).unwrap_or(0) + delta;
            self.entries
                .borrow_mut()
                .insert(key.into(), count.to_le_bytes().to_vec());
            Ok(count)
        }
    }

    fn minute(now: u64) -> String {
        window_key(
            Period::Minute,
            Period::Minute.window_start(now),
            "r:s",
            "ann",
        )
    }

    #[test]
    fn keys_name_period_window_namespace_and_identity() {
        assert_eq!(
            window_key(Period::Hour, 1_709_211_600, "r1:s1", "10.0.0.1"),
            "keygate-rl:hour:1709211600:r1:s1:10.0.0.1"
        );
        assert_eq!(
            last_window_key(Period::Day, ":s1", "ann"),
            "keygate-rl:day:last::s1:ann"
        );
        let long = "x".repeat(MAX_IDENTITY + 1);
        let hashed = key_identity(&long);
        assert_eq!(hashed.len(), 64);
        assert!(
            hashed
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(key_identity(&long[1..]), long[1..]);
        assert_eq!(
            key_identity(&"abc".repeat(50)),
            // sha256("abc" × 50), from `sha256sum`.
            "97ca5175ac60b081b919120849da7d71fb00456ac6c32ebe96581ce34cfe2596"
        );
    }

    #[test]
    fn redis_rule_counts_refused_requests_per_window() {
        let store = Fake::default();
        let windows = [(Period::Minute, 1.0), (Period::Hour, 10.0)];
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(hit(&store, "r:s", "ann", &windows, true, LEAP).unwrap());
        }
        assert_eq!(seen, [0, 0, 1, 1, 2, 2]);
        assert_eq!(store.count(&minute(LEAP)), Some(3));
    }

    #[test]
    fn local_rule_refuses_without_counting_or_writing() {
        let store = Fake::default();
        let windows = [(Period::Minute, 2.0), (Period::Hour, 10.0)];
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(hit(&store, "r:s", "ann", &windows, false, LEAP).unwrap());
        }
        assert_eq!(seen, [0, 0, 1, 1, 2, 2]);
        assert_eq!(
            store.count(&minute(LEAP)),
            Some(2),
            "the refusal used no quota"
        );
        // Refused by its hour, bob's reads of a new second's window create no key there.
        let bob = [(Period::Second, 5.0), (Period::Hour, 1.0)];
        assert_eq!(
            hit(&store, "r:s", "bob", &bob, false, LEAP).unwrap(),
            [0, 0]
        );
        assert_eq!(
            hit(&store, "r:s", "bob", &bob, false, LEAP + 1).unwrap(),
            [0, 1]
        );
        let second = window_key(Period::Second, LEAP + 1, "r:s", "bob");
        assert_eq!(store.count(&second), None);
        assert_eq!(
            store.keys().iter().filter(|k| k.ends_with(":bob")).count(),
            4
        );
        // The next minute starts from zero; the hour goes on.
        let before = hit(&store, "r:s", "ann", &windows, false, LEAP + 30).unwrap();
        assert_eq!(before, [0, 2]);
    }

    #[test]
    fn opening_a_window_deletes_the_last_one_counted() {
        let store = Fake::default();
        let windows = [(Period::Minute, 100.0)];
        hit(&store, "r:s", "ann", &windows, true, LEAP).unwrap();
        hit(&store, "r:s", "ann", &windows, true, LEAP).unwrap();
        let pointer = last_window_key(Period::Minute, "r:s", "ann");
        assert_eq!(store.keys(), [minute(LEAP), pointer.clone()]);
        // Three minutes later (no request in between): the old window's key goes.
        let later = LEAP + 180;
        assert_eq!(
            hit(&store, "r:s", "ann", &windows, false, later).unwrap(),
            [0]
        );
        assert_eq!(store.keys(), [minute(later), pointer.clone()]);
        let start = Period::Minute.window_start(later).to_string();
        assert_eq!(store.entries.borrow()[&pointer], start.as_bytes());
        // An instance whose clock is behind does not move the pointer back.
        hit(&store, "r:s", "ann", &windows, true, LEAP).unwrap();
        assert_eq!(store.entries.borrow()[&pointer], start.as_bytes());
        assert_eq!(store.count(&minute(later)), Some(1));
        // Month windows follow the calendar: Feb → Mar 2024.
        let month = [(Period::Month, 5.0)];
        hit(&store, "m", "ann", &month, true, LEAP).unwrap();
        hit(&store, "m", "ann", &month, true, 1_709_251_200).unwrap();
        let months: Vec<String> = store
            .keys()
            .into_iter()
            .filter(|key| key.starts_with("keygate-rl:month:1"))
            .collect();
        assert_eq!(months, ["keygate-rl:month:1709251200:m:ann"]);
    }

    #[test]
    fn store_failures_are_reasons() {
        let store = Fake::default();
        store.failing.set(true);
        for count_refused in [true, false] {
            assert_eq!(
                hit(
                    &store,
                    "r:s",
                    "ann",
                    &[(Period::Second, 1.0)],
                    count_refused,
                    LEAP
                ),
                Err("the store is down".to_string())
            );
        }
        // A damaged pointer is not a failing hit (the cleanup is best effort).
        let store = Fake::default();
        hit(&store, "r:s", "ann", &[(Period::Second, 9.0)], true, LEAP).unwrap();
        let pointer = last_window_key(Period::Second, "r:s", "ann");
        store.entries.borrow_mut().insert(pointer, b"junk".to_vec());
        assert_eq!(
            hit(
                &store,
                "r:s",
                "ann",
                &[(Period::Second, 9.0)],
                true,
                LEAP + 1
            )
            .unwrap(),
            [0]
        );
    }

    /// Against the rule every other counter store follows (`keygate-counters-core`), over a
    /// pseudo-random run of requests, times and both policies: same usages, same counts.
    #[test]
    fn agrees_with_the_in_memory_rule() {
        let windows = [
            (Period::Second, 3.0),
            (Period::Minute, 7.5),
            (Period::Hour, 20.0),
        ];
        for count_refused in [false, true] {
            let store = Fake::default();
            let mut model = Counters::default();
            let mut now = LEAP;
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            for _ in 0..2_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                now += [0, 0, 0, 1, 1, 2, 5, 40][(seed % 8) as usize];
                let mut expected = Vec::new();
                model.hit(&windows, count_refused, now, &mut expected);
                let got = hit(&store, "r:s", "ann", &windows, count_refused, now).unwrap();
                assert_eq!(got, expected, "at {now}, count_refused {count_refused}");
            }
            // Bounded: per period the current window's key and the pointer.
            assert!(
                store.keys().len() <= 2 * windows.len(),
                "{:?}",
                store.keys()
            );
        }
    }
}
