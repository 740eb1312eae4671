//! The in-memory [`AsyncApiDao`]: fast, for one process and for tests.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use self::limits::inline_len;
use self::queue::FairQueue;
use super::{
    AsyncApiDao, CasOutcome, Claim, ExpiredRecord, ListFilter, Purged, Reaper, StatusChange,
    apply_change, check_transition,
};
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, IdMap, QueryStatus, ResultBody};
use crate::progress::Progress;

/// Job records in a `HashMap` behind a mutex, with each principal's queued
/// jobs in order and its running count, so a fair claim costs
/// `O(principals with queued jobs + log n)`.
///
/// Records live as long as the `MemoryDao` (share it with `Arc` to keep them
/// across service restarts in tests), until retention deletes them. It
/// holds at most [`MEMORY_DAO_MAX_RECORDS`] (change it with
/// [`with_max_records`](Self::with_max_records)): a submit past that fails
/// with [`Error::Dao`], so a service on the default back-ends cannot run
/// out of memory through its records. The inline bodies of
/// [`JobKind::Query`](crate::JobKind::Query) results are capped the same
/// way, at [`MEMORY_DAO_MAX_RESULT_BYTES`] in all (change it with
/// [`with_max_result_bytes`](Self::with_max_result_bytes)): a result that
/// does not fit is refused, and its job ends `FAILURE` ("the result could
/// not be saved") instead of growing the store.
#[derive(Debug)]
pub struct MemoryDao {
    state: Mutex<State>,
    max_records: usize,
    max_result_bytes: usize,
}

/// The records a [`MemoryDao`] holds at most unless told otherwise.
pub const MEMORY_DAO_MAX_RECORDS: usize = 250_000;

/// The bytes of inline result bodies a [`MemoryDao`] holds at most, over
/// all its records, unless told otherwise: 256 MiB.
pub const MEMORY_DAO_MAX_RESULT_BYTES: usize = 256 << 20;

