//! Retries, opt-in: [`RetryPolicy`] says how many attempts a job gets and
//! how long it waits between them; [`Transient`] marks the executor errors
//! worth another attempt.
//!
//! With retries on ([`Config::retry`](crate::Config::retry)), a job whose
//! executor fails with a [`Transient`] error, or whose instance died (its
//! lease expired, or it was found running at the instance's restart), goes
//! back to the queue (`PROCESSING → QUEUED`) for its next
//! [`attempt`](crate::AsyncQuery::attempt) instead of ending `FAILURE` or
//! `TIMEDOUT`, until it has had `max_attempts`. Any other error, a panic,
//! a run-time limit and a cancellation end the job as they always do.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::BoxError;

/// How many attempts a job gets and how long it waits between them:
/// exponential backoff with jitter. The default, one attempt, is Elide's
/// behaviour: no retry.
///
/// Before attempt `n + 1` a job waits a random time between half and all of
/// `backoff × 2ⁿ⁻¹`, at most `max_backoff` (so retries of jobs that failed
/// together spread out, and none comes at once).
///
/// ```
/// use std::time::Duration;
/// use async_query::{Config, RetryPolicy};
///
/// let config = Config {
///     retry: RetryPolicy::attempts(3).with_backoff(Duration::from_secs(1), Duration::from_secs(30)),
///     ..Config::default()
/// };
/// // The wait before the second attempt: 0.5–1 s; before the third: 1–2 s.
/// let wait = config.retry.delay(1, 0.5);
/// assert_eq!(wait, Duration::from_millis(750));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts a job gets in all, the first included. Default 1: no retry.
    pub max_attempts: u32,
    /// The wait before the second attempt (at most; at least half of it);
    /// it doubles with every further attempt. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest wait between two attempts. Default 5 minutes; must be
    /// below `max_run_time`, which is how long the cleaner lets a job wait
    /// in the queue.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts in all, with the default backoff.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// Waits about `backoff` before the second attempt, doubling each time,
    /// never more than `max_backoff`.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Duration, max_backoff: Duration) -> Self {
        self.backoff = backoff;
        self.max_backoff = max_backoff;
        self
    }

    /// Whether a job on attempt `attempt` that failed in a way worth
    /// retrying gets another.
    pub fn retries(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The wait before the attempt after `attempt`, for `jitter` in
    /// `[0, 1)`: `(1 + jitter) / 2` of `backoff × 2^(attempt − 1)`, capped
    /// at `max_backoff`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(63);
        let full = self
            .backoff
            .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff);
        full.mul_f64((1.0 + jitter.clamp(0.0, 1.0)) / 2.0)
    }

    /// [`delay`](Self::delay) with a random jitter.
    pub(crate) fn random_delay(&self, attempt: u32) -> Duration {
        // 53 random bits as a fraction in [0, 1): a v4 UUID's randomness
        // spares a dependency.
        let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
        self.delay(attempt, bits as f64 / (1u64 << 53) as f64)
    }

    pub(crate) fn problem(&self, max_run_time: Duration) -> Option<&'static str> {
        if self.max_attempts == 0 {
            Some("retry.max_attempts must be at least 1 (1: no retry)")
        } else if self.backoff > self.max_backoff {
            Some("retry.backoff must be at most retry.max_backoff")
        } else if self.max_attempts > 1 && self.max_backoff >= max_run_time {
            Some(
                "retry.max_backoff must be below max_run_time: the cleaner ends a job that waits \
                 in the queue longer than max_run_time",
            )
        } else {
            None
        }
    }
}

/// Marks an executor's error as transient: with retries on
/// ([`Config::retry`](crate::Config::retry)) the job is tried again instead
/// of ending `FAILURE`. Its message is the wrapped error's.
///
/// Return it from [`QueryExecutor::execute`](crate::QueryExecutor::execute),
/// or as an item of a table export's record stream; it is found anywhere
/// in the error's [`source`](std::error::Error::source) chain.
///
/// ```
/// use async_query::{BoxError, Transient};
///
/// fn connect() -> Result<(), BoxError> {
///     let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
///     Err(Transient::new(refused).into())
/// }
/// let err = connect().unwrap_err();
/// assert!(Transient::is_transient(&*err));
/// assert_eq!(err.to_string(), "connection refused");
/// ```
#[derive(Debug)]
pub struct Transient(BoxError);

impl Transient {
    /// Marks `error` as transient.
    pub fn new(error: impl Into<BoxError>) -> Self {
        Transient(error.into())
    }

    /// The wrapped error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }

    /// Whether `error`, or an error in its source chain, is a [`Transient`].
    pub fn is_transient(error: &(dyn StdError + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(error) = next {
            if error.is::<Transient>() {
                return true;
            }
            next = error.source();
        }
        false
    }
}

impl fmt::Display for Transient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for Transient {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_the_cap_and_jitter_keeps_at_least_half() {
        let policy =
            RetryPolicy::attempts(10).with_backoff(Duration::from_secs(1), Duration::from_secs(5));
        let full: Vec<_> = (1..=5).map(|n| policy.delay(n, 1.0)).collect();
        let secs = |s: u64| Duration::from_secs(s);
        assert_eq!(full, [secs(1), secs(2), secs(4), secs(5), secs(5)]);
        assert_eq!(policy.delay(2, 0.0), secs(1), "half of 2 s");
        assert_eq!(policy.delay(u32::MAX, 1.0), secs(5), "no overflow");
        for _ in 0..100 {
            let wait = policy.random_delay(3);
            assert!(wait >= secs(2) && wait <= secs(4), "{wait:?}");
        }
    }

    #[test]
    fn attempts_run_out_and_bad_policies_are_named() {
        let policy = RetryPolicy::attempts(3);
        assert!(policy.retries(1) && policy.retries(2) && !policy.retries(3));
        assert!(!RetryPolicy::default().retries(1), "no retry by default");
        let hour = Duration::from_secs(3_600);
        assert_eq!(RetryPolicy::default().problem(hour), None);
        assert!(RetryPolicy::attempts(0).problem(hour).is_some());
        let late = RetryPolicy::attempts(2).with_backoff(hour, hour);
        assert!(late.problem(hour).unwrap().contains("max_run_time"));
        let inverted = RetryPolicy::attempts(2).with_backoff(hour, Duration::from_secs(1));
        assert!(inverted.problem(hour).unwrap().contains("backoff"));
    }

    #[test]
    fn transient_errors_are_found_in_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("query failed")]
        struct Wrapper(#[source] Transient);
        let plain: BoxError = "syntax error".into();
        assert!(!Transient::is_transient(&*plain));
        let wrapped: BoxError = Box::new(Wrapper(Transient::new("timeout")));
        assert!(Transient::is_transient(&*wrapped));
        assert_eq!(wrapped.to_string(), "query failed");
    }
}
