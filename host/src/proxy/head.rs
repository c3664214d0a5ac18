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
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect();
    Ok(RequestHead {
        method: request.method().as_str().to_string(),
        scheme: "http".to_string(),
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
