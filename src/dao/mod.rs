//! Persistence of job records: the [`AsyncApiDao`] trait and its contract.
//!
//! Built in: [`MemoryDao`]; `SqliteDao` (feature `sqlite`) and `PostgresDao`
//! (feature `postgres`). A host can implement the trait for its own
//! database; every implementation must keep the contract below.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::model::{AsyncQuery, Lease, QueryResult, QueryStatus};

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryDao;
#[cfg(feature = "postgres")]
pub use postgres::PostgresDao;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDao;

/// A compare-and-set status change: applied only if the stored status is
/// still `from`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StatusChange {
    /// The status the caller believes the job has.
    pub from: QueryStatus,
    /// The status to move to; must be allowed by
    /// [`QueryStatus::can_transition_to`].
    pub to: QueryStatus,
    /// When the change happens; becomes `updated_on`.
    pub at: DateTime<Utc>,
    /// The result to store with the change (normally with a terminal `to`).
    pub result: Option<QueryResult>,
    /// The lease to set when `to` is `Processing`.
    pub lease: Option<Lease>,
}

impl StatusChange {
    /// A change from `from` to `to` at `at`, with no result and no lease.
    pub fn new(from: QueryStatus, to: QueryStatus, at: DateTime<Utc>) -> Self {
        StatusChange {
            from,
            to,
            at,
            result: None,
            lease: None,
        }
    }

    /// Stores `result` with the change.
    pub fn with_result(mut self, result: QueryResult) -> Self {
        self.result = Some(result);
        self
    }

    /// Sets the lease the job holds after the change.
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// The answer to a compare-and-set, carrying the record as `R` (the DAO
/// answers with an [`AsyncQuery`]; the service shares it as an
/// `Arc<AsyncQuery>`, see [`map`](Self::map)).
#[derive(Debug, Clone, PartialEq)]
pub enum CasOutcome<R = AsyncQuery> {
    /// The change was applied; this is the record after it.
    Applied(R),
    /// The stored status was no longer `from`: somebody else decided first.
    /// This is the record as it is now. Not an error.
    Conflict(R),
}

impl<R> CasOutcome<R> {
    /// Whether the change was applied.
    pub fn is_applied(&self) -> bool {
        matches!(self, CasOutcome::Applied(_))
    }

    /// The record, applied or not.
    pub fn record(&self) -> &R {
        match self {
            CasOutcome::Applied(record) | CasOutcome::Conflict(record) => record,
        }
    }

    /// The same outcome with the record transformed.
    ///
    /// ```
    /// use async_query::dao::CasOutcome;
    /// let outcome: CasOutcome<u32> = CasOutcome::Conflict(7);
    /// assert_eq!(outcome.map(|n| n * 2), CasOutcome::Conflict(14));
    /// ```
    pub fn map<S>(self, f: impl FnOnce(R) -> S) -> CasOutcome<S> {
        match self {
            CasOutcome::Applied(record) => CasOutcome::Applied(f(record)),
            CasOutcome::Conflict(record) => CasOutcome::Conflict(f(record)),
        }
    }
}

/// A status change pushed by a back-end that can (PostgreSQL's
/// LISTEN/NOTIFY), from any instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobSignal {
    /// The job.
    pub id: Uuid,
    /// Its status after the change.
    pub status: QueryStatus,
}

impl JobSignal {
    /// A signal that `id` now has `status`.
    pub fn new(id: Uuid, status: QueryStatus) -> Self {
        JobSignal { id, status }
    }
}

/// A stream of [`JobSignal`]s, from [`AsyncApiDao::watch`].
pub type SignalStream = futures::stream::BoxStream<'static, Result<JobSignal>>;

/// A record past retention, as [`AsyncApiDao::delete_expired`] hands it
/// out: its id and the name of its stored result, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpiredRecord {
    /// The job.
    pub id: Uuid,
    /// Its stored export's name ([`ResultBody::Stored`](crate::model::ResultBody::Stored)).
    pub stored: Option<String>,
}

impl ExpiredRecord {
    /// The expired record `id`, whose stored result is `stored`.
    pub fn new(id: Uuid, stored: Option<String>) -> Self {
        ExpiredRecord { id, stored }
    }

    /// What [`AsyncApiDao::delete_expired`] hands out for `job`.
    pub fn of(job: &AsyncQuery) -> Self {
        let stored = match job.result.as_ref().map(|r| &r.body) {
            Some(crate::model::ResultBody::Stored(name)) => Some(name.clone()),
            _ => None,
        };
        ExpiredRecord { id: job.id, stored }
    }
}

/// Deletes the results of expired records and returns the ids whose
/// records may be deleted; see [`AsyncApiDao::delete_expired`].
pub type Reaper<'a> = &'a mut (
            dyn FnMut(Vec<ExpiredRecord>) -> futures::future::BoxFuture<'static, Vec<Uuid>> + Send
        );

