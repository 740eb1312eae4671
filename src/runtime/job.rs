//! Running one job: call the executor, save its output, settle the status.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{Cas, Inner};
use crate::config::ExportLimitAction;
use crate::dao::{CasOutcome, StatusChange};
use crate::executor::{ExecutionContext, QueryOutput, RecordStream};
use crate::format::Encoder;
use crate::model::{AsyncQuery, ExportFormat, JobKind, QueryResult, QueryStatus, ResultBody};

/// A finished job waiting for the batcher to write its record.
pub(super) struct Settlement {
    pub(super) job: std::sync::Arc<AsyncQuery>,
    pub(super) change: StatusChange,
    pub(super) stored: Option<String>,
}

/// How a job's run ended, before it is written down.
#[derive(Debug)]
pub(super) enum Outcome {
    Complete(QueryResult),
    Failure(String),
    TimedOut,
    Cancelled,
    /// The service is gone: write nothing, the lease will expire.
    Abandoned,
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

impl Inner {
    pub(super) async fn execute(&self, job: &AsyncQuery, cancel: CancellationToken) -> Outcome {
        let ctx = ExecutionContext::new(cancel.clone(), job.principal.clone());
        let work = AssertUnwindSafe(async {
            let output = self
                .executor
                .execute(job, ctx)
                .await
                .map_err(|e| e.to_string())?;
            self.save(job, output).await
        })
        .catch_unwind();
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                if self.shutdown.is_cancelled() { Outcome::Abandoned } else { Outcome::Cancelled }
            }
            ran = tokio::time::timeout(job.max_run_time, work) => match ran {
                Err(_elapsed) => Outcome::TimedOut,
                Ok(Err(panic)) => Outcome::Failure(format!("the executor panicked: {}", panic_message(&*panic))),
                Ok(Ok(Err(message))) => Outcome::Failure(message),
                Ok(Ok(Ok(result))) => Outcome::Complete(result),
            },
        }
    }

    /// Turns executor output into the stored result.
    async fn save(&self, job: &AsyncQuery, output: QueryOutput) -> Result<QueryResult, String> {
        match (job.kind, output) {
            (JobKind::Query, QueryOutput::Body { body, record_count }) => {
                let limit = self.config.max_inline_result_bytes;
                if body.len() > limit {
                    return Err(format!(
                        "the result is {} bytes, above the inline limit of {limit} bytes; use a table export for large results",
                        body.len()
                    ));
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
            (JobKind::TableExport { format }, QueryOutput::Records(records)) => {
                self.export(job, format, records).await
            }
            (JobKind::Query, QueryOutput::Records(_)) => Err(
                "the executor returned records for a query job; return QueryOutput::Body".into(),
            ),
            (JobKind::TableExport { .. }, QueryOutput::Body { .. }) => Err(
                "the executor returned a body for a table export; return QueryOutput::Records"
                    .into(),
            ),
        }
    }

    /// Streams records into result storage; publishes only on success.
    async fn export(
        &self,
        job: &AsyncQuery,
        format: ExportFormat,
        records: RecordStream,
    ) -> Result<QueryResult, String> {
        let name = if self.config.append_file_extension {
            format!("{}.{}", job.id, format.extension())
        } else {
            job.id.to_string()
        };
        let mut writer = self
            .storage
            .create(&name)
            .await
            .map_err(|e| format!("could not store the export: {e}"))?;
        let RecordStream {
            columns,
            records: mut rows,
        } = records;
        let mut encoder = Encoder::new(format, columns, self.config.csv_header);
        let written: Result<Option<String>, String> = async {
            while let Some(row) = rows.next().await {
                // An always-ready row source must still let cancellation and
                // time-outs in.
                tokio::task::consume_budget().await;
                let row = row.map_err(|e| e.to_string())?;
                // A row beyond a limit proves the export would exceed it.
                if let Some(limit) = self.export_limit_reached(&encoder) {
                    return match self.config.export_limit_action {
                        ExportLimitAction::Truncate => Ok(Some(limit)),
                        ExportLimitAction::Fail => Err(format!(
                            "the export is larger than {limit}; narrow the query or raise the limit"
                        )),
                    };
                }
                if let Some(chunk) = encoder.push(&row).map_err(|e| e.to_string())? {
                    writer
                        .write(chunk)
                        .await
                        .map_err(|e| format!("could not store the export: {e}"))?;
                }
            }
            Ok(None)
        }
        .await;
        let record_count = encoder.records();
        let written = match written {
            Ok(truncated) => match encoder.finish() {
                Ok(tail) => writer
                    .write(tail)
                    .await
                    .map(|()| truncated)
                    .map_err(|e| format!("could not store the export: {e}")),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        let truncated = match written {
            Ok(truncated) => truncated,
            Err(message) => {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(job = %job.id, error = %e, "removing a partial export failed");
                }
                return Err(message);
            }
        };
        let content_length = writer
            .publish()
            .await
            .map_err(|e| format!("could not publish the export: {e}"))?;
        Ok(QueryResult {
            record_count: Some(record_count),
            content_length: Some(content_length),
            completed_on: self.clock.now(),
            body: ResultBody::Stored(name),
            message: truncated.as_ref().map(|limit| {
                format!("truncated: the export stopped at {limit} after {record_count} records")
            }),
            truncated: truncated.is_some(),
        })
    }

    /// The configured export limit `encoder` has reached, described for
    /// messages, if any.
    fn export_limit_reached(&self, encoder: &Encoder) -> Option<String> {
        if let Some(max) = self.config.export_max_records
            && encoder.records() >= max
        {
            return Some(format!("the limit of {max} records (export_max_records)"));
        }
        if let Some(max) = self.config.export_max_bytes
            && encoder.len() >= max
        {
            return Some(format!("the limit of {max} bytes (export_max_bytes)"));
        }
        None
    }

    /// Writes the outcome with compare-and-set. A job cancelled meanwhile ends
    /// `CANCEL_COMPLETE` (its output discarded); a job someone else settled
    /// (the cleaner) is left as they decided. Returns false when the service
    /// is gone and the worker should stop.
    ///
    /// With `claim_batch > 1` the record is handed to the batcher, which
    /// writes it with others while the worker runs its next job.
    pub(super) async fn settle(&self, job: &std::sync::Arc<AsyncQuery>, outcome: Outcome) -> bool {
        let Some((change, stored)) = self.first_change(job, outcome) else {
            return false;
        };
        if self.config.claim_batch > 1 {
            let settlement = Settlement {
                job: std::sync::Arc::clone(job),
                change,
                stored,
            };
            return self.settle_tx.send(settlement).await.is_ok();
        }
        self.settle_change(job, change, stored, None).await;
        true
    }

    /// The change that writes `outcome`, and the stored export it
    /// references; `None` when the service is gone (write nothing).
    fn first_change(
        &self,
        job: &AsyncQuery,
        outcome: Outcome,
    ) -> Option<(StatusChange, Option<String>)> {
        let now = self.clock.now();
        let (from, to, result) = match outcome {
            Outcome::Abandoned => return None,
            Outcome::Complete(result) => (QueryStatus::Processing, QueryStatus::Complete, result),
            Outcome::Failure(message) => (
                QueryStatus::Processing,
                QueryStatus::Failure,
                QueryResult::message(now, message),
            ),
            Outcome::TimedOut => (
                QueryStatus::Processing,
                QueryStatus::TimedOut,
                QueryResult::message(
                    now,
                    format!(
                        "stopped after exceeding its maximum run time of {:?}",
                        job.max_run_time
                    ),
                ),
            ),
            Outcome::Cancelled => (
                QueryStatus::Cancelled,
                QueryStatus::CancelComplete,
                QueryResult::message(now, "cancelled on request"),
            ),
        };
        // A stored export must be deleted if its record will not point at it.
        let stored = match &result.body {
            ResultBody::Stored(name) => Some(name.clone()),
            _ => None,
        };
        Some((StatusChange::new(from, to, now).with_result(result), stored))
    }

    /// Writes `change` (whose first attempt may already have been made, in
    /// a batch: `first`), then follows up on conflicts and failures.
    async fn settle_change(
        &self,
        job: &AsyncQuery,
        mut change: StatusChange,
        mut stored: Option<String>,
        mut first: Option<CasOutcome>,
    ) {
        let now = change.at;
        loop {
            let (from, to) = (change.from, change.to);
            let attempt = match first.take() {
                Some(outcome) => Ok(self.applied(from, outcome)),
                None => self.transition(job.id, change).await,
            };
            change = match attempt {
                Ok(Cas::Applied(_)) => return,
                // Already written: an earlier attempt of a batch that
                // failed as a whole had been applied.
                Ok(Cas::Conflict(current)) if current.status == to => {
                    self.observe(Some(from), std::sync::Arc::new(*current), false);
                    return;
                }
                Ok(Cas::Conflict(current)) => {
                    self.discard_output(stored.take()).await;
                    if current.status == QueryStatus::Cancelled && to != QueryStatus::CancelComplete
                    {
                        StatusChange::new(QueryStatus::Cancelled, QueryStatus::CancelComplete, now)
                            .with_result(QueryResult::message(now, "cancelled on request"))
                    } else {
                        self.forget(job.id);
                        return;
                    }
                }
                Err(e) if to != QueryStatus::Failure && to != QueryStatus::CancelComplete => {
                    tracing::warn!(job = %job.id, error = %e, "saving the job's outcome failed; marking it FAILURE");
                    self.discard_output(stored.take()).await;
                    StatusChange::new(from, QueryStatus::Failure, now).with_result(
                        QueryResult::message(now, format!("the result could not be saved: {e}")),
                    )
                }
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "saving the job's outcome failed; its lease will expire");
                    self.forget(job.id);
                    return;
                }
            };
        }
    }

    /// Writes finished jobs' records in batches (`claim_batch > 1`): takes
    /// what is waiting, up to `claim_batch`, and writes it with one
    /// [`update_status_many`](crate::AsyncApiDao::update_status_many) while
    /// the next batch fills. Conflicts and failures are followed up one by
    /// one, as `settle` does.
    pub(super) async fn batcher(
        self: std::sync::Arc<Self>,
        mut settlements: tokio::sync::mpsc::Receiver<Settlement>,
    ) {
        let max = self.config.claim_batch.max(1);
        loop {
            let first = tokio::select! {
                () = self.shutdown.cancelled() => return,
                next = settlements.recv() => match next {
                    Some(s) => s,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < max {
                match settlements.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            // The changes move into the call's slice (no copies of result
            // bodies); the rest waits beside them.
            let (changes, waiting): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|s| ((s.job.id, s.change), (s.job, s.stored)))
                .unzip();
            let outcomes = match self.dao.update_status_many(&changes).await {
                Ok(outcomes) if outcomes.len() == changes.len() => outcomes,
                // Some may have been applied: each is retried alone (an
                // applied one then conflicts with its own status).
                _ => Vec::new(),
            };
            let mut outcomes = outcomes.into_iter();
            for ((_, change), (job, stored)) in changes.into_iter().zip(waiting) {
                self.settle_change(&job, change, stored, outcomes.next())
                    .await;
            }
        }
    }

    /// Deletes a stored export that no record will point at.
    async fn discard_output(&self, stored: Option<String>) {
        if let Some(name) = stored
            && let Err(e) = self.storage.delete(&name).await
        {
            tracing::warn!(object = %name, error = %e, "deleting an unreferenced export failed");
        }
    }
}
