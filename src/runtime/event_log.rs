//! The optional in-memory event log behind
//! [`AsyncQueryService::events_after`](crate::AsyncQueryService::events_after)
//! for stores that keep no events themselves: status changes numbered in
//! order, one stream per principal and one of every change (read by
//! admins), each kept up to a capacity and read by cursor.
//!
//! A principal's positions count only that principal's changes, so a
//! cursor never reveals how much others did.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::event::{EventPage, EventStream, JobEvent, LoggedEvent};
use crate::model::Principal;

/// The stream of every change, or of one principal's.
#[derive(Debug, Default)]
struct Stream {
    events: VecDeque<LoggedEvent>,
    /// Position of the newest event (the first is 1; 0: none yet).
    newest: u64,
}

impl Stream {
    fn push(&mut self, event: JobEvent, capacity: usize) {
        if self.events.len() >= capacity {
            self.events.pop_front();
        }
        self.newest += 1;
        self.events.push_back(LoggedEvent {
            seq: self.newest,
            event,
        });
    }

    /// Up to `limit` events after `after`.
    fn page(&self, after: Option<u64>, limit: usize) -> EventPage {
        let oldest = self.events.front().map_or(self.newest + 1, |e| e.seq);
        let (after, missed) = match after {
            // A cursor from the future was handed out by another process (or
            // an earlier run of this one): start again from what is kept.
            Some(after) if after > self.newest => (oldest - 1, true),
            Some(after) => (after, after + 1 < oldest),
            None => (oldest - 1, false),
        };
        let skip = usize::try_from(after.saturating_sub(oldest - 1)).unwrap_or(usize::MAX);
        let events: Vec<LoggedEvent> = self.events.iter().skip(skip).take(limit).cloned().collect();
        EventPage {
            last_id: events.last().map_or(after, |e| e.seq),
            events,
            missed,
            newest: self.newest,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct EventLog {
    all: Stream,
    owners: HashMap<Arc<str>, Stream>,
    /// Events kept per stream; 0 while the log is off.
    capacity: usize,
}

impl EventLog {
    pub(super) fn enable(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }

    pub(super) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(super) fn push(&mut self, event: JobEvent) {
        let capacity = self.capacity;
        let owner = match self.owners.get_mut(&event.owner) {
            Some(owner) => owner,
            None => self.owners.entry(event.owner.clone()).or_default(),
        };
        owner.push(event.clone(), capacity);
        self.all.push(event, capacity);
    }

    /// Up to `limit` events after `after` in `principal`'s stream: every
    /// change for an admin, the principal's own otherwise.
    pub(super) fn page(
        &self,
        principal: &Principal,
        admin_role: &str,
        after: Option<u64>,
        limit: usize,
    ) -> EventPage {
        match EventStream::of(principal, admin_role) {
            EventStream::Owner(name) => match self.owners.get(name) {
                Some(stream) => stream.page(after, limit),
                None => Stream::default().page(after, limit),
            },
            EventStream::All => self.all.page(after, limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKind, QueryStatus};

    fn event(owner: &str) -> JobEvent {
        JobEvent {
            id: uuid::Uuid::new_v4(),
            kind: JobKind::Query,
            owner: owner.into(),
            from: None,
            to: QueryStatus::Queued,
            at: chrono::Utc::now(),
            progress: None,
        }
    }

    fn seqs(page: &EventPage) -> Vec<u64> {
        page.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn pages_by_cursor_per_principal_and_reports_gaps() {
        let alice = Principal::new("alice");
        let admin = Principal::new("root").with_role("admin");
        let mut log = EventLog::default();
        log.enable(3);
        // Nothing logged yet: nothing missed either.
        let empty = log.page(&alice, "admin", Some(0), 10);
        assert!(empty.events.is_empty());
        assert_eq!((empty.last_id, empty.missed, empty.newest), (0, false, 0));
        for owner in ["alice", "bob", "alice", "alice", "bob", "alice"] {
            log.push(event(owner));
        }
        // Alice's stream numbers her 4 events 1..=4 and keeps 2..=4; bob's
        // events neither appear nor move her cursor.
        let all = log.page(&alice, "admin", None, 10);
        assert_eq!(seqs(&all), [2, 3, 4]);
        assert!(all.events.iter().all(|e| &*e.event.owner == "alice"));
        assert_eq!((all.last_id, all.missed, all.newest), (4, false, 4));
        let first = log.page(&alice, "admin", Some(1), 1);
        assert_eq!(seqs(&first), [2]);
        assert_eq!((first.last_id, first.missed), (2, false));
        let none = log.page(&alice, "admin", Some(4), 10);
        assert!(none.events.is_empty());
        assert_eq!((none.last_id, none.missed), (4, false));
        // Her event 1 was dropped: a cursor at 0 missed it.
        assert!(log.page(&alice, "admin", Some(0), 10).missed);
        // A cursor this log never handed out restarts from the oldest.
        let restarted = log.page(&alice, "admin", Some(99), 10);
        assert!(restarted.missed);
        assert_eq!(seqs(&restarted), [2, 3, 4]);

        // An admin reads the stream of every change: 6, of which 4..=6 kept.
        let everything = log.page(&admin, "admin", None, 10);
        assert_eq!(seqs(&everything), [4, 5, 6]);
        assert_eq!(everything.newest, 6);
        // A principal with no events has an empty stream.
        let carol = log.page(&Principal::new("carol"), "admin", None, 10);
        assert_eq!((carol.events.len(), carol.last_id, carol.newest), (0, 0, 0));
    }
}
