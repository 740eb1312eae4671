//! Persistence of job records: the [`AsyncApiDao`] trait and its contract.
//!
//! Built in: [`MemoryDao`]; `SqliteDao` (feature `sqlite`) and `PostgresDao`
//! (feature `postgres`). A host can implement the trait for its own
//! database; every implementation must keep the contract below.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::event::EventPage;
pub use crate::event::EventStream;
use crate::model::{AsyncQuery, QueryStatus};
use crate::progress::Progress;

#[cfg(all(test, any(feature = "sqlite", feature = "postgres")))]
mod claims_test;
mod history;
mod memory;
#[cfg(feature = "postgres")]
mod pg_events;
#[cfg(all(test, feature = "postgres"))]
pub(crate) mod pg_test;
#[cfg(feature = "postgres")]
mod postgres;
mod rules;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod types;

pub use history::{HistoryFilter, HistoryOrder, HistoryPosition, KindFilter};
pub use memory::{MEMORY_DAO_MAX_RECORDS, MEMORY_DAO_MAX_RESULT_BYTES, MemoryDao};
#[cfg(feature = "postgres")]
pub use postgres::{EVENTS_PER_PRINCIPAL, PostgresDao};
use rules::no_keys;
pub(crate) use rules::{apply_change, check_transition, first_repeated, first_repeated_job};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDao;
pub use types::{
    CasOutcome, Claim, ExpiredRecord, JobSignal, ListFilter, Purged, Reaper, SignalStream,
    StatusChange,
};

