//! Status-change events: [`JobEvent`], the [`Subscription`] that delivers
//! them, and the pages of the event log ([`EventPage`], [`LoggedEvent`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{JobKind, Principal, QueryStatus};
use crate::progress::Progress;

/// A status change, as seen by [`Subscription`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobEvent {
    /// The job.
    pub id: Uuid,
    /// What kind of job it is.
    pub kind: JobKind,
    /// The name of the principal that submitted it.
    pub owner: Arc<str>,
    /// The previous status; `None` when the job was just created.
    pub from: Option<QueryStatus>,
    /// The new status.
    pub to: QueryStatus,
    /// When the change happened.
    pub at: DateTime<Utc>,
    /// Set on a progress event, whose `from` and `to` are both
    /// `PROCESSING`: the job's executor reported how far it got (see
    /// [`ExecutionContext::report_progress`](crate::ExecutionContext::report_progress)).
    /// `None` on status changes.
    pub progress: Option<Progress>,
}

/// A [`JobEvent`] numbered in the stream it was read from, from
/// [`AsyncQueryService::events_after`](crate::AsyncQueryService::events_after).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedEvent {
    /// Position in the stream: 1, 2, 3, … in the order the changes happened.
    /// A principal's stream counts only that principal's changes; an
    /// admin's counts every change.
    pub seq: u64,
    /// The change.
    pub event: JobEvent,
}

/// One page of [`AsyncQueryService::events_after`](crate::AsyncQueryService::events_after).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventPage {
    /// The events after the cursor, oldest first.
    pub events: Vec<LoggedEvent>,
    /// The cursor for the next call: the position of the last event
    /// returned (the given cursor when there is none).
    pub last_id: u64,
    /// Events after the given cursor were dropped (the log is bounded), or
    /// the cursor was not from this stream (a restart of an in-memory log):
    /// re-read the jobs you follow with [`get`](crate::AsyncQueryService::get).
    pub missed: bool,
    /// The position of the newest event in the stream when the page was
    /// read: `last_id == newest` means the caller is up to date, and a
    /// cursor of `newest` follows only changes from now on.
    pub newest: u64,
}

/// Which stream of status changes to read: each principal has one of its
/// own jobs' changes, numbered 1, 2, 3, … (so a cursor reveals nothing of
/// other principals' activity); admins read the stream of every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventStream<'a> {
    /// The changes of the jobs this principal (by name) submitted.
    Owner(&'a str),
    /// Every change.
    All,
}

impl<'a> EventStream<'a> {
    /// The stream `principal` reads: [`All`](Self::All) for holders of
    /// `admin_role`, their own otherwise.
    pub fn of(principal: &'a Principal, admin_role: &str) -> Self {
        if principal.has_role(admin_role) {
            EventStream::All
        } else {
            EventStream::Owner(&principal.name)
        }
    }
}

/// A stream of status changes of the jobs a principal may see, from
/// [`AsyncQueryService::subscribe`](crate::AsyncQueryService::subscribe).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<JobEvent>,
    principal: Principal,
    admin_role: String,
    /// Live subscriptions, so that nobody pays for events nobody reads.
    count: Arc<AtomicUsize>,
}

impl Subscription {
    /// A subscription for `principal` that counts itself in `count` while
    /// it lives.
    pub(crate) fn new(
        rx: broadcast::Receiver<JobEvent>,
        principal: Principal,
        admin_role: String,
        count: Arc<AtomicUsize>,
    ) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx,
            principal,
            admin_role,
            count,
        }
    }

    /// The next visible event.
    ///
    /// # Errors
    ///
    /// [`Error::EventsLagged`] if this subscriber fell more than
    /// [`Config::event_capacity`](crate::Config::event_capacity) events behind (the next call continues with
    /// the oldest kept event); [`Error::ShuttingDown`] once the service is
    /// gone.
    pub async fn recv(&mut self) -> Result<JobEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    if self.principal.may_see(&event.owner, &self.admin_role) {
                        return Ok(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(Error::EventsLagged { missed });
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Error::ShuttingDown),
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}
