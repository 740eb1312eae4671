//! The crate-private engine behind [`AsyncQueryService`](crate::AsyncQueryService):
//! submission, the dispatcher, job tasks, heartbeats and waiting.
//!
//! One mechanism serves one instance and many: every job is a record in the
//! DAO, every status change is a compare-and-set through [`Inner::transition`],
//! and the local table of jobs only mirrors what the DAO decided (for fast
//! waiting, cancellation tokens and the queue bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::dao::{AsyncApiDao, CasOutcome, StatusChange};
use crate::error::{Error, Result};
use crate::event::{JobEvent, Subscription};
use crate::executor::QueryExecutor;
use crate::model::{AsyncQuery, Lease, Principal, QueryResult, QueryStatus};
use crate::request::{CancelOutcome, ShutdownReport, SubmitRequest};
use crate::storage::ResultStorageEngine;

mod cleaner;
mod events;
mod job;

/// Wall-clock time that advances with Tokio's clock, so a paused test clock
/// moves record timestamps and leases too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            wall: Utc::now(),
            mono: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.wall + TimeDelta::from_std(self.mono.elapsed()).unwrap_or(TimeDelta::MAX)
    }
}

/// Follows a local job's snapshots until it is terminal or `deadline`
/// passes, and returns the latest one; `None` if this instance stopped
/// tracking the job first (it runs elsewhere: read the DAO instead).
async fn follow_local(
    rx: &mut watch::Receiver<Arc<AsyncQuery>>,
    deadline: Instant,
) -> Option<AsyncQuery> {
    let closed = tokio::time::timeout_at(deadline, rx.wait_for(|j| j.status.is_terminal()))
        .await
        .is_ok_and(|waited| waited.is_err());
    if closed {
        return None;
    }
    let latest = Arc::clone(&rx.borrow());
    Some(AsyncQuery::clone(&latest))
}

fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// [`CasOutcome`] with the applied record shared with the local table.
pub(crate) enum Cas {
    Applied(Arc<AsyncQuery>),
    /// Boxed: conflicts are rare and the record is large.
    Conflict(Box<AsyncQuery>),
}

/// A job this instance submitted or runs.
struct LocalJob {
    /// The latest record.
    latest: Arc<AsyncQuery>,
    /// Publishes `latest` to waiters; created by the first waiter, because
    /// a channel nobody follows still costs a lock per update and per drop.
    watchers: Option<watch::Sender<Arc<AsyncQuery>>>,
    /// Stops the job's executor.
    cancel: CancellationToken,
    /// Still waiting for a slot (counts against `max_queued`).
    queued: bool,
    /// Its creation event was emitted (or it was created elsewhere).
    announced: bool,
}

impl LocalJob {
    /// A job this instance is creating: not announced until it is stored.
    fn new(job: Arc<AsyncQuery>, cancel: CancellationToken, queued: bool) -> Self {
        LocalJob {
            latest: job,
            watchers: None,
            cancel,
            queued,
            announced: false,
        }
    }

    /// Follows this job's record from its current state on.
    fn subscribe(&mut self) -> watch::Receiver<Arc<AsyncQuery>> {
        let latest = &self.latest;
        self.watchers
            .get_or_insert_with(|| watch::channel(Arc::clone(latest)).0)
            .subscribe()
    }

    fn update(&mut self, job: Arc<AsyncQuery>) {
        if let Some(watchers) = &self.watchers {
            watchers.send_replace(Arc::clone(&job));
        }
        self.latest = job;
    }
}

