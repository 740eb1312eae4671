//! What callers send and get back: [`SubmitRequest`] (with
//! [`WaitTimeout`]), [`CancelOutcome`] and [`ShutdownReport`].
//!
//! [`AsyncQueryService`]: crate::AsyncQueryService
//! [`Config::default_async_after`](crate::Config::default_async_after): crate::Config::default_async_after
//! [`Config::max_async_after`](crate::Config::max_async_after): crate::Config::max_async_after
//! [`Config::max_run_time`](crate::Config::max_run_time): crate::Config::max_run_time

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::model::{AsyncQuery, ExportFormat, JobKind};

/// What to run: the body of a submission.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SubmitRequest {
    /// A client-chosen id (Elide allows it); `None` for a random one.
    pub id: Option<Uuid>,
    /// Query or table export.
    pub kind: JobKind,
    /// The query text, passed to the executor as is.
    pub query: Arc<str>,
    /// The query language, opaque to the library.
    pub query_type: Arc<str>,
    /// How long `submit` waits for the result before returning the job
    /// unfinished; `None` uses
    /// [`Config::default_async_after`](crate::Config::default_async_after). Capped by
    /// [`Config::max_async_after`](crate::Config::max_async_after).
    pub async_after: Option<Duration>,
    /// A run-time limit below [`Config::max_run_time`](crate::Config::max_run_time); a higher value is
    /// capped to it.
    pub max_run_time: Option<Duration>,
    /// What happens to a job still running when `submit` stops waiting
    /// for it: it goes on (the default), or it is cancelled.
    pub on_wait_timeout: WaitTimeout,
    /// Makes a retried submit safe: see
    /// [`with_idempotency_key`](Self::with_idempotency_key).
    pub idempotency_key: Option<String>,
    /// Whether an earlier job's result may answer this submit: see
    /// [`with_reuse`](Self::with_reuse).
    pub reuse: Reuse,
}

/// Whether a submit may be answered with the result of an earlier,
/// identical job instead of running (Superset's cached results).
///
/// Identical means the same principal, kind (with its export format),
/// query type and query text. The earlier job must be `COMPLETE`, created
/// within the reuse window, with its output still kept (an inline body or
/// a stored export; not one past its result lifetime). Results are never
/// shared between principals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reuse {
    /// As [`Config::result_reuse`](crate::Config::result_reuse) says (by
    /// default it is off).
    #[default]
    Configured,
    /// Reuse a result of a job created within this time, whatever the
    /// configuration says.
    Within(Duration),
    /// Run the query even if a result could be reused (Superset's `force`).
    Force,
}

/// The longest [`SubmitRequest::idempotency_key`] accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// What happens to a job still running when its async-after wait ends (as
/// Databricks' `on_wait_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WaitTimeout {
    /// The job goes on; `submit` returns it unfinished and the caller
    /// polls, waits or subscribes (Elide's behaviour).
    #[default]
    Continue,
    /// The job is cancelled; `submit` returns it `CANCELLED` (or
    /// `CANCEL_COMPLETE` once stopped). Needs an async-after above zero.
    /// The cancellation happens at the end of the wait even if the caller
    /// has gone away by then (a dropped HTTP request, say).
    Cancel,
}

impl SubmitRequest {
    /// A [`JobKind::Query`] whose result is embedded in the record.
    pub fn query(query: impl Into<Arc<str>>) -> Self {
        SubmitRequest {
            id: None,
            kind: JobKind::Query,
            query: query.into(),
            // std's empty `Arc<str>` is one shared static: no allocation.
            query_type: Arc::default(),
            async_after: None,
            max_run_time: None,
            on_wait_timeout: WaitTimeout::Continue,
            idempotency_key: None,
            reuse: Reuse::Configured,
        }
    }

    /// A [`JobKind::TableExport`] in `format`.
    pub fn export(query: impl Into<Arc<str>>, format: ExportFormat) -> Self {
        SubmitRequest {
            kind: JobKind::TableExport { format },
            ..SubmitRequest::query(query)
        }
    }

    /// Uses a client-chosen id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the query language label.
    pub fn with_query_type(mut self, query_type: impl Into<Arc<str>>) -> Self {
        self.query_type = query_type.into();
        self
    }

