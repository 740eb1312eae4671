//! Export formats: how a table export's records become bytes.
//!
//! A format is an [`ExportEncoding`]: a name ([`ExportFormat`]), a media
//! type, a file extension, and a new [`RecordEncoder`] per export, which
//! turns records into bytes one at a time and hands back bounded chunks, so
//! that an export of any size needs memory for one chunk only. The service
//! keeps its formats in a [`Formats`] registry: the built-in ones
//! ([`TextFormat`]: CSV, JSON, NDJSON) and whatever the host adds with
//! [`AsyncQueryServiceBuilder::format`](crate::AsyncQueryServiceBuilder::format).
//!
//! ```
//! use std::sync::Arc;
//! use async_query::format::{ExportEncoding, ExportSpec, RecordEncoder, Tail};
//! use async_query::{ExportFormat, Record, Result};
//! use bytes::Bytes;
//!
//! /// Tab-separated values: one line per record.
//! #[derive(Debug)]
//! struct Tsv;
//!
//! struct TsvEncoder { records: u64, bytes: u64 }
//!
//! impl ExportEncoding for Tsv {
//!     fn format(&self) -> ExportFormat { ExportFormat::new("TSV").unwrap() }
//!     fn content_type(&self) -> &str { "text/tab-separated-values; charset=utf-8" }
//!     fn extension(&self) -> &str { "tsv" }
//!     fn encoder(&self, spec: ExportSpec) -> Result<Box<dyn RecordEncoder>> {
//!         Ok(Box::new(TsvEncoder { records: 0, bytes: 0 }))
//!     }
//! }
//!
//! impl RecordEncoder for TsvEncoder {
//!     fn push(&mut self, record: &Record) -> Result<Option<Bytes>> {
//!         let cells: Vec<String> = record.iter().map(|v| match v {
//!             serde_json::Value::String(s) => s.replace(['\t', '\n'], " "),
//!             other => other.to_string(),
//!         }).collect();
//!         let line = cells.join("\t") + "\n";
//!         self.records += 1;
//!         self.bytes += line.len() as u64;
//!         Ok(Some(Bytes::from(line)))
//!     }
//!     fn finish(self: Box<Self>) -> Result<Tail> { Ok(Tail::bytes(Bytes::new())) }
//!     fn records(&self) -> u64 { self.records }
//!     fn len(&self) -> u64 { self.bytes }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> async_query::Result<()> {
//! # #[derive(Debug)] struct Rows;
//! # #[async_trait::async_trait]
//! # impl async_query::QueryExecutor for Rows {
//! #     async fn execute(&self, _: &async_query::AsyncQuery, _: async_query::ExecutionContext)
//! #         -> std::result::Result<async_query::QueryOutput, async_query::BoxError> {
//! #         Ok(async_query::QueryOutput::records(vec!["a".into()], futures::stream::iter(vec![Ok(vec![serde_json::json!(1)])])))
//! #     }
//! # }
//! let service = async_query::AsyncQueryService::builder()
//!     .executor(Arc::new(Rows))
//!     .format(Arc::new(Tsv))?
//!     .build()?;
//! let tsv = ExportFormat::new("tsv").unwrap();
//! let request = async_query::SubmitRequest::export("SELECT 1 AS a", tsv);
//! let job = service.submit(&async_query::Principal::new("alice"), request).await?;
//! assert_eq!(job.status, async_query::QueryStatus::Complete);
//! # Ok(()) }
//! ```
//!
//! Encodings of awkward values in the text formats:
//!
//! | value | CSV | JSON / NDJSON |
//! |---|---|---|
//! | `null` | empty field | `null` |
//! | string | the text, quoted per RFC 4180 when needed | JSON string |
//! | number, bool | its JSON text | as is |
//! | array, object | its compact JSON text, quoted as needed | as is |
//! | `""` (empty string) | empty field — the same as `null` (CSV has no null) | `""` |
//! | control characters | written as they are; fields with `\r`, `\n`, `"` or `,` are quoted | escaped (`\u0000`, `\n`, …) |
//!
//! Text is always UTF-8 (records are `serde_json::Value`s, whose strings are
//! valid UTF-8 by construction); no byte-order mark is written. A host whose
//! source data is not UTF-8 must decide how to convert it (for example
//! `String::from_utf8_lossy`) when it builds the record.

use bytes::Bytes;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{ColumnType, ExportFormat, Record};

#[cfg(feature = "arrow")]
mod arrow;
#[cfg(feature = "arrow")]
mod columnar;
mod registry;
mod text;
#[cfg(feature = "xlsx")]
mod xlsx;

