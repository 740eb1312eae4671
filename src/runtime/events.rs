//! The event hub: status changes broadcast to subscribers and, once
//! enabled, kept in the event log read by cursor.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::Runtime;
use super::event_log::EventLog;
use crate::error::{Error, Result};
use crate::event::{EventPage, JobEvent, Subscription};
use crate::model::{AsyncQuery, Principal, QueryStatus};

pub(super) struct EventHub {
    sender: broadcast::Sender<JobEvent>,
    /// Live subscriptions (an atomic: `receiver_count` takes the
    /// channel's lock).
    subscribers: Arc<AtomicUsize>,
    log: Mutex<EventLog>,
    logging: AtomicBool,
    admin_role: String,
}

impl EventHub {
    pub(super) fn new(capacity: usize, admin_role: String) -> Self {
        EventHub {
            sender: broadcast::channel(capacity).0,
            subscribers: Arc::default(),
            log: Mutex::default(),
            logging: AtomicBool::new(false),
            admin_role,
        }
    }

    /// Whether anyone follows events (a subscriber or the log): when
    /// nobody does, emitting costs nothing.
    pub(super) fn listening(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0 || self.logging.load(Ordering::Relaxed)
    }

    /// Emits the change of `job` from `from` to `to` (which may be a step
    /// before `job.status`).
    pub(super) fn emit(&self, job: &AsyncQuery, from: Option<QueryStatus>, to: QueryStatus) {
        let subscribed = self.subscribers.load(Ordering::Relaxed) > 0;
        let logged = self.logging.load(Ordering::Relaxed);
        if !subscribed && !logged {
            return;
        }
        let event = JobEvent {
            id: job.id,
            kind: job.kind,
            owner: job.principal.name.clone(),
            from,
            to,
            at: job.updated_on,
        };
        if logged {
            self.lock_log().push(event.clone());
        }
        if subscribed {
            let _ = self.sender.send(event);
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
        Subscription::new(
            hub.sender.subscribe(),
            principal.clone(),
            hub.admin_role.clone(),
            Arc::clone(&hub.subscribers),
        )
    }

    /// Starts keeping the last `capacity` changes (only ever raises it).
    pub(crate) fn enable_event_log(&self, capacity: usize) {
        if capacity > 0 {
            self.events.lock_log().enable(capacity);
            self.events.logging.store(true, Ordering::Relaxed);
        }
    }

    /// Up to `limit` logged changes after `after` that `principal` may see.
    pub(crate) fn events_after(
        &self,
        principal: &Principal,
        after: Option<u64>,
        limit: usize,
    ) -> Result<EventPage> {
        let log = self.events.lock_log();
        if !log.enabled() {
            return Err(Error::Config {
                reason: "the event log is off; call AsyncQueryService::enable_event_log first"
                    .into(),
            });
        }
        Ok(log.page(principal, &self.events.admin_role, after, limit))
    }
}
