//! The client-facing listeners: accept, serve each connection (HTTP/1.1 with keep-alive; HTTP/2
//! over TLS by ALPN, and as h2c with prior knowledge on the plain listener when `[server] h2c`
//! says so), and on shutdown stop accepting and drain in-flight requests.
//!
//! Requests run on `server.workers` threads, each with its own single-threaded runtime: a
//! connection, its guest call and the guest's outgoing calls (over that thread's own
//! connection pool) all stay on one thread, so a request never waits for a wake-up from
//! another thread. One acceptor hands each new connection to the thread serving the fewest;
//! keep-alive makes accepting rare, so that one hop per connection costs nothing measurable.
//! (Threads accepting from the shared socket themselves balanced badly: a burst of connects
//! could all land on whichever thread woke first.) Measured on the 2-core bench box: two
//! request threads served ~40 % more requests per second than one at the same CPU time per
//! request, where a 2-worker work-stealing runtime cost 15 % more CPU per request.

use crate::runtime::Gateway;
use hyper::server::conn::{http1, http2 as h2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use refusals::{answer, refuse_on_the_wire};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

/// The most a request head (request line and every header line) may take: nginx's (and so
/// Kong's) `large_client_header_buffers 4 8k`. The stream follower ([`framing`]) enforces it
/// on HTTP/1 as the head arrives: past it the head is answered 400 `Request header or cookie
/// too large` in Kong's error format and the connection closed, before hyper has the head (so
/// before anything else runs). It is also all the memory a head in progress holds.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// hyper's HTTP/1 `max_header_size`, a backstop above [`MAX_HEAD_BYTES`] so the follower always
/// decides first (hyper answers 431 with an empty body past it; it only sees heads the follower
/// no longer follows: after 1024 unanswered pipelined heads). A head in progress never holds
/// more than [`MAX_HEAD_BYTES`] in hyper's buffer: the follower hands it no more.
const HYPER_MAX_HEAD_BYTES: usize = MAX_HEAD_BYTES + 4 * 1024;

/// The most one header line (name and value) or the request target may take: one of nginx's
/// 8k buffers. Past it the request is answered 400 `Request header or cookie too large` (a
/// header, as nginx's 494 through Kong's error handler) or 414 (the target) in Kong's error
/// format, the connection closed, and nothing forwarded.
pub const MAX_HEADER_LINE_BYTES: usize = 8 * 1024;

/// The most header lines a request may have: hyper's default (an explicit `max_headers` would
/// move its parse buffer from the stack to the heap, ~5 % per request). The stream follower
/// refuses a head at the first byte of its 101st header line, before hyper sees it (hyper
/// would answer 431 with an empty body): 400 in Kong's format, as for [`MAX_HEAD_BYTES`].
pub const MAX_HEADERS: usize = 100;

/// The TLS listener, with the certificate it presents (swapped by reloads).
pub struct TlsListener {
    pub listener: std::net::TcpListener,
    pub certificates: Arc<tls::Certificates>,
}

/// Which listener a request came in on, as a request extension: the guest's head and the
/// portable path's `wasi:http` request say the scheme, and `X-Forwarded-Port` the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    pub https: bool,
    /// The gateway's port the client connected to.
    pub port: u16,
}

/// How the connections of one listener are served: the same on every request thread.
struct Protocols {
    inbound: Inbound,
    /// TLS handshakes, on the TLS listener.
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// HTTP/2 with prior knowledge on the plain listener.
    h2c: bool,
}

/// A connection on its way to the request thread that will serve it.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// One of `server.max_connections` (and its address's slot of
    /// `server.max_connections_per_ip`), held for the connection's life.
    permit: per_ip::Admission,
}

/// A request thread as the acceptor sees it.
struct Lane {
    connections: mpsc::UnboundedSender<Accepted>,
    /// Connections the thread is serving now.
    load: Arc<AtomicUsize>,
}

/// The acceptor and the request threads, until [`RequestThreads::stop`].
pub struct RequestThreads {
    workers: usize,
    stop: watch::Sender<bool>,
    stopped: Vec<oneshot::Receiver<()>>,
}

