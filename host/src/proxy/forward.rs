//! Carrying out a valid plan: the client's request, with the plan's header edits, sent over
//! this request thread's pooled keep-alive connections; the origin's answer streamed back
//! with the response edits. Bodies go from socket to socket in the host. Upgrades
//! (WebSocket) are passed through as Kong proxies them: 101, then both directions streamed.

use super::balancer::{self, BalancedError, Balancer, Recoverable};
use super::origin_pool::{self, Returning};
use super::plan::Forwarding;
use crate::capabilities::breaker::{FAILURES_TO_OPEN, PROBE_EVERY};
use crate::capabilities::outgoing_http::{
    IdleTimeoutBody, client_error, error_from_chain, http_connector,
};
use crate::http_util::{HeaderScan, connection_tokens, remove_hop_by_hop};
use crate::metrics::Metrics;
use crate::responses::{ErrorContext, ResponseBody};
use crate::runtime::component::policy_api::{FailureContext, UpstreamFailure};
use crate::tls_client::{self, HttpsClient, ThreadHttpsClients, tls_failure};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The origin connection pools of one gateway: one per request thread (see `crate::server`),
/// so a pooled connection is always driven on the thread that uses it.
pub struct Upstream {
    /// Tells this gateway's pools apart from another's on the same thread (tests run several).
    id: u64,
    connect_timeout: Duration,
}

thread_local! {
    /// This thread's pools for https origins, one per TLS configuration.
    static HTTPS_POOLS: RefCell<ThreadHttpsClients<LimitedBody>> = RefCell::default();
    /// Origins this thread found refusing connections: (gateway id, service) → health.
    static ORIGIN_HEALTH: RefCell<HashMap<(u64, Box<str>), OriginHealth>> =
        RefCell::new(HashMap::new());
}

/// An origin that refused (or did not accept, or did not answer, or failed the TLS handshake)
/// the last requests: after [`FAILURES_TO_OPEN`] in a row its requests get the gateway's 502 (504 when it timed out)
/// at once for [`PROBE_EVERY`], then one request tries it again (the others still answered at
/// once) and a failed try starts another pause. An origin outage so costs no connection
/// attempt (nor a second guest call) per request, and the gateway keeps its pace for every
/// other route. Each request thread learns it on its own: nothing is shared between threads.
struct OriginHealth {
    failures: u32,
    down_until: Option<Instant>,
    /// How the last attempt failed: what the requests skipped meanwhile are told.
    last: UpstreamFailure,
}

/// How the origin failed, while it is known down. When the pause is over, the request asking
/// is the one that tries the origin again, and the others keep their answer at once for
/// another pause meanwhile: an origin that never answers (blackholed) would otherwise hold every
/// request that arrives while that try waits for its timeout (measured: 0.71× of the
/// gateway's own 401 rate, against ≥ 0.8× wanted). A try that never reports (its client went
/// away) only delays the next one by a pause.
fn origin_down(gateway: u64, service: &str) -> Option<UpstreamFailure> {
    ORIGIN_HEALTH.with(|health| {
        let mut health = health.borrow_mut();
        if health.is_empty() {
            return None;
        }
        let origin = health.get_mut(&(gateway, Box::from(service)))?;
        let until = origin.down_until?;
        let now = Instant::now();
        if now < until {
            return Some(origin.last);
        }
        // This request tries it; the others do not until it reports or a pause passes.
        origin.down_until = Some(now + PROBE_EVERY);
        None
    })
}

/// `failure`: `None` when the origin answered.
fn origin_answered(gateway: u64, service: &str, failure: Option<UpstreamFailure>) {
    ORIGIN_HEALTH.with(|health| {
        let mut health = health.borrow_mut();
        let Some(failure) = failure else {
            if !health.is_empty() {
                health.remove(&(gateway, Box::from(service)));
            }
            return;
        };
        let origin = health
            .entry((gateway, Box::from(service)))
            .or_insert(OriginHealth {
                failures: 0,
                down_until: None,
                last: failure,
            });
        origin.failures += 1;
        origin.last = failure;
        if origin.failures >= FAILURES_TO_OPEN {
            origin.down_until = Some(Instant::now() + PROBE_EVERY);
        }
    })
}

