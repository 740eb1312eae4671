//! Service configuration with Elide's defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Settings of an [`AsyncQueryService`](crate::AsyncQueryService).
///
/// Defaults follow Elide's `elide.async.*` properties where Elide has one.
/// Durations deserialise from humantime strings (`"10s"`, `"7days"`), so a
/// `Config` can live in a TOML/YAML/JSON file:
///
/// ```
/// let config: async_query::Config =
///     serde_json::from_str(r#"{ "pool_size": 8, "max_async_after": "5s" }"#).unwrap();
/// assert_eq!(config.pool_size, 8);
/// assert_eq!(config.max_run_time, std::time::Duration::from_secs(3600));
///
/// // In code, override what you need and keep the rest:
/// let config = async_query::Config { pool_size: 8, ..Default::default() };
/// # let _ = config;
/// ```
///
/// Always construct it with `..Default::default()`: new settings are added
/// in minor releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Jobs this instance runs at once (Elide `thread-pool-size`). Default 5.
    /// `0` makes a submit-only instance: it stores jobs `QUEUED` and other
    /// instances sharing the DAO run them.
    pub pool_size: usize,
    /// Jobs waiting `QUEUED` for a slot on this instance before `submit`
    /// returns [`Error::QueueFull`](crate::error::Error::QueueFull). Default 1,000.
    pub max_queued: usize,
    /// Jobs one principal may have `QUEUED` (across every instance sharing
    /// the job store) before its submits are refused with
    /// [`Error::PrincipalQueueFull`](crate::error::Error::PrincipalQueueFull)
    /// (HTTP 429 with `Retry-After`). Checked on every submit with one
    /// count of the principal's queued jobs; submits racing on several
    /// instances may overshoot it by a few. Default `None`: no limit but
    /// `max_queued`. Claims are fair across principals either way.
    pub max_queued_per_principal: Option<usize>,
    /// Jobs one principal may have `PROCESSING` at once, across every
    /// instance sharing the job store. A job past it stays `QUEUED` (it is
    /// not refused) until one of the principal's jobs ends, while other
    /// principals' jobs take the free slots. Every job then starts through
    /// a claim, which enforces the limit: a submit no longer starts its job
    /// directly, at the cost of one claim (on PostgreSQL, claims under a
    /// limit also take turns on one advisory lock). Default `None`: no
    /// limit. Claims are fair across principals either way.
    pub max_running_per_principal: Option<usize>,
    /// How many attempts a job gets: a job whose executor fails with a
    /// [`Transient`](crate::Transient) error, or whose instance died, goes
    /// back to the queue for another until it has had
    /// `retry.max_attempts`, waiting an exponential backoff with jitter
    /// between attempts (see [`RetryPolicy`](crate::RetryPolicy)). Default:
    /// one attempt, no retry, as in Elide.
    pub retry: crate::retry::RetryPolicy,
    /// How many queued jobs a slot that frees up claims. Default 1: jobs
    /// that no slot can start stay `QUEUED`, so `PROCESSING` means running.
    /// Finished jobs' records are always written with group commit: a job
    /// that finishes alone is written at once, jobs that finish together are
    /// written together, and the same DAO call claims the next jobs for the
    /// freed slots (one statement and one commit on PostgreSQL).
    ///
    /// Above 1 (throughput mode for many very short jobs), a freed slot
    /// claims up to this many: the extra ones are `PROCESSING` under this
    /// instance's lease while they wait for a slot (and are counted as
    /// running by `shutdown`), and a slot with such a job runs it at once
    /// while its predecessor's record is written behind it. At most
    /// `pool_size` jobs execute at once either way.
    pub claim_batch: usize,
    /// Upper bound on a request's async-after wait (Elide
    /// `max-async-after-seconds`). Default 10 s.
    #[serde(with = "humantime_serde")]
    pub max_async_after: Duration,
    /// Async-after used when a request does not say. Default 10 s (Elide's
    /// `asyncAfterSeconds` default), capped by `max_async_after`.
    #[serde(with = "humantime_serde")]
    pub default_async_after: Duration,
    /// Longest a job may run before it is stopped and marked `TIMEDOUT`
    /// (Elide `max-run-time-seconds`). Requests may ask for less, never more.
    /// Default 3,600 s.
    #[serde(with = "humantime_serde")]
    pub max_run_time: Duration,
    /// How long terminal records and their results are kept (Elide
    /// `query-cleanup-days`). Default 7 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long a finished job's result is kept, if shorter than its record
    /// (Databricks keeps results an hour and records longer). After it, the
    /// cleaner deletes the stored export or the inline body and leaves the
    /// record `COMPLETE` with [`ResultBody::Expired`](crate::ResultBody::Expired)
    /// and a message saying so; a download then fails with
    /// [`Error::ResultExpired`](crate::Error::ResultExpired) (HTTP 410).
    /// Default `None`: results live as long as their records.
    #[serde(default, with = "humantime_serde")]
    pub result_lifetime: Option<Duration>,
    /// How long an idempotency key returns its job
    /// ([`SubmitRequest::with_idempotency_key`](crate::SubmitRequest::with_idempotency_key)):
    /// a repeat within this time of the job's creation gets the job back;
    /// a later one starts a new job. A key also ends with its record
    /// (see [`retention`](Self::retention)). Default 24 hours.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Answer submits with the result of an earlier identical job created
    /// within this time, instead of running them again (see
    /// [`Reuse`](crate::Reuse); a request can ask for another window or
    /// for [`Reuse::Force`](crate::Reuse::Force)). Default `None`: every
    /// submit runs unless it asks for reuse.
    #[serde(default, with = "humantime_serde")]
    pub result_reuse: Option<Duration>,
    /// Role whose holders may see and cancel everyone's jobs. Default `"admin"`.
    pub admin_role: String,
    /// Largest inline body a [`JobKind::Query`](crate::JobKind::Query) may
    /// return; larger ends the job `FAILURE` with a message saying so (never
    /// a truncated body). Default 1 MiB.
    pub max_inline_result_bytes: usize,
    /// Whether this instance runs the cleaner (time-outs of jobs whose owner
    /// stopped or overran, stale cancellations, retention). Run it on at
    /// least one instance. Default true.
    pub cleaner_enabled: bool,
    /// How often the cleaner sweeps. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub cleaner_interval: Duration,
    /// How long a `CANCELLED` job with no live owner may wait before the
    /// cleaner completes its cancellation (Elide
    /// `query-cancellation-interval-seconds`). Cancellation on the owning
    /// instance is immediate; this only matters when the canceller or owner
    /// died half-way. Default 300 s.
    #[serde(with = "humantime_serde")]
    pub cancellation_check_interval: Duration,
    /// Lease a running job holds on its record; the owner renews it every
    /// third of this. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the dispatcher looks for queued jobs it was not told about,
    /// and how often `wait` re-reads a job running on another instance.
    /// Default 1 s.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long [`cancel`](crate::AsyncQueryService::cancel) waits for a
    /// job running on this instance to stop before returning it `CANCELLED`.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub cancel_grace: Duration,
    /// Whether CSV exports start with a header row (Elide
    /// `export.format.csv.write-header`). Default true.
    pub csv_header: bool,
    /// Spreadsheet safety for CSV exports: text cells that start with
    /// `=`, `+`, `-`, `@`, a tab or a carriage return get a `'` in front,
    /// so that a spreadsheet shows them instead of running them as
    /// formulas (see
    /// [`EncodeOptions::csv_formula_guard`](crate::format::EncodeOptions::csv_formula_guard)).
    /// Default false: exports hold the exact values.
    pub csv_formula_guard: bool,
    /// Whether stored export names end in `.csv`, `.json` or `.ndjson` (Elide
    /// `export.append-file-extension`). Default false.
    pub append_file_extension: bool,
    /// Largest number of records an export may hold. Default: no limit.
    pub export_max_records: Option<u64>,
    /// Largest size in bytes an export may reach; checked at record
    /// boundaries, so the file ends at the first record that reaches it.
    /// Default: no limit.
    pub export_max_bytes: Option<u64>,
    /// What reaching `export_max_records` or `export_max_bytes` does.
    /// Default [`ExportLimitAction::Fail`].
    pub export_limit_action: ExportLimitAction,
    /// How often a running job's progress is written at most
    /// ([`ExecutionContext::report_progress`](crate::ExecutionContext::report_progress)):
    /// an executor may report after every record; the latest report is
    /// written, then nothing more for this long. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Status-change events kept for slow subscribers before they lag.
    /// Default 1,024.
    pub event_capacity: usize,
    /// This instance's id, recorded as the owner of the jobs it runs.
    /// Default: a new random id each time `Config::default()` is called.
    ///
    /// A cloned `Config` keeps the id: give every service that shares a job
    /// store its own (for example `instance_id: Uuid::new_v4()`). Two
    /// services with one id treat each other's jobs as their own, and the
    /// start-up recovery of one ends the jobs the other is running. Keep an
    /// id across restarts of the same instance to have its interrupted jobs
    /// ended at start-up instead of after their lease.
    pub instance_id: Uuid,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pool_size: 5,
            max_queued: 1_000,
            claim_batch: 1,
            max_queued_per_principal: None,
            max_running_per_principal: None,
            retry: crate::retry::RetryPolicy::default(),
            max_async_after: Duration::from_secs(10),
            default_async_after: Duration::from_secs(10),
            max_run_time: Duration::from_secs(3_600),
            retention: Duration::from_secs(7 * 24 * 3_600),
            result_lifetime: None,
            idempotency_window: Duration::from_secs(24 * 3_600),
            result_reuse: None,
            admin_role: "admin".to_owned(),
            max_inline_result_bytes: 1 << 20,
            cleaner_enabled: true,
            cleaner_interval: Duration::from_secs(60),
            cancellation_check_interval: Duration::from_secs(300),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            cancel_grace: Duration::from_secs(5),
            csv_header: true,
            csv_formula_guard: false,
            append_file_extension: false,
            export_max_records: None,
            export_max_bytes: None,
            export_limit_action: ExportLimitAction::Fail,
            progress_interval: Duration::from_secs(1),
            event_capacity: 1_024,
            instance_id: Uuid::new_v4(),
        }
    }
}

