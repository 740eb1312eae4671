//! The local job table: the jobs this instance submitted or runs, with
//! their latest records, cancellation tokens and the queued count. Pure
//! data (no locks, no I/O, no clock); [`LocalJobs`](super::local::LocalJobs)
//! guards it.

use std::collections::hash_map::Entry;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{AsyncQuery, IdMap, IdSet, QueryStatus};
use crate::progress::Progress;

/// Where a job enters the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Waiting for a slot here; counts against `max_queued`.
    Queued,
    /// Running here (or claimed by this instance).
    Running,
}

/// How a change the DAO applied relates to this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mirror {
    /// A change this instance made or learnt of.
    Follow,
    /// This instance's claim: the job runs here from now on, and a job
    /// not in the table yet gets an entry.
    Claim,
}

/// Receives the events mirroring produces: `(job, from, to)`, where `to`
/// may be a step before `job.status`.
pub(super) type Emit<'a> = &'a mut dyn FnMut(&AsyncQuery, Option<QueryStatus>, QueryStatus);

/// What mirroring a change did.
#[derive(Debug)]
pub(super) struct Mirrored {
    /// The job's cancellation token, if the job is in the table (or was,
    /// until this change).
    pub(super) token: Option<CancellationToken>,
    /// The job left the table.
    pub(super) left: bool,
}

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

/// How many of the jobs that last ended here the table remembers.
const ENDED_REMEMBERED: usize = 4096;

/// The jobs of this instance, by id.
#[derive(Default)]
pub(super) struct JobTable {
    jobs: IdMap<LocalJob>,
    /// How many entries are queued.
    queued: usize,
    /// The jobs that last left the table in a terminal state: a change of
    /// theirs mirrored later is stale, see [`mirror`](Self::mirror).
    ended: Ended,
}

/// A bounded memory of ids, oldest forgotten first.
#[derive(Default)]
struct Ended {
    ids: IdSet,
    order: VecDeque<Uuid>,
}

impl Ended {
    fn remember(&mut self, id: Uuid) {
        if !self.ids.insert(id) {
            return;
        }
        if self.order.len() == ENDED_REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id);
    }

    fn contains(&self, id: Uuid) -> bool {
        self.ids.contains(&id)
    }
}

impl JobTable {
    pub(super) fn contains(&self, id: Uuid) -> bool {
        self.jobs.contains_key(&id)
    }

    /// Jobs waiting for a slot here.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Adds a job this instance is creating; it is announced (its creation
    /// event emitted) once stored, see [`announce`](Self::announce).
    pub(super) fn insert(&mut self, job: Arc<AsyncQuery>, cancel: CancellationToken, place: Place) {
        let queued = place == Place::Queued;
        let entry = LocalJob {
            latest: job,
            watchers: None,
            cancel,
            queued,
            announced: false,
        };
        if let Some(old) = self.jobs.insert(entry.latest.id, entry) {
            // Callers check `contains` first; keep the count right anyway.
            self.queued -= usize::from(old.queued);
        }
        self.queued += usize::from(queued);
    }

    /// Removes a job; returns whether it was there.
    pub(super) fn remove(&mut self, id: Uuid) -> bool {
        match self.jobs.remove(&id) {
            Some(entry) => {
                self.queued -= usize::from(entry.queued);
                true
            }
            None => false,
        }
    }

    /// Sets the progress of a job running here; returns the record with
    /// it, `None` if the job is not running here.
    pub(super) fn progressed(&mut self, id: Uuid, progress: &Progress) -> Option<Arc<AsyncQuery>> {
        let entry = self.jobs.get_mut(&id)?;
        if entry.latest.status != QueryStatus::Processing {
            return None;
        }
        let mut job = AsyncQuery::clone(&entry.latest);
        job.progress = Some(progress.clone());
        let job = Arc::new(job);
        entry.update(Arc::clone(&job));
        Some(job)
    }

    /// Follows a job's record from its current state on.
    pub(super) fn subscribe(&mut self, id: Uuid) -> Option<watch::Receiver<Arc<AsyncQuery>>> {
        self.jobs.get_mut(&id).map(LocalJob::subscribe)
    }

    /// Follows a job only if it runs here or `instance` has claimed it (a
    /// job still queued here may be running elsewhere by now).
    pub(super) fn subscribe_if_ours(
        &mut self,
        id: Uuid,
        instance: Uuid,
    ) -> Option<watch::Receiver<Arc<AsyncQuery>>> {
        self.jobs
            .get_mut(&id)
            .filter(|job| !job.queued || claimed_by(&job.latest, instance))
            .map(LocalJob::subscribe)
    }

    pub(super) fn token(&self, id: Uuid) -> Option<&CancellationToken> {
        self.jobs.get(&id).map(|job| &job.cancel)
    }

    /// Fires every job's cancellation token.
    pub(super) fn fire_all(&self) {
        for job in self.jobs.values() {
            job.cancel.cancel();
        }
    }

    /// Whether the job is running here.
    pub(super) fn runs(&self, id: Uuid) -> bool {
        self.jobs.get(&id).is_some_and(|job| !job.queued)
    }

    /// Whether the job waits for a slot here.
    pub(super) fn is_queued(&self, id: Uuid) -> bool {
        self.jobs.get(&id).is_some_and(|job| job.queued)
    }

    /// Whether any job is running here.
    pub(super) fn any_running(&self) -> bool {
        self.jobs.len() > self.queued
    }

    /// Jobs running (or claimed) here.
    pub(super) fn running_count(&self) -> usize {
        self.jobs.len() - self.queued
    }

