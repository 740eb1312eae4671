//! [`AsyncQueryService`] and its builder: the facade a host calls. Every
//! method delegates to the crate-private runtime.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::event::{EventPage, Subscription};
use crate::format::Formats;
use crate::model::{AsyncQuery, Principal};
use crate::overview::Overview;
use crate::policy::SubmitPolicy;
use crate::request::{CancelOutcome, ShutdownReport, SubmitRequest};
use crate::runtime::{Runtime, StopOnDrop};
use crate::storage::Download;

mod builder;
pub use builder::AsyncQueryServiceBuilder;

/// Runs queries asynchronously: the library's one entry point.
///
/// Cheap to clone; all clones share one instance. Background tasks stop when
/// the last clone is dropped (like a crash: running jobs are abandoned and
/// left for lease expiry).
///
/// ```
/// # use async_query::*;
/// # struct Exec;
/// # #[async_trait::async_trait]
/// # impl QueryExecutor for Exec {
/// #     async fn execute(&self, _: &AsyncQuery, _: ExecutionContext) -> Result<QueryOutput, BoxError> {
/// #         Ok(QueryOutput::body("[]", 0))
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> async_query::Result<()> {
/// let service = AsyncQueryService::builder()
///     .executor(std::sync::Arc::new(Exec))
///     .build()?;
/// let alice = Principal::new("alice");
/// let job = service.submit(&alice, SubmitRequest::query("select 1")).await?;
/// assert_eq!(job.status, QueryStatus::Complete);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncQueryService {
    inner: Arc<Runtime>,
    policy: Option<Arc<dyn SubmitPolicy>>,
    _stop_on_drop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for AsyncQueryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncQueryService")
            .field("instance_id", &self.inner.config().instance_id)
            .finish_non_exhaustive()
    }
}

impl AsyncQueryService {
    /// The export formats this service knows: the built-in ones and those
    /// added with [`AsyncQueryServiceBuilder::format`].
    pub fn formats(&self) -> &Formats {
        self.inner.formats()
    }

