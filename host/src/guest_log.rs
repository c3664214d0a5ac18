//! The guest's stderr, as log lines that cannot flood the log. An outage of the auth API or of
//! an origin makes the guest write the same line for every request ("auth API unavailable for
//! key ****: …"); here the first of each distinct line in a second is logged, the others are
//! counted and summed up in one line ("… (repeated 3 211 times in the last 1.0 s)") when the
//! second is over.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How long identical lines are counted before their summary is logged.
const WINDOW: Duration = Duration::from_secs(1);

/// Distinct lines tracked in one window; lines beyond it are counted together.
const MAX_DISTINCT: usize = 256;

/// A guest line is cut here: the log is no place for a guest's megabytes.
const MAX_LINE: usize = 2048;

/// What the guests of one gateway write to stderr. Cloned into every instance's WASI context.
#[derive(Clone, Default)]
pub struct GuestLog {
    limiter: Arc<Mutex<Limiter>>,
}

impl GuestLog {
    /// A log whose summaries are written once a second by a thread of its own, which ends
    /// when the log is dropped.
    pub fn with_flusher() -> Self {
        let log = Self::default();
        let limiter = Arc::downgrade(&log.limiter);
        let spawned = std::thread::Builder::new()
            .name("keygate-guest-log".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(WINDOW);
                    let Some(limiter) = limiter.upgrade() else {
                        return;
                    };
                    limiter
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .flush(Instant::now());
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(
                "no thread for guest log summaries ({err}); repeated guest lines are summed up when they recur"
            );
        }
        log
    }
}

#[derive(Default)]
struct Limiter {
    /// Lines logged in the current window of each, and how many more came since.
    seen: HashMap<String, Seen>,
    /// Lines not tracked because `seen` was full, since the oldest of them.
    untracked: Option<Seen>,
}

struct Seen {
    since: Instant,
    repeats: u64,
}

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Log,
    Count,
}

impl Limiter {
    fn offer(&mut self, line: &str, now: Instant) -> Verdict {
        if let Some(seen) = self.seen.get_mut(line) {
            if now.duration_since(seen.since) < WINDOW {
                seen.repeats += 1;
                return Verdict::Count;
            }
            summarize(line, seen, now);
            seen.since = now;
            seen.repeats = 0;
            return Verdict::Log;
        }
        if self.seen.len() >= MAX_DISTINCT {
            self.untracked
                .get_or_insert(Seen {
                    since: now,
                    repeats: 0,
                })
                .repeats += 1;
            return Verdict::Count;
        }
        self.seen.insert(
            line.to_string(),
            Seen {
                since: now,
                repeats: 0,
            },
        );
        Verdict::Log
    }

    /// Log the summaries of windows that are over, and forget lines that stopped.
    fn flush(&mut self, now: Instant) {
        self.seen.retain(|line, seen| {
            if now.duration_since(seen.since) < WINDOW {
                return true;
            }
            summarize(line, seen, now);
            false
        });
        if let Some(untracked) = self
            .untracked
            .take_if(|u| now.duration_since(u.since) >= WINDOW)
        {
            tracing::warn!(
                target: "guest",
                "{} more guest log lines were not logged (over {MAX_DISTINCT} distinct lines in {:.1} s)",
                untracked.repeats,
                now.duration_since(untracked.since).as_secs_f64()
            );
        }
    }
}

fn summarize(line: &str, seen: &Seen, now: Instant) {
    if seen.repeats > 0 {
        tracing::warn!(
            target: "guest",
            "{line} (repeated {} times in the last {:.1} s)",
            seen.repeats,
            now.duration_since(seen.since).as_secs_f64()
        );
    }
}

impl GuestLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn line(&self, line: &str) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let line = match line.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => &line[..cut],
            None => line,
        };
        if self.lock().offer(line, Instant::now()) == Verdict::Log {
            tracing::warn!(target: "guest", "{line}");
        }
    }
}

/// One guest stream: bytes until a newline make a line.
struct LineWriter {
    log: GuestLog,
    pending: Vec<u8>,
}

impl LineWriter {
    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&bytes[..end]);
            self.log.line(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
            bytes = &bytes[end + 1..];
        }
        // A line without its newline yet: kept, but never more than a line's worth.
        let room = (MAX_LINE * 4).saturating_sub(self.pending.len());
        self.pending
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.log.line(&String::from_utf8_lossy(&self.pending));
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }
}

impl GuestLog {
    fn writer(&self) -> LineWriter {
        LineWriter {
            log: self.clone(),
            pending: Vec::new(),
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_of_a_line_within_a_window_are_counted_not_logged() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        assert_eq!(limiter.offer("auth API unavailable", t0), Verdict::Log);
        for i in 1..100 {
            let at = t0 + Duration::from_millis(i * 5);
            assert_eq!(limiter.offer("auth API unavailable", at), Verdict::Count);
        }
        assert_eq!(limiter.seen["auth API unavailable"].repeats, 99);
        // Another line is its own.
        assert_eq!(limiter.offer("service a unreachable", t0), Verdict::Log);
        // After the window, the line is logged again (its summary first) and counting restarts.
        assert_eq!(
            limiter.offer("auth API unavailable", t0 + WINDOW),
            Verdict::Log
        );
        assert_eq!(limiter.seen["auth API unavailable"].repeats, 0);
    }

    #[test]
    fn flush_forgets_lines_whose_window_is_over() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        limiter.offer("a", t0);
        limiter.offer("a", t0);
        limiter.offer("b", t0 + WINDOW / 2);
        limiter.flush(t0 + WINDOW);
        assert!(!limiter.seen.contains_key("a"));
        assert!(limiter.seen.contains_key("b"));
        assert_eq!(limiter.offer("a", t0 + WINDOW), Verdict::Log);
    }

    #[test]
    fn distinct_lines_beyond_the_cap_are_counted_together() {
        let mut limiter = Limiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_DISTINCT {
            assert_eq!(limiter.offer(&format!("line {i}"), t0), Verdict::Log);
        }
        for i in 0..10 {
            assert_eq!(limiter.offer(&format!("other {i}"), t0), Verdict::Count);
        }
        assert_eq!(limiter.untracked.as_ref().map(|u| u.repeats), Some(10));
        limiter.flush(t0 + WINDOW);
        assert!(limiter.untracked.is_none() && limiter.seen.is_empty());
    }

    #[test]
    fn bytes_become_lines_at_newlines() {
        let log = GuestLog::default();
        let mut writer = log.writer();
        writer.write_bytes(b"first li");
        writer.write_bytes(b"ne\nsecond\nthi");
        assert!(log.lock().seen.contains_key("first line"));
        assert!(log.lock().seen.contains_key("second"));
        assert!(!log.lock().seen.contains_key("thi"));
        drop(writer);
        assert!(log.lock().seen.contains_key("thi"), "the rest on close");
    }
}
