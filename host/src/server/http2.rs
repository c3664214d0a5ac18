//! HTTP/2: its bounds, and telling an h2c client from an HTTP/1 one on the plain listener.
//!
//! HTTP/2's framing leaves no room for the smuggling shapes [`super::framing`] looks for: a
//! request's length is its DATA frames, `transfer-encoding` and the other connection headers
//! are refused by the h2 crate (stream reset, PROTOCOL_ERROR), and a `content-length` that
//! disagrees with the DATA frames resets the stream before the body's end reaches anyone.

use bytes::{Buf, Bytes};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// Streams one connection may have open at once: nginx's `http2_max_concurrent_streams`.
/// More are refused (REFUSED_STREAM) until some finish.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Streams a client may open and reset before the gateway has taken them ("rapid reset",
/// CVE-2023-44487): past it the connection gets GOAWAY (ENHANCE_YOUR_CALM). The h2 crate's
/// own default.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// Streams the gateway may reset for a client's protocol errors before it closes the
/// connection (the "MadeYouReset" variant, where the client makes the server do the
/// resetting): hyper's default.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Pings on a connection with nothing to say, to find peers that vanished (a NAT that dropped
/// the mapping keeps an idle connection and its streams open forever otherwise); one not
/// answered within [`KEEPALIVE_TIMEOUT`] closes the connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What every HTTP/2 client connection is served with.
pub fn builder(max_header_list: usize) -> http2::Builder<TokioExecutor> {
    // Streams are spawned with `tokio::spawn`: on a request thread's own runtime, so they stay
    // on the thread that took the connection.
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Decoded header list (names + values + 32 per field, as HPACK counts it): a head as
        // large as HTTP/1's limit. Past it the stream is answered 431; past four times it (an
        // HPACK "bomb": a few bytes on the wire that decode to megabytes) the connection gets
        // GOAWAY before the list is held in memory.
        .max_header_list_size(u32::try_from(max_header_list).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

/// The client preface every HTTP/2 connection starts with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a plain connection speaks, found from its first bytes.
pub enum Sniffed<S> {
    Http2(Prefixed<S>),
    Http1(Prefixed<S>),
    /// Closed before saying anything.
    Closed,
}

/// Read the first bytes of `stream` until they are or cannot be the HTTP/2 preface; what was
/// read is replayed to whichever protocol serves the connection. The caller bounds the wait.
pub async fn sniff<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<Sniffed<S>> {
    let mut read = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let want = PREFACE.len() - read.len();
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok(if read.is_empty() {
                Sniffed::Closed
            } else {
                // A partial head: HTTP/1 answers (or ignores) it as it would any other.
                Sniffed::Http1(Prefixed::new(read, stream))
            });
        }
        read.extend_from_slice(&buf[..n]);
        if !PREFACE.starts_with(&read) {
            return Ok(Sniffed::Http1(Prefixed::new(read, stream)));
        }
        if read.len() == PREFACE.len() {
            return Ok(Sniffed::Http2(Prefixed::new(read, stream)));
        }
    }
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix: Bytes::from(prefix),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

super::write_through!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_is_told_from_an_http1_head_and_replayed() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let Sniffed::Http1(mut replay) = sniff(server).await.unwrap() else {
            panic!("an HTTP/1 head taken for something else");
        };
        let mut head = [0u8; 16];
        replay.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"GET / HTTP/1.1\r\n");

        let (mut client, server) = tokio::io::duplex(64);
        // In two pieces, as a slow client sends it.
        tokio::io::AsyncWriteExt::write_all(&mut client, &PREFACE[..5])
            .await
            .unwrap();
        let sniffing = tokio::spawn(sniff(server));
        tokio::io::AsyncWriteExt::write_all(&mut client, &PREFACE[5..])
            .await
            .unwrap();
        let Sniffed::Http2(mut replay) = sniffing.await.unwrap().unwrap() else {
            panic!("the HTTP/2 preface taken for something else");
        };
        let mut preface = [0u8; 24];
        replay.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, PREFACE);
    }
}
