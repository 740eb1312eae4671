//! The crate's one error type.

use uuid::Uuid;

use crate::model::QueryStatus;

/// A boxed error from a back-end or executor, kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `std::result::Result<T, async_query::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when calling the library.
///
/// Match on the variants; new ones may be added in minor releases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job with this id exists, or the caller may not see it. The two are
    /// deliberately indistinguishable.
    #[error("async query {id} not found")]
    NotFound {
        /// The id that was asked for.
        id: Uuid,
    },

    /// A client-supplied id is that of a job the caller already has (or,
    /// for an admin, may see); choose another or omit it.
    #[error("you already have an async query with id {id}; submit with a new id or none")]
    DuplicateId {
        /// The id that was already taken.
        id: Uuid,
    },

    /// A client-supplied id is taken by a job the caller may not see. The
    /// answer says nothing of whose job it is (HTTP 409 `id_unavailable`).
    #[error("the id {id} cannot be used; submit with another id or none")]
    IdUnavailable {
        /// The id that cannot be used.
        id: Uuid,
    },

    /// A job store refused a record because its principal already has a
    /// record with its idempotency key: what an
    /// [`AsyncApiDao`](crate::AsyncApiDao) returns from `create` so that
    /// the service answers with the existing job. A service caller sees it
    /// only if that job vanished again and again while being looked up.
    #[error("the idempotency key {key:?} is taken by another job")]
    IdempotencyKeyTaken {
        /// The key.
        key: String,
    },

    /// A submit repeated an idempotency key with a different query, query
    /// type or kind than the job the key belongs to (HTTP 422
    /// `idempotency_key_reused`).
    #[error(
        "the idempotency key {key:?} belongs to job {id}, submitted with a different request; \
         use a new key for a new request"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The job that has it.
        id: Uuid,
    },

    /// Too many jobs are waiting; retry later or raise `Config::max_queued`.
    #[error("the queue is full ({limit} jobs waiting); retry later")]
    QueueFull {
        /// The configured bound.
        limit: usize,
    },

    /// The principal already has as many jobs queued as
    /// [`Config::max_queued_per_principal`](crate::Config::max_queued_per_principal)
    /// allows; nothing was stored. Retry after `retry_after`, when some of
    /// them will likely have started.
    #[error(
        "you already have {max} jobs waiting, the most allowed per principal \
         (max_queued_per_principal); retry in {}s",
        retry_after.as_secs().max(1)
    )]
    PrincipalQueueFull {
        /// The configured limit.
        max: usize,
        /// When to try again (the service's poll interval, at least 1 s).
        retry_after: std::time::Duration,
    },

    /// The lifecycle does not allow this status change.
    #[error("status cannot change from {from} to {to}")]
    InvalidTransition {
        /// The status the job had (or was expected to have).
        from: QueryStatus,
        /// The status that was asked for.
        to: QueryStatus,
    },

    /// The request itself is malformed (empty query, rejected by the
    /// executor's validation, bad range, …). Nothing was stored.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong and how to fix it.
        reason: String,
    },

    /// The principal cannot own or see jobs (its name is empty). Nothing
    /// was read or stored. HTTP: 401.
    #[error("invalid principal: {reason}")]
    InvalidPrincipal {
        /// What is wrong with it.
        reason: String,
    },

    /// The host's [`SubmitPolicy`](crate::policy::SubmitPolicy) does not
    /// let this principal submit this request (nothing was stored), or a
    /// principal without the admin role asked for what only admins see
    /// ([`overview`](crate::AsyncQueryService::overview)). HTTP: 403.
    #[error("forbidden: {reason}")]
    Forbidden {
        /// Which rule, and what to do instead.
        reason: String,
    },

    /// The service is shutting down and accepts no new work.
    #[error("the service is shutting down and accepts no new jobs")]
    ShuttingDown,

    /// A [`Subscription`](crate::Subscription) fell behind and missed events.
    #[error(
        "the event subscriber fell behind and missed {missed} events; re-read the jobs it cares about"
    )]
    EventsLagged {
        /// How many events were dropped.
        missed: u64,
    },

    /// The job has no stored result to download (still running, failed, or an
    /// inline query result).
    #[error("async query {id} has no stored result: {reason}")]
    NoResult {
        /// The job.
        id: Uuid,
        /// Why there is nothing to download.
        reason: String,
    },

    /// The job's result was deleted after
    /// [`Config::result_lifetime`](crate::Config::result_lifetime); its
    /// record is kept (HTTP: 410 Gone).
    #[error("the result of async query {id} expired and was deleted; its record is kept")]
    ResultExpired {
        /// The job.
        id: Uuid,
    },

    /// The requested byte range lies outside the stored object.
    #[error("range {start}..{end} is not satisfiable for an object of {len} bytes")]
    RangeNotSatisfiable {
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The object's length.
        len: u64,
    },

    /// A stored object name is not allowed (it could escape the storage
    /// directory, or is empty).
    #[error(
        "invalid result name {name:?}: use 1-200 ASCII letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
    },

    /// The [`AsyncApiDao`](crate::AsyncApiDao) back-end failed; the source
    /// error is kept.
    #[error("job store error: {context}")]
    Dao {
        /// What the library was doing.
        context: String,
        /// The back-end's error.
        #[source]
        source: BoxError,
    },

    /// The [`ResultStorageEngine`](crate::ResultStorageEngine) failed; the
    /// source error is kept.
    #[error("result storage error: {context}")]
    Storage {
        /// What the library was doing.
        context: String,
        /// The back-end's error.
        #[source]
        source: BoxError,
    },

    /// The service was built without the parts it needs, or outside a Tokio
    /// runtime.
    #[error("configuration error: {reason}")]
    Config {
        /// What to change.
        reason: String,
    },
}

impl Error {
    /// Wraps a DAO back-end error, keeping it as the source.
    pub fn dao(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Dao {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Wraps a result-storage back-end error, keeping it as the source.
    pub fn storage(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Storage {
            context: context.into(),
            source: source.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidRequest {
            reason: reason.into(),
        }
    }
}
