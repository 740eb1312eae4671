//! The values [`AsyncApiDao`](super::AsyncApiDao) methods take and return.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::model::{AsyncQuery, Lease, QueryResult, QueryStatus};

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
    /// With `to` `Queued` (a retry, see [`retry`](Self::retry)): the
    /// earliest time the next attempt may be claimed; `None`: at once.
    pub retry_at: Option<DateTime<Utc>>,
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
            retry_at: None,
        }
    }

    /// A retry at `at`: the running job goes back to the queue
    /// (`PROCESSING → QUEUED`) for its next attempt, to be claimed no
    /// earlier than `retry_at`. Applying it raises the record's
    /// [`attempt`](AsyncQuery::attempt) by one, clears its lease and sets
    /// its `retry_at`; every other change clears `retry_at`.
    ///
    /// ```
    /// use async_query::dao::StatusChange;
    /// use async_query::QueryStatus;
    ///
    /// let now = chrono::Utc::now();
    /// let retry = StatusChange::retry(now, now + chrono::TimeDelta::seconds(2));
    /// assert_eq!((retry.from, retry.to), (QueryStatus::Processing, QueryStatus::Queued));
    /// ```
    pub fn retry(at: DateTime<Utc>, retry_at: DateTime<Utc>) -> Self {
        StatusChange {
            retry_at: Some(retry_at),
            ..StatusChange::new(QueryStatus::Processing, QueryStatus::Queued, at)
        }
    }

    /// Whether the record has no lease after this change: it ended, or
    /// went back to the queue (a retry).
    pub(crate) fn clears_lease(&self) -> bool {
        self.to.is_terminal() || self.to == QueryStatus::Queued
    }

    /// The `retry_at` a record has after this change: the retry's time
    /// for a change to `Queued`, `None` after any other.
    pub(crate) fn retry_at_after(&self) -> Option<DateTime<Utc>> {
        self.retry_at.filter(|_| self.to == QueryStatus::Queued)
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

/// What a [`claim`](super::AsyncApiDao::claim) asks for: up to `limit`
/// queued jobs for `lease.owner`, moved to `Processing` at `at` under
/// `lease`, taking no job whose principal would then have more than
/// `max_running_per_principal` jobs `Processing`.
///
/// ```
/// use async_query::dao::Claim;
/// use async_query::model::Lease;
///
/// let now = chrono::Utc::now();
/// let lease = Lease { owner: uuid::Uuid::new_v4(), expires_at: now };
/// let claim = Claim::new(lease, 8, now).with_max_running_per_principal(2);
/// assert_eq!((claim.limit, claim.max_running_per_principal), (8, Some(2)));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Claim {
    /// The lease the claimed jobs get; `lease.owner` is the claimer.
    pub lease: Lease,
    /// The most jobs to claim; `0` claims none.
    pub limit: usize,
    /// When the claim happens; becomes the claimed jobs' `updated_on`.
    pub at: DateTime<Utc>,
    /// The most `Processing` jobs a principal may have, counting those
    /// running already anywhere and those this claim takes; `None`: no
    /// limit (see
    /// [`Config::max_running_per_principal`](crate::Config::max_running_per_principal)).
    pub max_running_per_principal: Option<usize>,
}

impl Claim {
    /// A claim of up to `limit` jobs under `lease` at `at`, with no
    /// per-principal limit.
    pub fn new(lease: Lease, limit: usize, at: DateTime<Utc>) -> Self {
        Claim {
            lease,
            limit,
            at,
            max_running_per_principal: None,
        }
    }

    /// Takes no job whose principal would then have more than `max` jobs
    /// `Processing`.
    pub fn with_max_running_per_principal(mut self, max: usize) -> Self {
        self.max_running_per_principal = Some(max);
        self
    }

    /// Whether a principal with `running` jobs `Processing` may have one
    /// more.
    pub fn admits(&self, running: usize) -> bool {
        self.max_running_per_principal
            .is_none_or(|max| running < max)
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

/// A stream of [`JobSignal`]s, from [`AsyncApiDao::watch`](super::AsyncApiDao::watch).
pub type SignalStream = futures::stream::BoxStream<'static, Result<JobSignal>>;

/// A record past retention, as
/// [`AsyncApiDao::delete_expired`](super::AsyncApiDao::delete_expired) hands it
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

    /// What [`AsyncApiDao::delete_expired`](super::AsyncApiDao::delete_expired)
    /// hands out for `job`.
    pub fn of(job: &AsyncQuery) -> Self {
        let stored = match job.result.as_ref().map(|r| &r.body) {
            Some(crate::model::ResultBody::Stored(name)) => Some(name.clone()),
            _ => None,
        };
        ExpiredRecord { id: job.id, stored }
    }
}

/// Deletes the results of expired records and returns the ids whose
/// records may be deleted; see
/// [`AsyncApiDao::delete_expired`](super::AsyncApiDao::delete_expired).
pub type Reaper<'a> = &'a mut (
            dyn FnMut(Vec<ExpiredRecord>) -> futures::future::BoxFuture<'static, Vec<Uuid>> + Send
        );

/// What one
/// [`AsyncApiDao::delete_expired`](super::AsyncApiDao::delete_expired) call
/// did.
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

/// Which records [`AsyncApiDao::list`](super::AsyncApiDao::list) returns.
/// Every condition that is set
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
