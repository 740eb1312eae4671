//! Dispatch: worker slots, claims of queued jobs (and the jobs claimed
//! ahead), the dispatcher that fills idle slots, and the worker loop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::clock::to_delta;
use super::local::JobGuard;
use super::table::Mirror;
use crate::dao::Claim;
use crate::model::{AsyncQuery, Lease, QueryStatus};

/// What a slot runs next: a claimed job, or nothing (the slot is free).
pub(super) type Next = Option<(Claimed, OwnedSemaphorePermit)>;

/// What the write of a finished run tells the task that ran it.
#[derive(Default)]
pub(super) struct Ran {
    /// The job its slot runs next.
    pub(super) next: Next,
    /// The job's final record, when the write applied it (`None` when its
    /// ending is being followed up elsewhere, or was not written).
    pub(super) record: Option<Arc<AsyncQuery>>,
}

/// A job this instance runs (or is about to), with what its worker needs.
pub(super) struct Claimed {
    pub(super) job: Arc<AsyncQuery>,
    pub(super) token: CancellationToken,
    pub(super) guard: JobGuard,
    /// The jobs claimed in the same DAO call, while they execute.
    pub(super) siblings: Siblings,
}

pub(super) struct Dispatch {
    slots: Arc<Semaphore>,
    /// Wakes the dispatcher: a slot may be free, or a job may wait.
    wake: Notify,
    /// Jobs claimed ahead (`claim_batch > 1`), `PROCESSING` here, waiting
    /// for a worker, oldest first.
    ready: Mutex<VecDeque<Claimed>>,
    /// How many queued jobs each free slot claims.
    batch: usize,
    /// Set once start-up recovery is done; nothing is claimed before.
    recovered: AtomicBool,
    /// Another instance queued a job while every slot here was busy: the
    /// next slot that frees up without work should look for it.
    remote_work: AtomicBool,
    /// When jobs queued here for a retry fall due, soonest first: the
    /// dispatcher looks for work then, not only every poll interval.
    retries_due: Mutex<BinaryHeap<Reverse<Instant>>>,
}

/// Counts the jobs of one claim that are still executing, so that a writer
/// waits for the siblings of the job it writes: jobs that start together
/// tend to finish together, and then share one write.
pub(super) struct Siblings {
    count: Option<Arc<AtomicUsize>>,
    executing: bool,
}

impl Siblings {
    /// A job claimed alone (or started by `submit`).
    pub(super) fn none() -> Self {
        Siblings {
            count: None,
            executing: false,
        }
    }

    fn of(count: &Arc<AtomicUsize>) -> Self {
        Siblings {
            count: Some(Arc::clone(count)),
            executing: true,
        }
    }