#[cfg(feature = "arrow")]
pub use arrow::{ArrowStreamFormat, PARQUET_ROW_GROUP_ROWS, ParquetFormat};
pub use registry::Formats;
pub use text::{Encoder, TextFormat};
#[cfg(feature = "xlsx")]
pub use xlsx::{SheetOverflow, XLSX_MAX_CELL_CHARS, XLSX_MAX_COLUMNS, XLSX_MAX_ROWS, XlsxFormat};

/// Default size at which an encoder hands a chunk to storage.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;

/// A table export format: its name, how downloads of it are labelled, and
/// an encoder for each export. Implement it to add a format (see the
/// [module documentation](self)); the built-in formats implement it too.
pub trait ExportEncoding: Send + Sync + std::fmt::Debug {
    /// The name submits use for this format.
    fn format(&self) -> ExportFormat;

    /// The media type of a download (`Content-Type`). Visible ASCII only:
    /// registration refuses anything else.
    fn content_type(&self) -> &str;

    /// The file extension, without the dot: 1 to 16 ASCII letters and
    /// digits (registration refuses anything else).
    fn extension(&self) -> &str;

    /// A fresh encoder for one export.
    ///
    /// # Errors
    ///
    /// Whatever the format cannot start with (for example columns it cannot
    /// represent); the job then ends `FAILURE` with the error's message.
    fn encoder(&self, spec: ExportSpec) -> Result<Box<dyn RecordEncoder>>;
}

/// One export's encoder: records in, bytes out, in chunks the service
/// writes to result storage as they come (nothing is visible until the
/// export is published whole).
///
/// Keep memory bounded: hand a chunk back from [`push`](Self::push) once
/// about [`DEFAULT_CHUNK_SIZE`] bytes are pending, rather than holding the
/// whole export.
pub trait RecordEncoder: Send {
    /// Encodes one record (one value per column); returns a chunk of bytes
    /// when one is ready.
    ///
    /// # Errors
    ///
    /// A record the format cannot encode; the export then fails and
    /// nothing is published.
    fn push(&mut self, record: &Record) -> Result<Option<Bytes>>;

    /// Ends the export: the remaining bytes (a trailer, a footer, or, for
    /// formats written at the end, the whole file as a [`Tail::reader`]
    /// that the service reads in bounded chunks). Runs on a blocking
    /// thread ([`tokio::task::spawn_blocking`]), so it may compress or do
    /// file I/O.
    ///
    /// # Errors
    ///
    /// As for [`push`](Self::push).
    fn finish(self: Box<Self>) -> Result<Tail>;

    /// Records pushed so far.
    fn records(&self) -> u64;

    /// Bytes produced so far, handed out and pending, as well as the
    /// encoder can tell (`Config::export_max_bytes` is checked against it).
    fn len(&self) -> u64;

    /// Whether nothing has been produced yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The last bytes of an export, from [`RecordEncoder::finish`]: a few
/// bytes in memory, or a reader (a temporary file, say) that the service
/// reads in chunks of [`DEFAULT_CHUNK_SIZE`], so that a format written at
/// the end still needs memory for one chunk only.
pub struct Tail {
    bytes: Option<Bytes>,
    reader: Option<Box<dyn std::io::Read + Send>>,
}

impl Tail {
    /// These bytes.
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        Tail {
            bytes: Some(bytes.into()),
            reader: None,
        }
    }

    /// Everything `reader` yields, read in chunks.
    pub fn reader(reader: impl std::io::Read + Send + 'static) -> Self {
        Tail {
            bytes: None,
            reader: Some(Box::new(reader)),
        }
    }

    /// Whether [`next_chunk`](Self::next_chunk) may block (it reads).
    pub(crate) fn blocks(&self) -> bool {
        self.reader.is_some()
    }

    /// The next chunk, `None` at the end. Blocks on the reader.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] if the reader fails.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if let Some(bytes) = self.bytes.take() {
            return Ok(Some(bytes));
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(None);
        };
        let mut chunk = vec![0; DEFAULT_CHUNK_SIZE];
        let mut filled = 0;
        while filled < chunk.len() {
            match reader.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::invalid(format!(
                        "reading the export's end failed: {e}"
                    )));
                }
            }
        }
        if filled == 0 {
            self.reader = None;
            return Ok(None);
        }
        chunk.truncate(filled);
        Ok(Some(Bytes::from(chunk)))
    }
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("bytes", &self.bytes.as_ref().map(Bytes::len))
            .field("reader", &self.reader.is_some())
            .finish()
    }
}

