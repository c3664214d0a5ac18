//! The request-serving core: the shared engine, pools and capabilities, and the swap unit (a
//! component and the configuration it runs with). The entry every client request takes is in
//! `handle.rs`, the trial a swap must pass in `trial.rs`.

use super::component::{CompiledGuest, GuestSource};
use super::engine::{EPOCH_TICK, build_engine, build_linker, start_epoch_ticker};
use super::pool::InstancePool;
use super::precompiled::PrecompiledCache;
use super::state::{GuestLimits, RequestState};
use crate::capabilities::counters::{self, CounterStores, Counters, RedisClients};
use crate::capabilities::key_cache::KeyCache;
use crate::capabilities::outgoing_http::{AllowList, OutgoingHttp};
use crate::guest_log::GuestLog;
use crate::metrics::Metrics;
use crate::observe::Observer;
use crate::proxy::Upstream;
use crate::proxy::balancer::Balancers;
use crate::tls_client::TlsClients;
use arc_swap::ArcSwap;
use keygate_policy::{Config, GUEST_CONFIG_ENV, GuestEntry, internal_headers};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

/// What requests run against: a component and the configuration it was given. Swapped as a
/// whole, so a request never sees a new component with an old config or the reverse; a request
/// is decided and forwarded under the one it started with.
pub struct Active {
    pub guest: Arc<CompiledGuest>,
    pub config: Arc<Config>,
    /// SHA-256 of the configuration's canonical JSON: changes only when the meaning does.
    pub revision: String,
    /// The [`keygate_policy::GuestConfig`] JSON the guest reads from its environment.
    guest_env: String,
    pub(super) outgoing: OutgoingHttp,
    /// The rate-limit counters this component's requests count in: the gateway's (shared by
    /// every component it swaps in), or a trial's throwaway ones.
    pub(super) counters: Arc<CounterStores>,
    /// The balancers of this config's `[[upstreams]]`.
    pub balancers: Arc<Balancers>,
    /// The TLS clients of this config's https services and auth API.
    pub tls: Arc<TlsClients>,
    /// Instances of this component + config waiting for their next request.
    pub(super) pool: Arc<InstancePool>,
    /// Whether requests take the fast path (the guest decides, the host forwards).
    pub fast_path: bool,
    /// What request threads file the decisions they keep for reuse under: this pair's own.
    pub(super) reuse_generation: u64,
}

/// The request-serving core: shared engine and pools, the active component and config.
pub struct Gateway {
    engine: Engine,
    linker: Linker<RequestState>,
    cache: Option<PrecompiledCache>,
    active: ArcSwap<Active>,
    pub(super) key_cache: Arc<KeyCache>,
    /// `policy = "local"` rate-limit counters: per node, kept across swaps.
    counters: Arc<Counters>,
    /// `policy = "redis"` clients, by server: kept across swaps that keep the server.
    redis_clients: RedisClients,
    /// The latest config's balancers: a swap keeps the state of upstreams it does not change.
    balancers: std::sync::Mutex<Arc<Balancers>>,
    /// The latest config's TLS clients: a swap keeps those whose trust it does not change.
    tls: std::sync::Mutex<Arc<TlsClients>>,
    pub(super) outgoing: OutgoingHttp,
    pub(super) upstream: Upstream,
    pub metrics: Arc<Metrics>,
    /// Where finished requests are reported: metrics and the access log.
    pub observer: Arc<Observer>,
    /// The guests' stderr, with repeated lines summed up.
    guest_log: GuestLog,
    pub(super) instances: Arc<Semaphore>,
    /// The permits `instances` started with (`guest.max_instances` at start).
    max_instances: usize,
    busy_ticks: u64,
    memory_limit: usize,
    pub(super) listen_port: u16,
    /// Set when shutdown begins: readiness probes fail so balancers stop sending traffic.
    draining: std::sync::atomic::AtomicBool,
}

