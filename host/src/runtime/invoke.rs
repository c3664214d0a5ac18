//! One request through the guest: a fresh store, an instance from the pool, the call, and a
//! well-formed answer whatever the guest does (traps, loops, exhausts memory or never answers).

use super::component::CompiledGuest;
use super::engine::{EPOCH_TICK, build_engine, build_linker, start_epoch_ticker};
use super::state::RequestState;
use crate::capabilities::key_cache::KeyCache;
use crate::capabilities::outgoing_http::OutgoingHttp;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use keygate_policy::errors::{INTERNAL, JSON_CONTENT_TYPE, OVERLOADED, json_body};
use keygate_policy::{Config, GUEST_CONFIG_ENV, internal_headers};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use wasmtime::component::Linker;
use wasmtime::{CallHook, Engine, Store, StoreLimitsBuilder, Trap};
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
    /// The [`keygate_policy::GuestConfig`] JSON the guest reads from its environment.
    guest_env: String,
    outgoing: OutgoingHttp,
}

/// The request-serving core: shared engine and pools, the active component and config.
pub struct Gateway {
    engine: Engine,
    linker: Linker<RequestState>,
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
        let guest = CompiledGuest::load(&engine, &linker, config.guest.component.as_deref())?;
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
        let outgoing = OutgoingHttp::new(connect_timeout, Arc::clone(&metrics));
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

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<RequestState> {
        &self.linker
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

    /// Answer one client request.
    pub async fn handle(
        &self,
        request: hyper::Request<Incoming>,
        client: SocketAddr,
    ) -> hyper::Response<ResponseBody> {
        self.metrics.in_flight().inc();
        let response = self.run_guest(request, client).await;
        self.metrics.in_flight().dec();
        let response = match response {
            Ok(response) => response,
            Err(failure) => failure.into_response(),
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

    async fn run_guest(
        &self,
        mut request: hyper::Request<Incoming>,
        client: SocketAddr,
    ) -> Result<hyper::Response<ResponseBody>, HostFailure> {
        let headers = request.headers_mut();
        crate::remove_connection_tokens(headers);
        headers.remove(internal_headers::CLIENT_ADDR);
        if let Ok(ip) = client.ip().to_string().parse() {
            headers.insert(internal_headers::CLIENT_ADDR, ip);
        }
        let active = self.active();
        let permit = Arc::clone(&self.instances)
            .acquire_owned()
            .await
            .map_err(|_| HostFailure::Overloaded)?;

        let wasi = WasiCtxBuilder::new()
            .env(GUEST_CONFIG_ENV, &active.guest_env)
            .inherit_stderr()
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory_limit)
            .trap_on_grow_failure(true)
            .build();
        let state = RequestState::new(
            wasi,
            active.outgoing.clone(),
            Arc::clone(&self.key_cache),
            limits,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // The busy timeout restarts whenever the guest comes back from the host, so it bounds
        // uninterrupted computation, not time spent waiting on the network.
        let busy_ticks = self.busy_ticks;
        store.epoch_deadline_trap();
        store.set_epoch_deadline(busy_ticks);
        store.call_hook(move |mut store, hook| {
            if matches!(hook, CallHook::ReturningFromHost) {
                store.set_epoch_deadline(busy_ticks);
            }
            Ok(())
        });

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
        // The guest keeps running after it hands over the response head: it streams the body.
        let task = tokio::spawn(async move {
            let _permit = permit;
            let proxy = pre
                .instantiate_async(&mut store)
                .await
                .map_err(GuestError::Instantiate)?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
                .map_err(GuestError::Call)
        });

        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => {
                tracing::warn!("guest answered with an error code instead of a response: {code:?}");
                Err(HostFailure::GuestFailed)
            }
            Err(_) => match task.await {
                Ok(Ok(())) => {
                    tracing::warn!("guest returned without sending a response");
                    Err(HostFailure::GuestFailed)
                }
                Ok(Err(GuestError::Instantiate(err))) => {
                    self.metrics.guest_failure("instantiate");
                    tracing::error!("could not instantiate the guest: {err:#}");
                    Err(HostFailure::Overloaded)
                }
                Ok(Err(GuestError::Call(err))) => {
                    let reason = match err.downcast_ref::<Trap>() {
                        Some(Trap::Interrupt) => "busy_timeout",
                        _ => "trap",
                    };
                    self.metrics.guest_failure(reason);
                    tracing::warn!(reason, "guest failed the request: {err:?}");
                    Err(HostFailure::GuestFailed)
                }
                Err(join) => {
                    self.metrics.guest_failure("panic");
                    tracing::error!("guest task panicked: {join}");
                    Err(HostFailure::GuestFailed)
                }
            },
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
        Self {
            guest,
            guest_env: guest_config.to_json(),
            config,
            outgoing,
        }
    }
}

/// `host:port` of every origin and the auth API: the only places the guest may call.
fn allowed_targets(config: &Config) -> HashSet<String> {
    let services = config
        .services
        .iter()
        .map(|service| format!("{}:{}", service.url.host, service.url.port));
    let auth = config
        .auth_api
        .iter()
        .filter_map(|api| api.origin().ok())
        .map(|url| format!("{}:{}", url.host, url.port));
    services.chain(auth).collect()
}

enum GuestError {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}

/// Why the host answered instead of the guest.
enum HostFailure {
    BadRequest(String),
    Overloaded,
    GuestFailed,
    Internal(String),
}

impl HostFailure {
    fn into_response(self) -> hyper::Response<ResponseBody> {
        let (status, message) = match self {
            Self::BadRequest(reason) => {
                tracing::debug!("refused a malformed request: {reason}");
                (400, "Bad request")
            }
            Self::Overloaded => (503, OVERLOADED),
            Self::GuestFailed => (500, INTERNAL),
            Self::Internal(reason) => {
                tracing::error!("internal error: {reason}");
                (500, INTERNAL)
            }
        };
        error_response(status, message)
    }
}

/// A gateway-made JSON error in Kong's format.
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
