//! The request head as the guest's `decide` reads it: viewed in place (all a decision kept for
//! reuse is looked up by), lowered once when the guest is asked.

use crate::responses::HostFailure;
use crate::runtime::component::policy_api::RequestHead;
use std::net::{IpAddr, SocketAddr};

/// The client's request head, borrowed from the request. Bodies stay with the host.
pub struct HeadView<'a> {
    pub method: &'a str,
    pub scheme: &'static str,
    /// `host[:port]` the client addressed: the request target's authority, else `Host`.
    pub authority: &'a str,
    pub path_with_query: &'a str,
    pub headers: &'a http::HeaderMap,
    /// As the guest is told it (an IPv4 client of a dual-stack listener as IPv4).
    pub client: IpAddr,
    pub local_port: u16,
}

/// `request`'s head, as the guest would read it.
pub fn view<B>(
    request: &hyper::Request<B>,
    client: SocketAddr,
    local_port: u16,
) -> Result<HeadView<'_>, HostFailure> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => match request.headers().get(http::header::HOST) {
            Some(host) => host
                .to_str()
                .map_err(|_| HostFailure::BadRequest("Host is not text".into()))?,
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
    Ok(HeadView {
        method: request.method().as_str(),
        scheme,
        authority,
        path_with_query: request.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        headers: request.headers(),
        client: client.ip().to_canonical(),
        local_port,
    })
}

impl HeadView<'_> {
    /// The head as `decide` takes it.
    pub fn lower(&self) -> RequestHead {
        RequestHead {
            method: self.method.to_string(),
            scheme: self.scheme.to_string(),
            authority: self.authority.to_string(),
            path_with_query: self.path_with_query.to_string(),
            headers: super::field_block::from_header_map(self.headers),
            client_ip: Some(crate::http_util::ip_text(self.client)),
            local_port: self.local_port,
        }
    }

    /// Whether `head` is this head lowered (`client` is the address `head` was lowered from).
    pub fn is(&self, head: &RequestHead, client: IpAddr) -> bool {
        self.path_with_query == head.path_with_query
            && self.authority == head.authority
            && self.method == head.method
            && self.scheme == head.scheme
            && self.local_port == head.local_port
            && self.client == client
            && super::field_block::is_block_of(&head.headers, self.headers)
    }
}
