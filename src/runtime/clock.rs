//! The runtime's clock: wall-clock time that advances with Tokio's clock
//! and follows a reference: the job store's clock where the store has one
//! (instances on several machines then agree), the system clock otherwise.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::Runtime;

/// How far Tokio's clock may be from the real one for the clock to take it
/// as running (not paused by a test).
const RUNNING: Duration = Duration::from_millis(5);

/// Readings of the store's clock taken before the first write; the one
/// with the shortest round trip counts.
const FIRST_SAMPLES: usize = 3;

/// Wall-clock time for records and leases: the system time at start-up,
/// plus Tokio time since, plus a correction that [`set`](Self::set) brings
/// up to date with a reference clock.
///
/// Reading it is one monotonic clock read (the hot path stays as cheap as
/// it was; reading the system clock on every call cost 12 % of an inline
/// submit). The heartbeat sets it by the store's clock, or by the system
/// clock when the store has none, every third of the lease, so it follows
/// corrections (NTP steps and slews) where it used to keep a start-up error
/// for the life of the process. Under a paused Tokio clock (tests) it is
/// never set, so advancing the test clock moves timestamps and leases by
/// exactly the time advanced.
#[derive(Debug)]
pub(super) struct Clock {
    mono: Instant,
    /// The time at `mono`, in microseconds since the Unix epoch: the
    /// system time at start-up, moved by every [`set`](Self::set). One
    /// integer, so that a reading is one monotonic clock read, one addition
    /// and one conversion (chrono's date arithmetic, twice per reading,
    /// was 5 % of an inline submit).
    base: AtomicI64,
    /// Added to every reading of the system clock: how far this machine's
    /// clock is off (a test hook; zero in production).
    skew: TimeDelta,
    /// Set once the clock has been set by the store's, or tried to.
    first_set: OnceCell<()>,
}

/// Microseconds from `earlier` to `instant` (zero if `instant` is earlier).
fn micros_since(instant: Instant, earlier: Instant) -> i64 {
    i64::try_from(instant.saturating_duration_since(earlier).as_micros()).unwrap_or(i64::MAX)
}

impl Clock {
    pub(super) fn new(skew: TimeDelta) -> Self {
        Clock {
            base: AtomicI64::new((Utc::now() + skew).timestamp_micros()),
            mono: Instant::now(),
            skew,
            first_set: OnceCell::new(),
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.at(Instant::now())
    }

    /// The time at `instant` before any new correction.
    fn at(&self, instant: Instant) -> DateTime<Utc> {
        let micros = self
            .base
            .load(Ordering::Relaxed)
            .saturating_add(micros_since(instant, self.mono));
        DateTime::from_timestamp_micros(micros).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether Tokio's clock runs (it is then within a few milliseconds of
    /// the real one), as opposed to paused by a test.
    fn running() -> bool {
        let tokio = Instant::now().into_std();
        let real = std::time::Instant::now();
        let gap = tokio
            .checked_duration_since(real)
            .unwrap_or_else(|| real.duration_since(tokio));
        gap <= RUNNING
    }

    /// Sets the clock so that it read `reference` at `instant`.
    fn set(&self, reference: DateTime<Utc>, instant: Instant) {
        let base = reference
            .timestamp_micros()
            .saturating_sub(micros_since(instant, self.mono));
        self.base.store(base, Ordering::Relaxed);
    }

    /// Sets the clock by the system clock, unless Tokio's clock is paused.
    pub(super) fn resync(&self) {
        if Self::running() {
            self.set(Utc::now() + self.skew, Instant::now());
        }
    }
}

impl Runtime {
    /// Waits until the clock has been set by the store's clock (or the
    /// store has said it has none, or failed to answer): the first caller
    /// sets it. Called before anything writes a time, so that even an
    /// instance whose system clock is minutes off writes none of it.
    pub(super) async fn clock_ready(&self) {
        if self.clock.first_set.initialized() {
            return;
        }
        self.clock
            .first_set
            .get_or_init(|| self.set_clock(FIRST_SAMPLES))
            .await;
    }

    /// Sets the clock by the store's clock, read `samples` times (the
    /// reading with the shortest round trip counts, taken as the time at its
    /// middle, so the error is at most half that round trip), or by the
    /// system clock if the store has none. A reading whose round trip is
    /// longer than a twentieth of the lease is too vague and is dropped; a
    /// store that fails leaves the clock as it was.
    pub(super) async fn set_clock(&self, samples: usize) {
        if !Clock::running() {
            return;
        }
        let mut best: Option<(DateTime<Utc>, Instant, Duration)> = None;
        for _ in 0..samples {
            let start = Instant::now();
            match self.dao.now().await {
                Ok(Some(reference)) => {
                    let rtt = start.elapsed();
                    if best.is_none_or(|(_, _, shortest)| rtt < shortest) {
                        best = Some((reference, start + rtt / 2, rtt));
                    }
                }
                Ok(None) => return self.clock.resync(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the job store's clock failed; the service's clock stays as it was");
                    return;
                }
            }
        }
        match best {
            Some((reference, middle, rtt)) if rtt <= self.config.lease / 20 => {
                self.clock.set(reference, middle);
            }
            Some((_, _, rtt)) => {
                tracing::debug!(
                    ?rtt,
                    "the job store's clock answered too slowly to set the service's clock by"
                );
            }
            None => {}
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
            base: AtomicI64::new((Utc::now() - TimeDelta::seconds(90)).timestamp_micros()),
            ..Clock::new(TimeDelta::zero())
        };
        assert!((Utc::now() - clock.now()) > TimeDelta::seconds(89));
        clock.resync();
        let skew = (clock.now() - Utc::now()).abs();
        assert!(skew < TimeDelta::milliseconds(100), "{skew}");
    }

    #[tokio::test]
    async fn setting_the_clock_by_a_reference_moves_every_later_reading() {
        let clock = Clock::new(TimeDelta::minutes(-7));
        let reference = Utc::now() + TimeDelta::minutes(3);
        let at = Instant::now();
        clock.set(reference, at);
        // The clock keeps whole microseconds.
        let close = |a: DateTime<Utc>, b: DateTime<Utc>| (a - b).abs() < TimeDelta::microseconds(1);
        assert!(
            close(clock.at(at), reference),
            "{} vs {reference}",
            clock.at(at)
        );
        let later = clock.at(at + Duration::from_secs(2));
        assert!(close(later, reference + TimeDelta::seconds(2)), "{later}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_moves_timestamps_by_the_time_advanced_and_never_resyncs() {
        let clock = Clock::new(TimeDelta::zero());
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
