//! What an operator watches: [`Overview`], from
//! [`AsyncQueryService::overview`](crate::AsyncQueryService::overview), and
//! the cleaner's recent [`CleanerSweep`]s.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::model::{AsyncQuery, JobKind, QueryStatus};

/// The most expired leases an [`Overview`] lists (it counts them all).
pub const OVERVIEW_MAX_EXPIRED_LEASES: usize = 100;

/// How many sweeps that changed something the cleaner remembers.
pub(crate) const CLEANER_HISTORY: usize = 20;

/// The state of the queue across every instance that shares the job
/// store, at one moment, for an admin: what a dashboard's overview shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Overview {
    /// When it was read (the service's clock).
    pub at: DateTime<Utc>,
    /// Jobs waiting for a slot (`QUEUED`, including retries waiting for
    /// their time).
    pub queued: u64,
    /// Jobs an instance runs (`PROCESSING`, and `CANCELLED` ones whose
    /// worker has not stopped yet).
    pub running: u64,
    /// Per instance that holds a lease: its running jobs, and how many of
    /// those leases have expired. Ordered by instance id.
    pub instances: Vec<InstanceLoad>,
    /// Per principal with queued or running jobs, ordered by name.
    pub principals: Vec<PrincipalLoad>,
    /// The job that has waited longest, if any is queued.
    pub oldest_queued: Option<QueuedJob>,
    /// How many running jobs' leases ran out (their instance stopped
    /// renewing; the cleaner ends or retries them at its next sweep).
    pub expired_lease_count: u64,
    /// The first [`OVERVIEW_MAX_EXPIRED_LEASES`] of them, longest expired
    /// first.
    pub expired_leases: Vec<ExpiredLease>,
    /// What this instance's cleaner did lately: its last sweeps that
    /// changed something, newest first (at most 20). Each instance sweeps
    /// on its own; this is the answering instance's.
    pub cleaner: Vec<CleanerSweep>,
}

/// One instance's share of the running jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InstanceLoad {
    /// The instance ([`Config::instance_id`](crate::Config::instance_id)).
    pub instance: Uuid,
    /// The jobs it holds a lease on.
    pub running: u64,
    /// Of those, how many leases have expired.
    pub expired_leases: u64,
}

/// One principal's queued and running jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct PrincipalLoad {
    /// The principal's name.
    pub principal: String,
    /// Its jobs waiting for a slot.
    pub queued: u64,
    /// Its jobs running.
    pub running: u64,
}

/// The job at the head of the wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct QueuedJob {
    /// The job.
    pub id: Uuid,
    /// Its kind.
    pub kind: JobKind,
    /// Who submitted it.
    pub principal: String,
    /// When it was submitted.
    pub created_on: DateTime<Utc>,
    /// How long it has waited, whole milliseconds.
    #[serde(serialize_with = "millis")]
    pub waited: Duration,
}

/// A running job whose instance stopped renewing its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ExpiredLease {
    /// The job.
    pub id: Uuid,
    /// Who submitted it.
    pub principal: String,
    /// The instance that held it.
    pub instance: Uuid,
    /// When the lease ran out.
    pub expired_at: DateTime<Utc>,
}

/// What one sweep of the cleaner did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CleanerSweep {
    /// When the sweep started.
    pub at: DateTime<Utc>,
    /// Jobs whose lease had expired, or that overran, queued again for
    /// another attempt.
    pub retried: u64,
    /// Jobs ended `TIMEDOUT` (expired lease, run-time limit) or `FAILURE`.
    pub timed_out: u64,
    /// Cancellations nobody finished, ended `CANCEL_COMPLETE`.
    pub cancel_completed: u64,
    /// Of those ended or retried, how many had an expired lease.
    pub leases_expired: u64,
    /// Results removed past
    /// [`Config::result_lifetime`](crate::Config::result_lifetime).
    pub results_expired: u64,
    /// Records deleted past retention, with their results.
    pub records_deleted: u64,
    /// Partial exports of writers that died, removed.
    pub partials_removed: u64,
    /// Old events the store tidied away.
    pub events_tidied: u64,
}

impl CleanerSweep {
    /// Whether the sweep changed nothing.
    pub fn is_idle(&self) -> bool {
        CleanerSweep {
            at: self.at,
            ..CleanerSweep::default()
        } == *self
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The overview of `active` (every queued, running or cancelling record)
/// at `now`, with the cleaner's `sweeps`.
pub(crate) fn of(
    active: &[AsyncQuery],
    now: DateTime<Utc>,
    sweeps: &VecDeque<CleanerSweep>,
) -> Overview {
    let mut instances: BTreeMap<Uuid, InstanceLoad> = BTreeMap::new();
    let mut principals: BTreeMap<&str, PrincipalLoad> = BTreeMap::new();
    let (mut queued, mut running) = (0, 0);
    let mut oldest: Option<&AsyncQuery> = None;
    let mut expired = Vec::new();
    for job in active {
        let load = principals
            .entry(&*job.principal.name)
            .or_insert_with(|| PrincipalLoad {
                principal: job.principal.name.to_string(),
                queued: 0,
                running: 0,
            });
        match job.status {
            QueryStatus::Queued => {
                queued += 1;
                load.queued += 1;
                if oldest.is_none_or(|o| (job.created_on, job.id) < (o.created_on, o.id)) {
                    oldest = Some(job);
                }
            }
            QueryStatus::Processing | QueryStatus::Cancelled => {
                running += 1;
                load.running += 1;
                let Some(lease) = &job.lease else { continue };
                let instance = instances.entry(lease.owner).or_insert(InstanceLoad {
                    instance: lease.owner,
                    running: 0,
                    expired_leases: 0,
                });
                instance.running += 1;
                if lease.expires_at < now {
                    instance.expired_leases += 1;
                    expired.push(ExpiredLease {
                        id: job.id,
                        principal: job.principal.name.to_string(),
                        instance: lease.owner,
                        expired_at: lease.expires_at,
                    });
                }
            }
            _ => {}
        }
    }
    expired.sort_by_key(|e| (e.expired_at, e.id));
    let expired_lease_count = expired.len() as u64;
    expired.truncate(OVERVIEW_MAX_EXPIRED_LEASES);
    Overview {
        at: now,
        queued,
        running,
        instances: instances.into_values().collect(),
        principals: principals.into_values().collect(),
        oldest_queued: oldest.map(|job| QueuedJob {
            id: job.id,
            kind: job.kind.clone(),
            principal: job.principal.name.to_string(),
            created_on: job.created_on,
            waited: (now - job.created_on).to_std().unwrap_or_default(),
        }),
        expired_lease_count,
        expired_leases: expired,
        cleaner: sweeps.iter().rev().cloned().collect(),
    }
}