/// Why a forward produced no response from the origin.
pub enum ForwardError {
    Upstream(UpstreamFailure),
    /// The request's `Content-Length` is over the plan's `max-request-body`.
    BodyTooLarge,
    /// Every target of the service's upstream is drained or marked down.
    NoPeer,
    /// The origin failed the last requests (see [`OriginHealth`]) this way: not tried now.
    OriginDown(UpstreamFailure),
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connect_timeout,
        }
    }

    /// This thread's pool for an https origin with the TLS configuration `tls`.
    fn tls_client(&self, tls: &Arc<rustls::ClientConfig>) -> HttpsClient<LimitedBody> {
        HTTPS_POOLS.with(|pools| pools.borrow_mut().client(tls, self.connect_timeout))
    }

    /// Send `request` as `plan` says and return the origin's response head, its body left
    /// streaming. The plan's header edits are moved into the messages (what is left of the
    /// plan is enough to word a failure). `tls`: the https origin's TLS configuration.
    pub async fn forward(
        &self,
        forwarding: &Forwarding,
        request: hyper::Request<Incoming>,
        started: Instant,
        metrics: &Metrics,
        balancer: Option<&Balancer>,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<hyper::Response<ResponseBody>, ForwardError> {
        let plan = &*forwarding.plan;
        let (mut parts, body) = request.into_parts();
        // The route's `max_body_size`. A declared length is checked here (the guest already
        // answers those; a plan is untrusted) and then held to its word by hyper; a body
        // without one is counted as it streams. Without a limit nothing is counted.
        let mut counter = None;
        if let Some(max) = plan.max_request_body {
            match declared_length(&parts.headers) {
                Some(length) if length > max => return Err(ForwardError::BodyTooLarge),
                Some(_) => {}
                None if body.is_end_stream() => {}
                None => counter = Some(Counter::new(max)),
            }
        }
        let upgrade = requested_upgrade(&parts.headers);
        let client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        let headers = &mut parts.headers;
        for name in &plan.request.remove {
            headers.remove(name);
        }
        remove_hop_by_hop(headers, false);
        for (name, value) in forwarding.appended(&plan.request) {
            headers.append(name, value.clone());
        }
        if let Some(protocol) = upgrade {
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            headers.insert(http::header::UPGRADE, protocol);
        }
        parts.uri = plan.uri.clone();
        parts.version = http::Version::HTTP_11;
        if balancer.is_none()
            && let Some(failure) = origin_down(self.id, &plan.service)
        {
            metrics.outgoing(&plan.service, None);
            return Err(ForwardError::OriginDown(failure));
        }
        let sent_at = Instant::now();
        // https origins go through hyper-util's pooled client (TLS, ALPN); plain http ones
        // through this thread's own pool (`origin_pool`: the cheaper one per request).
        let tls_client = tls.map(|tls| self.tls_client(tls));
        let tls_client = tls_client.as_ref();
        let first_byte = plan.first_byte_timeout;
        let service = &plan.service;
        let gateway = self.id;
        let connect_timeout = self.connect_timeout;
        // A TLS handshake that failed: the origin is as unusable as one that refuses.
        let handshake_failed = &AtomicBool::new(false);
        let send = |request: hyper::Request<LimitedBody>| async move {
            let Some(client) = tls_client else {
                let sending =
                    origin_pool::send(gateway, || http_connector(connect_timeout), request);
                return match tokio::time::timeout(first_byte, sending).await {
                    Err(_) => Err(UpstreamFailure::ResponseTimeout),
                    Ok(Ok((response, lease))) => Ok((response, Some(lease))),
                    Ok(Err(err)) => {
                        tracing::debug!(%service, "origin call failed: {err:?}");
                        let (cause, connecting) = err.cause();
                        Err(failure_of(&error_from_chain(Some(cause), connecting)))
                    }
                };
            };
            match tokio::time::timeout(first_byte, client.request(request)).await {
                Err(_) => Err(UpstreamFailure::ResponseTimeout),
                Ok(Err(err)) => {
                    tracing::debug!(%service, "origin call failed: {err:?}");
                    if let Some(reason) = tls_failure(&err) {
                        handshake_failed.store(true, Ordering::Relaxed);
                        tls_client::log_failure(gateway, &format!("service {service:?}"), reason);
                    }
                    Err(failure_of(&client_error(&err)))
                }
                Ok(Ok(response)) => Ok((response, None)),
            }
        };
        let outcome = match balancer {
            None => {
                let body = LimitedBody::new(Inner::Direct(body), counter.as_ref());
                send(hyper::Request::from_parts(parts, body)).await
            }
            // An upstream: a target that cannot be connected to hands the request, none of
            // it sent yet, to the next.
            Some(balancer) => {
                let balanced = balancer::send(
                    balancer,
                    hyper::Request::from_parts(parts, body),
                    |failure| {
                        matches!(
                            failure,
                            UpstreamFailure::ConnectionRefused | UpstreamFailure::ConnectTimeout
                        )
                    },
                    |attempt| {
                        send(
                            attempt.map(|body| {
                                LimitedBody::new(Inner::Balanced(body), counter.as_ref())
                            }),
                        )
                    },
                )
                .await;
                match balanced {
                    Ok(response) => Ok(response),
                    Err(BalancedError::NoPeer) => return Err(ForwardError::NoPeer),
                    Err(BalancedError::Failed(failure)) => Err(failure),
                }
            }
        };
        metrics.outgoing(
            &plan.service,
            outcome.as_ref().ok().map(|(r, _)| r.status().as_u16()),
        );
        // The body grew past the limit before the origin answered: the origin's request was
        // aborted mid-body (by the error that ended it), and the client gets the 413. (Once
        // the origin has answered, the same error cuts its response short instead.)
        if outcome.is_err() && counter.as_ref().is_some_and(Counter::tripped) {
            return Err(ForwardError::BodyTooLarge);
        }
        if balancer.is_none() {
            match &outcome {
                Ok(_) => origin_answered(self.id, &plan.service, None),
                Err(
                    failure @ (UpstreamFailure::ConnectionRefused
                    | UpstreamFailure::ConnectTimeout
                    | UpstreamFailure::ResponseTimeout),
                ) => origin_answered(self.id, &plan.service, Some(*failure)),
                Err(failure) if handshake_failed.load(Ordering::Relaxed) => {
                    origin_answered(self.id, &plan.service, Some(*failure));
                }
                Err(_) => {}
            }
        }
        let (mut response, lease) = outcome.map_err(ForwardError::Upstream)?;
        let received_at = Instant::now();
        let switching = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            match client_upgrade {
                Some(client_upgrade) => {
                    let origin_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_upgrade, origin_upgrade));
                }
                // A 101 the client never asked for cannot be followed.
                None => return Err(ForwardError::Upstream(UpstreamFailure::ProtocolError)),
            }
        }
        let (mut parts, body) = response.into_parts();
        edit_response(
            &mut parts.headers,
            forwarding,
            switching,
            started,
            sent_at,
            received_at,
        );
        let body = IdleTimeoutBody::new(body, plan.between_bytes_timeout);
        // A connection that switched protocols is the tunnel's now: never given back.
        let body = match lease {
            Some(lease) if !switching => Returning::new(body, lease).boxed_unsync(),
            _ => body.boxed_unsync(),
        };
        Ok(hyper::Response::from_parts(parts, body))
    }
}

