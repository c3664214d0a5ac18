//! Kept-alive connections to plain-http origins. Each request thread keeps its own, per
//! gateway and origin authority; a forwarded request takes the most recently returned one that
//! is ready, and its response hands the connection back once its body has been read to the end.
//!
//! hyper-util's pooled client does this job for any connector and protocol, and keygate uses
//! it for https origins (TLS, ALPN) and its guest's own calls. For plain http it was measured
//! on the native floor (`bench/floor`) at ~8 k instructions a request more than this pool
//! (38.6 k → 30.6 k): its pool key is SipHashed a byte at a time three times per request, and
//! every response spawns a task to hand its connection back. What it does that a forward needs
//! is kept here: the connector (DNS, connect timeout, `TCP_NODELAY`, keepalive), the idle
//! timeout and cap, `Host` from the URI when the request has none, the origin-form request
//! target, and one retry on a new connection for a request a kept connection closed before
//! sending any of it.

use super::forward::LimitedBody;
use crate::capabilities::outgoing_http::{POOL_IDLE_TIMEOUT, POOL_MAX_IDLE_PER_ORIGIN};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

type Sender = http1::SendRequest<LimitedBody>;

/// Why a request got no response head from its origin.
#[derive(Debug)]
pub enum SendError {
    /// No connection: refused, timed out, no address for the name, …
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed the exchange.
    Exchange(hyper::Error),
}

impl SendError {
    /// What went wrong, and whether it was connecting, as `outgoing_http::error_from_chain`
    /// reads it.
    pub fn cause(&self) -> (&(dyn std::error::Error + 'static), bool) {
        match self {
            Self::Connect(err) => (&**err, true),
            Self::Exchange(err) => (err, false),
        }
    }
}

/// A connection out for one request; [`Lease::give_back`] returns it for the next.
pub struct Lease {
    gateway: u64,
    origin: Arc<str>,
    sender: Sender,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One gateway's connections on this thread.
struct GatewayPools {
    gateway: u64,
    connector: HttpConnector,
    origins: HashMap<Box<str>, Origin, foldhash::fast::RandomState>,
}

/// One origin's kept connections, the oldest first.
struct Origin {
    /// The origin's authority, shared with the leases out on it.
    name: Arc<str>,
    idle: VecDeque<Idle>,
}

impl Origin {
    /// Let go of the connections kept too long, and of those the origin closed.
    fn expire(&mut self, now: Instant) {
        self.idle.retain(|idle| {
            now.duration_since(idle.since) < POOL_IDLE_TIMEOUT && !idle.sender.is_closed()
        });
    }
}

thread_local! {
    static POOLS: RefCell<Vec<GatewayPools>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's runtime runs [`expire_idle_connections`].
    static EXPIRING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Expires this thread's kept connections while no request comes to give one back (it runs
/// for as long as the thread's runtime): an origin nobody calls any more does not keep its
/// sockets open for good.
async fn expire_idle_connections() {
    /// Clears [`EXPIRING`] when the task ends with its runtime.
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = EXPIRING.try_with(|expiring| expiring.set(false));
        }
    }
    let _running = Running;
    let every = POOL_IDLE_TIMEOUT / 3;
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        POOLS.with(|pools| {
            for pools in pools.borrow_mut().iter_mut() {
                pools
                    .origins
                    .values_mut()
                    .for_each(|origin| origin.expire(now));
            }
        });
    }
}

/// A ready kept connection to `origin`, if there is one, and the pool's name for the origin.
fn checkout(
    gateway: u64,
    origin: &str,
    connector: impl FnOnce() -> HttpConnector,
) -> (Option<Sender>, Arc<str>) {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        if !EXPIRING.with(|expiring| expiring.replace(true)) {
            tokio::spawn(expire_idle_connections());
        }
        let at = match pools.iter().position(|pools| pools.gateway == gateway) {
            Some(at) => at,
            None => {
                pools.push(GatewayPools {
                    gateway,
                    connector: connector(),
                    origins: HashMap::default(),
                });
                pools.len() - 1
            }
        };
        let origins = &mut pools[at].origins;
        let origin = match origins.get_mut(origin) {
            Some(kept) => kept,
            None => origins.entry(Box::from(origin)).or_insert(Origin {
                name: Arc::from(origin),
                idle: VecDeque::new(),
            }),
        };
        // The most recently returned first: it is the least likely to have been closed.
        // One that is not ready (closed, or still busy with a request body the origin
        // answered before reading) is let go.
        let idle = &mut origin.idle;
        let ready = std::iter::from_fn(|| idle.pop_back()).find(|idle| idle.sender.is_ready());
        (ready.map(|idle| idle.sender), Arc::clone(&origin.name))
    })
}

/// The connector of `gateway`'s pools on this thread (made by [`checkout`]).
fn connector(gateway: u64) -> Option<HttpConnector> {
    POOLS.with(|pools| {
        let pools = pools.borrow();
        let pools = pools.iter().find(|pools| pools.gateway == gateway)?;
        Some(pools.connector.clone())
    })
}

