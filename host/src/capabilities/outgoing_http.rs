//! Outgoing HTTP for the guest (`wasi:http/outgoing-handler`), through one shared pooled
//! client: wasmtime's default opens a new TCP connection per request, which a gateway cannot
//! afford. Calls may only reach the origins and auth API the config names.

pub use super::allow_list::AllowList;
use super::breaker::{Breaker, FAILURES_TO_OPEN, PROBE_EVERY};
use crate::metrics::Metrics;
use crate::proxy::balancer::{self, BalancedError};
use crate::tls_client::{self, HttpsClient, ThreadHttpsClients, tls_failure};
use bytes::Bytes;
use http::HeaderName;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use keygate_policy::internal_headers;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error, ForbiddenHeaderFilter, RequestOptions, WasiBody,
    WasiHttpHooks,
};

/// Shared by every request: the connection pools and the allow-list.
#[derive(Clone)]
pub struct OutgoingHttp {
    pools: Arc<Pools>,
    allowed: Arc<AllowList>,
    /// Auth-API calls in flight (`auth_api.max_in_flight`): beyond it a call fails at once.
    auth_calls: Arc<Semaphore>,
    /// Whether the auth API of this allow-list is known to be down.
    auth_breaker: Arc<Breaker>,
    metrics: Arc<Metrics>,
}

/// Used when the guest gives no timeout (it always does; other guests might not).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl OutgoingHttp {
    /// The same pool with another allow-list: what a config reload hands new requests.
    pub fn with_allowed(&self, allowed: AllowList) -> Self {
        Self {
            pools: Arc::clone(&self.pools),
            allowed: Arc::new(allowed),
            auth_calls: Arc::clone(&self.auth_calls),
            auth_breaker: Arc::default(),
            metrics: Arc::clone(&self.metrics),
        }
    }

    pub fn new(connect_timeout: Duration, max_auth_calls: usize, metrics: Arc<Metrics>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            pools: Arc::new(Pools {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                connect_timeout,
            }),
            allowed: Arc::default(),
            auth_calls: Arc::new(Semaphore::new(max_auth_calls)),
            auth_breaker: Arc::default(),
            metrics,
        }
    }
}

/// One keep-alive connection pool per request thread (see `crate::server`): a pooled
/// connection is driven by a task on the thread that opened it, so sharing one pool across
/// threads would hand requests connections whose every read wakes another thread.
struct Pools {
    /// Tells this gateway's pools apart from another's on the same thread (tests run several).
    id: u64,
    connect_timeout: Duration,
}

type PooledClient = Client<HttpConnector, WasiBody>;

thread_local! {
    static THREAD_POOLS: RefCell<Vec<(u64, PooledClient)>> = const { RefCell::new(Vec::new()) };
    static HTTPS_POOLS: RefCell<ThreadHttpsClients<WasiBody>> = RefCell::default();
}

/// A pooled client of either kind: `request` is the same call, the plain one untouched.
enum AnyClient {
    Plain(PooledClient),
    Tls(HttpsClient<WasiBody>),
}

impl AnyClient {
    fn request(&self, request: http::Request<WasiBody>) -> ResponseFuture {
        match self {
            Self::Plain(client) => client.request(request),
            Self::Tls(client) => client.request(request),
        }
    }
}

impl Pools {
    /// This thread's pool (made on first use).
    fn client(&self) -> PooledClient {
        THREAD_POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if let Some((_, client)) = pools.iter().find(|(id, _)| *id == self.id) {
                return client.clone();
            }
            let client = self.build();
            pools.push((self.id, client.clone()));
            client
        })
    }

    fn build(&self) -> PooledClient {
        pooled_client(self.connect_timeout)
    }

    /// This thread's pool for https calls made with `tls`.
    fn https_client(&self, tls: &Arc<rustls::ClientConfig>) -> HttpsClient<WasiBody> {
        HTTPS_POOLS.with(|pools| pools.borrow_mut().client(tls, self.connect_timeout))
    }

    /// The pool a call goes out on: `tls` for an https origin.
    fn any_client(&self, tls: Option<&Arc<rustls::ClientConfig>>) -> AnyClient {
        match tls {
            None => AnyClient::Plain(self.client()),
            Some(tls) => AnyClient::Tls(self.https_client(tls)),
        }
    }
}

