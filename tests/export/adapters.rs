//! The key-cache and counters adapters themselves, run in wasmtime with a clock the test
//! controls and (for the Spin adapters) a wasi:keyvalue draft2 store the test can look into.

use keygate::export::{COUNTERS_KEYVALUE, KEY_CACHE_KEYVALUE, KEY_CACHE_MEMORY};

mod adapter_host {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
    use wasmtime::{Engine, Store};
    use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

    mod bindings {
        wasmtime::component::bindgen!({
            path: ["../wit", "../adapters/wit/adapters.wit"],
            world: "keygate:adapters/key-cache-keyvalue",
            with: { "wasi:keyvalue/store.bucket": super::Bucket },
            additional_derives: [PartialEq],
        });
    }

    /// The Spin counters adapter's world: the same store interface, plus atomics.
    mod counters_bindings {
        wasmtime::component::bindgen!({
            path: ["../wit", "../adapters/wit/adapters.wit"],
            world: "keygate:adapters/counters-keyvalue",
            with: { "wasi:keyvalue/store": super::bindings::wasi::keyvalue::store },
        });
    }

    pub use bindings::exports::keygate::gateway::key_cache::{Consumer, Lookup, Verdict};
    use bindings::wasi::keyvalue::store;
    use counters_bindings::exports::keygate::gateway::counters::CounterError;
    pub use counters_bindings::exports::keygate::gateway::counters::{Period, Window};
    use counters_bindings::wasi::keyvalue::atomics;

    /// A test clock, in milliseconds since the epoch, for both WASI clocks.
    #[derive(Clone)]
    pub struct Clock(Arc<AtomicU64>);

    impl Clock {
        pub fn at(ms: u64) -> Self {
            Self(Arc::new(AtomicU64::new(ms)))
        }
        pub fn set(&self, ms: u64) {
            self.0.store(ms, Ordering::SeqCst);
        }
        fn ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl wasmtime_wasi::HostWallClock for Clock {
        fn resolution(&self) -> Duration {
            Duration::from_millis(1)
        }
        fn now(&self) -> Duration {
            Duration::from_millis(self.ms())
        }
    }

    impl wasmtime_wasi::HostMonotonicClock for Clock {
        fn resolution(&self) -> u64 {
            1_000_000
        }
        fn now(&self) -> u64 {
            self.ms() * 1_000_000
        }
    }

    /// The key-value store: bucket name → key → value, shared by instances.
    pub type Buckets = Arc<Mutex<HashMap<String, HashMap<String, Vec<u8>>>>>;

    pub struct Bucket(String);

    struct Host {
        wasi: WasiCtx,
        table: ResourceTable,
        buckets: Buckets,
    }

    impl WasiView for Host {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl store::Host for Host {
        fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, store::Error> {
            if !self.buckets.lock().unwrap().contains_key(&identifier) {
                return Err(store::Error::NoSuchStore);
            }
            self.table
                .push(Bucket(identifier))
                .map_err(|err| store::Error::Other(err.to_string()))
        }
    }

    impl Host {
        fn with_bucket<T>(
            &mut self,
            bucket: &Resource<Bucket>,
            f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> T,
        ) -> Result<T, store::Error> {
            let name = &self
                .table
                .get(bucket)
                .map_err(|err| store::Error::Other(err.to_string()))?
                .0;
            let mut buckets = self.buckets.lock().unwrap();
            let bucket = buckets.get_mut(name).ok_or(store::Error::NoSuchStore)?;
            Ok(f(bucket))
        }
    }

    impl store::HostBucket for Host {
        fn get(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
        ) -> Result<Option<Vec<u8>>, store::Error> {
            self.with_bucket(&bucket, |b| b.get(&key).cloned())
        }
        fn set(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
            value: Vec<u8>,
        ) -> Result<(), store::Error> {
            self.with_bucket(&bucket, |b| {
                b.insert(key, value);
            })
        }
        fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), store::Error> {
            self.with_bucket(&bucket, |b| {
                b.remove(&key);
            })
        }
        fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, store::Error> {
            self.with_bucket(&bucket, |b| b.contains_key(&key))
        }
        fn list_keys(
            &mut self,
            bucket: Resource<Bucket>,
            _cursor: Option<String>,
        ) -> Result<store::KeyResponse, store::Error> {
            self.with_bucket(&bucket, |b| store::KeyResponse {
                keys: b.keys().cloned().collect(),
                cursor: None,
            })
        }
        fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
            self.table.delete(bucket)?;
            Ok(())
        }
    }

    /// Integers as Spin's SQLite store keeps them: 8 little-endian bytes.
    impl atomics::Host for Host {
        fn increment(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
            delta: i64,
        ) -> Result<i64, store::Error> {
            self.with_bucket(&bucket, |b| {
                let count = match b.get(&key) {
                    None => 0,
                    Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
                        Ok(bytes) => i64::from_le_bytes(bytes),
                        Err(_) => return Err(store::Error::Other(format!("{key}: not a number"))),
                    },
                } + delta;
                b.insert(key, count.to_le_bytes().to_vec());
                Ok(count)
            })?
        }

