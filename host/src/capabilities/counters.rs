//! The `keygate:gateway/counters` capability in memory: Kong's `local` policy, one table of
//! per-identity window counts shared by every request of this node (and kept across guest hot
//! swaps), so a `local` limit holds per gateway node, as Kong's per-node shm does.
//!
//! - Cheap: the table is split in [`SHARDS`] shards, each behind its own lock, chosen by a
//!   hash of (namespace, identity); a hit on a known identity allocates nothing and holds one
//!   shard's lock for a few hash probes.
//! - Bounded: at most `capacity` identities ([`DEFAULT_CAPACITY`] unless told otherwise, ~200
//!   bytes each). An identity takes 96 bytes of counts plus its names; one whose windows have
//!   all ended is dropped when its shard needs room. When a shard is full of live identities,
//!   the one counted least recently is evicted (Kong's shm evicts its least recently used
//!   counters too): a flood of new identities can make the gateway forget a count, never
//!   refuse by mistake or grow without bound.

/// Identities longer than this (a `limit_by = "header"` value can be kilobytes) are kept as
/// their SHA-256, so a full table stays within tens of MiB whatever clients send.
const MAX_IDENTITY: usize = 128;

use super::key_cache::bindings::keygate::gateway::counters::{
    CounterError, Host, Period as WitPeriod, Usage, Window,
};
use super::redis_counters::RedisCounters;
use crate::metrics::Metrics;
use keygate_counters_core::{Counters as Windows, Period};
use keygate_policy::plugins::{Policy, RedisTarget};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::component::{HasData, Linker};

/// Identities tracked at most, by default: ~40 MiB when full.
pub const DEFAULT_CAPACITY: usize = 200_000;

/// Independent locks; a power of two well above the cores a node has.
pub const SHARDS: usize = 64;

/// Shared by all requests.
pub struct Counters {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    /// Namespace (a limit's scope: few) → identity → its counts. Two levels so that a lookup
    /// borrows both names instead of building a key.
    namespaces: HashMap<Box<str>, HashMap<Box<str>, Tracked>>,
    len: usize,
}

struct Tracked {
    windows: Windows,
    /// When this identity was last counted (seconds), for eviction.
    last: u64,
}

impl Counters {
    /// A table holding at most `capacity` identities (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard,
            hasher: RandomState::new(),
        }
    }

    /// Identities tracked at most.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }

    fn shard(&self, namespace: &str, identity: &str) -> MutexGuard<'_, Shard> {
        let mut hasher = self.hasher.build_hasher();
        namespace.hash(&mut hasher);
        identity.hash(&mut hasher);
        let index = (hasher.finish() as usize) % SHARDS;
        // Counts are plain numbers: a panic elsewhere cannot leave them unusable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// [`Windows::hit`] for `identity` in `namespace` at `now` (seconds since the epoch).
    pub fn hit(
        &self,
        namespace: &str,
        identity: &str,
        windows: &[(Period, f64)],
        count_refused: bool,
        now: u64,
        before: &mut Vec<u64>,
    ) -> bool {
        let identity = stored_identity(identity);
        let identity = identity.as_ref();
        let mut shard = self.shard(namespace, identity);
        if let Some(tracked) = shard
            .namespaces
            .get_mut(namespace)
            .and_then(|identities| identities.get_mut(identity))
        {
            tracked.last = now;
            return tracked.windows.hit(windows, count_refused, now, before);
        }
        let mut fresh = Windows::default();
        let counted = fresh.hit(windows, count_refused, now, before);
        if !counted {
            // Nothing to remember: a refusal of an unseen identity (a limit below 1).
            return false;
        }
        if shard.len >= self.per_shard {
            shard.make_room(now, self.per_shard);
        }
        shard
            .namespaces
            .entry(namespace.into())
            .or_default()
            .insert(
                identity.into(),
                Tracked {
                    windows: fresh,
                    last: now,
                },
            );
        shard.len += 1;
        true
    }

    /// Identities tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|p| p.into_inner()).len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shard {
    /// Called when the shard holds `limit` identities: drop every identity whose windows have
    /// all ended; if that frees nothing, the one counted least recently.
    fn make_room(&mut self, now: u64, limit: usize) {
        for identities in self.namespaces.values_mut() {
            identities.retain(|_, tracked| !tracked.windows.expired(now));
        }
        self.namespaces
            .retain(|_, identities| !identities.is_empty());
        self.len = self.namespaces.values().map(HashMap::len).sum();
        if self.len < limit {
            return;
        }
        let oldest = self
            .namespaces
            .iter()
            .flat_map(|(namespace, identities)| {
                identities
                    .iter()
                    .map(move |(identity, tracked)| (tracked.last, namespace, identity))
            })
            .min_by_key(|(last, _, _)| *last)
            .map(|(_, namespace, identity)| (namespace.clone(), identity.clone()));
        if let Some((namespace, identity)) = oldest
            && let Some(identities) = self.namespaces.get_mut(&namespace)
        {
            identities.remove(&identity);
            if identities.is_empty() {
                self.namespaces.remove(&namespace);
            }
            self.len -= 1;
        }
    }
}