/// A keep-alive client over plain TCP, as every outgoing pool of the gateway is configured.
pub fn pooled_client<B>(connect_timeout: Duration) -> Client<HttpConnector, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    client_builder().build(http_connector(connect_timeout))
}

/// The TCP side of every outgoing connection (an https one's too); it refuses `https://` URIs
/// unless told otherwise, so a plain client never sends an https origin's call in clear.
pub fn http_connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(true);
    connector
}

/// How long an outgoing connection is kept unused before it is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How many unused connections to one origin a pool keeps.
pub const POOL_MAX_IDLE_PER_ORIGIN: usize = 1024;

/// How every outgoing pool keeps its connections.
pub fn client_builder() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_ORIGIN)
        .pool_timer(hyper_util::rt::TokioTimer::new());
    builder
}

/// Kong's Host rule needs the guest to set `Host` itself (service host, or the client's with
/// `preserve_host`), so of wasmtime's forbidden headers only `Host` is allowed.
fn is_forbidden(name: &HeaderName) -> bool {
    name != http::header::HOST && DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

impl WasiHttpHooks for OutgoingHttp {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        is_forbidden(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        Arc::new(is_forbidden)
    }

    fn set_host_header(&mut self) -> bool {
        false
    }

    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        Some(http::uri::Scheme::HTTP)
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        let label = request
            .headers_mut()
            .remove(internal_headers::CALL)
            .and_then(|v| v.to_str().ok().map(str::to_string));
        let to_auth_api = request.uri().authority().is_some_and(|authority| {
            self.allowed.is_auth_api(
                authority.host(),
                authority.port_u16().unwrap_or(default_port(request.uri())),
                request.uri().path(),
            )
        });
        // Counted by where the call goes: the guest's label only names a service.
        let call = if to_auth_api {
            "auth".to_string()
        } else {
            label
                .filter(|l| l != "auth")
                .unwrap_or_else(|| "unlabeled".to_string())
        };
        // An auth API known to be down is not asked: the guest answers at once, and
        // `destination-unavailable` (not what a refused connection gives) tells it the host
        // knows, so it stops asking for a moment.
        if to_auth_api && self.auth_breaker.is_open() {
            self.metrics.auth_call_skipped();
            return Box::new(async { Err(Error::DestinationUnavailable) });
        }
        // A flood of unknown keys must not pile up on the auth API: shed what exceeds the cap
        // now (the guest answers 503) instead of queueing without bound.
        let auth_slot = if to_auth_api {
            match Arc::clone(&self.auth_calls).try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    self.metrics.auth_call_shed();
                    return Box::new(async { Err(Error::ConnectionLimitReached) });
                }
            }
        } else {
            None
        };
        let this = self.clone();
        Box::new(async move {
            let probe_timeout = options
                .as_ref()
                .and_then(|o| o.first_byte_timeout)
                .unwrap_or(DEFAULT_TIMEOUT);
            // Recorded even if the guest stops waiting first (its own deadline drops this).
            let mut outcome = CallOutcome {
                http: this.clone(),
                call,
                to_auth_api,
                probe_timeout,
                status: None,
            };
            let result = this.send(request, options, &outcome.call).await;
            drop(auth_slot);
            outcome.status = Some(match &result {
                Ok(response) => Ok(response.status().as_u16()),
                Err(err) => Err(no_answer(err)),
            });
            drop(outcome);
            let response = result?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// How an outgoing call ended, recorded when it is dropped: in metrics, and for the auth API
/// in its breaker. A call dropped unfinished (the guest's deadline passed first) got no answer.
struct CallOutcome {
    http: OutgoingHttp,
    call: String,
    to_auth_api: bool,
    probe_timeout: Duration,
    /// The answer's status, or whether the failure means nothing answered.
    status: Option<Result<u16, bool>>,
}

impl Drop for CallOutcome {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(Err(true));
        self.http.metrics.outgoing(&self.call, status.ok());
        if !self.to_auth_api {
            return;
        }
        let breaker = &self.http.auth_breaker;
        match status {
            Ok(_) => breaker.answered(),
            Err(true) if breaker.failed() => {
                self.http.metrics.auth_api_down(true);
                tracing::warn!(
                    "the auth API did not answer {FAILURES_TO_OPEN} calls in a row: misses are \
                     answered without asking it until it answers a probe"
                );
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(self.http.clone().probe_auth_api(self.probe_timeout));
                    }
                    // No runtime to probe from: let calls through again.
                    Err(_) => {
                        breaker.answered();
                        self.http.metrics.auth_api_down(false);
                    }
                }
            }
            Err(_) => {}
        }
    }
}

