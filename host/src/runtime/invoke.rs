//! One request through the guest: a fresh store, an instance from the pool, the call, and a
//! well-formed answer whatever the guest does (traps, loops, exhausts memory or never answers).

use super::component::{CompiledGuest, GuestSource};
use super::drive::{self, GuestError, Head};
use super::engine::{EPOCH_TICK, build_engine, build_linker, start_epoch_ticker};
use super::pool::{InstancePool, Worker};
use super::precompiled::PrecompiledCache;
use super::state::RequestState;
use crate::capabilities::key_cache::KeyCache;
use crate::capabilities::outgoing_http::{AllowList, OutgoingHttp};
use crate::metrics::Metrics;
use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keygate_policy::Compat;
use keygate_policy::errors::{ErrorFormat, INTERNAL, JSON_CONTENT_TYPE, OVERLOADED, json_body};
use keygate_policy::{Config, GUEST_CONFIG_ENV, internal_headers};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Response bodies as the guest produces them; the host's own answers use the same type.
pub type ResponseBody = HyperOutgoingBody;

/// What requests run against: a component and the configuration it was given. Swapped as a
/// whole, so a request never sees a new component with an old config or the reverse.
pub struct Active {
    pub guest: Arc<CompiledGuest>,
    pub config: Arc<Config>,
    /// SHA-256 of the configuration's canonical JSON: changes only when the meaning does.
    pub revision: String,
    /// The [`keygate_policy::GuestConfig`] JSON the guest reads from its environment.
    guest_env: String,
    outgoing: OutgoingHttp,
    /// Instances of this component + config waiting for their next request.
    pool: Arc<InstancePool>,
}

/// The request-serving core: shared engine and pools, the active component and config.
pub struct Gateway {
    engine: Engine,
    linker: Linker<RequestState>,
    cache: Option<PrecompiledCache>,
    active: ArcSwap<Active>,
    key_cache: Arc<KeyCache>,
    outgoing: OutgoingHttp,
    pub metrics: Arc<Metrics>,
    instances: Arc<Semaphore>,
    busy_ticks: u64,
    memory_limit: usize,
    listen_port: u16,
}

impl Gateway {
    /// Build the engine, compile the configured component and make it active.
    pub fn new(config: Config, listen_port: u16) -> anyhow::Result<Arc<Self>> {
        let engine = build_engine(&config.guest)?;
        start_epoch_ticker(&engine);
        let linker = build_linker(&engine)?;
        let cache = open_cache(&config, &engine);
        let source = GuestSource::from_config(config.guest.component.as_deref());
        let guest =
            CompiledGuest::compile(&engine, &linker, &source.read()?, source, cache.as_ref())?;
        let metrics = Arc::new(Metrics::default());
        let fill_wait = config
            .auth_api
            .as_ref()
            .map_or(Duration::from_secs(2), |api| api.timeout.get())
            + Duration::from_millis(500);
        let capacity = config.auth_api.as_ref().map_or(1, |api| api.cache_capacity);
        let key_cache = Arc::new(KeyCache::new(capacity, fill_wait, Arc::clone(&metrics)));
        let connect_timeout = config
            .services
            .iter()
            .map(|service| service.connect_timeout.get())
            .chain(config.auth_api.iter().map(|api| api.timeout.get()))
            .max()
            .unwrap_or(Duration::from_secs(60));
        let max_auth_calls = config.auth_api.as_ref().map_or(1, |api| api.max_in_flight);
        let outgoing = OutgoingHttp::new(connect_timeout, max_auth_calls, Arc::clone(&metrics));
        let busy_ticks =
            (config.guest.busy_timeout.get().as_millis() / EPOCH_TICK.as_millis()).max(1);
        let gateway = Self {
            instances: Arc::new(Semaphore::new(config.guest.max_instances as usize)),
            busy_ticks: u64::try_from(busy_ticks).unwrap_or(u64::MAX),
            memory_limit: (config.guest.memory_limit_mb as usize) << 20,
            active: ArcSwap::from_pointee(Active::new(
                Arc::new(guest),
                Arc::new(config),
                &outgoing,
                listen_port,
            )),
            engine,
            linker,
            cache,
            key_cache,
            outgoing,
            metrics,
            listen_port,
        };
        Ok(Arc::new(gateway))
    }

    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    pub fn key_cache(&self) -> &KeyCache {
        &self.key_cache
    }

    /// Compile a component for this gateway (blocking: run it off the request path).
    pub fn compile(&self, bytes: &[u8], source: GuestSource) -> anyhow::Result<CompiledGuest> {
        CompiledGuest::compile(
            &self.engine,
            &self.linker,
            bytes,
            source,
            self.cache.as_ref(),
        )
    }

