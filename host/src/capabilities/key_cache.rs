//! The `keygate:gateway/key-cache` capability: one LRU of key verdicts with per-entry TTLs,
//! shared by every request, with single-flight fills so a burst of requests carrying the same
//! unseen key costs one auth-API call, not one per request.

use crate::metrics::{LookupResult, Metrics};
use keygate_key_cache_core::{self as cache_core, Deadlines, Freshness};
use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use wasmtime::component::{HasData, Linker};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keygate:gateway/capabilities",
        imports: {
            "keygate:gateway/key-cache.get": async,
            "keygate:gateway/counters.hit": async,
            default: tracing,
        },
    });
}

use bindings::keygate::gateway::key_cache::Host;
pub use bindings::keygate::gateway::key_cache::{Consumer, Lookup, Verdict};

/// The cache key: the 32 bytes of the SHA-256 fingerprint (half the memory of its hex form).
type Fingerprint = [u8; 32];

/// Shared by all requests (and across guest hot swaps).
pub struct KeyCache {
    state: Mutex<State>,
    /// Entry times are milliseconds since this instant.
    epoch: Instant,
    /// Longest a request waits for another request's fill before filling itself.
    fill_wait: Duration,
    metrics: Arc<Metrics>,
    /// Moves whenever a fresh verdict may have changed or gone (invalidated, cleared, made
    /// stale, replaced): a decision reused on the strength of fresh verdicts ends when it does.
    revision: AtomicU64,
}

struct State {
    entries: LruCache<Fingerprint, Entry>,
    /// Fingerprints some request is filling now, and how to wake those waiting for it.
    filling: HashMap<Fingerprint, Arc<Notify>>,
}

/// One cached verdict, kept small: a million of them must fit in well under 200 MiB.
struct Entry {
    verdict: PackedVerdict,
    /// Milliseconds since the cache was created.
    deadlines: Deadlines,
}

/// A verdict in one allocation (or none for `invalid`): the consumer as the key-cache core
/// encodes it, the same bytes the adapters store. Four `Option<String>`s would take 96 bytes
/// plus four allocations per entry.
struct PackedVerdict(Option<Box<[u8]>>);

impl PackedVerdict {
    /// Takes the verdict by value so its strings move into the core's consumer, not copy.
    fn pack(verdict: Verdict) -> Self {
        let Verdict::Valid(consumer) = verdict else {
            return Self(None);
        };
        let mut bytes = Vec::new();
        cache_core::encode_consumer(&to_core(consumer), &mut bytes);
        // `encode_consumer` reserved exactly, so this keeps the buffer as it is.
        Self(Some(bytes.into_boxed_slice()))
    }

    /// `None` only if the bytes are not what `pack` wrote, which cannot happen; the caller
    /// treats it as a miss, so the key is checked again rather than served a wrong consumer.
    fn unpack(&self) -> Option<Verdict> {
        match &self.0 {
            None => Some(Verdict::Invalid),
            Some(bytes) => cache_core::decode_consumer(bytes).map(|c| Verdict::Valid(from_core(c))),
        }
    }
}

/// The bindgen and core consumers have the same four fields: converting moves the strings.
fn to_core(c: Consumer) -> cache_core::Consumer {
    cache_core::Consumer {
        id: c.id,
        username: c.username,
        custom_id: c.custom_id,
        credential_id: c.credential_id,
    }
}

fn from_core(c: cache_core::Consumer) -> Consumer {
    Consumer {
        id: c.id,
        username: c.username,
        custom_id: c.custom_id,
        credential_id: c.credential_id,
    }
}

impl KeyCache {
    pub fn new(capacity: usize, fill_wait: Duration, metrics: Arc<Metrics>) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            state: Mutex::new(State {
                entries: LruCache::new(capacity),
                filling: HashMap::new(),
            }),
            epoch: Instant::now(),
            fill_wait,
            metrics,
            revision: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the LRU half-updated in a way that
        // matters more than losing the cache, so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Look a fingerprint up; on `Stale`/`Miss` the caller is recorded as the filler.
    pub async fn get(&self, fingerprint: Fingerprint) -> Lookup {
        self.lookup(fingerprint).await.0
    }

