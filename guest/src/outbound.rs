//! Outgoing HTTP with deadlines, on plain `wasi:http`: the auth API call and the origin call
//! share it.

use wasip2::clocks::monotonic_clock;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, FutureIncomingResponse, IncomingBody, IncomingResponse, OutgoingRequest,
    RequestOptions,
};
use wasip2::io::poll;
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// Why an outgoing call produced no response.
#[derive(Debug)]
pub enum CallError {
    /// Our deadline passed first.
    Deadline,
    /// The host or the network reported this.
    Http(ErrorCode),
}

impl CallError {
    /// Whether the failure is a timeout (504) rather than a broken or refused peer (502).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Deadline
                | Self::Http(
                    ErrorCode::ConnectionTimeout
                        | ErrorCode::ConnectionReadTimeout
                        | ErrorCode::ConnectionWriteTimeout
                        | ErrorCode::HttpResponseTimeout
                        | ErrorCode::DnsTimeout
                )
        )
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deadline => f.write_str("deadline exceeded"),
            Self::Http(code) => write!(f, "{code:?}"),
        }
    }
}

/// Timeouts for one call, in the form `wasi:http` takes them.
pub fn options(
    connect: std::time::Duration,
    first_byte: std::time::Duration,
    between_bytes: std::time::Duration,
) -> RequestOptions {
    let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let options = RequestOptions::new();
    let _ = options.set_connect_timeout(Some(nanos(connect)));
    let _ = options.set_first_byte_timeout(Some(nanos(first_byte)));
    let _ = options.set_between_bytes_timeout(Some(nanos(between_bytes)));
    options
}

/// Start a call; the response is awaited with [`wait`].
pub fn start(
    request: OutgoingRequest,
    options: RequestOptions,
) -> Result<FutureIncomingResponse, CallError> {
    outgoing_handler::handle(request, Some(options)).map_err(CallError::Http)
}

/// Wait for the response head, at most until `deadline` (monotonic-clock nanoseconds) if given.
pub fn wait(
    future: &FutureIncomingResponse,
    deadline: Option<u64>,
) -> Result<IncomingResponse, CallError> {
    loop {
        // Waiting first saves a host call: a response is never ready right after `handle`
        // (and waiting on a ready pollable returns at once).
        let ready = future.subscribe();
        match deadline {
            Some(deadline) => {
                let timer = monotonic_clock::subscribe_instant(deadline);
                let fired = poll::poll(&[&ready, &timer]);
                if !fired.contains(&0) && monotonic_clock::now() >= deadline {
                    return Err(CallError::Deadline);
                }
            }
            None => ready.block(),
        }
        if let Some(result) = future.get() {
            return match result {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(code)) => Err(CallError::Http(code)),
                Err(()) => Err(CallError::Http(ErrorCode::InternalError(Some(
                    "response taken twice".into(),
                )))),
            };
        }
    }
}

/// A deadline `timeout` from now, in monotonic-clock nanoseconds.
pub fn deadline_in(timeout: std::time::Duration) -> u64 {
    monotonic_clock::now().saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX))
}

/// Read a whole (small) body, refusing more than `limit` bytes or reading past `deadline`.
pub fn read_to_end(stream: &InputStream, limit: usize, deadline: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match stream.read(64 * 1024) {
            Ok(chunk) if chunk.is_empty() => {
                let ready = stream.subscribe();
                let timer = monotonic_clock::subscribe_instant(deadline);
                let fired = poll::poll(&[&ready, &timer]);
                if !fired.contains(&0) && monotonic_clock::now() >= deadline {
                    return Err("deadline exceeded while reading the body".into());
                }
            }
            Ok(chunk) => {
                out.extend_from_slice(&chunk);
                if out.len() > limit {
                    return Err(format!("body larger than {limit} bytes"));
                }
            }
            Err(StreamError::Closed) => return Ok(out),
            Err(StreamError::LastOperationFailed(err)) => return Err(err.to_debug_string()),
        }
    }
}

/// An incoming body with its stream. The stream is a child resource and must be dropped
/// before the body, which the field order guarantees.
pub struct BodyReader {
    pub stream: InputStream,
    _body: IncomingBody,
}

impl BodyReader {
    pub fn open(body: IncomingBody) -> Option<Self> {
        let stream = body.stream().ok()?;
        Some(Self {
            stream,
            _body: body,
        })
    }
}

/// Wait for the first bytes of a stream; empty when it ends without any.
pub fn read_some(stream: &InputStream) -> Vec<u8> {
    stream.blocking_read(64 * 1024).unwrap_or_default()
}

/// Write all of `bytes`, as fast as the stream accepts them.
pub fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        // `blocking-write-and-flush` takes at most 4096 bytes per call.
        let (chunk, rest) = bytes.split_at(bytes.len().min(4096));
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|err| match err {
                StreamError::Closed => "stream closed".to_string(),
                StreamError::LastOperationFailed(err) => err.to_debug_string(),
            })?;
        bytes = rest;
    }
    Ok(())
}

/// [`pump`] of at most `limit` bytes: `Ok(true)` when the source ended within it, `Ok(false)`
/// as soon as it has more (that byte is not moved: `to` got exactly `limit` bytes, and the
/// caller abandons its body unfinished).
pub fn pump_at_most(from: &InputStream, to: &OutputStream, limit: u64) -> Result<bool, String> {
    let failed = |err: StreamError| match err {
        StreamError::Closed => Ok(true),
        StreamError::LastOperationFailed(err) => Err(err.to_debug_string()),
    };
    let mut left = limit;
    loop {
        if left == 0 {
            // At the limit: one more byte, and the body is over it.
            match from.blocking_read(1) {
                Ok(byte) if byte.is_empty() => continue,
                Ok(_) => return Ok(false),
                Err(err) => return failed(err),
            }
        }
        match to.blocking_splice(from, left.min(1 << 20)) {
            // A host that moves more than it was asked (jco's preview2-shim does) still
            // cannot take the body past the limit unnoticed.
            Ok(n) if n > left => return Ok(false),
            Ok(n) => left -= n,
            Err(err) => return failed(err),
        }
    }
}

/// Move a body from one stream to another until the source ends, without copying it through
/// guest memory (the host splices). Memory stays bounded by one chunk however large the body.
pub fn pump(from: &InputStream, to: &OutputStream) -> Result<u64, String> {
    let mut total = 0u64;
    loop {
        match to.blocking_splice(from, 1 << 20) {
            Ok(n) => total += n,
            Err(StreamError::Closed) => return Ok(total),
            Err(StreamError::LastOperationFailed(err)) => return Err(err.to_debug_string()),
        }
    }
}
