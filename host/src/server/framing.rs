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
//!
//! It also enforces the whole head's limits ([`MAX_HEAD_BYTES`](super::MAX_HEAD_BYTES) and
//! [`MAX_HEADERS`](super::MAX_HEADERS) lines), before hyper would (hyper's `max_header_size` is
//! set above it, its header count is its default 100): nginx answers such a head 400 `Request
//! header or cookie too large` (its 494 through Kong's error handler), where hyper would answer
//! 431 with an empty body. The byte past the limit (or the first byte of the 101st header line)
//! and everything after it are never handed to hyper; the stream answers itself instead, in
//! Kong's format as the `respond` callback serializes it (from what the head said so far:
//! `Accept`, `Content-Type`, whether the method is `HEAD`), once hyper has answered and flushed
//! every request before it on the connection (pipelined ones are served normally). Then it shuts
//! its write side down, reads and discards what the client already sent (a bounded amount: so
//! the close does not reset the connection under the answer), and tells hyper the stream ended:
//! hyper, holding a partial head, ends the connection without writing anything.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request head is refused, in request order; `None`: nothing found.
pub type Verdicts = Arc<Mutex<VecDeque<Option<&'static str>>>>;

/// Verdicts not yet taken by the service beyond which the connection is no longer followed
/// (a flood of pipelined heads; hyper's own buffer limit bounds it anyway).
const MAX_QUEUED: usize = 1024;

/// The longest `Accept` or `Content-Type` value kept for the answer to a head over the limits
/// (longer ones are taken as absent): real ones are under 200 bytes, and this bounds what a
/// connection holds for them.
const MAX_KEPT_VALUE: usize = 1024;

/// What a refused head's client sent after it that is read and discarded before the close, at
/// most (only what has already arrived is read: the answer is not delayed).
const MAX_DRAINED: usize = 256 * 1024;

/// A head over the limits, as far as it was read: what its answer is made from.
pub struct Refused<'a> {
    /// Which limit it passed, for the log.
    pub reason: &'static str,
    /// The method is `HEAD`: the answer has no body.
    pub head: bool,
    /// The first `Accept` header's value, if one came before the limit.
    pub accept: Option<&'a [u8]>,
    /// The first `Content-Type` header's value, likewise.
    pub content_type: Option<&'a [u8]>,
}

/// A connection's stream, followed as hyper reads it. `respond` makes the answer (a whole
/// HTTP/1.1 response, serialized) to a head over the limits.
pub struct Sniffing<S, R> {
    inner: S,
    follower: Follower,
    respond: R,
    refusal: Refusal,
    /// Everything hyper wrote is flushed: its last write call was a completed `poll_flush`.
    /// The answer to a refused head waits for it, so it follows the answers before it.
    flushed: bool,
}

/// The answer to a head over the limits, on its way out.
enum Refusal {
    /// No head refused.
    None,
    /// `wire[written..]` still to write.
    Writing {
        wire: Vec<u8>,
        written: usize,
    },
    Flushing,
    ShuttingDown,
    /// Discarding what the client already sent, at most `left` more bytes.
    Draining {
        left: usize,
    },
    /// Answered: hyper reads the end of the stream.
    Done,
}