impl RequestThreads {
    /// Serve `listener` (and `tls`, if any) on `settings.workers` threads (one per CPU when
    /// absent): the calling runtime's thread (which also runs the acceptors) and the others of
    /// their own. Connections beyond `settings.max_connections` (both listeners together) wait
    /// in the kernel's accept queue.
    pub fn start(
        listener: std::net::TcpListener,
        tls: Option<TlsListener>,
        gateway: Arc<Gateway>,
        settings: &keygate_policy::Server,
    ) -> std::io::Result<Self> {
        let workers = settings.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let max_connections = settings.max_connections;
        let drain_timeout = settings.drain_timeout.get();
        listener.set_nonblocking(true)?;
        let plain = Arc::new(Protocols {
            inbound: Inbound {
                https: false,
                port: listener.local_addr()?.port(),
            },
            tls: None,
            h2c: settings.h2c,
        });
        let listener = TcpListener::from_std(listener)?;
        let tls = match tls {
            Some(tls) => {
                tls.listener.set_nonblocking(true)?;
                let protocols = Arc::new(Protocols {
                    inbound: Inbound {
                        https: true,
                        port: tls.listener.local_addr()?.port(),
                    },
                    tls: Some(tokio_rustls::TlsAcceptor::from(
                        tls.certificates
                            .server_config()
                            .map_err(std::io::Error::other)?,
                    )),
                    h2c: false,
                });
                Some((TcpListener::from_std(tls.listener)?, protocols))
            }
            None => None,
        };
        let (stop, stopping) = watch::channel(false);
        let mut lanes = Vec::new();
        let mut tls_lanes = Vec::new();
        let mut stopped = Vec::new();
        for thread in 0..workers.max(1) {
            let (connections, incoming) = mpsc::unbounded_channel();
            let load = Arc::new(AtomicUsize::new(0));
            let (done, finished) = oneshot::channel();
            stopped.push(finished);
            // The TLS listener's connections come on a channel of their own, counted in the
            // same load: the acceptors balance both listeners' connections together.
            let tls_incoming = tls.as_ref().map(|(_, protocols)| {
                let (connections, incoming) = mpsc::unbounded_channel();
                tls_lanes.push(Lane {
                    connections,
                    load: Arc::clone(&load),
                });
                (incoming, Arc::clone(protocols))
            });
            let serving = serve_connections(
                (incoming, Arc::clone(&plain)),
                tls_incoming,
                Arc::clone(&gateway),
                Arc::clone(&load),
                drain_timeout,
                timeouts::Limits::new(settings),
                done,
            );
            lanes.push(Lane { connections, load });
            if thread == 0 {
                tokio::spawn(serving);
                continue;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("keygate-request-{thread}"))
                .spawn(move || runtime.block_on(serving))?;
        }
        let permits = Arc::new(Semaphore::new(max_connections));
        let connections = Arc::clone(&gateway.metrics.connections);
        for lane in &lanes {
            connections.watch(Arc::clone(&lane.load));
        }
        // One count per address over both listeners.
        let per_ip = per_ip::PerIp::new(settings.max_connections_per_ip);
        if let Some((tls_listener, _)) = tls {
            tokio::spawn(accept(
                tls_listener,
                tls_lanes,
                Arc::clone(&permits),
                stop.subscribe(),
                Arc::clone(&connections),
                per_ip.clone(),
            ));
        }
        tokio::spawn(accept(
            listener,
            lanes,
            permits,
            stopping,
            connections,
            per_ip,
        ));
        Ok(Self {
            workers,
            stop,
            stopped,
        })
    }

    /// How many threads serve requests.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Stop accepting and wait until every thread has drained its connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for finished in self.stopped {
            let _ = finished.await;
        }
    }
}

