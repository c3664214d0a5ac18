//! The client-facing HTTP/1.1 listener: accept, serve each connection with keep-alive, and on
//! shutdown stop accepting and drain in-flight requests.
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

use crate::responses::{ErrorContext, HostFailure, ResponseBody};
use crate::runtime::Gateway;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

/// How long a client may take to send a request head before its connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a request head (request line and every header line) may take: nginx's (and so
/// Kong's) `large_client_header_buffers 4 8k`. hyper enforces it while reading: past it, it
/// answers 431 with an empty body and closes the connection, before anything else runs; it is
/// also all the memory a head in progress holds.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The most one header line (name and value) or the request target may take: one of nginx's
/// 8k buffers. Past it the request is answered 431 (a header) or 414 (the target) in Kong's
/// error format, the connection closed, and nothing forwarded.
pub const MAX_HEADER_LINE_BYTES: usize = 8 * 1024;

/// The most header lines a request may have: hyper's default (an explicit `max_headers` would
/// move its parse buffer from the stack to the heap, ~5 % per request). Past it hyper answers
/// 431 with an empty body and closes the connection.
pub const MAX_HEADERS: usize = 100;

/// A connection on its way to the request thread that will serve it.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// One of `server.max_connections`, held for the connection's life.
    permit: OwnedSemaphorePermit,
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
    /// Serve `listener` on `settings.workers` threads (one per CPU when absent): the calling
    /// runtime's thread (which also runs the acceptor) and the others of their own.
    /// Connections beyond `settings.max_connections` wait in the kernel's accept queue.
    pub fn start(
        listener: std::net::TcpListener,
        gateway: Arc<Gateway>,
        settings: &keygate_policy::Server,
    ) -> std::io::Result<Self> {
        let workers = settings.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let max_connections = settings.max_connections;
        let drain_timeout = settings.drain_timeout.get();
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let (stop, stopping) = watch::channel(false);
        let mut lanes = Vec::new();
        let mut stopped = Vec::new();
        for thread in 0..workers.max(1) {
            let (connections, incoming) = mpsc::unbounded_channel();
            let load = Arc::new(AtomicUsize::new(0));
            let (done, finished) = oneshot::channel();
            stopped.push(finished);
            let serving = serve_connections(
                incoming,
                Arc::clone(&gateway),
                Arc::clone(&load),
                drain_timeout,
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
        tokio::spawn(accept(listener, lanes, permits, stopping, connections));
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
/// Returning drops the lanes, which tells the threads to drain.
async fn accept(
    listener: TcpListener,
    lanes: Vec<Lane>,
    permits: Arc<Semaphore>,
    mut stopping: watch::Receiver<bool>,
    connections: Arc<crate::metrics::Connections>,
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
            permit,
        };
        if lane.connections.send(accepted).is_err() {
            tracing::error!(%peer, "a request thread has stopped; connection dropped");
        }
    }
}

/// Serve the connections handed to this thread until the acceptor stops, then drain them.
async fn serve_connections(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    gateway: Arc<Gateway>,
    load: Arc<AtomicUsize>,
    drain_timeout: Duration,
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
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES);
    // Not `pipeline_flush`: it lets hyper queue response chunks without backpressure, which
    // held ~64 MiB of a 200 MiB download in memory (tests/cli.rs measures peak RSS).
    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = incoming.recv().await
    {
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%peer, "could not take over a connection: {err}");
                load.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (stream, verdicts) = framing::Sniffing::new(stream);
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            // This request's head, as the stream follower read it (in order, one per head).
            let smuggling = verdicts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop_front()
                .flatten();
            async move {
                if let Some(shape) = smuggling {
                    let refusal =
                        HostFailure::BadRequest(format!("request smuggling shape: {shape}"));
                    return Ok::<_, Infallible>(refuse(&gateway, &request, refusal));
                }
                if let Some(refusal) = refuse_head(&request) {
                    return Ok(refuse(&gateway, &request, refusal));
                }
                Ok(gateway.handle(request, peer).await)
            }
        });
        // With upgrades: a WebSocket request is passed through to its origin (101, then both
        // directions streamed).
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let load = Arc::clone(&load);
        let mut stopping = stopping.clone();
        let open = open.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(err) = ended {
                tracing::debug!(%peer, "connection ended with an error: {err}");
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
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    gateway
        .metrics
        .request("(none)", response.status().as_u16());
    response
}

mod framing;
