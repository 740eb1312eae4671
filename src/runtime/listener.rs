//! The listener: reacts to status changes the DAO pushes, if it can
//! (PostgreSQL LISTEN/NOTIFY). Polling stays the fallback, so a lost
//! signal only costs latency; a stream that ends (a database outage) is
//! opened again with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::Runtime;
use super::tasks::Backoff;
use crate::dao::SignalStream;
use crate::model::QueryStatus;

/// The first wait before listening again; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why [`Runtime::follow`] returned.
enum Followed {
    /// The service is stopping.
    Stopped,
    /// The stream ended: the connection behind it is gone.
    Ended,
}

impl Runtime {
    /// Listens for job changes for as long as the service runs: opens the
    /// DAO's signal stream, follows it, and opens it again after it ends,
    /// waiting 0.1 s, then twice as long after each failure, up to 5 s.
    pub(super) async fn listener(self: Arc<Self>) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        // Whether signals may have been missed: the stream ended, or an
        // attempt to open it failed.
        let mut missed = false;
        let mut failures = 0u32;
        loop {
            let watched = tokio::select! {
                biased;
                () = self.tasks.stopped() => return,
                watched = self.dao.watch() => watched,
            };
            match watched {
                // This store cannot push changes: polling only.
                Ok(None) => return,
                Ok(Some(signals)) => {
                    if missed {
                        tracing::info!(failures, "listening for job changes again");
                        // Signals sent while the stream was down are lost:
                        // look again at what they would have woken.
                        self.dispatch.remote_job_queued();
                        self.waiters.remote_change();
                    }
                    // Cancellations missed meanwhile: read the local jobs'
                    // statuses, while already following the stream so that
                    // nothing falls between the two.
                    let (this, was_missed) = (&self, missed);
                    let catch_up = async move {
                        if was_missed {
                            this.catch_up().await;
                        }
                    };
                    failures = 0;
                    backoff.reset();
                    let (followed, ()) = tokio::join!(self.follow(signals), catch_up);
                    match followed {
                        Followed::Stopped => return,
                        Followed::Ended => {
                            missed = true;
                            tracing::warn!("the job change stream ended; listening again");
                        }
                    }
                }
                Err(e) => {
                    missed = true;
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot listen for job changes; polling until it can");
                    } else {
                        tracing::debug!(error = %e, failures, "cannot listen for job changes yet");
                    }
                }
            }
            if !self.tasks.pause(&mut backoff, None).await {
                return;
            }
        }
    }

    /// Reads the local jobs' statuses (a heartbeat's beat) until it
    /// succeeds or the service stops, with the listener's backoff.
    async fn catch_up(&self) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        while !self.beat().await {
            if !self.tasks.pause(&mut backoff, None).await {
                return;
            }
        }
    }

    /// Wakes the dispatcher for new jobs, stops local jobs cancelled
    /// elsewhere, and wakes waiters following jobs that run elsewhere, until
    /// the stream ends or the service stops.
    async fn follow(&self, mut signals: SignalStream) -> Followed {
        loop {
            let signal = tokio::select! {
                () = self.tasks.stopped() => return Followed::Stopped,
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
                    if signal.status != QueryStatus::Queued {
                        self.jobs.forget_queued(signal.id);
                    }
                    self.waiters.remote_change();
                    self.events.remote_change();
                }
                Some(Err(e)) => tracing::debug!(error = %e, "a job change signal was lost"),
                None => return Followed::Ended,
            }
        }
    }
}