/// An identity as counters keep it: itself, or its SHA-256 (hex) past [`MAX_IDENTITY`] bytes.
pub(crate) fn stored_identity(identity: &str) -> std::borrow::Cow<'_, str> {
    if identity.len() <= MAX_IDENTITY {
        return identity.into();
    }
    use sha2::Digest;
    crate::http_util::hex(&sha2::Sha256::digest(identity.as_bytes())).into()
}

fn seconds_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn period(period: WitPeriod) -> Period {
    match period {
        WitPeriod::Second => Period::Second,
        WitPeriod::Minute => Period::Minute,
        WitPeriod::Hour => Period::Hour,
        WitPeriod::Day => Period::Day,
        WitPeriod::Month => Period::Month,
        WitPeriod::Year => Period::Year,
    }
}

/// Where an active configuration's limits count: this node's memory (`policy = "local"`), or
/// the Redis of each `policy = "redis"` instance, found by its counter namespace (both sides
/// build it with [`keygate_policy::plugins::Plugin::counter_namespace`]).
pub struct CounterStores {
    local: Arc<Counters>,
    /// A client, or why the instance's Redis settings cannot make one (its requests then get
    /// `unavailable`, never a count in the wrong place).
    redis: HashMap<String, Result<Arc<RedisCounters>, String>>,
}

impl CounterStores {
    /// Every limit in `local`: for trials, which must not touch anyone's quota.
    pub fn local_only(local: Arc<Counters>) -> Self {
        Self {
            local,
            redis: HashMap::new(),
        }
    }

    /// The stores `config`'s limits count in, reusing `clients` (and adding to them) so that a
    /// reload naming the same Redis keeps its connections.
    pub fn for_config(
        config: &keygate_policy::Config,
        local: &Arc<Counters>,
        clients: &RedisClients,
        metrics: &Metrics,
    ) -> Self {
        let mut redis = HashMap::new();
        for plugin in config.plugins.iter() {
            let Some(limit) = plugin.rate_limiting() else {
                continue;
            };
            if limit.policy != Policy::Redis {
                continue;
            }
            let client = limit
                .redis
                .as_ref()
                .ok_or_else(|| "no redis settings".to_string())
                .and_then(|settings| settings.target())
                .and_then(|target| clients.client(&target, metrics));
            redis.entry(plugin.counter_namespace()).or_insert(client);
        }
        Self {
            local: Arc::clone(local),
            redis,
        }
    }

    /// Whether any limit counts in Redis.
    pub fn uses_redis(&self) -> bool {
        !self.redis.is_empty()
    }
}

/// Redis clients by server, kept by the gateway across swaps.
#[derive(Default)]
pub struct RedisClients {
    clients: Mutex<Vec<Arc<RedisCounters>>>,
}

impl RedisClients {
    fn client(
        &self,
        target: &RedisTarget,
        metrics: &Metrics,
    ) -> Result<Arc<RedisCounters>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.iter().find(|client| client.target() == target) {
            return Ok(Arc::clone(client));
        }
        let client = RedisCounters::new(target, metrics)?;
        clients.push(Arc::clone(&client));
        Ok(client)
    }

    /// Drop the clients no configuration in use names any more (requests still running under
    /// an older one keep theirs until they end).
    pub fn retain_used_by(&self, stores: &CounterStores) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|client| {
            stores
                .redis
                .values()
                .any(|used| used.as_ref().is_ok_and(|used| Arc::ptr_eq(used, client)))
        });
    }
}