#[derive(Default)]
struct Local {
    jobs: HashMap<Uuid, LocalJob>,
    queued: usize,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) dao: Arc<dyn AsyncApiDao>,
    storage: Arc<dyn ResultStorageEngine>,
    executor: Arc<dyn QueryExecutor>,
    clock: Clock,
    slots: Arc<Semaphore>,
    local: Mutex<Local>,
    wake_dispatcher: tokio::sync::Notify,
    events: broadcast::Sender<JobEvent>,
    /// Fires when the service stops: background tasks end, jobs are
    /// abandoned.
    shutdown: CancellationToken,
    /// Fires when `shutdown` starts: no new submissions or claims.
    closing: CancellationToken,
    /// Signalled whenever a job leaves the local table once `closing` fired.
    left: tokio::sync::Notify,
    /// Live [`Subscription`](crate::Subscription)s.
    subscribers: Arc<std::sync::atomic::AtomicUsize>,
    /// Status changes kept for [`events_after`](Self::events_after), once
    /// enabled.
    event_log: Mutex<events::EventLog>,
    logging: std::sync::atomic::AtomicBool,
    /// Set once start-up recovery is done; nothing is claimed before.
    recovered: std::sync::atomic::AtomicBool,
    /// Signalled whenever the DAO pushes a status change (any instance's).
    remote_changed: tokio::sync::Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Jobs claimed ahead (`claim_batch > 1`), `PROCESSING` here, waiting
    /// for a worker, oldest first.
    ready: Mutex<std::collections::VecDeque<(Arc<AsyncQuery>, CancellationToken)>>,
    /// Finished jobs for the batcher (`claim_batch > 1`); bounded, so
    /// workers wait when records are not written fast enough.
    settle_tx: tokio::sync::mpsc::Sender<job::Settlement>,
    settle_rx: Mutex<Option<tokio::sync::mpsc::Receiver<job::Settlement>>>,
}

impl Inner {
    pub(crate) fn new(
        config: Config,
        dao: Arc<dyn AsyncApiDao>,
        storage: Arc<dyn ResultStorageEngine>,
        executor: Arc<dyn QueryExecutor>,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(config.event_capacity);
        // Room for the next batch while one is written: a full channel makes
        // workers wait, which bounds the records not yet written.
        let (settle_tx, settle_rx) = tokio::sync::mpsc::channel(2 * config.claim_batch.max(1));
        Arc::new(Inner {
            slots: Arc::new(Semaphore::new(config.pool_size)),
            config,
            dao,
            storage,
            executor,
            clock: Clock::new(),
            local: Mutex::new(Local::default()),
            wake_dispatcher: tokio::sync::Notify::new(),
            events,
            shutdown: CancellationToken::new(),
            closing: CancellationToken::new(),
            left: tokio::sync::Notify::new(),
            remote_changed: tokio::sync::Notify::new(),
            recovered: std::sync::atomic::AtomicBool::new(false),
            subscribers: Arc::default(),
            event_log: Mutex::default(),
            logging: std::sync::atomic::AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            ready: Mutex::default(),
            settle_tx,
            settle_rx: Mutex::new(Some(settle_rx)),
        })
    }

    /// Status changes of the jobs `principal` may see, from now on.
    pub(crate) fn subscribe(&self, principal: &Principal) -> Subscription {
        Subscription::new(
            self.events.subscribe(),
            principal.clone(),
            self.config.admin_role.clone(),
            Arc::clone(&self.subscribers),
        )
    }