        fn swap(
            &mut self,
            _cas: Resource<atomics::Cas>,
            _value: Vec<u8>,
        ) -> Result<(), atomics::CasError> {
            unreachable!("the counters adapter does not compare and swap")
        }
    }

    impl atomics::HostCas for Host {
        fn new(
            &mut self,
            _bucket: Resource<Bucket>,
            _key: String,
        ) -> Result<Resource<atomics::Cas>, store::Error> {
            Err(store::Error::Other(
                "no compare-and-swap in this test store".into(),
            ))
        }

        fn current(
            &mut self,
            _cas: Resource<atomics::Cas>,
        ) -> Result<Option<Vec<u8>>, store::Error> {
            unreachable!("no cas is ever made")
        }

        fn drop(&mut self, _cas: Resource<atomics::Cas>) -> wasmtime::Result<()> {
            Ok(())
        }
    }

    /// The Spin counters adapter, compiled once; `instance()` makes fresh instances.
    pub struct CountersAdapter {
        engine: Engine,
        linker: Linker<Host>,
        component: Component,
    }

    pub struct CountersInstance {
        store: Store<Host>,
        counters: counters_bindings::CountersKeyvalue,
    }

    impl CountersAdapter {
        pub fn new(wasm: &[u8]) -> Self {
            let engine = Engine::default();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
            counters_bindings::CountersKeyvalue::add_to_linker::<Host, HasSelf<Host>>(
                &mut linker,
                |h| h,
            )
            .unwrap();
            let component = Component::new(&engine, wasm).unwrap();
            Self {
                engine,
                linker,
                component,
            }
        }

        pub fn instance(&self, clock: &Clock, buckets: &Buckets) -> CountersInstance {
            let wasi = WasiCtxBuilder::new()
                .wall_clock(clock.clone())
                .monotonic_clock(clock.clone())
                .inherit_stderr()
                .build();
            let mut store = Store::new(
                &self.engine,
                Host {
                    wasi,
                    table: ResourceTable::new(),
                    buckets: Arc::clone(buckets),
                },
            );
            let counters = counters_bindings::CountersKeyvalue::instantiate(
                &mut store,
                &self.component,
                &self.linker,
            )
            .unwrap();
            CountersInstance { store, counters }
        }
    }

    impl CountersInstance {
        pub fn hit(
            &mut self,
            namespace: &str,
            identity: &str,
            windows: &[Window],
            count_refused: bool,
        ) -> Result<(Vec<u64>, u64), String> {
            match self
                .counters
                .keygate_gateway_counters()
                .call_hit(&mut self.store, namespace, identity, windows, count_refused)
                .unwrap()
            {
                Ok(usage) => Ok((usage.before, usage.now)),
                Err(CounterError::Unavailable(reason)) => Err(reason),
            }
        }
    }

    /// An adapter component, compiled once; `instance()` makes fresh instances.
    pub struct Adapter {
        engine: Engine,
        linker: Linker<Host>,
        component: Component,
    }

    pub struct Instance {
        store: Store<Host>,
        cache: bindings::KeyCacheKeyvalue,
    }

    impl Adapter {
        pub fn new(wasm: &[u8]) -> Self {
            let engine = Engine::default();
            let mut linker = Linker::new(&engine);
            wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
            bindings::KeyCacheKeyvalue::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)
                .unwrap();
            let component = Component::new(&engine, wasm).unwrap();
            Self {
                engine,
                linker,
                component,
            }
        }

        pub fn instance(&self, clock: &Clock, buckets: &Buckets) -> Instance {
            let wasi = WasiCtxBuilder::new()
                .wall_clock(clock.clone())
                .monotonic_clock(clock.clone())
                .inherit_stderr()
                .build();
            let mut store = Store::new(
                &self.engine,
                Host {
                    wasi,
                    table: ResourceTable::new(),
                    buckets: Arc::clone(buckets),
                },
            );
            let cache =
                bindings::KeyCacheKeyvalue::instantiate(&mut store, &self.component, &self.linker)
                    .unwrap();
            Instance { store, cache }
        }
    }

    impl Instance {
        pub fn get(&mut self, fingerprint: &str) -> Lookup {
            self.cache
                .keygate_gateway_key_cache()
                .call_get(&mut self.store, fingerprint)
                .unwrap()
        }

        pub fn put(&mut self, fingerprint: &str, verdict: &Verdict, ttl_ms: u64, stale_ms: u64) {
            self.cache
                .keygate_gateway_key_cache()
                .call_put(&mut self.store, fingerprint, verdict, ttl_ms, stale_ms)
                .unwrap();
        }

        pub fn release(&mut self, fingerprint: &str) {
            self.cache
                .keygate_gateway_key_cache()
                .call_release(&mut self.store, fingerprint)
                .unwrap();
        }

        pub fn invalidate(&mut self, fingerprint: &str) {
            self.cache
                .keygate_gateway_key_cache()
                .call_invalidate(&mut self.store, fingerprint)
                .unwrap();
        }
    }

    pub fn ann() -> Verdict {
        Verdict::Valid(Consumer {
            id: Some("c-1".into()),
            username: Some("ann".into()),
            custom_id: None,
            credential_id: Some("cred-1".into()),
        })
    }
}