/// One request's handle on the shared counters.
pub struct CountersView<'a> {
    stores: &'a CounterStores,
}

impl<'a> CountersView<'a> {
    pub fn new(stores: &'a Arc<CounterStores>) -> Self {
        Self { stores }
    }
}

/// A guest asks for six windows at most; more is a buggy or hostile guest.
const MAX_WINDOWS: usize = 16;

impl Host for CountersView<'_> {
    async fn hit(
        &mut self,
        namespace: String,
        identity: String,
        windows: Vec<Window>,
        count_refused: bool,
    ) -> Result<Usage, CounterError> {
        if windows.len() > MAX_WINDOWS {
            return Err(CounterError::Unavailable(format!(
                "{} windows asked for, at most {MAX_WINDOWS}",
                windows.len()
            )));
        }
        let mut limits = [(Period::Second, 0.0); MAX_WINDOWS];
        for (slot, window) in limits.iter_mut().zip(&windows) {
            *slot = (period(window.period), window.limit);
        }
        let limits = &limits[..windows.len()];
        let now = seconds_now();
        // Only Kong's redis policy counts refused requests, so only such a hit can be a
        // `redis` limit's; one whose namespace names none (a trial, a guest of another
        // configuration) counts in memory with the same rule.
        if count_refused && let Some(client) = self.stores.redis.get(&namespace) {
            let client = client.as_ref().map_err(|reason| {
                CounterError::Unavailable(format!("this limit's redis cannot be used: {reason}"))
            })?;
            return match client.hit(&namespace, &identity, limits, now).await {
                Ok(before) => Ok(Usage { before, now }),
                Err(err) => Err(CounterError::Unavailable(err.to_string())),
            };
        }
        let mut before = Vec::with_capacity(windows.len());
        self.stores.local.hit(
            &namespace,
            &identity,
            limits,
            count_refused,
            now,
            &mut before,
        );
        Ok(Usage { before, now })
    }
}

struct CountersCapability;

impl HasData for CountersCapability {
    type Data<'a> = CountersView<'a>;
}

