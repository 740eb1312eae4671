//! Dispatch: worker slots, claims of queued jobs (and the jobs claimed
//! ahead), the dispatcher that fills idle slots, and the worker loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::clock::to_delta;
use super::local::JobGuard;
use super::table::Mirror;
use crate::model::{AsyncQuery, Lease, QueryStatus};

/// A job this instance runs (or is about to), with what its worker needs.
pub(super) struct Claimed {
    pub(super) job: Arc<AsyncQuery>,
    pub(super) token: CancellationToken,
    pub(super) guard: JobGuard,
    /// Counts the job as executing from its claim until its executor
    /// returns, so that a writer waits for siblings claimed with it.
    pub(super) executing: Executing,
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
    /// Jobs claimed here whose executor has not returned yet.
    executing: Arc<AtomicUsize>,
}

/// Counts a job as executing while it lives.
pub(super) struct Executing(Arc<AtomicUsize>);

impl Drop for Executing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
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
            executing: Arc::default(),
        }
    }

    /// Counts a job as executing until the guard is dropped.
    pub(super) fn executing(&self) -> Executing {
        self.executing.fetch_add(1, Ordering::Acquire);
        Executing(Arc::clone(&self.executing))
    }

    /// Whether a job claimed here has not finished executing.
    pub(super) fn any_executing(&self) -> bool {
        self.executing.load(Ordering::Acquire) > 0
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
            let Claimed {
                job,
                token,
                guard,
                executing,
            } = claimed;
            let outcome = self.execute(&job, token).await;
            drop(executing);
            // `None`: the service stopped; the guard lets the job go.
            let Some(outcome) = outcome else {
                return;
            };
            let Some((settlement, change)) = self.settlement(job, outcome, guard) else {
                continue;
            };
            next = self.finish(settlement, change, permit).await;
        }
    }

    /// Claimed records as jobs to run here.
    pub(super) fn adopt(&self, claimed: Vec<AsyncQuery>) -> Vec<Claimed> {
        claimed
            .into_iter()
            .filter_map(|job| {
                let job = Arc::new(job);
                let token =
                    self.mirror(Some(QueryStatus::Queued), Arc::clone(&job), Mirror::Claim)?;
                let guard = JobGuard::new(&self.jobs, job.id);
                let executing = self.dispatch.executing();
                Some(Claimed {
                    job,
                    token,
                    guard,
                    executing,
                })
            })
            .collect()
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
                "ended jobs interrupted by a restart of this instance"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "recovering jobs after a restart failed; the cleaner ends them after their lease")
            }
        }
        self.dispatch.mark_recovered();
        loop {
            self.fill_slots().await;
            tokio::select! {
                // Job tokens are children of the stop token: they fire too.
                () = self.tasks.stopped() => return,
                () = self.dispatch.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
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
                let now = self.clock.now();
                match self.dao.claim(&self.lease(now), limit, now).await {
                    Ok(claimed) => jobs.extend(self.adopt(claimed)),
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