/// What an export that reaches a configured limit does. Either way it is
/// never silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportLimitAction {
    /// The job ends `FAILURE` with a message naming the limit; nothing is
    /// stored.
    #[default]
    Fail,
    /// The job ends `COMPLETE` with what fits, `truncated: true` and a
    /// message naming the limit.
    Truncate,
}

/// The longest duration a [`Config`] accepts: 100 years. Longer ones would
/// overflow timestamps and timers in the service's background tasks, so
/// [`AsyncQueryServiceBuilder::build`](crate::AsyncQueryServiceBuilder::build)
/// refuses them.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3_600);

impl Config {
    /// Every duration setting, by name.
    fn durations(&self) -> [(&'static str, Option<Duration>); 15] {
        [
            ("max_async_after", Some(self.max_async_after)),
            ("default_async_after", Some(self.default_async_after)),
            ("max_run_time", Some(self.max_run_time)),
            ("retention", Some(self.retention)),
            ("result_lifetime", self.result_lifetime),
            ("idempotency_window", Some(self.idempotency_window)),
            ("result_reuse", self.result_reuse),
            ("cleaner_interval", Some(self.cleaner_interval)),
            (
                "cancellation_check_interval",
                Some(self.cancellation_check_interval),
            ),
            ("lease", Some(self.lease)),
            ("poll_interval", Some(self.poll_interval)),
            ("cancel_grace", Some(self.cancel_grace)),
            ("progress_interval", Some(self.progress_interval)),
            ("retry.backoff", Some(self.retry.backoff)),
            ("retry.max_backoff", Some(self.retry.max_backoff)),
        ]
    }

    /// How long `submit` waits for a job that asked for `requested`: the
    /// default if it asked for nothing, never above `max_async_after`.
    pub(crate) fn async_after(&self, requested: Option<Duration>) -> Duration {
        requested
            .unwrap_or(self.default_async_after)
            .min(self.max_async_after)
    }

    pub(crate) fn validate(&self) -> crate::error::Result<()> {
        if let Some((name, _)) = self
            .durations()
            .into_iter()
            .find(|(_, d)| d.is_some_and(|d| d > MAX_DURATION))
        {
            return Err(crate::error::Error::Config {
                reason: format!("{name} must be at most 100 years (config::MAX_DURATION)"),
            });
        }
        let reason = if self.event_capacity == 0 {
            "event_capacity must be at least 1"
        } else if self.lease < Duration::from_millis(30) {
            "lease must be at least 30 ms"
        } else if self.poll_interval.is_zero() {
            "poll_interval must be above zero"
        } else if self.progress_interval.is_zero() {
            "progress_interval must be above zero"
        } else if self.cleaner_interval.is_zero() {
            "cleaner_interval must be above zero"
        } else if self.max_queued_per_principal == Some(0) {
            "max_queued_per_principal must be at least 1 (None: no limit)"
        } else if self.max_running_per_principal == Some(0) {
            "max_running_per_principal must be at least 1 (None: no limit)"
        } else if self.claim_batch == 0 {
            "claim_batch must be at least 1"
        } else if self.max_run_time.is_zero() {
            "max_run_time must be above zero"
        } else if self.result_lifetime.is_some_and(|l| l.is_zero()) {
            "result_lifetime must be above zero (None keeps results as long as records)"
        } else if let Some(problem) = self.retry.problem(self.max_run_time) {
            problem
        } else {
            return Ok(());
        };
        Err(crate::error::Error::Config {
            reason: reason.to_owned(),
        })
    }
}