impl<S, R> Sniffing<S, R>
where
    R: FnMut(&Refused<'_>) -> Vec<u8>,
{
    pub fn new(inner: S, respond: R) -> (Self, Verdicts) {
        let verdicts = Verdicts::default();
        let follower = Follower {
            state: State::Head(Head::default()),
            line: Vec::new(),
            accept: Vec::new(),
            content_type: Vec::new(),
            verdicts: Arc::clone(&verdicts),
        };
        let sniffing = Self {
            inner,
            follower,
            respond,
            refusal: Refusal::None,
            flushed: true,
        };
        (sniffing, verdicts)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, R> Sniffing<S, R> {
    /// Answer the refused head on the inner stream, shut it down, drain it, then report its
    /// end (`Ready(Ok(()))` with nothing read).
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.refusal {
                Refusal::None | Refusal::Done => return Poll::Ready(Ok(())),
                Refusal::Writing { wire, written } => {
                    // hyper still flushing an earlier answer: `poll_flush` wakes this task when
                    // it completes.
                    if *written == 0 && !self.flushed {
                        return Poll::Pending;
                    }
                    while *written < wire.len() {
                        let n =
                            ready!(Pin::new(&mut self.inner).poll_write(cx, &wire[*written..]))?;
                        if n == 0 {
                            self.refusal = Refusal::Done;
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *written += n;
                    }
                    self.refusal = Refusal::Flushing;
                }
                Refusal::Flushing => {
                    ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    self.refusal = Refusal::ShuttingDown;
                }
                Refusal::ShuttingDown => {
                    ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
                    self.refusal = Refusal::Draining { left: MAX_DRAINED };
                }
                Refusal::Draining { left } => {
                    let mut scratch = [0u8; 4096];
                    while *left > 0 {
                        let mut discard = ReadBuf::new(&mut scratch[..(*left).min(4096)]);
                        match Pin::new(&mut self.inner).poll_read(cx, &mut discard) {
                            Poll::Ready(Ok(())) if !discard.filled().is_empty() => {
                                *left -= discard.filled().len();
                            }
                            // Closed, failed, or nothing more arrived yet.
                            _ => break,
                        }
                    }
                    self.refusal = Refusal::Done;
                }
            }
        }
    }
}

impl<S, R> AsyncRead for Sniffing<S, R>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: FnMut(&Refused<'_>) -> Vec<u8> + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !matches!(this.refusal, Refusal::None) {
            // hyper holds part of the refused head, so it reads again only to complete it: every
            // request before it has been answered.
            return this.poll_refusal(cx);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && !matches!(this.follower.state, State::Lost)
            && let Some((kept, reason)) = this.follower.feed(&buf.filled()[before..])
        {
            // hyper never sees the byte past the limit, nor anything after it.
            buf.set_filled(before + kept);
            let wire = (this.respond)(&this.follower.refused(reason));
            this.follower.state = State::Lost;
            this.refusal = Refusal::Writing { wire, written: 0 };
            if kept == 0 {
                // Nothing to hand over (which would read as the end): answer now.
                return this.poll_refusal(cx);
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin, R: Unpin> AsyncWrite for Sniffing<S, R> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.flushed = false;
        if self.answering() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.flushed = false;
        if self.answering() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.answering() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if !self.flushed {
            self.flushed = true;
            if matches!(self.refusal, Refusal::Writing { .. }) {
                // The refusal's answer waits in `poll_read` for this flush.
                cx.waker().wake_by_ref();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.answering() {
            // The answer's own shutdown ends the write side.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S, R> Sniffing<S, R> {
    /// The refusal's answer has started on the inner stream: hyper's writes no longer go there.
    fn answering(&self) -> bool {
        match &self.refusal {
            Refusal::None => false,
            Refusal::Writing { written, .. } => *written > 0,
            _ => true,
        }
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

/// What the head being read says about framing, and how big it is.
#[derive(Default)]
struct Head {
    started: bool,
    content_lengths: u32,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    upgrade: bool,
    /// The method is `HEAD`.
    head_method: bool,
    /// Bytes of the head's complete lines so far, blank lines before the request line
    /// included (hyper holds those too).
    bytes: usize,
    /// Header lines so far.
    lines: usize,
    accept: Seen,
    content_type: Seen,
}

/// Whether a header's value was kept (in [`Follower`]) for the answer to a refused head.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Seen {
    #[default]
    Absent,
    Kept,
    /// The first such header was longer than [`MAX_KEPT_VALUE`].
    TooLong,
}

struct Follower {
    state: State,
    /// A line split across reads.
    line: Vec<u8>,
    /// The head's first `Accept` and `Content-Type` values (see [`Head::accept`]), kept across
    /// heads for their capacity.
    accept: Vec<u8>,
    content_type: Vec<u8>,
    verdicts: Verdicts,
}

impl Follower {
    /// Follow `bytes`. `Some((kept, reason))` when a head passes its limits: only the first
    /// `kept` bytes are the stream's, the head is refused for `reason` (the follower stays on
    /// that head for [`Self::refused`]).
    fn feed(&mut self, all: &[u8]) -> Option<(usize, &'static str)> {
        let mut bytes = all;
        while !bytes.is_empty() {
            match &mut self.state {
                State::Lost => return None,
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
                State::Head(head) => {
                    let at = all.len() - bytes.len();
                    // httparse refuses a head as soon as a 101st header begins.
                    if head.lines >= super::MAX_HEADERS
                        && self.line.is_empty()
                        && !matches!(bytes[0], b'\r' | b'\n')
                    {
                        return Some((at, "more than 100 header lines"));
                    }
                    // What the head may still take; the line must end within it.
                    let room = super::MAX_HEAD_BYTES.saturating_sub(head.bytes + self.line.len());
                    let window = &bytes[..bytes.len().min(room)];
                    let Some(end) = memchr::memchr(b'\n', window) else {
                        if bytes.len() > room {
                            return Some((at + room, "request head over 32 KiB"));
                        }
                        self.line.extend_from_slice(bytes);
                        return None;
                    };
                    head.bytes += self.line.len() + end + 1;
                    let (line, rest) = bytes.split_at(end + 1);
                    bytes = rest;
                    self.take_line(line);
                }
                State::ChunkSize | State::Trailers => {
                    let Some(end) = memchr::memchr(b'\n', bytes) else {
                        if self.line.len() + bytes.len() > super::MAX_HEAD_BYTES {
                            // hyper refuses it and closes.
                            self.state = State::Lost;
                        } else {
                            self.line.extend_from_slice(bytes);
                        }
                        return None;
                    };
                    let (line, rest) = bytes.split_at(end + 1);
                    bytes = rest;
                    self.take_line(line);
                }
            }
        }
        None
    }

    /// A line's last piece (with the pieces before it in `self.line`).
    fn take_line(&mut self, line: &[u8]) {
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

    /// The head being read, refused for `reason`.
    fn refused(&self, reason: &'static str) -> Refused<'_> {
        let (head, accept, content_type) = match &self.state {
            State::Head(head) => (head.head_method, head.accept, head.content_type),
            _ => (false, Seen::Absent, Seen::Absent),
        };
        fn kept(kept: Seen, value: &[u8]) -> Option<&[u8]> {
            (kept == Seen::Kept).then_some(value)
        }
        Refused {
            reason,
            head,
            accept: kept(accept, &self.accept),
            content_type: kept(content_type, &self.content_type),
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
                head.head_method = line.starts_with(b"HEAD ");
            }
            State::Head(head) if line.is_empty() => {
                let head = std::mem::take(head);
                self.end_of_head(head);
            }
            State::Head(head) => {
                head.lines += 1;
                let Some(colon) = memchr::memchr(b':', line) else {
                    return;
                };
                let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
                // By length first: most lines are none of these.
                match name.len() {
                    14 if name.eq_ignore_ascii_case(b"content-length") => {
                        head.content_lengths += 1;
                        head.content_length =
                            std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                    }
                    17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                        head.transfer_encoding = true;
                        // The last coding of the last line decides, as in hyper.
                        head.chunked = value
                            .rsplit(|&b| b == b',')
                            .next()
                            .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"));
                    }
                    7 if name.eq_ignore_ascii_case(b"upgrade") => head.upgrade = true,
                    6 if name.eq_ignore_ascii_case(b"accept") => {
                        keep(&mut head.accept, &mut self.accept, value);
                    }
                    12 if name.eq_ignore_ascii_case(b"content-type") => {
                        keep(&mut head.content_type, &mut self.content_type, value);
                    }
                    _ => {}
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

/// Keep a head's first `value` of a header (`kept` says whether it was seen) in `buffer`.
fn keep(kept: &mut Seen, buffer: &mut Vec<u8>, value: &[u8]) {
    if *kept != Seen::Absent {
        return;
    }
    *kept = if value.len() <= MAX_KEPT_VALUE {
        buffer.clear();
        buffer.extend_from_slice(value);
        Seen::Kept
    } else {
        Seen::TooLong
    };
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

/// [`follow`]'s findings: the verdicts, whether the connection is still followed, the cut.
#[doc(hidden)]
pub type Followed = (
    Vec<Option<&'static str>>,
    bool,
    Option<(usize, &'static str)>,
);

/// What the follower makes of `wire` fed in pieces of `piece` bytes (at least 1): the verdicts
/// it queued, whether it still follows the connection, and where it cut a head over the limits
/// (the offset of the first byte not handed on, and why). For the fuzz target, which checks
/// that how the bytes arrive does not change any of it.
#[doc(hidden)]
pub fn follow(wire: &[u8], piece: usize) -> Followed {
    let (mut sniffing, verdicts) = Sniffing::new((), |_: &Refused<'_>| Vec::new());
    let mut offset = 0;
    let mut cut = None;
    for chunk in wire.chunks(piece.max(1)) {
        if let Some((kept, reason)) = sniffing.follower.feed(chunk) {
            assert!(kept <= chunk.len(), "kept more than was fed");
            let _ = sniffing.follower.refused(reason);
            cut = Some((offset + kept, reason));
            break;
        }
        offset += chunk.len();
    }
    let following = !matches!(sniffing.follower.state, State::Lost);
    let verdicts = verdicts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .drain(..)
        .collect();
    (verdicts, following, cut)
}

#[cfg(test)]
mod tests;
