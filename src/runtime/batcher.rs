//! The batcher (`claim_batch > 1`): finished jobs' records written in
//! batches while the workers run their next jobs.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::Runtime;
use super::settle::Settlement;
use crate::dao::StatusChange;

type Queued = (Settlement, StatusChange);

pub(super) struct Batcher {
    tx: mpsc::Sender<Queued>,
    /// Taken by the batcher task when it starts.
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// The most records one write takes.
    max: usize,
}

impl Batcher {
    pub(super) fn new(claim_batch: usize) -> Self {
        let max = claim_batch.max(1);
        // Room for the next batch while one is written: a full channel
        // makes workers wait, which bounds the records not yet written.
        let (tx, rx) = mpsc::channel(2 * max);
        Batcher {
            tx,
            rx: Mutex::new(Some(rx)),
            max,
        }
    }

    /// Queues a settlement and its first change; false once the batcher
    /// has stopped (the settlement is dropped: its job is let go).
    pub(super) async fn hand_over(&self, settlement: Settlement, change: StatusChange) -> bool {
        self.tx.send((settlement, change)).await.is_ok()
    }

    pub(super) fn take_receiver(&self) -> Option<mpsc::Receiver<Queued>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Runtime {
    /// Takes what is waiting, up to `claim_batch`, and writes it with one
    /// [`update_status_many`](crate::AsyncApiDao::update_status_many)
    /// while the next batch fills; then settles each job with its outcome,
    /// following conflicts and failures as a lone write would.
    pub(super) async fn batcher(self: Arc<Self>, mut queue: mpsc::Receiver<Queued>) {
        let max = self.batcher.max;
        loop {
            let first = tokio::select! {
                () = self.tasks.stopped() => return,
                next = queue.recv() => match next {
                    Some(queued) => queued,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match queue.try_recv() {
                    Ok(queued) => batch.push(queued),
                    Err(_) => break,
                }
            }
            // The changes move into the call's slice (no copies of result
            // bodies); the settlements wait beside them.
            let (changes, waiting): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|(settlement, change)| ((settlement.id(), change), settlement))
                .unzip();
            let outcomes = match self.dao.update_status_many(&changes).await {
                Ok(outcomes) if outcomes.len() == changes.len() => outcomes,
                // Some may have been applied: each is tried again alone (an
                // applied one then conflicts with its own status).
                _ => Vec::new(),
            };
            let mut outcomes = outcomes.into_iter();
            for ((_, change), settlement) in changes.into_iter().zip(waiting) {
                self.settle(settlement, change, outcomes.next()).await;
            }
        }
    }
}