/// Both adapters: fresh for the TTL, then stale for the stale window, then gone.
#[test]
fn adapters_honour_ttl_and_stale_windows() {
    use adapter_host::{Adapter, Buckets, Clock, Lookup, Verdict, ann};
    const T0: u64 = 1_800_000_000_000;
    for (name, wasm) in [
        ("memory", KEY_CACHE_MEMORY),
        ("keyvalue", KEY_CACHE_KEYVALUE),
    ] {
        let adapter = Adapter::new(wasm);
        let clock = Clock::at(T0);
        let buckets: Buckets = Default::default();
        buckets
            .lock()
            .unwrap()
            .insert("default".into(), Default::default());
        let mut cache = adapter.instance(&clock, &buckets);

        assert_eq!(cache.get("fp-ann"), Lookup::Miss, "{name}");
        cache.put("fp-ann", &ann(), 1_000, 500);
        cache.put("fp-bad", &Verdict::Invalid, 300, 0);
        assert_eq!(cache.get("fp-ann"), Lookup::Fresh(ann()), "{name}");
        assert_eq!(
            cache.get("fp-bad"),
            Lookup::Fresh(Verdict::Invalid),
            "{name}"
        );
        clock.set(T0 + 299);
        assert_eq!(
            cache.get("fp-bad"),
            Lookup::Fresh(Verdict::Invalid),
            "{name}"
        );
        clock.set(T0 + 300);
        assert_eq!(cache.get("fp-bad"), Lookup::Miss, "{name}: no stale window");
        clock.set(T0 + 999);
        assert_eq!(cache.get("fp-ann"), Lookup::Fresh(ann()), "{name}");
        clock.set(T0 + 1_000);
        assert_eq!(cache.get("fp-ann"), Lookup::Stale(ann()), "{name}");
        cache.release("fp-ann");
        clock.set(T0 + 1_499);
        assert_eq!(cache.get("fp-ann"), Lookup::Stale(ann()), "{name}");
        clock.set(T0 + 1_500);
        assert_eq!(cache.get("fp-ann"), Lookup::Miss, "{name}");
        // A refill starts over; invalidate forgets.
        cache.put("fp-ann", &ann(), 1_000, 0);
        assert_eq!(cache.get("fp-ann"), Lookup::Fresh(ann()), "{name}");
        cache.invalidate("fp-ann");
        assert_eq!(cache.get("fp-ann"), Lookup::Miss, "{name}");
    }
}

/// The Spin adapter keeps verdicts in store `default`, where every instance sees them.
#[test]
fn keyvalue_adapter_shares_verdicts_through_the_store() {
    use adapter_host::{Adapter, Buckets, Clock, Lookup, ann};
    const T0: u64 = 1_800_000_000_000;
    let adapter = Adapter::new(KEY_CACHE_KEYVALUE);
    let clock = Clock::at(T0);
    let buckets: Buckets = Default::default();
    buckets
        .lock()
        .unwrap()
        .insert("default".into(), Default::default());

    adapter
        .instance(&clock, &buckets)
        .put("fp-ann", &ann(), 60_000, 0);
    let mut other = adapter.instance(&clock, &buckets);
    assert_eq!(other.get("fp-ann"), Lookup::Fresh(ann()));
    let keys: Vec<String> = buckets.lock().unwrap()["default"].keys().cloned().collect();
    assert_eq!(keys, vec!["keygate:key-cache:fp-ann"]);

    // An expired entry is deleted when read.
    clock.set(T0 + 60_000);
    assert_eq!(other.get("fp-ann"), Lookup::Miss);
    assert!(buckets.lock().unwrap()["default"].is_empty());

    // Whatever else is in the store under our key is a miss, not a trap.
    buckets.lock().unwrap().get_mut("default").unwrap().insert(
        "keygate:key-cache:fp-junk".into(),
        b"{\"valid\":1}".to_vec(),
    );
    assert_eq!(other.get("fp-junk"), Lookup::Miss);

    // No store "default" (e.g. `key_value_stores` left out): every lookup misses, nothing fails.
    let empty: Buckets = Default::default();
    let mut storeless = adapter.instance(&clock, &empty);
    storeless.put("fp-ann", &ann(), 60_000, 0);
    assert_eq!(storeless.get("fp-ann"), Lookup::Miss);
    storeless.invalidate("fp-ann");
}

