//! The heartbeat: renews the leases of this instance's running jobs and
//! learns of cancellations and claims made elsewhere.

use std::sync::Arc;

use uuid::Uuid;

use super::Runtime;
use super::clock::to_delta;
use crate::model::QueryStatus;

impl Runtime {
    /// Every third of the lease: one DAO call renews the leases of the
    /// running jobs and reports the status of every local job.
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let period = self.config.lease / 3;
        loop {
            tokio::select! {
                () = self.tasks.stopped() => return,
                () = tokio::time::sleep(period) => {}
            }
            // Follow the store's clock, or corrections of the system clock.
            self.set_clock(1).await;
            self.beat().await;
        }
    }

    /// One beat: renews the leases of the running jobs and learns the
    /// status of every local job; false if the store failed. The listener
    /// also calls it when its stream comes back, for the cancellations it
    /// missed meanwhile.
    pub(super) async fn beat(&self) -> bool {
        // Running jobs get their leases renewed; queued ones are checked
        // too, so a job another instance claimed leaves this instance's
        // queue count (a submit-only instance never claims its own).
        let (running, queued) = self.jobs.running_and_queued();
        if running.is_empty() && queued.is_empty() {
            return true;
        }
        let all: Vec<Uuid> = running.iter().chain(&queued).copied().collect();
        let expires_at = self.clock.now() + to_delta(self.config.lease);
        match self
            .dao
            .renew_leases(self.config.instance_id, &all, expires_at)
            .await
        {
            Ok(statuses) => {
                for (id, status) in statuses {
                    if status == QueryStatus::Cancelled {
                        self.jobs.fire(id);
                    }
                    if status != QueryStatus::Queued && queued.contains(&id) && !self.jobs.runs(id)
                    {
                        self.jobs.forget(id);
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing job leases failed");
                false
            }
        }
    }
}