    /// Sets how long `submit` waits before detaching.
    pub fn with_async_after(mut self, async_after: Duration) -> Self {
        self.async_after = Some(async_after);
        self
    }

    /// Sets a run-time limit for this job (never above the configured one).
    pub fn with_max_run_time(mut self, max_run_time: Duration) -> Self {
        self.max_run_time = Some(max_run_time);
        self
    }

    /// Sets [`on_wait_timeout`](Self::on_wait_timeout).
    pub fn with_on_wait_timeout(mut self, policy: WaitTimeout) -> Self {
        self.on_wait_timeout = policy;
        self
    }

    /// Makes the submit idempotent, as BigQuery's and Snowflake's request
    /// ids and the HTTP `Idempotency-Key` header: a submit by the same
    /// principal with the same key within
    /// [`Config::idempotency_window`](crate::Config::idempotency_window)
    /// of the first gets that first job back (waiting for it up to its own
    /// async-after, as a new job would be) and never runs the query again,
    /// also when the two race on two instances: the job store keeps a key
    /// unique per principal. A repeat whose query, query type or kind
    /// differs is refused with
    /// [`Error::IdempotencyKeyReused`](crate::Error::IdempotencyKeyReused).
    /// Keys of different principals never meet. After the window the key
    /// starts a new job.
    ///
    /// A key is 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] bytes of visible ASCII;
    /// `submit_many` refuses keys.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> async_query::Result<()> {
    /// use async_query::{AsyncQueryService, Principal, SubmitRequest};
    /// # let service = AsyncQueryService::builder()
    /// #     .executor(std::sync::Arc::new(async_query::testing::ScriptedExecutor::new()))
    /// #     .build()?;
    /// let alice = Principal::new("alice");
    /// let request = SubmitRequest::query("select 1").with_idempotency_key("report-2026-11-25");
    /// let first = service.submit(&alice, request.clone()).await?;
    /// let retried = service.submit(&alice, request).await?; // the reply was lost; try again
    /// assert_eq!(first.id, retried.id);
    /// # Ok(()) }
    /// ```
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets whether an earlier identical job's result may answer this
    /// submit ([`Reuse`]); `submit` then returns that earlier job, already
    /// `COMPLETE`, and nothing runs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> async_query::Result<()> {
    /// use std::time::Duration;
    /// use async_query::{AsyncQueryService, Principal, Reuse, SubmitRequest};
    /// # let service = AsyncQueryService::builder()
    /// #     .executor(std::sync::Arc::new(async_query::testing::ScriptedExecutor::new()))
    /// #     .build()?;
    /// let alice = Principal::new("alice");
    /// let first = service.submit(&alice, SubmitRequest::query("select 1")).await?;
    /// let hour = Reuse::Within(Duration::from_secs(3600));
    /// let again = service.submit(&alice, SubmitRequest::query("select 1").with_reuse(hour)).await?;
    /// assert_eq!(again.id, first.id); // answered from the first job's result
    /// let forced = SubmitRequest::query("select 1").with_reuse(Reuse::Force);
    /// assert_ne!(service.submit(&alice, forced).await?.id, first.id);
    /// # Ok(()) }
    /// ```
    pub fn with_reuse(mut self, reuse: Reuse) -> Self {
        self.reuse = reuse;
        self
    }
}

/// The answer to [`AsyncQueryService::cancel`](crate::AsyncQueryService::cancel).
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    /// The cancellation was recorded; the record as it is now
    /// (`CANCEL_COMPLETE` once the job has stopped, `CANCELLED` while an
    /// instance elsewhere is still stopping it).
    Cancelled(AsyncQuery),
    /// The job had already finished; nothing changed.
    AlreadyFinished(AsyncQuery),
}

impl CancelOutcome {
    /// The record, whichever the outcome.
    pub fn into_record(self) -> AsyncQuery {
        match self {
            CancelOutcome::Cancelled(job) | CancelOutcome::AlreadyFinished(job) => job,
        }
    }
}

/// What [`AsyncQueryService::shutdown`](crate::AsyncQueryService::shutdown) did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs still running when the grace period ended, now `TIMEDOUT` (or
    /// `CANCEL_COMPLETE` if they were being cancelled).
    pub stopped: Vec<Uuid>,
}
