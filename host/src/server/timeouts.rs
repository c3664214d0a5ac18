//! `server.header_read_timeout` and `server.keepalive_timeout`: how long a client connection
//! may take to send a request head, and how long it may sit idle between requests.
//!
//! hyper has one timer for both (`header_read_timeout`): it starts when a connection opens or
//! goes idle after a response and stops when a head is complete, so an idle kept-alive
//! connection would be closed after the head timeout, and there is no idle timeout of its own
//! (hyper 1.12, `proto/h1/conn.rs`, `poll_read_head` and `State::idle`). nginx has two, and
//! keygate follows it: a connection's [`Clock`] is
//! - *head*: from the connection's start, or from the first byte of a head on a kept-alive
//!   connection, until the head is complete: `header_read_timeout`, then the connection is
//!   closed without an answer (as nginx does: its 408 is only logged);
//! - *idle*: from the end of a response until the next request's first byte (no request in
//!   flight): `keepalive_timeout`, then the connection is closed as if the client had;
//! - *busy*: a request in flight — its head complete and its response not over — or the
//!   connection upgraded (WebSocket): no deadline here, so a slow upload, a slow download or
//!   a slow origin is never cut by either timeout.
//!
//! [`Timed`] wraps the connection's stream: it sees bytes arrive and, while the clock runs,
//! ends a read at the deadline. [`Tracked`] wraps the service: it sees a request start (its
//! head is complete when hyper calls the service) and its response end (hyper drops the body).
//! Both work the same under HTTP/2, where *busy* means any stream open; there a client's
//! frames on an idle connection (a PING) start the head clock.

use hyper::{Request, Response};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// One connection's phase and deadlines, shared by its stream and its service.
pub struct Clock {
    header_read: Duration,
    keepalive: Duration,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    /// Requests whose response is not over.
    in_flight: usize,
    /// Switched protocols: never timed again.
    upgraded: bool,
    /// The task last waiting to read, woken when the connection goes idle so that the idle
    /// deadline is armed.
    reader: Option<Waker>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// A head is being read (or the connection is new); it must be complete by `deadline`.
    Head { deadline: Instant },
    /// Between requests, nothing of the next one read: closed at `deadline`.
    Idle { deadline: Instant },
    /// A request in flight, or upgraded.
    Busy,
}

impl Clock {
    /// A new connection's clock: its first head is due within `header_read`.
    pub fn new(header_read: Duration, keepalive: Duration) -> Arc<Self> {
        Arc::new(Self {
            header_read,
            keepalive,
            state: Mutex::new(State {
                phase: Phase::Head {
                    deadline: Instant::now() + header_read,
                },
                in_flight: 0,
                upgraded: false,
                reader: None,
            }),
        })
    }

    /// Wrap `service` so that its requests tell this clock when they start and end.
    pub fn track<S>(self: &Arc<Self>, service: S) -> Tracked<S> {
        Tracked {
            inner: service,
            clock: Arc::clone(self),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> Phase {
        self.state().phase
    }

    /// Bytes arrived: on an idle connection they start a head.
    fn bytes_arrived(&self) {
        let mut state = self.state();
        if let Phase::Idle { .. } = state.phase {
            state.phase = Phase::Head {
                deadline: Instant::now() + self.header_read,
            };
        }
    }

    fn waiting_to_read(&self, waker: &Waker) {
        let mut state = self.state();
        if !state.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.reader = Some(waker.clone());
        }
    }

    fn request_started(&self) {
        let mut state = self.state();
        state.in_flight += 1;
        state.phase = Phase::Busy;
    }

    fn upgraded(&self) {
        let mut state = self.state();
        state.upgraded = true;
        state.phase = Phase::Busy;
    }

    fn response_over(&self) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 && !state.upgraded {
            state.phase = Phase::Idle {
                deadline: Instant::now() + self.keepalive,
            };
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A connection's stream under its [`Clock`].
pub struct Timed<S> {
    inner: S,
    clock: Arc<Clock>,
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` is set to.
    armed: Instant,
}

impl<S> Timed<S> {
    pub fn new(inner: S, clock: &Arc<Clock>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            clock: Arc::clone(clock),
            timer: Box::pin(tokio::time::sleep_until(now)),
            armed: now,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            let phase = this.clock.phase();
            match phase {
                Phase::Idle { deadline } if Instant::now() >= deadline => {
                    // Nothing read: an end of stream, which hyper takes as the client closing
                    // an idle connection (it closes its side too).
                    tracing::debug!("keepalive_timeout passed; closing an idle connection");
                    return Poll::Ready(Ok(()));
                }
                Phase::Head { deadline } if Instant::now() >= deadline => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no complete request head within server.header_read_timeout",
                    )));
                }
                _ => {}
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    if buf.filled().len() > before {
                        this.clock.bytes_arrived();
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {}
            }
            this.clock.waiting_to_read(cx.waker());
            let (Phase::Head { deadline } | Phase::Idle { deadline }) = phase else {
                return Poll::Pending;
            };
            // A deadline later than the armed one leaves the timer where it is: it fires early
            // once, finds the connection not late (the phase check above) and is set again.
            // Moving it in tokio's wheel on every request cost ~0.4 k instructions of a
            // cached-key request, for a deadline that moves a few µs each time.
            if deadline < this.armed || this.timer.is_elapsed() {
                this.timer.as_mut().reset(deadline);
                this.armed = deadline;
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The deadline passed while waiting: check again (the phase may have moved on).
        }
    }
}

super::write_through!(Timed);

/// A service whose requests keep their connection's [`Clock`] busy until their response ends.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    clock: Arc<Clock>,
}

/// One request in flight; its end (dropped with the response body, or with the request if
/// no response came) may make the connection idle.
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_over();
    }
}

impl<S, Q, B> hyper::service::Service<Request<Q>> for Tracked<S>
where
    S: hyper::service::Service<Request<Q>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Tracking<S::Future>;

    fn call(&self, request: Request<Q>) -> Self::Future {
        self.clock.request_started();
        Tracking {
            future: self.inner.call(request),
            in_flight: Some(InFlight(Arc::clone(&self.clock))),
        }
    }
}

/// The response future of a [`Tracked`] service.
pub struct Tracking<F> {
    future: F,
    in_flight: Option<InFlight>,
}

impl<F, B, E> Future for Tracking<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self` (no method
        // takes it, `Tracking` has no `Drop`); `in_flight` is not pinned and only taken.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        let response = std::task::ready!(future.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(response.map(|response| {
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                && let Some(in_flight) = &in_flight
            {
                in_flight.0.upgraded();
            }
            response.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            })
        }))
    }
}

/// A response body that ends its request's [`InFlight`] when hyper drops it (sent, or the
/// connection gone).
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `server.header_read_timeout` and `server.keepalive_timeout`, for every connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read: Duration,
    pub keepalive: Duration,
}

impl Limits {
    pub fn new(settings: &keygate_policy::Server) -> Self {
        Self {
            header_read: settings.header_read_timeout.get(),
            keepalive: settings.keepalive_timeout.get(),
        }
    }

    /// A new connection's clock.
    pub fn clock(&self) -> Arc<Clock> {
        Clock::new(self.header_read, self.keepalive)
    }
}
