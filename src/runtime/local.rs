//! [`LocalJobs`]: the local job table behind a lock, with the signal a
//! draining `shutdown` waits on, and [`JobGuard`], which releases a job's
//! entry when its worker ends for any reason.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::table::{Emit, JobTable, Mirror};
use crate::model::{AsyncQuery, QueryStatus};
use crate::progress::Progress;

pub(super) struct LocalJobs {
    table: Mutex<JobTable>,
    /// This instance, the owner of the leases it takes.
    instance: Uuid,
    /// Signalled whenever a job leaves the table while `draining`.
    left: Notify,
    /// Set by a `shutdown` waiting for running jobs; until then, a job
    /// leaving the table notifies nobody (it would take `left`'s lock).
    draining: AtomicBool,
}

/// Publishes the table's running and queued counts (feature `metrics`).
pub(super) fn counted(table: &JobTable) {
    crate::metrics::local(table.running_count(), table.queued());
}

impl LocalJobs {
    pub(super) fn new(instance: Uuid) -> Self {
        LocalJobs {
            table: Mutex::default(),
            instance,
            left: Notify::new(),
            draining: AtomicBool::new(false),
        }
    }

    /// The table, locked. Every critical section is a few map operations
    /// that cannot panic half-way, so a poisoned lock still holds
    /// consistent data.
    pub(super) fn lock(&self) -> MutexGuard<'_, JobTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn departed(&self) {
        if self.draining.load(Ordering::Acquire) {
            self.left.notify_waiters();
        }
    }

    /// Mirrors a change the DAO applied (see [`JobTable::mirror`]); events
    /// go to `emit` under the lock, so every job's events stay in order.
    /// Returns the job's token if it is local.
    pub(super) fn mirror(
        &self,
        from: Option<QueryStatus>,
        job: Arc<AsyncQuery>,
        how: Mirror,
        new_token: impl FnOnce() -> CancellationToken,
        emit: Emit<'_>,
    ) -> Option<CancellationToken> {
        let mut table = self.lock();
        let mirrored = table.mirror(from, job, how, self.instance, new_token, emit);
        counted(&table);
        drop(table);
        if mirrored.left {
            self.departed();
        }
        mirrored.token
    }

    /// Sets the progress of a job running here, for its waiters, and
    /// emits it through `emit` under the lock (so never after the job's
    /// end).
    pub(super) fn progressed(&self, id: Uuid, progress: &Progress, emit: impl FnOnce(&AsyncQuery)) {
        let mut table = self.lock();
        if let Some(job) = table.progressed(id, progress) {
            emit(&job);
        }
    }

    /// Drops a job's entry without a terminal status (it runs elsewhere,
    /// or its record could not be written); waiters fall back to the DAO.
    pub(super) fn forget(&self, id: Uuid) {
        self.remove_if(id, |_| true);
    }

    /// Drops a job's entry if it still waits for a slot here (it left the
    /// queue elsewhere); checked and removed under one lock, so a claim
    /// mirrored meanwhile is never dropped.
    pub(super) fn forget_queued(&self, id: Uuid) {
        self.remove_if(id, |table| table.is_queued(id));
    }

    /// Removes a job's entry if `applies` to the table, under one lock.
    fn remove_if(&self, id: Uuid, applies: impl FnOnce(&JobTable) -> bool) {
        let mut table = self.lock();
        let removed = applies(&table) && table.remove(id);
        counted(&table);
        drop(table);
        if removed {
            self.departed();
        }
    }

    /// Fires the cancellation token of a local job, if any.
    pub(super) fn fire(&self, id: Uuid) {
        if let Some(token) = self.lock().token(id) {
            token.cancel();
        }
    }

    /// Fires the cancellation token of every local job (the service stops).
    pub(super) fn fire_all(&self) {
        self.lock().fire_all();
    }

    /// Whether this instance is running the job right now.
    pub(super) fn runs(&self, id: Uuid) -> bool {
        self.lock().runs(id)
    }

    /// Whether the job waits for a slot here.
    pub(super) fn is_queued(&self, id: Uuid) -> bool {
        self.lock().is_queued(id)
    }

    /// Jobs waiting for a slot here.
    pub(super) fn queued(&self) -> usize {
        self.lock().queued()
    }

    pub(super) fn running(&self) -> Vec<Uuid> {
        self.lock().running()
    }

    pub(super) fn running_and_queued(&self) -> (Vec<Uuid>, HashSet<Uuid>) {
        self.lock().running_and_queued()
    }

    pub(super) fn subscribe(&self, id: Uuid) -> Option<watch::Receiver<Arc<AsyncQuery>>> {
        self.lock().subscribe(id)
    }

    /// Follows a job this instance runs or has claimed.
    pub(super) fn subscribe_if_ours(&self, id: Uuid) -> Option<watch::Receiver<Arc<AsyncQuery>>> {
        self.lock().subscribe_if_ours(id, self.instance)
    }

    /// Emits the creation of jobs just stored (see [`JobTable::announce`]).
    pub(super) fn announce<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a AsyncQuery>,
        emit: Emit<'_>,
    ) {
        self.lock().announce(jobs, emit);
    }

    /// Waits until no job runs here, or `deadline`.
    pub(super) async fn drain(&self, deadline: Instant) {
        self.draining.store(true, Ordering::Release);
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if !self.lock().any_running() {
                return;
            }
            if tokio::time::timeout_at(deadline, left).await.is_err() {
                return;
            }
        }
    }
}

/// Held by whoever is responsible for a running job (its worker, the
/// claimed-ahead queue, the batcher). Dropped without
/// [`release`](Self::release) (a worker that ends early, panics, or is
/// dropped with the service) it removes the job's entry, so the heartbeat
/// stops renewing a lease nobody honours any more and the job is ended by
/// the cleaner after the lease.
pub(super) struct JobGuard {
    /// `None` once released.
    jobs: Option<Arc<LocalJobs>>,
    id: Uuid,
}

impl JobGuard {
    pub(super) fn new(jobs: &Arc<LocalJobs>, id: Uuid) -> Self {
        JobGuard {
            jobs: Some(Arc::clone(jobs)),
            id,
        }
    }

    /// The job's ending has been dealt with (its entry is gone): nothing
    /// left to release.
    pub(super) fn release(mut self) {
        self.jobs = None;
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if let Some(jobs) = self.jobs.take() {
            jobs.forget(self.id);
        }
    }
}
