//! Carrying out a valid plan: the client's request, with the plan's header edits, sent over
//! this request thread's pooled keep-alive connections; the origin's answer streamed back
//! with the response edits. Bodies go from socket to socket in the host. Upgrades
//! (WebSocket) are passed through as Kong proxies them: 101, then both directions streamed.

use super::plan::ValidPlan;
use crate::capabilities::outgoing_http::{IdleTimeoutBody, client_error, pooled_client};
use crate::http_util::{connection_tokens, remove_hop_by_hop};
use crate::metrics::Metrics;
use crate::responses::{ErrorContext, ResponseBody};
use crate::runtime::component::policy_api::{FailureContext, UpstreamFailure};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The origin connection pools of one gateway: one per request thread (see `crate::server`),
/// so a pooled connection is always driven on the thread that uses it.
pub struct Upstream {
    /// Tells this gateway's pools apart from another's on the same thread (tests run several).
    id: u64,
    connect_timeout: Duration,
}

type UpstreamClient = Client<HttpConnector, LimitedBody>;

thread_local! {
    static THREAD_POOLS: RefCell<Vec<(u64, UpstreamClient)>> = const { RefCell::new(Vec::new()) };
}

/// Why a forward produced no response from the origin.
pub enum ForwardError {
    Upstream(UpstreamFailure),
    /// The request's `Content-Length` is over the plan's `max-request-body`.
    BodyTooLarge,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connect_timeout,
        }
    }

    fn client(&self) -> UpstreamClient {
        THREAD_POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            if let Some((_, client)) = pools.iter().find(|(id, _)| *id == self.id) {
                return client.clone();
            }
            let client = pooled_client(self.connect_timeout);
            pools.push((self.id, client.clone()));
            client
        })
    }

    /// Send `request` as `plan` says and return the origin's response head, its body left
    /// streaming.
    pub async fn forward(
        &self,
        plan: &ValidPlan,
        request: hyper::Request<Incoming>,
        started: Instant,
        metrics: &Metrics,
    ) -> Result<hyper::Response<ResponseBody>, ForwardError> {
        let (mut parts, body) = request.into_parts();
        if let Some(max) = plan.max_request_body
            && declared_length(&parts.headers).is_some_and(|length| length > max)
        {
            return Err(ForwardError::BodyTooLarge);
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
        for (name, value) in &plan.request.append {
            headers.append(name.clone(), value.clone());
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
        let body = LimitedBody {
            inner: body,
            remaining: plan.max_request_body.unwrap_or(u64::MAX),
        };
        let sent_at = Instant::now();
        let pending = self
            .client()
            .request(hyper::Request::from_parts(parts, body));
        let outcome = match tokio::time::timeout(plan.first_byte_timeout, pending).await {
            Err(_) => Err(UpstreamFailure::ResponseTimeout),
            Ok(Err(err)) => {
                tracing::debug!(service = %plan.service, "origin call failed: {err:?}");
                Err(failure_of(&client_error(&err)))
            }
            Ok(Ok(response)) => Ok(response),
        };
        metrics.outgoing(
            &plan.service,
            outcome.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let mut response = outcome.map_err(ForwardError::Upstream)?;
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
            plan,
            switching,
            started,
            sent_at,
            received_at,
        );
        let body = IdleTimeoutBody::new(body, plan.between_bytes_timeout).boxed_unsync();
        Ok(hyper::Response::from_parts(parts, body))
    }
}

/// The origin's headers as the client gets them: hop-by-hop ones dropped (the upgrade pair
/// kept on a 101), then the plan's edits, `Via`, `Server`, the latency headers.
fn edit_response(
    headers: &mut http::HeaderMap,
    plan: &ValidPlan,
    switching: bool,
    started: Instant,
    sent_at: Instant,
    received_at: Instant,
) {
    let edits = &plan.response;
    remove_hop_by_hop(headers, switching);
    if switching {
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
    for name in &edits.headers.remove {
        headers.remove(name);
    }
    if let Some(ours) = &edits.via {
        let via = joined_via(headers, ours);
        headers.insert(http::header::VIA, via);
    }
    if let Some(server) = &edits.server_if_absent
        && !headers.contains_key(http::header::SERVER)
    {
        headers.insert(http::header::SERVER, server.clone());
    }
    let millis =
        |d: Duration| http::HeaderValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if let Some(name) = &edits.upstream_latency_header {
        headers.insert(name.clone(), millis(received_at - sent_at));
    }
    if let Some(name) = &edits.proxy_latency_header {
        headers.insert(name.clone(), millis(sent_at - started));
    }
    for (name, value) in &edits.headers.append {
        headers.append(name.clone(), value.clone());
    }
}

/// Every `Via` value the origin sent, in order, then `ours`, as one value (RFC 9110 §7.6.3).
fn joined_via(headers: &http::HeaderMap, ours: &http::HeaderValue) -> http::HeaderValue {
    let mut joined = Vec::new();
    for value in headers.get_all(http::header::VIA) {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    if joined.is_empty() {
        return ours.clone();
    }
    joined.extend_from_slice(ours.as_bytes());
    http::HeaderValue::from_bytes(&joined).unwrap_or_else(|_| ours.clone())
}

/// What the guest needs to word an origin failure.
pub fn failure_context(
    plan: ValidPlan,
    failure: UpstreamFailure,
    asked: &ErrorContext,
    started: Instant,
) -> FailureContext {
    FailureContext {
        failure,
        request_id: plan.request_id,
        service: plan.service,
        labels: plan.labels,
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
/// (a body without `Content-Length` is only known to be too large once it is).
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if len > self.remaining {
                        return Poll::Ready(Some(Err("request body over its size limit".into())));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_keeps_every_value_the_origin_sent_then_ours() {
        let ours = http::HeaderValue::from_static("1.1 keygate");
        let mut headers = http::HeaderMap::new();
        assert_eq!(joined_via(&headers, &ours), "1.1 keygate");
        headers.append(http::header::VIA, "1.1 a".parse().unwrap());
        headers.append(http::header::VIA, "1.0 b, 1.1 c".parse().unwrap());
        assert_eq!(
            joined_via(&headers, &ours),
            "1.1 a, 1.0 b, 1.1 c, 1.1 keygate"
        );
    }
}