/// Link `keygate:gateway/counters` for stores whose data can produce a view.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> CountersView<'_>,
) -> wasmtime::Result<()> {
    super::key_cache::bindings::keygate::gateway::counters::add_to_linker::<T, CountersCapability>(
        linker, view,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 13:45:30 UTC.
    const NOW: u64 = 1_709_214_330;
    const KONG_EXAMPLE: [(Period, f64); 2] = [(Period::Minute, 2.0), (Period::Hour, 10.0)];

    fn hit(counters: &Counters, who: &str, count_refused: bool, now: u64) -> (bool, Vec<u64>) {
        let mut before = Vec::new();
        let counted = counters.hit(
            "route:",
            who,
            &KONG_EXAMPLE,
            count_refused,
            now,
            &mut before,
        );
        (counted, before)
    }

    #[test]
    fn local_reads_then_counts_only_allowed_requests() {
        let counters = Counters::new(100);
        assert_eq!(hit(&counters, "a", false, NOW), (true, vec![0, 0]));
        assert_eq!(hit(&counters, "a", false, NOW), (true, vec![1, 1]));
        assert_eq!(hit(&counters, "a", false, NOW), (false, vec![2, 2]));
        assert_eq!(
            hit(&counters, "a", false, NOW),
            (false, vec![2, 2]),
            "a refusal uses no quota"
        );
    }

    #[test]
    fn count_refused_counts_every_request() {
        let counters = Counters::new(100);
        for expected in 0..4 {
            assert_eq!(hit(&counters, "a", true, NOW).1, vec![expected, expected]);
        }
    }

    #[test]
    fn long_identities_are_kept_as_their_digest() {
        let counters = Counters::new(100);
        let long_a = "a".repeat(8 * 1024);
        let long_b = format!("{}b", "a".repeat(8 * 1024 - 1));
        hit(&counters, &long_a, false, NOW);
        assert_eq!(
            hit(&counters, &long_a, false, NOW).1,
            vec![1, 1],
            "same identity"
        );
        assert_eq!(
            hit(&counters, &long_b, false, NOW).1,
            vec![0, 0],
            "another one"
        );
        let longest = counters
            .shards
            .iter()
            .flat_map(|shard| {
                let shard = shard.lock().unwrap();
                shard
                    .namespaces
                    .values()
                    .flat_map(|identities| identities.keys().map(|key| key.len()))
                    .collect::<Vec<_>>()
            })
            .max();
        assert_eq!(longest, Some(64), "kept as a hex SHA-256, not 8 KiB");
    }

    #[test]
    fn identities_and_namespaces_count_apart() {
        let counters = Counters::new(100);
        hit(&counters, "a", false, NOW);
        assert_eq!(hit(&counters, "b", false, NOW).1, vec![0, 0]);
        let mut before = Vec::new();
        counters.hit("other:", "a", &KONG_EXAMPLE, false, NOW, &mut before);
        assert_eq!(before, vec![0, 0]);
        assert_eq!(counters.len(), 3);
    }

    #[test]
    fn windows_roll_over_on_utc_boundaries() {
        let counters = Counters::new(100);
        hit(&counters, "a", false, NOW);
        hit(&counters, "a", false, NOW);
        // NOW is hh:45:30: the next minute starts in 30 s, the hour goes on.
        assert_eq!(hit(&counters, "a", false, NOW + 29), (false, vec![2, 2]));
        assert_eq!(hit(&counters, "a", false, NOW + 30), (true, vec![0, 2]));
    }

    #[test]
    fn capacity_is_a_hard_bound_expired_identities_go_first() {
        let counters = Counters::new(SHARDS); // one identity per shard
        assert_eq!(counters.capacity(), SHARDS);
        for i in 0..10 * SHARDS {
            hit(&counters, &format!("id{i}"), false, NOW);
        }
        assert!(counters.len() <= SHARDS, "{}", counters.len());
        // An hour later every window has ended: new identities replace them.
        for i in 0..10 * SHARDS {
            hit(&counters, &format!("late{i}"), false, NOW + 3_600);
        }
        assert!(counters.len() <= SHARDS);
    }

    #[test]
    fn a_full_shard_evicts_the_least_recently_counted() {
        let mut shard = Shard::default();
        for (i, last) in [(0, NOW + 5), (1, NOW + 1), (2, NOW + 9)] {
            let mut windows = Windows::default();
            windows.hit(&KONG_EXAMPLE, false, NOW, &mut Vec::new());
            shard
                .namespaces
                .entry("n".into())
                .or_default()
                .insert(format!("id{i}").into(), Tracked { windows, last });
            shard.len += 1;
        }
        shard.make_room(NOW + 10, 3);
        let left: Vec<&str> = {
            let mut names: Vec<&str> = shard.namespaces["n"].keys().map(|k| &**k).collect();
            names.sort_unstable();
            names
        };
        assert_eq!(left, ["id0", "id2"]);
        assert_eq!(shard.len, 2);
    }

    #[tokio::test]
    async fn the_capability_reports_usage_and_time() {
        let stores = Arc::new(CounterStores::local_only(Arc::new(Counters::new(10))));
        let mut view = CountersView::new(&stores);
        let window = |period, limit| Window { period, limit };
        let windows = vec![
            window(WitPeriod::Minute, 2.0),
            window(WitPeriod::Hour, 10.0),
        ];
        let first = view
            .hit("n".into(), "i".into(), windows.clone(), false)
            .await
            .unwrap();
        assert_eq!(first.before, vec![0, 0]);
        assert!(first.now >= NOW);
        let too_many = vec![window(WitPeriod::Second, 1.0); MAX_WINDOWS + 1];
        assert!(
            view.hit("n".into(), "i".into(), too_many, false)
                .await
                .is_err()
        );
    }

    /// A `redis` hit whose namespace names no Redis (a trial's) counts in memory, refused
    /// requests included, rather than failing.
    #[tokio::test]
    async fn a_redis_hit_without_a_redis_counts_in_memory() {
        let stores = Arc::new(CounterStores::local_only(Arc::new(Counters::new(10))));
        let mut view = CountersView::new(&stores);
        let windows = vec![Window {
            period: WitPeriod::Minute,
            limit: 1.0,
        }];
        for expected in [0, 1, 2] {
            let usage = view
                .hit("n".into(), "i".into(), windows.clone(), true)
                .await
                .unwrap();
            assert_eq!(usage.before, vec![expected]);
        }
    }
}
