//! Running the guest inside the client connection's own task instead of a task of its own.
//!
//! The guest hands over the response head and then keeps running to stream the body. A spawned
//! task per request (what `wasmtime serve` does) costs a spawn, a cross-task wake for the head
//! and one for every body chunk. Here the connection's task polls the guest call while it waits
//! for the head, and afterwards the response body polls it whenever hyper asks for data.

use crate::responses::ResponseBody;
use bytes::Bytes;
use futures::FutureExt;
use http_body::{Body, Frame, SizeHint};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

/// The guest's `handle` call until it returns (after the whole body is written).
pub type GuestCall = Pin<Box<dyn Future<Output = Result<(), GuestError>> + Send>>;

/// Why a guest call ended without returning normally.
pub enum GuestError {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
    Panic,
}

/// How the wait for the response head ended.
pub enum Head {
    /// The guest set a response (its body runs the rest of the guest call).
    Response(hyper::Response<ResponseBody>),
    /// The guest set an error code instead of a response.
    ErrorCode(ErrorCode),
    /// The guest returned (or failed) without setting anything.
    Nothing(Result<(), GuestError>),
}

/// Make a guest call panic-safe (a panic in host code it calls fails this request only) and
/// raise `waited` whenever the guest waits on I/O, which restarts its busy timeout.
pub async fn guarded<T>(
    waited: Arc<AtomicBool>,
    call: impl Future<Output = Result<T, GuestError>> + Send,
) -> Result<T, GuestError> {
    let mut call = std::pin::pin!(AssertUnwindSafe(call).catch_unwind());
    std::future::poll_fn(move |cx| match call.as_mut().poll(cx) {
        Poll::Ready(outcome) => Poll::Ready(outcome.unwrap_or(Err(GuestError::Panic))),
        Poll::Pending => {
            waited.store(true, Ordering::Relaxed);
            Poll::Pending
        }
    })
    .await
}

/// Drive `call` until the guest answers through `head` or returns. `on_end` sees how a call
/// that outlives this wait ended (it may trap while streaming the body).
pub async fn until_head(
    mut call: GuestCall,
    mut head: tokio::sync::oneshot::Receiver<Result<hyper::Response<ResponseBody>, ErrorCode>>,
    on_end: impl Fn(Result<(), GuestError>) + Send + Sync + 'static,
) -> Head {
    enum First {
        Head(Result<Result<hyper::Response<ResponseBody>, ErrorCode>, ()>),
        Returned(Result<(), GuestError>),
    }
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(answer) = Pin::new(&mut head).poll(cx) {
            return Poll::Ready(First::Head(answer.map_err(drop)));
        }
        call.as_mut().poll(cx).map(First::Returned)
    })
    .await;
    match first {
        First::Head(Ok(Ok(response))) => {
            let (parts, body) = response.into_parts();
            let body = GuestDrivenBody {
                body,
                guest: Some((call, Box::new(on_end))),
            };
            Head::Response(hyper::Response::from_parts(
                parts,
                http_body_util::BodyExt::boxed_unsync(body),
            ))
        }
        First::Head(Ok(Err(code))) => {
            finish_in_background(call, Box::new(on_end));
            Head::ErrorCode(code)
        }
        // The guest dropped the outparam without using it; its call says why.
        First::Head(Err(())) => Head::Nothing(call.await),
        First::Returned(outcome) => match head.try_recv() {
            // Answered, then returned (or trapped) within the same poll.
            Ok(answer) => {
                on_end(outcome);
                match answer {
                    Ok(response) => Head::Response(response),
                    Err(code) => Head::ErrorCode(code),
                }
            }
            Err(_) => Head::Nothing(outcome),
        },
    }
}

type OnEnd = Box<dyn Fn(Result<(), GuestError>) + Send + Sync>;

/// A response body that runs the guest producing it.
struct GuestDrivenBody {
    body: ResponseBody,
    guest: Option<(GuestCall, OnEnd)>,
}

impl GuestDrivenBody {
    fn poll_guest(&mut self, cx: &mut Context<'_>) {
        if let Some((call, on_end)) = &mut self.guest
            && let Poll::Ready(outcome) = call.as_mut().poll(cx)
        {
            on_end(outcome);
            self.guest = None;
        }
    }
}

impl Body for GuestDrivenBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // The guest first: it may be about to write the data asked for.
        self.poll_guest(cx);
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for GuestDrivenBody {
    /// hyper drops a body it has finished (or will never send, as for HEAD, or when the client
    /// went away): a guest still running finishes on its own, so its instance can be reused.
    fn drop(&mut self) {
        if let Some((call, on_end)) = self.guest.take() {
            finish_in_background(call, on_end);
        }
    }
}

fn finish_in_background(call: GuestCall, on_end: OnEnd) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let outcome = call.await;
            on_end(outcome);
        });
    }
}
