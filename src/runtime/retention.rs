//! Retention and result lifetime: the cleaner deletes the results of old
//! records, then the records (retention) or only mark their results
//! expired (result lifetime), batch after batch within a time budget.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use uuid::Uuid;

use super::Runtime;
use super::clock::to_delta;
use crate::dao::ExpiredRecord;
use crate::error::Result;
use crate::storage::ResultStorageEngine;

/// Records the cleaner handles per query, so one sweep's memory is bounded.
pub(super) const BATCH: usize = 500;

/// Results deleted at the same time.
const RESULT_DELETES_IN_FLIGHT: usize = 16;

/// What the cleaner purges, at `now`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purge {
    /// Terminal records past `Config::retention`, with their results.
    Records(DateTime<Utc>),
    /// The results of `COMPLETE` records older than the lifetime; the
    /// records stay.
    Results(DateTime<Utc>, Duration),
}

/// The message an expired result leaves on its record.
pub(super) fn expired_message(lifetime: Duration) -> String {
    format!(
        "result expired: results are kept for {} after the job completes, and this one was deleted; the record stays until retention",
        humantime_serde::re::humantime::format_duration(lifetime)
    )
}

impl Runtime {
    /// The store's upkeep of kept events, call after call while it finds
    /// work and half a cleaner interval has not passed.
    pub(super) async fn tidy_events(&self) -> Result<u64> {
        if !self.dao.keeps_events() {
            return Ok(0);
        }
        let budget = tokio::time::Instant::now() + self.config.cleaner_interval / 2;
        let mut tidied = 0;
        loop {
            let done = self.dao.tidy_events().await?;
            tidied += done;
            if done == 0 || tokio::time::Instant::now() >= budget {
                return Ok(tidied);
            }
        }
    }

    /// Deletes the results of what `purge` names and then the records
    /// (retention) or marks their results expired (result lifetime), a
    /// batch at a time until none are left or half a cleaner interval has
    /// passed. Results go first, so no record ever points at a result that
    /// was deleted while the record stays; a result that cannot be deleted
    /// keeps its record as it was for a later sweep. Returns how many
    /// records were deleted or had their results expired.
    pub(super) async fn purge(&self, purge: Purge) -> Result<usize> {
        let budget = tokio::time::Instant::now() + self.config.cleaner_interval / 2;
        let storage = Arc::clone(&self.storage);
        let mut reap = move |records: Vec<ExpiredRecord>| {
            delete_results(Arc::clone(&storage), records).boxed()
        };
        let mut done = 0usize;
        loop {
            let purged = match purge {
                Purge::Records(now) => {
                    let before = now - to_delta(self.config.retention);
                    self.dao.delete_expired(before, BATCH, &mut reap).await?
                }
                Purge::Results(now, lifetime) => {
                    let before = now - to_delta(lifetime);
                    let message = expired_message(lifetime);
                    self.dao
                        .expire_results(before, BATCH, &message, &mut reap)
                        .await?
                }
            };
            done = done.saturating_add(usize::try_from(purged.deleted).unwrap_or(usize::MAX));
            // Fewer than a batch: none left. Nothing done: only records
            // whose results cannot be deleted now are left.
            if purged.found < BATCH || purged.deleted == 0 || tokio::time::Instant::now() >= budget
            {
                return Ok(done);
            }
        }
    }
}

/// Deletes the stored results of `records`, a few at a time; returns the ids
/// whose results are gone (or who had none stored).
async fn delete_results(
    storage: Arc<dyn ResultStorageEngine>,
    records: Vec<ExpiredRecord>,
) -> Vec<Uuid> {
    futures::stream::iter(records)
        .map(|record| {
            let storage = Arc::clone(&storage);
            async move {
                let Some(name) = &record.stored else {
                    return Some(record.id);
                };
                match storage.delete(name).await {
                    Ok(_) => Some(record.id),
                    Err(e) => {
                        tracing::warn!(job = %record.id, error = %e, "deleting a result failed; its record stays as it is until a later sweep");
                        None
                    }
                }
            }
        })
        .buffer_unordered(RESULT_DELETES_IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await
}
