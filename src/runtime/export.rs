//! Exports: streaming records into result storage (published only when
//! complete), deleting an export no record will point at, and reading a
//! finished export back.

use std::ops::Range;

use futures::StreamExt;
use uuid::Uuid;

use super::Runtime;
use super::execution::RunError;
use crate::config::ExportLimitAction;
use crate::error::{Error, Result};
use crate::executor::RecordStream;
use crate::format::{EncodeOptions, ExportEncoding, ExportSpec, RecordEncoder};
use crate::model::{
    AsyncQuery, ExportFormat, JobKind, Principal, QueryResult, QueryStatus, ResultBody,
};
use crate::storage::{Download, ResultWriter};

impl Runtime {
    /// The name a job's export is stored under: its id, with the format's
    /// extension if so configured.
    fn export_name(&self, id: Uuid, encoding: &dyn ExportEncoding) -> String {
        if self.config.append_file_extension {
            format!("{id}.{}", encoding.extension())
        } else {
            id.to_string()
        }
    }

    /// Streams records into result storage; publishes only on success.
    #[tracing::instrument(name = "store", skip_all, fields(job = %job.id, principal = %job.principal.name, %format))]
    pub(super) async fn export(
        &self,
        job: &AsyncQuery,
        format: &ExportFormat,
        records: RecordStream,
    ) -> Result<QueryResult, RunError> {
        // Checked at submit; a job submitted on an instance that knows
        // formats this one does not fails here.
        let encoding = self
            .formats
            .find(format)
            .map_err(|e| RunError::from(e.to_string()))?;
        // Everything that can refuse the export before anything is stored.
        let RecordStream {
            columns,
            records: mut rows,
            column_types,
        } = records;
        if !column_types.is_empty() && column_types.len() != columns.len() {
            return Err(RunError::from(format!(
                "the executor gave {} column types for {} columns",
                column_types.len(),
                columns.len()
            )));
        }
        let options = EncodeOptions::default()
            .csv_header(self.config.csv_header)
            .csv_formula_guard(self.config.csv_formula_guard);
        let mut encoder = encoding
            .encoder(ExportSpec::new(columns, options).with_column_types(column_types))
            .map_err(|e| RunError::from(e.to_string()))?;
        let name = self.export_name(job.id, &**encoding);
        let mut writer = self
            .storage
            .create(&name)
            .await
            .map_err(|e| storage_failed(job, &e, format!("could not store the export: {e}")))?;
        let written: Result<Option<String>, RunError> = async {
            while let Some(row) = rows.next().await {
                // An always-ready row source must still let cancellation and
                // time-outs in.
                tokio::task::consume_budget().await;
                let row = row.map_err(RunError::of_executor)?;
                // A row beyond a limit proves the export would exceed it.
                if let Some(limit) = self.export_limit_reached(&*encoder) {
                    return match self.config.export_limit_action {
                        ExportLimitAction::Truncate => Ok(Some(limit)),
                        ExportLimitAction::Fail => Err(format!(
                            "the export is larger than {limit}; narrow the query or raise the limit"
                        )
                        .into()),
                    };
                }
                if let Some(chunk) = encoder
                    .push(&row)
                    .map_err(|e| RunError::from(e.to_string()))?
                {
                    writer.write(chunk).await.map_err(|e| {
                        storage_failed(job, &e, format!("could not store the export: {e}"))
                    })?;
                }
            }
            Ok(None)
        }
        .await;
        let record_count = encoder.records();
        let written = match written {
            Ok(truncated) => write_tail(job, encoder, &mut *writer)
                .await
                .map(|()| truncated),
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
            .map_err(|e| storage_failed(job, &e, format!("could not publish the export: {e}")))?;
        crate::metrics::exported(encoding.extension(), record_count, content_length);
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
    fn export_limit_reached(&self, encoder: &dyn RecordEncoder) -> Option<String> {
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

    /// Deletes the stored object `name` (the output of a job whose record
    /// does not point at it).
    pub(super) async fn discard_output(&self, name: &str) {
        if let Err(e) = self.storage.delete(name).await {
            tracing::warn!(object = %name, error = %e, "deleting an unreferenced export failed");
        }
    }

    /// Deletes whatever export `job` may have published before it was
    /// ended by someone other than its worker (the cleaner, `shutdown`,
    /// start-up recovery): a worker that died between publishing and
    /// writing its record leaves an object no record points at. Both
    /// possible names are tried, since instances may be configured apart.
    pub(super) async fn discard_export_of(&self, job: &AsyncQuery) {
        let JobKind::TableExport { format } = &job.kind else {
            return;
        };
        if job.status == QueryStatus::Queued {
            return;
        }
        self.discard_output(&job.id.to_string()).await;
        // A published export is named with its format's extension, which
        // only a registered format gives. An export in a format this
        // instance lacks never ran here; its published file, if another
        // instance wrote one, is not found from here (hence "register the
        // same formats on every instance", on `Formats`).
        if let Some(encoding) = self.formats.get(format) {
            self.discard_output(&format!("{}.{}", job.id, encoding.extension()))
                .await;
        }
    }

    /// Opens a completed export's stored file (or a byte range of it).
    pub(crate) async fn download(
        &self,
        principal: &Principal,
        id: Uuid,
        range: Option<Range<u64>>,
    ) -> Result<Download> {
        let job = self.get(principal, id).await?;
        self.open_export(job, range).await
    }

    /// [`download`](Self::download) for a request that proved its right to
    /// the export otherwise (a signed download link): no principal.
    #[cfg(feature = "axum")]
    pub(crate) async fn download_by_link(
        &self,
        id: Uuid,
        range: Option<Range<u64>>,
    ) -> Result<Download> {
        let job = self.dao.get(id).await?.ok_or(Error::NotFound { id })?;
        self.open_export(job, range).await
    }

    /// Opens the stored file of `job`, a record its caller may see.
    async fn open_export(&self, job: AsyncQuery, range: Option<Range<u64>>) -> Result<Download> {
        let id = job.id;
        let JobKind::TableExport { format } = &job.kind else {
            return Err(Error::NoResult {
                id,
                reason: "it is a query; its result is inline in the record".into(),
            });
        };
        let result = job
            .result
            .as_ref()
            .filter(|_| job.status == QueryStatus::Complete);
        let Some(result) = result else {
            return Err(Error::NoResult {
                id,
                reason: format!("its status is {}", job.status),
            });
        };
        let name = match &result.body {
            ResultBody::Stored(name) => name,
            ResultBody::Expired => return Err(Error::ResultExpired { id }),
            _ => {
                return Err(Error::NoResult {
                    id,
                    reason: "the record has no stored location".into(),
                });
            }
        };
        let Some(stream) = self.storage.open(name, range).await? else {
            // Deleted since the record was read: its lifetime may have
            // ended just now.
            let expired = self.dao.get(id).await.is_ok_and(|job| {
                job.and_then(|job| job.result)
                    .is_some_and(|r| matches!(r.body, ResultBody::Expired))
            });
            return Err(match expired {
                true => Error::ResultExpired { id },
                false => Error::NoResult {
                    id,
                    reason: format!("stored result {name:?} is missing"),
                },
            });
        };
        // A format unknown here (registered on the instance that ran the
        // export only) is served as bytes.
        let (content_type, extension) = match self.formats.get(format) {
            Some(encoding) => (encoding.content_type(), encoding.extension()),
            None => ("application/octet-stream", "bin"),
        };
        Ok(Download {
            format: format.clone(),
            content_type: content_type.to_owned(),
            extension: extension.to_owned(),
            file_name: name.clone(),
            record_count: result.record_count,
            stream,
        })
    }
}

/// Finishes `encoder` and writes what it hands over, on blocking threads
/// (a format written at the end may compress, or read a temporary file).
async fn write_tail(
    job: &AsyncQuery,
    encoder: Box<dyn RecordEncoder>,
    writer: &mut dyn ResultWriter,
) -> Result<(), RunError> {
    let panicked =
        |e: tokio::task::JoinError| RunError::from(format!("the export's encoder failed: {e}"));
    let mut tail = tokio::task::spawn_blocking(move || encoder.finish())
        .await
        .map_err(panicked)?
        .map_err(|e| RunError::from(e.to_string()))?;
    loop {
        let (next, back) = if tail.blocks() {
            tokio::task::spawn_blocking(move || (tail.next_chunk(), tail))
                .await
                .map_err(panicked)?
        } else {
            (tail.next_chunk(), tail)
        };
        tail = back;
        let Some(chunk) = next.map_err(|e| RunError::from(e.to_string()))? else {
            return Ok(());
        };
        writer
            .write(chunk)
            .await
            .map_err(|e| storage_failed(job, &e, format!("could not store the export: {e}")))?;
    }
}

/// The job's message for a storage error `e`. The record says what failed
/// and the log has the whole chain of causes: a back-end's own errors can
/// name buckets, hosts or credentials, which the job's owner need not see.
fn storage_failed(job: &AsyncQuery, e: &Error, message: String) -> String {
    let mut causes = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::warn!(job = %job.id, error = %e, causes = %causes, "storing an export failed");
    message
}