/// Accept until told to stop, handing each connection to the least busy request thread.
/// Returning drops the lanes, which tells the threads to drain. A connection from an address
/// holding `server.max_connections_per_ip` already is closed at once (see [`per_ip`]).
async fn accept(
    listener: TcpListener,
    lanes: Vec<Lane>,
    permits: Arc<Semaphore>,
    mut stopping: watch::Receiver<bool>,
    connections: Arc<crate::metrics::Connections>,
    per_ip: Option<Arc<per_ip::PerIp>>,
) {
    let shutdown = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match &per_ip {
            Some(per_ip) => match per_ip.admit(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    // Dropped unread: closed at once, the permit back for the next one.
                    tracing::debug!(%peer, "over server.max_connections_per_ip; closed");
                    connections.refused("per_ip");
                    continue;
                }
            },
            None => None,
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%peer, "could not hand over a connection: {err}");
                continue;
            }
        };
        // Least loaded; ties go round-robin so an idle start spreads evenly.
        next = next.wrapping_add(1);
        let lane = (0..lanes.len())
            .map(|i| &lanes[next.wrapping_add(i) % lanes.len()])
            .min_by_key(|lane| lane.load.load(Ordering::Relaxed))
            .expect("at least one request thread");
        lane.load.fetch_add(1, Ordering::Relaxed);
        connections.accepted.fetch_add(1, Ordering::Relaxed);
        let accepted = Accepted {
            stream,
            peer,
            permit: per_ip::Admission::new(permit, slot),
        };
        if lane.connections.send(accepted).is_err() {
            tracing::error!(%peer, "a request thread has stopped; connection dropped");
        }
    }
}

/// Serve the connections handed to this thread until the acceptors stop, then drain them.
async fn serve_connections(
    incoming: (mpsc::UnboundedReceiver<Accepted>, Arc<Protocols>),
    tls_incoming: Option<(mpsc::UnboundedReceiver<Accepted>, Arc<Protocols>)>,
    gateway: Arc<Gateway>,
    load: Arc<AtomicUsize>,
    drain_timeout: Duration,
    timeouts: timeouts::Limits,
    done: oneshot::Sender<()>,
) {
    // Graceful shutdown by hand: hyper-util's `GracefulShutdown` cannot watch a connection
    // that allows upgrades. Each connection task holds a sender of `open`; when the last one
    // is gone, every connection has finished.
    let (stop, stopping) = watch::channel(false);
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        // The connection's clock (`timeouts`) closes slow heads and idle connections. hyper's
        // own header timer (30 s unless told otherwise) is off: it would close an idle
        // connection before `keepalive_timeout`, and it is a boxed timer made and dropped for
        // every request (~0.7 k instructions of a cached-key request).
        .header_read_timeout(None)
        .max_header_size(HYPER_MAX_HEAD_BYTES);
    // Not `pipeline_flush`: it lets hyper queue response chunks without backpressure, which
    // held ~64 MiB of a 200 MiB download in memory (tests/cli.rs measures peak RSS).
    let builders = Arc::new(Builders {
        http1: http,
        http2: http2::builder(MAX_HEAD_BYTES),
        // A TLS handshake or an h2c preface is what comes before a request head: the same
        // bound, so a client that connects and says nothing costs as little on either.
        first_bytes_timeout: timeouts.header_read,
    });
    let mut incoming = Some(incoming);
    let mut tls_incoming = tls_incoming;
    loop {
        let (accepted, protocols) = tokio::select! {
            Some(next) = next_connection(&mut incoming) => next,
            Some(next) = next_connection(&mut tls_incoming) => next,
            else => break,
        };
        let Accepted {
            stream,
            peer,
            permit,
        } = accepted;
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%peer, "could not take over a connection: {err}");
                load.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            inbound: protocols.inbound,
            gateway: Arc::clone(&gateway),
            stopping: stopping.clone(),
            clock: timeouts.clock(),
        };
        let builders = Arc::clone(&builders);
        let load = Arc::clone(&load);
        let open = open.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.serve(stream, &protocols, &builders).await {
                tracing::debug!(%peer, "connection ended with an error: {err:#}");
            }
            load.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            drop(open);
        });
    }
    let _ = stop.send(true);
    drop(open);
    tokio::select! {
        _ = all_closed.recv() => tracing::debug!("all connections of this thread drained"),
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!("drain timeout ({drain_timeout:?}) passed; closing remaining connections");
        }
    }
    let _ = done.send(());
}

/// The next connection of a listener, with how to serve it; `None` once its acceptor stopped.
async fn next_connection(
    incoming: &mut Option<(mpsc::UnboundedReceiver<Accepted>, Arc<Protocols>)>,
) -> Option<(Accepted, Arc<Protocols>)> {
    let (connections, protocols) = incoming.as_mut()?;
    let accepted = connections.recv().await?;
    Some((accepted, Arc::clone(protocols)))
}

/// A request thread's connection settings, shared by its connections.
struct Builders {
    http1: http1::Builder,
    http2: h2::Builder<hyper_util::rt::TokioExecutor>,
    first_bytes_timeout: Duration,
}

