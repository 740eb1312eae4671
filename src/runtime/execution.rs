//! Running one executor call: the job's token, its run-time limit, panic
//! capture, and turning the output into the stored result.

use std::any::Any;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::Runtime;
use super::ending::Ending;
use crate::executor::{ExecutionContext, QueryOutput};
use crate::model::{AsyncQuery, JobKind, QueryResult, ResultBody};
use crate::progress::ProgressCell;

/// How a run ended, with the result when it finished.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) ending: Ending,
    /// The saved output, for [`Ending::Finished`].
    pub(super) result: Option<QueryResult>,
}

impl Outcome {
    fn ended(ending: Ending) -> Self {
        Outcome {
            ending,
            result: None,
        }
    }
}

/// Why a run failed: the message its record gets, and whether the
/// executor marked the error [`Transient`](crate::Transient).
#[derive(Debug)]
pub(super) struct RunError {
    message: String,
    transient: bool,
}

impl RunError {
    /// An error of the executor (or of its record stream).
    pub(super) fn of_executor(error: crate::BoxError) -> Self {
        RunError {
            transient: crate::Transient::is_transient(&*error),
            message: error.to_string(),
        }
    }

    fn ending(self) -> Ending {
        if self.transient {
            Ending::FailedTransiently(self.message)
        } else {
            Ending::Failed(self.message)
        }
    }
}

impl From<String> for RunError {
    fn from(message: String) -> Self {
        RunError {
            message,
            transient: false,
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

impl Runtime {
    /// Runs `job`'s executor and saves its output, under its token and
    /// run-time limit, catching panics. `None`: the service stopped, and
    /// nothing must be written (the lease will expire).
    pub(super) async fn execute(
        &self,
        job: &AsyncQuery,
        cancel: CancellationToken,
    ) -> Option<Outcome> {
        // Claimed by a write that was in flight when the service stopped.
        if self.tasks.is_stopped() {
            return None;
        }
        let run = crate::metrics::run_started(job, || self.clock.now());
        let ctx = ExecutionContext::new(cancel.clone(), job.principal.clone());
        let progress = ctx.progress_cell();
        let work = AssertUnwindSafe(async {
            let run = async {
                let output = self
                    .executor
                    .execute(job, ctx)
                    .await
                    .map_err(RunError::of_executor)?;
                self.save(job, output).await
            };
            tokio::select! {
                biased;
                ran = run => ran,
                never = self.write_progress(job, &progress) => match never {},
            }
        })
        .catch_unwind();
        let outcome = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                (!self.tasks.is_stopped()).then(|| Outcome::ended(Ending::Cancelled))
            }
            ran = tokio::time::timeout(job.max_run_time, work) => Some(match ran {
                Err(_elapsed) => Outcome::ended(Ending::RunTimeLimit(job.max_run_time)),
                Ok(Err(panic)) => Outcome::ended(Ending::Panicked(panic_message(&*panic).to_owned())),
                Ok(Ok(Err(failed))) => Outcome::ended(failed.ending()),
                Ok(Ok(Ok(result))) => Outcome { ending: Ending::Finished, result: Some(result) },
            }),
        };
        run.ended(match outcome.as_ref().map(|o| &o.ending) {
            Some(Ending::Finished) => "finished",
            Some(Ending::Cancelled) => "cancelled",
            Some(Ending::RunTimeLimit(_)) => "timed_out",
            Some(_) => "failed",
            None => "stopped",
        });
        outcome
    }

    /// Writes `job`'s progress reports as they come, the latest one at
    /// most once per `progress_interval`; runs until the run ends and
    /// drops it (a write in flight then is harmless: the store keeps
    /// progress only while the job is `PROCESSING`).
    async fn write_progress(&self, job: &AsyncQuery, cell: &ProgressCell) -> Infallible {
        loop {
            let progress = cell.next().await;
            let at = self.clock.now();
            let owner = self.config.instance_id;
            match self.dao.update_progress(job.id, owner, &progress, at).await {
                Ok(true) => self.jobs.progressed(job.id, &progress, |job| {
                    self.events.emit_progress(job, &progress, at);
                }),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "storing a job's progress failed");
                }
            }
            tokio::time::sleep(self.config.progress_interval).await;
        }
    }

    /// Turns executor output into the stored result.
    async fn save(&self, job: &AsyncQuery, output: QueryOutput) -> Result<QueryResult, RunError> {
        match (&job.kind, output) {
            (JobKind::Query, QueryOutput::Body { body, record_count }) => {
                let limit = self.config.max_inline_result_bytes;
                if body.len() > limit {
                    return Err(format!(
                        "the result is {} bytes, above the inline limit of {limit} bytes; use a table export for large results",
                        body.len()
                    )
                    .into());
                }
                Ok(QueryResult {
                    record_count: Some(record_count),
                    content_length: Some(body.len() as u64),
                    completed_on: self.clock.now(),
                    body: ResultBody::Inline(body),
                    message: None,
                    truncated: false,
                })
            }
            // Boxed: the export's state (encoder, writer, stream) is large,
            // and every job's future would carry it otherwise.
            (JobKind::TableExport { format }, QueryOutput::Records(records)) => {
                Box::pin(self.export(job, format, records)).await
            }
            (JobKind::Query, QueryOutput::Records(_)) => Err(String::from(
                "the executor returned records for a query job; return QueryOutput::Body",
            )
            .into()),
            (JobKind::TableExport { .. }, QueryOutput::Body { .. }) => Err(String::from(
                "the executor returned a body for a table export; return QueryOutput::Records",
            )
            .into()),
        }
    }
}
