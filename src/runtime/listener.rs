//! The listener: reacts to status changes the DAO pushes, if it can
//! (PostgreSQL LISTEN/NOTIFY). Polling stays the fallback, so a lost
//! signal only costs latency.

use std::sync::Arc;

use futures::StreamExt;

use super::Runtime;
use crate::model::QueryStatus;

impl Runtime {
    /// Wakes the dispatcher for new jobs, stops local jobs cancelled
    /// elsewhere, and wakes waiters following jobs that run elsewhere.
    pub(super) async fn listener(self: Arc<Self>) {
        let watched = tokio::select! {
            biased;
            () = self.tasks.stopped() => return,
            watched = self.dao.watch() => watched,
        };
        let mut signals = match watched {
            Ok(Some(signals)) => signals,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for job changes; polling only");
                return;
            }
        };
        loop {
            let signal = tokio::select! {
                () = self.tasks.stopped() => return,
                signal = signals.next() => signal,
            };
            match signal {
                Some(Ok(signal)) => {
                    match signal.status {
                        QueryStatus::Queued => self.dispatch.remote_job_queued(),
                        QueryStatus::Cancelled if self.jobs.runs(signal.id) => {
                            self.jobs.fire(signal.id);
                        }
                        _ => {}
                    }
                    // A job queued here left the queue elsewhere: stop
                    // tracking it, so its waiters follow the DAO (and these
                    // signals) instead of a local state that will not change.
                    // If this instance claimed it, the claim re-adopts it.
                    if signal.status != QueryStatus::Queued && self.jobs.is_queued(signal.id) {
                        self.jobs.forget(signal.id);
                    }
                    self.waiters.remote_change();
                }
                Some(Err(e)) => tracing::debug!(error = %e, "a job change signal was lost"),
                None => {
                    tracing::warn!("the job change stream ended; polling only");
                    return;
                }
            }
        }
    }
}