/// One client connection, until it closes.
struct Connection {
    peer: SocketAddr,
    inbound: Inbound,
    gateway: Arc<Gateway>,
    /// Set when the thread drains: finish what is in flight, take no more requests.
    stopping: watch::Receiver<bool>,
    /// `header_read_timeout` and `keepalive_timeout` (see [`timeouts`]).
    clock: Arc<timeouts::Clock>,
}

/// Run a hyper connection until it ends; when the thread drains, let its requests in flight
/// finish and take no more (HTTP/1: close after the current response; HTTP/2: GOAWAY).
macro_rules! until_drained {
    ($connection:expr, $stopping:expr) => {{
        let connection = $connection;
        let mut stopping = $stopping;
        tokio::pin!(connection);
        tokio::select! {
            ended = connection.as_mut() => ended,
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    }};
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        protocols: &Protocols,
        builders: &Builders,
    ) -> anyhow::Result<()> {
        let timeout = builders.first_bytes_timeout;
        let stream = timeouts::Timed::new(stream, &self.clock);
        if let Some(acceptor) = &protocols.tls {
            let stream = tokio::time::timeout(timeout, acceptor.accept(stream))
                .await
                .map_err(|_| anyhow::anyhow!("no TLS handshake within {timeout:?}"))?
                .map_err(|err| anyhow::anyhow!("TLS handshake failed: {err}"))?;
            if stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2) {
                return self.serve_http2(stream, &builders.http2).await;
            }
            return self.serve_http1(stream, &builders.http1).await;
        }
        if protocols.h2c {
            let sniffed = tokio::time::timeout(timeout, http2::sniff(stream))
                .await
                .map_err(|_| anyhow::anyhow!("no request within {timeout:?}"))??;
            return match sniffed {
                http2::Sniffed::Http2(stream) => self.serve_http2(stream, &builders.http2).await,
                http2::Sniffed::Http1(stream) => self.serve_http1(stream, &builders.http1).await,
                http2::Sniffed::Closed => Ok(()),
            };
        }
        self.serve_http1(stream, &builders.http1).await
    }

    /// HTTP/1.1, with the smuggling sniffer reading what hyper reads (decrypted, on TLS).
    async fn serve_http1<S>(self, stream: S, http: &http1::Builder) -> anyhow::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            inbound,
            gateway,
            stopping,
            clock,
        } = self;
        // A head over the limits is answered by the stream itself, below hyper.
        let respond = {
            let gateway = Arc::clone(&gateway);
            move |refused: &framing::Refused<'_>| refuse_on_the_wire(&gateway, refused)
        };
        let (stream, verdicts) = framing::Sniffing::new(stream, respond);
        let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // This request's head, as the stream follower read it (in order, one per head).
            let smuggling = verdicts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop_front()
                .flatten();
            request.extensions_mut().insert(inbound);
            // Boxed: the answer's future (KiBs; its guest call and forward are boxed inside)
            // would otherwise be copied by hyper and by the clock's wrapper per request.
            Box::pin(answer(Arc::clone(&gateway), request, peer, smuggling))
        });
        let service = clock.track(service);
        // With upgrades: a WebSocket request is passed through to its origin (101, then both
        // directions streamed).
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        Ok(until_drained!(connection, stopping)?)
    }

    /// HTTP/2: streams run as tasks of this thread (see [`http2::builder`]).
    async fn serve_http2<S>(
        self,
        stream: S,
        http: &h2::Builder<hyper_util::rt::TokioExecutor>,
    ) -> anyhow::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            inbound,
            gateway,
            stopping,
            clock,
        } = self;
        let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(inbound);
            Box::pin(answer(Arc::clone(&gateway), request, peer, None))
        });
        let service = clock.track(service);
        let connection = http.serve_connection(TokioIo::new(stream), service);
        Ok(until_drained!(connection, stopping)?)
    }
}

/// `AsyncWrite` for a stream wrapper that only watches or replays what is read: writes go
/// straight to its `inner` stream.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}
use write_through;

/// The HTTP/1 stream follower's entry point for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub mod fuzzing {
    pub use super::framing::follow;
}

mod framing;
mod http2;
mod per_ip;
mod refusals;
mod timeouts;
pub mod tls;
