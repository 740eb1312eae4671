//! The runtime's clock: wall-clock time that advances with Tokio's clock
//! and follows corrections of the system clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

/// How far Tokio's clock may be from the real one for [`Clock::resync`] to
/// take it as running (not paused by a test).
const RUNNING: Duration = Duration::from_millis(5);

/// Wall-clock time for records and leases: the system time at start-up,
/// plus Tokio time since, plus a correction that [`resync`](Self::resync)
/// brings up to date with the system clock.
///
/// Reading it is one monotonic clock read (the hot path stays as cheap as
/// it was; reading the system clock on every call cost 12 % of an inline
/// submit). The heartbeat resyncs it, so it follows system corrections (NTP
/// steps and slews) within a third of the lease, where it used to keep a
/// start-up error for the life of the process. Under a paused Tokio clock
/// (tests) it does not resync, so advancing the test clock moves
/// timestamps and leases by exactly the time advanced.
#[derive(Debug)]
pub(super) struct Clock {
    wall: DateTime<Utc>,
    mono: Instant,
    /// Microseconds the system clock is ahead of `wall + mono.elapsed()`.
    correction: AtomicI64,
}

impl Clock {
    pub(super) fn new() -> Self {
        Clock {
            wall: Utc::now(),
            mono: Instant::now(),
            correction: AtomicI64::new(0),
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.wall
            + to_delta(self.mono.elapsed())
            + TimeDelta::microseconds(self.correction.load(Ordering::Relaxed))
    }

    /// Takes up the system clock's corrections since the last call, unless
    /// Tokio's clock is paused (it is then not within a few milliseconds of
    /// the real one).
    pub(super) fn resync(&self) {
        let tokio = Instant::now();
        let real = std::time::Instant::now();
        let gap = tokio
            .into_std()
            .checked_duration_since(real)
            .unwrap_or_else(|| real.duration_since(tokio.into_std()));
        if gap > RUNNING {
            return;
        }
        let counted = self.wall + to_delta(tokio.duration_since(self.mono));
        if let Some(micros) = (Utc::now() - counted).num_microseconds() {
            self.correction.store(micros, Ordering::Relaxed);
        }
    }
}

/// A `Duration` as a `TimeDelta`, saturating.
pub(super) fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_resync_takes_up_a_correction_of_the_system_clock() {
        let clock = Clock {
            // As if the system clock was stepped 90 s forward since start-up.
            wall: Utc::now() - TimeDelta::seconds(90),
            mono: Instant::now(),
            correction: AtomicI64::new(0),
        };
        assert!((Utc::now() - clock.now()) > TimeDelta::seconds(89));
        clock.resync();
        let skew = (clock.now() - Utc::now()).abs();
        assert!(skew < TimeDelta::milliseconds(100), "{skew}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_moves_timestamps_by_the_time_advanced_and_never_resyncs() {
        let clock = Clock::new();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        clock.resync();
        let moved = clock.now() - before;
        assert!(
            (moved - TimeDelta::hours(1)).abs() < TimeDelta::milliseconds(100),
            "{moved}"
        );
    }
}