    /// [`KeyCache::get`], and for a fresh verdict when it stops being fresh.
    async fn lookup(&self, fingerprint: Fingerprint) -> (Lookup, Option<Instant>) {
        let mut waited = false;
        loop {
            // Both live past the lock: `notified()` is created under the lock, so a `put` that
            // lands right after it is released still wakes this request.
            let notify: Arc<Notify>;
            let wakeup;
            {
                let mut state = self.lock();
                let now = self.now_ms();
                let mut fresh_until_ms = 0;
                let found = state.entries.get(&fingerprint).and_then(|entry| {
                    fresh_until_ms = entry.deadlines.fresh_until_ms;
                    match entry.deadlines.freshness(now) {
                        Freshness::Fresh => entry.verdict.unpack().map(Lookup::Fresh),
                        Freshness::Stale => entry.verdict.unpack().map(Lookup::Stale),
                        Freshness::Expired => None,
                    }
                });
                let found = match found {
                    Some(fresh @ Lookup::Fresh(_)) => {
                        self.metrics.key_cache_lookup(LookupResult::Fresh);
                        let until = self.epoch + Duration::from_millis(fresh_until_ms);
                        return (fresh, Some(until));
                    }
                    Some(found) => found,
                    None => Lookup::Miss,
                };
                match state.filling.get(&fingerprint) {
                    Some(filler) if !waited => {
                        notify = Arc::clone(filler);
                        wakeup = notify.notified();
                    }
                    // Nobody is filling, or the filler took longer than `fill_wait`: fill.
                    _ => {
                        state.filling.insert(fingerprint, Arc::new(Notify::new()));
                        self.metrics.key_cache_lookup(match found {
                            Lookup::Stale(_) => LookupResult::Stale,
                            _ => LookupResult::Miss,
                        });
                        return (found, None);
                    }
                }
            }
            self.metrics.key_cache_lookup(LookupResult::Coalesced);
            waited = tokio::time::timeout(self.fill_wait, wakeup).await.is_err();
        }
    }

    pub fn put(&self, fingerprint: Fingerprint, verdict: Verdict, ttl: Duration, stale: Duration) {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let entry = Entry {
            verdict: PackedVerdict::pack(verdict),
            deadlines: Deadlines::new(self.now_ms(), millis(ttl), millis(stale)),
        };
        let now = self.now_ms();
        let mut state = self.lock();
        let replaced = state.entries.put(fingerprint, entry);
        if replaced.is_some_and(|old| matches!(old.deadlines.freshness(now), Freshness::Fresh)) {
            self.changed();
        }
        if let Some(notify) = state.filling.remove(&fingerprint) {
            notify.notify_waiters();
        }
    }

    pub fn release(&self, fingerprint: Fingerprint) {
        if let Some(notify) = self.lock().filling.remove(&fingerprint) {
            notify.notify_waiters();
        }
    }

    /// Forget a verdict; whether there was one. The revision moves either way: a decision kept
    /// for reuse may rest on a verdict the cache has since evicted.
    pub fn invalidate(&self, fingerprint: Fingerprint) -> bool {
        let gone = self.lock().entries.pop(&fingerprint).is_some();
        self.changed();
        gone
    }

    pub fn clear(&self) {
        self.lock().entries.clear();
        self.changed();
    }

    /// Where the cache's fresh verdicts stand: unchanged as long as this is.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.revision.fetch_add(1, Ordering::AcqRel);
    }

    /// Make every fresh verdict stale (its stale window keeps its end): each is checked with
    /// the auth API on its next use, and served only if the auth API cannot answer. For a node
    /// that may have missed revocations. How many entries there were.
    pub fn mark_all_stale(&self) -> usize {
        let now = self.now_ms();
        let mut state = self.lock();
        for (_, entry) in state.entries.iter_mut() {
            entry.deadlines.fresh_until_ms = entry.deadlines.fresh_until_ms.min(now);
        }
        self.changed();
        state.entries.len()
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parse a guest-supplied fingerprint. Anything but 64 hex characters (either case) is hashed
/// with SHA-256, so a buggy or hostile guest still gets a well-formed, collision-free key and
/// never a panic.
pub fn parse_fingerprint(text: &str) -> Fingerprint {
    let mut out = [0u8; 32];
    let bytes = text.as_bytes();
    let decoded = bytes.len() == 64
        && bytes.chunks(2).zip(out.iter_mut()).all(|(pair, slot)| {
            match (hex_digit(pair[0]), hex_digit(pair[1])) {
                (Some(hi), Some(lo)) => {
                    *slot = hi << 4 | lo;
                    true
                }
                _ => false,
            }
        });
    if decoded {
        out
    } else {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).into()
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// One request's view: the shared cache plus the fills this request owes, which are released
/// when the request ends (a guest that traps mid-fill must not stall others until timeout).
pub struct KeyCacheView<'a> {
    cache: &'a KeyCache,
    fills: &'a mut Vec<Fingerprint>,
    reads: &'a mut Reads,
}

/// Per-request state the view borrows from.
pub struct KeyCacheState {
    cache: Arc<KeyCache>,
    fills: Vec<Fingerprint>,
    reads: Reads,
}

/// What one guest call did with the cache: whether a decision it made may be reused, and
/// until when (`reusable-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// The cache's revision when the call began.
    pub revision: u64,
    /// Every `get` answered `fresh`, and nothing was put, released or invalidated (nor, as
    /// the request's store adds, a request counted in a rate limit).
    pub only_fresh: bool,
    /// When the first of the verdicts read stops being fresh (none read: `None`).
    pub fresh_until: Option<Instant>,
}

