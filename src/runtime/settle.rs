//! Settling: writing how a job ended. "Settle" means this and nothing
//! else. The writer makes the first attempt for a batch of jobs; each job
//! then goes through this one path: its outcome mirrored, conflicts
//! followed by the ending policy, and a result deleted only once the
//! record's real state shows that no record points at it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Runtime;
use super::ending::{Ending, change as ending_change, retry};
use super::execution::Outcome;
use super::local::JobGuard;
use super::table::Mirror;
use super::tasks::Backoff;
use crate::dao::{CasOutcome, StatusChange};
use crate::model::{AsyncQuery, QueryStatus, ResultBody};

/// A finished run whose ending is being written.
pub(super) struct Settlement {
    job: Arc<AsyncQuery>,
    ending: Ending,
    /// The export the run published: deleted unless the record ends up
    /// pointing at it.
    stored: Option<String>,
    /// Releases the job's local entry if the settlement is dropped
    /// unwritten (the service stopped).
    guard: JobGuard,
}

impl Settlement {
    pub(super) fn id(&self) -> uuid::Uuid {
        self.job.id
    }

    /// Whether an applied change leaves nothing more to do for this run:
    /// it published no export and dropped no work (either may leave an
    /// object behind that only [`settle`](Runtime::settle) deals with).
    pub(super) fn done_when_applied(&self) -> bool {
        self.stored.is_none() && !self.ending.dropped_work()
    }
}

impl Runtime {
    /// The settlement of a run and the first change that records it;
    /// `None` if the run cannot end so (its guard then lets the job go).
    pub(super) fn settlement(
        &self,
        job: Arc<AsyncQuery>,
        outcome: Outcome,
        guard: JobGuard,
    ) -> Option<(Settlement, StatusChange)> {
        let Outcome { ending, result } = outcome;
        let stored = match result.as_ref().map(|r| &r.body) {
            Some(ResultBody::Stored(name)) => Some(name.clone()),
            _ => None,
        };
        let status = ending.assumed_status();
        let change = self.next_change(&job, status, &ending, self.clock.now(), result)?;
        let settlement = Settlement {
            job,
            ending,
            stored,
            guard,
        };
        Some((settlement, change))
    }

    /// [`settle`](Self::settle) of a run whose change (from `from`) was
    /// applied as `record`, when the settlement is
    /// [`done_when_applied`](Settlement::done_when_applied): the common
    /// ending, without the state of the follow-ups.
    pub(super) fn settle_applied(
        &self,
        settlement: Settlement,
        from: QueryStatus,
        record: AsyncQuery,
    ) -> Arc<AsyncQuery> {
        let record = Arc::new(record);
        self.mirror_applied(from, &record);
        settlement.guard.release();
        record
    }

