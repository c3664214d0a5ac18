//! A breaker for a dependency that may stop answering (the auth API, a rate limit's Redis).
//! One that does not answer (refused, unreachable, timing out) costs every call its full
//! timeout and holds a connection meanwhile; once it is known to be down, calls get their
//! answer at once (the guest serves a stale verdict or 503; a limit passes or fails as its
//! `fault_tolerant` says) while a background probe finds out when it answers again.

use std::sync::Mutex;
use std::time::Duration;

/// Calls in a row without an answer that mark the dependency down.
pub const FAILURES_TO_OPEN: u32 = 5;

/// How often a probe asks a dependency marked down.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go out; `failures` in a row had no answer.
    Closed { failures: u32 },
    /// Calls fail at once; a probe is running.
    Open,
}

impl Default for State {
    fn default() -> Self {
        Self::Closed { failures: 0 }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether calls should fail without being made.
    pub fn is_open(&self) -> bool {
        *self.lock() == State::Open
    }

    /// The dependency answered (for the auth API: any status): it is up.
    pub fn answered(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    /// A call got no answer. True when this failure opened the breaker: the caller starts the
    /// probe (exactly one runs).
    pub fn failed(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 >= FAILURES_TO_OPEN => {
                *state = State::Open;
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Open => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_closes_on_an_answer() {
        let breaker = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!breaker.failed());
            assert!(!breaker.is_open());
        }
        assert!(breaker.failed(), "the last failure opens it");
        assert!(breaker.is_open());
        assert!(!breaker.failed(), "only one opener starts the probe");
        breaker.answered();
        assert!(!breaker.is_open());
    }

    #[test]
    fn an_answer_resets_the_count() {
        let breaker = Breaker::default();
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed();
        }
        breaker.answered();
        assert!(!breaker.failed());
        assert!(!breaker.is_open());
    }
}