    /// Make `guest` + `config` what new requests run; in-flight ones finish on what they had.
    pub fn activate(&self, guest: Arc<CompiledGuest>, config: Arc<Config>) {
        self.active.store(Arc::new(Active::new(
            guest,
            config,
            &self.outgoing,
            self.listen_port,
        )));
    }

    /// Run one synthetic request through `guest` + `config` before they take traffic: proves
    /// the component instantiates under the pool's limits and answers without trapping. It
    /// uses a throwaway key cache and may not call out, so it changes nothing anywhere.
    pub async fn trial(
        &self,
        guest: Arc<CompiledGuest>,
        config: Arc<Config>,
    ) -> anyhow::Result<u16> {
        let mut active = Active::new(guest, config, &self.outgoing, self.listen_port);
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
        let response = self
            .run_guest(&active, scratch_cache, request, client)
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

    /// Answer one client request.
    pub async fn handle(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
        client: SocketAddr,
    ) -> hyper::Response<ResponseBody> {
        self.metrics.in_flight().inc();
        let started = std::time::Instant::now();
        let active = self.active();
        // Kept for an answer the host may have to make itself (cheap: shared bytes).
        let asked = ErrorContext {
            accept: request.headers().get(http::header::ACCEPT).cloned(),
            content_type: request.headers().get(http::header::CONTENT_TYPE).cloned(),
        };
        let response = self
            .run_guest(&active, Arc::clone(&self.key_cache), request, client)
            .await;
        self.metrics.in_flight().dec();
        let response = match response {
            Ok(response) => response,
            Err(failure) => failure.into_response(&asked, &active.config.compat, started),
        };
        let (mut parts, body) = response.into_parts();
        let route = parts
            .headers
            .remove(internal_headers::ROUTE)
            .and_then(|v| v.to_str().ok().map(str::to_string));
        self.metrics
            .request(route.as_deref().unwrap_or("(none)"), parts.status.as_u16());
        hyper::Response::from_parts(parts, body)
    }

    async fn run_guest<B>(
        &self,
        active: &Active,
        key_cache: Arc<KeyCache>,
        mut request: hyper::Request<B>,
        client: SocketAddr,
    ) -> Result<hyper::Response<ResponseBody>, HostFailure>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let headers = request.headers_mut();
        crate::remove_connection_tokens(headers);
        headers.remove(internal_headers::CLIENT_ADDR);
        if let Ok(ip) = client.ip().to_string().parse() {
            headers.insert(internal_headers::CLIENT_ADDR, ip);
        }
        let mut worker = match active.pool.take() {
            Some(worker) => worker,
            None => {
                let slot = Arc::clone(&self.instances)
                    .acquire_owned()
                    .await
                    .map_err(|_| HostFailure::Overloaded)?;
                Worker::new(self.new_store(active, key_cache), slot)
            }
        };
        let store = &mut worker.store;
        store.data_mut().busy.restart();
        store.set_epoch_deadline(1);
        let waited = store.data().busy.waited_flag();
        let (sender, receiver) = oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|err| HostFailure::BadRequest(err.to_string()))?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|err| HostFailure::Internal(err.to_string()))?;
        let pre = active.guest.pre.clone();
        let pool = Arc::clone(&active.pool);
        let metrics = Arc::clone(&self.metrics);
        // The guest keeps running after it hands over the response head: it streams the body.
        // Only when it returns normally does its instance go back to the pool.
        let call = drive::guarded(waited, async move {
            let proxy = match worker.proxy.take() {
                Some(proxy) => proxy,
                None => {
                    metrics.guest_instance_created();
                    pre.instantiate_async(&mut worker.store)
                        .await
                        .map_err(GuestError::Instantiate)?
                }
            };
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut worker.store, incoming, outparam)
                .await
                .map_err(GuestError::Call)?;
            worker.proxy = Some(proxy);
            pool.give_back(worker);
            Ok(())
        });
        let metrics = Arc::clone(&self.metrics);
        let on_end = move |outcome| {
            if let Err(failure) = outcome {
                guest_failed(&metrics, failure);
            }
        };
        match drive::until_head(call, receiver, on_end).await {
            Head::Response(response) => Ok(response),
            Head::ErrorCode(code) => {
                tracing::warn!("guest answered with an error code instead of a response: {code:?}");
                Err(HostFailure::GuestFailed(
                    "error code instead of a response".into(),
                ))
            }
            Head::Nothing(Ok(())) => {
                tracing::warn!("guest returned without sending a response");
                Err(HostFailure::GuestFailed("no response".into()))
            }
            Head::Nothing(Err(failure)) => Err(guest_failed(&self.metrics, failure)),
        }
    }
}