impl Lease {
    /// Keep the connection for the next request to its origin: its response is over.
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        POOLS.with(|pools| {
            let mut pools = pools.borrow_mut();
            let Some(pools) = pools.iter_mut().find(|pools| pools.gateway == self.gateway) else {
                return;
            };
            let Some(origin) = pools.origins.get_mut(&*self.origin) else {
                return;
            };
            // The oldest are at the front: those idle too long, and any over the cap, go.
            let idle = &mut origin.idle;
            while idle
                .front()
                .is_some_and(|oldest| now.duration_since(oldest.since) >= POOL_IDLE_TIMEOUT)
                || idle.len() >= POOL_MAX_IDLE_PER_ORIGIN
            {
                idle.pop_front();
            }
            idle.push_back(Idle {
                sender: self.sender,
                since: now,
            });
        });
    }
}

/// A new connection to `origin`, driven by a task of this thread.
async fn connect(gateway: u64, origin: &str) -> Result<Sender, SendError> {
    let Some(mut connector) = connector(gateway) else {
        return Err(SendError::Connect("no pool for this gateway".into()));
    };
    let io = tower_service::Service::call(&mut connector, origin_uri(origin))
        .await
        .map_err(|err| SendError::Connect(Box::new(err)))?;
    let (sender, connection) = http1::handshake(io).await.map_err(SendError::Exchange)?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!("origin connection ended: {err}");
        }
    });
    Ok(sender)
}

/// Send `request` (its URI absolute, `http`) on a kept connection to its origin, or a new one;
/// the response head, and the lease to give back when its body is over.
pub async fn send(
    gateway: u64,
    connector: impl FnOnce() -> HttpConnector,
    mut request: http::Request<LimitedBody>,
) -> Result<(http::Response<Incoming>, Lease), SendError> {
    let uri = std::mem::take(request.uri_mut());
    let Some(authority) = uri.authority() else {
        return Err(SendError::Connect("the origin URI has no authority".into()));
    };
    let (kept, origin) = checkout(gateway, authority.as_str(), connector);
    if !request.headers().contains_key(http::header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
    // The origin-form request target (`/path?query`), as a client sends it to an origin.
    *request.uri_mut() = match uri.into_parts().path_and_query {
        Some(path) => http::Uri::from(path),
        None => http::Uri::from_static("/"),
    };
    let was_kept = kept.is_some();
    let mut sender = match kept {
        Some(sender) => sender,
        None => connect(gateway, &origin).await?,
    };
    let response = match sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut failed) => {
            // A kept connection the origin had closed, found out before any of the request
            // went: the request goes again on a new one, once.
            let unsent = if was_kept {
                failed.take_message()
            } else {
                None
            };
            let Some(request) = unsent else {
                return Err(SendError::Exchange(failed.into_error()));
            };
            sender = connect(gateway, &origin).await?;
            sender
                .send_request(request)
                .await
                .map_err(SendError::Exchange)?
        }
    };
    Ok((
        response,
        Lease {
            gateway,
            origin,
            sender,
        },
    ))
}

/// `http://{origin}/`: what the connector needs to reach it.
fn origin_uri(origin: &str) -> http::Uri {
    http::Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(origin)
        .path_and_query("/")
        .build()
        .unwrap_or_else(|_| http::Uri::from_static("http://invalid./"))
}

/// A response body that gives its connection back when it has been read to the end (not when
/// it is dropped early: that connection may still carry the rest of it).
pub struct Returning<B: Body> {
    inner: B,
    lease: Option<Lease>,
    ended: bool,
}

impl<B: Body> Returning<B> {
    pub fn new(inner: B, lease: Lease) -> Self {
        Self {
            inner,
            lease: Some(lease),
            ended: false,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Returning<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Returning<B> {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended: that counts as read.
        if (self.ended || self.inner.is_end_stream())
            && let Some(lease) = self.lease.take()
        {
            lease.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A sender on a real loopback connection (hyper needs no exchange to make one), and the
    /// origin's end of it.
    async fn connection() -> (Sender, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let io = hyper_util::rt::TokioIo::new(client.unwrap());
        let (sender, connection) = http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        (sender, accepted.unwrap().0)
    }

    #[tokio::test]
    async fn expiring_lets_go_of_connections_kept_too_long_and_of_those_the_origin_closed() {
        let now = Instant::now();
        let (old, _old_origin) = connection().await;
        let (fresh, _fresh_origin) = connection().await;
        let (closed, closed_origin) = connection().await;
        let mut origin = Origin {
            name: Arc::from("127.0.0.1:1"),
            idle: VecDeque::from([
                Idle {
                    sender: old,
                    since: now - POOL_IDLE_TIMEOUT - Duration::from_secs(1),
                },
                Idle {
                    sender: fresh,
                    since: now,
                },
                Idle {
                    sender: closed,
                    since: now,
                },
            ]),
        };
        drop(closed_origin);
        // The closed one is known closed once its connection task has read the end.
        let closing = async {
            while !origin.idle[2].sender.is_closed() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .expect("the origin's close reaches the connection");
        origin.expire(now);
        assert_eq!(origin.idle.len(), 1, "only the fresh one is kept");
        assert!(!origin.idle[0].sender.is_closed());
    }
}
