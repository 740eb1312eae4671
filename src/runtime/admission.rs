//! Admission: the one path by which new jobs enter, shared by `submit` and
//! `submit_many`: the checks, a worker slot or a queue place, the record,
//! and the undo when the record cannot be stored.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::Runtime;
use super::dispatch::{Claimed, Siblings};
use super::local::JobGuard;
use super::table::Place;
use super::tasks::Detached;
use super::waiting::follow_local;
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, JobKind, Principal, QueryStatus};
use crate::request::SubmitRequest;

/// How admitted jobs may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The first job runs at once if a slot is free and no older job waits
    /// (`submit`); the caller follows it for its async-after.
    RunIfFree,
    /// All wait in the queue for the workers (`submit_many`).
    Queue,
}

struct Admitted {
    /// The records, as the local table shares them.
    jobs: Vec<Arc<AsyncQuery>>,
    /// Copies stored side by side for `create_many` (empty for one job).
    stored: Vec<AsyncQuery>,
    /// The first job's record as it changes, for a caller that waits for a
    /// queued job.
    follow: Option<watch::Receiver<Arc<AsyncQuery>>>,
    /// The first job with its slot, for a caller that waits to run it in
    /// its own task.
    run: Option<(Claimed, OwnedSemaphorePermit)>,
}

impl Runtime {
    /// `submit`, in a `submit` span (see `traced!`).
    pub(crate) async fn submit(
        self: &Arc<Self>,
        principal: &Principal,
        request: SubmitRequest,
    ) -> Result<AsyncQuery> {
        let span = tracing::info_span!(
            "submit",
            principal = %principal.name,
            job = tracing::field::Empty
        );
        let answer = traced!(span.clone(), self.submit_in(span, principal, request));
        if let Ok(job) = &answer {
            crate::metrics::answered(job.status);
        }
        answer
    }

    async fn submit_in(
        self: &Arc<Self>,
        span: tracing::Span,
        principal: &Principal,
        request: SubmitRequest,
    ) -> Result<AsyncQuery> {
        self.clock_ready().await;
        let now = self.clock.now();
        let reuse = request.reuse;
        // Shared from here on: the futures below hold a pointer, not the
        // record, so that none of them copies it as it moves.
        let job = Arc::new(self.new_record(principal, request, now)?);
        if let Some(key) = job.idempotency_key.clone() {
            // Boxed: the keyed path's state is large and rarely needed.
            return Box::pin(self.submit_keyed(span, principal, (job, reuse), key, now)).await;
        }
        self.reuse_or_start(span, principal, job, reuse, now).await
    }

