//! Waiting for jobs: following a local job's record as it changes, and
//! reading the DAO for jobs that run elsewhere, woken by pushed changes or
//! polling.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::Runtime;
use crate::error::{Error, Result};
use crate::history::{HistoryPage, HistoryQuery};
use crate::model::{AsyncQuery, Principal, QueryStatus};

/// Wakes waiters that follow jobs through the DAO.
#[derive(Default)]
pub(super) struct Waiters {
    /// Signalled whenever the DAO pushes a status change (any instance's).
    remote: Notify,
}

impl Waiters {
    /// A job changed somewhere: every waiter re-reads.
    pub(super) fn remote_change(&self) {
        self.remote.notify_waiters();
    }
}

/// Follows a local job's snapshots until it is terminal or `deadline`
/// passes, and returns the latest one; `None` if this instance stopped
/// tracking the job first (it runs elsewhere: read the DAO instead).
pub(super) async fn follow_local(
    rx: &mut watch::Receiver<Arc<AsyncQuery>>,
    deadline: Instant,
) -> Option<AsyncQuery> {
    let closed = tokio::time::timeout_at(deadline, rx.wait_for(|j| j.status.is_terminal()))
        .await
        .is_ok_and(|waited| waited.is_err());
    if closed {
        return None;
    }
    let latest = Arc::clone(&rx.borrow());
    Some(AsyncQuery::clone(&latest))
}

impl Runtime {
    pub(crate) async fn get(&self, principal: &Principal, id: Uuid) -> Result<AsyncQuery> {
        self.dao
            .get(id)
            .await?
            .filter(|job| job.is_visible_to(principal, &self.config.admin_role))
            .ok_or(Error::NotFound { id })
    }

    pub(crate) async fn history(
        &self,
        principal: &Principal,
        query: &HistoryQuery,
    ) -> Result<HistoryPage> {
        let filter = query.filter(principal, &self.config.admin_role)?;
        let jobs = self.dao.history(&filter).await?;
        Ok(HistoryPage::from_records(jobs, &filter))
    }

    pub(crate) async fn wait(
        &self,
        principal: &Principal,
        id: Uuid,
        timeout: Duration,
    ) -> Result<AsyncQuery> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(mut rx) = self.jobs.subscribe(id) {
                if !rx
                    .borrow()
                    .is_visible_to(principal, &self.config.admin_role)
                {
                    return Err(Error::NotFound { id });
                }
                // A job only queued here may have been claimed by another
                // instance, which only a store that pushes changes says at
                // once: look at the store every poll interval meanwhile.
                let until = if self.jobs.is_queued(id) {
                    deadline.min(Instant::now() + self.config.poll_interval)
                } else {
                    deadline
                };
                match follow_local(&mut rx, until).await {
                    Some(latest) if latest.status.is_terminal() || until >= deadline => {
                        return Ok(latest);
                    }
                    // Still queued here at the poll interval: read the DAO.
                    Some(_) => {}
                    // The job left this instance's table without a terminal
                    // status: read the DAO instead.
                    None => {}
                }
            }
            // Registered before reading, so a change pushed in between is
            // not missed.
            let changed = self.waiters.remote.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let job = self.get(principal, id).await?;
            let ours = job
                .lease
                .as_ref()
                .is_some_and(|lease| lease.owner == self.config.instance_id);
            if job.status != QueryStatus::Queued && !ours {
                // It left the queue elsewhere (as the listener learns from
                // a signal): its waiters follow the DAO from now on.
                self.jobs.forget_queued(id);
            } else if job.status == QueryStatus::Queued && self.jobs.is_queued(id) {
                // Still queued here: following it locally is the next poll.
                continue;
            }
            let now = Instant::now();
            if job.status.is_terminal() || now >= deadline {
                return Ok(job);
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline.min(now + self.config.poll_interval)) => {}
                () = changed => {}
            }
        }
    }

    /// Waits (up to the cancel grace) for a job this instance runs to
    /// stop; a job running elsewhere is returned as it is.
    pub(super) async fn await_stop(&self, job: AsyncQuery) -> AsyncQuery {
        let Some(mut rx) = self.jobs.subscribe_if_ours(job.id) else {
            return job;
        };
        follow_local(&mut rx, Instant::now() + self.config.cancel_grace)
            .await
            .unwrap_or(job)
    }
}
