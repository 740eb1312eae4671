//! The event hub: status changes delivered to subscribers and read by
//! cursor.
//!
//! - On a store that keeps no events (memory, SQLite), changes are
//!   broadcast as this instance makes them, and, once enabled, kept in the
//!   in-memory [`EventLog`].
//! - On a store that [keeps events](crate::dao::AsyncApiDao::keeps_events)
//!   (PostgreSQL), the store is the only source: `events_after` reads it,
//!   and the tail task reads the stream of every change and broadcasts
//!   what it finds, so subscribers see the changes of every instance.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, broadcast};

use super::Runtime;
use super::event_log::EventLog;
use crate::error::{Error, Result};
use crate::event::{EventPage, EventStream, JobEvent, Subscription};
use crate::model::{AsyncQuery, Principal, QueryStatus};
use crate::progress::Progress;

/// Events the tail reads per page.
const TAIL_PAGE: usize = 500;

pub(super) struct EventHub {
    sender: broadcast::Sender<JobEvent>,
    /// Live subscriptions (an atomic: `receiver_count` takes the
    /// channel's lock).
    subscribers: Arc<AtomicUsize>,
    log: Mutex<EventLog>,
    logging: AtomicBool,
    admin_role: String,
    /// The store keeps the events: the tail feeds subscribers.
    shared: bool,
    /// Wakes the tail: something changed.
    tail: Notify,
}

impl EventHub {
    pub(super) fn new(capacity: usize, admin_role: String, shared: bool) -> Self {
        EventHub {
            sender: broadcast::channel(capacity).0,
            subscribers: Arc::default(),
            log: Mutex::default(),
            logging: AtomicBool::new(false),
            admin_role,
            shared,
            tail: Notify::new(),
        }
    }

    fn subscribed(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Whether anyone follows events (a subscriber or the log): when
    /// nobody does, emitting costs nothing.
    pub(super) fn listening(&self) -> bool {
        self.subscribed() || self.logging.load(Ordering::Relaxed)
    }

    /// Emits the change of `job` from `from` to `to` (which may be a step
    /// before `job.status`).
    pub(super) fn emit(&self, job: &AsyncQuery, from: Option<QueryStatus>, to: QueryStatus) {
        self.publish(|| JobEvent {
            id: job.id,
            kind: job.kind.clone(),
            owner: job.principal.name.clone(),
            from,
            to,
            at: job.updated_on,
            progress: None,
        });
    }

    /// Emits the progress of running `job`, reported at `at`, which the
    /// store kept.
    pub(super) fn emit_progress(&self, job: &AsyncQuery, progress: &Progress, at: DateTime<Utc>) {
        self.publish(|| JobEvent {
            id: job.id,
            kind: job.kind.clone(),
            owner: job.principal.name.clone(),
            from: Some(QueryStatus::Processing),
            to: QueryStatus::Processing,
            at,
            progress: Some(progress.clone()),
        });
    }

    /// Delivers the event `make` builds, if anyone follows events; on a
    /// store that keeps events, the tail delivers what the store recorded.
    fn publish(&self, make: impl FnOnce() -> JobEvent) {
        let subscribed = self.subscribed();
        if self.shared {
            // The store recorded it: the tail reads it from there.
            if subscribed {
                self.tail.notify_one();
            }
            return;
        }
        let logged = self.logging.load(Ordering::Relaxed);
        if !subscribed && !logged {
            return;
        }
        let event = make();
        if logged {
            self.lock_log().push(event.clone());
        }
        if subscribed {
            let _ = self.sender.send(event);
        }
    }

    /// Another instance changed a job (a pushed signal).
    pub(super) fn remote_change(&self) {
        if self.shared && self.subscribed() {
            self.tail.notify_one();
        }
    }

    fn lock_log(&self) -> MutexGuard<'_, EventLog> {
        // Pushes and reads cannot panic half-way.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runtime {
    /// Status changes of the jobs `principal` may see, from now on.
    pub(crate) fn subscribe(&self, principal: &Principal) -> Subscription {
        let hub = &self.events;
        let subscription = Subscription::new(
            hub.sender.subscribe(),
            principal.clone(),
            hub.admin_role.clone(),
            Arc::clone(&hub.subscribers),
        );
        if hub.shared {
            hub.tail.notify_one();
        }
        subscription
    }

    /// Starts keeping the last `capacity` changes per stream (only ever
    /// raises it); a store that keeps events needs no log here.
    pub(crate) fn enable_event_log(&self, capacity: usize) {
        if capacity > 0 && !self.events.shared {
            self.events.lock_log().enable(capacity);
            self.events.logging.store(true, Ordering::Relaxed);
        }
    }

    /// Up to `limit` changes after `after` in the stream `principal` reads.
    pub(crate) async fn events_after(
        &self,
        principal: &Principal,
        after: Option<u64>,
        limit: usize,
    ) -> Result<EventPage> {
        let admin_role = &self.events.admin_role;
        if self.events.shared {
            let stream = EventStream::of(principal, admin_role);
            return self.dao.events(stream, after, limit).await;
        }
        let log = self.events.lock_log();
        if !log.enabled() {
            return Err(Error::Config {
                reason: "the event log is off; call AsyncQueryService::enable_event_log first"
                    .into(),
            });
        }
        Ok(log.page(principal, admin_role, after, limit))
    }

    /// On a store that keeps events: reads the stream of every change and
    /// broadcasts it to subscribers, woken by local changes, pushed
    /// signals and every poll interval. Without subscribers it only keeps
    /// its cursor near the newest event (one read per poll interval), so a
    /// new subscriber starts from about now.
    pub(super) async fn event_tail(self: Arc<Self>) {
        let hub = &self.events;
        if !hub.shared {
            return;
        }
        let mut cursor: Option<u64> = None;
        loop {
            if let Err(e) = self.read_tail(&mut cursor).await {
                tracing::debug!(error = %e, "reading the event stream failed; retrying");
            }
            tokio::select! {
                () = self.tasks.stopped() => return,
                () = hub.tail.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// One round of [`event_tail`](Self::event_tail).
    async fn read_tail(&self, cursor: &mut Option<u64>) -> Result<()> {
        let hub = &self.events;
        let mut after = match *cursor {
            Some(after) if hub.subscribed() => after,
            // Not following (yet): only keep the cursor at the newest.
            _ => {
                *cursor = Some(self.dao.events(EventStream::All, None, 0).await?.newest);
                return Ok(());
            }
        };
        loop {
            let page = self
                .dao
                .events(EventStream::All, Some(after), TAIL_PAGE)
                .await?;
            if page.missed {
                tracing::warn!(after, "events were trimmed before subscribers saw them");
            }
            let full = page.events.len() == TAIL_PAGE;
            after = page.last_id;
            *cursor = Some(after);
            for logged in page.events {
                let _ = hub.sender.send(logged.event);
            }
            if !full {
                return Ok(());
            }
        }
    }
}