impl Default for MemoryDao {
    fn default() -> Self {
        MemoryDao {
            state: Mutex::default(),
            max_records: MEMORY_DAO_MAX_RECORDS,
            max_result_bytes: MEMORY_DAO_MAX_RESULT_BYTES,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    jobs: IdMap<Entry>,
    /// Queued jobs by creation sequence.
    queue: FairQueue,
    next_seq: u64,
    /// The bytes of the inline result bodies in `jobs`.
    result_bytes: usize,
    /// Idempotency keys, by principal name and key.
    keys: HashMap<(String, String), Uuid>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    job: AsyncQuery,
}

impl MemoryDao {
    /// An empty store holding at most [`MEMORY_DAO_MAX_RECORDS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds at most `records` records.
    #[must_use]
    pub fn with_max_records(mut self, records: usize) -> Self {
        self.max_records = records;
        self
    }

    /// Holds at most `bytes` bytes of inline result bodies, over all records.
    #[must_use]
    pub fn with_max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = bytes;
        self
    }

    /// The bytes of inline result bodies held now.
    pub fn result_bytes(&self) -> usize {
        self.lock().result_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave a half-applied change
        // (every change is computed before it is written), so poisoning is
        // safe to ignore.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The entries whose job `selects` accepts, oldest first, at most
    /// `limit` (0: all).
    fn matching(
        &self,
        selects: impl Fn(&AsyncQuery) -> bool,
        limit: usize,
    ) -> impl Iterator<Item = &Entry> {
        let mut found: Vec<&Entry> = self
            .jobs
            .values()
            .filter(|entry| selects(&entry.job))
            .collect();
        found.sort_by_key(|entry| entry.seq);
        if limit > 0 {
            found.truncate(limit);
        }
        found.into_iter()
    }

    fn insert(&mut self, jobs: &[AsyncQuery]) -> Result<()> {
        if let Some(id) = super::first_repeated_job(jobs) {
            return Err(Error::DuplicateId { id });
        }
        if let Some(job) = jobs.iter().find(|j| self.jobs.contains_key(&j.id)) {
            return Err(Error::DuplicateId { id: job.id });
        }
        let mut new_keys = std::collections::HashSet::new();
        for (name, key) in jobs.iter().filter_map(key_of) {
            if self.keys.contains_key(&(name.to_owned(), key.to_owned()))
                || !new_keys.insert((name, key))
            {
                return Err(Error::IdempotencyKeyTaken {
                    key: key.to_owned(),
                });
            }
        }
        self.jobs.reserve(jobs.len());
        for job in jobs {
            let seq = self.next_seq;
            self.next_seq += 1;
            let name = &job.principal.name;
            self.queue
                .moved(name, (seq, job.id), None, Some(job.status));
            if let Some(until) = job.retry_at.filter(|_| job.status == QueryStatus::Queued) {
                self.queue.hold(job.id, until);
            }
            self.result_bytes += inline_len(job.result.as_ref());
            if let Some((name, key)) = key_of(job) {
                self.keys.insert((name.to_owned(), key.to_owned()), job.id);
            }
            self.jobs.insert(
                job.id,
                Entry {
                    seq,
                    job: job.clone(),
                },
            );
        }
        Ok(())
    }

    fn cas(&mut self, id: Uuid, change: StatusChange) -> Result<CasOutcome> {
        check_transition(&change)?;
        let entry = self.jobs.get_mut(&id).ok_or(Error::NotFound { id })?;
        if entry.job.status != change.from {
            return Ok(CasOutcome::Conflict(entry.job.clone()));
        }
        let (from, to) = (Some(change.from), Some(change.to));
        let name = &entry.job.principal.name;
        self.queue.moved(name, (entry.seq, id), from, to);
        if change.result.is_some() {
            self.result_bytes -= inline_len(entry.job.result.as_ref());
            self.result_bytes += inline_len(change.result.as_ref());
        }
        apply_change(&mut entry.job, change);
        if let Some(until) = entry.job.retry_at {
            self.queue.hold(id, until);
        }
        Ok(CasOutcome::Applied(entry.job.clone()))
    }

    fn cas_many(&mut self, changes: &[(Uuid, StatusChange)]) -> Result<Vec<CasOutcome>> {
        changes
            .iter()
            .map(|(id, change)| self.cas(*id, change.clone()))
            .collect()
    }

    /// Claims up to `claim.limit` queued jobs, fairly and within each
    /// principal's running limit (see [`FairQueue::next`]), leaving
    /// `exclude` queued.
    fn claim(&mut self, claim: &Claim, exclude: &[(Uuid, StatusChange)]) -> Vec<AsyncQuery> {
        let mut claimed = Vec::with_capacity(claim.limit.min(self.queue.len()));
        let named = |id: Uuid| exclude.iter().any(|(named, _)| *named == id);
        while claimed.len() < claim.limit {
            let Some((principal, seq, id)) =
                self.queue
                    .next(named, |running| claim.admits(running), claim.at)
            else {
                break;
            };
            let (from, to) = (Some(QueryStatus::Queued), Some(QueryStatus::Processing));
            let Some(entry) = self.jobs.get_mut(&id) else {
                // Not reached (queue and records change under one lock);
                // dropped from the queue all the same, so no claim loops.
                let principal = principal.to_owned();
                self.queue.moved(&principal, (seq, id), from, None);
                continue;
            };
            self.queue
                .moved(&entry.job.principal.name, (seq, id), from, to);
            let change = StatusChange::new(QueryStatus::Queued, QueryStatus::Processing, claim.at)
                .with_lease(claim.lease.clone());
            apply_change(&mut entry.job, change);
            claimed.push(entry.job.clone());
        }
        claimed
    }
}

#[async_trait]
impl AsyncApiDao for MemoryDao {
    async fn create(&self, job: &AsyncQuery) -> Result<()> {
        let mut state = self.lock();
        self.fits(&state, 1)?;
        self.fits_results(&state, inline_len(job.result.as_ref()))?;
        state.insert(std::slice::from_ref(job))
    }

    async fn create_many(&self, jobs: &[AsyncQuery]) -> Result<()> {
        let mut state = self.lock();
        self.fits(&state, jobs.len())?;
        let added = jobs.iter().map(|j| inline_len(j.result.as_ref())).sum();
        self.fits_results(&state, added)?;
        state.insert(jobs)
    }

    async fn get(&self, id: Uuid) -> Result<Option<AsyncQuery>> {
        Ok(self.lock().jobs.get(&id).map(|entry| entry.job.clone()))
    }

    async fn find_by_idempotency_key(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<AsyncQuery>> {
        let state = self.lock();
        let id = state.keys.get(&(principal.to_owned(), key.to_owned()));
        Ok(id.and_then(|id| state.jobs.get(id)).map(|e| e.job.clone()))
    }

    async fn release_idempotency_key(&self, id: Uuid, key: &str) -> Result<bool> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.jobs.get_mut(&id) else {
            return Ok(false);
        };
        if entry.job.idempotency_key.as_deref() != Some(key) {
            return Ok(false);
        }
        entry.job.idempotency_key = None;
        state
            .keys
            .remove(&(entry.job.principal.name.to_string(), key.to_owned()));
        Ok(true)
    }

    async fn update_status(&self, id: Uuid, change: StatusChange) -> Result<CasOutcome> {
        let mut state = self.lock();
        self.fits_results(&state, inline_len(change.result.as_ref()))?;
        state.cas(id, change)
    }

    async fn update_status_many(
        &self,
        changes: &[(Uuid, StatusChange)],
    ) -> Result<Vec<CasOutcome>> {
        let mut state = self.lock();
        self.fits_changes(&state, changes)?;
        state.cas_many(changes)
    }

    async fn update_and_claim(
        &self,
        changes: &[(Uuid, StatusChange)],
        claim: &Claim,
    ) -> Result<(Vec<CasOutcome>, Vec<AsyncQuery>)> {
        let mut state = self.lock();
        self.fits_changes(&state, changes)?;
        let outcomes = state.cas_many(changes)?;
        let claimed = state.claim(claim, changes);
        Ok((outcomes, claimed))
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<AsyncQuery>> {
        Ok(self.lock().claim(claim, &[]))
    }

    async fn renew_leases(
        &self,
        owner: Uuid,
        ids: &[Uuid],
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, QueryStatus)>> {
        let mut state = self.lock();
        let mut statuses = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(entry) = state.jobs.get_mut(id) else {
                continue;
            };
            let job = &mut entry.job;
            if matches!(job.status, QueryStatus::Processing | QueryStatus::Cancelled)
                && let Some(lease) = job.lease.as_mut().filter(|l| l.owner == owner)
            {
                lease.expires_at = expires_at;
            }
            statuses.push((*id, job.status));
        }
        Ok(statuses)
    }

    async fn update_progress(
        &self,
        id: Uuid,
        owner: Uuid,
        p: &Progress,
        _: DateTime<Utc>,
    ) -> Result<bool> {
        let mut state = self.lock();
        let running = |j: &&mut AsyncQuery| {
            j.status == QueryStatus::Processing
                && j.lease.as_ref().is_some_and(|l| l.owner == owner)
        };
        let job = state
            .jobs
            .get_mut(&id)
            .map(|entry| &mut entry.job)
            .filter(running);
        Ok(job.map(|job| job.progress = Some(p.clone())).is_some())
    }

    async fn count_queued(&self, principal: &str, up_to: usize) -> Result<usize> {
        Ok(self.lock().queue.queued_of(principal).min(up_to))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<AsyncQuery>> {
        let state = self.lock();
        Ok(state
            .matching(|job| filter.matches(job), filter.limit)
            .map(|entry| entry.job.clone())
            .collect())
    }

    /// As the default, copying only the page (in linear time; no index).
    async fn history(&self, filter: &super::HistoryFilter) -> Result<Vec<AsyncQuery>> {
        let state = self.lock();
        let page = filter.select(state.jobs.values().map(|entry| &entry.job));
        Ok(page.into_iter().cloned().collect())
    }

    /// As the default, without copying the records (and their bodies).
    async fn delete_expired(
        &self,
        before: DateTime<Utc>,
        limit: usize,
        reap: Reaper<'_>,
    ) -> Result<Purged> {
        let filter = ListFilter::expired(before, limit);
        let expired: Vec<ExpiredRecord> = self
            .lock()
            .matching(|job| filter.matches(job), filter.limit)
            .map(|entry| ExpiredRecord::of(&entry.job))
            .collect();
        let found = expired.len();
        let ids = reap(expired).await;
        Ok(Purged::new(found, self.delete(&ids).await?))
    }

    async fn expire_results(
        &self,
        before: DateTime<Utc>,
        limit: usize,
        message: &str,
        reap: Reaper<'_>,
    ) -> Result<Purged> {
        let outlived: Vec<ExpiredRecord> = self
            .lock()
            .matching(|job| result_outlived(job, before), limit)
            .map(|entry| ExpiredRecord::of(&entry.job))
            .collect();
        let found = outlived.len();
        let ids = reap(outlived).await;
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut expired = 0;
        for id in ids {
            let result = state
                .jobs
                .get_mut(&id)
                .and_then(|entry| entry.job.result.as_mut());
            if let Some(result) = result {
                state.result_bytes -= inline_len(Some(result));
                result.body = ResultBody::Expired;
                result.message = Some(message.to_owned());
                expired += 1;
            }
        }
        Ok(Purged::new(found, expired))
    }

    async fn delete(&self, ids: &[Uuid]) -> Result<u64> {
        let mut state = self.lock();
        let mut deleted = 0;
        for id in ids {
            if let Some(entry) = state.jobs.remove(id) {
                let (name, status) = (&entry.job.principal.name, entry.job.status);
                state
                    .queue
                    .moved(name, (entry.seq, *id), Some(status), None);
                state.result_bytes -= inline_len(entry.job.result.as_ref());
                if let Some((name, key)) = key_of(&entry.job) {
                    state.keys.remove(&(name.to_owned(), key.to_owned()));
                }
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// A record's principal name and idempotency key, if it has one.
fn key_of(job: &AsyncQuery) -> Option<(&str, &str)> {
    let key = job.idempotency_key.as_deref()?;
    Some((&*job.principal.name, key))
}

/// Whether `job` is `COMPLETE` with output, last updated before `before`:
/// what [`AsyncApiDao::expire_results`](crate::AsyncApiDao::expire_results)
/// looks for.
fn result_outlived(job: &AsyncQuery, before: DateTime<Utc>) -> bool {
    job.status == QueryStatus::Complete
        && job.updated_on < before
        && job.result.as_ref().is_some_and(|r| r.body.has_output())
}

mod limits;
mod queue;
#[cfg(test)]
mod tests;
