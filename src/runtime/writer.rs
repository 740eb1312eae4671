//! The writer: finished jobs' records written with group commit when the
//! store is slow (see [`BATCH_ABOVE`]). A job that finishes while no write
//! is in flight is written at once by its own task (no added latency for a
//! lone job); jobs that finish during a write wait and are written together
//! by the next one. With a fast store every job is written at once. Each write also claims
//! queued jobs for the slots the finished jobs free, in the same DAO call
//! ([`update_and_claim`](crate::AsyncApiDao::update_and_claim)): on
//! PostgreSQL one statement and one commit per batch.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot};

use super::Runtime;
use super::dispatch::{Ran, Siblings};
use super::settle::Settlement;
use crate::dao::{CasOutcome, StatusChange};
use crate::model::AsyncQuery;

/// How long a writer may wait for sibling jobs that are still executing,
/// so that jobs which started together are written together (like
/// PostgreSQL's `commit_delay`, which applies only with `commit_siblings`
/// active). A writer with no sibling executing never waits.
const LINGER: std::time::Duration = std::time::Duration::from_micros(30);

/// A finished run on its way to the job store, with the slot it ran in
/// (`None` when the slot already runs the next job, claimed ahead).
struct Finished {
    settlement: Settlement,
    change: StatusChange,
    slot: Option<Slot>,
}

/// A slot freed by a finished run, and where to send its next job (and
/// the run's final record): the task that ran the job waits for it.
struct Slot {
    permit: OwnedSemaphorePermit,
    reply: oneshot::Sender<Ran>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Finished>,
    /// The vector of the last write, emptied, for the next one to take
    /// (so that steady state allocates nothing).
    spare: Vec<Finished>,
    /// A write is in flight.
    writing: bool,
}

impl Queue {
    /// Everything waiting, leaving the spare vector in its place.
    fn take(&mut self) -> Vec<Finished> {
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.waiting, spare)
    }
}

/// Writes faster than this on average are not batched: every job is
/// written at once by its own task, concurrently. Group commit pays only
/// when a write takes long enough for others to queue up behind it (a
/// database round trip), and costs task hand-offs otherwise.
const BATCH_ABOVE: std::time::Duration = std::time::Duration::from_micros(50);

#[derive(Default)]
pub(super) struct Writer {
    queue: Mutex<Queue>,
    /// Wakes the writer task: jobs wait and nobody is writing.
    wake: Notify,
    /// Moving average of how long a write takes, in nanoseconds.
    write_nanos: std::sync::atomic::AtomicU64,
}

/// A write in flight: the jobs it writes. Dropped (however the write
/// ends, a panicking DAO included), it lets the next write start, and wakes
/// the writer task if jobs finished meanwhile.
struct Write<'a> {
    writer: &'a Writer,
    jobs: Vec<Finished>,
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        let mut jobs = std::mem::take(&mut self.jobs);
        jobs.clear();
        let more = {
            let mut queue = self.writer.lock();
            queue.writing = false;
            if queue.spare.capacity() < jobs.capacity() {
                queue.spare = jobs;
            }
            !queue.waiting.is_empty()
        };
        if more {
            self.writer.wake.notify_one();
        }
    }
}

impl Writer {
    /// Whether writes are slow enough to batch (see [`BATCH_ABOVE`]).
    fn batching(&self) -> bool {
        let average = self.write_nanos.load(std::sync::atomic::Ordering::Relaxed);
        u128::from(average) > BATCH_ABOVE.as_nanos()
    }

    /// Adds a write's duration to the moving average (weight 1/8).
    fn record(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering;
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .write_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                Some(average - average / 8 + took / 8)
            });
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Pushes and takes cannot panic half-way.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `finished`; if no write is in flight, starts one of everything
    /// waiting, for the caller to make.
    fn add(&self, finished: Finished) -> Option<Write<'_>> {
        let mut queue = self.lock();
        queue.waiting.push(finished);
        if queue.writing {
            return None;
        }
        queue.writing = true;
        let jobs = std::mem::take(&mut queue.waiting);
        Some(Write { writer: self, jobs })
    }

    /// Starts a write for a lone job if none is in flight and nothing
    /// waits (the caller writes its job alone).
    fn start_alone(&self) -> Option<Write<'_>> {
        let mut queue = self.lock();
        if queue.writing || !queue.waiting.is_empty() {
            return None;
        }
        queue.writing = true;
        Some(Write {
            writer: self,
            jobs: Vec::new(),
        })
    }

    /// Adds `finished` for the writer task to write, waking it unless a
    /// write is in flight (whose end wakes it).
    fn hand_off(&self, finished: Finished) {
        let idle = {
            let mut queue = self.lock();
            queue.waiting.push(finished);
            !queue.writing
        };
        if idle {
            self.wake.notify_one();
        }
    }

    /// Moves what finished since the write in flight started into it.
    fn drain_into(&self, jobs: &mut Vec<Finished>) {
        jobs.append(&mut self.lock().waiting);
    }

    /// Starts a write of everything waiting, unless one is in flight or
    /// nothing waits.
    fn take(&self) -> Option<Write<'_>> {
        let mut queue = self.lock();
        if queue.writing || queue.waiting.is_empty() {
            return None;
        }
        queue.writing = true;
        let jobs = queue.take();
        Some(Write { writer: self, jobs })
    }
}

