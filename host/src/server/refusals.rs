//! What the listener answers itself, before the gateway: heads refused for their shape or
//! size, in Kong's error format.

use super::{MAX_HEADER_LINE_BYTES, framing};
use crate::responses::{ErrorContext, HostFailure, ResponseBody};
use crate::runtime::Gateway;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Answer one request: refused here when its head is (a smuggling shape the sniffer found, a
/// line over the limits; a whole head over them never gets here, see [`refuse_on_the_wire`]),
/// else by the gateway.
pub(super) async fn answer(
    gateway: Arc<Gateway>,
    request: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    smuggling: Option<&'static str>,
) -> Result<hyper::Response<ResponseBody>, Infallible> {
    if let Some(shape) = smuggling {
        let refusal = HostFailure::BadRequest(format!("request smuggling shape: {shape}"));
        return Ok(refuse(&gateway, &request, refusal));
    }
    if let Some(refusal) = refuse_head(&request) {
        return Ok(refuse(&gateway, &request, refusal));
    }
    Ok(gateway.handle(request, peer).await)
}

/// Why a request head hyper accepted is refused before the gateway sees it, if it is.
fn refuse_head<B>(request: &hyper::Request<B>) -> Option<HostFailure> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target > MAX_HEADER_LINE_BYTES {
        return Some(HostFailure::UriTooLong);
    }
    // ": " and the line's end are not counted, as nginx counts its buffer (close enough).
    let over = request
        .headers()
        .iter()
        .any(|(name, value)| name.as_str().len() + value.len() > MAX_HEADER_LINE_BYTES);
    over.then_some(HostFailure::HeaderTooLarge)
}

/// Answer a refused head in Kong's error format and close the connection after the answer (the
/// body, if any, is not read).
fn refuse<B>(
    gateway: &Gateway,
    request: &hyper::Request<B>,
    refusal: HostFailure,
) -> hyper::Response<ResponseBody> {
    let asked = ErrorContext {
        method: request.method().clone(),
        accept: request.headers().get(http::header::ACCEPT).cloned(),
        content_type: request.headers().get(http::header::CONTENT_TYPE).cloned(),
    };
    tracing::debug!("refused a request head: {}", refusal.describe());
    let mut response =
        refusal.into_response(&asked, &gateway.active().config.compat, Instant::now());
    // HTTP/2 has no `Connection` header (hyper would drop it): the refused stream ends alone.
    if request.version() < http::Version::HTTP_2 {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    gateway
        .metrics
        .request("(none)", response.status().as_u16());
    response
}

/// The answer to a head over [`MAX_HEAD_BYTES`](super::MAX_HEAD_BYTES) or
/// [`MAX_HEADERS`](super::MAX_HEADERS) lines, which hyper never
/// finishes reading: the 400 [`refuse`] would make for a header line over its limit, serialized
/// for [`framing::Sniffing`] to write itself, and counted the same way.
pub(super) fn refuse_on_the_wire(gateway: &Gateway, refused: &framing::Refused<'_>) -> Vec<u8> {
    tracing::debug!("refused a request head: {}", refused.reason);
    let value = |bytes: Option<&[u8]>| bytes.and_then(|v| http::HeaderValue::from_bytes(v).ok());
    let asked = ErrorContext {
        // Only whether it is `HEAD` is known (and matters: no body).
        method: if refused.head {
            http::Method::HEAD
        } else {
            http::Method::GET
        },
        accept: value(refused.accept),
        content_type: value(refused.content_type),
    };
    let wire = HostFailure::HeaderTooLarge.into_wire(
        &asked,
        &gateway.active().config.compat,
        Instant::now(),
    );
    gateway.metrics.request("(none)", 400);
    wire
}
