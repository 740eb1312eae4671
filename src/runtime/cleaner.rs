//! The cleaner: one table-driven sweep that ends jobs whose owner stopped
//! or overran and cancellations nobody finished, removes partial exports
//! of dead writers, and deletes records past retention with their results;
//! plus start-up recovery of this instance's interrupted jobs.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Runtime;
use super::clock::to_delta;
use super::ending::Ending;
use super::retention::{BATCH, Purge};
use crate::config::Config;
use crate::dao::ListFilter;
use crate::error::Result;
use crate::model::{AsyncQuery, QueryStatus};
use crate::overview::{CLEANER_HISTORY, CleanerSweep};

/// One kind of job the cleaner ends: which records, and how they end.
struct Rule {
    /// The records to look at.
    filter: ListFilter,
    /// How a found job ends.
    ending: fn(&AsyncQuery, &Config) -> Ending,
    /// Whether a found job is still looked after at `now` (then it is left
    /// alone).
    attended: fn(&AsyncQuery, DateTime<Utc>) -> bool,
}

fn never(_: &AsyncQuery, _: DateTime<Utc>) -> bool {
    false
}

/// The cleaner's rules at `now`. A job this instance runs is never one of
/// them: its own worker enforces its limits and cancellation.
fn rules(config: &Config, now: DateTime<Utc>) -> [Rule; 3] {
    use QueryStatus::*;
    let filter = |statuses: Vec<QueryStatus>| ListFilter {
        statuses,
        limit: BATCH,
        ..ListFilter::default()
    };
    [
        // Jobs whose owner stopped renewing its lease.
        Rule {
            filter: ListFilter {
                lease_expired_before: Some(now),
                ..filter(vec![Processing, Cancelled])
            },
            ending: |job, _| Ending::LeaseExpired(job.lease.as_ref().map(|l| l.owner)),
            attended: never,
        },
        // Jobs over the run-time limit that no worker here enforces (stuck
        // owners, or a backlog that waited longer than any job may run).
        Rule {
            filter: ListFilter {
                updated_before: Some(now - to_delta(config.max_run_time + config.lease)),
                ..filter(vec![Queued, Processing])
            },
            ending: |_, config| Ending::Overran(config.max_run_time),
            attended: never,
        },
        // Cancellations nobody finished (the canceller or owner died
        // half-way); an owner whose lease is alive is still at it.
        Rule {
            filter: ListFilter {
                updated_before: Some(now - to_delta(config.cancellation_check_interval)),
                ..filter(vec![Cancelled])
            },
            ending: |_, _| Ending::Unattended,
            attended: |job, now| job.lease.as_ref().is_some_and(|l| l.expires_at >= now),
        },
    ]
}

impl Runtime {
    /// Ends a job nobody is running any more, as the ending policy decides
    /// for `ending` (or queues its next attempt, see
    /// [`next_change`](Self::next_change)), and deletes any export it left
    /// behind. Returns the status it moved to; `None` if somebody else
    /// changed it first.
    pub(super) async fn end_orphan(
        &self,
        job: &AsyncQuery,
        ending: &Ending,
        now: DateTime<Utc>,
    ) -> Result<Option<QueryStatus>> {
        let Some(change) = self.next_change(job, job.status, ending, now, None) else {
            return Ok(None);
        };
        let to = change.to;
        if !self.transition(job.id, change).await?.is_applied() {
            return Ok(None);
        }
        self.discard_export_of(job).await;
        Ok(Some(to))
    }

    /// Ends the jobs a previous run of this instance left running: nothing
    /// runs here yet, so every `PROCESSING`/`CANCELLED` job owned by this
    /// instance id was interrupted.
    pub(super) async fn recover(&self) -> Result<usize> {
        self.clock_ready().await;
        let now = self.clock.now();
        let filter = ListFilter {
            statuses: vec![QueryStatus::Processing, QueryStatus::Cancelled],
            owner: Some(self.config.instance_id),
            ..ListFilter::default()
        };
        let mut recovered = 0;
        for job in self.dao.list(&filter).await? {
            if !self.jobs.runs(job.id)
                && self
                    .end_orphan(&job, &Ending::Interrupted, now)
                    .await?
                    .is_some()
            {
                recovered += 1;
            }
        }
        Ok(recovered)
    }

    /// One pass of the cleaner.
    #[tracing::instrument(name = "clean", skip_all)]
    async fn sweep(&self) -> Result<CleanerSweep> {
        self.clock_ready().await;
        let now = self.clock.now();
        let mut sweep = CleanerSweep {
            at: now,
            ..CleanerSweep::default()
        };
        for rule in rules(&self.config, now) {
            for job in self.dao.list(&rule.filter).await? {
                if self.jobs.runs(job.id) || (rule.attended)(&job, now) {
                    continue;
                }
                let ending = (rule.ending)(&job, &self.config);
                match self.end_orphan(&job, &ending, now).await? {
                    Some(QueryStatus::CancelComplete) => sweep.cancel_completed += 1,
                    Some(QueryStatus::Queued) => sweep.retried += 1,
                    Some(_) => sweep.timed_out += 1,
                    None => continue,
                }
                if matches!(ending, Ending::LeaseExpired(_)) {
                    sweep.leases_expired += 1;
                    crate::metrics::leases_expired(1);
                }
            }
        }

        // Partial exports of writers that died (a killed process): no live
        // writer is older than the longest a job may run.
        let oldest_live = now - to_delta(self.config.max_run_time + self.config.lease);
        match self.storage.remove_stale_partials(oldest_live.into()).await {
            Ok(0) => {}
            Ok(n) => {
                sweep.partials_removed = n;
                crate::metrics::cleaned("partials", n);
                tracing::info!(files = n, "removed partial exports left by stopped writers");
            }
            Err(e) => tracing::warn!(error = %e, "removing stale partial exports failed"),
        }

        if let Some(lifetime) = self.config.result_lifetime {
            sweep.results_expired = self.purge(Purge::Results(now, lifetime)).await? as u64;
            crate::metrics::cleaned("results", sweep.results_expired);
        }
        sweep.records_deleted = self.purge(Purge::Records(now)).await? as u64;
        crate::metrics::cleaned("records", sweep.records_deleted);
        sweep.events_tidied = self.tidy_events().await?;
        Ok(sweep)
    }

    /// Keeps `sweep` among the last sweeps that changed something.
    fn remember_sweep(&self, sweep: CleanerSweep) {
        let mut sweeps = self.sweeps.lock().unwrap_or_else(|p| p.into_inner());
        if sweeps.len() == CLEANER_HISTORY {
            sweeps.pop_front();
        }
        sweeps.push_back(sweep);
    }

    /// Sweeps every `cleaner_interval` (start-up recovery is the
    /// dispatcher's first step).
    pub(super) async fn cleaner(self: Arc<Self>) {
        if !self.config.cleaner_enabled {
            return;
        }
        loop {
            tokio::select! {
                () = self.tasks.stopped() => return,
                () = tokio::time::sleep(self.config.cleaner_interval) => {}
            }
            match self.sweep().await {
                Ok(sweep) if !sweep.is_idle() => {
                    tracing::debug!(?sweep, "cleaner sweep");
                    self.remember_sweep(sweep);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cleaner sweep failed; retrying at the next interval")
                }
            }
        }
    }
}
