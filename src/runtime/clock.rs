//! The runtime's clock: wall-clock time that advances with Tokio's clock.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

/// Wall-clock time that advances with Tokio's clock, so a paused test clock
/// moves record timestamps and leases too.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        Clock {
            wall: Utc::now(),
            mono: Instant::now(),
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.wall + to_delta(self.mono.elapsed())
    }
}

/// A `Duration` as a `TimeDelta`, saturating.
pub(super) fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}