/// A run's final record as [`Runtime::settle_written`] learns it: at once,
/// or from a follow-up to await.
enum Settled<'a> {
    Now(Option<Arc<AsyncQuery>>),
    Later(futures::future::BoxFuture<'a, Option<Arc<AsyncQuery>>>),
}

impl Settled<'_> {
    async fn record(self) -> Option<Arc<AsyncQuery>> {
        match self {
            Settled::Now(record) => record,
            Settled::Later(follow_up) => follow_up.await,
        }
    }
}

/// What one `update_and_claim` answers.
type Written = crate::error::Result<(Vec<CasOutcome>, Vec<AsyncQuery>)>;

impl Runtime {
    /// Writes finished jobs' `changes` and claims up to `limit` queued jobs
    /// in one DAO call, timed for the writer and traced as a `claim` span.
    async fn write_and_claim(
        &self,
        changes: &[(uuid::Uuid, StatusChange)],
        limit: usize,
    ) -> Written {
        let claim = self.claim_of(limit);
        let span = tracing::info_span!(
            "claim",
            written = changes.len(),
            limit,
            claimed = tracing::field::Empty
        );
        let start = std::time::Instant::now();
        let written = traced!(span.clone(), self.dao.update_and_claim(changes, &claim));
        self.writer.record(start.elapsed());
        if let Ok((_, claimed)) = &written {
            span.record("claimed", claimed.len());
        }
        written
    }

    /// Hands a finished run to the writer and returns the job claimed for
    /// its slot, if any, to run next, with the run's final record. If no
    /// write was in flight, this task writes (with whatever else waits, and
    /// with sibling jobs that finish within [`LINGER`]); otherwise it waits
    /// for the write that follows the one in flight. A job claimed ahead
    /// runs at once, its predecessor's record written behind it by the
    /// writer task.
    pub(super) async fn finish(
        self: &Arc<Self>,
        settlement: Settlement,
        change: StatusChange,
        permit: OwnedSemaphorePermit,
        siblings: &Siblings,
    ) -> Ran {
        if let Some(next) = self.dispatch.pop_ready() {
            self.writer.hand_off(Finished {
                settlement,
                change,
                slot: None,
            });
            return Ran {
                next: Some((next, permit)),
                record: None,
            };
        }
        if !self.writer.batching() {
            return self.write_alone(settlement, change, permit).await;
        }
        if !siblings.others_executing()
            && let Some(write) = self.writer.start_alone()
        {
            let ran = self.write_alone(settlement, change, permit).await;
            drop(write);
            return ran;
        }
        let (reply, ran) = oneshot::channel();
        let finished = Finished {
            settlement,
            change,
            slot: Some(Slot { permit, reply }),
        };
        if let Some(mut write) = self.writer.add(finished) {
            let start = std::time::Instant::now();
            while siblings.others_executing() && start.elapsed() < LINGER {
                tokio::task::yield_now().await;
                self.writer.drain_into(&mut write.jobs);
            }
            self.writer.drain_into(&mut write.jobs);
            // Boxed: a batch write's state is large, and every job's future
            // (even one written alone) would carry it otherwise.
            Box::pin(self.write(&mut write.jobs)).await;
        }
        // Nothing sent: the write failed before its slots were handed out
        // (a panicking DAO), and the slot went with it.
        ran.await.unwrap_or_default()
    }

    /// The writer task: writes the jobs that finished during another write.
    /// A write that panics (a host's DAO) is logged, its jobs are let go
    /// (their leases expire), and the writer goes on.
    pub(super) async fn writer(self: Arc<Self>) {
        use futures::FutureExt;
        loop {
            tokio::select! {
                () = self.tasks.stopped() => return,
                () = self.writer.wake.notified() => {}
            }
            while let Some(mut write) = self.writer.take() {
                let written = std::panic::AssertUnwindSafe(self.write(&mut write.jobs))
                    .catch_unwind()
                    .await;
                drop(write);
                if written.is_err() {
                    tracing::error!("writing finished jobs panicked; they are left to the cleaner");
                }
            }
        }
    }