/// What an export's encoder is made for: its columns and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportSpec {
    /// The column names, in record order.
    pub columns: Vec<String>,
    /// What each column holds, as the executor said
    /// ([`QueryOutput::with_column_types`](crate::QueryOutput::with_column_types));
    /// empty: unknown.
    pub column_types: Vec<ColumnType>,
    /// How to write, beyond the format.
    pub options: EncodeOptions,
}

impl ExportSpec {
    /// A spec for these columns and options, with no column types.
    pub fn new(columns: Vec<String>, options: EncodeOptions) -> Self {
        ExportSpec {
            columns,
            column_types: Vec::new(),
            options,
        }
    }

    /// The same, with these column types (one per column, in order).
    pub fn with_column_types(mut self, types: Vec<ColumnType>) -> Self {
        self.column_types = types;
        self
    }

    /// The type of column `index`, if known.
    pub fn column_type(&self, index: usize) -> Option<ColumnType> {
        self.column_types.get(index).copied()
    }
}

/// How an encoder writes, beyond its format.
///
/// ```
/// use async_query::format::EncodeOptions;
/// let options = EncodeOptions::default().csv_header(false).csv_formula_guard(true);
/// assert!(!options.writes_csv_header());
/// assert!(options.guards_csv_formulas());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodeOptions {
    csv_header: bool,
    csv_formula_guard: bool,
}

impl Default for EncodeOptions {
    /// A CSV header row, as Elide writes by default; no formula guard.
    fn default() -> Self {
        EncodeOptions {
            csv_header: true,
            csv_formula_guard: false,
        }
    }
}

impl EncodeOptions {
    /// Whether CSV output starts with a header row of the column names.
    pub fn csv_header(mut self, write: bool) -> Self {
        self.csv_header = write;
        self
    }

    /// Whether CSV output starts with a header row.
    pub fn writes_csv_header(&self) -> bool {
        self.csv_header
    }

    /// Spreadsheet safety for CSV (off by default, for fidelity): a text
    /// cell (header names included) that starts with `=`, `+`, `-`, `@`, a
    /// tab or a carriage return gets a `'` in front, so that a spreadsheet
    /// opening the file shows it as text instead of running it as a
    /// formula (OWASP's advice against CSV injection). Numbers are written
    /// as they are (`-5` stays a number). The file then no longer holds
    /// the exact values: turn it on for exports people open in Excel,
    /// LibreOffice or Google Sheets, not for exports programs read.
    /// `Config::csv_formula_guard` sets it for a service.
    pub fn csv_formula_guard(mut self, guard: bool) -> Self {
        self.csv_formula_guard = guard;
        self
    }

    /// Whether CSV text cells that start like a formula are prefixed.
    pub fn guards_csv_formulas(&self) -> bool {
        self.csv_formula_guard
    }
}

/// Refuses a record (the `done + 1`th) that does not have one value per
/// column.
pub(crate) fn check_arity(record: &Record, columns: usize, done: u64) -> Result<()> {
    if record.len() == columns {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "record {} has {} values but the export has {columns} columns",
        done + 1,
        record.len(),
    )))
}

/// Turns any serialisable value whose JSON form is an object into a
/// [`Record`] with one value per column, in column order (missing fields
/// become `null`). This is how a host exports rows it already has as serde
/// structs; for SQL rows, build the `Vec<serde_json::Value>` from the row's
/// columns directly.
///
/// # Errors
///
/// [`Error::InvalidRequest`] if `value` does not serialise to a JSON object.
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Sale { region: String, amount: f64, note: Option<String> }
///
/// let columns = vec!["region".to_string(), "amount".to_string(), "note".to_string()];
/// let sale = Sale { region: "EU".into(), amount: 9.5, note: None };
/// let record = async_query::format::to_record(&sale, &columns).unwrap();
/// assert_eq!(record, vec![serde_json::json!("EU"), serde_json::json!(9.5), serde_json::Value::Null]);
/// ```
pub fn to_record<T: serde::Serialize>(value: &T, columns: &[String]) -> Result<Record> {
    match serde_json::to_value(value) {
        Ok(Value::Object(mut fields)) => Ok(columns
            .iter()
            .map(|c| fields.remove(c).unwrap_or(Value::Null))
            .collect()),
        Ok(other) => Err(Error::invalid(format!(
            "a record must serialise to a JSON object, not {other}"
        ))),
        Err(e) => Err(Error::invalid(format!(
            "the record could not be serialised: {e}"
        ))),
    }
}