    /// Opens a completed export's stored file (or a byte range of it).
    pub(crate) async fn download(
        &self,
        principal: &Principal,
        id: Uuid,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<crate::storage::Download> {
        use crate::model::{JobKind, ResultBody};
        let job = self.get(principal, id).await?;
        let JobKind::TableExport { format } = job.kind else {
            return Err(Error::NoResult {
                id,
                reason: "it is a query; its result is inline in the record".into(),
            });
        };
        let result = job
            .result
            .as_ref()
            .filter(|_| job.status == QueryStatus::Complete);
        let Some(result) = result else {
            return Err(Error::NoResult {
                id,
                reason: format!("its status is {}", job.status),
            });
        };
        let ResultBody::Stored(name) = &result.body else {
            return Err(Error::NoResult {
                id,
                reason: "the record has no stored location".into(),
            });
        };
        let stream = self
            .storage
            .open(name, range)
            .await?
            .ok_or_else(|| Error::NoResult {
                id,
                reason: format!("stored result {name:?} is missing"),
            })?;
        Ok(crate::storage::Download {
            format,
            content_type: format.content_type(),
            file_name: name.clone(),
            record_count: result.record_count,
            stream,
        })
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Starts the dispatcher, the heartbeat and the cleaner (which first
    /// recovers this instance's interrupted jobs); all end when the shutdown
    /// token fires.
    pub(crate) fn start(this: &Arc<Self>, runtime: &tokio::runtime::Handle) {
        let mut handles = vec![
            runtime.spawn(Arc::clone(this).dispatcher()),
            runtime.spawn(Arc::clone(this).heartbeat()),
            runtime.spawn(Arc::clone(this).cleaner()),
            runtime.spawn(Arc::clone(this).listener()),
        ];
        let settlements = this
            .settle_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(settlements) = settlements.filter(|_| this.config.claim_batch > 1) {
            handles.push(runtime.spawn(Arc::clone(this).batcher(settlements)));
        }
        this.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(handles);
    }

    /// Stops accepting work, lets running jobs finish within `grace`, ends the
    /// rest `TIMEDOUT`, and stops the background tasks. Jobs still `QUEUED`
    /// stay queued in the DAO for another instance or the next start.
    pub(crate) async fn shutdown(&self, grace: Duration) -> Result<ShutdownReport> {
        self.closing.cancel();
        let deadline = Instant::now() + grace;
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if self.running().is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, left).await.is_err() {
                break;
            }
        }
        let marked = async {
            let mut stopped = Vec::new();
            let now = self.clock.now();
            for id in self.running() {
                let Some(job) = self.dao.get(id).await? else {
                    continue;
                };
                if !job.status.is_terminal()
                    && self
                        .end_orphan(
                            &job,
                            now,
                            "stopped: its instance shut down before it finished",
                        )
                        .await?
                {
                    stopped.push(id);
                }
            }
            Ok::<_, Error>(stopped)
        }
        .await;
        // Stop the background tasks (and abandon whatever still runs) even
        // if marking failed.
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        let stopped = marked?;
        Ok(ShutdownReport { stopped })
    }

    /// Ids of the jobs running on this instance.
    fn running(&self) -> Vec<Uuid> {
        self.lock_local()
            .jobs
            .iter()
            .filter(|(_, job)| !job.queued)
            .map(|(id, _)| *id)
            .collect()
    }

    fn lock_local(&self) -> MutexGuard<'_, Local> {
        // Every critical section is a few map operations that cannot panic
        // half-way, so a poisoned lock still holds consistent data.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease(&self, now: DateTime<Utc>) -> Lease {
        Lease {
            owner: self.config.instance_id,
            expires_at: now + to_delta(self.config.lease),
        }
    }

    fn emit(&self, job: &AsyncQuery, from: Option<QueryStatus>) {
        self.emit_as(job, from, job.status);
    }

    /// Emits the change of `job` from `from` to `to` (which may be a step
    /// before `job.status`).
    fn emit_as(&self, job: &AsyncQuery, from: Option<QueryStatus>, to: QueryStatus) {
        let (subscribed, logged) = self.listeners();
        if !subscribed && !logged {
            return;
        }
        let event = JobEvent {
            id: job.id,
            kind: job.kind,
            owner: job.principal.name.clone(),
            from,
            to,
            at: job.updated_on,
        };
        if logged {
            self.lock_event_log().push(event.clone());
        }
        if subscribed {
            let _ = self.events.send(event);
        }
    }

