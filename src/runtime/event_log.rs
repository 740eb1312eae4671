//! The optional in-memory event log behind
//! [`AsyncQueryService::events_after`](crate::AsyncQueryService::events_after):
//! status changes numbered in order, kept up to a capacity, read by cursor.

use std::collections::VecDeque;

use crate::event::{EventPage, JobEvent, LoggedEvent};
use crate::model::Principal;

#[derive(Debug, Default)]
pub(super) struct EventLog {
    events: VecDeque<LoggedEvent>,
    /// Sequence number of the next event (the first is 1).
    next: u64,
    capacity: usize,
}

impl EventLog {
    pub(super) fn enable(&mut self, capacity: usize) {
        if self.next == 0 {
            self.next = 1;
        }
        self.capacity = self.capacity.max(capacity);
    }

    pub(super) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub(super) fn push(&mut self, event: JobEvent) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(LoggedEvent {
            seq: self.next,
            event,
        });
        self.next += 1;
    }

    /// Up to `limit` events after `after` that `principal` may see.
    pub(super) fn page(
        &self,
        principal: &Principal,
        admin_role: &str,
        after: Option<u64>,
        limit: usize,
    ) -> EventPage {
        let newest = self.next.saturating_sub(1);
        let oldest = self.events.front().map_or(self.next, |e| e.seq);
        // A cursor from the future was handed out by another process (or an
        // earlier run of this one): start again from what is kept.
        let (after, missed) = match after {
            Some(after) if after > newest => (oldest.saturating_sub(1), true),
            Some(after) => (after, after + 1 < oldest),
            None => (oldest.saturating_sub(1), false),
        };
        let skip = after.saturating_sub(oldest.saturating_sub(1));
        let mut events = Vec::new();
        let mut cursor = after;
        for logged in self
            .events
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        {
            if events.len() == limit {
                break;
            }
            cursor = logged.seq;
            if principal.may_see(&logged.event.owner, admin_role) {
                events.push(logged.clone());
            }
        }
        EventPage {
            events,
            last_id: cursor,
            missed,
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
        }
    }

    #[test]
    fn pages_by_cursor_per_principal_and_reports_gaps() {
        let alice = Principal::new("alice");
        let mut log = EventLog::default();
        log.enable(4);
        // Nothing logged yet: nothing missed either.
        let empty = log.page(&alice, "admin", Some(0), 10);
        assert!(empty.events.is_empty());
        assert_eq!((empty.last_id, empty.missed), (0, false));
        for owner in ["alice", "bob", "alice", "alice", "bob", "alice"] {
            log.push(event(owner));
        }
        // Kept: seq 3..=6 (alice, alice, bob, alice).
        let all = log.page(&alice, "admin", None, 10);
        assert_eq!(
            all.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 6]
        );
        assert_eq!((all.last_id, all.missed), (6, false));

        let first = log.page(&alice, "admin", Some(2), 1);
        assert_eq!(first.events.len(), 1);
        assert_eq!((first.last_id, first.missed), (3, false));
        // Bob's event is skipped, and the cursor moves past it.
        let rest = log.page(&alice, "admin", Some(4), 10);
        assert_eq!(rest.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
        assert_eq!(rest.last_id, 6);
        let none = log.page(&alice, "admin", Some(6), 10);
        assert!(none.events.is_empty());
        assert_eq!((none.last_id, none.missed), (6, false));

        // Seq 2 was dropped: a cursor at 1 missed it.
        assert!(log.page(&alice, "admin", Some(1), 10).missed);
        // A cursor this log never handed out restarts from the oldest.
        let restarted = log.page(&alice, "admin", Some(99), 10);
        assert!(restarted.missed);
        assert_eq!(restarted.events[0].seq, 3);
    }
}
