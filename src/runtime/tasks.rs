//! Task ownership: every task the service spawns (background loops and
//! job workers alike) is tracked here, on the runtime captured at `build`,
//! and stopped by one token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(super) struct Tasks {
    tracker: TaskTracker,
    handle: Handle,
    /// Fires when the service stops: background tasks end, and running
    /// jobs are abandoned (the runtime fires their tokens too).
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

    /// `work`, counted as one of the service's tasks while it lives, so
    /// that shutdown waits for it wherever it runs.
    pub(super) fn track<F: Future>(&self, work: F) -> impl Future<Output = F::Output> + use<F> {
        self.tracker.track_future(work)
    }

    /// A new job's cancellation token. Not a child of the stop token: a
    /// child takes the parent's lock when it is created and dropped, and
    /// every job would contend for it. The runtime fires local jobs'
    /// tokens itself when it stops.
    pub(super) fn job_token(&self) -> CancellationToken {
        CancellationToken::new()
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the service stops.
    pub(super) async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Resolves once shutdown starts (or the service stops).
    pub(super) async fn closing(&self) {
        self.closing.cancelled().await;
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

    /// Refuses new work and tells every task to stop.
    pub(super) fn stop(&self) {
        self.close();
        self.stop.cancel();
    }

    /// Waits until every task has ended (after [`stop`](Self::stop)).
    pub(super) async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Sleeps `backoff`'s next pause (and doubles it); false if the service
    /// stopped meanwhile, or if the pause would end after `give_up`.
    pub(super) async fn pause(&self, backoff: &mut Backoff, give_up: Option<Instant>) -> bool {
        let wake = Instant::now() + backoff.next;
        backoff.next = (backoff.next * 2).min(backoff.max);
        if give_up.is_some_and(|give_up| wake > give_up) {
            return false;
        }
        tokio::select! {
            biased;
            () = self.stopped() => false,
            () = tokio::time::sleep_until(wake) => true,
        }
    }
}

/// Pauses between retries: from `first`, doubling up to `max`; see
/// [`Tasks::pause`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first,
            max,
        }
    }

    /// The next pause.
    pub(super) fn next(&self) -> Duration {
        self.next
    }

    /// Starts again from the first pause (after a success).
    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Work polled in the caller's task that moves to a task of its own when
/// [`detach`](Self::detach)ed, or when dropped unfinished (the caller went
/// away): it always runs to its end.
pub(super) struct Detached<T: Send + 'static> {
    work: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    runtime: Arc<super::Runtime>,
}

impl<T: Send + 'static> Detached<T> {
    pub(super) fn new(
        work: Pin<Box<dyn Future<Output = T> + Send>>,
        runtime: Arc<super::Runtime>,
    ) -> Self {
        Detached {
            work: Some(work),
            runtime,
        }
    }

    /// Moves the work to a task of its own.
    pub(super) fn detach(&mut self) {
        if let Some(work) = self.work.take() {
            self.runtime.tasks.spawn(async move {
                work.await;
            });
        }
    }
}

impl<T: Send + 'static> Future for Detached<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(work) = self.work.as_mut() else {
            // Detached: whoever polls this has stopped caring.
            return Poll::Pending;
        };
        let done = work.as_mut().poll(cx);
        if done.is_ready() {
            self.work = None;
        }
        done
    }
}

impl<T: Send + 'static> Drop for Detached<T> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            self.runtime.tasks.spawn(async move {
                work.await;
            });
        }
    }
}
