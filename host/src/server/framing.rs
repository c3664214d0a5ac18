//! Request smuggling shapes hyper lets through, found on the wire.
//!
//! hyper answers most malformed heads itself (400 for two different `Content-Length`s, a
//! `Transfer-Encoding` other than a final `chunked`, obs-fold, bytes not allowed in a header),
//! but a request with both `Content-Length` and `Transfer-Encoding: chunked` it serves as
//! chunked, with the `Content-Length` removed (RFC 9112 allows that too), and two equal
//! `Content-Length`s as one: the service cannot tell either from a plain request. Both are
//! what request smuggling through a proxy pair is made of, and nginx refuses them (400), so
//! keygate does: [`Sniffing`] reads the same bytes hyper reads, follows the requests' framing
//! (heads, `Content-Length` and chunked bodies), and queues one verdict per request head for
//! the service, which takes them in order as hyper hands it the requests.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head is refused, in request order; `None`: nothing found.
pub type Verdicts = Arc<Mutex<VecDeque<Option<&'static str>>>>;

/// Verdicts not yet taken by the service beyond which the connection is no longer followed
/// (a flood of pipelined heads; hyper's own buffer limit bounds it anyway).
const MAX_QUEUED: usize = 1024;

/// A connection's stream, followed as hyper reads it.
pub struct Sniffing<S> {
    inner: S,
    follower: Follower,
}

impl<S> Sniffing<S> {
    pub fn new(inner: S) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        let follower = Follower {
            state: State::Head(Head::default()),
            line: Vec::new(),
            verdicts: Arc::clone(&verdicts),
        };
        (Self { inner, follower }, verdicts)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && !matches!(this.follower.state, State::Lost)
        {
            this.follower.feed(&buf.filled()[before..]);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where in the request stream the bytes read next belong.
enum State {
    Head(Head),
    /// Body bytes still to come.
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: bytes still to skip.
    ChunkEnd(u8),
    Trailers,
    /// No longer followed: an upgrade or CONNECT, a refused head (the connection closes
    /// after its answer), or a shape hyper refuses itself (it closes too).
    Lost,
}

/// What the head being read says about framing.
#[derive(Default)]
struct Head {
    started: bool,
    content_lengths: u32,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    upgrade: bool,
}

struct Follower {
    state: State,
    /// A line split across reads.
    line: Vec<u8>,
    verdicts: Verdicts,
}

impl Follower {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Fixed(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::Head(Head::default());
                    }
                }
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(left) => {
                    let n = usize::from(*left).min(bytes.len());
                    *left -= n as u8;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.state = State::ChunkSize;
                    }
                }
                State::Head(_) | State::ChunkSize | State::Trailers => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        if self.line.len() + bytes.len() > super::MAX_HEAD_BYTES {
                            // hyper refuses it (431) and closes.
                            self.state = State::Lost;
                        } else {
                            self.line.extend_from_slice(bytes);
                        }
                        return;
                    };
                    let (line, rest) = bytes.split_at(end + 1);
                    bytes = rest;
                    if self.line.is_empty() {
                        self.on_line(line);
                    } else {
                        let mut whole = std::mem::take(&mut self.line);
                        whole.extend_from_slice(line);
                        self.on_line(&whole);
                        // Kept for the next split line, unless a long one grew it.
                        whole.clear();
                        if whole.capacity() <= 1024 {
                            self.line = whole;
                        }
                    }
                }
            }
        }
    }

    /// One line ending in LF (hyper, like httparse, also takes a bare LF).
    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match &mut self.state {
            // Empty lines before a request line are skipped, as hyper does.
            State::Head(head) if !head.started && line.is_empty() => {}
            State::Head(head) if !head.started => {
                head.started = true;
                head.upgrade = line.starts_with(b"CONNECT ");
            }
            State::Head(head) if line.is_empty() => {
                let head = std::mem::take(head);
                self.end_of_head(head);
            }
            State::Head(head) => {
                let Some(colon) = line.iter().position(|&b| b == b':') else {
                    return;
                };
                let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
                if name.eq_ignore_ascii_case(b"content-length") {
                    head.content_lengths += 1;
                    head.content_length =
                        std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    head.transfer_encoding = true;
                    // The last coding of the last line decides, as in hyper.
                    head.chunked = value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
                } else if name.eq_ignore_ascii_case(b"upgrade") {
                    head.upgrade = true;
                }
            }
            State::ChunkSize => {
                let digits = line
                    .iter()
                    .take_while(|b| b.is_ascii_hexdigit())
                    .map(|&b| char::from(b))
                    .collect::<String>();
                self.state = match u64::from_str_radix(&digits, 16) {
                    Ok(0) => State::Trailers,
                    Ok(size) => State::ChunkData(size),
                    Err(_) => State::Lost,
                };
            }
            State::Trailers if line.is_empty() => self.state = State::Head(Head::default()),
            _ => {}
        }
    }

    fn end_of_head(&mut self, head: Head) {
        let refused = if head.content_lengths > 0 && head.transfer_encoding {
            Some("Content-Length with Transfer-Encoding")
        } else if head.content_lengths > 1 {
            Some("more than one Content-Length")
        } else {
            None
        };
        {
            let mut verdicts = self
                .verdicts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if verdicts.len() >= MAX_QUEUED {
                self.state = State::Lost;
                return;
            }
            verdicts.push_back(refused);
        }
        self.state = if refused.is_some() || head.upgrade {
            State::Lost
        } else if head.transfer_encoding {
            if head.chunked {
                State::ChunkSize
            } else {
                State::Lost
            }
        } else {
            match (head.content_lengths, head.content_length) {
                (0, _) | (_, Some(0)) => State::Head(Head::default()),
                (_, Some(n)) => State::Fixed(n),
                (_, None) => State::Lost,
            }
        };
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdicts for `wire` fed in pieces of `piece` bytes, and whether the follower
    /// still follows.
    fn verdicts(wire: &str, piece: usize) -> (Vec<Option<&'static str>>, bool) {
        let (mut sniffing, verdicts) = Sniffing::new(());
        for chunk in wire.as_bytes().chunks(piece) {
            sniffing.follower.feed(chunk);
        }
        let following = !matches!(sniffing.follower.state, State::Lost);
        (verdicts.lock().unwrap().drain(..).collect(), following)
    }

    const SMUGGLED: Option<&str> = Some("Content-Length with Transfer-Encoding");

    #[test]
    fn bodies_are_skipped_and_every_head_gets_a_verdict_in_order() {
        let wire = "\r\nPOST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n\
            GET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n\
            POST / HTTP/1.1\nTransfer-Encoding: gzip, chunked\n\n\
            4;x=y\r\nabcd\r\n0\r\nt: 1\r\n\r\n\
            GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        for piece in [1, 2, 7, wire.len()] {
            assert_eq!(
                verdicts(wire, piece),
                (vec![None, None, None], true),
                "{piece}"
            );
        }
    }

    #[test]
    fn smuggling_shapes_are_found_and_end_the_following() {
        for head in [
            "GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ] {
            assert_eq!(verdicts(head, 3), (vec![SMUGGLED], false));
        }
        let two = "GET / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n";
        assert_eq!(
            verdicts(two, 5),
            (vec![Some("more than one Content-Length")], false)
        );
    }

    #[test]
    fn an_upgrade_ends_the_following() {
        let wire = "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x01\x05hello\r\n\r\n";
        assert_eq!(verdicts(wire, 4), (vec![None], false));
    }
}
