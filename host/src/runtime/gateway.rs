//! The request-serving core: the swap unit (a component and the configuration it runs with),
//! and the entry every client request takes. With a component that exports
//! `keygate:gateway/block-policy` (and `[guest] entry = "auto"`), the guest decides from the head
//! and the host forwards natively (`crate::proxy`); otherwise the request runs through the
//! guest's `wasi:http` handler.

use super::answer::{AnswerLabels, take_annotation};
use super::component::policy_api::{Decision, RequestHead, UpstreamFailure};
use super::component::{CompiledGuest, GuestSource};
use super::engine::{EPOCH_TICK, build_engine, build_linker, start_epoch_ticker};
use super::pool::InstancePool;
use super::precompiled::PrecompiledCache;
use super::state::{GuestLimits, RequestState};
use crate::capabilities::counters::{self, CounterStores, Counters, RedisClients};
use crate::capabilities::key_cache::KeyCache;
use crate::capabilities::outgoing_http::{AllowList, OutgoingHttp};
use crate::guest_log::GuestLog;
use crate::metrics::{Metrics, RateLimitOutcome};
use crate::observe::{Observed, Observer};
use crate::proxy::balancer::Balancers;
use crate::proxy::forward::ForwardError;
use crate::proxy::{self, Upstream};
use crate::responses::{ErrorContext, HostFailure, ResponseBody};
use crate::tls_client::TlsClients;
use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keygate_policy::{Config, GUEST_CONFIG_ENV, GuestEntry, internal_headers};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    outgoing: OutgoingHttp,
    upstream: Upstream,
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
    listen_port: u16,
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

    /// Run synthetic requests through `guest` + `config` before they take traffic: proves the
    /// component instantiates under the pool's limits and answers without trapping, and, on
    /// the fast path, that it decides a route with key auth (a static key's request must be
    /// forwarded under a plan the host accepts; a request without a key refused). It uses a
    /// throwaway key cache and counters and may not call out, so it changes nothing anywhere. The status
    /// reported is the no-route request's.
    pub async fn trial(
        &self,
        guest: Arc<CompiledGuest>,
        config: Arc<Config>,
    ) -> anyhow::Result<u16> {
        // Trial requests count in throwaway counters: a trial must not use anyone's quota.
        let scratch_counters = Arc::new(CounterStores::local_only(Arc::new(Counters::new(16))));
        let mut active = Active::new(
            guest,
            config,
            &self.outgoing,
            scratch_counters,
            Arc::default(),
            Arc::default(),
            self.listen_port,
        );
        active.outgoing = self.outgoing.with_allowed(AllowList::default());
        let scratch_cache = Arc::new(KeyCache::new(
            16,
            Duration::from_millis(100),
            Arc::new(Metrics::default()),
        ));
        let request = hyper::Request::get("/.well-known/keygate-trial")
            .header(http::header::HOST, "keygate-trial.invalid")
            .body(Full::new(Bytes::new()))
            .expect("static parts form a valid request");
        let client = SocketAddr::from(([127, 0, 0, 1], 0));
        if active.fast_path {
            self.trial_decisions(&active, &scratch_cache).await?;
        }
        let response = self
            .run_handler(&active, scratch_cache, request, client)
            .await
            .map_err(|failure| {
                anyhow::anyhow!("the trial request failed: {}", failure.describe())
            })?;
        let status = response.status().as_u16();
        tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .context("the trial response body did not finish within 5s")?
            .map_err(|err| anyhow::anyhow!("the trial response body failed: {err}"))?;
        Ok(status)
    }

    /// The fast path's part of the trial: decide a keyed route with and without a key.
    async fn trial_decisions(
        &self,
        active: &Active,
        scratch_cache: &Arc<KeyCache>,
    ) -> anyhow::Result<()> {
        let config = &active.config;
        let Some(route) =
            config.services.iter().flat_map(|s| &s.routes).find(|r| {
                r.auth && r.methods.is_empty() && r.hosts.is_empty() && r.headers.is_empty()
            })
        else {
            return Ok(());
        };
        let Some(path) = route.paths.first().and_then(|p| p.literal_prefix()) else {
            return Ok(());
        };
        let head = |headers: Vec<u8>| RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "keygate-trial.invalid".into(),
            path_with_query: path.to_string(),
            headers,
            client_ip: Some("127.0.0.1".into()),
            local_port: self.listen_port,
        };
        let unkeyed = self
            .decide(active, Arc::clone(scratch_cache), head(Vec::new()))
            .await
            .map_err(|f| anyhow::anyhow!("the trial decision failed: {}", f.describe()))?;
        if matches!(unkeyed, Decision::Forward(_)) && config.key_auth.anonymous.is_none() {
            anyhow::bail!(
                "the trial request without a key to route {:?} was forwarded",
                route.name
            );
        }
        let key_name = config.key_auth.key_names.first();
        let static_key = config
            .consumers
            .iter()
            .flat_map(|c| c.keys.first())
            .map(|key| key.key().to_string())
            .next();
        if let (Some(name), Some(key), true) = (key_name, static_key, config.key_auth.key_in_header)
        {
            let keyed = self
                .decide(
                    active,
                    Arc::clone(scratch_cache),
                    head(format!("{}: {key}\r\n", name.to_ascii_lowercase()).into_bytes()),
                )
                .await
                .map_err(|f| anyhow::anyhow!("the trial decision failed: {}", f.describe()))?;
            match keyed {
                Decision::Forward(plan) => {
                    proxy::plan::validate(plan, config).map_err(|err| {
                        anyhow::anyhow!("the trial forward plan is not acceptable: {err}")
                    })?;
                }
                Decision::UseHandler => {}
                Decision::Respond(reply) => anyhow::bail!(
                    "the trial request with a consumer's key to route {:?} was answered {} instead of forwarded",
                    route.name,
                    reply.status
                ),
            }
        }
        Ok(())
    }

    /// Answer one client request.
    pub async fn handle(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> hyper::Response<ResponseBody> {
        self.metrics.request_started();
        let started = Instant::now();
        let record = crate::observe::start_record(&request, client);
        let active = self.active();
        // Kept for an answer the host may have to make itself (cheap: shared bytes).
        let asked = ErrorContext {
            method: request.method().clone(),
            accept: request.headers().get(http::header::ACCEPT).cloned(),
            content_type: request.headers().get(http::header::CONTENT_TYPE).cloned(),
        };
        let outcome = if active.fast_path {
            self.fast_path(&active, request, client, started, &asked)
                .await
        } else {
            // Boxed, here and below: its future is several KiB, which every future holding it
            // inline would be too (see `fast_path`).
            Box::pin(self.portable_path(&active, request, client)).await
        };
        self.metrics.request_done();
        let (mut response, labels) = match outcome {
            Ok(answer) => answer,
            Err(failure) => (
                failure.into_response(&asked, &active.config.compat, started),
                AnswerLabels::default(),
            ),
        };
        // The key the guest found, for the access log (its fingerprint's first characters).
        let mut labels = labels;
        labels.key = crate::http_util::take_internal_headers(
            response.headers_mut(),
            Some(internal_headers::KEY),
        )
        .and_then(|value| value.to_str().ok().map(str::to_string));
        let rate_limit = labels
            .rate_limit
            .as_deref()
            .and_then(RateLimitOutcome::parse);
        let record = labels.complete(record, &response, started);
        let route = record.route.as_deref().unwrap_or("(none)");
        self.metrics.request(route, response.status().as_u16());
        if let Some(outcome) = rate_limit {
            self.metrics.rate_limit(route, outcome);
        }
        Observed::wrap(
            response,
            record,
            started,
            Arc::clone(&self.observer),
            Arc::clone(&active.config),
        )
    }

    /// The guest's `wasi:http` handler answers; the route label comes back in a header.
    async fn portable_path(
        &self,
        active: &Active,
        request: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> Result<(hyper::Response<ResponseBody>, AnswerLabels), HostFailure> {
        let response = self
            .run_handler(active, Arc::clone(&self.key_cache), request, client)
            .await?;
        let (mut parts, body) = response.into_parts();
        let annotation = take_annotation(&mut parts.headers);
        let ms = |ms: Option<u64>| ms.map(std::time::Duration::from_millis);
        let labels = AnswerLabels {
            route: annotation.route,
            service: annotation.service,
            consumer: annotation.consumer,
            key_lookup: annotation.key_lookup,
            auth_ms: annotation.auth_ms,
            rate_limit: annotation.rate_limit,
            request_id: annotation.request_id,
            from_origin: annotation.from_origin,
            gateway: ms(annotation.gateway_ms),
            upstream: ms(annotation.upstream_ms),
            key: None,
        };
        Ok((hyper::Response::from_parts(parts, body), labels))
    }

    /// The guest decides from the head; the host forwards or answers.
    async fn fast_path(
        &self,
        active: &Active,
        request: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
        started: Instant,
        asked: &ErrorContext,
    ) -> Result<(hyper::Response<ResponseBody>, AnswerLabels), HostFailure> {
        let head = proxy::head::lower(&request, client, self.listen_port)?;
        // Boxed, as the forward below: inline, these two grew the future of every answer to
        // 27 KiB, which is moved into hyper's box per request (~6 k instructions of memcpy); an
        // allocation each is cheaper.
        let decision = Box::pin(self.decide(active, Arc::clone(&self.key_cache), head)).await?;
        match decision {
            Decision::Respond(reply) => {
                let labels = AnswerLabels::of(&reply.labels);
                Ok((proxy::reply::to_response(reply)?, labels))
            }
            Decision::UseHandler => Box::pin(self.portable_path(active, request, client)).await,
            Decision::Forward(plan) => {
                // Logged once, with the request id, where the 500 is made.
                let mut plan = proxy::plan::validate(plan, &active.config).map_err(|err| {
                    HostFailure::Internal(format!("refused the guest's forward plan: {err}"))
                })?;
                let mut labels = AnswerLabels::of(&plan.labels);
                labels.request_id = Some(plan.request_id.clone());
                let balancer = active
                    .config
                    .services
                    .iter()
                    .find(|service| service.name == plan.service)
                    .and_then(|service| active.balancers.get(&service.url.host))
                    .map(|balancer| &**balancer);
                let tls = if plan.uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                    active.tls.service(&plan.service)
                } else {
                    None
                };
                let sending = started.elapsed();
                let forwarded = Box::pin(self.upstream.forward(
                    &mut plan,
                    request,
                    started,
                    &self.metrics,
                    balancer,
                    tls,
                ))
                .await;
                labels.gateway = Some(sending);
                labels.upstream = Some(started.elapsed().saturating_sub(sending));
                match forwarded {
                    Ok(response) => {
                        labels.from_origin = true;
                        Ok((response, labels))
                    }
                    // Answered like the guest's own 413 (route labels, the plan's request id).
                    Err(ForwardError::BodyTooLarge) => Ok((
                        HostFailure::BodyTooLarge.into_response_as(
                            plan.request_id.clone(),
                            asked,
                            &active.config.compat,
                            started,
                        ),
                        labels,
                    )),
                    Err(ForwardError::NoPeer) => Err(HostFailure::NoPeer),
                    Err(ForwardError::OriginDown(failure)) => Err(HostFailure::OriginDown {
                        timed_out: matches!(
                            failure,
                            UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout
                        ),
                    }),
                    Err(ForwardError::Upstream(failure)) => {
                        let context =
                            proxy::forward::failure_context(plan, failure, asked, started);
                        // Boxed: rare, and its guest call would grow every answer's future.
                        let reply = Box::pin(self.upstream_failed(
                            active,
                            Arc::clone(&self.key_cache),
                            context,
                        ))
                        .await?;
                        Ok((proxy::reply::to_response(reply)?, labels))
                    }
                }
            }
        }
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
    fn new(
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
        }
    }
}