/// Failures that say nothing answered (as opposed to an answer the guest did not like). A
/// TLS handshake that fails is no answer either: the auth API cannot be asked.
fn no_answer(err: &Error) -> bool {
    matches!(
        err,
        Error::ConnectionRefused
            | Error::ConnectionTimeout
            | Error::ConnectionReadTimeout
            | Error::ConnectionTerminated
            | Error::DestinationUnavailable
            | Error::DestinationIpUnroutable
            | Error::DnsTimeout
            | Error::TlsCertificateError
            | Error::TlsProtocolError
            | Error::TlsAlertReceived { .. }
    )
}

/// The port of a URI without one: its scheme's.
fn default_port(uri: &http::Uri) -> u16 {
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    }
}

impl OutgoingHttp {
    /// Ask the auth API's origin (its URL's path, no key) every [`PROBE_EVERY`] until any HTTP
    /// answer comes, then let calls through again.
    async fn probe_auth_api(self, timeout: Duration) {
        let Some(uri) = self.allowed.auth_api_probe_uri() else {
            return;
        };
        let tls = uri.authority().and_then(|authority| {
            self.allowed
                .allows_https(authority.host(), authority.port_u16().unwrap_or(443))
                .filter(|_| uri.scheme() == Some(&http::uri::Scheme::HTTPS))
                .cloned()
        });
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if !self.auth_breaker.is_open() {
                return;
            }
            let probe = http::Request::get(uri.clone())
                .body(
                    http_body_util::Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .expect("a GET of a valid URI");
            if let Ok(Ok(_)) =
                tokio::time::timeout(timeout, self.pools.any_client(tls.as_ref()).request(probe))
                    .await
            {
                tracing::warn!("the auth API answers again: misses ask it again");
                self.auth_breaker.answered();
                self.metrics.auth_api_down(false);
                return;
            }
        }
    }