/// The origin's headers as the client gets them: hop-by-hop ones dropped (the upgrade pair
/// kept on a 101), then the plan's edits, `Via`, `Server`, the latency headers.
fn edit_response(
    headers: &mut http::HeaderMap,
    forwarding: &Forwarding,
    switching: bool,
    started: Instant,
    sent_at: Instant,
    received_at: Instant,
) {
    let edits = &forwarding.plan.response;
    let found = HeaderScan::of(headers, &edits.headers.remove);
    found.remove_hop_by_hop(headers, switching);
    // An origin's copy of keygate's internal headers must not pass for the guest's.
    if found.internal {
        crate::http_util::remove_internal_headers(headers);
    }
    if switching {
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
    found.remove_named(headers, &edits.headers.remove);
    if let Some(ours) = &edits.via {
        let via = if found.via {
            joined_via(headers, ours.clone())
        } else {
            ours.clone()
        };
        headers.insert(http::header::VIA, via);
    }
    // `found.server` is the origin's: the plan's removals may have taken it.
    if let Some(server) = &edits.server_if_absent
        && (!found.server || !headers.contains_key(http::header::SERVER))
    {
        headers.insert(http::header::SERVER, server.clone());
    }
    let millis = |d: Duration| crate::http_util::number_value(d.as_millis());
    if let Some(name) = &edits.upstream_latency_header {
        headers.insert(name, millis(received_at - sent_at));
    }
    if let Some(name) = &edits.proxy_latency_header {
        headers.insert(name, millis(sent_at - started));
    }
    for (name, value) in forwarding.appended(&edits.headers) {
        headers.append(name, value.clone());
    }
}

/// Every `Via` value the origin sent, in order, then `ours`, as one value (RFC 9110 §7.6.3).
fn joined_via(headers: &http::HeaderMap, ours: http::HeaderValue) -> http::HeaderValue {
    let mut joined = Vec::new();
    for value in headers.get_all(http::header::VIA) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    if joined.is_empty() {
        return ours;
    }
    joined.extend_from_slice(ours.as_bytes());
    http::HeaderValue::from_bytes(&joined).unwrap_or(ours)
}

/// What the guest needs to word an origin failure.
pub fn failure_context(
    forwarding: Forwarding,
    failure: UpstreamFailure,
    asked: &ErrorContext,
    started: Instant,
) -> FailureContext {
    FailureContext {
        failure,
        service: forwarding.plan.service.clone(),
        labels: forwarding.plan.labels.clone(),
        request_id: forwarding.request_id.to_string(),
        accept: asked.accept(),
        content_type: asked.content_type(),
        method: asked.method.as_str().to_string(),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// The client's `Upgrade` value when it asks for one (`Connection: upgrade` and `Upgrade`).
fn requested_upgrade(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    connection_tokens(headers)
        .any(|token| token.eq_ignore_ascii_case("upgrade"))
        .then(|| headers.get(http::header::UPGRADE).cloned())
        .flatten()
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Both directions of an upgraded connection, until either side closes.
async fn tunnel(client: hyper::upgrade::OnUpgrade, origin: hyper::upgrade::OnUpgrade) {
    let (client, origin) = match tokio::try_join!(client, origin) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!("upgrade did not complete: {err}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut origin = TokioIo::new(origin);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut origin).await {
        tracing::debug!("upgraded connection ended: {err}");
    }
}

/// A wasi:http-style error code in the policy's terms.
fn failure_of(err: &wasmtime_wasi_http::Error) -> UpstreamFailure {
    use wasmtime_wasi_http::Error;
    match err {
        Error::ConnectionRefused | Error::DestinationUnavailable => {
            UpstreamFailure::ConnectionRefused
        }
        Error::ConnectionTimeout => UpstreamFailure::ConnectTimeout,
        Error::ConnectionReadTimeout | Error::HttpResponseTimeout => {
            UpstreamFailure::ResponseTimeout
        }
        Error::ConnectionTerminated => UpstreamFailure::ConnectionReset,
        Error::DnsTimeout | Error::DnsError { .. } | Error::DestinationNotFound => {
            UpstreamFailure::NameUnresolved
        }
        Error::ConnectionLimitReached => UpstreamFailure::LimitReached,
        _ => UpstreamFailure::ProtocolError,
    }
}

/// The client's body on its way to the origin, cut off past the plan's `max-request-body`
/// (a body without `Content-Length` is only known to be too large once it is). Only a body
/// that must be counted is wrapped in [`Counted`]: the others go through untouched.
pub struct LimitedBody {
    inner: Inner,
}

/// The client's body as it is, or shared so a balancer can hand it to another target, or
/// either of them counted against a limit.
enum Inner {
    Direct(Incoming),
    Balanced(Recoverable<Incoming>),
    Counted(Box<Counted>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a request's body went over its limit; shared between the body, moved into the
/// connection that sends it, and the forward that words the answer.
struct Counter {
    limit: u64,
    over: Arc<AtomicBool>,
}

impl Counter {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            over: Arc::default(),
        }
    }

    fn tripped(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }
}

struct Counted {
    body: Inner,
    remaining: u64,
    over: Arc<AtomicBool>,
}

/// What ends a body that went over its limit (the origin's request is aborted with it).
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body over its size limit")
    }
}

impl std::error::Error for OverLimit {}

impl LimitedBody {
    fn new(body: Inner, counter: Option<&Counter>) -> Self {
        let inner = match counter {
            None => body,
            Some(counter) => Inner::Counted(Box::new(Counted {
                body,
                remaining: counter.limit,
                over: Arc::clone(&counter.over),
            })),
        };
        Self { inner }
    }
}

impl Inner {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Self::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Balanced(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Counted(counted) => counted.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Direct(body) => body.is_end_stream(),
            Self::Balanced(body) => body.is_end_stream(),
            Self::Counted(counted) => counted.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Direct(body) => body.size_hint(),
            Self::Balanced(body) => body.size_hint(),
            Self::Counted(counted) => counted.body.size_hint(),
        }
    }
}

impl Counted {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.body.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
            if len > self.remaining {
                self.over.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(Box::new(OverLimit))));
            }
            self.remaining -= len;
        }
        polled
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
