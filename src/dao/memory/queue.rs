//! The queued jobs of a [`MemoryDao`](super::MemoryDao), per principal,
//! and each principal's running count: what a fair claim reads.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{IdMap, QueryStatus};

/// Running counts kept at zero before idle principals are dropped.
const IDLE_KEPT: usize = 4_096;

/// Queued jobs by principal, each principal's in creation order, and how
/// many jobs each principal has `PROCESSING`.
#[derive(Debug, Default)]
pub(super) struct FairQueue {
    // Ordered maps: for the few principals of most services a comparison
    // or two, cheaper than hashing the name (this is on every status change).
    queued: BTreeMap<String, BTreeMap<u64, Uuid>>,
    running: BTreeMap<String, usize>,
    len: usize,
    /// Queued jobs waiting for a retry, with the time it may start: claims
    /// pass over them until then.
    held: IdMap<DateTime<Utc>>,
}

impl FairQueue {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Follows `principal`'s job `id` (creation sequence `seq`) from status
    /// `from` to `to` (`None`: not stored): into or out of its queue, into
    /// or out of its running count. Every change of the store goes through
    /// here.
    pub(super) fn moved(
        &mut self,
        principal: &str,
        (seq, id): (u64, Uuid),
        from: Option<QueryStatus>,
        to: Option<QueryStatus>,
    ) {
        match from {
            Some(QueryStatus::Queued) => {
                self.remove(principal, seq);
                if !self.held.is_empty() {
                    self.held.remove(&id);
                }
            }
            Some(QueryStatus::Processing) => self.running(principal, false),
            _ => {}
        }
        match to {
            Some(QueryStatus::Queued) => self.push(principal, seq, id),
            Some(QueryStatus::Processing) => self.running(principal, true),
            _ => {}
        }
    }

    /// Queued job `id` may not be claimed before `until` (a retry's
    /// backoff).
    pub(super) fn hold(&mut self, id: Uuid, until: DateTime<Utc>) {
        self.held.insert(id, until);
    }

    fn push(&mut self, principal: &str, seq: u64, id: Uuid) {
        let queue = match self.queued.get_mut(principal) {
            Some(queue) => queue,
            None => self.queued.entry(principal.to_owned()).or_default(),
        };
        if queue.insert(seq, id).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, principal: &str, seq: u64) {
        let Some(queue) = self.queued.get_mut(principal) else {
            return;
        };
        if queue.remove(&seq).is_some() {
            self.len -= 1;
        }
        if queue.is_empty() {
            self.queued.remove(principal);
        }
    }

    /// How many jobs `principal` has queued.
    pub(super) fn queued_of(&self, principal: &str) -> usize {
        self.queued.get(principal).map_or(0, BTreeMap::len)
    }

    /// A job of `principal` started (`true`) or stopped running.
    fn running(&mut self, principal: &str, started: bool) {
        if started {
            match self.running.get_mut(principal) {
                Some(n) => *n += 1,
                None => {
                    self.running.insert(principal.to_owned(), 1);
                }
            }
        } else if let Some(n) = self.running.get_mut(principal) {
            // Idle principals keep their entry (a job that runs inline
            // would otherwise allocate and free it each time) until there
            // are many of them.
            *n = n.saturating_sub(1);
            if *n == 0 && self.running.len() > IDLE_KEPT {
                self.running.retain(|_, n| *n > 0);
            }
        }
    }

    /// The next job to claim, which stays queued until it is
    /// [`moved`](Self::moved): the oldest job of the principal with the
    /// fewest jobs running, the oldest first among equals; jobs `skip`
    /// names are passed over, and so are jobs held past `now` (waiting for
    /// a retry) and principals whose running count `admits` refuses.
    pub(super) fn next(
        &self,
        skip: impl Fn(Uuid) -> bool,
        admits: impl Fn(usize) -> bool,
        now: DateTime<Utc>,
    ) -> Option<(&str, u64, Uuid)> {
        let due = |id: &Uuid| self.held.get(id).is_none_or(|until| *until <= now);
        self.queued
            .iter()
            .filter_map(|(principal, queue)| {
                let running = self.running.get(principal).copied().unwrap_or(0);
                if !admits(running) {
                    return None;
                }
                let (&seq, &id) = queue.iter().find(|&(_, &id)| !skip(id) && due(&id))?;
                Some((running, seq, principal.as_str(), id))
            })
            .min_by_key(|&(running, seq, _, _)| (running, seq))
            .map(|(_, seq, principal, id)| (principal, seq, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_principal_with_fewest_running_goes_first_then_the_oldest() {
        let mut queue = FairQueue::default();
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for (seq, (principal, id)) in ["alice", "alice", "alice", "bob", "carol"]
            .into_iter()
            .zip(&ids)
            .enumerate()
        {
            queue.moved(
                principal,
                (seq as u64, *id),
                None,
                Some(QueryStatus::Queued),
            );
        }
        let mut order = Vec::new();
        while let Some((principal, seq, id)) = queue.next(|_| false, |_| true, Utc::now()) {
            let principal = principal.to_owned();
            let claim = (Some(QueryStatus::Queued), Some(QueryStatus::Processing));
            queue.moved(&principal, (seq, id), claim.0, claim.1);
            order.push(id);
        }
        assert_eq!(order, [ids[0], ids[3], ids[4], ids[1], ids[2]]);
        assert_eq!(queue.len(), 0);
        for i in 0..3 {
            queue.moved("alice", (i, ids[0]), Some(QueryStatus::Processing), None);
        }
        assert_eq!(queue.running.get("alice"), Some(&0));
        // Skipped jobs are passed over, not removed.
        queue.moved("dave", (9, ids[0]), None, Some(QueryStatus::Queued));
        queue.moved("dave", (10, ids[1]), None, Some(QueryStatus::Queued));
        assert_eq!(
            queue
                .next(|id| id == ids[0], |_| true, Utc::now())
                .map(|n| n.2),
            Some(ids[1])
        );
        assert_eq!(queue.len(), 2);
        // A principal at its running limit is passed over.
        queue.moved("erin", (11, ids[2]), None, Some(QueryStatus::Queued));
        queue.moved("dave", (0, ids[3]), None, Some(QueryStatus::Processing));
        let at_most_one = |running: usize| running < 1;
        assert_eq!(
            queue.next(|_| false, at_most_one, Utc::now()).map(|n| n.2),
            Some(ids[2])
        );
        queue.moved("erin", (12, ids[4]), None, Some(QueryStatus::Processing));
        assert_eq!(queue.next(|_| false, at_most_one, Utc::now()), None);
    }

    #[test]
    fn a_job_held_for_a_retry_is_passed_over_until_it_is_due() {
        let mut queue = FairQueue::default();
        let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Utc::now();
        queue.moved("alice", (0, early), None, Some(QueryStatus::Queued));
        queue.moved("alice", (1, late), None, Some(QueryStatus::Queued));
        queue.hold(early, now + chrono::TimeDelta::seconds(1));
        let next = |queue: &FairQueue, at| queue.next(|_| false, |_| true, at).map(|n| n.2);
        assert_eq!(next(&queue, now), Some(late), "the held job waits");
        let due = now + chrono::TimeDelta::seconds(1);
        assert_eq!(next(&queue, due), Some(early), "due: first again");
        // Leaving the queue forgets the hold.
        queue.moved(
            "alice",
            (0, early),
            Some(QueryStatus::Queued),
            Some(QueryStatus::Processing),
        );
        assert!(queue.held.is_empty());
    }
}
