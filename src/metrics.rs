//! Metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`): what the service records, under which names and
//! labels.
//!
//! The crate only records; the host installs a recorder, for example
//! `metrics-exporter-prometheus` (the SQL Lab example serves its output at
//! `/metrics`). Without the feature every recording compiles to nothing;
//! with it and no recorder installed, each costs one atomic load.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | [`JOBS_SUBMITTED`] | counter | `kind` | jobs stored by `submit` and `submit_many` |
//! | [`JOBS_FINISHED`] | counter | `kind`, `status` | terminal states this instance wrote (each job is counted once, by the instance whose write ended it) |
//! | [`SUBMIT_ANSWERS`] | counter | `answer` (`inline`, `detached`) | `submit` calls answered with a finished job, or with a job still running |
//! | [`JOBS_QUEUED`] | gauge | | jobs submitted here that wait for a slot here |
//! | [`JOBS_RUNNING`] | gauge | | jobs running (or claimed) here |
//! | [`QUEUE_WAIT`] | histogram, seconds | `kind` | from creation until the executor starts |
//! | [`RUN_TIME`] | histogram, seconds | `kind`, `ending` | executor run time, until it ends or is stopped |
//! | [`EXPORT_ROWS`] | counter | `format` | records written by finished exports |
//! | [`EXPORT_BYTES`] | counter | `format` | bytes published by finished exports |
//! | [`CLEANER_DELETED`] | counter | `what` (`records`, `results`, `partials`) | records past retention, results past their lifetime and partial exports of dead writers the cleaner removed |
//! | [`LEASES_EXPIRED`] | counter | | jobs the cleaner ended because their owner stopped renewing its lease |
//!
//! `kind` is `query` or `table_export`; `status` is the Elide spelling
//! (`COMPLETE`, `FAILURE`, …); `ending` is `finished`, `failed`,
//! `cancelled`, `timed_out` or `stopped` (the service stopped); `format`
//! is the export's file extension (`csv`, …).
//!
//! Call [`describe`] once after installing a recorder to give each metric
//! its unit and help text.
//!
//! ```
//! # #[cfg(feature = "metrics")]
//! # {
//! use metrics_util::debugging::{DebugValue, DebuggingRecorder};
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || {
//!     # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//!     rt.block_on(async {
//!         use async_query::*;
//!         let service = AsyncQueryService::builder()
//!             .executor(std::sync::Arc::new(async_query::testing::ScriptedExecutor::new()))
//!             .build()?;
//!         service.submit(&Principal::new("alice"), SubmitRequest::query("select 1")).await?;
//!         Ok::<(), async_query::Error>(())
//!     })
//! })?;
//! let finished = snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| {
//!     (key.key().name() == async_query::metrics::JOBS_FINISHED).then_some(value)
//! });
//! assert_eq!(finished, Some(DebugValue::Counter(1)));
//! # }
//! # Ok::<(), async_query::Error>(())
//! ```

/// Counter: jobs stored by `submit` and `submit_many`; label `kind`.
pub const JOBS_SUBMITTED: &str = "async_query_jobs_submitted";
/// Counter: terminal states written by this instance; labels `kind`, `status`.
pub const JOBS_FINISHED: &str = "async_query_jobs_finished";
/// Counter: `submit` answers; label `answer` (`inline` or `detached`).
pub const SUBMIT_ANSWERS: &str = "async_query_submit_answers";
/// Gauge: jobs submitted here that wait for a slot here.
pub const JOBS_QUEUED: &str = "async_query_jobs_queued";
/// Gauge: jobs running (or claimed) here.
pub const JOBS_RUNNING: &str = "async_query_jobs_running";
/// Histogram (seconds): from a job's creation until its executor starts; label `kind`.
pub const QUEUE_WAIT: &str = "async_query_queue_wait_seconds";
/// Histogram (seconds): executor run time; labels `kind`, `ending`.
pub const RUN_TIME: &str = "async_query_run_seconds";
/// Counter: records written by finished exports; label `format`.
pub const EXPORT_ROWS: &str = "async_query_export_rows";
/// Counter: bytes published by finished exports; label `format`.
pub const EXPORT_BYTES: &str = "async_query_export_bytes";
/// Counter: what the cleaner removed; label `what` (`records`, `results`, `partials`).
pub const CLEANER_DELETED: &str = "async_query_cleaner_deleted";
/// Counter: jobs ended because their owner's lease expired.
pub const LEASES_EXPIRED: &str = "async_query_leases_expired";

/// Gives each metric its unit and help text in the installed recorder
/// (call it after installing one; recording works without it).
#[cfg(feature = "metrics")]
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        JOBS_SUBMITTED,
        Unit::Count,
        "Jobs stored by submit and submit_many."
    );
    describe_counter!(
        JOBS_FINISHED,
        Unit::Count,
        "Terminal states written by this instance."
    );
    describe_counter!(
        SUBMIT_ANSWERS,
        Unit::Count,
        "Submit calls answered with a finished job (inline) or a running one (detached)."
    );
    describe_gauge!(JOBS_QUEUED, Unit::Count, "Jobs waiting for a slot here.");
    describe_gauge!(JOBS_RUNNING, Unit::Count, "Jobs running here.");
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "From a job's creation until its executor starts."
    );
    describe_histogram!(RUN_TIME, Unit::Seconds, "Executor run time.");
    describe_counter!(
        EXPORT_ROWS,
        Unit::Count,
        "Records written by finished exports."
    );
    describe_counter!(
        EXPORT_BYTES,
        Unit::Bytes,
        "Bytes published by finished exports."
    );
    describe_counter!(CLEANER_DELETED, Unit::Count, "What the cleaner removed.");
    describe_counter!(
        LEASES_EXPIRED,
        Unit::Count,
        "Jobs ended because their owner's lease expired."
    );
}

