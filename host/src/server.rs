//! The client-facing HTTP/1.1 listener: accept, serve each connection with keep-alive, and on
//! shutdown stop accepting and drain in-flight requests.
//!
//! Requests run on `server.workers` threads, each with its own single-threaded runtime
//! accepting from the one listening socket: a connection, its guest call and the guest's
//! outgoing calls (over that thread's own connection pool) all stay on one thread, so a
//! request never waits for a wake-up from another thread. Measured on the 2-core bench box:
//! two such threads served 45 % more requests per second than one, at the same CPU time per
//! request, where a 2-worker work-stealing runtime cost 15 % more CPU per request.

use crate::runtime::Gateway;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};

/// How long a client may take to send a request head before its connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Request threads serving one listening socket, until [`RequestThreads::stop`].
pub struct RequestThreads {
    stop: watch::Sender<bool>,
    stopped: Vec<oneshot::Receiver<()>>,
}

impl RequestThreads {
    /// Serve `listener` on `workers` threads: the calling runtime's thread (a task on it) and
    /// `workers - 1` threads of their own. Connections beyond `max_connections` (over all
    /// threads) wait in the kernel's accept queue.
    pub fn start(
        listener: std::net::TcpListener,
        workers: usize,
        gateway: Arc<Gateway>,
        max_connections: usize,
        drain_timeout: Duration,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let (stop, stopping) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(max_connections));
        let mut stopped = Vec::new();
        for thread in 0..workers.max(1) {
            let socket = listener.try_clone()?;
            let (done, finished) = oneshot::channel();
            stopped.push(finished);
            let serving = serve(
                socket,
                Arc::clone(&gateway),
                Arc::clone(&connections),
                drain_timeout,
                stopping.clone(),
                done,
            );
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
        Ok(Self { stop, stopped })
    }

    /// Stop accepting on every thread and wait until each has drained.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for finished in self.stopped {
            let _ = finished.await;
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    gateway: Arc<Gateway>,
    connections: Arc<Semaphore>,
    drain_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
    done: oneshot::Sender<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("request thread cannot use the listening socket: {err}");
            let _ = done.send(());
            return;
        }
    };
    let shutdown = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Not `pipeline_flush`: it lets hyper queue response chunks without backpressure, which
    // held ~64 MiB of a 200 MiB download in memory (tests/cli.rs measures peak RSS).
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => permit.expect("never closed"),
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
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            async move { Ok::<_, Infallible>(gateway.handle(request, peer).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, "connection ended with an error: {err}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::debug!("no longer accepting connections; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!("drain timeout ({drain_timeout:?}) passed; closing remaining connections");
        }
    }
}