    /// The crate-private engine (for the HTTP adapter).
    #[cfg(feature = "axum")]
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        self.inner.config()
    }

    /// Submits many jobs for `principal` at once, without waiting: all are
    /// checked first, then stored `QUEUED` in one DAO call
    /// ([`AsyncApiDao::create_many`](crate::AsyncApiDao::create_many): one transaction on SQL back-ends), and
    /// workers take them in order. Use it to enqueue a batch; for one job
    /// with an inline answer use [`submit`](Self::submit).
    ///
    /// All or nothing: on any error, no job is stored.
    ///
    /// ```
    /// # use async_query::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> async_query::Result<()> {
    /// # let service = AsyncQueryService::builder()
    /// #     .executor(std::sync::Arc::new(async_query::testing::ScriptedExecutor::new()))
    /// #     .build()?;
    /// let alice = Principal::new("alice");
    /// let requests = (0..3).map(|i| SubmitRequest::query(format!("sleep {i}"))).collect();
    /// let jobs = service.submit_many(&alice, requests).await?;
    /// assert!(jobs.iter().all(|job| job.status == QueryStatus::Queued));
    /// for job in jobs {
    ///     let done = service.wait(&alice, job.id, std::time::Duration::from_secs(5)).await?;
    ///     assert_eq!(done.status, QueryStatus::Complete);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] naming the first bad request's position;
    /// [`Error::DuplicateId`]; [`Error::QueueFull`] if the batch does not fit
    /// in [`Config::max_queued`]; [`Error::ShuttingDown`]; [`Error::Dao`].
    pub async fn submit_many(
        &self,
        principal: &Principal,
        requests: Vec<SubmitRequest>,
    ) -> Result<Vec<AsyncQuery>> {
        checked(principal)?;
        let mut requests = requests;
        if let Some(policy) = &self.policy {
            for (i, request) in requests.iter_mut().enumerate() {
                policy.review(principal, request).await.map_err(|refusal| {
                    match Error::from(refusal) {
                        Error::InvalidRequest { reason } => {
                            Error::invalid(format!("request {i}: {reason}"))
                        }
                        Error::Forbidden { reason } => Error::Forbidden {
                            reason: format!("request {i}: {reason}"),
                        },
                        other => other,
                    }
                })?;
            }
        }
        if let Some((i, why)) = requests
            .iter()
            .enumerate()
            .find_map(|(i, r)| only_alone(r).map(|why| (i, why)))
        {
            return Err(Error::invalid(format!(
                "request {i}: {why}; submit it alone"
            )));
        }
        self.inner.submit_many(principal, requests).await
    }

    /// Submits a job for `principal` and waits up to its async-after for the
    /// result.
    ///
    /// The job starts at once if a worker slot is free and no older job waits;
    /// otherwise it waits `QUEUED` in submission order. The returned record is
    /// final (`COMPLETE`, `FAILURE`, …) if the job finished within
    /// `min(request.async_after, config.max_async_after)`, otherwise it is the
    /// job as it is now, and the job runs on, unless the request says
    /// [`WaitTimeout::Cancel`](crate::WaitTimeout::Cancel): then it is
    /// cancelled and returned `CANCELLED` or `CANCEL_COMPLETE`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] (empty query, rejected by the executor's
    /// validation, `WaitTimeout::Cancel` without an async-after, or a
    /// malformed idempotency key), [`Error::IdempotencyKeyReused`],
    /// [`Error::DuplicateId`], [`Error::QueueFull`],
    /// [`Error::ShuttingDown`], or [`Error::Dao`] if the record cannot be
    /// stored. In every error case nothing was stored and nothing runs.
    pub async fn submit(
        &self,
        principal: &Principal,
        request: SubmitRequest,
    ) -> Result<AsyncQuery> {
        checked(principal)?;
        let mut request = request;
        if let Some(policy) = &self.policy {
            policy.review(principal, &mut request).await?;
        }
        self.inner.submit_or_cancel(principal, request).await
    }

    /// Reads a job.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if it does not exist or `principal` may not see it;
    /// [`Error::Dao`] if the store fails.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<AsyncQuery> {
        checked(principal)?;
        self.inner.get(principal, id).await
    }

    /// A page of job history: `principal`'s jobs, or everyone's for an
    /// admin, filtered and ordered by `query`, answered from the store's
    /// index (see [`AsyncApiDao::history`](crate::AsyncApiDao::history)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> async_query::Result<()> {
    /// use async_query::history::HistoryQuery;
    /// use async_query::testing::ScriptedExecutor;
    /// use async_query::{AsyncQueryService, Principal, SubmitRequest};
    /// let service = AsyncQueryService::builder()
    ///     .executor(std::sync::Arc::new(ScriptedExecutor::new()))
    ///     .build()?;
    /// let alice = Principal::new("alice");
    /// for n in 0..3 {
    ///     service.submit(&alice, SubmitRequest::query(format!("sleep {n}"))).await?;
    /// }
    /// let first = service.list(&alice, &HistoryQuery::new().with_page_size(2)).await?;
    /// assert_eq!(first.jobs.len(), 2);
    /// let cursor = first.next.expect("a second page");
    /// let second = service.list(&alice, &HistoryQuery::new().with_page_size(2).after(cursor)).await?;
    /// assert_eq!((second.jobs.len(), second.next), (1, None));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for a page size of 0 or a cursor this
    /// service did not hand out; [`Error::Dao`] if the store fails.
    pub async fn list(
        &self,
        principal: &Principal,
        query: &crate::history::HistoryQuery,
    ) -> Result<crate::history::HistoryPage> {
        checked(principal)?;
        self.inner.history(principal, query).await
    }

    /// Waits up to `timeout` for a job to reach a terminal status and returns
    /// it as it is then (terminal or not).
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    pub async fn wait(
        &self,
        principal: &Principal,
        id: Uuid,
        timeout: Duration,
    ) -> Result<AsyncQuery> {
        checked(principal)?;
        self.inner.wait(principal, id, timeout).await
    }

    /// Cancels a job. A queued job never starts; a running job on this
    /// instance is stopped through its cancellation token at once and ends
    /// `CANCEL_COMPLETE`; a finished job is left alone and reported as
    /// [`CancelOutcome::AlreadyFinished`].
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    pub async fn cancel(&self, principal: &Principal, id: Uuid) -> Result<CancelOutcome> {
        checked(principal)?;
        self.inner.cancel(principal, id).await
    }

    /// Opens a completed export's stored file, or the byte `range` of it (the
    /// end is clamped to the file's length).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] as for [`get`](Self::get); [`Error::NoResult`] if
    /// the job is not a completed export; [`Error::RangeNotSatisfiable`];
    /// [`Error::Storage`].
    pub async fn download(
        &self,
        principal: &Principal,
        id: Uuid,
        range: Option<Range<u64>>,
    ) -> Result<Download> {
        checked(principal)?;
        self.inner.download(principal, id, range).await
    }

    /// Shuts the service down gracefully: new submissions fail with
    /// [`Error::ShuttingDown`] at once, jobs running here get `grace` to
    /// finish, the rest are stopped and marked `TIMEDOUT` (so no job stays
    /// `PROCESSING` under a live owner), and the background tasks end. Jobs
    /// still `QUEUED` stay queued in the DAO for another instance or the
    /// next start. Every clone of the service is shut down.
    ///
    /// # Errors
    ///
    /// [`Error::Dao`] if a job could not be marked; the background tasks are
    /// still stopped.
    pub async fn shutdown(&self, grace: Duration) -> Result<ShutdownReport> {
        self.inner.shutdown(grace).await
    }

    /// The queue across every instance sharing the job store, for an
    /// admin: queued and running jobs per instance and per principal, the
    /// oldest queued job, expired leases, and what this instance's cleaner
    /// removed lately (see [`Overview`]).
    ///
    /// It reads every queued, running and cancelling record from the store
    /// (one `list` call), so its cost grows with the backlog, not with
    /// history: call it for a dashboard's refresh, not per request.
    ///
    /// ```
    /// # use async_query::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> async_query::Result<()> {
    /// # let service = AsyncQueryService::builder()
    /// #     .executor(std::sync::Arc::new(async_query::testing::ScriptedExecutor::new()))
    /// #     .build()?;
    /// let alice = Principal::new("alice");
    /// let blocked = SubmitRequest::query("block").with_async_after(std::time::Duration::ZERO);
    /// service.submit(&alice, blocked).await?;
    /// let admin = Principal::new("root").with_role("admin");
    /// let overview = service.overview(&admin).await?;
    /// assert_eq!(overview.running, 1);
    /// assert_eq!(overview.principals[0].principal, "alice");
    /// assert!(matches!(service.overview(&alice).await, Err(Error::Forbidden { .. })));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Forbidden`] for a principal without the
    /// [admin role](crate::Config::admin_role); [`Error::Dao`] if the store
    /// fails.
    pub async fn overview(&self, principal: &Principal) -> Result<Overview> {
        checked(principal)?;
        if !principal.has_role(&self.inner.config().admin_role) {
            return Err(Error::Forbidden {
                reason: "the overview of every job is for admins".into(),
            });
        }
        self.inner.overview().await
    }

    /// Resolves once [`shutdown`](Self::shutdown) starts (or the service
    /// stops because its last clone was dropped): for a host's own
    /// long-lived answers, such as the HTTP adapter's event stream, to end
    /// cleanly instead of holding the server's graceful shutdown open.
    ///
    /// ```
    /// # use async_query::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> async_query::Result<()> {
    /// # let service = AsyncQueryService::builder()
    /// #     .executor(std::sync::Arc::new(async_query::testing::ScriptedExecutor::new()))
    /// #     .build()?;
    /// let watcher = tokio::spawn({
    ///     let service = service.clone();
    ///     async move { service.closing().await }
    /// });
    /// service.shutdown(std::time::Duration::from_secs(1)).await?;
    /// watcher.await.expect("resolved by the shutdown");
    /// # Ok(()) }
    /// ```
    pub async fn closing(&self) {
        self.inner.closing().await;
    }

    /// Starts keeping the last `capacity` status changes of each principal
    /// (and of all of them, for admins) in memory for
    /// [`events_after`](Self::events_after) (calling it again can only
    /// raise the capacity). Off by default: each change then costs a lock
    /// and a copy of the event.
    ///
    /// Needed only when the job store keeps no events itself (memory,
    /// SQLite), where the log holds the changes this instance makes. A
    /// store that [keeps events](crate::dao::AsyncApiDao::keeps_events)
    /// (PostgreSQL) serves `events_after` for every instance alike, and
    /// this call does nothing.
    pub fn enable_event_log(&self, capacity: usize) {
        self.inner.enable_event_log(capacity);
    }

    /// Up to `limit` status changes of jobs `principal` may see, after the
    /// cursor `after` (`None`: from the oldest kept), in the spirit of
    /// Superset's async event polling: one call returns the changes of all
    /// the caller's jobs.
    ///
    /// Each principal reads a stream of their own jobs' changes, numbered
    /// 1, 2, 3, … (so a cursor says nothing of anyone else's activity);
    /// holders of the admin role read the stream of every change. On a
    /// store that keeps events (PostgreSQL) every instance answers the
    /// same.
    ///
    /// ```
    /// # use async_query::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> async_query::Result<()> {
    /// # let service = AsyncQueryService::builder()
    /// #     .executor(std::sync::Arc::new(async_query::testing::ScriptedExecutor::new()))
    /// #     .build()?;
    /// service.enable_event_log(10_000);
    /// let alice = Principal::new("alice");
    /// service.submit(&alice, SubmitRequest::query("sleep 0")).await?;
    /// let page = service.events_after(&alice, None, 100).await?;
    /// let statuses: Vec<_> = page.events.iter().map(|e| e.event.to).collect();
    /// assert_eq!(statuses, [QueryStatus::Processing, QueryStatus::Complete]);
    /// // Next time, continue after what was seen.
    /// let next = service.events_after(&alice, Some(page.last_id), 100).await?;
    /// assert!(next.events.is_empty());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the store keeps no events and
    /// [`enable_event_log`](Self::enable_event_log) was not called;
    /// [`Error::Dao`] if the store that keeps them fails.
    pub async fn events_after(
        &self,
        principal: &Principal,
        after: Option<u64>,
        limit: usize,
    ) -> Result<EventPage> {
        checked(principal)?;
        self.inner.events_after(principal, after, limit).await
    }

    /// Status changes of the jobs `principal` may see, from now on.
    ///
    /// On a store that [keeps events](crate::dao::AsyncApiDao::keeps_events)
    /// (PostgreSQL) they are read from the store, so they include changes
    /// made by other instances, and a new subscription may also receive
    /// changes up to one [`poll_interval`](crate::Config::poll_interval)
    /// older. Otherwise they are this instance's changes, as they happen.
    pub fn subscribe(&self, principal: &Principal) -> Subscription {
        self.inner.subscribe(principal)
    }
}

/// Why `request` cannot be part of a `submit_many` batch, if it cannot.
fn only_alone(request: &SubmitRequest) -> Option<&'static str> {
    if request.on_wait_timeout == crate::request::WaitTimeout::Cancel {
        return Some(
            "submit_many does not wait for its jobs, so on_wait_timeout CANCEL cannot apply",
        );
    }
    if matches!(request.reuse, crate::Reuse::Within(_)) {
        return Some("submit_many does not reuse results");
    }
    if request.idempotency_key.is_some() {
        return Some(
            "submit_many takes no idempotency keys (a batch is stored all or nothing, so one \
             repeated key would refuse it all)",
        );
    }
    None
}

/// Refuses a principal that cannot own or see jobs: one whose name is
/// empty (or only white space), which an authentication bug in the host
/// would otherwise turn into a shared anonymous owner.
fn checked(principal: &Principal) -> Result<()> {
    if principal.name.trim().is_empty() {
        return Err(Error::InvalidPrincipal {
            reason: "the principal's name is empty; every job belongs to a named principal".into(),
        });
    }
    Ok(())
}
