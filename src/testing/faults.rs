//! Fault-injecting wrappers: [`FaultyDao`] and [`FaultyStorage`] fail or
//! delay the calls of a real back-end on command, to test what a host's
//! service does when its database or storage misbehaves.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use crate::dao::{AsyncApiDao, CasOutcome, Claim, ListFilter, StatusChange};
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, QueryStatus};
use crate::storage::{ResultStorageEngine, ResultStream, ResultWriter};

/// The error an injected fault carries as its source.
#[derive(Debug, thiserror::Error)]
#[error("injected fault in {operation} (call {call})")]
pub struct InjectedFault {
    /// The operation that failed, e.g. `"update_status"` or `"write"`.
    pub operation: &'static str,
    /// Which call (counting from 1 over all operations) it was.
    pub call: u64,
}

#[derive(Debug, Default)]
struct Plan {
    fail_calls: HashSet<u64>,
    fail_until: Option<Instant>,
    fail_always: bool,
    only: Option<HashSet<&'static str>>,
    delay: Duration,
    reply_delay: Duration,
    lose_replies: bool,
    store_clock: Option<chrono::TimeDelta>,
}

impl Plan {
    /// Whether `operation` is faulted at all (see [`Faults::only`]).
    fn targets(&self, operation: &'static str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.contains(operation))
    }
}

/// Controls the faults of a [`FaultyDao`] or [`FaultyStorage`]. Shared by
/// `Arc`, so a test keeps a handle while the service owns the wrapper.
#[derive(Debug, Default)]
pub struct Faults {
    calls: AtomicU64,
    plan: Mutex<Plan>,
}

impl Faults {
    /// No faults yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls made so far (of the targeted operations).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Makes the `n`th call from now fail (`1` is the next call).
    pub fn fail_nth(&self, n: u64) {
        let at = self.calls() + n;
        self.plan().fail_calls.insert(at);
    }

    /// Makes every call fail (`true`) or none (`false`).
    pub fn fail_always(&self, on: bool) {
        let mut plan = self.plan();
        plan.fail_always = on;
        plan.fail_calls.clear();
        plan.fail_until = None;
    }

    /// Makes every call fail for `period` of Tokio time from now.
    pub fn fail_for(&self, period: Duration) {
        self.plan().fail_until = Some(Instant::now() + period);
    }

    /// Delays every call by `delay` (Tokio time) before it runs.
    pub fn delay(&self, delay: Duration) {
        self.plan().delay = delay;
    }

    /// Holds back the reply of every DAO call by `delay` (Tokio time) after
    /// the call was made: the change is stored at once and the caller learns
    /// of it later, so other tasks' changes can overtake it (a slow network
    /// on the way back). Storage calls are not affected.
    pub fn delay_replies(&self, delay: Duration) {
        self.plan().reply_delay = delay;
    }

    /// With `true`, a DAO call that fails is made first and only its reply
    /// is lost: the change is stored, the caller sees the injected error
    /// (as when a connection drops after the commit). With `false` (the
    /// default) a failed call never reaches the inner DAO.
    pub fn lose_replies(&self, on: bool) {
        self.plan().lose_replies = on;
    }

    /// Makes the wrapped DAO report a clock of its own (`now`), `offset`
    /// from this machine's, as a database shared by several machines does;
    /// `None` (the default) passes `now` to the inner DAO. For tests of how
    /// the service sets its clock by the store's.
    pub fn store_clock(&self, offset: Option<chrono::TimeDelta>) {
        self.plan().store_clock = offset;
    }