#[cfg(feature = "metrics")]
pub(crate) use recording::*;
#[cfg(not(feature = "metrics"))]
pub(crate) use silent::*;

#[cfg(feature = "metrics")]
mod recording {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use metrics::{counter, gauge, histogram};

    use super::*;
    use crate::model::{AsyncQuery, JobKind, QueryStatus};

    fn kind(kind: &JobKind) -> &'static str {
        match kind {
            JobKind::Query => "query",
            JobKind::TableExport { .. } => "table_export",
        }
    }

    pub(crate) fn submitted<'a>(jobs: impl IntoIterator<Item = &'a AsyncQuery>) {
        let (mut queries, mut exports) = (0, 0);
        for job in jobs {
            match &job.kind {
                JobKind::Query => queries += 1,
                JobKind::TableExport { .. } => exports += 1,
            }
        }
        for (name, n) in [("query", queries), ("table_export", exports)] {
            if n > 0 {
                counter!(JOBS_SUBMITTED, "kind" => name).increment(n);
            }
        }
    }

    pub(crate) fn answered(status: QueryStatus) {
        let answer = if status.is_terminal() {
            "inline"
        } else {
            "detached"
        };
        counter!(SUBMIT_ANSWERS, "answer" => answer).increment(1);
    }

    /// A change this instance wrote.
    pub(crate) fn changed(job: &AsyncQuery) {
        if job.status.is_terminal() {
            counter!(JOBS_FINISHED, "kind" => kind(&job.kind), "status" => job.status.as_str())
                .increment(1);
        }
    }

    /// The local table's counts changed.
    pub(crate) fn local(running: usize, queued: usize) {
        gauge!(JOBS_RUNNING).set(running as f64);
        gauge!(JOBS_QUEUED).set(queued as f64);
    }

    /// A run starting at `now`; its [`Run::ended`] records its run time.
    pub(crate) struct Run {
        kind: &'static str,
        started: tokio::time::Instant,
    }

    pub(crate) fn run_started(job: &AsyncQuery, now: impl FnOnce() -> DateTime<Utc>) -> Run {
        let kind = kind(&job.kind);
        let waited = (now() - job.created_on).to_std().unwrap_or(Duration::ZERO);
        histogram!(QUEUE_WAIT, "kind" => kind).record(waited.as_secs_f64());
        Run {
            kind,
            started: tokio::time::Instant::now(),
        }
    }

    impl Run {
        pub(crate) fn ended(self, ending: &'static str) {
            let ran = self.started.elapsed().as_secs_f64();
            histogram!(RUN_TIME, "kind" => self.kind, "ending" => ending).record(ran);
        }
    }

    pub(crate) fn exported(extension: &str, rows: u64, bytes: u64) {
        let format = extension.to_owned();
        counter!(EXPORT_ROWS, "format" => format.clone()).increment(rows);
        counter!(EXPORT_BYTES, "format" => format).increment(bytes);
    }

    pub(crate) fn cleaned(what: &'static str, n: u64) {
        if n > 0 {
            counter!(CLEANER_DELETED, "what" => what).increment(n);
        }
    }

    pub(crate) fn leases_expired(n: u64) {
        if n > 0 {
            counter!(LEASES_EXPIRED).increment(n);
        }
    }
}

/// The same calls, doing nothing (feature `metrics` off).
#[cfg(not(feature = "metrics"))]
mod silent {
    use chrono::{DateTime, Utc};

    use crate::model::{AsyncQuery, QueryStatus};

    #[inline(always)]
    pub(crate) fn submitted<'a>(_: impl IntoIterator<Item = &'a AsyncQuery>) {}
    #[inline(always)]
    pub(crate) fn answered(_: QueryStatus) {}
    #[inline(always)]
    pub(crate) fn changed(_: &AsyncQuery) {}
    #[inline(always)]
    pub(crate) fn local(_: usize, _: usize) {}
    pub(crate) struct Run;
    #[inline(always)]
    pub(crate) fn run_started(_: &AsyncQuery, _: impl FnOnce() -> DateTime<Utc>) -> Run {
        Run
    }
    impl Run {
        #[inline(always)]
        pub(crate) fn ended(self, _: &'static str) {}
    }
    #[inline(always)]
    pub(crate) fn exported(_: &str, _: u64, _: u64) {}
    #[inline(always)]
    pub(crate) fn cleaned(_: &'static str, _: u64) {}
    #[inline(always)]
    pub(crate) fn leases_expired(_: u64) {}
}