/// The memory adapter remembers per instance only: a new instance starts empty.
#[test]
fn memory_adapter_remembers_per_instance() {
    use adapter_host::{Adapter, Buckets, Clock, Lookup, ann};
    let adapter = Adapter::new(KEY_CACHE_MEMORY);
    let clock = Clock::at(5_000);
    let buckets: Buckets = Default::default();
    let mut first = adapter.instance(&clock, &buckets);
    first.put("fp-ann", &ann(), 60_000, 0);
    assert_eq!(first.get("fp-ann"), Lookup::Fresh(ann()));
    assert_eq!(
        adapter.instance(&clock, &buckets).get("fp-ann"),
        Lookup::Miss
    );
}

/// The Spin counters adapter counts in store `default`, one integer key per identity and
/// window, so every instance sees the same counts; both of Kong's rules hold there.
#[test]
fn keyvalue_counters_share_counts_through_the_store() {
    use adapter_host::{Buckets, Clock, CountersAdapter, Period, Window};
    // 2027-01-15 08:00:10 UTC.
    const T0: u64 = 1_799_913_610;
    let adapter = CountersAdapter::new(COUNTERS_KEYVALUE);
    let clock = Clock::at(T0 * 1_000);
    let buckets: Buckets = Default::default();
    buckets
        .lock()
        .unwrap()
        .insert("default".into(), Default::default());
    let minute_start = T0 - T0 % 60;
    let count_of = |key: &str| -> Option<i64> {
        let buckets = buckets.lock().unwrap();
        let bytes = buckets["default"].get(key)?;
        Some(i64::from_le_bytes(bytes.as_slice().try_into().unwrap()))
    };
    let windows = [
        Window {
            period: Period::Minute,
            limit: 2.0,
        },
        Window {
            period: Period::Hour,
            limit: 10.0,
        },
    ];
    let usage = |before: &[u64], now: u64| Ok((before.to_vec(), now));

    // Kong's local rule, across two instances: the third request is refused and not counted.
    let mut first = adapter.instance(&clock, &buckets);
    let mut second = adapter.instance(&clock, &buckets);
    assert_eq!(first.hit("r:s", "ann", &windows, false), usage(&[0, 0], T0));
    assert_eq!(
        second.hit("r:s", "ann", &windows, false),
        usage(&[1, 1], T0)
    );
    assert_eq!(first.hit("r:s", "ann", &windows, false), usage(&[2, 2], T0));
    let minute_key = format!("keygate-rl:minute:{minute_start}:r:s:ann");
    assert_eq!(count_of(&minute_key), Some(2), "the refusal used no quota");
    assert_eq!(
        count_of(&format!("keygate-rl:hour:{}:r:s:ann", T0 - T0 % 3600)),
        Some(2)
    );

    // Kong's redis rule counts every request, refused or not.
    for expected in 0..3 {
        assert_eq!(
            second.hit("r:s", "bob", &windows[..1], true),
            usage(&[expected], T0)
        );
    }
    assert_eq!(
        count_of(&format!("keygate-rl:minute:{minute_start}:r:s:bob")),
        Some(3)
    );

    // The next minute starts from zero, and its first request deletes the ended window's key.
    let next = minute_start + 60;
    clock.set(next * 1_000);
    assert_eq!(
        first.hit("r:s", "ann", &windows, false),
        usage(&[0, 2], next)
    );
    assert_eq!(count_of(&minute_key), None, "the ended minute is gone");
    assert_eq!(
        count_of(&format!("keygate-rl:minute:{next}:r:s:ann")),
        Some(1)
    );
    // What is left: per period and identity the current window and where it starts.
    let mut keys: Vec<String> = buckets.lock().unwrap()["default"].keys().cloned().collect();
    keys.sort_unstable();
    let mut expected = vec![
        format!("keygate-rl:hour:{}:r:s:ann", T0 - T0 % 3600),
        "keygate-rl:hour:last:r:s:ann".to_string(),
        format!("keygate-rl:minute:{minute_start}:r:s:bob"),
        format!("keygate-rl:minute:{next}:r:s:ann"),
        "keygate-rl:minute:last:r:s:ann".to_string(),
        "keygate-rl:minute:last:r:s:bob".to_string(),
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);

    // No store "default" (e.g. `key_value_stores` left out): the counters are unavailable,
    // which the gateway's `fault_tolerant` then decides about.
    let empty: Buckets = Default::default();
    let reason = adapter
        .instance(&clock, &empty)
        .hit("r:s", "ann", &windows, true)
        .unwrap_err();
    assert!(reason.contains("no such store"), "{reason}");
}
