//! Dispatch: worker slots, claims of queued jobs (and the jobs claimed
//! ahead), the dispatcher that fills idle slots, and the worker loop.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
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
}

pub(super) struct Dispatch {
    slots: Arc<Semaphore>,
    /// Wakes the dispatcher: a slot may be free, or a job may wait.
    wake: Notify,
    /// Jobs claimed ahead (`claim_batch > 1`), `PROCESSING` here, waiting
    /// for a worker, oldest first.
    ready: Mutex<VecDeque<Claimed>>,
    /// How many queued jobs one claim takes.
    batch: usize,
    /// Set once start-up recovery is done; nothing is claimed before.
    recovered: AtomicBool,
}

impl Dispatch {
    pub(super) fn new(pool_size: usize, claim_batch: usize) -> Self {
        Dispatch {
            slots: Arc::new(Semaphore::new(pool_size)),
            wake: Notify::new(),
            ready: Mutex::default(),
            batch: claim_batch.max(1),
            recovered: AtomicBool::new(false),
        }
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

    /// Whether workers claim several jobs at a time (and records are
    /// written in batches).
    pub(super) fn batching(&self) -> bool {
        self.batch > 1
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<Claimed>> {
        // Pushes and pops cannot panic half-way.
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest job claimed ahead, if any.
    fn pop_ready(&self) -> Option<Claimed> {
        if !self.batching() {
            return None;
        }
        self.ready().pop_front()
    }

    pub(super) fn mark_recovered(&self) {
        self.recovered.store(true, Ordering::Release);
    }

    fn is_recovered(&self) -> bool {
        self.recovered.load(Ordering::Acquire)
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

    /// Runs `first` on a worker task that holds `permit`; when a job has
    /// settled, the worker claims the next queued job with the same slot,
    /// so a busy queue needs no dispatcher round trip per job.
    pub(super) fn spawn_worker(self: &Arc<Self>, first: Claimed, permit: OwnedSemaphorePermit) {
        let runtime = Arc::clone(self);
        self.tasks.spawn(async move {
            let mut next = Some(first);
            while let Some(Claimed { job, token, guard }) = next.take() {
                // `None`: the service stopped; the guard lets the job go.
                let Some(outcome) = runtime.execute(&job, token).await else {
                    break;
                };
                if !runtime.settle_or_hand_over(job, outcome, guard).await {
                    break;
                }
                next = runtime.claim_one().await;
            }
            drop(permit);
            runtime.dispatch.wake();
        });
    }

    /// Claims the oldest queued job for this instance, if any (with
    /// `claim_batch > 1`, from the jobs claimed ahead first, and claiming a
    /// batch when none are left).
    async fn claim_one(&self) -> Option<Claimed> {
        if self.tasks.is_stopped() {
            return None;
        }
        // Claimed ahead, so they run even while shutting down (within its
        // grace period), like the jobs already running.
        if let Some(next) = self.dispatch.pop_ready() {
            return Some(next);
        }
        if !self.tasks.accepting() || !self.dispatch.is_recovered() {
            return None;
        }
        let now = self.clock.now();
        let claimed = match self
            .dao
            .claim(&self.lease(now), self.dispatch.batch, now)
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
            let token = self.mirror(Some(QueryStatus::Queued), Arc::clone(&job), Mirror::Claim)?;
            let guard = JobGuard::new(&self.jobs, job.id);
            Some(Claimed { job, token, guard })
        });
        let first = adopted.next();
        if self.dispatch.batching() {
            self.dispatch.ready().extend(adopted);
        }
        first
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

    async fn fill_slots(self: &Arc<Self>) {
        while let Some(permit) = self.dispatch.try_slot() {
            let Some(claimed) = self.claim_one().await else {
                return;
            };
            self.spawn_worker(claimed, permit);
        }
    }
}
