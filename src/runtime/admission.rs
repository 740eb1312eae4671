//! Admission: the one path by which new jobs enter, shared by `submit` and
//! `submit_many`: the checks, a worker slot or a queue place, the record,
//! and the undo when the record cannot be stored.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::Runtime;
use super::dispatch::Claimed;
use super::local::JobGuard;
use super::table::Place;
use super::waiting::follow_local;
use crate::error::{Error, Result};
use crate::model::{AsyncQuery, Principal, QueryStatus};
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
    /// The first job's record as it changes, for a caller that waits.
    follow: Option<watch::Receiver<Arc<AsyncQuery>>>,
}

impl Runtime {
    pub(crate) async fn submit(
        self: &Arc<Self>,
        principal: &Principal,
        request: SubmitRequest,
    ) -> Result<AsyncQuery> {
        let now = self.clock.now();
        let job = self.new_record(principal, request, now)?;
        let (id, async_after) = (job.id, job.async_after);
        let Admitted { jobs, follow, .. } = self.admit(vec![job], Start::RunIfFree, now).await?;
        let Some(mut follow) = follow else {
            return Ok(AsyncQuery::clone(&jobs[0]));
        };
        drop(jobs);
        let deadline = Instant::now() + async_after;
        match follow_local(&mut follow, deadline).await {
            Some(latest) => Ok(latest),
            // Another instance took the job (this one is submit-only or
            // busy): follow it through the DAO for the rest of the wait.
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait(principal, id, left).await
            }
        }
    }

    pub(crate) async fn submit_many(
        self: &Arc<Self>,
        principal: &Principal,
        requests: Vec<SubmitRequest>,
    ) -> Result<Vec<AsyncQuery>> {
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

    /// Takes a worker slot or queue places for `records` before anything
    /// is stored, stores them, and starts or announces them. On any error
    /// nothing is stored and nothing is kept.
    async fn admit(
        self: &Arc<Self>,
        mut records: Vec<AsyncQuery>,
        start: Start,
        now: DateTime<Utc>,
    ) -> Result<Admitted> {
        if !self.tasks.accepting() {
            return Err(Error::ShuttingDown);
        }
        if let Some(id) = crate::dao::first_repeated_job(&records) {
            return Err(Error::DuplicateId { id });
        }
        let (permit, jobs, follow, token) = {
            let mut table = self.jobs.lock();
            if let Some(job) = records.iter().find(|job| table.contains(job.id)) {
                return Err(Error::DuplicateId { id: job.id });
            }
            // A slot only when nobody older waits, to keep FIFO.
            let permit = match start {
                Start::RunIfFree if table.queued() == 0 => self.dispatch.try_slot(),
                _ => None,
            };
            let queued = records.len() - usize::from(permit.is_some());
            if queued > 0 && table.queued() + queued > self.config.max_queued {
                return Err(Error::QueueFull {
                    limit: self.config.max_queued,
                });
            }
            if permit.is_some() {
                // Created directly as PROCESSING: no extra round trip to claim it.
                records[0].status = QueryStatus::Processing;
                records[0].lease = Some(self.lease(now));
            }
            let jobs: Vec<Arc<AsyncQuery>> = records.into_iter().map(Arc::new).collect();
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
            // Follow the job from before it can change, unless not waiting.
            let follow = match start {
                Start::RunIfFree if !jobs[0].async_after.is_zero() => table.subscribe(jobs[0].id),
                _ => None,
            };
            (permit, jobs, follow, token)
        };
        let stored = match self.store(&jobs).await {
            Ok(stored) => stored,
            Err(e) => {
                for job in &jobs {
                    self.jobs.forget(job.id);
                }
                return Err(e);
            }
        };
        self.announce(jobs.iter().map(|job| &**job));
        match (permit, token) {
            (Some(permit), Some(token)) => {
                let job = Arc::clone(&jobs[0]);
                let guard = JobGuard::new(&self.jobs, job.id);
                let executing = self.dispatch.executing();
                let claimed = Claimed {
                    job,
                    token,
                    guard,
                    executing,
                };
                self.spawn_worker(claimed, permit);
            }
            // With every slot busy, the next worker to finish claims the
            // job (workers claim before releasing their slot), so waking
            // the dispatcher would be a wasted hand-off.
            _ if self.dispatch.has_free_slot() => self.dispatch.wake(),
            _ => {}
        }
        Ok(Admitted {
            jobs,
            stored,
            follow,
        })
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