    /// Whether anyone follows events: (subscribers, event log). Atomic
    /// reads (`receiver_count` would take the channel's lock).
    fn listeners(&self) -> (bool, bool) {
        (
            self.subscribers.load(std::sync::atomic::Ordering::Relaxed) > 0,
            self.logging.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn lock_event_log(&self) -> MutexGuard<'_, events::EventLog> {
        // Pushes and reads cannot panic half-way.
        self.event_log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn enable_event_log(&self, capacity: usize) {
        if capacity > 0 {
            self.lock_event_log().enable(capacity);
            self.logging
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn events_after(
        &self,
        principal: &Principal,
        after: Option<u64>,
        limit: usize,
    ) -> Result<crate::event::EventPage> {
        let log = self.lock_event_log();
        if !log.enabled() {
            return Err(Error::Config {
                reason: "the event log is off; call AsyncQueryService::enable_event_log first"
                    .into(),
            });
        }
        Ok(log.page(principal, &self.config.admin_role, after, limit))
    }

    /// Mirrors a change the DAO applied into the local table and the event
    /// stream. With `adopt`, a job not yet known locally (claimed from the
    /// queue) gets an entry; returns its cancellation token.
    ///
    /// Two tasks can commit changes of one job in one order and get here in
    /// the other (a worker's claim and a cancel, say). The lifecycle only
    /// moves forward, so a change to a status at or before the one mirrored
    /// is stale and skipped, and a change whose `from` was not mirrored yet
    /// first emits that step: subscribers see every job's changes in order.
    fn observe(
        &self,
        from: Option<QueryStatus>,
        job: Arc<AsyncQuery>,
        adopt: bool,
    ) -> Option<CancellationToken> {
        let mut local = self.lock_local();
        let local = &mut *local;
        let entry = match local.jobs.entry(job.id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) if adopt => {
                // Claimed here: created elsewhere or before a restart.
                self.emit(&job, from);
                let mut entry = LocalJob::new(Arc::clone(&job), self.shutdown.child_token(), false);
                entry.announced = true;
                return Some(vacant.insert(entry).cancel.clone());
            }
            std::collections::hash_map::Entry::Vacant(_) => {
                self.emit(&job, from);
                return None;
            }
        };
        let current = entry.latest.status;
        if job.status == current || job.status.leads_to(current) {
            // A claim whose reply comes after a later change: the job has
            // left this instance's queue all the same.
            if adopt && entry.queued {
                local.queued -= 1;
                entry.queued = false;
            }
            return Some(entry.cancel.clone());
        }
        if !entry.announced {
            self.emit(&entry.latest, None);
            entry.announced = true;
        }
        if let Some(from) = from.filter(|&from| current.leads_to(from)) {
            self.emit_as(&job, Some(current), from);
        }
        self.emit(&job, from);
        // A job that leaves the queue runs here only if this instance claimed
        // it; otherwise (cancelled while queued, or claimed elsewhere) this
        // instance stops tracking it and waiters follow the DAO. A change
        // mirrored before this instance's own claim (a cancel overtaking
        // the claim's reply) keeps the job queued here until the claim
        // arrives; if its reply is lost, the heartbeat lets the job go as
        // it does for any queued job that left the queue.
        let mut leave = job.status.is_terminal();
        if entry.queued && job.status != QueryStatus::Queued {
            let ours = adopt || self.claimed_here(&job);
            let claim_on_its_way = ours && !adopt && !leave;
            if !claim_on_its_way {
                local.queued -= 1;
                entry.queued = false;
                leave |= !ours;
            }
        }
        let token = entry.cancel.clone();
        let id = job.id;
        entry.update(job);
        if leave {
            local.jobs.remove(&id);
            self.job_left();
        }
        Some(token)
    }

    /// Whether `job`'s lease is this instance's.
    fn claimed_here(&self, job: &AsyncQuery) -> bool {
        job.lease
            .as_ref()
            .is_some_and(|lease| lease.owner == self.config.instance_id)
    }

    /// Emits the creation of jobs this instance just stored, unless a
    /// change of theirs was mirrored first (which emitted it). Nobody
    /// listening: nothing to do (a change mirrored later still emits the
    /// creation first, for whoever subscribed meanwhile).
    fn announce<'a>(&self, jobs: impl IntoIterator<Item = &'a AsyncQuery>) {
        if self.listeners() == (false, false) {
            return;
        }
        let mut local = self.lock_local();
        for job in jobs {
            if let Some(entry) = local.jobs.get_mut(&job.id).filter(|e| !e.announced) {
                entry.announced = true;
                self.emit(job, None);
            }
        }
    }

    /// Tells a waiting `shutdown` that a job left the local table. Only
    /// `shutdown` listens, and it sets `closing` before it looks at the
    /// table, so the (locking) notification is skipped until then.
    fn job_left(&self) {
        if self.closing.is_cancelled() {
            self.left.notify_waiters();
        }
    }

    /// Drops a local entry without a terminal status (the record could not be
    /// written); waiters fall back to reading the DAO.
    fn forget(&self, id: Uuid) {
        let mut local = self.lock_local();
        if let Some(entry) = local.jobs.remove(&id) {
            if entry.queued {
                local.queued -= 1;
            }
            self.job_left();
        }
    }

    /// The one way status changes happen: a compare-and-set in the DAO,
    /// mirrored locally when applied.
    pub(crate) async fn transition(&self, id: Uuid, change: StatusChange) -> Result<Cas> {
        let from = change.from;
        Ok(self.applied(from, self.dao.update_status(id, change).await?))
    }

    /// Mirrors a compare-and-set the DAO decided (from `from`).
    fn applied(&self, from: QueryStatus, outcome: CasOutcome) -> Cas {
        match outcome {
            CasOutcome::Applied(job) => {
                let job = Arc::new(job);
                self.observe(Some(from), Arc::clone(&job), false);
                Cas::Applied(job)
            }
            CasOutcome::Conflict(current) => Cas::Conflict(Box::new(current)),
        }
    }

    /// Checks a request and turns it into a new `QUEUED` record.
    fn new_record(
        &self,
        principal: &Principal,
        request: SubmitRequest,
        now: DateTime<Utc>,
    ) -> Result<AsyncQuery> {
        if request.query.trim().is_empty() {
            return Err(Error::invalid("the query is empty"));
        }
        self.executor.validate(&request).map_err(Error::invalid)?;
        let config = &self.config;
        let max_run_time = request
            .max_run_time
            .map_or(config.max_run_time, |d| d.min(config.max_run_time));
        if max_run_time.is_zero() {
            return Err(Error::invalid("max_run_time must be above zero"));
        }
        let async_after = request
            .async_after
            .unwrap_or(config.default_async_after)
            .min(config.max_async_after);
        Ok(AsyncQuery {
            id: request.id.unwrap_or_else(Uuid::new_v4),
            kind: request.kind,
            query: request.query,
            query_type: request.query_type,
            principal: principal.clone(),
            status: QueryStatus::Queued,
            async_after,
            max_run_time,
            created_on: now,
            updated_on: now,
            result: None,
            lease: None,
        })
    }

    /// Stores many jobs `QUEUED` in one DAO call (all or nothing); workers
    /// take them in order as slots free up.
    pub(crate) async fn submit_many(
        self: &Arc<Self>,
        principal: &Principal,
        requests: Vec<SubmitRequest>,
    ) -> Result<Vec<AsyncQuery>> {
        if self.closing.is_cancelled() || self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let now = self.clock.now();
        let jobs = requests
            .into_iter()
            .enumerate()
            .map(|(i, request)| {
                self.new_record(principal, request, now)
                    .map_err(|e| match e {
                        Error::InvalidRequest { reason } => {
                            Error::invalid(format!("request {i}: {reason}"))
                        }
                        e => e,
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(id) = crate::dao::first_repeated_job(&jobs) {
            return Err(Error::DuplicateId { id });
        }
        {
            let mut local = self.lock_local();
            if let Some(job) = jobs.iter().find(|j| local.jobs.contains_key(&j.id)) {
                return Err(Error::DuplicateId { id: job.id });
            }
            if local.queued + jobs.len() > self.config.max_queued {
                return Err(Error::QueueFull {
                    limit: self.config.max_queued,
                });
            }
            local.queued += jobs.len();
            for job in &jobs {
                let entry = LocalJob::new(Arc::new(job.clone()), self.shutdown.child_token(), true);
                local.jobs.insert(job.id, entry);
            }
        }
        if let Err(e) = self.dao.create_many(&jobs).await {
            for job in &jobs {
                self.forget(job.id);
            }
            return Err(e);
        }
        self.announce(&jobs);
        if self.slots.available_permits() > 0 {
            self.wake_dispatcher.notify_one();
        }
        Ok(jobs)
    }

    pub(crate) async fn submit(
        self: &Arc<Self>,
        principal: &Principal,
        request: SubmitRequest,
    ) -> Result<AsyncQuery> {
        if self.closing.is_cancelled() || self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let now = self.clock.now();
        let mut job = self.new_record(principal, request, now)?;
        let id = job.id;
        let async_after = job.async_after;
        let config = &self.config;

        // Take a worker slot (only when nobody older waits, to keep FIFO) or
        // a place in the queue, before anything is stored.
        let cancel = self.shutdown.child_token();
        let (permit, job, rx) = {
            let mut local = self.lock_local();
            if local.jobs.contains_key(&id) {
                return Err(Error::DuplicateId { id });
            }
            let permit = if local.queued == 0 {
                Arc::clone(&self.slots).try_acquire_owned().ok()
            } else {
                None
            };
            if permit.is_some() {
                // Created directly as PROCESSING: no extra round trip to claim it.
                job.status = QueryStatus::Processing;
                job.lease = Some(self.lease(now));
            } else if local.queued >= config.max_queued {
                return Err(Error::QueueFull {
                    limit: config.max_queued,
                });
            } else {
                local.queued += 1;
            }
            let job = Arc::new(job);
            let mut entry = LocalJob::new(Arc::clone(&job), cancel.clone(), permit.is_none());
            // Follow the job from before it can change, unless not waiting.
            let rx = (!async_after.is_zero()).then(|| entry.subscribe());
            local.jobs.insert(id, entry);
            (permit, job, rx)
        };
        if let Err(e) = self.dao.create(&job).await {
            self.forget(id);
            return Err(e);
        }
        self.announce([&*job]);
        match permit {
            Some(permit) => self.spawn_worker(Arc::clone(&job), cancel, permit),
            // With every slot busy, the next worker to finish claims the job
            // (workers claim before releasing their slot), so waking the
            // dispatcher would be a wasted hand-off.
            None if self.slots.available_permits() > 0 => self.wake_dispatcher.notify_one(),
            None => {}
        }
        let Some(mut rx) = rx else {
            return Ok(AsyncQuery::clone(&job));
        };
        drop(job);
        let deadline = Instant::now() + async_after;
        match follow_local(&mut rx, deadline).await {
            Some(latest) => Ok(latest),
            // Another instance took the job (this one is submit-only or
            // busy): follow it through the DAO for the rest of the wait.
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait(principal, id, left).await
            }
        }
    }

    pub(crate) async fn get(&self, principal: &Principal, id: Uuid) -> Result<AsyncQuery> {
        self.dao
            .get(id)
            .await?
            .filter(|job| job.is_visible_to(principal, &self.config.admin_role))
            .ok_or(Error::NotFound { id })
    }

    pub(crate) async fn wait(
        &self,
        principal: &Principal,
        id: Uuid,
        timeout: Duration,
    ) -> Result<AsyncQuery> {
        let deadline = Instant::now() + timeout;
        loop {
            let rx = self.lock_local().jobs.get_mut(&id).map(LocalJob::subscribe);
            if let Some(mut rx) = rx {
                if !rx
                    .borrow()
                    .is_visible_to(principal, &self.config.admin_role)
                {
                    return Err(Error::NotFound { id });
                }
                if let Some(latest) = follow_local(&mut rx, deadline).await {
                    return Ok(latest);
                }
                // The job left this instance's table without a terminal
                // status: read the DAO instead.
            }
            // Registered before reading, so a change pushed in between is
            // not missed.
            let changed = self.remote_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let job = self.get(principal, id).await?;
            let now = Instant::now();
            if job.status.is_terminal() || now >= deadline {
                return Ok(job);
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline.min(now + self.config.poll_interval)) => {}
                () = changed => {}
            }
        }
    }

    pub(crate) async fn cancel(&self, principal: &Principal, id: Uuid) -> Result<CancelOutcome> {
        let mut job = self.get(principal, id).await?;
        loop {
            let now = self.clock.now();
            let from = match job.status {
                status if status.is_terminal() => return Ok(CancelOutcome::AlreadyFinished(job)),
                QueryStatus::Cancelled => {
                    self.fire(id);
                    return Ok(CancelOutcome::Cancelled(self.settle_local(job).await));
                }
                status => status,
            };
            match self
                .transition(id, StatusChange::new(from, QueryStatus::Cancelled, now))
                .await?
            {
                Cas::Conflict(current) => job = *current,
                Cas::Applied(cancelled) if from == QueryStatus::Queued => {
                    // Nobody runs a job that never left the queue: finish the
                    // cancellation here.
                    let done =
                        StatusChange::new(QueryStatus::Cancelled, QueryStatus::CancelComplete, now)
                            .with_result(QueryResult::message(now, "cancelled before it started"));
                    let record = match self.transition(id, done).await? {
                        Cas::Applied(record) => record,
                        Cas::Conflict(_) => cancelled,
                    };
                    return Ok(CancelOutcome::Cancelled(AsyncQuery::clone(&record)));
                }
                Cas::Applied(cancelled) => {
                    self.fire(id);
                    let cancelled = AsyncQuery::clone(&cancelled);
                    return Ok(CancelOutcome::Cancelled(self.settle_local(cancelled).await));
                }
            }
        }
    }

    /// Fires the cancellation token of a local job, if any.
    fn fire(&self, id: Uuid) {
        if let Some(entry) = self.lock_local().jobs.get(&id) {
            entry.cancel.cancel();
        }
    }

    /// Waits (up to the cancel grace) for a local job to stop; a job running
    /// elsewhere is returned as it is.
    async fn settle_local(&self, job: AsyncQuery) -> AsyncQuery {
        // Only a job this instance runs (or has claimed) can be waited for
        // here; a local entry for a job still queued here may be running
        // elsewhere by now.
        let rx = self
            .lock_local()
            .jobs
            .get_mut(&job.id)
            .filter(|j| !j.queued || self.claimed_here(&j.latest))
            .map(LocalJob::subscribe);
        let Some(mut rx) = rx else {
            return job;
        };
        follow_local(&mut rx, Instant::now() + self.config.cancel_grace)
            .await
            .unwrap_or(job)
    }

    /// Runs `job` on a worker task that holds `permit`; when the job has
    /// settled, the worker claims the next queued job with the same slot, so a
    /// busy queue needs no dispatcher round trip per job.
    fn spawn_worker(
        self: &Arc<Self>,
        job: Arc<AsyncQuery>,
        cancel: CancellationToken,
        permit: OwnedSemaphorePermit,
    ) {
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let (mut job, mut cancel) = (job, cancel);
            loop {
                let outcome = inner.execute(&job, cancel).await;
                if !inner.settle(&job, outcome).await {
                    break;
                }
                match inner.claim_one().await {
                    Some((next, token)) => (job, cancel) = (next, token),
                    None => break,
                }
            }
            drop(permit);
            inner.wake_dispatcher.notify_one();
        });
    }

    /// The oldest job claimed ahead, if any.
    fn pop_ready(&self) -> Option<(Arc<AsyncQuery>, CancellationToken)> {
        if self.config.claim_batch <= 1 {
            return None;
        }
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// Claims the oldest queued job for this instance, if any (with
    /// `claim_batch > 1`, from the jobs claimed ahead first, and claiming a
    /// batch when none are left).
    async fn claim_one(&self) -> Option<(Arc<AsyncQuery>, CancellationToken)> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        // Claimed ahead, so they run even while shutting down (within its
        // grace period), like the jobs already running.
        if let Some(next) = self.pop_ready() {
            return Some(next);
        }
        if self.closing.is_cancelled() || !self.recovered.load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        let now = self.clock.now();
        let claimed = match self
            .dao
            .claim(&self.lease(now), self.config.claim_batch.max(1), now)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claiming queued jobs failed; retrying at the next poll");
                return None;
            }
        };
        let mut adopted = claimed.into_iter().filter_map(|job| {
            let job = Arc::new(job);
            let token = self.observe(Some(QueryStatus::Queued), Arc::clone(&job), true)?;
            Some((job, token))
        });
        let first = adopted.next();
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(adopted);
        first
    }

