//! Cancelling a job: a compare-and-set to `CANCELLED`, then stopping it
//! where it runs.

use std::sync::Arc;

use uuid::Uuid;

use super::Runtime;
use super::ending::{Ending, change};
use crate::dao::{CasOutcome, StatusChange};
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, Principal, QueryStatus};
use crate::request::{CancelOutcome, SubmitRequest, WaitTimeout};

impl Runtime {
    /// `submit`, then, for [`WaitTimeout::Cancel`], a cancel of a job still
    /// running when the wait ends. Runs in a task of its own, so that the
    /// cancel happens even if the caller stops waiting first.
    pub(crate) async fn submit_or_cancel(
        self: &Arc<Self>,
        principal: &Principal,
        request: SubmitRequest,
    ) -> Result<AsyncQuery> {
        if request.on_wait_timeout == WaitTimeout::Continue {
            return self.submit(principal, request).await;
        }
        if self.config.async_after(request.async_after).is_zero() {
            return Err(Error::invalid(
                "on_wait_timeout CANCEL needs an async-after above zero: with none the job \
                 would be cancelled at once",
            ));
        }
        let runtime = Arc::clone(self);
        let principal = principal.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tasks.spawn(async move {
            let answer = match runtime.submit(&principal, request).await {
                Ok(job) if !job.status.is_terminal() => runtime
                    .cancel(&principal, job.id)
                    .await
                    .map(CancelOutcome::into_record),
                answer => answer,
            };
            let _ = tx.send(answer);
        });
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    #[tracing::instrument(name = "cancel", skip_all, fields(job = %id, principal = %principal.name))]
    pub(crate) async fn cancel(&self, principal: &Principal, id: Uuid) -> Result<CancelOutcome> {
        self.clock_ready().await;
        let mut job = self.get(principal, id).await?;
        loop {
            let now = self.clock.now();
            let from = match job.status {
                status if status.is_terminal() => return Ok(CancelOutcome::AlreadyFinished(job)),
                QueryStatus::Cancelled => {
                    self.jobs.fire(id);
                    return Ok(CancelOutcome::Cancelled(self.await_stop(job).await));
                }
                status => status,
            };
            match self
                .transition(id, StatusChange::new(from, QueryStatus::Cancelled, now))
                .await?
            {
                CasOutcome::Conflict(current) => job = AsyncQuery::clone(&current),
                CasOutcome::Applied(cancelled) if from == QueryStatus::Queued => {
                    // Nobody runs a job that never left the queue: finish the
                    // cancellation here.
                    let done = change(
                        QueryStatus::Cancelled,
                        &Ending::CancelledWhileQueued,
                        now,
                        None,
                    );
                    let record = match done {
                        Some(done) => match self.transition(id, done).await? {
                            CasOutcome::Applied(record) => record,
                            CasOutcome::Conflict(_) => cancelled,
                        },
                        None => cancelled,
                    };
                    return Ok(CancelOutcome::Cancelled(AsyncQuery::clone(&record)));
                }
                CasOutcome::Applied(cancelled) => {
                    self.jobs.fire(id);
                    let cancelled = AsyncQuery::clone(&cancelled);
                    return Ok(CancelOutcome::Cancelled(self.await_stop(cancelled).await));
                }
            }
        }
    }
}
