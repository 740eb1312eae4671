//! The `ARROW_STREAM` and `PARQUET` formats (feature `arrow`).

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow_ipc::writer::StreamWriter;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::columnar::Batcher;
use super::{ExportEncoding, ExportSpec, RecordEncoder, Tail};
use crate::error::{Error, Result};
use crate::model::{ExportFormat, Record};

/// Rows per Parquet row group: a row group is encoded in memory before it
/// is written, so this bounds an export's memory.
pub const PARQUET_ROW_GROUP_ROWS: usize = 65_536;

/// The `ARROW_STREAM` format: the Arrow IPC streaming format
/// (`application/vnd.apache.arrow.stream`, as Databricks' statement API
/// returns it), a schema message then record batches of at most 8,192
/// rows (fewer for wide rows: about 4 MiB of text each). Registered by
/// default with feature `arrow`.
///
/// The schema comes from the executor's column types
/// ([`QueryOutput::with_column_types`](crate::QueryOutput::with_column_types))
/// or, without them, is inferred from the first batch (see
/// [`ColumnType`](crate::ColumnType) for the Arrow types): a column of
/// only booleans is `Boolean`, of only whole numbers `Int64`, of numbers
/// with a fraction among them `Float64`, anything else (strings, mixed
/// kinds, arrays, objects, or nothing but `null`) `Utf8`, a non-string
/// written as its JSON text. Every field is nullable. A later value that
/// does not fit its column's type (a string in an `Int64` column) fails
/// the export with a message naming the record and column, rather than
/// being dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArrowStreamFormat;

/// The `PARQUET` format (`application/vnd.apache.parquet`): the same
/// schema and batches as [`ArrowStreamFormat`], Snappy-compressed, in row
/// groups of [`PARQUET_ROW_GROUP_ROWS`] rows. Registered by default with
/// feature `arrow`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParquetFormat;

impl ExportEncoding for ArrowStreamFormat {
    fn format(&self) -> ExportFormat {
        ExportFormat::ARROW_STREAM
    }

    fn content_type(&self) -> &str {
        "application/vnd.apache.arrow.stream"
    }

    fn extension(&self) -> &str {
        "arrows"
    }

    fn encoder(&self, spec: ExportSpec) -> Result<Box<dyn RecordEncoder>> {
        Ok(Box::new(ColumnarEncoder::<IpcSink>::new(spec)))
    }
}

impl ExportEncoding for ParquetFormat {
    fn format(&self) -> ExportFormat {
        ExportFormat::PARQUET
    }

    fn content_type(&self) -> &str {
        "application/vnd.apache.parquet"
    }

    fn extension(&self) -> &str {
        "parquet"
    }

    fn encoder(&self, spec: ExportSpec) -> Result<Box<dyn RecordEncoder>> {
        Ok(Box::new(ColumnarEncoder::<ParquetSink>::new(spec)))
    }
}

/// Bytes a writer produced, shared with the encoder that hands them out.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file format's writer of record batches.
trait Sink: Sized + Send + 'static {
    fn open(out: Shared, schema: arrow_schema::SchemaRef) -> Result<Self>;
    fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<()>;
    fn close(self) -> Result<()>;
    /// Bytes encoded but not yet handed to `out`.
    fn in_progress(&self) -> usize;
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{what} encoding failed: {e}"))
}

struct IpcSink(StreamWriter<Shared>);

impl Sink for IpcSink {
    fn open(out: Shared, schema: arrow_schema::SchemaRef) -> Result<Self> {
        StreamWriter::try_new(out, &schema)
            .map(IpcSink)
            .map_err(|e| failed("Arrow", e))
    }
    fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<()> {
        self.0.write(batch).map_err(|e| failed("Arrow", e))
    }
    fn close(mut self) -> Result<()> {
        self.0.finish().map_err(|e| failed("Arrow", e))
    }
    fn in_progress(&self) -> usize {
        0
    }
}

struct ParquetSink(ArrowWriter<Shared>);

impl Sink for ParquetSink {
    fn open(out: Shared, schema: arrow_schema::SchemaRef) -> Result<Self> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_size(PARQUET_ROW_GROUP_ROWS)
            .build();
        ArrowWriter::try_new(out, schema, Some(props))
            .map(ParquetSink)
            .map_err(|e| failed("Parquet", e))
    }
    fn write(&mut self, batch: &arrow_array::RecordBatch) -> Result<()> {
        self.0.write(batch).map_err(|e| failed("Parquet", e))
    }
    fn close(self) -> Result<()> {
        self.0.close().map(|_| ()).map_err(|e| failed("Parquet", e))
    }
    fn in_progress(&self) -> usize {
        self.0.in_progress_size()
    }
}

/// Records into batches, batches into a sink, the sink's bytes out.
struct ColumnarEncoder<S: Sink> {
    batcher: Batcher,
    sink: Option<S>,
    out: Shared,
    emitted: u64,
}

impl<S: Sink> ColumnarEncoder<S> {
    fn new(spec: ExportSpec) -> Self {
        ColumnarEncoder {
            batcher: Batcher::new(spec),
            sink: None,
            out: Shared::default(),
            emitted: 0,
        }
    }

    /// The sink, opened with the schema on first use.
    fn sink(&mut self) -> Result<&mut S> {
        if self.sink.is_none() {
            let schema = self.batcher.schema()?;
            self.sink = Some(S::open(self.out.clone(), schema)?);
        }
        // Set just above.
        self.sink
            .as_mut()
            .ok_or_else(|| Error::invalid("the export's writer is gone"))
    }

    /// Writes the waiting rows as a batch.
    fn flush_batch(&mut self) -> Result<()> {
        // Opening the sink fixes the schema: inferred from these rows, if
        // the executor gave no types, before they are taken.
        self.sink()?;
        if let Some(batch) = self.batcher.take()? {
            self.sink()?.write(&batch)?;
        }
        Ok(())
    }

    fn drain(&mut self) -> Option<Bytes> {
        let bytes = self.out.take();
        if bytes.is_empty() {
            return None;
        }
        self.emitted += bytes.len() as u64;
        Some(Bytes::from(bytes))
    }
}

impl<S: Sink> RecordEncoder for ColumnarEncoder<S> {
    fn push(&mut self, record: &Record) -> Result<Option<Bytes>> {
        if self.batcher.push(record)? {
            self.flush_batch()?;
        }
        Ok(self.drain())
    }

    fn finish(mut self: Box<Self>) -> Result<Tail> {
        self.flush_batch()?;
        if let Some(sink) = self.sink.take() {
            sink.close()?;
        }
        Ok(Tail::bytes(self.drain().unwrap_or_default()))
    }

    fn records(&self) -> u64 {
        self.batcher.records()
    }

    fn len(&self) -> u64 {
        let in_progress = self.sink.as_ref().map_or(0, S::in_progress);
        self.emitted + (in_progress + self.batcher.pending_bytes()) as u64
    }
}