    /// Counts and faults only these operations (method names such as
    /// `"update_status"`, `"claim"`, `"write"`, `"publish"`); others pass
    /// through untouched.
    pub fn only(&self, operations: &[&'static str]) {
        self.plan().only = Some(operations.iter().copied().collect());
    }

    async fn check(&self, operation: &'static str) -> std::result::Result<(), InjectedFault> {
        let (delay, fail, call) = {
            let plan = self.plan();
            if !plan.targets(operation) {
                return Ok(());
            }
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let fail = plan.fail_always
                || plan.fail_calls.contains(&call)
                || plan.fail_until.is_some_and(|until| Instant::now() < until);
            (plan.delay, fail, call)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if fail {
            Err(InjectedFault { operation, call })
        } else {
            Ok(())
        }
    }

    /// Runs the DAO call `call` as the plan says: not at all if it fails
    /// (or, when replies are lost, run and then fail).
    async fn dao<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.check(operation).await {
            Ok(()) => {
                let reply = call.await;
                let hold = {
                    let plan = self.plan();
                    if plan.targets(operation) {
                        plan.reply_delay
                    } else {
                        Duration::ZERO
                    }
                };
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                reply
            }
            Err(fault) => {
                if self.plan().lose_replies {
                    let _ = call.await;
                }
                Err(Error::dao(operation, fault))
            }
        }
    }

    async fn storage(&self, operation: &'static str) -> Result<()> {
        self.check(operation)
            .await
            .map_err(|fault| Error::storage(operation, fault))
    }
}

/// An [`AsyncApiDao`] that forwards to another one, failing or delaying
/// calls as its [`Faults`] say. Failures are [`Error::Dao`] with an
/// [`InjectedFault`] source; a failed call does not reach the inner DAO
/// unless [`Faults::lose_replies`] is on.
pub struct FaultyDao {
    inner: Arc<dyn AsyncApiDao>,
    faults: Arc<Faults>,
}

impl FaultyDao {
    /// Wraps `inner`; returns the wrapper and its fault controller.
    pub fn new(inner: Arc<dyn AsyncApiDao>) -> (Self, Arc<Faults>) {
        let faults = Faults::new();
        (
            FaultyDao {
                inner,
                faults: Arc::clone(&faults),
            },
            faults,
        )
    }
}

#[async_trait]
impl AsyncApiDao for FaultyDao {
    async fn create(&self, job: &AsyncQuery) -> Result<()> {
        self.faults.dao("create", self.inner.create(job)).await
    }