    /// This job's executor has returned.
    pub(super) fn finished(&mut self) {
        if std::mem::take(&mut self.executing)
            && let Some(count) = &self.count
        {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether another job of the claim still executes.
    pub(super) fn others_executing(&self) -> bool {
        let own = usize::from(self.executing);
        self.count
            .as_ref()
            .is_some_and(|count| count.load(Ordering::Acquire) > own)
    }
}

impl Drop for Siblings {
    fn drop(&mut self) {
        self.finished();
    }
}

impl Dispatch {
    pub(super) fn new(pool_size: usize, claim_batch: usize) -> Self {
        Dispatch {
            slots: Arc::new(Semaphore::new(pool_size)),
            wake: Notify::new(),
            ready: Mutex::default(),
            batch: claim_batch.max(1),
            recovered: AtomicBool::new(false),
            remote_work: AtomicBool::new(false),
            retries_due: Mutex::default(),
        }
    }

    /// A job was queued for a retry due at `due`: the dispatcher looks for
    /// work then.
    pub(super) fn retry_due(&self, due: Instant) {
        self.retries_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Reverse(due));
        self.wake();
    }

    /// How long the dispatcher sleeps without a wake-up: until the next
    /// retry falls due, at most `poll_interval`.
    fn idle_wait(&self, poll_interval: Duration) -> Duration {
        let mut due = self.retries_due.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while due.peek().is_some_and(|Reverse(at)| *at <= now) {
            due.pop();
        }
        due.peek()
            .map_or(poll_interval, |Reverse(at)| (*at - now).min(poll_interval))
    }

    /// A free worker slot, if any.
    pub(super) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    pub(super) fn has_free_slot(&self) -> bool {
        self.slots.available_permits() > 0
    }

    /// Asks the dispatcher to look for work.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    /// A job was queued elsewhere: the dispatcher claims it if a slot is
    /// free, or the next slot to free up does.
    pub(super) fn remote_job_queued(&self) {
        if self.has_free_slot() {
            self.wake();
        } else {
            self.remote_work.store(true, Ordering::Release);
        }
    }

    /// Slots were freed without a job to run: wakes the dispatcher if work
    /// may wait (`local_queued` jobs queued here, or a job queued elsewhere
    /// while every slot was busy).
    pub(super) fn wake_if_work_waits(&self, local_queued: usize) {
        if local_queued > 0 || self.remote_work.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// How many queued jobs to claim for `free` slots (none while closing,
    /// or before start-up recovery is done).
    pub(super) fn claim_limit(&self, free: usize, accepting: bool) -> usize {
        if accepting && self.recovered.load(Ordering::Acquire) {
            free * self.batch
        } else {
            0
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<Claimed>> {
        // Pushes and pops cannot panic half-way.
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `n` jobs claimed ahead, oldest first.
    pub(super) fn take_ready(&self, n: usize) -> Vec<Claimed> {
        if self.batch == 1 || n == 0 {
            return Vec::new();
        }
        let mut ready = self.ready();
        let n = n.min(ready.len());
        ready.drain(..n).collect()
    }

    /// Jobs claimed ahead of a free slot wait here, oldest first.
    pub(super) fn park(&self, jobs: impl IntoIterator<Item = Claimed>) {
        let mut jobs = jobs.into_iter().peekable();
        if jobs.peek().is_some() {
            self.ready().extend(jobs);
        }
    }

    /// The oldest job claimed ahead, if any.
    pub(super) fn pop_ready(&self) -> Option<Claimed> {
        if self.batch == 1 {
            return None;
        }
        self.ready().pop_front()
    }

    pub(super) fn mark_recovered(&self) {
        self.recovered.store(true, Ordering::Release);
    }
}

impl Runtime {
    /// This instance's lease on a job it starts at `now`.
    pub(super) fn lease(&self, now: DateTime<Utc>) -> Lease {
        Lease {
            owner: self.config.instance_id,
            expires_at: now + to_delta(self.config.lease),
        }
    }

    /// A claim of up to `limit` jobs now, under a fresh lease and the
    /// configured per-principal running limit.
    pub(super) fn claim_of(&self, limit: usize) -> Claim {
        let now = self.clock.now();
        let claim = Claim::new(self.lease(now), limit, now);
        match self.config.max_running_per_principal {
            Some(max) => claim.with_max_running_per_principal(max),
            None => claim,
        }
    }

    /// Runs `first` on a worker task that holds `permit`. A worker that
    /// writes its own job's record also claims the next job for its slot
    /// in the same call, and runs it.
    pub(super) fn spawn_worker(self: &Arc<Self>, first: Claimed, permit: OwnedSemaphorePermit) {
        let runtime = Arc::clone(self);
        self.tasks
            .spawn(async move { runtime.work(first, permit).await });
    }

    async fn work(self: Arc<Self>, first: Claimed, permit: OwnedSemaphorePermit) {
        let mut next = Some((first, permit));
        while let Some((claimed, permit)) = next.take() {
            next = self.run_one(claimed, permit).await.next;
        }
    }

    /// Runs one job in the slot `permit` holds and writes how it ended.
    /// Returns the job its slot runs next, if any, and the job's final
    /// record when this write learnt it.
    /// In a `run` span (see `traced!`).
    pub(super) async fn run_one(
        self: &Arc<Self>,
        claimed: Claimed,
        permit: OwnedSemaphorePermit,
    ) -> Ran {
        let span = tracing::info_span!(
            "run",
            job = %claimed.job.id,
            principal = %claimed.job.principal.name
        );
        traced!(span, self.run_claimed(claimed, permit))
    }

    async fn run_claimed(self: &Arc<Self>, claimed: Claimed, permit: OwnedSemaphorePermit) -> Ran {
        let Claimed {
            job,
            token,
            guard,
            mut siblings,
        } = claimed;
        let outcome = self.execute(&job, token).await;
        siblings.finished();
        // `None`: the service stopped; the guard lets the job go.
        let Some(outcome) = outcome else {
            return Ran::default();
        };
        match self.settlement(job, outcome, guard) {
            Some((settlement, change)) => self.finish(settlement, change, permit, &siblings).await,
            None => Ran::default(),
        }
    }

    /// Claimed records as jobs to run here, mirrored as they are taken.
    pub(super) fn adopt(&self, claimed: Vec<AsyncQuery>) -> impl Iterator<Item = Claimed> + '_ {
        let count = (claimed.len() > 1).then(|| Arc::new(AtomicUsize::new(claimed.len())));
        claimed.into_iter().filter_map(move |job| {
            let job = Arc::new(job);
            let token = self.mirror(Some(QueryStatus::Queued), Arc::clone(&job), Mirror::Claim)?;
            let guard = JobGuard::new(&self.jobs, job.id);
            let siblings = match &count {
                Some(count) => Siblings::of(count),
                None => Siblings::none(),
            };
            Some(Claimed {
                job,
                token,
                guard,
                siblings,
            })
        })
    }

    /// Recovers this instance's interrupted jobs, then claims queued jobs
    /// while worker slots are free, until the service stops.
    pub(super) async fn dispatcher(self: Arc<Self>) {
        // First end what a previous run of this instance left running, and
        // only then claim: a job claimed meanwhile would look interrupted.
        // A service dropped before this task first ran must not recover: a
        // new run of the same instance may be running those jobs already.
        let recovered = tokio::select! {
            biased;
            () = self.tasks.stopped() => return,
            recovered = self.recover() => recovered,
        };
        match recovered {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                jobs = n,
                "ended (or queued for a retry) jobs interrupted by a restart of this instance"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "recovering jobs after a restart failed; the cleaner ends them after their lease")
            }
        }
        self.dispatch.mark_recovered();
        loop {
            self.fill_slots().await;
            let wait = self.dispatch.idle_wait(self.config.poll_interval);
            tokio::select! {
                // Job tokens are children of the stop token: they fire too.
                () = self.tasks.stopped() => return,
                () = self.dispatch.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims jobs for every free slot in one DAO call and starts them,
    /// until no slot is free or nothing is queued.
    async fn fill_slots(self: &Arc<Self>) {
        loop {
            let mut permits: Vec<_> = std::iter::from_fn(|| self.dispatch.try_slot()).collect();
            if permits.is_empty() {
                return;
            }
            let mut jobs = self.dispatch.take_ready(permits.len());
            let limit = self
                .dispatch
                .claim_limit(permits.len() - jobs.len(), self.tasks.accepting());
            if limit > 0 {
                let claim = self.claim_of(limit);
                let claim = self.dao.claim(&claim);
                let span = tracing::info_span!("claim", limit, claimed = tracing::field::Empty);
                match traced!(span.clone(), claim) {
                    Ok(claimed) => {
                        span.record("claimed", claimed.len());
                        jobs.extend(self.adopt(claimed));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming queued jobs failed; retrying at the next poll");
                    }
                }
            }
            if jobs.is_empty() {
                return;
            }
            let idle = permits.len() > jobs.len();
            let mut jobs = jobs.into_iter();
            // Permits first: `zip` takes from its first iterator before it
            // finds the second empty, and a surplus permit is only dropped
            // (a slot freed) where a surplus job would be lost.
            for (permit, claimed) in permits.drain(..).zip(jobs.by_ref()) {
                self.spawn_worker(claimed, permit);
            }
            self.dispatch.park(jobs);
            if idle {
                return;
            }
        }
    }
}
