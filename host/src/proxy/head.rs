//! The request head as the guest's `decide` reads it, lowered once.

use crate::responses::HostFailure;
use crate::runtime::component::policy_api::RequestHead;
use std::net::SocketAddr;

/// The client's request head. Bodies stay with the host.
pub fn lower<B>(
    request: &hyper::Request<B>,
    client: SocketAddr,
    local_port: u16,
) -> Result<RequestHead, HostFailure> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str().to_string(),
        None => match request.headers().get(http::header::HOST) {
            Some(host) => host
                .to_str()
                .map_err(|_| HostFailure::BadRequest("Host is not text".into()))?
                .to_string(),
            None => {
                return Err(HostFailure::BadRequest(
                    "no authority in the request target and no Host header".into(),
                ));
            }
        },
    };
    // The listener the request came in on (`crate::server` says); the plain one otherwise.
    let (scheme, local_port) = match request.extensions().get::<crate::server::Inbound>() {
        Some(inbound) => (if inbound.https { "https" } else { "http" }, inbound.port),
        None => ("http", local_port),
    };
    let headers = super::field_block::from_header_map(request.headers());
    Ok(RequestHead {
        method: request.method().as_str().to_string(),
        scheme: scheme.to_string(),
        authority,
        path_with_query: request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string(),
        headers,
        client_ip: Some(crate::http_util::client_ip(client)),
        local_port,
    })
}
