//! The host's side: [`QueryExecutor`] runs one query and returns a
//! [`QueryOutput`].

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::model::{AsyncQuery, ColumnType, Principal, Record};
use crate::progress::{Progress, ProgressCell};
use crate::request::SubmitRequest;

/// Runs queries. The host implements this for its own query engine.
///
/// The library calls [`execute`](QueryExecutor::execute) on a worker slot,
/// at most [`Config::pool_size`](crate::Config::pool_size) at once per
/// instance. A returned error ends the job `FAILURE` with the error's text;
/// a panic is caught and does the same.
///
/// Cancellation and time-outs drop the future returned by `execute` at once.
/// Work that does not yield to the runtime (a blocking database call, say)
/// should watch [`ExecutionContext::cancel`] and stop itself, or run in
/// `spawn_blocking` and check the token.
///
/// ```
/// use async_query::{AsyncQuery, BoxError, ExecutionContext, QueryExecutor, QueryOutput};
///
/// struct Echo;
///
/// #[async_trait::async_trait]
/// impl QueryExecutor for Echo {
///     async fn execute(&self, job: &AsyncQuery, _ctx: ExecutionContext) -> Result<QueryOutput, BoxError> {
///         Ok(QueryOutput::body(format!("{{\"echo\":{:?}}}", job.query), 1))
///     }
/// }
/// ```
#[async_trait]
pub trait QueryExecutor: Send + Sync + 'static {
    /// Checks a request before anything is stored. An `Err` is returned to the
    /// submitter as [`Error::InvalidRequest`](crate::Error::InvalidRequest)
    /// with this text. The default accepts everything.
    fn validate(&self, request: &SubmitRequest) -> Result<(), String> {
        let _ = request;
        Ok(())
    }

    /// Runs `job` and returns its output: a body for
    /// [`JobKind::Query`](crate::JobKind::Query), a record stream for
    /// [`JobKind::TableExport`](crate::JobKind::TableExport).
    ///
    /// # Errors
    ///
    /// Any error ends the job `FAILURE`; its `Display` text becomes the
    /// result's message, so make it useful to the person who submitted the
    /// query.
    async fn execute(
        &self,
        job: &AsyncQuery,
        ctx: ExecutionContext,
    ) -> Result<QueryOutput, BoxError>;
}

/// What an executor gets besides the job record.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExecutionContext {
    /// Fires when the job is cancelled, timed out, or the service shuts down.
    pub cancel: CancellationToken,
    /// The principal that submitted the job.
    pub principal: Principal,
    /// Where progress reports go.
    progress: Arc<ProgressCell>,
}

impl ExecutionContext {
    /// A context for calling an executor directly, e.g. in the host's own
    /// unit tests; [`progress`](Self::progress) then shows what it
    /// reported.
    pub fn new(cancel: CancellationToken, principal: Principal) -> Self {
        ExecutionContext {
            cancel,
            principal,
            progress: Arc::default(),
        }
    }

    /// Reports how far the job has got. Cheap (a lock and a wake-up): call
    /// it as often as you like, after every record if that is simplest.
    /// The service writes the latest report to the record, the event
    /// stream and the HTTP `progress` attribute, at most once per
    /// [`Config::progress_interval`](crate::Config::progress_interval);
    /// a report made less than that before the job ends may never be
    /// written (the finished record's count is in its result).
    ///
    /// ```
    /// use async_query::{ExecutionContext, Principal, Progress};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let ctx = ExecutionContext::new(CancellationToken::new(), Principal::new("alice"));
    /// for done in 1..=3 {
    ///     ctx.report_progress(Progress::records(done).of(3).with_message("exporting"));
    /// }
    /// assert_eq!(ctx.progress().map(|p| p.records), Some(3));
    /// ```
    pub fn report_progress(&self, progress: Progress) {
        self.progress.report(progress);
    }

    /// The latest report, written or not.
    pub fn progress(&self) -> Option<Progress> {
        self.progress.latest()
    }

    /// The cell the service's progress writer reads.
    pub(crate) fn progress_cell(&self) -> Arc<ProgressCell> {
        Arc::clone(&self.progress)
    }
}

/// The rows of a table export, with their column names.
pub struct RecordStream {
    /// Column names, in the order of each record's values.
    pub columns: Vec<String>,
    /// The rows. An `Err` ends the export `FAILURE` and removes what was
    /// written.
    pub records: BoxStream<'static, Result<Record, BoxError>>,
    /// What each column holds, in column order, for typed formats; empty:
    /// unknown (each value goes by its JSON type). See [`ColumnType`].
    pub column_types: Vec<ColumnType>,
}

impl std::fmt::Debug for RecordStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("columns", &self.columns)
            .field("column_types", &self.column_types)
            .finish_non_exhaustive()
    }
}

/// What [`QueryExecutor::execute`] returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum QueryOutput {
    /// An inline body (typically JSON) and how many records it holds.
    Body {
        /// The response body stored in the record.
        body: Arc<str>,
        /// Number of records in the body.
        record_count: u64,
    },
    /// Rows to encode and stream into result storage.
    Records(RecordStream),
}

impl QueryOutput {
    /// An inline body of `record_count` records.
    pub fn body(body: impl Into<Arc<str>>, record_count: u64) -> Self {
        QueryOutput::Body {
            body: body.into(),
            record_count,
        }
    }

    /// A record stream for a table export.
    pub fn records(
        columns: Vec<String>,
        records: impl futures::Stream<Item = Result<Record, BoxError>> + Send + 'static,
    ) -> Self {
        QueryOutput::Records(RecordStream {
            columns,
            records: Box::pin(records),
            column_types: Vec::new(),
        })
    }

    /// Says what each column of a record stream holds (one type per
    /// column, in order), for typed formats such as XLSX; a body is
    /// returned as it is. See [`ColumnType`].
    ///
    /// ```
    /// use async_query::{ColumnType, QueryOutput};
    /// let rows = futures::stream::iter(vec![Ok(vec![serde_json::json!("2026-12-07T10:00:00Z")])]);
    /// let output = QueryOutput::records(vec!["at".into()], rows)
    ///     .with_column_types(vec![ColumnType::Timestamp]);
    /// assert!(matches!(output, QueryOutput::Records(r) if r.column_types == [ColumnType::Timestamp]));
    /// ```
    pub fn with_column_types(self, types: Vec<ColumnType>) -> Self {
        match self {
            QueryOutput::Records(stream) => QueryOutput::Records(RecordStream {
                column_types: types,
                ..stream
            }),
            body => body,
        }
    }
}