    async fn create_many(&self, jobs: &[AsyncQuery]) -> Result<()> {
        self.faults
            .dao("create_many", self.inner.create_many(jobs))
            .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<AsyncQuery>> {
        self.faults.dao("get", self.inner.get(id)).await
    }

    async fn find_by_idempotency_key(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<AsyncQuery>> {
        let found = self.inner.find_by_idempotency_key(principal, key);
        self.faults.dao("find_by_idempotency_key", found).await
    }

    async fn find_reusable(
        &self,
        like: &AsyncQuery,
        created_from: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<AsyncQuery>> {
        let found = self.inner.find_reusable(like, created_from);
        self.faults.dao("find_reusable", found).await
    }

    async fn release_idempotency_key(&self, id: Uuid, key: &str) -> Result<bool> {
        let released = self.inner.release_idempotency_key(id, key);
        self.faults.dao("release_idempotency_key", released).await
    }

    async fn update_status(&self, id: Uuid, change: StatusChange) -> Result<CasOutcome> {
        self.faults
            .dao("update_status", self.inner.update_status(id, change))
            .await
    }

    async fn update_status_many(
        &self,
        changes: &[(Uuid, StatusChange)],
    ) -> Result<Vec<CasOutcome>> {
        self.faults
            .dao("update_status_many", self.inner.update_status_many(changes))
            .await
    }

    async fn update_and_claim(
        &self,
        changes: &[(Uuid, StatusChange)],
        claim: &Claim,
    ) -> Result<(Vec<CasOutcome>, Vec<AsyncQuery>)> {
        self.faults
            .dao(
                "update_and_claim",
                self.inner.update_and_claim(changes, claim),
            )
            .await
    }

    async fn claim(&self, claim: &Claim) -> Result<Vec<AsyncQuery>> {
        self.faults.dao("claim", self.inner.claim(claim)).await
    }

    async fn renew_leases(
        &self,
        owner: Uuid,
        ids: &[Uuid],
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, QueryStatus)>> {
        self.faults
            .dao(
                "renew_leases",
                self.inner.renew_leases(owner, ids, expires_at),
            )
            .await
    }

    async fn count_queued(&self, principal: &str, up_to: usize) -> Result<usize> {
        let counted = self.inner.count_queued(principal, up_to);
        self.faults.dao("count_queued", counted).await
    }

    async fn update_progress(
        &self,
        id: Uuid,
        owner: Uuid,
        progress: &crate::progress::Progress,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let stored = self.inner.update_progress(id, owner, progress, at);
        self.faults.dao("update_progress", stored).await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<AsyncQuery>> {
        self.faults.dao("list", self.inner.list(filter)).await
    }

    async fn history(&self, filter: &crate::dao::HistoryFilter) -> Result<Vec<AsyncQuery>> {
        self.faults.dao("history", self.inner.history(filter)).await
    }

    async fn delete(&self, ids: &[Uuid]) -> Result<u64> {
        self.faults.dao("delete", self.inner.delete(ids)).await
    }

    async fn delete_expired(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
        reap: crate::dao::Reaper<'_>,
    ) -> Result<crate::dao::Purged> {
        self.faults
            .dao(
                "delete_expired",
                self.inner.delete_expired(before, limit, reap),
            )
            .await
    }

    async fn now(&self) -> Result<Option<DateTime<Utc>>> {
        let offset = self.faults.plan().store_clock;
        let now = async {
            match offset {
                Some(offset) => Ok(Some(Utc::now() + offset)),
                None => self.inner.now().await,
            }
        };
        self.faults.dao("now", now).await
    }

    async fn expire_results(
        &self,
        before: DateTime<Utc>,
        limit: usize,
        message: &str,
        reap: crate::dao::Reaper<'_>,
    ) -> Result<crate::dao::Purged> {
        self.faults
            .dao(
                "expire_results",
                self.inner.expire_results(before, limit, message, reap),
            )
            .await
    }

    async fn watch(&self) -> Result<Option<crate::dao::SignalStream>> {
        self.faults.dao("watch", self.inner.watch()).await
    }

    fn keeps_events(&self) -> bool {
        self.inner.keeps_events()
    }

    async fn events(
        &self,
        stream: crate::dao::EventStream<'_>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<crate::EventPage> {
        let read = self.inner.events(stream, after, limit);
        self.faults.dao("events", read).await
    }

    async fn tidy_events(&self) -> Result<u64> {
        self.faults
            .dao("tidy_events", self.inner.tidy_events())
            .await
    }
}

/// A [`ResultStorageEngine`] that forwards to another one, failing or
/// delaying calls (including the writer's `write` and `publish`) as its
/// [`Faults`] say.
pub struct FaultyStorage {
    inner: Arc<dyn ResultStorageEngine>,
    faults: Arc<Faults>,
}

impl FaultyStorage {
    /// Wraps `inner`; returns the wrapper and its fault controller.
    pub fn new(inner: Arc<dyn ResultStorageEngine>) -> (Self, Arc<Faults>) {
        let faults = Faults::new();
        (
            FaultyStorage {
                inner,
                faults: Arc::clone(&faults),
            },
            faults,
        )
    }
}

struct FaultyWriter {
    inner: Box<dyn ResultWriter>,
    faults: Arc<Faults>,
}

#[async_trait]
impl ResultWriter for FaultyWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.faults.storage("write").await?;
        self.inner.write(chunk).await
    }

    async fn publish(self: Box<Self>) -> Result<u64> {
        if let Err(e) = self.faults.storage("publish").await {
            // A failed publish leaves nothing behind, like a real one.
            let _ = self.inner.abort().await;
            return Err(e);
        }
        self.inner.publish().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.faults.storage("abort").await?;
        self.inner.abort().await
    }
}

#[async_trait]
impl ResultStorageEngine for FaultyStorage {
    async fn create(&self, name: &str) -> Result<Box<dyn ResultWriter>> {
        self.faults.storage("create").await?;
        Ok(Box::new(FaultyWriter {
            inner: self.inner.create(name).await?,
            faults: Arc::clone(&self.faults),
        }))
    }

    async fn open(&self, name: &str, range: Option<Range<u64>>) -> Result<Option<ResultStream>> {
        self.faults.storage("open").await?;
        self.inner.open(name, range).await
    }

    async fn len(&self, name: &str) -> Result<Option<u64>> {
        self.faults.storage("len").await?;
        self.inner.len(name).await
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        self.faults.storage("delete").await?;
        self.inner.delete(name).await
    }

    async fn remove_stale_partials(&self, before: std::time::SystemTime) -> Result<u64> {
        self.faults.storage("remove_stale_partials").await?;
        self.inner.remove_stale_partials(before).await
    }
}