    /// [`write`](Self::write) for one job and its own slot, without the
    /// batch's bookkeeping: the common case when jobs finish apart.
    async fn write_alone(
        self: &Arc<Self>,
        settlement: Settlement,
        change: StatusChange,
        permit: OwnedSemaphorePermit,
    ) -> Ran {
        let ready = self.dispatch.take_ready(1).pop();
        let free = usize::from(ready.is_none());
        let limit = self.dispatch.claim_limit(free, self.tasks.accepting());
        let pair = [(settlement.id(), change)];
        let written = self.write_and_claim(&pair, limit).await;
        let [(_, change)] = pair;
        let (outcome, claimed) = match written {
            Ok((mut outcomes, claimed)) if outcomes.len() == 1 => (outcomes.pop(), claimed),
            _ => (None, Vec::new()),
        };
        let mut jobs = ready.into_iter().chain(self.adopt(claimed));
        let next = match jobs.next() {
            Some(job) => Some((job, permit)),
            None => {
                drop(permit);
                self.dispatch.wake_if_work_waits(self.jobs.queued());
                None
            }
        };
        self.dispatch.park(jobs);
        let record = self
            .settle_written(settlement, change, outcome)
            .record()
            .await;
        Ran { next, record }
    }

    /// Settles a run whose change was tried in a write: an applied change
    /// here (it costs no DAO call); anything else in a task of its own, so
    /// one troubled job never holds up the others. Not `async` itself, so
    /// that the common ending costs the caller's future no state.
    fn settle_written(
        self: &Arc<Self>,
        settlement: Settlement,
        change: StatusChange,
        outcome: Option<CasOutcome>,
    ) -> Settled<'_> {
        match outcome {
            Some(CasOutcome::Applied(record)) if settlement.done_when_applied() => {
                Settled::Now(Some(self.settle_applied(settlement, change.from, record)))
            }
            // Boxed: `settle`'s state is large.
            Some(outcome @ CasOutcome::Applied(_)) => {
                Settled::Later(Box::pin(self.settle(settlement, change, Some(outcome))))
            }
            first => {
                let runtime = Arc::clone(self);
                self.tasks.spawn(async move {
                    runtime.settle(settlement, change, first).await;
                });
                Settled::Now(None)
            }
        }
    }

    /// Writes a batch of finished runs and claims jobs for their slots in
    /// one DAO call. Then, in this order: frees the slots no job was claimed
    /// for (a waiter woken below must find its slot free); settles each run
    /// with its outcome (an applied change is mirrored here; a conflict or
    /// a failed call is followed up by the settle path in a task of its
    /// own, so one troubled job never holds up the others); and tells each
    /// run's task what its slot runs next, with its final record.
    async fn write(self: &Arc<Self>, batch: &mut Vec<Finished>) {
        let mut changes = Vec::with_capacity(batch.len());
        let mut runs = Vec::with_capacity(batch.len());
        for Finished {
            settlement,
            change,
            slot,
        } in batch.drain(..)
        {
            changes.push((settlement.id(), change));
            runs.push((settlement, slot));
        }
        let slots = runs.iter().filter(|(_, slot)| slot.is_some()).count();
        // Jobs claimed ahead (`claim_batch > 1`) take freed slots first.
        let mut jobs = self.dispatch.take_ready(slots);
        let limit = self
            .dispatch
            .claim_limit(slots - jobs.len(), self.tasks.accepting());
        let written = self.write_and_claim(&changes, limit).await;
        let (outcomes, claimed) = match written {
            Ok((outcomes, claimed)) if outcomes.len() == changes.len() => (outcomes, claimed),
            // Some may have been applied (an applied one then conflicts
            // with its own status): each is tried again alone.
            _ => (Vec::new(), Vec::new()),
        };
        jobs.extend(self.adopt(claimed));
        let mut jobs = jobs.into_iter();
        let mut freed = false;
        let runs: Vec<_> = runs
            .into_iter()
            .map(|(settlement, slot)| {
                let slot = slot.map(|Slot { permit, reply }| match jobs.next() {
                    Some(job) => (Some((job, permit)), reply),
                    None => {
                        drop(permit);
                        freed = true;
                        (None, reply)
                    }
                });
                (settlement, slot)
            })
            .collect();
        self.dispatch.park(jobs);
        if freed {
            self.dispatch.wake_if_work_waits(self.jobs.queued());
        }
        let mut outcomes = outcomes.into_iter();
        for ((_, change), (settlement, slot)) in changes.into_iter().zip(runs) {
            let record = self
                .settle_written(settlement, change, outcomes.next())
                .record()
                .await;
            if let Some((next, reply)) = slot
                && let Err(Ran {
                    next: Some((job, permit)),
                    ..
                }) = reply.send(Ran { next, record })
            {
                // The task that ran the job is gone: the next job gets a
                // worker of its own.
                self.spawn_worker(job, permit);
            }
        }
    }
}