impl Gateway {
    /// Build the engine, compile the configured component and make it active.
    /// `access_log_file` (`--access-log`) wins over `[log] access_file`.
    pub fn new(
        config: Config,
        listen_port: u16,
        access_log_file: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Arc<Self>> {
        let engine = build_engine(&config.guest)?;
        start_epoch_ticker(&engine);
        let linker = build_linker(&engine)?;
        let cache = open_cache(&config, &engine);
        let source = GuestSource::from_config(config.guest.component.as_deref());
        let guest =
            CompiledGuest::compile(&engine, &linker, &source.read()?, source, cache.as_ref())?;
        let metrics = Arc::new(Metrics::default());
        metrics.component_loaded(guest.loaded_from.label());
        let fill_wait = config
            .auth_api
            .as_ref()
            .map_or(Duration::from_secs(2), |api| api.timeout.get())
            + Duration::from_millis(500);
        let capacity = config.auth_api.as_ref().map_or(1, |api| api.cache_capacity);
        let key_cache = Arc::new(KeyCache::new(capacity, fill_wait, Arc::clone(&metrics)));
        let observer = Arc::new(Observer::new(
            Arc::clone(&metrics),
            &config,
            access_log_file,
        )?);
        let counters = Arc::new(Counters::new(counters::DEFAULT_CAPACITY));
        let redis_clients = RedisClients::default();
        let balancers = Arc::new(Balancers::for_config(
            &config,
            &Balancers::default(),
            &metrics,
        ));
        let stores = Arc::new(CounterStores::for_config(
            &config,
            &counters,
            &redis_clients,
            &metrics,
        ));
        let connect_timeout = config
            .services
            .iter()
            .map(|service| service.connect_timeout.get())
            .chain(config.auth_api.iter().map(|api| api.timeout.get()))
            .max()
            .unwrap_or(Duration::from_secs(60));
        let max_auth_calls = config.auth_api.as_ref().map_or(1, |api| api.max_in_flight);
        let outgoing = OutgoingHttp::new(connect_timeout, max_auth_calls, Arc::clone(&metrics));
        let upstream = Upstream::new(connect_timeout);
        let tls = Arc::new(TlsClients::for_config(&config, &TlsClients::default())?);
        let busy_ticks =
            (config.guest.busy_timeout.get().as_millis() / EPOCH_TICK.as_millis()).max(1);
        let gateway = Self {
            instances: Arc::new(Semaphore::new(config.guest.max_instances as usize)),
            max_instances: config.guest.max_instances as usize,
            busy_ticks: u64::try_from(busy_ticks).unwrap_or(u64::MAX),
            memory_limit: (config.guest.memory_limit_mb as usize) << 20,
            active: ArcSwap::from_pointee(Active::new(
                Arc::new(guest),
                Arc::new(config),
                &outgoing,
                stores,
                Arc::clone(&balancers),
                Arc::clone(&tls),
                listen_port,
            )),
            balancers: std::sync::Mutex::new(balancers),
            tls: std::sync::Mutex::new(tls),
            engine,
            linker,
            cache,
            key_cache,
            counters,
            redis_clients,
            outgoing,
            upstream,
            metrics,
            observer,
            guest_log: GuestLog::with_flusher(),
            listen_port,
            draining: Default::default(),
        };
        Ok(Arc::new(gateway))
    }

    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// The metrics as a scrape reads them: Kong's upstream target health is taken from the
    /// balancers now, when a `prometheus` instance asks for it.
    pub fn render_metrics(&self) -> String {
        let active = self.active();
        let health_asked = active.config.plugins.iter().any(|plugin| {
            plugin.enabled
                && plugin
                    .prometheus()
                    .is_some_and(|flags| flags.upstream_health_metrics)
        });
        if health_asked {
            for balancer in active.balancers.iter() {
                for (address, down) in balancer.health() {
                    self.metrics
                        .upstream_target_health(balancer.name(), &address, !down);
                }
            }
        }
        self.metrics.set_guest_instances_alive(
            self.max_instances
                .saturating_sub(self.instances.available_permits()),
        );
        self.metrics.render(self.key_cache.len())
    }

    /// Shutdown has begun: in-flight requests finish, readiness probes answer 503.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The key cache itself, for what outlives a borrow (the cluster's revocation listener).
    pub fn key_cache_handle(&self) -> Arc<KeyCache> {
        Arc::clone(&self.key_cache)
    }

    pub fn key_cache(&self) -> &KeyCache {
        &self.key_cache
    }

    /// Compile a component for this gateway (blocking: run it off the request path).
    pub fn compile(&self, bytes: &[u8], source: GuestSource) -> anyhow::Result<CompiledGuest> {
        let guest = CompiledGuest::compile(
            &self.engine,
            &self.linker,
            bytes,
            source,
            self.cache.as_ref(),
        )?;
        self.metrics.component_loaded(guest.loaded_from.label());
        Ok(guest)
    }

    /// Make `guest` + `config` what new requests run; in-flight ones finish on what they had.
    pub fn activate(&self, guest: Arc<CompiledGuest>, config: Arc<Config>) {
        let stores = Arc::new(CounterStores::for_config(
            &config,
            &self.counters,
            &self.redis_clients,
            &self.metrics,
        ));
        self.redis_clients.retain_used_by(&stores);
        if let Err(err) = self.observer.configure(&config) {
            tracing::error!("{err:#}; the access log keeps its previous settings");
        }
        let balancers = {
            let mut latest = self.balancers.lock().unwrap_or_else(|p| p.into_inner());
            *latest = Arc::new(Balancers::for_config(&config, &latest, &self.metrics));
            Arc::clone(&latest)
        };
        let tls = {
            let mut latest = self.tls.lock().unwrap_or_else(|p| p.into_inner());
            *latest = Arc::new(TlsClients::for_checked_config(&config, &latest));
            Arc::clone(&latest)
        };
        self.active.store(Arc::new(Active::new(
            guest,
            config,
            &self.outgoing,
            stores,
            balancers,
            tls,
            self.listen_port,
        )));
    }

    /// A store for one guest instance of `active`: its environment, outgoing client, limits.
    pub(super) fn new_store(
        &self,
        active: &Active,
        key_cache: Arc<KeyCache>,
    ) -> Store<RequestState> {
        let wasi = WasiCtxBuilder::new()
            .env(GUEST_CONFIG_ENV, &active.guest_env)
            .stderr(self.guest_log.clone())
            .build();
        let limits = GuestLimits::new(
            self.memory_limit,
            StoreLimitsBuilder::new().trap_on_grow_failure(true).build(),
        );
        let state = RequestState::new(
            wasi,
            active.outgoing.clone(),
            key_cache,
            Arc::clone(&active.counters),
            limits,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        let busy_ticks = self.busy_ticks;
        store.epoch_deadline_callback(move |mut store| {
            Ok(if store.data_mut().busy.tick(busy_ticks) {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(1)
            })
        });
        store
    }
}

fn open_cache(config: &Config, engine: &Engine) -> Option<PrecompiledCache> {
    if !config.guest.precompiled_cache {
        return None;
    }
    let dir = config
        .guest
        .cache_dir
        .clone()
        .or_else(PrecompiledCache::default_dir)?;
    match PrecompiledCache::open(&dir, engine) {
        Ok(cache) => Some(cache),
        Err(err) => {
            tracing::warn!("precompiled component cache disabled: {err:#}");
            None
        }
    }
}

impl Active {
    pub(super) fn new(
        guest: Arc<CompiledGuest>,
        config: Arc<Config>,
        outgoing: &OutgoingHttp,
        counters: Arc<CounterStores>,
        balancers: Arc<Balancers>,
        tls: Arc<TlsClients>,
        listen_port: u16,
    ) -> Self {
        let mut guest_config = config.guest_config();
        guest_config.client_addr_header = Some(internal_headers::CLIENT_ADDR.to_string());
        guest_config.listen_port = Some(listen_port);
        guest_config.host_annotations = true;
        guest_config.annotate_key = config.log.access != keygate_policy::AccessLog::Off;
        let mut allowed = AllowList::for_config(&config, &tls);
        allowed.balancers = Arc::clone(&balancers);
        let outgoing = outgoing.with_allowed(allowed);
        let canonical = serde_json::to_string(&*config).expect("the config is plain data");
        let fast_path = guest.has_policy() && config.guest.entry == GuestEntry::Auto;
        Self {
            revision: crate::http_util::hex(&Sha256::digest(canonical.as_bytes())),
            guest_env: guest_config.to_json(),
            pool: Arc::new(InstancePool::new(config.guest.instance_reuse)),
            guest,
            config,
            outgoing,
            counters,
            balancers,
            tls,
            fast_path,
            reuse_generation: super::reuse::next_generation(),
        }
    }
}
