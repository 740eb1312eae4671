//! Rules every back-end shares: the transition check, applying a change
//! to a record held as a struct, and finding repeated ids in a batch.

use uuid::Uuid;

use super::StatusChange;
use crate::error::Result;
use crate::model::{AsyncQuery, QueryStatus};

/// Checks a change against the transition table; shared by back-ends.
pub(crate) fn check_transition(change: &StatusChange) -> Result<()> {
    if change.from.can_transition_to(change.to) {
        Ok(())
    } else {
        Err(crate::error::Error::InvalidTransition {
            from: change.from,
            to: change.to,
        })
    }
}

/// Applies an already-checked change to a record in memory; shared by
/// back-ends that hold records as structs.
pub(crate) fn apply_change(job: &mut AsyncQuery, change: StatusChange) {
    job.retry_at = change.retry_at_after();
    if change.clears_lease() {
        job.lease = None;
    }
    job.status = change.to;
    job.updated_on = change.at;
    if let Some(result) = change.result {
        job.result = Some(result);
    }
    if change.to == QueryStatus::Processing {
        job.lease = change.lease;
    } else if change.to == QueryStatus::Queued {
        // A retry: the next attempt.
        job.attempt = job.attempt.saturating_add(1);
    }
}

/// The first id that appears twice in `ids`.
pub(crate) fn first_repeated(ids: impl ExactSizeIterator<Item = Uuid>) -> Option<Uuid> {
    // The common case, one record, needs no set.
    if ids.len() < 2 {
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.into_iter().find(|id| !seen.insert(*id))
}

/// The first id that appears twice in `jobs`.
pub(crate) fn first_repeated_job(jobs: &[AsyncQuery]) -> Option<Uuid> {
    first_repeated(jobs.iter().map(|j| j.id))
}

/// What a store without idempotency keys answers.
pub(super) fn no_keys() -> crate::error::Error {
    crate::error::Error::Config {
        reason: "this job store does not support idempotency keys (implement \
                 AsyncApiDao::find_by_idempotency_key and release_idempotency_key)"
            .into(),
    }
}