    async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        call: &str,
    ) -> Result<http::Response<WasiBody>, Error> {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        if !https && uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            tracing::warn!(%call, "refused outgoing call: only http:// and https:// origins are supported");
            return Err(Error::HttpRequestDenied);
        }
        let authority = uri.authority().ok_or(Error::HttpRequestUriInvalid)?;
        let port = authority.port_u16().unwrap_or(default_port(uri));
        // An https origin only over TLS, with its own configuration; an http one in clear.
        let tls = if https {
            let tls = self.allowed.allows_https(authority.host(), port);
            if tls.is_none() {
                tracing::warn!(%call, target = %authority, "refused outgoing call to an https origin the config does not name");
                return Err(Error::HttpRequestDenied);
            }
            tls
        } else {
            if !self.allowed.allows(authority.host(), port) {
                tracing::warn!(%call, target = %authority, "refused outgoing call to a host the config does not name");
                return Err(Error::HttpRequestDenied);
            }
            None
        };
        let target = authority.clone();
        let options = options.unwrap_or_default();
        // The pooled client connects inside `request`, under the connector's own timeout
        // (the longest any config asks for); the head must then arrive within `first_byte`.
        let first_byte = options.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let between_bytes = options.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let client = self.pools.any_client(tls);
        let tls_failed = |err: &hyper_util::client::legacy::Error| {
            if let Some(reason) = tls_failure(err) {
                let to = if call == "auth" {
                    format!("the auth API at {target}")
                } else {
                    format!("service {call:?} at {target}")
                };
                tls_client::log_failure(self.pools.id, &to, reason);
            }
            client_error(err)
        };
        let sent = match self.allowed.balancers.get(target.host()) {
            None => tokio::time::timeout(first_byte, client.request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)
                .and_then(|result| result.map_err(|err| tls_failed(&err))),
            // An upstream: a target that cannot be connected to hands the call to the next.
            Some(balancer) => {
                let balanced = balancer::send(
                    balancer,
                    request,
                    |err: &Error| {
                        matches!(err, Error::ConnectionRefused | Error::ConnectionTimeout)
                    },
                    |attempt| {
                        let pending = client.request(attempt.map(|body| body.boxed_unsync()));
                        async move {
                            tokio::time::timeout(first_byte, pending)
                                .await
                                .map_err(|_| Error::ConnectionReadTimeout)
                                .and_then(|result| result.map_err(|err| tls_failed(&err)))
                        }
                    },
                )
                .await;
                match balanced {
                    Ok(response) => Ok(response),
                    // Every target down: the guest answers 503, as Kong does.
                    Err(BalancedError::NoPeer) => Err(Error::ConnectionLimitReached),
                    Err(BalancedError::Failed(err)) => Err(err),
                }
            }
        };
        let mut response = match sent {
            Err(err) => {
                tracing::debug!(%call, %target, "outgoing call failed: {err:?}");
                return Err(err);
            }
            Ok(response) => response,
        };
        crate::http_util::remove_connection_tokens(response.headers_mut(), false);
        Ok(response.map(|body| IdleTimeoutBody::new(body, between_bytes).boxed_unsync()))
    }
}

/// What the guest is told when the pooled client fails: refused/unreachable (502) and
/// timeouts (504) must stay distinguishable.
pub fn client_error(err: &hyper_util::client::legacy::Error) -> Error {
    use std::error::Error as _;
    if let Some(tls) = tls_failure(err) {
        return match tls {
            rustls::Error::InvalidCertificate(_) => Error::TlsCertificateError,
            rustls::Error::AlertReceived(alert) => Error::TlsAlertReceived {
                alert_id: Some(u8::from(*alert)),
                alert_message: Some(format!("{alert:?}")),
            },
            _ => Error::TlsProtocolError,
        };
    }
    error_from_chain(err.source(), err.is_connect())
}

/// What the guest is told for an outgoing call that failed with `cause` (and the causes it
/// gives): refused or unreachable (502) and timeouts (504) stay distinguishable. `connecting`:
/// whether it failed before a connection was made.
pub fn error_from_chain(
    cause: Option<&(dyn std::error::Error + 'static)>,
    connecting: bool,
) -> Error {
    let mut source = cause;
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    Error::ConnectionTerminated
                }
                _ => Error::DestinationUnavailable,
            };
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled())
        {
            return Error::ConnectionTerminated;
        }
        source = cause.source();
    }
    if connecting {
        Error::ConnectionRefused
    } else {
        Error::HttpProtocolError
    }
}

/// A response body that fails when the origin goes quiet for longer than `idle`. The timer is
/// armed only when a read has to wait: most small bodies are complete at the first read and
/// never touch the timer wheel.
pub struct IdleTimeoutBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimeoutBody {
    pub fn new(inner: hyper::body::Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
        }
    }
}

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Data arrived: the next wait starts a fresh idle period.
                self.timer = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(Error::from(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