/// What one [`AsyncApiDao::delete_expired`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Purged {
    /// Expired records handed to the reaper.
    pub found: usize,
    /// Records deleted.
    pub deleted: u64,
}

impl Purged {
    /// `found` records handed out, `deleted` deleted.
    pub fn new(found: usize, deleted: u64) -> Self {
        Purged { found, deleted }
    }
}

/// Which records [`AsyncApiDao::list`] returns. Every condition that is set
/// must hold.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ListFilter {
    /// Status is one of these (empty: any status).
    pub statuses: Vec<QueryStatus>,
    /// `updated_on` is strictly before this.
    pub updated_before: Option<DateTime<Utc>>,
    /// The job has a lease that expires strictly before this.
    pub lease_expired_before: Option<DateTime<Utc>>,
    /// The lease is held by this instance.
    pub owner: Option<Uuid>,
    /// At most this many records, oldest `created_on` first. `0` means no limit.
    pub limit: usize,
}

impl ListFilter {
    /// Terminal records last updated before `before`, at most `limit`.
    pub(crate) fn expired(before: DateTime<Utc>, limit: usize) -> Self {
        ListFilter {
            statuses: QueryStatus::ALL
                .into_iter()
                .filter(|s| s.is_terminal())
                .collect(),
            updated_before: Some(before),
            limit,
            ..ListFilter::default()
        }
    }
}

impl ListFilter {
    /// Records in any of `statuses`.
    pub fn statuses(statuses: impl IntoIterator<Item = QueryStatus>) -> Self {
        ListFilter {
            statuses: statuses.into_iter().collect(),
            ..ListFilter::default()
        }
    }

    /// Whether `job` matches every condition (not the limit). Back-ends that
    /// filter in memory use this; SQL back-ends translate it.
    pub fn matches(&self, job: &AsyncQuery) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&job.status))
            && self.updated_before.is_none_or(|t| job.updated_on < t)
            && self
                .lease_expired_before
                .is_none_or(|t| job.lease.as_ref().is_some_and(|l| l.expires_at < t))
            && self
                .owner
                .is_none_or(|o| job.lease.as_ref().is_some_and(|l| l.owner == o))
    }
}

/// Persistence of job records.
///
/// # Contract
///
/// - `create` stores a new record as given, and fails with
///   [`Error::DuplicateId`](crate::error::Error::DuplicateId) if the id exists.
/// - `update_status` is an atomic compare-and-set: it applies the change only
///   if the stored status equals `change.from`, returning
///   [`CasOutcome::Conflict`] with the current record otherwise. It fails with
///   [`Error::InvalidTransition`](crate::error::Error::InvalidTransition) if
///   `from -> to` is not in [`TRANSITIONS`](crate::model::TRANSITIONS) and
///   with [`Error::NotFound`](crate::error::Error::NotFound) for an unknown id.
///   When applied: `status = to`, `updated_on = at`, `result` is replaced if
///   given; moving to `Processing` sets `lease`, moving to a terminal status
///   clears it, other moves keep it.
/// - `claim` atomically moves up to `limit` of the oldest `Queued` jobs (by
///   creation order) to `Processing` with the given lease; two concurrent
///   claimers never get the same job.
/// - `renew_leases` extends the lease of those `ids` whose lease `owner`
///   holds and that are `Processing` or `Cancelled`, and reports the current
///   status of every id that exists, so the owner learns of cancellations
///   made elsewhere.
/// - All times come from the caller (the service's clock), never from the
///   back-end's own clock, so tests can run on a paused clock.
///
/// The conformance suite (feature `test-util`, `async_query::testing`)
/// checks all of this.
#[async_trait]
pub trait AsyncApiDao: Send + Sync + 'static {
    /// Stores a new record.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateId`](crate::error::Error::DuplicateId) if the id exists;
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn create(&self, job: &AsyncQuery) -> Result<()>;

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
    /// does and claims up to `limit` of the oldest queued jobs for
    /// `lease.owner` as [`claim`](Self::claim) does, never one of the jobs
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
        lease: &Lease,
        limit: usize,
        at: DateTime<Utc>,
    ) -> Result<(Vec<CasOutcome>, Vec<AsyncQuery>)> {
        let outcomes = self.update_status_many(changes).await?;
        let claimed = if limit == 0 {
            Vec::new()
        } else {
            self.claim(lease, limit, at).await?
        };
        Ok((outcomes, claimed))
    }

    /// Claims up to `limit` of the oldest queued jobs for `lease.owner`.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn claim(
        &self,
        lease: &Lease,
        limit: usize,
        at: DateTime<Utc>,
    ) -> Result<Vec<AsyncQuery>>;

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

    /// Records matching `filter`, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`](crate::error::Error::Dao) if the back-end fails.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<AsyncQuery>>;

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
}

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
    job.status = change.to;
    job.updated_on = change.at;
    if let Some(result) = change.result {
        job.result = Some(result);
    }
    if change.to == QueryStatus::Processing {
        job.lease = change.lease;
    } else if change.to.is_terminal() {
        job.lease = None;
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