    /// Admits a new record and follows it for its async-after.
    pub(super) async fn start_new(
        self: &Arc<Self>,
        span: tracing::Span,
        principal: &Principal,
        job: Arc<AsyncQuery>,
        now: DateTime<Utc>,
    ) -> Result<AsyncQuery> {
        let (id, async_after) = (job.id, job.async_after);
        span.record("job", tracing::field::display(id));
        let Admitted {
            jobs, follow, run, ..
        } = self.admit(vec![job], Start::RunIfFree, now).await?;
        let deadline = Instant::now() + async_after;
        if let Some((claimed, permit)) = run {
            drop(jobs);
            match self.run_inline(claimed, permit, deadline).await {
                Some(record) if record.status.is_terminal() => {
                    return Ok(Arc::try_unwrap(record).unwrap_or_else(|r| AsyncQuery::clone(&r)));
                }
                // Still running at the deadline, or its ending is being
                // written elsewhere: as it is by then.
                _ => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    return Box::pin(self.wait(principal, id, left)).await;
                }
            }
        }
        let Some(mut follow) = follow else {
            return Ok(AsyncQuery::clone(&jobs[0]));
        };
        drop(jobs);
        // Bounded as `wait` bounds it: another instance may claim the job.
        let until = deadline.min(Instant::now() + self.config.poll_interval);
        match follow_local(&mut follow, until).await {
            Some(latest) if latest.status.is_terminal() || until >= deadline => Ok(latest),
            // Still unfinished at the poll interval, or another instance
            // took the job (this one is submit-only or busy): `wait` looks
            // at the DAO for the rest of the wait.
            _ => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Boxed, as above: `wait`'s state is large and the common
                // answer does not need it.
                Box::pin(self.wait(principal, id, left)).await
            }
        }
    }

    /// Runs a job that `submit` started in the caller's own task, until it
    /// ends or `deadline` passes; then (or if the caller goes away first)
    /// it moves on to a task of its own. A job that ends within its
    /// async-after so costs no task and no timer. Returns its final record
    /// when known.
    async fn run_inline(
        self: &Arc<Self>,
        claimed: Claimed,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Option<Arc<AsyncQuery>> {
        let runtime = Arc::clone(self);
        let work = self.tasks.track(async move {
            let ran = runtime.run_one(claimed, permit).await;
            // The caller waits for its own job only; the slot's next job
            // runs on a worker.
            if let Some((next, permit)) = ran.next {
                runtime.spawn_worker(next, permit);
            }
            ran.record
        });
        let mut inline = Detached::new(Box::pin(work), Arc::clone(self));
        tokio::select! {
            biased;
            record = &mut inline => record,
            () = tokio::time::sleep_until(deadline) => {
                inline.detach();
                None
            }
        }
    }

    #[tracing::instrument(name = "submit", skip_all, fields(principal = %principal.name, jobs = requests.len()))]
    pub(crate) async fn submit_many(
        self: &Arc<Self>,
        principal: &Principal,
        requests: Vec<SubmitRequest>,
    ) -> Result<Vec<AsyncQuery>> {
        self.clock_ready().await;
        let now = self.clock.now();
        let records = requests
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
        let records = records.into_iter().map(Arc::new).collect();
        let Admitted { jobs, stored, .. } = self.admit(records, Start::Queue, now).await?;
        if stored.len() == jobs.len() {
            return Ok(stored);
        }
        Ok(jobs.iter().map(|job| AsyncQuery::clone(job)).collect())
    }

    /// Checks a request and turns it into a new `QUEUED` record.
    fn new_record(
        &self,
        principal: &Principal,
        request: SubmitRequest,
        now: DateTime<Utc>,
    ) -> Result<AsyncQuery> {
        // Only ASCII white space counts as empty: the rule
        // `docs/openapi.json` states as a pattern.
        if request
            .query
            .bytes()
            .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))
        {
            return Err(Error::invalid(
                "the query is empty (or only spaces, tabs and line breaks)",
            ));
        }
        if let Some(key) = &request.idempotency_key {
            super::idempotency::check_key(key)?;
        }
        if let JobKind::TableExport { format } = &request.kind {
            self.formats.find(format)?;
        }
        self.executor.validate(&request).map_err(Error::invalid)?;
        let config = &self.config;
        let max_run_time = request
            .max_run_time
            .map_or(config.max_run_time, |d| d.min(config.max_run_time));
        if max_run_time.is_zero() {
            return Err(Error::invalid("max_run_time must be above zero"));
        }
        let async_after = config.async_after(request.async_after);
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
            idempotency_key: request.idempotency_key,
            progress: None,
            attempt: 1,
            retry_at: None,
        })
    }

    /// Refuses `jobs` (of one principal) if they would take the
    /// principal past `Config::max_queued_per_principal`.
    async fn check_principal_queue(&self, jobs: &[Arc<AsyncQuery>]) -> Result<()> {
        let (Some(max), Some(first)) = (self.config.max_queued_per_principal, jobs.first()) else {
            return Ok(());
        };
        let queued = self.dao.count_queued(&first.principal.name, max).await?;
        if queued.saturating_add(jobs.len()) <= max {
            return Ok(());
        }
        Err(Error::PrincipalQueueFull {
            max,
            retry_after: self
                .config
                .poll_interval
                .max(std::time::Duration::from_secs(1)),
        })
    }

    /// Takes a worker slot or queue places for `records` before anything
    /// is stored, stores them, and starts or announces them. On any error
    /// nothing is stored and nothing is kept.
    async fn admit(
        self: &Arc<Self>,
        mut jobs: Vec<Arc<AsyncQuery>>,
        start: Start,
        now: DateTime<Utc>,
    ) -> Result<Admitted> {
        if !self.tasks.accepting() {
            return Err(Error::ShuttingDown);
        }
        if let Some(id) = crate::dao::first_repeated(jobs.iter().map(|job| job.id)) {
            return Err(Error::DuplicateId { id });
        }
        self.check_principal_queue(&jobs).await?;
        let admitted = 'table: {
            let mut table = self.jobs.lock();
            if let Some(job) = jobs.iter().find(|job| table.contains(job.id)) {
                break 'table Err(job.id);
            }
            // A slot only when nobody older waits, to keep FIFO, and no
            // running limit asks every job to start through a claim.
            let direct = table.queued() == 0 && self.config.max_running_per_principal.is_none();
            let permit = match start {
                Start::RunIfFree if direct => self.dispatch.try_slot(),
                _ => None,
            };
            let queued = jobs.len() - usize::from(permit.is_some());
            if queued > 0 && table.queued() + queued > self.config.max_queued {
                return Err(Error::QueueFull {
                    limit: self.config.max_queued,
                });
            }
            // The records were wrapped by the caller and are shared with
            // nobody yet, so `make_mut` does not copy.
            if permit.is_some()
                && let Some(first) = jobs.first_mut().map(Arc::make_mut)
            {
                // Created directly as PROCESSING: no extra round trip to claim it.
                first.status = QueryStatus::Processing;
                first.lease = Some(self.lease(now));
            }
            let mut token = None;
            for (i, job) in jobs.iter().enumerate() {
                let cancel = self.tasks.job_token();
                let place = if i == 0 && permit.is_some() {
                    token = Some(cancel.clone());
                    Place::Running
                } else {
                    Place::Queued
                };
                table.insert(Arc::clone(job), cancel, place);
            }
            super::local::counted(&table);
            // Follow a queued job from before it can change, unless not
            // waiting (a job started here is run by the caller itself).
            let follow = match start {
                Start::RunIfFree if permit.is_none() && !jobs[0].async_after.is_zero() => {
                    table.subscribe(jobs[0].id)
                }
                _ => None,
            };
            Ok((permit, follow, token))
        };
        let (permit, follow, token) = match admitted {
            Ok(admitted) => admitted,
            Err(id) => return Err(self.taken(&jobs[0].principal, id).await),
        };
        let stored = match self.store(&jobs).await {
            Ok(stored) => stored,
            Err(e) => {
                for job in &jobs {
                    self.jobs.forget(job.id);
                }
                return Err(match e {
                    Error::DuplicateId { id } => self.taken(&jobs[0].principal, id).await,
                    e => e,
                });
            }
        };
        crate::metrics::submitted(jobs.iter().map(|job| &**job));
        self.announce(jobs.iter().map(|job| &**job));
        let mut run = None;
        match (permit, token) {
            (Some(permit), Some(token)) => {
                let job = Arc::clone(&jobs[0]);
                let guard = JobGuard::new(&self.jobs, job.id);
                let claimed = Claimed {
                    job,
                    token,
                    guard,
                    siblings: Siblings::none(),
                };
                if claimed.job.async_after.is_zero() {
                    self.spawn_worker(claimed, permit);
                } else {
                    run = Some((claimed, permit));
                }
            }
            // With every slot busy, the next job to finish claims one for
            // its slot in the same write, so waking the dispatcher would be
            // a wasted hand-off.
            _ if self.dispatch.has_free_slot() => self.dispatch.wake(),
            _ => {}
        }
        Ok(Admitted {
            jobs,
            stored,
            follow,
            run,
        })
    }

    /// The error for a submission by `principal` whose id `id` is taken: a
    /// duplicate of a job `principal` may see; for anyone else only
    /// unavailable, which says nothing of whose job it is.
    async fn taken(&self, principal: &Principal, id: Uuid) -> Error {
        match self.dao.get(id).await {
            Ok(Some(job)) if job.is_visible_to(principal, &self.config.admin_role) => {
                Error::DuplicateId { id }
            }
            Ok(_) => Error::IdUnavailable { id },
            Err(e) => e,
        }
    }

    /// Stores admitted records: one with `create`, several with one
    /// `create_many`, which needs them side by side (the copies are
    /// returned).
    async fn store(&self, jobs: &[Arc<AsyncQuery>]) -> Result<Vec<AsyncQuery>> {
        if let [job] = jobs {
            return self.dao.create(job).await.map(|()| Vec::new());
        }
        let records: Vec<AsyncQuery> = jobs.iter().map(|job| AsyncQuery::clone(job)).collect();
        self.dao.create_many(&records).await.map(|()| records)
    }
}
