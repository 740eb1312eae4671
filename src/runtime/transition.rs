//! The one way status changes happen: a compare-and-set in the DAO, whose
//! applied changes are mirrored into the local job table and the event hub.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Runtime;
use super::table::Mirror;
use crate::dao::{CasOutcome, StatusChange};
use crate::error::Result;
use crate::model::{AsyncQuery, QueryStatus};

impl Runtime {
    /// Compare-and-sets `change` in the DAO; an applied change is mirrored.
    pub(super) async fn transition(
        &self,
        id: Uuid,
        change: StatusChange,
    ) -> Result<CasOutcome<Arc<AsyncQuery>>> {
        let from = change.from;
        Ok(self.applied(from, self.dao.update_status(id, change).await?))
    }

    /// Mirrors a compare-and-set the DAO decided (from `from`).
    pub(super) fn applied(
        &self,
        from: QueryStatus,
        outcome: CasOutcome,
    ) -> CasOutcome<Arc<AsyncQuery>> {
        let outcome = outcome.map(Arc::new);
        if let CasOutcome::Applied(job) = &outcome {
            self.mirror_applied(from, job);
        }
        outcome
    }

    /// Mirrors `job`, changed by the DAO from `from`.
    pub(super) fn mirror_applied(&self, from: QueryStatus, job: &Arc<AsyncQuery>) {
        crate::metrics::changed(job);
        self.mirror(Some(from), Arc::clone(job), Mirror::Follow);
    }

    /// Mirrors a change the DAO applied into the local table and emits its
    /// events; returns the job's token if it is local (with
    /// [`Mirror::Claim`], a job new to the table gets an entry and a token).
    pub(super) fn mirror(
        &self,
        from: Option<QueryStatus>,
        job: Arc<AsyncQuery>,
        how: Mirror,
    ) -> Option<CancellationToken> {
        if let Some(retry_at) = job.retry_at.filter(|_| job.status == QueryStatus::Queued) {
            let wait = (retry_at - self.clock.now()).to_std().unwrap_or_default();
            self.dispatch.retry_due(tokio::time::Instant::now() + wait);
        }
        self.jobs.mirror(
            from,
            job,
            how,
            || self.tasks.job_token(),
            &mut |job, from, to| self.events.emit(job, from, to),
        )
    }

    /// Emits the creation of jobs this instance just stored. Nobody
    /// listening: nothing to do (a change mirrored later still emits the
    /// creation first, for whoever subscribed meanwhile).
    pub(super) fn announce<'a>(&self, jobs: impl IntoIterator<Item = &'a AsyncQuery>) {
        if self.events.listening() {
            self.jobs
                .announce(jobs, &mut |job, from, to| self.events.emit(job, from, to));
        }
    }
}
