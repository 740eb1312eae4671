//! The crate-private engine behind [`AsyncQueryService`](crate::AsyncQueryService).
//!
//! This file only composes the parts. Each part owns its state in its own
//! file, behind a small API, and adds the runtime methods of its
//! responsibility:
//!
//! | part | owns | does |
//! |---|---|---|
//! | `clock` | wall time at start + Tokio time + a correction set by the store's clock | timestamps and leases on one clock across instances |
//! | `tasks` | the task tracker, runtime handle, stop and closing tokens | spawning and stopping every task |
//! | `table`, `local` | the local job table (pure) and its lock | mirroring changes in lifecycle order, the queued count, `JobGuard` |
//! | `events`, `event_log` | broadcast, subscriber count, the log | `subscribe`, `events_after` |
//! | `transition` | — | the one way a status changes: compare-and-set, then mirror |
//! | `admission` | — | `submit`, `submit_many` |
//! | `waiting`, `cancel` | the remote-change signal | `get`, `wait`, `cancel` |
//! | `dispatch` | slots, the claimed-ahead queue | claims for idle slots, the dispatcher, the worker loop |
//! | `execution`, `export` | — | one executor call; streaming exports; `download` |
//! | `ending` | — | the one ending policy |
//! | `writer`, `settle` | the queue of finished jobs | writing how jobs ended, with group commit, and claiming for the freed slots |
//! | `heartbeat`, `listener`, `cleaner`, `shutdown` | — | the background loops and shutdown |
//!
//! Every status change is a compare-and-set in the DAO; the local table
//! only mirrors what the DAO decided (for fast waiting, cancellation tokens
//! and the queue bound).

use std::sync::Arc;

use tokio::runtime::Handle;

use crate::config::Config;
use crate::dao::{AsyncApiDao, ListFilter};
use crate::error::Result;
use crate::executor::QueryExecutor;
use crate::model::QueryStatus;
use crate::storage::ResultStorageEngine;

/// Awaits `$work` inside `$span` when a subscriber wants the span, and
/// `$work` as is otherwise. The traced future is boxed, and `$work` is
/// built in the branch that runs, so an untraced future (the common case)
/// is as small as with no span at all: wrapping every job's future in a
/// disabled span cost about 1,000 instructions of copying per inline
/// submit (callgrind), 0.3 µs in `benches/lifecycle.rs`.
macro_rules! traced {
    ($span:expr, $work:expr) => {{
        let span: tracing::Span = $span;
        if span.is_disabled() {
            $work.await
        } else {
            Box::pin(tracing::Instrument::instrument($work, span)).await
        }
    }};
}

mod admission;
mod cancel;
mod cleaner;
mod clock;
mod dispatch;
mod ending;
mod event_log;
mod events;
mod execution;
mod export;
mod heartbeat;
mod idempotency;
mod listener;
mod local;
mod retention;
mod reuse;
mod settle;
mod shutdown;
mod table;
mod tasks;
mod transition;
mod waiting;
mod writer;

pub(crate) struct Runtime {
    config: Config,
    dao: Arc<dyn AsyncApiDao>,
    storage: Arc<dyn ResultStorageEngine>,
    executor: Arc<dyn QueryExecutor>,
    /// The export formats this instance knows.
    formats: crate::format::Formats,
    clock: clock::Clock,
    tasks: tasks::Tasks,
    jobs: Arc<local::LocalJobs>,
    events: events::EventHub,
    dispatch: dispatch::Dispatch,
    waiters: waiting::Waiters,
    writer: writer::Writer,
    /// The cleaner's last sweeps that changed something, oldest first.
    sweeps: std::sync::Mutex<std::collections::VecDeque<crate::overview::CleanerSweep>>,
}

impl Runtime {
    /// The export formats this instance knows.
    pub(crate) fn formats(&self) -> &crate::format::Formats {
        &self.formats
    }

    /// A runtime whose tasks run on `handle`; nothing runs until
    /// [`start`](Self::start).
    pub(crate) fn new(
        config: Config,
        dao: Arc<dyn AsyncApiDao>,
        storage: Arc<dyn ResultStorageEngine>,
        executor: Arc<dyn QueryExecutor>,
        formats: crate::format::Formats,
        handle: Handle,
        clock_skew: chrono::TimeDelta,
    ) -> Arc<Self> {
        Arc::new(Runtime {
            clock: clock::Clock::new(clock_skew),
            tasks: tasks::Tasks::new(handle),
            jobs: Arc::new(local::LocalJobs::new(config.instance_id)),
            events: events::EventHub::new(
                config.event_capacity,
                config.admin_role.clone(),
                dao.keeps_events(),
            ),
            dispatch: dispatch::Dispatch::new(config.pool_size, config.claim_batch),
            waiters: waiting::Waiters::default(),
            writer: writer::Writer::default(),
            sweeps: std::sync::Mutex::default(),
            config,
            dao,
            storage,
            executor,
            formats,
        })
    }

    /// Starts the dispatcher (which first recovers this instance's
    /// interrupted jobs), the writer, the heartbeat, the cleaner and the
    /// listener.
    pub(crate) fn start(self: &Arc<Self>) {
        self.tasks.spawn(Arc::clone(self).dispatcher());
        self.tasks.spawn(Arc::clone(self).writer());
        self.tasks.spawn(Arc::clone(self).heartbeat());
        self.tasks.spawn(Arc::clone(self).cleaner());
        self.tasks.spawn(Arc::clone(self).listener());
        self.tasks.spawn(Arc::clone(self).event_tail());
    }

    /// The queue across every instance, read from the store now, with
    /// this instance's recent sweeps.
    pub(crate) async fn overview(&self) -> Result<crate::overview::Overview> {
        self.clock_ready().await;
        let now = self.clock.now();
        let active = self
            .dao
            .list(&ListFilter::statuses([
                QueryStatus::Queued,
                QueryStatus::Processing,
                QueryStatus::Cancelled,
            ]))
            .await?;
        let sweeps = self.sweeps.lock().unwrap_or_else(|p| p.into_inner());
        Ok(crate::overview::of(&active, now, &sweeps))
    }

    /// Resolves once shutdown starts (or the service stops).
    pub(crate) async fn closing(&self) {
        self.tasks.closing().await;
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The result storage (the HTTP adapter asks it for presigned URLs).
    #[cfg(feature = "axum")]
    pub(crate) fn storage(&self) -> &Arc<dyn ResultStorageEngine> {
        &self.storage
    }

    /// Stops every task and abandons the jobs running here, as a crash
    /// would: nothing more is written, their leases expire.
    fn stop_now(&self) {
        self.tasks.stop();
        self.jobs.fire_all();
    }
}

/// Held by every clone of the service; the last one dropped stops the
/// runtime (see [`Runtime::stop_now`]).
pub(crate) struct StopOnDrop(pub(crate) Arc<Runtime>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop_now();
    }
}
