//! The cleaner: time-outs of jobs whose owner stopped or overran, stale
//! cancellations, retention, and recovery of this instance's jobs after a
//! restart.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Inner, to_delta};
use crate::dao::{ListFilter, StatusChange};
use crate::error::Result;
use crate::model::{AsyncQuery, QueryResult, QueryStatus, ResultBody};

/// Records the cleaner handles per query, so one sweep's memory is bounded.
const BATCH: usize = 500;

/// What one sweep did (for tests and logs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sweep {
    pub(crate) timed_out: usize,
    pub(crate) cancel_completed: usize,
    pub(crate) deleted: usize,
}

const TERMINAL: [QueryStatus; 4] = [
    QueryStatus::Complete,
    QueryStatus::Failure,
    QueryStatus::TimedOut,
    QueryStatus::CancelComplete,
];

impl Inner {
    /// Whether this instance is running the job right now (its own worker
    /// enforces limits and cancellation; the cleaner leaves it alone).
    pub(super) fn runs_here(&self, id: Uuid) -> bool {
        self.lock_local()
            .jobs
            .get(&id)
            .is_some_and(|job| !job.queued)
    }

    /// Ends a job that nobody is running any more: `PROCESSING`/`QUEUED` →
    /// `TIMEDOUT`, `CANCELLED` → `CANCEL_COMPLETE`. Returns whether this call
    /// changed it (a lost compare-and-set means someone else settled it).
    pub(super) async fn end_orphan(
        &self,
        job: &AsyncQuery,
        now: DateTime<Utc>,
        why: &str,
    ) -> Result<bool> {
        let (to, message) = match job.status {
            QueryStatus::Cancelled => (QueryStatus::CancelComplete, format!("cancelled; {why}")),
            _ => (QueryStatus::TimedOut, why.to_owned()),
        };
        let change =
            StatusChange::new(job.status, to, now).with_result(QueryResult::message(now, message));
        Ok(matches!(
            self.transition(job.id, change).await?,
            super::Cas::Applied(_)
        ))
    }

    /// Ends the jobs a previous run of this instance left running: nothing
    /// runs here yet, so every `PROCESSING`/`CANCELLED` job owned by this
    /// instance id was interrupted.
    pub(crate) async fn recover(&self) -> Result<usize> {
        let now = self.clock.now();
        let filter = ListFilter {
            statuses: vec![QueryStatus::Processing, QueryStatus::Cancelled],
            owner: Some(self.config.instance_id),
            ..ListFilter::default()
        };
        let mut recovered = 0;
        for job in self.dao.list(&filter).await? {
            if !self.runs_here(job.id)
                && self
                    .end_orphan(
                        &job,
                        now,
                        "interrupted: its instance restarted before it finished",
                    )
                    .await?
            {
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// One pass of the cleaner.
    pub(crate) async fn sweep(&self) -> Result<Sweep> {
        let now = self.clock.now();
        let mut sweep = Sweep::default();

        // Jobs whose owner stopped renewing its lease.
        let expired = ListFilter {
            statuses: vec![QueryStatus::Processing, QueryStatus::Cancelled],
            lease_expired_before: Some(now),
            limit: BATCH,
            ..ListFilter::default()
        };
        for job in self.dao.list(&expired).await? {
            if self.runs_here(job.id) {
                continue;
            }
            let owner = job
                .lease
                .as_ref()
                .map(|l| l.owner.to_string())
                .unwrap_or_default();
            let why = format!(
                "its lease expired: instance {owner} stopped renewing it (the instance stopped or lost the database)"
            );
            if self.end_orphan(&job, now, &why).await? {
                count(&mut sweep, job.status);
            }
        }

        // Jobs over the run-time limit that no worker here enforces (stuck
        // owners, or a backlog that waited longer than any job may run).
        let overran = ListFilter {
            statuses: vec![QueryStatus::Queued, QueryStatus::Processing],
            updated_before: Some(now - to_delta(self.config.max_run_time + self.config.lease)),
            limit: BATCH,
            ..ListFilter::default()
        };
        for job in self.dao.list(&overran).await? {
            if self.runs_here(job.id) {
                continue;
            }
            let why = format!(
                "exceeded the maximum run time of {:?} (stopped by the cleaner)",
                self.config.max_run_time
            );
            if self.end_orphan(&job, now, &why).await? {
                count(&mut sweep, job.status);
            }
        }

        // Cancellations nobody finished (the canceller or owner died half-way).
        let stale = ListFilter {
            statuses: vec![QueryStatus::Cancelled],
            updated_before: Some(now - to_delta(self.config.cancellation_check_interval)),
            limit: BATCH,
            ..ListFilter::default()
        };
        for job in self.dao.list(&stale).await? {
            let owner_alive = job.lease.as_ref().is_some_and(|l| l.expires_at >= now);
            if !self.runs_here(job.id)
                && !owner_alive
                && self
                    .end_orphan(&job, now, "nobody was running it any more")
                    .await?
            {
                sweep.cancel_completed += 1;
            }
        }

        // Partial exports of writers that died (a killed process): no live
        // writer is older than the longest a job may run.
        let oldest_live = now - to_delta(self.config.max_run_time + self.config.lease);
        match self.storage.remove_stale_partials(oldest_live.into()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "removed partial exports left by stopped writers"),
            Err(e) => tracing::warn!(error = %e, "removing stale partial exports failed"),
        }

        // Retention: results first, then their records, so no record ever
        // points at a result that was deleted while the record stays.
        let old = ListFilter {
            statuses: TERMINAL.to_vec(),
            updated_before: Some(now - to_delta(self.config.retention)),
            limit: BATCH,
            ..ListFilter::default()
        };
        let mut ids = Vec::new();
        for job in self.dao.list(&old).await? {
            if let Some(ResultBody::Stored(name)) = job.result.as_ref().map(|r| &r.body)
                && let Err(e) = self.storage.delete(name).await
            {
                // Keep the record; the next sweep retries.
                tracing::warn!(job = %job.id, error = %e, "deleting an expired result failed");
                continue;
            }
            ids.push(job.id);
        }
        if !ids.is_empty() {
            sweep.deleted = usize::try_from(self.dao.delete(&ids).await?).unwrap_or(usize::MAX);
        }
        Ok(sweep)
    }

    /// Sweeps every `cleaner_interval` (start-up recovery is the
    /// dispatcher's first step).
    pub(crate) async fn cleaner(self: std::sync::Arc<Self>) {
        if !self.config.cleaner_enabled {
            return;
        }
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.cleaner_interval) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "cleaner sweep failed; retrying at the next interval");
            }
        }
    }
}

fn count(sweep: &mut Sweep, was: QueryStatus) {
    if was == QueryStatus::Cancelled {
        sweep.cancel_completed += 1;
    } else {
        sweep.timed_out += 1;
    }
}
