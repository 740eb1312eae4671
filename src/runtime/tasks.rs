//! Task ownership: every task the service spawns (background loops and
//! job workers alike) is tracked here, on the runtime captured at `build`,
//! and stopped by one token.

use std::future::Future;

use tokio::runtime::Handle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub(super) struct Tasks {
    tracker: TaskTracker,
    handle: Handle,
    /// Fires when the service stops: background tasks end, running jobs
    /// are abandoned (their tokens are children of this one).
    stop: CancellationToken,
    /// Fires when `shutdown` starts: no new submissions or claims.
    closing: CancellationToken,
}

impl Tasks {
    pub(super) fn new(handle: Handle) -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            handle,
            stop: CancellationToken::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Runs `task` on the service's runtime, owned by the tracker.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn_on(task, &self.handle);
    }

    /// A new job's cancellation token: fires on cancel, or when the service
    /// stops.
    pub(super) fn job_token(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// Stops everything when dropped (the last service clone holds it).
    pub(super) fn stop_on_drop(&self) -> DropGuard {
        self.stop.clone().drop_guard()
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the service stops.
    pub(super) async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Whether new submissions and claims are accepted.
    pub(super) fn accepting(&self) -> bool {
        !self.closing.is_cancelled() && !self.stop.is_cancelled()
    }

    /// Refuses new submissions and claims from now on.
    pub(super) fn close(&self) {
        self.closing.cancel();
        self.tracker.close();
    }

    /// Stops every task and waits until all have ended.
    pub(super) async fn stop(&self) {
        self.close();
        self.stop.cancel();
        self.tracker.wait().await;
    }
}