#[doc = include_str!("contract.md")]
#[async_trait]
pub trait AsyncApiDao: Send + Sync + 'static {
    /// Stores a new record.
    ///
    /// A record with an [`idempotency_key`](AsyncQuery::idempotency_key)
    /// is refused while another record of the same principal has that key:
    /// the store enforces it (a unique index), so two instances racing
    /// cannot both store one.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateId`](crate::error::Error::DuplicateId) if the id exists;
    /// [`Error::IdempotencyKeyTaken`](crate::error::Error::IdempotencyKeyTaken)
    /// if the principal's key is taken;
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn create(&self, job: &AsyncQuery) -> Result<()>;

    /// The record of `principal` (a principal name) that has idempotency
    /// key `key`, if any. The default says the store has no keys, which
    /// makes keyed submits fail with that message instead of running twice.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::error::Error::Config) from the default;
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn find_by_idempotency_key(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<AsyncQuery>> {
        let _ = (principal, key);
        Err(no_keys())
    }

    /// The newest `COMPLETE` record that `like` may be answered with: the
    /// same principal, kind (with its format), query type and query text,
    /// created at or after `created_from`, with its output kept (an inline
    /// body or a stored export). See [`Reuse`](crate::Reuse).
    ///
    /// The default pages through the principal's
    /// [`history`](Self::history) of `COMPLETE` records from
    /// `created_from` on, newest first (index-backed where `history` is),
    /// comparing in memory.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn find_reusable(
        &self,
        like: &AsyncQuery,
        created_from: DateTime<Utc>,
    ) -> Result<Option<AsyncQuery>> {
        history::reusable(self, like, created_from).await
    }

    /// Takes idempotency key `key` off record `id` if the record still has
    /// it (its window has passed; a new job takes the key). Returns whether
    /// it did. Other records, and the record's status, are untouched.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::error::Error::Config) from the default;
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn release_idempotency_key(&self, id: Uuid, key: &str) -> Result<bool> {
        let _ = (id, key);
        Err(no_keys())
    }

    /// Stores several new records, all or nothing, in this order (claims
    /// take them first to last). Back-ends should make this one round trip
    /// per few hundred records; the default calls
    /// [`create`](Self::create) for each and deletes what it created if one
    /// fails.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateId`](crate::error::Error::DuplicateId) if an id exists or
    /// appears twice (nothing is stored); [`Error::Dao`](crate::error::Error::Dao)
    /// if the back-end fails.
    async fn create_many(&self, jobs: &[AsyncQuery]) -> Result<()> {
        if let Some(id) = first_repeated_job(jobs) {
            return Err(crate::error::Error::DuplicateId { id });
        }
        for (i, job) in jobs.iter().enumerate() {
            if let Err(e) = self.create(job).await {
                let created: Vec<Uuid> = jobs[..i].iter().map(|j| j.id).collect();
                if let Err(undo) = self.delete(&created).await {
                    tracing::warn!(error = %undo, "could not remove a partly created batch");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reads a record; `None` if there is none with this id.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn get(&self, id: Uuid) -> Result<Option<AsyncQuery>>;

    /// Compare-and-set status change; see the trait docs.
    ///
    /// # Errors
    ///
    /// `NotFound`, `InvalidTransition`, or `Dao` as described above.
    async fn update_status(&self, id: Uuid, change: StatusChange) -> Result<CasOutcome>;

    /// Several independent compare-and-set changes, each with the outcome
    /// [`update_status`](Self::update_status) would give, in order. The
    /// service uses it to write finished jobs' records in batches
    /// ([`Config::claim_batch`](crate::Config::claim_batch) above 1). SQL
    /// back-ends run them in one transaction (one commit); the default
    /// calls `update_status` for each.
    ///
    /// # Errors
    ///
    /// As `update_status`, for the first change that fails; changes before
    /// it may or may not have been applied (re-read the records).
    async fn update_status_many(
        &self,
        changes: &[(Uuid, StatusChange)],
    ) -> Result<Vec<CasOutcome>> {
        let mut outcomes = Vec::with_capacity(changes.len());
        for (id, change) in changes {
            outcomes.push(self.update_status(*id, change.clone()).await?);
        }
        Ok(outcomes)
    }

    /// Writes `changes` as [`update_status_many`](Self::update_status_many)
    /// does and claims up to `claim.limit` queued jobs for
    /// `claim.lease.owner` as [`claim`](Self::claim) does, never one of the jobs
    /// `changes` names. The service writes the records of jobs that just
    /// finished this way and claims the next jobs for the slots they freed,
    /// so that one commit serves both. PostgreSQL does it in one statement;
    /// the default calls the two methods in turn.
    ///
    /// # Errors
    ///
    /// As `update_status_many`; when an error is returned, changes and
    /// claims may or may not have been applied (re-read the records).
    async fn update_and_claim(
        &self,
        changes: &[(Uuid, StatusChange)],
        claim: &Claim,
    ) -> Result<(Vec<CasOutcome>, Vec<AsyncQuery>)> {
        let outcomes = self.update_status_many(changes).await?;
        let claimed = if claim.limit == 0 {
            Vec::new()
        } else {
            self.claim(claim).await?
        };
        Ok((outcomes, claimed))
    }

    /// Claims up to `claim.limit` queued jobs for `claim.lease.owner`,
    /// fairly across principals and within each principal's running limit
    /// (see the contract above): a principal with a thousand jobs queued
    /// does not hold back another principal's one.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn claim(&self, claim: &Claim) -> Result<Vec<AsyncQuery>>;

    /// How many of `principal`'s jobs (a principal name) are `Queued`,
    /// counting at most `up_to` (an answer of `up_to` means "at least
    /// that many"). The service asks it on every submit when
    /// [`Config::max_queued_per_principal`](crate::Config::max_queued_per_principal)
    /// is set. The default reads the principal's queued history, up to
    /// `up_to` records; the built-in stores count from an index.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn count_queued(&self, principal: &str, up_to: usize) -> Result<usize> {
        let filter = HistoryFilter {
            statuses: vec![QueryStatus::Queued],
            ..HistoryFilter::newest(up_to.max(1)).of_principal(principal)
        };
        Ok(self.history(&filter).await?.len().min(up_to))
    }

    /// Extends `owner`'s leases on `ids` to `expires_at`; returns
    /// `(id, current status)` for every id that exists.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn renew_leases(
        &self,
        owner: Uuid,
        ids: &[Uuid],
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, QueryStatus)>>;

    /// Stores how far a running job has got, only while it is `Processing`
    /// under a lease `owner` holds: a report that arrives after the job
    /// ended or moved to another instance is dropped. Changes neither the
    /// status nor `updated_on`. A store that [keeps events](Self::keeps_events)
    /// also records a progress event at `at` (`from` and `to` both
    /// `Processing`). Returns whether it stored the report.
    ///
    /// The default stores nothing and returns `Ok(false)`: jobs then show
    /// no progress. The service writes at most one report per job per
    /// [`Config::progress_interval`](crate::Config::progress_interval).
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails (the
    /// service logs it and carries on with the job).
    async fn update_progress(
        &self,
        id: Uuid,
        owner: Uuid,
        progress: &Progress,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let _ = (id, owner, progress, at);
        Ok(false)
    }

    /// Records matching `filter`, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<AsyncQuery>>;

    /// A page of job history: the records `filter` matches, in its order,
    /// after its position, at most its limit.
    ///
    /// The default reads every record with [`list`](Self::list) and
    /// selects in memory ([`HistoryFilter::select`]). A back-end that keeps
    /// many records should answer from an index on `(principal, created_on,
    /// id)` and one on `(created_on, id)`, as the built-in SQL back-ends do.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn history(&self, filter: &HistoryFilter) -> Result<Vec<AsyncQuery>> {
        let all = self.list(&ListFilter::default()).await?;
        Ok(filter.select(&all).into_iter().cloned().collect())
    }

    /// Deletes the records with these ids; returns how many existed.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn delete(&self, ids: &[Uuid]) -> Result<u64>;

    /// Retention: finds up to `limit` terminal records last updated before
    /// `before`, oldest first, and hands them to `reap` as ids and stored
    /// result names (no bodies). `reap` deletes their results and returns
    /// the ids whose records may go (a result that could not be deleted
    /// keeps its record); those records are deleted.
    ///
    /// Concurrent calls on a store that several instances share should
    /// hand each caller different records, so that instances share the
    /// work instead of repeating it: `PostgresDao` locks the rows it
    /// hands out (`FOR UPDATE SKIP LOCKED`) until it has deleted them. The
    /// default finds them with [`list`](Self::list) and deletes them with
    /// [`delete`](Self::delete).
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn delete_expired(
        &self,
        before: DateTime<Utc>,
        limit: usize,
        reap: Reaper<'_>,
    ) -> Result<Purged> {
        let expired: Vec<ExpiredRecord> = self
            .list(&ListFilter::expired(before, limit))
            .await?
            .into_iter()
            .map(|job| ExpiredRecord::of(&job))
            .collect();
        let found = expired.len();
        let ids = reap(expired).await;
        let deleted = self.delete(&ids).await?;
        Ok(Purged { found, deleted })
    }

    /// Result lifetime ([`Config::result_lifetime`](crate::Config::result_lifetime)):
    /// finds up to `limit` `COMPLETE` records last updated before `before`
    /// whose result is still there (an inline body or a stored export),
    /// oldest first, and hands them to `reap` as
    /// [`delete_expired`](Self::delete_expired) does. For the ids `reap`
    /// returns (their stored results are gone), the record's result body
    /// becomes [`ResultBody::Expired`](crate::ResultBody::Expired) and its
    /// message `message`; status, times, record count and length stay.
    /// `Purged::deleted` counts those records. Like `delete_expired`,
    /// concurrent callers on a shared store should get different records,
    /// and a back-end should find them through an index, not by reading
    /// every kept record.
    ///
    /// The default fails: a back-end must implement this for
    /// `result_lifetime` to work (the conformance area
    /// `dao_expire_results` checks it).
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails;
    /// [`Error::Config`](crate::error::Error::Config) from the default.
    async fn expire_results(
        &self,
        before: DateTime<Utc>,
        limit: usize,
        message: &str,
        reap: Reaper<'_>,
    ) -> Result<Purged> {
        let _ = (before, limit, message, reap);
        Err(crate::error::Error::Config {
            reason: "this job store cannot expire results (it does not implement \
                     AsyncApiDao::expire_results); unset Config::result_lifetime"
                .into(),
        })
    }

    /// The back-end's own clock, for a store that several machines share
    /// (PostgreSQL's `clock_timestamp()`); `Ok(None)` (the default) for a
    /// store without one, or one only this machine uses (memory, SQLite).
    ///
    /// When it is `Some`, every service instance sets its clock by it
    /// before its first write and again every third of
    /// [`Config::lease`](crate::Config::lease), correcting for the round
    /// trip, so leases, run-time limits and retention are judged on one
    /// clock even when the instances' system clocks are minutes apart.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails; the
    /// service then keeps its current setting.
    async fn now(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(None)
    }

    /// Status changes made by any instance, pushed as they commit, if the
    /// back-end can (PostgreSQL LISTEN/NOTIFY): at least new jobs
    /// (`QUEUED`), cancellations and endings; claims (`PROCESSING`) need not
    /// be pushed. `Ok(None)` (the default) if it cannot, and the service
    /// then polls every
    /// [`Config::poll_interval`](crate::Config::poll_interval). Signals only
    /// make instances react sooner (an idle worker claims a new job, a remote
    /// cancel stops a running job, a remote waiter re-reads); they may be
    /// lost, the records stay the truth, and polling remains the fallback.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if listening cannot start.
    async fn watch(&self) -> Result<Option<SignalStream>> {
        Ok(None)
    }

    /// Whether the store records every status change itself, for all the
    /// instances that share it (`PostgresDao`: a trigger writes them in the
    /// statement that changes the status). Then
    /// [`events`](Self::events) serves
    /// [`AsyncQueryService::events_after`](crate::AsyncQueryService::events_after),
    /// and [`subscribe`](crate::AsyncQueryService::subscribe) delivers the
    /// changes it reads there, made by any instance. `false` (the default):
    /// each service keeps its own changes in memory.
    fn keeps_events(&self) -> bool {
        false
    }

    /// Up to `limit` events of `stream` after position `after` (`None`:
    /// from the oldest kept), oldest first, for a store that
    /// [`keeps_events`](Self::keeps_events).
    ///
    /// Each stream numbers its events 1, 2, 3, … in one order that never
    /// changes once an event is readable, and never hands out a position
    /// below one already read (an event that commits late is numbered
    /// after those already read, not between them). A store keeps a bounded
    /// number of events per principal; `missed` is set when events after
    /// `after` were dropped, or `after` is beyond the newest position. A
    /// page should read a bounded number of rows, whatever the size of
    /// the log. The conformance area `dao_events` checks all of this.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails;
    /// [`Error::Config`](crate::error::Error::Config) from the default.
    async fn events(
        &self,
        stream: EventStream<'_>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<EventPage> {
        let _ = (stream, after, limit);
        Err(crate::error::Error::Config {
            reason: "this job store keeps no events".into(),
        })
    }

    /// Upkeep of the kept events, called on every cleaner sweep of a store
    /// that [`keeps_events`](Self::keeps_events): numbering and trimming,
    /// whatever the store defers from the write path. Returns how many
    /// events it handled (the cleaner calls it again while that is more
    /// than zero and the sweep has time left). The default does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn tidy_events(&self) -> Result<u64> {
        Ok(0)
    }
}
