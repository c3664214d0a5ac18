//! The key-cache adapters themselves, run in wasmtime with a clock the test controls and (for
//! the Spin adapter) a wasi:keyvalue draft2 store the test can look into.

use keygate::export::{KEY_CACHE_KEYVALUE, KEY_CACHE_MEMORY};

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

    pub use bindings::exports::keygate::gateway::key_cache::{Consumer, Lookup, Verdict};
    use bindings::wasi::keyvalue::store;

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