    /// Writes `change` (or takes `first`, the outcome of the attempt the
    /// writer made in a batch) and follows up until the record's state is
    /// known:
    ///
    /// - a conflict with a status that one of these writes was going to set
    ///   means that write was applied after all (its reply was lost): it is
    ///   mirrored as ours;
    /// - another non-terminal conflict (a cancel) is followed by the ending
    ///   policy; a terminal one means somebody else ended the job;
    /// - a failed write is followed by a `FAILURE` write ("the result could
    ///   not be saved"), which also tells whether the first was applied; if
    ///   that fails too, it is retried with backoff until the store answers,
    ///   for at most one lease: after that the job's lease cannot be alive
    ///   and it is not this worker's to settle. The job is then let go, and
    ///   whoever ends it (the cleaner) deletes its export. If this run
    ///   published an export, the worker still reads the record until the
    ///   store answers: a terminal record (one of the writes landed with its
    ///   reply lost) that does not point at the export means nobody else
    ///   would delete it.
    ///
    /// The published export is deleted only when the record is known not
    /// to point at it. Returns the job's record as the store last showed it
    /// (`None` if the store never answered).
    pub(super) async fn settle(
        &self,
        settlement: Settlement,
        mut change: StatusChange,
        mut first: Option<CasOutcome>,
    ) -> Option<Arc<AsyncQuery>> {
        let Settlement {
            job,
            mut ending,
            stored,
            guard,
        } = settlement;
        let dropped_work = ending.dropped_work();
        let now = change.at;
        let first_try = (change.from, change.to);
        let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
        // Retries stop when the job's lease can no longer be alive: then it
        // is not this worker's to settle any more.
        let mut give_up_at = None;
        let record = loop {
            let (from, to) = (change.from, change.to);
            let attempt = match first.take() {
                Some(outcome) => Ok(self.applied(from, outcome)),
                None => self.transition(job.id, change).await,
            };
            match attempt {
                Ok(CasOutcome::Applied(record)) => break Some(record),
                Ok(CasOutcome::Conflict(record)) => {
                    let ours = [first_try, (from, to)]
                        .into_iter()
                        .find(|&(_, to)| to == record.status);
                    if let Some((from, _)) = ours {
                        crate::metrics::changed(&record);
                        self.mirror(Some(from), Arc::clone(&record), Mirror::Follow);
                    } else if let Some(next) = ending_change(record.status, &ending, now, None) {
                        change = next;
                        continue;
                    } else {
                        // Somebody else ended it (or moved it somewhere this
                        // ending does not apply, such as back to the queue
                        // for a retry after this run's lease lapsed): it is
                        // not ours any more.
                        self.jobs.forget(job.id);
                    }
                    break Some(record);
                }
                Err(e) => {
                    if matches!(ending, Ending::NotSaved(_)) {
                        // Nothing is known to have landed: keep trying the
                        // last write, which also tells whether an earlier
                        // one did, while the service runs.
                        tracing::warn!(job = %job.id, error = %e, retry_in = ?backoff.next(), "saving the job's outcome failed again; retrying");
                        let give_up =
                            *give_up_at.get_or_insert_with(|| Instant::now() + self.config.lease);
                        if !self.tasks.pause(&mut backoff, Some(give_up)).await {
                            tracing::error!(job = %job.id, "saving the job's outcome failed for a whole lease; it is left to the cleaner");
                            // An export this run published must not be
                            // forgotten: if one of the writes landed with its
                            // reply lost, the record is terminal, does not
                            // point at it, and nobody else knows it exists.
                            break match &stored {
                                Some(_) => self.ended_elsewhere(&job, &mut backoff).await,
                                None => None,
                            };
                        }
                    } else {
                        tracing::warn!(job = %job.id, error = %e, "saving the job's outcome failed; marking it FAILURE");
                        ending = Ending::NotSaved(e.to_string());
                    }
                    match ending_change(from, &ending, now, None) {
                        Some(next) => change = next,
                        None => break None,
                    }
                }
            }
        };
        match &record {
            Some(record) => match stored {
                Some(name) if !points_at(record, &name) => self.discard_output(&name).await,
                Some(_) => {}
                None if dropped_work => self.discard_export_of(&job).await,
                None => {}
            },
            // The store did not answer (for a lease, or before the service
            // stopped): whether a record points at the export is unknown,
            // so it is kept, and deleted with the job by whoever ends it.
            None => self.jobs.forget(job.id),
        }
        guard.release();
        record
    }
}

impl Runtime {
    /// How `job`, last seen in `status`, ends its attempt `ending`'s way
    /// at `now`: a retry while [`Config::retry`](crate::Config::retry)
    /// leaves it attempts (see [`retry`]), otherwise the ending policy's
    /// change, with `result` for `COMPLETE`.
    pub(super) fn next_change(
        &self,
        job: &AsyncQuery,
        status: QueryStatus,
        ending: &Ending,
        now: chrono::DateTime<chrono::Utc>,
        result: Option<crate::model::QueryResult>,
    ) -> Option<StatusChange> {
        retry(job, status, ending, &self.config.retry, now)
            .or_else(|| ending_change(status, ending, now, result))
    }

    /// Reads the record of a job this worker stopped settling until the
    /// store answers (or the service stops): the record if it is terminal,
    /// `None` if it is still the cleaner's to end (or unknown).
    async fn ended_elsewhere(
        &self,
        job: &AsyncQuery,
        backoff: &mut Backoff,
    ) -> Option<Arc<AsyncQuery>> {
        loop {
            match self.dao.get(job.id).await {
                Ok(Some(record)) if record.status.is_terminal() => {
                    let record = Arc::new(record);
                    self.mirror(
                        Some(QueryStatus::Processing),
                        Arc::clone(&record),
                        Mirror::Follow,
                    );
                    return Some(record);
                }
                Ok(_) => return None,
                Err(e) => {
                    tracing::debug!(job = %job.id, error = %e, "reading the job's record failed");
                    if !self.tasks.pause(backoff, None).await {
                        return None;
                    }
                }
            }
        }
    }
}

/// The first pause before a failed write is tried again; it doubles up
/// to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Ending {
    /// Whether the executor's work was dropped half-way (an export may
    /// have been published as it was dropped, unknown to the worker).
    fn dropped_work(&self) -> bool {
        matches!(self, Ending::Cancelled | Ending::RunTimeLimit(_))
    }
}

/// Whether `record`'s result is the stored object `name`.
fn points_at(record: &AsyncQuery, name: &str) -> bool {
    matches!(record.result.as_ref().map(|r| &r.body), Some(ResultBody::Stored(n)) if n == name)
}