/// Count and log a guest call that did not return normally; what the client is answered.
fn guest_failed(metrics: &Metrics, failure: GuestError) -> HostFailure {
    match failure {
        GuestError::Instantiate(err) => {
            metrics.guest_failure("instantiate");
            tracing::error!("could not instantiate the guest: {err:#}");
            HostFailure::Overloaded
        }
        GuestError::Call(err) => {
            let reason = match err.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => "busy_timeout",
                _ => "trap",
            };
            metrics.guest_failure(reason);
            tracing::warn!(reason, "guest failed the request: {err:?}");
            HostFailure::GuestFailed(format!("{reason}: {err:#}"))
        }
        GuestError::Panic => {
            metrics.guest_failure("panic");
            tracing::error!("a host function panicked during the guest call");
            HostFailure::GuestFailed("panic".into())
        }
    }
}

impl Gateway {
    /// A store for one guest instance of `active`: its environment, outgoing client, limits.
    fn new_store(&self, active: &Active, key_cache: Arc<KeyCache>) -> Store<RequestState> {
        let wasi = WasiCtxBuilder::new()
            .env(GUEST_CONFIG_ENV, &active.guest_env)
            .inherit_stderr()
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let state = RequestState::new(wasi, active.outgoing.clone(), key_cache, limits);
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
        listen_port: u16,
    ) -> Self {
        let mut guest_config = config.guest_config();
        guest_config.client_addr_header = Some(internal_headers::CLIENT_ADDR.to_string());
        guest_config.listen_port = Some(listen_port);
        guest_config.host_annotations = true;
        let outgoing = outgoing.with_allowed(allowed_targets(&config));
        let canonical = serde_json::to_string(&*config).expect("the config is plain data");
        Self {
            guest,
            revision: crate::hex(&Sha256::digest(canonical.as_bytes())),
            guest_env: guest_config.to_json(),
            pool: Arc::new(InstancePool::new(config.guest.instance_reuse)),
            config,
            outgoing,
        }
    }
}

/// Every origin and the auth API: the only places the guest may call.
fn allowed_targets(config: &Config) -> AllowList {
    let services = config
        .services
        .iter()
        .map(|service| (service.url.host.clone(), service.url.port));
    let auth = config
        .auth_api
        .iter()
        .filter_map(|api| api.origin().ok())
        .map(|url| (url.host, url.port));
    services.chain(auth).collect()
}

/// Why the host answered instead of the guest.
enum HostFailure {
    BadRequest(String),
    Overloaded,
    GuestFailed(String),
    Internal(String),
}

impl HostFailure {
    fn describe(&self) -> String {
        match self {
            Self::BadRequest(reason) => format!("bad request: {reason}"),
            Self::Overloaded => "no guest instance available".into(),
            Self::GuestFailed(reason) => format!("guest failed: {reason}"),
            Self::Internal(reason) => format!("internal error: {reason}"),
        }
    }

    /// Answered as Kong's error handler would: the format from `Accept`, else the request's
    /// `Content-Type`, else `compat.error_default_type`; header names from `compat.headers`.
    fn into_response(
        self,
        asked: &ErrorContext,
        compat: &Compat,
        started: std::time::Instant,
    ) -> hyper::Response<ResponseBody> {
        let (status, message) = match self {
            Self::BadRequest(reason) => {
                tracing::debug!("refused a malformed request: {reason}");
                (400, "Bad request")
            }
            Self::Overloaded => (503, OVERLOADED),
            Self::GuestFailed(_) => (500, INTERNAL),
            Self::Internal(reason) => {
                tracing::error!("internal error: {reason}");
                (500, INTERNAL)
            }
        };
        let text = |v: &Option<http::HeaderValue>| {
            v.as_ref().and_then(|v| v.to_str().ok().map(str::to_string))
        };
        let format = ErrorFormat::negotiate_with_fallback(
            text(&asked.accept).as_deref(),
            text(&asked.content_type).as_deref(),
            compat.error_default_type,
        );
        let names = compat.headers.names();
        let id = crate::request_id();
        let body = format.body(message, &id);
        hyper::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, format.content_type())
            .header(names.request_id, id)
            .header(http::header::SERVER, names.server)
            .header(
                names.response_latency,
                started.elapsed().as_millis().to_string(),
            )
            .body(full_body(body))
            .expect("static parts form a valid response")
    }
}

/// What the client asked for that shapes an error the host makes itself.
struct ErrorContext {
    accept: Option<http::HeaderValue>,
    content_type: Option<http::HeaderValue>,
}

/// A gateway-made JSON error in Kong's format (the admin listener's).
pub fn error_response(status: u16, message: &str) -> hyper::Response<ResponseBody> {
    let id = crate::request_id();
    let body = json_body(message, &id);
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, JSON_CONTENT_TYPE)
        .header("x-request-id", id)
        .header(http::header::SERVER, "keygate")
        .body(full_body(body))
        .expect("static parts form a valid response")
}

pub fn full_body(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into())
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync()
}
