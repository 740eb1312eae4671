//! Cancelling a job: a compare-and-set to `CANCELLED`, then stopping it
//! where it runs.

use uuid::Uuid;

use super::Runtime;
use super::ending::{Ending, change};
use crate::dao::{CasOutcome, StatusChange};
use crate::error::Result;
use crate::model::{AsyncQuery, Principal, QueryStatus};
use crate::request::CancelOutcome;

impl Runtime {
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