impl KeyCacheState {
    pub fn new(cache: Arc<KeyCache>) -> Self {
        let reads = Reads::starting(&cache);
        Self {
            cache,
            fills: Vec::new(),
            reads,
        }
    }

    pub fn view(&mut self) -> KeyCacheView<'_> {
        KeyCacheView {
            cache: &self.cache,
            fills: &mut self.fills,
            reads: &mut self.reads,
        }
    }

    /// Begin watching a guest call's reads: the revision is taken before the call, so a
    /// verdict invalidated while the guest decides ends the decision's reuse at once.
    pub fn watch_reads(&mut self) {
        self.reads = Reads::starting(&self.cache);
    }

    pub fn reads(&self) -> Reads {
        self.reads
    }
}

impl Reads {
    fn starting(cache: &KeyCache) -> Self {
        Self {
            revision: cache.revision(),
            only_fresh: true,
            fresh_until: None,
        }
    }
}

impl KeyCacheState {
    /// Release fills left open (the request ended, or trapped, without `put` or `release`).
    pub fn release_fills(&mut self) {
        for fingerprint in self.fills.drain(..) {
            self.cache.release(fingerprint);
        }
    }
}

impl Drop for KeyCacheState {
    fn drop(&mut self) {
        self.release_fills();
    }
}

impl KeyCacheView<'_> {
    fn settled(&mut self, fingerprint: &Fingerprint) {
        self.fills.retain(|f| f != fingerprint);
    }
}

impl Host for KeyCacheView<'_> {
    async fn get(&mut self, fingerprint: String) -> Lookup {
        let fingerprint = parse_fingerprint(&fingerprint);
        let (lookup, fresh_until) = self.cache.lookup(fingerprint).await;
        match fresh_until {
            Some(until) => {
                let earliest = self.reads.fresh_until.map_or(until, |t| t.min(until));
                self.reads.fresh_until = Some(earliest);
            }
            None => {
                self.reads.only_fresh = false;
                self.fills.push(fingerprint);
            }
        }
        lookup
    }

    fn put(&mut self, fingerprint: String, verdict: Verdict, ttl_ms: u64, stale_ms: u64) {
        self.reads.only_fresh = false;
        let fingerprint = parse_fingerprint(&fingerprint);
        self.cache.put(
            fingerprint,
            verdict,
            Duration::from_millis(ttl_ms),
            Duration::from_millis(stale_ms),
        );
        self.settled(&fingerprint);
    }

    fn release(&mut self, fingerprint: String) {
        self.reads.only_fresh = false;
        let fingerprint = parse_fingerprint(&fingerprint);
        self.cache.release(fingerprint);
        self.settled(&fingerprint);
    }

    fn invalidate(&mut self, fingerprint: String) {
        self.reads.only_fresh = false;
        self.cache.invalidate(parse_fingerprint(&fingerprint));
    }
}

struct KeyCacheCapability;

impl HasData for KeyCacheCapability {
    type Data<'a> = KeyCacheView<'a>;
}

/// Link `keygate:gateway/key-cache` for stores whose data can produce a view.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyCacheView<'_>,
) -> wasmtime::Result<()> {
    bindings::keygate::gateway::key_cache::add_to_linker::<T, KeyCacheCapability>(linker, view)
}

#[cfg(test)]
mod tests;
