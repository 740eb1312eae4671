//! How far a running job has got: [`Progress`], reported by an executor
//! through [`ExecutionContext::report_progress`](crate::ExecutionContext::report_progress),
//! and the cell that carries reports to the service's writer.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// The longest [`Progress::message`] kept, in bytes; a longer one is cut at
/// a character boundary.
pub const MAX_PROGRESS_MESSAGE_LEN: usize = 1_024;

/// How far a running job has got, as its executor last reported it.
///
/// Progress is kept on the record ([`AsyncQuery::progress`](crate::AsyncQuery::progress)),
/// sent to subscribers as an event whose `from` and `to` are both
/// `PROCESSING` ([`JobEvent::progress`](crate::JobEvent::progress)), and
/// shown over HTTP as the `progress` attribute. Reports are coalesced: at
/// most one is written per [`Config::progress_interval`](crate::Config::progress_interval)
/// per job, so an executor may report after every record.
///
/// ```
/// use async_query::Progress;
///
/// let p = Progress::records(250).of(1_000).with_message("reading partition 3");
/// assert_eq!(p.fraction(), Some(0.25));
/// assert_eq!(Progress::records(7).fraction(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Progress {
    /// Records (or other units of work) done so far.
    pub records: u64,
    /// How many there will be, when the executor knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// A line for the person watching ("reading partition 3 of 8"), at
    /// most [`MAX_PROGRESS_MESSAGE_LEN`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Progress {
    /// `records` done, total unknown.
    pub fn records(records: u64) -> Self {
        Progress {
            records,
            total: None,
            message: None,
        }
    }

    /// Progress as a bare fraction (0.0 to 1.0, clamped), for an executor
    /// that knows how far it is but not in records: kept as per-mille,
    /// `records` out of a `total` of 1,000.
    ///
    /// ```
    /// let p = async_query::Progress::fraction_done(0.4);
    /// assert_eq!((p.records, p.total), (400, Some(1_000)));
    /// ```
    pub fn fraction_done(fraction: f64) -> Self {
        let clamped = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        // In 0..=1000 after the clamp: the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let per_mille = (clamped * 1_000.0).round() as u64;
        Progress::records(per_mille).of(1_000)
    }

    /// Sets the total.
    #[must_use]
    pub fn of(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }

    /// Sets the message, cut to [`MAX_PROGRESS_MESSAGE_LEN`] bytes.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_PROGRESS_MESSAGE_LEN {
            let mut end = MAX_PROGRESS_MESSAGE_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        self.message = Some(message);
        self
    }

    /// `records / total`, capped at 1.0, when the total is known (and not
    /// zero).
    pub fn fraction(&self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)]
        self.total
            .filter(|&total| total > 0)
            .map(|total| (self.records as f64 / total as f64).min(1.0))
    }
}

/// Where an executor's reports wait for the service's writer: the latest
/// report, whether it is written yet, and a wake-up for the writer.
#[derive(Debug, Default)]
pub(crate) struct ProgressCell {
    state: Mutex<ProgressState>,
    reported: Notify,
}

#[derive(Debug, Default)]
struct ProgressState {
    latest: Option<Progress>,
    pending: bool,
}

impl ProgressCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        // Nothing panics while the lock is held.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `progress` as the latest report and wakes the writer.
    pub(crate) fn report(&self, progress: Progress) {
        let mut state = self.lock();
        state.latest = Some(progress);
        state.pending = true;
        drop(state);
        self.reported.notify_one();
    }

    /// The latest report, written or not.
    pub(crate) fn latest(&self) -> Option<Progress> {
        self.lock().latest.clone()
    }

    /// Waits for a report not yet taken, and takes it.
    pub(crate) async fn next(&self) -> Progress {
        loop {
            {
                let mut state = self.lock();
                if state.pending {
                    state.pending = false;
                    if let Some(latest) = &state.latest {
                        return latest.clone();
                    }
                }
            }
            self.reported.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_writer_takes_only_the_latest_of_many_reports() {
        let cell = ProgressCell::default();
        for n in 1..=1_000 {
            cell.report(Progress::records(n));
        }
        assert_eq!(cell.next().await, Progress::records(1_000));
        // Nothing new: the writer waits.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(10), cell.next()).await;
        assert!(waited.is_err(), "{waited:?}");
        cell.report(Progress::records(1_001));
        assert_eq!(cell.next().await.records, 1_001);
        assert_eq!(cell.latest(), Some(Progress::records(1_001)));
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_PROGRESS_MESSAGE_LEN);
        let cut = Progress::records(1).with_message(long);
        let message = cut.message.unwrap_or_default();
        assert_eq!(message.len(), MAX_PROGRESS_MESSAGE_LEN);
        assert!(message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn fractions_are_clamped_and_a_zero_total_has_none() {
        assert_eq!(Progress::fraction_done(1.7).fraction(), Some(1.0));
        assert_eq!(Progress::fraction_done(-3.0).records, 0);
        assert_eq!(Progress::fraction_done(f64::NAN).records, 0);
        assert_eq!(Progress::records(5).of(0).fraction(), None);
        assert_eq!(Progress::records(15).of(10).fraction(), Some(1.0));
    }
}