    /// Ids of the jobs running here.
    pub(super) fn running(&self) -> Vec<Uuid> {
        self.jobs
            .iter()
            .filter(|(_, job)| !job.queued)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The jobs running here and those queued here.
    pub(super) fn running_and_queued(&self) -> (Vec<Uuid>, HashSet<Uuid>) {
        let mut running = Vec::with_capacity(self.jobs.len() - self.queued);
        let mut queued = HashSet::with_capacity(self.queued);
        for (id, job) in &self.jobs {
            if job.queued {
                queued.insert(*id);
            } else {
                running.push(*id);
            }
        }
        (running, queued)
    }

    /// Emits the creation of jobs just stored, unless a change of theirs
    /// was mirrored first (which emitted it).
    pub(super) fn announce<'a>(
        &mut self,
        jobs: impl IntoIterator<Item = &'a AsyncQuery>,
        emit: Emit<'_>,
    ) {
        for job in jobs {
            if let Some(entry) = self.jobs.get_mut(&job.id).filter(|e| !e.announced) {
                entry.announced = true;
                emit(job, None, job.status);
            }
        }
    }

    /// Mirrors a change the DAO applied (from `from`; `None` for a new
    /// record) and emits its events in lifecycle order.
    ///
    /// Two tasks can commit changes of one job in one order and get here in
    /// the other (a worker's claim and a cancel, say). The lifecycle only
    /// moves forward, so a change to a status at or before the one mirrored
    /// is stale and skipped, and a change whose `from` was not mirrored yet
    /// first emits that step. A change of a job that already ended here
    /// (and left the table) is stale too: a worker that finds its job
    /// cancelled ends it as `CANCEL_COMPLETE` before the cancel's own
    /// `PROCESSING → CANCELLED` is mirrored. The table remembers the last
    /// few thousand jobs that ended here for that.
    ///
    /// Records of a later [`attempt`](AsyncQuery::attempt) come after every
    /// record of an earlier one: a retry (`PROCESSING → QUEUED`) puts the
    /// job back in this table's queue, and a claim of the next attempt
    /// mirrored before the retry itself first emits that step.
    ///
    /// A queued job that leaves the queue runs here only if `instance`
    /// claimed it; otherwise (cancelled while queued, or claimed elsewhere)
    /// it leaves the table and waiters follow the DAO. A change mirrored
    /// before this instance's own claim (a cancel overtaking the claim's
    /// reply) keeps the job queued until the claim arrives. A terminal job
    /// leaves the table.
    pub(super) fn mirror(
        &mut self,
        from: Option<QueryStatus>,
        job: Arc<AsyncQuery>,
        how: Mirror,
        instance: Uuid,
        new_token: impl FnOnce() -> CancellationToken,
        emit: Emit<'_>,
    ) -> Mirrored {
        let JobTable {
            jobs,
            queued,
            ended,
        } = self;
        let entry = match jobs.entry(job.id) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(vacant) if how == Mirror::Claim => {
                // Claimed here: created elsewhere or before a restart.
                emit(&job, from, job.status);
                let token = new_token();
                vacant.insert(LocalJob {
                    latest: job,
                    watchers: None,
                    cancel: token.clone(),
                    queued: false,
                    announced: true,
                });
                return Mirrored {
                    token: Some(token),
                    left: false,
                };
            }
            Entry::Vacant(_) => {
                if !ended.contains(job.id) {
                    emit(&job, from, job.status);
                }
                return Mirrored {
                    token: None,
                    left: false,
                };
            }
        };
        let current = entry.latest.status;
        // Another attempt's records come before or after all of this one's.
        let next_attempt = job.attempt > entry.latest.attempt;
        let stale = match job.attempt.cmp(&entry.latest.attempt) {
            std::cmp::Ordering::Equal => job.status == current || job.status.leads_to(current),
            order => order.is_lt(),
        };
        if stale {
            // A claim whose reply comes after a later change: the job has
            // left this instance's queue all the same.
            if how == Mirror::Claim && entry.queued {
                *queued -= 1;
                entry.queued = false;
            }
            return Mirrored {
                token: Some(entry.cancel.clone()),
                left: false,
            };
        }
        if !entry.announced {
            emit(&entry.latest, None, current);
            entry.announced = true;
        }
        let missed =
            |from: QueryStatus| from != current && (current.leads_to(from) || next_attempt);
        if let Some(from) = from.filter(|&from| missed(from)) {
            emit(&job, Some(current), from);
        }
        emit(&job, from, job.status);
        if job.status == QueryStatus::Queued && !entry.queued {
            // Queued for a retry: it waits for a slot again.
            entry.queued = true;
            *queued += 1;
        }
        let entry_ended = job.status.is_terminal();
        let mut leave = entry_ended;
        if entry.queued && job.status != QueryStatus::Queued {
            let ours = how == Mirror::Claim || claimed_by(&job, instance);
            let claim_on_its_way = ours && how == Mirror::Follow && !leave;
            if !claim_on_its_way {
                *queued -= 1;
                entry.queued = false;
                leave |= !ours;
            }
        }
        let token = entry.cancel.clone();
        let id = job.id;
        entry.update(job);
        if leave {
            jobs.remove(&id);
            if entry_ended {
                ended.remember(id);
            }
        }
        Mirrored {
            token: Some(token),
            left: leave,
        }
    }
}

/// Whether `job`'s lease is `instance`'s.
fn claimed_by(job: &AsyncQuery, instance: Uuid) -> bool {
    job.lease
        .as_ref()
        .is_some_and(|lease| lease.owner == instance)
}

#[cfg(test)]
mod tests;