    /// Claims queued jobs while worker slots are free, until told to stop.
    async fn dispatcher(self: Arc<Self>) {
        // First end what a previous run of this instance left running, and
        // only then claim: a job claimed meanwhile would look interrupted.
        match self.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                jobs = n,
                "ended jobs interrupted by a restart of this instance"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "recovering jobs after a restart failed; the cleaner ends them after their lease")
            }
        }
        self.recovered
            .store(true, std::sync::atomic::Ordering::Release);
        loop {
            self.fill_slots().await;
            tokio::select! {
                // Job tokens are children of the shutdown token: they fire too.
                () = self.shutdown.cancelled() => return,
                () = self.wake_dispatcher.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    async fn fill_slots(self: &Arc<Self>) {
        loop {
            let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
                return;
            };
            let Some((job, cancel)) = self.claim_one().await else {
                return;
            };
            self.spawn_worker(job, cancel, permit);
        }
    }

    /// Reacts to status changes the DAO pushes (if it can): wakes the
    /// dispatcher for new jobs, stops local jobs cancelled elsewhere, and
    /// wakes waiters following jobs that run elsewhere. Polling stays the
    /// fallback, so a lost signal only costs latency.
    async fn listener(self: Arc<Self>) {
        let mut signals = match self.dao.watch().await {
            Ok(Some(signals)) => signals,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for job changes; polling only");
                return;
            }
        };
        loop {
            let signal = tokio::select! {
                () = self.shutdown.cancelled() => return,
                signal = signals.next() => signal,
            };
            match signal {
                Some(Ok(signal)) => {
                    match signal.status {
                        QueryStatus::Queued if self.slots.available_permits() > 0 => {
                            self.wake_dispatcher.notify_one();
                        }
                        QueryStatus::Cancelled if self.runs_here(signal.id) => self.fire(signal.id),
                        _ => {}
                    }
                    // A job queued here left the queue elsewhere: stop
                    // tracking it, so its waiters follow the DAO (and these
                    // signals) instead of a local state that will not change.
                    // If this instance claimed it, the claim re-adopts it.
                    if signal.status != QueryStatus::Queued
                        && self
                            .lock_local()
                            .jobs
                            .get(&signal.id)
                            .is_some_and(|j| j.queued)
                    {
                        self.forget(signal.id);
                    }
                    self.remote_changed.notify_waiters();
                }
                Some(Err(e)) => tracing::debug!(error = %e, "a job change signal was lost"),
                None => {
                    tracing::warn!("the job change stream ended; polling only");
                    return;
                }
            }
        }
    }

    /// Renews the leases of running jobs and stops those cancelled elsewhere.
    async fn heartbeat(self: Arc<Self>) {
        let period = self.config.lease / 3;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            // Running jobs get their leases renewed; queued ones are checked
            // too, so a job another instance claimed leaves this instance's
            // queue count (a submit-only instance never claims its own).
            let (running, queued): (Vec<Uuid>, std::collections::HashSet<Uuid>) = {
                let local = self.lock_local();
                let mut running = Vec::new();
                let mut queued = std::collections::HashSet::new();
                for (id, job) in &local.jobs {
                    if job.queued {
                        queued.insert(*id);
                    } else {
                        running.push(*id)
                    }
                }
                (running, queued)
            };
            if running.is_empty() && queued.is_empty() {
                continue;
            }
            let all: Vec<Uuid> = running.iter().chain(&queued).copied().collect();
            let expires_at = self.clock.now() + to_delta(self.config.lease);
            match self
                .dao
                .renew_leases(self.config.instance_id, &all, expires_at)
                .await
            {
                Ok(statuses) => {
                    for (id, status) in statuses {
                        if status == QueryStatus::Cancelled {
                            self.fire(id);
                        }
                        if status != QueryStatus::Queued
                            && queued.contains(&id)
                            && !self.runs_here(id)
                        {
                            self.forget(id);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing job leases failed"),
            }
        }
    }
}
